"""Regenerate tests/data/mimic_fixture: 4 real ECGs laid out like MIMIC-IV-ECG 1.0.

    python tests/data/make_mimic_fixture.py [/work/shared/data]

MIMIC-IV-ECG itself is credentialed and not available here, so the signals are real 500 Hz PTB-XL
1.0.3 and LUDB 1.0.1 records re-written with `wfdb.wrsamp` in MIMIC's format (16-bit, 200 adu/mV,
leads named and ordered `I, II, III, aVR, aVF, aVL, V1..V6`: aVF before aVL). Identifiers,
dates and cart fields are invented (subject ids 9000000x do not exist in MIMIC). Report statements
come from the source record (PTB-XL English report or SCP descriptions; LUDB diagnoses); age/sex
are the source patient's. Each study exercises one case of the reader:

- 50000001 <- PTB-XL ecg_id 330 (atrial fibrillation): valid rr_interval -> HR = 60000 / rr.
- 50000002 <- LUDB record 8 (atrial fibrillation): rr_interval NaN -> XQRS fallback.
- 50000003 <- PTB-XL ecg_id 225 (sinus bradycardia): rr_interval 29999 (MIMIC "missing") -> XQRS.
- 50000004 <- PTB-XL ecg_id 385 (pacemaker): subject has no row in patients.csv -> RecordError.
"""

import ast
import shutil
import sys
from pathlib import Path

import pandas as pd
import wfdb

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from diffusets_jax.data_pipelines.records import detect_heart_rate, reorder_leads  # noqa: E402
from diffusets_jax.constants import LEADS  # noqa: E402

OUT = Path(__file__).resolve().parent / "mimic_fixture"
MIMIC_LEADS = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]
REPORT_COLUMNS = [f"report_{i}" for i in range(18)]
MEASUREMENT_COLUMNS = (["subject_id", "study_id", "cart_id", "ecg_time"] + REPORT_COLUMNS
                       + ["bandwidth", "filtering", "rr_interval", "p_onset", "p_end", "qrs_onset", "qrs_end",
                          "t_end", "p_axis", "qrs_axis", "t_axis"])
# (study_id, subject_id, source, source id, rr_interval: "auto" | NaN | number, in patients.csv)
STUDIES = [
    (50000001, 90000001, "ptbxl", 330, "auto", True),
    (50000002, 90000002, "ludb", 8, float("nan"), True),
    (50000003, 90000003, "ptbxl", 225, 29999, True),
    (50000004, 90000004, "ptbxl", 385, 1000, False),
]


def source_record(shared: Path, source: str, source_id: int) -> dict:
    """Signal in LEADS order (5000, 12) mV at 500 Hz, age, sex ('M'/'F') and report statements."""
    if source == "ludb":
        rec = wfdb.rdrecord(str(shared / "ludb" / "data" / str(source_id)))
        info = dict(c.split(": ", 1) for c in rec.comments if c.startswith("<") and ": " in c)
        start = rec.comments.index("<diagnoses>:") + 1
        statements = [c.strip().rstrip(".").removeprefix("Rhythm: ") for c in rec.comments[start:]]
        age, sex = int(info["<age>"]), info["<sex>"]
    else:
        db = pd.read_csv(shared / "ptb-xl" / "ptbxl_database.csv", index_col="ecg_id")
        scp = pd.read_csv(shared / "ptb-xl" / "scp_statements.csv", index_col=0)["description"]
        row = db.loc[source_id]
        rec = wfdb.rdrecord(str(shared / "ptb-xl" / row["filename_hr"]))
        if row["report"].isascii() and ". " in row["report"]:  # English report: split into sentences
            statements = [s.strip().rstrip(".") for s in row["report"].split(". ") if s.strip(" .")]
        else:
            codes = ast.literal_eval(row["scp_codes"])
            statements = [scp[c] for c in sorted(codes, key=lambda c: -codes[c])]
        age, sex = int(row["age"]), {0: "M", 1: "F"}[int(row["sex"])]
    statements = [s[0].upper() + s[1:] for s in statements]
    assert rec.fs == 500 and rec.p_signal.shape == (5000, 12)
    return {"signal": reorder_leads(rec.p_signal, rec.sig_name), "age": age, "sex": sex, "statements": statements}


def main(shared: Path) -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    records, measurements, patients = [], [], []
    for k, (study, subject, source, source_id, rr, has_patient) in enumerate(STUDIES):
        src = source_record(shared, source, source_id)
        rel = Path("files") / f"p{str(subject)[:4]}" / f"p{subject}" / f"s{study}"
        (OUT / rel).mkdir(parents=True)
        mimic_order = [LEADS.index(name) for name in MIMIC_LEADS]
        wfdb.wrsamp(str(study), fs=500, units=["mV"] * 12, sig_name=MIMIC_LEADS,
                    p_signal=src["signal"][:, mimic_order], fmt=["16"] * 12, adc_gain=[200.0] * 12,
                    baseline=[0] * 12, write_dir=str(OUT / rel))
        if rr == "auto":  # machine RR: mean RR of the source signal, whole ms
            rr = round(60000 / detect_heart_rate(src["signal"], 500.0))
        ecg_time = f"2180-{k + 1:02d}-{10 + k} {8 + k:02d}:{10 + k}:00"
        records.append({"subject_id": subject, "study_id": study, "file_name": study, "ecg_time": ecg_time,
                        "path": str(rel / str(study))})
        reports = dict(zip(REPORT_COLUMNS, src["statements"]))
        measurements.append({"subject_id": subject, "study_id": study, "cart_id": 6000 + k, "ecg_time": ecg_time,
                             **reports, "bandwidth": "0.005-150 Hz", "filtering": "60 Hz notch  Baseline filter",
                             "rr_interval": rr})
        if has_patient:
            patients.append({"subject_id": subject, "gender": src["sex"], "anchor_age": src["age"],
                             "anchor_year": 2180, "anchor_year_group": "2014 - 2016", "dod": ""})
    pd.DataFrame(records).to_csv(OUT / "record_list.csv", index=False)
    measurements = pd.DataFrame(measurements, columns=MEASUREMENT_COLUMNS)
    measurements["rr_interval"] = measurements["rr_interval"].astype("Int64")  # whole ms, as in MIMIC
    measurements.to_csv(OUT / "machine_measurements.csv", index=False)
    pd.DataFrame(patients).to_csv(OUT / "patients.csv", index=False)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data"))
