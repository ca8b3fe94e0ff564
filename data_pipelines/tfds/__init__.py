"""TFDS builders of the ECG sources (PTB-XL, LUDB, MIMIC-IV-ECG, CinC 2020/2021), built offline from a manual download.

    info = build_dataset("ptbxl", "/data/ptb-xl", "/data/tfds", num_workers=2)
    info = build_dataset("mimic", "/data/mimic-iv-ecg", "/data/tfds", beam_runner="DirectRunner", beam_workers=8)
    ds = tfds.builder_from_directory(info.data_dir).as_dataset(split="train")

The builders live in this package, not in a top-level module, because TFDS derives the builder's
code path from its package. Nothing is fetched from GCS or the network. Example features and
splits: `diffusets_jax.data_pipelines.tfds.base`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import tensorflow_datasets as tfds
from tensorflow_datasets.core import shuffle as shuffle_buffer

from diffusets_jax.text import TextEmbedder

from .base import SPLIT_FOLDS, ECGBuilder, ECGConfig, split_of_fold
from .cinc import Cinc
from .ludb import Ludb
from .mimic import Mimic
from .ptbxl import Ptbxl
from .stream import SKIPPED_FILE

BUILDERS: dict[str, type[ECGBuilder]] = {cls.SOURCE: cls for cls in (Ptbxl, Ludb, Mimic, Cinc)}


def make_builder(
    name: str,
    data_dir,
    *,
    embedder: str | TextEmbedder = "minilm",
    num_workers: int = 1,
    sampling_rate: int | None = None,
    record_ids=None,
    **builder_options,
) -> ECGBuilder:
    """The builder of source `name` (`'ptbxl'`, `'ludb'`, `'mimic'`) for `embedder`.

    `embedder` is a registry name (`'minilm'`, `'openai-ada-002'`) or an embedder object; an
    object whose name is not registered gets a custom config of that name. `sampling_rate`
    (PTB-XL only: 500 default, or 100) picks the native files read. `builder_options`:
    `beam_options`, `beam_write`, `in_memory` of `ECGBuilder`.

    Raises:
        ValueError: unknown source or embedder name, or `sampling_rate` given for LUDB/MIMIC.
    """
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(BUILDERS)}")
    cls = BUILDERS[name]
    embedder_name = embedder if isinstance(embedder, str) else embedder.name
    if name == "ptbxl":
        config_name = f"{embedder_name}-{sampling_rate or 500}hz"
    elif sampling_rate is not None:
        raise ValueError(f"sampling_rate applies to ptbxl only; {name} records are read at their own rate")
    else:
        config_name = embedder_name
    config = cls.builder_configs.get(config_name)
    if config is None and isinstance(embedder, str):
        raise ValueError(f"no {name} config {config_name!r}; known: {sorted(cls.builder_configs)}")
    if config is None:  # an unregistered embedder object
        config = ECGConfig(
            name=config_name,
            embedder=embedder.name,
            embed_dim=embedder.dim,
            reader_options={"sampling_rate": sampling_rate or 500} if name == "ptbxl" else {},
        )
    return cls(
        config=config,
        data_dir=str(data_dir),
        num_workers=num_workers,
        record_ids=record_ids,
        text_embedder=None if isinstance(embedder, str) else embedder,
        **builder_options,
    )


#: MiB of examples TFDS's writer holds before spilling to disk (TFDS's default, 1000, grows with the set).
DEFAULT_SHUFFLE_BUFFER_MIB = 32


def build_dataset(
    name: str,
    manual_dir,
    data_dir,
    *,
    embedder: str | TextEmbedder = "minilm",
    num_workers: int = 1,
    sampling_rate: int | None = None,
    num_shards: int | None = None,
    record_ids=None,
    beam_runner: str | None = None,
    beam_workers: int = 1,
    beam_options: Sequence[str] = (),
    beam_write: bool | None = None,
    shuffle_buffer_mib: int | None = DEFAULT_SHUFFLE_BUFFER_MIB,
    in_memory: bool = False,
) -> tfds.core.DatasetInfo:
    """Build source `name` from the raw files in `manual_dir` into `data_dir` as TFRecord shards.

    Streams: memory does not grow with the number of records (see `diffusets_jax.data_pipelines.tfds.base`).

    Args:
        name: `'ptbxl'`, `'ludb'`, `'mimic'` or `'cinc'`.
        manual_dir: the downloaded dataset directory (see the builder's `MANUAL_DOWNLOAD_INSTRUCTIONS`).
        data_dir: TFDS data directory (local or `gs://`); the dataset goes to
            `data_dir/<name>/<config>/1.0.0`.
        embedder, sampling_rate, record_ids: see `make_builder()`.
        num_workers: local processes loading records (read, clean, resample, QRS detection) when
            `beam_runner` is None.
        num_shards: shard files of every split (default: TFDS's choice by size, one for small sets);
            each split needs at least this many examples. Multi-process training reads one share
            of the files per process, so use at least as many shards as processes.
        beam_runner: run the processing as an Apache Beam pipeline on this runner
            (`'DirectRunner'`, `'DataflowRunner'`, `'SparkRunner'`, `'FlinkRunner'`, ...);
            needs `pip install -e ".[beam]"`. None: local processes.
        beam_workers: DirectRunner worker processes (`direct_num_workers`); ignored by other runners,
            whose workers are set in `beam_options` (e.g. `'--max_num_workers=50'`).
        beam_options: further Beam pipeline flags, e.g. `['--project=P', '--region=R',
            '--temp_location=gs://B/tmp']` (https://cloud.google.com/dataflow/docs/reference/pipeline-options).
        beam_write: also write the shards with TFDS's Beam writer. Default: for runners other than
            the DirectRunner, whose in-memory shuffle would hold every example.
        shuffle_buffer_mib: when this process writes the shards, bytes of examples TFDS's writer keeps
            in memory before spilling to disk (`tfds.core.shuffle.MAX_MEM_BUFFER_SIZE`). Default
            `DEFAULT_SHUFFLE_BUFFER_MIB` (32), which keeps peak memory flat from 1,000 to 5,000 MIMIC
            records (benchmarks/README.md); None: TFDS's own 1000 MiB (memory then grows with the
            records up to that much).
        in_memory: the first release's build, every record in memory before writing (reference).

    Returns:
        The dataset info (`info.data_dir`, `info.splits[...]`, `info.metadata['skipped']`,
        `['skipped_counts']`). An existing complete build is reused as is.

    Raises:
        FileNotFoundError: `manual_dir` does not exist. ValueError: see `make_builder()`;
        `beam_workers < 1`. ImportError: `beam_runner` without apache-beam installed.
    """
    if not Path(manual_dir).is_dir():
        raise FileNotFoundError(f"manual_dir {manual_dir} is not a directory: download the {name} dataset first")
    options = None
    if beam_runner is not None:
        try:
            from .beam_pipeline import pipeline_options
        except ImportError as err:
            raise ImportError(
                f'beam_runner={beam_runner!r} needs Apache Beam: pip install -e ".[beam]" ({err})'
            ) from err
        options = pipeline_options(beam_runner, beam_workers, beam_options)
        if beam_write is None:
            beam_write = beam_runner not in ("DirectRunner", "direct")
    builder = make_builder(
        name,
        data_dir,
        embedder=embedder,
        num_workers=num_workers,
        sampling_rate=sampling_rate,
        record_ids=record_ids,
        beam_options=options,
        beam_write=bool(beam_write) and options is not None,
        in_memory=in_memory,
    )
    download_config = tfds.download.DownloadConfig(
        manual_dir=str(manual_dir), try_download_gcs=False, num_shards=num_shards, beam_options=options
    )
    buffer = shuffle_buffer
    saved = buffer.MAX_MEM_BUFFER_SIZE
    if shuffle_buffer_mib is not None:
        buffer.MAX_MEM_BUFFER_SIZE = int(shuffle_buffer_mib) << 20
    try:
        builder.download_and_prepare(file_format="tfrecord", download_config=download_config)
    finally:
        buffer.MAX_MEM_BUFFER_SIZE = saved
    return builder.info


def load_builder(name: str, data_dir=None) -> tfds.core.DatasetBuilder:
    """Reader of a built dataset, without the builder code.

    Args:
        name: `'ptbxl'` (default config), `'ptbxl/minilm-100hz'`, `'ptbxl/minilm-100hz/1.0.0'`
            under `data_dir`; or, with `data_dir=None`, a dataset version directory.

    Raises:
        FileNotFoundError: naming the directory, if the dataset was not built there.
    """
    if data_dir is None:
        version_dir = Path(name)
    else:
        parts = name.split("/")
        if len(parts) == 1 and parts[0] in BUILDERS:
            parts.append(BUILDERS[parts[0]].BUILDER_CONFIGS[0].name)  # the default config
        version_dir = Path(data_dir, *parts)
        if len(parts) == 2:  # newest version built
            versions = sorted(
                (d for d in version_dir.glob("*.*.*") if (d / "dataset_info.json").is_file()),
                key=lambda d: tfds.core.Version(d.name),
            )
            version_dir = versions[-1] if versions else version_dir
    if not (version_dir / "dataset_info.json").is_file():
        raise FileNotFoundError(
            f"no TFDS dataset in {version_dir}: build it with "
            "diffusets_jax.data_pipelines.tfds.build_dataset (or diffusets-jax build-tfds)"
        )
    return tfds.builder_from_directory(str(version_dir))


__all__ = [
    "BUILDERS",
    "SKIPPED_FILE",
    "SPLIT_FOLDS",
    "Cinc",
    "ECGBuilder",
    "ECGConfig",
    "Ludb",
    "Mimic",
    "Ptbxl",
    "build_dataset",
    "load_builder",
    "make_builder",
    "split_of_fold",
]
