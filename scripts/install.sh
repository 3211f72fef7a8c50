#!/usr/bin/env bash
# Installs imacs and everything it needs into the current Python environment.
# One script for every place imacs runs: CI (.ci/run via scripts/test.sh), the Dockerfile,
# and a developer's machine. Usage: scripts/install.sh [--dev]
#   --dev   editable install plus the test tools (pytest, ruff)
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
# torch is pinned: an open range pulls the newest CUDA build (gigabytes). 2.13.0 resolves
# to the CPU wheel on our machines; TORCH_SPEC lets a CUDA image pick its own build.
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

"$PY" -m pip install --quiet --disable-pip-version-check "$TORCH_SPEC"
if [[ "${1:-}" == "--dev" ]]; then
  # hf: the tests build local Hugging Face models (transformers needs no torchvision)
  "$PY" -m pip install --quiet --disable-pip-version-check -e ".[test,hf]"
else
  # a regular install: the wheel carries the dashboard's assets and the demo's sample
  "$PY" -m pip install --quiet --disable-pip-version-check .
fi
