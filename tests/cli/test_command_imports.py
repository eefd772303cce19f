"""What every `modelplane` command loads before it knows which process it runs: not the registry's database stack
(SQLAlchemy, Alembic, pydantic) nor training's (pandas, scikit-learn). Each would add its memory and import time
to the scheduler, the agents and the gateway, which never use them (SQLAlchemy alone was ~17 MiB of RSS)."""

from __future__ import annotations

import subprocess
import sys


def test_the_command_line_loads_no_registry_or_training_stack() -> None:
    probe = (
        "import sys, modelplane.cli.main\n"
        "heavy = ('sqlalchemy', 'alembic', 'pydantic', 'pandas', 'sklearn')\n"
        "print(' '.join(name for name in heavy if name in sys.modules))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert loaded.stdout.split() == [], loaded.stdout
