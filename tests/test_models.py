"""Model shapes and losses of the configurations (the official sizes are checked in test_parity)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffusets_jax.config import load_config
from diffusets_jax.models import build_unet, build_vae, make_condition, vae_loss


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
    # Reference section 8: encoder 12,218,448, decoder 17,333,664 (both include the unused
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
