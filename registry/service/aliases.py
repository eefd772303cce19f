"""Aliases: an experiment's names for registered versions (registry/promotion_rules.py says what each means and
why they are per experiment). Moving ``production`` deploys the version under the experiment's stable name;
moving ``candidate`` deploys it under its model's own name; other aliases are labels. While a promotion is
unsettled (CANARY, FINISHING, ABORTING) it owns ``production`` and ``candidate``: moving them is a 409 (finish or
abort it).

A move deploys first (the Deployer port answers once the version serves), then records the alias; a deploy the
scheduler refuses leaves the alias where it was (502 with the scheduler's reason). A registry stopped between the
two leaves the alias where it was while the stable name may already serve the new version: the same PUT again
converges (a LoadModel of what is served changes nothing). A serving alias's move is claimed in the database
before the scheduler is asked (AliasMoveRow), so two moves of one alias to different versions never race each
other to the scheduler: the second is a 409 until the first is recorded or has failed."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from registry.errors import Conflict, NotFound, PortFailed, Unavailable
from registry.lifecycle import ModelAction, ModelState, next_model_state
from registry.ports import Deployer, DeployError, DeployRequest, TrafficError, TrafficRouter
from registry.promotion_rules import (
    MAX_ALIASES_PER_EXPERIMENT,
    PRODUCTION,
    SERVING_ALIASES,
    SETTLED,
    PromotionConflict,
    PromotionState,
    alias_held_by,
    check_alias_name,
)
from registry.service import assignments, lookups, versions
from registry.service.context import ServiceContext
from registry.serving_names import stable_name
from registry.store.database import guard
from registry.store.tables import AliasMoveRow, AliasRow, ModelRow, ModelVersionRow, PromotionRow

# A claimant may still be waiting on the scheduler for up to its deploy timeout; this much more before a claim is
# taken as its registry's, stopped.
CLAIM_MARGIN_SECONDS = 60


@dataclass(frozen=True, slots=True)
class VersionRef:
    """A registered version by model id and number (None: the model's newest)."""

    model_id: str
    version: int | None = None


def resolve(session: Session, experiment_name: str, ref: VersionRef) -> tuple[ModelRow, ModelVersionRow]:
    model = lookups.model(session, experiment_name, ref.model_id)
    if ref.version is None:
        newest = versions.newest(session, model.id)
        if newest is None:
            raise Conflict(f"{lookups.describe(model)} has no registered version (train it first)")
        return model, newest
    query = select(ModelVersionRow).where(ModelVersionRow.model_id == model.id, ModelVersionRow.version == ref.version)
    row = session.scalars(query).first()
    if row is None:
        raise NotFound(f"{lookups.describe(model)} has no version {ref.version}")
    return model, row


def current_promotion(session: Session, experiment_name: str) -> PromotionRow | None:
    """The experiment's unsettled promotion, if any (at most one: registry/service/promotions.py)."""
    query = select(PromotionRow).where(
        PromotionRow.experiment_name == experiment_name, PromotionRow.state.not_in([s.value for s in SETTLED])
    )
    return session.scalars(query.limit(1)).first()


def alias_row(session: Session, experiment_name: str, alias: str) -> AliasRow | None:
    return session.get(AliasRow, (experiment_name, alias))


def set_alias(
    session: Session, experiment_name: str, alias: str, version: ModelVersionRow, *, serving: str | None, now: int
) -> AliasRow:
    row = alias_row(session, experiment_name, alias)
    if row is None:
        count = session.scalar(select(func.count()).where(AliasRow.experiment_name == experiment_name)) or 0
        if count >= MAX_ALIASES_PER_EXPERIMENT:
            raise Conflict(
                f"experiment {experiment_name} has {MAX_ALIASES_PER_EXPERIMENT} aliases, the most it may: "
                "delete one first"
            )
        row = AliasRow(experiment_name=experiment_name, alias=alias)
        session.add(row)
    row.model_id = version.model_id
    row.version = version.version
    row.serving_name = serving
    row.update_time = now
    session.flush()
    return row


def move_in_flight(
    session: Session, experiment_name: str, alias: str, now: int, stale_after: float
) -> AliasMoveRow | None:
    """The move of ``alias`` another request is making now, if any (a claim past ``stale_after`` is not)."""
    move = session.get(AliasMoveRow, (experiment_name, alias))
    if move is None or move.start_time < now - stale_after - CLAIM_MARGIN_SECONDS:
        return None
    return move


def claim_move(
    session: Session, experiment_name: str, alias: str, version: ModelVersionRow, *, now: int, stale_after: float
) -> None:
    """Claim the move of ``alias`` to ``version`` before deploying it: refused (409) while another request moves it
    to another version; the same move again (a retry) takes the claim over. Two claims at once: the second's insert
    fails on the key, the store runs it again, and it finds the first's."""
    target = (version.model_id, version.version)
    moving = move_in_flight(session, experiment_name, alias, now, stale_after)
    if moving is not None and (moving.model_id, moving.version) != target:
        raise _being_moved(experiment_name, alias, moving)
    move = session.get(AliasMoveRow, (experiment_name, alias))
    if move is None:
        move = AliasMoveRow(experiment_name=experiment_name, alias=alias)
        session.add(move)
    move.model_id, move.version, move.start_time = target[0], target[1], now
    session.flush()


def _being_moved(experiment_name: str, alias: str, moving: AliasMoveRow) -> Conflict:
    return Conflict(
        f"alias {alias} of experiment {experiment_name} is being moved to model {moving.model_id} version "
        f"{moving.version} by another request: try again once it is done"
    )


def release_move(session: Session, experiment_name: str, alias: str, model_id: str, version: int) -> None:
    move = session.get(AliasMoveRow, (experiment_name, alias))
    if move is not None and (move.model_id, move.version) == (model_id, version):
        session.delete(move)


def record_deployed(model: ModelRow, serving: str, now: int) -> None:
    """The model is served (under ``serving`` among others): DEPLOYED by the lifecycle table, and a name to infer
    with when it had none."""
    assignments.move(model, ModelAction.DEPLOY)
    model.deploy_time = now
    model.reason = None
    if model.serving_name is None:
        model.serving_name = serving


def forget_serving_name(session: Session, experiment_name: str, serving: str, keep: str | None = None) -> None:
    """Models of the experiment recorded as served under ``serving`` (other than ``keep``) are not any more."""
    query = select(ModelRow).where(ModelRow.experiment_name == experiment_name, ModelRow.serving_name == serving)
    for model in session.scalars(query):
        if model.id != keep:
            model.serving_name = None


def check_not_held(session: Session, experiment_name: str, alias: str) -> None:
    promotion = current_promotion(session, experiment_name)
    state = PromotionState(promotion.state) if promotion is not None else None
    if alias_held_by(state, alias):
        raise PromotionConflict(
            f"alias {alias} of experiment {experiment_name} belongs to its promotion (it is {state}): "
            "finish or abort it first (POST .../promotion/finish or .../promotion/abort)"
        )


class AliasService:
    def __init__(self, context: ServiceContext) -> None:
        self._context = context

    def _deployer(self) -> Deployer:
        if self._context.deployer is None:
            raise Unavailable("this registry deploys nothing (no scheduler was wired into it)")
        return self._context.deployer

    def _traffic(self) -> TrafficRouter:
        if self._context.traffic is None:
            raise Unavailable("this registry routes no traffic (no scheduler was wired into it)")
        return self._context.traffic

    async def list(self, experiment_name: str) -> list[AliasRow]:
        def unit(session: Session) -> list[AliasRow]:
            lookups.experiment(session, experiment_name)
            query = select(AliasRow).where(AliasRow.experiment_name == experiment_name)
            return list(session.scalars(query.order_by(AliasRow.alias)))

        return await self._context.store.read(unit)

    async def get(self, experiment_name: str, alias: str) -> AliasRow:
        check_alias_name(alias)

        def unit(session: Session) -> AliasRow:
            lookups.experiment(session, experiment_name)
            row = alias_row(session, experiment_name, alias)
            if row is None:
                raise NotFound(f"experiment {experiment_name} has no alias {alias}")
            return row

        return await self._context.store.read(unit)

    async def put(self, experiment_name: str, alias: str, ref: VersionRef) -> AliasRow:
        """Move (or add) ``alias`` to the version ``ref`` names, deploying it first for production/candidate."""
        check_alias_name(alias)
        now = self._context.clock

        def check(session: Session) -> tuple[int, DeployRequest | None]:
            model, version = resolve(session, experiment_name, ref)
            check_not_held(session, experiment_name, alias)
            if alias not in SERVING_ALIASES:
                return version.version, None
            next_model_state(lookups.describe(model), ModelState(model.state), ModelAction.DEPLOY)
            self._deployer()  # after the state checks: a 409 says more than a 503
            stale_after = self._context.deploy_timeout_seconds
            claim_move(session, experiment_name, alias, version, now=now(), stale_after=stale_after)
            serving = stable_name(experiment_name) if alias == PRODUCTION else None
            request = versions.deploy_request(experiment_name, model, version, serving)
            return version.version, request

        serving_alias = alias in SERVING_ALIASES
        number, request = await (self._context.store.write if serving_alias else self._context.store.read)(check)
        serving: str | None = None
        if request is not None:
            try:
                serving = await self._deployer().deploy(request)
            except DeployError as error:
                await self._context.store.write(
                    lambda session: release_move(session, experiment_name, alias, request.model_id, number)
                )
                raise PortFailed(f"alias {alias}: the version could not be deployed: {error}") from None

        def record(session: Session) -> AliasRow:
            model, version = resolve(session, experiment_name, VersionRef(ref.model_id, number))
            check_not_held(session, experiment_name, alias)
            guard(session, lookups.experiment(session, experiment_name))  # one alias move per experiment at a time
            if serving is not None:
                release_move(session, experiment_name, alias, model.id, version.version)
                record_deployed(model, serving, now())
                if alias == PRODUCTION:
                    forget_serving_name(session, experiment_name, serving, keep=model.id)
            return set_alias(session, experiment_name, alias, version, serving=serving, now=now())

        return await self._context.store.write(record)

    def _not_moving(self, session: Session, experiment_name: str, alias: str) -> None:
        """Conflict while another request moves ``alias`` (its claim: ``claim_move``)."""
        stale_after = self._context.deploy_timeout_seconds
        moving = move_in_flight(session, experiment_name, alias, self._context.clock(), stale_after)
        if moving is not None:
            raise _being_moved(experiment_name, alias, moving)

    async def delete(self, experiment_name: str, alias: str) -> None:
        """Remove the alias. ``production``'s stable name stops serving (nothing answers it any more); a
        candidate's model stays served under its own name (as POST .../deploy left it)."""
        check_alias_name(alias)

        def check(session: Session) -> AliasRow:
            lookups.experiment(session, experiment_name)
            row = alias_row(session, experiment_name, alias)
            if row is None:
                raise NotFound(f"experiment {experiment_name} has no alias {alias}")
            check_not_held(session, experiment_name, alias)
            self._not_moving(session, experiment_name, alias)  # the move would record it again, serving nothing
            if alias == PRODUCTION:
                self._traffic()
            return row

        row = await self._context.store.read(check)
        if alias == PRODUCTION and row.serving_name is not None:
            try:
                await self._traffic().unload(row.serving_name)
            except TrafficError as error:
                raise PortFailed(f"alias {alias}: {error}") from None

        def remove(session: Session) -> None:
            current = alias_row(session, experiment_name, alias)
            if current is None:
                return  # removed meanwhile: the same end
            check_not_held(session, experiment_name, alias)
            self._not_moving(session, experiment_name, alias)
            if alias == PRODUCTION and current.serving_name is not None:
                forget_serving_name(session, experiment_name, current.serving_name)
            session.delete(current)

        await self._context.store.write(remove)
