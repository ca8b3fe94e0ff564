"""Load a whole dataset into :class:`ECGRecord` objects, skipping (and reporting) bad records."""

from __future__ import annotations

from collections import Counter
from typing import Iterable

from tqdm import tqdm

from . import get_reader
from .records import ECGRecord, RecordError


def load_records(source: str, root, record_ids: Iterable[str] | None = None, progress: bool = True,
                 **reader_options) -> tuple[list[ECGRecord], list[tuple[str, str]]]:
    """Load records of ``source`` (``'ptbxl'``, ``'ludb'``, ``'mimic'``) from ``root``.

    Args:
        source: reader name (see ``data_pipelines.READERS``).
        root: dataset directory.
        record_ids: ids to load (default: the reader's ``list_records(root)``).
        progress: show a tqdm progress bar.
        **reader_options: passed to ``load_record`` (e.g. ``sampling_rate=100`` for PTB-XL).

    Returns:
        ``(records, skipped)``: loaded records in input order, and ``(record_id, reason)`` for each
        record that raised :class:`RecordError`. Other exceptions propagate (they are bugs).

    Raises:
        ValueError: unknown ``source``; RecordError if the dataset tables themselves are unreadable.
    """
    reader = get_reader(source)
    ids = [str(i) for i in (reader.list_records(root) if record_ids is None else record_ids)]
    records, skipped = [], []
    for record_id in tqdm(ids, desc=f"loading {source}", unit="rec", disable=not progress):
        try:
            records.append(reader.load_record(root, record_id, **reader_options))
        except RecordError as err:
            skipped.append((record_id, err.reason))
    return records, skipped


def format_skipped(skipped: list[tuple[str, str]], max_lines: int = 20) -> str:
    """Human-readable summary of skipped records: count, one line per record (up to ``max_lines``)
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
