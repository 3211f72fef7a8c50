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
FROM python:3.11-slim-bookworm

ARG VARIANT=cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    IMACS_CACHE_DIR=/opt/imacs/cache \
    NUMBA_CACHE_DIR=/opt/imacs/cache/numba \
    IMACS_RUNS=/runs \
    IMACS_WORKERS=4

WORKDIR /opt/imacs/src
COPY pyproject.toml README.md ./
COPY imacs ./imacs
COPY imacs_app ./imacs_app
COPY scripts ./scripts

# The same install script CI runs. The CPU variant takes PyTorch's CPU wheel; the CUDA
# variant takes the default Linux wheel, which bundles the CUDA runtime.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN if [[ "$VARIANT" == "cuda" ]]; then \
        export TORCH_SPEC="torch==2.13.0"; \
    else \
        export TORCH_SPEC="torch==2.13.0+cpu" PIP_EXTRA_INDEX_URL="https://download.pytorch.org/whl/cpu"; \
    fi \
    && PYTHON=python bash scripts/install.sh

# Compute the demo run at build time, so a container with no runs mounted serves it at once;
# then run as an unprivileged user that cannot write to the runs it serves.
RUN imacs demo --no-serve --cache-dir "$IMACS_CACHE_DIR" \
    && useradd --system --uid 10001 --create-home --home-dir /home/imacs imacs \
    && mkdir -p /runs \
    && chmod -R a+rX /opt/imacs \
    && chmod -R a+w "$NUMBA_CACHE_DIR"

USER 10001
VOLUME ["/runs"]
EXPOSE 8050
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8050/healthz', timeout=4).status != 200)"]
ENTRYPOINT ["/opt/imacs/src/scripts/docker-entrypoint.sh"]
CMD ["serve"]
