"""JAX's persistent compilation cache, so that each new process does not recompile the same programs.

Without it every process pays XLA compilation again: about 8-10 s per U-Net forward shape, 9-11 s
per sampler and 44 s for the paper-size training step on a 2-core CPU (issue 19). With it, the
first process writes each compiled executable to `cache_dir` and later processes load it (a hit
costs milliseconds). The CLI turns it on at start (`diffusets-jax --no-compile-cache`: off); the
notebooks, `evaluate()` and `serve()` call `ensure_enabled()`, which keeps a directory already
chosen and a `disable()`. What the cache cannot save is tracing: a process still traces each
program (seconds for the sampler) to compute its key. For the sampler, `program_cache` keeps the
traced program too, in the `exported/` subdirectory of this one, on whenever this cache is.

Directory, first that is set: the `cache_dir` argument, `$DIFFUSETS_JAX_CACHE_DIR`, JAX's own
`$JAX_COMPILATION_CACHE_DIR`, `$XDG_CACHE_HOME/diffusets-jax/jax-cache`,
`~/.cache/diffusets-jax/jax-cache`.

The cache key covers the program, the JAX/XLA version, the backend and the compile options, so a
stale entry is never reused for a changed model; delete the directory to reclaim disk. As JAX's
own guide warns, the cache is trusted code: do not point it at a directory others may write.
Source: JAX guide "Persistent compilation cache" (jax.readthedocs.io, persistent_compilation_cache).
"""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable that overrides the default cache directory.
ENV_VAR = "DIFFUSETS_JAX_CACHE_DIR"
#: Environment variable that, set to anything but "" or "0", keeps `ensure_enabled()` from enabling the cache.
OFF_ENV_VAR = "DIFFUSETS_JAX_NO_COMPILE_CACHE"

_turned_off = False  # disable() was called: ensure_enabled() leaves the cache off

#: Programs that compile faster than this (seconds) are not written. 0 caches every program,
#: also the small ones (well under JAX's default of 1.0 s on a fast machine, not on a busy one).
MIN_COMPILE_TIME_S = 0.0
#: Entries smaller than this (bytes) are not written; 0 = no lower bound (JAX's own default is also 0 on CPU).
MIN_ENTRY_SIZE_BYTES = 0


def default_cache_dir() -> Path:
    """The directory `enable()` uses without an argument (see the module docstring); not created."""
    env = os.environ.get(ENV_VAR) or os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "diffusets-jax" / "jax-cache"


def enable(cache_dir: Path | None = None) -> Path:
    """Turn on JAX's persistent compilation cache in `cache_dir` (created if missing); returns it.

    Safe to call more than once and after other JAX work: a different directory replaces the
    previous one for compilations from then on. Raises OSError when the directory cannot be
    created (e.g. a read-only home); callers that must not fail can catch it and go on uncached.
    """
    import jax

    path = (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()).resolve()
    path.mkdir(parents=True, exist_ok=True)
    previous = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", MIN_ENTRY_SIZE_BYTES)
    if previous is not None and previous != str(path):
        # JAX opens the cache once, at the first compilation; switch it to the new directory.
        try:
            from jax._src import compilation_cache as _cc

            _cc.reset_cache()
        except (ImportError, AttributeError):  # pragma: no cover - private API moved
            pass
    return path


def disable() -> None:
    """Turn the persistent cache off for compilations from now on (what `--no-compile-cache` means);
    later `ensure_enabled()` calls leave it off, an explicit `enable()` turns it on again."""
    import jax

    global _turned_off
    _turned_off = True
    jax.config.update("jax_enable_compilation_cache", False)


def ensure_enabled() -> Path | None:
    """`enable()` the default directory unless a cache directory is already set (e.g. by the CLI),
    the cache was turned off (`disable()`, `$DIFFUSETS_JAX_NO_COMPILE_CACHE`), or the directory
    cannot be created (a warning, then uncached). What library entry points (`serve`, `evaluate`,
    the notebooks) call; returns the directory in use, or None when uncached.
    """
    import warnings

    import jax

    if jax.config.jax_compilation_cache_dir:
        return Path(jax.config.jax_compilation_cache_dir) if jax.config.jax_enable_compilation_cache else None
    if _turned_off or os.environ.get(OFF_ENV_VAR, "") not in ("", "0"):
        return None
    try:
        return enable()
    except OSError as error:
        warnings.warn(f"compilation cache not enabled ({error}): every process compiles anew", stacklevel=2)
        return None


def is_enabled() -> bool:
    """Whether compilations from now on are read from and written to a persistent cache directory."""
    import jax

    return bool(jax.config.jax_enable_compilation_cache and jax.config.jax_compilation_cache_dir)
