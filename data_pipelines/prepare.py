"""Load a whole dataset into `ECGRecord` objects, skipping (and reporting) bad records."""

from __future__ import annotations

import functools
import multiprocessing
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from typing import Iterable

from tqdm import tqdm

from . import get_reader
from .records import ECGRecord, RecordError


def load_records(
    source: str,
    root,
    record_ids: Iterable[str] | None = None,
    progress: bool = True,
    num_workers: int = 1,
    **reader_options,
) -> tuple[list[ECGRecord], list[tuple[str, str]]]:
    """Load records of `source` (`'ptbxl'`, `'ludb'`, `'mimic'`, `'cinc'`) from `root`.

    Args:
        source: reader name (see `data_pipelines.READERS`).
        root: dataset directory.
        record_ids: ids to load (default: the reader's `list_records(root)`).
        progress: show a tqdm progress bar.
        num_workers: worker processes reading, resampling and detecting QRS in parallel (1: this
            process). Workers are spawned, so a script calling this needs an
            `if __name__ == "__main__":` guard; results are identical for any count.
        **reader_options: passed to `load_record` (e.g. `sampling_rate=100` for PTB-XL).

    Returns:
        `(records, skipped)`: loaded records in input order, and `(record_id, reason)` for each
        record that raised `RecordError`. Other exceptions propagate (they are bugs).

    Raises:
        ValueError: unknown `source` or `num_workers < 1`; RecordError if the dataset tables
        themselves are unreadable.
    """
    reader = get_reader(source)
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    ids = [str(i) for i in (reader.list_records(root) if record_ids is None else record_ids)]
    load = functools.partial(_record_or_reason, source, str(root), reader_options)
    bar = functools.partial(tqdm, total=len(ids), desc=f"loading {source}", unit="rec", disable=not progress)
    if num_workers == 1:
        results = list(bar(map(load, ids)))
    else:
        # spawn, not fork: the parent may already run TensorFlow/JAX threads
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(num_workers, mp_context=context) as pool:
            chunk = max(1, min(16, len(ids) // (4 * num_workers)))
            results = list(bar(pool.map(load, ids, chunksize=chunk)))
    records = [r for r in results if isinstance(r, ECGRecord)]
    skipped = [(i, r) for i, r in zip(ids, results) if isinstance(r, str)]
    return records, skipped


def _record_or_reason(source: str, root: str, reader_options: dict, record_id: str) -> ECGRecord | str:
    """The loaded record, or the reason it was skipped (picklable, for worker processes)."""
    try:
        return get_reader(source).load_record(root, record_id, **reader_options)
    except RecordError as err:
        return err.reason


def format_skipped(skipped: list[tuple[str, str]], max_lines: int = 20) -> str:
    """Human-readable summary of skipped records: count, one line per record (up to `max_lines`)
    and the number of records per reason."""
    if not skipped:
        return "skipped 0 records"
    lines = [f"skipped {len(skipped)} record(s):"]
    lines += [f"  {record_id}: {reason}" for record_id, reason in skipped[:max_lines]]
    if len(skipped) > max_lines:
        lines.append(f"  ... and {len(skipped) - max_lines} more")
    counts = Counter(reason for _, reason in skipped)
    if len(skipped) > 1:
        lines.append("by reason:")
        lines += [f"  {n} x {reason}" for reason, n in counts.most_common()]
    return "\n".join(lines)
