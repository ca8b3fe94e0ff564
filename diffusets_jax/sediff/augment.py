"""Retrieval-augmented conditions: one report at generation time, or a whole processed set for training.

SE-Diff (Wang et al., ICLR 2026, arXiv:2511.09895, experience retrieval) conditions the generator
on a report augmented with the experience of similar training records. `augment_report()` does
this for one condition with an `diffusets_jax.sediff.retrieval.ExperienceIndex` and a
summariser; `augment_dataset()` writes a processed set whose reports are augmented and
re-embedded, which the trainers read unchanged.
"""

from __future__ import annotations

import csv
import json
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from diffusets_jax.data_pipelines.mimic_hosp import read_hosp_codes, write_hosp_codes
from diffusets_jax.data_pipelines.processed import MANIFEST_FILES
from diffusets_jax.checkpoints import atomic_write, atomic_write_text, write_manifest
from diffusets_jax.sediff.retrieval import DEFAULT_K, DEFAULT_TRAIN_FOLDS, ExperienceIndex, Retrieval
from diffusets_jax.sediff.similarity import Query, check_weights, statements_of
from diffusets_jax.sediff.summarisers import KeywordSummariser, Summariser, method_name, summarise_with_method
from diffusets_jax.sediff.tables import read_tables


def augment_report(
    index: ExperienceIndex,
    report: str | Sequence[str],
    age: float | None,
    sex: str | None,
    heart_rate: float | None,
    k: int = DEFAULT_K,
    *,
    weights: Mapping[str, float] | None = None,
    summariser: Summariser | None = None,
    embedder=None,
    codes: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """Generation time: the retrieval-augmented report of one condition (statements joined by `'|'`).

    Args:
        index: training records (`ExperienceIndex.from_processed()` or `ExperienceIndex.load()`).
        report: the requested statements (`'|'`-joined or a list; may be empty: then the report
            comes from the neighbours alone). age: years; sex: `'M'`/`'F'`; heart_rate: bpm
            (None: unknown, that view is dropped).
        k: neighbours; weights: updates `DEFAULT_WEIGHTS`; summariser: default
            `KeywordSummariser`; embedder: the index's text embedder, to use the `text`
            view (None: dropped); codes: hospital code sets of the patient, if any.

    Returns:
        The augmented report. Embed it with `build_prompt` like any report (`Pipeline` does).

    Raises:
        ValueError: as `ExperienceIndex.effective_weights()` / the summariser.
    """
    query = index.query(report, age, sex, heart_rate, embedder=embedder, codes=codes)
    summariser = summariser or KeywordSummariser()
    return summariser.summarise(query, index.retrieve(query, k, weights))


def augment_dataset(
    src_dirs: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    k: int = DEFAULT_K,
    weights: Mapping[str, float] | None = None,
    summariser: Summariser | None = None,
    embedder=None,
    *,
    folds: Sequence[int] = DEFAULT_TRAIN_FOLDS,
    index_dirs: Sequence[str | Path] | None = None,
    exclude_same_patient: bool = False,
    progress: bool = True,
) -> Path:
    """Write a processed set whose reports are retrieval-augmented and whose text is re-embedded.

    Every record of `src_dirs` (all folds, so validation and test conditions are augmented too)
    is a query; its neighbours come from an `ExperienceIndex` of `index_dirs` (default
    `src_dirs`) restricted to the training `folds`: held-out records are never retrieved. A
    training record never retrieves itself (nor, with `exclude_same_patient`, another record of
    its patient). The query uses the record's statements, age, sex, heart rate, stored text
    embedding and hospital code sets. The augmented report goes through `summariser` (default
    `KeywordSummariser`) and is embedded by `embedder` (default: the set's own, by name)
    via the ordered prompt, through `out_dir/embedding_cache.npz` (seeded with the source
    prompts), so the trainers read `out_dir` unchanged. Signals, demographics, folds and ids are
    copied. `records.jsonl` gains `original_report` and `retrieved` (keys and scores);
    `info.json` gains `augmentation` (settings, counts, runtimes); `hosp_codes.jsonl` is copied.

    Returns `out_dir`. Raises ValueError for `k < 1`, bad weights, or sets of different
    embedders; FileNotFoundError for a directory without `dataset.npz`.
    """
    from diffusets_jax.data_pipelines.processed import load_processed
    from diffusets_jax.text import EmbeddingCache, build_prompt, get_embedder

    t0 = time.perf_counter()
    src_dirs = [src_dirs] if isinstance(src_dirs, (str, Path)) else list(src_dirs)
    index_dirs = list(index_dirs) if index_dirs is not None else src_dirs
    summariser = summariser or KeywordSummariser()
    dataset = load_processed(src_dirs)
    embedder = embedder or get_embedder(dataset.embedder)
    table = read_tables(src_dirs)
    index = ExperienceIndex.from_processed(index_dirs, folds)
    if index.embedder_name != dataset.embedder:
        raise ValueError(f"index sets use embedder {index.embedder_name!r}, the augmented sets {dataset.embedder!r}")
    rows_of_patient: dict[str, list[str]] = {}
    for key, patient in zip(index.keys, index.patient_keys):
        rows_of_patient.setdefault(patient, []).append(key)
    queries = []
    for i in range(len(dataset)):
        exclude = {table["keys"][i]}
        if exclude_same_patient:
            exclude.update(rows_of_patient.get(table["patient_keys"][i], ()))
        queries.append(
            Query.from_report(
                dataset.reports[i],
                dataset.age[i],
                dataset.sex[i],
                dataset.heart_rate[i],
                text_embedding=dataset.text_embeddings[i],
                codes=table["codes"][i],
                exclude=sorted(exclude),
            )
        )
    t1 = time.perf_counter()
    retrievals = index.retrieve_batch(queries, k, weights, progress=progress)
    t2 = time.perf_counter()
    from tqdm import tqdm

    summaries = [
        summarise_with_method(summariser, q, r)
        for q, r in tqdm(list(zip(queries, retrievals)), desc="summarising", unit="rec", disable=not progress)
    ]
    reports, methods = [report for report, _ in summaries], [method for _, method in summaries]
    used = dict(Counter(methods))
    fell_back = len(methods) - used.get(method_name(summariser), 0)
    if fell_back:
        warnings.warn(
            f"{fell_back} of {len(methods)} reports were written by a fallback summariser, not "
            f"{method_name(summariser)!r} ({used}); records.jsonl names the method of each",
            stacklevel=2,
        )
    t3 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = EmbeddingCache.open(out_dir / "embedding_cache.npz", embedder)
    if embedder.name == dataset.embedder:
        cache._vectors.update(
            {p: e for p, e in zip(dataset.prompts.tolist(), dataset.text_embeddings) if p not in cache}
        )
    prompts = [build_prompt(r) for r in reports]
    embeddings = cache.embed_prompts(prompts, embedder)
    cache.save(out_dir / "embedding_cache.npz")
    t4 = time.perf_counter()
    arrays = dict(
        signals=dataset.signals,
        text_embeddings=embeddings.astype(np.float32),
        age=dataset.age,
        sex=dataset.sex,
        heart_rate=dataset.heart_rate,
        fold=dataset.fold,
        reports=np.array(reports),
        prompts=np.array(prompts),
        record_ids=dataset.record_ids,
        patient_ids=dataset.patient_ids,
    )
    atomic_write(out_dir / "dataset.npz", lambda f: np.savez(f, **arrays))
    _write_side_files(src_dirs, out_dir, dataset, reports, retrievals, methods)
    changed = int(sum(a != b for a, b in zip(reports, dataset.reports.tolist())))
    lengths = [len(statements_of(r)) for r in reports]
    infos = [json.loads((Path(d) / "info.json").read_text()) for d in src_dirs]
    info = {
        "source": "+".join(i["source"] for i in infos) + "+rag",
        "root": ";".join(str(i["root"]) for i in infos),
        "embedder": embedder.name,
        "embed_dim": embedder.dim,
        "num_records": len(dataset),
        "num_skipped": sum(i.get("num_skipped", 0) for i in infos),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "augmentation": {
            "method": "SE-Diff experience retrieval (diffusets_jax.sediff.retrieval)",
            "datasets": [str(d) for d in src_dirs],
            "index_datasets": [str(d) for d in index_dirs],
            "index_folds": list(folds),
            "index_records": len(index),
            "index_views": list(index.views),
            "k": k,
            "weights": check_weights(weights),
            "summariser": repr(summariser),
            "summariser_used": used,  # reports per method actually used (a fallback counted apart)
            "exclude_same_patient": exclude_same_patient,
            "reports_changed": changed,
            "statements_before": float(np.mean([len(statements_of(r)) for r in dataset.reports])),
            "statements_after": float(np.mean(lengths)),
            "seconds": {
                "load": round(t1 - t0, 2),
                "retrieve": round(t2 - t1, 2),
                "summarise": round(t3 - t2, 2),
                "embed": round(t4 - t3, 2),
                "total": round(time.perf_counter() - t0, 2),
            },
        },
    }
    atomic_write_text(out_dir / "info.json", json.dumps(info, indent=2))
    write_manifest(out_dir, MANIFEST_FILES)
    return out_dir


def _write_side_files(
    src_dirs, out_dir: Path, dataset, reports: list[str], retrievals: list[Retrieval], methods: list[str]
) -> None:
    """records.jsonl (source metadata + original report + neighbours), skipped.csv, hosp_codes.jsonl."""
    metadata = []
    for d in src_dirs:
        path = Path(d) / "records.jsonl"
        lines = path.read_text().splitlines() if path.is_file() else []
        n = len(np.load(Path(d) / "dataset.npz")["record_ids"])
        metadata.extend(json.loads(line) for line in lines) if len(lines) == n else metadata.extend(
            {} for _ in range(n)
        )
    with open(out_dir / "records.jsonl", "w") as f:
        for i, (meta, report, r, method) in enumerate(zip(metadata, reports, retrievals, methods)):
            row = {
                "record_id": str(dataset.record_ids[i]),
                **meta,
                "original_report": str(dataset.reports[i]),
                "report": report,
                "summariser": method,
                "retrieved": [{"key": key, "score": round(float(s), 4)} for key, s in zip(r.keys, r.scores)],
            }
            f.write(json.dumps(row) + "\n")
    with open(out_dir / "skipped.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["record_id", "reason"])
        for d in src_dirs:
            path = Path(d) / "skipped.csv"
            if path.is_file():
                writer.writerows(list(csv.reader(path.open()))[1:])
    codes = {}
    for d in src_dirs:
        codes.update(read_hosp_codes(d))
    if codes:
        write_hosp_codes(out_dir, codes)
