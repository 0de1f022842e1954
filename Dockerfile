# revtune: one image for the API, the workers and the migrate job.
#   CPU (default):  docker build -t revtune .
#   GPU (CUDA 12):  docker build --build-arg JAX_EXTRA=cuda12 -t revtune:cuda .
# The CUDA wheels of JAX bring their own CUDA libraries; the host needs only the NVIDIA driver and
# the NVIDIA container toolkit.
FROM python:3.11-slim

ARG JAX_EXTRA=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    REVTUNE_DATA_DIR=/data \
    NUMBA_CACHE_DIR=/var/cache/revtune-numba

WORKDIR /app
COPY pyproject.toml README.md ./
COPY hypercore ./hypercore
COPY jobs ./jobs
COPY api ./api
COPY worker ./worker
COPY revtune ./revtune
COPY migrations ./migrations
# The python -c line compiles the engine's fused CPU kernels into NUMBA_CACHE_DIR, which the workers'
# user may write to: a CPU unlike the builder's compiles its own there, once, on its first job.
RUN pip install . \
    && if [ -n "$JAX_EXTRA" ]; then pip install "jax[$JAX_EXTRA]>=0.4.30,<0.11"; fi \
    && python -c "from hypercore import _fused; assert _fused.available()" \
    && useradd --create-home --uid 10001 revtune \
    && mkdir -p /data && chown -R revtune /data "$NUMBA_CACHE_DIR"

USER revtune
EXPOSE 8000
# Overridden per service in docker-compose.yml; alone, the image runs the API.
CMD ["uvicorn", "api:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000"]
