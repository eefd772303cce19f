"""Promotions: a candidate version made production through a canary (registry/promotion_rules.py has the state
table and why each state is written before the scheduler is asked to act).

* canary(model, percent): the candidate is deployed under its model's own name and gets the ``candidate`` alias;
  an Experiment named like the stable name, with it as default, then sends ``percent`` % of the stable name's
  traffic to the candidate. Asked again for the same candidate: a new percent.
* finish(model): the candidate's version is loaded under the stable name (the scheduler keeps the old version
  answering until the new one is available), the experiment is stopped (all traffic to the stable name, now the
  candidate's version), the candidate's own name is unloaded; ``production`` moves to the candidate, ``candidate``
  is removed.
* abort(model): the experiment is stopped and the candidate's own name unloaded; production never moved.

Each step asked of the scheduler converges, so the same call after a failure or a restart completes it; the
promotion row says what was being done (FINISHING, ABORTING) and why the last step failed (``reason``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.errors import Conflict, NotFound, PortFailed, Unavailable
from registry.lifecycle import ModelAction, ModelState, next_model_state
from registry.ports import CanarySplit, Deployer, DeployError, DeployRequest, TrafficError, TrafficRouter
from registry.promotion_rules import (
    CANDIDATE,
    PRODUCTION,
    PromotionAction,
    PromotionConflict,
    PromotionState,
    check_canary_percent,
    next_promotion_state,
)
from registry.service import lookups, versions
from registry.service.aliases import (
    VersionRef,
    alias_row,
    current_promotion,
    forget_serving_name,
    move_in_flight,
    record_deployed,
    resolve,
    set_alias,
)
from registry.service.context import ServiceContext, new_id
from registry.serving_names import model_serving_name
from registry.store.database import guard
from registry.store.tables import REASON_CHARS, PromotionRow


@dataclass(frozen=True, slots=True)
class Ports:
    deployer: Deployer
    traffic: TrafficRouter


def _moved(experiment_name: str, row: PromotionRow | None, action: PromotionAction) -> PromotionState:
    return next_promotion_state(experiment_name, PromotionState(row.state) if row is not None else None, action)


def _of_candidate(experiment_name: str, row: PromotionRow, model_id: str) -> None:
    if row.candidate_model_id != model_id:
        raise PromotionConflict(
            f"the promotion running in experiment {experiment_name} is of model {row.candidate_model_id}, "
            f"not {model_id}"
        )


class PromotionService:
    def __init__(self, context: ServiceContext) -> None:
        self._context = context

    def _ports(self) -> Ports:
        if self._context.deployer is None or self._context.traffic is None:
            raise Unavailable("this registry promotes nothing (no scheduler was wired into it)")
        return Ports(self._context.deployer, self._context.traffic)

    async def get(self, experiment_name: str) -> PromotionRow:
        """The experiment's latest promotion, settled or not."""

        def unit(session: Session) -> PromotionRow:
            lookups.experiment(session, experiment_name)
            query = select(PromotionRow).where(PromotionRow.experiment_name == experiment_name)
            row = session.scalars(query.order_by(PromotionRow.create_time.desc(), PromotionRow.id).limit(1)).first()
            if row is None:
                raise NotFound(f"experiment {experiment_name} has had no promotion")
            return row

        return await self._context.store.read(unit)

    async def _step(
        self, experiment_name: str, promotion_id: str, what: str, step: Callable[[], Awaitable[None]]
    ) -> None:
        """Ask the scheduler for one step; its failure is noted on the promotion (``reason``) and answered 502."""
        try:
            await step()
        except (DeployError, TrafficError) as error:
            reason = f"{what}: {error}"

            def note(session: Session) -> None:
                row = session.get(PromotionRow, promotion_id)
                if row is not None:
                    row.reason = reason[:REASON_CHARS]
                    row.update_time = self._context.clock()

            await self._context.store.write(note)
            raise PortFailed(f"experiment {experiment_name}: {reason} (the same call again resumes)") from None

    async def _start_canary(
        self, experiment_name: str, ref: VersionRef, percent: int
    ) -> tuple[PromotionRow, DeployRequest]:
        """The promotion row in CANARY at ``percent`` (new, or the running one re-weighted), the candidate's deploy."""
        now = self._context.clock

        def begin(session: Session) -> tuple[PromotionRow, DeployRequest]:
            experiment = lookups.experiment(session, experiment_name)
            current = current_promotion(session, experiment_name)
            _moved(experiment_name, current, PromotionAction.CANARY)
            model, version = resolve(session, experiment_name, ref)
            if current is not None and (current.candidate_model_id, current.candidate_version) != (
                model.id,
                version.version,
            ):
                raise PromotionConflict(
                    f"a canary of model {current.candidate_model_id} version {current.candidate_version} is running "
                    f"in experiment {experiment_name}: finish or abort it first"
                )
            if move_in_flight(session, experiment_name, PRODUCTION, now(), self._context.deploy_timeout_seconds):
                raise Conflict(f"the production alias of experiment {experiment_name} is being moved: try again")
            production = alias_row(session, experiment_name, PRODUCTION)
            if production is None or production.serving_name is None:
                raise Conflict(
                    f"experiment {experiment_name} has no production version to compare with: set its production "
                    "alias first (PUT .../aliases/production)"
                )
            if (production.model_id, production.version) == (model.id, version.version):
                raise Conflict(f"model {model.id} version {version.version} is production already")
            next_model_state(lookups.describe(model), ModelState(model.state), ModelAction.DEPLOY)
            self._ports()  # after the state checks: a 409 says more than a 503
            guard(session, experiment)  # two canaries started at once: one wins, the other sees it (409)
            if current is None:
                current = PromotionRow(
                    id=new_id(),
                    experiment_name=experiment_name,
                    state=PromotionState.CANARY.value,
                    stable_name=production.serving_name,
                    production_model_id=production.model_id,
                    production_version=production.version,
                    candidate_model_id=model.id,
                    candidate_version=version.version,
                    candidate_serving_name=model_serving_name(experiment_name, model.id),
                    create_time=now(),
                )
                session.add(current)
            current.percent = percent
            current.update_time = now()
            session.flush()
            # The candidate's name is known before the scheduler is asked: an abort can unload it.
            request = versions.deploy_request(experiment_name, model, version, current.candidate_serving_name)
            return current, request

        return await self._context.store.write(begin)

    async def canary(self, experiment_name: str, ref: VersionRef, percent: int) -> PromotionRow:
        check_canary_percent(percent)
        now = self._context.clock
        row, request = await self._start_canary(experiment_name, ref, percent)
        ports = self._ports()
        served: list[str] = []

        async def deploy() -> None:
            served.append(await ports.deployer.deploy(request))

        await self._step(experiment_name, row.id, "deploying the candidate", deploy)
        candidate_name = served[0]

        def deployed(session: Session) -> None:
            promotion = session.get(PromotionRow, row.id)
            if promotion is None or promotion.state != PromotionState.CANARY.value:
                raise PromotionConflict(f"the promotion of experiment {experiment_name} moved on meanwhile")
            model, version = resolve(session, experiment_name, VersionRef(request.model_id, request.version))
            promotion.candidate_serving_name = candidate_name
            record_deployed(model, candidate_name, now())
            set_alias(session, experiment_name, CANDIDATE, version, serving=candidate_name, now=now())

        try:
            await self._context.store.write(deployed)
        except PromotionConflict:
            await self._undo_overtaken(experiment_name, row, candidate_name, ports)
        split = CanarySplit(row.stable_name, candidate_name, percent)
        await self._step(experiment_name, row.id, "splitting the traffic", lambda: ports.traffic.split(split))

        def split_done(session: Session) -> PromotionRow | None:
            promotion = session.get(PromotionRow, row.id)
            if promotion is None or promotion.state != PromotionState.CANARY.value:
                return None
            promotion.reason = None  # of a step that failed before and has now been done
            promotion.update_time = now()
            return promotion

        done = await self._context.store.write(split_done)
        if done is None:
            await self._undo_overtaken(experiment_name, row, candidate_name, ports)
        return done

    async def _undo_overtaken(
        self, experiment_name: str, row: PromotionRow, candidate_name: str, ports: Ports
    ) -> NoReturn:
        """Take down what this canary's late steps put up, then refuse (409).

        An abort or finish (or the experiment's deletion) can land between the canary's last state check and the
        scheduler's answer to its deploy or split: it has already taken down what it knew of, so a candidate served
        or a split started after that would outlive a promotion that says ABORTED or FINISHED. Both undo steps
        converge and repeat the settling call's own; they are skipped when a newer promotion holds the names."""

        def ours(session: Session) -> bool:
            current = current_promotion(session, experiment_name)
            return current is None or current.id == row.id

        if await self._context.store.read(ours):
            try:
                await ports.traffic.unsplit(row.stable_name)
                if candidate_name != row.stable_name:
                    await ports.traffic.unload(candidate_name)
            except TrafficError as error:
                raise PortFailed(
                    f"experiment {experiment_name}: the promotion moved on while this canary was being started, and "
                    f"undoing it failed ({error}): {candidate_name} may still be served or split"
                ) from None
        raise PromotionConflict(
            f"the promotion of experiment {experiment_name} moved on meanwhile; what this canary started is undone"
        )

    async def _begin(self, experiment_name: str, model_id: str, action: PromotionAction) -> PromotionRow:
        def unit(session: Session) -> PromotionRow:
            lookups.experiment(session, experiment_name)
            current = current_promotion(session, experiment_name)
            after = _moved(experiment_name, current, action)
            assert current is not None  # noqa: S101 - the table moves only an existing promotion this way
            _of_candidate(experiment_name, current, model_id)
            self._ports()
            current.state = after.value
            current.update_time = self._context.clock()
            return current

        return await self._context.store.write(unit)

    async def finish(self, experiment_name: str, model_id: str) -> PromotionRow:
        def candidate_exists(session: Session) -> None:
            """Checked before FINISHING is written: a candidate deleted mid-canary cannot become production, and
            the canary can still be aborted (FINISHING could not be)."""
            current = current_promotion(session, experiment_name)
            if current is None or current.candidate_model_id != model_id:
                return  # _begin refuses it, with the table's reason
            try:
                resolve(session, experiment_name, VersionRef(current.candidate_model_id, current.candidate_version))
            except NotFound as error:
                raise Conflict(f"{error.message}: the candidate cannot become production; abort the canary") from None

        await self._context.store.read(candidate_exists)
        row = await self._begin(experiment_name, model_id, PromotionAction.FINISH)
        ports = self._ports()

        def plan(session: Session) -> DeployRequest:
            model, version = resolve(
                session, experiment_name, VersionRef(row.candidate_model_id, row.candidate_version)
            )
            return versions.deploy_request(experiment_name, model, version, row.stable_name)

        request = await self._context.store.read(plan)

        async def load() -> None:
            await ports.deployer.deploy(request)

        await self._step(experiment_name, row.id, "loading the candidate under the stable name", load)
        await self._step(experiment_name, row.id, "stopping the canary", lambda: ports.traffic.unsplit(row.stable_name))
        if row.candidate_serving_name and row.candidate_serving_name != row.stable_name:
            name = row.candidate_serving_name
            await self._step(
                experiment_name, row.id, "unloading the candidate's own name", lambda: ports.traffic.unload(name)
            )

        def done(session: Session) -> PromotionRow:
            promotion = session.get(PromotionRow, row.id)
            if promotion is None:
                raise NotFound("the promotion was deleted with its experiment")
            promotion.state = _moved(experiment_name, promotion, PromotionAction.FINISHED).value
            promotion.reason = None
            promotion.update_time = self._context.clock()
            model, version = resolve(
                session, experiment_name, VersionRef(row.candidate_model_id, row.candidate_version)
            )
            if promotion.candidate_serving_name:
                forget_serving_name(session, experiment_name, promotion.candidate_serving_name)
            forget_serving_name(session, experiment_name, row.stable_name)
            model.serving_name = row.stable_name
            set_alias(session, experiment_name, PRODUCTION, version, serving=row.stable_name, now=self._context.clock())
            candidate = alias_row(session, experiment_name, CANDIDATE)
            if candidate is not None:
                session.delete(candidate)
            return promotion

        return await self._context.store.write(done)

    async def abort(self, experiment_name: str, model_id: str) -> PromotionRow:
        row = await self._begin(experiment_name, model_id, PromotionAction.ABORT)
        ports = self._ports()
        await self._step(experiment_name, row.id, "stopping the canary", lambda: ports.traffic.unsplit(row.stable_name))
        if row.candidate_serving_name and row.candidate_serving_name != row.stable_name:
            name = row.candidate_serving_name
            await self._step(experiment_name, row.id, "unloading the candidate", lambda: ports.traffic.unload(name))

        def done(session: Session) -> PromotionRow:
            promotion = session.get(PromotionRow, row.id)
            if promotion is None:
                raise NotFound("the promotion was deleted with its experiment")
            promotion.state = _moved(experiment_name, promotion, PromotionAction.ABORTED).value
            promotion.reason = None
            promotion.update_time = self._context.clock()
            if promotion.candidate_serving_name:
                forget_serving_name(session, experiment_name, promotion.candidate_serving_name)
            candidate = alias_row(session, experiment_name, CANDIDATE)
            if candidate is not None:
                session.delete(candidate)
            return promotion

        return await self._context.store.write(done)
