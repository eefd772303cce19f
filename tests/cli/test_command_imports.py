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


def test_the_scheduler_command_loads_no_other_process_or_client_stack() -> None:
    """``modelplane scheduler`` loads the scheduler's code and what it serves with, not the agent's, gateway's,
    controller's, registry's or trainer's settings nor the clients' HTTP and S3 libraries (aiohttp, minio): they
    were ~0.3 s of CPU of every scheduler start, before it restores anything (bench/README.md, "Restart after
    kill -9")."""
    probe = (
        "import contextlib, io, sys\n"
        "from modelplane.cli.main import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['scheduler', '--help'])\n"
        "import scheduler.process\n"  # what the command imports once its flags are read
        "others = ('agent', 'gateway', 'controller', 'registry', 'trainer', 'servers', 'aiohttp', 'minio')\n"
        "print(' '.join(sorted({name.split('.')[0] for name in sys.modules} & set(others))))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert loaded.stdout.split() == [], loaded.stdout
