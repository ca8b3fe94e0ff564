"""What SE-Diff experience retrieval compares: the views, their weights, `Query` and set similarity.

SE-Diff (Wang et al., ICLR 2026, arXiv:2511.09895, experience retrieval) scores training
admissions by a weighted sum of per-view Jaccard similarities over the diagnosis, medication and
procedure code sets of MIMIC-IV hospital stays (`tau = l1 tau_Diag + l2 tau_Med + l3 tau_Proc`).
The port compares on more views (`VIEWS`):
`text` (cosine of the stored report-prompt embeddings, negative values clipped to 0),
`statements` (Jaccard of the sets of normalised diagnostic statements, `normalise_statement`),
`age` and `heart_rate` (Gaussian kernels of the difference, scales `AGE_SCALE_YEARS` and
`HEART_RATE_SCALE_BPM`), `sex` (1 if equal) and, where MIMIC-IV hospital data are linked
(`link_hosp_codes()`), the paper's `diagnoses`, `medications` and `procedures` code-set
Jaccards. `score = sum_v w_v s_v / sum_v w_v` over the views with a non-zero weight that both
the index and the query have; a view missing in the data gets weight 0 automatically, so scores
stay in [0, 1]. Defaults: `DEFAULT_WEIGHTS`; `check_weights` and `parse_weights` check others.

This module holds those pieces: the views and weights, a report's statements (`statements_of`)
and comparison keys, hospital code sets (`code_sets`), `Query` (one condition to retrieve for)
and `SetMatrix` (batched Jaccard of sets). The index that scores records with them is
`diffusets_jax.sediff.retrieval.ExperienceIndex`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import scipy.sparse

from diffusets_jax.config import load_config
from diffusets_jax.data_pipelines.mimic_hosp import CODE_VIEWS

#: Every similarity view, in the order reports and weights are printed.
VIEWS = ("text", "statements", "age", "sex", "heart_rate", "diagnoses", "medications", "procedures")
#: Default per-view weights (`configs/sediff.py` `retrieval.weights`, where they are explained).
DEFAULT_WEIGHTS = {view: float(load_config("sediff").retrieval.weights[view]) for view in VIEWS}
#: Gaussian kernel scales: `exp(-(delta / scale)^2 / 2)`.
AGE_SCALE_YEARS = 10.0
HEART_RATE_SCALE_BPM = 10.0


def normalise_statement(statement: str) -> str:
    """Comparison key of a statement: lower case, single spaces, no trailing full stop."""
    return " ".join(str(statement).lower().split()).rstrip(".").strip()


def statements_of(report: str | Sequence[str]) -> tuple[str, ...]:
    """Stripped, non-empty statements of a `'|'`-joined report (or a sequence); () if none."""
    parts = report.split("|") if isinstance(report, str) else list(report)
    return tuple(s.strip() for s in parts if s and s.strip())


def code_sets(codes: Mapping[str, Sequence[str]] | None) -> dict[str, frozenset[str]]:
    """`{view: frozenset(codes)}` for the code views present; raises ValueError for another view."""
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
        age: years (NaN: unknown, the `age` view is dropped). sex: `'M'`/`'F'` or None.
        heart_rate: bpm (NaN: unknown).
        text_embedding: `(D,)` embedding of the report prompt by the index's embedder, or None
            (the `text` view is dropped).
        codes: `{view: frozenset}` of hospital code sets (views absent: dropped).
        exclude: index keys (`ExperienceIndex.keys`) never returned, e.g. the query record.
    """

    statements: tuple[str, ...] = ()
    age: float = math.nan
    sex: str | None = None
    heart_rate: float = math.nan
    text_embedding: np.ndarray | None = field(default=None, compare=False)
    codes: Mapping[str, frozenset[str]] = field(default_factory=dict)
    exclude: frozenset[str] = frozenset()

    @classmethod
    def from_report(
        cls,
        report: str | Sequence[str],
        age: float | None = None,
        sex: str | None = None,
        heart_rate: float | None = None,
        *,
        text_embedding: np.ndarray | None = None,
        codes: Mapping[str, Sequence[str]] | None = None,
        exclude: Sequence[str] = (),
    ) -> "Query":
        """A query from a `'|'`-joined report (or statements), age (years), sex, heart rate (bpm)."""
        return cls(
            statements=statements_of(report),
            age=math.nan if age is None else float(age),
            sex=None if sex is None else str(sex).upper()[:1],
            heart_rate=math.nan if heart_rate is None else float(heart_rate),
            text_embedding=None if text_embedding is None else np.asarray(text_embedding, np.float32),
            codes=code_sets(codes),
            exclude=frozenset(exclude),
        )


def check_weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    """`DEFAULT_WEIGHTS` updated by `weights`; ValueError for an unknown view or a negative weight."""
    merged = dict(DEFAULT_WEIGHTS)
    for view, weight in (weights or {}).items():
        if view not in VIEWS:
            raise ValueError(f"unknown retrieval view {view!r}; choose from {VIEWS}")
        if not (float(weight) >= 0 and math.isfinite(float(weight))):
            raise ValueError(f"weight of view {view!r} must be finite and >= 0, got {weight}")
        merged[view] = float(weight)
    return merged


def parse_weights(text: str) -> dict[str, float]:
    """`"text=1,age=0.5"` -> `{"text": 1.0, "age": 0.5}`; ValueError for a malformed item."""
    weights = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"weight {item!r} is not VIEW=NUMBER (views: {', '.join(VIEWS)})")
        weights[name.strip()] = float(value)
    check_weights(weights)
    return weights


class SetMatrix:
    """Binary sparse `(N, vocab)` matrix of per-record sets, for batched Jaccard similarity."""

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
        """`(Q, N)` Jaccard of each query set with each record set (0 where both are empty)."""
        inter = np.asarray((self._encode(sets) @ self.matrix).todense(), np.float32)  # (Q, N)
        union = np.array([len(s) for s in sets], np.float32)[:, None] + self.sizes[None, :] - inter
        return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
