"""Write a synthetic MIMIC-IV-ECG-layout corpus of N studies from the 4 real fixture records.

    python tests/data/make_mimic_corpus.py OUT_DIR N

Study `k` (ids `60000000 + k`, subject `91000000 + k`, so the patient-wise folds spread the
studies over the three splits) copies fixture study `50000001 + k % 4` (tests/data/mimic_fixture,
real PTB-XL and LUDB ECGs; see make_mimic_fixture.py) with its report and machine `rr_interval`,
and a small deterministic perturbation of the signal: amplitude scaled by `1 + 0.02 u`, Gaussian
noise of 0.01 mV and a circular shift of `7 k mod 200` samples (`u` and the noise from
`numpy.random.default_rng(k)`). Bad records, each with its own reason, as in a real download:

- `k % 50 == 3`: the subject has no row in patients.csv (as fixture study 50000004);
- `k % 101 == 100`: the `.dat` file is missing (unreadable record);
- `k % 101 == 50`: a 0.2 Hz, 0.5 mV sine instead of an ECG and no machine RR (no rhythm found).

Copies of 50000004 that do have a patients.csv row get age 70, sex M. Nothing is committed: tests
and benchmarks/tfds_scale.py write the corpus into a temporary directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import wfdb

FIXTURE = Path(__file__).resolve().parent / "mimic_fixture"
FIRST_STUDY, FIRST_SUBJECT = 60_000_000, 91_000_000


def _fixture():
    records = pd.read_csv(FIXTURE / "record_list.csv")
    measurements = pd.read_csv(FIXTURE / "machine_measurements.csv")
    patients = pd.read_csv(FIXTURE / "patients.csv").set_index("subject_id")
    sources = []
    for (_, rec), (_, meas) in zip(records.iterrows(), measurements.iterrows()):
        wf = wfdb.rdrecord(str(FIXTURE / rec["path"]))
        patient = patients.loc[rec["subject_id"]] if rec["subject_id"] in patients.index else None
        sources.append({"signal": wf.p_signal, "sig_name": wf.sig_name, "measurements": meas,
                        "gender": "M" if patient is None else patient["gender"],
                        "age": 70 if patient is None else int(patient["anchor_age"])})
    return sources


def make_corpus(out, n: int) -> Path:
    """Write `n` studies under `out` (record_list.csv, machine_measurements.csv, patients.csv,
    files/); returns `out`. Deterministic: the same `n` gives the same files."""
    out = Path(out)
    sources = _fixture()
    records, measurements, patients = [], [], []
    for k in range(n):
        src = sources[k % len(sources)]
        study, subject = FIRST_STUDY + k, FIRST_SUBJECT + k
        rng = np.random.default_rng(k)
        signal = np.roll(src["signal"] * (1 + 0.02 * rng.uniform(-1, 1)), 7 * k % 200, axis=0)
        signal = signal + rng.normal(0, 0.01, signal.shape)
        meas = src["measurements"].copy()
        if k % 101 == 50:  # no rhythm
            t = np.arange(signal.shape[0]) / 500.0
            signal = np.repeat(0.5 * np.sin(2 * np.pi * 0.2 * t)[:, None], signal.shape[1], axis=1)
            meas["rr_interval"] = np.nan
        rel = Path("files") / f"p{str(subject)[:4]}" / f"p{subject}" / f"s{study}"
        (out / rel).mkdir(parents=True, exist_ok=True)
        wfdb.wrsamp(str(study), fs=500, units=["mV"] * 12, sig_name=src["sig_name"], p_signal=signal,
                    fmt=["16"] * 12, adc_gain=[200.0] * 12, baseline=[0] * 12, write_dir=str(out / rel))
        if k % 101 == 100:  # unreadable
            (out / rel / f"{study}.dat").unlink()
        ecg_time = f"2181-{1 + k % 12:02d}-{1 + k % 28:02d} {k % 24:02d}:{k % 60:02d}:00"
        records.append({"subject_id": subject, "study_id": study, "file_name": study, "ecg_time": ecg_time,
                        "path": str(rel / str(study))})
        meas["subject_id"], meas["study_id"], meas["ecg_time"] = subject, study, ecg_time
        measurements.append(meas)
        if k % 50 != 3:
            patients.append({"subject_id": subject, "gender": src["gender"], "anchor_age": src["age"],
                             "anchor_year": 2181, "anchor_year_group": "2014 - 2016", "dod": ""})
    pd.DataFrame(records).to_csv(out / "record_list.csv", index=False)
    table = pd.DataFrame(measurements)
    table["rr_interval"] = table["rr_interval"].astype("Int64")
    table.to_csv(out / "machine_measurements.csv", index=False)
    pd.DataFrame(patients).to_csv(out / "patients.csv", index=False)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.splitlines()[2].strip())
    print(make_corpus(Path(sys.argv[1]), int(sys.argv[2])))
