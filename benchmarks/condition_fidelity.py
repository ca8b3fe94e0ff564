"""Does a model follow its conditions and look real? The default model's acceptance measures.

For a model directory (default: the shipped one), on the held-out folds of processed sets:

1. Heart rate on request: "Sinus rhythm" at each of `--rates` (bpm), `--per-rate` ECGs each
   (ages and sexes of the held-out patients, cycled), measured by XQRS (`metrics.heart_rates`) and
   NeuroKit2 (`realism.heart_rates_neurokit`): median absolute error per rate and overall.
2. Held-out conditions: every held-out record's report, age, sex and heart rate, `--per-record`
   ECGs each: heart-rate error at the records' own rates, per-lead amplitude ratio against the real
   ECGs, Einthoven / Goldberger residual, k-NN precision / recall (k = 3) and CLIP score (the
   shipped evaluator; matched report against a mismatched one), and the C2ST AUROC, each next to
   real against real.
3. eps-MSE per latent value at t = 20, 100, 300, 600, 900 on the held-out ECGs' latents
   (`diffusion.eps_mse_by_timestep`), next to the Gaussian (Wiener) predictor's.

    python benchmarks/condition_fidelity.py --data data/ptbxl --data data/ludb --data data/cinc \\
        [--checkpoint DIR] [--json out.json] [--figure-dir docs/]

Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from diffusets_jax.constants import LEADS
from diffusets_jax.evaluation import metrics as M
from diffusets_jax.evaluation import realism as R
from diffusets_jax.evaluation.evaluate import denoising_error
from diffusets_jax.pipeline import Pipeline
from diffusets_jax.plotting import plot_ecg
from diffusets_jax.text import build_prompt

TIMESTEPS = (20, 100, 300, 600, 900)


def hr_errors(requested, signals) -> dict:
    return {
        "xqrs": R.median_abs_error(requested, M.heart_rates(signals)),
        "neurokit2": R.median_abs_error(requested, R.heart_rates_neurokit(signals)),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", action="append", required=True, help="processed dataset directory (repeatable)")
    p.add_argument("--checkpoint", default=None, help="model directory (default: the shipped model)")
    p.add_argument("--folds", type=int, nargs="+", default=[9, 10])
    p.add_argument("--rates", type=float, nargs="+", default=[50, 60, 80, 100, 120, 150])
    p.add_argument("--per-rate", type=int, default=24)
    p.add_argument("--per-record", type=int, default=4)
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--num-steps", type=int, default=None)
    p.add_argument("--sampler", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    p.add_argument("--figure-dir", default=None, help="write one picture per requested rate here")
    p.add_argument("--save-samples", default=None, help="write the held-out-condition ECGs and their real ECGs (.npz)")
    args = p.parse_args(argv)

    from diffusets_jax.data_pipelines.processed import load_processed
    from diffusets_jax.evaluation.train_clip import DEFAULT_EVALUATOR_DIR, evaluator_features, load_evaluator

    start = time.perf_counter()
    pipe = Pipeline.from_pretrained(args.checkpoint)
    options = pipe.sampling(sampler=args.sampler, num_steps=args.num_steps, guidance_scale=args.guidance_scale)
    held_out = load_processed(args.data, args.folds)
    n = len(held_out)
    result = {"checkpoint": args.checkpoint or "default", "sampling": options.as_dict(), "held_out_records": n}

    # 1. heart rate on request
    sinus = np.asarray(pipe.embedder.embed([build_prompt("Sinus rhythm")]))[0]
    per_rate, all_requested, all_signals = {}, [], []
    rows = np.arange(args.per_rate) % n
    for rate in args.rates:
        requested = np.full(args.per_rate, rate, np.float32)
        signals = pipe.generate_for_conditions(
            np.repeat(sinus[None], args.per_rate, 0),
            held_out.sex_codes[rows],
            held_out.age[rows],
            requested,
            seed=args.seed + int(rate),
            sampling=options,
        )
        per_rate[f"{rate:g}"] = hr_errors(requested, signals)
        all_requested.append(requested)
        all_signals.append(signals)
        if args.figure_dir:
            plot_ecg(
                signals[0],
                title=f"Sinus rhythm, requested {rate:g} bpm",
                path=f"{args.figure_dir}/sinus_{rate:g}bpm.png",
            )
    per_rate["all"] = hr_errors(np.concatenate(all_requested), np.concatenate(all_signals))
    result["heart_rate_on_request"] = per_rate

    # 2. held-out conditions
    index = np.repeat(np.arange(n), args.per_record)
    generated = pipe.generate_for_conditions(
        held_out.text_embeddings[index],
        held_out.sex_codes[index],
        held_out.age[index],
        held_out.heart_rate[index],
        seed=args.seed,
        sampling=options,
    )
    real = held_out.signals
    if args.save_samples:
        np.savez(args.save_samples, generated=generated, real=real, record_ids=held_out.record_ids[index])
    half = n // 2
    _, evaluator = load_evaluator(DEFAULT_EVALUATOR_DIR)
    real_features, text_features = evaluator_features(evaluator, real, held_out.text_embeddings)
    generated_features, generated_text = evaluator_features(evaluator, generated, held_out.text_embeddings[index])
    mismatched = np.roll(generated_text, args.per_record * max(1, n // 3), axis=0)
    result["held_out"] = {
        "heart_rate": hr_errors(held_out.heart_rate[index], generated),
        "heart_rate_real": hr_errors(held_out.heart_rate, real),
        "amplitude_ratio": dict(zip(LEADS, map(float, R.amplitude_ratio(real, generated)))),
        "limb_residual_mV": {
            "generated": M.lead_residuals(generated)["overall"],
            "real": M.lead_residuals(real)["overall"],
        },
        "precision_recall": M.precision_recall(real_features, generated_features),
        "precision_recall_real": M.precision_recall(real_features[:half], real_features[half:]),
        "clip_score": {
            "matched": M.clip_score(generated_features, generated_text),
            "mismatched": M.clip_score(generated_features, mismatched),
            "real": M.clip_score(real_features, text_features),
        },
        "c2st_auroc": {
            "generated": R.c2st_auroc(real, generated, seed=args.seed),
            "real_vs_real": R.c2st_auroc(real[:half], real[half:], seed=args.seed),
        },
    }
    result["eps_mse_by_t"] = denoising_error(
        pipe,
        held_out.signals,
        held_out.text_embeddings,
        held_out.sex_codes,
        held_out.age,
        held_out.heart_rate,
        TIMESTEPS,
    )
    result["seconds"] = time.perf_counter() - start
    print_tables(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


def print_tables(r):
    print(
        f"\nmodel {r['checkpoint']}, sampling {r['sampling']}, {r['held_out_records']} held-out records, "
        f"{r['seconds']:.0f} s\n"
    )
    print("| requested bpm | median abs error XQRS (bpm) | NeuroKit2 | undetected (XQRS / NK) |\n|---|---|---|---|")
    for rate, e in r["heart_rate_on_request"].items():
        print(
            f"| {rate} | {e['xqrs']['median_abs_error']:.1f} | {e['neurokit2']['median_abs_error']:.1f} | "
            f"{e['xqrs']['n_undetected']} / {e['neurokit2']['n_undetected']} |"
        )
    h = r["held_out"]
    ratio = np.array(list(h["amplitude_ratio"].values()))
    print("\n| measure | generated | real |\n|---|---|---|")
    hr, hr_real = h["heart_rate"], h["heart_rate_real"]
    pr, pr_real = h["precision_recall"], h["precision_recall_real"]
    limb = h["limb_residual_mV"]
    print(
        f"| HR median abs error, held-out conditions (XQRS / NK) | {hr['xqrs']['median_abs_error']:.1f} / "
        f"{hr['neurokit2']['median_abs_error']:.1f} | {hr_real['xqrs']['median_abs_error']:.1f} / "
        f"{hr_real['neurokit2']['median_abs_error']:.1f} |"
    )
    print(
        f"| amplitude ratio per lead (min / median / max) | {ratio.min():.2f} / {np.median(ratio):.2f} / "
        f"{ratio.max():.2f} | 1 |"
    )
    print(f"| limb residual RMS (mV) | {limb['generated']:.3f} | {limb['real']:.3f} |")
    print(
        f"| k-NN precision / recall (k=3) | {pr['precision']:.2f} / {pr['recall']:.2f} | "
        f"{pr_real['precision']:.2f} / {pr_real['recall']:.2f} |"
    )
    c = h["clip_score"]
    print(f"| CLIP score matched / mismatched | {c['matched']:.3f} / {c['mismatched']:.3f} | {c['real']:.3f} |")
    print(f"| C2ST AUROC | {h['c2st_auroc']['generated']:.3f} | {h['c2st_auroc']['real_vs_real']:.3f} |")
    print("\n| t | eps-MSE | Wiener |\n|---|---|---|")
    for t, e in r["eps_mse_by_t"].items():
        print(f"| {t} | {e['eps_mse']:.4f} | {e['wiener']:.4f} |")


if __name__ == "__main__":
    main()
