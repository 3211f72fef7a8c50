#!/usr/bin/env bash
# The container's entry point.
#   serve [gunicorn options]   serve the runs in $IMACS_RUNS (default /runs) with gunicorn;
#                              when it holds no run, serve the demo computed at build time
#   anything else              run it (e.g. `imacs analyze ...`)
#
# `imacs analyze ... --out DIR/RUN` without --cache-dir, --no-cache or IMACS_CACHE_DIR keeps
# its attribution cache in DIR/.imacs-cache: on the mounted volume, where any user
# (`docker run -u "$(id -u)"`) can write and the next container finds it.
set -euo pipefail

has_runs() {
  compgen -G "$1/run.json" >/dev/null || compgen -G "$1/*/run.json" >/dev/null \
    || compgen -G "$1/*/*/run.json" >/dev/null
}

# the --out of an `imacs analyze` command that chooses no cache; fails otherwise
analysis_out() {
  [[ "$(basename -- "${1:-}")" == "imacs" && "${2:-}" == "analyze" ]] || return 1
  local arg prev="" out=""
  for arg in "${@:3}"; do
    case "$arg" in
      --cache-dir | --cache-dir=* | --no-cache) return 1 ;;
      --out=*) out="${arg#--out=}" ;;
    esac
    [[ "$prev" == "--out" ]] && out="$arg"
    prev="$arg"
  done
  [[ -n "$out" ]] && printf '%s\n' "$out"
}

writable() { mkdir -p -- "$1" 2>/dev/null && [[ -w "$1" ]]; }

if [[ -z "${IMACS_CACHE_DIR:-}" ]] && out="$(analysis_out "$@")"; then
  IMACS_CACHE_DIR="$(dirname -- "$out")/.imacs-cache"
  export IMACS_CACHE_DIR
  echo "imacs: attribution cache in $IMACS_CACHE_DIR (set IMACS_CACHE_DIR to choose another)" >&2
fi

# numba's compiled code (UMAP) needs a folder this user can write to. The image's belongs
# to its user; anyone else gets one of their own, beside the attribution cache when that is
# writable, else a private temporary folder.
if [[ -n "${NUMBA_CACHE_DIR:-}" ]] && ! writable "$NUMBA_CACHE_DIR"; then
  if [[ -n "${IMACS_CACHE_DIR:-}" ]] && writable "$IMACS_CACHE_DIR/numba"; then
    NUMBA_CACHE_DIR="$IMACS_CACHE_DIR/numba"
  else
    NUMBA_CACHE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/imacs-numba.XXXXXX")"
  fi
  export NUMBA_CACHE_DIR
fi

if [[ "${1:-serve}" == "serve" ]]; then
  [[ $# -gt 0 ]] && shift
  runs="${IMACS_RUNS:-/runs}"
  if ! has_runs "$runs"; then
    echo "imacs: no runs in $runs; serving the demo" >&2
    runs="${IMACS_DEMO_CACHE:-${IMACS_CACHE_DIR:-$HOME/.cache/imacs}}/demo"
  fi
  export IMACS_RUNS="$runs"
  # the config checks the login settings before forking workers (exit 3 on a mistake)
  exec gunicorn imacs_app.wsgi:application \
    --config python:imacs_app.gunicorn_conf \
    --workers "${IMACS_WORKERS:-4}" \
    --bind "${IMACS_BIND:-0.0.0.0:8050}" \
    --timeout 120 \
    --access-logfile - \
    --access-logformat '%(h)s "%(r)s" %(s)s %(b)s %(M)sms' \
    "$@"
fi
exec "$@"
