"""The Triton adapter: places a model with its ``config.pbtxt`` renamed, and drives Triton's repository API.

Triton finds a model by its folder and checks the ``name:`` in ``config.pbtxt`` against it, so the
config is rewritten for the loaded name ``<name>_<version>``; ``instance_count`` becomes the CPU
``instance_group``. The rewrite works on the text format's top-level fields only (a small scanner that
knows strings, comments and brackets), so nested ``name:`` fields of inputs and outputs are untouched.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from pathlib import Path

from servers.adapter import ModelFiles, ServerError
from servers.v2_repository import V2Http, model_dir, place_atomically, ready_names, remove_dir, wait_for, write_new_file

CONFIG_FILE = "config.pbtxt"


class TritonServer:
    """One Triton replica in explicit model-control mode, driven through its V2 REST API (aiohttp)."""

    def __init__(
        self,
        http_url: str,
        grpc_target: str,
        repository: Path,
        *,
        load_timeout: float = 120.0,
        unload_timeout: float = 60.0,
        request_timeout: float = 30.0,
    ) -> None:
        self.kind: str = "triton"
        self.http_url = http_url
        self.grpc_target = grpc_target
        self.repository = repository
        self.load_timeout = load_timeout
        self.unload_timeout = unload_timeout
        self._http = V2Http("Triton", http_url, request_timeout=request_timeout)

    async def ready(self) -> bool:
        return await self._http.ready()

    async def live(self, timeout: float) -> bool:
        return await self._http.live(timeout)

    async def place_files(self, files: ModelFiles) -> None:
        target = model_dir(self.repository, files.loaded_name)
        config = files.artifact_dir / CONFIG_FILE
        if not config.is_file():
            raise ServerError(f"Triton models need a {CONFIG_FILE} at the top of the artifact ({files.artifact_dir})")
        text = rewrite_config(
            await asyncio.to_thread(config.read_text), name=files.loaded_name, instance_count=files.instance_count
        )

        def write_settings(folder: Path) -> None:
            write_new_file(folder / CONFIG_FILE, text)

        await asyncio.to_thread(place_atomically, files.artifact_dir, target, write_settings, link=files.linkable)

    async def load(self, loaded_name: str) -> None:
        reply = await self._http.call(
            "POST", f"/v2/repository/models/{loaded_name}/load", body={}, timeout=self.load_timeout
        )
        if not reply.ok:
            # A 500 "failed to poll from model repository" means the folder is missing or its config.pbtxt
            # does not parse (Triton's log has the detail): the placed files are at fault, not the server.
            unpolled = "failed to poll" in reply.error_text()
            hint = f"is the model placed, and is its {CONFIG_FILE} valid? Triton's log says more" if unpolled else ""
            raise self._http.failure("load", loaded_name, reply, model_fault=reply.status < 500 or unpolled, hint=hint)
        # Triton answers once the load finished; the wait below only covers a model still warming up.
        if not await wait_for(lambda: self._model_ready(loaded_name), timeout=self.load_timeout):
            raise ServerError(
                f"Triton loaded {loaded_name!r} but it was not ready after {self.load_timeout:g}s", retryable=True
            )

    async def unload(self, loaded_name: str) -> None:
        reply = await self._http.call("POST", f"/v2/repository/models/{loaded_name}/unload", body={})
        if not reply.ok and reply.status != 404 and await self._state(loaded_name) in _SERVING:
            raise self._http.failure("unload", loaded_name, reply)
        # Triton unloads in the background (the index shows UNLOADING while requests drain).
        if not await wait_for(lambda: self._gone(loaded_name), timeout=self.unload_timeout):
            raise ServerError(
                f"Triton still serves {loaded_name!r} {self.unload_timeout:g}s after the unload", retryable=True
            )

    async def loaded_models(self) -> list[str]:
        return ready_names(await self._http.index({"ready": True}))

    def remove_files(self, loaded_name: str) -> None:
        remove_dir(model_dir(self.repository, loaded_name))

    async def close(self) -> None:
        await self._http.close()

    async def _model_ready(self, loaded_name: str) -> bool:
        return (await self._http.call("GET", f"/v2/models/{loaded_name}/ready")).ok

    async def _state(self, loaded_name: str) -> str | None:
        states = [str(entry.get("state")) for entry in await self._http.index({}) if entry.get("name") == loaded_name]
        serving = [state for state in states if state in _SERVING]
        return serving[0] if serving else (states[0] if states else None)

    async def _gone(self, loaded_name: str) -> bool:
        return await self._state(loaded_name) not in _SERVING


_SERVING = frozenset({"READY", "UNLOADING", "LOADING"})


# --- config.pbtxt rewriting -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Field:
    """One top-level field of a text-format message: ``key`` spans ``start:end``, its value ``value_start:end``."""

    key: str
    start: int
    value_start: int
    end: int


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SCALAR = re.compile(r"[^\s,;:{}\[\]<>#\"']+")
_CLOSING = {"{": "}", "[": "]", "<": ">"}


def rewrite_config(text: str, *, name: str, instance_count: int = 0) -> str:
    """``config.pbtxt`` text with the top-level ``name`` set to ``name`` (added when absent) and, when
    ``instance_count > 0``, every top-level ``instance_group`` replaced by one CPU group of that count.
    Comments and the rest of the layout are kept. Raises ServerError for text it cannot parse."""
    fields = _top_level_fields(text)
    groups = [field for field in fields if field.key == "instance_group"]
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement), applied back to front
    if instance_count > 0:
        block = f"instance_group [{{ count: {instance_count} kind: KIND_CPU }}]"
        if groups:
            edits.append((groups[0].start, groups[0].end, block))
            edits.extend((group.start, _line_end(text, group.end), "") for group in groups[1:])
        else:
            edits.append((len(text), len(text), ("" if text.endswith("\n") or not text else "\n") + block + "\n"))
    names = [field for field in fields if field.key == "name"]
    quoted = json.dumps(name)  # a valid text-format string for the plain names model_dir allows
    if names:
        edits.extend((field.value_start, field.end, quoted) for field in names)
    else:
        edits.append((0, 0, f"name: {quoted}\n"))
    for start, end, replacement in sorted(edits, key=lambda edit: edit[0], reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def _top_level_fields(text: str) -> list[_Field]:
    fields: list[_Field] = []
    position = _skip_blank(text, 0)
    while position < len(text):
        match = _IDENTIFIER.match(text, position)
        if not match:
            raise _syntax(text, position, "expected a field name")
        start, position = position, _skip_blank(text, match.end())
        if position < len(text) and text[position] == ":":
            position = _skip_blank(text, position + 1)
        value_start = position
        end = _skip_value(text, position)
        fields.append(_Field(match.group(), start, value_start, end))
        position = _skip_blank(text, end)
        if position < len(text) and text[position] in ",;":
            position = _skip_blank(text, position + 1)
    return fields


def _skip_blank(text: str, position: int) -> int:
    """Past whitespace and ``#`` comments."""
    while position < len(text):
        if text[position].isspace():
            position += 1
        elif text[position] == "#":
            newline = text.find("\n", position)
            position = len(text) if newline < 0 else newline + 1
        else:
            break
    return position


def _skip_value(text: str, position: int) -> int:
    """Past one value: a message or list in brackets, string literal(s), or a scalar token."""
    if position >= len(text):
        raise _syntax(text, position, "expected a value")
    char = text[position]
    if char in _CLOSING:
        return _skip_brackets(text, position)
    if char in "\"'":
        end = _skip_string(text, position)
        following = _skip_blank(text, end)
        while following < len(text) and text[following] in "\"'":  # adjacent literals concatenate
            end = _skip_string(text, following)
            following = _skip_blank(text, end)
        return end
    scalar = _SCALAR.match(text, position)
    if not scalar:
        raise _syntax(text, position, "expected a value")
    return scalar.end()


def _skip_brackets(text: str, position: int) -> int:
    expected = [_CLOSING[text[position]]]
    position += 1
    while expected:
        position = _skip_blank(text, position)
        if position >= len(text):
            raise _syntax(text, position, f"missing {expected[-1]!r}")
        char = text[position]
        if char in "\"'":
            position = _skip_string(text, position)
        elif char in _CLOSING:
            expected.append(_CLOSING[char])
            position += 1
        elif char in "}]>":
            if char != expected.pop():
                raise _syntax(text, position, f"unexpected {char!r}")
            position += 1
        else:
            position += 1
    return position


def _skip_string(text: str, position: int) -> int:
    quote = text[position]
    position += 1
    while position < len(text):
        char = text[position]
        if char == "\\":
            position += 2
        elif char == quote:
            return position + 1
        elif char == "\n":
            break
        else:
            position += 1
    raise _syntax(text, position, "unterminated string")


def _line_end(text: str, position: int) -> int:
    """Past trailing spaces and one newline, so a removed field leaves no blank line behind."""
    while position < len(text) and text[position] in " \t":
        position += 1
    return position + 1 if position < len(text) and text[position] == "\n" else position


def _syntax(text: str, position: int, problem: str) -> ServerError:
    line = text.count("\n", 0, position) + 1
    return ServerError(f"{CONFIG_FILE} line {line}: {problem}; it must be protobuf text format")
