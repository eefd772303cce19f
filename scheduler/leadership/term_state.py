"""What a replica that has just been elected does with its own state dir: keep the store only if it is this term's.

Each replica has its own state dir (a StatefulSet gives each pod its PVC), written only while it leads. A replica
that led an earlier term and stood by since holds a store that is stale by everything the leaders after it
accepted: loaded as it is, it would bring back models since deleted and old versions. So a new leader keeps its
store only when no other replica has led since it was written (the Lease's holder never changed in between: same
Lease object, same holder, same transition count, recorded in ``leadership-term.json`` when the term began), as
when the only replica restarts. Otherwise it starts from an empty store, and desired state comes back from the
controller's re-send (SubscribeControlPlane asks it for every resource) and observed state from the agents as they
reconnect. Nothing acknowledged is lost by that: in a deployment with leader election the resources in the
Kubernetes API server are the source of truth, and the controller re-sends every one of them. (Models loaded only
through the Scheduler API, with no resource behind them, are not carried from one leader's term to the next.)

The order makes a crash at any point safe: the stale store is removed first and the new term recorded after, so a
replica that dies in between finds a term that is not its own and removes the (already empty) store again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from scheduler.leadership.lease_records import Term
from scheduler.persistence.sqlite_store import FILE_NAME

TERM_FILE = "leadership-term.json"
_STORE_FILES = (FILE_NAME, f"{FILE_NAME}-wal", f"{FILE_NAME}-shm")
_MAX_TERM_FILE_BYTES = 4096


def recorded_term(state_dir: Path) -> Term | None:
    """The term the store in ``state_dir`` was written in, or None (none recorded, or unreadable: not trusted)."""
    try:
        with (state_dir / TERM_FILE).open("rb") as file:
            document = json.loads(file.read(_MAX_TERM_FILE_BYTES))
        return Term(str(document["lease_uid"]), str(document["holder"]), int(document["transitions"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def begin_term(state_dir: Path, term: Term) -> bool:
    """Make ``state_dir`` fit to lead ``term``: True when its store is kept (written in this very term), False when
    a stale one was removed so the term starts from an empty store. Raises OSError when the dir cannot be changed."""
    if recorded_term(state_dir) == term:
        return True
    for name in _STORE_FILES:
        (state_dir / name).unlink(missing_ok=True)
    temporary = state_dir / f".{TERM_FILE}.tmp"
    with temporary.open("w") as file:
        json.dump({"lease_uid": term.lease_uid, "holder": term.holder, "transitions": term.transitions}, file)
        file.flush()
        os.fsync(file.fileno())
    temporary.replace(state_dir / TERM_FILE)
    directory = os.open(state_dir, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return False
