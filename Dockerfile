# syntax=docker/dockerfile:1
#
# One image, three entry points (the default is the gateway):
#   docker run IMAGE                                   -> python -m services.gateway  (port 8080)
#   docker run IMAGE python -m services.worker         -> worker  (8081: probes + metrics only)
#   docker run IMAGE python -m services.monitor        -> monitor (8082)
#
# Build:  docker build -t ia-atendimento-bot:$(git describe --tags --always) .
# Configuration comes only from environment variables (see .env.example and docs/operations.md).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
# builder: resolve and install the dependencies (the ranges in pyproject.toml) into a venv.
# Every dependency ships manylinux wheels for CPython 3.11, so no compiler is installed; if one
# is ever needed it belongs in this stage only, never in the runtime stage.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

WORKDIR /src
# Dependencies first, from pyproject.toml alone (empty package stubs stand in for the code), so
# this layer is reused while only the code changes.
COPY pyproject.toml README.md ./
RUN mkdir -p shared services \
    && touch shared/__init__.py services/__init__.py \
    && pip install . \
    && rm -rf shared services build ./*.egg-info
# Then the project itself (non-editable). pip and setuptools are build tools: they leave the venv
# before it is copied to the runtime stage.
COPY shared ./shared
COPY services ./services
RUN pip install --no-deps --force-reinstall . \
    && python -m pip uninstall --yes pip setuptools \
    && rm -rf /root/.cache build ./*.egg-info

# ---------------------------------------------------------------------------------------------
# runtime: the slim base, the venv and the code; nothing else.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="ia-atendimento-bot" \
      org.opencontainers.image.description="AI customer-service bot: gateway, worker and monitor over RabbitMQ and Redis" \
      org.opencontainers.image.licenses="MIT"

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1

# Fixed, non-root identity (uid/gid 1001) that Kubernetes' runAsNonRoot can verify numerically.
RUN groupadd --system --gid 1001 atendimento \
    && useradd --system --uid 1001 --gid 1001 --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin atendimento

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
# The services run from here (`python -m services.<name>`), so shared/ and services/ sit beside
# the working directory exactly as in the repository. Files stay root-owned and read-only for
# the service user: the container needs no writable path except /tmp (and LOG_DIR, if set).
COPY shared ./shared
COPY services ./services
COPY deploy/docker/healthcheck.py /usr/local/bin/atendimento-healthcheck
RUN python -m compileall -q /app \
    && chmod 0755 /usr/local/bin/atendimento-healthcheck

USER 1001:1001

EXPOSE 8080 8081 8082

# Liveness only (the event loop answers); the port follows the service this container runs.
# Kubernetes ignores HEALTHCHECK and uses its own probes (deploy/k8s).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/usr/local/bin/atendimento-healthcheck", "/monitoring/live"]

# The services handle SIGTERM themselves: readiness goes false, consumers stop, in-flight work
# drains within SHUTDOWN_GRACE_SECONDS. Exec form keeps Python as PID 1 so the signal reaches it.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "services.gateway"]
