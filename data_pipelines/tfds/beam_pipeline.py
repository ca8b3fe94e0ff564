"""Stage 1 of a TFDS build (read, process, embed) as an Apache Beam pipeline; needs `pip install -e ".[beam]"`.

    ids file --ReadFromText--> Reshuffle --ParDo(LoadRecordFn)--> records --BatchElements--> ParDo(EmbedFn)
        --Partition(split)--> WriteToTFRecord(<spool>/<split>-*.pkl)        (pickled examples)
    LoadRecordFn's side output 'skipped' --> WriteToText(<skipped file>)   (JSON lines)

The same pipeline runs on one machine (`DirectRunner`, `direct_num_workers` worker processes)
or on a cluster (Dataflow, Spark, Flink: the runner and its options are the user's, see
docs/training-at-scale.md). Each worker loads the text model once, in `DoFn.setup`
(https://beam.apache.org/documentation/transforms/python/elementwise/pardo/), and embeds a
batch of records per call (`beam.BatchElements`). Examples per split and skipped records per
reason kind are also Beam counters (namespace `ecg`, shown by the runner's monitoring). Stage 2
(TFDS writing the shards) is in `diffusets_jax.data_pipelines.tfds.base`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from diffusets_jax.data_pipelines.records import ECGRecord

from .stream import SPLIT_FOLDS, BatchEmbedder, load_one, reason_kind, split_of_fold

NAMESPACE = "ecg"
#: Records per embedding call (`beam.BatchElements` bounds).
MIN_BATCH, MAX_BATCH = 8, 256


def pipeline_options(runner: str, workers: int = 1, options: Sequence[str] = ()) -> PipelineOptions:
    """Beam options for `runner`: `--runner`, the user's `options` (`['--project=p', ...]`) and,
    for the DirectRunner, `workers` processes (`multi_processing` mode; 1: in this process).

    Raises:
        ValueError: `workers < 1`.
    """
    if workers < 1:
        raise ValueError(f"beam_workers must be >= 1, got {workers}")
    flags = [f"--runner={runner}", *options]
    if runner in ("DirectRunner", "direct"):
        flags += [
            f"--direct_num_workers={workers}",
            f"--direct_running_mode={'in_memory' if workers == 1 else 'multi_processing'}",
        ]
    return PipelineOptions(flags)


class LoadRecordFn(beam.DoFn):
    """`(index, record_id)` -> `ECGRecord`; a bad record goes to the `'skipped'` output as
    `{'index', 'record_id', 'reason', 'kind'}` and increments counter `skipped: <kind>`."""

    def __init__(self, source: str, root: str, reader_options: dict):
        self._args = (source, str(root), dict(reader_options))

    def process(self, element):
        index, record_id = element
        result = load_one(*self._args, record_id)
        if isinstance(result, ECGRecord):
            yield result
        else:
            kind = reason_kind(result)
            Metrics.counter(NAMESPACE, f"skipped: {kind}").inc()
            yield beam.pvalue.TaggedOutput(
                "skipped", {"index": index, "record_id": record_id, "reason": result, "kind": kind}
            )


class EmbedFn(beam.DoFn):
    """A batch of `ECGRecord` -> `(split, example)` pairs; the text model is loaded once per worker."""

    def __init__(self, embedder: BatchEmbedder):
        self._embedder = embedder

    def setup(self):
        self._embedder.load()

    def process(self, records: list[ECGRecord]):
        for record, example in zip(records, self._embedder.examples(records)):
            split = split_of_fold(record.fold)
            Metrics.counter(NAMESPACE, f"examples: {split}").inc()
            yield split, example


def run(
    source: str,
    root,
    record_ids: Sequence[str],
    reader_options: dict,
    embedder: BatchEmbedder,
    spool_dir: str,
    skipped_path: str,
    options: PipelineOptions,
) -> dict[str, int]:
    """Run stage 1; returns `{split: spool bytes}` of the splits that got examples.

    Writes `spool_dir/record_ids.txt` (`index<TAB>record_id` lines: the ids are read as a file,
    not embedded in the pipeline graph, whose size Dataflow limits), the spool
    `spool_dir/<split>-SSSSS-of-NNNNN.pkl` (TFRecord files of pickled examples) and
    `skipped_path` (JSON lines of the skipped records, any order).
    """
    import tensorflow as tf

    tf.io.gfile.makedirs(spool_dir)
    with tf.io.gfile.GFile(f"{spool_dir}/record_ids.txt", "w") as file:
        file.write("".join(f"{index}\t{record_id}\n" for index, record_id in enumerate(record_ids)))
    splits = list(SPLIT_FOLDS)
    with beam.Pipeline(options=options) as pipeline:
        loaded = (
            pipeline
            | "RecordIds" >> beam.io.ReadFromText(f"{spool_dir}/record_ids.txt")
            | "Parse" >> beam.Map(_parse_id_line)
            | "Distribute" >> beam.Reshuffle()
            | "Load" >> beam.ParDo(LoadRecordFn(source, root, reader_options)).with_outputs("skipped", main="records")
        )
        examples = (
            loaded.records
            | "Batch" >> beam.BatchElements(min_batch_size=MIN_BATCH, max_batch_size=MAX_BATCH)
            | "Embed" >> beam.ParDo(EmbedFn(embedder))
        )
        parts = examples | "BySplit" >> beam.Partition(lambda item, n: splits.index(item[0]), len(splits))
        for split, part in zip(splits, parts):
            (
                part
                | f"Example{split}" >> beam.Values()
                | f"Spool{split}"
                >> beam.io.WriteToTFRecord(
                    f"{spool_dir}/{split}", coder=beam.coders.PickleCoder(), file_name_suffix=".pkl"
                )
            )
        (
            loaded.skipped
            | "SkippedJson" >> beam.Map(json.dumps)
            | "WriteSkipped" >> beam.io.WriteToText(skipped_path, shard_name_template="")
        )
    # A split without examples leaves no spool file or only empty ones (any runner; Beam counters
    # are not reported by every runner).
    sizes = {
        split: sum(tf.io.gfile.stat(f).length for f in tf.io.gfile.glob(f"{spool_dir}/{split}-*.pkl"))
        for split in splits
    }
    return {split: size for split, size in sizes.items() if size > 0}


def _parse_id_line(line: str) -> tuple[int, str]:
    index, record_id = line.split("\t", 1)
    return int(index), record_id


class ReadSpool(beam.PTransform):
    """Stage 2 input for TFDS's Beam writer: `(record_id, example)` from spool files `pattern`."""

    def __init__(self, pattern: str):
        super().__init__()
        self._pattern = pattern

    def expand(self, pbegin):
        return (
            pbegin
            | "ReadSpool" >> beam.io.ReadFromTFRecord(self._pattern, coder=beam.coders.PickleCoder())
            | "Key" >> beam.Map(lambda example: (example["record_id"], example))
        )
