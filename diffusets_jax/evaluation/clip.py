"""The ECG-text CLIP evaluator: Net1D signal encoder, 64-d projections, symmetric contrastive loss.

Source: DiffuSETS `clip/clip_model.py` (class `CLIP`, "adapted from METS") and `clip/clip_train.py`.
The official metrics (`test_scripts/evaluation.py`) take the 64-d projections
unnormalised (`ecg_features`, `text_features`) for FID and precision/recall, and their cosine
similarity for the CLIP score.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from diffusets_jax.evaluation.net1d import Net1D
from diffusets_jax.models.layers import linear

Array = jax.Array

#: Initial `logit_scale`: the logits are exp(logit_scale) * cosine, starting at 1 / 0.07.
INITIAL_LOGIT_SCALE = math.log(1 / 0.07)


class TextProjector(nnx.Module):
    """The official `MLP`: text embeddings `(B, D)` -> `linear_1` -> ReLU -> `linear_2` -> `(B, out)`."""

    def __init__(self, input_dim: int, output_dim: int, hidden_dim: int, *, rngs: nnx.Rngs):
        self.linear_1 = linear(input_dim, hidden_dim, rngs=rngs)
        self.linear_2 = linear(hidden_dim, output_dim, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.linear_2(jax.nn.relu(self.linear_1(x)))


class ClipEvaluator(nnx.Module):
    """`resnet` (Net1D), `ecg_projector` Linear(width, embed_dim), `text_projector`
    MLP(text_embed_dim -> text_hidden -> ReLU -> embed_dim) and the scalar `logit_scale`.

    Official sizes: Net1D of `net1d.paper_net1d_kwargs()` (width 1024), embed_dim 64,
    text_embed_dim 1536 (OpenAI ada-002; 384 with MiniLM), text_hidden 2048: 22,005,505 parameters.
    """

    def __init__(
        self, *, net1d_kwargs: dict, text_embed_dim: int, embed_dim: int = 64, text_hidden: int = 2048, rngs: nnx.Rngs
    ):
        self.resnet = Net1D(**net1d_kwargs, rngs=rngs)
        self.ecg_projector = linear(self.resnet.out_features, embed_dim, rngs=rngs)
        self.text_projector = TextProjector(text_embed_dim, embed_dim, text_hidden, rngs=rngs)
        self.logit_scale = nnx.Param(jnp.asarray(INITIAL_LOGIT_SCALE, jnp.float32))

    def ecg_features(self, signals: Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> Array:
        """Signals `(B, 1024, 12)` mV -> unnormalised features `(B, embed_dim)` (official
        `ecg_projector(encode_signal(x))`). `train=True` needs `rngs` with a `dropout` stream."""
        return self.ecg_projector(self.resnet(signals, train=train, rngs=rngs))

    def text_features(self, text_embeddings: Array) -> Array:
        """Text embeddings `(B, D)` -> unnormalised features `(B, embed_dim)`."""
        return self.text_projector(text_embeddings)

    def __call__(
        self, signals: Array, text_embeddings: Array, *, train: bool = False, rngs: nnx.Rngs | None = None
    ) -> Array:
        """`logits_per_signal` `(B, B)`: exp(logit_scale) * cosine(ECG i, text j).
        The official `logits_per_text` is its transpose."""
        ecg = _unit(self.ecg_features(signals, train=train, rngs=rngs))
        text = _unit(self.text_features(text_embeddings))
        return jnp.exp(self.logit_scale[...]) * ecg @ text.T


def _unit(x: Array) -> Array:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def contrastive_loss(logits_per_signal: Array) -> Array:
    """Symmetric InfoNCE `(CE(logits, arange) + CE(logits.T, arange)) / 2`, pair i matching i.

    `logits_per_signal` `(B, B)`; the official `clip_train.py` loss (cross-entropy of each ECG over
    the texts of its batch and of each text over the ECGs). Identical reports in one batch count
    as negatives, as officially.
    """
    labels = jnp.arange(logits_per_signal.shape[0])
    per_signal = optax.softmax_cross_entropy_with_integer_labels(logits_per_signal, labels)
    per_text = optax.softmax_cross_entropy_with_integer_labels(logits_per_signal.T, labels)
    return (per_signal.mean() + per_text.mean()) / 2


def build_evaluator(config, *, seed: int | None = None) -> ClipEvaluator:
    """The evaluator of `config.evaluator` for text embeddings of width `config.text.embed_dim`."""
    e = config.evaluator
    net1d_kwargs = dict(
        in_channels=12,
        base_filters=e.base_filters,
        ratio=e.ratio,
        filter_list=tuple(e.filter_list),
        m_blocks_list=tuple(e.m_blocks_list),
        kernel_size=e.kernel_size,
        stride=e.stride,
        groups_width=e.groups_width,
        dropout=e.dropout,
    )
    return ClipEvaluator(
        net1d_kwargs=net1d_kwargs,
        text_embed_dim=config.text.embed_dim,
        embed_dim=e.embed_dim,
        text_hidden=e.text_hidden,
        rngs=nnx.Rngs(config.seed if seed is None else seed),
    )


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity `(N,)` of `(N, d)` and `(N, d)` (the CLIP score is its mean)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def retrieval_accuracy(
    ecg_features: np.ndarray, text_features: np.ndarray, reports: np.ndarray | None = None, ks=(1, 5)
) -> dict[str, float]:
    """Top-k retrieval over N pairs by cosine similarity, both directions, with chance levels.

    `ecg_features`, `text_features` `(N, d)`, row i a matching pair. Keys `ecg_to_text_top{k}`
    (the true text of ECG i among its k most similar texts) and `text_to_ecg_top{k}`, and
    `chance_top{k}` = k / N. With `reports` `(N,)` str, also `*_same_text_top{k}`: a hit when a
    retrieved item has the same report as the query (many PTB-XL reports are identical), with
    `chance_same_text_top{k}` the hit rate of a uniformly random k-subset.

    Raises ValueError if the arrays do not have N rows each or k > N.
    """
    n = len(ecg_features)
    if len(text_features) != n or (reports is not None and len(reports) != n):
        raise ValueError(
            f"need N matching rows, got {len(ecg_features)}, {len(text_features)}"
            + ("" if reports is None else f", {len(reports)}")
        )
    if max(ks) > n:
        raise ValueError(f"top-{max(ks)} retrieval needs at least {max(ks)} pairs, got {n}")
    ecg = ecg_features / np.linalg.norm(ecg_features, axis=1, keepdims=True)
    text = text_features / np.linalg.norm(text_features, axis=1, keepdims=True)
    similarity = np.asarray(ecg, np.float64) @ np.asarray(text, np.float64).T  # (N ECGs, N texts)
    ranked = {"ecg_to_text": np.argsort(-similarity, axis=1), "text_to_ecg": np.argsort(-similarity.T, axis=1)}
    rows = np.arange(n)[:, None]
    result = {}
    for k in ks:
        result[f"chance_top{k}"] = k / n
        for direction, order in ranked.items():
            result[f"{direction}_top{k}"] = float(np.mean(np.any(order[:, :k] == rows, axis=1)))
    if reports is not None:
        same = np.asarray(reports)[:, None] == np.asarray(reports)[None, :]  # (N, N), symmetric
        counts = same.sum(axis=1)
        for k in ks:
            for direction, order in ranked.items():
                hits = np.take_along_axis(same, order[:, :k], axis=1)
                result[f"{direction}_same_text_top{k}"] = float(np.mean(np.any(hits, axis=1)))
            misses = [math.comb(n - c, k) / math.comb(n, k) for c in counts]
            result[f"chance_same_text_top{k}"] = float(1 - np.mean(misses))
    return result
