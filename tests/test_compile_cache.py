"""diffusets_jax.compile_cache: a second process loads the first one's compiled program from disk."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from diffusets_jax import compile_cache

# Child process: enable the cache (directory from argv, or the default when argv[1] is "-"),
# compile one small function, report the cache directory and the JAX cache events it saw.
CHILD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import jax, jax.numpy as jnp
    from jax import monitoring
    events = []
    monitoring.register_event_listener(lambda name, **kw: events.append(name))
    from diffusets_jax import compile_cache
    arg = sys.argv[1]
    if arg == "off":
        compile_cache.disable()
        path = None
    else:
        path = compile_cache.enable(None if arg == "-" else Path(arg))
    f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(axis=0) * 3.0 + 1.0)
    y = f(jnp.ones((8, 16), jnp.float32))
    y.block_until_ready()
    print(json.dumps({"dir": str(path), "events": events, "y": float(y[0])}))
""")


def run_child(arg: str, env_extra: dict | None = None) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env_extra or {})}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, arg], capture_output=True, text=True, env=env, timeout=300, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_hits_the_cache(tmp_path):
    cache = tmp_path / "jax-cache"
    first = run_child(str(cache))
    assert first["dir"] == str(cache.resolve())
    assert "/jax/compilation_cache/cache_misses" in first["events"]
    assert "/jax/compilation_cache/cache_hits" not in first["events"]
    written = [p for p in cache.rglob("*") if p.is_file()]
    assert written, "the first process wrote no cache entry"

    second = run_child(str(cache))
    assert "/jax/compilation_cache/cache_hits" in second["events"]
    assert "/jax/compilation_cache/cache_misses" not in second["events"]
    assert second["y"] == first["y"]


def test_default_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.delenv(compile_cache.ENV_VAR, raising=False)
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.default_cache_dir() == tmp_path / "xdg" / "diffusets-jax" / "jax-cache"
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    assert compile_cache.default_cache_dir() == tmp_path / "jax"
    monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "mine"))
    assert compile_cache.default_cache_dir() == tmp_path / "mine"


def test_env_var_dir_used_by_a_process_and_disable_writes_nothing(tmp_path):
    cache = tmp_path / "from-env"
    result = run_child("-", {compile_cache.ENV_VAR: str(cache)})
    assert Path(result["dir"]) == cache.resolve()
    assert any(p.is_file() for p in cache.rglob("*"))

    off = run_child("off", {compile_cache.ENV_VAR: str(tmp_path / "unused")})
    assert "/jax/compilation_cache/cache_hits" not in off["events"]
    assert not (tmp_path / "unused").exists()


def test_unwritable_dir_raises_oserror(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError):
        compile_cache.enable(blocker / "cache")


def test_ensure_enabled_respects_an_existing_dir_and_disable(tmp_path, monkeypatch):
    import jax

    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_enable_compilation_cache)
    try:
        chosen = compile_cache.enable(tmp_path / "chosen")
        assert compile_cache.ensure_enabled() == chosen  # the CLI's directory stays
        compile_cache.disable()
        assert not compile_cache.is_enabled() and compile_cache.ensure_enabled() is None
        jax.config.update("jax_compilation_cache_dir", None)
        monkeypatch.setattr(compile_cache, "_turned_off", False)
        monkeypatch.setenv(compile_cache.OFF_ENV_VAR, "1")
        assert compile_cache.ensure_enabled() is None
        monkeypatch.setenv(compile_cache.OFF_ENV_VAR, "0")
        monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "default"))
        assert compile_cache.ensure_enabled() == (tmp_path / "default").resolve()
        assert compile_cache.is_enabled()
    finally:
        jax.config.update("jax_compilation_cache_dir", before[0])
        jax.config.update("jax_enable_compilation_cache", before[1])
        monkeypatch.setattr(compile_cache, "_turned_off", False)
