"""DDPM schedule, noising, timesteps and the compiled sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusets_jax import diffusion


def test_linear_schedule_noise_levels():
    s = diffusion.make_schedule()
    abar = np.asarray(s.alphas_cumprod)
    # The official scheduler, diffusers 0.27.2 DDPMScheduler(1000, 0.00085, 0.012), gives
    # abar_0 = 0.99915, abar_998 = 0.001598, abar_999 = 0.001579.
    np.testing.assert_allclose([abar[0], abar[998], abar[999]], [0.99915, 0.001598, 0.001579], rtol=2e-3)
    assert np.all(np.diff(abar) < 0)


def test_unknown_schedule_and_bad_steps_are_refused():
    with pytest.raises(ValueError, match="beta_schedule"):
        diffusion.make_schedule(beta_schedule="cosine")
    for n in (0, 1001):
        with pytest.raises(ValueError, match="num_steps"):
            diffusion.inference_timesteps(1000, n)


def test_add_noise_interpolates_signal_and_noise():
    s = diffusion.make_schedule()
    x0, noise = jnp.ones((2, 128, 4)), jnp.zeros((2, 128, 4))
    xt = diffusion.add_noise(s, x0, noise, jnp.array([0, 999]))
    np.testing.assert_allclose(np.asarray(xt[:, 0, 0]), np.sqrt(np.asarray(s.alphas_cumprod)[[0, 999]]), rtol=1e-6)


def test_sampler_with_a_perfect_denoiser_recovers_the_data():
    # With eps_hat = the true noise of a fixed x0, the ancestral sampler must land on x0.
    s = diffusion.make_schedule()
    x0 = jnp.full((2, 128, 4), 0.3)

    def oracle(x, t):
        abar = s.alphas_cumprod[t][:, None, None]
        return (x - jnp.sqrt(abar) * x0) / jnp.sqrt(1 - abar)

    x_T = jax.random.normal(jax.random.key(0), x0.shape)
    out = jax.jit(lambda k: diffusion.sample_ddpm(oracle, s, x_T, k, num_steps=50))(jax.random.key(1))
    np.testing.assert_allclose(np.asarray(out), 0.3, atol=1e-3)


def test_sampler_is_deterministic_in_its_key():
    s = diffusion.make_schedule()
    model = lambda x, t: 0.1 * x  # noqa: E731
    x_T = jnp.ones((1, 128, 4))
    sample = jax.jit(lambda k: diffusion.sample_ddpm(model, s, x_T, k, num_steps=20))
    a, b, c = sample(jax.random.key(3)), sample(jax.random.key(3)), sample(jax.random.key(4))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(c))


def test_training_loss_is_sum_mse_over_batch():
    s = diffusion.make_schedule()
    x0 = jnp.zeros((3, 128, 4))
    loss = diffusion.diffusion_loss(lambda x, t: jnp.zeros_like(x), s, x0, jax.random.key(0))
    # eps_hat = 0: loss = sum(eps^2) / B ~ 512 (128 x 4 standard normals per ECG).
    assert 400 < float(loss) < 620


def test_snr_scale_multiplies_the_signal_to_noise_ratio_at_every_t():
    official, shifted = diffusion.make_schedule(), diffusion.make_schedule(snr_scale=31.6)
    a, b = (np.asarray(s.alphas_cumprod, np.float64) for s in (official, shifted))
    np.testing.assert_allclose((b / (1 - b)) / (a / (1 - a)), 31.6, rtol=1e-3)
    # the betas are those of the new alphas_cumprod, so every sampler stays consistent
    np.testing.assert_allclose(np.cumprod(1 - np.asarray(shifted.betas, np.float64)), b, rtol=1e-4)
    assert np.all(np.diff(b) < 0)
    np.testing.assert_array_equal(np.asarray(diffusion.make_schedule(snr_scale=1.0).betas), np.asarray(official.betas))
    with pytest.raises(ValueError, match="snr_scale"):
        diffusion.make_schedule(snr_scale=0.0)


def test_eps_mse_by_timestep_of_the_gaussian_optimum_matches_its_closed_form():
    # x0 ~ N(0, v): E[eps | x_t] = sqrt(1 - a) x_t / (a v + 1 - a), with error a v / (a v + 1 - a).
    s, v = diffusion.make_schedule(), 0.03
    x0 = jnp.sqrt(v) * jax.random.normal(jax.random.key(0), (256, 128, 4))

    def wiener(x, t):
        a = s.alphas_cumprod[t][:, None, None]
        return jnp.sqrt(1 - a) * x / (a * v + 1 - a)

    ts = (20, 100, 300, 900)
    errors = np.asarray(diffusion.eps_mse_by_timestep(wiener, s, x0, jax.random.key(1), ts))
    a = np.asarray(s.alphas_cumprod)[list(ts)]
    np.testing.assert_allclose(errors, a * v / (a * v + 1 - a), rtol=0.03)
    # a model that ignores its input scores 1 at every t
    zero = np.asarray(diffusion.eps_mse_by_timestep(lambda x, t: 0 * x, s, x0, jax.random.key(1), ts))
    np.testing.assert_allclose(zero, 1.0, rtol=0.01)
