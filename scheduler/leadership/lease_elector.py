"""One scheduler replica's part in electing a leader with a ``coordination.k8s.io/v1`` Lease.

The rules (client-go's leader election, written again for asyncio):

- A STANDBY looks at the Lease every retry period (jittered). It acquires it when it is free (no holder: never
  held, or released by a leader that stopped gracefully) or expired, or when it names this replica already (a
  restarted replica with the same identity: its earlier process is gone). Acquiring is a write over the version
  read; when two replicas race, the API server takes one write and answers the other 409, which means "someone
  else got it": that replica stays a standby.
- The LEADING replica renews every retry period. When a renewal fails (the API server is unreachable or errs) it
  retries until its renew deadline, counted from when it *sent* its last successful renewal; past it, or as soon
  as it sees another holder in the Lease, it steps down (STEPPED_DOWN) and must stop acting as leader at once.
- A graceful stop (``stop(release=True)``) releases the Lease (no holder, duration 1 s) after the leader stopped
  acting, so a standby takes over at its next look instead of waiting for the Lease to expire.
- ``holderIdentity`` is this replica's identity (the pod name); ``leaseTransitions`` counts changes of holder; the
  leader's addresses (what clients should dial) are annotations a standby reads to name the leader.

Clocks, and what is assumed of them:

- Local deadlines use the monotonic clock (``time.monotonic``): a wall-clock step (NTP, a VM resumed) moves none.
- Expiry as a standby sees it: the record has not changed (same resourceVersion) for the holder's own
  ``leaseDurationSeconds`` since *this standby first saw it*. That compares no two machines' clocks: it assumes
  only that they run at about the same rate. It is also conservative: a standby sees a renewal only after the
  leader sent it, so the leader's renew deadline (counted from before it sent) always ends first, with at least
  ``lease duration - renew deadline`` to spare. That margin is the time a leader that lost the Lease has to stop
  acting; a leader whose event loop stalls for longer than that could act after another took over (the scheduler
  process also exits on a stall watchdog; see scheduler/elected_process.py).
- The one use of wall clocks: a Lease whose ``renewTime`` is older than its duration plus MAX_CLOCK_SKEW by this
  replica's clock counts as expired at once (a replica started long after the last leader died need not wait a
  whole lease duration). This assumes the nodes' wall clocks agree within MAX_CLOCK_SKEW (NTP keeps them within
  milliseconds).

Takeover bound: a standby that watches the Lease holds it at most ``LeaseTiming.takeover_bound_seconds`` after the
leader's last renewal (plus the API server's answers).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from scheduler.leadership.kubernetes_leases import LeaseApiError, LeaseConflict
from scheduler.leadership.leadership_state import LeadershipEvent, LeadershipState, next_state
from scheduler.leadership.lease_records import STANDBY_JITTER, LeaderAddresses, LeaseRecord, LeaseTiming, Term

log = logging.getLogger(__name__)

MAX_CLOCK_SKEW = timedelta(seconds=5)
RELEASED_LEASE_DURATION_SECONDS = 1


class Leases(Protocol):
    """Where the Lease is kept (kubernetes_leases.KubernetesLeases)."""

    async def read(self) -> LeaseRecord | None: ...

    async def create_free(self) -> None: ...

    async def write(self, record: LeaseRecord) -> LeaseRecord: ...


class LeaseElector:
    """Stands by, leads, steps down: ``run()`` drives it; ``leading`` and ``stepped_down`` say when."""

    def __init__(
        self,
        leases: Leases,
        identity: str,
        addresses: LeaderAddresses,
        timing: LeaseTiming,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not identity:
            raise ValueError("a leader election identity must not be empty")
        self._leases = leases
        self.identity = identity
        self.addresses = addresses
        self.timing = timing
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        self.state = LeadershipState.STANDBY
        self.leading = asyncio.Event()
        self.stepped_down = asyncio.Event()
        self.why_stepped_down = ""
        self.term: Term | None = None  # the term this replica leads (or led)
        self._record: LeaseRecord | None = None  # the Lease as last read or written
        self._seen_version: str | None = None  # the resourceVersion a standby watches for expiry ...
        self._seen_at = 0.0  # ... and when (monotonic) it first saw it
        self._renew_sent_at = 0.0  # monotonic: when the last successful acquire or renewal was sent
        self._task: asyncio.Task[None] | None = None
        self.lost = False  # stepped down because the Lease could not be renewed or was taken

    # -- what the process asks ----------------------------------------------------------------------------------

    def leader(self) -> LeaderAddresses | None:
        """Where the leader is, as far as this replica knows: itself while leading, else what the Lease says."""
        if self.state is LeadershipState.LEADING:
            return self.addresses
        if self.state is LeadershipState.STEPPED_DOWN or self._record is None:
            return None
        return self._record.leader() if not self._record.held_by(self.identity) else None

    @property
    def acting_deadline(self) -> float | None:
        """Monotonic: when this replica must have stopped acting as leader, unless it renews first. None while it
        stands by and after it stopped gracefully; kept after it lost the Lease (the process must be gone by then,
        see scheduler/leadership/stall_fence.py)."""
        if self.state is LeadershipState.LEADING or self.lost:
            return self._renew_sent_at + self.timing.renew_deadline_seconds
        return None

    def start(self) -> asyncio.Task[None]:
        """Run the election as a task of its own (``stop`` ends it)."""
        self._task = asyncio.create_task(self.run(), name="leader-election")
        return self._task

    async def run(self) -> None:
        """Stand by until this replica acquires the Lease, then renew it until it is lost. Returns once stepped
        down (see ``why_stepped_down``); a failure of the election itself is a step down too, never a crash."""
        try:
            while self.state is LeadershipState.STANDBY:
                if await self._try_acquire():
                    break
                await asyncio.sleep(self.timing.retry_period_seconds * random.uniform(1.0, STANDBY_JITTER))  # noqa: S311
            while self.state is LeadershipState.LEADING:
                await asyncio.sleep(self.timing.retry_period_seconds)
                await self._renew_until_deadline()
        except Exception as error:  # a bug here must not leave a leader that no longer renews
            log.exception("the leader election failed")
            leading = self.state is LeadershipState.LEADING
            self._step(LeadershipEvent.LOST if leading else LeadershipEvent.STOPPED, f"the election failed: {error}")

    async def stop(self, *, release: bool) -> None:
        """End the election. ``release``: a leader gives the Lease up (no holder), so a standby takes over at its
        next look instead of waiting for the Lease to expire. Only after this replica stopped acting as leader!
        Best effort: a Lease that cannot be written simply expires."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if release and self.state is LeadershipState.LEADING:
            await self._release()
        if self.state is not LeadershipState.STEPPED_DOWN:
            self._step(LeadershipEvent.STOPPED, "stopped")

    async def _release(self) -> None:
        self._step(LeadershipEvent.RELEASED, "released the lease on a graceful stop")
        try:
            async with asyncio.timeout(self.timing.renew_deadline_seconds):
                for _ in range(2):  # once more after a conflict: a renewal cancelled in flight may have landed
                    if self._record is None or not self._record.held_by(self.identity):
                        return
                    released = self._record.replace(
                        holder=None,
                        lease_duration_seconds=RELEASED_LEASE_DURATION_SECONDS,
                        renew_time=self._wall_clock(),
                        annotations={},
                    )
                    try:
                        self._record = await self._leases.write(released)
                        log.info("released %s", self._leases)
                        return
                    except LeaseConflict:
                        self._record = await self._leases.read()
        except (LeaseApiError, TimeoutError) as error:
            log.warning("could not release the lease (it will expire instead): %s", error or "timed out")

    # -- standing by ---------------------------------------------------------------------------------------------

    async def _try_acquire(self) -> bool:
        sent_at = self._monotonic()
        try:
            async with asyncio.timeout(self.timing.renew_deadline_seconds):
                current = await self._leases.read()
                if current is None:
                    await self._leases.create_free()
                    current = await self._leases.read()
        except (LeaseApiError, TimeoutError) as error:
            log.warning("cannot read the lease: %s", error or "timed out")
            return False
        if current is None:
            return False  # created and deleted at once by someone: look again next time
        self._observe(current)
        if not (current.free or current.held_by(self.identity) or self._expired(current)):
            return False
        now = self._wall_clock()
        ours = current.held_by(self.identity)
        wanted = current.replace(
            holder=self.identity,
            lease_duration_seconds=self.timing.lease_duration_seconds,
            acquire_time=current.acquire_time if ours and current.acquire_time else now,
            renew_time=now,
            transitions=current.transitions if ours else current.transitions + 1,
            annotations=self.addresses.annotations(),
        )
        try:
            async with asyncio.timeout(self.timing.renew_deadline_seconds):
                stored = await self._leases.write(wanted)
        except LeaseConflict as error:
            log.info("another replica wrote the lease first (%s): standing by", error)
            return False
        except (LeaseApiError, TimeoutError) as error:
            log.warning("cannot acquire the lease: %s", error or "timed out")
            return False
        self._record = stored
        self._renew_sent_at = sent_at
        self.term = Term(stored.uid or "", self.identity, stored.transitions)
        self._step(LeadershipEvent.ACQUIRED, f"acquired {self._leases} (transition {stored.transitions})")
        return True

    def _observe(self, current: LeaseRecord) -> None:
        self._record = current
        if current.resource_version != self._seen_version:
            self._seen_version = current.resource_version
            self._seen_at = self._monotonic()

    def _expired(self, current: LeaseRecord) -> bool:
        duration = current.lease_duration_seconds or self.timing.lease_duration_seconds
        if self._monotonic() - self._seen_at >= duration:
            return True
        renewed = current.renew_time
        return renewed is not None and self._wall_clock() - renewed > timedelta(seconds=duration) + MAX_CLOCK_SKEW

    # -- leading -------------------------------------------------------------------------------------------------

    async def _renew_until_deadline(self) -> None:
        """Renew; retry failures until the renew deadline; step down past it or when another holds the Lease."""
        deadline = self._renew_sent_at + self.timing.renew_deadline_seconds
        while True:
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                self._step(
                    LeadershipEvent.LOST,
                    f"could not renew the lease within the renew deadline ({self.timing.renew_deadline_seconds:g}s)",
                )
                return
            sent_at = self._monotonic()
            try:
                async with asyncio.timeout(remaining):
                    taken_by = await self._renew_once()
            except (LeaseApiError, TimeoutError) as error:
                log.warning("cannot renew the lease: %s", error or "timed out")
                await asyncio.sleep(min(self.timing.retry_period_seconds, max(0.0, deadline - self._monotonic())))
                continue
            if taken_by is not None:
                self._step(LeadershipEvent.LOST, taken_by)
                return
            if self.state is not LeadershipState.LEADING:
                return
            self._renew_sent_at = sent_at
            self._step(LeadershipEvent.RENEWED, "")
            return

    async def _renew_once(self) -> str | None:
        """One renewal: None when renewed, else why the Lease is no longer ours. A lost race (409) is read again:
        it is ours still (a write of ours whose answer was lost) or someone else's."""
        if self._record is None:
            raise LeaseApiError("no lease was read yet")
        for _ in range(2):
            wanted = self._record.replace(
                holder=self.identity,
                lease_duration_seconds=self.timing.lease_duration_seconds,
                renew_time=self._wall_clock(),
                annotations=self.addresses.annotations(),
            )
            try:
                self._record = await self._leases.write(wanted)
                return None
            except LeaseConflict:
                current = await self._leases.read()
            if current is None:
                return "the lease was deleted"
            if not current.held_by(self.identity):
                return f"the lease is held by {current.holder or 'nobody'} now"
            self._record = current
        raise LeaseApiError("the lease kept changing under renewals")

    def _step(self, event: LeadershipEvent, why: str) -> None:
        before = self.state
        self.state = next_state(self.state, event)
        if event is LeadershipEvent.ACQUIRED:
            self.leading.set()
            log.warning("leading: %s", why)
        elif self.state is LeadershipState.STEPPED_DOWN and before is not LeadershipState.STEPPED_DOWN:
            self.lost = event is LeadershipEvent.LOST
            self.why_stepped_down = why
            self.stepped_down.set()
            if before is LeadershipState.LEADING:
                log.error("stepped down as leader: %s", why)
