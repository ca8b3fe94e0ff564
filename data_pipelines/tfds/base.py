"""Shared TFDS builder for the ECG sources: records from `load_records`, written as sharded TFRecords.

Every example holds the processed record exactly as `diffusets_jax.data_pipelines.prepare.load_records()`
returns it, plus the text embedding of its prompt:

    signal          (1024, 12) float32, mV, 102.4 Hz, leads I..V6 (`LEADS`)
    age             float32, years
    sex             ClassLabel `('F', 'M')`: stored as int64 0 = female, 1 = male, which is the
                    official condition code (`SEX_CODES`); `features['sex'].int2str` gives the letter
    heart_rate      float32, bpm
    statements      sequence of text, most important first
    report          text, the statements joined with `'|'`
    prompt          text, `diffusets_jax.text.build_prompt()` of the statements
    text_embedding  (D,) float32, the builder config's embedder applied to `prompt`
    record_id, patient_id   text
    fold            int32, 1..10, patient-wise

Splits are patient-wise by fold: `train` = folds 1-8, `validation` = 9, `test` = 10 (PTB-XL
`strat_fold`; elsewhere `diffusets_jax.data_pipelines.records.patient_fold()`), so no patient is in two
splits. A split without any usable record is left out (listed in `metadata['empty_splits']`).
Records that fail to load are skipped, never stopping the build: `metadata['skipped']` lists
`[record_id, reason]` pairs in input order, `metadata['skipped_counts']` counts them per reason
kind (`diffusets_jax.data_pipelines.tfds.stream.reason_kind()`), and `skipped_records.jsonl` next to the
shards holds one JSON line per skipped record (`metadata.json` is next to the shards too).

Building streams (`diffusets_jax.data_pipelines.tfds.stream`): stage 1 reads, processes and embeds the
records, a block at a time in `num_workers` local processes or as an Apache Beam pipeline
(`beam_runner`, `diffusets_jax.data_pipelines.tfds.beam_pipeline`), and appends each example to a
per-split spool file; stage 2 has TFDS write the non-empty splits from the spools, either from this
process (TFDS's writer holds up to `shuffle_buffer_mib`, 1000 MiB by default, of examples in
memory and spills the rest to disk) or with TFDS's Beam writer (`beam_write`). Memory therefore
does not grow with the number of records; the spool takes as much temporary disk space as the
shards (about 50 kB per record) and is deleted when the build completes. `in_memory=True` is the
first release's build (every record loaded by `load_records` before writing), kept as the
reference the streaming builds are tested against. Tutorial on Beam datasets in TFDS:
https://www.tensorflow.org/datasets/beam_datasets
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from diffusets_jax.data_pipelines import get_reader
from diffusets_jax.data_pipelines.prepare import load_records
from diffusets_jax.constants import NUM_LEADS, NUM_SAMPLES
from diffusets_jax.text import EMBEDDERS, TextEmbedder

from .stream import (
    SKIPPED_FILE,
    SPLIT_FOLDS,
    BatchEmbedder,
    SpoolWriter,
    process_locally,
    read_spool,
    reason_kind,
    skipped_counts,
    split_of_fold,
    spool_files,
)

#: Sex class names, indexed by the stored integer (= official condition code: 1.0 male).
SEX_NAMES = ("F", "M")


@dataclasses.dataclass(eq=False)
class ECGConfig(tfds.core.BuilderConfig):
    """Builder config: which text embedder, and (PTB-XL) which native sampling rate to read.

    Attributes:
        embedder: registry name of the text embedder (`diffusets_jax.text.EMBEDDERS`).
        embed_dim: its output size D.
        reader_options: passed to the reader's `load_record` (e.g. `{'sampling_rate': 100}`).
    """

    embedder: str = "minilm"
    embed_dim: int = 384
    reader_options: dict = dataclasses.field(default_factory=dict)


def embedder_configs(rates: Sequence[int] | None = None) -> list[ECGConfig]:
    """One config per registered embedder (and per rate: name `'<embedder>-<rate>hz'`), MiniLM first."""
    configs = []
    for name, cls in EMBEDDERS.items():
        if rates is None:
            configs.append(
                ECGConfig(
                    name=name, embedder=name, embed_dim=cls.dim, description=f"text embedder {name} ({cls.dim}-d)"
                )
            )
        else:
            configs += [
                ECGConfig(
                    name=f"{name}-{rate}hz",
                    embedder=name,
                    embed_dim=cls.dim,
                    reader_options={"sampling_rate": rate},
                    description=f"{rate} Hz records, text embedder {name} ({cls.dim}-d)",
                )
                for rate in rates
            ]
    return configs


class ECGBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Manual-download builder of one ECG source; subclasses set `SOURCE` and the configs.

    Args:
        text_embedder: an embedder object to use instead of `get_embedder(config.embedder)`;
            its `name` and `dim` must match the config.
        num_workers: local processes that read, resample and detect QRS (without Beam).
        record_ids: only these records (default: the reader's full list).
        beam_options: Apache Beam `PipelineOptions` (runner included) to run stage 1 as a Beam
            pipeline (see `diffusets_jax.data_pipelines.tfds.beam_pipeline.pipeline_options()`); None: locally.
        beam_write: stage 2 with TFDS's Beam writer (pass the same options to `DownloadConfig`)
            instead of from this process.
        in_memory: the first release's build, all records in memory (reference for tests).
        **kwargs: `tfds.core.GeneratorBasedBuilder` arguments (`config`, `data_dir`, ...).

    Raises:
        ValueError: an embedder that does not match the config.
    """

    SOURCE: str = ""
    # TFDS looks for a builder's metadata in the folder named after its module, which is wrong for a
    # package installed from another folder (setup.cfg `package_dir`): name the folder.
    pkg_dir_path = epath.Path(__file__).parent
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: load_records processing, patient-wise fold splits."}

    def __init__(
        self,
        *,
        text_embedder: TextEmbedder | None = None,
        num_workers: int = 1,
        record_ids: Sequence[str] | None = None,
        beam_options=None,
        beam_write: bool = False,
        in_memory: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        config = self.builder_config
        if text_embedder is not None and (text_embedder.name, text_embedder.dim) != (config.embedder, config.embed_dim):
            raise ValueError(
                f"embedder {text_embedder.name!r} ({text_embedder.dim}-d) does not match config "
                f"{config.name!r} ({config.embedder!r}, {config.embed_dim}-d)"
            )
        self._text_embedder = text_embedder
        self._num_workers = num_workers
        self._record_ids = None if record_ids is None else [str(i) for i in record_ids]
        self._beam_options = beam_options
        self._beam_write = beam_write
        self._in_memory = in_memory

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "signal": tfds.features.Tensor(shape=(NUM_SAMPLES, NUM_LEADS), dtype=np.float32),
                    "age": tfds.features.Scalar(dtype=np.float32, doc="years"),
                    "sex": tfds.features.ClassLabel(names=SEX_NAMES),
                    "heart_rate": tfds.features.Scalar(dtype=np.float32, doc="beats per minute"),
                    "statements": tfds.features.Sequence(tfds.features.Text()),
                    "report": tfds.features.Text(),
                    "prompt": tfds.features.Text(),
                    "text_embedding": tfds.features.Tensor(shape=(config.embed_dim,), dtype=np.float32),
                    "record_id": tfds.features.Text(),
                    "patient_id": tfds.features.Text(),
                    "fold": tfds.features.Scalar(dtype=np.int32),
                }
            ),
            supervised_keys=None,
            metadata=tfds.core.MetadataDict(),
        )

    def _spool_dir(self) -> str:
        return f"{self.data_dir}/spool"  # inside TFDS's temporary build directory

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config = self.builder_config
        root = str(dl_manager.manual_dir)
        ids = self._record_ids
        if ids is None:
            ids = [str(i) for i in get_reader(self.SOURCE).list_records(root)]
        embedder = BatchEmbedder(self._text_embedder or config.embedder, (config.embedder, config.embed_dim))
        if self._in_memory:
            return self._in_memory_splits(root, ids, embedder)
        spool_dir, skipped_path = self._spool_dir(), f"{self.data_dir}/{SKIPPED_FILE}"
        if self._beam_options is None:
            spool = SpoolWriter(spool_dir)
            skipped = process_locally(
                self.SOURCE, root, ids, config.reader_options, embedder, spool, num_workers=self._num_workers
            )
            counts = {split: spool.counts[split] for split in SPLIT_FOLDS if spool.counts[split]}
        else:
            from . import beam_pipeline

            counts = beam_pipeline.run(
                self.SOURCE, root, ids, config.reader_options, embedder, spool_dir, skipped_path, self._beam_options
            )
            skipped = _read_skipped(skipped_path)
        self._record_skipped(skipped, counts)
        if self._beam_write:
            from .beam_pipeline import ReadSpool

            return {split: ReadSpool(f"{spool_dir}/{split}-*.pkl") for split in counts}
        return {split: read_spool(spool_files(spool_dir, split)) for split in counts}

    def _record_skipped(self, skipped: list[tuple[str, str]], counts: dict[str, int]) -> None:
        """Write `SKIPPED_FILE` (input order, with the reason kind) and the build's metadata."""
        lines = [
            json.dumps({"record_id": i, "reason": reason, "kind": reason_kind(reason)}) + "\n" for i, reason in skipped
        ]
        epath.Path(self.data_dir, SKIPPED_FILE).write_text("".join(lines))  # empty file if none
        config = self.builder_config
        self.info.metadata.update(
            {
                "source": self.SOURCE,
                "embedder": config.embedder,
                "embed_dim": config.embed_dim,
                "reader_options": config.reader_options,
                "skipped": [list(s) for s in skipped],
                "skipped_counts": skipped_counts(skipped),
                "skipped_file": SKIPPED_FILE,
                "empty_splits": [split for split in SPLIT_FOLDS if not counts.get(split)],
            }
        )

    def _in_memory_splits(self, root: str, ids: list[str], embedder: BatchEmbedder):
        records, skipped = load_records(
            self.SOURCE, root, ids, num_workers=self._num_workers, **self.builder_config.reader_options
        )
        examples = {split: [] for split in SPLIT_FOLDS}
        for record, example in zip(records, embedder.examples(records)):
            examples[split_of_fold(record.fold)].append((record.record_id, example))
        counts = {split: len(rows) for split, rows in examples.items() if rows}
        self._record_skipped(skipped, counts)
        return {split: iter(rows) for split, rows in examples.items() if rows}

    def _download_and_prepare(self, dl_manager, download_config):
        try:
            super()._download_and_prepare(dl_manager, download_config)
        finally:
            if tf.io.gfile.exists(self._spool_dir()):
                tf.io.gfile.rmtree(self._spool_dir())

    def _generate_examples(self, rows):  # the split generators above already yield (key, example)
        raise NotImplementedError


def _read_skipped(path: str) -> list[tuple[str, str]]:
    """`(record_id, reason)` from the Beam side output's JSON lines, in input order."""
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as file:
        rows = [json.loads(line) for line in file if line.strip()]
    return [(row["record_id"], row["reason"]) for row in sorted(rows, key=lambda row: row["index"])]
