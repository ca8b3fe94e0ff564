"""SE-Diff's summary step: a query and its retrieved neighbours -> one concise report.

SE-Diff (Wang et al., ICLR 2026, arXiv:2511.09895, experience retrieval) asks an LLM to distil the
retrieved profiles and the condition into "a concise, physiologically sound report". Neither the
LLM nor its prompt is published, so both summarisers here are the port's design:
`KeywordSummariser` (deterministic, offline, the default) and `LLMSummariser` (an
OpenAI-style chat model, post-checked by the same rules). Both keep the query's own statements
first and never add a statement that contradicts its rhythm, axis or heart rate.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from typing import Protocol, Sequence, runtime_checkable

from diffusets_jax.data_pipelines.mimic_hosp import CODE_VIEWS
from diffusets_jax.errors import DataError
from diffusets_jax.sediff.retrieval import Retrieval
from diffusets_jax.sediff.similarity import Query, normalise_statement, statements_of


@runtime_checkable
class Summariser(Protocol):
    """Distils a query and its retrieved neighbours into one report (statements joined by `'|'`).

    Implementations should keep the query's own statements first and unchanged (they are the
    condition asked for), and must return at least one statement.
    """

    name: str

    def summarise(self, query: Query, retrieval: Retrieval) -> str: ...


#: Statements that describe a dominant rhythm: at most one per report (the query's wins).
_RHYTHM = re.compile(
    r"sinus (rhythm|brady|tachy|arrhythmi)|atrial (fibrillation|flutter)|\bflutter\b|"
    r"fibrillation|supraventricular tachy|ventricular tachy|junctional|atrial rhythm|"
    r"ectopic rhythm|idioventricular"
)
#: Overall verdicts of the query's own ECG ("normal ECG", "borderline ECG"): never taken from others.
_VERDICT = re.compile(r"\b(normal|abnormal|borderline|otherwise normal)\s+ecg\b|^otherwise no definite pathology$")
_AXIS = re.compile(r"\baxis\b")
#: Further groups of mutually exclusive statements: one bundle-branch block (complete or
#: incomplete, left or right), one fascicular block (anterior or posterior).
_GROUPS = (
    ("bundle_branch_block", re.compile(r"bundle branch block|\b[lr]bbb\b")),
    ("fascicular_block", re.compile(r"(anterior|posterior) fascicular block|hemiblock")),
)
#: Pairs of statement patterns that contradict each other (low QRS voltage vs hypertrophy by voltage).
_CONFLICTS = (
    (
        re.compile(r"low (qrs )?voltage"),
        re.compile(r"ventricular hypertrophy|septal hypertrophy|high (qrs )?voltage|voltage criteria"),
    ),
)


def statement_group(statement: str) -> str | None:
    """`'verdict'`, `'rhythm'`, `'axis'`, `'bundle_branch_block'`, `'fascicular_block'` or
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
    """True if `statement` and one of `others` form a pair of `_CONFLICTS`."""
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


def _finalise(
    query_statements: Sequence[str], candidates: Sequence[str], max_statements: int, heart_rate: float = math.nan
) -> str:
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

    Candidates are the neighbours' statements found in at least `min_support` of the neighbours
    (fraction; default 0.4, i.e. 2 of 5) and over-represented there: in at least
    `min(1, min_lift x prevalence)` of them, where prevalence is the statement's fraction in the
    whole index (default lift 1.5; so a statement half the index holds needs 4 of 5 neighbours, and
    one that every neighbour states always qualifies). They are ranked by summed similarity score of the neighbours that
    state them, then by count, then by first appearance (neighbour rank, statement position).
    A candidate is skipped if the query (or an earlier candidate) already has its group (one
    rhythm, one axis, one bundle-branch block, one fascicular block; overall verdicts such as
    "normal ECG" are never copied from other patients)
    or if it contradicts the query's heart rate (bradycardia needs < 60 bpm, tachycardia > 100)
    or a chosen statement (low QRS voltage against ventricular hypertrophy).
    The report holds at most `max_statements` statements, unless the query alone has more (its
    statements are never dropped). The first spelling seen of a statement is kept.
    """

    name = "keyword"

    def __init__(self, max_statements: int = 6, min_support: float = 0.4, min_lift: float = 1.5):
        if max_statements < 1 or not 0 < min_support <= 1 or min_lift < 0:
            raise ValueError(
                f"need max_statements >= 1, 0 < min_support <= 1 and min_lift >= 0, got "
                f"{max_statements}, {min_support}, {min_lift}"
            )
        self.max_statements = max_statements
        self.min_support = min_support
        self.min_lift = min_lift

    def __repr__(self) -> str:
        return (
            f"KeywordSummariser(max_statements={self.max_statements}, min_support={self.min_support}, "
            f"min_lift={self.min_lift})"
        )

    def candidates(self, retrieval: Retrieval) -> list[str]:
        """The neighbours' statements with enough support, best first."""
        stats: dict[str, list] = {}  # key -> [score sum, count, first appearance, spelling, last neighbour]
        for i, (report, score) in enumerate(zip(retrieval.reports, retrieval.scores)):
            for s in statements_of(report):
                key = normalise_statement(s)
                entry = stats.setdefault(key, [0.0, 0, len(stats), s, -1])
                if entry[4] != i:  # count each neighbour once
                    entry[0] += float(score)
                    entry[1] += 1
                    entry[4] = i
        n = len(retrieval)
        kept = [
            v
            for key, v in stats.items()
            if v[1] >= self.min_support * n - 1e-9
            and v[1] >= min(1.0, self.min_lift * retrieval.prevalence.get(key, 0.0)) * n - 1e-9
        ]
        return [v[3] for v in sorted(kept, key=lambda v: (-round(v[0], 9), -v[1], v[2]))]

    def summarise(self, query: Query, retrieval: Retrieval) -> str:
        """`'|'`-joined report; ValueError if neither the query nor the neighbours give a statement."""
        report = _finalise(query.statements, self.candidates(retrieval), max(self.max_statements, 1), query.heart_rate)
        if not report:
            raise ValueError("nothing to summarise: the query has no statement and no neighbour statement qualifies")
        return report


@runtime_checkable
class LLMClient(Protocol):
    """A chat model: one system and one user message in, the reply text out."""

    def complete(self, system: str, user: str) -> str: ...


class OpenAIChatClient:
    """OpenAI-style chat completions (`POST /chat/completions`), temperature 0.

    Needs the optional `openai` package and an API key (`api_key` or `OPENAI_API_KEY`);
    `base_url` points it at any OpenAI-compatible server. The key is handed to the client only,
    never printed or shown in `repr`. Not used by the tests (no network there).

    Raises:
        RuntimeError: no API key. ImportError: `openai` not installed.
    """

    def __init__(
        self,
        model: str = "gpt-4o-mini",
        api_key: str | None = None,
        base_url: str | None = None,
        temperature: float = 0.0,
        timeout: float = 60.0,
    ):
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
            model=self.model,
            temperature=self.temperature,
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
    """Summary by a chat model (SE-Diff's LLM step), post-checked like `KeywordSummariser`.

    The reply is split on `'|'` or new lines (bullets and numbering stripped); the query's
    statements are put first, duplicates and contradicted brady-/tachycardia dropped, and the
    result capped at `max_statements`. If the client fails or the reply holds nothing usable,
    `fallback` (default `KeywordSummariser`) is used and a warning is issued, and
    `summarise_with_method` reports which method wrote each report (`augment_dataset` records it
    per record and counts it in info.json); `strict=True` raises DataError instead. Identical
    prompts are answered from an in-memory cache.
    """

    name = "llm"

    def __init__(
        self, client: LLMClient, max_statements: int = 6, fallback: Summariser | None = None, strict: bool = False
    ):
        self.client, self.strict = client, strict
        self.max_statements = max_statements
        self.fallback = fallback if fallback is not None else KeywordSummariser(max_statements)
        self._cache: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"LLMSummariser(client={self.client!r}, max_statements={self.max_statements})"

    def prompt(self, query: Query, retrieval: Retrieval) -> tuple[str, str]:
        """(system, user) messages for `query` and its neighbours."""

        def person(age, sex, hr):
            parts = [
                f"age {age:.0f} years" if math.isfinite(age) else "age unknown",
                {"M": "male", "F": "female"}.get(sex, "sex unknown"),
                f"heart rate {hr:.0f} bpm" if math.isfinite(hr) else "heart rate unknown",
            ]
            return ", ".join(parts)

        def codes(c):
            return "".join(f"\n  {v}: {', '.join(sorted(c[v])[:30])}" for v in CODE_VIEWS if c.get(v))

        lines = [
            f"Patient: {person(query.age, query.sex, query.heart_rate)}.",
            f"Patient's statements: {' | '.join(query.statements) or '(none)'}{codes(query.codes)}",
            "",
            f"Similar patients ({len(retrieval)}, most similar first):",
        ]
        for i in range(len(retrieval)):
            lines.append(
                f"{i + 1}. similarity {retrieval.scores[i]:.2f}; "
                f"{person(float(retrieval.age[i]), str(retrieval.sex[i]), float(retrieval.heart_rate[i]))}; "
                f"report: {' | '.join(statements_of(retrieval.reports[i]))}{codes(retrieval.codes[i])}"
            )
        return LLM_SYSTEM_PROMPT.format(max_statements=self.max_statements), "\n".join(lines)

    @staticmethod
    def parse(reply: str) -> list[str]:
        """Statements of a model reply: split on `'|'`/new lines, bullets, numbers, quotes stripped."""
        reply = re.sub(r"```\w*", "", reply)
        parts = re.split(r"[|\n]", reply)
        cleaned = [re.sub(r"^\s*(?:[-*\u2022]|\d+[.)])\s*", "", p).strip().strip("\"'").strip() for p in parts]
        return [p for p in cleaned if p]

    def summarise(self, query: Query, retrieval: Retrieval) -> str:
        return self.summarise_with_method(query, retrieval)[0]

    def summarise_with_method(self, query: Query, retrieval: Retrieval) -> tuple[str, str]:
        """`(report, method)`: `method` is `'llm'`, or the fallback's name (`'keyword'`) when the
        client failed or its reply held no statement (warned). With `strict`, those raise instead.

        Raises:
            DataError: `strict` and the client failed or replied nothing usable (naming why).
        """
        system, user = self.prompt(query, retrieval)
        if user not in self._cache:
            try:
                self._cache[user] = self.client.complete(system, user)
            except Exception as err:  # network, quota, ...: the deterministic summary still works
                return self._fall_back(query, retrieval, f"LLM summariser failed ({type(err).__name__}: {err})")
        parsed = self.parse(self._cache[user])
        if not parsed:
            return self._fall_back(query, retrieval, "LLM reply held no statement")
        return _finalise(query.statements, parsed, self.max_statements, query.heart_rate), self.name

    def _fall_back(self, query: Query, retrieval: Retrieval, reason: str) -> tuple[str, str]:
        if self.strict:
            raise DataError(f"{reason}; not falling back (strict=True)")
        warnings.warn(f"{reason}; using {self.fallback!r}", stacklevel=3)
        return self.fallback.summarise(query, retrieval), method_name(self.fallback)


def method_name(summariser) -> str:
    """The name a summariser records its reports under (`.name`, else its class name)."""
    return str(getattr(summariser, "name", type(summariser).__name__))


def summarise_with_method(summariser, query: Query, retrieval: Retrieval) -> tuple[str, str]:
    """`(report, method)` of any summariser: the method it actually used (`LLMSummariser` reports
    its fallback's name for a record it could not summarise), else its own name."""
    if hasattr(summariser, "summarise_with_method"):
        return summariser.summarise_with_method(query, retrieval)
    return summariser.summarise(query, retrieval), method_name(summariser)


def get_summariser(
    name: str = "keyword",
    max_statements: int = 6,
    min_support: float = 0.4,
    min_lift: float = 1.5,
    llm_model: str = "gpt-4o-mini",
    llm_base_url: str | None = None,
) -> Summariser:
    """`'keyword'` (default, offline) or `'llm'` (`OpenAIChatClient`; needs `OPENAI_API_KEY`)."""
    if name == "keyword":
        return KeywordSummariser(max_statements, min_support, min_lift)
    if name == "llm":
        client = OpenAIChatClient(llm_model, base_url=llm_base_url)
        return LLMSummariser(client, max_statements, KeywordSummariser(max_statements, min_support, min_lift))
    raise ValueError(f"unknown summariser {name!r}; choose 'keyword' or 'llm'")


#: Summariser names accepted by `get_summariser()` (and `augment-dataset --summariser`).
SUMMARISERS = ("keyword", "llm")
