"""Training input: deterministic, resumable, per-process batches from memory or TFRecord shards.

Trainers see one interface, `BatchSource`: `batches(global_batch_size, start_step, seed=,
shuffle=)` yields, forever, this process's rows of each global batch as NumPy arrays:

    signal datasets  signal (b, 1024, 12) float32 mV
    latent datasets  mean, log_variance (b, 128, 4) float32 (VAE posterior, see diffusets_jax.data_pipelines.latents)
    both             text_embedding (b, D) float32, sex (b,) float32 1.0 male / 0.0 female,
                     age (b,) float32 years, heart_rate (b,) float32 bpm

with `b = global_batch_size // process_count`. The batch at step `s` depends only on
`(seed, s)` (and the process count), so a run restarted at `start_step` sees exactly the
batches an uninterrupted run would. Each epoch is a fresh seeded shuffle; its last partial batch is
dropped. `to_global()` assembles the per-process parts into one array sharded on the mesh.

* `ArraySource`: arrays in memory (the processed set of `diffusets-jax prepare`), the
  per-epoch permutation of `batch_indices()`; process `p` takes rows `p*b:(p+1)*b` of each
  global batch. Resuming is free.
* `TFRecordSource`: tf.data over TFDS shards (`diffusets_jax.data_pipelines.tfds`) or latent shards.
  Each process reads only its own shard files (`files[process_index::process_count]`), so its
  rows come from its files; every process runs the same number of steps per epoch (set by the
  process with the fewest examples). Resuming mid-epoch skips the first `offset * b` serialized
  records of that epoch before parsing: a read of at most one epoch of this process's shards.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Iterator, Mapping, Protocol, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from diffusets_jax.constants import LATENT_CHANNELS, LATENT_LENGTH, NUM_LEADS, NUM_SAMPLES

#: Condition keys every batch holds, with the shape of one row (`None`: the embedding size D).
CONDITION_SHAPES = {"text_embedding": (None,), "sex": (), "age": (), "heart_rate": ()}
SIGNAL_SHAPES = {"signal": (NUM_SAMPLES, NUM_LEADS), **CONDITION_SHAPES}
LATENT_SHAPES = {
    "mean": (LATENT_LENGTH, LATENT_CHANNELS),
    "log_variance": (LATENT_LENGTH, LATENT_CHANNELS),
    **CONDITION_SHAPES,
}
#: Optional in memory: one scaled latent sampled per record, the official latent cache.
CACHED_LATENT_SHAPE = {"latents": (LATENT_LENGTH, LATENT_CHANNELS)}
#: Name of the latent dataset description written by `diffusets_jax.data_pipelines.latents.write_latents()`.
LATENT_INFO = "latents_info.json"
#: Shuffle buffer memory of a TFRecordSource (serialized examples), in bytes.
SHUFFLE_BUFFER_BYTES = 256 * 2**20


class BatchSource(Protocol):
    """What the trainers iterate over (see the module docstring)."""

    num_examples: int

    def batches(
        self, global_batch_size: int, start_step: int, *, seed: int, shuffle: bool
    ) -> Iterator[dict[str, np.ndarray]]: ...


def local_batch_size(global_batch_size: int, process_count: int) -> int:
    """Rows per process, `global_batch_size // process_count`; ValueError unless it divides evenly."""
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"global batch size {global_batch_size} must be a positive multiple of the process count {process_count}"
        )
    return global_batch_size // process_count


def batch_indices(num_examples: int, batch_size: int, step: int, seed: int, shuffle: bool) -> np.ndarray:
    """Indices (batch_size,) of the global batch at `step`: a fresh seeded permutation per epoch.

    Epoch `e = step // (num_examples // batch_size)` is ordered by
    `default_rng([seed, e]).permutation(num_examples)` (or `arange` unshuffled) and cut into
    batches, the last partial one dropped; restarting at any step replays the same batches.
    """
    steps_per_epoch = num_examples // batch_size
    epoch, offset = divmod(step, steps_per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_examples) if shuffle else np.arange(num_examples)
    return order[offset * batch_size : (offset + 1) * batch_size]


def to_global(
    local_batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh, axis: str | None = None
) -> dict[str, jax.Array]:
    """This process's rows of a batch -> one global `jax.Array` per numeric key, sharded along the
    batch (first) dimension over `axis` of `mesh`.

    The one builder of global batches: the trainers' loop (`training.common.run_training`), their
    validation batches and the benchmarks all go through it.

    Args:
        local_batch: `{key: (b, ...)}` NumPy-castable arrays, this process's `b = global_batch_size
            / process_count` rows (what `BatchSource.batches` yields). Text keys (`record_id`)
            stay on the host and are left out.
        mesh: the device mesh (`training.common.make_mesh`).
        axis: the mesh axis the batch is split over; default the mesh's first axis.

    Returns:
        `{key: jax.Array (global_batch_size, ...)}`.

    Raises:
        ValueError: (from JAX) the global batch does not split evenly over the axis's devices.
    """
    sharding = NamedSharding(mesh, P(mesh.axis_names[0] if axis is None else axis))
    arrays = {key: np.asarray(value) for key, value in local_batch.items()}
    return {
        key: jax.make_array_from_process_local_data(sharding, value)
        for key, value in arrays.items()
        if value.dtype.kind not in "OSU"
    }


def _processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= index < count:
        raise ValueError(f"process_index {index} is not in [0, {count})")
    return index, count


def _check_finite(batch: Mapping[str, np.ndarray], record_ids: np.ndarray, where: str) -> None:
    """ValueError naming the field and record(s) of any NaN/inf value in a float field."""
    for key, value in batch.items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            rows = ~np.isfinite(value.reshape(len(value), -1)).all(axis=1)
            ids = [i.decode() if isinstance(i, bytes) else str(i) for i in record_ids[rows][:5]]
            raise ValueError(f"non-finite values in field {key!r} of record(s) {', '.join(ids)} in {where}")


def _check_shapes(shapes: Mapping[str, Sequence[int]], expected: Mapping[str, tuple], where: str) -> None:
    """ValueError naming the field whose per-row shape differs from `expected` (None = any size)."""
    for key, want in expected.items():
        if key not in shapes:
            raise ValueError(f"{where} has no field {key!r} (fields: {', '.join(sorted(shapes))})")
        got = tuple(shapes[key])
        if len(got) != len(want) or any(w is not None and g != w for g, w in zip(got, want)):
            raise ValueError(
                f"field {key!r} of {where} has shape {got} per record, expected "
                f"{tuple('D' if w is None else w for w in want)}"
            )


class ArraySource:
    """Batches from arrays in memory, by `batch_indices()`.

    Args:
        arrays: `signal` (N, 1024, 12) or `mean` and `log_variance` (N, 128, 4), plus
            `text_embedding` (N, D), `sex`, `age`, `heart_rate` (N,); all float32-castable.
            Latent arrays may add `latents` (N, 128, 4), one scaled sample per record.
        record_ids: (N,) names for error messages and the optional `record_id` key.
        with_ids: also yield `record_id` (b,) str.
        process_index, process_count: default `jax.process_index()`, `jax.process_count()`.

    Raises:
        ValueError: missing field, wrong shape (e.g. not 12 leads), unequal lengths, or NaN/inf
            values (naming the field and record).
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        *,
        record_ids: Sequence[str] | None = None,
        with_ids: bool = False,
        process_index: int | None = None,
        process_count: int | None = None,
    ):
        expected = LATENT_SHAPES if "mean" in arrays else SIGNAL_SHAPES
        if "mean" in arrays and "latents" in arrays:
            expected = {**expected, **CACHED_LATENT_SHAPE}
        self.arrays = {key: np.asarray(arrays[key], np.float32) for key in expected if key in arrays}
        _check_shapes({k: v.shape[1:] for k, v in self.arrays.items()}, expected, "the arrays")
        lengths = {key: len(value) for key, value in self.arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"arrays have different numbers of records: {lengths}")
        self.num_examples = next(iter(lengths.values()))
        self.record_ids = np.asarray(
            record_ids if record_ids is not None else [str(i) for i in range(self.num_examples)]
        )
        _check_finite(self.arrays, self.record_ids, "the arrays")
        self.with_ids = with_ids
        self.process_index, self.process_count = _processes(process_index, process_count)

    @classmethod
    def from_processed(cls, dirs, folds: Sequence[int] | None = None, **kwargs) -> "ArraySource":
        """Signal source over processed sets (`diffusets_jax.data_pipelines.processed.load_processed(dirs, folds)`)."""
        from diffusets_jax.data_pipelines.processed import load_processed

        data = load_processed(dirs, folds)
        arrays = {
            "signal": data.signals,
            "text_embedding": data.text_embeddings,
            "sex": data.sex_codes,
            "age": data.age,
            "heart_rate": data.heart_rate,
        }
        return cls(arrays, record_ids=data.record_ids, **kwargs)

    def steps_per_epoch(self, global_batch_size: int) -> int:
        """Full global batches per epoch; ValueError if there are fewer records than one batch."""
        if self.num_examples < global_batch_size:
            raise ValueError(f"{self.num_examples} records are fewer than one batch of {global_batch_size}")
        return self.num_examples // global_batch_size

    def batches(
        self, global_batch_size: int, start_step: int, *, seed: int, shuffle: bool
    ) -> Iterator[dict[str, np.ndarray]]:
        local = local_batch_size(global_batch_size, self.process_count)
        self.steps_per_epoch(global_batch_size)
        rows = slice(self.process_index * local, (self.process_index + 1) * local)
        for step in itertools.count(start_step):
            index = batch_indices(self.num_examples, global_batch_size, step, seed, shuffle)[rows]
            batch = {key: value[index] for key, value in self.arrays.items()}
            if self.with_ids:
                batch["record_id"] = self.record_ids[index]
            yield batch


def cpu_tensorflow():
    """TensorFlow, kept off accelerators (they belong to JAX)."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # devices already initialised by an earlier call: nothing left to hide
        pass
    return tf


class TFRecordSource:
    """Batches read by tf.data from TFRecord shards of `tf.train.Example` (float lists, int64 sex).

    Use `from_tfds()` or `from_latents()`; the constructor takes the parts directly.

    Epoch `e` of a process: its files in the order `stateless_shuffle(files, [seed, e])`, read
    4 at a time (blocks of 16 records), through a shuffle buffer seeded by `(seed, e)`, cut to
    `steps_per_epoch` batches. The buffer (default `SHUFFLE_BUFFER_BYTES` of serialized
    examples: about 48k latents or 5k signals, i.e. a full shuffle of small sets) is filled anew
    at the start of each epoch, the first batch's wait (about 0.7 s for either kind on 2 cores).
    Batches are parsed in parallel (`tf.io.parse_example` per batch) and prefetched. Raises
    ValueError naming the dataset, files and field for a record that does not parse, and naming
    the record and field for NaN/inf values.

    Args:
        files: all shard files of the split, in a fixed order; lengths: examples in each.
        shapes: per-row shape of each field read (e.g. `SIGNAL_SHAPES` with D filled in); every
            field is yielded as float32.
        int64_fields: fields stored as int64 lists (TFDS ClassLabel `sex`); the others are float lists.
        where: description for error messages (dataset directory and split).
        deterministic: False lets tf.data reorder reads and parsing for speed; batches are then not
            reproducible from `(seed, step)`.
        with_ids: also yield `record_id` (b,) bytes.
        shuffle_buffer: examples in the shuffle buffer (default: `SHUFFLE_BUFFER_BYTES` worth).
        process_index, process_count: default `jax.process_index()`, `jax.process_count()`.

    Raises:
        FileNotFoundError: a shard file is missing. ValueError: fewer shard files than processes.
    """

    def __init__(
        self,
        files: Sequence[str | Path],
        lengths: Sequence[int],
        shapes: Mapping[str, tuple],
        *,
        where: str,
        int64_fields: Sequence[str] = (),
        deterministic: bool = True,
        with_ids: bool = False,
        shuffle_buffer: int | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
    ):
        self.files = [str(f) for f in files]
        for file in self.files:
            if not Path(file).is_file():
                raise FileNotFoundError(f"shard file {file} of {where} is missing")
        self.lengths = [int(n) for n in lengths]
        self.shapes = {key: tuple(shape) for key, shape in shapes.items()}
        self.int64_fields = tuple(int64_fields)
        self.where, self.deterministic, self.with_ids = where, deterministic, with_ids
        self.process_index, self.process_count = _processes(process_index, process_count)
        if len(self.files) < self.process_count:
            raise ValueError(
                f"{where} has {len(self.files)} shard file(s), fewer than the {self.process_count} "
                "processes reading it; rebuild it with more shards (num_shards)"
            )
        self.num_examples = sum(self.lengths)
        self.local_files = self.files[self.process_index :: self.process_count]
        self.local_examples = [sum(self.lengths[p :: self.process_count]) for p in range(self.process_count)]
        bytes_per_example = sum(Path(f).stat().st_size for f in self.files) / max(self.num_examples, 1)
        self.shuffle_buffer = shuffle_buffer or max(1, int(SHUFFLE_BUFFER_BYTES // bytes_per_example))

    @classmethod
    def from_tfds(cls, name: str, split: str, data_dir=None, **kwargs) -> "TFRecordSource":
        """Signal source over a split built by `diffusets_jax.data_pipelines.tfds.build_dataset()`.

        `name` is `'ptbxl'`, `'ptbxl/minilm-100hz'` (default config when omitted) or the
        dataset's version directory. Raises FileNotFoundError if the dataset was not built,
        ValueError for an unknown split or a feature of the wrong shape.
        """
        from diffusets_jax.data_pipelines.tfds import load_builder

        builder = load_builder(name, data_dir)
        where = f"dataset {builder.data_dir} split {split!r}"
        if split not in builder.info.splits:
            raise ValueError(f"{where} does not exist; splits: {', '.join(builder.info.splits)}")
        features = builder.info.features
        shapes = {key: features[key].shape for key in SIGNAL_SHAPES if key in features}
        _check_shapes(shapes, SIGNAL_SHAPES, f"dataset {builder.data_dir}")
        info = builder.info.splits[split]
        return cls(info.filepaths, info.shard_lengths, shapes, where=where, int64_fields=("sex",), **kwargs)

    @classmethod
    def from_latents(cls, directory, **kwargs) -> "TFRecordSource":
        """Latent source over a directory written by `diffusets_jax.data_pipelines.latents.write_latents()`.

        Raises FileNotFoundError if the directory or its `latents_info.json` is missing,
        ValueError if a field has the wrong shape.
        """
        info_path = Path(directory) / LATENT_INFO
        if not info_path.is_file():
            raise FileNotFoundError(
                f"{info_path} not found: write the latent dataset with "
                "diffusets_jax.data_pipelines.latents.write_latents first"
            )
        info = json.loads(info_path.read_text())
        where = f"latent dataset {directory}"
        _check_shapes(info["shapes"], LATENT_SHAPES, where)
        files = [Path(directory) / shard["file"] for shard in info["shards"]]
        lengths = [shard["count"] for shard in info["shards"]]
        return cls(files, lengths, {key: tuple(info["shapes"][key]) for key in LATENT_SHAPES}, where=where, **kwargs)

    def steps_per_epoch(self, global_batch_size: int) -> int:
        """Steps per epoch, the same on every process: its fewest examples // local batch size."""
        local = local_batch_size(global_batch_size, self.process_count)
        steps = min(self.local_examples) // local
        if steps == 0:
            raise ValueError(
                f"{self.where}: a process has {min(self.local_examples)} examples, fewer than "
                f"one local batch of {local}"
            )
        return steps

    def _parse(self, serialized):
        """Parse a (b,) batch of serialized examples into float32 fields + record_id."""
        tf = cpu_tensorflow()
        spec = {
            key: tf.io.FixedLenFeature([math.prod(shape)], tf.int64 if key in self.int64_fields else tf.float32)
            for key, shape in self.shapes.items()
        }
        spec["record_id"] = tf.io.FixedLenFeature([], tf.string)
        parsed = tf.io.parse_example(serialized, spec)
        batch = {key: tf.reshape(tf.cast(parsed[key], tf.float32), (-1, *shape)) for key, shape in self.shapes.items()}
        batch["record_id"] = parsed["record_id"]
        return batch

    def dataset(self, global_batch_size: int, start_step: int, *, seed: int, shuffle: bool):
        """The endless `tf.data.Dataset` of this process's batches from `start_step` on."""
        tf = cpu_tensorflow()
        local = local_batch_size(global_batch_size, self.process_count)
        steps = self.steps_per_epoch(global_batch_size)
        start_epoch, offset = divmod(start_step, steps)
        files = tf.constant(self.local_files)
        read_parallelism = min(len(self.local_files), 4)

        def epoch_records(epoch):
            epoch_seed = tf.stack([tf.constant(seed, tf.int64), epoch])
            ordered = tf.random.experimental.stateless_shuffle(files, seed=epoch_seed) if shuffle else files
            records = tf.data.Dataset.from_tensor_slices(ordered).interleave(
                tf.data.TFRecordDataset,
                cycle_length=read_parallelism,
                block_length=16,
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=self.deterministic,
            )
            if shuffle:
                records = records.shuffle(
                    self.shuffle_buffer, seed=seed * 1_000_003 + epoch, reshuffle_each_iteration=False
                )
            skip = tf.where(epoch == start_epoch, tf.constant(offset * local, tf.int64), 0)
            # every process: the same steps per epoch; then the batches before start_step are skipped
            return records.take(steps * local).skip(skip)

        options = tf.data.Options()
        options.deterministic = self.deterministic
        return (
            tf.data.Dataset.range(start_epoch, 2**62)
            .flat_map(epoch_records)
            .batch(local, drop_remainder=True)
            .map(self._parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=self.deterministic)
            .prefetch(tf.data.AUTOTUNE)
            .with_options(options)
        )

    def batches(
        self, global_batch_size: int, start_step: int, *, seed: int, shuffle: bool
    ) -> Iterator[dict[str, np.ndarray]]:
        tf = cpu_tensorflow()
        iterator = self.dataset(global_batch_size, start_step, seed=seed, shuffle=shuffle).as_numpy_iterator()
        while True:
            try:
                batch = next(iterator)
            except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as err:  # wrong size, truncated file
                raise ValueError(
                    f"cannot read a record of {self.where} (files {self.local_files}): {err.message}"
                ) from None
            record_ids = batch["record_id"] if self.with_ids else batch.pop("record_id")
            _check_finite({k: v for k, v in batch.items() if k != "record_id"}, record_ids, self.where)
            yield batch
