"""The VAE's faster layers (issue 19) against the plain computations they replace."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffusets_jax.models.layers import (
    WINOGRAD_MIN_ROWS,
    GroupNorm,
    WinogradConv1d,
    conv1d,
    group_norm,
    winograd_conv3,
)


def relative_error(out, ref) -> float:
    return float(np.linalg.norm(np.asarray(out) - np.asarray(ref)) / np.linalg.norm(np.asarray(ref)))


@pytest.mark.parametrize("length", [128, 8, 6, 5, 1])  # multiples of 4 and ragged ends
def test_winograd_conv3_matches_the_direct_convolution(length):
    rng = np.random.default_rng(length)
    x = jnp.asarray(rng.standard_normal((2, length, 24)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 24, 16)) / np.sqrt(72), jnp.float32)
    bias = jnp.asarray(rng.standard_normal(16), jnp.float32)
    direct = jax.lax.conv_general_dilated(x, kernel, (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC")) + bias
    out = winograd_conv3(x, kernel, bias)
    assert out.shape == direct.shape
    assert relative_error(out, direct) < 5e-6


@pytest.mark.parametrize("batch, length", [(3, 17), (1, 1024), (2, 1100)])
def test_winograd_conv_module_keeps_nnx_conv_parameters_and_results(batch, length):
    plain = conv1d(8, 8, 3, rngs=nnx.Rngs(0))
    fast = conv1d(8, 8, 3, rngs=nnx.Rngs(0), winograd=True)
    assert isinstance(fast, WinogradConv1d)
    assert jax.tree.structure(nnx.state(plain)) == jax.tree.structure(nnx.state(fast))
    x = jnp.asarray(np.random.default_rng(1).standard_normal((batch, length, 8)), jnp.float32)
    assert relative_error(fast(x), plain(x)) < 5e-6
    # Few rows: one im2col matmul; from WINOGRAD_MIN_ROWS on, Winograd's six and its kernel transform G g.
    matmuls = str(jax.make_jaxpr(fast)(x)).count("dot_general")
    assert matmuls == (7 if batch * length >= WINOGRAD_MIN_ROWS else 1)
    with pytest.raises(ValueError, match="Winograd"):
        conv1d(8, 8, 3, stride=2, rngs=nnx.Rngs(0), winograd=True)


@pytest.mark.parametrize("channels, groups", [(64, 32), (16, 1), (12, 4)])
def test_group_norm_matches_flax_and_pytorch_statistics(channels, groups):
    rng = np.random.default_rng(channels)
    x = jnp.asarray(rng.standard_normal((3, 40, channels)) * 3.0 + 1.5, jnp.float32)
    norm = group_norm(channels, groups, rngs=nnx.Rngs(0))
    assert isinstance(norm, GroupNorm)
    norm.scale[...] = jnp.asarray(1 + 0.1 * rng.standard_normal(channels), jnp.float32)
    norm.bias[...] = jnp.asarray(0.1 * rng.standard_normal(channels), jnp.float32)
    flax_out = nnx.GroupNorm.__call__(norm, x)
    # PyTorch's definition: biased variance per sample and group, eps 1e-5.
    xg = np.asarray(x, np.float64).reshape(3, 40, groups, channels // groups)
    mean, var = xg.mean(axis=(1, 3), keepdims=True), xg.var(axis=(1, 3), keepdims=True)
    normalised = ((xg - mean) / np.sqrt(var + 1e-5)).reshape(3, 40, channels)
    ref = normalised * np.asarray(norm.scale[...]) + np.asarray(norm.bias[...])
    out = norm(x)
    assert relative_error(out, ref) < 1e-6
    assert relative_error(out, flax_out) < 1e-6
