"""Latent dataset: the VAE posterior of every ECG of a TFDS split, cached as TFRecord shards.

The official code trains the diffusion model on cached VAE latents (built by official
`vae/vae_encoding.py`, read by `utils/train.py`); this is that cache. A directory holds
`latents-<split>.tfrecord-SSSSS-of-NNNNN` shards of
`tf.train.Example` records:

    mean, log_variance  float lists of the (128, 4) posterior, row-major
    text_embedding      float list (D,)
    sex                 float, 1.0 male / 0.0 female
    age, heart_rate     float, years and bpm
    record_id, patient_id   bytes

and `latents_info.json`: `count`, `shapes` (per record), `shards` (`file`, `count`),
`source` (dataset directory, split, builder config), `embedder`, `embed_dim`, `created`.
Read it with `diffusets_jax.data_pipelines.input_pipeline.TFRecordSource.from_latents()`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from diffusets_jax.constants import LATENT_CHANNELS, LATENT_LENGTH

from .input_pipeline import LATENT_INFO, cpu_tensorflow

#: `encode_fn(signals (B, 1024, 12) float32 mV) -> (mean, log_variance)`, each (B, 128, 4).
EncodeFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
#: Default number of records per latent shard file.
EXAMPLES_PER_SHARD = 16384


def write_latents(
    encode_fn: EncodeFn,
    name: str,
    split: str,
    out_dir,
    *,
    data_dir=None,
    batch_size: int = 256,
    num_shards: int | None = None,
) -> dict:
    """Encode every record of a TFDS split and write the latent shards and info to `out_dir`.

    Args:
        encode_fn: the trained VAE encoder (e.g. a jitted function); always called with
            `batch_size` rows (the last batch is zero-padded), so it compiles once.
        name, data_dir: the TFDS dataset, as `diffusets_jax.data_pipelines.tfds.load_builder()` takes them.
        split: `'train'`, `'validation'` or `'test'`.
        out_dir: created if needed; existing shards of the same split are overwritten.
        batch_size: rows per `encode_fn` call.
        num_shards: shard files (default `ceil(count / EXAMPLES_PER_SHARD)`; use at least the
            number of training processes).

    Returns:
        The info dictionary also written to `out_dir/latents_info.json`.

    Raises:
        FileNotFoundError: dataset not built. ValueError: unknown split, or `encode_fn` returning
        a wrong shape or NaN/inf (naming the records).
    """
    from diffusets_jax.data_pipelines.tfds import load_builder

    tf = cpu_tensorflow()
    builder = load_builder(name, data_dir)
    if split not in builder.info.splits:
        raise ValueError(f"dataset {builder.data_dir} has no split {split!r}; splits: {', '.join(builder.info.splits)}")
    count = builder.info.splits[split].num_examples
    num_shards = num_shards or max(1, math.ceil(count / EXAMPLES_PER_SHARD))
    bounds = np.linspace(0, count, num_shards + 1).round().astype(int)  # contiguous, nearly equal shards
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / LATENT_INFO).unlink(missing_ok=True)  # written last: its presence marks a complete set
    names = [f"latents-{split}.tfrecord-{i:05d}-of-{num_shards:05d}" for i in range(num_shards)]
    embed_dim = builder.info.features["text_embedding"].shape[0]

    keys = ("signal", "text_embedding", "sex", "age", "heart_rate", "record_id", "patient_id")
    examples = (
        builder.as_dataset(split=split, shuffle_files=False)
        .map(lambda example: {key: example[key] for key in keys})  # fixed-size fields only
        .batch(batch_size)
        .as_numpy_iterator()
    )
    shard, written, writer = 0, 0, tf.io.TFRecordWriter(str(out_dir / names[0]))
    for batch in examples:
        mean, log_variance = _encode(encode_fn, batch["signal"], batch_size, batch["record_id"])
        for row in range(len(mean)):
            while written == bounds[shard + 1]:
                writer.close()
                shard += 1
                writer = tf.io.TFRecordWriter(str(out_dir / names[shard]))
            writer.write(_example(tf, mean[row], log_variance[row], batch, row))
            written += 1
    writer.close()

    info = {
        "count": count,
        "shapes": {
            "mean": [LATENT_LENGTH, LATENT_CHANNELS],
            "log_variance": [LATENT_LENGTH, LATENT_CHANNELS],
            "text_embedding": [embed_dim],
            "sex": [],
            "age": [],
            "heart_rate": [],
        },
        "shards": [{"file": n, "count": int(bounds[i + 1] - bounds[i])} for i, n in enumerate(names)],
        "source": {
            "dataset": str(builder.data_dir),
            "split": split,
            "config": builder.builder_config.name if builder.builder_config else None,
        },
        "embedder": (builder.info.metadata or {}).get("embedder"),
        "embed_dim": embed_dim,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    (out_dir / LATENT_INFO).write_text(json.dumps(info, indent=2))
    return info


def _encode(
    encode_fn: EncodeFn, signals: np.ndarray, batch_size: int, record_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`encode_fn` on `signals` zero-padded to `batch_size` rows, checked and cut back."""
    rows = len(signals)
    padded = np.zeros((batch_size, *signals.shape[1:]), np.float32)
    padded[:rows] = signals
    outputs = [np.asarray(x, np.float32)[:rows] for x in encode_fn(padded)]
    for field, value in zip(("mean", "log_variance"), outputs):
        if value.shape != (rows, LATENT_LENGTH, LATENT_CHANNELS):
            raise ValueError(
                f"encode_fn returned {field} of shape {value.shape} for {rows} records; "
                f"expected ({rows}, {LATENT_LENGTH}, {LATENT_CHANNELS})"
            )
        bad = ~np.isfinite(value).reshape(rows, -1).all(axis=1)
        if bad.any():
            raise ValueError(
                f"encode_fn returned non-finite {field} for record(s) "
                f"{', '.join(i.decode() for i in record_ids[bad][:5])}"
            )
    return outputs[0], outputs[1]


def _example(tf, mean: np.ndarray, log_variance: np.ndarray, batch: dict, row: int) -> bytes:
    """One serialized latent `tf.train.Example`."""

    def floats(x):
        return tf.train.Feature(float_list=tf.train.FloatList(value=np.ravel(x)))

    def text(x):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[x]))

    feature = {
        "mean": floats(mean),
        "log_variance": floats(log_variance),
        "text_embedding": floats(batch["text_embedding"][row]),
        "sex": floats(float(batch["sex"][row])),  # ClassLabel ('F', 'M') index = official code
        "age": floats(batch["age"][row]),
        "heart_rate": floats(batch["heart_rate"][row]),
        "record_id": text(batch["record_id"][row]),
        "patient_id": text(batch["patient_id"][row]),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
