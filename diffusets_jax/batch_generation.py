"""Batch generation from a conditions CSV: one WFDB record per row, an index, resumable.

`diffusets-jax generate --from-csv conditions.csv --out DIR`. The CSV has the columns `report`
(statements separated by '|'), `age` (years), `sex` (M/F) and `hr` (bpm), and optionally `seed`.
Row i (0-based, the i-th data line) is written as `DIR/ecg_{i:05d}.hea/.dat` (+ `.png`) and listed
in `DIR/index.csv` with its conditions, the sampling options and `status` ('ok' or 'error' with the
message). Row i's ECG comes from the key `fold_in(key(seed), 0)` if it has a seed, else
`fold_in(key(--seed), i)`: independent of its batch, so a resumed run writes the same ECGs.

Resuming: rows whose index entry is 'ok' with the same conditions and options, and whose record
reads back complete (`ecg_io.wfdb_record_is_complete`: 12 signals of 1024 samples matching the
header's checksums), are not generated again; a row whose record is truncated or corrupt is
generated again (`BatchReport.redone`). The index is rewritten after every batch, so an
interruption loses at most the batch in flight.
"""

from __future__ import annotations

import csv
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from diffusets_jax.constants import SEX_CODES
from diffusets_jax.errors import DataError, InputError, MissingFileError
from diffusets_jax.pipeline import (
    Pipeline,
    Sampling,
    check_batch_size,
    check_seed,
    prepare_output_dir,
    row_keys,
    short_repr,
    validate_conditions,
)

REQUIRED_COLUMNS = ("report", "age", "sex", "hr")
INDEX_COLUMNS = (
    "row",
    "record",
    "status",
    "message",
    "report",
    "age",
    "sex",
    "hr",
    "seed",
    "sampler",
    "num_steps",
    "guidance_scale",
    "eta",
    "exact_limb_leads",
)


@dataclass
class Row:
    """One CSV row, parsed (`error` set when it cannot be generated)."""

    row: int
    report: str
    age: float | None = None
    sex: str | None = None
    hr: float | None = None
    seed: int | None = None
    error: str = ""

    @property
    def record(self) -> str:
        return f"ecg_{self.row:05d}"


@dataclass
class BatchReport:
    """What `generate_from_csv` did: rows generated now, already done before, and bad rows;
    `redone`: the generated rows an earlier run had finished but whose record was incomplete or corrupt."""

    generated: list[int]
    already_done: list[int]
    bad: list[Row]
    index_path: Path
    redone: list[int] = field(default_factory=list)


def read_conditions(path: str | Path, base_seed: int = 0) -> list[Row]:
    """Parse the conditions CSV (UTF-8, with or without a byte-order mark); a bad row gets `error`
    (naming the column) instead of raising. Bytes that are not UTF-8 (a Latin-1 or binary file)
    fail only their own rows, each named.

    Raises DataError (a ValueError) naming the file if it lacks a required column, has no data
    row or cannot be parsed as CSV (naming the line), MissingFileError if it is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"conditions CSV {path} not found")
    # Bytes that are not UTF-8 are kept as surrogates, so that only their row is refused (`_parse_row`).
    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as file:
        reader = csv.DictReader(file)
        rows = []
        try:
            columns = [_printable(c).strip().lower() for c in reader.fieldnames or []]
            missing = [c for c in REQUIRED_COLUMNS if c not in columns]
            if missing:
                raise DataError(
                    f"{path}: missing column(s) {', '.join(missing)}; need {', '.join(REQUIRED_COLUMNS)} "
                    f"(and optionally seed), found {short_repr(', '.join(columns) or 'none')}"
                )
            for i, raw in enumerate(reader):
                values = {_printable(k).strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
                rows.append(_parse_row(i, values, base_seed))
        except csv.Error as error:  # e.g. an over-long field or a NUL byte: the file cannot be read past it
            raise DataError(f"{path}: not a readable CSV after line {reader.line_num} ({error})") from None
    if not rows:
        raise DataError(f"{path} has no data rows")
    return rows


def _parse_row(i: int, values: dict, base_seed: int) -> Row:
    not_utf8 = [name for name, value in values.items() if value != _printable(value)]
    values = {name: _printable(value) for name, value in values.items()}
    row = Row(row=i, report=values.get("report", ""))
    try:
        if not_utf8:
            raise InputError(f"{', '.join(not_utf8)} is not UTF-8 text (save the CSV as UTF-8)")
        row.age, row.hr = (_number(values, name) for name in ("age", "hr"))
        seed = values.get("seed", "")
        row.seed = check_seed(seed) if seed else None
        statements, row.sex = validate_conditions(row.report, row.age, values.get("sex", ""), row.hr)
        row.report = "|".join(statements)
    except ValueError as error:
        row.error = str(error).replace("heart_rate", "hr")
    return row


_SURROGATES = re.compile("[\ud800-\udfff]")


def _printable(text: str) -> str:
    """`text` with every surrogate code point replaced by U+FFFD: the undecodable bytes
    `surrogateescape` kept (U+DC80-U+DCFF), and any lone surrogate a caller passes in."""
    return _SURROGATES.sub("\ufffd", text)


def _number(values: dict, name: str) -> float:
    try:
        value = float(values.get(name, ""))
    except ValueError:
        raise InputError(f"{name} must be a number, got {short_repr(values.get(name, ''))}") from None
    if not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {short_repr(values.get(name))}")
    return value


def _index_entry(row: Row, options: Sampling, status: str, message: str = "") -> dict:
    return {
        "row": row.row,
        "record": row.record if status == "ok" else "",
        "status": status,
        "message": message,
        "report": row.report,
        "age": "" if row.age is None else f"{row.age:g}",
        "sex": row.sex or "",
        "hr": "" if row.hr is None else f"{row.hr:g}",
        "seed": "" if row.seed is None else row.seed,
        "sampler": options.sampler,
        "num_steps": options.num_steps,
        "guidance_scale": f"{options.guidance_scale:g}",
        "eta": f"{options.eta:g}",
        "exact_limb_leads": options.exact_limb_leads,
    }


def _read_index(path: Path) -> dict[int, dict]:
    """An earlier run's `index.csv`, by row; DataError naming the file (and line) if it is not one."""
    if not path.is_file():
        return {}
    advice = "use --overwrite to start over, or another --out"
    try:
        with path.open(newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            missing = [c for c in ("row", "status") if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(
                    f"{path} is not the index of a `generate --from-csv` run (no column {', '.join(missing)}): {advice}"
                )
            entries = {}
            for entry in reader:
                try:
                    entries[int(entry["row"])] = entry
                except (TypeError, ValueError):
                    raise DataError(
                        f"{path}, line {reader.line_num}: row {short_repr(entry['row'])} is not a row number: {advice}"
                    ) from None
            return entries
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path} is not a readable index ({type(error).__name__}): {advice}") from None


def _done(entry: dict | None, row: Row, options: Sampling) -> bool:
    """Whether an earlier run's index lists this row as written with the same conditions and options."""
    if entry is None or entry.get("status") != "ok":
        return False
    return {k: str(v) for k, v in _index_entry(row, options, "ok").items()} == {
        k: entry.get(k, "") for k in INDEX_COLUMNS
    }


def generate_from_csv(
    pipeline: Pipeline,
    csv_path: str | Path,
    out_dir: str | Path,
    *,
    sampling: Sampling | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    png: bool = True,
    progress: bool = True,
) -> BatchReport:
    """Generate one ECG per valid row of `csv_path` into `out_dir` (see the module docstring).

    Args:
      sampling: the sampling options, a `Sampling` (`pipeline.sampling(...)`, not checked again);
        None: the model's defaults. Listed in every index entry.
      seed: the base seed of rows without a `seed` column value.
      batch_size: ECGs per compiled sampler call (default the model's `sampling.batch_size`);
        the index is updated after each batch.
    Raises:
      FileNotFoundError / ValueError for a missing file or column (bad rows are reported instead), or
      an output directory that cannot be written or holds another kind of run (`prepare_output_dir`)
      or an unreadable `index.csv` (DataError); InputError for a bad seed or batch size.
    """
    from diffusets_jax.ecg_io import wfdb_record_is_complete, write_wfdb
    from diffusets_jax.plotting import plot_ecg
    from diffusets_jax.text import build_prompt, truncation_warning

    seed = check_seed(seed)
    batch_size = check_batch_size(batch_size)
    options = pipeline.sampling() if sampling is None else sampling
    out_dir = prepare_output_dir(out_dir, resume=True)
    rows = read_conditions(csv_path, seed)
    index_path = out_dir / "index.csv"
    previous = _read_index(index_path)
    bad = [r for r in rows if r.error]
    valid = [r for r in rows if not r.error]
    listed = [r for r in valid if _done(previous.get(r.row), r, options)]
    broken = {r.row for r in listed if not wfdb_record_is_complete(out_dir / r.record)}
    already = [r for r in listed if r.row not in broken]
    done_rows = {r.row for r in already}
    pending = [r for r in valid if r.row not in done_rows]
    entries = {r.row: previous[r.row] for r in already}
    entries.update({r.row: _index_entry(r, options, "error", r.error) for r in bad})
    _write_index(index_path, entries)

    batch_size = batch_size or pipeline.config.sampling.batch_size
    prompts = [build_prompt(r.report.split("|")) for r in pending]
    unique = sorted(set(prompts))
    # Embedding first: a cache miss records the token counts the warnings below read.
    embeddings = dict(zip(unique, pipeline.embedder.embed(unique))) if unique else {}
    for r in pending:
        if message := truncation_warning(r.report.split("|"), pipeline.embedder):
            warnings.warn(f"row {r.row}: {message}", stacklevel=2)
    generated = []
    with tqdm(
        total=len(pending),
        desc=f"generating ({options.sampler}, {options.num_steps} steps)",
        unit="ECG",
        disable=not progress,
    ) as bar:
        for first in range(0, len(pending), batch_size):
            batch = pending[first : first + batch_size]
            keys = row_keys(
                np.array([seed if r.seed is None else r.seed for r in batch]),
                np.array([r.row if r.seed is None else 0 for r in batch]),
            )
            signals = pipeline.generate_for_conditions(
                np.stack([embeddings[p] for p in prompts[first : first + batch_size]]),
                np.array([SEX_CODES[r.sex] for r in batch], np.float32),
                np.array([r.age for r in batch], np.float32),
                np.array([r.hr for r in batch], np.float32),
                keys=keys,
                sampling=options,
                batch_size=len(batch),
            )
            for r, signal in zip(batch, signals):
                comments = {
                    "report": r.report,
                    "age": f"{r.age:g}",
                    "sex": r.sex,
                    "heart_rate_bpm": f"{r.hr:g}",
                    "seed": str(seed if r.seed is None else r.seed),
                    "row": str(r.row),
                    "sampler": options.sampler,
                    "num_steps": str(options.num_steps),
                    "guidance_scale": f"{options.guidance_scale:g}",
                    "generator": "diffusets-jax",
                }
                try:
                    write_wfdb(signal, out_dir, r.record, comments=comments)
                    if png:
                        plot_ecg(
                            signal,
                            title=f"row {r.row}: {r.report} | {r.sex}, {r.age:g} y, {r.hr:g} bpm",
                            path=out_dir / f"{r.record}.png",
                        )
                except ValueError as error:  # e.g. non-finite values: list the row, write the others
                    r.error = f"could not write the record: {error}"
                    bad.append(r)
                    entries[r.row] = _index_entry(r, options, "error", r.error)
                    continue
                generated.append(r.row)
                entries[r.row] = _index_entry(r, options, "ok")
            _write_index(index_path, entries)
            bar.update(len(batch))
    _write_manifest(out_dir, entries)
    return BatchReport(generated, [r.row for r in already], bad, index_path, sorted(broken))


def _write_manifest(out_dir: Path, entries: dict[int, dict]) -> None:
    """`MANIFEST.json` (size, SHA-256) of `index.csv` and the files of the rows written 'ok' (rewritten
    at the end of every run, a resumed one included)."""
    from diffusets_jax.checkpoints import write_manifest

    records = {entry["record"] for entry in entries.values() if entry.get("status") == "ok"}
    names = [
        path.name for path in out_dir.iterdir() if path.suffix in (".hea", ".dat", ".png") and path.stem in records
    ]
    write_manifest(out_dir, ["index.csv", *names])


def _write_index(path: Path, entries: dict[int, dict]) -> None:
    """Rewrite the index atomically (a partial file never replaces a good one)."""
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=INDEX_COLUMNS)
        writer.writeheader()
        for row in sorted(entries):
            writer.writerow({k: entries[row].get(k, "") for k in INDEX_COLUMNS})
    tmp.replace(path)
