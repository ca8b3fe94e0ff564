"""Stage 2: train the latent diffusion U-Net (official `utils/train.py`).

The trained VAE of the same workdir encodes the processed ECGs once; each step draws t ~ U{1..998},
noises the latents and regresses the noise with the sum-MSE (`diffusion.diffusion_loss`). AdamW
(weight decay 0.01) with cosine decay to `final_lr_fraction * lr` (torch `CosineAnnealingLR`),
optional EMA of the parameters (used for sampling). Checkpoints in `workdir/unet/`.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from data_pipelines.processed import load_processed
from diffusets_jax import diffusion
from diffusets_jax.config import config_from_json, config_to_json
from diffusets_jax.constants import LATENT_SCALE
from diffusets_jax.models import build_unet, make_condition
from diffusets_jax.pretrained import save_pretrained
from diffusets_jax.training import common
from diffusets_jax.training.vae import encode_moments, load_trained_vae


def schedule_from_config(config) -> diffusion.Schedule:
    d = config.diffusion
    return diffusion.make_schedule(
        d.beta_start, d.beta_end, d.num_train_timesteps, d.beta_schedule, d.clip_sample, d.clip_sample_range
    )


def unet_optimizer(train_config, num_steps: int) -> optax.GradientTransformation:
    schedule = optax.cosine_decay_schedule(
        train_config.learning_rate, decay_steps=num_steps, alpha=train_config.final_lr_fraction
    )
    return optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=train_config.weight_decay)


def make_train_step(graphdef, tx, schedule, config, root_key):
    tc, d = config.unet_train, config.diffusion

    @jax.jit
    def train_step(state: common.TrainState, batch):
        key = jax.random.fold_in(root_key, state.step)
        latent_key, loss_key = jax.random.split(key)
        if tc.sample_posterior:  # a fresh posterior sample of each ECG's latent, scaled as the encoder does
            noise = jax.random.normal(latent_key, batch["mean"].shape)
            x0 = (batch["mean"] + jnp.exp(0.5 * batch["log_variance"]) * noise) * LATENT_SCALE
        else:
            x0 = batch["latents"]

        def loss_fn(params):
            unet = nnx.merge(graphdef, params)
            model_fn = lambda x, t: unet(x, t, batch["condition"])  # noqa: E731
            return diffusion.diffusion_loss(model_fn, schedule, x0, loss_key, d.t_min, d.t_max)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema_params
        if ema is not None:
            ema = common.ema_update(ema, params, tc.ema_decay)
        metrics = {"loss": loss, "grad_norm": common.global_norm(grads)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema), metrics

    return train_step


def encode_training_set(config, workdir: Path, data_dirs) -> dict[str, np.ndarray]:
    """Condition vectors `(N, D + 3)` and VAE posteriors `(N, 128, 4)` of the training records."""
    dataset = load_processed(data_dirs, folds=config.data.train_folds)
    if dataset.text_embeddings.shape[1] != config.text.embed_dim:
        raise ValueError(
            f"the datasets hold {dataset.text_embeddings.shape[1]}-d text embeddings ({dataset.embedder}); "
            f"config text.embed_dim is {config.text.embed_dim}"
        )
    vae, vae_step = load_trained_vae(config, workdir)
    print(f"encoding {len(dataset)} ECGs with the VAE of step {vae_step}")
    mean, log_variance = encode_moments(vae, dataset.signals)
    condition = make_condition(dataset.text_embeddings, dataset.sex_codes, dataset.age, dataset.heart_rate)
    arrays = {"condition": np.asarray(condition), "mean": mean, "log_variance": log_variance}
    # Official: one sampled latent per record, computed once (vae/vae_encoding.py).
    noise = np.random.default_rng(config.seed).standard_normal(mean.shape).astype(np.float32)
    arrays["latents"] = (mean + np.exp(0.5 * log_variance) * noise) * LATENT_SCALE
    return arrays


def train_diffusion(config, workdir: str | Path, data_dirs, stop_after: int | None = None) -> Path:
    """Train (or resume) the U-Net of `config` on `data_dirs` encoded by `workdir`'s VAE.

    `stop_after` ends this run after that many steps (checkpointed); the next call resumes.
    """
    workdir = Path(workdir)
    (workdir / "config.json").write_text(config_to_json(config))
    tc = config.unet_train
    arrays = encode_training_set(config, workdir, data_dirs)
    n = len(arrays["condition"])
    num_steps, _ = common.resolve_num_steps(tc, n)
    mesh = common.make_mesh(config.mesh.data_axis)

    unet = build_unet(config)
    graphdef, params = nnx.split(unet, nnx.Param)
    tx = unet_optimizer(tc, num_steps)
    ema = jax.tree.map(jnp.copy, params) if tc.ema_decay > 0 else None
    state = common.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), ema_params=ema)
    state = common.replicate(state, mesh)
    manager = common.checkpoint_manager(workdir / "unet", tc.keep_checkpoints)
    state = common.restore_or_init(manager, state)
    train_step = make_train_step(graphdef, tx, schedule_from_config(config), config, jax.random.key(config.seed + 1))

    common.run_training(
        name="unet", workdir=workdir, state=state, train_step=train_step, arrays=arrays,
        train_config=tc, num_steps=num_steps, manager=manager, mesh=mesh, seed=config.seed,
        shuffle=config.data.shuffle, stop_after=stop_after,
    )
    return workdir / "unet"


def load_trained_unet(config, workdir: str | Path, use_ema: bool = True):
    """The U-Net of the latest checkpoint in `workdir/unet` (its EMA parameters if kept)."""
    unet = build_unet(config)
    graphdef, params = nnx.split(unet, nnx.Param)
    tx = unet_optimizer(config.unet_train, 1)
    ema = params if config.unet_train.ema_decay > 0 else None
    state = common.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), ema_params=ema)
    restored = common.restore_latest(Path(workdir) / "unet", state, "train-diffusion")
    chosen = restored.ema_params if (use_ema and restored.ema_params is not None) else restored.params
    return nnx.merge(graphdef, chosen), int(restored.step)


def export_workdir(workdir: str | Path, out: str | Path, model_card: str | None = None) -> Path:
    """Write the pretrained directory (config, VAE, U-Net -- EMA weights if kept) of a workdir."""
    workdir = Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: not a training workdir")
    config = config_from_json(config_path.read_text())
    vae, _ = load_trained_vae(config, workdir)
    unet, _ = load_trained_unet(config, workdir)
    return save_pretrained(out, config, vae, unet, model_card=model_card)
