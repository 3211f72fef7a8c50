# syntax=docker/dockerfile:1
# imacs: the dashboard for a team, served by gunicorn.
#
#   docker build -t imacs .                                  # CPU image (default)
#   docker build -t imacs:cuda --build-arg VARIANT=cuda .     # CUDA image (PyTorch's CUDA wheels)
#
#   docker run -p 8050:8050 -v "$PWD/runs:/runs:ro" imacs     # serve every run in ./runs
#   docker run -p 8050:8050 imacs                             # no runs mounted: serve the demo
#   docker run --gpus all -u "$(id -u)" -v "$PWD:/work" imacs:cuda \
#       imacs analyze --model-a /work/a.pt --model-b /work/b.pt --data /work/eval --out /work/runs/ab
#
# An analysis keeps its attribution cache beside its run (/work/runs/.imacs-cache above), on
# the mounted volume, unless IMACS_CACHE_DIR or --cache-dir says otherwise (the entry point).
FROM python:3.11-slim-bookworm

ARG VARIANT=cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    IMACS_DEMO_CACHE=/opt/imacs/cache \
    NUMBA_CACHE_DIR=/opt/imacs/numba \
    IMACS_RUNS=/runs \
    IMACS_WORKERS=4

WORKDIR /opt/imacs/src
COPY pyproject.toml README.md ./
COPY imacs ./imacs
COPY imacs_app ./imacs_app
COPY scripts ./scripts

# The same install script CI runs. The CPU variant takes PyTorch's CPU wheel; the CUDA
# variant takes the default Linux wheel, which bundles the CUDA runtime, with the
# torchvision built for it, timm and transformers: the pairing CI's real-model environment
# tests (scripts/real-env.sh).
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN if [[ "$VARIANT" == "cuda" ]]; then \
        export TORCH_SPEC="torch==2.14.1 torchvision==0.29.1" IMACS_EXTRAS="timm,hf"; \
    else \
        export TORCH_SPEC="torch==2.13.0+cpu" PIP_EXTRA_INDEX_URL="https://download.pytorch.org/whl/cpu"; \
    fi \
    && PYTHON=python bash scripts/install.sh

# Compute the demo run at build time, so a container with no runs mounted serves it at once;
# then run as an unprivileged user that cannot write to the runs it serves. Numba's compiled
# code belongs to that user alone (another user, docker run -u, gets its own: the entry point).
RUN imacs demo --no-serve --cache-dir "$IMACS_DEMO_CACHE" \
    && useradd --system --uid 10001 --create-home --home-dir /home/imacs imacs \
    && mkdir -p /runs \
    && chmod -R a+rX,go-w /opt/imacs \
    && chown -R 10001:10001 "$NUMBA_CACHE_DIR"

USER 10001
VOLUME ["/runs"]
EXPOSE 8050
# /healthz on IMACS_BIND's address, as the entry point binds it
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/opt/imacs/src/scripts/healthcheck.py"]
ENTRYPOINT ["/opt/imacs/src/scripts/docker-entrypoint.sh"]
CMD ["serve"]
