# modelplane: one image for the scheduler, controller, agent, gateway and trainer (the command picks the process).
#
#   docker build -t modelplane:0.1.0 .
#
# Offline (no package index reachable from the build): put every wheel in wheelhouse/ first
# (`pip wheel . -w wheelhouse`), then
#   podman build --network none --build-arg PIP_INSTALL_FLAGS="--no-index --find-links=/wheelhouse" \
#     --build-arg BASE_IMAGE=localhost/debian-python:bookworm -t modelplane:0.1.0 .
# BASE_IMAGE is any image with Python 3.11+ and its venv module as `python3`.
#
# Not built in CI (no registry to pull the base image from): tests/deploy/test_compose.py and tests/deploy/ check this
# file, .dockerignore and docker-compose.yml as text.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG PIP_INSTALL_FLAGS=""
# Training runs (python -m trainer.run.run_job) need a compiler-free scientific stack: wheels only.
ENV PIP_NO_CACHE_DIR=1 PIP_ONLY_BINARY=:all: PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY wheelhouse/ /wheelhouse/
COPY pyproject.toml README.md ./
COPY modelplane ./modelplane
COPY scheduler ./scheduler
COPY agent ./agent
COPY servers ./servers
COPY gateway ./gateway
COPY trainer ./trainer
COPY controller ./controller
COPY registry ./registry
COPY dashboard ./dashboard
COPY status_relay ./status_relay
COPY generated ./generated
# A venv, so the runtime stage takes exactly what was installed and nothing of the build (sources, wheels).
RUN python3 -m venv /opt/modelplane \
    && /opt/modelplane/bin/python -m pip install ${PIP_INSTALL_FLAGS} .

FROM ${BASE_IMAGE}
ENV PATH=/opt/modelplane/bin:${PATH} PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /opt/modelplane /opt/modelplane
# The runtime user (uid 10001) owns the folders modelplane writes, so a volume mounted on one starts out
# writable (Docker and Podman give a new volume the ownership of the folder it is mounted on): the scheduler's
# --state-dir, the agent's models (repository and download cache) and work folder, the trainer's datasets.
RUN groupadd --gid 10001 modelplane \
    && useradd --no-log-init --uid 10001 --gid 10001 --home-dir /var/lib/modelplane --no-create-home modelplane \
    && install -d -o 10001 -g 10001 -m 0755 /var/lib/modelplane /var/lib/modelplane/state \
       /var/lib/modelplane/models /var/lib/modelplane/agent /var/lib/modelplane/datasets

USER 10001:10001
WORKDIR /var/lib/modelplane
# Scheduler API, agent service, scheduler metrics, gateway REST and gRPC, agent proxy REST and gRPC, trainer status API.
EXPOSE 9004 9005 9006 9000 9001 9100 9500 9600
ENTRYPOINT ["modelplane"]
CMD ["--help"]
