"""PTB-XL 1.0.3 reader (Wagner et al., 2020; PhysioNet, CC BY 4.0).

Layout (PhysioNet distribution): `ptbxl_database.csv` (one row per `ecg_id`; `scp_codes` is a
dict literal `{code: likelihood}`; `sex` 0 = male, 1 = female; `strat_fold` 1..10),
`scp_statements.csv` (code -> English `description`) and WFDB records `records500/..._hr`
(500 Hz, 5000 samples) and `records100/..._lr` (100 Hz), leads `I, II, III, AVR, AVL, AVF, V1..V6`.

Differences from the official `dataset/ptbxl_dataset.py` (`PtbxlDataset`): the signal is
resampled to 102.4 Hz like MIMIC (not 125 Hz + centre crop), leads are put in `LEADS` order
(official keeps the file order), the 100 Hz files work, and the text is the English SCP
statement descriptions instead of the raw (mostly German) report, which is kept in metadata.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pandas as pd

from .records import ECGRecord, RecordError, build_record, read_wfdb

NAME = "ptbxl"
SEX_CODES = {0: "M", 1: "F"}
_FILE_COLUMN = {500: "filename_hr", 100: "filename_lr"}


@functools.lru_cache(maxsize=4)
def _tables(root: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """(database indexed by str ecg_id, {scp code: English description})."""
    try:
        db = pd.read_csv(Path(root) / "ptbxl_database.csv", dtype={"ecg_id": str}).set_index("ecg_id")
        scp = pd.read_csv(Path(root) / "scp_statements.csv", index_col=0)
    except (OSError, ValueError, KeyError) as err:
        raise RecordError(root, f"cannot read PTB-XL tables in {root}: {err}") from err
    needed = ("patient_id", "age", "sex", "scp_codes", "report", "strat_fold")
    if missing := [c for c in needed if c not in db.columns]:
        raise RecordError(
            root, f"{Path(root) / 'ptbxl_database.csv'} lacks the column(s) {', '.join(missing)} of PTB-XL 1.0.3"
        )
    if "description" not in scp.columns:
        raise RecordError(root, f"{Path(root) / 'scp_statements.csv'} lacks the column description")
    return db, scp["description"].to_dict()


def list_records(root) -> list[str]:
    """All `ecg_id` values (as strings) in `root/ptbxl_database.csv`, in file order."""
    return list(_tables(str(root))[0].index)


def statements_from_scp(scp_codes: dict[str, float], descriptions: dict[str, str]) -> tuple[list[str], list[str]]:
    """English descriptions of `scp_codes` by likelihood, highest first (ties keep dict order).

    Returns `(statements, unknown_codes)`; codes absent from `descriptions` are skipped.
    """
    ordered = sorted(scp_codes, key=lambda code: -float(scp_codes[code]))  # sorted() is stable
    return [descriptions[c] for c in ordered if c in descriptions], [c for c in ordered if c not in descriptions]


def load_record(root, record_id: str, sampling_rate: int = 500) -> ECGRecord:
    """Load PTB-XL `ecg_id` `record_id` as an `ECGRecord` (source `'ptbxl'`).

    Args:
        root: PTB-XL directory (holding `ptbxl_database.csv`).
        record_id: `ecg_id`, e.g. `"1"`.
        sampling_rate: 500 (`records500`, default, as official) or 100 (`records100`).

    Returns:
        Record with statements = SCP descriptions by likelihood, HR from XQRS on the native-rate
        signal, `fold = strat_fold`; `metadata` has `report`, `scp_codes` and, if any,
        `unknown_scp_codes`.

    Raises:
        RecordError: unknown id or rate, unreadable files, missing/invalid age or sex, no known
        SCP statement, bad signal or no detectable heart rate.
    """
    record_id = str(record_id)
    if sampling_rate not in _FILE_COLUMN:
        raise RecordError(record_id, f"sampling_rate must be 100 or 500, got {sampling_rate!r}")
    db, descriptions = _tables(str(root))
    if record_id not in db.index:
        raise RecordError(record_id, f"ecg_id not found in {Path(root) / 'ptbxl_database.csv'}")
    row = db.loc[record_id]
    try:
        scp_codes = ast.literal_eval(row["scp_codes"])
    except (ValueError, SyntaxError) as err:
        raise RecordError(record_id, f"unparsable scp_codes {row['scp_codes']!r}") from err
    statements, unknown = statements_from_scp(scp_codes, descriptions)
    metadata = {"report": row["report"], "scp_codes": scp_codes}
    if unknown:
        metadata["unknown_scp_codes"] = unknown
    raw = read_wfdb(Path(root) / row[_FILE_COLUMN[sampling_rate]], record_id)
    return build_record(
        record_id=record_id,
        patient_id=f"{row['patient_id']:.0f}",
        raw=raw,
        age=row["age"],
        sex=row["sex"],
        numeric_sex=SEX_CODES,
        statements=statements,
        fold=int(row["strat_fold"]),
        source=NAME,
        metadata=metadata,
    )
