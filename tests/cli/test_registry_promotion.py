"""``modelplane registry aliases ...`` and ``modelplane registry promote ...`` against a live registry: what they
print, and their exit statuses (0 done, 1 refused by the state, 2 bad input) with the reason in words."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelplane.cli.main import main
from registry.promotion_rules import PromotionState
from tests.registry import rows
from tests.registry.version_rows import HOUSES, add_promotion, trained
from tests.support.processes import stop_process
from tests.support.registry_process import RegistryProcess, start_registry


@pytest.fixture
def live(tmp_path: Path) -> Iterator[RegistryProcess]:
    registry = start_registry(tmp_path)
    try:
        yield registry
    finally:
        stop_process(registry.process)


def _run(capsys: pytest.CaptureFixture[str], registry: RegistryProcess, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(["registry", *argv, f"--registry=http://{registry.listen}"])
    out, err = capsys.readouterr()
    return status, out, err


def test_aliases_and_promote_from_the_command_line(capsys: pytest.CaptureFixture[str], live: RegistryProcess) -> None:
    assert live.call("PUT", "/experiments/houses", HOUSES).status == 201
    store = rows.open_store(f"sqlite:///{live.state_dir / 'registry.db'}")
    try:
        model = trained(store, versions=2)
        production, candidate = trained(store), trained(store)
    finally:
        store.close()

    status, out, err = _run(capsys, live, "aliases", "set", "houses", "staging", model, "--version=1")
    assert status == 0, err
    assert (json.loads(out)["alias"], json.loads(out)["version"]) == ("staging", 1)
    status, out, err = _run(capsys, live, "aliases", "list", "houses")
    assert status == 0, err
    assert out.split("\n")[0].split() == ["ALIAS", "MODEL", "VERSION", "SERVING", "NAME"]
    assert out.split("\n")[1].split() == ["staging", model, "1", "-"]
    status, out, err = _run(capsys, live, "aliases", "get", "houses", "staging")
    assert (status, json.loads(out)["model"]) == (0, model)
    status, out, err = _run(capsys, live, "aliases", "delete", "houses", "staging")
    assert (status, out.strip()) == (0, "deleted alias staging of experiment houses")

    # Refused by the state: exit 1 with the registry's reason.
    status, out, err = _run(capsys, live, "promote", "houses", model, "--canary=10")
    assert status == 1
    assert "409" in err
    assert "production alias first" in err
    status, out, err = _run(capsys, live, "promote", "houses", model, "--canary=10", "--version=7")
    assert (status, "has no version 7" in err) == (1, True), err  # the version reaches the registry
    status, out, err = _run(capsys, live, "promote", "houses", model, "--abort")
    assert (status, "no promotion running" in err) == (1, True)
    status, out, err = _run(capsys, live, "promote", "houses", "--status")
    assert (status, "404" in err) == (1, True)
    # A canary whose candidate was deleted: --finish is refused by the state (409), --abort is not (this registry
    # has no scheduler: 503), so the two flags cannot be mixed up unnoticed.
    store = rows.open_store(f"sqlite:///{live.state_dir / 'registry.db'}")
    try:
        add_promotion(store, production, candidate, PromotionState.CANARY)
    finally:
        store.close()
    assert live.call("DELETE", f"/experiments/houses/models/{candidate}").status == 204
    status, out, err = _run(capsys, live, "promote", "houses", candidate, "--finish")
    assert (status, "409" in err, "abort the canary" in err) == (1, True, True), err
    status, out, err = _run(capsys, live, "promote", "houses", candidate, "--abort")
    assert (status, "503" in err) == (1, True), err
    status, out, err = _run(capsys, live, "promote", "houses", "--status")
    assert (status, json.loads(out)["state"]) == (0, "CANARY"), err  # neither moved it

    # Bad input: exit 2, before or at the registry.
    for argv in (
        ("promote", "houses", model, "--canary=0"),
        ("promote", "houses", model, "--canary=ten"),
        ("promote", "houses", model, "--finish", "--abort"),
        ("promote", "houses", model),
        ("promote", "houses", "--finish"),
        ("promote", "houses", model, "--finish", "--version=2"),
        ("aliases", "set", "houses", "staging", model, "--version=0"),
    ):
        with pytest.raises(SystemExit) as exited:
            _run(capsys, live, *argv)
        assert exited.value.code == 2, argv
    status, out, err = _run(capsys, live, "aliases", "set", "houses", "Production", model)  # the registry's 400
    assert (status, "400" in err, "a-z 0-9" in err) == (2, True, True)
