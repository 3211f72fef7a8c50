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
[[ $rc -eq 0 ]] || exit $rc

# Real timm and Hugging Face models run in a second environment (PyTorch's CUDA build with
# torchvision, ~5.5 GB, built once per machine outside the clone): the tests marked "real",
# which the main environment skips. IMACS_SKIP_REAL=1 leaves them out (a quick local run).
if [[ "${IMACS_SKIP_REAL:-0}" == 1 ]]; then
  echo "real-model tests left out (IMACS_SKIP_REAL=1)" >&2
  exit 0
fi
REAL_ENV="$(bash scripts/real-env.sh)"
set +e
IMACS_REQUIRE_REAL=1 "$REAL_ENV/bin/python" -m pytest -m real "$@"
rc=$?
set -e
# with the caller's own selection (-k ...), no real-model test may match it
if [[ $rc -eq 5 && $# -gt 0 ]]; then
  exit 0
fi
exit $rc
