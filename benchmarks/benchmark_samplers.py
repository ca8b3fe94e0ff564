"""Samplers against each other: speed (ECGs/s) and the evaluation suite's metrics per step count.

For each sampler, step count and guidance scale, the same held-out conditions (and the same
per-ECG seeds) are generated and scored by `diffusets_jax.evaluation.evaluate.score`: heart-rate
MAE, FID, precision / recall and CLIP score of the shipped evaluator, and the lead-identity
residual. Speed is generation only (text embedding and scoring excluded), after a warm-up call
that compiles the sampler; compile time is printed separately.

    python benchmarks/benchmark_samplers.py --dataset data/ptbxl --dataset data/ludb --num-samples 256
    python benchmarks/benchmark_samplers.py ... --samplers dpm-solver++ --steps 50 --guidance-scales 1 2 3
"""

from __future__ import annotations

import argparse
import json
import time


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="pretrained model directory (default: shipped model)")
    parser.add_argument(
        "--dataset",
        dest="data",
        action="append",
        required=True,
        metavar="DIR",
        help="processed set(s); conditions come from --folds",
    )
    parser.add_argument("--folds", default="9,10")
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--samplers", nargs="+", default=["ddpm", "ddim", "dpm-solver++"])
    parser.add_argument("--steps", type=int, nargs="+", default=[1000, 250, 50, 20, 10])
    parser.add_argument("--guidance-scales", type=float, nargs="+", default=[1.0])
    parser.add_argument("--exact-limb-leads", action="store_true", help="also run each setting with derived limb leads")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)

    from diffusets_jax import Pipeline
    from diffusets_jax.evaluation.evaluate import draw_conditions, score
    from diffusets_jax.evaluation.train_clip import DEFAULT_EVALUATOR_DIR, load_evaluator

    pipe = Pipeline.from_pretrained(args.checkpoint)
    _, evaluator = load_evaluator(DEFAULT_EVALUATOR_DIR)
    dataset, rows = draw_conditions(
        args.data, tuple(int(f) for f in args.folds.split(",")), args.num_samples, args.seed
    )
    conditions = (dataset.text_embeddings[rows], dataset.sex_codes[rows], dataset.age[rows], dataset.heart_rate[rows])
    real, reports = dataset.signals[rows], dataset.reports[rows]
    print(
        f"{args.num_samples} conditions from {len(dataset)} held-out records, batch {args.batch_size}, "
        f"model {args.checkpoint or 'default'}",
        flush=True,
    )

    results = []
    for sampler in args.samplers:
        for steps in args.steps:
            for scale in args.guidance_scales:
                for exact in [False, True] if args.exact_limb_leads else [False]:
                    options = pipe.sampling(sampler, steps, 0.0, scale, exact)  # one Sampling, checked once
                    start = time.perf_counter()
                    pipe.generate_for_conditions(
                        *(c[: args.batch_size] for c in conditions), sampling=options, batch_size=args.batch_size
                    )
                    warmup_s = time.perf_counter() - start
                    start = time.perf_counter()
                    generated = pipe.generate_for_conditions(
                        *conditions, seed=args.seed, sampling=options, batch_size=args.batch_size
                    )
                    seconds = time.perf_counter() - start
                    compile_s = max(warmup_s - seconds * args.batch_size / args.num_samples, 0.0)
                    metrics = score(real, generated, conditions[0], conditions[3], reports, evaluator, intervals=False)[
                        "generated"
                    ]
                    row = {
                        "sampler": sampler,
                        "steps": steps,
                        "guidance_scale": scale,
                        "exact_limb_leads": exact,
                        "ecgs_per_s": args.num_samples / seconds,
                        "seconds": seconds,
                        "compile_s": compile_s,
                        "hr_mae": metrics["hr"]["mae"],
                        "hr_undetected": metrics["hr"]["n_undetected"],
                        "fid": metrics["fid"],
                        "precision": metrics["precision"],
                        "recall": metrics["recall"],
                        "clip_score": metrics["clip_score"],
                        "lead_residual_mV": metrics["lead_residuals_mV"]["overall"],
                    }
                    results.append(row)
                    print(
                        json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True
                    )

    reference = next(
        (
            r
            for r in results
            if r["sampler"] == "ddpm"
            and r["steps"] == 1000
            and r["guidance_scale"] == 1.0
            and not r["exact_limb_leads"]
        ),
        None,
    )
    print(
        "\n| sampler | steps | guidance | exact limb leads | ECGs/s | speed-up | HR MAE (bpm) | FID | "
        "precision | recall | CLIP score | limb residual (mV) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:

        def rel(key, r=r):
            if reference is None or r is reference:
                return f"{r[key]:.3g}"
            return f"{r[key]:.3g} ({100 * (r[key] / reference[key] - 1):+.0f} %)"

        speed_up = f"{r['ecgs_per_s'] / reference['ecgs_per_s']:.1f}x" if reference else "-"
        print(
            f"| {r['sampler']} | {r['steps']} | {r['guidance_scale']:g} | {'yes' if r['exact_limb_leads'] else 'no'} "
            f"| {r['ecgs_per_s']:.2f} | {speed_up} | {rel('hr_mae')} ({r['hr_undetected']} undetected) | "
            f"{rel('fid')} | {r['precision']:.2f} | {r['recall']:.2f} | {rel('clip_score')} | "
            f"{r['lead_residual_mV']:.3f} |"
        )
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=2)


if __name__ == "__main__":
    main()
