"""The pretrained-model directory that `Pipeline.from_pretrained` and every command load.

Layout (plain files, no pickle; the format is `checkpoints.model_dir`):

    DIR/config.json    the ConfigDict the models were built from
    DIR/vae.npz        VAE parameters, one array per flattened path ('encoder/layers/0/kernel')
    DIR/unet.npz       U-Net parameters (the EMA copy when training kept one)
    DIR/MODEL_CARD.md  optional: data, command, steps, losses, limits
    DIR/MANIFEST.json  size and SHA-256 of the files above (absent in directories written before it)

`diffusets-jax export` writes it from a training workdir and `diffusets-jax convert-torch` from
official PyTorch weights.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import ml_collections

from diffusets_jax.checkpoints import (  # noqa: F401 - flatten_params, load_params_into: public here too
    ModelDir,
    flatten_params,
    load_model_dir,
    load_params_into,
    module_arrays,
    read_model_dir_config,
    save_model_dir,
)
from diffusets_jax.config import MODEL_SECTIONS, load_config
from diffusets_jax.errors import ConfigError
from diffusets_jax.models import UNet, VAE, abstract_model, build_unet, build_vae

#: The default model shipped inside the package (the `small` config trained on the shared data).
DEFAULT_MODEL_DIR = Path(__file__).parent / "pretrained" / "default"

#: The archives of a pretrained directory, in `checkpoints.model_dir` naming (`<name>.npz`).
MODEL_NAMES = ("vae", "unet")


def save_pretrained(
    directory: str | Path,
    config: ml_collections.ConfigDict,
    vae: VAE,
    unet: UNet,
    model_card: str | None = None,
) -> Path:
    """Write `config.json`, `vae.npz`, `unet.npz` (and `MODEL_CARD.md`), then `MANIFEST.json`, into
    `directory`, each file atomically; returns `directory`."""
    return save_model_dir(
        directory, config, {"vae": module_arrays(vae), "unet": module_arrays(unet)}, model_card=model_card
    )


@functools.cache
def _reference_config() -> ml_collections.ConfigDict:
    """The `small` config: a model directory's config fields must be of the kind of its (`check_config`)."""
    return load_config("small")


def read_model_config(directory: str | Path | None = None) -> ml_collections.ConfigDict:
    """The checked, migrated config of a pretrained model directory (None: the shipped default
    model) without loading its weights, e.g. for `Sampling.from_config` or a server's summary.

    Raises MissingFileError naming a missing `config.json`, `vae.npz` or `unet.npz`, ConfigError
    naming `config.json` and the key if it is not JSON, lacks a section (`MODEL_SECTIONS`) or has
    a field of the wrong kind.
    """
    return read_model_dir_config(
        DEFAULT_MODEL_DIR if directory is None else directory,
        MODEL_NAMES,
        sections=MODEL_SECTIONS,
        reference=_reference_config(),
    )


def read_pretrained(directory: str | Path) -> ModelDir:
    """A pretrained model directory read and checked (`checkpoints.load_model_dir`: the config as
    `read_model_config` checks it, then the manifest and the finite arrays), its models not built."""
    return load_model_dir(directory, MODEL_NAMES, sections=MODEL_SECTIONS, reference=_reference_config())


def build_from(read: ModelDir) -> tuple[VAE, UNet]:
    """The VAE and U-Net of a read model directory, built from its config and filled with its arrays.

    Raises ConfigError naming config.json and a field it lacks, CheckpointError naming the .npz and
    a missing, unexpected or misshaped parameter.
    """
    directory = read.directory
    with config_errors(directory / "config.json"):
        vae = abstract_model(lambda: build_vae(read.config))
        unet = abstract_model(lambda: build_unet(read.config))
    for module, name in ((vae, "vae"), (unet, "unet")):
        load_params_into(module, read.arrays[name], source=str(directory / f"{name}.npz"))
    return vae, unet


def load_pretrained(directory: str | Path) -> tuple[ml_collections.ConfigDict, VAE, UNet]:
    """Build the models of `directory/config.json` and load their parameters.

    Checks the config first (`read_model_config`), then `MANIFEST.json` when present (older
    directories without one still load).

    Raises:
        MissingFileError (a FileNotFoundError): naming the missing file.
        ConfigError: config.json is not JSON, lacks a section or a field the models need, or has a
            field of the wrong kind (named).
        IntegrityError: a file that differs from the manifest, named.
        CheckpointError (a ValueError): an empty, truncated or garbled .npz, a NaN/inf parameter
            (named), or parameters that do not fit the config.
    """
    read = read_pretrained(directory)
    vae, unet = build_from(read)
    return read.config, vae, unet


@contextlib.contextmanager
def config_errors(path: Path):
    """Turn a field missing from the config at `path` (an error while building from it) into a
    ConfigError naming the file and the field."""
    try:
        yield
    except (AttributeError, KeyError) as error:
        field = str(error).strip("'\"")
        raise ConfigError(f"{path}: config lacks the field {field!r} (or it is malformed)") from None
