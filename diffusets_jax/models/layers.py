"""Building blocks shared by the VAE and the U-Net, channels-last `(B, L, C)`.

Each layer computes exactly what its PyTorch counterpart in the official DiffuSETS code computes
(`torch.nn.Conv1d`, `GroupNorm`, `LayerNorm`, `MultiheadAttention`, `ConvTranspose1d`), with the
PyTorch defaults (eps 1e-5, two-pass variance, PyTorch initialisation), so that official weights
load by renaming and transposing alone (see `diffusets_jax.convert`).

Some compute it in another order than the obvious port, because XLA's CPU kernels for the
obvious one are slow at the models' sizes: the im2col convolution (U-Net), the Winograd
convolution (VAE), GroupNorm statistics reduced over L first, the tap-wise transposed
convolution, Mish with one exponential, and heads-first attention with a written-out backward.
`tests/test_models.py` checks each against the reference computation.
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
        data = jax.random.key_data(key)
        if isinstance(data, jax.core.Tracer):
            return _traced(draw, key, shape, dtype)
        return jnp.asarray(draw(np.random.default_rng(np.asarray(data).ravel()), shape), dtype)

    return init


def _traced(draw, key, shape, dtype):
    # Under tracing the same NumPy draw runs as a host callback, so jit and eager agree.
    return jax.pure_callback(
        lambda k: np.asarray(draw(np.random.default_rng(np.asarray(k).ravel()), shape), dtype),
        jax.ShapeDtypeStruct(shape, dtype),
        jax.random.key_data(key),
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
    """Mish activation, x * tanh(softplus(x)) (Misra 2019), as `torch.nn.Mish`, with one exponential.

    With e = exp(x), tanh(log(1 + e)) = n / (n + 2) for n = e (e + 2). For x >= 20 the ratio is 1 in
    float32, so x is clamped at 20 before the exponential (no overflow, gradient 1 as PyTorch's).
    One transcendental instead of three (exp, log1p, tanh): U-Net sampling ~4 % faster.
    """
    e = jnp.exp(jnp.minimum(x, 20.0))
    n = e * (e + 2.0)
    return x * n / (n + 2.0)


def conv1d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    rngs: nnx.Rngs,
    stride: int = 1,
    padding: str | tuple[int, int] = "SAME",
    im2col: bool = False,
    winograd: bool = False,
) -> nnx.Conv:
    """A 1-D convolution on `(B, L, C_in)` -> `(B, L', C_out)` with PyTorch's initialisation.

    `padding` is "SAME", "VALID" or an explicit `(left, right)` pair; kernel layout `(k, C_in, C_out)`.
    `im2col=True` builds an `Im2colConv1d` (same parameters, computed as one matmul);
    `winograd=True` a `WinogradConv1d` (k = 3, stride 1, "SAME" only; same parameters).
    """
    if winograd and (kernel_size, stride, padding) != (3, 1, "SAME"):
        raise ValueError(
            f"the Winograd convolution is for k=3, stride 1, SAME; got k={kernel_size}, "
            f"stride {stride}, padding {padding!r}"
        )
    pad = padding if isinstance(padding, str) else [padding]
    cls = Im2colConv1d if im2col else WinogradConv1d if winograd else nnx.Conv
    return cls(
        in_channels,
        out_channels,
        kernel_size=(kernel_size,),
        strides=(stride,),
        padding=pad,
        kernel_init=torch_kernel_init,
        bias_init=torch_bias_init(in_channels * kernel_size),
        rngs=rngs,
    )


class Im2colConv1d(nnx.Conv):
    """`nnx.Conv` in 1-D (no dilation, one group) computed as im2col and one matmul; same parameters.

    The k shifted (strided) slices of the padded input are concatenated to `(B, L', k * C_in)` and
    multiplied by the kernel reshaped to `(k * C_in, C_out)`. XLA's CPU convolution is slow at the
    U-Net's small widths (4 to 512 channels, k = 7): im2col took the paper U-Net's batch-32 forward
    from 88 to 46 ms and its batch-32 training step from 326 to 237 ms (2-core CPU). For the VAE's
    128- to 512-channel k = 3 convolutions it is slower (encode + decode 5.4 -> 7.0 s): the VAE
    uses `nnx.Conv` and `WinogradConv1d` (benchmarks/README.md).
    """

    def __call__(self, x: Array) -> Array:
        return im2col_conv1d(x, self.kernel[...], self.bias[...], stride=self.strides[0], padding=self.padding)


def im2col_conv1d(x: Array, kernel: Array, bias: Array, *, stride: int = 1, padding="SAME") -> Array:
    """The convolution of `x` `(B, L, C_in)` with `kernel` `(k, C_in, C_out)`, `bias` `(C_out,)` as
    im2col and one matmul: `(B, L', C_out)`. `padding` is a string or a sequence of one `(left,
    right)` pair (as `nnx.Conv`'s)."""
    k = kernel.shape[0]
    if isinstance(padding, str):
        pads = jax.lax.padtype_to_pads(x.shape[1:2], (k,), (stride,), padding)
    else:
        pads = padding
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    length = (x.shape[1] - k) // stride + 1
    span = stride * (length - 1) + 1
    columns = jnp.concatenate([x[:, i : i + span : stride] for i in range(k)], axis=-1)
    return columns @ kernel.reshape(-1, kernel.shape[-1]) + bias


# Winograd F(4, 3) (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks", with
# the interpolation points 0, 1, -1, 2, -2 and infinity): 4 outputs of a 3-tap correlation
# y[i] = sum_k d[i + k] g[k] from 6 inputs d as y = A^T [(G g) * (B^T d)].
_WINOGRAD_AT = np.array(
    [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64
)
_WINOGRAD_G = np.array(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    np.float64,
)
_WINOGRAD_BT = np.array(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    np.float64,
)


def winograd_conv3(x: Array, kernel: Array, bias: Array) -> Array:
    """The k = 3, stride 1, "SAME" convolution of `x` `(B, L, C_in)` with `kernel` `(3, C_in, C_out)`,
    `bias` `(C_out,)`, by Winograd F(4, 3): `(B, L, C_out)`.

    The padded input is cut into tiles of 6 positions overlapping by 2 (one tile per 4 outputs),
    each transformed by B^T (adds and small multiples), then 6 matmuls `(B * L/4, C_in) @ (C_in,
    C_out)` with the transformed kernel G g replace the 12 of the direct convolution (half the
    multiplications), and A^T turns their products back into 4 outputs. Each transformed input is
    its own operand of its own matmul, not a slice of one stacked `(6, B, T, C_in)` array, so XLA
    fuses the transform into the matmul's input instead of writing it out (~5 % faster on the VAE).
    Rounding differs from the direct sum at the 1e-6 relative level in float32 (the transforms'
    constants are at most 8). Faster than XLA's convolution for the VAE's 128- to 512-channel
    convolutions on a 2-core CPU (see `diffusets_jax.models.vae`).
    """
    b, length, _ = x.shape
    m, n = 4, 6
    tiles = -(-length // m)
    padded = jnp.pad(x, ((0, 0), (1, 1 + tiles * m - length), (0, 0)))
    taps = [padded[:, i : i + m * (tiles - 1) + 1 : m] for i in range(n)]  # each (B, T, C_in)
    combine = lambda matrix, terms: [  # noqa: E731
        sum(float(c) * term for c, term in zip(row, terms) if c != 0) for row in matrix
    ]
    u = jnp.einsum("jk,kio->jio", jnp.asarray(_WINOGRAD_G, kernel.dtype), kernel)  # (6, C_in, C_out)
    products = [v @ u[j] for j, v in enumerate(combine(_WINOGRAD_BT, taps))]  # 6 x (B, T, C_out)
    y = jnp.stack(combine(_WINOGRAD_AT, products), axis=2)  # (B, T, 4, C_out)
    return y.reshape(b, tiles * m, -1)[:, :length] + bias


#: `WinogradConv1d` on fewer output rows (batch x length) than this runs as im2col: Winograd's
#: matmuls have a quarter of the rows, too few for the matmul kernels to run efficiently.
#: Decoding one ECG with the paper VAE (rows 128 to 1024; 2-core CPU, alternated medians of 15):
#: Winograd 73 ms, im2col 36 ms; encode + decode at batch 2 158 -> 99 ms, at batch 4 205 -> 191 ms;
#: from batch 16 nothing changes.
WINOGRAD_MIN_ROWS = 2048


class WinogradConv1d(nnx.Conv):
    """`nnx.Conv` for k = 3, stride 1, "SAME" computed by `winograd_conv3`, or by `im2col_conv1d`
    below `WINOGRAD_MIN_ROWS` output rows (the choice is made per input shape, at trace time); same
    parameters."""

    def __call__(self, x: Array) -> Array:
        if math.prod(x.shape[:-1]) < WINOGRAD_MIN_ROWS:
            return im2col_conv1d(x, self.kernel[...], self.bias[...])
        return winograd_conv3(x, self.kernel[...], self.bias[...])


def linear(in_features: int, out_features: int, *, rngs: nnx.Rngs) -> nnx.Linear:
    """A dense layer `(..., in)` -> `(..., out)`, PyTorch initialisation, kernel `(in, out)`."""
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=torch_kernel_init,
        bias_init=torch_bias_init(in_features),
        rngs=rngs,
    )


class GroupNorm(nnx.GroupNorm):
    """`nnx.GroupNorm` whose statistics on `(B, L, C)` are reduced over L first; same parameters.

    Per channel, the mean over L `(B, C)`; per group, the mean of its channels' means (equal
    counts, so the group mean); the same two passes for the variance of `x - mean` (two-pass, as
    PyTorch); then one fused `x * a + c` with `a = scale / sqrt(var + eps)`, `c = bias - mean * a`.
    XLA's CPU reduction of flax's `(B, L, G, C/G)` view over (L, C/G) is slow: GroupNorm + SiLU on
    the VAE's `(32, 1024, 128)` took 15-22 ms that way, 6 ms this way. Other ranks use flax's.
    """

    def __call__(self, x: Array, *, mask=None) -> Array:
        if x.ndim != 3 or mask is not None or self.reduction_axes is not None:
            return super().__call__(x, mask=mask)
        b, _, c = x.shape
        g, size = self.num_groups, c // self.num_groups

        def group_mean(per_channel):  # (B, C) -> (B, 1, C), each channel its group's mean
            return jnp.repeat(per_channel.reshape(b, g, size).mean(-1), size, axis=-1)[:, None]

        mean = group_mean(jnp.mean(x, axis=1))
        centred = x - mean
        var = group_mean(jnp.mean(centred * centred, axis=1))
        a = jax.lax.rsqrt(var + self.epsilon) * self.scale[...]
        return x * a + (self.bias[...] - mean * a)


def group_norm(num_channels: int, num_groups: int, *, rngs: nnx.Rngs) -> nnx.GroupNorm:
    """`torch.nn.GroupNorm(num_groups, num_channels)` on `(B, L, C)`: statistics per sample and group."""
    return GroupNorm(
        num_channels,
        num_groups=num_groups,
        epsilon=1e-5,
        use_fast_variance=False,
        scale_init=ones_init,
        bias_init=zeros_init,
        rngs=rngs,
    )


def layer_norm(num_channels: int, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """`torch.nn.LayerNorm(C)` over the last axis, eps 1e-5."""
    return nnx.LayerNorm(
        num_channels,
        epsilon=1e-5,
        use_fast_variance=False,
        scale_init=ones_init,
        bias_init=zeros_init,
        rngs=rngs,
    )


class ConvTranspose1d(nnx.Module):
    """`torch.nn.ConvTranspose1d(C, C_out, k, stride, padding)` on `(B, L, C)` -> `(B, L_out, C_out)`.

    L_out = (L - 1) * stride - 2 * padding + k. The kernel is stored as `(k, C_in, C_out)`; the
    PyTorch weight `(C_in, C_out, k)` maps to it by `w.transpose(2, 0, 1)`.

    Computed tap by tap instead of as XLA's input-dilated convolution, which multiplies the inserted
    zeros: `z[t] = x W[t]` for every tap (one matmul batched over the taps, in the kernel's own
    layout, so the kernel is not copied), and input i, tap t lands at output
    `stride * i + t - padding`. With taps written t = r + stride * u (u < n = ceil(k / stride), the
    kernel zero-padded to n * stride taps), phase r of the output at block a sums `z[r + stride u]`
    of input `a - u`: n shifted adds, then the phases are interleaved. For the U-Net's (k 4,
    stride 2, padding 1): `y[2j] = x[j] W1 + x[j-1] W3`, `y[2j+1] = x[j] W2 + x[j+1] W0`.
    This made the paper U-Net's forward ~10 % faster at batch 8 and 32.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        padding: int,
        *,
        rngs: nnx.Rngs,
    ):
        self.stride, self.padding, self.kernel_size = stride, padding, kernel_size
        # PyTorch computes fan_in of a transposed conv weight (C_in, C_out, k) as C_out * k.
        init = torch_bias_init(out_channels * kernel_size)
        self.kernel = nnx.Param(init(rngs.params(), (kernel_size, in_channels, out_channels)))
        self.bias = nnx.Param(init(rngs.params(), (out_channels,)))

    def __call__(self, x: Array) -> Array:
        b, length, _ = x.shape
        k, s = self.kernel_size, self.stride
        n = -(-k // s)
        kernel = jnp.pad(self.kernel[...], ((0, n * s - k), (0, 0), (0, 0)))
        z = jnp.einsum("tblc,tcd->tbld", jnp.broadcast_to(x, (n * s, *x.shape)), kernel)
        z = z.reshape(n, s, b, length, -1)  # [u, r]: tap r + s u, (B, L, C_out)
        phases = sum(jnp.pad(z[u], ((0, 0), (0, 0), (u, n - 1 - u), (0, 0))) for u in range(n))
        full = phases.transpose(1, 2, 0, 3).reshape(b, (length + n - 1) * s, -1)  # position s a + r
        out_length = (length - 1) * s - 2 * self.padding + k
        return full[:, self.padding : self.padding + out_length] + self.bias[...]


@jax.custom_vjp
def attention(q: Array, k: Array, v: Array) -> Array:
    """`softmax(q k^T) v` per head: q `(B, H, Lq, d)` (already scaled by 1/sqrt(d)), k, v `(B, H, Lk, d)`.

    The heads-first layout makes both einsums plain batched matmuls over (B, H); XLA's CPU dots in
    the `(B, L, H, d)` layout are several times slower for the U-Net's narrow heads (d = 1 to 64):
    the paper U-Net's batch-32 forward took 78 ms that way, 46 ms this way. The backward is written
    out (see `_attention_backward`).
    """
    return _attention_forward(q, k, v)[0]


def _attention_forward(q: Array, k: Array, v: Array) -> tuple[Array, tuple]:
    p = jax.nn.softmax(jnp.einsum("bhqd,bhkd->bhqk", q, k), axis=-1)
    o = jnp.einsum("bhqk,bhkd->bhqd", p, v)
    return o, (q, k, v, p, o)


def _attention_backward(residuals: tuple, do: Array) -> tuple[Array, Array, Array]:
    """Gradients of `attention` from the saved softmax P and output O (FlashAttention's backward).

    The softmax backward `dS = P * (dP - rowsum(P * dP))` with `rowsum(P * dP) = rowsum(dO * O)`:
    a sum over d instead of over Lk, and one pass less over the `(B, H, Lq, Lk)` arrays than
    autodiff's. The paper U-Net's batch-32 training step took 273 ms with autodiff, 237 ms with this.
    """
    q, k, v, p, o = residuals
    dv = jnp.einsum("bhqk,bhqd->bhkd", p, do)
    dp = jnp.einsum("bhqd,bhkd->bhqk", do, v)
    ds = p * (dp - jnp.sum(do * o, axis=-1, keepdims=True))
    return jnp.einsum("bhqk,bhkd->bhqd", ds, k), jnp.einsum("bhqk,bhqd->bhkd", ds, q), dv


attention.defvjp(_attention_forward, _attention_backward)


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
        self.in_proj = nnx.Linear(hidden, 3 * hidden, kernel_init=xavier_uniform_init, bias_init=zeros_init, rngs=rngs)
        self.out_proj = nnx.Linear(hidden, hidden, kernel_init=torch_kernel_init, bias_init=zeros_init, rngs=rngs)

    def in_projection(self, which: int) -> tuple[Array, Array]:
        """Kernel `(h, h)` and bias `(h,)` of the q (0), k (1) or v (2) slice of the packed `in_proj`."""
        h = self.hidden
        columns = slice(which * h, (which + 1) * h)
        return self.in_proj.kernel[...][:, columns], self.in_proj.bias[...][columns]

    def project(self, x: Array, which: int) -> Array:
        """Apply the q (0), k (1) or v (2) slice of the packed input projection."""
        kernel, bias = self.in_projection(which)
        return x @ kernel + bias

    def attend(self, q: Array, k: Array, v: Array) -> Array:
        """Multi-head attention of projected q `(B, Lq, h)`, k, v `(B, Lk, h)`, before `out_proj`."""
        b, lq, h = q.shape
        d = h // self.num_heads

        def heads(x):  # (B, L, h) -> (B, H, L, d)
            return x.reshape(b, x.shape[1], self.num_heads, d).transpose(0, 2, 1, 3)

        out = attention(heads(q) * (1.0 / math.sqrt(d)), heads(k), heads(v))  # (B, H, Lq, d)
        return out.transpose(0, 2, 1, 3).reshape(b, lq, h)

    def __call__(self, query: Array, key: Array, value: Array) -> Array:
        q, k, v = (self.project(x, i) for i, x in enumerate((query, key, value)))
        return self.out_proj(self.attend(q, k, v))
