"""SE-Diff experience retrieval: similar training records -> one concise, augmented report.

SE-Diff (Wang et al., ICLR 2026, arXiv:2511.09895, experience retrieval) retrieves, for every
condition, the top-k most similar training admissions by a weighted sum of per-view Jaccard
similarities over the diagnosis,
medication and procedure code sets of MIMIC-IV hospital stays
(`tau = l1 tau_Diag + l2 tau_Med + l3 tau_Proc`), and asks an LLM to distil the retrieved
profiles and the condition into "a concise, physiologically sound report" r that enters through
the text pathway. Neither the LLM, its prompt, k nor the weights are published, and the official
code has no retrieval step, so this module is the port's own design:

* **Views.** The similarity is a weighted mean over the views the data has: report-prompt
  embeddings, diagnostic statements, age, sex, heart rate and, where MIMIC-IV hospital data are
  linked, the paper's diagnosis, medication and procedure code sets
  (`diffusets_jax.sediff.similarity`, which holds the views, weights and `Query`).
* **Index.** `ExperienceIndex` holds the training folds only (default
  `DEFAULT_TRAIN_FOLDS`, the folds `configs/common.py` trains on), never held-out records.
  It needs no signals, so it can be saved to one small `.npz` (`ExperienceIndex.save()`) and
  shipped for generation time.
* **Summary.** A pluggable `Summariser` turns the query and its neighbours into one report
  string (statements joined by `'|'`, the format of every report here). The default,
  `KeywordSummariser`, is deterministic and offline: the query's own statements first, then
  the statements most frequent among the neighbours (similarity-weighted), without contradicting
  the query's rhythm, axis or heart rate, capped. `LLMSummariser` asks a chat model through
  an `LLMClient` (`OpenAIChatClient` when configured with an API key).
* **Text pathway.** The augmented report is embedded with the model's text embedder through the
  official ordered prompt (`diffusets_jax.text.build_prompt()`), like any report:
  `augment_dataset()` writes a processed set the existing trainers read unchanged, and
  `augment_report()` augments one condition at generation time.

This module holds the index (`ExperienceIndex`), its results (`Retrieval`) and `retrieve`; the
views, weights and `Query` are in `diffusets_jax.sediff.similarity`, the tables read from
processed sets in `diffusets_jax.sediff.tables`, the summarisers in
`diffusets_jax.sediff.summarisers`, dataset and report augmentation in
`diffusets_jax.sediff.augment`, the hospital code sets in `diffusets_jax.data_pipelines.mimic_hosp`.
Run: `diffusets-jax augment-dataset --dataset data/ptbxl --out data/ptbxl_rag`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from diffusets_jax.config import load_config
from diffusets_jax.data_pipelines.mimic_hosp import CODE_VIEWS
from diffusets_jax.sediff.similarity import (
    AGE_SCALE_YEARS,
    HEART_RATE_SCALE_BPM,
    VIEWS,
    Query,
    SetMatrix,
    check_weights,
    code_sets,
    normalise_statement,
    statements_of,
)
from diffusets_jax.sediff.tables import read_tables

_DEFAULTS = load_config("sediff").retrieval
#: Neighbours retrieved per query (`configs/sediff.py` `retrieval.k`).
DEFAULT_K = _DEFAULTS.k
#: Folds the index is built from (`configs/common.py` `data.train_folds`); 9 and 10 are held out.
DEFAULT_TRAIN_FOLDS = tuple(_DEFAULTS.folds)
#: Largest (queries x records) similarity block computed at once in batched retrieval.
MAX_BLOCK_ELEMENTS = 4_000_000


@dataclass
class Retrieval:
    """The neighbours of one query, best first.

    Attributes:
        rows: `(k',)` int rows of the index (k' <= k: fewer when the index is smaller).
        keys, record_ids, reports: `(k',)` of the index's record keys, ids and `'|'` reports.
        scores: `(k',)` float, weighted similarity in [0, 1].
        view_scores: `{view: (k',)}` per-view similarity of each neighbour (views used only).
        weights: the effective weights of this query, normalised to sum 1 (zero views left out).
        age, sex, heart_rate: `(k',)` of the neighbours; codes: their `{view: frozenset}`.
        prevalence: `{normalised statement: fraction of the index's records stating it}` for
            the neighbours' statements (the base rate a summariser can compare with).
    """

    rows: np.ndarray
    keys: list[str]
    record_ids: list[str]
    reports: list[str]
    scores: np.ndarray
    view_scores: dict[str, np.ndarray]
    weights: dict[str, float]
    age: np.ndarray
    sex: np.ndarray
    heart_rate: np.ndarray
    codes: list[dict[str, frozenset[str]]]
    prevalence: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)


class ExperienceIndex:
    """Retrieval pool of training records: reports, embeddings, demographics and code sets.

    Args:
        reports: `(N,)` `'|'`-joined reports.
        text_embeddings: `(N, D)` report-prompt embeddings by `embedder_name` (None: no `text` view).
        age: `(N,)` years (NaN unknown); sex: `(N,)` `'M'`/`'F'`; heart_rate: `(N,)` bpm.
        record_ids: `(N,)` ids; keys: `(N,)` unique keys (default: the record ids) used by
            `Query.exclude`; patient_keys: `(N,)` (default: the keys).
        fold: `(N,)` int folds (informational; build from training folds only).
        codes: N dicts `{view: codes}` of hospital code sets, or None.
        embedder_name: the text embedder of `text_embeddings`.

    Raises:
        ValueError: arrays of different lengths, duplicate keys or an empty index.
    """

    def __init__(
        self,
        reports,
        text_embeddings=None,
        age=None,
        sex=None,
        heart_rate=None,
        record_ids=None,
        *,
        keys=None,
        patient_keys=None,
        fold=None,
        codes: Sequence[Mapping[str, Sequence[str]]] | None = None,
        embedder_name: str = "",
    ):
        self.reports = np.asarray([str(r) for r in reports])
        n = len(self.reports)
        if n == 0:
            raise ValueError("experience index is empty: no training record to retrieve from")
        full = lambda a, fill, dtype: np.full(n, fill, dtype) if a is None else np.asarray(a, dtype)  # noqa: E731
        self.age = full(age, np.nan, np.float32)
        self.sex = np.asarray([""] * n if sex is None else [str(s).upper()[:1] for s in sex])
        self.heart_rate = full(heart_rate, np.nan, np.float32)
        self.record_ids = np.asarray([str(i) for i in (record_ids if record_ids is not None else range(n))])
        self.keys = np.asarray([str(k) for k in keys]) if keys is not None else self.record_ids.copy()
        self.patient_keys = np.asarray([str(k) for k in patient_keys]) if patient_keys is not None else self.keys.copy()
        self.fold = full(fold, -1, np.int32)
        self.embedder_name = embedder_name
        self.text_embeddings = None
        if text_embeddings is not None:
            e = np.asarray(text_embeddings, np.float32)
            norms = np.linalg.norm(e, axis=1, keepdims=True)
            self.text_embeddings = np.divide(e, norms, out=np.zeros_like(e), where=norms > 0)  # (N, D) unit rows
        self.codes = [code_sets(c) for c in codes] if codes is not None else [{} for _ in range(n)]
        lengths = {
            len(a)
            for a in (
                self.age,
                self.sex,
                self.heart_rate,
                self.record_ids,
                self.keys,
                self.patient_keys,
                self.fold,
                self.codes,
            )
        }
        if self.text_embeddings is not None:
            lengths.add(len(self.text_embeddings))
        if lengths != {n}:
            raise ValueError(f"index arrays have different lengths {sorted(lengths)}; expected {n} records")
        if len(set(self.keys.tolist())) != n:
            raise ValueError("index keys are not unique (give keys=..., e.g. '<dataset>/<record_id>')")
        self.statement_sets = [frozenset(map(normalise_statement, statements_of(r))) for r in self.reports]
        self._statements = SetMatrix(self.statement_sets)
        self._code_matrices = {v: SetMatrix([c.get(v, frozenset()) for c in self.codes]) for v in CODE_VIEWS}
        self._row_of = {k: i for i, k in enumerate(self.keys.tolist())}
        counts: dict[str, int] = {}
        for statements in self.statement_sets:
            for key in statements:
                counts[key] = counts.get(key, 0) + 1
        self.prevalence = {key: c / len(self) for key, c in counts.items()}

    def __len__(self) -> int:
        return len(self.reports)

    def __repr__(self) -> str:
        return f"ExperienceIndex({len(self)} records, views={self.views}, embedder={self.embedder_name!r})"

    @property
    def views(self) -> tuple[str, ...]:
        """The views this index has data for (a view without data gets weight 0 in every query)."""
        has = {
            "text": self.text_embeddings is not None and bool(np.any(self.text_embeddings)),
            "statements": any(self.statement_sets),
            "age": bool(np.any(np.isfinite(self.age))),
            "sex": bool(np.any(np.isin(self.sex, ["M", "F"]))),
            "heart_rate": bool(np.any(np.isfinite(self.heart_rate))),
        }
        has.update({v: any(v in c and c[v] for c in self.codes) for v in CODE_VIEWS})
        return tuple(v for v in VIEWS if has[v])

    # ----------------------------------------------------------------------------------- building
    @classmethod
    def from_processed(
        cls, dirs: str | Path | Sequence[str | Path], folds: Sequence[int] | None = DEFAULT_TRAIN_FOLDS
    ) -> "ExperienceIndex":
        """Index of the records of processed sets in `folds` (default: the training folds).

        Reads only reports, embeddings, demographics, folds and ids from `dataset.npz` (not the
        signals), and `hosp_codes.jsonl` where present. Keys are `"<dir name>/<record_id>"`.
        `folds=None` keeps every fold: only for tests and analysis, never for augmentation.

        Raises:
            FileNotFoundError: a directory without `dataset.npz`.
            ValueError: sets embedded by different text embedders, or no record in `folds`.
        """
        dirs = [dirs] if isinstance(dirs, (str, Path)) else list(dirs)
        table = read_tables(dirs)
        keep = np.ones(len(table["reports"]), bool) if folds is None else np.isin(table["fold"], np.asarray(folds))
        if not keep.any():
            raise ValueError(f"no record of {[str(d) for d in dirs]} is in folds {folds}")
        pick = lambda a: [a[i] for i in np.flatnonzero(keep)] if isinstance(a, list) else a[keep]  # noqa: E731
        return cls(
            pick(table["reports"]),
            pick(table["text_embeddings"]),
            pick(table["age"]),
            pick(table["sex"]),
            pick(table["heart_rate"]),
            pick(table["record_ids"]),
            keys=pick(table["keys"]),
            patient_keys=pick(table["patient_keys"]),
            fold=pick(table["fold"]),
            codes=pick(table["codes"]),
            embedder_name=table["embedder"],
        )

    def save(self, path: str | Path) -> Path:
        """Write the index (no signals) to one `.npz`; `load()` reads it back."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        codes = [json.dumps({v: sorted(c[v]) for v in sorted(c)}) for c in self.codes]
        embeddings = self.text_embeddings if self.text_embeddings is not None else np.zeros((len(self), 0), np.float32)
        np.savez(
            path,
            reports=self.reports,
            text_embeddings=embeddings,
            age=self.age,
            sex=self.sex,
            heart_rate=self.heart_rate,
            record_ids=self.record_ids,
            keys=self.keys,
            patient_keys=self.patient_keys,
            fold=self.fold,
            codes=np.asarray(codes),
            embedder_name=np.asarray(self.embedder_name),
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ExperienceIndex":
        """Read an index written by `save()`.

        Raises:
            MissingFileError: `path` does not exist.
            DataError: `path` is not such an index (another file, truncated, an array missing or
                malformed); the message names the file.
        """
        import zipfile

        from diffusets_jax.errors import DataError, MissingFileError

        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"experience index {path} not found")
        what = f"{path} is not an experience index saved by `augment-dataset --save-index`"
        try:
            with np.load(path, allow_pickle=False) as d:
                if not hasattr(d, "files"):
                    raise DataError(f"{what} (a .npy array, not an .npz)")
                if missing := [
                    k
                    for k in (
                        "reports",
                        "text_embeddings",
                        "age",
                        "sex",
                        "heart_rate",
                        "record_ids",
                        "keys",
                        "patient_keys",
                        "fold",
                        "codes",
                        "embedder_name",
                    )
                    if k not in d.files
                ]:
                    raise DataError(f"{what} (no {', '.join(missing)})")
                embeddings = d["text_embeddings"]
                return cls(
                    d["reports"],
                    embeddings if embeddings.shape[1] else None,
                    d["age"],
                    d["sex"],
                    d["heart_rate"],
                    d["record_ids"],
                    keys=d["keys"],
                    patient_keys=d["patient_keys"],
                    fold=d["fold"],
                    codes=[json.loads(c) for c in d["codes"]],
                    embedder_name=str(d["embedder_name"]),
                )
        except DataError:
            raise
        except (OSError, EOFError, ValueError, IndexError, TypeError, zipfile.BadZipFile) as error:
            raise DataError(f"{what} (unreadable or malformed: {type(error).__name__})") from None

    # ---------------------------------------------------------------------------------- querying
    def query(
        self,
        report: str | Sequence[str],
        age: float | None = None,
        sex: str | None = None,
        heart_rate: float | None = None,
        *,
        embedder=None,
        codes=None,
        exclude: Sequence[str] = (),
    ) -> Query:
        """A `Query` for a free condition; its `text` view is embedded by `embedder`
        (`diffusets_jax.text.TextEmbedder`, must be the index's), or dropped if None.

        Raises:
            ValueError: `embedder` is not the one the index was embedded with.
        """
        from diffusets_jax.text import build_prompt

        embedding = None
        statements = statements_of(report)
        if embedder is not None and statements and self.text_embeddings is not None:
            if self.embedder_name and embedder.name != self.embedder_name:
                raise ValueError(f"the index was embedded with {self.embedder_name!r}, not {embedder.name!r}")
            embedding = embedder.embed([build_prompt(statements)])[0]
        return Query.from_report(
            statements, age, sex, heart_rate, text_embedding=embedding, codes=codes, exclude=exclude
        )

    def effective_weights(self, query: Query, weights: Mapping[str, float] | None = None) -> dict[str, float]:
        """Weights of `query`'s views, normalised to sum 1: a view the index or the query lacks,
        or with weight 0, is left out.

        Raises:
            ValueError: unknown view or negative weight; no view left (all zero or all missing).
        """
        merged = check_weights(weights)
        has_query = {
            "text": query.text_embedding is not None,
            "statements": bool(query.statements),
            "age": math.isfinite(query.age),
            "sex": query.sex in ("M", "F"),
            "heart_rate": math.isfinite(query.heart_rate),
        }
        has_query.update({v: bool(query.codes.get(v)) for v in CODE_VIEWS})
        if (
            has_query["text"]
            and self.text_embeddings is not None
            and len(query.text_embedding) != self.text_embeddings.shape[1]
        ):
            raise ValueError(
                f"query embedding has {len(query.text_embedding)} dims, the index "
                f"{self.text_embeddings.shape[1]} ({self.embedder_name})"
            )
        used = {v: merged[v] for v in self.views if has_query[v] and merged[v] > 0}
        total = sum(used.values())
        if total <= 0:
            raise ValueError(
                f"no view to compare on: weights {merged}, index views {self.views}, query views "
                f"{[v for v in VIEWS if has_query[v]]}"
            )
        return {v: w / total for v, w in used.items()}

    def _view_similarity(self, view: str, queries: Sequence[Query]) -> np.ndarray:
        """`(Q, N)` similarity in [0, 1] of each query with each record on one view."""
        if view == "text":
            q = np.stack(
                [
                    np.asarray(x.text_embedding, np.float32)
                    if x.text_embedding is not None
                    else np.zeros(self.text_embeddings.shape[1], np.float32)
                    for x in queries
                ]
            )  # (Q, D)
            q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
            return np.clip(q @ self.text_embeddings.T, 0.0, 1.0)
        if view == "statements":
            return self._statements.jaccard([frozenset(map(normalise_statement, x.statements)) for x in queries])
        if view in CODE_VIEWS:
            return self._code_matrices[view].jaccard([x.codes.get(view, frozenset()) for x in queries])
        if view == "sex":
            return (self.sex[None, :] == np.array([x.sex or "?" for x in queries])[:, None]).astype(np.float32)
        values, scale = (self.age, AGE_SCALE_YEARS) if view == "age" else (self.heart_rate, HEART_RATE_SCALE_BPM)
        q = np.array([getattr(x, view) for x in queries], np.float32)
        similarity = np.exp(-0.5 * ((values[None, :] - q[:, None]) / scale) ** 2)
        return np.nan_to_num(similarity, nan=0.0).astype(np.float32)

    def retrieve(self, query: Query, k: int = DEFAULT_K, weights: Mapping[str, float] | None = None) -> Retrieval:
        """The `k` records most similar to `query` (best first; ties by index row), see `retrieve()`."""
        return self.retrieve_batch([query], k, weights)[0]

    def retrieve_batch(
        self,
        queries: Sequence[Query],
        k: int = DEFAULT_K,
        weights: Mapping[str, float] | None = None,
        progress: bool = False,
    ) -> list[Retrieval]:
        """`retrieve()` for many queries, vectorised in blocks of `MAX_BLOCK_ELEMENTS` similarities.

        Raises:
            ValueError: `k < 1`; and as `effective_weights()`.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = list(queries)
        block = max(1, MAX_BLOCK_ELEMENTS // len(self))
        out = []
        from tqdm import tqdm

        for start in tqdm(range(0, len(queries), block), desc="retrieving", unit="block", disable=not progress):
            chunk = queries[start : start + block]
            used = [self.effective_weights(q, weights) for q in chunk]
            views = [v for v in VIEWS if any(v in w for w in used)]
            sims = {v: self._view_similarity(v, chunk) for v in views}  # each (Q, N)
            for j, query in enumerate(chunk):
                score = sum(w * sims[v][j] for v, w in used[j].items()).astype(np.float64)  # (N,)
                for key in query.exclude:
                    if key in self._row_of:
                        score[self._row_of[key]] = -np.inf
                out.append(self._top(score, k, {v: sims[v][j] for v in used[j]}, used[j]))
        return out

    def _top(self, score: np.ndarray, k: int, view_sims: dict, weights: dict) -> Retrieval:
        valid = np.flatnonzero(np.isfinite(score))
        k = min(k, len(valid))
        if k == 0:
            rows = np.zeros(0, np.int64)
        else:
            kth = np.partition(score[valid], len(valid) - k)[len(valid) - k]
            candidates = valid[score[valid] >= kth]
            rows = candidates[np.lexsort((candidates, -score[candidates]))][:k]  # best first, ties by row
        return Retrieval(
            rows=rows,
            keys=self.keys[rows].tolist(),
            record_ids=self.record_ids[rows].tolist(),
            reports=self.reports[rows].tolist(),
            scores=score[rows].astype(np.float32),
            view_scores={v: s[rows] for v, s in view_sims.items()},
            weights=dict(weights),
            age=self.age[rows],
            sex=self.sex[rows],
            heart_rate=self.heart_rate[rows],
            codes=[self.codes[r] for r in rows],
            prevalence={key: self.prevalence[key] for r in rows for key in self.statement_sets[r]},
        )


def retrieve(
    index: ExperienceIndex, query: Query, k: int = DEFAULT_K, weights: Mapping[str, float] | None = None
) -> Retrieval:
    """The `k` training records of `index` most similar to `query`, best first.

    `score = sum_v w_v s_v / sum_v w_v` over the views (`VIEWS`) with `w_v > 0` that both
    the index and the query have (`ExperienceIndex.effective_weights()`); `weights` updates
    `similarity.DEFAULT_WEIGHTS` (e.g. `{"age": 0}` drops the age view). Records whose key is in
    `query.exclude` are never returned. Ties are broken by index row, so results are deterministic.
    """
    return index.retrieve(query, k, weights)
