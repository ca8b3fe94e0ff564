"""Peak memory and throughput of a MIMIC-layout TFDS build against the number of records (issue 17).

    python benchmarks/tfds_scale.py --sizes 1000 5000 --runs stream:1 stream:2 beam:1 beam:2 \\
        --corpus /tmp/mimic-corpus --out benchmarks/results/tfds_scale.json

Writes (once, reused) a synthetic MIMIC-IV-ECG-layout corpus of `max(sizes)` studies with
tests/data/make_mimic_corpus.py, then builds its first N studies, for each N and each run, in a
fresh process: `stream:W` builds with W local worker processes, `beam:W` with the Apache Beam
DirectRunner and W workers (needs `pip install -e ".[beam]"`); a `:bufM` suffix sets the TFDS
writer's in-memory buffer to M MiB (`shuffle_buffer_mib`; default TFDS's 1000 MiB). Reports the
peak resident memory (RSS) of the build process and of it plus all its descendant processes
(psutil, sampled every 0.1 s, so a shorter spike can be missed), the build time (in the build
process, around `build_dataset`: it includes loading the text model, not Python's imports) and
records/s = N / build time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def build_once(run: str, corpus: str, data_dir: str, n: int) -> None:
    """(In the child process) build the first `n` studies and print one JSON line."""
    sys.path.insert(0, str(ROOT))
    import pandas as pd

    from diffusets_jax.data_pipelines.tfds import build_dataset

    mode, workers, *rest = run.split(":")
    buffer = int(rest[0].removeprefix("buf")) if rest else None
    ids = [str(i) for i in pd.read_csv(Path(corpus) / "record_list.csv")["study_id"][:n]]
    options = (
        {"beam_runner": "DirectRunner", "beam_workers": int(workers)}
        if mode == "beam"
        else {"num_workers": int(workers)}
    )
    start = time.perf_counter()
    info = build_dataset("mimic", corpus, data_dir, record_ids=ids, shuffle_buffer_mib=buffer, **options)
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "seconds": seconds,
                "examples": sum(s.num_examples for s in info.splits.values()),
                "skipped": len(info.metadata["skipped"]),
            }
        )
    )


def measure(run: str, corpus: Path, n: int) -> dict:
    """Run one build in a child process, sampling the RSS of it and its descendants."""
    with tempfile.TemporaryDirectory() as data_dir:
        child = subprocess.Popen(
            [sys.executable, __file__, "--build", run, str(corpus), data_dir, str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        process, main_peak, total_peak = psutil.Process(child.pid), 0, 0
        while child.poll() is None:
            try:
                main = process.memory_info().rss
                total = main + sum(_rss(p) for p in process.children(recursive=True))
            except psutil.NoSuchProcess:
                break
            main_peak, total_peak = max(main_peak, main), max(total_peak, total)
            time.sleep(0.1)
        out = child.communicate()[0]
    if child.returncode != 0:
        raise RuntimeError(f"build {run} of {n} records failed (exit {child.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    return {
        "run": run,
        "records": n,
        **result,
        "records_per_s": n / result["seconds"],
        "peak_rss_main_mib": main_peak / 2**20,
        "peak_rss_total_mib": total_peak / 2**20,
    }


def _rss(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except psutil.NoSuchProcess:  # a worker that just exited
        return 0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--runs", nargs="+", default=["stream:1", "stream:2", "beam:1", "beam:2"])
    parser.add_argument("--corpus", type=Path, default=Path(tempfile.gettempdir()) / "mimic-corpus")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    parser.add_argument("--build", nargs=4, metavar=("RUN", "CORPUS", "DATA_DIR", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build:
        build_once(args.build[0], args.build[1], args.build[2], int(args.build[3]))
        return
    sys.path.insert(0, str(ROOT / "tests" / "data"))
    from make_mimic_corpus import make_corpus

    n_max = max(args.sizes)
    if (
        not (args.corpus / "record_list.csv").exists()
        or sum(1 for _ in open(args.corpus / "record_list.csv")) - 1 < n_max
    ):
        print(f"writing a {n_max}-study corpus to {args.corpus} ...", flush=True)
        make_corpus(args.corpus, n_max)
    rows = []
    print("| run | records | examples | skipped | build s | records/s | peak RSS main MiB | main + workers MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for run in args.runs:
        for n in args.sizes:
            row = measure(run, args.corpus, n)
            rows.append(row)
            print(
                f"| {run} | {n} | {row['examples']} | {row['skipped']} | {row['seconds']:.0f} | "
                f"{row['records_per_s']:.1f} | {row['peak_rss_main_mib']:.0f} | {row['peak_rss_total_mib']:.0f} |",
                flush=True,
            )
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
