"""Building blocks shared by the VAE and the U-Net, channels-last `(B, L, C)`.

Each layer computes exactly what its PyTorch counterpart in the official DiffuSETS code computes
(`torch.nn.Conv1d`, `GroupNorm`, `LayerNorm`, `MultiheadAttention`, `ConvTranspose1d`), with the
PyTorch defaults (eps 1e-5, two-pass variance, PyTorch initialisation), so that official weights
load by renaming and transposing alone (see `diffusets_jax.convert`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array

def _initializer(draw):
    """An initializer `(key, shape, dtype)` that draws `draw(rng, shape)` with NumPy when the key is
    concrete, and with JAX under tracing (`nnx.eval_shape`, `jit`).

    Eager JAX random draws compile one XLA program per parameter shape, which made building a
    model take minutes on a 2-core CPU; the NumPy path builds it in well under a second.
    """

    def init(key, shape, dtype=jnp.float32):
        try:
            seed = np.asarray(jax.random.key_data(key)).ravel()
        except jax.errors.TracerArrayConversionError:
            return _traced(draw, key, shape, dtype)
        return jnp.asarray(draw(np.random.default_rng(seed), shape), dtype)

    return init


def _traced(draw, key, shape, dtype):
    # Under tracing the same NumPy draw runs as a host callback, so jit and eager agree.
    return jax.pure_callback(
        lambda k: np.asarray(draw(np.random.default_rng(np.asarray(k).ravel()), shape), dtype),
        jax.ShapeDtypeStruct(shape, dtype), jax.random.key_data(key),
    )


def _uniform(bound_of_shape):
    return _initializer(lambda rng, shape: rng.uniform(-1.0, 1.0, shape) * bound_of_shape(shape))


#: PyTorch's default Conv/Linear weight init, kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), +),
#: for kernels laid out `(..., in, out)` (fan_in = product of all but the last axis).
torch_kernel_init = _uniform(lambda shape: 1.0 / math.sqrt(math.prod(shape[:-1])))
#: PyTorch's MultiheadAttention in_proj init (xavier_uniform) for a kernel `(in, out)`.
xavier_uniform_init = _uniform(lambda shape: math.sqrt(6.0 / (shape[0] + shape[1])))
zeros_init = _initializer(lambda rng, shape: np.zeros(shape))
ones_init = _initializer(lambda rng, shape: np.ones(shape))


def torch_bias_init(fan_in: int):
    """PyTorch's default bias init for a layer of this fan-in: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return _uniform(lambda shape: 1.0 / math.sqrt(fan_in))


def mish(x: Array) -> Array:
    """Mish activation, x * tanh(softplus(x)) (Misra 2019), as `torch.nn.Mish`."""
    return x * jnp.tanh(jax.nn.softplus(x))


def conv1d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    rngs: nnx.Rngs,
    stride: int = 1,
    padding: str | tuple[int, int] = "SAME",
) -> nnx.Conv:
    """A 1-D convolution on `(B, L, C_in)` -> `(B, L', C_out)` with PyTorch's initialisation.

    `padding` is "SAME", "VALID" or an explicit `(left, right)` pair; kernel layout `(k, C_in, C_out)`.
    """
    pad = padding if isinstance(padding, str) else [padding]
    return nnx.Conv(
        in_channels,
        out_channels,
        kernel_size=(kernel_size,),
        strides=(stride,),
        padding=pad,
        kernel_init=torch_kernel_init,
        bias_init=torch_bias_init(in_channels * kernel_size),
        rngs=rngs,
    )


def linear(in_features: int, out_features: int, *, rngs: nnx.Rngs) -> nnx.Linear:
    """A dense layer `(..., in)` -> `(..., out)`, PyTorch initialisation, kernel `(in, out)`."""
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=torch_kernel_init,
        bias_init=torch_bias_init(in_features),
        rngs=rngs,
    )


def group_norm(num_channels: int, num_groups: int, *, rngs: nnx.Rngs) -> nnx.GroupNorm:
    """`torch.nn.GroupNorm(num_groups, num_channels)` on `(B, L, C)`: statistics per sample and group."""
    return nnx.GroupNorm(
        num_channels, num_groups=num_groups, epsilon=1e-5, use_fast_variance=False,
        scale_init=ones_init, bias_init=zeros_init, rngs=rngs,
    )


def layer_norm(num_channels: int, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """`torch.nn.LayerNorm(C)` over the last axis, eps 1e-5."""
    return nnx.LayerNorm(
        num_channels, epsilon=1e-5, use_fast_variance=False, scale_init=ones_init, bias_init=zeros_init,
        rngs=rngs,
    )


class ConvTranspose1d(nnx.Module):
    """`torch.nn.ConvTranspose1d(C, C_out, k, stride, padding)` on `(B, L, C)` -> `(B, L_out, C_out)`.

    L_out = (L - 1) * stride - 2 * padding + k. The kernel is stored as `(k, C_in, C_out)`; the
    PyTorch weight `(C_in, C_out, k)` maps to it by `w.transpose(2, 0, 1)`. Computed as the
    transposed correlation: dilate the input by `stride`, pad `k - 1 - padding` on each side and
    correlate with the kernel flipped along k (reference section 3, porting notes).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int,
        *, rngs: nnx.Rngs,
    ):
        self.stride, self.padding, self.kernel_size = stride, padding, kernel_size
        # PyTorch computes fan_in of a transposed conv weight (C_in, C_out, k) as C_out * k.
        init = torch_bias_init(out_channels * kernel_size)
        self.kernel = nnx.Param(init(rngs.params(), (kernel_size, in_channels, out_channels)))
        self.bias = nnx.Param(init(rngs.params(), (out_channels,)))

    def __call__(self, x: Array) -> Array:
        edge = self.kernel_size - 1 - self.padding
        y = jax.lax.conv_general_dilated(
            x,
            self.kernel[...][::-1],
            window_strides=(1,),
            padding=[(edge, edge)],
            lhs_dilation=(self.stride,),
            dimension_numbers=("NWC", "WIO", "NWC"),
        )
        return y + self.bias[...]


class MultiheadAttention(nnx.Module):
    """`torch.nn.MultiheadAttention(hidden, num_heads, batch_first=True)`, without dropout or masks.

    Parameters mirror PyTorch's: `in_proj` packs the q, k, v projections (rows `[0:h]`, `[h:2h]`,
    `[2h:3h]` of `in_proj_weight`), `out_proj` follows. Inputs `(B, Lq, h)`, `(B, Lk, h)`, `(B, Lk, h)`.
    """

    def __init__(self, hidden: int, num_heads: int, *, rngs: nnx.Rngs):
        if hidden % num_heads:
            raise ValueError(f"attention width {hidden} is not divisible by num_heads={num_heads}")
        self.hidden, self.num_heads = hidden, num_heads
        # PyTorch: xavier_uniform in_proj, zero biases.
        self.in_proj = nnx.Linear(
            hidden, 3 * hidden, kernel_init=xavier_uniform_init, bias_init=zeros_init, rngs=rngs
        )
        self.out_proj = nnx.Linear(hidden, hidden, kernel_init=torch_kernel_init, bias_init=zeros_init, rngs=rngs)

    def project(self, x: Array, which: int) -> Array:
        """Apply the q (0), k (1) or v (2) slice of the packed input projection."""
        h = self.hidden
        kernel = self.in_proj.kernel[...][:, which * h : (which + 1) * h]
        bias = self.in_proj.bias[...][which * h : (which + 1) * h]
        return x @ kernel + bias

    def __call__(self, query: Array, key: Array, value: Array) -> Array:
        b, lq, h = query.shape
        heads, d = self.num_heads, h // self.num_heads
        q = self.project(query, 0).reshape(b, lq, heads, d)  # (B, Lq, H, d)
        k = self.project(key, 1).reshape(b, key.shape[1], heads, d)
        v = self.project(value, 2).reshape(b, value.shape[1], heads, d)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
        weights = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, lq, h)  # (B, Lq, h)
        return self.out_proj(out)
