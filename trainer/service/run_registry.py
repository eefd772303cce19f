"""Durable run state and event deduplication in Redis, shared by every trainer replica.

Kafka delivers at least once (Tansu has no transactions, and a trainer may crash before committing), so the
same event can arrive twice: on another replica after a rebalance, after a restart, or because a producer
re-sent it. Keys (``P`` is the configured prefix, default ``modelplane:trainer:``):

- ``P lease:<event_id>`` -> ``<owner>`` (``<instance>/<run_id>``), ``SET NX PX lease``: the event is being
  trained by that owner. The owner renews it while it works; a trainer that dies stops renewing, the key
  expires, and the next delivery of the event claims it and trains it again (crash recovery).
- ``P done:<event_id>`` -> JSON :class:`FinalRecord`, kept ``dedupe_ttl``: the event's outcome. A later
  delivery of the event finds it and is not trained again, whether it succeeded or failed permanently.
- ``P event-run:<event_id>`` -> the latest run id for the event: a retrain after a crash carries the earlier
  run's attempt count forward (a run that kills its trainer every time must not loop forever) and marks the
  earlier run abandoned.
- ``P run:<run_id>`` -> JSON :class:`RunRecord` (state, attempts, errors, timestamps), and ``P runs``, a
  sorted set of run ids by creation time, for the status API.

Claim and finish are Lua scripts, so "is it done / is it held / take it" and "record the outcome / drop my
lease" are each one atomic step.
"""

from __future__ import annotations

import enum
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis.asyncio as aioredis

MAX_LISTED_RUNS = 10_000

_CLAIM = """
local done = redis.call('GET', KEYS[1])
if done then return {'done', done} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {'claimed', ''} end
return {'held', redis.call('GET', KEYS[2]) or ''}
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_FINISH = """
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""


class RunState(enum.StrEnum):
    QUEUED = "queued"
    FETCHING = "fetching"
    TRAINING = "training"
    UPLOADING = "uploading"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    # A run whose trainer vanished mid-run (its lease expired); the event was claimed again by a new run.
    ABANDONED = "abandoned"


FINAL_STATES = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.ABANDONED})


@dataclass
class RunRecord:
    run_id: str
    event_id: str
    design_schema_id: str = ""
    state: str = RunState.QUEUED.value
    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    model_uri: str = ""
    owner: str = ""
    source: str = ""  # topic[partition]@offset of the record that started it
    previous_run_id: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float | None = None
    history: list[tuple[str, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RunRecord:
        return cls(
            run_id=str(raw["run_id"]),
            event_id=str(raw["event_id"]),
            design_schema_id=str(raw.get("design_schema_id", "")),
            state=str(raw.get("state", RunState.QUEUED.value)),
            attempts=int(raw.get("attempts", 0)),
            errors=[str(error) for error in raw.get("errors", [])],
            metrics={str(key): float(value) for key, value in raw.get("metrics", {}).items()},
            model_uri=str(raw.get("model_uri", "")),
            owner=str(raw.get("owner", "")),
            source=str(raw.get("source", "")),
            previous_run_id=str(raw.get("previous_run_id", "")),
            created_at=float(raw.get("created_at", 0.0)),
            updated_at=float(raw.get("updated_at", 0.0)),
            finished_at=None if raw.get("finished_at") is None else float(raw["finished_at"]),
            history=[(str(state), float(at)) for state, at in raw.get("history", [])],
        )


@dataclass(frozen=True)
class FinalRecord:
    run_id: str
    succeeded: bool
    errors: list[str]
    model_uri: str
    finished_at: float

    @classmethod
    def from_text(cls, text: str) -> FinalRecord:
        raw = json.loads(text)
        return cls(
            run_id=str(raw.get("run_id", "")),
            succeeded=bool(raw.get("succeeded", False)),
            errors=[str(error) for error in raw.get("errors", [])],
            model_uri=str(raw.get("model_uri", "")),
            finished_at=float(raw.get("finished_at", 0.0)),
        )


class ClaimKind(enum.Enum):
    CLAIMED = "claimed"  # ours to train
    DONE = "done"  # already finished: a duplicate
    HELD = "held"  # someone else holds a live lease


@dataclass(frozen=True)
class Claim:
    kind: ClaimKind
    final: FinalRecord | None = None
    holder: str = ""


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RunRegistry:
    def __init__(self, client: aioredis.Redis, prefix: str, *, lease_seconds: float, ttl_seconds: float) -> None:
        self._client = client
        self._prefix = prefix
        self.lease_ms = max(1, int(lease_seconds * 1000))
        self._ttl_ms = max(1, int(ttl_seconds * 1000))
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._finish = client.register_script(_FINISH)
        self._release = client.register_script(_RELEASE)

    def _key(self, kind: str, name: str) -> str:
        return f"{self._prefix}{kind}:{name}"

    async def claim(self, event_id: str, owner: str) -> Claim:
        kind, detail = await self._claim(
            keys=[self._key("done", event_id), self._key("lease", event_id)], args=[owner, self.lease_ms]
        )
        match _text(kind):
            case "done":
                return Claim(ClaimKind.DONE, final=FinalRecord.from_text(_text(detail)))
            case "claimed":
                return Claim(ClaimKind.CLAIMED)
            case _:
                return Claim(ClaimKind.HELD, holder=_text(detail))

    async def renew(self, event_id: str, owner: str) -> bool:
        """Extend our lease; False when it is no longer ours (it expired and someone else took it)."""
        return bool(await self._renew(keys=[self._key("lease", event_id)], args=[owner, self.lease_ms]))

    async def finish(self, event_id: str, owner: str, final: FinalRecord) -> None:
        await self._finish(
            keys=[self._key("done", event_id), self._key("lease", event_id)],
            args=[owner, json.dumps(asdict(final)), self._ttl_ms],
        )

    async def release(self, event_id: str, owner: str) -> None:
        """Drop our lease without an outcome (shutting down mid-run): the next delivery retrains at once."""
        await self._release(keys=[self._key("lease", event_id)], args=[owner])

    async def latest_run_for(self, event_id: str) -> RunRecord | None:
        run_id = await self._client.get(self._key("event-run", event_id))
        return None if run_id is None else await self.get(_text(run_id))

    async def save(self, record: RunRecord, *, new: bool = False) -> None:
        now = time.time()
        record.updated_at = now
        if new:
            record.created_at = record.created_at or now
        if not record.history or record.history[-1][0] != record.state:
            record.history.append((record.state, now))
        if record.state in FINAL_STATES and record.finished_at is None:
            record.finished_at = now
        pipe = self._client.pipeline(transaction=True)
        pipe.set(self._key("run", record.run_id), json.dumps(record.to_json()), px=self._ttl_ms)
        if new:
            pipe.set(self._key("event-run", record.event_id), record.run_id, px=self._ttl_ms)
            pipe.zadd(self._key("runs", "index"), {record.run_id: record.created_at})
            pipe.zremrangebyrank(self._key("runs", "index"), 0, -MAX_LISTED_RUNS - 1)
        await pipe.execute()

    async def get(self, run_id: str) -> RunRecord | None:
        raw = await self._client.get(self._key("run", run_id))
        if raw is None:
            return None
        return RunRecord.from_json(json.loads(_text(raw)))

    async def list_runs(self, limit: int = 100) -> list[RunRecord]:
        """The newest ``limit`` runs, newest first (runs whose records expired are skipped)."""
        run_ids = await self._client.zrevrange(self._key("runs", "index"), 0, max(0, limit - 1))
        if not run_ids:
            return []
        values = await self._client.mget([self._key("run", _text(run_id)) for run_id in run_ids])
        return [RunRecord.from_json(json.loads(_text(value))) for value in values if value is not None]
