"""Condition labels and classes from report text: one set of keyword rules for training, SE-Diff and evaluation.

* `condition_labels()`: keyword-defined condition masks of reports (several per report), by
  the curated rules `CONDITION_KEYWORDS` or the official ones
  `OFFICIAL_CONDITION_KEYWORDS` (official `test_scripts/batch_disease_gen.py`). Evaluation
  scores each subset.
* `class_masks()` / `class_indices()`: one class per report, the first of
  `CLASS_PRIORITY` whose rules match (the curated labels plus `EXTRA_CLASS_KEYWORDS`),
  else `FALLBACK_CLASS`. SE-Diff's ECGSYN prior is fitted per class, and training looks up
  each record's class for the physics losses.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class ConditionKeywords:
    """One keyword-defined condition: the report (lower-cased) matches if any `include` regex is
    found and no `exclude` regex is. `official_key` is the `--exp_type` of the official
    `batch_disease_gen.py` (None for a label the official code does not have)."""

    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    official_key: str | None = None


#: The official `batch_disease_gen.py` rules, verbatim (substring tests on `text.lower()`).
#: Known flaws kept for comparability: `avbi` ('degree') also matches 2nd/3rd degree block,
#: 'pace' and 'st-' are loose, 'atrial premature contraction' misses PTB-XL's "complex" wording.
OFFICIAL_CONDITION_KEYWORDS: dict[str, ConditionKeywords] = {
    name: ConditionKeywords(tuple(map(re.escape, include)), tuple(map(re.escape, exclude)), key)
    for name, key, include, exclude in (
        ("normal", "normal", ("normal ecg",), ("abnormal ecg",)),
        ("sinus_rhythm", "sn", ("sinus rhythm",), ()),
        ("sinus_bradycardia", "snb", ("sinus bradycardia",), ()),
        ("sinus_tachycardia", "snt", ("sinus tachycardia",), ()),
        ("sinus_arrhythmia", "sna", ("sinus arrhythmia",), ()),
        ("atrial_fibrillation", "af", ("atrial fibrillation",), ()),
        ("atrial_flutter", "afl", ("atrial flutter",), ()),
        ("pvc", "pvc", ("pvc", "ventricular premature", "premature ventricular"), ()),
        ("pac", "pac", ("atrial premature contraction", "pac(s)"), ()),
        ("lbbb", "lbbb", ("left bundle branch block",), ()),
        ("rbbb", "rbbb", ("right bundle branch block",), ()),
        ("av_block_1", "avbi", ("degree",), ()),
        ("mi", "mi", ("infarct",), ()),
        ("st_changes", "st", ("st junctional", " st ", "st-"), ()),
        ("pacing", "pacing", ("pacing", "pace"), ()),
    )
}

#: Curated rules (default): the official ones with the flaws above fixed and LVH added. Regexes
#: on the lower-cased report; `\b` = word boundary. Checked on PTB-XL SCP descriptions, LUDB
#: diagnoses and MIMIC-IV-ECG machine statements.
#:
#: | label | matches | differs from official |
#: |---|---|---|
#: | normal | "normal ecg", not "abnormal ecg" | same |
#: | sinus_rhythm | "sinus rhythm" | same |
#: | sinus_bradycardia / _tachycardia / _arrhythmia | the phrase | same |
#: | atrial_fibrillation / atrial_flutter | the phrase | same |
#: | pvc | "pvc", "ventricular premature", "premature ventricular" | word-bounded "pvc" |
#: | pac | "pac"/"pacs"/"pac(s)" as a word, "atrial premature", "premature atrial" | + "atrial premature complex" |
#: | lbbb / rbbb | "left/right bundle branch block", "lbbb"/"rbbb", not after "incomplete " | incomplete ones excluded |
#: | av_block_1 | "first/1st/i degree av block" (also "a-v", "av-block") | 2nd/3rd degree excluded |
#: | mi | "infarct" | same |
#: | st_changes | the word "st" ("st changes", "st-t", "st elevation", "st junctional") | no "post-" false hits |
#: | lvh | "left ventricular hypertrophy", "lvh" | not in official |
#: | pacing | "pacing", "paced", "pacemaker", "pacer" | no "space" false hits |
CONDITION_KEYWORDS: dict[str, ConditionKeywords] = {
    "normal": ConditionKeywords((r"\bnormal ecg\b",), (r"\babnormal ecg\b",), "normal"),
    "sinus_rhythm": ConditionKeywords((r"\bsinus rhythm\b",), (), "sn"),
    "sinus_bradycardia": ConditionKeywords((r"\bsinus bradycardia\b",), (), "snb"),
    "sinus_tachycardia": ConditionKeywords((r"\bsinus tachycardia\b",), (), "snt"),
    "sinus_arrhythmia": ConditionKeywords((r"\bsinus arrhythmia\b",), (), "sna"),
    "atrial_fibrillation": ConditionKeywords((r"\batrial fibrillation\b",), (), "af"),
    "atrial_flutter": ConditionKeywords((r"\batrial flutter\b",), (), "afl"),
    "pvc": ConditionKeywords((r"\bpvcs?\b", r"\bventricular premature", r"\bpremature ventricular"), (), "pvc"),
    "pac": ConditionKeywords((r"\bpacs?\b", r"\batrial premature", r"\bpremature atrial"), (), "pac"),
    "lbbb": ConditionKeywords((r"(?<!incomplete )\bleft bundle branch block", r"(?<!incomplete )\blbbb\b"), (), "lbbb"),
    "rbbb": ConditionKeywords(
        (r"(?<!incomplete )\bright bundle branch block", r"(?<!incomplete )\brbbb\b"), (), "rbbb"
    ),
    "av_block_1": ConditionKeywords((r"\b(?:first|1st|i)[ -]degree a-?v[ -]?block",), (), "avbi"),
    "mi": ConditionKeywords((r"infarct",), (), "mi"),
    "st_changes": ConditionKeywords((r"\bst\b",), (), "st"),
    "lvh": ConditionKeywords((r"\bleft ventricular hypertrophy\b", r"\blvh\b"), (), None),
    "pacing": ConditionKeywords((r"\bpac(?:ing|ed|emaker|er)\b",), (), "pacing"),
}


def condition_labels(
    reports: Sequence[str], keywords: Mapping[str, ConditionKeywords] | None = None
) -> dict[str, np.ndarray]:
    """Keyword-defined condition masks of report texts (a report can have several labels).

    Args:
        reports: `N` report strings (statements joined with `'|'` or any separator; case is
            ignored).
        keywords: rule table, default `CONDITION_KEYWORDS`; pass
            `OFFICIAL_CONDITION_KEYWORDS` to reproduce the official subsets exactly.

    Returns:
        `{label: (N,) bool mask}` in the table's order.

    Raises:
        TypeError: a report is not a string.

    Source: official `test_scripts/batch_disease_gen.py` (its 15 subsets).
    The official script also skips reports containing 'warning:' before labelling; filter those
    beforehand for an exact replication.
    """
    keywords = CONDITION_KEYWORDS if keywords is None else keywords
    texts = []
    for report in reports:
        if not isinstance(report, str):
            raise TypeError(f"reports must be strings, got {type(report).__name__}")
        texts.append(report.lower())
    compiled = {
        name: ([re.compile(p) for p in rule.include], [re.compile(p) for p in rule.exclude])
        for name, rule in keywords.items()
    }
    return {
        name: np.array(
            [any(p.search(t) for p in include) and not any(p.search(t) for p in exclude) for t in texts], dtype=bool
        )
        for name, (include, exclude) in compiled.items()
    }


#: Classes beyond `CONDITION_KEYWORDS`: SE-Diff's
#: `simplify_label` classes that the curated table lacks (ischemia, ST elevation / depression,
#: T-wave inversion, RVH, WPW, prolonged QT) and frequent PTB-XL / LUDB statements (incomplete
#: RBBB, left anterior fascicular block, left axis deviation, left atrial hypertrophy). Regexes on
#: the lower-cased report.
EXTRA_CLASS_KEYWORDS: dict[str, ConditionKeywords] = {
    "ischemia": ConditionKeywords((r"ischemi",)),
    "st_elevation": ConditionKeywords((r"\bst[- ]elevation\b", r"\bstemi\b")),
    "st_depression": ConditionKeywords((r"\bst[- ]depression\b",)),
    "t_wave_abnormal": ConditionKeywords((r"\bt[- ]waves?\b", r"\bt abnormalit", r"\binverted t\b")),
    "rvh": ConditionKeywords((r"\bright ventricular hypertrophy\b", r"\brvh\b")),
    "wpw": ConditionKeywords((r"wolff", r"\bwpw\b")),
    "prolonged_qt": ConditionKeywords((r"\b(?:long|prolonged) qt",)),
    "incomplete_rbbb": ConditionKeywords((r"\bincomplete right bundle branch block\b", r"\birbbb\b")),
    "lafb": ConditionKeywords((r"\bleft anterior (?:fascicular block|hemiblock)\b",)),
    "left_axis_deviation": ConditionKeywords((r"\bleft axis deviation\b",)),
    "left_atrial_hypertrophy": ConditionKeywords((r"\bleft atrial (?:hypertrophy|overload|enlargement)\b",)),
}

#: Order in which a report's classes are tried (most beat-specific first); `all` catches the rest.
CLASS_PRIORITY = (
    "pacing",
    "lbbb",
    "rbbb",
    "wpw",
    "pvc",
    "atrial_fibrillation",
    "atrial_flutter",
    "pac",
    "av_block_1",
    "st_elevation",
    "st_depression",
    "mi",
    "lvh",
    "rvh",
    "prolonged_qt",
    "ischemia",
    "t_wave_abnormal",
    "st_changes",
    "incomplete_rbbb",
    "lafb",
    "left_axis_deviation",
    "left_atrial_hypertrophy",
    "sinus_tachycardia",
    "sinus_bradycardia",
    "sinus_arrhythmia",
    "normal",
    "sinus_rhythm",
)
FALLBACK_CLASS = "all"


def class_masks(
    reports: Sequence[str], keywords: Mapping[str, ConditionKeywords] | None = None
) -> dict[str, np.ndarray]:
    """`{class: (N,) bool}`: `all`, the curated condition labels and `EXTRA_CLASS_KEYWORDS`."""
    masks = {"all": np.ones(len(reports), bool)}
    masks.update(condition_labels(reports))
    masks.update(condition_labels(reports, EXTRA_CLASS_KEYWORDS if keywords is None else keywords))
    return masks


def class_indices(reports: Sequence[str], names: Sequence[str]) -> np.ndarray:
    """`(N,)` int32 index into `names` (e.g. the classes of SE-Diff's fitted ECGSYN table) of each report's class: the
    first of `names` whose keywords match (`class_masks()`), else `all`."""
    masks = class_masks(list(reports))
    out = np.full(len(reports), list(names).index(FALLBACK_CLASS), np.int32)
    assigned = np.zeros(len(reports), bool)
    for c, name in enumerate(names):
        if name in masks and name != FALLBACK_CLASS:
            take = masks[name] & ~assigned
            out[take] = c
            assigned |= take
    return out
