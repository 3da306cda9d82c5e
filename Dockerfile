# syntax=docker/dockerfile:1
# lwl-vos: one image for every role (`lwl api`, `lwl worker`, `lwl serve`).
#
#   docker build -t lwl-vos:latest .                           # GPU (CUDA 13), the default
#   docker build -t lwl-vos:cpu --build-arg VARIANT=cpu .      # CPU-only, a fraction of the size
#
# GPU variant: nvidia/cuda's *base* flavour (CUDA runtime package, the NVIDIA_* variables the
# container toolkit reads) plus PyTorch's own PyPI CUDA 13 wheels, which bring cuBLAS/cuDNN
# themselves; the host needs only the NVIDIA driver (R580+ for CUDA 13). The *runtime* flavour would ship a second copy of those
# libraries (~3 GB) that torch never loads. Both variants use Ubuntu 24.04 and the same
# CPython (uv-managed, PYTHON_VERSION), so they differ only in the torch wheels.
# Rationale and build arguments: docs/DEPLOY.md.

ARG VARIANT=gpu
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04
ARG CPU_IMAGE=ubuntu:24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.8

FROM ${UV_IMAGE} AS uv

# ---------------------------------------------------------------- run-time bases
FROM ${CUDA_IMAGE} AS base-gpu
# nvidia/cuda already sets NVIDIA_VISIBLE_DEVICES=all and NVIDIA_DRIVER_CAPABILITIES=compute,utility
# and ships ca-certificates.

FROM ${CPU_IMAGE} AS base-cpu
# ca-certificates: TLS to a managed Redis (rediss://). Versions follow the pinned base image;
# pinning Ubuntu package versions breaks rebuilds as soon as the archive moves (DL3008).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------- builder
# `base-${VARIANT}` names one of the stages above; hadolint cannot resolve a stage name built
# from a variable and takes it for an untagged registry image (DL3006: false positive).
# hadolint ignore=DL3006
FROM base-${VARIANT} AS builder
ARG VARIANT
ARG PYTHON_VERSION=3.11
# Keep in step with pyproject.toml (tests/deploy checks it).
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
# Empty: chosen by VARIANT (PyTorch's CPU index for cpu, PyPI's default CUDA 13 wheels for gpu).
ARG TORCH_INDEX_URL=""
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
COPY --from=uv /uv /usr/local/bin/uv
RUN uv python install "${PYTHON_VERSION}" \
 && uv venv /opt/venv --python "${PYTHON_VERSION}"

# Dependencies first (cached until pyproject.toml changes), the project's code last. pyproject.toml gives
# torch/torchvision as ranges: the tested pins below are installed first and satisfy them. No extras: the
# image serves (api, worker, serve, segment); `lwl train` and `make demo` need `pip install 'lwl-vos[train]'`.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN --mount=type=cache,target=/root/.cache/uv \
    index="${TORCH_INDEX_URL}"; \
    if [ -z "${index}" ]; then \
      if [ "${VARIANT}" = "cpu" ]; then index=https://download.pytorch.org/whl/cpu; \
      else index=https://pypi.org/simple; fi; \
    fi; \
    uv pip install --index-url "${index}" "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
WORKDIR /src
# README.md* : optional (setuptools only warns without it); the wildcard keeps COPY from failing.
COPY pyproject.toml README.md* ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv pip install -r pyproject.toml
COPY model/ model/
COPY service/ service/
# Non-editable install: model/ (with the bundled weights) and service/ land in site-packages;
# the build fails here if the weights were not bundled or the CLI does not start.
RUN uv pip install --no-deps . \
 && python -c "import importlib.util as u, pathlib, sys; \
w = pathlib.Path(u.find_spec('model').origin).parent / 'weights'; \
sys.exit(0 if any(w.glob('*.safetensors')) and any(w.glob('*.json')) else f'no bundled weights in {w}')" \
 && lwl --help > /dev/null

# ---------------------------------------------------------------- run time
# hadolint ignore=DL3006
FROM base-${VARIANT} AS runtime
ARG VARIANT
LABEL org.opencontainers.image.title="lwl-vos" \
      org.opencontainers.image.description="LWL video object segmentation service (api + worker)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.lwl-vos.variant="${VARIANT}"

RUN groupadd --system --gid 10001 lwl \
 && useradd --system --uid 10001 --gid lwl --home-dir /home/lwl --create-home \
      --shell /usr/sbin/nologin lwl \
 && mkdir -p /data/results \
 && chown lwl:lwl /data/results

COPY --from=builder /opt/python /opt/python
COPY --from=builder /opt/venv /opt/venv
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/lwl-healthcheck

# Caches go to /tmp so the root filesystem can be mounted read-only (deploy/kubernetes does).
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/lwl \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    LWL_RESULTS_DIR=/data/results

WORKDIR /home/lwl
USER 10001:10001
# 8000: api HTTP/WebSocket (LWL_PORT); 9100: worker /metrics + /healthz (LWL_WORKER_METRICS_PORT).
EXPOSE 8000 9100
# Probes whichever role runs here: /healthz on LWL_PORT (api, serve) or LWL_WORKER_METRICS_PORT (worker).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 CMD ["lwl-healthcheck"]
CMD ["lwl", "api"]
