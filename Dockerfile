# rpc-redis worker image: `rpc-worker MODULE[:ATTR] ...` serving the services/ examples.
#
#   docker build -t rpc-redis-worker .
#   docker run --rm -e RPC_REDIS_URL=redis://host:6379/0 rpc-redis-worker services.calculator
#
# docker-compose.yml runs one container per example service on top of this image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Install the package (runtime dependencies only, no dev extras) from a build
# directory that is removed afterwards, so the installed copy is the only one.
WORKDIR /build
COPY pyproject.toml README.m[d] ./
COPY rpc_redis/ rpc_redis/
RUN pip install . \
    && rm -rf /build

# rpc-worker puts the working directory on sys.path, so `services.calculator` is
# imported from /app/services/.
WORKDIR /app
COPY services/ services/

RUN groupadd --system --gid 10001 rpc \
    && useradd --system --uid 10001 --gid rpc --no-create-home --home-dir /app \
        --shell /usr/sbin/nologin rpc
USER rpc:rpc

# SIGTERM drains in-flight requests, a second one exits at once (see rpc_redis/cli.py).
STOPSIGNAL SIGTERM
ENTRYPOINT ["rpc-worker"]
CMD ["--help"]
