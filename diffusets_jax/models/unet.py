"""The DiffuSETS conditional 1-D U-Net noise predictor (`unet/unet_conditional.py`, `ECGconditional`).

Input: noisy latent `(B, 128, 4)`, timesteps `(B,)` int in [0, 1000), and the condition vector
`(B, D + 3)` = [text embedding (D), sex (1 = male), age (years), heart rate (bpm)], raw values as
in the official code (`utils/train.py::train_epoch_channels`). Output: predicted noise, same
shape as the latent.

Attribute names mirror the official modules (`downsampling_blocks`, `bottelneck` -- the official
misspelling is the real state-dict prefix --, `self_attention`, `cross_attention`,
`value_combiner`, ...), so that `diffusets_jax.convert` is a table of renames and transposes.
Widths come from `unet.channels` (official `(8, 16, 32, 64, 128, 256)`, i.e. `n_channels=4`
doubled at each of `num_levels - 1 = 6` levels); every width rule of the official constructor is
kept (official `ECGconditional.__init__`).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffusets_jax.models.layers import (
    ConvTranspose1d,
    MultiheadAttention,
    conv1d,
    group_norm,
    layer_norm,
    linear,
    mish,
)

Array = jax.Array

TIME_TABLE_SIZE = 1000
TIME_TABLE_DIM = 64


def conv(in_channels: int, out_channels: int, kernel_size: int, **kwargs) -> nnx.Conv:
    """The U-Net's convolutions: `conv1d` computed as im2col + one matmul (`Im2colConv1d`).

    Same parameters as `nnx.Conv`; XLA's CPU convolution is slow at the U-Net's widths (see there).
    """
    return conv1d(in_channels, out_channels, kernel_size, im2col=True, **kwargs)


def timestep_table(num_steps: int = TIME_TABLE_SIZE, dim: int = TIME_TABLE_DIM) -> np.ndarray:
    """The official frozen sinusoidal table `(num_steps, dim)` float32 (`TimeEmbedding.embeddings`).

    Row t is `[sin((t+1) f), cos((t+1) f)]` with `f_j = exp(-j * 10 / (dim/2 - 1))`: the constant is
    10, not ln(10000), and row t uses t + 1 (official `unet/unet_conditional.py::TimeEmbedding`).
    """
    half = dim // 2
    freqs = np.exp(-np.arange(half, dtype=np.float32) * (10.0 / (half - 1)))
    steps = np.arange(num_steps, dtype=np.float32)[:, None] + 1.0
    angles = steps * freqs[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


class TimeEmbedding(nnx.Module):
    """Per-block time MLP: `fc2(mish(fc1(table[t])))`, `(B,)` -> `(B, channels)`.

    The table is a constant here (in the official state dict it is a frozen parameter holding the
    same values; the converter checks them).
    """

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.fc1 = linear(TIME_TABLE_DIM, 128, rngs=rngs)
        self.fc2 = linear(128, channels, rngs=rngs)

    def __call__(self, t: Array) -> Array:
        table = jnp.asarray(timestep_table())
        return self.fc2(mish(self.fc1(table[t])))


class SelfAttention(nnx.Module):
    """`x + to_out(MHA(to_q(LN x), to_k(LN x), to_v(LN x)))` on `(B, L, C)`, attention width h.

    `to_q`, `to_k`, `to_v` each followed by its slice of the packed `in_proj`, and `out_proj`
    followed by `to_out`, are pairs of linear maps; `folded` composes them into one `(C, 3h)` and one
    `(h, C)` map. That saves 4 h^2 multiply-adds per position and costs 4 C h^2 for the weight
    products, so the call folds when B * L > C (fewer operations; shapes are static). Inside the
    sampling loop XLA hoists the products out of the loop. Measured on the paper U-Net (2-core CPU):
    folding by this rule made 50-step sampling at batch 8 12 % faster than never folding; folding
    always would make it 20 % faster still, but a batch-1 forward call 1.5-1.8x slower.
    """

    def __init__(self, channels: int, hidden: int, num_heads: int, *, rngs: nnx.Rngs):
        self.norm = layer_norm(channels, rngs=rngs)
        self.to_q = linear(channels, hidden, rngs=rngs)
        self.to_k = linear(channels, hidden, rngs=rngs)
        self.to_v = linear(channels, hidden, rngs=rngs)
        self.attention = MultiheadAttention(hidden, num_heads, rngs=rngs)
        self.to_out = linear(hidden, channels, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        b, length, channels = x.shape
        h = self.norm(x)
        if b * length <= channels:
            return x + self.to_out(self.attention(self.to_q(h), self.to_k(h), self.to_v(h)))
        (in_kernel, in_bias), (out_kernel, out_bias) = self.folded()
        q, k, v = jnp.split(h @ in_kernel + in_bias, 3, axis=-1)  # 3 x (B, L, h)
        return x + self.attention.attend(q, k, v) @ out_kernel + out_bias

    def folded(self) -> tuple[tuple[Array, Array], tuple[Array, Array]]:
        """Kernel `(C, 3h)` and bias of the q, k, v projections; kernel `(h, C)` and bias of the output."""
        ins = [
            compose(first.kernel[...], first.bias[...], *self.attention.in_projection(i))
            for i, first in enumerate((self.to_q, self.to_k, self.to_v))
        ]
        in_kernel = jnp.concatenate([kernel for kernel, _ in ins], axis=1)
        in_bias = jnp.concatenate([bias for _, bias in ins])
        out_proj = self.attention.out_proj
        return (in_kernel, in_bias), compose(
            out_proj.kernel[...], out_proj.bias[...], self.to_out.kernel[...], self.to_out.bias[...]
        )


def compose(kernel1: Array, bias1: Array, kernel2: Array, bias2: Array) -> tuple[Array, Array]:
    """The linear map `x -> (x W1 + b1) W2 + b2` as one kernel and bias: `(W1 W2, b1 W2 + b2)`."""
    return kernel1 @ kernel2, bias1 @ kernel2 + bias2


class CrossAttention(nnx.Module):
    """Attention from the signal `(B, L, C)` to the condition vector `(B, D + 3)`.

    The official code projects the condition with `value_combiner`, repeats it at all L positions,
    normalises it and uses it as keys and values. All keys being the same vector, the softmax is
    exactly uniform and the output is one vector per sample added at every position:
    `to_out(out_proj(W_v to_v(LN(value_combiner(c))) + b_v))`, whatever the query. With
    `closed_form=True` that vector is computed directly (same parameters, same result within
    float32 rounding, O(1) instead of O(L^2)); `closed_form=False` runs the official attention.
    """

    def __init__(
        self,
        channels: int,
        hidden: int,
        num_heads: int,
        condition_dim: int,
        *,
        closed_form: bool = True,
        rngs: nnx.Rngs,
    ):
        self.closed_form = closed_form
        self.normalization = layer_norm(channels, rngs=rngs)
        self.value_combiner = linear(condition_dim, channels, rngs=rngs)
        self.condition_normalization = layer_norm(channels, rngs=rngs)
        self.to_q = linear(channels, hidden, rngs=rngs)
        self.to_k = linear(channels, hidden, rngs=rngs)
        self.to_v = linear(channels, hidden, rngs=rngs)
        self.attention = MultiheadAttention(hidden, num_heads, rngs=rngs)
        self.to_out = linear(hidden, channels, rngs=rngs)

    def __call__(self, x: Array, condition: Array) -> Array:
        cv = self.condition_normalization(self.value_combiner(condition))  # (B, C)
        if self.closed_form:
            value = self.attention.project(self.to_v(cv), 2)  # (B, hidden)
            return x + self.to_out(self.attention.out_proj(value))[:, None, :]
        cv = jnp.broadcast_to(cv[:, None, :], x.shape)  # (B, L, C): the official `.repeat(1, L, 1)`
        q = self.to_q(self.normalization(x))
        return x + self.to_out(self.attention(q, self.to_k(cv), self.to_v(cv)))


class Block(nnx.Module):
    """Official `Block`: time embedding, conv stack, self- and cross-attention, residual conv.

    `(B, L, C_in)` -> `(B, L, C_out)`; the internal width is `(C_in + C_out) // 2` and the attention
    width `2 * C_in` (official `ECGconditional.__init__`). The official `Block.down` is never
    called and is not built here; the converter accepts and drops its weights.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        *,
        kernel_size: int,
        num_heads: int,
        condition_dim: int,
        closed_form: bool,
        rngs: nnx.Rngs,
    ):
        mid = (cin + cout) // 2
        hidden = 2 * cin
        self.time_emb = TimeEmbedding(cin, rngs=rngs)
        self.pre_shortcut_convs = conv(cin, mid, kernel_size, rngs=rngs)
        self.layer_norm1 = group_norm(mid, 1, rngs=rngs)
        self.shortcut_convs = conv(mid, mid, 1, rngs=rngs)
        self.self_attention = SelfAttention(mid, hidden, num_heads, rngs=rngs)
        self.cross_attention = CrossAttention(mid, hidden, num_heads, condition_dim, closed_form=closed_form, rngs=rngs)
        self.attention_norm = layer_norm(mid, rngs=rngs)
        self.post_shortcut_convs = conv(mid, cout, kernel_size, rngs=rngs)
        self.layer_norm2 = group_norm(cout, 1, rngs=rngs)
        self.res_conv = conv(cin, cout, 1, rngs=rngs) if cin != cout else None

    def __call__(self, x: Array, t: Array, condition: Array) -> Array:
        h = x + self.time_emb(t)[:, None, :]
        h = self.shortcut_convs(mish(self.layer_norm1(self.pre_shortcut_convs(h))))
        h = self.cross_attention(self.self_attention(h), condition)
        h = self.attention_norm(h)
        h = mish(self.layer_norm2(self.post_shortcut_convs(h)))
        # The residual uses x without the time embedding, as the official code does.
        return h + (x if self.res_conv is None else self.res_conv(x))


class DownsamplingBlock(nnx.Module):
    """`Block` then a stride-2 conv (k3, padding 1); returns (downsampled, skip)."""

    def __init__(self, cin: int, cout: int, **block_kwargs):
        rngs = block_kwargs["rngs"]
        self.block = Block(cin, cout, **block_kwargs)
        self.down = conv(cout, cout, 3, stride=2, padding=(1, 1), rngs=rngs)

    def __call__(self, x: Array, t: Array, condition: Array) -> tuple[Array, Array]:
        h = self.block(x, t, condition)
        return self.down(h), h


class UpsamplingBlock(nnx.Module):
    """`ConvTranspose1d(k4, s2, p1)` doubling L, optional concat with the skip, then `Block`."""

    def __init__(self, up_channels: int, cin: int, cout: int, **block_kwargs):
        rngs = block_kwargs["rngs"]
        self.up = ConvTranspose1d(up_channels, up_channels, 4, 2, 1, rngs=rngs)
        self.block = Block(cin, cout, **block_kwargs)

    def __call__(self, x: Array, skip: Array | None, t: Array, condition: Array) -> Array:
        x = self.up(x)
        if skip is not None:
            x = jnp.concatenate([x, skip], axis=-1)  # up-sampled first, skip second
        return self.block(x, t, condition)


class Bottleneck(nnx.Module):
    """Official `BottleneckNet` at the lowest resolution; kernel 3 whatever the config (official)."""

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int,
        hidden: int,
        num_heads: int,
        condition_dim: int,
        closed_form: bool,
        rngs: nnx.Rngs,
    ):
        self.time_emb = TimeEmbedding(channels, rngs=rngs)
        self.bottleneck_conv1 = conv(channels, channels, kernel_size, rngs=rngs)
        self.bottleneck_layer_norm1 = group_norm(channels, 1, rngs=rngs)
        self.bottleneck_conv1_2 = conv(channels, channels, kernel_size, rngs=rngs)
        self.self_attention = SelfAttention(channels, hidden, num_heads, rngs=rngs)
        self.cross_attention = CrossAttention(
            channels, hidden, num_heads, condition_dim, closed_form=closed_form, rngs=rngs
        )
        self.attention_norm = layer_norm(channels, rngs=rngs)
        self.bottleneck_conv2 = conv(channels, channels, kernel_size, rngs=rngs)
        self.bottleneck_layer_norm2 = group_norm(channels, 1, rngs=rngs)

    def __call__(self, x: Array, t: Array, condition: Array) -> Array:
        h = x + self.time_emb(t)[:, None, :]
        h = self.bottleneck_conv1_2(mish(self.bottleneck_layer_norm1(self.bottleneck_conv1(h))))
        h = self.attention_norm(self.cross_attention(self.self_attention(h), condition))
        h = mish(self.bottleneck_layer_norm2(self.bottleneck_conv2(h)))
        return x + h


class UNet(nnx.Module):
    """`ECGconditional`: epsilon prediction `(B, 128, C)` from `(x_t, t, condition)`.

    Args:
      channels: output width of each down block; the latent is halved in length by each, so
        `128 / 2**len(channels)` must be an integer >= 1 (official: 6 levels, 128 -> 2).
      latent_channels: channels of the latent (official `n_channels=4`).
      text_embed_dim: D, width of the text embedding (1536 for ada-002, 384 for MiniLM).
      kernel_size: kernel of the blocks' convolutions (official 7).
      num_heads: heads of the down/up attentions (official 8).
      bottleneck_hidden, bottleneck_heads, bottleneck_kernel_size: official 32, 4, 3.
      closed_form_cross_attention: see `CrossAttention`.
      patient_mean, patient_std: the (sex, age, heart rate) entries of the condition enter as
        `(value - mean) / std`. The official model uses the raw values (mean 0, std 1, the
        default); raw ages and rates swamp the unit-norm text embedding and, after the
        `condition_normalization` LayerNorm, leave only their ratio (docs/differences.md).
      output_activation: the official output head is `conv1x1(mish(conv3(h)))` on only
        `latent_channels` (4) channels. Its Mish is the one nonlinearity on the otherwise linear
        residual path from x_t to the output, and 4 Mish units cannot pass a signed signal: the
        near-identity map eps ~ x_t / sqrt(1 - abar_t) that is optimal at high t is hard to reach
        (docs/differences.md, "Output head"). False drops that Mish (same parameters, two
        linear convolutions); True is official.
      preconditioning: None (official) or `(c_in, c_skip, c_out)`, three length-T sequences of
        floats (`diffusion.eps_preconditioning`): the network then sees `c_in[t] x_t` and returns
        `c_skip[t] x_t + c_out[t] F`, so that the Wiener estimate of the noise is built in and F
        learns the rest at unit scale (EDM, Karras et al. 2022, sec. 5). Same parameters.
    """

    def __init__(
        self,
        channels: Sequence[int] = (8, 16, 32, 64, 128, 256),
        latent_channels: int = 4,
        text_embed_dim: int = 1536,
        kernel_size: int = 7,
        num_heads: int = 8,
        bottleneck_hidden: int = 32,
        bottleneck_heads: int = 4,
        bottleneck_kernel_size: int = 3,
        closed_form_cross_attention: bool = True,
        patient_mean: Sequence[float] = (0.0, 0.0, 0.0),
        patient_std: Sequence[float] = (1.0, 1.0, 1.0),
        output_activation: bool = True,
        preconditioning: Sequence[Sequence[float]] | None = None,
        *,
        rngs: nnx.Rngs,
    ):
        if len(patient_mean) != 3 or len(patient_std) != 3 or min(patient_std) <= 0:
            raise ValueError("patient_mean and patient_std need 3 values (sex, age, heart rate), std > 0")
        self.patient_mean = tuple(float(v) for v in patient_mean)
        self.patient_std = tuple(float(v) for v in patient_std)
        self.output_activation = bool(output_activation)
        # python floats, not arrays: static module data, not state (checkpoints are unchanged)
        self.preconditioning = (
            None if preconditioning is None else tuple(tuple(float(v) for v in table) for table in preconditioning)
        )
        widths = [latent_channels, *channels]  # d_0 .. d_n
        n = len(channels)
        condition_dim = text_embed_dim + 3  # text, then sex, age, heart rate
        self.text_embed_dim = text_embed_dim
        block = dict(
            kernel_size=kernel_size,
            num_heads=num_heads,
            condition_dim=condition_dim,
            closed_form=closed_form_cross_attention,
            rngs=rngs,
        )
        self.downsampling_blocks = nnx.List([DownsamplingBlock(widths[i], widths[i + 1], **block) for i in range(n)])
        self.bottelneck = Bottleneck(
            widths[n],
            kernel_size=bottleneck_kernel_size,
            hidden=bottleneck_hidden,
            num_heads=bottleneck_heads,
            condition_dim=condition_dim,
            closed_form=closed_form_cross_attention,
            rngs=rngs,
        )
        # up[0] has no skip (the deepest skip is dropped, as the official `del shortcuts[-1]`);
        # up[j] concatenates the skip of down[n - 1 - j], which has widths[n - j] channels.
        ups = [UpsamplingBlock(widths[n], widths[n], widths[n - 1], **block)]
        ups += [UpsamplingBlock(widths[n - j], 2 * widths[n - j], widths[n - j - 1], **block) for j in range(1, n)]
        self.upsampling_blocks = nnx.List(ups)
        self.output_conv = nnx.List(
            [
                conv(latent_channels, latent_channels, 3, rngs=rngs),
                conv(latent_channels, latent_channels, 1, rngs=rngs),
            ]
        )

    def __call__(self, x: Array, t: Array, condition: Array) -> Array:
        """Predicted noise `(B, 128, C)` for latents `x` `(B, 128, C)`, `t` `(B,)`, `condition` `(B, D + 3)`."""
        if condition.shape[-1] != self.text_embed_dim + 3:
            raise ValueError(
                f"condition has width {condition.shape[-1]}; this U-Net expects "
                f"{self.text_embed_dim} text dims + 3 (sex, age, heart rate)"
            )
        if self.patient_mean != (0.0, 0.0, 0.0) or self.patient_std != (1.0, 1.0, 1.0):
            patient = (condition[:, -3:] - jnp.asarray(self.patient_mean)) / jnp.asarray(self.patient_std)
            condition = jnp.concatenate([condition[:, :-3], patient], axis=-1)
        x_t = x
        if self.preconditioning is not None:
            c_in, c_skip, c_out = (jnp.asarray(table, x.dtype)[t][:, None, None] for table in self.preconditioning)
            x = c_in * x
        skips = []
        for down in self.downsampling_blocks:
            x, h = down(x, t, condition)
            skips.append(h)
        skips.pop()  # the deepest skip is not used (official `del shortcuts[-1]`)
        x = self.bottelneck(x, t, condition)
        for j, up in enumerate(self.upsampling_blocks):
            x = up(x, skips.pop() if j > 0 else None, t, condition)
        first, last = self.output_conv
        h = first(x)
        out = last(mish(h) if self.output_activation else h)
        return out if self.preconditioning is None else c_skip * x_t + c_out * out


def make_condition(text_embedding: Array, sex: Array, age: Array, heart_rate: Array) -> Array:
    """The official condition vector `(B, D + 3)`: text `(B, D)`, then sex, age (years), HR (bpm).

    Sex is 1.0 for male and 0.0 for female; values enter unnormalised, in this order (the official
    dict order `gender`, `age`, `heart rate` of `utils/train.py::train_epoch_channels`).
    """
    extras = [jnp.asarray(v, jnp.float32).reshape(-1, 1) for v in (sex, age, heart_rate)]
    return jnp.concatenate([jnp.asarray(text_embedding, jnp.float32), *extras], axis=-1)


def null_condition(
    condition: Array, patient_mean, drop_text: Array | bool = True, drop_patient: Array | bool = True
) -> Array:
    """The condition with its text and/or patient part replaced by the null condition `(B, D + 3)`.

    The null condition (classifier-free guidance; Ho & Salimans 2022) is zero after the U-Net's
    input normalisation: a zero text embedding (real ones have unit norm) and the patient values
    `patient_mean` (sex 0.5, between the two codes, in the standardised configurations; zeros in
    the official raw-value one). `drop_text` and `drop_patient` are bools or `(B,)` masks (True:
    replace); training drops at random (`unet_train.condition_dropout`), guidance uses both.
    """
    condition = jnp.asarray(condition, jnp.float32)
    drop_text = jnp.broadcast_to(jnp.asarray(drop_text), condition.shape[:1])[:, None]
    drop_patient = jnp.broadcast_to(jnp.asarray(drop_patient), condition.shape[:1])[:, None]
    text = jnp.where(drop_text, 0.0, condition[:, :-3])
    patient = jnp.where(drop_patient, jnp.asarray(patient_mean, jnp.float32), condition[:, -3:])
    return jnp.concatenate([text, patient], axis=-1)
