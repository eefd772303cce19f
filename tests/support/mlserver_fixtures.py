"""A pytest plugin (``pytest_plugins``): one real MLServer per test module (``mlserver_process``) and an adapter to
it per test (``mlserver``). Not imported by tests, so pytest can rewrite its assertions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from servers.adapter import InferenceServer
from servers.launch import LocalServer, launch_mlserver, server_venv
from tests.support.local_servers import adapter_to, stopped_at_exit


@pytest.fixture(scope="module")
def mlserver_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    server = asyncio.run(launch_mlserver(tmp_path_factory.mktemp("mlserver"), venv=server_venv("mlserver")))
    with stopped_at_exit(server):
        yield server


@pytest.fixture
async def mlserver(mlserver_process: LocalServer) -> AsyncIterator[InferenceServer]:
    async with adapter_to(mlserver_process) as adapter:
        yield adapter
