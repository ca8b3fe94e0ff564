"""Stage 2: train the latent diffusion U-Net (official `utils/train.py`).

The trained VAE of the same workdir encodes the processed ECGs once; each step draws t ~ U{1..998},
noises the latents and regresses the noise with the sum-MSE (`diffusion.diffusion_loss`). AdamW
(weight decay 0.01) with cosine decay to `final_lr_fraction * lr` (torch `CosineAnnealingLR`),
optional EMA of the parameters (used for sampling). Checkpoints in `workdir/unet/`.

Extensions add losses without this module knowing them: `train_diffusion(..., auxiliary=...)`
takes `AuxiliaryLosses`, each an `AuxLoss` of the `diffusion.LossTerms` of the step (x_t, t,
eps_hat, x0_hat, ...) and the batch, added to the loss and logged beside `diffusion_loss`. SE-Diff's
physics losses plug in this way (`diffusets_jax.sediff.physics.physics_auxiliary`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from diffusets_jax import diffusion
from diffusets_jax.checkpoints import UNET_DIR, VAE_DIR, write_config
from diffusets_jax.errors import ConfigError
from diffusets_jax.constants import LATENT_SCALE
from diffusets_jax.models import build_unet, make_condition, null_condition
from diffusets_jax.pretrained import load_pretrained
from diffusets_jax.data_pipelines.input_pipeline import to_global
from diffusets_jax.training import common
from diffusets_jax.training.data import latent_sources
from diffusets_jax.training.setup import TrainingRun
from diffusets_jax.training.vae import load_trained_vae, vae_optimizer


def unet_learning_rate(train_config, num_steps: int) -> optax.Schedule:
    return optax.cosine_decay_schedule(
        train_config.learning_rate, decay_steps=num_steps, alpha=train_config.final_lr_fraction
    )


def unet_optimizer(train_config, num_steps: int) -> optax.GradientTransformation:
    return common.adamw(unet_learning_rate(train_config, num_steps), train_config)


def batch_condition(batch) -> jax.Array:
    return make_condition(batch["text_embedding"], batch["sex"], batch["age"], batch["heart_rate"])


def drop_conditions(condition: jax.Array, key: jax.Array, config) -> jax.Array:
    """Condition dropout for classifier-free guidance: each row's whole condition is replaced by
    the null condition (`models.null_condition`) with probability `unet_train.condition_dropout`,
    and its text or patient part alone with `text_dropout` / `patient_dropout`. All 0: unchanged
    (official)."""
    tc = config.unet_train
    rates = (tc.condition_dropout, tc.text_dropout, tc.patient_dropout)  # older configs: checkpoints.MIGRATIONS
    if not any(rates):
        return condition
    drop_all, drop_text, drop_patient = (
        jax.random.bernoulli(k, rate, condition.shape[:1]) for k, rate in zip(jax.random.split(key, 3), rates)
    )
    return null_condition(condition, config.unet.patient_mean, drop_all | drop_text, drop_all | drop_patient)


def clean_latents(batch, key, sample_posterior: bool) -> jax.Array:
    """x_0 `(B, 128, 4)`: a fresh posterior sample (scaled as the encoder does), or the latent
    sampled once per record when the dataset was encoded (the official cache)."""
    if sample_posterior or "latents" not in batch:
        noise = jax.random.normal(key, batch["mean"].shape)
        return (batch["mean"] + jnp.exp(0.5 * batch["log_variance"]) * noise) * LATENT_SCALE
    return batch["latents"]


#: An auxiliary loss: `(terms, batch) -> (weighted loss, metrics)`, traced inside the jitted step.
AuxLoss = Callable[[diffusion.LossTerms, dict], tuple[jax.Array, dict]]


@dataclass(frozen=True)
class AuxiliaryLosses:
    """Losses an extension adds to the diffusion loss, and the batch field they need.

    `losses` are summed into the training loss; each one's metrics are logged next to
    `diffusion_loss`. With `class_names`, every training record carries `class_index` into them
    (`conditions.class_indices` of its report).
    """

    losses: Sequence[AuxLoss]
    class_names: Sequence[str] | None = None


def _loss(
    graphdef,
    params,
    x0,
    condition,
    key,
    schedule,
    d,
    dtype,
    aux_losses: Sequence[AuxLoss] = (),
    batch: dict | None = None,
):
    """`(loss, metrics)` of one batch, the U-Net computing in `dtype`: the sum-MSE/B diffusion loss
    (`diffusion.diffusion_loss`) plus each of `aux_losses` (metrics: {} without them)."""
    unet = nnx.merge(graphdef, common.cast_floating(params, dtype))
    model_fn = lambda x, t: unet(x.astype(dtype), t, condition.astype(dtype)).astype(jnp.float32)  # noqa: E731
    loss, terms = diffusion.diffusion_loss_terms(model_fn, schedule, x0, key, d.t_min, d.t_max)
    if not aux_losses:
        return loss, {}
    total, metrics = loss, {"diffusion_loss": loss}
    for aux in aux_losses:
        value, parts = aux(terms, batch)
        total = total + value
        metrics.update(parts)
    return total, metrics


def make_train_step(graphdef, tx, schedule, config, root_key, mesh, aux_losses: Sequence[AuxLoss] = ()):
    """The jitted U-Net step; `aux_losses` are added to the diffusion loss (see `AuxiliaryLosses`)."""
    tc, d = config.unet_train, config.diffusion
    dtype = common.compute_dtype(tc)

    def train_step(state: common.TrainState, batch):
        latent_key, loss_key, dropout_key = jax.random.split(jax.random.fold_in(root_key, state.step), 3)
        x0 = clean_latents(batch, latent_key, tc.sample_posterior)
        condition = drop_conditions(batch_condition(batch), dropout_key, config)
        loss_fn = lambda p: _loss(  # noqa: E731
            graphdef,
            p,
            x0,
            condition,
            loss_key,
            schedule,
            d,
            dtype,
            aux_losses,
            batch,
        )
        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema_params
        if ema is not None:
            ema = common.ema_update(ema, params, tc.ema_decay)
        metrics = {"loss": loss, **parts, "grad_norm": common.global_norm(grads)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema), metrics

    return common.compile_train_step(train_step, mesh)


#: Timesteps of the per-t validation error logged at every checkpoint (`val_eps_mse_t<t>`).
EVAL_TIMESTEPS = (20, 100, 300, 600, 900)


def make_evaluate(graphdef, source, config, schedule, mesh):
    """Validation metrics of the sampling weights (EMA if kept) over up to `eval_batches` batches,
    with fixed timesteps and noise so that successive evaluations compare: `val_loss` (the
    training objective) and `val_eps_mse_t<t>`, the eps-MSE per latent value at each of
    `EVAL_TIMESTEPS` (`diffusion.eps_mse_by_timestep`): a converged model is near its optimum at
    high t, an unconverged one is flat over t."""
    tc = config.unet_train
    batch_size = min(tc.batch_size, source.num_examples // jax.device_count() * jax.device_count())
    if batch_size == 0:
        return None
    num_batches = min(tc.eval_batches, source.num_examples // batch_size)
    batches = [
        to_global(b, mesh) for b, _ in zip(source.batches(batch_size, 0, seed=0, shuffle=False), range(num_batches))
    ]
    dtype, key = common.compute_dtype(tc), jax.random.key(config.seed + 2)

    @jax.jit
    def batch_metrics(params, batch):
        latent_key, loss_key = jax.random.split(key)
        x0, condition = clean_latents(batch, latent_key, False), batch_condition(batch)
        loss = _loss(graphdef, params, x0, condition, loss_key, schedule, config.diffusion, dtype)[0]
        unet = nnx.merge(graphdef, common.cast_floating(params, dtype))
        model_fn = lambda x, t: unet(x.astype(dtype), t, condition.astype(dtype)).astype(jnp.float32)  # noqa: E731
        return loss, diffusion.eps_mse_by_timestep(model_fn, schedule, x0, loss_key, EVAL_TIMESTEPS)

    def evaluate(state):
        params = state.ema_params if state.ema_params is not None else state.params
        losses, per_t = zip(*[batch_metrics(params, b) for b in batches])
        per_t = np.mean(np.stack([np.asarray(e) for e in per_t]), axis=0)
        return {
            "val_loss": float(np.mean(losses)),
            **{f"val_eps_mse_t{t}": float(e) for t, e in zip(EVAL_TIMESTEPS, per_t)},
        }

    return evaluate


def make_preview(graphdef, vae, source, config, schedule):
    """Two ECGs sampled (`preview_steps` DDPM steps, EMA weights) for the conditions of two
    validation records, next to those records."""
    from diffusets_jax.plotting import plot_ecg_comparison

    batch = next(source.batches(min(2, source.num_examples), 0, seed=0, shuffle=False))
    condition = batch_condition(batch)
    steps = config.unet_train.preview_steps

    @jax.jit
    def sample(params, key):
        unet = nnx.merge(graphdef, params)
        x_T = jax.random.normal(key, batch["mean"].shape)
        latents = diffusion.sample_ddpm(lambda x, t: unet(x, t, condition), schedule, x_T, key, steps)
        return vae.decoder(latents), vae.decoder(batch["mean"] * LATENT_SCALE)

    def preview(state, step):
        params = state.ema_params if state.ema_params is not None else state.params
        generated, real = (np.asarray(a) for a in sample(params, jax.random.key(0)))
        titles = [
            f"step {step}, {steps} steps: age {a:.0f}, HR {h:.0f} bpm | VAE of the real ECG"
            for a, h in zip(batch["age"], batch["heart_rate"])
        ]
        return plot_ecg_comparison(real, generated, titles=titles)

    return preview


def train_diffusion(
    config,
    workdir: str | Path,
    data_dirs,
    stop_after: int | None = None,
    auxiliary: Callable[[int], AuxiliaryLosses] | None = None,
) -> Path:
    """Train (or resume) the U-Net of `config` on `data_dirs` encoded by `workdir`'s VAE.

    `stop_after` ends this run after that many steps (checkpointed); the next call resumes.
    `auxiliary(vae_step)` builds extra losses once the VAE is loaded (SE-Diff:
    `sediff.physics.physics_auxiliary(config, workdir)`). Raises FileNotFoundError if the workdir
    has no trained VAE, ConfigError if `config.sediff` asks for physics losses but no `auxiliary`
    is given, ValueError for too small a dataset or a batch that does not split over the devices.
    """
    run = TrainingRun.begin(config, workdir, UNET_DIR, "unet_train")
    workdir, tc = run.workdir, run.train_config
    sediff = config.get("sediff") or {}
    if auxiliary is None and any(float(sediff.get(w, 0.0)) > 0 for w in ("euler_weight", "interlead_weight")):
        raise ConfigError(
            "config.sediff sets physics-loss weights: pass auxiliary="
            "diffusets_jax.sediff.physics.physics_auxiliary(config, workdir) (the CLI does)"
        )
    vae, vae_step = load_trained_vae(config, workdir)
    extra = auxiliary(vae_step) if auxiliary is not None else AuxiliaryLosses(())
    train_source, val_source = latent_sources(config, workdir, vae, vae_step, data_dirs, class_names=extra.class_names)
    num_steps, mesh = run.plan(train_source.num_examples)

    unet = build_unet(config)
    graphdef, params = nnx.split(unet, nnx.Param)
    tx = unet_optimizer(tc, num_steps)
    ema = jax.tree.map(jnp.copy, params) if tc.ema_decay > 0 else None
    state = run.resume(
        common.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), ema_params=ema)
    )
    schedule = diffusion.schedule_from_config(config.diffusion)
    run.train(
        state,
        source=train_source,
        train_step=make_train_step(
            graphdef, tx, schedule, config, jax.random.key(config.seed + 1), mesh, tuple(extra.losses)
        ),
        learning_rate=unet_learning_rate(tc, num_steps),
        evaluate=make_evaluate(graphdef, val_source, config, schedule, mesh) if val_source else None,
        preview=make_preview(graphdef, vae, val_source or train_source, config, schedule),
        stop_after=stop_after,
    )
    return run.directory


def load_trained_unet(config, workdir: str | Path, use_ema: bool = True):
    """`(unet, step)`: the U-Net of the newest restorable checkpoint in `workdir/unet` (its EMA
    parameters if kept and `use_ema`), parameters only (`checkpoints.export.load_trained`).

    Raises MissingFileError (a FileNotFoundError) if there is none, CheckpointError naming the step
    and file if none restores.
    """
    from diffusets_jax.checkpoints.export import load_trained

    return load_trained(config, workdir, UNET_DIR, use_ema=use_ema)


def export_workdir(workdir: str | Path, out: str | Path, model_card: str | None = None) -> Path:
    """Write the pretrained directory (config, VAE, U-Net -- EMA weights if kept) of a workdir
    (`checkpoints.export.export_workdir`, kept here for its callers)."""
    from diffusets_jax.checkpoints.export import export_workdir as export

    return export(workdir, out, model_card=model_card)


def workdir_from_pretrained(
    model_dir: str | Path, workdir: str | Path, models: tuple[str, ...] = (VAE_DIR, UNET_DIR)
) -> tuple[int, int]:
    """Write a training workdir from a pretrained model directory (the inverse of `export_workdir`),
    so that `train_diffusion` can fine-tune a shipped model; `models=("vae",)` writes only its VAE
    (train a new U-Net on a shipped VAE: `train-diffusion --vae-from DIR`; the workdir's
    `config.json` is then the one `train_diffusion` is given, not the model directory's).

    The VAE checkpoint is saved at step `vae_train.num_steps` and the U-Net's at
    `unet_train.num_steps` (each at least 1) of the model's config, as the run that trained it left
    them. A pretrained directory keeps one set of U-Net weights (the EMA ones, if the run kept an
    EMA): they become both the parameters and the EMA. The AdamW moments are not kept, so the
    optimizer starts afresh (zero moments, step count 0).

    Returns the (VAE, U-Net) steps. Raises FileNotFoundError naming a missing model file,
    FileExistsError if `workdir` already holds checkpoints.
    """
    workdir = Path(workdir)
    if (workdir / VAE_DIR).exists() or (workdir / UNET_DIR).exists():
        raise FileExistsError(f"{workdir} already holds checkpoints; choose an empty workdir")
    config, vae, unet = load_pretrained(model_dir)
    workdir.mkdir(parents=True, exist_ok=True)
    if UNET_DIR in models:
        write_config(workdir, config)
    steps = (max(int(config.vae_train.num_steps), 1), max(int(config.unet_train.num_steps), 1))
    vae_tc, unet_tc = config.vae_train, config.unet_train
    for name, module, tc, tx, step, keeps_ema in (
        (VAE_DIR, vae, vae_tc, vae_optimizer(vae_tc, 1), steps[0], False),
        (UNET_DIR, unet, unet_tc, unet_optimizer(unet_tc, 1), steps[1], unet_tc.ema_decay > 0),
    ):
        if name not in models:
            continue
        params = nnx.state(module, nnx.Param)
        state = common.TrainState(
            step=jnp.full((), step, jnp.int32),
            params=params,
            opt_state=tx.init(params),
            ema_params=params if keeps_ema else None,
        )
        checkpoints = common.Checkpoints(workdir / name, max(int(tc.keep_checkpoints), 1))
        checkpoints.save(step, state, None)
        checkpoints.wait_until_finished()
    return steps
