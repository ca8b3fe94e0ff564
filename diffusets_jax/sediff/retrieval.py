"""SE-Diff experience retrieval: similar training records -> one concise, augmented report.

SE-Diff (docs/se-diff-reference.md section 1.3) retrieves, for every condition, the top-k most
similar training admissions by a weighted sum of per-view Jaccard similarities over the
diagnosis, medication and procedure code sets of MIMIC-IV hospital stays
(``tau = l1 tau_Diag + l2 tau_Med + l3 tau_Proc``), and asks an LLM to distil the retrieved
profiles and the condition into "a concise, physiologically sound report" r that enters through
the text pathway. Neither the LLM, its prompt, k nor the weights are published, and the official
code has no retrieval step, so this module is the port's own design:

* **Views.** The similarity is a weighted mean over the views the data has (:data:`VIEWS`):
  ``text`` (cosine of the stored report-prompt embeddings, negative values clipped to 0),
  ``statements`` (Jaccard of the sets of normalised diagnostic statements), ``age`` and
  ``heart_rate`` (Gaussian kernels of the difference, scales :data:`AGE_SCALE_YEARS` and
  :data:`HEART_RATE_SCALE_BPM`), ``sex`` (1 if equal) and, where MIMIC-IV hospital data are linked
  (:func:`link_hosp_codes`), the paper's ``diagnoses``, ``medications`` and ``procedures`` code-set
  Jaccards. ``score = sum_v w_v s_v / sum_v w_v`` over the views with a non-zero weight that both
  the index and the query have; a view missing in the data gets weight 0 automatically, so scores
  stay in [0, 1]. Defaults: :data:`DEFAULT_WEIGHTS`.
* **Index.** :class:`ExperienceIndex` holds the training folds only (default
  :data:`DEFAULT_TRAIN_FOLDS`, the folds ``configs/common.py`` trains on), never held-out records.
  It needs no signals, so it can be saved to one small ``.npz`` (:meth:`ExperienceIndex.save`) and
  shipped for generation time.
* **Summary.** A pluggable :class:`Summariser` turns the query and its neighbours into one report
  string (statements joined by ``'|'``, the format of every report here). The default,
  :class:`KeywordSummariser`, is deterministic and offline: the query's own statements first, then
  the statements most frequent among the neighbours (similarity-weighted), without contradicting
  the query's rhythm, axis or heart rate, capped. :class:`LLMSummariser` asks a chat model through
  an :class:`LLMClient` (:class:`OpenAIChatClient` when configured with an API key).
* **Text pathway.** The augmented report is embedded with the model's text embedder through the
  official ordered prompt (:func:`diffusets_jax.text.build_prompt`), like any report:
  :func:`augment_dataset` writes a processed set the existing trainers read unchanged, and
  :func:`augment_report` augments one condition at generation time.

Run: ``python -m diffusets_jax.sediff.retrieval --dataset data/ptbxl --out data/ptbxl_rag``
(to be wired as ``diffusets-jax augment-dataset``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import scipy.sparse

#: Every similarity view, in the order reports and weights are printed.
VIEWS = ("text", "statements", "age", "sex", "heart_rate", "diagnoses", "medications", "procedures")
#: The MIMIC-IV hospital code-set views (SE-Diff's tri-view profile).
CODE_VIEWS = ("diagnoses", "medications", "procedures")
#: Default per-view weights. The diagnostic content (report embedding, statement and code sets)
#: dominates; age, sex and heart rate break ties between diagnostically similar records. SE-Diff's
#: lambda_1..3 are not published; diagnoses count double the medications and procedures here.
DEFAULT_WEIGHTS = {
    "text": 1.0, "statements": 1.0, "age": 0.2, "sex": 0.1, "heart_rate": 0.3,
    "diagnoses": 1.0, "medications": 0.5, "procedures": 0.5,
}
DEFAULT_K = 5
#: Folds the index is built from (``configs/common.py`` ``data.train_folds``); 9 and 10 are held out.
DEFAULT_TRAIN_FOLDS = (1, 2, 3, 4, 5, 6, 7, 8)
#: Gaussian kernel scales: ``exp(-(delta / scale)^2 / 2)``.
AGE_SCALE_YEARS = 10.0
HEART_RATE_SCALE_BPM = 10.0
#: Sidecar file of a processed set with its MIMIC-IV hospital code sets (one JSON line per record).
HOSP_CODES_FILE = "hosp_codes.jsonl"
#: Largest (queries x records) similarity block computed at once in batched retrieval.
MAX_BLOCK_ELEMENTS = 4_000_000


def normalise_statement(statement: str) -> str:
    """Comparison key of a statement: lower case, single spaces, no trailing full stop."""
    return " ".join(str(statement).lower().split()).rstrip(".").strip()


def _statements(report: str | Sequence[str]) -> tuple[str, ...]:
    """Stripped, non-empty statements of a ``'|'``-joined report (or a sequence); () if none."""
    parts = report.split("|") if isinstance(report, str) else list(report)
    return tuple(s.strip() for s in parts if s and s.strip())


def _codes(codes: Mapping[str, Sequence[str]] | None) -> dict[str, frozenset[str]]:
    """``{view: frozenset(codes)}`` for the code views present; raises ValueError for another view."""
    out = {}
    for view, values in (codes or {}).items():
        if view not in CODE_VIEWS:
            raise ValueError(f"unknown code view {view!r}; choose from {CODE_VIEWS}")
        out[view] = frozenset(str(v) for v in values)
    return out


@dataclass(frozen=True)
class Query:
    """One condition to retrieve for.

    Attributes:
        statements: the report's diagnostic statements, most important first (may be empty).
        age: years (NaN: unknown, the ``age`` view is dropped). sex: ``'M'``/``'F'`` or None.
        heart_rate: bpm (NaN: unknown).
        text_embedding: ``(D,)`` embedding of the report prompt by the index's embedder, or None
            (the ``text`` view is dropped).
        codes: ``{view: frozenset}`` of hospital code sets (views absent: dropped).
        exclude: index keys (:attr:`ExperienceIndex.keys`) never returned, e.g. the query record.
    """

    statements: tuple[str, ...] = ()
    age: float = math.nan
    sex: str | None = None
    heart_rate: float = math.nan
    text_embedding: np.ndarray | None = field(default=None, compare=False)
    codes: Mapping[str, frozenset[str]] = field(default_factory=dict)
    exclude: frozenset[str] = frozenset()

    @classmethod
    def from_report(cls, report: str | Sequence[str], age: float | None = None, sex: str | None = None,
                    heart_rate: float | None = None, *, text_embedding: np.ndarray | None = None,
                    codes: Mapping[str, Sequence[str]] | None = None, exclude: Sequence[str] = ()) -> "Query":
        """A query from a ``'|'``-joined report (or statements), age (years), sex, heart rate (bpm)."""
        return cls(
            statements=_statements(report), age=math.nan if age is None else float(age),
            sex=None if sex is None else str(sex).upper()[:1], heart_rate=math.nan if heart_rate is None else float(heart_rate),
            text_embedding=None if text_embedding is None else np.asarray(text_embedding, np.float32),
            codes=_codes(codes), exclude=frozenset(exclude),
        )


@dataclass
class Retrieval:
    """The neighbours of one query, best first.

    Attributes:
        rows: ``(k',)`` int rows of the index (k' <= k: fewer when the index is smaller).
        keys, record_ids, reports: ``(k',)`` of the index's record keys, ids and ``'|'`` reports.
        scores: ``(k',)`` float, weighted similarity in [0, 1].
        view_scores: ``{view: (k',)}`` per-view similarity of each neighbour (views used only).
        weights: the effective weights of this query, normalised to sum 1 (zero views left out).
        age, sex, heart_rate: ``(k',)`` of the neighbours; codes: their ``{view: frozenset}``.
        prevalence: ``{normalised statement: fraction of the index's records stating it}`` for
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


def _check_weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    """:data:`DEFAULT_WEIGHTS` updated by ``weights``; ValueError for an unknown view or a negative weight."""
    merged = dict(DEFAULT_WEIGHTS)
    for view, weight in (weights or {}).items():
        if view not in VIEWS:
            raise ValueError(f"unknown retrieval view {view!r}; choose from {VIEWS}")
        if not (float(weight) >= 0 and math.isfinite(float(weight))):
            raise ValueError(f"weight of view {view!r} must be finite and >= 0, got {weight}")
        merged[view] = float(weight)
    return merged


def parse_weights(text: str) -> dict[str, float]:
    """``"text=1,age=0.5"`` -> ``{"text": 1.0, "age": 0.5}``; ValueError for a malformed item."""
    weights = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"weight {item!r} is not VIEW=NUMBER (views: {', '.join(VIEWS)})")
        weights[name.strip()] = float(value)
    _check_weights(weights)
    return weights


class _SetMatrix:
    """Binary sparse ``(N, vocab)`` matrix of per-record sets, for batched Jaccard similarity."""

    def __init__(self, sets: Sequence[frozenset[str]]):
        self.vocab = {item: i for i, item in enumerate(sorted(set().union(*sets)))} if sets else {}
        self.sizes = np.array([len(s) for s in sets], np.float32)
        self.matrix = self._encode(sets).T.tocsr()  # (vocab, N)

    def _encode(self, sets: Sequence[frozenset[str]]) -> scipy.sparse.csr_matrix:
        rows, cols = [], []
        for r, items in enumerate(sets):
            for item in items:
                if item in self.vocab:
                    rows.append(r)
                    cols.append(self.vocab[item])
        data = np.ones(len(rows), np.float32)
        return scipy.sparse.csr_matrix((data, (rows, cols)), shape=(len(sets), max(len(self.vocab), 1)))

    def jaccard(self, sets: Sequence[frozenset[str]]) -> np.ndarray:
        """``(Q, N)`` Jaccard of each query set with each record set (0 where both are empty)."""
        inter = np.asarray((self._encode(sets) @ self.matrix).todense(), np.float32)  # (Q, N)
        union = np.array([len(s) for s in sets], np.float32)[:, None] + self.sizes[None, :] - inter
        return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


class ExperienceIndex:
    """Retrieval pool of training records: reports, embeddings, demographics and code sets.

    Args:
        reports: ``(N,)`` ``'|'``-joined reports.
        text_embeddings: ``(N, D)`` report-prompt embeddings by ``embedder_name`` (None: no ``text`` view).
        age: ``(N,)`` years (NaN unknown); sex: ``(N,)`` ``'M'``/``'F'``; heart_rate: ``(N,)`` bpm.
        record_ids: ``(N,)`` ids; keys: ``(N,)`` unique keys (default: the record ids) used by
            :attr:`Query.exclude`; patient_keys: ``(N,)`` (default: the keys).
        fold: ``(N,)`` int folds (informational; build from training folds only).
        codes: N dicts ``{view: codes}`` of hospital code sets, or None.
        embedder_name: the text embedder of ``text_embeddings``.

    Raises:
        ValueError: arrays of different lengths, duplicate keys or an empty index.
    """

    def __init__(self, reports, text_embeddings=None, age=None, sex=None, heart_rate=None, record_ids=None, *,
                 keys=None, patient_keys=None, fold=None, codes: Sequence[Mapping[str, Sequence[str]]] | None = None,
                 embedder_name: str = ""):
        self.reports = np.asarray([str(r) for r in reports])
        n = len(self.reports)
        if n == 0:
            raise ValueError("experience index is empty: no training record to retrieve from")
        full = lambda a, fill, dtype: np.full(n, fill, dtype) if a is None else np.asarray(a, dtype)  # noqa: E731
        self.age = full(age, np.nan, np.float32)
        self.sex = np.asarray(["" if sex is None else str(s).upper()[:1] for s in (sex if sex is not None else [None] * n)])
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
        self.codes = [_codes(c) for c in codes] if codes is not None else [{} for _ in range(n)]
        lengths = {len(a) for a in (self.age, self.sex, self.heart_rate, self.record_ids, self.keys,
                                    self.patient_keys, self.fold, self.codes)}
        if self.text_embeddings is not None:
            lengths.add(len(self.text_embeddings))
        if lengths != {n}:
            raise ValueError(f"index arrays have different lengths {sorted(lengths)}; expected {n} records")
        if len(set(self.keys.tolist())) != n:
            raise ValueError("index keys are not unique (give keys=..., e.g. '<dataset>/<record_id>')")
        self.statement_sets = [frozenset(map(normalise_statement, _statements(r))) for r in self.reports]
        self._statements = _SetMatrix(self.statement_sets)
        self._code_matrices = {v: _SetMatrix([c.get(v, frozenset()) for c in self.codes]) for v in CODE_VIEWS}
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
    def from_processed(cls, dirs: str | Path | Sequence[str | Path], folds: Sequence[int] | None = DEFAULT_TRAIN_FOLDS
                       ) -> "ExperienceIndex":
        """Index of the records of processed sets in ``folds`` (default: the training folds).

        Reads only reports, embeddings, demographics, folds and ids from ``dataset.npz`` (not the
        signals), and ``hosp_codes.jsonl`` where present. Keys are ``"<dir name>/<record_id>"``.
        ``folds=None`` keeps every fold: only for tests and analysis, never for augmentation.

        Raises:
            FileNotFoundError: a directory without ``dataset.npz``.
            ValueError: sets embedded by different text embedders, or no record in ``folds``.
        """
        dirs = [dirs] if isinstance(dirs, (str, Path)) else list(dirs)
        table = _read_tables(dirs)
        keep = np.ones(len(table["reports"]), bool) if folds is None else np.isin(table["fold"], np.asarray(folds))
        if not keep.any():
            raise ValueError(f"no record of {[str(d) for d in dirs]} is in folds {folds}")
        pick = lambda a: [a[i] for i in np.flatnonzero(keep)] if isinstance(a, list) else a[keep]  # noqa: E731
        return cls(pick(table["reports"]), pick(table["text_embeddings"]), pick(table["age"]), pick(table["sex"]),
                   pick(table["heart_rate"]), pick(table["record_ids"]), keys=pick(table["keys"]),
                   patient_keys=pick(table["patient_keys"]), fold=pick(table["fold"]), codes=pick(table["codes"]),
                   embedder_name=table["embedder"])

    def save(self, path: str | Path) -> Path:
        """Write the index (no signals) to one ``.npz``; :meth:`load` reads it back."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        codes = [json.dumps({v: sorted(c[v]) for v in sorted(c)}) for c in self.codes]
        embeddings = self.text_embeddings if self.text_embeddings is not None else np.zeros((len(self), 0), np.float32)
        np.savez(path, reports=self.reports, text_embeddings=embeddings, age=self.age, sex=self.sex,
                 heart_rate=self.heart_rate, record_ids=self.record_ids, keys=self.keys,
                 patient_keys=self.patient_keys, fold=self.fold, codes=np.asarray(codes),
                 embedder_name=np.asarray(self.embedder_name))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ExperienceIndex":
        """Read an index written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as d:
            embeddings = d["text_embeddings"]
            return cls(d["reports"], embeddings if embeddings.shape[1] else None, d["age"], d["sex"], d["heart_rate"],
                       d["record_ids"], keys=d["keys"], patient_keys=d["patient_keys"], fold=d["fold"],
                       codes=[json.loads(c) for c in d["codes"]], embedder_name=str(d["embedder_name"]))

    # ---------------------------------------------------------------------------------- querying
    def query(self, report: str | Sequence[str], age: float | None = None, sex: str | None = None,
              heart_rate: float | None = None, *, embedder=None, codes=None, exclude: Sequence[str] = ()) -> Query:
        """A :class:`Query` for a free condition; its ``text`` view is embedded by ``embedder``
        (:class:`diffusets_jax.text.TextEmbedder`, must be the index's), or dropped if None.

        Raises:
            ValueError: ``embedder`` is not the one the index was embedded with.
        """
        from diffusets_jax.text import build_prompt

        embedding = None
        statements = _statements(report)
        if embedder is not None and statements and self.text_embeddings is not None:
            if self.embedder_name and embedder.name != self.embedder_name:
                raise ValueError(f"the index was embedded with {self.embedder_name!r}, not {embedder.name!r}")
            embedding = embedder.embed([build_prompt(statements)])[0]
        return Query.from_report(statements, age, sex, heart_rate, text_embedding=embedding, codes=codes, exclude=exclude)

    def effective_weights(self, query: Query, weights: Mapping[str, float] | None = None) -> dict[str, float]:
        """Weights of ``query``'s views, normalised to sum 1: a view the index or the query lacks,
        or with weight 0, is left out.

        Raises:
            ValueError: unknown view or negative weight; no view left (all zero or all missing).
        """
        merged = _check_weights(weights)
        has_query = {
            "text": query.text_embedding is not None, "statements": bool(query.statements),
            "age": math.isfinite(query.age), "sex": query.sex in ("M", "F"),
            "heart_rate": math.isfinite(query.heart_rate),
        }
        has_query.update({v: bool(query.codes.get(v)) for v in CODE_VIEWS})
        if has_query["text"] and self.text_embeddings is not None and len(query.text_embedding) != self.text_embeddings.shape[1]:
            raise ValueError(f"query embedding has {len(query.text_embedding)} dims, the index "
                             f"{self.text_embeddings.shape[1]} ({self.embedder_name})")
        used = {v: merged[v] for v in self.views if has_query[v] and merged[v] > 0}
        total = sum(used.values())
        if total <= 0:
            raise ValueError(f"no view to compare on: weights {merged}, index views {self.views}, query views "
                             f"{[v for v in VIEWS if has_query[v]]}")
        return {v: w / total for v, w in used.items()}

    def _view_similarity(self, view: str, queries: Sequence[Query]) -> np.ndarray:
        """``(Q, N)`` similarity in [0, 1] of each query with each record on one view."""
        if view == "text":
            q = np.stack([np.asarray(x.text_embedding, np.float32) if x.text_embedding is not None
                          else np.zeros(self.text_embeddings.shape[1], np.float32) for x in queries])  # (Q, D)
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
        """The ``k`` records most similar to ``query`` (best first; ties by index row), see :func:`retrieve`."""
        return self.retrieve_batch([query], k, weights)[0]

    def retrieve_batch(self, queries: Sequence[Query], k: int = DEFAULT_K, weights: Mapping[str, float] | None = None,
                       progress: bool = False) -> list[Retrieval]:
        """:meth:`retrieve` for many queries, vectorised in blocks of ``MAX_BLOCK_ELEMENTS`` similarities.

        Raises:
            ValueError: ``k < 1``; and as :meth:`effective_weights`.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = list(queries)
        block = max(1, MAX_BLOCK_ELEMENTS // len(self))
        out = []
        from tqdm import tqdm

        for start in tqdm(range(0, len(queries), block), desc="retrieving", unit="block", disable=not progress):
            chunk = queries[start:start + block]
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
            rows=rows, keys=self.keys[rows].tolist(), record_ids=self.record_ids[rows].tolist(),
            reports=self.reports[rows].tolist(), scores=score[rows].astype(np.float32),
            view_scores={v: s[rows] for v, s in view_sims.items()}, weights=dict(weights),
            age=self.age[rows], sex=self.sex[rows], heart_rate=self.heart_rate[rows],
            codes=[self.codes[r] for r in rows],
            prevalence={key: self.prevalence[key] for r in rows for key in self.statement_sets[r]},
        )


def retrieve(index: ExperienceIndex, query: Query, k: int = DEFAULT_K, weights: Mapping[str, float] | None = None
             ) -> Retrieval:
    """The ``k`` training records of ``index`` most similar to ``query``, best first.

    ``score = sum_v w_v s_v / sum_v w_v`` over the views (:data:`VIEWS`) with ``w_v > 0`` that both
    the index and the query have (:meth:`ExperienceIndex.effective_weights`); ``weights`` updates
    :data:`DEFAULT_WEIGHTS` (e.g. ``{"age": 0}`` drops the age view). Records whose key is in
    ``query.exclude`` are never returned. Ties are broken by index row, so results are deterministic.
    """
    return index.retrieve(query, k, weights)


# --------------------------------------------------------------------------------- summarisers
@runtime_checkable
class Summariser(Protocol):
    """Distils a query and its retrieved neighbours into one report (statements joined by ``'|'``).

    Implementations should keep the query's own statements first and unchanged (they are the
    condition asked for), and must return at least one statement.
    """

    name: str

    def summarise(self, query: Query, retrieval: Retrieval) -> str:
        ...


#: Statements that describe a dominant rhythm: at most one per report (the query's wins).
_RHYTHM = re.compile(r"sinus (rhythm|brady|tachy|arrhythmi)|atrial (fibrillation|flutter)|\bflutter\b|"
                     r"fibrillation|supraventricular tachy|ventricular tachy|junctional|atrial rhythm|"
                     r"ectopic rhythm|idioventricular")
#: Overall verdicts of the query's own ECG ("normal ECG", "borderline ECG"): never taken from others.
_VERDICT = re.compile(r"\b(normal|abnormal|borderline|otherwise normal)\s+ecg\b|^otherwise no definite pathology$")
_AXIS = re.compile(r"\baxis\b")
#: Further groups of mutually exclusive statements: one bundle-branch block (complete or
#: incomplete, left or right), one fascicular block (anterior or posterior).
_GROUPS = (("bundle_branch_block", re.compile(r"bundle branch block|\b[lr]bbb\b")),
           ("fascicular_block", re.compile(r"(anterior|posterior) fascicular block|hemiblock")))
#: Pairs of statement patterns that contradict each other (low QRS voltage vs hypertrophy by voltage).
_CONFLICTS = ((re.compile(r"low (qrs )?voltage"),
               re.compile(r"ventricular hypertrophy|septal hypertrophy|high (qrs )?voltage|voltage criteria")),)


def statement_group(statement: str) -> str | None:
    """``'verdict'``, ``'rhythm'``, ``'axis'``, ``'bundle_branch_block'``, ``'fascicular_block'`` or
    None: statements of one group exclude each other (a report holds at most one of each)."""
    key = normalise_statement(statement)
    if _VERDICT.search(key):
        return "verdict"
    if _RHYTHM.search(key):
        return "rhythm"
    if _AXIS.search(key):
        return "axis"
    for name, pattern in _GROUPS:
        if pattern.search(key):
            return name
    return None


def contradicts(statement: str, others: Sequence[str]) -> bool:
    """True if ``statement`` and one of ``others`` form a pair of :data:`_CONFLICTS`."""
    key, other_keys = normalise_statement(statement), [normalise_statement(o) for o in others]
    for a, b in _CONFLICTS:
        for first, second in ((a, b), (b, a)):
            if first.search(key) and any(second.search(o) for o in other_keys):
                return True
    return False


def consistent_with_heart_rate(statement: str, heart_rate: float) -> bool:
    """False for a brady-/tachycardia statement the heart rate (bpm) contradicts (< 60 / > 100)."""
    key = normalise_statement(statement)
    if not math.isfinite(heart_rate):
        return True
    if "bradycardi" in key:
        return heart_rate < 60
    if "tachycardi" in key and "paroxysm" not in key:
        return heart_rate > 100
    return True


def _finalise(query_statements: Sequence[str], candidates: Sequence[str], max_statements: int,
              heart_rate: float = math.nan) -> str:
    """The query's statements (deduplicated, in order), then acceptable candidates, capped."""
    chosen, seen, groups = [], set(), set()
    for s in query_statements:
        if normalise_statement(s) not in seen:
            chosen.append(s)
            seen.add(normalise_statement(s))
            groups.add(statement_group(s))
    for s in candidates:
        if len(chosen) >= max_statements:
            break
        key, group = normalise_statement(s), statement_group(s)
        if not key or key in seen or not consistent_with_heart_rate(s, heart_rate):
            continue
        if group == "verdict" or (group is not None and group in groups) or contradicts(s, chosen):
            continue
        chosen.append(s)
        seen.add(key)
        groups.add(group)
    return "|".join(chosen)


class KeywordSummariser:
    """Deterministic, offline summary: the query's statements, then the neighbours' common ones.

    Candidates are the neighbours' statements found in at least ``min_support`` of the neighbours
    (fraction; default 0.4, i.e. 2 of 5) and over-represented there: in at least
    ``min(1, min_lift x prevalence)`` of them, where prevalence is the statement's fraction in the
    whole index (default lift 1.5; so a statement half the index holds needs 4 of 5 neighbours, and
    one that every neighbour states always qualifies). They are ranked by summed similarity score of the neighbours that
    state them, then by count, then by first appearance (neighbour rank, statement position).
    A candidate is skipped if the query (or an earlier candidate) already has its group (one
    rhythm, one axis, one bundle-branch block, one fascicular block; overall verdicts such as "normal ECG" are never copied from other patients)
    or if it contradicts the query's heart rate (bradycardia needs < 60 bpm, tachycardia > 100)
    or a chosen statement (low QRS voltage against ventricular hypertrophy).
    The report holds at most ``max_statements`` statements, unless the query alone has more (its
    statements are never dropped). The first spelling seen of a statement is kept.
    """

    name = "keyword"

    def __init__(self, max_statements: int = 6, min_support: float = 0.4, min_lift: float = 1.5):
        if max_statements < 1 or not 0 < min_support <= 1 or min_lift < 0:
            raise ValueError(f"need max_statements >= 1, 0 < min_support <= 1 and min_lift >= 0, got "
                             f"{max_statements}, {min_support}, {min_lift}")
        self.max_statements = max_statements
        self.min_support = min_support
        self.min_lift = min_lift

    def __repr__(self) -> str:
        return (f"KeywordSummariser(max_statements={self.max_statements}, min_support={self.min_support}, "
                f"min_lift={self.min_lift})")

    def candidates(self, retrieval: Retrieval) -> list[str]:
        """The neighbours' statements with enough support, best first."""
        stats: dict[str, list] = {}  # key -> [score sum, count, first appearance, spelling, last neighbour]
        for i, (report, score) in enumerate(zip(retrieval.reports, retrieval.scores)):
            for s in _statements(report):
                key = normalise_statement(s)
                entry = stats.setdefault(key, [0.0, 0, len(stats), s, -1])
                if entry[4] != i:  # count each neighbour once
                    entry[0] += float(score)
                    entry[1] += 1
                    entry[4] = i
        n = len(retrieval)
        kept = [v for key, v in stats.items() if v[1] >= self.min_support * n - 1e-9
                and v[1] >= min(1.0, self.min_lift * retrieval.prevalence.get(key, 0.0)) * n - 1e-9]
        return [v[3] for v in sorted(kept, key=lambda v: (-round(v[0], 9), -v[1], v[2]))]

    def summarise(self, query: Query, retrieval: Retrieval) -> str:
        """``'|'``-joined report; ValueError if neither the query nor the neighbours give a statement."""
        report = _finalise(query.statements, self.candidates(retrieval), max(self.max_statements, 1),
                           query.heart_rate)
        if not report:
            raise ValueError("nothing to summarise: the query has no statement and no neighbour statement qualifies")
        return report


@runtime_checkable
class LLMClient(Protocol):
    """A chat model: one system and one user message in, the reply text out."""

    def complete(self, system: str, user: str) -> str:
        ...


class OpenAIChatClient:
    """OpenAI-style chat completions (``POST /chat/completions``), temperature 0.

    Needs the optional ``openai`` package and an API key (``api_key`` or ``OPENAI_API_KEY``);
    ``base_url`` points it at any OpenAI-compatible server. The key is handed to the client only,
    never printed or shown in ``repr``. Not used by the tests (no network there).

    Raises:
        RuntimeError: no API key. ImportError: ``openai`` not installed.
    """

    def __init__(self, model: str = "gpt-4o-mini", api_key: str | None = None, base_url: str | None = None,
                 temperature: float = 0.0, timeout: float = 60.0):
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if not api_key:
            raise RuntimeError("OpenAIChatClient needs an API key: set the OPENAI_API_KEY environment variable")
        try:
            import openai
        except ImportError as err:
            raise ImportError("OpenAIChatClient needs the 'openai' package: pip install diffusets-jax[openai]") from err
        self.model, self.temperature = model, temperature
        self._client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout)

    def __repr__(self) -> str:
        return f"OpenAIChatClient(model={self.model!r})"

    def complete(self, system: str, user: str) -> str:
        response = self._client.chat.completions.create(
            model=self.model, temperature=self.temperature,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
        )
        return response.choices[0].message.content or ""


LLM_SYSTEM_PROMPT = (
    "You are a cardiologist writing ECG reports. Given a patient's ECG statements, age, sex and heart rate, "
    "and the reports of similar patients, write one concise, physiologically consistent ECG report for the "
    "patient. Rules: start with the patient's own statements, unchanged and in order; add only findings "
    "that several similar patients share and that agree with the patient's statements and heart rate; never "
    "add a second rhythm or contradict the patient's statements; at most {max_statements} statements in "
    "total. Answer with the statements only, separated by '|', on one line."
)


class LLMSummariser:
    """Summary by a chat model (SE-Diff's LLM step), post-checked like :class:`KeywordSummariser`.

    The reply is split on ``'|'`` or new lines (bullets and numbering stripped); the query's
    statements are put first, duplicates and contradicted brady-/tachycardia dropped, and the
    result capped at ``max_statements``. If the client fails or the reply holds nothing usable,
    ``fallback`` (default :class:`KeywordSummariser`) is used and a warning is issued. Identical
    prompts are answered from an in-memory cache.
    """

    name = "llm"

    def __init__(self, client: LLMClient, max_statements: int = 6, fallback: Summariser | None = None):
        self.client = client
        self.max_statements = max_statements
        self.fallback = fallback if fallback is not None else KeywordSummariser(max_statements)
        self._cache: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"LLMSummariser(client={self.client!r}, max_statements={self.max_statements})"

    def prompt(self, query: Query, retrieval: Retrieval) -> tuple[str, str]:
        """(system, user) messages for ``query`` and its neighbours."""
        def person(age, sex, hr):
            parts = [f"age {age:.0f} years" if math.isfinite(age) else "age unknown",
                     {"M": "male", "F": "female"}.get(sex, "sex unknown"),
                     f"heart rate {hr:.0f} bpm" if math.isfinite(hr) else "heart rate unknown"]
            return ", ".join(parts)

        def codes(c):
            return "".join(f"\n  {v}: {', '.join(sorted(c[v])[:30])}" for v in CODE_VIEWS if c.get(v))

        lines = [f"Patient: {person(query.age, query.sex, query.heart_rate)}.",
                 f"Patient's statements: {' | '.join(query.statements) or '(none)'}{codes(query.codes)}",
                 "", f"Similar patients ({len(retrieval)}, most similar first):"]
        for i in range(len(retrieval)):
            lines.append(f"{i + 1}. similarity {retrieval.scores[i]:.2f}; "
                         f"{person(float(retrieval.age[i]), str(retrieval.sex[i]), float(retrieval.heart_rate[i]))}; "
                         f"report: {' | '.join(_statements(retrieval.reports[i]))}{codes(retrieval.codes[i])}")
        return LLM_SYSTEM_PROMPT.format(max_statements=self.max_statements), "\n".join(lines)

    @staticmethod
    def parse(reply: str) -> list[str]:
        """Statements of a model reply: split on ``'|'``/new lines, bullets, numbers, quotes stripped."""
        reply = re.sub(r"```\w*", "", reply)
        parts = re.split(r"[|\n]", reply)
        cleaned = [re.sub(r"^\s*(?:[-*\u2022]|\d+[.)])\s*", "", p).strip().strip("\"'").strip() for p in parts]
        return [p for p in cleaned if p]

    def summarise(self, query: Query, retrieval: Retrieval) -> str:
        system, user = self.prompt(query, retrieval)
        if user not in self._cache:
            try:
                self._cache[user] = self.client.complete(system, user)
            except Exception as err:  # network, quota, ...: the deterministic summary still works
                warnings.warn(f"LLM summariser failed ({type(err).__name__}: {err}); using {self.fallback!r}")
                return self.fallback.summarise(query, retrieval)
        parsed = self.parse(self._cache[user])
        if not parsed:
            warnings.warn(f"LLM reply held no statement; using {self.fallback!r}")
            return self.fallback.summarise(query, retrieval)
        return _finalise(query.statements, parsed, self.max_statements, query.heart_rate)


def get_summariser(name: str = "keyword", max_statements: int = 6, min_support: float = 0.4, min_lift: float = 1.5,
                   llm_model: str = "gpt-4o-mini", llm_base_url: str | None = None) -> Summariser:
    """``'keyword'`` (default, offline) or ``'llm'`` (:class:`OpenAIChatClient`; needs ``OPENAI_API_KEY``)."""
    if name == "keyword":
        return KeywordSummariser(max_statements, min_support, min_lift)
    if name == "llm":
        client = OpenAIChatClient(llm_model, base_url=llm_base_url)
        return LLMSummariser(client, max_statements, KeywordSummariser(max_statements, min_support, min_lift))
    raise ValueError(f"unknown summariser {name!r}; choose 'keyword' or 'llm'")


# ---------------------------------------------------------------------------------- augmenting
def augment_report(index: ExperienceIndex, report: str | Sequence[str], age: float | None, sex: str | None,
                   heart_rate: float | None, k: int = DEFAULT_K, *, weights: Mapping[str, float] | None = None,
                   summariser: Summariser | None = None, embedder=None,
                   codes: Mapping[str, Sequence[str]] | None = None) -> str:
    """Generation time: the retrieval-augmented report of one condition (statements joined by ``'|'``).

    Args:
        index: training records (:meth:`ExperienceIndex.from_processed` or :meth:`ExperienceIndex.load`).
        report: the requested statements (``'|'``-joined or a list; may be empty: then the report
            comes from the neighbours alone). age: years; sex: ``'M'``/``'F'``; heart_rate: bpm
            (None: unknown, that view is dropped).
        k: neighbours; weights: updates :data:`DEFAULT_WEIGHTS`; summariser: default
            :class:`KeywordSummariser`; embedder: the index's text embedder, to use the ``text``
            view (None: dropped); codes: hospital code sets of the patient, if any.

    Returns:
        The augmented report. Embed it with ``build_prompt`` like any report (``Pipeline`` does).

    Raises:
        ValueError: as :meth:`ExperienceIndex.effective_weights` / the summariser.
    """
    query = index.query(report, age, sex, heart_rate, embedder=embedder, codes=codes)
    summariser = summariser or KeywordSummariser()
    return summariser.summarise(query, index.retrieve(query, k, weights))


def _read_tables(dirs: Sequence[str | Path]) -> dict:
    """The non-signal fields of processed sets, concatenated, with keys and hospital code sets."""
    out = {name: [] for name in ("reports", "text_embeddings", "age", "sex", "heart_rate", "fold", "record_ids",
                                 "keys", "patient_keys", "codes")}
    embedders = set()
    names = [Path(d).name for d in dirs]
    for d in dirs:
        d = Path(d)
        prefix = d.name if names.count(d.name) == 1 else str(d.resolve())  # keys stay unique
        if not (d / "dataset.npz").is_file():
            raise FileNotFoundError(f"{d / 'dataset.npz'} not found: run `diffusets-jax prepare --out {d}` first")
        embedders.add(json.loads((d / "info.json").read_text())["embedder"])
        with np.load(d / "dataset.npz", allow_pickle=False) as data:
            arrays = {name: data[name] for name in ("reports", "text_embeddings", "age", "sex", "heart_rate", "fold",
                                                    "record_ids", "patient_ids")}
        hosp = read_hosp_codes(d)
        for name in ("reports", "text_embeddings", "age", "sex", "heart_rate", "fold", "record_ids"):
            out[name].append(arrays[name])
        out["keys"].append(np.array([f"{prefix}/{r}" for r in arrays["record_ids"]]))
        out["patient_keys"].append(np.array([f"{prefix}/{p}" for p in arrays["patient_ids"]]))
        out["codes"].extend(hosp.get(str(r), {}) for r in arrays["record_ids"])
    if len(embedders) > 1:
        raise ValueError(f"datasets {[str(d) for d in dirs]} were embedded with different text embedders: {sorted(embedders)}")
    table = {name: (v if name == "codes" else np.concatenate(v)) for name, v in out.items()}
    table["embedder"] = embedders.pop()
    return table


def augment_dataset(src_dirs: str | Path | Sequence[str | Path], out_dir: str | Path, k: int = DEFAULT_K,
                    weights: Mapping[str, float] | None = None, summariser: Summariser | None = None, embedder=None, *,
                    folds: Sequence[int] = DEFAULT_TRAIN_FOLDS, index_dirs: Sequence[str | Path] | None = None,
                    exclude_same_patient: bool = False, progress: bool = True) -> Path:
    """Write a processed set whose reports are retrieval-augmented and whose text is re-embedded.

    Every record of ``src_dirs`` (all folds, so validation and test conditions are augmented too)
    is a query; its neighbours come from an :class:`ExperienceIndex` of ``index_dirs`` (default
    ``src_dirs``) restricted to the training ``folds``: held-out records are never retrieved. A
    training record never retrieves itself (nor, with ``exclude_same_patient``, another record of
    its patient). The query uses the record's statements, age, sex, heart rate, stored text
    embedding and hospital code sets. The augmented report goes through ``summariser`` (default
    :class:`KeywordSummariser`) and is embedded by ``embedder`` (default: the set's own, by name)
    via the ordered prompt, through ``out_dir/embedding_cache.npz`` (seeded with the source
    prompts), so the trainers read ``out_dir`` unchanged. Signals, demographics, folds and ids are
    copied. ``records.jsonl`` gains ``original_report`` and ``retrieved`` (keys and scores);
    ``info.json`` gains ``augmentation`` (settings, counts, runtimes); ``hosp_codes.jsonl`` is copied.

    Returns ``out_dir``. Raises ValueError for ``k < 1``, bad weights, or sets of different
    embedders; FileNotFoundError for a directory without ``dataset.npz``.
    """
    from data_pipelines.processed import load_processed
    from diffusets_jax.text import EmbeddingCache, build_prompt, get_embedder

    t0 = time.perf_counter()
    src_dirs = [src_dirs] if isinstance(src_dirs, (str, Path)) else list(src_dirs)
    index_dirs = list(index_dirs) if index_dirs is not None else src_dirs
    summariser = summariser or KeywordSummariser()
    dataset = load_processed(src_dirs)
    embedder = embedder or get_embedder(dataset.embedder)
    table = _read_tables(src_dirs)
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
        queries.append(Query.from_report(dataset.reports[i], dataset.age[i], dataset.sex[i], dataset.heart_rate[i],
                                         text_embedding=dataset.text_embeddings[i], codes=table["codes"][i],
                                         exclude=sorted(exclude)))
    t1 = time.perf_counter()
    retrievals = index.retrieve_batch(queries, k, weights, progress=progress)
    t2 = time.perf_counter()
    from tqdm import tqdm

    reports = [summariser.summarise(q, r) for q, r in tqdm(list(zip(queries, retrievals)), desc="summarising",
                                                            unit="rec", disable=not progress)]
    t3 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = EmbeddingCache.open(out_dir / "embedding_cache.npz", embedder)
    if embedder.name == dataset.embedder:
        cache._vectors.update({p: e for p, e in zip(dataset.prompts.tolist(), dataset.text_embeddings)
                               if p not in cache})
    prompts = [build_prompt(r) for r in reports]
    embeddings = cache.embed_prompts(prompts, embedder)
    cache.save(out_dir / "embedding_cache.npz")
    t4 = time.perf_counter()
    np.savez(out_dir / "dataset.npz", signals=dataset.signals, text_embeddings=embeddings.astype(np.float32),
             age=dataset.age, sex=dataset.sex, heart_rate=dataset.heart_rate, fold=dataset.fold,
             reports=np.array(reports), prompts=np.array(prompts), record_ids=dataset.record_ids,
             patient_ids=dataset.patient_ids)
    _write_side_files(src_dirs, out_dir, dataset, reports, retrievals)
    changed = int(sum(a != b for a, b in zip(reports, dataset.reports.tolist())))
    lengths = [len(_statements(r)) for r in reports]
    infos = [json.loads((Path(d) / "info.json").read_text()) for d in src_dirs]
    info = {
        "source": "+".join(i["source"] for i in infos) + "+rag", "root": ";".join(str(i["root"]) for i in infos),
        "embedder": embedder.name, "embed_dim": embedder.dim, "num_records": len(dataset),
        "num_skipped": sum(i.get("num_skipped", 0) for i in infos), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "augmentation": {
            "method": "SE-Diff experience retrieval (diffusets_jax.sediff.retrieval)",
            "datasets": [str(d) for d in src_dirs], "index_datasets": [str(d) for d in index_dirs],
            "index_folds": list(folds), "index_records": len(index), "index_views": list(index.views),
            "k": k, "weights": _check_weights(weights), "summariser": repr(summariser),
            "exclude_same_patient": exclude_same_patient, "reports_changed": changed,
            "statements_before": float(np.mean([len(_statements(r)) for r in dataset.reports])),
            "statements_after": float(np.mean(lengths)),
            "seconds": {"load": round(t1 - t0, 2), "retrieve": round(t2 - t1, 2), "summarise": round(t3 - t2, 2),
                        "embed": round(t4 - t3, 2), "total": round(time.perf_counter() - t0, 2)},
        },
    }
    (out_dir / "info.json").write_text(json.dumps(info, indent=2))
    return out_dir


def _write_side_files(src_dirs, out_dir: Path, dataset, reports: list[str], retrievals: list[Retrieval]) -> None:
    """records.jsonl (source metadata + original report + neighbours), skipped.csv, hosp_codes.jsonl."""
    metadata = []
    for d in src_dirs:
        path = Path(d) / "records.jsonl"
        lines = path.read_text().splitlines() if path.is_file() else []
        n = len(np.load(Path(d) / "dataset.npz")["record_ids"])
        metadata.extend(json.loads(line) for line in lines) if len(lines) == n else metadata.extend({} for _ in range(n))
    with open(out_dir / "records.jsonl", "w") as f:
        for i, (meta, report, r) in enumerate(zip(metadata, reports, retrievals)):
            row = {"record_id": str(dataset.record_ids[i]), **meta, "original_report": str(dataset.reports[i]),
                   "report": report, "retrieved": [{"key": key, "score": round(float(s), 4)}
                                                   for key, s in zip(r.keys, r.scores)]}
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


# ------------------------------------------------------------------------ MIMIC-IV hospital data
def read_hosp_codes(processed_dir: str | Path) -> dict[str, dict[str, frozenset[str]]]:
    """``{record_id: {view: frozenset(codes)}}`` from ``processed_dir/hosp_codes.jsonl`` ({} if absent)."""
    path = Path(processed_dir) / HOSP_CODES_FILE
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            out[str(row["record_id"])] = _codes({v: row[v] for v in CODE_VIEWS if v in row})
    return out


def write_hosp_codes(processed_dir: str | Path, codes: Mapping[str, Mapping[str, Sequence[str]]]) -> Path:
    """Write ``{record_id: {view: codes}}`` as ``processed_dir/hosp_codes.jsonl`` (sorted codes)."""
    path = Path(processed_dir) / HOSP_CODES_FILE
    with open(path, "w") as f:
        for record_id, views in codes.items():
            f.write(json.dumps({"record_id": str(record_id), **{v: sorted(views[v]) for v in CODE_VIEWS if v in views}})
                    + "\n")
    return path


def _hosp_table(hosp_root: Path, name: str, columns: Sequence[str]):
    import pandas as pd

    for candidate in (hosp_root / f"{name}.csv", hosp_root / f"{name}.csv.gz",
                      hosp_root / "hosp" / f"{name}.csv", hosp_root / "hosp" / f"{name}.csv.gz"):
        if candidate.is_file():
            return pd.read_csv(candidate, usecols=list(columns), dtype={"icd_code": str}, low_memory=False)
    return None


def link_hosp_codes(ecg_root: str | Path, hosp_root: str | Path, record_ids: Sequence[str] | None = None, *,
                    hours_before_admission: float = 24.0, icd_chars: int | None = None
                    ) -> dict[str, dict[str, list[str]]]:
    """SE-Diff's tri-view profiles: the MIMIC-IV hospital code sets of each MIMIC-IV-ECG study.

    An ECG (``ecg_root/record_list.csv``: ``subject_id, study_id, ecg_time``) is linked to the
    admission of the same subject (``admissions``: ``subject_id, hadm_id, admittime, dischtime``)
    with ``admittime - hours_before_admission <= ecg_time <= dischtime`` (emergency ECGs precede
    the admission); of several, the latest admission starting before the ECG (else the earliest).
    Its code sets are the admission's ``diagnoses_icd`` and ``procedures_icd`` codes as
    ``"ICD<version>:<code>"`` (``icd_chars``: keep only the first characters, e.g. 3 for ICD
    categories) and the lower-cased ``drug`` names of ``prescriptions``. Tables are read from
    ``hosp_root`` or ``hosp_root/hosp`` as ``.csv`` or ``.csv.gz``; a missing table gives no view.

    Returns ``{study_id: {view: sorted codes}}`` for linked studies (of ``record_ids`` if given).
    Raises FileNotFoundError if ``record_list.csv`` or ``admissions`` is missing.
    """
    import pandas as pd

    ecg_root, hosp_root = Path(ecg_root), Path(hosp_root)
    if not (ecg_root / "record_list.csv").is_file():
        raise FileNotFoundError(f"{ecg_root / 'record_list.csv'} not found (MIMIC-IV-ECG root)")
    ecgs = pd.read_csv(ecg_root / "record_list.csv", usecols=["subject_id", "study_id", "ecg_time"],
                       dtype={"study_id": str})
    if record_ids is not None:
        ecgs = ecgs[ecgs["study_id"].isin([str(r) for r in record_ids])]
    admissions = _hosp_table(hosp_root, "admissions", ["subject_id", "hadm_id", "admittime", "dischtime"])
    if admissions is None:
        raise FileNotFoundError(f"no admissions.csv(.gz) under {hosp_root} (MIMIC-IV hosp module)")
    merged = ecgs.merge(admissions, on="subject_id")
    for column in ("ecg_time", "admittime", "dischtime"):
        merged[column] = pd.to_datetime(merged[column])
    inside = (merged["ecg_time"] >= merged["admittime"] - pd.Timedelta(hours=hours_before_admission)) & (
        merged["ecg_time"] <= merged["dischtime"])
    merged = merged[inside].copy()
    merged["started_before"] = merged["admittime"] <= merged["ecg_time"]
    merged = merged.sort_values(["study_id", "started_before", "admittime"], ascending=[True, False, True])
    # started before the ECG: latest such admission; else earliest after
    before = merged[merged["started_before"]].groupby("study_id").tail(1)
    after = merged[~merged["started_before"]].groupby("study_id").head(1)
    link = pd.concat([before, after.loc[~after["study_id"].isin(before["study_id"])]])
    hadm_of = dict(zip(link["study_id"], link["hadm_id"]))

    sets: dict[str, dict] = {}
    icd = lambda row_version, code: f"ICD{int(row_version)}:{str(code).strip()[:icd_chars] if icd_chars else str(code).strip()}"  # noqa: E731
    for view, name, columns in (("diagnoses", "diagnoses_icd", ["hadm_id", "icd_code", "icd_version"]),
                                ("procedures", "procedures_icd", ["hadm_id", "icd_code", "icd_version"]),
                                ("medications", "prescriptions", ["hadm_id", "drug"])):
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


def attach_hosp_codes(processed_dir: str | Path, hosp_root: str | Path, ecg_root: str | Path | None = None,
                      **options) -> Path:
    """Link a processed MIMIC-IV-ECG set to MIMIC-IV hosp (:func:`link_hosp_codes`) and write
    ``processed_dir/hosp_codes.jsonl``; ``ecg_root`` defaults to ``info.json``'s ``root``."""
    info = json.loads((Path(processed_dir) / "info.json").read_text())
    with np.load(Path(processed_dir) / "dataset.npz", allow_pickle=False) as data:
        record_ids = data["record_ids"].tolist()
    codes = link_hosp_codes(ecg_root or info["root"], hosp_root, record_ids, **options)
    return write_hosp_codes(processed_dir, codes)


# ------------------------------------------------------------------------------------------ CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``augment-dataset``: write retrieval-augmented copies of processed sets; prints examples."""
    parser = argparse.ArgumentParser(prog="diffusets-jax augment-dataset", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", action="append", required=True, metavar="DIR",
                        help="processed set to augment (diffusets-jax prepare --out DIR); repeatable, merged into --out")
    parser.add_argument("--out", required=True, help="output processed set")
    parser.add_argument("--index", action="append", default=None, metavar="DIR",
                        help="processed sets to retrieve from (default: the --dataset sets); repeatable")
    parser.add_argument("--k", type=int, default=DEFAULT_K, help=f"neighbours per record (default {DEFAULT_K})")
    parser.add_argument("--weights", default="", help="VIEW=W,... over " + ", ".join(VIEWS) + " (updates the "
                        "defaults " + ",".join(f"{v}={w:g}" for v, w in DEFAULT_WEIGHTS.items()) + ")")
    parser.add_argument("--folds", default=",".join(map(str, DEFAULT_TRAIN_FOLDS)),
                        help="comma-separated training folds the index holds (default 1-8)")
    parser.add_argument("--summariser", choices=("keyword", "llm"), default="keyword",
                        help="keyword (offline, default) or llm (OpenAI-style chat; needs OPENAI_API_KEY)")
    parser.add_argument("--max-statements", type=int, default=6, help="statements per augmented report (the query's are kept)")
    parser.add_argument("--min-support", type=float, default=0.4, help="keyword: fraction of neighbours stating a finding")
    parser.add_argument("--min-lift", type=float, default=1.5,
                        help="keyword: neighbour fraction needed relative to the index-wide prevalence (capped at all)")
    parser.add_argument("--llm-model", default="gpt-4o-mini")
    parser.add_argument("--llm-base-url", default=None, help="OpenAI-compatible server (default: api.openai.com)")
    parser.add_argument("--embedder", default=None, help="text embedder of the new reports (default: the set's)")
    parser.add_argument("--exclude-same-patient", action="store_true", help="never retrieve a record of the query's patient")
    parser.add_argument("--hosp", default=None, metavar="DIR",
                        help="MIMIC-IV hosp directory: link the code sets of MIMIC-IV-ECG sets (writes hosp_codes.jsonl into them)")
    parser.add_argument("--save-index", default=None, metavar="FILE", help="also write the experience index (.npz) for generation")
    parser.add_argument("--examples", type=int, default=5, help="changed reports printed")
    args = parser.parse_args(argv)
    from diffusets_jax.text import get_embedder

    folds = tuple(int(f) for f in args.folds.split(",") if f.strip())
    weights = parse_weights(args.weights)
    if args.hosp:
        for d in dict.fromkeys(args.dataset + (args.index or [])):
            if json.loads((Path(d) / "info.json").read_text())["source"] == "mimic":
                print(f"linked hospital codes: {attach_hosp_codes(d, args.hosp)}")
    summariser = get_summariser(args.summariser, args.max_statements, args.min_support, args.min_lift, args.llm_model,
                                args.llm_base_url)
    embedder = get_embedder(args.embedder) if args.embedder else None
    start = time.perf_counter()
    out = augment_dataset(args.dataset, args.out, args.k, weights, summariser, embedder, folds=folds,
                          index_dirs=args.index, exclude_same_patient=args.exclude_same_patient)
    info = json.loads((out / "info.json").read_text())["augmentation"]
    print(f"wrote {out}: {info['reports_changed']} of {len(np.load(out / 'dataset.npz')['reports'])} reports changed, "
          f"statements per report {info['statements_before']:.2f} -> {info['statements_after']:.2f}; "
          f"index {info['index_records']} records, views {', '.join(info['index_views'])}; "
          f"{time.perf_counter() - start:.1f} s ({info['seconds']})")
    shown = 0
    for line in (out / "records.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["report"] != row["original_report"] and shown < args.examples:
            print(f"  {row['record_id']}: {row['original_report']}\n    -> {row['report']}")
            shown += 1
    if args.save_index:
        index_dirs = args.index or args.dataset
        print(f"wrote {ExperienceIndex.from_processed(index_dirs, folds).save(args.save_index)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
