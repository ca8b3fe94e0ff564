"""Data commands: `prepare` (processed set in one .npz) and `build-tfds` (sharded TFDS dataset)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ._common import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    from diffusets_jax.data_pipelines import READERS

    readers = sorted(READERS)
    p = sub.add_parser(
        "prepare",
        help="turn a dataset directory into a processed training set",
        description="Read PTB-XL, LUDB, MIMIC-IV-ECG or PhysioNet/CinC Challenge 2020/2021 records "
        "(CinC: one example per 10 s window), resample to 1024 samples (102.4 Hz), "
        "detect heart rates, embed the report prompts, and write DIR/dataset.npz. "
        "Bad records are skipped and listed with their reason.",
    )
    p.add_argument("--dataset", required=True, choices=readers, help="which reader")
    p.add_argument("--root", required=True, type=Path, help="dataset directory (e.g. .../ptb-xl)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--embedder", default="minilm", help="text embedder: minilm (default, offline) or openai-ada-002")
    p.add_argument(
        "--sampling-rate", type=int, choices=[100, 500], default=500, help="PTB-XL records to read (default 500)"
    )
    p.add_argument("--limit", type=int, default=None, help="only the first N records (for quick trials)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser(
        "build-tfds",
        help="build a sharded TFDS dataset (TFRecords) from a dataset directory",
        description="Like `prepare`, but writes a tensorflow-datasets dataset of sharded TFRecords "
        "(train / validation / test by patient-wise folds) that training streams with "
        "tf.data: for MIMIC-IV-ECG-sized sets. Offline; records are loaded by --workers "
        "processes. Prints the splits, the skipped records, time and peak memory.",
    )
    p.add_argument("--dataset", required=True, choices=readers, help="which reader")
    p.add_argument("--root", required=True, type=Path, help="dataset directory (the manual download)")
    p.add_argument("--data-dir", required=True, type=Path, help="TFDS data directory to write to")
    p.add_argument("--embedder", default="minilm", help="text embedder: minilm (default, offline) or openai-ada-002")
    p.add_argument("--workers", type=int, default=1, help="processes loading records (default 1)")
    p.add_argument(
        "--sampling-rate", type=int, choices=[100, 500], default=None, help="PTB-XL files to read (default 500)"
    )
    p.add_argument(
        "--num-shards",
        type=int,
        default=None,
        help="shard files per split (default: by size); use at least the number of training hosts",
    )
    p.add_argument(
        "--beam-runner",
        default=None,
        help="run the processing as an Apache Beam pipeline on this runner (DirectRunner, DataflowRunner, "
        "SparkRunner, FlinkRunner); needs pip install -e '.[beam]' (docs/training-at-scale.md)",
    )
    p.add_argument("--beam-workers", type=int, default=1, help="DirectRunner worker processes (default 1)")
    p.add_argument(
        "--beam-option",
        action="append",
        default=[],
        metavar="FLAG",
        help="a Beam pipeline flag, repeatable: --beam-option=--project=P --beam-option=--region=R",
    )
    p.add_argument(
        "--shuffle-buffer-mib",
        type=int,
        default=None,
        metavar="MIB",
        help="MiB of examples held in memory while writing the shards before spilling to disk "
        "(default: tfds.DEFAULT_SHUFFLE_BUFFER_MIB, 32; memory stays flat however many records)",
    )
    p.set_defaults(func=cmd_build_tfds)


def cmd_prepare(args: argparse.Namespace) -> None:
    from diffusets_jax.data_pipelines import get_reader
    from diffusets_jax.data_pipelines.prepare import format_skipped, load_records
    from diffusets_jax.data_pipelines.processed import save_processed
    from diffusets_jax.text import get_embedder

    if not args.root.is_dir():
        raise UsageError(f"--root {args.root} is not a directory")
    embedder = get_embedder(args.embedder)
    options = {"sampling_rate": args.sampling_rate} if args.dataset == "ptbxl" else {}
    record_ids = None
    if args.limit is not None:
        record_ids = get_reader(args.dataset).list_records(args.root)[: args.limit]
    records, skipped = load_records(args.dataset, args.root, record_ids, **options)
    print(f"loaded {len(records)} records, skipped {len(skipped)}")
    if skipped:
        print(format_skipped(skipped, max_lines=len(skipped)))
    out = save_processed(records, skipped, args.out, embedder, source=args.dataset, root=str(args.root))
    print(f"wrote {out / 'dataset.npz'} ({len(records)} ECGs, text embedder {embedder.name})")


def cmd_build_tfds(args: argparse.Namespace) -> None:
    from diffusets_jax.data_pipelines.prepare import format_skipped
    from diffusets_jax.data_pipelines.tfds import build_dataset
    from diffusets_jax.data_pipelines.tfds.memory import PeakMemory

    if not args.root.is_dir():
        raise UsageError(f"--root {args.root} is not a directory")
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    start = time.perf_counter()
    with PeakMemory() as memory:
        info = build_dataset(
            args.dataset,
            args.root,
            args.data_dir,
            embedder=args.embedder,
            num_workers=args.workers,
            sampling_rate=args.sampling_rate,
            num_shards=args.num_shards,
            beam_runner=args.beam_runner,
            beam_workers=args.beam_workers,
            beam_options=args.beam_option,
            **({} if args.shuffle_buffer_mib is None else {"shuffle_buffer_mib": args.shuffle_buffer_mib}),
        )
    seconds = time.perf_counter() - start
    splits = ", ".join(
        f"{name} {split.num_examples} ({split.num_shards} shards)" for name, split in info.splits.items()
    )
    print(f"{info.full_name} in {info.data_dir}: {splits}")
    print(format_skipped([tuple(s) for s in info.metadata["skipped"]]))
    print(
        f"built in {seconds:.1f} s with {args.workers} worker(s); peak RSS {memory.main_mib:.0f} MiB "
        f"(main process), {memory.total_mib:.0f} MiB (main + workers)"
    )
