"""The model-directory format: one pair of functions saves and loads every trained artefact.

A model directory holds, as plain files (no pickle):

    DIR/config.json       the ConfigDict the models were built from (or another JSON record,
                          e.g. `beat_decoder.json`), read (checked, migrated) by `read_model_dir_config`
    DIR/<name>.npz        one archive per model: one float array per flattened parameter path
                          ('encoder/layers/0/kernel'), written with `np.savez` (ZIP, CRC-32 per member)
    DIR/MODEL_CARD.md     optional: data, command, steps, losses, limits
    DIR/MANIFEST.json     size and SHA-256 of each file above (`manifest.py`), written last

Users: `pretrained.save_pretrained/load_pretrained` (VAE + U-Net), `evaluation.train_clip`
(the CLIP evaluator, parameters and BatchNorm statistics), `sediff.beat_decoder` (SE-Diff beat
decoder) and `torch_weights` (conversion to and from the official PyTorch files).
"""

from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx

from diffusets_jax.checkpoints.layout import (
    CONFIG_FILE,
    MODEL_CARD_FILE,
    atomic_write,
    atomic_write_text,
    migrate_config,
    read_json,
)
from diffusets_jax.checkpoints.manifest import MANIFEST_FILE, read_manifest, verify_manifest, write_manifest
from diffusets_jax.errors import CheckpointError, MissingFileError


def _path_name(path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def flatten_params(state, *, as_numpy: bool = True) -> dict:
    """`{'a/b/kernel': array}` for an `nnx.State` (or a nested dict) of parameters."""
    pure = nnx.to_pure_dict(state) if isinstance(state, nnx.State) else state
    leaves = jax.tree_util.tree_flatten_with_path(pure)[0]
    return {_path_name(path): np.asarray(leaf) if as_numpy else leaf for path, leaf in leaves}


def module_arrays(module: nnx.Module, *filters) -> dict[str, np.ndarray]:
    """The flattened NumPy arrays of `module`'s state of `filters` (default: `nnx.Param`)."""
    what = nnx.Any(*filters) if len(filters) > 1 else (filters[0] if filters else nnx.Param)
    return flatten_params(nnx.state(module, what))


def load_params_into(module: nnx.Module, flat: Mapping[str, np.ndarray], *, source: str, what=nnx.Param) -> None:
    """Copy `flat` arrays into `module`'s state of `what` in place.

    Raises CheckpointError (a ValueError) naming `source` and a missing, unexpected or misshaped key.
    """
    params = nnx.state(module, what)
    expected = flatten_params(params, as_numpy=False)  # arrays or abstract shapes
    missing = sorted(set(expected) - set(flat))
    extra = sorted(set(flat) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{source}: parameters do not match the model built from its config "
            f"(missing {missing[:3]}, unexpected {extra[:3]})"
        )
    for key, value in expected.items():
        if flat[key].shape != value.shape:
            raise CheckpointError(f"{source}: {key} has shape {flat[key].shape}, expected {value.shape}")
    pure = nnx.to_pure_dict(params)
    nnx.replace_by_pure_dict(params, jax.tree_util.tree_map_with_path(lambda p, _: flat[_path_name(p)], pure))
    nnx.update(module, params)


def check_finite(arrays: Mapping[str, np.ndarray], source: str) -> None:
    """CheckpointError naming `source` and the first parameter holding NaN or inf."""
    for key, value in arrays.items():
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            bad = int(np.size(value) - np.isfinite(value).sum())
            raise CheckpointError(f"{source}: parameter {key!r} holds {bad} NaN/inf value(s) of {value.size}")


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of the `.npz` at `path`, checked finite.

    Raises MissingFileError if absent; CheckpointError naming the file for an empty, truncated or
    garbled archive (ZIP CRC-32 mismatch) or a NaN/inf parameter.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path} not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as error:
        raise CheckpointError(
            f"{path} is not a readable .npz (truncated or garbled?): {type(error).__name__}: {error}"
        ) from None
    check_finite(arrays, str(path))
    return arrays


@dataclass
class ModelDir:
    """What `load_model_dir` read: the config (or JSON record), arrays per model, the model card."""

    directory: Path
    config: ml_collections.ConfigDict | dict
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    model_card: str | None = None
    verified: bool = False  # a manifest was present and every file matched it


def save_model_dir(
    directory: str | Path,
    config: ml_collections.ConfigDict | Mapping,
    arrays: Mapping[str, Mapping[str, np.ndarray]],
    *,
    config_file: str = CONFIG_FILE,
    model_card: str | None = None,
) -> Path:
    """Write a model directory: `config_file`, `<name>.npz` for each entry of `arrays`
    (`{'vae': flat_arrays}`), `MODEL_CARD.md` if given, then `MANIFEST.json` over them.

    `config` is a ConfigDict (written as `config_to_json`) or a JSON-able mapping. Every file is
    written to a temporary name and renamed into place; the manifest comes last. Files of an earlier
    save that are not rewritten stay but are not listed. Returns `directory`.
    """
    from diffusets_jax.config import config_to_json

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text = (
        config_to_json(config)
        if isinstance(config, ml_collections.ConfigDict)
        else json.dumps(dict(config), indent=2, sort_keys=True, default=str)
    )
    atomic_write_text(directory / config_file, text)
    written = [config_file]
    for name, flat in arrays.items():
        flat = {key: np.asarray(value) for key, value in flat.items()}
        atomic_write(directory / f"{name}.npz", lambda f, flat=flat: np.savez(f, **flat))
        written.append(f"{name}.npz")
    if model_card is not None:
        atomic_write_text(directory / MODEL_CARD_FILE, model_card)
        written.append(MODEL_CARD_FILE)
    write_manifest(directory, written)
    return directory


def read_model_dir_config(
    directory: str | Path,
    names: Sequence[str] = (),
    *,
    config_file: str = CONFIG_FILE,
    as_config: bool = True,
    kind: str = "diffusets-jax model directory",
    sections: Sequence[str] = (),
    reference: ml_collections.ConfigDict | None = None,
) -> ml_collections.ConfigDict | dict:
    """The config of a model directory, without its arrays: the one place `config.json` of a
    model directory is read (`load_model_dir` reads it here too).

    Checks that `directory`, `config_file` and `<name>.npz` for each of `names` exist, then reads
    the config: with `as_config`, a ConfigDict (`config.read_config_json`: UTF-8 JSON object, each
    of `sections` present, each field `reference` also has of the same kind), migrated
    (`layout.migrate_config`); else the plain JSON object (`layout.read_json`). Checked before
    anything else is read, as a wrong field would otherwise fail deep inside the model code.

    Raises:
        MissingFileError: `directory` or one of its files does not exist (naming it and `kind`).
        ConfigError: the config is not UTF-8 JSON, not an object, lacks one of `sections` or has a
            field of the wrong kind (naming the file and the dotted key).
    """
    from diffusets_jax.config import read_config_json

    directory = Path(directory)
    if not directory.is_dir():
        raise MissingFileError(f"{directory} not found: not a {kind}")
    for name in (config_file, *(f"{name}.npz" for name in names)):
        if not (directory / name).is_file():
            raise MissingFileError(f"{directory / name} not found: not a {kind}")
    if not as_config:
        return read_json(directory / config_file)
    config = read_config_json(directory / config_file, reference, sections)
    migrate_config(config)
    return config


def load_model_dir(
    directory: str | Path,
    names: Sequence[str],
    *,
    config_file: str = CONFIG_FILE,
    as_config: bool = True,
    kind: str = "diffusets-jax model directory",
    sections: Sequence[str] = (),
    reference: ml_collections.ConfigDict | None = None,
) -> ModelDir:
    """Read a model directory written by `save_model_dir` (or by any earlier version).

    Reads and checks the config first (`read_model_dir_config`, with `sections` and `reference`;
    a plain dict when `as_config=False`), then checks `MANIFEST.json` if there is one (a
    directory without one still loads), then reads `<name>.npz` for each of `names` (finite arrays).

    Raises:
        MissingFileError: `directory` or one of its files does not exist (naming it and `kind`).
        ConfigError: the config is not JSON or does not fit (`read_model_dir_config`).
        IntegrityError: a file differs from the manifest (naming the file).
        CheckpointError: an archive is empty, truncated, garbled or holds NaN/inf (naming the file
            and, for NaN/inf, the parameter).
    """
    directory = Path(directory)
    config = read_model_dir_config(
        directory,
        names,
        config_file=config_file,
        as_config=as_config,
        kind=kind,
        sections=sections,
        reference=reference,
    )
    required = [config_file, *(f"{name}.npz" for name in names)]
    listed = read_manifest(directory)
    verified = listed is not None and verify_manifest(
        directory, required + ([MODEL_CARD_FILE] if MODEL_CARD_FILE in listed else [])
    )
    arrays = {name: read_npz(directory / f"{name}.npz") for name in names}
    card = directory / MODEL_CARD_FILE
    return ModelDir(directory, config, arrays, card.read_text(encoding="utf-8") if card.is_file() else None, verified)


__all__ = [
    "MANIFEST_FILE",
    "ModelDir",
    "check_finite",
    "flatten_params",
    "load_model_dir",
    "load_params_into",
    "module_arrays",
    "read_model_dir_config",
    "read_npz",
    "save_model_dir",
]
