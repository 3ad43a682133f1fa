"""Configs: frozen dataclasses, chosen by name or JSON file, overridden by --set key=value."""
from __future__ import annotations

import dataclasses
import json
import math
import typing
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config that cannot be used; the message is one line for the user."""


def fields(cfg_cls: type) -> dict[str, Any]:
    """Field name -> resolved type annotation."""
    hints = typing.get_type_hints(cfg_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cfg_cls)}


def parse_value(key: str, text: str, tp: Any) -> Any:
    """Parse `text` as the type `tp` of field `key` (int, float, bool, str, tuple, Optional)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    try:
        if tp is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            return int(text)
        if tp is float:
            value = float(text)
            if not math.isfinite(value):  # nan or inf is never a usable hyperparameter
                raise ConfigError(f"{key}={text}: expected float (nan and inf are refused)")
            return value
        if tp is str:
            return text
        if origin is tuple:
            items = [t for t in text.strip("()[] ").split(",") if t.strip()]
            inner = args[0] if args else str
            return tuple(parse_value(key, t.strip(), inner) for t in items)
    except ConfigError:
        raise
    except (ValueError, StopIteration):
        pass
    else:
        raise ConfigError(f"{key}: unsupported field type {tp}")
    raise ConfigError(f"{key}={text}: expected {getattr(tp, '__name__', tp)}")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """A JSON value -> the field's type, through the same parser as --set."""
    if isinstance(value, list):
        text = ",".join(str(v) for v in value)
    elif value is None or isinstance(value, bool):
        text = str(value).lower()
    else:
        text = str(value)
    return parse_value(key, text, tp)


def apply(cfg: Any, overrides: dict[str, Any], source: str = "--set") -> Any:
    """Return cfg with overrides applied; unknown keys name the valid ones."""
    types = fields(type(cfg))
    unknown = sorted(set(overrides) - set(types))
    if unknown:
        own = [k for k in vars(type(cfg)).get("__annotations__", {}) if k in types]  # the pipeline's own first
        keys = own + [k for k in types if k not in own]
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(keys)}")
    try:
        changes = {k: _coerce(k, v, types[k]) for k, v in overrides.items()}
    except ConfigError as e:  # "--set lr=x: ...", "--config f.json: lr=x: ..."
        raise ConfigError(f"{source}{' ' if source == '--set' else ': '}{e}") from None
    try:
        return dataclasses.replace(cfg, **changes)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{source}: {e}") from None


def parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        out[key.strip()] = value
    return out


def load(configs: dict[str, Any], spec: str) -> tuple[Any, str]:
    """A named config or a JSON file of overrides on top of `default` (or of the config
    named by its "base" key). Returns (config, label)."""
    if spec in configs:
        return configs[spec], spec
    path = Path(spec)
    if not spec.endswith(".json") and not path.exists():
        raise ConfigError(f"--config {spec}: not one of {', '.join(configs)} nor a .json file")
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"--config {spec}: cannot read ({e.strerror})") from None
    except ValueError as e:
        raise ConfigError(f"--config {spec}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {spec}: expected a JSON object of config fields")
    base = data.pop("base", "default")
    if not isinstance(base, str) or base not in configs:
        raise ConfigError(f"--config {spec}: base {base!r} is not one of {', '.join(configs)}")
    return apply(configs[base], data, source=f"--config {spec}"), str(path)


def to_dict(cfg: Any) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}
