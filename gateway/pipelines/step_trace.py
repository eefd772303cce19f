"""What each step of a pipeline received and answered for one request, when the caller asks for it.

A request to ``/v2/pipelines/{name}/infer`` carrying ``x-modelplane-inspect: steps`` gets, besides the usual
V2 answer, a ``"steps"`` list in the answer's JSON: one entry per step run, in the order the steps started, with
the tensors its model received (after ``tensorMap``) and the tensors it answered. ``modelplane pipeline inspect``
sends it. The steps run in the gateway itself (no per-step Kafka topics), so this is where their tensors are
seen; a request without the header records nothing and its answer is unchanged.

A step still running when the output was complete is cancelled (the pipeline answers at its output's first
firing): its entry has ``"outputs": null`` and ``"cancelled": true``. Steps that never ran are not listed.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.inference_types import JsonObject

INSPECT_HEADER = "x-modelplane-inspect"
INSPECT_STEPS = "steps"


def wants_steps(headers: Mapping[str, str]) -> bool:
    """Whether the caller asked for the steps' tensors (header names arrive lower-cased)."""
    return headers.get(INSPECT_HEADER, "").strip().lower() == INSPECT_STEPS


class StepTrace:
    """The steps of one request, each recorded when it starts and given its outputs when its model answers."""

    def __init__(self) -> None:
        self.entries: list[JsonObject] = []

    def started(self, step: str, model: str, inputs: list[JsonObject]) -> JsonObject:
        """A new entry for a step that starts now; pass it to :meth:`answered` when the step's model answers."""
        entry: JsonObject = {"step": step, "model": model, "inputs": inputs, "outputs": None}
        self.entries.append(entry)
        return entry

    @staticmethod
    def answered(entry: JsonObject, outputs: list[JsonObject]) -> None:
        entry["outputs"] = outputs

    def document(self) -> list[JsonObject]:
        """The entries, those still without outputs (cancelled when the output was complete) marked so."""
        for entry in self.entries:
            if entry["outputs"] is None:
                entry["cancelled"] = True
        return self.entries
