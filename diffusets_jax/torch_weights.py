"""Official PyTorch DiffuSETS weight files <-> pretrained model directories of this port.

The official checkpoints (of the official `vae/vae_model.py` and `unet/unet_conditional.py`) are

* `unet_all.pth`: a plain `ECGconditional` state dict (713 tensors), and
* `vae_model.pth`: `{'encoder': VAE_Encoder state dict, 'decoder': VAE_Decoder state dict}`.

`convert_official` turns them into a model directory (`config.json`, `vae.npz`, `unet.npz`,
`MODEL_CARD.md`; see `diffusets_jax.pretrained`) and `export_official` writes a model directory back
as files that the official code loads with `load_state_dict(strict=True)`: same key names, same
shapes, same order, float32. Files are read without unpickling arbitrary objects
(`torch.load(..., weights_only=True)`); `.npz` files (no pickle, `allow_pickle=False`) are accepted
everywhere instead of `.pth`, so that NumPy alone suffices:

* U-Net `.npz`: one array per official key;
* VAE `.npz`: the keys prefixed `encoder.` and `decoder.`.

PyTorch is imported only when a `.pth` file is read or written.
"""

from __future__ import annotations

import datetime
import re
import zipfile
from pathlib import Path
from typing import Mapping

import jax
import ml_collections
import numpy as np
from flax import nnx

from diffusets_jax import convert
from diffusets_jax.config import config_to_json, load_config
from diffusets_jax.models import abstract_model, build_unet, build_vae
from diffusets_jax.models.unet import timestep_table
from diffusets_jax.checkpoints import load_params_into, sha256_file
from diffusets_jax.pretrained import read_pretrained, save_pretrained

__all__ = [
    "WeightFileError",
    "read_state_dict",
    "read_vae_state_dicts",
    "official_unet_state_dict",
    "convert_official",
    "export_official",
]

TORCH_HINT = "pip install torch==2.13.0"
VAE_PARTS = ("encoder", "decoder")


class WeightFileError(convert.ConversionError):
    """A weight file cannot be read or does not hold a state dict; the message names the file."""


def _import_torch():
    try:
        import torch
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"reading or writing PyTorch .pth weights needs PyTorch: {TORCH_HINT} "
            "(or use .npz files, which need NumPy only)"
        ) from error
    return torch


def _to_numpy(value, path: Path, key: str) -> np.ndarray:
    torch = _import_torch()
    if not isinstance(value, torch.Tensor):
        raise WeightFileError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
    value = value.detach().cpu()
    if value.is_floating_point() and value.dtype != torch.float32:
        value = value.float()  # half / bfloat16 / float64 checkpoints
    return value.numpy().copy()


def _strip_module_prefix(state: dict) -> dict:
    """`torch.nn.DataParallel` checkpoints prefix every key with `module.`: drop it."""
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def _read_pth(path: Path) -> dict:
    torch = _import_torch()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt zip, pickle, or a non-weights object
        if type(error).__name__ == "UnpicklingError":  # torch's text suggests weights_only=False: don't
            reason = "corrupt, or holds objects other than tensors, which are not unpickled for safety"
        else:
            reason = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
        raise WeightFileError(f"{path}: not a readable PyTorch state dict ({reason})") from error
    if not isinstance(obj, Mapping):
        raise WeightFileError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    if set(obj) == {"state_dict"} and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if obj and all(isinstance(v, Mapping) for v in obj.values()):  # {'encoder': sd, 'decoder': sd}
        return {
            str(part): {str(k): _to_numpy(v, path, f"{part}.{k}") for k, v in _strip_module_prefix(dict(sd)).items()}
            for part, sd in obj.items()
        }
    return {str(k): _to_numpy(v, path, str(k)) for k, v in _strip_module_prefix(dict(obj)).items()}


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise WeightFileError(f"{path}: not a readable .npz archive ({type(error).__name__}: {error})") from error
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise WeightFileError(f"{path}: a single .npy array, not an .npz archive of named arrays")
    try:
        with data:
            return {key: np.asarray(data[key]) for key in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:  # e.g. object arrays, truncation
        raise WeightFileError(f"{path}: not a readable .npz archive ({type(error).__name__}: {error})") from error


def read_state_dict(path: str | Path) -> dict:
    """Read a state dict from a `.pth`/`.pt` file (PyTorch) or a `.npz` archive (NumPy).

    Returns `{key: float32-or-int ndarray}`; for a file holding several state dicts (the official
    `vae_model.pth` = `{'encoder': sd, 'decoder': sd}`) a nested `{'encoder': {...}, 'decoder': {...}}`.
    `.pth` files are loaded with `weights_only=True` (no arbitrary unpickling); a `module.` prefix
    (DataParallel) is dropped. Raises FileNotFoundError or `WeightFileError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weight file not found")
    if path.suffix == ".npz":
        return _read_npz(path)
    return _read_pth(path)


def read_vae_state_dicts(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """`(encoder_state_dict, decoder_state_dict)` of an official `vae_model.pth` (or `.npz`).

    Accepts the official nested layout, or a flat one with keys prefixed `encoder.` / `decoder.`
    (the `.npz` layout). Raises `WeightFileError` naming the file if either part is absent.
    """
    path = Path(path)
    state = read_state_dict(path)
    if all(isinstance(state.get(part), Mapping) for part in VAE_PARTS):
        extra = sorted(set(state) - set(VAE_PARTS))
        if extra:
            raise WeightFileError(f"{path}: unexpected entry {extra[0]!r} next to 'encoder' and 'decoder'")
        return dict(state["encoder"]), dict(state["decoder"])
    parts: dict[str, dict[str, np.ndarray]] = {part: {} for part in VAE_PARTS}
    for key, value in state.items():
        part, _, rest = key.partition(".")
        if part not in parts or not rest or isinstance(value, Mapping):
            raise WeightFileError(
                f"{path}: entry {key!r} is neither in an 'encoder'/'decoder' state dict nor prefixed "
                "'encoder.'/'decoder.' (expected the official vae_model.pth layout)"
            )
        parts[part][rest] = value
    for part in VAE_PARTS:
        if not parts[part]:
            raise WeightFileError(f"{path}: no {part} weights (expected keys '{part}.*' or an '{part}' state dict)")
    return parts["encoder"], parts["decoder"]


def _read_flat(path: Path) -> dict[str, np.ndarray]:
    state = read_state_dict(path)
    nested = sorted(k for k, v in state.items() if isinstance(v, Mapping))
    if nested:
        raise WeightFileError(
            f"{path}: holds several state dicts ({', '.join(map(repr, nested))}); expected the U-Net's "
            "plain state dict (unet_all.pth)"
        )
    return state


# ------------------------------------------------------------------------------------------------
# Building models without random initialisation

# `nnx.eval_shape` of the paper U-Net traces every initialiser (seconds); keep its result per config.
_ABSTRACT: dict[str, tuple] = {}


def _zeros_like(abstract: tuple) -> nnx.Module:
    graphdef, state = abstract
    return nnx.merge(graphdef, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), state))


def _empty_models(config: ml_collections.ConfigDict):
    """The VAE and U-Net of `config` with NumPy zero parameters (filled in place by the converter)."""
    key = config_to_json(config)
    if key not in _ABSTRACT:
        _ABSTRACT.clear()
        _ABSTRACT[key] = (
            nnx.split(abstract_model(lambda: build_vae(config))),
            nnx.split(abstract_model(lambda: build_unet(config))),
        )
    vae, unet = _ABSTRACT[key]
    return _zeros_like(vae), _zeros_like(unet)


_sha256 = sha256_file


def _check_text_width(state: Mapping[str, np.ndarray], config, path: Path) -> None:
    key = "bottelneck.cross_attention.value_combiner.weight"
    if key in state and np.ndim(state[key]) == 2:
        width = state[key].shape[1] - 3
        if width != config.text.embed_dim:
            raise convert.ConversionError(
                f"{path}: key {key!r} has shape {tuple(state[key].shape)}, i.e. {width}-d text embeddings, "
                f"but config text.embed_dim is {config.text.embed_dim}"
            )


def convert_official(
    unet_path: str | Path,
    vae_path: str | Path,
    out_dir: str | Path,
    config: ml_collections.ConfigDict | None = None,
) -> Path:
    """Official `unet_all.pth` + `vae_model.pth` (or `.npz`) -> a pretrained model directory.

    `config` defaults to `load_config('paper')` (the official sizes, ada-002 text, 1536-d).
    Returns `out_dir`, which then loads with `diffusets_jax.pretrained.load_pretrained`.
    A missing, unknown or misshaped key raises `ConversionError` naming the file and the key;
    an unreadable file raises `WeightFileError` (a `ConversionError`) naming the file.
    """
    unet_path, vae_path = Path(unet_path), Path(vae_path)
    config = load_config("paper") if config is None else config
    unet_sd = _read_flat(unet_path)
    encoder_sd, decoder_sd = read_vae_state_dicts(vae_path)
    _check_text_width(unet_sd, config, unet_path)

    vae, unet = _empty_models(config)
    for module, sd, what, path in (
        (unet, unet_sd, "unet", unet_path),
        (vae.encoder, encoder_sd, "vae encoder", vae_path),
        (vae.decoder, decoder_sd, "vae decoder", vae_path),
    ):
        try:
            convert.load_state_dict(module, sd, what=what)
        except convert.ConversionError as error:
            raise convert.ConversionError(f"{path}: {error}") from error

    n_unet = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(unet, nnx.Param)))
    n_vae = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(vae, nnx.Param)))
    card = f"""# DiffuSETS: official PyTorch weights, converted

Converted with `diffusets_jax.torch_weights.convert_official` on {datetime.date.today().isoformat()}
from the official DiffuSETS checkpoints (PyTorch; published on Hugging Face as `Laiyf/DiffuSETS`,
`prerequisites_for_inference.zip`; check the weights' own licence before redistributing them):

| file | sha256 |
|---|---|
| `{unet_path.name}` (U-Net `ECGconditional`) | `{_sha256(unet_path)}` |
| `{vae_path.name}` (VAE encoder + decoder) | `{_sha256(vae_path)}` |

- Configuration: `{config.get("name", "?")}`; text embedder `{config.text.embedder}` ({config.text.embed_dim}-d):
  generating with these weights needs the embedder the official model was trained with.
- Parameters: U-Net {n_unet:,} (the official unused `Block.down` convolutions and the frozen
  time-embedding tables are not kept), VAE {n_vae:,}.
- The conversion is a renaming and transposition of the tensors, checked against golden outputs of
  the official models (tests/test_parity.py, tests/test_torch_weights.py): relative error < 1e-4 in float32.
- No training was done here: limits and intended use are those of the official release
  (research only, MIMIC-IV-ECG training data; not for clinical use).
"""
    return Path(save_pretrained(out_dir, config, vae, unet, model_card=card))


# ------------------------------------------------------------------------------------------------
# Export: the official key order and the tensors this port does not keep

_BLOCK_OUT = re.compile(r"^(.*\bblock)\.layer_norm2\.weight$")
_TIME_FC1 = re.compile(r"^(.*\btime_emb)\.fc1\.weight$")

# Registration order of the official modules' children (what `state_dict()` follows), by parent name.
_ORDER = {
    "": ["downsampling_blocks", "upsampling_blocks", "bottelneck", "output_conv"],
    "downsampling_blocks": ["down", "block"],
    "upsampling_blocks": ["block", "up"],
    "block": [
        "pre_shortcut_convs",
        "shortcut_convs",
        "post_shortcut_convs",
        "down",
        "layer_norm1",
        "layer_norm2",
        "res_conv",
        "self_attention",
        "cross_attention",
        "attention_norm",
        "time_emb",
    ],
    "bottelneck": [
        "time_emb",
        "bottleneck_conv1",
        "bottleneck_conv1_2",
        "bottleneck_conv2",
        "bottleneck_layer_norm1",
        "bottleneck_layer_norm2",
        "attention_norm",
        "self_attention",
        "cross_attention",
    ],
    "self_attention": ["to_q", "to_k", "to_v", "to_out", "attention", "norm"],
    "cross_attention": [
        "to_q",
        "to_k",
        "to_v",
        "to_out",
        "attention",
        "normalization",
        "value_combiner",
        "condition_normalization",
    ],
    "attention": ["in_proj_weight", "in_proj_bias", "in_proj", "out_proj"],
    "time_emb": ["embeddings", "fc1", "fc2"],
    # VAE_ResidualBlock and VAE_AttentionBlock (their parent is an nn.Sequential index)
    "#": ["groupnorm_1", "conv_1", "groupnorm_2", "conv_2", "residual_layer", "groupnorm", "attention"],
}
_LEAVES = ["weight", "bias"]


def _order_key(key: str) -> tuple:
    """Sort key reproducing the official `state_dict()` order of `key`."""
    rank, parent = [], ""
    for part in key.split("."):
        if part.isdigit():  # an nn.ModuleList / nn.Sequential index
            rank.append((0, int(part), ""))
            parent = parent or "#"  # the VAE's top-level Sequential: its children are VAE blocks
            continue
        table = _ORDER.get(parent, []) + _LEAVES
        rank.append((1, table.index(part), "") if part in table else (2, 0, part))
        parent = part
    return tuple(rank)


def official_unet_state_dict(unet: nnx.Module) -> dict[str, np.ndarray]:
    """The complete official `ECGconditional` state dict of a U-Net, in the official order.

    Adds what this port does not keep: the 13 frozen `*.time_emb.embeddings` tables (rebuilt with
    `timestep_table()`) and every `*.block.down.{weight,bias}` (never used by the official forward:
    zeros of shape `(C_out, C_out, 3)` and `(C_out,)`), so that `load_state_dict(strict=True)` of the
    official class accepts it.
    """
    state = convert.state_dict(unet)
    extra: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if m := _BLOCK_OUT.match(key):
            c_out = value.shape[0]
            extra[f"{m.group(1)}.down.weight"] = np.zeros((c_out, c_out, 3), np.float32)
            extra[f"{m.group(1)}.down.bias"] = np.zeros((c_out,), np.float32)
        if m := _TIME_FC1.match(key):
            extra[f"{m.group(1)}.embeddings"] = timestep_table()
    clash = sorted(set(extra) & set(state))
    if clash:  # pragma: no cover - would mean the model grew these parameters
        raise convert.ConversionError(f"unet: {clash[0]!r} is both a parameter and an added official tensor")
    state.update(extra)
    return {key: state[key] for key in sorted(state, key=_order_key)}


def _load_model_dir(directory: Path):
    """`load_pretrained(directory)` (checked config, manifest, finite arrays:
    `pretrained.read_pretrained`), reusing the cached abstract models of `_empty_models`."""
    read = read_pretrained(directory)
    vae, unet = _empty_models(read.config)
    for module, name in ((vae, "vae"), (unet, "unet")):
        load_params_into(module, read.arrays[name], source=str(Path(directory) / f"{name}.npz"))
    return read.config, vae, unet


def _official_vae_state_dict(module: nnx.Module) -> dict[str, np.ndarray]:
    state = convert.state_dict(module)
    return {key: state[key] for key in sorted(state, key=_order_key)}


def export_official(model_dir: str | Path, out_dir: str | Path, format: str = "pth") -> tuple[Path, Path]:
    """A pretrained model directory -> official `unet_all.pth` and `vae_model.pth` (float32).

    `format='pth'` writes PyTorch files (`torch.save`): `unet_all.pth`, a plain state dict, and
    `vae_model.pth` = `{'encoder': sd, 'decoder': sd}`, with the official key names, shapes and
    order. `format='npz'` writes `unet_all.npz` and `vae_model.npz` (keys `encoder.*`, `decoder.*`)
    with NumPy alone. Returns `(unet_path, vae_path)`.
    """
    if format not in ("pth", "npz"):
        raise ValueError(f"format must be 'pth' or 'npz', got {format!r}")
    _, vae, unet = _load_model_dir(Path(model_dir))
    unet_sd = official_unet_state_dict(unet)
    vae_sd = {"encoder": _official_vae_state_dict(vae.encoder), "decoder": _official_vae_state_dict(vae.decoder)}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    unet_path, vae_path = out_dir / f"unet_all.{format}", out_dir / f"vae_model.{format}"
    if format == "npz":
        np.savez(unet_path, **unet_sd)
        np.savez(vae_path, **{f"{part}.{k}": v for part, sd in vae_sd.items() for k, v in sd.items()})
        return unet_path, vae_path
    torch = _import_torch()

    def tensors(sd):
        return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in sd.items()}

    torch.save(tensors(unet_sd), unet_path)
    torch.save({part: tensors(sd) for part, sd in vae_sd.items()}, vae_path)
    return unet_path, vae_path
