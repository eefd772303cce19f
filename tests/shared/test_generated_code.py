"""generated/ is exactly what scripts/gen_protos.py makes from proto/, and the check can tell when not."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _load_gen_protos() -> object:
    spec = importlib.util.spec_from_file_location("gen_protos", REPO / "scripts" / "gen_protos.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_generated_code_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout


def test_check_reports_every_kind_of_difference(tmp_path: Path) -> None:
    gen = _load_gen_protos()
    fresh, committed = tmp_path / "fresh", tmp_path / "committed"
    for root in (fresh, committed):
        (root / "pkg").mkdir(parents=True)
        (root / "pkg" / "same.py").write_text("x = 1\n")
    (fresh / "pkg" / "changed.py").write_text("x = 1\n")
    (committed / "pkg" / "changed.py").write_text("x = 2\n")
    (fresh / "pkg" / "new.py").write_text("")
    (committed / "pkg" / "stale.py").write_text("")
    (committed / "pkg" / "__pycache__").mkdir()
    (committed / "pkg" / "__pycache__" / "x.pyc").write_bytes(b"ignored")

    assert gen.differences(fresh, committed) == [  # type: ignore[attr-defined]
        "pkg/new.py (missing from generated/)",
        "pkg/stale.py (not produced by the protos)",
        "pkg/changed.py (content differs)",
    ]


def test_generated_imports_are_ordinary_package_imports() -> None:
    """No sys.path tricks: the generated modules import each other through the `generated` package."""
    for path in (REPO / "generated").rglob("*.py"):
        text = path.read_text()
        assert "\nfrom mlops" not in text, path
        assert "\nimport mlops" not in text, path
    result = subprocess.run(
        [sys.executable, "-I", "-c", "import generated.mlops.agent.v1.agent_pb2 as m; print(m.Register.__module__)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "generated.mlops.agent.v1.agent_pb2"
