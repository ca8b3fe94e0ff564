"""Streaming and Apache Beam TFDS builds (issue 17) against the first release's in-memory build.

For the same input, the streaming build (local processes), the Beam build with 1 and with 2
DirectRunner workers, and the Beam build that also writes the shards with TFDS's Beam writer must
give the same examples as `build_dataset(..., in_memory=True)` (every record loaded before
writing, the builder of the first release): every field of every example is compared, matched by
record id (the order of examples in the shards is not compared), and the splits, the skipped
records, their counts per reason and the skipped-records file. Inputs: the real fixture records in
tests/data and a 300-study MIMIC-layout corpus made from them (tests/data/make_mimic_corpus.py).

The Beam tests need `pip install -e ".[beam]"` and skip without it.
"""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from diffusets_jax.data_pipelines.tfds import SKIPPED_FILE, build_dataset
from diffusets_jax.data_pipelines.tfds.stream import reason_kind

sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
from make_mimic_corpus import make_corpus

HAS_BEAM = importlib.util.find_spec("apache_beam") is not None
needs_beam = pytest.mark.skipif(not HAS_BEAM, reason='needs Apache Beam: pip install -e ".[beam]"')
SOURCES = ("ptbxl", "ludb", "mimic", "cinc")
FIELDS = (
    "signal",
    "age",
    "sex",
    "heart_rate",
    "statements",
    "report",
    "prompt",
    "text_embedding",
    "record_id",
    "patient_id",
    "fold",
)


@pytest.fixture(scope="module")
def roots(ptbxl_root, ludb_root, mimic_root, cinc_root):
    return {"ptbxl": ptbxl_root, "ludb": ludb_root, "mimic": mimic_root, "cinc": cinc_root}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """300 MIMIC-layout studies: 289 good, 6 without a patient, 3 without a rhythm, 2 unreadable."""
    return make_corpus(tmp_path_factory.mktemp("corpus"), 300)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, roots):
    """`{source: DatasetInfo}` of the in-memory build of each fixture set."""
    data_dir = tmp_path_factory.mktemp("reference")
    return {source: build_dataset(source, root, data_dir, in_memory=True) for source, root in roots.items()}


def read_build(info) -> dict:
    """`{record_id: (split, example)}` of a built dataset, read back with TFDS."""
    builder = tfds.builder_from_directory(info.data_dir)
    out = {}
    for split in builder.info.splits:
        for example in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
            record_id = example["record_id"].decode()
            assert record_id not in out, f"record {record_id} written twice"
            out[record_id] = (split, example)
    return out


def skipped_file(info) -> list[dict]:
    with open(Path(info.data_dir) / SKIPPED_FILE) as file:
        return [json.loads(line) for line in file]


def assert_same_build(info, expected_info) -> None:
    """Same splits, skipped records and counts, and every field of every example equal."""
    assert {name: split.num_examples for name, split in info.splits.items()} == {
        name: split.num_examples for name, split in expected_info.splits.items()
    }
    for key in ("skipped", "skipped_counts", "empty_splits", "embedder", "embed_dim"):
        assert info.metadata[key] == expected_info.metadata[key], key
    assert skipped_file(info) == skipped_file(expected_info)
    got, expected = read_build(info), read_build(expected_info)
    assert sorted(got) == sorted(expected)
    for record_id, (split, example) in expected.items():
        assert got[record_id][0] == split, record_id
        for field in FIELDS:
            a, b = got[record_id][1][field], example[field]
            if field == "text_embedding":  # same prompt, embedded in another batch (padding)
                np.testing.assert_allclose(a, b, atol=1e-6, err_msg=f"{record_id} {field}")
            else:
                np.testing.assert_array_equal(a, b, err_msg=f"{record_id} {field}")


@pytest.mark.parametrize("source", SOURCES)
def test_streaming_build_equals_in_memory_build(source, roots, reference, tmp_path):
    info = build_dataset(source, roots[source], tmp_path, num_workers=2 if source == "ptbxl" else 1)
    assert_same_build(info, reference[source])
    assert not (Path(info.data_dir) / "spool").exists()  # temporary files removed


def test_skipped_records_file_and_counts(reference, roots, tmp_path):
    info = build_dataset("mimic", roots["mimic"], tmp_path)
    reason = f"subject_id 90000004 has no row in {roots['mimic'] / 'patients.csv'}"
    assert info.metadata["skipped"] == [["50000004", reason]]
    assert info.metadata["skipped_counts"] == {"subject_id N has no row in <path>": 1}
    assert skipped_file(info) == [
        {"record_id": "50000004", "reason": reason, "kind": "subject_id N has no row in <path>"}
    ]
    assert "test" in info.metadata["empty_splits"] and "test" not in info.splits


def test_reason_kind():
    assert (
        reason_kind("cannot read WFDB record /d/files/p1/s2/2: FileNotFoundError: [Errno 2] x")
        == "cannot read WFDB record <path>"
    )
    assert (
        reason_kind("no lead gave >= 2 R peaks at a plausible rate (20.0, 300.0) bpm")
        == "no lead gave >= N R peaks at a plausible rate (N, N) bpm"
    )
    assert reason_kind("flat leads V3, V4 (peak-to-peak < 0.01 mV)") == "flat leads V3, V4 (peak-to-peak < N mV)"


@pytest.mark.slow
def test_corpus_streaming_build_small_blocks(corpus, tmp_path, monkeypatch):
    """300 studies streamed in blocks of 32, with a 1 MiB writer buffer (spills to disk), equal the
    in-memory build; every kind of bad record is counted and none stops the build."""
    from diffusets_jax.data_pipelines.tfds import stream

    expected = build_dataset("mimic", corpus, tmp_path / "memory", in_memory=True)
    monkeypatch.setattr(stream, "BLOCK_SIZE", 32)
    info = build_dataset("mimic", corpus, tmp_path / "stream", num_workers=2, shuffle_buffer_mib=1)
    assert_same_build(info, expected)
    # counts written out independently from make_mimic_corpus's rules (k % 50 == 3, k % 101 == 50, 100)
    assert info.metadata["skipped_counts"] == {
        "subject_id N has no row in <path>": 6,
        "no lead gave >= N R peaks at a plausible rate (N, N) bpm": 3,
        "cannot read WFDB record <path>": 2,
    }
    assert sum(split.num_examples for split in info.splits.values()) == 289
    assert set(info.splits) == {"train", "validation", "test"}


def test_bad_beam_arguments(roots, tmp_path):
    if HAS_BEAM:
        with pytest.raises(ValueError, match="beam_workers must be >= 1"):
            build_dataset("ludb", roots["ludb"], tmp_path, beam_runner="DirectRunner", beam_workers=0)
    else:
        with pytest.raises(ImportError, match=r'pip install -e "\.\[beam\]"'):
            build_dataset("ludb", roots["ludb"], tmp_path, beam_runner="DirectRunner")


@needs_beam
@pytest.mark.parametrize("source", SOURCES)
def test_beam_build_one_worker_equals_in_memory_build(source, roots, reference, tmp_path):
    info = build_dataset(source, roots[source], tmp_path, beam_runner="DirectRunner", beam_workers=1)
    assert_same_build(info, reference[source])


@needs_beam
@pytest.mark.slow
@pytest.mark.parametrize("beam_write", [False, True], ids=["local-write", "beam-write"])
def test_beam_build_two_workers_equals_in_memory_build(beam_write, roots, reference, tmp_path):
    info = build_dataset(
        "mimic", roots["mimic"], tmp_path, beam_runner="DirectRunner", beam_workers=2, beam_write=beam_write
    )
    assert_same_build(info, reference["mimic"])


@needs_beam
@pytest.mark.slow
def test_corpus_beam_two_workers_equals_in_memory_build(corpus, tmp_path):
    expected = build_dataset("mimic", corpus, tmp_path / "memory", in_memory=True)
    info = build_dataset("mimic", corpus, tmp_path / "beam", beam_runner="DirectRunner", beam_workers=2)
    assert_same_build(info, expected)
