"""Latent DDPM: noise schedule, training loss and the ancestral sampler as one `jax.lax.scan`.

Faithful to the official setup (reference section 4): diffusers 0.27.2
`DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012)`, i.e. *linear*
betas, epsilon prediction, `fixed_small` variance, predicted x0 clipped to [-1, 1] and 'leading'
timestep spacing; training draws t uniformly from {1, ..., 998} and uses the sum-MSE over the
latent averaged over the batch.
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
) -> Schedule:
    """Betas and `alphas_cumprod` as diffusers computes them in float32.

    `beta_schedule`: 'linear' (the official one: `linspace(beta_start, beta_end, T)`) or
    'scaled_linear' (`linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2`, Stable Diffusion's).
    Raises ValueError for an unknown schedule or betas outside (0, 1).
    """
    if beta_schedule == "linear":
        betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float32)
    elif beta_schedule == "scaled_linear":
        betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float32) ** 2
    else:
        raise ValueError(f"beta_schedule must be 'linear' or 'scaled_linear', got {beta_schedule!r}")
    if not (0.0 < betas.min() and betas.max() < 1.0):
        raise ValueError(f"betas must lie in (0, 1); got [{betas.min()}, {betas.max()}]")
    alphas_cumprod = np.cumprod(1.0 - betas, dtype=np.float32)
    return Schedule(jnp.asarray(betas), jnp.asarray(alphas_cumprod), clip_sample, clip_sample_range)


def _expand(values: Array, like: Array) -> Array:
    return values.reshape(values.shape + (1,) * (like.ndim - values.ndim))


def add_noise(schedule: Schedule, x0: Array, noise: Array, t: Array) -> Array:
    """Forward process q(x_t | x_0): `sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`, `t` `(B,)` int."""
    abar = _expand(schedule.alphas_cumprod[t], x0)
    return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise


def inference_timesteps(num_train_timesteps: int, num_steps: int) -> np.ndarray:
    """The 'leading' spacing of diffusers: `arange(num_steps) * (T // num_steps)`, descending.

    1000 steps give 999, ..., 0; 50 steps give 980, 960, ..., 0. Raises ValueError if
    `num_steps` is not in [1, T].
    """
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_train_timesteps}], got {num_steps}")
    step_ratio = num_train_timesteps // num_steps
    return (np.arange(num_steps) * step_ratio)[::-1].astype(np.int32)


def ddpm_step(
    schedule: Schedule, eps: Array, t: Array, x: Array, noise: Array, step_ratio: int
) -> Array:
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
    mean = (jnp.sqrt(abar_prev) * beta_t / beta_prod_t) * x0 + (
        jnp.sqrt(alpha_t) * beta_prod_prev / beta_prod_t
    ) * x
    variance = jnp.maximum(beta_t * beta_prod_prev / beta_prod_t, 1e-20)
    return mean + jnp.where(t > 0, jnp.sqrt(variance), 0.0) * noise


def sample_ddpm(
    model_fn: ModelFn, schedule: Schedule, x_T: Array, key: Array, num_steps: int = 1000
) -> Array:
    """Ancestral DDPM sampling from `x_T` `(B, 128, C)` down to x_0, compiled as one `lax.scan`.

    `key` seeds the variance noise: step i uses `fold_in(key, i)`, so the same key gives the same
    latents whatever the batch layout of the computation. `num_steps` in [1, T] with 'leading'
    spacing (the official code uses 1000).
    """
    timesteps = inference_timesteps(schedule.num_train_timesteps, num_steps)
    step_ratio = schedule.num_train_timesteps // num_steps

    def body(x, inputs):
        index, t = inputs
        eps = model_fn(x, jnp.full((x.shape[0],), t, jnp.int32))
        noise = jax.random.normal(jax.random.fold_in(key, index), x.shape, x.dtype)
        return ddpm_step(schedule, eps, t, x, noise, step_ratio), None

    steps = (jnp.arange(num_steps), jnp.asarray(timesteps))
    x0, _ = jax.lax.scan(body, x_T, steps)
    return x0


def diffusion_loss(
    model_fn: ModelFn, schedule: Schedule, x0: Array, key: Array, t_min: int = 1, t_max: int = 999
) -> Array:
    """The official training objective: `sum((eps_hat - eps)**2) / B` with t ~ U{t_min, ..., t_max - 1}.

    `x0` `(B, 128, C)` are scaled VAE latents. Official: `torch.randint(1, 999)`, so t in [1, 998].
    """
    t_key, noise_key = jax.random.split(key)
    batch = x0.shape[0]
    t = jax.random.randint(t_key, (batch,), t_min, t_max)
    noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
    eps = model_fn(add_noise(schedule, x0, noise, t), t)
    return jnp.sum((eps - noise) ** 2) / batch
