# refstream: one image for ingest and worker (`refstream ingest`, `refstream worker`).
# Built from the checkout:  docker build -t refstream .   (docker-compose.yml does this)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    REFSTREAM_DATA_DIR=/data

WORKDIR /app
# Only what the distribution needs: no .venv, no broker jars, no test data in the image.
COPY pyproject.toml README.md ./
COPY refstream ./refstream
COPY ingest ./ingest
COPY processors ./processors
COPY projections ./projections
COPY schemas ./schemas
COPY examples ./examples
# the pure core compiled with mypyc (docs/performance.md#compiled-core); if that fails the
# image runs it interpreted, with the same results
RUN pip install . mypy==2.4.1 \
    && (python -m schemas.compile_core build || echo "running the interpreted core") \
    && pip uninstall -y mypy \
    && useradd --system --uid 10001 --home-dir /app refstream \
    && mkdir -p /data && chown refstream /data

USER refstream
VOLUME ["/data"]
# 8080: ingest's webhooks and probes; 6066: the worker's web API
EXPOSE 8080 6066
# no HEALTHCHECK here: the image also runs the worker; docker-compose.yml probes each service
ENTRYPOINT ["refstream"]
# inside a container, listen on all interfaces; publish the port on 127.0.0.1 (see compose)
CMD ["ingest", "--host", "0.0.0.0", "--port", "8080"]
