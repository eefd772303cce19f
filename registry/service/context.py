"""What every part of the service layer works with: the store, where datasets and splits live, the ports, a clock."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from registry.ports import Deployer, SplitMaker, TrafficRouter, TrainingLauncher
from registry.store.database import Store


def new_id() -> str:
    """A split's or model's id: 16 hex digits, random (ids are not guessable, and no two writers collide)."""
    return secrets.token_hex(8)


def now_seconds() -> int:
    return int(time.time())


@dataclass(slots=True)
class ServiceContext:
    store: Store
    datasets_root: Path
    splits_dir: Path  # trainingPath / testPath of computed splits, one folder per split
    split_timeout_seconds: float = 600.0  # a split still SPLITTING after this is failed (its computer stopped)
    training_timeout_seconds: float = 3600.0  # a model still TRAINING after this is failed (its registry stopped)
    split_maker: SplitMaker | None = None
    launcher: TrainingLauncher | None = None
    deployer: Deployer | None = None
    deploy_timeout_seconds: float = 300.0  # a serving alias move claimed longer ago than this is taken over
    traffic: TrafficRouter | None = None  # canaries: the stable name's traffic split (aliases and promotions)
    clock: Callable[[], int] = field(default=now_seconds)
