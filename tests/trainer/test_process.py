# ruff: noqa: S106 -- tokens here are identifiers of design schemas, not passwords
"""The trainer as a process (``python -m trainer.commands trainer``, what ``modelplane trainer`` runs): killed
with SIGKILL mid-run, a restarted trainer trains the event again and loses nothing; SIGTERM stops it cleanly;
``training status`` reads its runs, over TLS and mutual TLS too."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.support.kafka_broker import produce
from tests.support.processes import stop_process
from tests.support.tls_material import make_tls_files
from tests.support.trainer_stack import (
    SUCCESS,
    Stack,
    event,
    get_json,
    headers_of,
    put_schema,
    start_trainer,
    status_of,
    statuses_for,
    wait_for_run_state,
)
from tests.support.training_schemas import iris_multiclass_logistic

pytest_plugins = ["tests.support.real_components", "tests.support.kafka_broker", "tests.support.redis_server"]

pytestmark = pytest.mark.timeout(300)


async def test_killed_mid_run_the_event_is_trained_after_restart_and_nothing_is_lost(stack: Stack) -> None:
    await put_schema(stack, "tok", iris_multiclass_logistic(design_token="crash-safe"))
    first, address, log = start_trainer(stack, "first", "--max-concurrent-runs=1")
    # Two events: the first will be mid-run when the trainer dies, the second still waiting behind it.
    await produce(stack.kafka.bootstrap, stack.training_topic, [event("mid-run", "tok"), event("queued", "tok")])
    running = await wait_for_run_state(address, "training")
    assert running["event_id"] == "mid-run"
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    # The run's process dies with its trainer (no orphan keeps training).
    job_root = str(stack.work / "jobs" / running["run_id"])
    deadline = time.monotonic() + 10
    while any(job_root in " ".join(_cmdline(pid)) for pid in _all_pids()):
        assert time.monotonic() < deadline, "the run outlived its killed trainer"
        await asyncio.sleep(0.1)

    second, address, log = start_trainer(stack, "second", "--max-concurrent-runs=1")
    statuses = await statuses_for(stack, ["mid-run", "queued"], timeout=180)
    assert [status_of(record).status for record in statuses["mid-run"]] == [SUCCESS]
    assert [status_of(record).status for record in statuses["queued"]] == [SUCCESS]
    retrained = headers_of(statuses["mid-run"][0])
    assert retrained["modelplane-run-id"] != running["run_id"]
    assert retrained["modelplane-attempts"] == "2"  # the killed attempt counts

    code, old = await get_json(f"http://{address}/runs/{running['run_id']}")
    assert code == 200
    assert old["state"] == "abandoned"
    code, new = await get_json(f"http://{address}/runs/{retrained['modelplane-run-id']}")
    assert new["previous_run_id"] == running["run_id"]
    assert new["state"] == "succeeded"

    # `training status` shows the runs, and one run in detail.
    listing = await _command("training", "status", f"--trainer=http://{address}")
    assert listing.returncode == 0, listing.stderr
    assert "abandoned" in listing.stdout
    assert listing.stdout.count("succeeded") == 2
    detail = await _command("training", "status", f"--trainer=http://{address}", new["run_id"])
    assert detail.returncode == 0, detail.stderr
    assert f"model: {new['model_uri']}" in detail.stdout
    assert "metric accuracy" in detail.stdout
    for flags in (["--output=json"], ["--json"], ["--output=yaml"]):  # --json: what --output json was before
        document = await _command("training", "status", f"--trainer=http://{address}", new["run_id"], *flags)
        assert document.returncode == 0, document.stderr
        assert yaml.safe_load(document.stdout)["state"] == "succeeded", flags  # JSON is YAML too
    missing = await _command("training", "status", f"--trainer=http://{address}", "run-nope")
    assert missing.returncode == 1
    assert "run run-nope not found" in missing.stderr

    # SIGTERM: a clean stop.
    assert stop_process(second, 60) == 0, log.read_text()


async def test_the_status_api_serves_https_and_requires_client_certificates_with_a_ca(stack: Stack) -> None:
    (stack.work.parent / "tls").mkdir()
    tls = make_tls_files(stack.work.parent / "tls")
    serve = [f"--serve-tls-cert={tls.server_cert}", f"--serve-tls-key={tls.server_key}"]
    process, address, _ = start_trainer(stack, "tls", *serve)
    try:
        ready = json.loads((stack.work.parent / "tls.json").read_text())
        assert ready["status_url"] == f"https://{address}"
        trusted = await _command("training", "status", f"--trainer=https://{address}", f"--tls-ca={tls.ca}")
        assert trusted.returncode == 0, trusted.stderr
        assert trusted.stdout.strip() == "no runs"
        unknown_ca = await _command("training", "status", f"--trainer=https://{address}")
        assert unknown_ca.returncode == 1
        assert "certificate verify failed" in unknown_ca.stderr
        plaintext = await _command("training", "status", f"--trainer=http://{address}")
        assert plaintext.returncode == 1
        assert f"cannot reach the trainer at http://{address}" in plaintext.stderr
        ignored = await _command("training", "status", f"--trainer=http://{address}", f"--tls-ca={tls.ca}")
        assert (ignored.returncode, "need an https:// --trainer URL" in ignored.stderr) == (2, True)
    finally:
        stop_process(process)

    process, address, _ = start_trainer(stack, "mtls", *serve, f"--serve-tls-ca={tls.ca}")
    try:
        server_only = await _command("training", "status", f"--trainer=https://{address}", f"--tls-ca={tls.ca}")
        assert server_only.returncode == 1  # no client certificate: the server ends the handshake
        assert f"cannot reach the trainer at https://{address}" in server_only.stderr
        client = [f"--tls-cert={tls.client_cert}", f"--tls-key={tls.client_key}"]
        mutual = await _command("training", "status", f"--trainer=https://{address}", f"--tls-ca={tls.ca}", *client)
        assert mutual.returncode == 0, mutual.stderr
        half = await _command("training", "status", f"--trainer=https://{address}", f"--tls-cert={tls.client_cert}")
        assert (half.returncode, "--tls-cert and --tls-key must be given together" in half.stderr) == (2, True)
    finally:
        stop_process(process)


async def test_sigterm_lets_the_in_flight_run_finish_and_commits_it(stack: Stack) -> None:
    await put_schema(stack, "tok", iris_multiclass_logistic(design_token="graceful"))
    trainer, address, log = start_trainer(stack, "graceful")
    await produce(stack.kafka.bootstrap, stack.training_topic, [event("in-flight", "tok")])
    await wait_for_run_state(address, "training")
    os.kill(trainer.pid, signal.SIGTERM)
    assert await asyncio.to_thread(trainer.wait, 90) == 0, log.read_text()
    statuses = await statuses_for(stack, ["in-flight"])
    assert [status_of(record).status for record in statuses["in-flight"]] == [SUCCESS]
    # Committed: a new trainer in the same group neither trains nor reports it again.
    again, _, _ = start_trainer(stack, "again")
    await produce(stack.kafka.bootstrap, stack.training_topic, [event("after", "absent")])
    statuses = await statuses_for(stack, ["after"], timeout=60)
    assert len(statuses["in-flight"]) == 1
    assert stop_process(again, 60) == 0


async def _command(*argv: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "trainer.commands", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _all_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _cmdline(pid: int) -> list[str]:
    try:
        return [part.decode(errors="replace") for part in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
    except OSError:
        return []
