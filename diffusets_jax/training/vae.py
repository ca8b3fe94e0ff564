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

from data_pipelines.processed import load_processed
from diffusets_jax.config import config_to_json
from diffusets_jax.models import build_vae, vae_loss
from diffusets_jax.training import common


def vae_optimizer(train_config, num_steps: int) -> optax.GradientTransformation:
    schedule = optax.cosine_onecycle_schedule(
        transition_steps=num_steps, peak_value=train_config.max_learning_rate,
        pct_start=0.3, div_factor=25.0, final_div_factor=1e4,
    )
    return optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=train_config.weight_decay)


def kl_weight(step: jax.Array, num_steps: int, stages: int, kl_max: float) -> jax.Array:
    """Official annealing: stage k of `stages` equal parts of the run uses (k + 1) / stages * kl_max."""
    stage = jnp.minimum(step * stages // num_steps, stages - 1)
    return (stage + 1) / stages * kl_max


def make_train_step(graphdef, tx, num_steps: int, train_config, root_key):
    @jax.jit
    def train_step(state: common.TrainState, batch):
        key = jax.random.fold_in(root_key, state.step)
        weight = kl_weight(state.step, num_steps, train_config.kl_anneal_stages, train_config.kl_weight_max)

        def loss_fn(params):
            vae = nnx.merge(graphdef, params)
            x = batch["signals"]
            noise = jax.random.normal(key, (x.shape[0], x.shape[1] // 8, vae.encoder.latent_channels))
            reconstruction, mean, log_variance = vae(x, noise)
            return vae_loss(x, reconstruction, mean, log_variance, weight)

        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, **parts, "kl_weight": weight, "grad_norm": common.global_norm(grads)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def train_vae(config, workdir: str | Path, data_dirs, stop_after: int | None = None) -> Path:
    """Train (or resume) the VAE of `config` on `data_dirs`; returns the checkpoint directory.

    `stop_after` ends this run after that many steps (checkpointed), e.g. to time-box a session;
    the next call resumes where it stopped.

    Raises ValueError for an empty/too-small dataset, `NonFiniteLossError` on a NaN/inf loss.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config_to_json(config))
    tc = config.vae_train
    dataset = load_processed(data_dirs, folds=config.data.train_folds)
    signals = dataset.signals
    num_steps, _ = common.resolve_num_steps(tc, len(signals))
    mesh = common.make_mesh(config.mesh.data_axis)

    vae = build_vae(config)
    graphdef, params = nnx.split(vae, nnx.Param)
    tx = vae_optimizer(tc, num_steps)
    state = common.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    state = common.replicate(state, mesh)
    manager = common.checkpoint_manager(workdir / "vae", tc.keep_checkpoints)
    state = common.restore_or_init(manager, state)
    train_step = make_train_step(graphdef, tx, num_steps, tc, jax.random.key(config.seed))

    common.run_training(
        name="vae", workdir=workdir, state=state, train_step=train_step, arrays={"signals": signals},
        train_config=tc, num_steps=num_steps, manager=manager, mesh=mesh, seed=config.seed,
        shuffle=config.data.shuffle, stop_after=stop_after,
    )
    return workdir / "vae"


def load_trained_vae(config, workdir: str | Path):
    """The VAE of the latest checkpoint in `workdir/vae` (FileNotFoundError if there is none)."""
    vae = build_vae(config)
    graphdef, params = nnx.split(vae, nnx.Param)
    tx = vae_optimizer(config.vae_train, 1)
    state = common.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    restored = common.restore_latest(Path(workdir) / "vae", state, "train-vae")
    return nnx.merge(graphdef, restored.params), int(restored.step)


def encode_moments(vae, signals: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and log-variance `(N, 128, 4)` of `signals` `(N, 1024, 12)`, in batches."""
    graphdef, params = nnx.split(vae)
    moments = jax.jit(lambda p, x: nnx.merge(graphdef, p).encoder.moments(x))
    means, logvars = [], []
    for i in range(0, len(signals), batch_size):
        m, lv = moments(params, jnp.asarray(signals[i : i + batch_size]))
        means.append(np.asarray(m))
        logvars.append(np.asarray(lv))
    return np.concatenate(means), np.concatenate(logvars)
