#!/usr/bin/env bash
# Sets up a virtual environment in .venv (first run only), installs imacs with its test
# tools, lints, and runs the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${VIRTUAL_ENV:-}" ]]; then
  [[ -x .venv/bin/python ]] || python3 -m venv .venv
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi
bash scripts/install.sh --dev

# The dashboard's browser tests drive Debian's Chromium (Playwright's own browser download
# is not reachable here). Install it when missing and we may (root, e.g. CI).
if ! command -v chromium >/dev/null 2>&1; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: chromium is not installed; browser tests will be skipped" >&2
  fi
fi

# numba (behind umap-learn) compiles on first use; keep its cache so that cost is paid once.
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PWD/.cache/numba}"
mkdir -p "$NUMBA_CACHE_DIR"

ruff check imacs imacs_app tests benchmarks scripts
ruff format --check imacs imacs_app tests benchmarks scripts

set +e
python -m pytest "$@"
rc=$?
set -e
# pytest exits 5 when it collected no tests: that is a broken suite here, not a pass.
if [[ $rc -eq 5 ]]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
exit $rc
