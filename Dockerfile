# One image for every role: the command picks it (serve, api, scheduler, worker, migrate, ...).
#   docker build -t async-job-server .                           # default extras: sqs
#   docker build --build-arg EXTRAS=sqs,redis -t async-job-server .
#   docker run --rm async-job-server worker --handlers myapp.jobs
# BASE_IMAGE is any Debian-like image with python3 (3.11+) and its venv module; see
# docs/deploy.md for building one locally when no registry is reachable.
ARG BASE_IMAGE=python:3.11-slim

# Stage 1: build the wheel from the sources (hatchling comes from PyPI, in pip's isolated
# build environment); nothing of this stage but the wheel reaches the image.
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python3 -m venv /opt/build
COPY pyproject.toml README.md ./
COPY src ./src
RUN /opt/build/bin/pip wheel --no-deps --wheel-dir /dist .

# Stage 2: the wheel and its dependencies (pinned by requirements.lock) in a virtual
# environment, run by an unprivileged user.
FROM ${BASE_IMAGE}
ARG EXTRAS=sqs
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/async-jobs/bin:$PATH
RUN groupadd --system --gid 10001 async-jobs \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --create-home async-jobs
COPY --from=build /dist /dist
COPY requirements.lock /dist/requirements.lock
RUN python3 -m venv /opt/async-jobs \
    && wheel="$(ls /dist/*.whl)" \
    && /opt/async-jobs/bin/pip install --constraint /dist/requirements.lock \
        "async-job-server${EXTRAS:+[$EXTRAS]} @ file://${wheel}" \
    && rm -rf /dist
COPY deploy/docker/healthcheck.py /usr/local/bin/async-jobs-healthcheck
USER 10001:10001
WORKDIR /app
# The API listens on every interface inside the container (the contract's variables; the
# command's flags override them).
ENV ASYNC_JOBS_API_HOST=0.0.0.0 ASYNC_JOBS_API_PORT=8000
EXPOSE 8000
# GET /health of the API (port ASYNC_JOBS_API_PORT, under ASYNC_JOBS_API_PREFIX) or, for a
# worker or scheduler, of its own port ASYNC_JOBS_METRICS_PORT.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["async-jobs-healthcheck"]
# Exec form: async-jobs is PID 1 and receives SIGTERM itself (graceful stop, exit 0).
ENTRYPOINT ["async-jobs"]
CMD ["serve"]
