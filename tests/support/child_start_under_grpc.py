"""Start many short child processes through the project's start helpers while gRPC is busy in this process.

Run as ``python -m tests.support.child_start_under_grpc OUT_DIR COUNT`` by tests/shared/test_child_processes.py: in a
process of its own, because what it provokes (gRPC's fork handlers racing its own threads) can abort the whole
process, and a test must see that as a failure, not die of it.

While a grpc.aio server and client in this process keep calls in flight (a unary echo and a bidirectional
stream, from the event loop, and blocking calls from threads of the synchronous API, as the agent, the gateway
and the scheduler of ``modelplane up`` do in one process), it starts COUNT children with
``servers.launch.local.start_process`` (how MLServer and Triton are launched) and COUNT // 4 runs with the
trainer's LocalProcessLauncher, one after another from the event loop. Each child prints a marker and exits 0.
It prints one JSON line: each start's exit status and whether its marker was written, and how many gRPC calls
completed (so the load was real).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from generated.mlops.training.v1 import training_pb2
from servers.launch.local import server_env, start_process
from trainer.launchers.local import LocalLauncherSettings, LocalProcessLauncher
from trainer.run.jobs import DatasetSource, TrainingJob

ECHO = "/test.Echo/Unary"
STREAM = "/test.Echo/Stream"
CLIENT_TASKS = 8
CLIENT_THREADS = 4


class _Echo(grpc.GenericRpcHandler):
    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        if handler_call_details.method == ECHO:

            async def unary(request: bytes, _context: aio.ServicerContext[bytes, bytes]) -> bytes:
                return request

            return grpc.unary_unary_rpc_method_handler(unary)
        if handler_call_details.method == STREAM:

            async def stream(requests: Any, _context: aio.ServicerContext[bytes, bytes]) -> Any:
                async for request in requests:
                    yield request

            return grpc.stream_stream_rpc_method_handler(stream)
        return None


async def _unary_calls(channel: aio.Channel, stop: asyncio.Event, done: list[int]) -> None:
    call: aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(ECHO)
    while not stop.is_set():
        await call(b"x" * 64, timeout=30)
        done[0] += 1


async def _stream_calls(channel: aio.Channel, stop: asyncio.Event, done: list[int]) -> None:
    call: aio.StreamStreamCall[bytes, bytes] = channel.stream_stream(STREAM)()
    while not stop.is_set():
        await call.write(b"y" * 64)
        await call.read()
        done[0] += 1
    await call.done_writing()


def _blocking_calls(target: str, stop: threading.Event, done: list[int]) -> None:
    with grpc.insecure_channel(target) as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(ECHO)
        while not stop.is_set():
            call(b"z" * 64, timeout=30)
            done[0] += 1


async def _start_children(out: Path, count: int) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for index in range(count):
        log_path = out / f"child-{index}.log"
        process = start_process(
            ["/bin/sh", "-c", f"echo ran-{index}"], log_path=log_path, cwd=out, env=server_env(), name="child"
        )
        status = await asyncio.to_thread(process.wait, 60)
        results.append({"how": "start_process", "status": status, "ran": f"ran-{index}" in log_path.read_text()})
    return results


async def _trainer_runs(out: Path, count: int) -> list[dict[str, Any]]:
    program = "import pathlib, sys; pathlib.Path(sys.argv[1], 'result.json').write_text('{}'); print('ran')"
    launcher = LocalProcessLauncher(LocalLauncherSettings(command=(sys.executable, "-c", program)))
    results: list[dict[str, Any]] = []
    for index in range(count):
        job_dir = out / f"job-{index}"
        job_dir.mkdir()
        TrainingJob(f"run-{index}", f"event-{index}", DatasetSource(path="/data/x.csv")).write(job_dir)
        outcome = await launcher.run(job_dir, training_pb2.ModelDesignSchema())
        ran = (job_dir / "result.json").is_file()
        results.append({"how": "trainer", "status": outcome.exit_code, "ran": ran, "detail": outcome.detail[-300:]})
    return results


async def main(out: Path, count: int) -> dict[str, Any]:
    server = aio.server()
    server.add_generic_rpc_handlers((_Echo(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    target = f"127.0.0.1:{port}"
    stop, thread_stop = asyncio.Event(), threading.Event()
    done = [0]
    async with aio.insecure_channel(target) as channel:
        warm_up: aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(ECHO)
        await warm_up(b"warm-up", timeout=30)
        clients = [asyncio.create_task(_unary_calls(channel, stop, done)) for _ in range(CLIENT_TASKS // 2)]
        clients += [asyncio.create_task(_stream_calls(channel, stop, done)) for _ in range(CLIENT_TASKS // 2)]
        threads = [
            threading.Thread(target=_blocking_calls, args=(target, thread_stop, done), daemon=True)
            for _ in range(CLIENT_THREADS)
        ]
        for thread in threads:
            thread.start()
        try:
            results = await _start_children(out, count)
            results += await _trainer_runs(out, count // 4)
        finally:
            stop.set()
            thread_stop.set()
            await asyncio.gather(*clients, return_exceptions=True)
            for thread in threads:
                await asyncio.to_thread(thread.join, 30)
    await server.stop(1)
    return {"results": results, "grpc_calls": done[0]}


if __name__ == "__main__":
    report = asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
    print(json.dumps(report), flush=True)
