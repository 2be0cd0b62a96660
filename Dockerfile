# mnist-hpo image for workers and the dashboard: CPU PyTorch, the package, the shipped specs.
# No secrets in here: the storage URL (with its password) comes from the environment at run
# time (docker-compose.yml reads it from .env; Kubernetes from a Secret).
FROM python:3.11-slim

# The CPU-only build: the default Linux wheel on PyPI pulls several GB of CUDA libraries that
# a CPU worker never uses. Override both for another version or a mirror.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MNIST_HPO_STUDIES=/app/studies \
    MNIST_HPO_DEVICE=cpu \
    MNIST_HPO_CACHE=/data/cache \
    MNIST_HPO_ARTIFACTS=/data/artifacts

RUN pip install --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
COPY studies ./studies
# torch is already there, so pip keeps the CPU build (pyproject asks for torch>=2.6,<3).
RUN pip install . \
 && useradd --create-home --uid 1000 mnist \
 && mkdir -p /data/cache /data/artifacts \
 && chown -R mnist /data
USER mnist

ENTRYPOINT ["mnist-hpo"]
CMD ["--help"]
