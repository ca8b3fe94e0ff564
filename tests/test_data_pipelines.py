"""Tests of data_pipelines on real PTB-XL / LUDB records and a MIMIC-layout fixture (tests/data).

Lead order is checked physically (Einthoven/Goldberger relations between limb leads), PTB-XL
statements against `scp_codes` parsed here independently, and heart rates against the LUDB
cardiologists' QRS annotations.
"""

import ast
import csv
import functools
import shutil

import numpy as np
import pytest
import scipy.signal
import wfdb

from diffusets_jax.data_pipelines import READERS, get_reader, ludb, mimic, ptbxl
from diffusets_jax.data_pipelines.prepare import format_skipped, load_records
from diffusets_jax.data_pipelines.records import (
    ECGRecord,
    RecordError,
    clean_signal,
    detect_heart_rate,
    patient_fold,
    read_wfdb,
    reorder_leads,
    resample_signal,
    validate_patient,
)
from diffusets_jax.constants import LEADS, NUM_SAMPLES

PTBXL_IDS = ["1", "2", "103", "321"]
LUDB_IDS = ["1", "8", "34", "35", "70"]
MIMIC_FROM_PTBXL = ["50000001", "50000003"]  # physical mV, so the Einthoven relations hold exactly
MIMIC_ORDER = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]


@functools.lru_cache(maxsize=None)
def load(source: str, root, record_id: str, **options) -> ECGRecord:
    return get_reader(source).load_record(root, record_id, **options)


def lead(signal: np.ndarray, name: str) -> np.ndarray:
    return signal[:, LEADS.index(name)].astype(np.float64)


def limb_lead_residuals(signal: np.ndarray) -> dict[str, float]:
    """RMS of each limb-lead identity's residual relative to the RMS of the lead it predicts."""
    i, ii, iii = lead(signal, "I"), lead(signal, "II"), lead(signal, "III")
    expected = {"III": ii - i, "aVR": -(i + ii) / 2, "aVL": (i - iii) / 2, "aVF": (ii + iii) / 2}
    return {
        name: float(np.sqrt(np.mean((lead(signal, name) - pred) ** 2) / np.mean(lead(signal, name) ** 2)))
        for name, pred in expected.items()
    }


def limb_lead_signs(signal: np.ndarray) -> dict[str, tuple[int, int]]:
    """Signs of (a, b) in the least-squares fit `target ~ a*x + b*y + c`: scale-free lead-order check
    (LUDB stores each lead rescaled, so only the signs of the Einthoven/Goldberger weights survive)."""
    fits = {"III": ("II", "I"), "aVF": ("II", "III"), "aVL": ("I", "III"), "aVR": ("I", "II")}
    signs = {}
    for target, (x, y) in fits.items():
        design = np.c_[lead(signal, x), lead(signal, y), np.ones(len(signal))]
        coef = np.linalg.lstsq(design, lead(signal, target), rcond=None)[0]
        signs[target] = (int(np.sign(coef[0])), int(np.sign(coef[1])))
    return signs


EXPECTED_SIGNS = {"III": (1, -1), "aVF": (1, 1), "aVL": (1, -1), "aVR": (-1, -1)}


def assert_valid_signal(record: ECGRecord, max_mv: float = 10.0) -> None:
    assert record.signal.shape == (NUM_SAMPLES, 12) and record.signal.dtype == np.float32
    assert np.isfinite(record.signal).all()
    ptp = np.ptp(record.signal, axis=0)
    assert (ptp > 0.1).all() and np.abs(record.signal).max() < max_mv  # real ECG amplitudes in mV


def csv_rows(path, key: str) -> dict[str, dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return {row[key]: row for row in csv.DictReader(f)}


# ----------------------------------------------------------------------------------------- PTB-XL


@pytest.mark.parametrize("rate", [500, 100])
@pytest.mark.parametrize("record_id", PTBXL_IDS)
def test_ptbxl_record_fields_and_lead_order(ptbxl_root, record_id, rate):
    record = load("ptbxl", ptbxl_root, record_id, sampling_rate=rate)
    row = csv_rows(ptbxl_root / "ptbxl_database.csv", "ecg_id")[record_id]
    assert_valid_signal(record)
    assert max(limb_lead_residuals(record.signal).values()) < 0.05  # file order AVR, AVL, AVF kept right
    assert limb_lead_signs(record.signal) == EXPECTED_SIGNS
    assert record.source == "ptbxl" and record.record_id == record_id
    assert record.patient_id == str(int(float(row["patient_id"])))
    assert record.age == float(row["age"]) and record.sex == {"0": "M", "1": "F"}[row["sex"]]
    assert record.fold == int(row["strat_fold"])
    assert record.metadata["report"] == row["report"]


@pytest.mark.parametrize("record_id", PTBXL_IDS)
def test_ptbxl_statements_are_english_descriptions_by_likelihood(ptbxl_root, record_id):
    codes = ast.literal_eval(csv_rows(ptbxl_root / "ptbxl_database.csv", "ecg_id")[record_id]["scp_codes"])
    with open(ptbxl_root / "scp_statements.csv", newline="") as f:
        descriptions = {row[""]: row["description"] for row in csv.DictReader(f)}
    order = sorted(range(len(codes)), key=lambda k: (-list(codes.values())[k], k))
    expected = [descriptions[list(codes)[k]] for k in order]
    record = load("ptbxl", ptbxl_root, record_id)
    assert record.statements == expected
    assert record.metadata["scp_codes"] == codes
    assert record.report == "|".join(expected)


def test_ptbxl_statement_examples(ptbxl_root):
    # ties (LVOLT 0, SR 0) keep the csv order; likelihoods 100 > 15 > 0 are ordered
    assert load("ptbxl", ptbxl_root, "1").statements == [
        "normal ECG",
        "low QRS voltages in the frontal and horizontal leads",
        "sinus rhythm",
    ]
    assert load("ptbxl", ptbxl_root, "103").statements == [
        "left anterior fascicular block",
        "inferior myocardial infarction",
        "abnormal QRS",
        "sinus tachycardia",
    ]


def test_ptbxl_unknown_scp_code_is_skipped(ptbxl_root):
    statements, unknown = ptbxl.statements_from_scp(
        {"XYZ": 100.0, "SR": 0.0, "NORM": 50.0}, {"SR": "sinus rhythm", "NORM": "normal ECG"}
    )
    assert statements == ["normal ECG", "sinus rhythm"] and unknown == ["XYZ"]


@pytest.mark.parametrize("record_id", PTBXL_IDS)
def test_ptbxl_100hz_and_500hz_agree(ptbxl_root, record_id):
    hi = load("ptbxl", ptbxl_root, record_id, sampling_rate=500)
    lo = load("ptbxl", ptbxl_root, record_id, sampling_rate=100)
    assert abs(hi.heart_rate - lo.heart_rate) < 2.0
    corr = [np.corrcoef(lead(hi.signal, n), lead(lo.signal, n))[0, 1] for n in LEADS]
    assert np.median(corr) > 0.9


def test_ptbxl_heart_rate_matches_rhythm_statements(ptbxl_root):
    assert load("ptbxl", ptbxl_root, "2").heart_rate < 60  # sinus bradycardia
    assert load("ptbxl", ptbxl_root, "103").heart_rate > 100  # sinus tachycardia
    assert 60 <= load("ptbxl", ptbxl_root, "1").heart_rate <= 100  # sinus rhythm
    # 321: atrial fibrillation "with rapid ventricular response", 15 QRS complexes in 10 s (counted on a
    # plot); XQRS misses 2 of them in lead II (82 bpm), so the lead with most beats (V5) must be chosen.
    af = load("ptbxl", ptbxl_root, "321")
    assert af.heart_rate > 90 and af.metadata["hr_lead"] == "V5"


def test_ptbxl_missing_age_is_rejected(ptbxl_root):
    with pytest.raises(RecordError, match="record 108: age is missing"):
        ptbxl.load_record(ptbxl_root, "108")


def test_ptbxl_bad_arguments(ptbxl_root):
    with pytest.raises(RecordError, match="record 999999: ecg_id not found"):
        ptbxl.load_record(ptbxl_root, "999999")
    with pytest.raises(RecordError, match="sampling_rate"):
        ptbxl.load_record(ptbxl_root, "1", sampling_rate=250)


# ------------------------------------------------------------------------------------------- LUDB


def header_diagnoses(hea_path) -> list[str]:
    lines = [line[1:].strip() for line in hea_path.read_text().splitlines() if line.startswith("#")]
    diagnoses = lines[lines.index("<diagnoses>:") + 1 :]
    return [d.rstrip(".").strip().removeprefix("Rhythm: ") for d in diagnoses]


@pytest.mark.parametrize("record_id", LUDB_IDS)
def test_ludb_record_fields_and_lead_order(ludb_root, record_id):
    record = load("ludb", ludb_root, record_id)
    assert_valid_signal(record)
    assert limb_lead_signs(record.signal) == EXPECTED_SIGNS
    assert record.statements == header_diagnoses(ludb_root / "data" / f"{record_id}.hea")
    assert record.patient_id == record_id and record.fold == patient_fold(record_id)
    raw = wfdb.rdrecord(str(ludb_root / "data" / record_id))  # each output lead is the same-named file lead
    for k, name in enumerate(LEADS):
        expected = scipy.signal.resample(raw.p_signal[:, raw.sig_name.index(name.lower())], NUM_SAMPLES)
        np.testing.assert_allclose(record.signal[:, k], expected, atol=1e-5)


def test_ludb_patient_and_statement_examples(ludb_root):
    r1 = load("ludb", ludb_root, "1")
    assert (r1.age, r1.sex) == (51.0, "F")
    assert r1.statements == [
        "Sinus bradycardia",
        "Electric axis of the heart: left axis deviation",
        "Left ventricular hypertrophy",
        "Left ventricular overload",
        "Non-specific repolarization abnormalities: posterior wall",
    ]
    r35 = load("ludb", ludb_root, "35")
    assert r35.statements[0] == "Atrial flutter, typical" and r35.sex == "F"
    assert load("ludb", ludb_root, "34").age == 90.0


@pytest.mark.parametrize("record_id", LUDB_IDS)
def test_ludb_heart_rate_matches_cardiologist_annotations(ludb_root, record_id):
    reference = ludb.annotated_heart_rate(ludb_root, record_id)
    assert abs(load("ludb", ludb_root, record_id).heart_rate - reference) < 5.0


def test_ludb_annotated_heart_rate_is_from_qrs_marks(ludb_root):
    ann = wfdb.rdann(str(ludb_root / "data" / "1"), "ii")
    peaks = ann.sample[np.array(ann.symbol) == "N"]
    assert len(peaks) >= 5
    assert ludb.annotated_heart_rate(ludb_root, "1") == pytest.approx(
        60 * 500 * (len(peaks) - 1) / (peaks[-1] - peaks[0])
    )


def copy_ludb(ludb_root, tmp_path, record_id, header_filter=None, with_csv=True):
    root = tmp_path / "ludb"
    (root / "data").mkdir(parents=True)
    shutil.copy(ludb_root / "data" / f"{record_id}.dat", root / "data")
    lines = (ludb_root / "data" / f"{record_id}.hea").read_text().splitlines(keepends=True)
    (root / "data" / f"{record_id}.hea").write_text("".join(filter(header_filter, lines)))
    if with_csv:
        shutil.copy(ludb_root / "ludb.csv", root)
    return root


def test_ludb_falls_back_to_csv_for_age_and_sex(ludb_root, tmp_path):
    root = copy_ludb(ludb_root, tmp_path, "34", lambda line: not line.startswith(("#<age>", "#<sex>")))
    record = ludb.load_record(root, "34")
    assert (record.age, record.sex) == (90.0, "F")  # ludb.csv says '>89'
    assert "age, sex from ludb.csv" in record.metadata["notes"]


def test_ludb_missing_sex_without_csv_is_rejected(ludb_root, tmp_path):
    root = copy_ludb(ludb_root, tmp_path, "1", lambda line: not line.startswith("#<sex>"), with_csv=False)
    with pytest.raises(RecordError, match=r"record 1: sex None is missing"):
        ludb.load_record(root, "1")


def test_ludb_unknown_sex_is_rejected(ludb_root, tmp_path):
    root = copy_ludb(ludb_root, tmp_path, "1", lambda line: True)
    hea = root / "data" / "1.hea"
    hea.write_text(hea.read_text().replace("#<sex>: F", "#<sex>: X"))
    with pytest.raises(RecordError, match=r"record 1: sex 'X' is missing or unknown"):
        ludb.load_record(root, "1")


def test_ludb_empty_report_is_rejected(ludb_root, tmp_path):
    root = copy_ludb(
        ludb_root, tmp_path, "70", lambda line: not line.startswith("#") or line.startswith("#<"), with_csv=False
    )
    with pytest.raises(RecordError, match=r"record 70: report is empty"):
        ludb.load_record(root, "70")


# ------------------------------------------------------------------------------------------ MIMIC


def test_mimic_fixture_files_are_in_mimic_lead_order(mimic_root):
    raw = read_wfdb(mimic_root / "files/p9000/p90000001/s50000001/50000001")
    assert raw.lead_names == MIMIC_ORDER and raw.fs == 500 and raw.signal.shape == (5000, 12)
    # Read naively in file order, the aVL/aVF identities fail: the swap is really there...
    naive = resample_signal(raw.signal, raw.fs)
    residuals = limb_lead_residuals(naive)
    assert residuals["aVF"] > 0.5 and residuals["aVL"] > 0.5


@pytest.mark.parametrize("record_id", MIMIC_FROM_PTBXL)
def test_mimic_reader_fixes_lead_order(mimic_root, record_id):
    record = load("mimic", mimic_root, record_id)
    assert_valid_signal(record)
    assert max(limb_lead_residuals(record.signal).values()) < 0.05  # ...and the reader undoes it
    assert limb_lead_signs(record.signal) == EXPECTED_SIGNS


def test_mimic_fields_from_csvs(mimic_root):
    records = csv_rows(mimic_root / "record_list.csv", "study_id")
    measurements = csv_rows(mimic_root / "machine_measurements.csv", "study_id")
    patients = csv_rows(mimic_root / "patients.csv", "subject_id")
    for study_id in ["50000001", "50000002", "50000003"]:
        record = load("mimic", mimic_root, study_id)
        subject = records[study_id]["subject_id"]
        reports = [measurements[study_id][f"report_{i}"] for i in range(18)]
        assert record.statements == [r for r in reports if r]
        assert record.patient_id == subject and record.fold == patient_fold(subject)
        assert record.age == float(patients[subject]["anchor_age"]) and record.sex == patients[subject]["gender"]
        assert record.source == "mimic"


def test_mimic_heart_rate_from_rr_interval(mimic_root):
    rr_ms = float(csv_rows(mimic_root / "machine_measurements.csv", "study_id")["50000001"]["rr_interval"])
    record = load("mimic", mimic_root, "50000001")
    assert record.heart_rate == 60000.0 / rr_ms
    assert record.metadata["hr_source"] == "rr_interval"
    raw = read_wfdb(mimic_root / "files/p9000/p90000001/s50000001/50000001")
    assert abs(detect_heart_rate(reorder_leads(raw.signal, raw.lead_names), raw.fs) - record.heart_rate) < 2


def test_mimic_missing_rr_falls_back_to_xqrs(mimic_root, ludb_root):
    record = load("mimic", mimic_root, "50000002")  # LUDB record 8, rr_interval empty
    assert record.metadata["hr_source"] == "xqrs" and record.metadata["rr_interval"] is None
    assert abs(record.heart_rate - ludb.annotated_heart_rate(ludb_root, "8")) < 5.0


def test_mimic_out_of_range_rr_falls_back_to_xqrs(mimic_root):
    record = load("mimic", mimic_root, "50000003")  # rr_interval 29999 = MIMIC's missing value
    assert record.metadata["hr_source"] == "xqrs" and record.metadata["rr_interval"] == 29999
    assert 40 < record.heart_rate < 62  # PTB-XL ecg_id 225: sinus bradycardia


def test_rr_heart_rate_range():
    assert mimic.rr_heart_rate(1000) == 60.0 and mimic.rr_heart_rate("300") == 200.0
    assert mimic.rr_heart_rate(1.0) is None  # the official seconds/ms mix-up would pass seconds
    assert mimic.rr_heart_rate(float("nan")) is None and mimic.rr_heart_rate(1501) is None


def test_mimic_missing_patient_is_rejected(mimic_root):
    with pytest.raises(RecordError, match="record 50000004: subject_id 90000004 has no row"):
        mimic.load_record(mimic_root, "50000004")


def copy_mimic(mimic_root, tmp_path):
    root = tmp_path / "mimic"
    shutil.copytree(mimic_root, root)
    return root


def test_mimic_empty_report_is_rejected(mimic_root, tmp_path):
    root = copy_mimic(mimic_root, tmp_path)
    path = root / "machine_measurements.csv"
    path.write_text(path.read_text().replace("Atrial fibrillation,Otherwise no definite pathology,", ",,"))
    with pytest.raises(RecordError, match="record 50000001: report is empty"):
        mimic.load_record(root, "50000001")


def test_mimic_nan_lead_in_file_is_rejected(mimic_root, tmp_path):
    root = copy_mimic(mimic_root, tmp_path)
    rec_dir = root / "files/p9000/p90000003/s50000003"
    raw = read_wfdb(rec_dir / "50000003")
    signal = raw.signal.copy()
    signal[:, raw.lead_names.index("V3")] = np.nan  # WFDB stores NaN as the invalid-sample code
    wfdb.wrsamp(
        "50000003",
        fs=500,
        units=["mV"] * 12,
        sig_name=raw.lead_names,
        p_signal=signal,
        fmt=["16"] * 12,
        adc_gain=[200.0] * 12,
        baseline=[0] * 12,
        write_dir=str(rec_dir),
    )
    with pytest.raises(RecordError, match="record 50000003: no finite samples in lead V3"):
        mimic.load_record(root, "50000003")


# ------------------------------------------------------------------------------------ bad files


def test_missing_dat_file_is_rejected(ludb_root, tmp_path):
    root = copy_ludb(ludb_root, tmp_path, "1", lambda line: True)
    (root / "data" / "1.dat").unlink()
    with pytest.raises(RecordError, match=r"record 1: cannot read WFDB record .*data/1"):
        ludb.load_record(root, "1")


def test_missing_record_is_rejected(ludb_root):
    with pytest.raises(RecordError, match=r"record 999: cannot read WFDB record .*data/999"):
        ludb.load_record(ludb_root, "999")


def test_truncated_header_is_rejected(ludb_root, tmp_path):
    root = copy_ludb(ludb_root, tmp_path, "1", lambda line: True)
    hea = root / "data" / "1.hea"
    hea.write_text(hea.read_text()[:150])  # cut in the middle of the signal lines
    with pytest.raises(RecordError, match=r"record 1: cannot read WFDB record"):
        ludb.load_record(root, "1")


def test_eleven_lead_file_is_rejected(ludb_root, tmp_path):
    raw = read_wfdb(ludb_root / "data" / "1")
    wfdb.wrsamp(
        "short",
        fs=500,
        units=["mV"] * 11,
        sig_name=raw.lead_names[:11],
        p_signal=raw.signal[:, :11],
        fmt=["16"] * 11,
        adc_gain=[1000.0] * 11,
        baseline=[0] * 11,
        write_dir=str(tmp_path),
    )
    raw11 = read_wfdb(tmp_path / "short", "short")
    with pytest.raises(RecordError, match="record short: missing lead.*V6"):
        reorder_leads(raw11.signal, raw11.lead_names, "short")
    with pytest.raises(RecordError, match=r"record short: expected a \(samples, 12\) signal"):
        resample_signal(raw11.signal, 500, "short")


# ---------------------------------------------------------------------------- signal functions


@pytest.fixture(scope="module")
def ptbxl_raw(ptbxl_root):
    raw = read_wfdb(ptbxl_root / "records500/00000/00001_hr")
    return reorder_leads(raw.signal, raw.lead_names)


def test_resample_signal_matches_scipy(ptbxl_raw):
    out = resample_signal(ptbxl_raw, 500)
    assert out.dtype == np.float32 and out.shape == (1024, 12)
    np.testing.assert_allclose(out, scipy.signal.resample(ptbxl_raw, 1024, axis=0).astype(np.float32))


def test_isolated_nans_become_zero(ptbxl_raw):
    x = ptbxl_raw.copy()
    x[100, 3] = x[2000, 7] = np.nan
    cleaned, notes = clean_signal(x, 500, "r")
    assert cleaned[100, 3] == 0 and np.isfinite(cleaned).all() and notes == ["2 NaN/inf samples set to 0"]


def test_many_nans_are_rejected(ptbxl_raw):
    x = ptbxl_raw.copy()
    x[::50] = np.nan  # 2% of samples
    with pytest.raises(RecordError, match=r"record r7: 2\.0% of samples are NaN"):
        resample_signal(x, 500, "r7")


def test_flat_signals_are_rejected(ptbxl_raw):
    with pytest.raises(RecordError, match=r"record z: flat leads I, II, III, aVR, .*, V6 \(peak-to-peak"):
        resample_signal(np.zeros((5000, 12)), 500, "z")
    x = ptbxl_raw.copy()
    x[:, LEADS.index("aVL")] = 0.3
    with pytest.raises(RecordError, match="record z: flat lead aVL "):
        resample_signal(x, 500, "z")


def test_duration_rules(ptbxl_raw):
    with pytest.raises(RecordError, match="record s: signal is 8.00 s long"):
        resample_signal(ptbxl_raw[:4000], 500, "s")
    assert resample_signal(ptbxl_raw[:4999], 500).shape == (1024, 12)  # 10 s minus one sample is fine
    longer = np.concatenate([ptbxl_raw, ptbxl_raw[:1000]])
    cropped, notes = clean_signal(longer, 500)
    assert np.array_equal(cropped, ptbxl_raw) and notes == ["cropped to the first 10 s (6000 -> 5000 samples)"]


def test_reorder_leads_names_and_errors(ptbxl_raw):
    mimic_file = ptbxl_raw[:, [LEADS.index(n) for n in MIMIC_ORDER]]
    assert np.array_equal(reorder_leads(mimic_file, [n.upper() for n in MIMIC_ORDER]), ptbxl_raw)
    assert np.array_equal(reorder_leads(mimic_file, [n.lower() for n in MIMIC_ORDER]), ptbxl_raw)
    with pytest.raises(RecordError, match="record m: unknown lead 'MLII'"):
        reorder_leads(ptbxl_raw, ["MLII"] + list(LEADS[1:]), "m")
    with pytest.raises(RecordError, match="record m: lead 'ii' appears twice"):
        reorder_leads(ptbxl_raw, ["I", "II", "ii"] + list(LEADS[3:]), "m")


def test_detect_heart_rate_needs_qrs_complexes():
    wander = np.tile(0.5 * np.sin(2 * np.pi * 0.2 * np.arange(5000) / 500)[:, None], (1, 12))  # baseline only
    with pytest.raises(RecordError, match="record n: no lead gave"):
        detect_heart_rate(wander, 500, "n")


def test_validate_patient():
    assert validate_patient("51", "F", "r") == (51.0, "F", [])
    assert validate_patient(60.0, "male", "r")[:2] == (60.0, "M")
    assert validate_patient(300, 1, "r", {0: "M", 1: "F"}) == (
        90.0,
        "F",
        ["age 300 (PTB-XL code for > 89 years) mapped to 90"],
    )
    with pytest.raises(RecordError, match=r"record r: age 130 is outside \[0, 120\]"):
        validate_patient(130, "M", "r")
    with pytest.raises(RecordError, match=r"record r: age -1 is outside"):
        validate_patient(-1, "M", "r")
    with pytest.raises(RecordError, match="record r: age is missing"):
        validate_patient(float("nan"), "M", "r")
    with pytest.raises(RecordError, match="record r: sex code 2 is not known"):
        validate_patient(50, 2, "r", {0: "M", 1: "F"})
    with pytest.raises(RecordError, match="record r: sex code 1 is not known"):
        validate_patient(50, 1, "r")  # numeric codes need a dataset convention
    with pytest.raises(RecordError, match="record r: sex 'unknown' is missing or unknown"):
        validate_patient(50, "unknown", "r")


def test_record_error_message_and_pickle():
    import pickle

    err = RecordError("42", "lead V1 is flat")
    assert str(err) == "record 42: lead V1 is flat" and isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert (again.record_id, again.reason) == ("42", "lead V1 is flat")


# ------------------------------------------------------------------------------- prepare / registry


def test_load_records_skips_bad_records(mimic_root):
    records, skipped = load_records("mimic", mimic_root, progress=False)
    assert [r.record_id for r in records] == ["50000001", "50000002", "50000003"]
    assert skipped == [("50000004", f"subject_id 90000004 has no row in {mimic_root / 'patients.csv'}")]
    text = format_skipped(skipped)
    assert text.startswith("skipped 1 record(s):") and "50000004: subject_id 90000004" in text


def test_load_records_with_ids_and_options(ptbxl_root):
    records, skipped = load_records("ptbxl", ptbxl_root, ["2", "108", "nope"], progress=False, sampling_rate=100)
    assert [r.record_id for r in records] == ["2"] and records[0].metadata["fs"] == 100.0
    assert [s[0] for s in skipped] == ["108", "nope"] and "age is missing" in skipped[0][1]
    assert "by reason:" in format_skipped(skipped) and format_skipped([]) == "skipped 0 records"


def test_list_records(ptbxl_root, ludb_root, mimic_root):
    assert ptbxl.list_records(ptbxl_root) == ["1", "2", "103", "108", "321"]
    assert ludb.list_records(ludb_root) == ["1", "8", "34", "35", "70"]
    assert mimic.list_records(mimic_root) == ["50000001", "50000002", "50000003", "50000004"]


def test_get_reader():
    assert set(READERS) == {"ptbxl", "ludb", "mimic", "cinc"} and get_reader("ludb") is ludb
    with pytest.raises(ValueError, match="unknown data source 'ptb'; valid sources: cinc, ludb, mimic, ptbxl"):
        get_reader("ptb")
