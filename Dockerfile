# gru4rec-service: the `gru4rec serve` HTTP recommendation service in a slim image.
#
#   docker build -t gru4rec-service .
#   docker run --rm -p 8000:8000 -v "$PWD/models/rsc15:/models:ro" gru4rec-service
#   curl -s http://127.0.0.1:8000/healthz
#
# The model directory (written by `gru4rec train`) is mounted at /models; a new checkpoint written
# there is picked up without a restart. Settings are GRU4REC_* environment variables
# (`gru4rec serve --help`), e.g. -e GRU4REC_REDIS_URL=redis://redis:6379/0 -e GRU4REC_TORCH_THREADS=2.
# Arguments after the image name replace CMD, e.g. `... gru4rec-service /models --host 0.0.0.0
# --port 8000 --workers 4` (keep port 8000, which the HEALTHCHECK probes).
#
# Build arguments (everything is pinned by them):
#   BASE_IMAGE       python:3.11-slim-bookworm (any Debian/Ubuntu image; Python 3 comes from the
#                    base, or from its apt packages when the base has none, as CUDA images do)
#   TORCH_VERSION    2.13.0, the version the project is tested with
#   TORCH_INDEX_URL  https://download.pytorch.org/whl/cpu (the CPU-only wheel: ~10x smaller)
#
# CUDA variant: the CUDA wheel of PyTorch on a CUDA runtime base, run with `--gpus all`:
#   docker build -t gru4rec-service:cu128 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 .
# (The cu128 wheel also runs on the default slim base, since it brings its own CUDA libraries; the
# CUDA base adds the matching system libraries and NVIDIA's container metadata.)
#
# No secrets are built in: pass GRU4REC_API_KEY and GRU4REC_REDIS_URL at run time.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DEBIAN_FRONTEND=noninteractive

# Python comes with the python:* images; CUDA (Ubuntu) bases get the distribution's python3.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH

# PyTorch first, from its own index, in a layer of its own (the largest and slowest to change); the
# project's dependency range admits it, so installing the project below keeps this build.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY data_prep ./data_prep
COPY gru4rec ./gru4rec
COPY service ./service
RUN pip install --no-cache-dir . \
    && python -c "import torch; assert torch.__version__.split('+')[0] == '${TORCH_VERSION}', torch.__version__" \
    && gru4rec --version

# ---------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GRU4REC_MODEL_DIR=/models

# The same python3 the builder's venv links to; an unprivileged user (uid 10001) owning /models so a
# named volume is writable for model updates (a bind mount keeps the host's ownership).
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --system --gid 10001 gru4rec \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/gru4rec \
        --shell /usr/sbin/nologin gru4rec \
    && mkdir -p /models \
    && chown 10001:10001 /models

COPY --from=builder /opt/venv /opt/venv

USER 10001:10001
WORKDIR /home/gru4rec
VOLUME /models
EXPOSE 8000

# Liveness via Python's urllib (slim images have no curl); urlopen raises on errors and non-2xx.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

ENTRYPOINT ["gru4rec", "serve"]
CMD ["/models", "--host", "0.0.0.0", "--port", "8000"]
