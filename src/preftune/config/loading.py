"""Reading a configuration: a YAML file, then dotted overrides (``--section.key VALUE``), each value converted to
its field's type or refused naming the key; the help lines and the list of keys."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from ..errors import ConfigError
from .fields import check_fields
from .sections import Config, leaf_fields


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Convert ``value`` (from YAML or a command-line string) to ``tp``, or raise naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null", ""))
        if is_none and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, inner[0], value)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(key, args[0], v.strip() if isinstance(v, str) else v) for v in items if v != ""]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str | int | float):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - schema bug


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"loss": {"beta": 0.1}}`` -> ``{"loss.beta": 0.1}``: the dotted keys the command line uses."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and not k.startswith("_"):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + str(k)] = v
    return out


def set_value(cfg: Config, key: str, value: Any) -> None:
    leaves = leaf_fields()
    if key not in leaves:
        raise ConfigError(f"unknown config key {key!r} (see --help for the list)")
    _, tp, _ = leaves[key]
    target: Any = cfg
    *path, name = key.split(".")
    for part in path:
        target = getattr(target, part)
    setattr(target, name, _coerce(key, tp, value))


def load_config(
    yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None, training: bool = True
) -> Config:
    """A :class:`Config` from an optional YAML file, then dotted overrides, each field checked in its range
    (``training``: see :func:`~.fields.check_fields`); :func:`preftune.validate.validate` checks the rest."""
    cfg = Config()
    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        for key, value in flatten(raw).items():
            set_value(cfg, key, value)
    for key, value in (overrides or {}).items():
        set_value(cfg, key, value)
    check_fields(cfg, training=training)
    return cfg


def parse_overrides(argv: list[str]) -> tuple[str | None, dict[str, Any]]:
    """``["--config", "a.yaml", "--loss.beta", "0.2", "--ckpt.save_hf"]`` -> ("a.yaml", {...}).

    A flag with no value (next token is another flag, or none) means true: ``--ckpt.save_hf``.
    """
    known = set(config_keys())
    config_path: str | None = None
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument {token!r}: options look like --section.key VALUE")
        key, eq, value = token[2:].partition("=")
        if not eq:
            has_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
            value = argv[i + 1] if has_value else "true"
            i += 1 if has_value else 0
        i += 1
        if key == "config":
            config_path = value
        elif key not in known:
            raise ConfigError(f"unknown option --{key} (see --help for the list of keys)")
        else:
            overrides[key] = value
    return config_path, overrides


def config_from_args(
    argv: list[str], defaults: dict[str, Any] | None = None, training: bool = True
) -> Config:
    config_path, overrides = parse_overrides(argv)
    return load_config(config_path, {**(defaults or {}), **overrides}, training)


# The sections each command reads; ``preftune COMMAND --help`` lists their keys only.
COMMAND_SECTIONS: dict[str, tuple[str, ...]] = {
    "train": ("", "model", "ref", "data", "loss", "optim", "train", "ckpt", "log", "strategy", "lora"),
    "eval": ("", "model", "ref", "data", "loss", "train", "log", "strategy", "lora"),
}


def _type_name(tp: Any) -> str:
    """``int``, ``float | None``, or a Literal's choices as ``{a,b,c}``."""
    if typing.get_origin(tp) is Literal:
        return "{" + ",".join(str(choice) for choice in typing.get_args(tp)) + "}"
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list of {_type_name(typing.get_args(tp)[0])} (comma-separated)"
    return "none" if tp is type(None) else getattr(tp, "__name__", str(tp))


def help_lines(command: str | None = None) -> list[str]:
    """One line per key that ``command`` reads (every key without one): ``--section.key TYPE (default: X)  help``."""
    sections = COMMAND_SECTIONS.get(command or "")
    lines = []
    defaults = flatten(Config().to_dict())
    for key, (_, tp, f) in leaf_fields().items():
        section = key.rpartition(".")[0]
        if sections is not None and section not in sections:
            continue
        lines.append(
            f"  --{key} {_type_name(tp)} (default: {defaults[key]!r})\n      {f.metadata.get('help', '')}"
        )
    return lines


def config_keys() -> list[str]:
    return list(leaf_fields())
