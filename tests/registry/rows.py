"""Rows written straight into a registry's database, for the states no REST call can reach in this phase (a
computed split, a trained or deployed model: their ports come later). The database is the registry's only
state, so what is written here is what the live process sees."""

from __future__ import annotations

import secrets
from pathlib import Path

from registry.lifecycle import ModelState, SplitState
from registry.store.database import Store, database_url, open_engine
from registry.store.tables import ModelRow, SplitRow


def open_store(url: str) -> Store:
    return Store(open_engine(database_url(url, Path("/nonexistent"))))


def add_split(store: Store, experiment: str, state: SplitState = SplitState.COMPLETE) -> str:
    split_id = secrets.token_hex(8)
    done = state is SplitState.COMPLETE
    store.write_now(
        lambda session: session.add(
            SplitRow(
                id=split_id,
                experiment_name=experiment,
                kind="random",
                parameters={"percent": 80.0, "seed": 7},
                directives=["drop id"],
                state=state.value,
                training_path="/splits/train.parquet" if done else None,
                test_path="/splits/test.parquet" if done else None,
                stats=[{"field": "size"}] if done else None,
                reason="dataset unreadable" if state is SplitState.FAILED else None,
                create_time=1,
            )
        )
    )
    return split_id


def add_model(
    store: Store,
    experiment: str,
    state: ModelState,
    split_id: str | None = None,
    *,
    metrics: dict[str, float | None] | None = None,
    create_time: int = 2,
) -> str:
    model_id = secrets.token_hex(8)
    store.write_now(
        lambda session: session.add(
            ModelRow(
                id=model_id,
                experiment_name=experiment,
                name=f"in-{state.value.lower()}",
                split_id=split_id,
                directives=["drop id"],
                state=state.value,
                evaluation_metrics=dict(metrics or {}),
                create_time=create_time,
            )
        )
    )
    return model_id


def model_state(store: Store, model_id: str) -> str | None:
    row = store.read_now(lambda session: session.get(ModelRow, model_id))
    return None if row is None else row.state


def split_exists(store: Store, split_id: str) -> bool:
    return store.read_now(lambda session: session.get(SplitRow, split_id)) is not None
