"""Generation commands: `generate` (files) and `serve` (web page and JSON API)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import UsageError, add_checkpoint_arg, add_sampling_args, sampling_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate 12-lead ECGs from report text and patient information",
        description="Writes, per ECG, a WFDB record (.hea/.dat, 12 leads, mV, 102.4 Hz) and a PNG "
        "in the clinical layout, plus samples.npz with all signals. With --from-csv, one "
        "ECG per CSV row (columns report, age, sex, hr, optional seed), an index.csv, "
        "bad rows listed and skipped, and a rerun resumes where an interrupted one stopped.",
    )
    p.add_argument("--report", help="report statements separated by '|', most important first")
    p.add_argument("--age", type=float, help="age in years (0-120)")
    p.add_argument("--sex", help="M or F")
    p.add_argument("--hr", type=float, help="heart rate in bpm (20-300)")
    p.add_argument(
        "--from-csv",
        type=Path,
        default=None,
        metavar="CSV",
        help="generate one ECG per row of this CSV instead (columns report, age, sex, hr; optional seed)",
    )
    p.add_argument("--num-samples", type=int, default=None, help="number of ECGs (default 4; not with --from-csv)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed, 0 to 2**32 - 1; the same seed and options give the same ECGs (default 0)",
    )
    add_sampling_args(p)
    p.add_argument(
        "--experience-index",
        type=Path,
        default=None,
        metavar="NPZ",
        help="augment the report with the statements of the most similar training records "
        "(an index saved by `augment-dataset --save-index`; SE-Diff experience retrieval)",
    )
    p.add_argument(
        "--retrieval-k", type=int, default=None, help="neighbours retrieved with --experience-index (default 5)"
    )
    p.add_argument("--batch-size", type=int, default=None, help="ECGs per sampler call (default: the model's config)")
    add_checkpoint_arg(p)
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--no-png", action="store_true", help="skip the PNG pictures")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete an earlier run's files in --out (ecg_*, samples.npz, index.csv) instead of refusing "
        "them; with --from-csv, start over instead of resuming",
    )
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "serve",
        help="local web page and JSON API: type a report, see and download ECGs",
        description="Start a local web server: a page (report, age, sex, heart rate, sampling "
        "options) showing each generated ECG in the clinical layout with its measured "
        "heart rate and WFDB / PNG / .npz downloads, a side-by-side comparison tab, "
        "and a JSON API (/api/generate, /api/health, /api/model; docs at /docs). "
        "The model compiles in the background at start-up; one request runs at a "
        "time; files live in a temporary directory removed at exit. Ctrl-C stops it.",
    )
    add_checkpoint_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-samples", type=int, default=16, help="most ECGs one request may ask for (default 16)")
    p.set_defaults(func=cmd_serve)


def cmd_generate(args: argparse.Namespace) -> None:
    from diffusets_jax.pipeline import (
        Pipeline,
        check_batch_size,
        check_seed,
        prepare_output_dir,
        validate_conditions,
        write_outputs,
    )

    check_seed(args.seed, "--seed")
    check_batch_size(args.batch_size, "--batch-size")
    single = {"--report": args.report, "--age": args.age, "--sex": args.sex, "--hr": args.hr}
    per_run = {
        "--num-samples": args.num_samples,
        "--experience-index": args.experience_index,
        "--retrieval-k": args.retrieval_k,
    }
    if args.from_csv is not None:
        given = [flag for flag, value in {**single, **per_run}.items() if value is not None]
        if given:
            raise UsageError(
                f"--from-csv takes the conditions from the CSV, one ECG per row, without retrieval; "
                f"drop {', '.join(given)}"
            )
    elif missing := [flag for flag, value in single.items() if value is None]:
        raise UsageError(f"give {', '.join(missing)} (or --from-csv)")
    if args.retrieval_k is not None and args.experience_index is None:
        raise UsageError("--retrieval-k needs --experience-index")
    if args.experience_index is not None and not args.experience_index.is_file():
        raise UsageError(f"--experience-index {args.experience_index} not found")
    num_samples = 4 if args.num_samples is None else args.num_samples
    if args.from_csv is None:
        validate_conditions(args.report, args.age, args.sex, args.hr, num_samples)
    pipeline = Pipeline.from_pretrained(args.checkpoint)
    options = pipeline.sampling(**sampling_options(args))  # checked once, here
    prepare_output_dir(args.out, overwrite=args.overwrite, resume=args.from_csv is not None)  # before the compute
    if args.from_csv is not None:
        from diffusets_jax.batch_generation import generate_from_csv

        done = generate_from_csv(
            pipeline,
            args.from_csv,
            args.out,
            sampling=options,
            seed=args.seed,
            batch_size=args.batch_size,
            png=not args.no_png,
        )
        redone = (
            f" ({len(done.redone)} regenerated: an earlier run's record was incomplete or corrupt)"
            if done.redone
            else ""
        )
        print(
            f"wrote {len(done.generated)} ECGs to {args.out}{redone}, {len(done.already_done)} were already done; "
            f"index: {done.index_path}"
        )
        if done.bad:
            print(f"skipped {len(done.bad)} bad row(s) of {args.from_csv} (row = data line, from 0):")
            for row in done.bad:
                print(f"  row {row.row}: {row.error}")
        if not done.generated and not done.already_done:
            raise UsageError(f"no row of {args.from_csv} could be generated ({len(done.bad)} bad, listed above)")
        return
    report = args.report
    if args.experience_index is not None:
        from diffusets_jax.sediff.augment import augment_report
        from diffusets_jax.sediff.retrieval import ExperienceIndex

        report = augment_report(
            ExperienceIndex.load(args.experience_index),
            report,
            args.age,
            args.sex,
            args.hr,
            5 if args.retrieval_k is None else args.retrieval_k,
            embedder=pipeline.embedder,
        )
        print(f"retrieval-augmented report: {report}")
    result = pipeline(
        report,
        age=args.age,
        sex=args.sex,
        heart_rate=args.hr,
        num_samples=num_samples,
        seed=args.seed,
        sampling=options,
        batch_size=args.batch_size,
        progress=True,
    )
    paths = write_outputs(result, args.out, png=not args.no_png)
    names = ", ".join(p.name for p in paths[:4]) + (", ..." if len(paths) > 4 else "")
    print(f"wrote {len(paths)} ECGs to {args.out} ({names})")


def cmd_serve(args: argparse.Namespace) -> None:
    from diffusets_jax.serve import serve

    serve(args.checkpoint, host=args.host, port=args.port, max_samples=args.max_samples)
