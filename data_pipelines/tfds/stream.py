"""Per-record processing of a TFDS build, streamed: one record in memory at a time (per worker).

The build has two stages (see `diffusets_jax.data_pipelines.tfds.base`):

1. **Process**: every record id is read, cleaned, resampled, heart-rate checked and turned into
   a prompt (`load_one()`); the prompts are embedded in batches (`BatchEmbedder`) and
   each finished example is appended to a per-split *spool* file (`SpoolWriter`), while a
   failing record becomes a `(record_id, reason)` pair. This stage runs either here, over blocks
   of ids in `num_workers` processes (`process_locally()`), or as an Apache Beam pipeline
   (`diffusets_jax.data_pipelines.tfds.beam_pipeline`).
2. **Write**: TFDS writes the non-empty splits from the spools (`read_spool()`) into sharded
   TFRecords.

The spool is what lets a split that ends up empty (every record of it skipped) be left out, as
TFDS refuses to write a split of 0 examples, without holding the examples in memory.
"""

from __future__ import annotations

import functools
import multiprocessing
import pickle
import re
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from diffusets_jax.data_pipelines import get_reader
from diffusets_jax.data_pipelines.records import ECGRecord, RecordError
from diffusets_jax.text import EmbeddingCache, TextEmbedder, build_prompt, get_embedder

#: File (JSON lines `{"record_id", "reason", "kind"}`) of the skipped records, next to the shards.
SKIPPED_FILE = "skipped_records.jsonl"
#: Records read per block by `process_locally()` (memory: about 50 kB per record in a block).
BLOCK_SIZE = 256
#: Distinct prompts an embedding worker remembers (MIMIC machine reports repeat a lot).
PROMPT_CACHE_SIZE = 20_000


def load_one(source: str, root: str, reader_options: dict, record_id: str) -> ECGRecord | str:
    """The reader's record `record_id`, or the reason it cannot be used (a one-line string).

    A `RecordError` gives its reason; any other exception (a reader bug or a file format
    the reader does not expect) gives `'unexpected <type>: <message>'`, so that one odd record
    out of 800,000 does not stop a build. Picklable (module-level), for worker processes.
    """
    try:
        return get_reader(source).load_record(root, record_id, **reader_options)
    except RecordError as err:
        return err.reason
    except Exception as err:  # noqa: BLE001 - counted and listed, never silent
        return f"unexpected {type(err).__name__}: {err}"


def reason_kind(reason: str) -> str:
    """The reason with paths and numbers replaced and details after the first `': '` cut, to count by.

    `'subject_id 90000004 has no row in /d/patients.csv'` -> `'subject_id N has no row in <path>'`;
    `'cannot read WFDB record /d/x: FileNotFoundError: ...'` -> `'cannot read WFDB record <path>'`.
    """
    kind = re.sub(r"\S*[/\\]\S*?(?=:?(?:\s|$))", "<path>", reason)
    kind = re.sub(r"(?<![A-Za-z])\d+(\.\d+)?", "N", kind)
    return kind.split(": ", 1)[0].strip()


def skipped_counts(skipped: Iterable[tuple[str, str]]) -> dict[str, int]:
    """`{reason kind: count}` of `(record_id, reason)` pairs, most frequent first."""
    return dict(Counter(reason_kind(reason) for _, reason in skipped).most_common())


#: Folds of each split (patient-wise): train 1-8, validation 9, test 10.
SPLIT_FOLDS = {"train": tuple(range(1, 9)), "validation": (9,), "test": (10,)}


def split_of_fold(fold: int) -> str:
    """`'train'` (1-8), `'validation'` (9) or `'test'` (10); ValueError for another fold."""
    for split, folds in SPLIT_FOLDS.items():
        if fold in folds:
            return split
    raise ValueError(f"fold must be in 1..10, got {fold}")


def make_example(record: ECGRecord, prompt: str, embedding: np.ndarray) -> dict:
    """The TFDS example of a record (the features of `diffusets_jax.data_pipelines.tfds.base.ECGBuilder`)."""
    return {
        "signal": record.signal,
        "age": record.age,
        "sex": record.sex,
        "heart_rate": record.heart_rate,
        "statements": record.statements,
        "report": record.report,
        "prompt": prompt,
        "text_embedding": np.asarray(embedding, np.float32),
        "record_id": record.record_id,
        "patient_id": record.patient_id,
        "fold": record.fold,
    }


class BatchEmbedder:
    """Embeds the prompts of a batch of records, running the text model once per batch.

    Args:
        embedder: a registry name (`'minilm'`), loaded lazily on first use, once per process
            (a Beam worker calls `load()` from `DoFn.setup`), or an embedder object.
        expected: `(name, dim)` the embedder must have.

    Raises (on load): ValueError if the embedder's name or dimension differs from `expected`.
    """

    def __init__(self, embedder: str | TextEmbedder, expected: tuple[str, int]):
        self._spec = embedder
        self._expected = (expected[0], int(expected[1]))
        self._embedder: TextEmbedder | None = None if isinstance(embedder, str) else embedder
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def load(self) -> TextEmbedder:
        if self._embedder is None:
            self._embedder = get_embedder(self._spec)
        if (self._embedder.name, self._embedder.dim) != self._expected:
            raise ValueError(
                f"embedder {self._embedder.name!r} ({self._embedder.dim}-d) does not match "
                f"{self._expected[0]!r} ({self._expected[1]}-d)"
            )
        return self._embedder

    def __getstate__(self):  # a registry-named model is loaded again in each worker, not pickled
        state = dict(self.__dict__, _cache=OrderedDict())
        if isinstance(self._spec, str):
            state["_embedder"] = None
        return state

    def examples(self, records: Sequence[ECGRecord]) -> list[dict]:
        """`make_example` of each record, prompts embedded in one call on the distinct new ones."""
        embedder = self.load()
        prompts = [build_prompt(r.statements) for r in records]
        new = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if new:
            cache = EmbeddingCache(embedder.name, embedder.dim)  # checks the returned shape
            for prompt, vector in zip(new, cache.embed_prompts(new, embedder)):
                self._cache[prompt] = vector
        out = []
        for record, prompt in zip(records, prompts):
            self._cache.move_to_end(prompt)
            out.append(make_example(record, prompt, self._cache[prompt]))
        while len(self._cache) > PROMPT_CACHE_SIZE:
            self._cache.popitem(last=False)
        return out


class SpoolWriter:
    """Appends examples to `<dir>/<split>-00000-of-00001.pkl`: TFRecord files of pickled examples
    (the format Beam's `WriteToTFRecord` writes with a `PickleCoder`); any `tf.io.gfile` path.

    Attributes:
        counts: examples written per split.
    """

    def __init__(self, directory):
        import tensorflow as tf

        self._tf = tf
        self.directory = str(directory)
        tf.io.gfile.makedirs(self.directory)
        self.counts: Counter = Counter()
        self._files = {}

    def write(self, split: str, example: dict) -> None:
        if split not in self._files:
            self._files[split] = self._tf.io.TFRecordWriter(f"{self.directory}/{split}-00000-of-00001.pkl")
        self._files[split].write(pickle.dumps(example, protocol=pickle.HIGHEST_PROTOCOL))
        self.counts[split] += 1

    def close(self) -> None:
        for file in self._files.values():
            file.close()
        self._files = {}


def spool_files(directory, split: str) -> list[str]:
    """The spool files of `split` in `directory`, sorted."""
    import tensorflow as tf

    return sorted(tf.io.gfile.glob(f"{directory}/{split}-*.pkl"))


def read_spool(paths: Sequence[str]) -> Iterator[tuple[str, dict]]:
    """`(record_id, example)` of every example in the spool files `paths`, one at a time."""
    import tensorflow as tf

    for serialized in tf.data.TFRecordDataset(list(paths)).as_numpy_iterator():
        example = pickle.loads(serialized)
        yield example["record_id"], example


def _blocks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def process_locally(
    source: str,
    root,
    record_ids: Sequence[str],
    reader_options: dict,
    embedder: BatchEmbedder,
    spool: SpoolWriter,
    num_workers: int = 1,
    block_size: int | None = None,
    progress: bool = True,
) -> list[tuple[str, str]]:
    """Stage 1 in this machine: load `record_ids` in blocks, embed, append to `spool`.

    Memory holds one block (`block_size`, default `BLOCK_SIZE`, records of about 50 kB) plus the text model,
    whatever the number of records. `num_workers > 1` loads each block in that many spawned
    processes (results identical to 1; a calling script needs an `if __name__ == "__main__":`
    guard).

    Returns:
        `(record_id, reason)` of each skipped record, in input order.

    Raises:
        ValueError: `num_workers < 1`.
    """
    from tqdm import tqdm

    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    load = functools.partial(load_one, source, str(root), dict(reader_options))
    skipped = []
    pool = None
    if num_workers > 1:  # spawn, not fork: the parent may already run TensorFlow/JAX threads
        pool = ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        with tqdm(total=len(record_ids), desc=f"processing {source}", unit="rec", disable=not progress) as bar:
            for block in _blocks(list(record_ids), block_size or BLOCK_SIZE):
                if pool is None:
                    results = [load(i) for i in block]
                else:
                    results = list(pool.map(load, block, chunksize=max(1, len(block) // (4 * num_workers))))
                records = [r for r in results if isinstance(r, ECGRecord)]
                skipped += [(i, r) for i, r in zip(block, results) if isinstance(r, str)]
                for record, example in zip(records, embedder.examples(records)):
                    spool.write(split_of_fold(record.fold), example)
                bar.update(len(block))
    finally:
        if pool is not None:
            pool.shutdown()
        spool.close()
    return skipped
