#!/usr/bin/env bash
# The real-model environment: timm and Hugging Face models through imacs, on PyTorch's
# default (CUDA) build, which runs on a CPU-only machine too and is the pairing a GPU user
# installs (the Dockerfile's cuda variant uses the same TORCH_SPEC). About 5.5 GB, so it
# lives outside the clone, built once per machine and reused while its pins and the
# install script are unchanged (scripts/install.sh's stamp). Prints its path.
# Usage: scripts/real-env.sh   (IMACS_REAL_ENV=DIR puts it elsewhere)
set -euo pipefail
cd "$(dirname "$0")/.."

# torch 2.14.1 and torchvision 0.29.1 are one pair (torchvision is built against one torch);
# timm needs torchvision
REAL_TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"
ENV_DIR="${IMACS_REAL_ENV:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/imacs/real-env}"

if [[ ! -x "$ENV_DIR/bin/python" ]]; then
  mkdir -p "$(dirname "$ENV_DIR")"
  python3 -m venv "$ENV_DIR"
fi
start=$SECONDS
PYTHON="$ENV_DIR/bin/python" TORCH_SPEC="$REAL_TORCH_SPEC" bash scripts/install.sh --real >&2
echo "real-model environment ready in $((SECONDS - start)) s: $ENV_DIR" >&2
echo "$ENV_DIR"
