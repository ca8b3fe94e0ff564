"""The pretrained-model directory that `Pipeline.from_pretrained` and every command load.

Layout (plain files, no pickle):

    DIR/config.json    the ConfigDict the models were built from
    DIR/vae.npz        VAE parameters, one array per flattened path ('encoder/layers/0/kernel')
    DIR/unet.npz       U-Net parameters (the EMA copy when training kept one)
    DIR/MODEL_CARD.md  optional: data, command, steps, losses, limits

`diffusets-jax export` writes it from a training workdir and `diffusets-jax convert-torch` from
official PyTorch weights.
"""

from __future__ import annotations

import contextlib
import zipfile
import zlib
from pathlib import Path

import jax
import ml_collections
import numpy as np
from flax import nnx

from diffusets_jax.config import config_from_json, config_to_json
from diffusets_jax.models import UNet, VAE, build_unet, build_vae

#: The default model shipped inside the package (the `small` config trained on the shared data).
DEFAULT_MODEL_DIR = Path(__file__).parent / "pretrained" / "default"


def _path_name(path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def flatten_params(state: nnx.State, *, as_numpy: bool = True) -> dict:
    """`{'a/b/kernel': array}` for an `nnx.State` (or pure dict) of parameters."""
    pure = nnx.to_pure_dict(state) if isinstance(state, nnx.State) else state
    leaves = jax.tree_util.tree_flatten_with_path(pure)[0]
    return {_path_name(path): np.asarray(leaf) if as_numpy else leaf for path, leaf in leaves}


def load_params_into(module: nnx.Module, flat: dict[str, np.ndarray], *, source: str) -> None:
    """Copy `flat` parameters into `module` in place; ValueError naming a missing/extra/misshaped key."""
    params = nnx.state(module, nnx.Param)
    expected = flatten_params(params, as_numpy=False)  # arrays or abstract shapes
    missing = sorted(set(expected) - set(flat))
    extra = sorted(set(flat) - set(expected))
    if missing or extra:
        raise ValueError(
            f"{source}: parameters do not match the model built from its config "
            f"(missing {missing[:3]}, unexpected {extra[:3]})"
        )
    for key, value in expected.items():
        if flat[key].shape != value.shape:
            raise ValueError(f"{source}: {key} has shape {flat[key].shape}, expected {value.shape}")
    pure = nnx.to_pure_dict(params)

    def fill(path, _):
        return flat[_path_name(path)]

    nnx.replace_by_pure_dict(params, jax.tree_util.tree_map_with_path(fill, pure))
    nnx.update(module, params)


def save_pretrained(
    directory: str | Path, config: ml_collections.ConfigDict, vae: VAE, unet: UNet,
    model_card: str | None = None,
) -> Path:
    """Write `config.json`, `vae.npz`, `unet.npz` (and `MODEL_CARD.md`) into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(config_to_json(config))
    np.savez(directory / "vae.npz", **flatten_params(nnx.state(vae, nnx.Param)))
    np.savez(directory / "unet.npz", **flatten_params(nnx.state(unet, nnx.Param)))
    if model_card is not None:
        (directory / "MODEL_CARD.md").write_text(model_card)
    return directory


def load_pretrained(directory: str | Path) -> tuple[ml_collections.ConfigDict, VAE, UNet]:
    """Build the models of `directory/config.json` and load their parameters.

    Raises FileNotFoundError naming the missing file, ValueError if the parameters do not fit.
    """
    directory = Path(directory)
    for name in ("config.json", "vae.npz", "unet.npz"):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} not found: not a diffusets-jax model directory")
    try:
        config = config_from_json((directory / "config.json").read_text())
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{directory / 'config.json'} is not a JSON config: {error}") from None
    with config_errors(directory / "config.json"):
        vae = nnx.eval_shape(lambda: build_vae(config))
        unet = nnx.eval_shape(lambda: build_unet(config))
    for module, name in ((vae, "vae.npz"), (unet, "unet.npz")):
        try:
            with np.load(directory / name, allow_pickle=False) as data:
                params = dict(data)
        except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as error:
            raise ValueError(f"{directory / name} is not a readable .npz (empty or truncated?): {error}") from None
        load_params_into(module, params, source=str(directory / name))
    return config, vae, unet


@contextlib.contextmanager
def config_errors(path: Path):
    """Turn a field missing from the config at `path` (an error while building from it) into a
    ValueError naming the file and the field."""
    try:
        yield
    except (AttributeError, KeyError) as error:
        field = str(error).strip("'\"")
        raise ValueError(f"{path}: config lacks the field {field!r} (or it is malformed)") from None
