"""The processed training set written by `diffusets-jax prepare` and read by the trainers.

A directory holding:

    dataset.npz   signals (N, 1024, 12) float32 mV, text_embeddings (N, D) float32,
                  age (N,) years, sex (N,) 'M'/'F', heart_rate (N,) bpm, fold (N,) int,
                  reports (N,) '|'-joined statements, prompts (N,), record_ids, patient_ids
    info.json     source, root, embedder name and dim, counts, creation time
    skipped.csv   record_id, reason for each record that could not be used
    records.jsonl one line of metadata per kept record (original report, scp codes, ...)
    MANIFEST.json size and SHA-256 of the four files above (`diffusets_jax.checkpoints.manifest`),
                  written last; `load_processed` checks dataset.npz and info.json against it

Text embeddings are computed here once, through a prompt cache, so training never runs the text
model (the official code stores ada-002 embeddings in its latent cache, read by official
`utils/train.py`).
"""

from __future__ import annotations

import csv
import json
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from diffusets_jax.checkpoints import atomic_open, atomic_write, atomic_write_text, verify_manifest, write_manifest
from diffusets_jax.constants import NUM_LEADS, NUM_SAMPLES, SEX_CODES
from diffusets_jax.errors import DataError, MissingFileError

#: The files of a processed set that its manifest lists (`hosp_codes.jsonl`, added later by
#: `attach_hosp_codes`, and the embedding cache, which grows between runs, are not listed).
MANIFEST_FILES = ("dataset.npz", "info.json", "records.jsonl", "skipped.csv")

ARRAY_FIELDS = (
    "signals",
    "text_embeddings",
    "age",
    "sex",
    "heart_rate",
    "fold",
    "reports",
    "prompts",
    "record_ids",
    "patient_ids",
)


@dataclass
class ProcessedDataset:
    """In-memory processed set; every array has the record axis N first."""

    signals: np.ndarray  # (N, 1024, 12) float32 mV
    text_embeddings: np.ndarray  # (N, D) float32
    age: np.ndarray  # (N,) float32 years
    sex: np.ndarray  # (N,) str 'M' / 'F'
    heart_rate: np.ndarray  # (N,) float32 bpm
    fold: np.ndarray  # (N,) int32, patient-wise
    reports: np.ndarray  # (N,) str, statements joined by '|'
    prompts: np.ndarray  # (N,) str, the embedded prompt
    record_ids: np.ndarray  # (N,) str
    patient_ids: np.ndarray  # (N,) str
    embedder: str = ""

    def __len__(self) -> int:
        return len(self.signals)

    @property
    def sex_codes(self) -> np.ndarray:
        """(N,) float32: 1.0 male, 0.0 female, as the official condition vector."""
        return np.array([SEX_CODES[s] for s in self.sex], np.float32)

    def subset(self, mask: np.ndarray) -> "ProcessedDataset":
        fields = {name: getattr(self, name)[mask] for name in ARRAY_FIELDS}
        return ProcessedDataset(**fields, embedder=self.embedder)


def save_processed(
    records,
    skipped: Sequence[tuple[str, str]],
    out_dir: str | Path,
    embedder,
    *,
    source: str,
    root: str,
    cache_path: str | Path | None = None,
) -> Path:
    """Embed the reports of `records` (ECGRecord list) and write the processed set to `out_dir`.

    `cache_path` (default `out_dir/embedding_cache.npz`) keeps prompt embeddings between runs.
    Raises ValueError if no record is left.
    """
    from diffusets_jax.text import EmbeddingCache, build_prompt

    if not records:
        raise ValueError(f"no usable record in {root}: nothing to write ({len(skipped)} skipped)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_path = Path(cache_path) if cache_path else out_dir / "embedding_cache.npz"
    cache = EmbeddingCache.open(cache_path, embedder)
    prompts = [build_prompt(r.statements) for r in records]
    embeddings = cache.embed_prompts(prompts, embedder)
    cache.save(cache_path)
    arrays = dict(
        signals=np.stack([r.signal for r in records]).astype(np.float32),
        text_embeddings=embeddings.astype(np.float32),
        age=np.array([r.age for r in records], np.float32),
        sex=np.array([r.sex for r in records]),
        heart_rate=np.array([r.heart_rate for r in records], np.float32),
        fold=np.array([r.fold for r in records], np.int32),
        reports=np.array(["|".join(r.statements) for r in records]),
        prompts=np.array(prompts),
        record_ids=np.array([str(r.record_id) for r in records]),
        patient_ids=np.array([str(r.patient_id) for r in records]),
    )
    atomic_write(out_dir / "dataset.npz", lambda f: np.savez(f, **arrays))
    atomic_write_text(
        out_dir / "records.jsonl",
        "".join(json.dumps({"record_id": str(r.record_id), **_jsonable(r.metadata)}) + "\n" for r in records),
    )
    with atomic_open(out_dir / "skipped.csv", "w") as f:
        writer = csv.writer(f)
        writer.writerow(["record_id", "reason"])
        writer.writerows(skipped)
    info = {
        "source": source,
        "root": str(root),
        "embedder": embedder.name,
        "embed_dim": embedder.dim,
        "num_records": len(records),
        "num_skipped": len(skipped),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write_text(out_dir / "info.json", json.dumps(info, indent=2))
    write_manifest(out_dir, MANIFEST_FILES)
    return out_dir


def _jsonable(metadata: dict) -> dict:
    return json.loads(json.dumps(metadata, default=str))


def load_processed(dirs: str | Path | Sequence[str | Path], folds: Sequence[int] | None = None) -> ProcessedDataset:
    """Read and concatenate processed sets, keeping only `folds` if given.

    Checks `dataset.npz` and `info.json` against the set's `MANIFEST.json` when it has one (sets
    written before manifests still load).

    Raises MissingFileError (a FileNotFoundError) naming a directory without `dataset.npz`,
    IntegrityError naming a file that differs from the manifest, DataError naming an unreadable
    file, ValueError if the sets were embedded by different text embedders, if an array is
    malformed, or if nothing is left.
    """
    dirs = [dirs] if isinstance(dirs, (str, Path)) else list(dirs)
    if not dirs:
        raise ValueError("no processed dataset given (use --data DIR, written by `diffusets-jax prepare`)")
    parts, embedders = [], set()
    for d in dirs:
        path = Path(d) / "dataset.npz"
        if not path.is_file():
            raise MissingFileError(f"{path} not found: run `diffusets-jax prepare --out {d}` first")
        verify_manifest(d, ("dataset.npz", "info.json"))  # IntegrityError naming a changed file
        try:
            info = json.loads((Path(d) / "info.json").read_text())
            embedders.add(info["embedder"])
        except FileNotFoundError:
            raise MissingFileError(f"{Path(d) / 'info.json'} not found: not a processed set") from None
        except (ValueError, KeyError, TypeError) as error:
            raise DataError(f"{Path(d) / 'info.json'} is unreadable ({type(error).__name__}: {error})") from None
        try:
            with np.load(path, allow_pickle=False) as data:
                parts.append({name: data[name] for name in ARRAY_FIELDS})
        except KeyError as error:
            raise DataError(f"{path} lacks the array {error}") from None
        except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as error:
            raise DataError(
                f"{path} is not a readable .npz (truncated or garbled?): {type(error).__name__}: {error}"
            ) from None
    if len(embedders) > 1:
        raise ValueError(f"datasets {dirs} were embedded with different text embedders: {sorted(embedders)}")
    merged = {name: np.concatenate([p[name] for p in parts]) for name in ARRAY_FIELDS}
    dataset = ProcessedDataset(**merged, embedder=embedders.pop())
    if dataset.signals.shape[1:] != (NUM_SAMPLES, NUM_LEADS):
        raise ValueError(f"signals have shape {dataset.signals.shape}, expected (N, 1024, 12)")
    if folds is not None:
        dataset = dataset.subset(np.isin(dataset.fold, np.asarray(folds)))
    if len(dataset) == 0:
        raise ValueError(f"no record of {dirs} is in folds {folds}")
    return dataset
