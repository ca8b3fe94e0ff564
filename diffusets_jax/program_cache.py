"""Programs traced once and kept on disk, so that a new process loads the sampler instead of tracing it.

JAX's persistent compilation cache (`compile_cache`) saves XLA compilation, but every process still
traces each program and lowers it to StableHLO, only to compute the cache key. For the paper
sampler on a 2-core CPU that is ~1.1 s of tracing and ~0.4 s of lowering, a sixth of a warm
`diffusets-jax generate` (issue 19). This module keeps the lowered program itself, a
`jax.export.Exported` in its serialized form, in `<compilation cache directory>/exported/`. A later
process deserializes it (~0.1 s), and its compilation is then loaded from the compilation cache.

The key of a program covers everything its trace depends on:
- the name and options given by the caller;
- the argument structure, shapes and dtypes;
- the versions of JAX, jaxlib, Flax and NumPy, the backend and its device kind, `$XLA_FLAGS`;
- the JAX settings that change tracing;
- the contents of every source file of `diffusets_jax`.

So a changed model, option or library is traced again, never served a stale program. Weights are
arguments, not part of the program.

The cache is on exactly when the compilation cache is (`compile_cache.is_enabled()`, so
`--no-compile-cache` turns both off) and the directory is local. A file that cannot be read back
is traced again and replaced, with a warning naming it. A failure to write, or a program JAX cannot
export, is a warning: the program then runs as plain `jax.jit`.
Source: JAX guide "Exporting and serializing staged-out computations" (`jax.export`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import jax

from diffusets_jax import compile_cache

#: Subdirectory of the compilation cache directory holding the exported programs (`*.exported`).
SUBDIR = "exported"
_PACKAGE = Path(__file__).resolve().parent
_DISTRIBUTIONS = ("jax", "jaxlib", "flax", "numpy")
_TRACE_SETTINGS = (
    "jax_enable_x64",
    "jax_default_prng_impl",
    "jax_default_matmul_precision",
    "jax_numpy_rank_promotion",
)


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """SHA-256 of the paths and contents of every `.py` file of the `diffusets_jax` package."""
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*.py")):
        digest.update(str(path.relative_to(_PACKAGE)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def program_key(name: str, args: Sequence, options: Any = None) -> str:
    """The file key of program `name` traced with `options` (its `repr`) for arguments shaped like `args`."""
    leaves, treedef = jax.tree.flatten(tuple(args))
    device = jax.devices()[0]
    parts = [
        name,
        repr(options),
        source_digest(),
        f"{device.platform}:{device.device_kind}",
        os.environ.get("XLA_FLAGS", ""),
        *(f"{dist}=={importlib.metadata.version(dist)}" for dist in _DISTRIBUTIONS),
        *(f"{setting}={getattr(jax.config, setting, None)}" for setting in _TRACE_SETTINGS),
        str(treedef),
        *(f"{leaf.shape}:{leaf.dtype}:{getattr(leaf, 'weak_type', False)}" for leaf in leaves),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def directory() -> Path | None:
    """Where exported programs are kept now, or None when the compilation cache is off or not local."""
    if not compile_cache.is_enabled():
        return None
    base = str(jax.config.jax_compilation_cache_dir)
    return None if "://" in base else Path(base) / SUBDIR


def cached_program(name: str, fn: Callable, args: Sequence, options: Any = None) -> Callable:
    """`jax.jit(fn)` for positional arguments shaped like `args`, traced in an earlier process if one
    exported the same program (same `program_key`), else traced now and written for later ones.

    `args`: arrays or `jax.ShapeDtypeStruct`s, or lists, tuples and dicts of them (JAX's own
    pytree nodes, which an exported program can record; flatten other pytrees first), with no PRNG
    key arrays (pass their `jax.random.key_data`). `options`: whatever else `fn`'s trace depends on
    that is not in this package's source (e.g. sampling options, the model config); its `repr`
    enters the key, so it must not contain object addresses. The returned callable takes arguments
    of the same structure, shapes and dtypes.
    """
    folder = directory()
    if folder is None:
        return jax.jit(fn)
    path = folder / f"{name}-{program_key(name, args, options)}.exported"
    if path.is_file():
        try:
            return jax.jit(jax.export.deserialize(bytearray(path.read_bytes())).call)
        except Exception as error:  # truncated, or written by another JAX: trace again, replace it
            warnings.warn(f"{path}: cannot load this traced program ({error}); tracing it again", stacklevel=2)
    try:
        exported = jax.export.export(jax.jit(fn))(*args)
    except Exception as error:  # a program JAX cannot export still runs, traced in every process
        warnings.warn(f"program {name!r} cannot be kept on disk ({error}); it is traced in every process", stacklevel=2)
        return jax.jit(fn)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(exported.serialize())
        os.replace(partial, path)  # whole files only: a reader never sees a half-written program
    except OSError as error:
        partial.unlink(missing_ok=True)
        warnings.warn(f"cannot keep the traced program {name!r} in {folder} ({error})", stacklevel=2)
    return jax.jit(exported.call)
