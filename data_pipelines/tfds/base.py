"""Shared TFDS builder for the ECG sources: records from `load_records`, written as sharded TFRecords.

Every example holds the processed record exactly as :func:`data_pipelines.prepare.load_records`
returns it, plus the text embedding of its prompt:

    signal          (1024, 12) float32, mV, 102.4 Hz, leads I..V6 (``LEADS``)
    age             float32, years
    sex             ClassLabel ``('F', 'M')``: stored as int64 0 = female, 1 = male, which is the
                    official condition code (``SEX_CODES``); ``features['sex'].int2str`` gives the letter
    heart_rate      float32, bpm
    statements      sequence of text, most important first
    report          text, the statements joined with ``'|'``
    prompt          text, :func:`diffusets_jax.text.build_prompt` of the statements
    text_embedding  (D,) float32, the builder config's embedder applied to ``prompt``
    record_id, patient_id   text
    fold            int32, 1..10, patient-wise

Splits are patient-wise by fold: ``train`` = folds 1-8, ``validation`` = 9, ``test`` = 10 (PTB-XL
``strat_fold``; elsewhere :func:`data_pipelines.records.patient_fold`), so no patient is in two
splits. A split without any usable record is left out (listed in ``metadata['empty_splits']``).
Records that fail to load are skipped and listed in ``metadata['skipped']`` as
``[record_id, reason]`` pairs (``metadata.json`` next to the shards).

Building reads every record first (in ``num_workers`` processes), so it holds about 50 KB per
record in memory: about 1.1 GB for the whole of PTB-XL. That does not scale to the whole of
MIMIC-IV-ECG (800k records, about 40 GB); a streaming build is not implemented yet, so build a
subset (``record_ids``).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines.prepare import load_records
from data_pipelines.records import ECGRecord
from diffusets_jax.constants import NUM_LEADS, NUM_SAMPLES
from diffusets_jax.text import EMBEDDERS, EmbeddingCache, TextEmbedder, build_prompt, get_embedder

#: Folds of each split (patient-wise): train 1-8, validation 9, test 10.
SPLIT_FOLDS = {"train": tuple(range(1, 9)), "validation": (9,), "test": (10,)}
#: Sex class names, indexed by the stored integer (= official condition code: 1.0 male).
SEX_NAMES = ("F", "M")


def split_of_fold(fold: int) -> str:
    """``'train'`` (1-8), ``'validation'`` (9) or ``'test'`` (10); ValueError for another fold."""
    for split, folds in SPLIT_FOLDS.items():
        if fold in folds:
            return split
    raise ValueError(f"fold must be in 1..10, got {fold}")


@dataclasses.dataclass(eq=False)
class ECGConfig(tfds.core.BuilderConfig):
    """Builder config: which text embedder, and (PTB-XL) which native sampling rate to read.

    Attributes:
        embedder: registry name of the text embedder (``diffusets_jax.text.EMBEDDERS``).
        embed_dim: its output size D.
        reader_options: passed to the reader's ``load_record`` (e.g. ``{'sampling_rate': 100}``).
    """

    embedder: str = "minilm"
    embed_dim: int = 384
    reader_options: dict = dataclasses.field(default_factory=dict)


def embedder_configs(rates: Sequence[int] | None = None) -> list[ECGConfig]:
    """One config per registered embedder (and per rate: name ``'<embedder>-<rate>hz'``), MiniLM first."""
    configs = []
    for name, cls in EMBEDDERS.items():
        if rates is None:
            configs.append(ECGConfig(name=name, embedder=name, embed_dim=cls.dim,
                                     description=f"text embedder {name} ({cls.dim}-d)"))
        else:
            configs += [ECGConfig(name=f"{name}-{rate}hz", embedder=name, embed_dim=cls.dim,
                                  reader_options={"sampling_rate": rate},
                                  description=f"{rate} Hz records, text embedder {name} ({cls.dim}-d)")
                        for rate in rates]
    return configs


class ECGBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Manual-download builder of one ECG source; subclasses set ``SOURCE`` and the configs.

    Args:
        text_embedder: an embedder object to use instead of ``get_embedder(config.embedder)``;
            its ``name`` and ``dim`` must match the config.
        num_workers: processes that read, resample and detect QRS (see ``load_records``).
        record_ids: only these records (default: the reader's full list).
        **kwargs: ``tfds.core.GeneratorBasedBuilder`` arguments (``config``, ``data_dir``, ...).

    Raises:
        ValueError: an embedder that does not match the config.
    """

    SOURCE: str = ""
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: load_records processing, patient-wise fold splits."}

    def __init__(self, *, text_embedder: TextEmbedder | None = None, num_workers: int = 1,
                 record_ids: Sequence[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        config = self.builder_config
        if text_embedder is not None and (text_embedder.name, text_embedder.dim) != (config.embedder,
                                                                                       config.embed_dim):
            raise ValueError(f"embedder {text_embedder.name!r} ({text_embedder.dim}-d) does not match config "
                             f"{config.name!r} ({config.embedder!r}, {config.embed_dim}-d)")
        self._text_embedder = text_embedder
        self._num_workers = num_workers
        self._record_ids = None if record_ids is None else [str(i) for i in record_ids]

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
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
            }),
            supervised_keys=None,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config = self.builder_config
        records, skipped = load_records(self.SOURCE, dl_manager.manual_dir, self._record_ids,
                                        num_workers=self._num_workers, **config.reader_options)
        embedder = self._text_embedder or get_embedder(config.embedder)
        prompts = [build_prompt(r.statements) for r in records]
        embeddings = EmbeddingCache(embedder.name, embedder.dim).embed_prompts(prompts, embedder)
        examples = {split: [] for split in SPLIT_FOLDS}
        for record, prompt, embedding in zip(records, prompts, embeddings):
            examples[split_of_fold(record.fold)].append((record, prompt, embedding))
        self.info.metadata.update({
            "source": self.SOURCE, "embedder": embedder.name, "embed_dim": embedder.dim,
            "reader_options": config.reader_options, "skipped": [list(s) for s in skipped],
            "empty_splits": [split for split, rows in examples.items() if not rows],
        })
        return {split: self._generate_examples(rows) for split, rows in examples.items() if rows}

    def _generate_examples(self, rows: list[tuple[ECGRecord, str, np.ndarray]]):
        for record, prompt, embedding in rows:
            yield record.record_id, {
                "signal": record.signal, "age": record.age, "sex": record.sex,
                "heart_rate": record.heart_rate, "statements": record.statements, "report": record.report,
                "prompt": prompt, "text_embedding": embedding, "record_id": record.record_id,
                "patient_id": record.patient_id, "fold": record.fold,
            }
