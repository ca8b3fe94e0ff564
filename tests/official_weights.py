"""Rebuild the official DiffuSETS weights of the parity vectors with NumPy alone.

Recipe from data/parity/README.md: each tensor is drawn from `default_rng(crc32(key))`, scaled by
its fan-in (>= 2-D), 0.02 (biases) or 1 + 0.1 z (norm scales); the frozen time tables keep their
built values.
"""

import zlib
from pathlib import Path

import numpy as np

from diffusets_jax.models.unet import timestep_table

PARITY = Path(__file__).resolve().parent / "data" / "parity"


def official_shapes() -> dict[str, dict[str, tuple[int, ...]]]:
    """`{'unet' | 'vae_encoder' | 'vae_decoder': {key: shape}}` from state_dict_keys.tsv."""
    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    lines = (PARITY / "state_dict_keys.tsv").read_text().splitlines()[1:]
    for line in lines:
        module, key, shape = line.split("\t")
        shapes.setdefault(module, {})[key] = tuple(int(s) for s in shape.split(","))
    return shapes


def rebuild(key: str, shape: tuple[int, ...]) -> np.ndarray:
    if key.endswith("time_emb.embeddings"):
        return timestep_table()
    z = np.random.default_rng(zlib.crc32(key.encode())).standard_normal(shape).astype(np.float32)
    if len(shape) >= 2:
        return (z / np.sqrt(np.prod(shape[1:]))).astype(np.float32)
    if key.endswith("bias"):
        return (0.02 * z).astype(np.float32)
    return (1 + 0.1 * z).astype(np.float32)


def official_state_dicts() -> dict[str, dict[str, np.ndarray]]:
    return {
        module: {key: rebuild(key, shape) for key, shape in keys.items()} for module, keys in official_shapes().items()
    }


def parity_arrays() -> dict[str, np.ndarray]:
    with np.load(PARITY / "diffusets_official_parity.npz") as data:
        return dict(data)
