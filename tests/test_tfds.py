"""TFDS builders (diffusets_jax.data_pipelines.tfds) on the real fixture records in tests/data.

Every built example is compared field by field with what `load_records` returns for the same
record, and its text embedding with the embedder run here on the prompt built here.
"""

from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from diffusets_jax.data_pipelines.prepare import load_records
from diffusets_jax.data_pipelines.tfds import build_dataset, load_builder, make_builder, split_of_fold
from diffusets_jax.text import build_prompt, get_embedder

#: Patient-wise split of each fold, written out independently of the code under test.
EXPECTED_SPLIT = {**{fold: "train" for fold in range(1, 9)}, 9: "validation", 10: "test"}
SOURCES = ("ptbxl", "ludb", "mimic")


@pytest.fixture(scope="module")
def roots(ptbxl_root, ludb_root, mimic_root):
    return {"ptbxl": ptbxl_root, "ludb": ludb_root, "mimic": mimic_root}


@pytest.fixture(scope="module")
def built(tmp_path_factory, roots):
    """`{source: DatasetInfo}`: each fixture set built with MiniLM; PTB-XL (train only) in 2 worker
    processes and 2 shards (every split gets `num_shards` files, so the 1-record splits get 1)."""
    data_dir = tmp_path_factory.mktemp("tfds")
    return {
        source: build_dataset(
            source,
            roots[source],
            data_dir,
            num_workers=2 if source == "ptbxl" else 1,
            num_shards=2 if source == "ptbxl" else None,
        )
        for source in SOURCES
    }


@pytest.fixture(scope="module")
def examples(built):
    """`{source: {record_id: (split, example)}}` read back with TFDS from the built directories."""
    out = {}
    for source, info in built.items():
        builder = tfds.builder_from_directory(info.data_dir)
        out[source] = {}
        for split in builder.info.splits:
            for example in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
                record_id = example["record_id"].decode()
                assert record_id not in out[source], f"{source} record {record_id} written twice"
                out[source][record_id] = (split, example)
    return out


@pytest.mark.parametrize("source", SOURCES)
def test_examples_equal_load_records(source, roots, built, examples):
    records, _ = load_records(source, roots[source], progress=False)
    assert sorted(examples[source]) == sorted(r.record_id for r in records)
    embedder = get_embedder("minilm")
    sex_names = built[source].features["sex"].names
    for record in records:
        split, example = examples[source][record.record_id]
        np.testing.assert_array_equal(example["signal"], record.signal)
        assert example["signal"].shape == (1024, 12) and example["signal"].dtype == np.float32
        assert example["age"] == np.float32(record.age)
        assert example["heart_rate"] == np.float32(record.heart_rate)
        assert sex_names[example["sex"]] == record.sex
        assert [s.decode() for s in example["statements"]] == record.statements
        assert example["report"].decode() == "|".join(record.statements)
        assert example["prompt"].decode() == build_prompt(record.statements)
        assert example["patient_id"].decode() == record.patient_id
        assert example["fold"] == record.fold
        assert split == EXPECTED_SPLIT[record.fold]
        expected = embedder.embed([build_prompt(record.statements)])[0]
        np.testing.assert_allclose(example["text_embedding"], expected, atol=2e-5)


def test_sex_label_is_official_condition_code(built):
    # stored integer = official code: 1 male, 0 female
    assert built["ptbxl"].features["sex"].str2int("M") == 1 and built["ptbxl"].features["sex"].str2int("F") == 0


@pytest.mark.parametrize("source", SOURCES)
def test_splits_are_patient_disjoint(source, examples):
    patients = {}
    for split, example in examples[source].values():
        patients.setdefault(example["patient_id"].decode(), set()).add(split)
    assert all(len(splits) == 1 for splits in patients.values()), patients


def test_split_of_fold():
    assert {fold: split_of_fold(fold) for fold in range(1, 11)} == EXPECTED_SPLIT
    with pytest.raises(ValueError, match="fold"):
        split_of_fold(11)


@pytest.mark.parametrize("source", SOURCES)
def test_skipped_records_are_listed(source, roots, built):
    _, skipped = load_records(source, roots[source], progress=False)
    assert [tuple(s) for s in built[source].metadata["skipped"]] == skipped


def test_fixture_skips_and_empty_splits(built):
    # tests/data: PTB-XL 108 has no age; MIMIC 50000004 has no patients.csv row and is the only fold-10 study
    assert [s[0] for s in built["ptbxl"].metadata["skipped"]] == ["108"]
    assert [s[0] for s in built["mimic"].metadata["skipped"]] == ["50000004"]
    assert "test" in built["mimic"].metadata["empty_splits"] and "test" not in built["mimic"].splits
    assert set(built["ludb"].splits) == {"train", "validation"}


def test_shards_and_reload(built):
    info = built["ptbxl"]
    assert info.splits["train"].num_shards == 2 and info.splits["train"].num_examples == 4
    assert load_builder("ptbxl", Path(info.data_dir).parents[2]).data_dir == info.data_dir
    assert load_builder(info.data_dir).info.splits["train"].shard_lengths == info.splits["train"].shard_lengths


def test_parallel_load_records_equals_serial(ptbxl_root):
    serial, serial_skipped = load_records("ptbxl", ptbxl_root, progress=False)
    parallel, parallel_skipped = load_records("ptbxl", ptbxl_root, progress=False, num_workers=2)
    assert parallel_skipped == serial_skipped
    assert [r.record_id for r in parallel] == [r.record_id for r in serial]
    for a, b in zip(parallel, serial):
        np.testing.assert_array_equal(a.signal, b.signal)
        assert (a.heart_rate, a.age, a.sex, a.statements) == (b.heart_rate, b.age, b.sex, b.statements)


def test_configs_and_bad_arguments(tmp_path):
    assert make_builder("ptbxl", tmp_path, sampling_rate=100).builder_config.reader_options == {"sampling_rate": 100}
    assert make_builder("ludb", tmp_path).builder_config.embed_dim == 384
    with pytest.raises(ValueError, match="unknown dataset"):
        make_builder("ptb", tmp_path)
    with pytest.raises(ValueError, match="ptbxl only"):
        make_builder("ludb", tmp_path, sampling_rate=100)
    with pytest.raises(ValueError, match="no ludb config"):
        make_builder("ludb", tmp_path, embedder="word2vec")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        build_dataset("ludb", tmp_path / "missing", tmp_path)
    with pytest.raises(FileNotFoundError, match="no TFDS dataset"):
        load_builder("ludb", tmp_path)


def test_custom_embedder_object(tmp_path, ludb_root):
    class Hashing:
        """Tiny deterministic embedder: 8 byte-count features."""

        name, dim = "hashing8", 8

        def embed(self, texts):
            return np.array([[sum(text.encode()[i::8]) for i in range(8)] for text in texts], np.float32)

    info = build_dataset("ludb", ludb_root, tmp_path, embedder=Hashing(), record_ids=["1", "8"])
    assert info.metadata["embedder"] == "hashing8" and info.features["text_embedding"].shape == (8,)
    for example in tfds.as_numpy(tfds.builder_from_directory(info.data_dir).as_dataset(split="train")):
        np.testing.assert_array_equal(example["text_embedding"], Hashing().embed([example["prompt"].decode()])[0])
