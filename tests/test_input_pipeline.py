"""Input pipeline (diffusets_jax.data_pipelines.input_pipeline) and latent cache (diffusets_jax.data_pipelines.latents).

Synthetic latent shards are written here with tf.train.Example directly (the documented format),
so the reader is checked against data it did not produce; the writer is checked by a round trip
through a TFDS build of the fixture PTB-XL records.
"""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from diffusets_jax.data_pipelines.input_pipeline import (
    LATENT_INFO,
    ArraySource,
    TFRecordSource,
    batch_indices,
    local_batch_size,
    to_global,
)
from diffusets_jax.data_pipelines.latents import write_latents
from diffusets_jax.data_pipelines.tfds import build_dataset

EMBED_DIM = 6
NUM_RECORDS = 37
SHARD_SIZES = (10, 9, 11, 7)


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def synthetic_latents(n=NUM_RECORDS):
    """Per-record fields whose values encode the record index, so rows can be traced."""
    rng = np.random.default_rng(0)
    return {
        "mean": rng.normal(size=(n, 128, 4)).astype(np.float32),
        "log_variance": rng.normal(size=(n, 128, 4)).astype(np.float32),
        "text_embedding": rng.normal(size=(n, EMBED_DIM)).astype(np.float32),
        "sex": (np.arange(n) % 2).astype(np.float32),
        "age": np.arange(n, dtype=np.float32) + 20,
        "heart_rate": np.arange(n, dtype=np.float32) + 50,
    }


def write_latent_shards(directory: Path, arrays: dict, sizes=SHARD_SIZES, shapes=None) -> list[list[str]]:
    """Latent shards in the documented format; returns the record ids of each shard."""
    directory.mkdir(parents=True, exist_ok=True)
    shards, ids, start = [], [], 0
    for i, size in enumerate(sizes):
        name = f"latents-train.tfrecord-{i:05d}-of-{len(sizes):05d}"
        with tf.io.TFRecordWriter(str(directory / name)) as writer:
            for row in range(start, start + size):
                feature = {
                    key: tf.train.Feature(float_list=tf.train.FloatList(value=np.ravel(value[row])))
                    for key, value in arrays.items()
                }
                for key in ("record_id", "patient_id"):
                    feature[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"r{row}".encode()]))
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
        shards.append({"file": name, "count": size})
        ids.append([f"r{row}" for row in range(start, start + size)])
        start += size
    shapes = shapes or {
        "mean": [128, 4],
        "log_variance": [128, 4],
        "text_embedding": [EMBED_DIM],
        "sex": [],
        "age": [],
        "heart_rate": [],
    }
    (directory / LATENT_INFO).write_text(json.dumps({"count": start, "shapes": shapes, "shards": shards}))
    return ids


@pytest.fixture(scope="module")
def latent_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("latents")
    arrays = synthetic_latents()
    shard_ids = write_latent_shards(directory, arrays)
    return directory, arrays, shard_ids


@pytest.fixture(scope="module")
def ptbxl_tfds(tmp_path_factory, ptbxl_root):
    data_dir = tmp_path_factory.mktemp("tfds")
    return data_dir, build_dataset("ptbxl", ptbxl_root, data_dir, num_shards=2)


def row_index(batch):
    """Record index of each row of a synthetic latent batch (age = index + 20)."""
    return (batch["age"] - 20).astype(int)


# ------------------------------------------------------------------------------------------ ArraySource


def array_source(**kwargs):
    arrays = synthetic_latents()
    return ArraySource(arrays, record_ids=[f"r{i}" for i in range(NUM_RECORDS)], **kwargs), arrays


def test_array_source_shapes_and_values():
    source, arrays = array_source(process_count=1, process_index=0)
    batch = next(source.batches(8, 0, seed=1, shuffle=True))
    assert {k: v.shape for k, v in batch.items()} == {
        "mean": (8, 128, 4),
        "log_variance": (8, 128, 4),
        "text_embedding": (8, EMBED_DIM),
        "sex": (8,),
        "age": (8,),
        "heart_rate": (8,),
    }
    assert all(v.dtype == np.float32 for v in batch.values())
    rows = row_index(batch)
    for key, value in arrays.items():
        np.testing.assert_array_equal(batch[key], value[rows])


@pytest.mark.parametrize("shuffle", [True, False])
def test_array_source_sees_every_record_once_per_epoch(shuffle):
    source, _ = array_source(process_count=1, process_index=0)
    steps = source.steps_per_epoch(8)
    assert steps == NUM_RECORDS // 8
    epochs = [
        np.concatenate([row_index(b) for b in take(source.batches(8, e * steps, seed=3, shuffle=shuffle), steps)])
        for e in range(2)
    ]
    for rows in epochs:
        assert len(set(rows)) == steps * 8  # no repeat; only the last partial batch is dropped
    assert (not np.array_equal(epochs[0], epochs[1])) == shuffle  # reshuffled each epoch


def test_array_source_resume_and_seed():
    source, _ = array_source(process_count=1, process_index=0)
    uninterrupted = take(source.batches(8, 0, seed=5, shuffle=True), 11)
    for start in (3, 4, 9):
        assert_batches_equal(take(source.batches(8, start, seed=5, shuffle=True), 11 - start), uninterrupted[start:])
    other_seed = next(source.batches(8, 0, seed=6, shuffle=True))
    assert not np.array_equal(other_seed["age"], uninterrupted[0]["age"])


def test_array_source_process_sharding():
    single, _ = array_source(process_count=1, process_index=0)
    parts = [array_source(process_count=2, process_index=p)[0] for p in range(2)]
    for step in (0, 5):
        whole = row_index(next(single.batches(8, step, seed=2, shuffle=True)))
        halves = [row_index(next(part.batches(8, step, seed=2, shuffle=True))) for part in parts]
        assert all(len(h) == 4 for h in halves) and not set(halves[0]) & set(halves[1])
        np.testing.assert_array_equal(np.concatenate(halves), whole)
    with pytest.raises(ValueError, match="multiple of the process count"):
        next(parts[0].batches(7, 0, seed=0, shuffle=True))


def test_batch_indices_rule():
    # epoch e is default_rng([seed, e]).permutation, cut into batches
    order = np.random.default_rng([4, 1]).permutation(10)
    np.testing.assert_array_equal(batch_indices(10, 3, 4, seed=4, shuffle=True), order[3:6])
    np.testing.assert_array_equal(batch_indices(10, 3, 2, seed=4, shuffle=False), [6, 7, 8])


def test_array_source_bad_input():
    arrays = synthetic_latents(5)
    arrays["mean"][3, 7, 1] = np.nan
    with pytest.raises(ValueError, match=r"'mean' of record\(s\) d"):
        ArraySource(arrays, record_ids=list("abcde"))
    signals = {
        "signal": np.zeros((5, 1024, 8), np.float32),
        "text_embedding": np.zeros((5, 3)),
        "sex": np.zeros(5),
        "age": np.zeros(5),
        "heart_rate": np.zeros(5),
    }
    with pytest.raises(ValueError, match=r"'signal'.*\(1024, 8\).*expected \(1024, 12\)"):
        ArraySource(signals)
    signals["signal"] = np.zeros((4, 1024, 12), np.float32)
    with pytest.raises(ValueError, match="different numbers of records"):
        ArraySource(signals)
    del signals["age"]
    with pytest.raises(ValueError, match="no field 'age'"):
        ArraySource(signals)


def test_array_source_from_processed(processed_dirs):
    source = ArraySource.from_processed(processed_dirs, process_count=1, process_index=0, with_ids=True)
    assert source.num_examples == 9  # 4 PTB-XL + 5 LUDB fixture records
    batch = next(source.batches(4, 0, seed=0, shuffle=True))
    assert batch["signal"].shape == (4, 1024, 12) and batch["text_embedding"].shape == (4, 384)
    assert set(np.unique(batch["sex"])) <= {0.0, 1.0}


# --------------------------------------------------------------------------------------- TFRecordSource


def latent_source(latent_dir, **kwargs):
    directory, _, _ = latent_dir
    return TFRecordSource.from_latents(directory, **{"process_count": 1, "process_index": 0, **kwargs})


def test_latent_source_shapes_and_values(latent_dir):
    _, arrays, _ = latent_dir
    source = latent_source(latent_dir)
    assert source.num_examples == NUM_RECORDS
    batch = next(source.batches(8, 0, seed=0, shuffle=True))
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        "mean": ((8, 128, 4), np.float32),
        "log_variance": ((8, 128, 4), np.float32),
        "text_embedding": ((8, EMBED_DIM), np.float32),
        "sex": ((8,), np.float32),
        "age": ((8,), np.float32),
        "heart_rate": ((8,), np.float32),
    }
    rows = row_index(batch)
    for key, value in arrays.items():
        np.testing.assert_array_equal(batch[key], value[rows])


@pytest.mark.parametrize("shuffle", [True, False])
def test_latent_source_every_record_once_per_epoch(latent_dir, shuffle):
    source = latent_source(latent_dir)
    steps = source.steps_per_epoch(8)
    rows = np.concatenate([row_index(b) for b in take(source.batches(8, 0, seed=1, shuffle=shuffle), 2 * steps)])
    epochs = rows[: steps * 8], rows[steps * 8 :]
    for epoch in epochs:
        assert len(set(epoch)) == steps * 8
    assert (not np.array_equal(*epochs)) == shuffle


@pytest.mark.parametrize("start", [1, 4, 9])
def test_latent_source_resume_equals_uninterrupted(latent_dir, start):
    source = latent_source(latent_dir, with_ids=True)
    uninterrupted = take(source.batches(8, 0, seed=7, shuffle=True), 11)
    assert_batches_equal(take(source.batches(8, start, seed=7, shuffle=True), 11 - start), uninterrupted[start:])
    assert_batches_equal(take(source.batches(8, 0, seed=7, shuffle=True), 11), uninterrupted)  # same seed, same run


def test_latent_source_fast_mode_reads_every_record(latent_dir):
    source = latent_source(latent_dir, deterministic=False)
    steps = source.steps_per_epoch(4)
    rows = np.concatenate([row_index(b) for b in take(source.batches(4, 0, seed=0, shuffle=True), steps)])
    assert len(set(rows)) == steps * 4


def test_latent_source_process_sharding(latent_dir):
    _, _, shard_ids = latent_dir
    parts = [latent_source(latent_dir, process_count=2, process_index=p, with_ids=True) for p in range(2)]
    # process p reads shards p, p + 2: 10 + 11 and 9 + 7 records; both run 16 // 4 = 4 steps per epoch
    assert [p.steps_per_epoch(8) for p in parts] == [4, 4]
    own_ids = [set(shard_ids[0] + shard_ids[2]), set(shard_ids[1] + shard_ids[3])]
    for step in (0, 3, 6):
        halves = [next(p.batches(8, step, seed=1, shuffle=True))["record_id"].astype(str) for p in parts]
        assert [len(h) for h in halves] == [4, 4] and not set(halves[0]) & set(halves[1])
        assert set(halves[0]) <= own_ids[0] and set(halves[1]) <= own_ids[1]  # a global batch of 8 rows
    epoch = [np.concatenate([b["record_id"] for b in take(p.batches(8, 0, seed=1, shuffle=True), 4)]) for p in parts]
    assert all(len(set(e)) == 16 for e in epoch)


def test_latent_source_bad_input(tmp_path, latent_dir):
    with pytest.raises(FileNotFoundError, match="latents_info.json not found"):
        TFRecordSource.from_latents(tmp_path / "nowhere")
    arrays = synthetic_latents(4)
    write_latent_shards(tmp_path / "missing", arrays, sizes=(2, 2))
    (tmp_path / "missing" / "latents-train.tfrecord-00001-of-00002").unlink()
    with pytest.raises(FileNotFoundError, match="latents-train.tfrecord-00001-of-00002"):
        TFRecordSource.from_latents(tmp_path / "missing")
    shapes = {
        "mean": [128, 8],
        "log_variance": [128, 8],
        "text_embedding": [EMBED_DIM],
        "sex": [],
        "age": [],
        "heart_rate": [],
    }
    write_latent_shards(tmp_path / "shape", arrays, sizes=(4,), shapes=shapes)
    with pytest.raises(ValueError, match=r"'mean'.*\(128, 8\)"):
        TFRecordSource.from_latents(tmp_path / "shape")
    wrong_size = dict(arrays, mean=np.zeros((4, 128, 3), np.float32))  # info says (128, 4)
    write_latent_shards(tmp_path / "size", wrong_size, sizes=(4,))
    source = TFRecordSource.from_latents(tmp_path / "size", process_count=1, process_index=0)
    with pytest.raises(ValueError, match=r"cannot read a record of latent dataset .*size.*mean"):
        next(source.batches(4, 0, seed=0, shuffle=False))
    arrays["heart_rate"][2] = np.nan
    write_latent_shards(tmp_path / "nan", arrays, sizes=(4,))
    source = TFRecordSource.from_latents(tmp_path / "nan", process_count=1, process_index=0)
    with pytest.raises(ValueError, match=r"'heart_rate' of record\(s\) r2"):
        next(source.batches(4, 0, seed=0, shuffle=False))
    with pytest.raises(ValueError, match="fewer than the 2 processes"):
        TFRecordSource.from_latents(tmp_path / "nan", process_count=2, process_index=0)


def test_signal_source_from_tfds(ptbxl_tfds):
    data_dir, info = ptbxl_tfds
    source = TFRecordSource.from_tfds("ptbxl", "train", data_dir, process_count=1, process_index=0, with_ids=True)
    stored = {
        e["record_id"].decode(): e
        for e in tfds.as_numpy(tfds.builder_from_directory(info.data_dir).as_dataset(split="train"))
    }
    assert source.num_examples == len(stored) == 4
    uninterrupted = take(source.batches(2, 0, seed=0, shuffle=True), 5)
    for batch in uninterrupted:
        assert batch["signal"].shape == (2, 1024, 12) and batch["text_embedding"].shape == (2, 384)
        for row, record_id in enumerate(batch["record_id"].astype(str)):
            np.testing.assert_array_equal(batch["signal"][row], stored[record_id]["signal"])
            assert batch["sex"][row] == float(stored[record_id]["sex"])  # 1.0 male
            assert batch["heart_rate"][row] == stored[record_id]["heart_rate"]
    assert_batches_equal(take(source.batches(2, 3, seed=0, shuffle=True), 2), uninterrupted[3:])
    assert len(set(np.concatenate([b["record_id"] for b in uninterrupted[:2]]))) == 4
    with pytest.raises(ValueError, match="split 'test'.*does not exist"):
        TFRecordSource.from_tfds("ptbxl", "test", data_dir)
    with pytest.raises(FileNotFoundError, match="no TFDS dataset"):
        TFRecordSource.from_tfds("ludb", "train", data_dir)


def test_signal_source_rejects_wrong_lead_count(tmp_path, ptbxl_tfds):
    _, info = ptbxl_tfds
    copy = tmp_path / "ptbxl_8_leads"
    shutil.copytree(info.data_dir, copy)
    features = json.loads((copy / "features.json").read_text())
    features["featuresDict"]["features"]["signal"]["tensor"]["shape"]["dimensions"] = ["1024", "8"]
    (copy / "features.json").write_text(json.dumps(features))
    with pytest.raises(ValueError, match=r"'signal' of dataset .*ptbxl_8_leads.*\(1024, 8\).*\(1024, 12\)"):
        TFRecordSource.from_tfds(str(copy), "train")


def test_latents_round_trip(tmp_path, ptbxl_tfds):
    data_dir, info = ptbxl_tfds

    def encode(signals):  # deterministic stand-in for the VAE encoder: (B, 1024, 12) -> 2 x (B, 128, 4)
        assert signals.shape == (3, 1024, 12)  # always the full batch size (padded)
        return signals[:, ::8, :4] * 2.0, signals[:, ::8, 4:8] - 1.0

    written = write_latents(encode, "ptbxl", "train", tmp_path / "lat", data_dir=data_dir, batch_size=3, num_shards=2)
    assert written["count"] == 4 and [s["count"] for s in written["shards"]] == [2, 2]
    assert written["embedder"] == "minilm" and written["source"]["split"] == "train"
    stored = {
        e["record_id"].decode(): e
        for e in tfds.as_numpy(tfds.builder_from_directory(info.data_dir).as_dataset(split="train"))
    }
    source = TFRecordSource.from_latents(tmp_path / "lat", process_count=1, process_index=0, with_ids=True)
    seen = set()
    for batch in take(source.batches(2, 0, seed=0, shuffle=True), 2):
        for row, record_id in enumerate(batch["record_id"].astype(str)):
            example = stored[record_id]
            np.testing.assert_array_equal(batch["mean"][row], example["signal"][::8, :4] * 2.0)
            np.testing.assert_array_equal(batch["log_variance"][row], example["signal"][::8, 4:8] - 1.0)
            np.testing.assert_array_equal(batch["text_embedding"][row], example["text_embedding"])
            assert (batch["sex"][row], batch["age"][row], batch["heart_rate"][row]) == (
                float(example["sex"]),
                example["age"],
                example["heart_rate"],
            )
            seen.add(record_id)
    assert seen == set(stored)


def test_latents_with_tiny_vae(tmp_path, ptbxl_tfds):
    from conftest import tiny_config
    from flax import nnx

    from diffusets_jax.models import build_vae

    data_dir, _ = ptbxl_tfds
    vae = build_vae(tiny_config())
    graph, state = nnx.split(vae.encoder)
    encode = jax.jit(lambda x: nnx.merge(graph, state).moments(x))
    written = write_latents(encode, "ptbxl", "train", tmp_path / "vae", data_dir=data_dir, batch_size=4)
    batch = next(
        TFRecordSource.from_latents(tmp_path / "vae", process_count=1, process_index=0).batches(
            4, 0, seed=0, shuffle=False
        )
    )
    assert written["count"] == 4 and batch["mean"].shape == (4, 128, 4) and np.isfinite(batch["mean"]).all()

    def bad_encode(signals):
        return np.full((len(signals), 128, 4), np.nan, np.float32), np.zeros((len(signals), 128, 4), np.float32)

    with pytest.raises(ValueError, match="non-finite mean for record"):
        write_latents(bad_encode, "ptbxl", "train", tmp_path / "bad", data_dir=data_dir, batch_size=4)


# -------------------------------------------------------------------------------------------- to_global


def test_to_global_and_local_batch_size():
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    source, _ = array_source(with_ids=True)
    local = next(source.batches(8, 0, seed=0, shuffle=True))
    global_batch = to_global(local, mesh)
    assert "record_id" not in global_batch and global_batch["mean"].shape == (8 * jax.process_count(), 128, 4)
    np.testing.assert_array_equal(np.asarray(global_batch["age"]), local["age"])
    assert local_batch_size(8, 2) == 4
    with pytest.raises(ValueError):
        local_batch_size(8, 3)
