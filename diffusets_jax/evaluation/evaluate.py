"""The `diffusets-jax evaluate` job: generate ECGs for held-out conditions and score them.

Protocol (official `test_scripts/evaluation.py`, `batch_hr_test.py`, `batch_disease_gen.py`;
SE-Diff's paired and rFID/rCLIP metrics, Wang et al., ICLR 2026, arXiv:2511.09895):
`num_samples` conditions are drawn (seeded, with replacement when the split is smaller) from the
held-out folds of processed sets; one ECG is generated per condition; the real ECG of that record
is its pair. Differences from the official protocol, on purpose: sex is the record's (the official
evaluation always used 0), the conditions come from held-out patients (the official ones from the
training set), and the "real" features are of the real ECGs, not of their VAE reconstructions.

Denoising: the U-Net's eps-MSE per timestep on the held-out records' latents, next to the
Gaussian (Wiener) predictor's (`denoising_error`; skipped for `--samples`). Realism without the
evaluator: per-lead amplitude ratio and a classifier two-sample test (`realism`).

Signal level: FID of the evaluator's 64-d ECG features, precision / recall / F1 (k = 3), both rFID
variants; feature level: heart-rate MAE (XQRS at 102.4 Hz) with the undetected count; diagnostic
level: CLIP score, rCLIP, the same per keyword condition; paired: MAE, NRMSE and PR / QRS / QT
errors; lead consistency: Einthoven / Goldberger residuals. Each also for real against real
(two halves of the real set, or the real ECGs scored as if generated) as the reference row.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from diffusets_jax.conditions import condition_labels
from diffusets_jax.evaluation import metrics as M
from diffusets_jax.evaluation import realism as R

if TYPE_CHECKING:
    from diffusets_jax.sampling import Sampling

DEFAULT_FOLDS = (9, 10)
#: Timesteps of the denoising-error curve (`denoising_error`).
DENOISING_TIMESTEPS = (20, 50, 100, 200, 300, 450, 600, 750, 900, 990)


def denoising_error(
    pipeline,
    signals: np.ndarray,
    text_embeddings: np.ndarray,
    sex_codes: np.ndarray,
    age: np.ndarray,
    heart_rate: np.ndarray,
    timesteps: Sequence[int] = DENOISING_TIMESTEPS,
    seed: int = 123,
) -> dict[str, dict[str, float]]:
    """`{t: {'eps_mse', 'wiener'}}`: the pipeline's U-Net eps-MSE per latent value on the VAE
    posterior means of real ECGs `(N, 1024, 12)` under their own conditions, fixed noise
    (`diffusion.eps_mse_by_timestep`), next to the Gaussian (Wiener) predictor's error
    (`diffusion.gaussian_eps_mse`) for latents of their measured variance: a model that has learned to
    denoise is below it at every t, one that has not is flat over t."""
    import jax

    from diffusets_jax import diffusion
    from diffusets_jax.constants import LATENT_SCALE
    from diffusets_jax.models import make_condition
    from diffusets_jax.training.data import encode_moments

    mean, _ = encode_moments(pipeline.vae, signals)
    x0 = mean * LATENT_SCALE
    condition = make_condition(text_embeddings, sex_codes, age, heart_rate)
    errors = diffusion.eps_mse_by_timestep(
        lambda x, t: pipeline.unet(x, t, condition), pipeline.schedule, x0, jax.random.key(seed), timesteps
    )
    alphas_cumprod = np.asarray(pipeline.schedule.alphas_cumprod)[list(timesteps)]
    wiener = diffusion.gaussian_eps_mse(alphas_cumprod, float(np.var(x0)))
    return {str(t): {"eps_mse": float(e), "wiener": float(w)} for t, e, w in zip(timesteps, np.asarray(errors), wiener)}


def draw_conditions(data_dirs: Sequence[str | Path], folds: Sequence[int], num_samples: int, seed: int):
    """`(dataset, rows)`: the processed records of `folds` and `num_samples` row indices drawn from them."""
    from diffusets_jax.data_pipelines.processed import load_processed

    dataset = load_processed(data_dirs, folds)
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(dataset), num_samples, replace=num_samples > len(dataset))
    return dataset, rows


def score(
    real: np.ndarray,
    generated: np.ndarray,
    real_text: np.ndarray,
    requested_hr: np.ndarray,
    reports: Sequence[str],
    evaluator,
    intervals: bool = True,
) -> dict:
    """All metrics of generated ECGs `(N, 1024, 12)` against their real pairs `(N, 1024, 12)`.

    `real_text` `(N, D)` are the conditions' text embeddings, `requested_hr` `(N,)` bpm, `reports`
    the conditions' reports (for the keyword labels); `evaluator` a `ClipEvaluator`.
    Returns `{'generated', 'real_reference', 'per_condition', 'heart_rate'}` for `write_report`.
    """
    from diffusets_jax.evaluation.train_clip import evaluator_features

    real_features, text_features = evaluator_features(evaluator, real, real_text)
    generated_features, _ = evaluator_features(evaluator, generated, real_text)
    measured_generated, measured_real = M.heart_rates(generated), M.heart_rates(real)
    clip_generated = M.clip_score(generated_features, text_features)
    clip_real = M.clip_score(real_features, text_features)
    half = len(real) // 2
    generated_row = {
        **M.rfid(real_features, generated_features),
        **M.precision_recall(real_features, generated_features),
        "clip_score": clip_generated,
        "rclip": M.rclip(clip_generated, clip_real),
        "hr": M.heart_rate_mae(requested_hr, measured_generated),
        "paired": M.paired_errors(real, generated),
        "lead_residuals_mV": M.lead_residuals(generated),
        "amplitude_ratio_median": float(np.median(R.amplitude_ratio(real, generated))),
    }
    real_row = {
        "fid": M.frechet_distance(real_features[:half], real_features[half:]),
        **(M.precision_recall(real_features[:half], real_features[half:]) if half > 3 else {}),  # k = 3
        "clip_score": clip_real,
        "rclip": 1.0,
        "hr": M.heart_rate_mae(requested_hr, measured_real),
        "lead_residuals_mV": M.lead_residuals(real),
        "amplitude_ratio_median": 1.0,
    }
    if len(real) >= 10:  # 5 folds need 5 ECGs per class
        generated_row["c2st_auroc"] = R.c2st_auroc(real, generated)
        real_row["c2st_auroc"] = R.c2st_auroc(real[:half], real[half:])
    if intervals:
        generated_row["intervals_ms"] = M.interval_errors(real, generated)
    labels = condition_labels(list(reports))
    per_condition = {  # counts and heart-rate MAE per condition are added by the report
        label: {
            "clip_score": M.clip_score(generated_features[mask], text_features[mask]),
            "clip_score_real": M.clip_score(real_features[mask], text_features[mask]),
        }
        for label, mask in labels.items()
        if mask.sum() >= 2
    }
    return {
        "generated": generated_row,
        "real_reference": real_row,
        "per_condition": per_condition,
        "measured_hr": measured_generated,
        "labels": labels,
    }


def load_samples(path: str | Path, num_samples: int) -> np.ndarray:
    """The `signals` `(num_samples, 1024, 12)` float32 mV of a `samples.npz` (of `generate` or an
    earlier `evaluate`), checked before anything else is loaded.

    Raises MissingFileError for a missing file, DataError naming the file for one that is not an
    .npz, has no `signals`, has another shape (leads, length), non-finite values or another count.
    """
    import zipfile

    from diffusets_jax.constants import NUM_LEADS, NUM_SAMPLES
    from diffusets_jax.errors import DataError, MissingFileError

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"--samples {path} not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "signals" not in data:
                raise DataError(
                    f"{path} has no 'signals' array (it holds {', '.join(data.files) or 'nothing'}); "
                    "give the samples.npz of `generate` or `evaluate`"
                )
            signals = data["signals"]
    except (AttributeError, TypeError):  # np.load returned a plain array (no context manager): a .npy file
        raise DataError(f"{path} is a .npy array, not an .npz with 'signals'") from None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        if isinstance(error, DataError):
            raise
        raise DataError(
            f"{path} is not a readable .npz (truncated, or another kind of file): {type(error).__name__}"
        ) from None
    expected = (NUM_SAMPLES, NUM_LEADS)
    if signals.ndim != 3 or signals.shape[1:] != expected:
        raise DataError(
            f"{path}: signals have shape {signals.shape}; need (N, {expected[0]}, {expected[1]}) "
            f"(N ECGs of {expected[0]} samples at 102.4 Hz, {expected[1]} leads)"
        )
    if not np.issubdtype(signals.dtype, np.number) or np.issubdtype(signals.dtype, np.complexfloating):
        raise DataError(f"{path}: signals are of type {signals.dtype}, not real numbers (mV)")
    bad = ~np.isfinite(signals).all(axis=(1, 2))
    if bad.any():
        raise DataError(
            f"{path}: {int(bad.sum())} of the {len(signals)} ECGs hold NaN or infinite values "
            f"(the first is ECG {int(np.argmax(bad))})"
        )
    if len(signals) != num_samples:
        raise DataError(f"{path} holds {len(signals)} ECGs, not --num-samples {num_samples}")
    return signals.astype(np.float32)


def evaluate(
    checkpoint: str | Path | None,
    data_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    num_samples: int = 100,
    folds: Sequence[int] = DEFAULT_FOLDS,
    sampling: Sampling | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    evaluator_dir: str | Path | None = None,
    samples: str | Path | None = None,
    intervals: bool = True,
) -> Path:
    """Generate (or read from `samples`, an `.npz` written by a previous run) and score ECGs for
    `num_samples` held-out conditions; write `metrics.json`, `report.md`, its figures and
    `samples.npz` to `out_dir`. Returns the report path.

    Args:
      checkpoint: pretrained model directory (None: the shipped model).
      sampling: the sampling options, a `Sampling` for this model, e.g.
        `Sampling.from_config(read_model_config(checkpoint), num_steps=50)` (not checked again);
        None: the model's `config.sampling`. Recorded in `metrics.json` (`protocol.sampling`).
        Not with `samples`.
      batch_size: ECGs per compiled sampler call (None: the model's config).

    Raises:
      FileNotFoundError for a missing model, evaluator or dataset; ValueError if the model, the
      evaluator and the datasets do not share the text embedder, or no record is in `folds`;
      DataError for unusable `samples` (`load_samples`, checked first); InputError for `sampling`
      given with `samples`.
    """
    from diffusets_jax import compile_cache
    from diffusets_jax.evaluation.report import write_report
    from diffusets_jax.evaluation.train_clip import DEFAULT_EVALUATOR_DIR, load_evaluator
    from diffusets_jax.errors import InputError
    from diffusets_jax.pipeline import Pipeline

    if samples is not None and sampling is not None:
        raise InputError("sampling does not apply to samples already generated: give one of them")
    compile_cache.ensure_enabled()  # the sampler and the evaluator compile once, not per run

    generated = None if samples is None else load_samples(samples, num_samples)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    evaluator_config, evaluator = load_evaluator(evaluator_dir or DEFAULT_EVALUATOR_DIR)
    dataset, rows = draw_conditions(data_dirs, folds, num_samples, seed)
    if dataset.text_embeddings.shape[1] != evaluator_config.text.embed_dim:
        raise ValueError(
            f"the datasets hold {dataset.text_embeddings.shape[1]}-d text embeddings "
            f"({dataset.embedder}); the evaluator takes {evaluator_config.text.embed_dim}-d"
        )
    real, text = dataset.signals[rows], dataset.text_embeddings[rows]
    requested_hr, reports = dataset.heart_rate[rows], dataset.reports[rows]
    options = None
    start = time.perf_counter()
    if samples is None:
        pipeline = Pipeline.from_pretrained(checkpoint)
        options = pipeline.sampling() if sampling is None else sampling
        generated = pipeline.generate_for_conditions(
            text,
            dataset.sex_codes[rows],
            dataset.age[rows],
            requested_hr,
            seed=seed,
            sampling=options,
            batch_size=batch_size,
            progress=True,
        )
        np.savez(out_dir / "samples.npz", signals=generated, record_ids=dataset.record_ids[rows])
    generation_s = time.perf_counter() - start
    start = time.perf_counter()
    result = score(real, generated, text, requested_hr, reports, evaluator, intervals=intervals)
    denoising = (
        None
        if samples is not None
        else denoising_error(
            pipeline, dataset.signals, dataset.text_embeddings, dataset.sex_codes, dataset.age, dataset.heart_rate
        )
    )
    scoring_s = time.perf_counter() - start
    metrics = {
        "generated": result["generated"],
        "real_reference": result["real_reference"],
        "per_condition": result["per_condition"],
        "denoising_error": denoising,
        "protocol": {
            "checkpoint": str(checkpoint or "default"),
            "data": [str(d) for d in data_dirs],
            "folds": list(folds),
            "num_samples": num_samples,
            "num_records": len(dataset),
            "sampling": options.as_dict() if options else None,
            "seed": seed,
            "generation_s": generation_s,
            "scoring_s": scoring_s,
        },
    }
    titles = [
        f"{r} | {a:.0f} y {s} | {h:.0f} bpm"
        for r, a, s, h in zip(reports, dataset.age[rows], dataset.sex[rows], requested_hr)
    ]
    report = write_report(
        out_dir,
        metrics,
        real_signals=real,
        generated_signals=generated,
        requested_hr=requested_hr,
        measured_hr=result["measured_hr"],
        labels=result["labels"],
        titles=titles,
        denoising=denoising,
    )
    print(json.dumps({"report": str(report), "generation_s": round(generation_s, 1), "scoring_s": round(scoring_s, 1)}))
    return report
