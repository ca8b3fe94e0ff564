"""Train SE-Diff's beat decoder (Stage 1: VAE latent -> one R-aligned beat per lead) on a trained VAE.

This module holds the training of `diffusets_jax.sediff.beat_decoder.BeatDecoder`: the training
arrays (`_arrays`), the batch source (`BeatSource`), the jitted step (`make_train_step`), the
evaluation (`evaluate_beat_decoder`), the resume checks (`RESUME_SETTINGS`, `SETTINGS_FILE`) and
the entry point `train_beat_decoder()`; the model, its losses and its files are in
`diffusets_jax.sediff.beat_decoder`.

SE-Diff (Wang et al., "Simulator and Experience Enhanced Diffusion Model for Comprehensive ECG
Generation", ICLR 2026, arXiv:2511.09895, Stage 1 of its method) trains the beat decoder next to
the VAE. Here the VAE stays frozen (it is already trained; the paper trains both at once, see
docs/se-diff.md). Inputs are fresh posterior samples of the VAE's latents of real ECGs, scaled by
`LATENT_SCALE` as the diffusion model sees them, plus those of `shifts` circularly shifted copies
of each ECG (augmentation: the R-aligned target does not change; on the local 425 records it
raised the validation R^2 from ~0 to 0.35); the loss is SE-Diff's `L_beat + alpha_spec L_spec`
(the paper's Stage-1 loss; `beat_decoder.beat_loss`, `beat_decoder.spectral_loss`), against each
record's mean R-aligned beat and the log spectra of its beats (`beat_decoder.beat_targets`).

The loop is the other trainers' (`training.setup.TrainingRun`): orbax checkpoints in
`<workdir>/beat_decoder_checkpoints/` every `checkpoint_every` steps, metrics in
`<workdir>/beat_decoder_metrics.jsonl`; an interrupted run resumes when run again. The trained
decoder is written by `beat_decoder.save_beat_decoder()`, by default into `<workdir>/beat_decoder`.

Run: `diffusets-jax train-beat-decoder --workdir workdirs/small_cfg --dataset data/ptbxl
--dataset data/ludb`.
"""

from __future__ import annotations

import datetime
import itertools
import json
import time
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from diffusets_jax.checkpoints.layout import atomic_write_text
from diffusets_jax.config import load_config
from diffusets_jax.constants import FS, LATENT_CHANNELS, LATENT_LENGTH, LATENT_SCALE
from diffusets_jax.sediff import ecgsyn
from diffusets_jax.sediff.beat_decoder import (
    ARCHIVE,
    DIRECTORY_NAME,
    RECORD_FILE,
    SPECTRUM_EPS,
    BeatDecoder,
    beat_loss,
    beat_targets,
    save_beat_decoder,
    spectral_loss,
    spectral_weights,
)

#: Training defaults (`configs/sediff.py` `beat_decoder`); the released width is
#: `beat_decoder.OFFICIAL_BASE` (128).
_DEFAULTS = load_config("sediff").beat_decoder
DEFAULT_BASE = _DEFAULTS.base
DEFAULT_STEPS = _DEFAULTS.steps
DEFAULT_BATCH_SIZE = _DEFAULTS.batch_size
DEFAULT_LEARNING_RATE = _DEFAULTS.learning_rate
#: Weight of the spectral multi-beat loss (SE-Diff's alpha_spec; the paper's value is not known).
DEFAULT_SPECTRAL_WEIGHT = _DEFAULTS.spectral_weight
#: Circularly shifted copies of each training ECG encoded as extra inputs (augmentation).
DEFAULT_SHIFTS = _DEFAULTS.shifts


def _arrays(vae, signals: np.ndarray, progress: bool, shifts: int = 0, seed: int = 0) -> dict[str, np.ndarray]:
    """Latent moments and beat targets of the records with beats; with `shifts` > 0, also the
    latents of that many circularly shifted copies of each ECG (`record` (M,) maps latent rows to
    target rows; the R-aligned mean beat does not depend on where the beats fall in the window)."""
    from diffusets_jax.training.data import encode_moments

    targets = beat_targets(signals, progress=progress)
    keep = targets.has_beats
    signals = signals[keep]
    n = len(signals)
    rng = np.random.default_rng(seed)
    offsets = [np.zeros(n, int)] + [rng.integers(64, signals.shape[1] - 64, n) for _ in range(shifts)]
    means, log_variances = [], []
    for offset in offsets:
        shifted = signals if not offset.any() else np.stack([np.roll(x, k, axis=0) for x, k in zip(signals, offset)])
        mean, log_variance = encode_moments(vae, shifted)
        means.append(mean)
        log_variances.append(log_variance)
    return {
        "mean": np.concatenate(means),
        "log_variance": np.concatenate(log_variances),
        "record": np.tile(np.arange(n, dtype=np.int32), len(offsets)),
        "beat": targets.mean_beat[keep],
        "spectra": targets.spectra[keep],
        "beat_mask": targets.beat_mask[keep],
    }


def _unshifted(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The rows of the unshifted ECGs, with their targets gathered (one row per record)."""
    n = len(arrays["beat"])
    return {
        "mean": arrays["mean"][:n],
        "log_variance": arrays["log_variance"][:n],
        "beat": arrays["beat"],
        "spectra": arrays["spectra"],
        "beat_mask": arrays["beat_mask"],
    }


def _losses(decoder, batch, key, weights, spectral_weight, sample: bool):
    """`(total, beat, spectral)` of one batch; `sample`: a fresh posterior latent, else the mean."""
    z = batch["mean"]
    if sample:
        z = z + jnp.exp(0.5 * batch["log_variance"]) * jax.random.normal(key, z.shape)
    predicted = decoder(z * LATENT_SCALE)
    lb = beat_loss(predicted, batch["beat"])
    ls = spectral_loss(predicted, batch["spectra"], batch["beat_mask"], weights)
    return lb + spectral_weight * ls, (lb, ls)


def _evaluator(graphdef, arrays: dict[str, np.ndarray], batch_size: int, spectral_weight: float):
    """`evaluate(params) -> metrics` of `evaluate_beat_decoder`, compiled once (the trainer calls it
    at every checkpoint)."""
    arrays = _unshifted(arrays)
    weights = jnp.asarray(spectral_weights())

    @jax.jit
    def batch_losses(params, batch):
        _, (lb, ls) = _losses(nnx.merge(graphdef, params), batch, None, weights, spectral_weight, False)
        return lb, ls

    n = len(arrays["mean"])
    baseline = float(np.mean((arrays["beat"] - arrays["beat"].mean(0)) ** 2))

    def evaluate(params) -> dict[str, float]:
        sums = np.zeros(2)
        for i in range(0, n, batch_size):
            batch = {k: jnp.asarray(v[i : i + batch_size]) for k, v in arrays.items()}
            sums += np.array([float(v) for v in batch_losses(params, batch)]) * len(batch["mean"])
        lb, ls = sums / n
        return {
            "beat_mse": lb,
            "spectral": ls,
            "loss": lb + spectral_weight * ls,
            "records": n,
            "mean_beat_mse": baseline,
            "r2": 1.0 - lb / baseline if baseline > 0 else float("nan"),
        }

    return evaluate


def evaluate_beat_decoder(
    decoder: BeatDecoder,
    arrays: dict[str, np.ndarray],
    batch_size: int = 64,
    spectral_weight: float = DEFAULT_SPECTRAL_WEIGHT,
) -> dict[str, float]:
    """Losses on the posterior means of the unshifted ECGs of `arrays` (`_arrays()`), plus the
    beat MSE of the best constant predictor (the set's mean beat) and `r2 = 1 - beat / that`."""
    graphdef, params = nnx.split(decoder)
    return _evaluator(graphdef, arrays, batch_size, spectral_weight)(params)


class BeatSource:
    """The training rows of `_arrays()` as a `data_pipelines.input_pipeline.BatchSource`.

    The global batch at step `s` is rows `batch_indices(M, batch, s, seed, shuffle)` of the M
    latent rows (unshifted and shifted ECGs; a fresh seeded permutation per epoch, the last partial
    batch dropped), each with its record's targets: `mean`, `log_variance` `(b, 128, 4)`, `beat`
    `(b, 61, 12)` mV, `spectra` `(b, J, 31, 12)`, `beat_mask` `(b, J)`, where `b` is this process's
    share. A function of `(seed, step)` only, so a resumed run sees the batches of an uninterrupted one.
    """

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays
        self.num_examples = len(arrays["mean"])

    def batches(self, global_batch_size: int, start_step: int, *, seed: int, shuffle: bool):
        from diffusets_jax.data_pipelines.input_pipeline import batch_indices, local_batch_size

        local = local_batch_size(global_batch_size, jax.process_count())
        rows = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
        a = self.arrays
        for step in itertools.count(start_step):
            index = batch_indices(self.num_examples, global_batch_size, step, seed, shuffle)[rows]
            records = a["record"][index]
            yield {
                "mean": a["mean"][index],
                "log_variance": a["log_variance"][index],
                "beat": a["beat"][records],
                "spectra": a["spectra"][records],
                "beat_mask": a["beat_mask"][records],
            }


def make_train_step(graphdef, tx, root_key, spectral_weight: float, mesh):
    """The jitted `(state, batch) -> (state, metrics)` of `training.common.run_training`: one AdamW
    step on `L_beat + spectral_weight L_spec` of a `BeatSource` batch, each row's latent a fresh
    posterior sample keyed by `fold_in(root_key, step)`; metrics `loss`, `beat_mse`, `spectral`,
    `grad_norm`."""
    from diffusets_jax.training import common

    weights = jnp.asarray(spectral_weights())

    def train_step(state, batch):
        key = jax.random.fold_in(root_key, state.step)
        loss_fn = lambda p: _losses(nnx.merge(graphdef, p), batch, key, weights, spectral_weight, True)  # noqa: E731
        (loss, (lb, ls)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "beat_mse": lb, "spectral": ls, "grad_norm": common.global_norm(grads)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return common.compile_train_step(train_step, mesh)


#: The settings a run's checkpoints were trained with (`settings.json` beside them); a rerun
#: resumes only with the same ones (`steps` may change, as `num_steps` may for the other trainers).
RESUME_SETTINGS = (
    "vae_step",
    "datasets",
    "train_folds",
    "val_folds",
    "shifts",
    "batch_size",
    "learning_rate",
    "spectral_weight",
    "seed",
    "base",
    "num_groups",
)
SETTINGS_FILE = "settings.json"


def _check_resumable(checkpoint_dir: Path, settings: dict, out: Path, workdir: Path, steps: int) -> dict | None:
    """The record of `out` if it already holds this run's decoder trained to the last checkpoint
    and that is at least `steps` (nothing to do), else None (train: from scratch or resumed).

    Raises ConfigError if `checkpoint_dir` holds steps of other settings; FileExistsError if `out`
    holds a beat decoder that is not this run's (another workdir, or no checkpoint to resume).
    """
    from diffusets_jax.checkpoints.layout import read_json
    from diffusets_jax.checkpoints.steps import latest_step
    from diffusets_jax.errors import ConfigError

    last = latest_step(checkpoint_dir)
    if last is not None:
        saved = read_json(checkpoint_dir / SETTINGS_FILE) if (checkpoint_dir / SETTINGS_FILE).is_file() else {}
        changed = [
            f"{k}={saved.get(k)!r} (now {settings[k]!r})" for k in RESUME_SETTINGS if saved.get(k) != settings[k]
        ]
        if changed:
            raise ConfigError(
                f"{checkpoint_dir} holds beat-decoder checkpoints (step {last}) trained with "
                f"{', '.join(changed)}: rerun with those settings to resume, or move that directory "
                "aside to start over"
            )
    if not (out / RECORD_FILE).is_file() and not (out / f"{ARCHIVE}.npz").is_file():
        return None
    record = read_json(out / RECORD_FILE) if (out / RECORD_FILE).is_file() else {}
    trained = record.get("training", {})
    if last is None or Path(trained.get("workdir", "")).resolve() != workdir.resolve():
        reason = f"{checkpoint_dir} has no checkpoint to resume" if last is None else f"it was not trained in {workdir}"
        raise FileExistsError(
            f"{out} already holds a trained beat decoder and {reason}: choose another --out, or remove it to train anew"
        )
    return record if last >= steps and trained.get("steps") == last else None


def _logged_history(path: Path) -> list[dict]:
    """`{step, loss, beat_mse, spectral}` of each record of the metrics log (the whole run: a
    resume cuts the log back to the restored step and continues it)."""
    if not path.is_file():  # only process 0 writes it
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: r[k] for k in ("step", "loss", "beat_mse", "spectral")} for r in rows]


def train_beat_decoder(
    workdir: str | Path,
    dataset_dirs: Sequence[str | Path],
    *,
    steps: int = DEFAULT_STEPS,
    out: str | Path | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    base: int = DEFAULT_BASE,
    num_groups: int = 32,
    spectral_weight: float = DEFAULT_SPECTRAL_WEIGHT,
    shifts: int = DEFAULT_SHIFTS,
    seed: int = 0,
    log_every: int = _DEFAULTS.log_every,
    checkpoint_every: int = _DEFAULTS.checkpoint_every,
    keep_checkpoints: int = _DEFAULTS.keep_checkpoints,
    stop_after: int | None = None,
    progress: bool = True,
) -> dict | None:
    """Train (or resume) the beat decoder on the latents of `workdir`'s trained VAE and save it.

    Data: the processed sets `dataset_dirs`, training folds `config.data.train_folds` of the
    workdir's config, validation folds `config.data.val_folds` (if any record is there); records
    without a detected beat are left out. AdamW (weight decay 0.01), cosine decay to 0.1 lr;
    each step draws a fresh posterior latent per row. Augmentation: `shifts` circularly shifted
    copies of each training ECG are encoded too (same targets).

    The loop is the other trainers' (`training.setup.TrainingRun`, `training.common.run_training`):
    metrics in `workdir/beat_decoder_metrics.jsonl` and TensorBoard, orbax checkpoints in
    `workdir/beat_decoder_checkpoints/` every `checkpoint_every` steps and at the end (the best by
    validation loss in `..._best/`), with the settings in `settings.json` beside them. Run again, it
    resumes from the newest checkpoint ("resumed from checkpoint at step N in DIR"), on the batches
    an uninterrupted run would see, and ends with the same parameters. Nothing is silently
    overwritten: `out` may hold only this workdir's decoder of the same run, which is replaced when
    training continued (a larger `steps`) and left as it is when it is already trained to the last
    checkpoint (the call then returns its record without training).

    Args:
        workdir: a training workdir with `config.json` and a VAE checkpoint (`vae/`).
        dataset_dirs: processed sets (`diffusets-jax prepare`).
        steps, batch_size, learning_rate, base, num_groups, spectral_weight, shifts, seed: training.
        out: output directory (default `workdir/beat_decoder`).
        log_every, checkpoint_every, keep_checkpoints: steps between logged losses, between
            checkpoints, and the checkpoints kept.
        stop_after: end this call after that many steps (checkpointed; `out` not written): the next
            call resumes.
        progress: show the progress bar of the beat extraction.

    Returns:
        The JSON record written next to the parameters (losses, timings, data, architecture), with
        `already_trained: True` added if `out` already held this run's decoder trained to `steps`
        (nothing written), or None if `stop_after` ended the call before `steps`.

    Raises:
        FileNotFoundError: no config or VAE checkpoint in `workdir`, or a dataset is missing.
        FileExistsError: `out` holds a beat decoder this run did not write (naming it).
        ConfigError: the checkpoints were trained with other settings (naming them).
        ValueError: fewer training records with beats than `batch_size`, or a batch that does not
            split over the devices.
        NonFiniteLossError: (a FloatingPointError) a NaN/inf loss or gradient, naming the step.
    """
    from ml_collections import ConfigDict

    from diffusets_jax.checkpoints import CONFIG_FILE, metrics_file, read_config
    from diffusets_jax.checkpoints.layout import BEAT_DECODER_CHECKPOINTS
    from diffusets_jax.data_pipelines.processed import load_processed
    from diffusets_jax.errors import MissingFileError
    from diffusets_jax.training import common
    from diffusets_jax.training.setup import TrainingRun
    from diffusets_jax.training.vae import load_trained_vae

    workdir = Path(workdir)
    config_path = workdir / CONFIG_FILE
    if not config_path.is_file():
        raise MissingFileError(f"{config_path} not found: not a training workdir (run `diffusets-jax train-vae`)")
    config = read_config(workdir)
    vae, vae_step = load_trained_vae(config, workdir)
    out = Path(out) if out else workdir / DIRECTORY_NAME
    checkpoint_dir = workdir / BEAT_DECODER_CHECKPOINTS
    settings = {
        "vae_step": vae_step,
        "datasets": [str(Path(d).resolve()) for d in dataset_dirs],
        "train_folds": list(config.data.train_folds),
        "val_folds": list(config.data.val_folds),
        "shifts": shifts,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "spectral_weight": spectral_weight,
        "seed": seed,
        "base": base,
        "num_groups": num_groups,
    }
    done = _check_resumable(checkpoint_dir, settings, out, workdir, steps)
    if done is not None:
        print(
            f"{out} already holds the beat decoder trained to step {done['training']['steps']} "
            f"(checkpoints in {checkpoint_dir}); nothing to do"
        )
        return {**done, "already_trained": True}
    train_config = ConfigDict(
        {
            "batch_size": batch_size,
            "num_epochs": 0,
            "num_steps": steps,
            "log_every": log_every,
            "checkpoint_every": checkpoint_every,
            "keep_checkpoints": keep_checkpoints,
            "weight_decay": 0.01,
            "grad_clip_norm": 0.0,
            "preview_every": 0,
        }
    )
    run = TrainingRun(DIRECTORY_NAME, workdir, train_config, seed=seed, checkpoint_dir=checkpoint_dir)
    start = time.perf_counter()
    train = _arrays(vae, load_processed(dataset_dirs, config.data.train_folds).signals, progress, shifts, seed)
    try:
        val = _arrays(vae, load_processed(dataset_dirs, config.data.val_folds).signals, progress)
    except ValueError:  # no record in the validation folds
        val = None
    if val is not None and len(val["beat"]) == 0:  # none with a detected beat
        val = None
    prepare_s = time.perf_counter() - start
    n = len(train["beat"])
    if n < batch_size:
        raise ValueError(f"{n} training records with beats are fewer than batch_size={batch_size}")
    source = BeatSource(train)
    _, mesh = run.plan(source.num_examples)

    decoder = BeatDecoder(base, num_groups, rngs=nnx.Rngs(seed))
    initial_metrics = evaluate_beat_decoder(decoder, train, spectral_weight=spectral_weight)
    graphdef, params = nnx.split(decoder, nnx.Param)
    schedule = optax.cosine_decay_schedule(learning_rate, max(steps, 1), alpha=0.1)
    tx = common.adamw(schedule, train_config)
    state = run.resume(common.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params)))
    resumed_from = int(state.step)
    if jax.process_index() == 0:
        atomic_write_text(checkpoint_dir / SETTINGS_FILE, json.dumps(settings, indent=2, sort_keys=True))
    evaluate = None
    if val is not None:
        val_metrics = _evaluator(graphdef, val, 64, spectral_weight)
        evaluate = lambda state: {  # noqa: E731
            f"val_{k}": v for k, v in val_metrics(state.params).items() if k in ("loss", "beat_mse", "spectral", "r2")
        }
    start = time.perf_counter()
    state = run.train(
        state,
        train_step=make_train_step(graphdef, tx, jax.random.key(seed), spectral_weight, mesh),
        source=source,
        learning_rate=schedule,
        evaluate=evaluate,
        stop_after=stop_after,
    )
    train_s = time.perf_counter() - start
    if int(state.step) < steps:
        return None
    decoder = nnx.merge(graphdef, jax.device_get(state.params))
    record = {
        "architecture": {
            "name": "MiniDecoderMSE",
            "base": base,
            "num_groups": num_groups,
            "latent_shape": [LATENT_LENGTH, LATENT_CHANNELS],
            "beat_length": ecgsyn.BEAT_LENGTH,
            "r_index": ecgsyn.BEAT_R_INDEX,
            "fs_hz": FS,
            "input": "scaled latent (x LATENT_SCALE), as the U-Net's x0",
            "output": "mV",
        },
        "training": {
            "workdir": str(workdir.resolve()),
            **settings,
            "train_records": n,
            "val_records": 0 if val is None else len(val["beat"]),
            "steps": int(state.step),
            "spectrum_eps": SPECTRUM_EPS,
            "checkpoints": str(checkpoint_dir),
            "resumed_from": resumed_from,
            "prepare_s": round(prepare_s, 1),
            "train_s": round(train_s, 1),
            "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "history": _logged_history(workdir / metrics_file(DIRECTORY_NAME)),
        "initial_metrics": initial_metrics,
        "train_metrics": evaluate_beat_decoder(decoder, train, spectral_weight=spectral_weight),
        "val_metrics": None if val is None else evaluate_beat_decoder(decoder, val, spectral_weight=spectral_weight),
    }
    if jax.process_index() == 0:
        save_beat_decoder(out, decoder, record)
    return record
