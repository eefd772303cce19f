"""The agent's watch over its inference server: is it serving, and bringing it back when it is not.

What says the server is down:
- for a server the agent launched, its process exiting, however it ends (a crash, kill -9, the OOM killer):
  noticed at once (a pidfd), and the process is reaped and what is left of its process group killed;
- for any server (launched, or reached by --server-url), ``probe_failures`` liveness probes in a row that fail
  (``GET /v2/health/live`` every ``probe_interval`` seconds, each given ``probe_timeout`` seconds): a hung or
  stopped server, or an unreachable one. A request the proxy could not forward asks for a probe at once.

Then ``on_down(reason)`` runs at once (the agent tells the scheduler, the proxy answers 503, operations in
flight on the server end), and the server is brought back:
- a launched server is killed (its whole process group: a hung one too) and started again with the same
  command, so the same ports, repository and log: the proxy, the adapter and the routes stay valid. The first
  attempt waits ``restart_backoff`` seconds, each failed attempt doubles the wait, up to
  ``restart_backoff_max``; the count starts over once the server has served for ``restart_backoff_max``
  seconds. A port taken meanwhile makes an attempt fail (the server's log says so), and the next one retries.
- a server reached by URL is not ours to restart: it is probed until it answers again.
Once it answers, ``on_up()`` runs (the agent loads again what it held, then tells the scheduler), while the
watch goes on: a failure during ``on_up`` starts over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass

from servers.adapter import InferenceServer, ServerError
from servers.launch import LaunchError, LocalServer

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 1024  # ServerHealth.reason's limit (agent.proto)


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """The agent's --server-probe-* and --server-restart-* settings (agent/settings.py documents them)."""

    probe_interval: float = 2.0
    probe_timeout: float = 5.0
    probe_failures: int = 3
    restart_backoff: float = 1.0
    restart_backoff_max: float = 60.0
    # How long a restarted server may take to answer its readiness endpoint.
    ready_timeout: float = 120.0


def reason_text(text: str) -> str:
    """``text`` as one printable line within the protocol's limit (a launch error carries its log's tail)."""
    line = " ".join(text.split())
    return line if len(line) <= MAX_REASON_CHARS else line[: MAX_REASON_CHARS - 3] + "..."


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
        server: InferenceServer,
        launched: LocalServer | None,
        settings: WatchSettings,
        *,
        on_down: Callable[[str], None],
        on_up: Callable[[], Coroutine[None, None, None]],
    ) -> None:
        self.server = server
        self.launched = launched
        self.settings = settings
        self.on_down = on_down
        self.on_up = on_up
        self.restarts = 0  # how many times a launched server was started again
        self._attempts = 0  # restart attempts since the server last served for restart_backoff_max seconds
        self._serving_since = 0.0
        self._probe_now = asyncio.Event()

    def probe_now(self) -> None:
        """Probe without waiting for the interval (the proxy could not reach the server)."""
        self._probe_now.set()

    async def run(self) -> None:
        """Watch until cancelled."""
        self._serving_since = asyncio.get_running_loop().time()
        reason = await self._failure()
        while True:
            log.warning("inference server is down: %s", reason)
            self.on_down(reason_text(f"{reason}; {self._remedy()}"))
            await self._serving_again(reason)
            reason = await self._recovered_then_failure()

    # ----------------------------------------------------------------- noticing a failure

    def _remedy(self) -> str:
        if self.launched is not None:
            return "the agent is restarting it"
        return "the agent waits for it to answer again"

    def _what(self) -> str:
        if self.launched is not None:
            return f"{self.launched.name} (pid {self.launched.pid})"
        return f"the {self.server.kind} server at {self.server.http_url}"

    async def _failure(self) -> str:
        """Wait until the server fails; why, in words for a person."""
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

    async def _exit(self, launched: LocalServer) -> str:
        what = self._what()
        status = await launched.exited()
        return f"{what} exited: {describe_exit(status)}"

    async def _probes_fail(self) -> str:
        failures = 0
        while True:
            await self._next_probe()
            if await self.server.live(self.settings.probe_timeout):
                failures = 0
                continue
            failures += 1
            if failures >= self.settings.probe_failures:
                return (
                    f"{self._what()} did not answer its liveness probe {failures} times in a row "
                    f"(every {self.settings.probe_interval:g}s, {self.settings.probe_timeout:g}s each)"
                )

    async def _next_probe(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.probe_interval):
                await self._probe_now.wait()
        self._probe_now.clear()

    # ----------------------------------------------------------------- bringing it back

    async def _serving_again(self, reason: str) -> None:
        """Return once the server answers again: a launched one restarted, one reached by URL probed."""
        launched = self.launched
        if launched is None:
            while True:
                await self._next_probe()
                if await self.server.live(self.settings.probe_timeout):
                    return
        loop = asyncio.get_running_loop()
        if loop.time() - self._serving_since >= self.settings.restart_backoff_max:
            self._attempts = 0  # it served a good while: this is a new failure, not a crash loop
        launched.kill()  # hung, if it still runs: it answers no probe, so it cannot be asked to stop
        await launched.exited()
        while True:
            delay = min(self.settings.restart_backoff_max, self.settings.restart_backoff * 2**self._attempts)
            self._attempts += 1
            log.info("restarting %s in %gs (attempt %d)", launched.name, delay, self._attempts)
            await asyncio.sleep(delay)
            try:
                await launched.start_again(self.settings.ready_timeout)
            except LaunchError as error:
                first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
                log.warning("restart attempt %d of %s failed: %s", self._attempts, launched.name, error)
                self.on_down(
                    reason_text(f"{reason}; restart attempt {self._attempts} failed ({first_line}); trying again")
                )
                continue
            self.restarts += 1
            log.info("restarted %s (pid %d)", launched.name, launched.pid)
            return

    async def _recovered_then_failure(self) -> str:
        """Run ``on_up`` while watching for the next failure; returns that failure's reason."""
        failure = asyncio.create_task(self._failure())
        recovery = asyncio.create_task(self.on_up())
        try:
            await asyncio.wait({failure, recovery}, return_when=asyncio.FIRST_COMPLETED)
            if not recovery.done():
                return failure.result()  # failed again before the models were back
            error = recovery.exception()
            if error is None:
                self._serving_since = asyncio.get_running_loop().time()
                log.info("inference server serves again: %s", self._what())
                return await failure
            if not isinstance(error, ServerError):
                log.error("bringing the models back failed", exc_info=error)
            return f"{self._what()} failed as the models were loaded again: {error}"
        finally:
            for task in (failure, recovery):
                task.cancel()
            await asyncio.gather(failure, recovery, return_exceptions=True)
