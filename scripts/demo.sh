#!/usr/bin/env bash
# Sets up .venv (first run only), installs imacs (again only when what it installs from
# changed), analyses the bundled sample data and serves the dashboard at
# http://127.0.0.1:8050/. Extra arguments go to `imacs demo` (e.g. --port 8060, --host
# 0.0.0.0, --no-browser).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${VIRTUAL_ENV:-}" ]]; then
  [[ -x .venv/bin/python ]] || python3 -m venv .venv
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi
# skipped when this install is already made (a stamp in the environment): a warm start
bash scripts/install.sh --editable
# numba's compiled UMAP lives where `imacs analyze` keeps it (the imacs cache's numba/), so
# every entry point compiles it once
exec imacs demo "$@"
