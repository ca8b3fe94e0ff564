"""SE-Diff experience retrieval (diffusets_jax.sediff.retrieval) on the prepared PTB-XL/LUDB fixtures
and on small synthetic sets (weights, missing views, MIMIC-IV hospital codes, summarisers)."""

import json

import numpy as np
import pytest

from diffusets_jax.data_pipelines.processed import load_processed
from diffusets_jax.data_pipelines import mimic_hosp
from diffusets_jax import cli
from diffusets_jax.sediff import retrieval as rag
from diffusets_jax.sediff import summarisers
from diffusets_jax.sediff.augment import augment_dataset, augment_report
from diffusets_jax.sediff.retrieval import ExperienceIndex, retrieve
from diffusets_jax.sediff.similarity import VIEWS, Query, parse_weights
from diffusets_jax.errors import DataError
from diffusets_jax.sediff.summarisers import KeywordSummariser, LLMSummariser
from diffusets_jax.text import build_prompt


def _twin_dir(processed_dirs, tmp_path):
    """A processed set holding every fixture record again ("twin<row>"): same statements and text
    embedding, other demographics (age + 15 years, sex flipped, heart rate x 1.2)."""
    data = load_processed(processed_dirs)
    out = tmp_path / "twins"
    out.mkdir()
    np.savez(
        out / "dataset.npz",
        signals=data.signals,
        text_embeddings=data.text_embeddings,
        age=data.age + 15,
        sex=np.where(data.sex == "M", "F", "M"),
        heart_rate=data.heart_rate * 1.2,
        fold=data.fold,
        reports=data.reports,
        prompts=data.prompts,
        record_ids=np.array([f"twin{i}" for i in range(len(data))]),
        patient_ids=np.array([f"twin{i}" for i in range(len(data))]),
    )
    (out / "info.json").write_text(json.dumps({"source": "twins", "root": "", "embedder": data.embedder}))
    return out, data


def _query_of(data, i, exclude=()):
    return Query.from_report(
        data.reports[i],
        data.age[i],
        data.sex[i],
        data.heart_rate[i],
        text_embedding=data.text_embeddings[i],
        exclude=exclude,
    )


def test_retrieval_ranks_same_statements_first(processed_dirs, tmp_path):
    twins, data = _twin_dir(processed_dirs, tmp_path)
    index = ExperienceIndex.from_processed(list(processed_dirs) + [twins])
    n_first = len(load_processed(processed_dirs[0]))
    for i in np.flatnonzero(np.isin(data.fold, rag.DEFAULT_TRAIN_FOLDS)):
        key = f"{processed_dirs[0 if i < n_first else 1].name}/{data.record_ids[i]}"
        # the query equal to a record's own conditions finds that record first, with score 1
        result = retrieve(index, _query_of(data, i), k=3)
        assert result.keys[0] == key and result.scores[0] == pytest.approx(1.0, abs=1e-5)
        # without it, the record with the same statements (its twin) beats all others
        result = retrieve(index, _query_of(data, i, exclude=[key]), k=len(index))
        assert result.keys[0] == f"twins/twin{i}", (key, result.keys[:3])
        assert result.view_scores["statements"][0] == 1.0
        assert np.all(np.diff(result.scores) <= 0)


def test_shared_statements_rank_above_unrelated(processed_dirs):
    """LUDB 34 (sinus rhythm, III degree AV block, ventricular pacing): by statements alone, the
    records sharing a statement (LUDB 8: pacing; PTB-XL 1: sinus rhythm, case-insensitive) come next."""
    data = load_processed(processed_dirs)
    index = ExperienceIndex.from_processed(processed_dirs)
    i = int(np.flatnonzero(data.record_ids == "34")[0])
    result = retrieve(
        index,
        _query_of(data, i, exclude=["ludb/34"]),
        k=len(index),
        weights={v: 0.0 for v in VIEWS} | {"statements": 1.0},
    )
    assert result.weights == {"statements": 1.0}
    assert result.keys[:2] == ["ptbxl/1", "ludb/8"]  # Jaccard 1/5 and 1/8
    np.testing.assert_allclose(result.scores[:2], [1 / 5, 1 / 8], rtol=1e-6)
    assert np.all(result.scores[2:] == 0)


def test_held_out_folds_never_retrieved(processed_dirs, tmp_path):
    twins, data = _twin_dir(processed_dirs, tmp_path)
    index = ExperienceIndex.from_processed(list(processed_dirs) + [twins])
    held_out = ~np.isin(data.fold, rag.DEFAULT_TRAIN_FOLDS)
    assert held_out.sum() == 1  # LUDB 35 (fold 9) and its twin
    assert len(index) == 2 * (len(data) - 1) and set(index.fold) <= set(rag.DEFAULT_TRAIN_FOLDS)
    i = int(np.flatnonzero(held_out)[0])
    result = retrieve(index, _query_of(data, i), k=100)
    assert len(result) == len(index)
    assert not {"ludb/35", f"twins/twin{i}"} & set(result.keys)
    everything = ExperienceIndex.from_processed(list(processed_dirs) + [twins], folds=None)
    assert retrieve(everything, _query_of(data, i), k=1).keys == ["ludb/35"]  # the check above can fail


class _Recorder:
    """A summariser that records what it was given and returns the query's report."""

    name = "recorder"

    def __init__(self):
        self.calls = []

    def summarise(self, query, retrieval):
        self.calls.append((query, retrieval))
        return "|".join(query.statements)


class _HashEmbedder:
    """Deterministic 8-d embedder (no model), for tests that do not look at the text."""

    name, dim = "hash8", 8

    def embed(self, texts):
        return (
            np.stack([np.random.default_rng(abs(hash(t)) % 2**32).normal(size=8).astype(np.float32) for t in texts])
            if texts
            else np.zeros((0, 8), np.float32)
        )


def test_query_record_excluded_when_augmenting_itself(processed_dirs, tmp_path):
    recorder = _Recorder()
    out = augment_dataset(
        processed_dirs, tmp_path / "out", k=20, summariser=recorder, embedder=_HashEmbedder(), progress=False
    )
    data = load_processed(processed_dirs)
    assert len(recorder.calls) == len(data)
    for (query, result), record_id, fold in zip(recorder.calls, data.record_ids, data.fold):
        (own_key,) = query.exclude
        assert own_key.endswith(f"/{record_id}")
        assert own_key not in result.keys
        # 8 records in the training folds: a training record gets the 7 others, LUDB 35 (fold 9) all 8
        assert len(result) == (7 if fold in rag.DEFAULT_TRAIN_FOLDS else 8)
    rows = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [r["report"] for r in rows] == [r["original_report"] for r in rows] == data.reports.tolist()


def _index(reports, age=None, sex=None, heart_rate=None, embeddings=None, codes=None):
    return ExperienceIndex(
        reports, embeddings, age, sex, heart_rate, [f"r{i}" for i in range(len(reports))], codes=codes
    )


def test_weights_change_rankings():
    index = _index(
        ["Sinus rhythm|Left ventricular hypertrophy", "Atrial fibrillation"],
        age=[80, 40],
        sex=["M", "F"],
        heart_rate=[60, 110],
    )
    query = Query.from_report("sinus rhythm|left ventricular hypertrophy", age=41, sex="F", heart_rate=108)
    default = retrieve(index, query, 2)  # statements (weight 1) beat age, sex and heart rate (0.6)
    assert default.keys == ["r0", "r1"] and default.scores[0] == pytest.approx(1 / 1.6, rel=1e-3)
    by_statements = retrieve(index, query, 2, {"age": 0, "sex": 0, "heart_rate": 0})
    by_age = retrieve(index, query, 2, {"statements": 0})
    assert by_statements.keys == ["r0", "r1"] and by_statements.scores[0] == 1.0
    assert by_age.keys == ["r1", "r0"]
    assert set(by_age.weights) == {"age", "sex", "heart_rate"}
    assert sum(by_age.weights.values()) == pytest.approx(1.0)
    # more weight on age flips the default order
    assert retrieve(index, query, 2, {"age": 5}).keys == ["r1", "r0"]


def test_missing_views_get_zero_weight():
    index = _index(["Sinus rhythm", "Sinus rhythm|PVC", "Atrial fibrillation"], age=[50, np.nan, 70])
    assert index.views == ("statements", "age")
    query = Query.from_report(
        "Sinus rhythm", age=52, sex="M", heart_rate=70, text_embedding=np.ones(4), codes={"diagnoses": ["ICD10:I48"]}
    )
    assert index.effective_weights(query) == pytest.approx({"statements": 1 / 1.2, "age": 0.2 / 1.2})
    result = retrieve(index, query, 3)
    assert result.keys == ["r0", "r1", "r2"]
    assert result.view_scores["age"][1] == 0  # unknown age of the record: no similarity
    no_age = Query.from_report("Sinus rhythm", age=None)
    assert index.effective_weights(no_age) == {"statements": 1.0}
    with pytest.raises(ValueError, match="no view"):
        index.effective_weights(no_age, {"statements": 0})
    with pytest.raises(ValueError, match="unknown retrieval view"):
        index.effective_weights(no_age, {"ecg": 1})
    with pytest.raises(ValueError, match="unknown retrieval view"):
        parse_weights("text=1,foo=2")
    assert parse_weights("text=2, age=0") == {"text": 2.0, "age": 0.0}
    # the text view needs an embedding on both sides: index with embeddings, query without
    with_text = _index(["a", "b"], embeddings=np.eye(2))
    assert "text" not in with_text.effective_weights(Query.from_report("a"))
    assert retrieve(with_text, Query.from_report("zzz", text_embedding=[0, 1]), 1).keys == ["r1"]


def _neighbours(reports):
    """A Retrieval of `reports` with scores 0.9, 0.8, ..., 0.5 (no demographics, no codes)."""
    n = len(reports)
    return rag.Retrieval(
        rows=np.arange(n),
        keys=[f"r{i}" for i in range(n)],
        record_ids=[f"r{i}" for i in range(n)],
        reports=list(reports),
        scores=np.linspace(0.9, 0.5, n).astype(np.float32),
        view_scores={},
        weights={"statements": 1.0},
        age=np.full(n, np.nan),
        sex=np.full(n, ""),
        heart_rate=np.full(n, np.nan),
        codes=[{} for _ in range(n)],
    )


NEIGHBOURS = [
    "Sinus bradycardia|Left ventricular hypertrophy|normal ECG|Left axis deviation",
    "Sinus bradycardia|left ventricular hypertrophy.|ST depression",
    "sinus bradycardia|Left ventricular hypertrophy|ST depression|Low QRS voltage",
    "Sinus bradycardia|Premature ventricular contractions|Low QRS voltage",
    "Atrial fibrillation|Premature ventricular contractions|Rare statement",
]


def test_keyword_summariser_deterministic_query_first_capped():
    query = Query.from_report("Sinus rhythm|Right axis deviation|Incomplete right bundle branch block", heart_rate=72)
    neighbours = _neighbours(NEIGHBOURS)
    summariser = KeywordSummariser(max_statements=6, min_support=0.4)
    report = summariser.summarise(query, neighbours)
    # query first; then LVH (3 neighbours), ST depression and PVCs (2 each, higher score first);
    # skipped: rhythms (the query has one), "normal ECG" (a verdict), the axis (the query has one),
    # low QRS voltage (contradicts LVH), the rare statement (1 of 5)
    assert report == (
        "Sinus rhythm|Right axis deviation|Incomplete right bundle branch block|"
        "Left ventricular hypertrophy|ST depression|Premature ventricular contractions"
    )
    assert summariser.summarise(query, _neighbours(NEIGHBOURS)) == report  # deterministic
    assert KeywordSummariser(max_statements=4).summarise(query, neighbours).split("|") == report.split("|")[:4]
    # a statement common in the whole index (prevalence 0.7) needs min(1, 1.5 x 0.7) = all 5 neighbours
    neighbours.prevalence = {"left ventricular hypertrophy": 0.7, "st depression": 0.2}
    assert "Left ventricular hypertrophy" not in summariser.summarise(query, neighbours)
    assert "Left ventricular hypertrophy" in KeywordSummariser(min_lift=0).summarise(query, neighbours)
    neighbours.prevalence = {}
    long_query = Query.from_report("|".join(f"finding {i}" for i in range(8)))
    assert KeywordSummariser(max_statements=4).summarise(long_query, neighbours) == "|".join(long_query.statements)
    # no rhythm in the query: the neighbours' majority rhythm is added, unless the heart rate contradicts it
    assert (
        KeywordSummariser()
        .summarise(Query.from_report("ST depression", heart_rate=50), neighbours)
        .startswith("ST depression|Sinus bradycardia|Left ventricular hypertrophy")
    )
    fast = KeywordSummariser().summarise(Query.from_report("ST depression", heart_rate=95), neighbours)
    assert "Sinus bradycardia" not in fast and fast.startswith("ST depression|Left ventricular hypertrophy")
    # an empty query is filled from the neighbours; min_support 1 keeps only what all five state
    assert KeywordSummariser().summarise(Query.from_report(""), neighbours).startswith("Sinus bradycardia|")
    with pytest.raises(ValueError, match="nothing to summarise"):
        KeywordSummariser(min_support=1.0).summarise(Query.from_report(""), neighbours)


class _FakeLLM:
    def __init__(self, reply):
        self.reply, self.messages = reply, []

    def complete(self, system, user):
        self.messages.append((system, user))
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


def test_llm_summariser_with_fake_client(monkeypatch):
    query = Query.from_report("Sinus rhythm|Right axis deviation", age=60, sex="F", heart_rate=72)
    neighbours = _neighbours(NEIGHBOURS)
    client = _FakeLLM("1. Sinus rhythm\n2. Left ventricular hypertrophy | sinus bradycardia\n- ST depression\n- Extra")
    report = LLMSummariser(client, max_statements=4).summarise(query, neighbours)
    assert report == "Sinus rhythm|Right axis deviation|Left ventricular hypertrophy|ST depression"
    system, user = client.messages[0]
    assert "at most 4 statements" in system
    assert "age 60 years, female, heart rate 72 bpm" in user and NEIGHBOURS[0].replace("|", " | ") in user
    cached = LLMSummariser(_FakeLLM("Sinus rhythm|ST depression"), max_statements=4)
    assert cached.summarise(query, neighbours) == cached.summarise(query, neighbours)
    assert len(cached.client.messages) == 1
    with pytest.warns(UserWarning, match="LLM summariser failed"):
        fallback = LLMSummariser(_FakeLLM(RuntimeError("offline"))).summarise(query, neighbours)
    assert fallback == KeywordSummariser().summarise(query, neighbours)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(RuntimeError, match="API key"):
        summarisers.get_summariser("llm")
    assert isinstance(summarisers.get_summariser("keyword"), summarisers.Summariser)


def test_hospital_code_views(mimic_root, tmp_path):
    """Synthetic MIMIC-IV hosp tables (the fixture has none) linked to the MIMIC-IV-ECG fixture."""
    hosp = tmp_path / "hosp"
    hosp.mkdir()
    (hosp / "admissions.csv").write_text(
        "subject_id,hadm_id,admittime,dischtime\n"
        "90000001,1,2180-01-10 01:00:00,2180-01-15 00:00:00\n"  # contains ECG 1 (08:10)
        "90000001,9,2179-01-01 00:00:00,2179-01-05 00:00:00\n"  # an earlier stay: not linked
        "90000002,2,2180-02-11 20:00:00,2180-02-20 00:00:00\n"  # starts 11 h after ECG 2: linked (< 24 h)
        "90000003,3,2180-03-14 10:12:00,2180-03-20 00:00:00\n"  # 48 h after ECG 3: not linked
    )
    (hosp / "diagnoses_icd.csv").write_text(
        "subject_id,hadm_id,seq_num,icd_code,icd_version\n"
        "90000001,1,1,I480,10\n90000001,1,2,I10,10\n90000002,2,1,I4891,10\n90000002,2,2,I10,10\n90000001,9,1,Z00,10\n"
    )
    (hosp / "prescriptions.csv").write_text(
        "subject_id,hadm_id,drug\n90000001,1,Metoprolol\n90000002,2,metoprolol \n90000002,2,Heparin\n"
    )
    codes = mimic_hosp.link_hosp_codes(mimic_root, hosp)
    assert codes == {
        "50000001": {"diagnoses": ["ICD10:I10", "ICD10:I480"], "medications": ["metoprolol"]},
        "50000002": {"diagnoses": ["ICD10:I10", "ICD10:I4891"], "medications": ["heparin", "metoprolol"]},
    }
    three_chars = mimic_hosp.link_hosp_codes(mimic_root, hosp, icd_chars=3)
    assert three_chars["50000002"]["diagnoses"] == ["ICD10:I10", "ICD10:I48"]
    mimic_hosp.write_hosp_codes(tmp_path, codes)
    assert mimic_hosp.read_hosp_codes(tmp_path)["50000002"]["medications"] == frozenset({"heparin", "metoprolol"})

    # code views: present in the index -> used; the paper's diagnosis Jaccard decides the ranking
    index = _index(
        ["Atrial fibrillation", "Atrial fibrillation", "Atrial fibrillation"],
        codes=[{"diagnoses": ["I48"]}, {"diagnoses": ["E11"], "medications": ["insulin"]}, {}],
    )
    assert index.views == ("statements", "diagnoses", "medications")
    query = Query.from_report("Atrial fibrillation", codes={"diagnoses": ["I48"], "medications": ["insulin"]})
    assert retrieve(index, query, 3).keys == ["r0", "r1", "r2"]  # diagnoses weigh 1, medications 0.5
    assert retrieve(index, query, 3, {"medications": 2}).keys == ["r1", "r0", "r2"]
    no_codes = Query.from_report("Atrial fibrillation")
    assert index.effective_weights(no_codes) == {"statements": 1.0}


def test_augment_dataset_writes_reembedded_set(processed_dirs, tmp_path):
    from diffusets_jax.text import get_embedder

    cli.main(
        [
            "augment-dataset",
            "--dataset",
            str(processed_dirs[0]),
            "--dataset",
            str(processed_dirs[1]),
            "--out",
            str(tmp_path / "rag"),
            "--k",
            "3",
            "--weights",
            "text=0.5",
            "--save-index",
            str(tmp_path / "index.npz"),
        ]
    )
    out = load_processed(tmp_path / "rag")
    src = load_processed(processed_dirs)
    assert len(out) == len(src) and out.embedder == "minilm"
    np.testing.assert_array_equal(out.signals, src.signals)
    np.testing.assert_array_equal(out.record_ids, src.record_ids)
    info = json.loads((tmp_path / "rag" / "info.json").read_text())["augmentation"]
    assert info["k"] == 3 and info["weights"]["text"] == 0.5 and info["index_records"] == 8
    changed = np.flatnonzero(out.reports != src.reports)
    assert info["reports_changed"] == len(changed) > 0
    for i in range(len(out)):
        before, after = src.reports[i].split("|"), out.reports[i].split("|")
        assert after[: len(before)] == before and len(after) <= max(6, len(before))
        assert out.prompts[i] == build_prompt(out.reports[i])
    embedded = get_embedder("minilm").embed([build_prompt(out.reports[i]) for i in changed])
    np.testing.assert_allclose(out.text_embeddings[changed], embedded, atol=1e-5)
    assert not np.allclose(out.text_embeddings[changed], src.text_embeddings[changed], atol=1e-3)
    same = np.flatnonzero(out.reports == src.reports)
    np.testing.assert_allclose(out.text_embeddings[same], src.text_embeddings[same], atol=1e-6)

    # generation time: the saved index augments a free condition the same way as the set
    index = ExperienceIndex.load(tmp_path / "index.npz")
    assert len(index) == 8 and index.views[:2] == ("text", "statements")
    i = int(changed[0])
    record_key = f"{'ptbxl' if i < 4 else 'ludb'}/{src.record_ids[i]}"
    result = index.retrieve(
        index.query(
            src.reports[i],
            src.age[i],
            src.sex[i],
            src.heart_rate[i],
            embedder=get_embedder("minilm"),
            exclude=[record_key],
        ),
        3,
        {"text": 0.5},
    )
    summary = KeywordSummariser().summarise(
        Query.from_report(src.reports[i], src.age[i], src.sex[i], src.heart_rate[i]), result
    )
    assert summary == out.reports[i]
    report = augment_report(index, "Sinus tachycardia", 40, "M", 120, k=3)
    assert report.split("|")[0] == "Sinus tachycardia"


class _FlakyLLM:
    """A chat client whose every other call fails (an API that times out now and then)."""

    def __init__(self):
        self.calls = self.failures = 0

    def complete(self, system, user):
        self.calls += 1
        if self.calls % 2:
            self.failures += 1
            raise TimeoutError("the API did not answer")
        return "Sinus rhythm|ST depression"


def test_llm_fallback_is_recorded_per_record_and_counted_in_info(processed_dirs, tmp_path):
    llm = LLMSummariser(_FlakyLLM(), max_statements=4)
    with pytest.warns(UserWarning, match="TimeoutError: the API did not answer"):
        out = augment_dataset(
            processed_dirs, tmp_path / "out", k=3, summariser=llm, embedder=_HashEmbedder(), progress=False
        )
    rows = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    methods = [r["summariser"] for r in rows]
    used = json.loads((out / "info.json").read_text())["augmentation"]["summariser_used"]
    assert set(methods) == {"llm", "keyword"} and used == {m: methods.count(m) for m in set(methods)}
    assert used["keyword"] == llm.client.failures  # one fallback per failed call, and only those
    load_processed(out)  # its manifest matches


def test_llm_summariser_strict_fails_loudly():
    query = Query.from_report("Sinus rhythm", age=60, sex="F", heart_rate=72)
    with pytest.raises(DataError, match="LLM summariser failed .*offline.*strict"):
        LLMSummariser(_FakeLLM(RuntimeError("offline")), strict=True).summarise(query, _neighbours(NEIGHBOURS))
