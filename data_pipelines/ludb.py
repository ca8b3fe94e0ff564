"""LUDB 1.0.1 reader (Kalyakulina et al., 2020; PhysioNet, ODC-By 1.0).

Layout: WFDB records `data/N` (500 Hz, 5000 samples, leads `i, ii, iii, avr, avl, avf, v1..v6`)
whose header comments hold `<age>: 51`, `<sex>: F`, `<diagnoses>:` and then one diagnosis per
line (`Rhythm: Sinus bradycardia.`); `ludb.csv` repeats age/sex/diagnoses (cells with embedded
newlines, age `>89`); `data/N.ii` etc. are the cardiologists' P/QRS/T annotations per lead.

Amplitude caveat (measured on all 100 shared records): every lead of every LUDB record spans
exactly 1.0 mV peak-to-peak, i.e. the stored leads are individually rescaled, so absolute
amplitudes and inter-lead relations (Einthoven's law) do not hold. `metadata['notes']` says so.
One subject per record, so `patient_id = record_id` and the fold is `patient_fold(record_id)`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd
import wfdb

from .records import ECGRecord, RecordError, build_record, parse_age, patient_fold, read_wfdb

NAME = "ludb"
AMPLITUDE_NOTE = "LUDB leads are stored rescaled to 1 mV peak-to-peak each; amplitudes are not physical"
_CSV_DIAGNOSIS_COLUMNS = (
    "Rhythms",
    "Electric axis of the heart",
    "Conduction abnormalities",
    "Extrasystolies",
    "Hypertrophies",
    "Cardiac pacing",
    "Ischemia",
    "Non-specific repolarization abnormalities",
    "Other states",
)


def list_records(root) -> list[str]:
    """Record ids (`"1"`, `"2"`, ...) from `root/RECORDS` (lines `data/N`), else `data/*.hea`."""
    listing = Path(root) / "RECORDS"
    if listing.exists():
        names = [Path(line.strip()).name for line in listing.read_text().splitlines() if line.strip()]
    else:
        names = [p.stem for p in (Path(root) / "data").glob("*.hea")]
    return sorted(names, key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))


def clean_diagnosis(line: str) -> str:
    """`'Rhythm: Sinus bradycardia. '` -> `'Sinus bradycardia'` (strip, drop trailing '.', 'Rhythm: ')."""
    text = line.strip().rstrip(".").strip()
    return text[len("Rhythm:") :].strip() if text.startswith("Rhythm:") else text


def parse_comments(comments: list[str]) -> dict:
    """Header comments -> `{'age': str|None, 'sex': str|None, 'diagnoses': [str]}` (diagnoses cleaned)."""
    info: dict = {"age": None, "sex": None, "diagnoses": []}
    in_diagnoses = False
    for line in comments:
        line = line.strip()
        if line.startswith("<age>:"):
            info["age"] = line.split(":", 1)[1].strip() or None
        elif line.startswith("<sex>:"):
            info["sex"] = line.split(":", 1)[1].strip() or None
        elif line.startswith("<diagnoses>:"):
            in_diagnoses = True
        elif in_diagnoses and clean_diagnosis(line):
            info["diagnoses"].append(clean_diagnosis(line))
    return info


@functools.lru_cache(maxsize=4)
def _csv(root: str) -> pd.DataFrame | None:
    """`ludb.csv` indexed by str ID, or None when absent."""
    path = Path(root) / "ludb.csv"
    if not path.exists():
        return None
    return pd.read_csv(path, dtype=str, keep_default_na=False).set_index("ID")


def _csv_info(root, record_id: str) -> dict:
    """Age/sex/diagnoses from `ludb.csv` (column order; cells split on newlines); {} if absent."""
    table = _csv(str(root))
    if table is None or record_id not in table.index:
        return {}
    row = table.loc[record_id]
    diagnoses = [
        clean_diagnosis(part)
        for col in _CSV_DIAGNOSIS_COLUMNS
        if col in row.index
        for part in row[col].splitlines()
        if clean_diagnosis(part)
    ]
    return {
        "age": row.get("Age", "").strip() or None,
        "sex": row.get("Sex", "").strip() or None,
        "diagnoses": diagnoses,
    }


def load_record(root, record_id: str) -> ECGRecord:
    """Load LUDB record `record_id` (`"1"` .. `"200"`) as an `ECGRecord` (source `'ludb'`).

    Age, sex and diagnoses come from the header comments; a missing one is taken from
    `ludb.csv` (age `'>89'` -> 90). Statements are the diagnosis lines in header order,
    cleaned by `clean_diagnosis()`. HR comes from XQRS (`records.detect_heart_rate()`);
    `annotated_heart_rate()` gives the cardiologists' value for checking it.

    Raises:
        RecordError: unreadable record, missing/invalid age or sex, no diagnosis, bad signal, no HR.
    """
    record_id = str(record_id)
    raw = read_wfdb(Path(root) / "data" / record_id, record_id)
    info = parse_comments(raw.comments)
    fallback = _csv_info(root, record_id) if None in (info["age"], info["sex"]) or not info["diagnoses"] else {}
    used_csv = [key for key in ("age", "sex", "diagnoses") if not info[key] and fallback.get(key)]
    for key in used_csv:
        info[key] = fallback[key]
    notes = [AMPLITUDE_NOTE] + ([f"{', '.join(used_csv)} from ludb.csv"] if used_csv else [])
    return build_record(
        record_id=record_id,
        patient_id=record_id,
        raw=raw,
        age=parse_age(info["age"]),
        sex=info["sex"],
        statements=info["diagnoses"],
        fold=patient_fold(record_id),
        source=NAME,
        metadata={"notes": notes},
    )


def annotated_heart_rate(root, record_id: str, lead: str = "ii") -> float:
    """Reference heart rate (bpm) from the cardiologists' QRS annotations of `lead`.

    `60 / mean(RR)` over the annotated QRS peaks (symbol `'N'`; the annotations cover most of
    the 10 s but not its edges). All `'N'` marks are used, including the few without a marked
    onset `'('` (e.g. record 95), so no annotated beat is dropped.

    Raises:
        RecordError: unreadable annotation file or fewer than 2 annotated QRS complexes.
    """
    path = Path(root) / "data" / str(record_id)
    try:
        ann = wfdb.rdann(str(path), lead)
    except Exception as err:
        raise RecordError(record_id, f"cannot read annotations {path}.{lead}: {type(err).__name__}: {err}") from err
    peaks = np.array([s for s, sym in zip(ann.sample, ann.symbol) if sym == "N"])
    if peaks.size < 2:
        raise RecordError(record_id, f"{path}.{lead} has fewer than 2 annotated QRS complexes")
    return float(60.0 / (np.mean(np.diff(peaks)) / ann.fs))
