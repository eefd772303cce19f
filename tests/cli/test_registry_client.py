"""``modelplane registry experiments|splits|models ...``: the client commands against a live registry (its REST
API, tests/support/registry_process.py): what they print, their exit status (0 done, 1 the work failed, 2 bad
input) and their errors in words (the registry's own reason); the serving command keeps its flags."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from modelplane.auth.access_table import Role
from modelplane.cli.main import main
from tests.support.auth_material import TOKENS, one_identity_per_role
from tests.support.processes import stop_process
from tests.support.registry_process import RegistryProcess, module_registry, start_registry


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """One registry for the module, with iris under its datasets root."""
    with module_registry(Path(tmp_path_factory.mktemp("registry")), with_iris=True) as registry:
        yield registry


def _run(capsys: pytest.CaptureFixture[str], registry: RegistryProcess | None, *argv: str) -> tuple[int, str, str]:
    """``modelplane registry ARGV --registry <live>``: (exit status, stdout, stderr)."""
    capsys.readouterr()
    at = [f"--registry=http://{registry.listen}"] if registry is not None else []
    status = main(["registry", *argv, *at])
    out, err = capsys.readouterr()
    return status, out, err


def test_experiments_put_get_list_delete(capsys: pytest.CaptureFixture[str], live: RegistryProcess) -> None:
    status, out, err = _run(
        capsys, live, "experiments", "put", "houses", "--srcpath=houses.csv", "--outcome=price",
        "--outcome-type=double", "--description=house prices", "--directive=drop id",
    )  # fmt: skip
    assert status == 0, err
    created = json.loads(out)
    assert (created["name"], created["outcome"], created["directives"]) == ("houses", "price", ["drop id"])

    # 409: an outcome already defined as another value; the registry's reason, in words, exit 1.
    status, out, err = _run(capsys, live, "experiments", "put", "houses", "--outcome=rooms")
    assert status == 1
    assert "409" in err
    assert "outcome" in err
    assert "rooms" in err
    assert "Traceback" not in err

    status, out, err = _run(capsys, live, "experiments", "list")
    assert status == 0, err
    header, *lines = out.splitlines()
    assert header.split()[:2] == ["NAME", "SRCPATH"]
    assert any(line.split()[:3] == ["houses", "houses.csv", "price"] for line in lines), out

    status, out, err = _run(capsys, live, "experiments", "list", "--output=json", "--srcpath=houses.csv")
    assert status == 0, err
    assert [document["name"] for document in json.loads(out)] == ["houses"]
    status, out, err = _run(capsys, live, "experiments", "get", "houses", "--output=yaml")
    assert status == 0, err
    assert yaml.safe_load(out)["outcomeType"] == "double"  # the registry's document as it is, in yaml

    status, out, err = _run(capsys, live, "experiments", "get", "houses", "--output=table")
    assert status == 0, err
    assert {line.split()[0]: line.split()[-1] for line in out.splitlines()}["outcomeType"] == "double"

    assert _run(capsys, live, "experiments", "delete", "houses")[0] == 0
    status, out, err = _run(capsys, live, "experiments", "get", "houses")
    assert status == 1
    assert "404" in err
    assert "no experiment houses" in err


def test_pages_say_there_is_more(capsys: pytest.CaptureFixture[str], live: RegistryProcess) -> None:
    for name in ("page-a", "page-b", "page-c"):
        assert _run(capsys, live, "experiments", "put", name, "--srcpath=paged.csv")[0] == 0
    status, out, err = _run(capsys, live, "experiments", "list", "--srcpath=paged.csv", "--limit=2")
    assert status == 0, err
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["page-a", "page-b"]
    assert "1-2 of 3" in err
    status, out, err = _run(capsys, live, "experiments", "list", "--srcpath=paged.csv", "--offset=2", "--limit=2")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["page-c"]
    assert err == ""


def test_split_train_compare_and_a_deploy_refused(capsys: pytest.CaptureFixture[str], live: RegistryProcess) -> None:
    assert _run(
        capsys, live, "experiments", "put", "iris", "--srcpath=flowers/iris.csv", "--outcome=species",
        "--outcome-type=string",
    )[0] == 0  # fmt: skip
    status, out, err = _run(
        capsys, live, "splits", "create", "iris", "--percent=80", "--seed=3", "--directive=drop is_virginica",
        "--wait",
    )  # fmt: skip
    assert status == 0, err
    split = json.loads(out)
    assert split["status"] == "COMPLETE", split

    status, out, err = _run(capsys, live, "splits", "list", "iris")
    assert status == 0, err
    assert out.splitlines()[1].split()[:5] == [split["id"], "random", "80", "3", "COMPLETE"]
    status, out, err = _run(capsys, live, "splits", "get", "iris", split["id"])
    assert status == 0, err
    assert json.loads(out)["stats"][0]["numTotal"] == {"train": 120, "test": 30}

    models = {}
    for name, algorithm, param in (
        ("stump", "decision_tree", "max_depth=1"),
        ("logistic", "logistic_regression", "max_iter=500"),
    ):
        status, out, err = _run(capsys, live, "models", "create", "iris", f"--split={split['id']}", f"--name={name}")
        assert status == 0, err
        models[name] = json.loads(out)["id"]
        status, out, err = _run(
            capsys, live, "models", "train", "iris", models[name], f"--algorithm={algorithm}", f"--param={param}",
            "--wait",
        )  # fmt: skip
        assert status == 0, err
        trained = json.loads(out)
        assert (trained["status"], trained["algorithm"]) == ("TRAINED", algorithm)
        assert trained["hyperparameters"] == {param.split("=")[0]: int(param.split("=")[1])}  # a number, not text

    # Compared by accuracy: the better first (a one-split stump cannot tell three species apart).
    status, out, err = _run(capsys, live, "models", "list", "iris", "--sort=accuracy")
    assert status == 0, err
    header, *lines = out.splitlines()
    assert header.split()[:4] == ["ID", "NAME", "STATUS", "ACCURACY"]
    assert [line.split()[1] for line in lines] == ["logistic", "stump"]
    status, out, err = _run(capsys, live, "models", "list", "iris", "--sort=accuracy", "--order=asc", "--output=json")
    assert [model["name"] for model in json.loads(out)] == ["stump", "logistic"]

    status, out, err = _run(capsys, live, "models", "status", "iris", models["logistic"])
    assert (status, json.loads(out)) == (0, {"id": models["logistic"], "status": "TRAINED"})

    # This registry was given no scheduler: the deploy is refused with its reason (503), exit 1, state unchanged.
    status, out, err = _run(capsys, live, "models", "deploy", "iris", models["logistic"])
    assert status == 1
    assert "503" in err
    assert "no scheduler" in err
    assert json.loads(_run(capsys, live, "models", "get", "iris", models["logistic"])[1])["status"] == "TRAINED"
    # A training that fails under --wait: exit 1, the status with the trainer's reason printed (what only the run
    # finds: a feature the split does not have).
    status, out, err = _run(capsys, live, "models", "create", "iris", f"--split={split['id']}", "--name=doomed")
    doomed = json.loads(out)["id"]
    status, out, err = _run(
        capsys, live, "models", "train", "iris", doomed, "--algorithm=decision_tree", "--feature=no_such_column",
        "--wait",
    )  # fmt: skip
    assert status == 1, out
    failed = json.loads(out)
    assert failed["status"] == "TRAINING_FAILED"
    assert "no_such_column" in failed["reason"]
    # A hyper-parameter the algorithm does not take is the registry's 400 before any run: exit 2, named.
    status, out, err = _run(
        capsys, live, "models", "train", "iris", doomed, "--algorithm=decision_tree", "--param=no_such_knob=1"
    )
    assert status == 2
    assert "400" in err
    assert "no_such_knob" in err
    # Training again a model that is TRAINED is the lifecycle's 409: the work cannot be done, exit 1.
    status, out, err = _run(capsys, live, "models", "train", "iris", models["stump"], "--algorithm=decision_tree")
    assert status == 1
    assert "409" in err
    assert "TRAINED" in err


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        # What the registry refuses as malformed (400): its reason, exit 2.
        (["experiments", "put", "bad", "--directive=frobnicate x"], "frobnicate"),
        (["models", "list", "iris", "--sort=speed"], "'speed'"),
        (["splits", "create", "iris", "--percent=150"], "percent"),
        # What the command line refuses before calling.
        (["models", "train", "iris", "0123456789abcdef", "--algorithm=x", "--param=no-equals"], "KEY=VALUE"),
        (["models", "list", "iris", "--order=asc"], "--order needs --sort"),
        (["experiments", "list", "--limit=0"], "--limit"),
        (["experiments", "frobnicate"], "invalid choice"),
        (["models", "create", "iris", "--algorithm=deep dreaming"], "unknown algorithm 'deep dreaming'"),
    ],
)
def test_bad_input_exits_2_saying_why(
    capsys: pytest.CaptureFixture[str], live: RegistryProcess, argv: list[str], named: str
) -> None:
    assert _run(capsys, live, "experiments", "put", "iris")[0] == 0
    try:
        status, _, err = _run(capsys, live, *argv)
    except SystemExit as exit_:  # argparse's own usage errors
        status, err = int(str(exit_.code)), capsys.readouterr().err
    assert status == 2
    assert named in err
    assert "Traceback" not in err


def test_an_unreachable_registry_or_a_bad_url(capsys: pytest.CaptureFixture[str], live: RegistryProcess) -> None:
    stopped = start_registry(Path(str(live.state_dir) + "-gone"))
    stop_process(stopped.process)  # a port that served a registry a moment ago and now serves nothing
    status, _, err = _run(capsys, None, "experiments", "list", f"--registry=http://{stopped.listen}")
    assert status == 1
    assert f"cannot reach the registry at http://{stopped.listen}" in err
    with pytest.raises(SystemExit) as exited:
        _run(capsys, None, "experiments", "list", "--registry=ftp://127.0.0.1:1")
    assert exited.value.code == 2
    assert "must be an http:// or https:// URL" in capsys.readouterr().err


def test_the_token_file_is_presented(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    tokens, policy = one_identity_per_role(tmp_path)
    guarded = start_registry(tmp_path / "registry", f"--auth-tokens={tokens}", f"--auth-policy={policy}")
    try:
        operator, viewer = tmp_path / "operator-token", tmp_path / "viewer-token"
        operator.write_text(TOKENS[Role.OPERATOR] + "\n")
        viewer.write_text(TOKENS[Role.VIEWER] + "\n")
        status, out, err = _run(capsys, guarded, "experiments", "put", "houses", f"--auth-token-file={operator}")
        assert status == 0, err
        status, out, err = _run(capsys, guarded, "experiments", "list", f"--auth-token-file={viewer}")
        assert status == 0, err
        assert out.splitlines()[1].split()[0] == "houses"
        status, out, err = _run(capsys, guarded, "experiments", "list")
        assert status == 1
        assert "401" in err
        status, out, err = _run(capsys, guarded, "experiments", "delete", "houses", f"--auth-token-file={viewer}")
        assert status == 1
        assert "403" in err
        assert "operator" in err
    finally:
        stop_process(guarded.process)


def test_the_serving_command_keeps_its_flags(capsys: pytest.CaptureFixture[str]) -> None:
    """Flags first is the server (start_registry above runs it so); its flag errors are its own."""
    with pytest.raises(SystemExit) as exited:
        main(["registry", "--listen=not-an-address"])
    assert exited.value.code == 2
    assert "--listen" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["registry", "--help"])
    assert exited.value.code == 0
    assert "modelplane registry experiments|splits|models|versions|datasets ACTION" in " ".join(
        capsys.readouterr().out.split()
    )
