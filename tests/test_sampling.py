"""Samplers (DDPM, DDIM, DPM-Solver++), classifier-free guidance, exact limb leads, per-ECG keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusets_jax import diffusion
from diffusets_jax.evaluation.metrics import lead_identity_residuals
from diffusets_jax.leads import derive_limb_leads
from diffusets_jax.models import null_condition
from diffusets_jax.training.diffusion import drop_conditions

MU, SD = 0.3, 0.5  # data distribution of the closed-form tests: x0 ~ N(MU, SD^2) per value


def _linear_alphas_cumprod():
    """The official linear-beta schedule, written out here rather than taken from the code under test."""
    return np.cumprod(1.0 - np.linspace(0.00085, 0.012, 1000))


def _gaussian_eps(schedule):
    """The exact epsilon prediction E[eps | x_t] for x0 ~ N(MU, SD^2): a perfect model."""

    def eps(x, t):
        abar = schedule.alphas_cumprod[t][:, None, None]
        return jnp.sqrt(1 - abar) * (x - jnp.sqrt(abar) * MU) / (abar * SD**2 + 1 - abar)

    return eps


@pytest.fixture(scope="module")
def gaussian_samples():
    """Samples of each sampler under the exact model (no x0 clipping), from one x_T."""
    schedule = diffusion.make_schedule(clip_sample=False)
    x_T = jax.random.normal(jax.random.key(0), (256, 128, 4))
    model = _gaussian_eps(schedule)
    runs = {("ddpm", 1000), ("ddim", 50), ("dpm-solver++", 50), ("dpm-solver++", 20)}
    return {
        run: np.asarray(
            jax.jit(lambda k, run=run: diffusion.sample(model, schedule, x_T, k, run[1], run[0]))(jax.random.key(1))
        )
        for run in runs
    }


def _denoised_std(num_steps):
    """Std of E[x0 | x_t] at the last timestep of a trailing grid: what an exact ODE solve returns,
    since the final step outputs the x0 prediction there (diffusers' final sigma = 0)."""
    abar = _linear_alphas_cumprod()[1000 // num_steps - 1]  # trailing: 999, ..., 1000 / n - 1
    return SD * np.sqrt(abar * SD**2 / (abar * SD**2 + 1 - abar))


def test_trailing_timesteps_start_at_pure_noise():
    np.testing.assert_array_equal(diffusion.inference_timesteps(1000, 50, "trailing"), np.arange(999, 0, -20))
    np.testing.assert_array_equal(diffusion.inference_timesteps(1000, 10, "trailing"), np.arange(999, 0, -100))
    assert diffusion.inference_timesteps(1000, 50, "leading")[0] == 980  # the official spacing
    with pytest.raises(ValueError, match="spacing"):
        diffusion.inference_timesteps(1000, 50, "karras")


def test_ddpm_1000_steps_samples_the_gaussian(gaussian_samples):
    out = gaussian_samples[("ddpm", 1000)]
    # The x_T ~ N(0, I) start misses sqrt(abar_999) MU = 0.012 of mean: a few thousandths at x0.
    assert abs(out.mean() - MU) < 0.01
    assert abs(out.std() / SD - 1) < 0.02


@pytest.mark.parametrize(
    "sampler, num_steps, tolerance", [("dpm-solver++", 50, 0.01), ("dpm-solver++", 20, 0.025), ("ddim", 50, 0.05)]
)
def test_ode_samplers_match_the_closed_form(gaussian_samples, sampler, num_steps, tolerance):
    out = gaussian_samples[(sampler, num_steps)]
    assert abs(out.mean() - MU) < 0.01
    assert abs(out.std() / _denoised_std(num_steps) - 1) < tolerance


def test_dpm_solver_is_more_accurate_than_ddim_at_equal_steps(gaussian_samples):
    error = {s: abs(gaussian_samples[(s, 50)].std() / _denoised_std(50) - 1) for s in ("ddim", "dpm-solver++")}
    assert error["dpm-solver++"] < error["ddim"] / 2


@pytest.mark.parametrize("sampler", diffusion.SAMPLERS)
def test_every_sampler_lands_on_the_data_of_a_perfect_denoiser(sampler):
    schedule = diffusion.make_schedule()
    x0 = jnp.full((2, 128, 4), -0.4)

    def oracle(x, t):
        abar = schedule.alphas_cumprod[t][:, None, None]
        return (x - jnp.sqrt(abar) * x0) / jnp.sqrt(1 - abar)

    x_T = jax.random.normal(jax.random.key(0), x0.shape)
    out = jax.jit(lambda k: diffusion.sample(oracle, schedule, x_T, k, 10, sampler))(jax.random.key(1))
    np.testing.assert_allclose(np.asarray(out), -0.4, atol=1e-3)


def test_ddim_is_deterministic_only_without_eta():
    schedule = diffusion.make_schedule()
    model = lambda x, t: 0.1 * x  # noqa: E731
    x_T = jnp.ones((1, 128, 4))
    run = lambda key, eta: np.asarray(diffusion.sample(model, schedule, x_T, key, 20, "ddim", eta))  # noqa: E731
    np.testing.assert_array_equal(run(jax.random.key(0), 0.0), run(jax.random.key(1), 0.0))
    assert not np.allclose(run(jax.random.key(0), 1.0), run(jax.random.key(1), 1.0))
    with pytest.raises(ValueError, match="sampler"):
        diffusion.sample(model, schedule, x_T, jax.random.key(0), 20, "euler")


def test_per_row_keys_make_rows_independent_of_their_batch():
    schedule = diffusion.make_schedule()
    model = lambda x, t: 0.1 * x  # noqa: E731
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(5), i))(jnp.arange(3))
    x_T = jnp.ones((3, 128, 4))
    together = diffusion.sample_ddpm(model, schedule, x_T, keys, 20)
    alone = diffusion.sample_ddpm(model, schedule, x_T[1:2], keys[1:2], 20)
    np.testing.assert_allclose(np.asarray(together[1:2]), np.asarray(alone), rtol=1e-6)
    assert not np.allclose(np.asarray(together[0]), np.asarray(together[1]))


def test_guidance_extrapolates_from_the_null_to_the_conditional_prediction():
    condition = jnp.asarray([[1.0, 2.0], [3.0, 4.0]])
    null = jnp.zeros_like(condition)
    # A "model" whose prediction is its condition's first entry, broadcast.
    model = lambda x, t, c: jnp.broadcast_to(c[:, :1, None], x.shape)  # noqa: E731
    x, t = jnp.zeros((2, 128, 4)), jnp.zeros((2,), jnp.int32)
    np.testing.assert_array_equal(
        np.asarray(diffusion.guided(model, condition, null, 1.0)(x, t)), np.asarray(model(x, t, condition))
    )
    guided = np.asarray(diffusion.guided(model, condition, null, 3.0)(x, t))
    np.testing.assert_allclose(guided[:, 0, 0], [3.0, 9.0])  # 0 + 3 * (c - 0)
    np.testing.assert_allclose(np.asarray(diffusion.guided(model, condition, null, 0.0)(x, t)), 0.0)


def test_null_condition_zeroes_text_and_sets_patient_to_the_mean():
    condition = jnp.concatenate([jnp.ones((3, 4)), jnp.asarray([[1.0, 60.0, 80.0]] * 3)], axis=1)
    mean = (0.5, 55.0, 75.0)
    out = np.asarray(null_condition(condition, mean, jnp.array([True, False, True]), jnp.array([True, True, False])))
    np.testing.assert_array_equal(out[0], [0, 0, 0, 0, 0.5, 55, 75])
    np.testing.assert_array_equal(out[1], [1, 1, 1, 1, 0.5, 55, 75])
    np.testing.assert_array_equal(out[2], [0, 0, 0, 0, 1, 60, 80])


def test_condition_dropout_rates(tmp_path):
    from conftest import tiny_config

    config = tiny_config()
    condition = jnp.concatenate([jnp.ones((4000, 8)), jnp.tile(jnp.asarray([[1.0, 60.0, 80.0]]), (4000, 1))], axis=1)
    config.unet_train.condition_dropout, config.unet_train.text_dropout = 0.0, 0.0
    config.unet_train.patient_dropout = 0.0
    np.testing.assert_array_equal(np.asarray(drop_conditions(condition, jax.random.key(0), config)), condition)
    config.unet_train.condition_dropout, config.unet_train.text_dropout = 0.1, 0.2
    out = np.asarray(drop_conditions(condition, jax.random.key(0), config))
    text_dropped, patient_dropped = out[:, 0] == 0, out[:, -1] == config.unet.patient_mean[2]
    assert abs(patient_dropped.mean() - 0.1) < 0.02  # the whole condition only
    assert abs(text_dropped.mean() - (1 - 0.9 * 0.8)) < 0.025  # whole or text alone
    assert np.all(text_dropped[patient_dropped])


def test_derived_limb_leads_obey_the_identities_and_match_a_recorded_ecg(ptbxl_root):
    import wfdb

    record = wfdb.rdrecord(str(ptbxl_root / "records500" / "00000" / "00001_hr"))
    leads = [name.upper() for name in record.sig_name]
    signal = record.p_signal[
        :, [leads.index(n.upper()) for n in ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")]
    ]
    derived = derive_limb_leads(signal)
    assert np.abs(lead_identity_residuals(derived)).max() < 1e-12
    np.testing.assert_array_equal(derived[:, [0, 1, 6, 7, 8, 9, 10, 11]], signal[:, [0, 1, 6, 7, 8, 9, 10, 11]])
    # The recorded III, aVR, aVL, aVF are themselves (up to quantisation) these combinations.
    assert np.sqrt(np.mean((derived[:, 2:6] - signal[:, 2:6]) ** 2)) < 0.02  # mV
    assert np.allclose(np.asarray(derive_limb_leads(jnp.asarray(signal, jnp.float32))), derived, atol=1e-5)
    with pytest.raises(ValueError, match="12 leads"):
        derive_limb_leads(signal[:, :8])
