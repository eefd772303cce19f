# modelplane: one image for the scheduler, agent, gateway and trainer (the command picks the process).
#
# Not built in CI: the CI machines have no Docker engine and no registry to pull python:3.11-slim from
# (tests/deploy/test_compose.py checks this file and docker-compose.yml as text instead).
FROM python:3.11-slim

# Training runs (python -m trainer.run.run_job) need a compiler-free scientific stack: wheels only.
ENV PIP_NO_CACHE_DIR=1 PIP_ONLY_BINARY=:all: PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1

WORKDIR /opt/modelplane
COPY pyproject.toml README.md ./
COPY modelplane ./modelplane
COPY scheduler ./scheduler
COPY agent ./agent
COPY servers ./servers
COPY gateway ./gateway
COPY trainer ./trainer
COPY generated ./generated
RUN python -m pip install . \
    && useradd --system --uid 10001 --home-dir /var/lib/modelplane --create-home modelplane

USER modelplane
WORKDIR /var/lib/modelplane
# Scheduler API, agent service, gateway REST and gRPC, agent proxy REST and gRPC, trainer status API.
EXPOSE 9004 9005 9000 9001 9100 9500 9600
ENTRYPOINT ["modelplane"]
CMD ["--help"]
