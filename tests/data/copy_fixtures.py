"""Copy the small real-data test fixtures from the shared development data (run once, by hand).

    python tests/data/copy_fixtures.py [/work/shared/data]

Copies unmodified PTB-XL 1.0.3 and LUDB 1.0.1 files into tests/data/ptb-xl and tests/data/ludb;
metadata CSVs are trimmed to the chosen records, keeping the header and the rows byte-for-byte.
See ATTRIBUTION.md for the sources and licences.
"""

import csv
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# ecg_id: 1 normal/sinus (tied likelihoods), 2 sinus bradycardia, 103 sinus tachycardia with several
# codes, 321 atrial fibrillation (rapid), 108 sinus tachycardia with missing age (must be skipped).
PTBXL_IDS = [1, 2, 103, 108, 321]
# LUDB: 1 sinus bradycardia, 8 atrial fibrillation, 34 age 90 ('>89' in ludb.csv) with pacing,
# 35 atrial flutter (~131 bpm), 70 sinus tachycardia.
LUDB_IDS = [1, 8, 34, 35, 70]


def trim_csv(src: Path, dst: Path, id_column: str, keep: set[str]) -> None:
    """Write the header and the rows whose `id_column` is in `keep`, as their original bytes
    (rows may span several lines: cells with embedded newlines)."""
    with open(src, newline="", encoding="utf-8") as f:
        consumed: list[str] = []

        def feed():
            for line in f:
                consumed.append(line)
                yield line

        reader = csv.reader(feed())
        column = next(reader).index(id_column)
        out, start = ["".join(consumed)], len(consumed)
        for row in reader:
            if row and row[column] in keep:
                out.append("".join(consumed[start:]))
            start = len(consumed)
    dst.write_text("".join(out), encoding="utf-8", newline="")


def main(shared: Path) -> None:
    ptb, ludb = shared / "ptb-xl", shared / "ludb"
    out_ptb, out_ludb = HERE / "ptb-xl", HERE / "ludb"
    for name in ("LICENSE.txt", "scp_statements.csv"):
        out_ptb.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ptb / name, out_ptb / name)
    trim_csv(ptb / "ptbxl_database.csv", out_ptb / "ptbxl_database.csv", "ecg_id", {str(i) for i in PTBXL_IDS})
    for i in PTBXL_IDS:
        for folder, suffix in (("records500", "hr"), ("records100", "lr")):
            src = ptb / folder / f"{i // 1000 * 1000:05d}" / f"{i:05d}_{suffix}"
            dst = out_ptb / src.relative_to(ptb)
            dst.parent.mkdir(parents=True, exist_ok=True)
            for ext in (".hea", ".dat"):
                shutil.copy2(src.with_suffix(ext), dst.with_suffix(ext))
    (out_ludb / "data").mkdir(parents=True, exist_ok=True)
    shutil.copy2(ludb / "LICENSE.txt", out_ludb / "LICENSE.txt")
    trim_csv(ludb / "ludb.csv", out_ludb / "ludb.csv", "ID", {str(i) for i in LUDB_IDS})
    (out_ludb / "RECORDS").write_text("".join(f"data/{i}\n" for i in LUDB_IDS))
    for i in LUDB_IDS:
        for ext in (".hea", ".dat", ".ii"):
            shutil.copy2(ludb / "data" / f"{i}{ext}", out_ludb / "data" / f"{i}{ext}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data"))
