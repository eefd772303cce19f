"""The registry's suites run twice: on the default SQLite file in the state directory, and on a real PostgreSQL
the session starts (tests/support/postgres_server.py), each test with a database of its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.artifacts.storage_config import secret_env_name
from tests.support.agent_processes import AgentSpec, start_agents, stop_agent

# Imported to register the session's PostgreSQL fixture for these tests: a conftest below the root may not name
# plugins (pytest_plugins), and pytest refused to collect the whole suite when this one did.
from tests.support.postgres_server import PostgresServer, postgres_server  # noqa: F401
from tests.support.processes import start_scheduler, stop_process
from tests.support.real_components import S3Server
from tests.support.registry_process import RegistryProcess, start_registry


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL of the backend the test runs on, empty and the test's alone."""
    if request.param == "sqlite":  # the default: the registry's file in its state directory
        return f"sqlite:///{tmp_path / 'state' / 'registry.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.new_database()


@pytest.fixture
def registry(tmp_path: Path, database_url: str) -> Iterator[RegistryProcess]:
    """A live `modelplane registry` on ``database_url``, with a datasets root, stopped by PID afterwards."""
    (tmp_path / "datasets").mkdir()
    database = [f"--database={database_url}"] if database_url.startswith("postgresql") else []
    running = start_registry(tmp_path, *database, f"--datasets-root={tmp_path / 'datasets'}")
    try:
        yield running
    finally:
        stop_process(running.process)


@pytest.fixture
def s3_deploy_target(tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """A real scheduler and one agent (MLServer) whose storage secret ``modelstore`` names the S3 store:
    (the scheduler's address, the agent's V2 proxy URL). A module using it registers tests.support.real_components
    (``pytest_plugins``) for the session's ``s3_server``."""
    (tmp_path / "scheduler").mkdir()
    scheduler = start_scheduler(tmp_path / "scheduler", "--sync-grace=1")
    monkeypatch.setenv(secret_env_name("modelstore"), s3_server.rclone_ini())
    [agent] = start_agents(scheduler.agent_listen, [AgentSpec(tmp_path / "agent0")])
    try:
        yield scheduler.listen, agent.proxy_url
    finally:
        stop_agent(agent)
        stop_process(scheduler.process)
