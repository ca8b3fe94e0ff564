"""The port against golden outputs of the official PyTorch models (tests/data/parity).

Weights are rebuilt from the recipe, converted with `diffusets_jax.convert`, and every output must
match to a relative error ||out - ref|| / ||ref|| below 1e-4 in float32.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffusets_jax import convert, diffusion
from diffusets_jax.models import VAE, UNet, make_condition
from official_weights import official_shapes, official_state_dicts, parity_arrays

TOLERANCE = 1e-4


def relative_error(out, ref) -> float:
    return float(np.linalg.norm(np.asarray(out) - ref) / np.linalg.norm(ref))


@pytest.fixture(scope="module")
def ref():
    return parity_arrays()


@pytest.fixture(scope="module")
def state_dicts():
    return official_state_dicts()


@pytest.fixture(scope="module")
def official_unet(state_dicts):
    unet = UNet(rngs=nnx.Rngs(0))  # the official sizes are the defaults
    convert.load_state_dict(unet, state_dicts["unet"], what="unet")
    return unet


@pytest.fixture(scope="module")
def official_vae(state_dicts):
    vae = VAE(rngs=nnx.Rngs(0))
    convert.load_state_dict(vae.encoder, state_dicts["vae_encoder"], what="vae encoder")
    convert.load_state_dict(vae.decoder, state_dicts["vae_decoder"], what="vae decoder")
    return vae


@nnx.jit
def unet_forward(unet, z, t, condition):
    return unet(z, t, condition)


@nnx.jit
def encode(vae, x, noise):
    return vae.encoder(x, noise)


@nnx.jit
def decode(vae, z):
    return vae.decoder(z)


def unet_condition(ref):
    return make_condition(ref["unet_in_text"], ref["unet_in_sex"], ref["unet_in_age"], ref["unet_in_hr"])


@pytest.mark.parametrize("closed_form", [True, False])
def test_unet_predicted_noise(official_unet, ref, closed_form):
    official_unet.set_attributes(closed_form=closed_form)
    z = jnp.asarray(ref["unet_in_z"]).transpose(0, 2, 1)  # official (B, 4, 128) -> (B, 128, 4)
    eps = unet_forward(official_unet, z, jnp.asarray(ref["unet_in_t"]), unet_condition(ref))
    official_unet.set_attributes(closed_form=True)
    assert relative_error(np.asarray(eps).transpose(0, 2, 1), ref["unet_out_eps"]) < TOLERANCE


def test_closed_form_cross_attention_equals_official_attention(official_unet, ref):
    z = jnp.asarray(ref["unet_in_z"]).transpose(0, 2, 1)
    t, cond = jnp.asarray(ref["unet_in_t"]), unet_condition(ref)
    block = official_unet.downsampling_blocks[2].block.cross_attention
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 32, block.to_q.in_features)), jnp.float32)
    block.closed_form = False
    full = block(x, cond)
    block.closed_form = True
    closed = block(x, cond)
    np.testing.assert_allclose(np.asarray(closed), np.asarray(full), rtol=1e-5, atol=1e-6)
    # And the whole network, both ways.
    official_unet.set_attributes(closed_form=False)
    full_eps = unet_forward(official_unet, z, t, cond)
    official_unet.set_attributes(closed_form=True)
    assert relative_error(unet_forward(official_unet, z, t, cond), np.asarray(full_eps)) < 1e-5


def test_vae_encoder(official_vae, ref):
    noise = jnp.asarray(ref["vae_in_noise"]).transpose(0, 2, 1)
    z, mean, log_variance = encode(official_vae, jnp.asarray(ref["vae_in_x"]), noise)
    assert relative_error(np.asarray(z).transpose(0, 2, 1), ref["vae_out_z"]) < TOLERANCE
    assert relative_error(np.asarray(mean).transpose(0, 2, 1), ref["vae_out_mean"]) < TOLERANCE
    assert relative_error(np.asarray(log_variance).transpose(0, 2, 1), ref["vae_out_logvar"]) < TOLERANCE


def test_vae_decoder(official_vae, ref):
    x = decode(official_vae, jnp.asarray(ref["dec_in_z"]).transpose(0, 2, 1))
    assert x.shape == (2, 1024, 12)
    assert relative_error(x, ref["dec_out_x"]) < TOLERANCE


def test_schedule_matches_diffusers(ref):
    schedule = diffusion.make_schedule()
    np.testing.assert_allclose(np.asarray(schedule.alphas_cumprod), ref["alphas_cumprod"], rtol=1e-5)


@pytest.mark.parametrize("num_steps", [1000, 50])
def test_ddpm_steps(ref, num_steps):
    np.testing.assert_array_equal(diffusion.inference_timesteps(1000, num_steps), ref[f"ddpm{num_steps}_timesteps"])
    schedule = diffusion.make_schedule()
    for i, t in enumerate(ref[f"ddpm{num_steps}_picks"]):
        prev = diffusion.ddpm_step(
            schedule,
            jnp.asarray(ref[f"ddpm{num_steps}_eps"][i]),
            jnp.asarray(t),
            jnp.asarray(ref[f"ddpm{num_steps}_x"][i]),
            jnp.asarray(ref[f"ddpm{num_steps}_noise"][i]),
            1000 // num_steps,
        )
        assert relative_error(prev, ref[f"ddpm{num_steps}_prev"][i]) < TOLERANCE, f"t={t}"


def test_state_dict_round_trip(official_unet, official_vae, state_dicts):
    parts = ((official_unet, "unet"), (official_vae.encoder, "vae_encoder"), (official_vae.decoder, "vae_decoder"))
    for module, part in parts:
        exported = convert.state_dict(module)
        shapes = official_shapes()[part]
        for key, value in exported.items():
            assert value.shape == shapes[key], key
            np.testing.assert_array_equal(value, state_dicts[part][key], err_msg=key)
        # Every official key is exported except the unused Block.down and the frozen time tables.
        left_out = set(shapes) - set(exported)
        assert all(k.endswith(("time_emb.embeddings",)) or ".block.down." in k for k in left_out), sorted(left_out)[:3]


def test_converter_names_bad_keys(state_dicts):
    unet = UNet(rngs=nnx.Rngs(0))
    missing = dict(state_dicts["unet"])
    del missing["output_conv.2.bias"]
    with pytest.raises(convert.ConversionError, match="output_conv.2.bias"):
        convert.load_state_dict(unet, missing, what="unet")
    unknown = {**state_dicts["unet"], "extra.weight": np.zeros(3, np.float32)}
    with pytest.raises(convert.ConversionError, match="extra.weight"):
        convert.load_state_dict(unet, unknown, what="unet")
    misshaped = {**state_dicts["unet"], "output_conv.0.weight": np.zeros((4, 4, 5), np.float32)}
    with pytest.raises(convert.ConversionError, match="output_conv.0.weight"):
        convert.load_state_dict(unet, misshaped, what="unet")
