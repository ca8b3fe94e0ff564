"""Saving and loading ECGs: WFDB records (one per ECG) and NumPy `.npz` batches.

Signals are `(num_samples, 12)` float arrays in mV, leads in `constants.LEADS` order,
`(1024, 12)` at 102.4 Hz for everything this project generates.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .constants import FS, LEADS, NUM_LEADS, NUM_SAMPLES

#: Digital units per mV when amplitudes allow it: 1 uV steps, so rounding error <= 0.5 uV.
ADC_GAIN = 1000.0
_ADC_LIMIT = 32000  # stay clear of the int16 ends (-32768 is WFDB's NaN marker)
_RECORD_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _check_signal(signal) -> np.ndarray:
    signal = np.asarray(signal, dtype=np.float64)
    if signal.ndim != 2 or signal.shape[1] != NUM_LEADS:
        raise ValueError(f"signal must have shape (num_samples, {NUM_LEADS}) in mV, got {signal.shape}")
    if not np.isfinite(signal).all():
        raise ValueError("signal contains NaN or infinite values")
    return signal


def write_wfdb(
    signal,
    directory: str | Path,
    record_name: str,
    fs: float = FS,
    comments: Sequence[str] | Mapping[str, object] = (),
) -> Path:
    """Write one ECG as a WFDB record: `<directory>/<record_name>.hea` and `.dat`.

    Format 16 (int16) with baseline 0 and, per lead, gain `ADC_GAIN` = 1000 units/mV
    (1 uV resolution); a lead whose peak exceeds 32 mV gets the largest whole gain that fits
    int16 instead. Leads are named as in `LEADS`, units 'mV', fs stored as given (102.4).

    Args:
        signal: `(num_samples, 12)` array in mV, leads in `LEADS` order (`(1024, 12)`).
        directory: output folder, created if missing.
        record_name: letters, digits, '-' and '_' only (WFDB's rule).
        fs: sampling frequency in Hz.
        comments: header comment lines, or a mapping written as `"key: value"` lines, e.g.
            `{"report": ..., "age": 63, "sex": "M", "hr": 72.0, "seed": 0}`. WFDB headers are
            ASCII (`wfdb.rdrecord` drops other characters), so a line `key: value` with
            non-ASCII text is written with `?` for those characters and followed by
            `key_escaped: value` escaped as the body of a JSON string (`\\uXXXX`, a UTF-16
            pair above U+FFFF); another non-ASCII line is followed by `escaped: <line>` so.
            `comment_values()` reads the original text back.

    Returns:
        The record path without extension (what `wfdb.rdrecord` and `read_wfdb()` take).

    Raises:
        ValueError: for a bad record name, signal shape, non-finite values, an amplitude over
            32,000 mV, or a comment containing a line break.
    """
    import wfdb

    if not _RECORD_NAME.fullmatch(record_name):
        raise ValueError(f"record_name {record_name!r} may only contain letters, digits, '-' and '_'")
    signal = _check_signal(signal)
    if isinstance(comments, Mapping):
        comments = [f"{key}: {value}" for key, value in comments.items()]
    comments = [str(line) for line in comments]
    if any("\n" in line or "\r" in line for line in comments):
        raise ValueError("WFDB comments must be single lines")
    comments = [ascii_line for line in comments for ascii_line in _ascii_comment(line)]
    peak = np.abs(signal).max(axis=0)
    if peak.max() > _ADC_LIMIT:
        raise ValueError(f"amplitude {peak.max():.1f} mV is too large to store as int16 in mV")
    gains = [ADC_GAIN if p * ADC_GAIN <= _ADC_LIMIT else float(_ADC_LIMIT // p) for p in peak]

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(
        record_name,
        fs=float(fs),
        units=["mV"] * NUM_LEADS,
        sig_name=list(LEADS),
        p_signal=signal,
        fmt=["16"] * NUM_LEADS,
        adc_gain=gains,
        baseline=[0] * NUM_LEADS,
        comments=comments,
        write_dir=str(directory),
    )
    return directory / record_name


_KEY_LINE = re.compile(r"(\w+): (.*)", re.ASCII)


def _ascii_comment(line: str) -> list[str]:
    """A header comment line as ASCII lines (see `write_wfdb()`)."""
    if line.isascii():
        return [line]
    key, value = match.groups() if (match := _KEY_LINE.fullmatch(line)) else ("", line)
    escaped = json.dumps(value, ensure_ascii=True)[1:-1]
    return [line.encode("ascii", "replace").decode(), f"{key}_escaped: {escaped}" if key else f"escaped: {escaped}"]


def comment_values(comments: Sequence[str]) -> dict[str, str]:
    """The `key: value` header comment lines (`read_wfdb`'s or `wfdb.rdrecord(...).comments`)
    as a dict, with the text of `key_escaped` lines (non-ASCII, see `write_wfdb()`) decoded
    into `key`."""
    values = {}
    for line in comments:
        if match := _KEY_LINE.fullmatch(line):
            values[match[1]] = match[2]
    for key in [k for k in values if k.endswith("_escaped")]:
        values[key[: -len("_escaped")]] = json.loads(f'"{values.pop(key)}"')
    return values


def read_wfdb(path: str | Path) -> tuple[np.ndarray, float, list[str]]:
    """Read a 12-lead WFDB record (ours, or e.g. PTB-XL / MIMIC-IV-ECG).

    Args:
        path: record path, with or without the `.hea` / `.dat` extension.

    Returns:
        `(signal, fs, comments)`: float32 `(num_samples, 12)` in mV with leads reordered to
        `LEADS` by name (case-insensitive, so PTB-XL's 'AVR' and MIMIC's aVF-before-aVL order
        both work; NaN kept), fs in Hz, and the header comment lines.

    Raises:
        ValueError: if the record lacks one of the 12 standard leads.
    """
    import wfdb

    path = Path(path)
    if path.suffix in (".hea", ".dat"):
        path = path.with_suffix("")
    record = wfdb.rdrecord(str(path), physical=True)
    names = [name.lower() for name in record.sig_name]
    missing = [lead for lead in LEADS if lead.lower() not in names]
    if missing:
        raise ValueError(f"record {path} lacks leads {missing} (has {record.sig_name})")
    order = [names.index(lead.lower()) for lead in LEADS]
    signal = record.p_signal[:, order].astype(np.float32)
    return signal, float(record.fs), list(record.comments)


def wfdb_record_is_complete(path: str | Path, num_samples: int = NUM_SAMPLES) -> bool:
    """Whether a record written by `write_wfdb()` reads back whole: its header and data parse,
    it has 12 signals of `num_samples` samples, and the data match the header's checksums (so a
    truncated, emptied or altered `.hea` / `.dat` is not complete)."""
    import wfdb

    try:
        record = wfdb.rdrecord(str(path), physical=False)
        return (
            record.n_sig == NUM_LEADS
            and record.sig_len == num_samples
            and record.d_signal.shape == (num_samples, NUM_LEADS)
            and list(record.checksum) == list(record.calc_checksum())
        )
    except Exception:  # noqa: BLE001 - whatever wfdb raises on a broken file, the record is not complete
        return False


def write_npz(path: str | Path, signals, **metadata) -> Path:
    """Save a batch of ECGs and per-batch metadata to a compressed `.npz`.

    Args:
        path: output file (folder created if missing).
        signals: `(B, 1024, 12)` array in mV, leads in `LEADS` order; stored as float32
            under the key `signals`.
        **metadata: extra arrays, e.g. `reports=[...]`, `age=[...]`, `seed=0`; each is
            stored with `np.asarray` and must not need pickle (no object arrays).

    Returns:
        The path written; read it back with `np.load(path)`.

    Raises:
        ValueError: for a wrong signal shape, a metadata key `signals` or object metadata.
    """
    signals = np.asarray(signals, dtype=np.float32)
    if signals.ndim != 3 or signals.shape[1:] != (NUM_SAMPLES, NUM_LEADS):
        raise ValueError(f"signals must have shape (B, {NUM_SAMPLES}, {NUM_LEADS}) in mV, got {signals.shape}")
    if "signals" in metadata:
        raise ValueError("'signals' is reserved for the ECG array")
    arrays = {key: np.asarray(value) for key, value in metadata.items()}
    objects = [key for key, value in arrays.items() if value.dtype == object]
    if objects:
        raise ValueError(f"metadata {objects} must be numbers or strings, not objects")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a file object keeps np.savez from appending '.npz'
        np.savez_compressed(f, signals=signals, **arrays)
    return path
