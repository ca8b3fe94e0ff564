"""MIMIC-IV-ECG 1.0 reader (Gow et al., PhysioNet), the DiffuSETS training set.

Layout under `root`: `record_list.csv` (`subject_id, study_id, file_name, ecg_time, path`),
`machine_measurements.csv` (`subject_id, study_id, ..., report_0..report_17, ..., rr_interval`
in ms, ...) and WFDB records `root/<path>` (500 Hz, 5000 samples, mV, leads
`I, II, III, aVR, aVF, aVL, V1..V6`: aVF before aVL; `records.reorder_leads()` fixes it).
Age/sex: optional `patients.csv` (MIMIC-IV `hosp/patients`: `subject_id, gender, anchor_age`),
otherwise `age`/`gender` columns of `record_list.csv`. `anchor_age` is the age at the
patient's anchor year, not at the ECG, as in the official cache.

Source: official `dataset/mimic_iv_ecg_dataset.py` and `vae/vae_encoding.py`: text = non-empty
`report_*` columns in order, joined with `'|'`.
Heart rate: official code divides `rr_interval` (ms) by 1000 and then compares the seconds with
300/1500, which is always out of range, so it always fell back to XQRS. Here the unit bug is fixed:
`HR = 60000 / rr_interval` when `300 <= rr_interval <= 1500` ms (40-200 bpm), otherwise (NaN,
the 29999 "missing" code, or out of range) HR comes from XQRS on the signal.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pandas as pd

from .records import ECGRecord, RecordError, build_record, patient_fold, read_wfdb

NAME = "mimic"
RR_RANGE_MS = (300.0, 1500.0)
REPORT_COLUMNS = tuple(f"report_{i}" for i in range(18))


@functools.lru_cache(maxsize=2)
def _tables(root: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """(record_list, machine_measurements, patients or None), first two indexed by str study_id."""
    root_path = Path(root)
    try:
        records = pd.read_csv(root_path / "record_list.csv", dtype={"study_id": str})
        measurements = pd.read_csv(root_path / "machine_measurements.csv", dtype={"study_id": str}, low_memory=False)
        patients_path = root_path / "patients.csv"
        patients = pd.read_csv(patients_path).set_index("subject_id") if patients_path.exists() else None
    except (OSError, ValueError, KeyError) as err:
        raise RecordError(root, f"cannot read MIMIC-IV-ECG tables in {root}: {err}") from err
    return records.set_index("study_id"), measurements.set_index("study_id"), patients


def list_records(root) -> list[str]:
    """All `study_id` values (as strings) in `root/record_list.csv`, in file order."""
    return list(_tables(str(root))[0].index)


def _number(value) -> float | None:
    """`float(value)`, or None for missing/NaN/non-numeric values."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def rr_heart_rate(rr_interval_ms) -> float | None:
    """`60000 / rr` (bpm) if `rr` (ms) is a number within `RR_RANGE_MS`, else None."""
    rr = _number(rr_interval_ms)
    return 60000.0 / rr if rr is not None and RR_RANGE_MS[0] <= rr <= RR_RANGE_MS[1] else None


def _patient(root: str, subject_id: int, record_row: pd.Series, record_id: str) -> tuple[object, object]:
    """(age, sex) from patients.csv, else record_list `age`/`gender`; RecordError if neither."""
    patients = _tables(root)[2]
    if patients is not None:
        if subject_id not in patients.index:
            raise RecordError(record_id, f"subject_id {subject_id} has no row in {Path(root) / 'patients.csv'}")
        row = patients.loc[subject_id]
        return row.get("anchor_age"), row.get("gender")
    if "age" in record_row.index and "gender" in record_row.index:
        return record_row["age"], record_row["gender"]
    raise RecordError(record_id, "no patients.csv and no age/gender columns in record_list.csv")


def load_record(root, record_id: str) -> ECGRecord:
    """Load MIMIC-IV-ECG study `record_id` (`study_id`) as an `ECGRecord` (source `'mimic'`).

    `patient_id` is `subject_id`; `fold = patient_fold(subject_id)`. `metadata` holds
    `subject_id`, `rr_interval` (ms or None) and `hr_source` (`'rr_interval'` or `'xqrs'`).

    Raises:
        RecordError: study not in both CSVs, no patient age/sex, empty report, unreadable or bad
        signal, no usable HR.
    """
    record_id = str(record_id)
    records, measurements, _ = _tables(str(root))
    if record_id not in records.index or record_id not in measurements.index:
        raise RecordError(record_id, f"study_id missing from record_list.csv or machine_measurements.csv in {root}")
    rec_row, meas_row = records.loc[record_id], measurements.loc[record_id]
    subject_id = int(rec_row["subject_id"])
    age, sex = _patient(str(root), subject_id, rec_row, record_id)
    statements = [meas_row[c] for c in REPORT_COLUMNS if c in meas_row.index and isinstance(meas_row[c], str)]
    rr = meas_row.get("rr_interval")
    heart_rate = rr_heart_rate(rr)
    raw = read_wfdb(Path(root) / rec_row["path"], record_id)
    metadata = {
        "subject_id": subject_id,
        "rr_interval": _number(rr),
        "hr_source": "xqrs" if heart_rate is None else "rr_interval",
    }
    return build_record(
        record_id=record_id,
        patient_id=str(subject_id),
        raw=raw,
        age=age,
        sex=sex,
        statements=statements,
        fold=patient_fold(str(subject_id)),
        source=NAME,
        heart_rate=heart_rate,
        metadata=metadata,
    )
