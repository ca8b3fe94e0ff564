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


def load_config(name_or_path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Build a config and apply overrides such as `unet_train.num_steps=100`.

    Raises ValueError for an unknown config name, a file without `get_config`, or an override of a
    field that does not exist.
    """
    path = Path(name_or_path)
    if path.suffix == ".py":
        if not path.is_file():
            raise ValueError(f"config file not found: {path}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(f"configs.{name_or_path}")
        except ModuleNotFoundError as error:
            raise ValueError(
                f"unknown config {name_or_path!r}: give a name in configs/ (small, paper) or a .py path"
            ) from error
    if not hasattr(module, "get_config"):
        raise ValueError(f"config {name_or_path!r} has no get_config()")
    config = module.get_config()
    for override in overrides:
        apply_override(config, override)
    return config


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
    """Set one `dotted.key=value` (value parsed as a Python literal, else kept as a string)."""
    key, sep, raw = override.partition("=")
    if not sep:
        raise ValueError(f"override {override!r} is not of the form key=value")
    *parents, leaf = key.strip().split(".")
    node = config
    for part in parents:
        if part not in node:
            raise ValueError(f"override {override!r}: config has no field {key!r}")
        node = node[part]
    if leaf not in node:
        raise ValueError(f"override {override!r}: config has no field {key!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    try:
        node[leaf] = value
    except TypeError:  # ml_collections keeps each field's type
        old = node[leaf]
        if isinstance(old, ml_collections.ConfigDict):
            raise ValueError(f"--set {override}: {key} is a section of the config; set one of its fields") from None
        raise ValueError(f"--set {override}: {key} must be of type {type(old).__name__} (like {old!r}), "
                         f"got {value!r}") from None


def config_to_json(config: ml_collections.ConfigDict) -> str:
    return config.to_json_best_effort(indent=2, sort_keys=True)


def config_from_json(text: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(json.loads(text))
