"""ServerWatch on its own, with fakes of what it drives: the server it probes (``live``), the process it launched
(exit, kill, start again) and the agent's callbacks. Fast and exact about the order of things: when the server is
reported down and up, when it is killed, how long each restart waits. Real MLServer and Triton cover the same
behaviour end to end (tests/e2e/test_agent_liveness.py, tests/e2e/test_agent_faults.py).

Probes run every few milliseconds here; the watch's clock (silence, time served) and its restart waits are the
test's, so nothing depends on how fast this machine is: every wait is on a condition, with a hang guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from agent.server_watch import ServerWatch, WatchSettings
from servers.adapter import ServerError
from servers.launch import LaunchError

HANG_GUARD = 30.0  # seconds: only ends a test that would otherwise hang


async def until(check: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(HANG_GUARD):
            while True:
                if check():
                    return
                await asyncio.sleep(0.002)
    except TimeoutError:
        raise AssertionError(f"not within {HANG_GUARD:g}s: {what}") from None


class FakeServer:
    """What the watch asks of an InferenceServer: ``live``, and names for its messages."""

    kind = "mlserver"
    http_url = "http://127.0.0.1:9"

    def __init__(self) -> None:
        self.answering = True
        self.probes = 0

    async def live(self, timeout: float) -> bool:
        self.probes += 1
        return self.answering


class FakeProcess:
    """What the watch asks of a server process it launched."""

    name = "FakeServer"

    def __init__(self) -> None:
        self.pid = 100
        self.starts = 0
        self.kills = 0
        self.failing_starts = 0  # how many of the next start_again calls fail
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    @property
    def running(self) -> bool:
        return not self._exit.done()

    def die(self, status: int = -9) -> None:
        if not self._exit.done():
            self._exit.set_result(status)

    def kill(self) -> None:
        self.kills += 1
        self.die(-9)

    async def exited(self) -> int:
        return await asyncio.shield(self._exit)

    async def start_again(self, ready_timeout: float = 60.0) -> None:
        if self.running:
            raise LaunchError(f"{self.name} (pid {self.pid}) is still running")
        if self.failing_starts:
            self.failing_starts -= 1
            raise LaunchError("FakeServer exited with status 1 before it was ready; log x:\naddress in use")
        self.starts += 1
        self.pid += 1
        self._exit = asyncio.get_running_loop().create_future()


@dataclass
class Agent:
    """The watch's callbacks, recording what they were told."""

    downs: list[str] = field(default_factory=list)
    ups: int = 0
    busy: bool = False
    # Each on_up awaits this (when set) before it returns: a recovery still in progress.
    hold_up: asyncio.Event | None = None
    # What the next on_up calls raise, in order (None: succeed).
    up_failures: list[BaseException | None] = field(default_factory=list)
    # How many downs had been reported when a recovery in progress ended by being cancelled.
    downs_when_recovery_cancelled: list[int] = field(default_factory=list)

    def on_down(self, reason: str) -> None:
        self.downs.append(reason)

    async def on_up(self) -> None:
        self.ups += 1
        try:
            if self.hold_up is not None:
                await self.hold_up.wait()
        except asyncio.CancelledError:
            self.downs_when_recovery_cancelled.append(len(self.downs))
            raise
        if self.up_failures:
            failure = self.up_failures.pop(0)
            if failure is not None:
                raise failure


def recovered(agent: Agent, times: int) -> bool:
    return agent.ups == times


class Clock:
    """The watch's clock and restart waits: time moves only when the test moves it; waits are recorded."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)


@dataclass
class Watched:
    watch: ServerWatch
    server: FakeServer
    process: FakeProcess | None
    agent: Agent
    clock: Clock
    task: asyncio.Task[None]
    crash_expected: bool = False


SETTINGS = WatchSettings(
    probe_interval=0.005,
    probe_timeout=1.0,
    probe_failures=3,
    hung_timeout=300.0,
    restart_backoff=1.0,
    restart_backoff_max=8.0,
)


@contextlib.asynccontextmanager
async def watching(*, launched: bool = True, settings: WatchSettings = SETTINGS) -> AsyncIterator[Watched]:
    server, agent, clock = FakeServer(), Agent(), Clock()
    process = FakeProcess() if launched else None
    watch = ServerWatch(
        server,
        process,
        settings,
        on_down=agent.on_down,
        on_up=agent.on_up,
        busy=lambda: agent.busy,
        clock=clock,
        sleep=clock.sleep,
    )
    task = asyncio.create_task(watch.run())
    watched = Watched(watch, server, process, agent, clock, task)
    try:
        yield watched
    finally:
        task.cancel()
        [ended] = await asyncio.gather(task, return_exceptions=True)
        if isinstance(ended, Exception) and not watched.crash_expected:
            raise ended  # the watch crashed: the test says how, whatever it was waiting for


# -- a launched server that exits ------------------------------------------------------------------------------


async def test_an_exit_is_reported_at_once_then_the_server_is_restarted_and_the_models_loaded_again() -> None:
    async with watching() as w:
        assert w.process is not None
        w.process.die(-9)
        await until(lambda: w.agent.ups == 1, "recovered")
        assert w.agent.downs == ["FakeServer (pid 100) exited: killed by SIGKILL; the agent is restarting it"]
        assert (w.process.starts, w.clock.waits, w.watch.restarts) == (1, [1.0], 1)


async def test_a_failed_restart_is_reported_and_tried_again_after_twice_the_wait() -> None:
    async with watching() as w:
        assert w.process is not None
        w.process.failing_starts = 2
        w.process.die(1)
        await until(lambda: w.agent.ups == 1, "recovered")
        assert w.clock.waits == [1.0, 2.0, 4.0]
        assert len(w.agent.downs) == 3
        assert "exit status 1" in w.agent.downs[0]
        assert "restart attempt 1 failed (FakeServer exited with status 1 before it was ready" in w.agent.downs[1]
        assert "restart attempt 2 failed" in w.agent.downs[2]


async def test_repeated_deaths_back_off_up_to_the_maximum_and_start_over_after_serving_that_long() -> None:
    async with watching() as w:
        assert w.process is not None
        for recoveries in range(1, 6):  # a crash loop: it dies as soon as it is back
            w.process.die(-11)
            await until(functools.partial(recovered, w.agent, recoveries), f"recovery {recoveries}")
        assert w.clock.waits == [1.0, 2.0, 4.0, 8.0, 8.0]
        w.clock.now += SETTINGS.restart_backoff_max  # then it served a good while
        w.process.die(-11)
        await until(lambda: w.agent.ups == 6, "recovery 6")
        assert w.clock.waits[-1] == 1.0  # a new failure, not the same crash loop


# -- recovery (on_up) ------------------------------------------------------------------------------------------


async def test_a_death_during_recovery_is_reported_before_the_recovery_is_ended() -> None:
    """What runs after the report sees the server down at once: no gap where the models half-loaded on a dead
    server look served (review 1.8)."""
    async with watching() as w:
        assert w.process is not None
        w.agent.hold_up = asyncio.Event()
        w.process.die(-9)
        await until(lambda: w.agent.ups == 1, "recovery started")
        w.process.die(-9)  # dies again while the models are loaded again
        await until(lambda: bool(w.agent.downs_when_recovery_cancelled), "the recovery ended")
        assert w.agent.downs_when_recovery_cancelled == [2]  # the second death was reported first
        assert "FakeServer (pid 101) exited" in w.agent.downs[1]
        w.agent.hold_up.set()
        await until(lambda: w.agent.ups == 2, "recovered")
        assert w.process.starts == 2


async def test_a_recovery_that_fails_is_reported_and_the_server_restarted() -> None:
    async with watching() as w:
        assert w.process is not None
        w.agent.up_failures = [ServerError("MLServer could not load model 'iris_1' (HTTP 503): busy", retryable=True)]
        w.process.die(-9)
        await until(lambda: w.agent.ups == 2, "recovered on the second try")
        assert "failed as the models were loaded again: MLServer could not load model" in w.agent.downs[1]
        assert (w.process.kills, w.process.starts) == (2, 2)  # killed though it ran: its state is unknown
        assert w.clock.waits == [1.0, 2.0]


async def test_a_recovery_that_breaks_stops_the_watch() -> None:
    """Not a server's failure but a bug (review 1.9): the watch ends with it, and the agent with the watch."""
    async with watching() as w:
        assert w.process is not None
        w.agent.up_failures = [KeyError("iris_1")]
        w.crash_expected = True
        w.process.die(-9)
        with pytest.raises(KeyError):
            async with asyncio.timeout(HANG_GUARD):
                await w.task


# -- a launched server that stops answering: busy or hung (review 1.4) -----------------------------------------


async def test_a_server_silent_while_a_load_is_in_flight_is_not_reported_down() -> None:
    async with watching() as w:
        w.agent.busy = True
        w.server.answering = False
        probes = w.server.probes
        await until(lambda: w.server.probes >= probes + 4 * SETTINGS.probe_failures, "many failed probes")
        assert w.agent.downs == []
        w.agent.busy = False  # the load is done, the server still silent: now it counts
        await until(lambda: bool(w.agent.downs), "reported down")
        assert "did not answer its liveness probe 3 times in a row" in w.agent.downs[0]


async def test_a_server_silent_through_a_load_past_the_hung_timeout_is_reported_down() -> None:
    async with watching() as w:
        w.agent.busy = True
        w.server.answering = False
        await until(lambda: w.server.probes >= 2, "a failed probe")
        w.clock.now += SETTINGS.hung_timeout
        await until(lambda: bool(w.agent.downs), "reported down")
        assert "for 300s while a call was in flight on it" in w.agent.downs[0], w.agent.downs


async def test_a_silent_server_is_reported_down_but_not_killed_and_serves_again_once_it_answers() -> None:
    async with watching() as w:
        assert w.process is not None
        w.server.answering = False
        await until(lambda: bool(w.agent.downs), "reported down")
        assert "FakeServer (pid 100) did not answer its liveness probe 3 times in a row" in w.agent.downs[0]
        assert "killed if it answers nothing for 300s" in w.agent.downs[0]
        w.clock.now += SETTINGS.hung_timeout - 1  # busy a long while, but not hung
        probes = w.server.probes
        await until(lambda: w.server.probes > probes + 2, "more probes")
        w.server.answering = True
        await until(lambda: w.agent.ups == 1, "recovered")
        assert (w.process.kills, w.process.starts, w.watch.restarts) == (0, 0, 0)


async def test_a_server_silent_past_the_hung_timeout_is_killed_and_restarted() -> None:
    async with watching() as w:
        assert w.process is not None
        w.server.answering = False
        await until(lambda: bool(w.agent.downs), "reported down")
        w.clock.now += SETTINGS.hung_timeout
        process = w.process
        await until(lambda: process.kills == 1, "killed")
        assert "answered no liveness probe for 300s: killed as hung; the agent is restarting it" in w.agent.downs[1]
        w.server.answering = True
        await until(lambda: w.agent.ups == 1, "recovered")
        assert w.process.starts == 1


async def test_a_silent_server_that_exits_is_restarted_without_waiting_for_the_hung_timeout() -> None:
    async with watching() as w:
        assert w.process is not None
        w.server.answering = False
        await until(lambda: bool(w.agent.downs), "reported down")
        w.process.die(-6)
        await until(lambda: w.agent.ups == 1, "recovered")
        assert w.process.starts == 1
        assert w.agent.downs[-1] == "FakeServer (pid 100) exited: killed by SIGABRT; the agent is restarting it"


# -- a server reached by URL -----------------------------------------------------------------------------------


async def test_a_server_reached_by_url_is_probed_until_it_answers_again() -> None:
    async with watching(launched=False) as w:
        w.server.answering = False
        await until(lambda: bool(w.agent.downs), "reported down")
        assert w.agent.downs == [
            "the mlserver server at http://127.0.0.1:9 did not answer its liveness probe 3 times in a row "
            "(every 0.005s, 1s each); the agent waits for it to answer again"
        ]
        w.server.answering = True
        await until(lambda: w.agent.ups == 1, "recovered")


async def test_a_failed_recovery_on_a_server_reached_by_url_is_tried_again_after_a_wait() -> None:
    async with watching(launched=False) as w:
        w.agent.up_failures = [ServerError("MLServer repository index failed (HTTP 500): oops", retryable=True)]
        w.server.answering = False
        await until(lambda: bool(w.agent.downs), "reported down")
        w.server.answering = True
        await until(lambda: w.agent.ups == 2, "recovered on the second try")
        assert "failed as the models were loaded again: MLServer repository index failed" in w.agent.downs[1]
        assert w.clock.waits == [1.0]  # not a tight loop against a server that keeps failing the same way


async def test_probe_now_probes_without_waiting_for_the_interval() -> None:
    # An hour between probes: a report within the hang guard came from the probe asked for.
    async with watching(settings=WatchSettings(probe_interval=3600, probe_failures=1, hung_timeout=300)) as w:
        w.server.answering = False
        w.watch.probe_now()
        await until(lambda: bool(w.agent.downs), "reported down after the probe asked for")
        assert "did not answer its liveness probe 1 times in a row" in w.agent.downs[0]
