"""`evaluate`: generate ECGs for held-out conditions and score them against real ones."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import UsageError, add_checkpoint_arg, add_sampling_args, parse_folds, sampling_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="generate ECGs for held-out conditions and score them",
        description="Draws --num-samples conditions from the held-out folds of processed sets, "
        "generates one ECG each (or reads --samples), and writes metrics.json, report.md "
        "and figures: FID / rFID, precision and recall (k=3), heart-rate MAE, CLIP score "
        "and rCLIP (overall and per keyword condition), paired MAE / NRMSE, PR / QRS / QT "
        "errors and lead-identity residuals, next to the same for real ECGs.",
    )
    add_checkpoint_arg(p)
    p.add_argument(
        "--dataset",
        dest="data",
        action="append",
        required=True,
        type=Path,
        metavar="DIR",
        help="processed set written by `prepare` (repeatable); conditions come from its --folds",
    )
    p.add_argument("--folds", default="9,10", help="held-out folds to draw conditions from (default 9,10)")
    p.add_argument("--num-samples", type=int, default=100, help="ECGs to generate and score (default 100)")
    add_sampling_args(p)
    p.add_argument("--batch-size", type=int, default=None, help="ECGs per sampler call (default: the model's config)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--evaluator", type=Path, default=None, help="evaluator directory (default: the shipped one)")
    p.add_argument(
        "--samples",
        type=Path,
        default=None,
        help="score these ECGs (samples.npz of a previous run) instead of generating",
    )
    p.add_argument("--no-intervals", action="store_true", help="skip the PR / QRS / QT delineation (slow)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from diffusets_jax.evaluation.evaluate import evaluate
    from diffusets_jax.pipeline import check_batch_size, check_seed
    from diffusets_jax.pretrained import read_model_config
    from diffusets_jax.sampling import Sampling

    folds = parse_folds(args.folds)
    if args.num_samples < 4:
        raise UsageError(f"--num-samples must be at least 4 (k = 3 nearest neighbours), got {args.num_samples}")
    check_seed(args.seed, "--seed")
    check_batch_size(args.batch_size, "--batch-size")
    sampling = None
    if args.samples is not None:  # nothing is generated: the options of generation do not apply
        given = [f"--{name.replace('_', '-')}" for name, value in sampling_options(args).items() if value is not None]
        given += ["--batch-size"] if args.batch_size is not None else []
        if given:
            raise UsageError(f"--samples scores ECGs already generated; drop {', '.join(given)}")
    else:  # checked once, against the model's config, before the evaluator and the data are loaded
        sampling = Sampling.from_config(read_model_config(args.checkpoint), **sampling_options(args))
    evaluate(
        args.checkpoint,
        args.data,
        args.out,
        num_samples=args.num_samples,
        folds=folds,
        sampling=sampling,
        batch_size=args.batch_size,
        seed=args.seed,
        evaluator_dir=args.evaluator,
        samples=args.samples,
        intervals=not args.no_intervals,
    )
