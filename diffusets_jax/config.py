"""Loading configurations: a name in `configs/` (`small`, `paper`) or a path to a `.py` file
whose `get_config()` returns an `ml_collections.ConfigDict`, plus `key=value` overrides."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
from pathlib import Path
from typing import Sequence

import ml_collections

from diffusets_jax.errors import ConfigError, MissingFileError


def load_config(name_or_path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Build a config and apply overrides such as `unet_train.num_steps=100`.

    Raises ConfigError (a ValueError) for an unknown config name, a file without `get_config`, or
    an override of a field that does not exist or of the wrong type (naming the key and the type).
    """
    path = Path(name_or_path)
    if path.suffix == ".py":
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(f"diffusets_jax.configs.{name_or_path}")
        except ModuleNotFoundError as error:
            raise ConfigError(
                f"unknown config {name_or_path!r}: give a name in configs/ (small, paper) or a .py path"
            ) from error
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config {name_or_path!r} has no get_config()")
    config = module.get_config()
    for override in overrides:
        apply_override(config, override)
    return config


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
    """Set one `dotted.key=value` (value parsed as a Python literal, else kept as a string)."""
    key, sep, raw = override.partition("=")
    if not sep:
        raise ConfigError(f"override {override!r} is not of the form key=value")
    *parents, leaf = key.strip().split(".")
    node = config
    for part in parents:
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise ConfigError(f"override {override!r}: config has no field {key!r}")
        node = node[part]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise ConfigError(f"override {override!r}: config has no field {key!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = raw
    try:
        node[leaf] = value
    except TypeError:  # ml_collections keeps each field's type
        old = node[leaf]
        if isinstance(old, ml_collections.ConfigDict):
            raise ConfigError(f"--set {override}: {key} is a section of the config; set one of its fields") from None
        raise ConfigError(
            f"--set {override}: {key} must be of type {type(old).__name__} (like {old!r}), got {value!r}"
        ) from None


def config_to_json(config: ml_collections.ConfigDict) -> str:
    return config.to_json_best_effort(indent=2, sort_keys=True)


def config_from_json(text: str, source: str | Path = "config JSON") -> ml_collections.ConfigDict:
    """The config of a JSON object; ConfigError (a ValueError) naming `source` (the file) and the
    line and column if `text` is not JSON, or not an object."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{source} is not JSON (line {error.lineno}, column {error.colno}: {error.msg})") from None
    except RecursionError:
        raise ConfigError(f"{source} is not a config: nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source} is not a config: a JSON {type(data).__name__}, not an object")
    return ml_collections.ConfigDict(data)


#: The sections every model config (`config.json` of a model directory) has.
MODEL_SECTIONS = ("text", "vae", "unet", "diffusion")


def read_config_json(
    path: str | Path, reference: ml_collections.ConfigDict | None = None, sections: Sequence[str] = ()
) -> ml_collections.ConfigDict:
    """Read a `config.json`, checked: each of `sections` present, and each field that `reference`
    also has of the same kind of value (`check_config`).

    Raises MissingFileError if `path` is missing; ConfigError (a ValueError) naming the file and
    the key if it is not UTF-8 JSON, lacks a section or has a field of the wrong type.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not UTF-8 text (byte {error.start})") from None
    config = config_from_json(text, source=path)
    if missing := [name for name in sections if name not in config]:
        raise ConfigError(f"{path} lacks the section(s) {', '.join(missing)}")
    if reference is not None:
        check_config(config, reference, path)
    return config


def check_config(config, reference, source: str | Path = "config", prefix: str = "") -> None:
    """ConfigError naming `source` and the dotted key of the first field of `config` whose value
    is not of the kind of `reference`'s (a section, true/false, an integer, a number, text, a list);
    fields only one of them has, and fields `reference` leaves None, are not checked."""
    for key, expected in reference.items():
        if key not in config or expected is None or config[key] is None:
            continue
        value, name = config[key], f"{prefix}{key}"
        if isinstance(expected, (dict, ml_collections.ConfigDict)):
            if not isinstance(value, (dict, ml_collections.ConfigDict)):
                raise ConfigError(f"{source}: {name} must be a section (a JSON object), got {value!r}")
            check_config(value, expected, source, f"{name}.")
            continue
        kinds = (
            (bool, "true or false"),
            (int, "an integer"),
            (float, "a number"),
            (str, "text"),
            ((list, tuple), "a list"),
        )
        kind, label = next(((k, label) for k, label in kinds if isinstance(expected, k)), (None, None))
        if kind is None:
            continue
        if kind is float:
            fits = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif kind is int:
            fits = isinstance(value, int) and not isinstance(value, bool)
        else:
            fits = isinstance(value, kind)
        if not fits:
            text = repr(value) if len(repr(value)) <= 60 else repr(value)[:60] + "..."
            raise ConfigError(f"{source}: {name} must be {label} (like {expected!r}), got {text}")
