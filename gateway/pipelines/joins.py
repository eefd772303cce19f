"""A pipeline step's joins (or the output's): what it holds until it fires, and when that satisfies its
``inputsJoin`` and ``triggersJoin`` (the rules are in executor.py's docstring). Pure: the executor's run loop
(executor.py) asks these with what a step holds, which steps are still live and the time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field

from gateway.inference_types import JsonObject
from gateway.pipelines.graph import Consumer, JoinType, Port


@dataclass(frozen=True, slots=True)
class Missing:
    """A reference to a tensor its source did not emit; an error only if a firing needs it."""

    status: int
    message: str


@dataclass(slots=True)
class Held:
    """What a step (or the output) holds until it fires: the latest message per reference."""

    data: dict[int, list[JsonObject] | Missing] = field(default_factory=dict)
    triggers: dict[int, bool] = field(default_factory=dict)
    window_ends: float | None = None  # join window, started by the first arrival after the last firing


def could_fire(consumer: Consumer, held: Held, live: Set[str]) -> bool:
    """Whether ``consumer``'s joins could still be satisfied by what it ``held`` and what ``live`` steps may emit."""

    def coming(port: Port) -> bool:
        return port.reference.step in live

    data = [index in held.data or coming(port) for index, port in enumerate(consumer.inputs)]
    if not (all(data) if consumer.inputs_join is JoinType.INNER else any(data)):
        return False
    if not consumer.triggers:
        return True
    triggers = [held.triggers.get(index, False) or coming(port) for index, port in enumerate(consumer.triggers)]
    return all(triggers) if consumer.triggers_join is JoinType.INNER else any(triggers)


def ready_to_fire(consumer: Consumer, held: Held, live: Set[str], now: float) -> bool:
    """Whether ``consumer``'s joins are satisfied now by what it ``held`` (the module docstring of executor.py)."""
    window_over = held.window_ends is not None and now >= held.window_ends

    def settled(ports: Sequence[Port], arrived: Mapping[int, object]) -> bool:
        """Every reference arrived, or the missing ones cannot arrive any more, or the window passed."""
        return window_over or all(
            index in arrived or port.reference.step not in live for index, port in enumerate(ports)
        )

    data_ready = bool(held.data) and (
        len(held.data) == len(consumer.inputs)
        if consumer.inputs_join is JoinType.INNER
        else consumer.inputs_join is JoinType.ANY or settled(consumer.inputs, held.data)
    )
    if not data_ready or not consumer.triggers:
        return data_ready
    true = sum(held.triggers.values())
    if consumer.triggers_join is JoinType.INNER:
        return true == len(consumer.triggers)
    return true > 0 and (consumer.triggers_join is JoinType.ANY or settled(consumer.triggers, held.triggers))
