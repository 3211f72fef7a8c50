#!/usr/bin/env bash
# Installs imacs and everything it needs into the current Python environment.
# One script for every place imacs runs: CI (.ci/run via scripts/test.sh), the Dockerfile,
# and a developer's machine. Usage: scripts/install.sh [--dev | --editable]
#   --dev       editable install plus the test tools (pytest, ruff) and transformers
#   --editable  editable install (scripts/demo.sh)
#   (none)      a regular install from the built wheel (the Dockerfile)
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
# torch is pinned: an open range pulls the newest CUDA build (gigabytes). 2.13.0 resolves
# to the CPU wheel on our machines; TORCH_SPEC lets a CUDA image pick its own build.
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

# An editable install (--dev, --editable) is skipped when this very install was already
# made into this environment: the stamp holds the hash of what it installed from (the
# mode, the torch pin, pyproject.toml and this script). IMACS_REINSTALL=1 installs anyway.
STAMP=""
if [[ -n "${1:-}" ]]; then
  PREFIX="$("$PY" -c 'import sys; print(sys.prefix)')"
  STAMP="$PREFIX/.imacs-install-${1#--}"
  WANT="$( { echo "$1 $TORCH_SPEC"; "$PY" -V; cat pyproject.toml scripts/install.sh; } | sha256sum | cut -c1-64)"
  if [[ "${IMACS_REINSTALL:-0}" != 1 && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] \
     && "$PY" -c 'import imacs, torch' 2>/dev/null; then
    exit 0
  fi
  rm -f "$STAMP"
fi

"$PY" -m pip install --quiet --disable-pip-version-check "$TORCH_SPEC"
case "${1:-}" in
  --dev)  # editable, plus the test tools; hf: the tests build local Hugging Face models
    "$PY" -m pip install --quiet --disable-pip-version-check -e ".[test,hf]" ;;
  --editable)  # a clone someone works in (scripts/demo.sh)
    "$PY" -m pip install --quiet --disable-pip-version-check -e . ;;
  "")  # a regular install: the wheel carries the dashboard's assets and the demo's sample
    "$PY" -m pip install --quiet --disable-pip-version-check . ;;
  *) echo "usage: scripts/install.sh [--dev | --editable]" >&2; exit 2 ;;
esac
if [[ -n "$STAMP" ]]; then
  echo "$WANT" > "$STAMP"
fi
