"""Tests of diffusets_jax.text: official prompt text, embedders, cache. CPU, no network."""

import re
import subprocess
import sys
import types

import numpy as np
import pytest

from diffusets_jax.text import (
    CachedEmbedder,
    EmbeddingCache,
    MiniLMEmbedder,
    OpenAIEmbedder,
    build_prompt,
    embed_reports,
    get_embedder,
    split_report,
    truncation_warning,
)

FIRST = "Most importantly, the 1st diagnosis is "
MORE = "As a supplementary condition, the "

# ------------------------------------------------------------------------------ prompts


def test_prompt_two_statements_official_example():
    expected = (
        "Most importantly, the 1st diagnosis is {Sinus rhythm}."
        "As a supplementary condition, the 2nd diagnosis is {Borderline ECG}."
    )
    assert build_prompt("Sinus rhythm|Borderline ECG") == expected
    assert build_prompt(["Sinus rhythm", "Borderline ECG"]) == expected
    assert build_prompt("Sinus rhythm|Borderline ECG|") == expected  # trailing '|' adds nothing


def test_prompt_single_and_four_statements():
    assert build_prompt("Sinus rhythm") == "Most importantly, the 1st diagnosis is {Sinus rhythm}."
    assert build_prompt("Sinus rhythm|Possible right atrial abnormality|Borderline ECG|LVH") == (
        "Most importantly, the 1st diagnosis is {Sinus rhythm}."
        "As a supplementary condition, the 2nd diagnosis is {Possible right atrial abnormality}."
        "As a supplementary condition, the 3rd diagnosis is {Borderline ECG}."
        "As a supplementary condition, the 4th diagnosis is {LVH}."
    )


def test_prompt_ordinals_up_to_13th():
    prompt = build_prompt("|".join(f"s{i}" for i in range(13)))
    ordinals = re.findall(r"the (\w+) diagnosis is \{(s\d+)\}\.", prompt)
    assert ordinals == [
        ("1st", "s0"),
        ("2nd", "s1"),
        ("3rd", "s2"),
        ("4th", "s3"),
        ("5th", "s4"),
        ("6th", "s5"),
        ("7th", "s6"),
        ("8th", "s7"),
        ("9th", "s8"),
        ("10th", "s9"),
        ("11th", "s10"),
        ("12th", "s11"),
        ("13th", "s12"),
    ]
    assert prompt.endswith(f"{MORE}12th diagnosis is {{s11}}.{MORE}13th diagnosis is {{s12}}.")
    assert " As" not in prompt  # no separator between sentences


def test_prompt_keeps_whitespace_and_middle_empty_statements_like_official():
    assert build_prompt(" a |b") == f"{FIRST}{{ a }}.{MORE}2nd diagnosis is {{b}}."
    assert build_prompt("a||b") == (f"{FIRST}{{a}}.{MORE}2nd diagnosis is {{}}.{MORE}3rd diagnosis is {{b}}.")
    assert build_prompt("|a") == f"{FIRST}{{}}.{MORE}2nd diagnosis is {{a}}."


@pytest.mark.parametrize("report", ["", "|", "  ", " | ", [], ["", ""]])
def test_prompt_empty_report_raises(report):
    with pytest.raises(ValueError, match="report is empty"):
        build_prompt(report)


def test_split_report():
    assert split_report(" Sinus rhythm | |Borderline ECG|") == ["Sinus rhythm", "Borderline ECG"]
    with pytest.raises(ValueError, match="report"):
        split_report(" | ")


def test_import_does_not_load_torch():
    code = (
        "import sys, diffusets_jax.text; "
        "bad = {'torch', 'sentence_transformers', 'openai'} & set(sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_get_embedder_unknown_name_lists_names():
    with pytest.raises(ValueError, match="minilm.*openai-ada-002"):
        get_embedder("ada")
    assert isinstance(get_embedder("minilm"), MiniLMEmbedder)


# ------------------------------------------------------------------------------ MiniLM


@pytest.fixture(scope="module")
def minilm():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        embedder = MiniLMEmbedder()
        embedder.embed(["warm up"])  # loads the model while offline
        yield embedder


def test_minilm_shape_norm_determinism(minilm):
    texts = ["Sinus rhythm. Normal ECG.", "Atrial fibrillation.", "Sinus rhythm. Normal ECG."]
    a = minilm.embed(texts)
    assert a.shape == (3, 384) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a, minilm.embed(texts))
    np.testing.assert_array_equal(a[0], a[2])
    assert minilm.embed([]).shape == (0, 384)


def test_minilm_is_semantically_sensible(minilm):
    normal, normal2, afib = minilm.embed(
        [
            "Sinus rhythm. Normal ECG.",
            "Normal sinus rhythm, normal ECG.",
            "Atrial fibrillation with rapid ventricular response.",
        ]
    )
    assert normal @ normal2 > normal @ afib


def test_embed_reports_uses_official_prompt(minilm):
    out = embed_reports(["Sinus rhythm|Borderline ECG", ["Sinus rhythm", "Borderline ECG"]], minilm)
    direct = minilm.embed([build_prompt("Sinus rhythm|Borderline ECG")])
    assert out.shape == (2, 384)
    np.testing.assert_allclose(out, np.repeat(direct, 2, axis=0), atol=1e-6)


# ------------------------------------------------------------------------------ cache


class CountingEmbedder:
    """Fake deterministic embedder recording every text it embeds."""

    name = "counting"
    dim = 8

    def __init__(self):
        self.seen = []

    def embed(self, texts):
        self.seen.extend(texts)
        rows = [np.random.default_rng(sum(map(ord, t))).normal(size=self.dim) for t in texts]
        return np.asarray(rows, np.float32).reshape(len(texts), self.dim)


def test_cache_embeds_each_prompt_once_and_round_trips(tmp_path):
    embedder = CountingEmbedder()
    cache = EmbeddingCache.open(tmp_path / "emb.npz", embedder)
    first = embed_reports(["a|b", "c", "a|b"], embedder, cache)
    assert first.shape == (3, 8)
    assert embedder.seen == [build_prompt("a|b"), build_prompt("c")]  # deduplicated
    np.testing.assert_array_equal(first[0], first[2])

    path = cache.save(tmp_path / "emb.npz")
    loaded = EmbeddingCache.open(path, embedder)
    assert len(loaded) == 2
    again = embed_reports(["c", "a|b", "d"], embedder, loaded)
    assert embedder.seen[2:] == [build_prompt("d")]  # cache hits do not call the embedder
    np.testing.assert_array_equal(again[:2], first[[1, 0]])


def test_cache_refuses_other_embedder(tmp_path):
    path = EmbeddingCache("counting", 8).save(tmp_path / "emb.npz")
    with pytest.raises(ValueError, match="'counting'.*'minilm'"):
        EmbeddingCache.open(path, MiniLMEmbedder())
    with pytest.raises(ValueError, match="separate cache"):
        EmbeddingCache.load(path).embed_prompts(["x"], MiniLMEmbedder())


def test_cache_rejects_wrong_embedder_output_shape():
    embedder = CountingEmbedder()
    cache = EmbeddingCache("counting", 8)
    embedder.embed = lambda texts: np.zeros((len(texts), 3))
    with pytest.raises(ValueError, match="shape"):
        cache.embed_prompts(["x"], embedder)


# ------------------------------------------------------------------------------ OpenAI

SECRET = "sk-test-not-a-real-key-123"


def test_openai_missing_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(RuntimeError, match="OPENAI_API_KEY"):
        OpenAIEmbedder()


def test_openai_missing_package(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setitem(sys.modules, "openai", None)  # makes `import openai` fail
    with pytest.raises(ImportError, match=re.escape("pip install diffusets-jax[openai]")) as err:
        OpenAIEmbedder()
    assert SECRET not in str(err.value)


@pytest.fixture
def fake_openai(monkeypatch):
    """Stand-in `openai` module: embeddings.create returns shuffled items, records calls."""
    calls = []

    class Embeddings:
        def create(self, model, input):
            calls.append((model, list(input)))
            items = [types.SimpleNamespace(index=i, embedding=[float(len(t))] * 1536) for i, t in enumerate(input)]
            return types.SimpleNamespace(data=items[::-1])

    class OpenAI:
        def __init__(self, api_key):
            self.api_key = api_key
            self.embeddings = Embeddings()

    monkeypatch.setitem(sys.modules, "openai", types.SimpleNamespace(OpenAI=OpenAI))
    return calls


def test_openai_batches_and_hides_key(monkeypatch, fake_openai):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    embedder = OpenAIEmbedder(batch_size=2)
    assert SECRET not in repr(embedder) and SECRET not in str(embedder)
    texts = ["a", "bb", "ccc", "dddd", "eeeee"]
    out = embedder.embed(texts)
    assert out.shape == (5, 1536) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 0], [1, 2, 3, 4, 5])  # order kept
    assert [len(batch) for _, batch in fake_openai] == [2, 2, 1]
    assert {model for model, _ in fake_openai} == {"text-embedding-ada-002"}
    assert get_embedder("openai-ada-002").dim == 1536


# ------------------------------------------------------------------------------ cache across processes


def test_cached_embedder_serves_a_new_process_without_loading_the_model(minilm, tmp_path):
    texts = [build_prompt("Sinus tachycardia|Left ventricular hypertrophy"), build_prompt("Atrial fibrillation")]
    first = CachedEmbedder(MiniLMEmbedder(), tmp_path)
    vectors = first.embed(texts)
    np.testing.assert_array_equal(vectors, minilm.embed(texts))
    assert first.count_tokens(texts[:1]) == minilm.count_tokens(texts[:1])
    assert (tmp_path / "minilm.npz").is_file()

    model = MiniLMEmbedder()  # a fresh model object, as in a new process
    second = CachedEmbedder(model, tmp_path)
    np.testing.assert_array_equal(second.embed(texts[::-1]), vectors[::-1])
    assert second.count_tokens(texts[:1]) == minilm.count_tokens(texts[:1])
    assert model._model is None  # never loaded
    second.embed(["a text not seen before"])
    assert model._model is not None


def test_cached_embedder_gives_the_same_truncation_warning(minilm, tmp_path):
    statements = [f"statement number {i} about an unusual finding in the precordial leads" for i in range(30)]
    expected = truncation_warning(statements, minilm)
    assert expected and "ignores the rest" in expected
    CachedEmbedder(MiniLMEmbedder(), tmp_path).embed([build_prompt(statements)])
    assert truncation_warning(statements, CachedEmbedder(minilm, tmp_path)) == expected
    model = MiniLMEmbedder()
    assert truncation_warning(statements, CachedEmbedder(model, tmp_path)) == expected  # now from the file
    assert model._model is None


def test_cached_embedder_writes_a_new_prompt_once_with_its_token_count(minilm, tmp_path, monkeypatch):
    statements = ["Sinus bradycardia", "First degree AV block"]
    writes, save = [], EmbeddingCache.save

    def counted_save(self, path, **extra):
        writes.append(path)
        return save(self, path, **extra)

    monkeypatch.setattr(EmbeddingCache, "save", counted_save)
    cached = CachedEmbedder(minilm, tmp_path)
    cached.embed([build_prompt(statements)])  # as generation does: embed, then the truncation check
    assert truncation_warning(statements, cached) is None
    assert len(writes) == 1
    model = MiniLMEmbedder()  # a new process: the warning's token counts come from the file
    assert truncation_warning(statements, CachedEmbedder(model, tmp_path)) is None
    assert model._model is None and len(writes) == 1


def test_cached_embedder_keeps_the_newest_entries_and_rebuilds_a_corrupt_file(minilm, tmp_path):
    cached = CachedEmbedder(minilm, tmp_path, max_entries=2)
    cached.embed(["one", "two"])
    cached.embed(["three"])
    assert set(EmbeddingCache.load(tmp_path / "minilm.npz")._vectors) == {"two", "three"}

    (tmp_path / "minilm.npz").write_bytes(b"not an npz file")
    with pytest.warns(UserWarning, match="minilm.npz is unreadable"):
        rebuilt = CachedEmbedder(minilm, tmp_path)
    assert (tmp_path / "minilm.npz.unreadable").read_bytes() == b"not an npz file"
    np.testing.assert_array_equal(rebuilt.embed(["one"]), minilm.embed(["one"]))
    assert set(EmbeddingCache.load(tmp_path / "minilm.npz")._vectors) == {"one"}
