"""Agent pieces that need no server: settings, the proxy's name mapping, the register message."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.held_models import HeldModel, HeldTable
from agent.inference_proxy import _rename_json
from agent.server_watch import WatchSettings, describe_exit, reason_text
from agent.settings import AgentSettings, build_parser, parse_settings
from generated.mlops.agent.v1 import agent_pb2
from modelplane.addresses import Address
from tests.support.processes import run_modelplane


def _parse(*argv: str) -> AgentSettings:
    return parse_settings(build_parser(argparse.ArgumentParser(prog="modelplane agent")), list(argv), {})


def test_defaults_for_a_launched_mlserver() -> None:
    settings = _parse("--launch-server")
    assert settings.scheduler == Address("127.0.0.1", 9005)
    assert settings.capabilities == frozenset({"sklearn", "mlserver"})
    assert settings.memory_bytes == 1024**3
    assert settings.models_dir == Path(".modelplane/agent-mlserver-0/models").absolute()
    assert settings.shared is True


def test_disk_limits_come_from_flags_or_the_environment() -> None:
    flags = _parse(
        "--launch-server", "--max-model-disk", "1GiB", "--max-cache-disk", "3GiB", "--max-compression-ratio", "7"
    )
    assert (flags.max_model_disk_bytes, flags.max_cache_disk_bytes, flags.max_compression_ratio) == (
        1 << 30,
        3 << 30,
        7,
    )
    parser = build_parser(argparse.ArgumentParser(prog="modelplane agent"))
    environment = {"MODELPLANE_AGENT_MAX_CACHE_DISK": "16GiB", "MODELPLANE_MAX_COMPRESSION_RATIO": "50"}
    from_environment = parse_settings(parser, ["--launch-server"], environment)
    assert (from_environment.max_cache_disk_bytes, from_environment.max_compression_ratio) == (16 << 30, 50)


def test_server_watch_settings_have_documented_defaults_and_flags() -> None:
    assert _parse("--launch-server").watch == WatchSettings(
        probe_interval=2.0,
        probe_timeout=5.0,
        probe_failures=3,
        hung_timeout=300.0,
        restart_backoff=1.0,
        restart_backoff_max=60.0,
    )
    watch = _parse(
        "--launch-server",
        "--server-probe-interval=0.5",
        "--server-probe-timeout=1",
        "--server-probe-failures=5",
        "--server-hung-timeout=45",
        "--server-restart-backoff=30",
        "--server-restart-backoff-max=10",
    ).watch
    # A cap below the first wait would make no sense: the first wait is the cap then.
    assert (watch.probe_interval, watch.probe_timeout, watch.probe_failures) == (0.5, 1.0, 5)
    assert (watch.hung_timeout, watch.restart_backoff, watch.restart_backoff_max) == (45.0, 30.0, 30.0)


def test_reasons_are_one_printable_line_within_the_protocols_limit() -> None:
    text = reason_text("Triton could not start:\nI1204 log line\n\tmore " + "x" * 2000)
    assert text.isprintable()
    assert len(text) == 1024
    assert text.startswith("Triton could not start: I1204 log line more x")
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(3) == "exit status 3"


def test_an_existing_server_needs_its_models_dir() -> None:
    settings = _parse("--server-url", "http://127.0.0.1:8080", "--models-dir", "/srv/models", "--memory", "512Mi")
    assert settings.models_dir == Path("/srv/models")
    assert settings.memory_bytes == 512 * 1024**2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give either --server-url"),
        (["--launch-server", "--server-url", "http://x:1", "--models-dir", "/m"], "give either --server-url"),
        (["--server-url", "http://127.0.0.1:8080"], "--server-url needs --models-dir"),
        (["--server-url", "127.0.0.1:8080", "--models-dir", "/m"], "must start with http://"),
        (["--launch-server", "--memory", "lots"], "is not a size"),
        (["--launch-server", "--server-name", "Bad_Name"], "is invalid"),
        (["--launch-server", "--replica-idx", "-1"], "is not a whole number"),
        (["--launch-server", "--overcommit-percent", "5000"], "from 0 to 1000"),
        (["--launch-server", "--server-kind", "torchserve"], "invalid choice"),
        (["--launch-server", "--capabilities", " , "], "--capabilities is empty"),
        (["--launch-server", "--scheduler", "10.0.0.1:9005"], "refusing plaintext gRPC"),
        (["--launch-server", "--max-model-disk", "0"], "a disk limit must be more than 0 bytes"),
        (["--launch-server", "--max-cache-disk", "lots"], "is not a size"),
        (["--launch-server", "--max-compression-ratio", "0"], "from 1 to 1000000"),
        (
            ["--launch-server", "--max-model-disk", "2GiB", "--max-cache-disk", "1GiB"],
            "--max-model-disk (2147483648 bytes) is more than --max-cache-disk (1073741824 bytes)",
        ),
        (["--launch-server", "--server-probe-failures", "0"], "from 1 to 1000"),
        (["--launch-server", "--server-probe-interval", "0"], "out of range"),
        (["--launch-server", "--server-restart-backoff", "-1"], "out of range"),
        (["--launch-server", "--server-hung-timeout", "0"], "out of range"),
    ],
)
def test_bad_agent_flags(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exited:
        _parse(*argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_agent_command_reports_bad_flags() -> None:
    result = run_modelplane("agent", "--launch-server", "--memory", "0")
    assert result.returncode == 2
    assert "memory must be more than 0 bytes" in result.stderr


def test_rest_answers_carry_the_name_the_client_used() -> None:
    answer = b'{"model_name": "iris_3", "model_version": "3", "outputs": []}'
    assert (
        _rename_json(answer, "iris_3", "iris", None) == b'{"model_name": "iris", "model_version": "3", "outputs": []}'
    )
    assert (
        _rename_json(b'{"name": "iris_3", "platform": ""}', "iris_3", "iris", 3) == b'{"name": "iris", "platform": ""}'
    )
    assert _rename_json(b"not json", "iris_3", "iris", None) == b"not json"
    assert _rename_json(b'{"model_name": "other"}', "iris_3", "iris", None) == b'{"model_name": "other"}'


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(
    loaded=st.text(min_size=1, max_size=30).map(lambda name: f"{name}_7"),
    server_version=st.none() | st.text(max_size=30),
    asked_version=st.none() | st.integers(0, 10**9),
    rest=st.dictionaries(st.text(max_size=10).filter(lambda key: not key.startswith("model_")), _JSON_VALUES),
)
def test_compact_answers_are_renamed_as_a_parsed_answer_would_be(
    loaded: str, server_version: str | None, asked_version: int | None, rest: dict[str, object]
) -> None:
    """MLServer and Triton write compact JSON with model_name and model_version first: the proxy replaces those
    two and passes the rest on as written; the result means what renaming the parsed document means."""
    document = {"model_name": loaded, "model_version": server_version, **rest}
    compact = json.dumps(document, separators=(",", ":")).encode()
    spaced = json.dumps(document).encode()  # not the servers' form: parsed and written again
    expected = {**document, "model_name": "plain", "model_version": str(asked_version) if asked_version else "7"}
    if asked_version == 0:
        expected["model_version"] = "0"
    renamed = _rename_json(compact, loaded, "plain", asked_version)
    assert json.loads(renamed) == json.loads(_rename_json(spaced, loaded, "plain", asked_version)) == expected
    if rest:
        assert renamed.endswith(json.dumps(rest, separators=(",", ":")).encode()[1:])  # the tensors, as written
    other = json.dumps({**document, "model_name": loaded + "x"}, separators=(",", ":")).encode()
    assert _rename_json(other, loaded, "plain", asked_version) == other  # another model's answer: untouched


def test_grpc_name_rewrite_keeps_every_other_field() -> None:
    """The proxy parses only fields 1-2 of a V2 gRPC message; the rest must survive re-serialisation."""
    # ModelInferRequest: model_name=1, model_version=2, id=3, inputs=5 (a message with name=1).
    original = b"\x0a\x04iris" + b"\x12\x00" + b"\x1a\x03abc" + b"\x2a\x07\x0a\x05input"
    names = agent_pb2.InferenceModelName.FromString(original)
    assert (names.name, names.version) == ("iris", "")
    names.name = "iris_7"
    rewritten = names.SerializeToString()
    assert rewritten.startswith(b"\x0a\x06iris_7")
    assert rewritten.endswith(b"\x1a\x03abc\x2a\x07\x0a\x05input")


@given(
    st.lists(
        st.tuples(st.sampled_from(["set", "del", "pop"]), st.sampled_from(["a", "b", "a_b"]), st.integers(1, 3)),
        max_size=40,
    )
)
def test_the_held_table_indexes_every_version_of_each_name(steps: list[tuple[str, str, int]]) -> None:
    """The proxy's lookup of a model's versions (HeldTable.versions) always agrees with a scan of the table."""
    table = HeldTable()
    for action, name, version in steps:
        loaded = f"{name}_{version}"
        if action == "set":
            table[loaded] = HeldModel(name, version, memory=1, files=None)
        elif action == "del" and loaded in table:
            del table[loaded]
        elif action == "pop":
            held = table.get(loaded)
            assert table.pop(loaded, None) is held
        for each in ("a", "b", "a_b", "c"):
            indexed = sorted((m.loaded_name, id(m)) for m in table.versions(each))
            assert indexed == sorted((key, id(m)) for key, m in table.items() if m.name == each)
    with pytest.raises(TypeError):
        table.update({})
    with pytest.raises(ValueError, match="another name"):
        table["a_1"] = HeldModel("a", 2, memory=1, files=None)
