"""Common record type and signal checks shared by every dataset reader.

Every reader turns one raw recording into an `ECGRecord`: 12 leads in
`LEADS` order, 10 s resampled to `NUM_SAMPLES` = 1024 points (`FS` = 102.4 Hz), in mV,
plus the patient variables the DiffuSETS condition uses (age, sex, heart rate) and the report
statements. Anything unusable raises `RecordError`, which names the record and the reason.

Source: DiffuSETS official code, `dataset/mimic_iv_ecg_dataset.py` (`np.nan_to_num` then
`scipy.signal.resample(x, 1024)`; HR from WFDB XQRS as `60 / mean(RR)`) and
`vae/vae_encoding.py`. Departures from it are listed in each docstring.
"""

from __future__ import annotations

import math
import os
import warnings
import zlib
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Mapping, Sequence

import numpy as np
import scipy.signal
import wfdb
from wfdb.processing import XQRS

from diffusets_jax.constants import DURATION_S, LEADS, NUM_SAMPLES

#: Largest fraction of non-finite samples that is silently set to 0 (as the official code does).
MAX_NAN_FRACTION = 0.01
#: A lead whose peak-to-peak range is below this (mV) is treated as flat / disconnected.
FLAT_PTP_MV = 0.01
#: Heart rates outside this range (bpm) are rejected as detection failures.
HR_RANGE_BPM = (20.0, 300.0)
#: Leads tried, in order, for R-peak detection (official: lead order; we start with lead II).
HR_LEAD_ORDER = ("II", "I", "V5", "V2", "V1", "V3", "V4", "V6", "III", "aVR", "aVL", "aVF")
#: Number of plausible leads compared (the one with most beats wins) in `detect_heart_rate()`.
HR_CANDIDATE_LEADS = 3
#: Signals sampled below this rate (Hz) are upsampled to it before R-peak detection.
HR_DETECTION_FS = 500.0
#: Amplitude (mV, robust peak-to-peak) leads are rescaled to when no lead gives a rate unscaled.
RESCALED_PTP_MV = 2.0
#: PTB-XL codes ages above 89 as 300 (HIPAA); they are mapped to this age in years.
ANONYMISED_AGE = 90.0
MAX_AGE = 120.0

_LEAD_INDEX = {name.lower(): i for i, name in enumerate(LEADS)}
_SEX_NAMES = {"m": "M", "male": "M", "f": "F", "female": "F"}
_UNIT_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "v": 1e3}


class RecordError(ValueError):
    """A record that cannot be used; the message names the record (or file) and the reason.

    Attributes:
        record_id: record identifier or file path.
        reason: human-readable cause, e.g. `"lead aVF is flat (peak-to-peak 0 mV)"`.
    """

    def __init__(self, record_id: str, reason: str):
        self.record_id = str(record_id)
        self.reason = reason
        super().__init__(f"record {self.record_id}: {reason}")

    def __reduce__(self):  # keep picklable with the two-argument constructor
        return type(self), (self.record_id, self.reason)


@dataclass
class ECGRecord:
    """One processed 10 s, 12-lead ECG with its conditioning information.

    Attributes:
        record_id: dataset record identifier (PTB-XL `ecg_id`, LUDB number, MIMIC `study_id`).
        patient_id: patient identifier within `source`.
        signal: `(NUM_SAMPLES, 12)` = (1024, 12) float32, mV, leads in `LEADS` order, 102.4 Hz.
        age: years.
        sex: `'M'` or `'F'`.
        heart_rate: beats per minute.
        statements: report statements, most important first (joined with `'|'` in `report`).
        fold: 1..10, patient-wise (PTB-XL `strat_fold`; otherwise `patient_fold()`).
        source: `'ptbxl'`, `'ludb'` or `'mimic'`.
        metadata: extras: `file` (WFDB path), `fs` (native Hz), `notes` (list of changes made,
            e.g. NaNs zeroed), `hr_lead` (lead XQRS used, when it was used), plus source-specific keys.

    Raises:
        RecordError: if the fields break these invariants.
    """

    record_id: str
    patient_id: str
    signal: np.ndarray
    age: float
    sex: str
    heart_rate: float
    statements: list[str]
    fold: int
    source: str
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.signal.shape != (NUM_SAMPLES, len(LEADS)) or self.signal.dtype != np.float32:
            raise RecordError(
                self.record_id,
                f"signal must be float32 {(NUM_SAMPLES, len(LEADS))}, got {self.signal.dtype} {self.signal.shape}",
            )
        if self.sex not in ("M", "F") or not 1 <= self.fold <= 10 or not self.statements:
            raise RecordError(
                self.record_id, f"invalid sex {self.sex!r}, fold {self.fold} or statements {self.statements!r}"
            )

    @property
    def report(self) -> str:
        """Statements joined with `'|'`: the report format of official `vae/vae_encoding.py`."""
        return "|".join(self.statements)


def patient_fold(patient_id: str) -> int:
    """Deterministic patient-wise fold in 1..10: `1 + crc32(patient_id) % 10`."""
    return 1 + zlib.crc32(str(patient_id).encode()) % 10


def clean_signal(signal: np.ndarray, fs: float, record_id: str = "<unknown>") -> tuple[np.ndarray, list[str]]:
    """Check a native-rate 12-lead signal and cut it to exactly 10 s.

    Args:
        signal: `(n, 12)` mV at `fs` Hz, leads in `LEADS` order, `n >= round(10 * fs) - 1`.
        fs: sampling frequency in Hz.
        record_id: used in error messages.

    Returns:
        `(x, notes)`: `x` is `(min(n, round(10 fs)), 12)` float64 with isolated non-finite
        samples set to 0 (official `np.nan_to_num`); `notes` lists what was changed.

    Raises:
        RecordError: not 2-D / not 12 leads; shorter than 10 s minus one sample; a lead that is
        entirely NaN or flat (peak-to-peak < `FLAT_PTP_MV`); more than `MAX_NAN_FRACTION`
        non-finite samples. (The official code keeps all of these; we drop them.)
    """
    x = np.asarray(signal, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(LEADS):
        raise RecordError(record_id, f"expected a (samples, {len(LEADS)}) signal, got shape {x.shape}")
    if not fs > 0:
        raise RecordError(record_id, f"invalid sampling frequency {fs!r}")
    notes = []
    n_10s = round(DURATION_S * fs)
    if x.shape[0] < n_10s - 1:
        raise RecordError(
            record_id, f"signal is {x.shape[0] / fs:.2f} s long ({x.shape[0]} samples at {fs:g} Hz); 10 s needed"
        )
    if x.shape[0] > n_10s:
        if x.shape[0] > n_10s + 1:
            notes.append(f"cropped to the first 10 s ({x.shape[0]} -> {n_10s} samples)")
        x = x[:n_10s]
    bad = ~np.isfinite(x)
    if bad.all(axis=0).any():
        raise RecordError(record_id, f"no finite samples in {_lead_list(bad.all(axis=0))}")
    if bad.mean() > MAX_NAN_FRACTION:
        raise RecordError(record_id, f"{bad.mean():.1%} of samples are NaN/inf (more than {MAX_NAN_FRACTION:.0%})")
    if bad.any():
        notes.append(f"{int(bad.sum())} NaN/inf samples set to 0")
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    flat = np.ptp(x, axis=0) < FLAT_PTP_MV
    if flat.any():
        raise RecordError(record_id, f"flat {_lead_list(flat)} (peak-to-peak < {FLAT_PTP_MV} mV)")
    return x, notes


def _lead_list(mask: np.ndarray) -> str:
    """`'lead V3'` or `'leads V3, V4'` for the True entries of a (12,) mask."""
    names = [LEADS[i] for i in np.flatnonzero(mask)]
    return ("lead " if len(names) == 1 else "leads ") + ", ".join(names)


def _to_model_rate(x: np.ndarray) -> np.ndarray:
    """Official FFT resampling of a clean 10 s signal to (1024, 12) float32."""
    return scipy.signal.resample(x, NUM_SAMPLES, axis=0).astype(np.float32)


def resample_signal(signal: np.ndarray, fs: float, record_id: str = "<unknown>") -> np.ndarray:
    """Resample a 10 s, 12-lead signal to `(NUM_SAMPLES, 12)` = (1024, 12) float32 at 102.4 Hz.

    Runs `clean_signal()` (so the same errors apply, and a longer signal keeps its first 10 s),
    then FFT resampling `scipy.signal.resample(x, 1024, axis=0)` as the official MIMIC loader.
    Units are unchanged (mV). Use `clean_signal()` directly to also get the notes.
    """
    return _to_model_rate(clean_signal(signal, fs, record_id)[0])


def reorder_leads(signal: np.ndarray, names: Sequence[str], record_id: str = "<unknown>") -> np.ndarray:
    """Reorder columns named `names` (case-insensitive: `'AVR'`, `'avr'`, `'aVR'`) into `LEADS` order.

    Args:
        signal: `(n, len(names))`.
        names: lead name of each column, e.g. MIMIC's `I, II, III, aVR, aVF, aVL, V1..V6`.

    Returns:
        `(n, 12)` new array with column `k` = lead `LEADS[k]`.

    Raises:
        RecordError: column count differs from `len(names)`, or a lead is unknown, repeated or missing.
    """
    signal = np.asarray(signal)
    if signal.ndim != 2 or signal.shape[1] != len(names):
        raise RecordError(record_id, f"signal shape {signal.shape} does not match {len(names)} lead names")
    columns: dict[int, int] = {}
    for col, name in enumerate(names):
        key = str(name).strip().lower()
        if key not in _LEAD_INDEX:
            raise RecordError(record_id, f"unknown lead {name!r} (expected {', '.join(LEADS)})")
        if _LEAD_INDEX[key] in columns:
            raise RecordError(record_id, f"lead {name!r} appears twice")
        columns[_LEAD_INDEX[key]] = col
    missing = [lead for i, lead in enumerate(LEADS) if i not in columns]
    if missing:
        raise RecordError(record_id, f"missing lead(s) {', '.join(missing)}")
    return signal[:, [columns[i] for i in range(len(LEADS))]]


def _lead_heart_rate(x: np.ndarray, fs: float) -> tuple[float, int] | None:
    """`(60 / mean(RR), beats)` of one lead from XQRS R peaks, or None if < 2 beats or implausible."""
    xqrs = XQRS(sig=x, fs=fs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        xqrs.detect(verbose=False)
    peaks = np.asarray(xqrs.qrs_inds)
    if peaks.size < 2:
        return None
    hr = 60.0 / (np.mean(np.diff(peaks)) / fs)
    return (float(hr), int(peaks.size)) if HR_RANGE_BPM[0] <= hr <= HR_RANGE_BPM[1] else None


def _rescaled(x: np.ndarray) -> np.ndarray:
    """Lead scaled to a robust peak-to-peak (0.5th..99.5th percentile) of `RESCALED_PTP_MV`."""
    low, high = np.percentile(x, [0.5, 99.5])
    return x * (RESCALED_PTP_MV / (high - low)) if high > low else x


def heart_rate_and_lead(signal: np.ndarray, fs: float, record_id: str = "<unknown>") -> tuple[float, str]:
    """Like `detect_heart_rate()` but also returns the lead used (`'II'`, or `'II rescaled'`)."""
    x = np.asarray(signal, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(LEADS):
        raise RecordError(record_id, f"expected a (samples, {len(LEADS)}) signal, got shape {x.shape}")
    if fs < HR_DETECTION_FS:
        ratio = Fraction(HR_DETECTION_FS / fs).limit_denominator(1000)
        x = scipy.signal.resample_poly(x, ratio.numerator, ratio.denominator, axis=0)
        fs = fs * ratio.numerator / ratio.denominator
    for rescale in (False, True):
        found = []  # (hr, beats, lead) of the first HR_CANDIDATE_LEADS plausible leads
        for lead in HR_LEAD_ORDER:
            lead_x = x[:, LEADS.index(lead)]
            result = _lead_heart_rate(_rescaled(lead_x) if rescale else lead_x, fs)
            if result is not None:
                found.append((*result, lead + (" rescaled" if rescale else "")))
            if len(found) == HR_CANDIDATE_LEADS:
                break
        if found:
            hr, _, lead = max(found, key=lambda item: item[1])  # most beats; ties: earlier lead
            return hr, lead
    raise RecordError(record_id, f"no lead gave >= 2 R peaks at a plausible rate {HR_RANGE_BPM} bpm")


def detect_heart_rate(signal: np.ndarray, fs: float, record_id: str = "<unknown>") -> float:
    """Heart rate in bpm from WFDB XQRS R-peak detection on the native-rate signal.

    Leads are tried in `HR_LEAD_ORDER` (II, I, V5, V2, ...). A lead is plausible if XQRS finds
    at least 2 beats and `60 / mean(RR in s)` lies in `HR_RANGE_BPM`. Of the first
    `HR_CANDIDATE_LEADS` = 3 plausible leads, the one with the most detected beats gives the rate
    (ties: earlier lead). The official code takes the first lead with > 1 beat; we compare three
    because XQRS's usual failure is missed beats, which lowers the rate: e.g. PTB-XL ecg_id 282
    (atrial fibrillation, noisy lead II) has 3 beats / 24 bpm in lead II but 14 beats / 82 bpm in
    V5, and paced ecg_id 385 has 7 beats / 38 bpm in lead I but 12 beats / 70 bpm in V5 (checked
    by eye). The mean RR, not the median, is kept: it is the official rule and the better estimate
    for irregular rhythms such as atrial fibrillation.

    If no lead is plausible, all leads are tried again rescaled to a robust peak-to-peak of
    `RESCALED_PTP_MV`: XQRS learns its thresholds from the first 8 beats it finds, and when that
    fails (slow rhythm, wide QRS) it falls back to fixed thresholds in mV that miss low-amplitude
    QRS complexes (e.g. LUDB records 34 and 90, whose leads are stored normalised to 1 mV
    peak-to-peak). Signals below `HR_DETECTION_FS` = 500 Hz are first upsampled to it with
    `scipy.signal.resample_poly`: XQRS is unreliable at 100 Hz (on 80 PTB-XL records its lead-II
    rate at 100 Hz was off by 25 bpm on average from the 500 Hz rate; after upsampling, 0.13 bpm).

    Args:
        signal: `(n, 12)` mV in `LEADS` order at its native `fs` Hz (official: 500 Hz), not
            the 102.4 Hz model signal.
        fs: sampling frequency in Hz.

    Raises:
        RecordError: no lead yields a plausible rate (official: assertion error / HR 99999).

    Source: official `dataset/mimic_iv_ecg_dataset.py` (XQRS, `60 / mean(diff(qrs_inds) / fs)`);
    lead choice, plausibility range, rescaling and upsampling are ours (see above).
    """
    return heart_rate_and_lead(signal, fs, record_id)[0]


@dataclass
class RawSignal:
    """A WFDB record as read from disk: `signal` `(n, n_leads)` float64 in mV, file lead order."""

    signal: np.ndarray
    fs: float
    lead_names: list[str]
    comments: list[str]
    path: str


def read_wfdb(path: str | os.PathLike, record_id: str | None = None) -> RawSignal:
    """Read a WFDB record (``path`` without extension) with ``wfdb.rdrecord``, converted to mV.

    The digital samples are read first and checked against the per-signal checksums of the header
    where it has them (the 16-bit sum of each signal's samples, field 7 of a signal line; WFDB
    ``header(5)``, https://physionet.org/physiotools/wag/header-5.htm; ``wfdb.Record.calc_checksum``),
    so a ``.dat`` garbled in place (same size) is refused instead of read as noise; then converted
    to physical units (``Record.dac``, invalid samples -> NaN).

    Raises:
        RecordError: naming ``path`` for any read failure (missing/corrupt ``.hea``/``.dat``), a
        checksum that differs from the header's (naming the leads), a record without a physical
        signal, or units other than mV/uV/V.
    """
    path = os.fspath(path)
    record_id = path if record_id is None else record_id
    try:
        rec = wfdb.rdrecord(path, physical=False)
    except Exception as err:  # wfdb raises many types (OSError, ValueError, IndexError, ...)
        raise RecordError(record_id, f"cannot read WFDB record {path}: {type(err).__name__}: {err}") from err
    if rec.d_signal is None or rec.sig_name is None:
        raise RecordError(record_id, f"WFDB record {path} has no physical signal")
    _check_checksums(rec, path, record_id)
    rec.p_signal = rec.dac(return_res=64)
    if rec.p_signal is None or rec.sig_name is None:
        raise RecordError(record_id, f"WFDB record {path} has no physical signal")
    units = [(u or "").strip().lower() for u in (rec.units or [""] * rec.n_sig)]
    unknown = sorted({u for u in units if u not in _UNIT_TO_MV})
    if unknown:
        raise RecordError(record_id, f"WFDB record {path} has unsupported units {unknown}")
    scale = np.array([_UNIT_TO_MV[u] for u in units])
    return RawSignal(
        np.asarray(rec.p_signal, dtype=np.float64) * scale,
        float(rec.fs),
        list(rec.sig_name),
        list(rec.comments or []),
        path,
    )


def _check_checksums(rec, path: str, record_id: str) -> None:
    """RecordError naming the signals whose 16-bit sample sum differs from the header's checksum."""
    stored = rec.checksum or []
    if not any(c is not None for c in stored):
        return
    computed = rec.calc_checksum()
    bad = [
        name
        for name, want, got in zip(rec.sig_name, stored, computed)
        if want is not None and (int(got) - int(want)) % 65536
    ]
    if bad:
        raise RecordError(
            record_id,
            f"WFDB record {path}: the samples of {', '.join(bad)} do not match the "
            "header's checksums (the .dat file is corrupt)",
        )


def parse_age(value) -> float | None:
    """Age in years from a number or string (`'51'`, `'>89'` -> 90); None if missing/unparsable."""
    text = "" if value is None else str(value).strip()
    try:
        age = float(text.lstrip(">"))
    except ValueError:
        return None
    if math.isnan(age):
        return None
    return age + 1 if text.startswith(">") else age


def validate_patient(
    age,
    sex,
    record_id: str,
    numeric_sex: Mapping[int, str] | None = None,
) -> tuple[float, str, list[str]]:
    """Check and normalise patient age and sex.

    Args:
        age: years (number or string; `None`/NaN means missing). PTB-XL codes ages > 89 as 300;
            300 is mapped to `ANONYMISED_AGE` = 90 (with a note).
        sex: `'M'`/`'F'`/`'male'`/`'female'` (any case), or an integer code looked up in
            `numeric_sex` (PTB-XL: `{0: 'M', 1: 'F'}`).
        record_id: used in error messages.
        numeric_sex: mapping for integer sex codes; integers are rejected without it.

    Returns:
        `(age, sex, notes)` with age a float in [0, 120] and sex `'M'` or `'F'`.

    Raises:
        RecordError: missing or out-of-range age; missing or unknown sex (message names the field).
    """
    notes = []
    age, sex = (v.item() if isinstance(v, np.generic) else v for v in (age, sex))  # plain reprs in messages
    years = parse_age(age)
    if years is None:
        raise RecordError(record_id, f"age is missing or not a number ({age!r})")
    if years == 300:
        notes.append("age 300 (PTB-XL code for > 89 years) mapped to 90")
        years = ANONYMISED_AGE
    if not 0 <= years <= MAX_AGE:
        raise RecordError(record_id, f"age {years:g} is outside [0, {MAX_AGE:g}] years")

    code = sex
    if isinstance(code, float) and code.is_integer():
        code = int(code)
    if isinstance(code, int) and not isinstance(code, bool):
        if numeric_sex is None or int(code) not in numeric_sex:
            raise RecordError(record_id, f"sex code {code!r} is not known (expected {dict(numeric_sex or {})})")
        return float(years), numeric_sex[int(code)], notes
    key = str(code).strip().lower() if isinstance(code, str) else None
    if key not in _SEX_NAMES:
        raise RecordError(record_id, f"sex {sex!r} is missing or unknown (expected M/F)")
    return float(years), _SEX_NAMES[key], notes


def require_statements(statements: Sequence[str], record_id: str) -> list[str]:
    """Strip statements and drop empty ones; raise RecordError if none is left (empty report)."""
    kept = [s.strip() for s in statements if isinstance(s, str) and s.strip()]
    if not kept:
        raise RecordError(record_id, "report is empty (no statements)")
    return kept


def build_record(
    *,
    record_id: str,
    patient_id: str,
    raw: RawSignal,
    age,
    sex,
    statements: Sequence[str],
    fold: int,
    source: str,
    heart_rate: float | None = None,
    numeric_sex: Mapping[int, str] | None = None,
    metadata: dict | None = None,
) -> ECGRecord:
    """Shared final step of every reader: validate, reorder, clean, get HR, resample.

    `heart_rate` given (e.g. MIMIC machine RR) is used as is; otherwise `detect_heart_rate()`
    runs on the cleaned native-rate signal. Raises RecordError for any invalid part.
    """
    age, sex, notes = validate_patient(age, sex, record_id, numeric_sex)
    statements = require_statements(statements, record_id)
    native, signal_notes = clean_signal(reorder_leads(raw.signal, raw.lead_names, record_id), raw.fs, record_id)
    meta = {"file": raw.path, "fs": raw.fs, **(metadata or {})}
    if heart_rate is None:
        heart_rate, meta["hr_lead"] = heart_rate_and_lead(native, raw.fs, record_id)
    meta["notes"] = meta.get("notes", []) + notes + signal_notes
    return ECGRecord(
        record_id=str(record_id),
        patient_id=str(patient_id),
        signal=_to_model_rate(native),
        age=age,
        sex=sex,
        heart_rate=float(heart_rate),
        statements=statements,
        fold=int(fold),
        source=source,
        metadata=meta,
    )
