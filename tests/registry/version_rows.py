"""Registered versions and promotions written straight into a registry's database (as tests/registry/rows.py does
for splits and models): a trained model's versions without a training run, and a promotion a registry was running
when it stopped."""

from __future__ import annotations

import secrets

from sqlalchemy import select

from registry.lifecycle import ModelState
from registry.promotion_rules import PromotionState
from registry.store.database import Store
from registry.store.tables import AliasMoveRow, AliasRow, ModelVersionRow, PromotionRow
from tests.registry import rows

HOUSES = {"srcpath": "/houses.csv", "outcome": "price", "outcomeType": "double"}


def add_version(store: Store, experiment: str, model_id: str, version: int = 1) -> None:
    store.write_now(
        lambda session: session.add(
            ModelVersionRow(
                id=secrets.token_hex(8),
                model_id=model_id,
                experiment_name=experiment,
                version=version,
                artifact_url=f"/runs/{model_id}/{version}",
                artifact_sha256="0" * 64,
                artifact_name="model.joblib",
                artifact_size_bytes=1,
                create_time=3,
            )
        )
    )


def trained(store: Store, experiment: str = "houses", versions: int = 1) -> str:
    model_id = rows.add_model(store, experiment, ModelState.TRAINED)
    for number in range(1, versions + 1):
        add_version(store, experiment, model_id, number)
    return model_id


def add_promotion(store: Store, production: str, candidate: str, state: PromotionState) -> str:
    promotion_id = secrets.token_hex(8)
    store.write_now(
        lambda session: session.add(
            PromotionRow(
                id=promotion_id,
                experiment_name="houses",
                state=state.value,
                stable_name="houses",
                production_model_id=production,
                production_version=1,
                candidate_model_id=candidate,
                candidate_version=1,
                candidate_serving_name=f"houses-{candidate}",
                percent=10,
                create_time=4,
                update_time=4,
            )
        )
    )
    return promotion_id


def add_alias(store: Store, model_id: str, alias: str = "production", serving_name: str | None = "houses") -> None:
    """``alias`` of experiment houses on ``model_id`` version 1, deployed under ``serving_name``."""
    row = AliasRow(
        experiment_name="houses", alias=alias, model_id=model_id, version=1, serving_name=serving_name, update_time=4
    )
    store.write_now(lambda session: session.add(row))


def claim_move(store: Store, model_id: str, *, start_time: int, alias: str = "production") -> None:
    """A move of ``alias`` to ``model_id`` version 1 that a registry claimed at ``start_time`` and has not finished."""
    store.write_now(
        lambda session: session.add(
            AliasMoveRow(experiment_name="houses", alias=alias, model_id=model_id, version=1, start_time=start_time)
        )
    )


def move_claims(store: Store) -> list[tuple[str, str, int]]:
    found = store.read_now(lambda session: list(session.scalars(select(AliasMoveRow))))
    return [(row.alias, row.model_id, row.version) for row in found]
