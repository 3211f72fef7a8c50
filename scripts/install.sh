#!/usr/bin/env bash
# Installs imacs and everything it needs into the current Python environment.
# One script for every place imacs runs: CI (.ci/run via scripts/test.sh), the Dockerfile,
# and a developer's machine. Usage: scripts/install.sh [--dev | --editable | --real]
#   --dev       editable install plus the test tools (pytest, ruff) and transformers
#   --editable  editable install (scripts/demo.sh)
#   --real      editable install plus the test tools, transformers and timm, for the
#               real-model environment (scripts/real-env.sh; TORCH_SPEC brings torchvision)
#   (none)      a regular install from the built wheel (the Dockerfile; IMACS_EXTRAS=timm,hf
#               adds the model kinds' extras)
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
# torch is pinned: an open range pulls the newest CUDA build (gigabytes). 2.13.0 resolves
# to the CPU wheel on our machines; TORCH_SPEC lets a CUDA image pick its own build, with
# the torchvision that pairs with it (words: "torch==2.14.1 torchvision==0.29.1").
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

# An editable install (--dev, --editable) is skipped when this very install was already
# made into this environment: the stamp holds the hash of what it installed from (the
# mode, the torch pin, pyproject.toml and this script). IMACS_REINSTALL=1 installs anyway.
STAMP=""
if [[ -n "${1:-}" ]]; then
  PREFIX="$("$PY" -c 'import sys; print(sys.prefix)')"
  STAMP="$PREFIX/.imacs-install-${1#--}"
  # the clone's path too: an editable install points at one clone
  WANT="$( { echo "$1 $TORCH_SPEC $PWD"; "$PY" -V; cat pyproject.toml scripts/install.sh; } | sha256sum | cut -c1-64)"
  if [[ "${IMACS_REINSTALL:-0}" != 1 && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] \
     && "$PY" -c 'import imacs, torch' 2>/dev/null; then
    exit 0
  fi
  rm -f "$STAMP"
fi

# shellcheck disable=SC2086  # TORCH_SPEC is one or more requirements
"$PY" -m pip install --quiet --disable-pip-version-check $TORCH_SPEC
case "${1:-}" in
  --dev)  # editable, plus the test tools; hf: the tests build local Hugging Face models
    "$PY" -m pip install --quiet --disable-pip-version-check -e ".[test,hf]" ;;
  --editable)  # a clone someone works in (scripts/demo.sh)
    "$PY" -m pip install --quiet --disable-pip-version-check -e . ;;
  --real)  # the real-model environment: timm (with TORCH_SPEC's torchvision) and transformers
    # shellcheck disable=SC2086
    "$PY" -m pip install --quiet --disable-pip-version-check $TORCH_SPEC -e ".[test,hf,timm]" ;;
  "")  # a regular install: the wheel carries the dashboard's assets and the demo's sample
    "$PY" -m pip install --quiet --disable-pip-version-check ".${IMACS_EXTRAS:+[$IMACS_EXTRAS]}" ;;
  *) echo "usage: scripts/install.sh [--dev | --editable | --real]" >&2; exit 2 ;;
esac
if [[ -n "$STAMP" ]]; then
  echo "$WANT" > "$STAMP"
fi
