# mnist-hpo image for workers and the dashboard: CPU PyTorch and the package (specs included).
# No secrets in here: the storage URL (with its password) comes from the environment at run
# time (docker-compose.yml reads it from .env; Kubernetes from a Secret).
FROM python:3.11-slim

# The CPU-only build: the default Linux torch wheel pulls several GB of CUDA libraries that a
# CPU worker never uses. TORCH_INDEX_URL is PyTorch's CPU-only wheel index (the index URL its
# installation selector gives for Linux / pip / CPU); compose passes it from .env.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MNIST_HPO_DEVICE=cpu \
    MNIST_HPO_CACHE=/data/cache \
    MNIST_HPO_ARTIFACTS=/data/artifacts

RUN test -n "$TORCH_INDEX_URL" \
 || { echo "set TORCH_INDEX_URL (.env or --build-arg) to PyTorch's CPU-only wheel index" >&2; exit 1; }
RUN pip install --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"

# Built in a folder removed afterwards: the shipped specs travel inside the package
# (mnist_hpo/studies), and /app stays an empty working folder, where specs of your own
# mounted at /app/studies are found first (./studies; `mnist-hpo studies` lists both).
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
COPY studies ./studies
# torch is already there, so pip keeps the CPU build (pyproject asks for torch>=2.6,<3).
RUN pip install . \
 && cd / && rm -rf /build \
 && useradd --create-home --uid 1000 mnist \
 && mkdir -p /data/cache /data/artifacts \
 && chown -R mnist /data
WORKDIR /app
USER mnist

ENTRYPOINT ["mnist-hpo"]
CMD ["--help"]
