"""Build one TFDS dataset and report wall time and peak memory.

    python -m data_pipelines.tfds ptbxl /data/ptb-xl /data/tfds --num-workers 2

Prints the splits, the skipped records, the wall time and the peak resident memory (RSS) of this
process and of this process plus its worker processes together (sampled every 0.1 s).
"""

from __future__ import annotations

import argparse
import threading
import time

import psutil

from data_pipelines.prepare import format_skipped

from . import BUILDERS, build_dataset


class PeakMemory:
    """Samples the RSS of this process and of it plus its descendants in a background thread."""

    def __init__(self, interval_s: float = 0.1):
        self.main_mib = self.total_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval_s,), daemon=True)

    def _run(self, interval_s: float) -> None:
        me = psutil.Process()
        while not self._stop.wait(interval_s):
            main = me.memory_info().rss
            total = main
            for child in me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.NoSuchProcess:  # a worker that just exited
                    pass
            self.main_mib = max(self.main_mib, main / 2**20)
            self.total_mib = max(self.total_mib, total / 2**20)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(BUILDERS))
    parser.add_argument("manual_dir", help="the downloaded dataset directory")
    parser.add_argument("data_dir", help="TFDS data directory to write to")
    parser.add_argument("--embedder", default="minilm")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--sampling-rate", type=int, default=None, help="ptbxl only: 500 (default) or 100")
    parser.add_argument("--num-shards", type=int, default=None)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with PeakMemory() as memory:
        info = build_dataset(args.name, args.manual_dir, args.data_dir, embedder=args.embedder,
                             num_workers=args.num_workers, sampling_rate=args.sampling_rate,
                             num_shards=args.num_shards)
    seconds = time.perf_counter() - start
    splits = ", ".join(f"{name} {split.num_examples} ({split.num_shards} shards)"
                       for name, split in info.splits.items())
    print(f"{info.full_name} in {info.data_dir}: {splits}")
    print(format_skipped([tuple(s) for s in info.metadata["skipped"]]))
    print(f"built in {seconds:.1f} s with {args.num_workers} worker(s); peak RSS {memory.main_mib:.0f} MiB "
          f"(main process), {memory.total_mib:.0f} MiB (main + workers)")


if __name__ == "__main__":
    main()
