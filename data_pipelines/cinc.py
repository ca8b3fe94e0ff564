"""PhysioNet/CinC Challenge 2020/2021 reader (Reyna et al., 2021; Perez Alday et al., 2020; PhysioNet, CC BY 4.0).

Layout under `root`: one folder per source database (`cpsc_2018/`, `cpsc_2018_extra/`,
`georgia/`, `chapman_shaoxing/`, `ningbo/`, `ptb/`, `ptb-xl/`; the official download may
nest them further, e.g. `training/georgia/g1/`), each record a WFDB header `NAME.hea` plus a
MATLAB v4 `NAME.mat` (format `16+24`: int16 after a 24-byte MAT header, read by `wfdb`),
12 leads `I, II, III, aVR, aVL, aVF, V1..V6`, 500 Hz (PTB: 1000 Hz), 10 s to 115 s. Header
comments hold `#Age: 85` (`NaN` when unknown), `#Sex: Male` and `#Dx: 164889003,59118001`
(SNOMED CT codes), named in English by `dx_mapping_scored.csv` / `dx_mapping_unscored.csv`
(columns `Dx` = name, `SNOMEDCTCode`, `Abbreviation`) in `root`. An optional `RECORDS`
file lists the records (`georgia/E00004`); without it every `*.hea` under `root` is one.

**10 s windows.** The model takes 10 s, so a longer record gives every complete, non-overlapping
10 s window as its own example, ids `<record>_w<k>` (`ptb/S0001_w0`, `_w1`, ... covering
samples `[k * 10 fs, (k + 1) * 10 fs)`; the remainder shorter than 10 s is dropped): a 38.4 s
record gives 3 windows. A record of 10 s (within one sample, as the other readers accept) keeps
its plain id (`georgia/E00004`); any longer record, even one with a single complete window
(12 s), gets `_w0`, so the suffix always says "a slice of a longer recording".
`list_records()` lists the window ids (it reads every header) and `load_record()` parses
them, so `load_records('cinc', root)`, `prepare`, the TFDS builder and the skipped-records
listing work per window; a bad window (flat lead, NaN, no detectable rhythm) is skipped alone,
a bad header skips every window of its record, each listed with its reason. Heart rate is
detected per window (XQRS on the native-rate window, `records.detect_heart_rate()`).

**Patients and folds.** The Challenge headers have no patient ids. `patient_id` is the record
name (`A0005`: names are unique across the Challenge's databases, so folds do not depend on
the folder layout) and `fold = patient_fold(patient_id)`; every window of a record has its
record's fold. Exception, PTB: its Challenge records `S0001`.. follow the order of PTB's own
`RECORDS` list, so several come from one patient; `PTB_PATIENTS` maps the ones checked
(age/sex of `S0001`-`S0010` fall in exactly the groups of PTB patients 001-005: 81 F x3,
58 F, 63 M, 69 M x2, 74 M x3) to the PTB patient, so one patient's records share a fold.

**Duplicates.** `ptb-xl/` holds PTB-XL's own 500 Hz records (Challenge name `HR<ecg_id>`, the
collection README found `HR00001`-`HR00010` identical to PTB-XL `ecg_id` 1-10): training on
PTB-XL together with this set would count those ECGs twice and could put one PTB-XL patient in two
folds (PTB-XL folds are its `strat_fold`, ours are by record). `list_records()` therefore
leaves `ptb-xl/` out by default (`exclude=DUPLICATE_FOLDERS`; `exclude=()` keeps it; the
shared development copy's `HR` records, ecg_id 599, 6001-6009, 20715, do not overlap the shared
PTB-XL subset, ecg_id 1-500: no signal there correlates above 0.51 with any of them).
`KNOWN_DUPLICATES` lists records whose `.mat` is byte-identical to another record's (found by
hashing every signal file of the shared copy); they are skipped with a reason naming the original.

Statements are the English `Dx` names of the header's codes in header order (repeats dropped);
a code in neither mapping file becomes `'unknown diagnosis (SNOMED CT <code>)'` (e.g. Ningbo's
`251238007`), listed in `metadata['unknown_dx_codes']`. `metadata` also holds `record`
(the record id without window suffix), `database` (its folder), `window` (k or None),
`start_s`, `dx_codes` and `dx_abbreviations` (`''` for unknown codes).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pandas as pd
import wfdb

from diffusets_jax.constants import DURATION_S

from .records import ECGRecord, RawSignal, RecordError, build_record, patient_fold, read_wfdb

NAME = "cinc"
MAPPING_FILES = ("dx_mapping_scored.csv", "dx_mapping_unscored.csv")
#: Folders left out by `list_records()` by default: copies of another reader's records.
DUPLICATE_FOLDERS = ("ptb-xl",)
#: Record name -> record it duplicates (byte-identical `.mat`, same age, sex and Dx).
KNOWN_DUPLICATES = {"E07510": "E07509"}
#: PTB Challenge record -> PTB patient (checked by age/sex; see the module docstring).
PTB_PATIENTS = {
    "S0001": "patient001",
    "S0002": "patient001",
    "S0003": "patient001",
    "S0004": "patient002",
    "S0005": "patient003",
    "S0006": "patient004",
    "S0007": "patient004",
    "S0008": "patient005",
    "S0009": "patient005",
    "S0010": "patient005",
}
_WINDOW_ID = re.compile(r"^(?P<record>.+)_w(?P<window>\d+)$")


@functools.lru_cache(maxsize=4)
def dx_mapping(root: str) -> dict[str, tuple[str, str]]:
    """`{SNOMED CT code: (English name, abbreviation)}` from the mapping CSVs in `root`
    (scored first; a code in both keeps its scored name).

    Raises:
        RecordError: naming `root` if neither file is readable or one lacks the columns.
    """
    mapping: dict[str, tuple[str, str]] = {}
    found = []
    for name in MAPPING_FILES:
        path = Path(root) / name
        if not path.exists():
            continue
        try:
            table = pd.read_csv(path, dtype=str, keep_default_na=False)
            rows = zip(table["SNOMEDCTCode"], table["Dx"], table["Abbreviation"])
        except (OSError, ValueError, KeyError) as err:
            raise RecordError(root, f"cannot read {path}: {type(err).__name__}: {err}") from err
        for code, dx, abbreviation in rows:
            mapping.setdefault(code.strip(), (dx.strip(), abbreviation.strip()))
        found.append(name)
    if not found:
        raise RecordError(root, f"no Dx mapping file ({' or '.join(MAPPING_FILES)}) in {root}")
    return mapping


def unknown_statement(code: str) -> str:
    """Statement for a code in neither mapping file."""
    return f"unknown diagnosis (SNOMED CT {code})"


def parse_comments(comments: list[str]) -> dict[str, str]:
    """Header comments (`'Age: 85'`, `' Sex: Male'`, ...) -> `{'age': '85', 'sex': 'Male', 'dx': ...}`.

    Keys are lower case; a missing field is absent. Both the Challenge's `#Age:` and the
    `# Age:` written by `wfdb` are read.
    """
    info = {}
    for line in comments:
        key, sep, value = line.strip().lstrip("#").partition(":")
        if sep:
            info.setdefault(key.strip().lower(), value.strip())
    return info


def statements_from_dx(dx: str, mapping: dict[str, tuple[str, str]]) -> tuple[list[str], list[str], list[str]]:
    """`'164889003,59118001'` -> `(statements, codes, unknown_codes)`: English names in header
    order, repeated codes dropped; unknown codes named by `unknown_statement()`."""
    codes = list(dict.fromkeys(c.strip() for c in dx.split(",") if c.strip()))
    statements = [mapping[c][0] if c in mapping else unknown_statement(c) for c in codes]
    return statements, codes, [c for c in codes if c not in mapping]


def window_length(fs: float) -> int:
    """Samples in one 10 s window at `fs` Hz."""
    return round(DURATION_S * fs)


def window_count(num_samples: int, fs: float) -> int:
    """Complete 10 s windows of a record; 0 means "use the record as one 10 s example" (it is
    within one sample of 10 s, or too short, which `load_record()` reports)."""
    n = window_length(fs)
    return 0 if num_samples <= n + 1 else num_samples // n


def _header_windows(root: Path, record: str) -> int:
    """`window_count()` from the record's header; 0 if the header is unreadable (the error
    is then reported by `load_record()`)."""
    try:
        header = wfdb.rdheader(str(root / record))
        return window_count(int(header.sig_len), float(header.fs))
    except Exception:  # wfdb raises many types; load_record reports the cause
        return 0


def list_record_names(root, exclude=DUPLICATE_FOLDERS) -> list[str]:
    """Record ids (`georgia/E00004`) from `root/RECORDS`, else every `*.hea` under `root`
    (sorted), leaving out records in a folder named in `exclude`."""
    root = Path(root)
    exclude = {exclude} if isinstance(exclude, str) else set(exclude)
    listing = root / "RECORDS"
    if listing.exists():
        names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    else:
        names = sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.hea"))
    return [n for n in names if not set(Path(n).parts[:-1]) & exclude]


def list_records(root, exclude=DUPLICATE_FOLDERS) -> list[str]:
    """Example ids: each record's window ids `<record>_w<k>`, or its plain id if it is 10 s.

    Args:
        root: the Challenge data directory (holding the database folders and mapping CSVs).
        exclude: folder names left out; default `DUPLICATE_FOLDERS` = `('ptb-xl',)` (see the
            module docstring); `()` lists everything.

    Raises:
        RecordError: naming `root` if the Dx mapping files are missing or unreadable.
    """
    root = Path(root)
    dx_mapping(str(root))
    ids = []
    for record in list_record_names(root, exclude):
        windows = _header_windows(root, record)
        ids += [f"{record}_w{k}" for k in range(windows)] if windows else [record]
    return ids


def split_window_id(example_id: str) -> tuple[str, int | None]:
    """`'ptb/S0001_w2'` -> `('ptb/S0001', 2)`; `'georgia/E00004'` -> `('georgia/E00004', None)`."""
    match = _WINDOW_ID.match(example_id)
    return (match["record"], int(match["window"])) if match else (example_id, None)


@functools.lru_cache(maxsize=2)
def _read(path: str, record: str) -> RawSignal:
    """The whole record (cached: consecutive windows of one record read it once). Not mutated by
    callers: windows are slices, and `records.build_record()` copies before changing."""
    return read_wfdb(path, record)


def patient_of(record: str) -> str:
    """Patient id of a record: the PTB patient for records in `PTB_PATIENTS`, else the record name."""
    name = Path(record).name
    return PTB_PATIENTS.get(name, name) if "ptb" in Path(record).parts[:-1] else name


def load_record(root, record_id: str) -> ECGRecord:
    """Load example `record_id` (`'ptb/S0001_w2'` or a 10 s record's `'georgia/E00004'`).

    Args:
        root: the Challenge data directory.
        record_id: an id from `list_records()`: `<record>_w<k>` is the k-th 10 s window,
            a plain record id the whole 10 s record.

    Returns:
        Record with statements = English `Dx` names (see the module docstring), age, sex,
        heart rate from XQRS on the window, `patient_id` = record name (PTB: its patient),
        `fold = patient_fold(patient_id)`.

    Raises:
        RecordError: a known duplicate; unreadable or corrupt files; window beyond the record, or
        a plain id of a record longer than 10 s; age missing/`NaN`/out of range; sex other than
        Male/Female; empty `#Dx`; bad signal (too short, flat lead, NaN); no detectable HR.
    """
    record_id = str(record_id)
    record, window = split_window_id(record_id)
    name = Path(record).name
    if name in KNOWN_DUPLICATES:
        raise RecordError(
            record_id,
            f"duplicate of record {KNOWN_DUPLICATES[name]} (byte-identical signal file, same age, sex and Dx)",
        )
    mapping = dx_mapping(str(root))
    raw = _read(str(Path(root) / record), record)
    windows = window_count(raw.signal.shape[0], raw.fs)
    duration = f"{raw.signal.shape[0] / raw.fs:.1f} s"
    if window is None and windows:
        raise RecordError(
            record_id, f"record is {duration} long: load its 10 s windows {record}_w0 .. {record}_w{windows - 1}"
        )
    if window is not None and not windows:
        raise RecordError(record_id, f"record {record} is {duration} long, not split into windows: use its plain id")
    if window is not None and window >= windows:
        raise RecordError(
            record_id,
            f"record {record} ({duration}) has {windows} complete 10 s window(s); window {window} does not exist",
        )
    if window is not None:
        n = window_length(raw.fs)
        raw = RawSignal(raw.signal[window * n : (window + 1) * n], raw.fs, raw.lead_names, raw.comments, raw.path)
    info = parse_comments(raw.comments)
    statements, codes, unknown = statements_from_dx(info.get("dx", ""), mapping)
    patient = patient_of(record)
    metadata = {
        "record": record,
        "database": Path(record).parts[0] if len(Path(record).parts) > 1 else "",
        "window": window,
        "start_s": (window or 0) * DURATION_S,
        "dx_codes": codes,
        "dx_abbreviations": [mapping[c][1] if c in mapping else "" for c in codes],
    }
    if unknown:
        metadata["unknown_dx_codes"] = unknown
    if window is not None:
        metadata["notes"] = [
            f"10 s window {window} ({metadata['start_s']:g}-{metadata['start_s'] + DURATION_S:g} s) "
            f"of a {duration} record"
        ]
    return build_record(
        record_id=record_id,
        patient_id=patient,
        raw=raw,
        age=info.get("age"),
        sex=info.get("sex"),
        statements=statements,
        fold=patient_fold(patient),
        source=NAME,
        metadata=metadata,
    )


__all__ = [
    "NAME",
    "DUPLICATE_FOLDERS",
    "KNOWN_DUPLICATES",
    "PTB_PATIENTS",
    "dx_mapping",
    "list_records",
    "list_record_names",
    "load_record",
    "parse_comments",
    "patient_of",
    "split_window_id",
    "statements_from_dx",
    "window_count",
]
