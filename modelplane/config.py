"""Layered configuration for every command: flags over environment over file over built-in defaults.

- Environment: ``MODELPLANE_<FLAG>``, the long flag name upper-cased with dashes as underscores
  (``--state-dir`` -> ``MODELPLANE_STATE_DIR``), or ``MODELPLANE_<COMMAND>_<FLAG>`` for one command
  only (``MODELPLANE_AGENT_SCHEDULER``), which wins over the plain form. Boolean flags take 1/0,
  true/false, yes/no, on/off.
- File: ``--config FILE`` (or ``MODELPLANE_CONFIG``), TOML with one table per command, keys named
  like the long flags: ``[scheduler]`` / ``state-dir = "/var/lib/modelplane"``.

Values from the environment and the file go through the same parsing and validation as flags.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ENV_PREFIX = "MODELPLANE_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(ValueError):
    """A configuration file or environment variable that cannot be used."""


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def _long_flag(action: argparse.Action) -> str | None:
    longs = [option for option in action.option_strings if option.startswith("--")]
    return longs[0] if longs else None


def _is_boolean(action: argparse.Action) -> bool:
    return isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction)


class LayeredAppend(argparse._AppendAction):
    """A repeatable flag (``--namespace a --namespace b``) that layers like every other flag: a list from the
    environment (comma-separated) or the config file (a TOML list, or one value) is its default, and the command
    line, when it gives the flag at all, replaces that list rather than adding to it."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        if getattr(namespace, self.dest, None) is self.default:  # still the layered default: start afresh
            setattr(namespace, self.dest, None)
        super().__call__(parser, namespace, values, option_string)


def _as_list_default(action: argparse.Action, value: object, origin: str) -> list[object]:
    """A repeatable flag's values, each converted by the flag's type (argparse converts only string defaults)."""
    if isinstance(value, str):
        items: list[object] = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, list):
        items = list(value)
    else:
        items = [value]
    converted: list[object] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise ConfigError(f"{origin}: expected values such as a, b; got {type(item).__name__}")
        try:
            converted.append(action.type(str(item)) if callable(action.type) else str(item))
        except (argparse.ArgumentTypeError, TypeError, ValueError) as error:
            raise ConfigError(f"{origin}: {item!r}: {error}") from None
    return converted


def _as_default(action: argparse.Action, value: object, origin: str) -> object:
    if isinstance(action, argparse._AppendAction):
        if not isinstance(action, LayeredAppend):
            raise ConfigError(f"{origin}: --{action.dest} is repeatable but not a LayeredAppend flag")
        return _as_list_default(action, value, origin)
    if _is_boolean(action):
        text = str(value).strip().lower()
        if isinstance(value, bool):
            return value
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ConfigError(f"{origin}: expected true or false, got {value!r}")
    if isinstance(value, bool | int | float | str):
        # A string default is parsed by argparse exactly like a command-line value.
        return str(value)
    raise ConfigError(f"{origin}: expected a single value, got {type(value).__name__}")


def read_config_file(path: Path, section: str) -> Mapping[str, object]:
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file {path}: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    table = document.get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [{section}] must be a table")
    return table


def apply_layered_defaults(
    parser: argparse.ArgumentParser,
    section: str,
    environ: Mapping[str, str],
    file_values: Mapping[str, object],
) -> None:
    """Set ``parser``'s defaults from ``file_values`` and then ``environ`` (the later wins)."""
    by_key: dict[str, argparse.Action] = {}
    for action in parser._actions:
        flag = _long_flag(action)
        if flag is not None and action.dest not in {"help", "config"}:
            by_key[flag.lstrip("-")] = action
    defaults: dict[str, Any] = {}
    for key, value in file_values.items():
        matched = by_key.get(key.replace("_", "-"))
        if matched is None:
            known = ", ".join(sorted(by_key))
            raise ConfigError(f"config file [{section}]: unknown setting {key!r} (known: {known})")
        defaults[matched.dest] = _as_default(matched, value, f"config file [{section}] {key}")
    for key, action in by_key.items():
        for name in (env_name(key), env_name(f"{section}-{key}")):  # the command's own form wins
            if name in environ:
                defaults[action.dest] = _as_default(action, environ[name], name)
    parser.set_defaults(**defaults)


def parse_layered(
    parser: argparse.ArgumentParser,
    section: str,
    argv: Sequence[str],
    environ: Mapping[str, str] | None = None,
) -> argparse.Namespace:
    """Parse ``argv`` with defaults from ``--config``/``MODELPLANE_CONFIG`` and the environment.

    Errors in the file or environment are reported like flag errors (message, exit status 2).
    """
    environ = os.environ if environ is None else environ
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path, default=environ.get(env_name("config")))
    known, _ = pre.parse_known_args(argv)
    try:
        file_values = read_config_file(Path(known.config), section) if known.config else {}
        apply_layered_defaults(parser, section, environ, file_values)
    except ConfigError as error:
        parser.error(str(error))
    return parser.parse_args(argv)
