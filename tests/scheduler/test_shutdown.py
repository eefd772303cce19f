"""SIGTERM and SIGINT stop the scheduler gracefully and within a bound, even with streams open."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from modelplane.standard_services import NOT_SERVING, SERVING, check_health, watch_health
from tests.support.processes import start_scheduler, stop_process


async def _open_watch(
    address: str,
) -> tuple[grpc.aio.Channel, grpc.aio.UnaryStreamCall[Any, health_pb2.HealthCheckResponse]]:
    channel = grpc.aio.insecure_channel(address)
    call = watch_health(channel)
    first = await asyncio.wait_for(call.read(), 10)
    assert isinstance(first, health_pb2.HealthCheckResponse)
    assert first.status == SERVING
    return channel, call


def _wait_exit(process: subprocess.Popen[bytes], timeout: float) -> tuple[int, float]:
    started = time.monotonic()
    try:
        process.wait(timeout)
    finally:
        stop_process(process)  # kills it if the wait above timed out
    return process.returncode, time.monotonic() - started


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_stops_cleanly_with_a_stream_open(tmp_path: Path, signum: signal.Signals) -> None:
    scheduler = start_scheduler(tmp_path, "--shutdown-grace=2")
    channel, watch = await _open_watch(scheduler.listen)
    try:
        os.kill(scheduler.process.pid, signum)
        # Watchers hear NOT_SERVING first, so load balancers drain before the server goes.
        update = await asyncio.wait_for(watch.read(), 10)
        assert isinstance(update, health_pb2.HealthCheckResponse)
        assert update.status == NOT_SERVING
        code, seconds = await asyncio.to_thread(_wait_exit, scheduler.process, 15)
    finally:
        watch.cancel()
        await channel.close()
    assert code == 0, scheduler.log()
    assert seconds < 15
    log = scheduler.log()
    assert "shutting down" in log
    assert "scheduler stopped" in log
    assert "Traceback" not in log


async def test_second_signal_skips_the_grace_period(tmp_path: Path) -> None:
    scheduler = start_scheduler(tmp_path, "--shutdown-grace=600")
    channel, watch = await _open_watch(scheduler.listen)
    try:
        os.kill(scheduler.process.pid, signal.SIGTERM)
        await asyncio.wait_for(watch.read(), 10)  # NOT_SERVING: the graceful stop has begun
        os.kill(scheduler.process.pid, signal.SIGTERM)
        code, seconds = await asyncio.to_thread(_wait_exit, scheduler.process, 30)
    finally:
        watch.cancel()
        await channel.close()
    assert code == 0, scheduler.log()
    assert seconds < 30
    assert "second stop signal" in scheduler.log()


async def test_calls_are_refused_after_shutdown(tmp_path: Path) -> None:
    scheduler = start_scheduler(tmp_path)
    assert stop_process(scheduler.process) == 0
    async with grpc.aio.insecure_channel(scheduler.listen) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await check_health(channel, timeout=2)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
