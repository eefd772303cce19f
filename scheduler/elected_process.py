"""The scheduler as one of several replicas (``--leader-election-lease``): stand by until elected, then serve as the
only scheduler does (process.serve), until the Lease is lost or the process is stopped.

- Standing by: both listeners are up (standby_service.py): health NOT_SERVING, every other call UNAVAILABLE with
  the leader's address. Nothing is opened in the state dir but its lock.
- Elected: the standby listeners stop, the state dir is made fit for the term (leadership/term_state.py: the store
  is kept only if it is this term's, else the term starts empty and the controller's re-send and the agents'
  registrations rebuild it), and the same ports are bound again by the leader's listeners.
- Lost (the Lease could not be renewed within the renew deadline, or another replica holds it): the scheduler stops
  acting at once: status streams end, the listeners stop without grace (calls in flight are cancelled) and the
  process exits with status 1 (LeadershipLost), so Kubernetes starts it again, as a standby. A stall fence
  (leadership/stall_fence.py) ends the process if that has not happened by half-way between the renew deadline
  and the Lease's expiry.
- Stopped (SIGTERM): the leader stops serving gracefully, then releases the Lease, so a standby takes over at its
  next look (one retry period) instead of waiting for the Lease to expire.

Takeover bound: a standby holds the Lease at most ``lease duration + 2 x 1.2 x retry period`` after the dead
leader's last renewal (LeaseTiming.takeover_bound_seconds), then starts serving (open the store, bind) in well
under a second; agents and the controller reach it on their next reconnection attempt (the agents' backoff is at
most 10 s).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from modelplane import __version__
from modelplane.kubernetes_api import kubernetes_client
from modelplane.logs import with_fields
from modelplane.ready_file import write_ready_file
from scheduler.leadership.election_settings import LeaderElectionSettings
from scheduler.leadership.kubernetes_leases import KubernetesLeases
from scheduler.leadership.leadership_state import LeadershipLost
from scheduler.leadership.lease_elector import LeaseElector
from scheduler.leadership.lease_records import LeaderAddresses
from scheduler.leadership.stall_fence import StallFence
from scheduler.leadership.term_state import begin_term
from scheduler.process import ShutdownRequest, serve
from scheduler.settings import SchedulerSettings
from scheduler.standby_service import StandbyListeners

log = logging.getLogger(__name__)


async def serve_elected(
    settings: SchedulerSettings, election: LeaderElectionSettings, shutdown: ShutdownRequest
) -> None:
    """Stand by, lead when elected, until stopped; raises LeadershipLost when the Lease was lost while leading."""
    async with kubernetes_client(election.kubernetes) as api:
        standby = StandbyListeners(settings)
        await standby.start()
        addresses = LeaderAddresses(
            api=election.advertised(standby.api_address.port), agent=election.advertised(standby.agent_address.port)
        )
        elector = LeaseElector(
            KubernetesLeases(api, election.namespace, election.lease), election.identity, addresses, election.timing
        )
        standby.follow(
            lambda: leader.api if (leader := elector.leader()) else None,
            lambda: leader.agent if (leader := elector.leader()) else None,
        )
        if settings.ready_file is not None:
            fields = {"listen": str(standby.api_address), "agent_listen": str(standby.agent_address)}
            write_ready_file(settings.ready_file, {"version": __version__, **fields, "role": "standby"})
        log.info(
            "scheduler standing by",
            extra=with_fields(
                identity=election.identity,
                lease=f"{election.namespace}/{election.lease}",
                listen=str(standby.api_address),
                agent_listen=str(standby.agent_address),
            ),
        )
        elector.start()
        events = (elector.leading, shutdown.requested, elector.stepped_down)
        waits = [asyncio.create_task(event.wait()) for event in events]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            await standby.stop()
        if shutdown.requested.is_set() or not elector.leading.is_set():
            await elector.stop(release=True)  # releases only a Lease it holds
            if not shutdown.requested.is_set():
                raise LeadershipLost(f"the election ended: {elector.why_stepped_down}")
            return
        await _lead(
            dataclasses.replace(settings, listen=standby.api_address, agent_listen=standby.agent_address),
            election,
            elector,
            shutdown,
        )


async def _lead(
    settings: SchedulerSettings, election: LeaderElectionSettings, elector: LeaseElector, shutdown: ShutdownRequest
) -> None:
    timing = election.timing
    fence = StallFence(
        lambda: elector.acting_deadline, (timing.lease_duration_seconds - timing.renew_deadline_seconds) / 2
    )
    fence.start()
    lost = asyncio.create_task(_stop_when_lost(elector, shutdown))
    try:
        assert elector.term is not None  # noqa: S101 - set when it acquired
        kept = await asyncio.to_thread(begin_term, settings.state_dir, elector.term)
        log.warning(
            "leading: %s",
            "the store is this term's: kept"
            if kept
            else "starting the term from an empty store (another replica "
            "led since this one's store was written): the controller's re-send and the agents rebuild the state",
            extra=with_fields(identity=election.identity, transitions=elector.term.transitions),
        )
        await serve(dataclasses.replace(settings, hold_unknown_models=not kept), shutdown)
    finally:
        lost.cancel()
        await elector.stop(release=not elector.stepped_down.is_set())
        fence.stop()
    if elector.lost:
        raise LeadershipLost(f"stopped leading: {elector.why_stepped_down}")


async def _stop_when_lost(elector: LeaseElector, shutdown: ShutdownRequest) -> None:
    await elector.stepped_down.wait()
    log.error("lost the lease (%s): stopping at once", elector.why_stepped_down)
    shutdown.signal()
    shutdown.signal()  # a second signal: no grace for calls in flight, this replica must stop acting now
