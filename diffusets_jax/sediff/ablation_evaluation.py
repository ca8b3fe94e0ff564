"""The evaluation half of `diffusets-jax ablate`: score each fine-tuned variant and report the results.

This module holds what `diffusets_jax.sediff.ablation.run_ablation` does once a variant is
fine-tuned: the held-out conditions every variant generates for (`Conditions`,
`held_out_conditions`), the one `Sampling` they generate with (`ablation_sampling`), the generation
and scoring of a variant (`generate_and_score`), its final training losses (`training_summary`),
the table rows (`summary_row`, `reference_row`), the Markdown table (`format_table`, `LEGEND`) and
the result files (`write_results`).

Each fine-tuned U-Net (its EMA weights by default) generates one ECG for each of the same held-out
conditions with the same per-ECG seeds (`Pipeline.generate_for_conditions`); the retrieval variants
take the text embeddings of the same records in the augmented sets. The shipped evaluator scores
them against the real ECGs (`evaluation.evaluate.score`, CLIP score against the original reports
for every variant). Results: `OUT/ablation.json`, `OUT/ablation.md` and the table on stdout.

See docs/se-diff.md, "Ablation".
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

#: Final training losses: the mean of the records logged in the last tenth of the fine-tune.
FINAL_WINDOW = 0.1


@dataclass(frozen=True)
class Conditions:
    """The held-out conditions every variant generates for: `N` rows drawn once."""

    real: np.ndarray  # (N, 1024, 12) mV, the real ECGs of the drawn records
    text: np.ndarray  # (N, D) embeddings of the original reports
    rag_text: np.ndarray | None  # (N, D) embeddings of the augmented reports of the same records
    sex: np.ndarray  # (N,) 1.0 male, 0.0 female
    age: np.ndarray  # (N,) years
    heart_rate: np.ndarray  # (N,) bpm
    reports: np.ndarray  # (N,) original reports
    num_records: int  # distinct held-out records they were drawn from


def held_out_conditions(
    data_dirs: Sequence[Path], rag_dirs: Sequence[Path], folds: Sequence[int], num_samples: int, seed: int
) -> Conditions:
    """`num_samples` rows drawn from `folds` of `data_dirs` (`evaluate.draw_conditions`) and, if
    `rag_dirs` are given, the same records' embeddings in them.

    Raises ValueError if the augmented sets do not hold the same records in the same order.
    """
    from diffusets_jax.data_pipelines.processed import load_processed
    from diffusets_jax.evaluation.evaluate import draw_conditions

    dataset, rows = draw_conditions(data_dirs, folds, num_samples, seed)
    rag_text = None
    if rag_dirs:
        rag = load_processed(rag_dirs, folds)
        if not (np.array_equal(rag.record_ids, dataset.record_ids) and np.array_equal(rag.signals, dataset.signals)):
            raise ValueError(
                f"--rag-dataset {', '.join(map(str, rag_dirs))} do not hold the records of --dataset "
                f"{', '.join(map(str, data_dirs))} in folds {list(folds)} in the same order (give "
                "each augmented set in the order of its source)"
            )
        rag_text = rag.text_embeddings[rows]
    return Conditions(
        real=dataset.signals[rows],
        text=dataset.text_embeddings[rows],
        rag_text=rag_text,
        sex=dataset.sex_codes[rows],
        age=dataset.age[rows],
        heart_rate=dataset.heart_rate[rows],
        reports=dataset.reports[rows],
        num_records=len(dataset),
    )


def generate_and_score(
    directory: Path,
    conditions: Conditions,
    text: np.ndarray,
    evaluator,
    *,
    sampling,
    weights: str,
    batch_size: int,
    seed: int,
) -> dict:
    """Load the variant's VAE and U-Net (`weights`: 'ema' or 'raw'), save them as a model directory
    `directory/model`, generate one ECG per condition row (conditioned on `text` `(N, D)`) with the
    `Sampling` `sampling` (checked by the caller, `ablation_sampling`) and score it. Returns
    `{'generated', 'real_reference', 'generation_s', 'sampling'}`; the ECGs go to `directory/samples.npz`."""
    from diffusets_jax.checkpoints import read_config
    from diffusets_jax.evaluation.evaluate import score
    from diffusets_jax.pipeline import Pipeline
    from diffusets_jax.pretrained import save_pretrained
    from diffusets_jax.training.diffusion import load_trained_unet
    from diffusets_jax.training.vae import load_trained_vae

    config = read_config(directory)
    vae, _ = load_trained_vae(config, directory)
    unet, _ = load_trained_unet(config, directory, use_ema=weights == "ema")
    save_pretrained(directory / "model", config, vae, unet)
    pipeline = Pipeline(config, vae, unet)
    start = time.perf_counter()
    generated = pipeline.generate_for_conditions(
        text,
        conditions.sex,
        conditions.age,
        conditions.heart_rate,
        seed=seed,
        sampling=sampling,
        batch_size=batch_size,
        progress=True,
    )
    generation_s = time.perf_counter() - start
    np.savez(directory / "samples.npz", signals=generated)
    result = score(
        conditions.real,
        generated,
        conditions.text,
        conditions.heart_rate,
        conditions.reports,
        evaluator,
        intervals=False,
    )
    return {
        "generated": result["generated"],
        "real_reference": result["real_reference"],
        "generation_s": generation_s,
        "sampling": sampling.as_dict(),
    }


def ablation_sampling(config, sampler: str, num_steps: int, guidance_scale: float | None):
    """The `Sampling` every variant generates with: `sampler`, `num_steps`, `guidance_scale` (None:
    the model's), no DDIM noise, limb leads as generated; checked once against the base `config`.

    Raises InputError (a ValueError) naming the option at fault (e.g. `num_steps`).
    """
    from diffusets_jax.sampling import Sampling

    return Sampling.from_config(
        config,
        sampler=sampler,
        num_steps=num_steps,
        eta=0.0,
        guidance_scale=guidance_scale,
        exact_limb_leads=False,
        stacklevel=2,
    )


def training_summary(directory: Path, base_step: int, steps: int) -> dict:
    """Losses of the fine-tune from `directory/unet_metrics.jsonl`: the mean of `loss`,
    `diffusion_loss` (= `loss` without physics), `euler_loss`, `interlead_loss` over the records
    of the last `FINAL_WINDOW` of the steps, the last validation loss and the median step time (s)."""
    records = [json.loads(line) for line in (directory / "unet_metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if r["step"] > base_step]
    last_step = max(r["step"] for r in records)
    final = [r for r in records if r["step"] > last_step - max(FINAL_WINDOW * steps, 1)]
    mean = lambda key: float(np.mean([r[key] for r in final])) if key in final[0] else None  # noqa: E731
    val = [r["val_loss"] for r in records if "val_loss" in r]
    diffusion = "diffusion_loss" if "diffusion_loss" in final[0] else "loss"  # the base logs only `loss`
    return {
        "loss": mean("loss"),
        "diffusion_loss": mean(diffusion),
        "euler_loss": mean("euler_loss"),
        "interlead_loss": mean("interlead_loss"),
        "val_loss": val[-1] if val else None,
        "step_time_s": float(np.median([r["step_time_s"] for r in records])),
    }


def summary_row(variant, spec: dict, train_s: float | None, losses: dict, scores: dict) -> dict:
    """One table row: the variant (an `ablation.Variant`), its fine-tune (`spec`, `train_s`,
    `training_summary`) and the headline metrics of `score` (`scores`)."""
    g = scores["generated"]
    return {
        "variant": variant.name,
        "description": variant.description,
        "steps": spec["steps"],
        "base_step": spec["base_step"],
        "unet_step": spec["unet_step"],
        "euler_weight": spec["euler_weight"],
        "interlead_weight": spec["interlead_weight"],
        "physics_gradient": spec["physics_gradient"],
        "retrieval": variant.retrieval,
        "train_s": train_s,
        **losses,
        "hr_mae": g["hr"]["mae"],
        "hr_undetected": g["hr"]["n_undetected"],
        "fid": g["fid"],
        "rfid_arxiv_v1": g["rfid_arxiv_v1"],
        "rfid_iclr2026": g["rfid_iclr2026"],
        "precision": g["precision"],
        "recall": g["recall"],
        "clip_score": g["clip_score"],
        "rclip": g["rclip"],
        "lead_residual_mV": g["lead_residuals_mV"]["overall"],
        "generation_s": scores["generation_s"],
    }


def reference_row(real_reference: dict) -> dict:
    """The real-vs-real row of `score`: FID and precision / recall between the two halves of the
    real set, CLIP score and lead residuals of the real ECGs, their measured vs stated heart rate."""
    return {
        "variant": "real (reference)",
        "hr_mae": real_reference["hr"]["mae"],
        "hr_undetected": real_reference["hr"]["n_undetected"],
        "fid": real_reference["fid"],
        "precision": real_reference.get("precision"),
        "recall": real_reference.get("recall"),
        "clip_score": real_reference["clip_score"],
        "lead_residual_mV": real_reference["lead_residuals_mV"]["overall"],
    }


def _number(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: Sequence[dict], reference: dict | None) -> str:
    """The Markdown table of `summary_row`s (and the reference row)."""
    lines = [
        "| variant | steps | train s | loss | diffusion loss | val loss | HR MAE (bpm) | FID | rFID | "
        "precision | recall | CLIP score | lead residual (mV) |",
        "|" + "---|" * 13,
    ]
    for r in [*rows, *([reference] if reference else [])]:
        hr = _number(r["hr_mae"], ".2f") + (f" ({r['hr_undetected']} undetected)" if r["hr_undetected"] else "")
        lines.append(
            f"| {r['variant']} | {r.get('steps', '-')} | {_number(r.get('train_s'), '.0f')} | "
            f"{_number(r.get('loss'), '.2f')} | {_number(r.get('diffusion_loss'), '.2f')} | "
            f"{_number(r.get('val_loss'), '.2f')} | {hr} | {_number(r['fid'], '.3g')} | "
            f"{_number(r.get('rfid_arxiv_v1'), '.3g')} | {_number(r['precision'], '.3f')} | "
            f"{_number(r['recall'], '.3f')} | {_number(r['clip_score'], '.3f')} | "
            f"{_number(r['lead_residual_mV'], '.4f')} |"
        )
    return "\n".join(lines)


LEGEND = """\
steps: fine-tune steps after the base checkpoint; train s: wall seconds of the fine-tune (data
encoding, compilation and checkpoints included; '-' if it ran in an interrupted invocation); loss,
diffusion loss: means over the last tenth of the fine-tune (loss includes the weighted physics
terms); val loss: plain diffusion loss on the validation folds at the last checkpoint (the
retrieval variants' on the augmented sets); HR MAE: |requested - measured| (XQRS), ECGs without a
detected rhythm left out and counted; FID: Frechet distance of the evaluator's 64-d features to the
real ECGs of the conditions; rFID: FID / FID between the two halves of the real set (`rfid_arxiv_v1`,
lower is better, ~1 for a perfect generator); precision, recall: k = 3 manifolds; CLIP score:
against the original reports for every variant; lead residual: RMS Einthoven / Goldberger residual.
The reference row scores the real ECGs: FID and precision / recall between the two halves of the
real set, their CLIP score and lead residual, and their measured against their stated heart rate.
"""


def write_results(out: Path, summary: dict) -> str:
    """Write `out/ablation.json` (`summary`: `{'settings', 'variants', 'real_reference'}` of
    `run_ablation`) and `out/ablation.md` (the settings, `format_table` and `LEGEND`); returns the table."""
    s = summary["settings"]
    (out / "ablation.json").write_text(json.dumps(summary, indent=1) + "\n")
    table = format_table(summary["variants"], summary["real_reference"])
    (out / "ablation.md").write_text(
        f"# SE-Diff ablation\n\n`{s['command'] or 'run_ablation'}`\n\nBase {s['base_workdir']} (U-Net step "
        f"{s['base_step']}), {s['steps']} fine-tune steps per variant at a constant learning rate "
        f"{s['learning_rate']:g}; Euler weight {s['euler_weight']:g}, inter-lead weight {s['interlead_weight']:g}. "
        f"{s['num_samples']} ECGs per variant for conditions drawn from {s['num_records']} records of folds "
        f"{s['folds']} (seed {s['seed']}), {s['sampling']['sampler']} {s['sampling']['num_steps']} steps, "
        f"{s['weights']} weights.\n\n{table}\n\n{LEGEND}"
    )
    return table
