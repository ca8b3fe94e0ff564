"""The non-signal tables of processed sets that SE-Diff experience retrieval reads.

`read_tables` concatenates, over one or more processed sets (`diffusets-jax prepare --out DIR`),
each record's report, report-prompt embedding, age, sex, heart rate, fold and id from
`dataset.npz` (never the signals), a key unique across the sets (`"<dir name>/<record_id>"`),
its patient key and its MIMIC-IV hospital code sets (`hosp_codes.jsonl`, written by
`link_hosp_codes()`; none for a set without it). `diffusets_jax.sediff.retrieval.ExperienceIndex`
is built from these tables, and `diffusets_jax.sediff.augment` queries with them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from diffusets_jax.data_pipelines.mimic_hosp import read_hosp_codes


#: The `dataset.npz` arrays kept per record, in the order of the returned table.
COLUMNS = ("reports", "text_embeddings", "age", "sex", "heart_rate", "fold", "record_ids")


def read_tables(dirs: Sequence[str | Path]) -> dict:
    """The non-signal fields of processed sets, concatenated, with keys and hospital code sets."""
    out = {name: [] for name in (*COLUMNS, "keys", "patient_keys", "codes")}
    embedders = set()
    names = [Path(d).name for d in dirs]
    for d in dirs:
        d = Path(d)
        prefix = d.name if names.count(d.name) == 1 else str(d.resolve())  # keys stay unique
        if not (d / "dataset.npz").is_file():
            raise FileNotFoundError(f"{d / 'dataset.npz'} not found: run `diffusets-jax prepare --out {d}` first")
        embedders.add(json.loads((d / "info.json").read_text())["embedder"])
        with np.load(d / "dataset.npz", allow_pickle=False) as data:
            arrays = {name: data[name] for name in (*COLUMNS, "patient_ids")}
        hosp = read_hosp_codes(d)
        for name in COLUMNS:
            out[name].append(arrays[name])
        out["keys"].append(np.array([f"{prefix}/{r}" for r in arrays["record_ids"]]))
        out["patient_keys"].append(np.array([f"{prefix}/{p}" for p in arrays["patient_ids"]]))
        out["codes"].extend(hosp.get(str(r), {}) for r in arrays["record_ids"])
    if len(embedders) > 1:
        raise ValueError(
            f"datasets {[str(d) for d in dirs]} were embedded with different text embedders: {sorted(embedders)}"
        )
    table = {name: (v if name == "codes" else np.concatenate(v)) for name, v in out.items()}
    table["embedder"] = embedders.pop()
    return table
