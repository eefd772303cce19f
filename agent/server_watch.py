"""The agent's watch over its inference server: is it serving, and bringing it back when it is not.

What says the server is down:
- for a server the agent launched, its process exiting, however it ends (a crash, kill -9, the OOM killer):
  noticed at once (a pidfd), and the process is reaped and what is left of its process group killed;
- for any server (launched, or reached by --server-url), ``probe_failures`` liveness probes in a row that fail
  (``GET /v2/health/live`` every ``probe_interval`` seconds, each given ``probe_timeout`` seconds): a hung or
  stopped server, an unreachable one, or a busy one. A request the proxy could not forward asks for a probe at
  once.

Busy is not hung. MLServer runs models in its own process (parallel_workers 0): a model's load, or one expensive
request, blocks its event loop, and it answers no probe until that is done, exactly as if it hung. So:
- probes that fail while the agent has a call in flight on the server (``busy()``: a load or an unload) do not
  count, unless the server has then answered nothing for ``hung_timeout`` seconds;
- a launched server that still runs but does not answer is reported down (its models do not serve meanwhile),
  and is killed only once it has answered nothing for ``hung_timeout`` seconds, much longer than the probes take
  to report it; if it answers before, it serves again without a restart (what it held is still loaded).

Then ``on_down(reason)`` runs at once (the agent tells the scheduler, the proxy answers 503, operations in
flight on the server end), and the server is brought back:
- a launched server that exited, or is hung, is killed (its whole process group) and started again with the
  same command, so the same ports, repository and log: the proxy, the adapter and the routes stay valid. The
  first attempt waits ``restart_backoff`` seconds, each failed attempt (or death soon after) doubles the wait,
  up to ``restart_backoff_max``; the count starts over once the server has served for ``restart_backoff_max``
  seconds. A port taken meanwhile makes an attempt fail (the server's log says so), and the next one retries.
- a server reached by URL is not ours to restart: it is probed until it answers again.
Once it answers, ``on_up()`` runs (the agent loads again what it held, then tells the scheduler), while the
watch goes on: a failure during ``on_up`` is reported at once (before ``on_up`` is ended, so nothing it does in
between counts the server as serving) and starts over; so does ``on_up`` failing with a ServerError, after which
a launched server is restarted. Any other exception from ``on_up``, or from the watch itself, is a bug: it ends
``run()`` (the agent then stops, agent/process.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Protocol

from modelplane.bounded_text import MAX_REASON_CHARS, cut, one_line
from servers.adapter import ServerError
from servers.launch import LaunchError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """The agent's --server-probe-*, --server-hung-timeout and --server-restart-* settings (agent/settings.py)."""

    probe_interval: float = 2.0
    probe_timeout: float = 5.0
    probe_failures: int = 3
    # A server that has answered no probe for this long is hung: a launched one is killed and restarted.
    hung_timeout: float = 300.0
    restart_backoff: float = 1.0
    restart_backoff_max: float = 60.0
    # How long a restarted server may take to answer its readiness endpoint.
    ready_timeout: float = 120.0


class ProbedServer(Protocol):
    """The server as the watch sees it (an InferenceServer): what it is, and its liveness."""

    kind: str
    http_url: str

    async def live(self, timeout: float) -> bool: ...


class ServerProcess(Protocol):
    """A server process the agent launched, as the watch drives it (servers.launch.LocalServer)."""

    @property
    def name(self) -> str: ...

    @property
    def pid(self) -> int: ...

    @property
    def running(self) -> bool: ...

    def kill(self) -> None: ...

    async def exited(self) -> int: ...

    async def start_again(self, ready_timeout: float = ...) -> None: ...


class Cause(enum.Enum):
    EXITED = "exited"  # a launched server's process ended
    SILENT = "silent"  # it answered no probe (hung, stopped, unreachable, or busy)
    RECOVERY_FAILED = "recovery failed"  # it answered, but loading the models again on it failed


@dataclass(frozen=True, slots=True)
class Failure:
    cause: Cause
    reason: str  # in words for a person
    at: float  # the watch's clock when it was noticed


def reason_text(text: str) -> str:
    """``text`` as one printable line within the protocol's limit (a launch error carries its log's tail)."""
    return cut(one_line(text), MAX_REASON_CHARS)


def describe_exit(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


class ServerWatch:
    def __init__(
        self,
        server: ProbedServer,
        launched: ServerProcess | None,
        settings: WatchSettings,
        *,
        on_down: Callable[[str], None],
        on_up: Callable[[], Coroutine[None, None, None]],
        busy: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """``busy()``: a call is in flight on the server (ModelManager.busy). ``clock`` measures silence and time
        served, ``sleep`` waits before a restart (both the real ones but in tests)."""
        self.server = server
        self.launched = launched
        self.settings = settings
        self.on_down = on_down
        self.on_up = on_up
        self.busy = busy
        self._clock = clock
        self._sleep = sleep
        self.restarts = 0  # how many times a launched server was started again
        self._attempts = 0  # restart attempts since the server last served for restart_backoff_max seconds
        self._serving_since = 0.0
        self._silent_since: float | None = None  # when the probes started failing; None while it answers
        self._probe_now = asyncio.Event()

    def probe_now(self) -> None:
        """Probe without waiting for the interval (the proxy could not reach the server)."""
        self._probe_now.set()

    async def run(self) -> None:
        """Watch until cancelled. Raises what is not a server's failure (a bug)."""
        self._serving_since = self._clock()
        failure = await self._failure()
        self._report(failure.reason, self._remedy(failure))
        while True:
            await self._serving_again(failure)
            failure = await self._recovered_then_failure()

    def _report(self, reason: str, remedy: str) -> None:
        log.warning("inference server is down: %s", reason)
        self.on_down(reason_text(f"{reason}; {remedy}"))

    # ----------------------------------------------------------------- noticing a failure

    def _remedy(self, failure: Failure) -> str:
        if self.launched is None:
            return "the agent waits for it to answer again"
        if failure.cause is Cause.SILENT and self.launched.running and self._silent_for() < self.settings.hung_timeout:
            return f"it may be busy: killed if it answers nothing for {self.settings.hung_timeout:g}s"
        return "the agent is restarting it"

    def _what(self) -> str:
        if self.launched is not None:
            return f"{self.launched.name} (pid {self.launched.pid})"
        return f"the {self.server.kind} server at {self.server.http_url}"

    async def _failure(self) -> Failure:
        """Wait until the server fails."""
        watchers = [asyncio.create_task(self._probes_fail())]
        if self.launched is not None:
            watchers.append(asyncio.create_task(self._exit(self.launched)))
        try:
            done, _ = await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
            return next(iter(done)).result()
        finally:
            for watcher in watchers:
                watcher.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)

    async def _exit(self, launched: ServerProcess) -> Failure:
        what = self._what()
        status = await launched.exited()
        return Failure(Cause.EXITED, f"{what} exited: {describe_exit(status)}", self._clock())

    async def _probes_fail(self) -> Failure:
        failures = 0
        excused = False  # whether the log said that failed probes are not counted while this silence lasts
        while True:
            await self._next_probe()
            if await self._probe():
                failures, excused = 0, False
                continue
            silent_for = self._silent_for()
            if self.busy():
                if not excused:
                    excused = True
                    log.info(
                        "%s does not answer its liveness probe while a call is in flight on it: not counted, it may "
                        "be busy (unless it answers nothing for %gs)",
                        self._what(),
                        self.settings.hung_timeout,
                    )
                if silent_for >= self.settings.hung_timeout:
                    return Failure(
                        Cause.SILENT,
                        f"{self._what()} did not answer its liveness probe for {silent_for:.0f}s while a call was in "
                        f"flight on it (--server-hung-timeout {self.settings.hung_timeout:g}s)",
                        self._clock(),
                    )
                continue  # a load may block the server's event loop: not counted (see the module docstring)
            failures += 1
            if failures >= self.settings.probe_failures:
                return Failure(
                    Cause.SILENT,
                    f"{self._what()} did not answer its liveness probe {failures} times in a row "
                    f"(every {self.settings.probe_interval:g}s, {self.settings.probe_timeout:g}s each)",
                    self._clock(),
                )

    async def _probe(self) -> bool:
        """One liveness probe; keeps track of how long the server has been silent."""
        started = self._clock()
        if await self.server.live(self.settings.probe_timeout):
            self._silent_since = None
            return True
        if self._silent_since is None:
            self._silent_since = started
        return False

    def _silent_for(self) -> float:
        return 0.0 if self._silent_since is None else self._clock() - self._silent_since

    async def _next_probe(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.probe_interval):
                await self._probe_now.wait()
        self._probe_now.clear()

    # ----------------------------------------------------------------- bringing it back

    async def _serving_again(self, failure: Failure) -> None:
        """Return once the server answers again: a launched one that answers again by itself (it was busy) or
        restarted (it exited, is hung, or the models could not be loaded on it), one reached by URL probed."""
        launched = self.launched
        if launched is None:
            if failure.cause is Cause.RECOVERY_FAILED:
                await self._sleep(self._next_delay(failure))  # the same failure must not loop without a pause
            while not await self._probe():
                await self._next_probe()
            return
        if failure.cause is Cause.SILENT and launched.running:
            worse = await self._unless_hung(launched)
            if worse is None:
                log.info("%s answers again without a restart: it was busy, not hung", self._what())
                return
            self._report(worse.reason, self._remedy(worse))
            failure = worse
        await self._restart(launched, failure)

    async def _unless_hung(self, launched: ServerProcess) -> Failure | None:
        """For a launched server that runs but does not answer: None once it answers again; its exit, or that it is
        hung (it has answered nothing for hung_timeout seconds), if that comes first."""
        exited = asyncio.create_task(self._exit(launched))
        try:
            while not exited.done():
                if self._silent_for() >= self.settings.hung_timeout:
                    hung_for = self.settings.hung_timeout
                    what = f"{self._what()} answered no liveness probe for {hung_for:g}s: killed as hung"
                    return Failure(Cause.SILENT, what, self._clock())
                probe = asyncio.create_task(self._probe())
                await asyncio.wait({probe, exited}, return_when=asyncio.FIRST_COMPLETED)
                if not probe.done():
                    probe.cancel()
                    break
                if probe.result():
                    return None
                waiting = asyncio.create_task(self._next_probe())
                await asyncio.wait({waiting, exited}, return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
            return await exited
        finally:
            exited.cancel()

    def _next_delay(self, failure: Failure) -> float:
        if failure.at - self._serving_since >= self.settings.restart_backoff_max:
            self._attempts = 0  # it served a good while: this is a new failure, not a crash loop
        delay = min(self.settings.restart_backoff_max, self.settings.restart_backoff * 2.0**self._attempts)
        self._attempts += 1
        return delay

    async def _restart(self, launched: ServerProcess, failure: Failure) -> None:
        launched.kill()  # hung, if it still runs: it answers no probe, so it cannot be asked to stop
        await launched.exited()
        while True:
            delay = self._next_delay(failure)
            log.info("restarting %s in %gs (attempt %d)", launched.name, delay, self._attempts)
            await self._sleep(delay)
            try:
                await launched.start_again(self.settings.ready_timeout)
            except LaunchError as error:
                first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
                log.warning("restart attempt %d of %s failed: %s", self._attempts, launched.name, error)
                self.on_down(
                    reason_text(
                        f"{failure.reason}; restart attempt {self._attempts} failed ({first_line}); trying again"
                    )
                )
                continue
            self.restarts += 1
            self._silent_since = None
            log.info("restarted %s (pid %d)", launched.name, launched.pid)
            return

    async def _recovered_then_failure(self) -> Failure:
        """Run ``on_up`` while watching for the next failure; reports that failure (at once, before ``on_up`` is
        ended if it still runs) and returns it."""
        failure = asyncio.create_task(self._failure())
        recovery = asyncio.create_task(self.on_up())
        try:
            await asyncio.wait({failure, recovery}, return_when=asyncio.FIRST_COMPLETED)
            if failure.done():
                found = failure.result()
            else:
                error = recovery.exception()
                if error is None:
                    self._serving_since = self._clock()
                    log.info("inference server serves again: %s", self._what())
                    found = await failure
                elif isinstance(error, ServerError):
                    found = Failure(
                        Cause.RECOVERY_FAILED,
                        f"{self._what()} failed as the models were loaded again: {error}",
                        self._clock(),
                    )
                else:
                    raise error  # a bug, not the server's failure: the watch ends (agent/process.py stops the agent)
            self._report(found.reason, self._remedy(found))
            return found
        finally:
            for task in (failure, recovery):
                task.cancel()
            await asyncio.gather(failure, recovery, return_exceptions=True)
