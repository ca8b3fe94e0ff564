"""The DiffuSETS 1-D VAE: 12-lead ECG `(B, 1024, 12)` mV <-> latent `(B, 128, 4)`.

Port of `vae/vae_model.py` (`VAE_Encoder`, `VAE_Decoder`, `loss_function`) of the official code,
layer by layer. The official modules are `nn.Sequential`s, so the layers
here are kept in one list each, `layers[i]` being the official index `i`: the state-dict key
`encoder.4.conv_1.weight` is `encoder.layers[4].conv_1.kernel` here. The widths come from the
config (`vae.channels`, official `(128, 256, 512)`); the sequence of layers is the official one.

Speed (issue 19; paper size, encode + decode of 32 ECGs = 435 GFLOP, 2-core CPU): nearly all of
the time is the k = 3 convolutions, which XLA's CPU convolution runs about as fast per FLOP as
PyTorch's oneDNN (plain convolutions: 1.16 s against the official code's 1.2 s, idle CPU), so only
fewer multiplications help. Every k = 3, stride-1 convolution with at least 128 channels on both
sides (all but the first and last) is computed by Winograd F(4, 3) (`layers.winograd_conv3`: half
the multiplications), and GroupNorm reduces over L first (`layers.GroupNorm`): ~0.85 s, within
1e-5 relative error of the plain layers (benchmarks/README.md). At small batches (fewer than
`layers.WINOGRAD_MIN_ROWS` = 2048 batch x length rows, e.g. decoding one ECG) those convolutions
run as im2col and one matmul instead, faster at those sizes: one ECG's decode 73 -> 36 ms.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from diffusets_jax.constants import LATENT_SCALE, NUM_LEADS
from diffusets_jax.models.layers import conv1d, group_norm, linear

Array = jax.Array

#: k = 3 convolutions at least this wide on both sides use Winograd F(4, 3) (`layers.winograd_conv3`).
#: Idle 2-core CPU, encode + decode of 32 ECGs (alternated medians): with the transforms fused into
#: the matmuls, from 256 channels 870 ms, from 128 845 ms; plain convolutions 1157 ms.
WINOGRAD_MIN_CHANNELS = 128


def conv3(cin: int, cout: int, rngs: nnx.Rngs) -> nnx.Conv:
    """The VAE's k = 3, padding 1 convolution `(B, L, cin)` -> `(B, L, cout)` (`nn.Conv1d(cin, cout, 3, padding=1)`)."""
    return conv1d(cin, cout, 3, rngs=rngs, winograd=min(cin, cout) >= WINOGRAD_MIN_CHANNELS)


class ResidualBlock(nnx.Module):
    """`VAE_ResidualBlock`: GN -> SiLU -> conv3 -> GN -> SiLU -> conv3, plus a (1x1 conv) shortcut."""

    def __init__(self, cin: int, cout: int, num_groups: int, *, rngs: nnx.Rngs):
        self.groupnorm_1 = group_norm(cin, num_groups, rngs=rngs)
        self.conv_1 = conv3(cin, cout, rngs)
        self.groupnorm_2 = group_norm(cout, num_groups, rngs=rngs)
        self.conv_2 = conv3(cout, cout, rngs)
        self.residual_layer = conv1d(cin, cout, 1, rngs=rngs) if cin != cout else None

    def __call__(self, x: Array) -> Array:
        h = self.conv_1(jax.nn.silu(self.groupnorm_1(x)))
        h = self.conv_2(jax.nn.silu(self.groupnorm_2(h)))
        return h + (x if self.residual_layer is None else self.residual_layer(x))


class SelfAttention(nnx.Module):
    """The VAE's `SelfAttention(n_heads=1, d)`: packed `in_proj`, softmax(q k^T / sqrt(d)), `out_proj`."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.in_proj = linear(channels, 3 * channels, rngs=rngs)
        self.out_proj = linear(channels, channels, rngs=rngs)

    def __call__(self, x: Array) -> Array:  # (B, L, C) -> (B, L, C)
        q, k, v = jnp.split(self.in_proj(x), 3, axis=-1)
        weights = jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", q, k) / math.sqrt(x.shape[-1]), axis=-1)
        return self.out_proj(jnp.einsum("bqk,bkc->bqc", weights, v))


class AttentionBlock(nnx.Module):
    """`VAE_AttentionBlock`: x + self-attention over the L positions.

    The official block owns a `groupnorm` that its forward never applies; it is kept (so that the
    state dict round-trips) and, as in the official code, not used.
    """

    def __init__(self, channels: int, num_groups: int, *, rngs: nnx.Rngs):
        self.groupnorm = group_norm(channels, num_groups, rngs=rngs)  # unused, as in the official code
        self.attention = SelfAttention(channels, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return x + self.attention(x)


class SiLU(nnx.Module):
    def __call__(self, x: Array) -> Array:
        return jax.nn.silu(x)


class Upsample(nnx.Module):
    """`nn.Upsample(scale_factor=2)` (nearest): each sample repeated twice along L."""

    def __call__(self, x: Array) -> Array:
        return jnp.repeat(x, 2, axis=1)


def _downsample(channels: int, rngs: nnx.Rngs) -> nnx.Conv:
    # Official: F.pad(x, (0, 1)) then Conv1d(k3, stride 2, padding 0).
    return conv1d(channels, channels, 3, stride=2, padding=(0, 1), rngs=rngs)


class Encoder(nnx.Module):
    """`VAE_Encoder`: `(B, 1024, 12)` mV -> `(z, mean, log_variance)`, each `(B, 128, 4)`.

    `z = (mean + exp(logvar / 2) * noise) * 0.18215`; `mean` and `log_variance` (clamped to
    [-30, 20]) are returned unscaled, as in the official code.
    """

    def __init__(
        self,
        channels: Sequence[int] = (128, 256, 512),
        latent_channels: int = 4,
        num_groups: int = 32,
        *,
        rngs: nnx.Rngs,
    ):
        c1, c2, c3 = channels
        res = lambda cin, cout: ResidualBlock(cin, cout, num_groups, rngs=rngs)  # noqa: E731
        self.latent_channels = latent_channels
        self.layers = nnx.List(
            [
                conv3(NUM_LEADS, c1, rngs),  # 0
                res(c1, c1),
                res(c1, c1),  # 1, 2
                _downsample(c1, rngs),  # 3: 1024 -> 512
                res(c1, c2),
                res(c2, c2),  # 4, 5
                _downsample(c2, rngs),  # 6: 512 -> 256
                res(c2, c3),
                res(c3, c3),  # 7, 8
                _downsample(c3, rngs),  # 9: 256 -> 128
                res(c3, c3),
                res(c3, c3),
                res(c3, c3),  # 10, 11, 12
                AttentionBlock(c3, num_groups, rngs=rngs),  # 13
                res(c3, c3),  # 14
                group_norm(c3, num_groups, rngs=rngs),  # 15
                SiLU(),  # 16
                conv3(c3, 2 * latent_channels, rngs),  # 17
                conv1d(2 * latent_channels, 2 * latent_channels, 1, rngs=rngs),  # 18
            ]
        )

    def moments(self, x: Array) -> tuple[Array, Array]:
        """Posterior mean and clamped log-variance, each `(B, 128, latent_channels)`, unscaled."""
        for layer in self.layers:
            x = layer(x)
        mean, log_variance = jnp.split(x, 2, axis=-1)
        return mean, jnp.clip(log_variance, -30.0, 20.0)

    def __call__(self, x: Array, noise: Array) -> tuple[Array, Array, Array]:
        """Encode `x` `(B, 1024, 12)` with reparameterisation noise `(B, 128, latent_channels)`."""
        mean, log_variance = self.moments(x)
        z = (mean + jnp.exp(0.5 * log_variance) * noise) * LATENT_SCALE
        return z, mean, log_variance


class Decoder(nnx.Module):
    """`VAE_Decoder`: scaled latent `(B, 128, 4)` -> ECG `(B, 1024, 12)` in mV.

    Divides by 0.18215 first (the official code does it in place, mutating the caller's tensor;
    here it is a pure function).
    """

    def __init__(
        self,
        channels: Sequence[int] = (128, 256, 512),
        latent_channels: int = 4,
        num_groups: int = 32,
        *,
        rngs: nnx.Rngs,
    ):
        c1, c2, c3 = channels
        res = lambda cin, cout: ResidualBlock(cin, cout, num_groups, rngs=rngs)  # noqa: E731
        self.layers = nnx.List(
            [
                conv1d(latent_channels, latent_channels, 1, rngs=rngs),  # 0
                conv3(latent_channels, c3, rngs),  # 1
                res(c3, c3),  # 2
                AttentionBlock(c3, num_groups, rngs=rngs),  # 3
                res(c3, c3),
                res(c3, c3),
                res(c3, c3),
                res(c3, c3),  # 4-7
                Upsample(),  # 8: 128 -> 256
                conv3(c3, c3, rngs),  # 9
                res(c3, c3),
                res(c3, c3),
                res(c3, c3),  # 10-12
                Upsample(),  # 13: 256 -> 512
                conv3(c3, c3, rngs),  # 14
                res(c3, c2),
                res(c2, c2),
                res(c2, c2),  # 15-17
                Upsample(),  # 18: 512 -> 1024
                conv3(c2, c2, rngs),  # 19
                res(c2, c1),
                res(c1, c1),
                res(c1, c1),  # 20-22
                group_norm(c1, num_groups, rngs=rngs),  # 23
                SiLU(),  # 24
                conv3(c1, NUM_LEADS, rngs),  # 25
            ]
        )

    def __call__(self, z: Array) -> Array:
        x = z / LATENT_SCALE
        for layer in self.layers:
            x = layer(x)
        return x


class VAE(nnx.Module):
    """Encoder and decoder together, as `vae_model.pth` = `{'encoder': ..., 'decoder': ...}`."""

    def __init__(
        self,
        channels: Sequence[int] = (128, 256, 512),
        latent_channels: int = 4,
        num_groups: int = 32,
        *,
        rngs: nnx.Rngs,
    ):
        self.encoder = Encoder(channels, latent_channels, num_groups, rngs=rngs)
        self.decoder = Decoder(channels, latent_channels, num_groups, rngs=rngs)

    def __call__(self, x: Array, noise: Array) -> tuple[Array, Array, Array]:
        """Reconstruction `(B, 1024, 12)`, posterior mean and log-variance `(B, 128, 4)`."""
        z, mean, log_variance = self.encoder(x, noise)
        return self.decoder(z), mean, log_variance


def vae_loss(
    x: Array, reconstruction: Array, mean: Array, log_variance: Array, kl_weight: float | Array
) -> tuple[Array, dict[str, Array]]:
    """Official `loss_function`: sum-MSE per ECG + kl_weight * KL.

    The reconstruction term is summed over the 1024 x 12 values and averaged over the batch; the
    KL of N(mean, exp(logvar)) from N(0, 1) is summed over the latent channels and averaged over
    the batch *and* the 128 latent positions (official `vae/vae_model.py::loss_function`).
    Returns `(loss, {"reconstruction", "kl"})`.
    """
    batch = x.shape[0]
    reconstruction_loss = jnp.sum((reconstruction - x) ** 2) / batch
    kl = 0.5 * (jnp.exp(log_variance) + mean**2 - 1.0 - log_variance)  # (B, 128, C)
    kl = jnp.mean(jnp.sum(kl, axis=-1))
    loss = reconstruction_loss + kl_weight * kl
    return loss, {"reconstruction": reconstruction_loss, "kl": kl}
