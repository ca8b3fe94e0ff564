"""Latent diffusion: noise schedule, training loss, samplers (each one `jax.lax.scan`) and guidance.

Faithful to the official setup (official `utils/train.py` and
`utils/inference.py::generation_from_net`; the paper, arXiv:2501.05932, gives the linear beta
range [0.00085, 0.0120]): diffusers 0.27.2
`DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012)`, i.e. *linear*
betas, epsilon prediction, `fixed_small` variance, predicted x0 clipped to [-1, 1] and 'leading'
timestep spacing; training draws t uniformly from {1, ..., 998} and uses the sum-MSE over the
latent averaged over the batch.

Options beyond the official code (same trained network, fewer steps): DDIM (Song et al. 2021,
diffusers `DDIMScheduler`) and DPM-Solver++(2M) (Lu et al. 2022, diffusers
`DPMSolverMultistepScheduler`), both with 'trailing' timesteps (Lin et al. 2024) by default, and
classifier-free guidance (Ho & Salimans 2022) for a U-Net trained with condition dropout.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
#: `eps = model_fn(x_t (B, 128, C), t (B,) int32) -> (B, 128, C)`; the condition is closed over.
ModelFn = Callable[[Array, Array], Array]


class Schedule(NamedTuple):
    """The DDPM noise schedule, a pytree of float32 arrays of shape `(num_train_timesteps,)`."""

    betas: Array
    alphas_cumprod: Array
    clip_sample: bool = True
    clip_sample_range: float = 1.0

    @property
    def num_train_timesteps(self) -> int:
        return self.betas.shape[0]


def make_schedule(
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    num_train_timesteps: int = 1000,
    beta_schedule: str = "linear",
    clip_sample: bool = True,
    clip_sample_range: float = 1.0,
    snr_scale: float = 1.0,
) -> Schedule:
    """Betas and `alphas_cumprod` as diffusers computes them in float32.

    `beta_schedule`: 'linear' (the official one: `linspace(beta_start, beta_end, T)`) or
    'scaled_linear' (`linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2`, Stable Diffusion's).

    `snr_scale` (an option beyond the official code; 1 = official) multiplies the signal-to-noise
    ratio `alphas_cumprod / (1 - alphas_cumprod)` at every t, i.e. shifts log-SNR by
    `log(snr_scale)` (the shifted schedules of Hoogeboom et al. 2023, "simple diffusion", sec. 3.1;
    Chen 2023, "On the importance of noise scheduling"). Training on latents scaled by `k` under
    one schedule is the same process as training on unscaled latents under the schedule with
    `snr_scale = k**2`, up to the scale of x_t; so `snr_scale = 1 / std(latent)**2` gives the
    official schedule the signal-to-noise ratios it has for unit-variance data (the normalisation
    of Rombach et al. 2022, sec. 4.3.2 / appendix G), while x0, its clipping and the decoder stay
    in the official latent scale. New betas follow from `alphas_cumprod` as
    `1 - abar_t / abar_{t-1}`.

    Raises ValueError for an unknown schedule, betas outside (0, 1) or `snr_scale <= 0`.
    """
    betas, alphas_cumprod = schedule_arrays(beta_start, beta_end, num_train_timesteps, beta_schedule, snr_scale)
    return Schedule(jnp.asarray(betas), jnp.asarray(alphas_cumprod), clip_sample, clip_sample_range)


def schedule_arrays(
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    num_train_timesteps: int = 1000,
    beta_schedule: str = "linear",
    snr_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """`(betas, alphas_cumprod)` of `make_schedule` as float32 NumPy arrays (usable while tracing)."""
    if beta_schedule == "linear":
        betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float32)
    elif beta_schedule == "scaled_linear":
        betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float32) ** 2
    else:
        raise ValueError(f"beta_schedule must be 'linear' or 'scaled_linear', got {beta_schedule!r}")
    if not (0.0 < betas.min() and betas.max() < 1.0):
        raise ValueError(f"betas must lie in (0, 1); got [{betas.min()}, {betas.max()}]")
    alphas_cumprod = np.cumprod(1.0 - betas, dtype=np.float32)
    if not snr_scale > 0:
        raise ValueError(f"snr_scale must be > 0, got {snr_scale}")
    if snr_scale != 1.0:
        abar = alphas_cumprod.astype(np.float64)
        abar = snr_scale * abar / (1.0 + (snr_scale - 1.0) * abar)
        betas = 1.0 - abar / np.concatenate([[1.0], abar[:-1]])
        alphas_cumprod, betas = abar.astype(np.float32), betas.astype(np.float32)
    return betas, alphas_cumprod


def schedule_from_config(d) -> Schedule:
    """The schedule of a config's `diffusion` group (`configs/common.py`); `snr_scale` may be absent
    (model directories written before it existed) and then is 1."""
    return make_schedule(
        d.beta_start,
        d.beta_end,
        d.num_train_timesteps,
        d.beta_schedule,
        d.clip_sample,
        d.clip_sample_range,
        d.get("snr_scale", 1.0),
    )


def _expand(values: Array, like: Array) -> Array:
    return values.reshape(values.shape + (1,) * (like.ndim - values.ndim))


def add_noise(schedule: Schedule, x0: Array, noise: Array, t: Array) -> Array:
    """Forward process q(x_t | x_0): `sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`, `t` `(B,)` int."""
    abar = _expand(schedule.alphas_cumprod[t], x0)
    return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise


SAMPLERS = ("ddpm", "ddim", "dpm-solver++")
TIMESTEP_SPACINGS = ("leading", "trailing")


def inference_timesteps(num_train_timesteps: int, num_steps: int, spacing: str = "leading") -> np.ndarray:
    """Descending timesteps of a `num_steps` sampler, as diffusers' `timestep_spacing`.

    'leading' (the official DDPM's): `arange(num_steps) * (T // num_steps)`; 1000 steps give 999,
    ..., 0 and 50 steps 980, 960, ..., 0 (it never starts at T - 1, which costs little at 1000
    steps and much at 10). 'trailing': `round(arange(T, 0, -T / num_steps)) - 1`; 50 steps give
    999, 979, ..., 19, so the first step sees pure noise. Raises ValueError if `num_steps` is not
    in [1, T] or the spacing is unknown.
    """
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_train_timesteps}], got {num_steps}")
    if spacing == "leading":
        step_ratio = num_train_timesteps // num_steps
        return (np.arange(num_steps) * step_ratio)[::-1].astype(np.int32)
    if spacing == "trailing":
        return (np.round(np.arange(num_train_timesteps, 0, -num_train_timesteps / num_steps)) - 1).astype(np.int32)
    raise ValueError(f"timestep spacing must be one of {TIMESTEP_SPACINGS}, got {spacing!r}")


def step_noise(key: Array, index, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
    """Standard normal noise `shape` for sampler step `index` from one key, or from one key per row.

    `key` is a single key (the whole batch from `fold_in(key, index)`) or a `(B,)` key array: row b
    then comes from `fold_in(key[b], index)`, so a row's ECG does not depend on its batch-mates
    (batch generation from a CSV resumes with identical outputs).
    """
    if key.ndim == 0:
        return jax.random.normal(jax.random.fold_in(key, index), shape, dtype)
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, index), shape[1:], dtype))(key)


def predict_x0(schedule: Schedule, eps: Array, t: Array, x: Array) -> Array:
    """x0 from epsilon, `(x - sqrt(1 - abar_t) eps) / sqrt(abar_t)`, clipped as the schedule says."""
    abar_t = schedule.alphas_cumprod[t]
    x0 = (x - jnp.sqrt(1.0 - abar_t) * eps) / jnp.sqrt(abar_t)
    if schedule.clip_sample:
        x0 = jnp.clip(x0, -schedule.clip_sample_range, schedule.clip_sample_range)
    return x0


def ddpm_step(schedule: Schedule, eps: Array, t: Array, x: Array, noise: Array, step_ratio: int) -> Array:
    """One ancestral step x_t -> x_{t - step_ratio}, as `DDPMScheduler.step` (diffusers 0.27.2).

    `t` is a scalar int; `noise` `(B, 128, C)` is the variance noise (used only when t > 0).
    x0 is predicted from epsilon, clipped to `clip_sample_range` if `clip_sample`, and the
    posterior mean gets `fixed_small` variance `beta_t (1 - abar_prev) / (1 - abar_t)`.
    """
    prev_t = t - step_ratio
    abar_t = schedule.alphas_cumprod[t]
    abar_prev = jnp.where(prev_t >= 0, schedule.alphas_cumprod[jnp.maximum(prev_t, 0)], 1.0)
    beta_prod_t, beta_prod_prev = 1.0 - abar_t, 1.0 - abar_prev
    alpha_t = abar_t / abar_prev
    beta_t = 1.0 - alpha_t
    x0 = (x - jnp.sqrt(beta_prod_t) * eps) / jnp.sqrt(abar_t)
    if schedule.clip_sample:
        x0 = jnp.clip(x0, -schedule.clip_sample_range, schedule.clip_sample_range)
    mean = (jnp.sqrt(abar_prev) * beta_t / beta_prod_t) * x0 + (jnp.sqrt(alpha_t) * beta_prod_prev / beta_prod_t) * x
    variance = jnp.maximum(beta_t * beta_prod_prev / beta_prod_t, 1e-20)
    return mean + jnp.where(t > 0, jnp.sqrt(variance), 0.0) * noise


def sample_ddpm(model_fn: ModelFn, schedule: Schedule, x_T: Array, key: Array, num_steps: int = 1000) -> Array:
    """Ancestral DDPM sampling from `x_T` `(B, 128, C)` down to x_0, compiled as one `lax.scan`.

    `key` seeds the variance noise (`step_noise`: step i uses `fold_in(key, i)`, per row if `key`
    is a `(B,)` key array). `num_steps` in [1, T] with 'leading' spacing (the official code uses
    1000).
    """
    timesteps = inference_timesteps(schedule.num_train_timesteps, num_steps)
    step_ratio = schedule.num_train_timesteps // num_steps

    def body(x, inputs):
        index, t = inputs
        eps = model_fn(x, jnp.full((x.shape[0],), t, jnp.int32))
        noise = step_noise(key, index, x.shape, x.dtype)
        return ddpm_step(schedule, eps, t, x, noise, step_ratio), None

    steps = (jnp.arange(num_steps), jnp.asarray(timesteps))
    x0, _ = jax.lax.scan(body, x_T, steps)
    return x0


def sample_ddim(
    model_fn: ModelFn,
    schedule: Schedule,
    x_T: Array,
    key: Array,
    num_steps: int = 50,
    eta: float = 0.0,
    spacing: str = "trailing",
) -> Array:
    """DDIM sampling (Song et al. 2021, eq. 12) from `x_T` `(B, 128, C)`, as diffusers' `DDIMScheduler.step`.

    `x_{t'} = sqrt(abar_t') x0 + sqrt(1 - abar_t' - sigma^2) eps + sigma z`, with x0 predicted
    (and clipped) as in DDPM, the unclipped eps, `sigma = eta sqrt((1 - abar_t') / (1 - abar_t)
    (1 - abar_t / abar_t'))` and abar of the step after the last = 1. `eta = 0` is deterministic
    given x_T; `eta = 1` has DDPM's variance. `key` seeds z (used only when eta > 0).
    """
    if not eta >= 0.0:
        raise ValueError(f"eta must be >= 0, got {eta!r}")
    timesteps = inference_timesteps(schedule.num_train_timesteps, num_steps, spacing)
    abar = np.asarray(schedule.alphas_cumprod, np.float64)
    abar_t = abar[timesteps]
    abar_prev = np.append(abar[timesteps[1:]], 1.0)
    sigma = eta * np.sqrt((1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev))
    coefficients = np.stack([np.sqrt(abar_prev), np.sqrt(np.maximum(1.0 - abar_prev - sigma**2, 0.0)), sigma], 1)

    def body(x, inputs):
        index, t, (x0_coefficient, eps_coefficient, noise_coefficient) = inputs
        eps = model_fn(x, jnp.full((x.shape[0],), t, jnp.int32))
        x = x0_coefficient * predict_x0(schedule, eps, t, x) + eps_coefficient * eps
        if eta > 0:
            x = x + noise_coefficient * step_noise(key, index, x.shape, x.dtype)
        return x, None

    steps = (jnp.arange(num_steps), jnp.asarray(timesteps), jnp.asarray(coefficients, jnp.float32))
    x0, _ = jax.lax.scan(body, x_T, steps)
    return x0


def sample_dpm_solver(
    model_fn: ModelFn, schedule: Schedule, x_T: Array, num_steps: int = 20, spacing: str = "trailing"
) -> Array:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), as diffusers' `DPMSolverMultistepScheduler`
    (`algorithm_type='dpmsolver++'`, `solver_order=2`, midpoint, final step to sigma = 0).

    With `alpha_t = sqrt(abar_t)`, `sigma_t = sqrt(1 - abar_t)`, `lambda_t = log(alpha_t / sigma_t)`
    and `h = lambda_next - lambda_t`: `x_next = (sigma_next / sigma_t) x - alpha_next (exp(-h) - 1) D`,
    where `D = x0_t + (x0_t - x0_prev) / (2 r)`, `r = (lambda_t - lambda_prev) / h` (first order,
    `D = x0_t`, at the first step). x0 is predicted and clipped as in DDPM; the last step returns
    its x0 prediction (the step to sigma = 0). Deterministic given x_T.

    Clipping follows the schedule (diffusers' DPM-Solver does not clip by default). Measured on the
    shipped model at 50 steps (256 held-out conditions, benchmarks/README.md): without clipping FID
    fell from 10.3 to 7.9 but heart-rate MAE rose from 46.9 to 70.3 bpm and the CLIP score fell
    from -0.094 to -0.134, so the official clipping stays.
    """
    timesteps = inference_timesteps(schedule.num_train_timesteps, num_steps, spacing)
    abar = np.asarray(schedule.alphas_cumprod, np.float64)[timesteps]
    alpha, sigma = np.sqrt(abar), np.sqrt(1.0 - abar)
    lam = np.log(alpha) - np.log(sigma)
    # Step i goes from timesteps[i] to timesteps[i + 1]; the last one to the clean signal.
    x_coefficient, d_coefficient, half_inverse_r = np.zeros(num_steps), np.ones(num_steps), np.zeros(num_steps)
    for i in range(num_steps - 1):
        h = lam[i + 1] - lam[i]
        x_coefficient[i] = sigma[i + 1] / sigma[i]
        d_coefficient[i] = -alpha[i + 1] * np.expm1(-h)
        if i > 0:
            half_inverse_r[i] = 0.5 * h / (lam[i] - lam[i - 1])
    coefficients = np.stack([x_coefficient, d_coefficient, half_inverse_r], 1)

    def body(carry, inputs):
        x, previous_x0 = carry
        t, (x_coefficient, d_coefficient, half_inverse_r) = inputs
        x0 = predict_x0(schedule, model_fn(x, jnp.full((x.shape[0],), t, jnp.int32)), t, x)
        d = x0 + half_inverse_r * (x0 - previous_x0)
        return (x_coefficient * x + d_coefficient * d, x0), None

    (x0, _), _ = jax.lax.scan(
        body, (x_T, jnp.zeros_like(x_T)), (jnp.asarray(timesteps), jnp.asarray(coefficients, jnp.float32))
    )
    return x0


def sample(
    model_fn: ModelFn,
    schedule: Schedule,
    x_T: Array,
    key: Array,
    num_steps: int,
    sampler: str = "ddpm",
    eta: float = 0.0,
) -> Array:
    """Latents `(B, 128, C)` from `x_T` by `sampler` in SAMPLERS ('ddpm': the official ancestral
    sampler, 'leading' steps; 'ddim' with `eta`; 'dpm-solver++': 2M), `num_steps` model calls.

    Raises ValueError for an unknown sampler or a step count outside [1, T].
    """
    if sampler == "ddpm":
        return sample_ddpm(model_fn, schedule, x_T, key, num_steps)
    if sampler == "ddim":
        return sample_ddim(model_fn, schedule, x_T, key, num_steps, eta)
    if sampler == "dpm-solver++":
        return sample_dpm_solver(model_fn, schedule, x_T, num_steps)
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")


def guided(
    conditional_fn: Callable[[Array, Array, Array], Array],
    condition: Array,
    null_condition: Array,
    guidance_scale: float = 1.0,
) -> ModelFn:
    """Classifier-free guidance (Ho & Salimans 2022): `eps_null + s (eps_cond - eps_null)`.

    `conditional_fn(x, t, condition) -> eps`; `condition` and `null_condition` `(B, D + 3)`. The two
    predictions come from one call on the doubled batch. `guidance_scale` 1 is the plain conditional
    model (one call, bit-identical to unguided sampling); 0 is the unconditional model.
    """
    if guidance_scale == 1.0:
        return lambda x, t: conditional_fn(x, t, condition)

    def model_fn(x, t):
        eps = conditional_fn(
            jnp.concatenate([x, x]), jnp.concatenate([t, t]), jnp.concatenate([condition, null_condition])
        )
        eps_condition, eps_null = jnp.split(eps, 2)
        return eps_null + guidance_scale * (eps_condition - eps_null)

    return model_fn


class LossTerms(NamedTuple):
    """What one evaluation of the diffusion loss computed, for auxiliary losses built on it.

    All `(B, 128, C)` except `t` `(B,)` int32: the clean latents `x0`, the drawn `noise`, the noised
    `x_t`, the model's `eps_hat` and the clean latents it implies,
    `x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)` (`predict_x0`).
    """

    x0: Array
    t: Array
    noise: Array
    x_t: Array
    eps_hat: Array
    x0_hat: Array


def diffusion_loss_terms(
    model_fn: ModelFn, schedule: Schedule, x0: Array, key: Array, t_min: int = 1, t_max: int = 999
) -> tuple[Array, LossTerms]:
    """`diffusion_loss` and the `LossTerms` it computed (for auxiliary losses such as SE-Diff's physics losses)."""
    t_key, noise_key = jax.random.split(key)
    batch = x0.shape[0]
    t = jax.random.randint(t_key, (batch,), t_min, t_max)
    noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
    x_t = add_noise(schedule, x0, noise, t)
    eps = model_fn(x_t, t)
    x0_hat = predict_x0(schedule, eps, t[:, None, None], x_t)
    return jnp.sum((eps - noise) ** 2) / batch, LossTerms(x0, t, noise, x_t, eps, x0_hat)


def diffusion_loss(
    model_fn: ModelFn, schedule: Schedule, x0: Array, key: Array, t_min: int = 1, t_max: int = 999
) -> Array:
    """The official training objective: `sum((eps_hat - eps)**2) / B` with t ~ U{t_min, ..., t_max - 1}.

    `x0` `(B, 128, C)` are scaled VAE latents. Official `utils/train.py`: `torch.randint(1, 999)`,
    so t in [1, 998].
    """
    return diffusion_loss_terms(model_fn, schedule, x0, key, t_min, t_max)[0]


def eps_mse_by_timestep(model_fn: ModelFn, schedule: Schedule, x0: Array, key: Array, timesteps) -> Array:
    """Epsilon-prediction error per latent value at each of `timesteps`: `(len(timesteps),)`.

    Every row of `x0` `(B, 128, C)` is noised at every t with the same noise (drawn once from
    `key`), so successive calls on the same validation latents compare. The official loss is this
    times 128 C, averaged over t ~ U{1..998}. A converged model is near the optimum at high t,
    where x_t is almost pure noise and eps is nearly `x_t / sqrt(1 - abar_t)` (about 1e-4 at
    t = 900 for the official schedule): an error flat over t says it has not learned even that.
    """
    noise = jax.random.normal(key, x0.shape, x0.dtype)

    def one(t):
        ts = jnp.full((x0.shape[0],), t, jnp.int32)
        return jnp.mean((model_fn(add_noise(schedule, x0, noise, ts), ts) - noise) ** 2)

    return jax.lax.map(one, jnp.asarray(timesteps, jnp.int32))


def eps_preconditioning(alphas_cumprod, data_std: float):
    """`(c_in, c_skip, c_out)`, each `(T,)` float32: Karras et al. (2022, "EDM", sec. 5 and table 1)
    preconditioning rewritten for epsilon prediction in the variance-preserving process.

    With `x_t = a x0 + b eps` (`a = sqrt(abar_t)`, `b = sqrt(1 - abar_t)`) and x0 of per-value std
    `data_std`, the network F sees `c_in x_t` (unit variance) and predicts
    `eps_hat = c_skip x_t + c_out F`: `c_skip x_t = b x_t / (a^2 s^2 + b^2)` is E[eps | x_t] for
    Gaussian x0 (the Wiener estimate, right at high t where x_t is nearly all noise), and
    `c_out = sqrt(a^2 s^2 / (a^2 s^2 + b^2))` is the std of what it leaves, so that F's target has
    unit variance at every t. The official model has none of these: `eps_hat = F(x_t)`.
    """
    abar = np.asarray(alphas_cumprod, np.float64)
    total = abar * data_std**2 + (1.0 - abar)
    c_in = 1.0 / np.sqrt(total)
    c_skip = np.sqrt(1.0 - abar) / total
    c_out = np.sqrt(gaussian_eps_mse(abar, data_std**2))
    return tuple(np.asarray(c, np.float32) for c in (c_in, c_skip, c_out))


def gaussian_eps_mse(alphas_cumprod, data_variance: float) -> np.ndarray:
    """eps-MSE per value of the Gaussian (Wiener) predictor `E[eps | x_t]` for x0 of per-value
    variance v: `a v / (a v + 1 - a)`, `a = abar_t`, float64 of the shape of `alphas_cumprod`.
    It knows nothing of ECGs: a model that has learned to denoise is below it at every t."""
    a = np.asarray(alphas_cumprod, np.float64)
    return a * data_variance / (a * data_variance + 1.0 - a)
