#!/usr/bin/env bash
# Sets up .venv (first run only), installs imacs, analyses the bundled sample data and
# serves the dashboard at http://127.0.0.1:8050/. Extra arguments go to `imacs demo`
# (e.g. --port 8060, --host 0.0.0.0, --no-browser).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${VIRTUAL_ENV:-}" ]]; then
  [[ -x .venv/bin/python ]] || python3 -m venv .venv
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi
bash scripts/install.sh --editable
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PWD/.cache/numba}"
exec imacs demo "$@"
