"""Stage 1: train the VAE on processed ECGs (official `vae/vae_train.py`).

AdamW with torch's `OneCycleLR(max_lr)` (start max_lr / 25, 30 % warm-up, cosine anneal to
max_lr / 25e4), KL weight annealed by stages (0.1, 0.2, ..., 1.0 over the run), loss of
`models.vae.vae_loss`. Checkpoints in `workdir/vae/`; a restart resumes from the last one.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from diffusets_jax.checkpoints import VAE_DIR
from diffusets_jax.constants import LATENT_SCALE
from diffusets_jax.models import build_vae, vae_loss
from diffusets_jax.data_pipelines.input_pipeline import to_global
from diffusets_jax.training import common
from diffusets_jax.training.data import training_sources
from diffusets_jax.training.setup import TrainingRun


def vae_learning_rate(train_config, num_steps: int) -> optax.Schedule:
    return optax.cosine_onecycle_schedule(
        transition_steps=num_steps,
        peak_value=train_config.max_learning_rate,
        pct_start=0.3,
        div_factor=25.0,
        final_div_factor=1e4,
    )


def vae_optimizer(train_config, num_steps: int) -> optax.GradientTransformation:
    return common.adamw(vae_learning_rate(train_config, num_steps), train_config)


def kl_weight(step: jax.Array, num_steps: int, stages: int, kl_max: float) -> jax.Array:
    """Official annealing: stage k of `stages` equal parts of the run uses (k + 1) / stages * kl_max."""
    stage = jnp.minimum(step * stages // num_steps, stages - 1)
    return (stage + 1) / stages * kl_max


def _loss(graphdef, params, signals, key, weight, dtype):
    """`vae_loss` of one batch `(B, 1024, 12)`, computed in `dtype` (parameters stay float32)."""
    vae = nnx.merge(graphdef, common.cast_floating(params, dtype))
    noise = jax.random.normal(key, (signals.shape[0], signals.shape[1] // 8, vae.encoder.latent_channels))
    reconstruction, mean, log_variance = vae(signals.astype(dtype), noise.astype(dtype))
    as_f32 = lambda a: a.astype(jnp.float32)  # noqa: E731 - the loss itself is always float32
    return vae_loss(signals, as_f32(reconstruction), as_f32(mean), as_f32(log_variance), weight)


def make_train_step(graphdef, tx, num_steps: int, train_config, root_key, mesh):
    dtype = common.compute_dtype(train_config)

    def train_step(state: common.TrainState, batch):
        key = jax.random.fold_in(root_key, state.step)
        weight = kl_weight(state.step, num_steps, train_config.kl_anneal_stages, train_config.kl_weight_max)
        loss_fn = lambda p: _loss(graphdef, p, batch["signal"], key, weight, dtype)  # noqa: E731
        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, **parts, "kl_weight": weight, "grad_norm": common.global_norm(grads)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return common.compile_train_step(train_step, mesh)


def make_evaluate(graphdef, source, train_config, mesh, seed: int):
    """Validation loss (reconstruction + full-weight KL, fixed noise) over up to `eval_batches` batches."""
    batch_size = min(train_config.batch_size, source.num_examples // jax.device_count() * jax.device_count())
    if batch_size == 0:
        return None
    num_batches = min(train_config.eval_batches, source.num_examples // batch_size)
    batches = [
        to_global(b, mesh) for b, _ in zip(source.batches(batch_size, 0, seed=seed, shuffle=False), range(num_batches))
    ]
    dtype = common.compute_dtype(train_config)
    key = jax.random.key(seed)

    @jax.jit
    def batch_loss(params, batch):
        return _loss(graphdef, params, batch["signal"], key, train_config.kl_weight_max, dtype)[0]

    return lambda state: float(np.mean([batch_loss(state.params, b) for b in batches]))


def make_preview(graphdef, source, mesh):
    """A figure of validation (or training) ECGs next to their reconstructions (posterior mean)."""
    from diffusets_jax.plotting import plot_ecg_comparison

    real = next(source.batches(min(2, source.num_examples), 0, seed=0, shuffle=False))["signal"]

    @jax.jit
    def reconstruct(params, signals):
        vae = nnx.merge(graphdef, params)
        return vae.decoder(vae.encoder.moments(signals)[0] * LATENT_SCALE)

    def preview(state, step):
        generated = np.asarray(reconstruct(state.params, jnp.asarray(real)))
        return plot_ecg_comparison(real, generated, titles=[f"step {step}: real | reconstruction"] * len(real))

    return preview


def train_vae(config, workdir: str | Path, data_dirs, stop_after: int | None = None) -> Path:
    """Train (or resume) the VAE of `config` on `data_dirs`; returns the checkpoint directory.

    `stop_after` ends this run after that many steps (checkpointed), e.g. to time-box a session;
    the next call resumes where it stopped.

    Raises ValueError for an empty/too-small dataset or a batch that does not split over the
    devices, `NonFiniteLossError` on a NaN/inf loss or gradient.
    """
    run = TrainingRun.begin(config, workdir, VAE_DIR, "vae_train")
    tc = run.train_config
    train_source, val_source = training_sources(config, data_dirs)
    num_steps, mesh = run.plan(train_source.num_examples)

    vae = build_vae(config)
    graphdef, params = nnx.split(vae, nnx.Param)
    tx = vae_optimizer(tc, num_steps)
    state = run.resume(common.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params)))
    run.train(
        state,
        source=train_source,
        train_step=make_train_step(graphdef, tx, num_steps, tc, jax.random.key(config.seed), mesh),
        learning_rate=vae_learning_rate(tc, num_steps),
        evaluate=make_evaluate(graphdef, val_source, tc, mesh, config.seed) if val_source else None,
        preview=make_preview(graphdef, val_source or train_source, mesh),
        stop_after=stop_after,
    )
    return run.directory


def load_trained_vae(config, workdir: str | Path):
    """`(vae, step)`: the VAE of the newest restorable checkpoint in `workdir/vae`, parameters only
    (`checkpoints.export.load_trained`: a broken newer step is warned about and skipped).

    Raises MissingFileError (a FileNotFoundError) if there is none, CheckpointError naming the step
    and file if none restores.
    """
    from diffusets_jax.checkpoints.export import load_trained

    return load_trained(config, workdir, VAE_DIR)
