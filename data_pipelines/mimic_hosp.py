"""MIMIC-IV hospital code sets of MIMIC-IV-ECG records: link, write and read `hosp_codes.jsonl`.

SE-Diff (Wang et al., ICLR 2026, arXiv:2511.09895, experience retrieval) describes each admission
by three code sets, diagnoses (`diagnoses_icd`), medications (`prescriptions`) and procedures
(`procedures_icd`) of MIMIC-IV's `hosp` module (Johnson et al. 2023, MIMIC-IV v2.2, PhysioNet).
`link_hosp_codes()` joins each MIMIC-IV-ECG study to the hospital admission that was open when
it was recorded (`record_list.csv` `subject_id` and `ecg_time` against `admissions`
`admittime`..`dischtime`) and collects those sets; `attach_hosp_codes()` writes them beside a
processed set, where retrieval reads them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

#: The hospital code-set views (SE-Diff's tri-view profile).
CODE_VIEWS = ("diagnoses", "medications", "procedures")
#: Sidecar file of a processed set with its MIMIC-IV hospital code sets (one JSON line per record).
HOSP_CODES_FILE = "hosp_codes.jsonl"


def read_hosp_codes(processed_dir: str | Path) -> dict[str, dict[str, frozenset[str]]]:
    """`{record_id: {view: frozenset(codes)}}` from `processed_dir/hosp_codes.jsonl` ({} if absent)."""
    path = Path(processed_dir) / HOSP_CODES_FILE
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            out[str(row["record_id"])] = {v: frozenset(map(str, row[v])) for v in CODE_VIEWS if v in row}
    return out


def write_hosp_codes(processed_dir: str | Path, codes: Mapping[str, Mapping[str, Sequence[str]]]) -> Path:
    """Write `{record_id: {view: codes}}` as `processed_dir/hosp_codes.jsonl` (sorted codes)."""
    path = Path(processed_dir) / HOSP_CODES_FILE
    with open(path, "w") as f:
        for record_id, views in codes.items():
            f.write(
                json.dumps({"record_id": str(record_id), **{v: sorted(views[v]) for v in CODE_VIEWS if v in views}})
                + "\n"
            )
    return path


def _hosp_table(hosp_root: Path, name: str, columns: Sequence[str]):
    import pandas as pd

    for candidate in (
        hosp_root / f"{name}.csv",
        hosp_root / f"{name}.csv.gz",
        hosp_root / "hosp" / f"{name}.csv",
        hosp_root / "hosp" / f"{name}.csv.gz",
    ):
        if candidate.is_file():
            return pd.read_csv(candidate, usecols=list(columns), dtype={"icd_code": str}, low_memory=False)
    return None


def link_hosp_codes(
    ecg_root: str | Path,
    hosp_root: str | Path,
    record_ids: Sequence[str] | None = None,
    *,
    hours_before_admission: float = 24.0,
    icd_chars: int | None = None,
) -> dict[str, dict[str, list[str]]]:
    """SE-Diff's tri-view profiles: the MIMIC-IV hospital code sets of each MIMIC-IV-ECG study.

    An ECG (`ecg_root/record_list.csv`: `subject_id, study_id, ecg_time`) is linked to the
    admission of the same subject (`admissions`: `subject_id, hadm_id, admittime, dischtime`)
    with `admittime - hours_before_admission <= ecg_time <= dischtime` (emergency ECGs precede
    the admission); of several, the latest admission starting before the ECG (else the earliest).
    Its code sets are the admission's `diagnoses_icd` and `procedures_icd` codes as
    `"ICD<version>:<code>"` (`icd_chars`: keep only the first characters, e.g. 3 for ICD
    categories) and the lower-cased `drug` names of `prescriptions`. Tables are read from
    `hosp_root` or `hosp_root/hosp` as `.csv` or `.csv.gz`; a missing table gives no view.

    Returns `{study_id: {view: sorted codes}}` for linked studies (of `record_ids` if given).
    Raises FileNotFoundError if `record_list.csv` or `admissions` is missing.
    """
    import pandas as pd

    ecg_root, hosp_root = Path(ecg_root), Path(hosp_root)
    if not (ecg_root / "record_list.csv").is_file():
        raise FileNotFoundError(f"{ecg_root / 'record_list.csv'} not found (MIMIC-IV-ECG root)")
    ecgs = pd.read_csv(
        ecg_root / "record_list.csv", usecols=["subject_id", "study_id", "ecg_time"], dtype={"study_id": str}
    )
    if record_ids is not None:
        ecgs = ecgs[ecgs["study_id"].isin([str(r) for r in record_ids])]
    admissions = _hosp_table(hosp_root, "admissions", ["subject_id", "hadm_id", "admittime", "dischtime"])
    if admissions is None:
        raise FileNotFoundError(f"no admissions.csv(.gz) under {hosp_root} (MIMIC-IV hosp module)")
    merged = ecgs.merge(admissions, on="subject_id")
    for column in ("ecg_time", "admittime", "dischtime"):
        merged[column] = pd.to_datetime(merged[column])
    inside = (merged["ecg_time"] >= merged["admittime"] - pd.Timedelta(hours=hours_before_admission)) & (
        merged["ecg_time"] <= merged["dischtime"]
    )
    merged = merged[inside].copy()
    merged["started_before"] = merged["admittime"] <= merged["ecg_time"]
    merged = merged.sort_values(["study_id", "started_before", "admittime"], ascending=[True, False, True])
    # started before the ECG: latest such admission; else earliest after
    before = merged[merged["started_before"]].groupby("study_id").tail(1)
    after = merged[~merged["started_before"]].groupby("study_id").head(1)
    link = pd.concat([before, after.loc[~after["study_id"].isin(before["study_id"])]])
    hadm_of = dict(zip(link["study_id"], link["hadm_id"]))

    sets: dict[str, dict] = {}

    def icd(row_version, code) -> str:
        code = str(code).strip()
        return f"ICD{int(row_version)}:{code[:icd_chars] if icd_chars else code}"

    for view, name, columns in (
        ("diagnoses", "diagnoses_icd", ["hadm_id", "icd_code", "icd_version"]),
        ("procedures", "procedures_icd", ["hadm_id", "icd_code", "icd_version"]),
        ("medications", "prescriptions", ["hadm_id", "drug"]),
    ):
        table = _hosp_table(hosp_root, name, columns)
        if table is None:
            continue
        table = table[table["hadm_id"].isin(set(hadm_of.values()))].dropna()
        if view == "medications":
            values = table["drug"].astype(str).str.lower().str.strip()
        else:
            values = [icd(v, c) for v, c in zip(table["icd_version"], table["icd_code"])]
        for hadm, value in zip(table["hadm_id"], values):
            sets.setdefault(hadm, {}).setdefault(view, set()).add(value)
    return {study: {v: sorted(s) for v, s in sets.get(hadm, {}).items()} for study, hadm in hadm_of.items()}


def attach_hosp_codes(
    processed_dir: str | Path, hosp_root: str | Path, ecg_root: str | Path | None = None, **options
) -> Path:
    """Link a processed MIMIC-IV-ECG set to MIMIC-IV hosp (`link_hosp_codes()`) and write
    `processed_dir/hosp_codes.jsonl`; `ecg_root` defaults to `info.json`'s `root`."""
    info = json.loads((Path(processed_dir) / "info.json").read_text())
    with np.load(Path(processed_dir) / "dataset.npz", allow_pickle=False) as data:
        record_ids = data["record_ids"].tolist()
    codes = link_hosp_codes(ecg_root or info["root"], hosp_root, record_ids, **options)
    return write_hosp_codes(processed_dir, codes)
