"""Model shapes and losses of the configurations (the official sizes are checked in test_parity)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffusets_jax.config import load_config
from diffusets_jax.models import build_unet, build_vae, make_condition, vae_loss
from diffusets_jax.models.layers import (
    ConvTranspose1d,
    Im2colConv1d,
    attention,
    conv1d,
    mish,
)
from diffusets_jax.models.unet import SelfAttention


def count(module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


@pytest.mark.parametrize("name", ["small", "paper"])
def test_model_shapes(name):
    config = load_config(name)
    vae = nnx.eval_shape(lambda: build_vae(config))
    unet = nnx.eval_shape(lambda: build_unet(config))
    x = jax.ShapeDtypeStruct((2, 1024, 12), jnp.float32)
    noise = jax.ShapeDtypeStruct((2, 128, 4), jnp.float32)
    z, mean, log_variance = nnx.eval_shape(lambda v, x, n: v.encoder(x, n), vae, x, noise)
    assert z.shape == mean.shape == log_variance.shape == (2, 128, 4)
    assert nnx.eval_shape(lambda v, z: v.decoder(z), vae, z).shape == (2, 1024, 12)
    cond = jax.ShapeDtypeStruct((2, config.text.embed_dim + 3), jnp.float32)
    t = jax.ShapeDtypeStruct((2,), jnp.int32)
    assert nnx.eval_shape(lambda u, z, t, c: u(z, t, c), unet, z, t, cond).shape == (2, 128, 4)


def test_paper_parameter_counts_match_the_official_models():
    config = load_config("paper")
    vae = nnx.eval_shape(lambda: build_vae(config))
    unet = nnx.eval_shape(lambda: build_unet(config))
    # Measured with the official vae/vae_model.py and unet/unet_conditional.py classes:
    # encoder 12,218,448, decoder 17,333,664 (both include the unused
    # attention GroupNorm); U-Net 13,345,792 trainable minus 328,356 in the unused Block.down.
    assert count(vae.encoder) == 12_218_448
    assert count(vae.decoder) == 17_333_664
    assert count(unet) == 13_345_792 - 328_356


def test_unet_rejects_a_condition_of_the_wrong_width():
    config = load_config("small")
    unet = build_unet(config)
    with pytest.raises(ValueError, match="384 text dims"):
        unet(jnp.zeros((1, 128, 4)), jnp.zeros((1,), jnp.int32), jnp.zeros((1, 1539)))


def test_condition_order_is_text_sex_age_heart_rate():
    cond = make_condition(np.ones((2, 3)), [1.0, 0.0], [63, 40], [110, 60])
    np.testing.assert_array_equal(np.asarray(cond[:, 3:]), [[1, 63, 110], [0, 40, 60]])


def test_vae_loss_is_the_official_sum_mse_plus_kl():
    rng = np.random.default_rng(0)
    x, rec = rng.normal(size=(2, 1024, 12)), rng.normal(size=(2, 1024, 12))
    mean, logvar = rng.normal(size=(2, 128, 4)), rng.normal(size=(2, 128, 4)) * 0.1
    loss, parts = vae_loss(jnp.asarray(x), jnp.asarray(rec), jnp.asarray(mean), jnp.asarray(logvar), 0.5)
    expected_rec = ((rec - x) ** 2).sum() / 2
    # KL(N(m, s^2) || N(0, 1)) = log(1/s) + (s^2 + m^2)/2 - 1/2, summed over channels, mean elsewhere.
    s = np.exp(0.5 * logvar)
    expected_kl = (np.log(1 / s) + (s**2 + mean**2) / 2 - 0.5).sum(-1).mean()
    np.testing.assert_allclose(float(parts["reconstruction"]), expected_rec, rtol=1e-5)
    np.testing.assert_allclose(float(parts["kl"]), expected_kl, rtol=1e-5)
    np.testing.assert_allclose(float(loss), expected_rec + 0.5 * expected_kl, rtol=1e-5)


# The U-Net's fast layers against the reference computations they replace (float32, tight tolerances).


def _normal(rng, shape, scale=1.0):
    return jnp.asarray(rng.standard_normal(shape) * scale, jnp.float32)


def _assert_close(out, reference, tolerance=1e-5):
    """Relative error ||out - reference|| / ||reference|| below `tolerance` (float32 rounding)."""
    out, reference = np.asarray(out), np.asarray(reference)
    assert out.shape == reference.shape
    assert np.linalg.norm(out - reference) / np.linalg.norm(reference) < tolerance


@pytest.mark.parametrize(
    "kernel_size, stride, padding, length",
    [
        (7, 1, "SAME", 128),
        (7, 1, "SAME", 5),
        (3, 1, "SAME", 16),
        (1, 1, "SAME", 8),
        (3, 2, (1, 1), 128),
        (3, 2, (1, 1), 7),
    ],
)
def test_im2col_conv_equals_nnx_conv(kernel_size, stride, padding, length):
    fast = conv1d(6, 5, kernel_size, stride=stride, padding=padding, im2col=True, rngs=nnx.Rngs(0))
    reference = conv1d(6, 5, kernel_size, stride=stride, padding=padding, rngs=nnx.Rngs(1))
    assert isinstance(fast, Im2colConv1d)
    shapes = [jax.tree.map(jnp.shape, nnx.state(layer, nnx.Param)) for layer in (fast, reference)]
    assert shapes[0] == shapes[1]
    nnx.update(reference, nnx.state(fast, nnx.Param))
    x = _normal(np.random.default_rng(0), (3, length, 6))
    expected = reference(x)
    assert fast(x).shape == expected.shape
    np.testing.assert_allclose(np.asarray(fast(x)), np.asarray(expected), rtol=1e-5, atol=1e-6)


def test_mish_equals_x_tanh_softplus_x():
    x = jnp.concatenate([jnp.linspace(-100.0, 100.0, 2001), jnp.asarray([-1e-4, 0.0, 1e-4, 19.9, 20.1, 1e4])])

    def reference(x):
        return x * jnp.tanh(jax.nn.softplus(x))

    np.testing.assert_allclose(np.asarray(mish(x)), np.asarray(reference(x)), rtol=2e-6, atol=1e-30)
    gradient, expected = jax.vmap(jax.grad(mish))(x), jax.vmap(jax.grad(reference))(x)
    np.testing.assert_allclose(np.asarray(gradient), np.asarray(expected), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kernel_size, stride, padding", [(4, 2, 1), (3, 2, 1), (5, 3, 2), (2, 2, 0), (3, 1, 1)])
def test_conv_transpose_equals_input_dilated_convolution(kernel_size, stride, padding):
    rng = np.random.default_rng(0)
    layer = ConvTranspose1d(6, 5, kernel_size, stride, padding, rngs=nnx.Rngs(0))
    x = _normal(rng, (2, 9, 6))
    # PyTorch's definition: dilate the input by the stride, pad k - 1 - padding, flipped kernel.
    edge = kernel_size - 1 - padding
    expected = (
        jax.lax.conv_general_dilated(
            x,
            layer.kernel[...][::-1],
            window_strides=(1,),
            padding=[(edge, edge)],
            lhs_dilation=(stride,),
            dimension_numbers=("NWC", "WIO", "NWC"),
        )
        + layer.bias[...]
    )
    out = layer(x)
    assert out.shape == (2, (9 - 1) * stride - 2 * padding + kernel_size, 5) == expected.shape
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), rtol=1e-5, atol=1e-6)


def _reference_attention(q, k, v):
    """Plain softmax(q k^T / sqrt(d)) v in the `(B, L, H, d)` layout."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)


@pytest.mark.parametrize("d", [1, 4, 16])
def test_attention_and_its_gradient_equal_the_plain_einsums(d):
    rng = np.random.default_rng(d)
    q, k, v = (_normal(rng, (2, length, 3, d), 2.0) for length in (10, 7, 7))
    out_grad = _normal(rng, (2, 10, 3, d))

    def heads_first(q, k, v):
        q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
        return attention(q / np.sqrt(d), k, v).transpose(0, 2, 1, 3)

    def loss(f):
        return lambda q, k, v: jnp.sum(f(q, k, v) * out_grad)

    _assert_close(heads_first(q, k, v), _reference_attention(q, k, v))
    grads = jax.grad(loss(heads_first), argnums=(0, 1, 2))(q, k, v)  # the custom VJP
    expected = jax.grad(loss(_reference_attention), argnums=(0, 1, 2))(q, k, v)  # autodiff
    for grad, reference in zip(grads, expected):
        _assert_close(grad, reference)


@pytest.mark.parametrize("batch, length", [(1, 4), (4, 32)])  # B * L <= C (unfolded), > C (folded)
def test_self_attention_equals_the_official_stack_of_projections(batch, length):
    rng = np.random.default_rng(0)
    layer = SelfAttention(24, 32, 4, rngs=nnx.Rngs(0))
    nnx.update(layer, jax.tree.map(lambda p: _normal(rng, p.shape, 0.3), nnx.state(layer, nnx.Param)))
    x = _normal(rng, (batch, length, 24))

    def dense(module, x):
        return x @ np.asarray(module.kernel[...]) + np.asarray(module.bias[...])

    h = layer.norm(x)
    mha = layer.attention
    w, b = np.asarray(mha.in_proj.kernel[...]), np.asarray(mha.in_proj.bias[...])
    q, k, v = (
        dense(p, h) @ w[:, 32 * i : 32 * (i + 1)] + b[32 * i : 32 * (i + 1)]
        for i, p in enumerate((layer.to_q, layer.to_k, layer.to_v))
    )
    heads = _reference_attention(*(y.reshape(batch, length, 4, 8) for y in (q, k, v)))
    expected = x + dense(layer.to_out, dense(mha.out_proj, heads.reshape(batch, length, 32)))
    _assert_close(layer(x), expected)


def _tiny_unet_config(**unet):
    config = load_config("small")
    config.unet.channels = (8, 16)
    for key, value in unet.items():
        config.unet[key] = value
    return config


def test_output_options_keep_the_parameter_tree_and_change_only_the_head():
    official = build_unet(_tiny_unet_config())
    linear = build_unet(_tiny_unet_config(output_activation=False))
    edm = build_unet(_tiny_unet_config(preconditioning="edm"))
    shapes = lambda m: jax.tree.map(lambda a: a.shape, nnx.state(m, nnx.Param))  # noqa: E731
    assert shapes(official) == shapes(linear) == shapes(edm)  # same checkpoints, same converter
    x = jax.random.normal(jax.random.key(0), (2, 128, 4))
    t, c = jnp.array([10, 900]), jnp.zeros((2, 387))
    a, b = official(x, t, c), linear(x, t, c)
    assert not np.allclose(a, b)
    first, last = linear.output_conv  # without the Mish, the head is affine: doubling its input's
    h = jax.random.normal(jax.random.key(1), (2, 128, 4))  # deviation from 0 doubles the output's
    np.testing.assert_allclose(
        last(first(2 * h)) - last(first(0 * h)), 2 * (last(first(h)) - last(first(0 * h))), rtol=1e-4, atol=1e-5
    )
    with pytest.raises(ValueError, match="preconditioning"):
        build_unet(_tiny_unet_config(preconditioning="karras"))


def test_edm_preconditioning_builds_in_the_wiener_estimate_of_the_noise():
    from diffusets_jax import diffusion

    config = _tiny_unet_config(preconditioning="edm", data_std=0.18)
    unet = build_unet(config)
    last = unet.output_conv[1]
    last.kernel[...] = jnp.zeros_like(last.kernel[...])  # F = 0: only the skip path is left
    last.bias[...] = jnp.zeros_like(last.bias[...])
    schedule = diffusion.schedule_from_config(config.diffusion)
    x0 = 0.18 * jax.random.normal(jax.random.key(0), (64, 128, 4))
    ts = (20, 300, 900)
    errors = np.asarray(
        diffusion.eps_mse_by_timestep(
            lambda x, t: unet(x, t, jnp.zeros((64, 387))), schedule, x0, jax.random.key(1), ts
        )
    )
    a = np.asarray(schedule.alphas_cumprod)[list(ts)]
    np.testing.assert_allclose(errors, a * 0.0324 / (a * 0.0324 + 1 - a), rtol=0.05)  # the Gaussian optimum
    c_in, c_skip, c_out = diffusion.eps_preconditioning(schedule.alphas_cumprod, 0.18)
    np.testing.assert_allclose(c_out[list(ts)] ** 2, a * 0.0324 / (a * 0.0324 + 1 - a), rtol=1e-5)
    abar = np.asarray(schedule.alphas_cumprod)
    np.testing.assert_allclose(c_in**-2, abar * 0.0324 + 1 - abar, rtol=1e-5)
