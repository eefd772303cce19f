"""The benchmark suite's smoke run: ``bench/run_all.py --quick`` runs every benchmark of issue 14's table at a small
size, each exits 0 (which each does only when its own checks hold: every LoadModel answered, every model
Available, every inference answered and checked, every process stopped cleanly), and every figure of the table
is produced with a value.

No figure is judged: speed is measured by the suite itself (bench/RESULTS.md), never asserted by a test. This
test is here so that a change that breaks a benchmark (a renamed field, a protocol change the simulated agents do
not follow, a flag gone) fails CI instead of being found when someone next measures.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIGURES = {
    "load_ratio_r5",
    "load_ratio_r20",
    "scheduler_cpu_per_load_model",
    "scheduler_rss_per_model",
    "graceful_shutdown_load_runs",
    "restart_first_answer",
    "restart_all_available",
    "restart_agent_sessions",
    "graceful_shutdown_restarted",
    "fanout_deliveries_per_cpu_second",
    "fanout_load_model_slowdown",
    "gateway_p50_ratio",
    "gateway_throughput_ratio",
    "pipeline_p50_ratio",
}
# A difference of two phases' scheduler CPU, which at the quick size can be within the CPU clock's 10 ms tick: the
# figure is then reported as not measurable (None), and the fields it is computed from are checked instead.
DIFFERENCE_OF_SMALL_NUMBERS = {"fanout_deliveries_per_cpu_second"}


def run_suite(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "bench/run_all.py", "--quick", "--workdir", str(tmp_path / "work")]
    command += ["--json", str(tmp_path / "suite.json"), "--out", str(tmp_path / "RESULTS.md")]
    # Its own process group: if it hangs, the group (the suite and the benchmarks it started) is killed by its id.
    suite = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = suite.communicate(timeout=540)
    except subprocess.TimeoutExpired:
        os.killpg(suite.pid, signal.SIGKILL)
        output, _ = suite.communicate()
        pytest.fail(f"the quick suite did not finish in 540 s:\n{output[-6000:]}")
    return subprocess.CompletedProcess(command, suite.returncode, output, "")


@pytest.mark.servers  # the gateway part starts an agent with its MLServer
@pytest.mark.timeout(600)  # a hang guard: the suite takes about a minute and a half
def test_every_benchmark_runs_and_produces_every_figure(tmp_path: Path) -> None:
    finished = run_suite(tmp_path)

    assert finished.returncode == 0, finished.stdout[-6000:]
    suite = json.loads((tmp_path / "suite.json").read_text())
    assert [part["exit_status"] for part in suite["parts"]] == [0] * len(suite["parts"])
    assert {part["label"].split("-")[0] for part in suite["parts"]} == {"load", "restart", "fanout", "gateway"}
    figures = {figure["key"]: figure for figure in suite["figures"]}
    assert set(figures) == FIGURES
    for key, figure in figures.items():
        values = figure["values"]
        numbers = [value for value in values if isinstance(value, int | float)]
        assert values, figure
        if key in DIFFERENCE_OF_SMALL_NUMBERS:
            assert all(value is None or isinstance(value, int | float) for value in values), figure
        else:
            assert numbers == values, figure
    fanout = next(part["result"] for part in suite["parts"] if part["label"] == "fanout")
    assert [phase["subscribers"] for phase in fanout["phases"]] == [1, 50, 100, 1]
    for phase in fanout["phases"]:
        assert phase["deliveries"] >= 100, phase  # every subscriber that reads saw each of the 100 models at least
        assert isinstance(phase["scheduler_cpu_seconds"], int | float), phase
    results = (tmp_path / "RESULTS.md").read_text()
    for figure in figures.values():
        assert f"| {figure['figure']} | {figure['shown']} |" in results
    assert suite["about"]["commit"] in results
