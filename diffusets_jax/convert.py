"""Weights in the official PyTorch layout <-> this port's Flax NNX modules.

The official checkpoints are `unet_all.pth` (a plain U-Net state dict) and `vae_model.pth`
(`{'encoder': state_dict, 'decoder': state_dict}`); modules in the official
`unet/unet_conditional.py` and `vae/vae_model.py`; key list and shapes in
`tests/data/parity/state_dict_keys.tsv`. Conversion is a rename plus a transpose:

* Conv1d `(out, in, k)` -> NNX Conv kernel `(k, in, out)`;
* ConvTranspose1d `(in, out, k)` -> kernel `(k, in, out)`;
* Linear `(out, in)` -> kernel `(in, out)`; MHA `in_proj_weight (3h, h)` -> `in_proj.kernel (h, 3h)`;
* norm `weight` -> `scale`.

Official parameters that the official forward never uses (every U-Net `Block.down`, the VAE
attention `groupnorm` is kept) and the frozen time tables (recomputed, but checked) are accepted
and ignored. A missing, unknown or wrongly shaped key raises `ConversionError` naming it.
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np
from flax import nnx

from diffusets_jax.models.unet import timestep_table


class ConversionError(ValueError):
    """A state dict does not match the model: names the offending key."""


# Official keys with no counterpart here: accepted, checked where possible, and dropped.
_UNUSED_UNET = re.compile(r"(^|\.)block\.down\.(weight|bias)$")
_TIME_TABLE = re.compile(r"time_emb\.embeddings$")
#: Tolerance of the frozen time-table check. The official table is built with float32 sin/cos,
#: whose rounding differs between platforms and libraries: torch 2.13 on a CPU differs from NumPy's
#: float32 table by up to 1.5e-5 (266 entries above 1e-5), a float64 table rounded to float32 by
#: up to 5e-5. Any real difference (another frequency constant, t instead of t + 1) is >= 1e-2.
TIME_TABLE_ATOL = 1e-4


def _flat_state(module: nnx.Module) -> dict[str, nnx.Variable]:
    """`{'a.b.kernel': Variable}` for every parameter of `module`."""
    flat = {}
    for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        flat[".".join(str(p) for p in path)] = var
    return flat


# (pattern, replacement) applied in order to a flax parameter path to get the official key.
_RENAMES = [
    (r"^layers\.", ""),  # the VAE's nn.Sequential indices
    (r"^output_conv\.1\.", "output_conv.2."),  # Sequential(conv, Mish, conv)
    (r"\.kernel$", ".weight"),
    (r"\.scale$", ".weight"),
    # torch.nn.MultiheadAttention stores its packed projection as in_proj_weight / in_proj_bias.
    (r"(self|cross)_attention\.attention\.in_proj\.(weight|bias)$", r"\1_attention.attention.in_proj_\2"),
]


def _key_name(flax_name: str) -> str:
    """Official state-dict key of a flax parameter path."""
    for pattern, replacement in _RENAMES:
        flax_name = re.sub(pattern, replacement, flax_name)
    return flax_name


def _is_transposed_conv(flax_name: str) -> bool:
    return re.search(r"(^|\.)up\.kernel$", flax_name) is not None


def _to_flax(value: np.ndarray, flax_name: str) -> np.ndarray:
    """Official tensor -> flax layout."""
    if flax_name.endswith(".kernel") and value.ndim == 3:
        # Conv1d (out, in, k) or ConvTranspose1d (in, out, k) -> (k, in, out)
        return value.transpose(2, 0, 1) if _is_transposed_conv(flax_name) else value.transpose(2, 1, 0)
    if flax_name.endswith(".kernel") and value.ndim == 2:  # Linear (out, in) -> (in, out)
        return value.T
    return value


def _from_flax(value: np.ndarray, flax_name: str) -> np.ndarray:
    """Flax tensor -> official layout (inverse of `_to_flax`)."""
    if flax_name.endswith(".kernel") and value.ndim == 3:
        return value.transpose(1, 2, 0) if _is_transposed_conv(flax_name) else value.transpose(2, 1, 0)
    if flax_name.endswith(".kernel") and value.ndim == 2:
        return value.T
    return value


def load_state_dict(module: nnx.Module, state_dict: Mapping[str, np.ndarray], *, what: str) -> None:
    """Copy an official-layout state dict into `module` in place.

    Raises `ConversionError` naming any missing, unknown or wrongly shaped key (`what` names the
    part, e.g. 'unet' or 'vae encoder', in the message).
    """
    state_dict = {k: np.asarray(v) for k, v in state_dict.items()}
    params = _flat_state(module)
    expected = {_key_name(name): name for name in params}
    missing = sorted(set(expected) - set(state_dict))
    if missing:
        raise ConversionError(f"{what}: missing key {missing[0]!r} ({len(missing)} missing in all)")
    for key, value in state_dict.items():
        if key in expected:
            continue
        if _TIME_TABLE.search(key):
            table = timestep_table()
            if value.shape != table.shape or not np.allclose(value, table, rtol=0, atol=TIME_TABLE_ATOL):
                raise ConversionError(f"{what}: {key!r} is not the official frozen time table")
        elif not _UNUSED_UNET.search(key):
            raise ConversionError(f"{what}: unknown key {key!r} (shape {value.shape})")
    for key, name in expected.items():
        var = params[name]
        value = _to_flax(state_dict[key], name)
        if value.shape != var.shape:
            raise ConversionError(
                f"{what}: key {key!r} has shape {state_dict[key].shape}, expected "
                f"{_from_flax(np.zeros(var.shape), name).shape}"
            )
        var[...] = value.astype(np.float32)


def state_dict(module: nnx.Module) -> dict[str, np.ndarray]:
    """The official-layout state dict of `module` (unused official tensors are not included)."""
    return {
        _key_name(name): np.ascontiguousarray(_from_flax(np.asarray(var[...]), name))
        for name, var in _flat_state(module).items()
    }
