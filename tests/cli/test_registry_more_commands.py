"""The client commands for the rest of seed 002's table and seed 001's records, against a live registry: split
status and delete, model delete, models split / unsplit / directives, versions list / get, datasets list / get;
their exit statuses (0 done, 1 the work failed, 2 bad input) and errors in words. And one HTTP connection for a
whole command, however long its --wait polls."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelplane.cli.main import main
from tests.support.registry_process import RegistryProcess, module_registry


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """One registry for the module, with iris under its datasets root and an experiment over it."""
    with module_registry(Path(tmp_path_factory.mktemp("registry")), with_iris=True) as registry:
        document = {"srcpath": "flowers/iris.csv", "outcome": "species", "outcomeType": "string"}
        assert registry.call("PUT", "/experiments/iris", document).status == 201
        yield registry


def _run(capsys: pytest.CaptureFixture[str], at: str, *argv: str) -> tuple[int, str, str]:
    """``modelplane registry ARGV --registry http://AT``: (exit status, stdout, stderr); argparse's exits too."""
    capsys.readouterr()
    try:
        status = main(["registry", *argv, f"--registry=http://{at}"])
    except SystemExit as exited:
        status = int(str(exited.code))
    out, err = capsys.readouterr()
    return status, out, err


def _json(capsys: pytest.CaptureFixture[str], at: str, *argv: str) -> dict[str, object]:
    status, out, err = _run(capsys, at, *argv)
    assert status == 0, err
    document = json.loads(out)
    assert isinstance(document, dict)
    return document


def test_a_models_directives_split_unsplit_and_delete(
    capsys: pytest.CaptureFixture[str], live: RegistryProcess
) -> None:
    at = live.listen
    model = str(_json(capsys, at, "models", "create", "iris", "--name=prepared", "--directive=drop is_virginica")["id"])
    assert _json(capsys, at, "models", "status", "iris", model)["status"] == "PREPARING"

    # PUT .../directives while PREPARING: replaced, in order.
    two = ["drop is_virginica", "drop sepal_width"]
    changed = _json(capsys, at, "models", "directives", "iris", model, *(f"--directive={line}" for line in two))
    assert (changed["status"], changed["directives"]) == ("PREPARING", two)
    # An unknown directive is the registry's 400, naming it: exit 2; the model is unchanged.
    status, _, err = _run(capsys, at, "models", "directives", "iris", model, "--directive=frobnicate x")
    assert status == 2
    assert "frobnicate" in err
    assert "Traceback" not in err
    assert _json(capsys, at, "models", "get", "iris", model)["directives"] == two
    # Neither --directive nor --clear: the command line refuses before calling.
    status, _, err = _run(capsys, at, "models", "directives", "iris", model)
    assert status == 2
    assert "--directive" in err

    # POST .../models/{id}/split with the model's directives, waited for.
    split = _json(capsys, at, "models", "split", "iris", model, "--percent=80", "--seed=7", "--wait")
    assert split["status"] == "COMPLETE", split
    split_id = str(split["id"])
    assert _json(capsys, at, "splits", "status", "iris", split_id) == {"id": split_id, "status": "COMPLETE"}
    got = _json(capsys, at, "models", "get", "iris", model)
    assert (got["status"], got["split"], got["directives"]) == ("DATA_READY", split_id, two)
    # DATA_READY: the directives are the lifecycle's 409 (exit 1, its reason); --clear would have sent [].
    status, _, err = _run(capsys, at, "models", "directives", "iris", model, "--clear")
    assert status == 1
    assert "409" in err
    assert "DATA_READY" in err

    # DELETE .../split: unassigned, and the split (used by no other model) deleted.
    unsplit = _json(capsys, at, "models", "unsplit", "iris", model)
    assert (unsplit["status"], unsplit["split"]) == ("PREPARING", None)
    status, _, err = _run(capsys, at, "splits", "status", "iris", split_id)
    assert status == 1
    assert "404" in err
    # Unassigning again is the lifecycle's 409 (PREPARING has no split): exit 1 with the reason.
    status, _, err = _run(capsys, at, "models", "unsplit", "iris", model)
    assert status == 1
    assert "409" in err
    assert "PREPARING" in err
    # --clear, then a split with directives given on the command line: they become the model's.
    assert _json(capsys, at, "models", "directives", "iris", model, "--clear")["directives"] == []
    again = _json(capsys, at, "models", "split", "iris", model, "--percent=50", "--type=first", "--wait",
                  "--directive=drop is_virginica")  # fmt: skip
    assert again["status"] == "COMPLETE", again
    assert _json(capsys, at, "models", "get", "iris", model)["directives"] == ["drop is_virginica"]

    status, out, err = _run(capsys, at, "models", "delete", "iris", model)
    assert (status, out.strip()) == (0, f"deleted model {model}"), err
    status, _, err = _run(capsys, at, "models", "get", "iris", model)
    assert status == 1
    assert "404" in err
    assert _run(capsys, at, "splits", "get", "iris", str(again["id"]))[0] == 1  # went with its only model


def test_splits_status_and_delete(capsys: pytest.CaptureFixture[str], live: RegistryProcess) -> None:
    at = live.listen
    split_id = str(_json(capsys, at, "splits", "create", "iris", "--percent=70", "--seed=2", "--wait")["id"])
    model = str(_json(capsys, at, "models", "create", "iris", f"--split={split_id}")["id"])
    status, out, err = _run(capsys, at, "splits", "status", "iris", split_id, "--output=table")
    assert status == 0, err
    assert {line.split()[0]: line.split()[-1] for line in out.splitlines()} == {"id": split_id, "status": "COMPLETE"}

    status, out, err = _run(capsys, at, "splits", "delete", "iris", split_id)
    assert (status, out.strip()) == (0, f"deleted split {split_id}"), err
    assert _json(capsys, at, "models", "status", "iris", model)["status"] == "PREPARING"
    status, _, err = _run(capsys, at, "splits", "delete", "iris", split_id)
    assert status == 1
    assert f"no split {split_id}" in err


def test_versions_and_datasets(capsys: pytest.CaptureFixture[str], live: RegistryProcess) -> None:
    at = live.listen
    split_id = str(_json(capsys, at, "splits", "create", "iris", "--percent=80", "--seed=3", "--wait")["id"])
    # The algorithm chosen at creation; train names none and uses it.
    created = _json(capsys, at, "models", "create", "iris", f"--split={split_id}", "--name=tree",
                    "--algorithm=decision_tree", "--param=max_depth=2")  # fmt: skip
    model = str(created["id"])
    status, out, err = _run(capsys, at, "versions", "list", "iris", model)
    assert (status, out.strip()) == (0, "no versions"), err
    trained = _json(capsys, at, "models", "train", "iris", model, "--wait")
    assert (trained["status"], trained["algorithm"], trained["hyperparameters"]) == (
        "TRAINED",
        "decision_tree",
        {"max_depth": 2},
    ), trained

    status, out, err = _run(capsys, at, "versions", "list", "iris", model)
    assert status == 0, err
    header, *lines = out.splitlines()
    assert header.split()[:3] == ["VERSION", "SHA256", "METRICS"]
    assert [line.split()[0] for line in lines] == ["1"]
    assert "accuracy=" in lines[0]
    status, out, err = _run(capsys, at, "versions", "list", "iris", model, "--offset=1", "--output=json")
    assert (status, json.loads(out)) == (0, []), err

    first = _json(capsys, at, "versions", "get", "iris", model, "1")
    manifest = first["manifest"]
    assert isinstance(manifest, dict)
    assert manifest["version"] == "1"
    assert len(str(manifest["sha256sum"])) == 64
    assert lines[0].split()[1] == str(manifest["sha256sum"])[:12]
    lineage = first["lineage"]
    assert isinstance(lineage, dict)
    assert (lineage["split"], lineage["srcpath"]) == (split_id, "flowers/iris.csv")
    status, _, err = _run(capsys, at, "versions", "get", "iris", model, "2")
    assert status == 1
    assert "has no version 2" in err
    status, _, err = _run(capsys, at, "versions", "get", "iris", model, "0")
    assert status == 2
    assert "VERSION" in err

    # The split registered the dataset it read: listed once whatever the number of splits, by srcpath too.
    status, out, err = _run(capsys, at, "datasets", "list", "--srcpath=flowers/iris.csv")
    assert status == 0, err
    header, *lines = out.splitlines()
    assert header.split()[:4] == ["ID", "SRCPATH", "FORMAT", "SAMPLES"]
    assert len(lines) == 1
    dataset_id, srcpath, kind, samples, *_ = lines[0].split()
    assert (srcpath, kind, samples) == ("flowers/iris.csv", "csv", "150")
    dataset = _json(capsys, at, "datasets", "get", dataset_id)
    assert (dataset["sampleCount"], dataset["format"]) == (150, "csv")
    assert lineage["datasetId"] == dataset_id
    status, out, err = _run(capsys, at, "datasets", "list", "--srcpath=elsewhere.csv")
    assert (status, out.strip()) == (0, "no datasets"), err
    status, _, err = _run(capsys, at, "datasets", "get", "0123456789abcdef")
    assert status == 1
    assert "404" in err


class ConnectionCounter:
    """A TCP forwarder to the registry that counts the connections made through it (its own thread and loop)."""

    def __init__(self, target: str) -> None:
        self.target_host, port = target.rsplit(":", 1)
        self.target_port = int(port)
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        self.listening = threading.Event()
        self.address = ""
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._forward, "127.0.0.1", 0))
        self.address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        self.listening.set()
        self.loop.run_forever()
        server.close()
        self.loop.run_until_complete(server.wait_closed())

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        upstream_reader, upstream_writer = await asyncio.open_connection(self.target_host, self.target_port)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while chunk := await source.read(65536):
                    sink.write(chunk)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    def __enter__(self) -> ConnectionCounter:
        self.thread.start()
        assert self.listening.wait(30)
        return self

    async def _close(self) -> None:
        """End the forwarding still under way (a keep-alive connection the registry holds open)."""
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


def test_one_connection_for_a_whole_command(capsys: pytest.CaptureFixture[str], live: RegistryProcess) -> None:
    """A --wait that polls until a training ends makes its calls over one HTTP session: one connection (before,
    each call opened a session and a connection of its own)."""
    split_id = str(_json(capsys, live.listen, "splits", "create", "iris", "--percent=80", "--seed=4", "--wait")["id"])
    model = str(_json(capsys, live.listen, "models", "create", "iris", f"--split={split_id}")["id"])
    with ConnectionCounter(live.listen) as counter:
        trained = _json(capsys, counter.address, "models", "train", "iris", model, "--algorithm=gbdt", "--wait")
        assert trained["status"] == "TRAINED", trained
        # train, at least one status poll, the model: three calls or more, one connection.
        assert counter.connections == 1
