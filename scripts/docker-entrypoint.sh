#!/usr/bin/env bash
# The container's entry point.
#   serve [gunicorn options]   serve the runs in $IMACS_RUNS (default /runs) with gunicorn;
#                              when it holds no run, serve the demo computed at build time
#   anything else              run it (e.g. `imacs analyze ...`)
set -euo pipefail

has_runs() {
  compgen -G "$1/run.json" >/dev/null || compgen -G "$1/*/run.json" >/dev/null \
    || compgen -G "$1/*/*/run.json" >/dev/null
}

if [[ "${1:-serve}" == "serve" ]]; then
  [[ $# -gt 0 ]] && shift
  runs="${IMACS_RUNS:-/runs}"
  if ! has_runs "$runs"; then
    echo "imacs: no runs in $runs; serving the demo" >&2
    runs="${IMACS_CACHE_DIR:-$HOME/.cache/imacs}/demo"
  fi
  export IMACS_RUNS="$runs"
  exec gunicorn imacs_app.wsgi:application \
    --workers "${IMACS_WORKERS:-4}" \
    --bind "${IMACS_BIND:-0.0.0.0:8050}" \
    --timeout 120 \
    --access-logfile - \
    --access-logformat '%(h)s "%(r)s" %(s)s %(b)s %(M)sms' \
    "$@"
fi
exec "$@"
