"""Where the trainers' batches come from: processed sets in memory, or a TFDS dataset's shards.

`--data` takes either processed sets written by `diffusets-jax prepare` (directories with
`dataset.npz`, any number, held in memory) or one TFDS dataset built by `diffusets_jax.data_pipelines.tfds`
(its version directory, with `dataset_info.json`, streamed by tf.data). Every source is a
`diffusets_jax.data_pipelines.input_pipeline.BatchSource`: `batches(global_batch_size, start_step, seed=,
shuffle=)` yields this process's rows of each global batch as a function of `(seed, step)` only,
so that a resumed run sees exactly the batches of an uninterrupted one.

Signal sources hold `signal` `(N, 1024, 12)` mV; latent sources (the VAE posteriors the
diffusion model trains on, computed once as the official code caches them) hold `mean` and
`log_variance` `(N, 128, 4)`; both hold `text_embedding` `(N, D)`, `sex` (1.0 male), `age`
(years) and `heart_rate` (bpm). With SE-Diff's physics losses on, in-memory latent sources also
hold `class_index` (N,) int32, each record's simulator class (`conditions.class_indices` of its
report); TFDS latent shards hold no reports, so their rows fall back to the `all` class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from diffusets_jax.data_pipelines.input_pipeline import LATENT_INFO, ArraySource, TFRecordSource
from diffusets_jax.constants import LATENT_SCALE

TRAIN_SPLIT, VALIDATION_SPLIT = "train", "validation"


def is_tfds_dataset(path: str | Path) -> bool:
    return (Path(path) / "dataset_info.json").is_file()


def training_sources(config, data_dirs: Sequence[str | Path]):
    """`(train, validation)` signal sources; validation is None when there is no such record.

    Processed sets: folds `config.data.train_folds` and `config.data.val_folds`. A TFDS dataset:
    its `train` and `validation` splits (patient-wise folds fixed when it was built).

    Raises FileNotFoundError naming a directory that is neither, ValueError for a TFDS dataset
    given with other data, or text embeddings whose width is not the config's `text.embed_dim`.
    """
    dirs = [Path(d) for d in data_dirs]
    if any(is_tfds_dataset(d) for d in dirs):
        if len(dirs) != 1:
            raise ValueError(f"give one TFDS dataset or any number of processed sets, not both: {dirs}")
        train = TFRecordSource.from_tfds(str(dirs[0]), TRAIN_SPLIT, None)
        validation = _optional(lambda: TFRecordSource.from_tfds(str(dirs[0]), VALIDATION_SPLIT, None))
    else:
        train = ArraySource.from_processed(dirs, folds=config.data.train_folds)
        validation = _optional(lambda: ArraySource.from_processed(dirs, folds=config.data.val_folds))
    _check_text_width(train, config)
    return train, validation


def latent_sources(
    config, workdir: Path, vae, vae_step: int, data_dirs: Sequence[str | Path], class_names: Sequence[str] | None = None
):
    """`(train, validation)` latent sources: `training_sources` encoded by the trained `vae`.

    `class_names` (a `sediff.physics.ClassTable`'s names): processed sets also yield each record's
    `class_index` into them, from its report (for SE-Diff's physics losses).

    Processed sets are encoded in memory, with one latent sampled per record (the official cache,
    `vae/vae_encoding.py`), used when `unet_train.sample_posterior` is False. A TFDS dataset is
    encoded once into latent shards in `workdir/latents/vae_step_<step>/<split>` (reused by later
    runs); with shards, every step samples a fresh latent from the stored posterior.
    """
    train, validation = training_sources(config, data_dirs)
    copies = int(config.data.get("hr_augment_copies", 0))
    if isinstance(train, ArraySource):
        if copies:
            train = _augment_heart_rate(train, config)
        print(f"encoding {train.num_examples} ECGs with the VAE of step {vae_step}")
        encode = lambda source: _encode_arrays(vae, source, config.seed)  # noqa: E731
        train, validation = encode(train), (encode(validation) if validation else None)
        if class_names is not None:
            _add_class_index(train, data_dirs, config.data.train_folds, class_names, repeats=copies + 1)
            if validation is not None:
                _add_class_index(validation, data_dirs, config.data.val_folds, class_names)
        return train, validation
    if copies:
        print("data.hr_augment_copies applies to processed sets held in memory: the TFDS dataset is used as built")
    if class_names is not None:
        print("the TFDS dataset holds no reports: every record uses the 'all' simulator class")
    encode_fn = _batched_encoder(vae)
    sources = []
    for split, source in ((TRAIN_SPLIT, train), (VALIDATION_SPLIT, validation)):
        if source is None:
            sources.append(None)
            continue
        out = Path(workdir) / "latents" / f"vae_step_{vae_step}" / split
        if not (out / LATENT_INFO).is_file():
            from diffusets_jax.data_pipelines.latents import write_latents

            print(f"encoding the {split} split ({source.num_examples} ECGs) into {out}")
            write_latents(encode_fn, str(Path(data_dirs[0])), split, out, num_shards=max(jax.process_count(), 1))
        sources.append(TFRecordSource.from_latents(out))
    return tuple(sources)


def encode_moments(vae, signals: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and log-variance `(N, 128, 4)` of `signals` `(N, 1024, 12)`, in batches."""
    encode = _batched_encoder(vae)
    parts = [encode(signals[i : i + batch_size]) for i in range(0, len(signals), batch_size)]
    return np.concatenate([m for m, _ in parts]), np.concatenate([lv for _, lv in parts])


def _batched_encoder(vae):
    from flax import nnx

    graphdef, params = nnx.split(vae)
    moments = jax.jit(lambda p, x: nnx.merge(graphdef, p).encoder.moments(x))
    return lambda signals: tuple(np.asarray(a) for a in moments(params, np.asarray(signals, np.float32)))


def _encode_arrays(vae, source: ArraySource, seed: int) -> ArraySource:
    arrays = dict(source.arrays)
    mean, log_variance = encode_moments(vae, arrays.pop("signal"))
    noise = np.random.default_rng(seed).standard_normal(mean.shape).astype(np.float32)
    arrays.update(
        mean=mean, log_variance=log_variance, latents=(mean + np.exp(0.5 * log_variance) * noise) * LATENT_SCALE
    )
    return ArraySource(arrays, record_ids=source.record_ids)


def _augment_heart_rate(source: ArraySource, config) -> ArraySource:
    """`source` with `data.hr_augment_copies` time-warped copies of each ECG appended
    (`diffusets_jax.data_pipelines.augment.augment_heart_rate`); the copies keep their record's id."""
    from diffusets_jax.data_pipelines.augment import augment_heart_rate

    d = config.data
    arrays = augment_heart_rate(
        source.arrays, int(d.hr_augment_copies), tuple(d.hr_augment_factor), tuple(d.hr_augment_bpm), config.seed
    )
    copies = len(arrays["heart_rate"]) // source.num_examples
    print(
        f"heart-rate augmentation: {source.num_examples} ECGs -> {len(arrays['heart_rate'])} "
        f"(time-warp factors {tuple(d.hr_augment_factor)}, rates kept in {tuple(d.hr_augment_bpm)} bpm)"
    )
    return ArraySource(arrays, record_ids=np.tile(np.asarray(source.record_ids), copies))


def _add_class_index(source: ArraySource, data_dirs, folds, class_names, repeats: int = 1) -> None:
    """Add `class_index` (N,) int32 to `source`'s arrays, from the reports of the same records
    (`load_processed(data_dirs, folds)`, the order `ArraySource.from_processed` reads them in),
    repeated `repeats` times for a heart-rate-augmented source.
    Added after construction: `ArraySource` keeps only the fields it knows, and yields all it holds."""
    from diffusets_jax.data_pipelines.processed import load_processed
    from diffusets_jax.conditions import class_indices

    data = load_processed(data_dirs, folds)
    if not np.array_equal(np.tile(np.asarray(data.record_ids), repeats), source.record_ids):
        raise ValueError("the reports do not line up with the encoded records")
    source.arrays["class_index"] = np.tile(class_indices(list(data.reports), class_names), repeats)


def _optional(make):
    try:
        return make()
    except ValueError:  # no record in the validation folds, or no validation split
        return None


def _check_text_width(source, config) -> None:
    width = (
        source.arrays["text_embedding"].shape[1]
        if isinstance(source, ArraySource)
        else source.shapes["text_embedding"][0]
    )
    if width != config.text.embed_dim:
        raise ValueError(
            f"the datasets hold {width}-d text embeddings; config text.embed_dim is {config.text.embed_dim} "
            f"(text.embedder {config.text.embedder!r})"
        )
