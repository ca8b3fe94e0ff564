"""diffusets_jax.program_cache: a program traced once is loaded, not traced, by the next caller."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusets_jax import program_cache
from diffusets_jax.pipeline import Pipeline

CONDITIONS = dict(age=61, sex="F", heart_rate=75)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    path = tmp_path / "exported"
    monkeypatch.setattr(program_cache, "directory", lambda: path)
    return path


def counting(traces: list):
    def fn(x, scale):
        traces.append(x.shape)  # runs at trace time only
        return jnp.tanh(x @ x.T) * scale["w"]

    return fn


def test_a_program_is_traced_once_then_loaded(folder):
    traces = []
    x, scale = np.arange(12.0, dtype=np.float32).reshape(3, 4) / 10, {"w": np.float32(2.0)}
    first = program_cache.cached_program("toy", counting(traces), (x, scale), options="v1")
    y1 = np.asarray(first(x, scale))
    assert len(traces) == 1 and len(list(folder.glob("toy-*.exported"))) == 1
    second = program_cache.cached_program("toy", counting(traces), (x, scale), options="v1")
    y2 = np.asarray(second(x + 1, {"w": np.float32(3.0)}))
    assert len(traces) == 1, "the second caller traced the program again"
    np.testing.assert_allclose(y1, np.tanh(x @ x.T) * 2.0, rtol=1e-6)
    np.testing.assert_allclose(y2, np.tanh((x + 1) @ (x + 1).T) * 3.0, rtol=1e-6)


def test_other_options_or_shapes_are_other_programs(folder):
    traces = []
    x, scale = np.ones((3, 4), np.float32), {"w": np.float32(1.0)}
    program_cache.cached_program("toy", counting(traces), (x, scale), options="v1")
    program_cache.cached_program("toy", counting(traces), (x, scale), options="v2")
    program_cache.cached_program("toy", counting(traces), (np.ones((5, 4), np.float32), scale), options="v1")
    assert traces == [(3, 4), (3, 4), (5, 4)]
    assert len(list(folder.glob("toy-*.exported"))) == 3


def test_an_unreadable_file_is_named_traced_again_and_replaced(folder):
    traces = []
    x, scale = np.ones((2, 2), np.float32), {"w": np.float32(1.5)}
    program_cache.cached_program("toy", counting(traces), (x, scale))
    (path,) = folder.glob("toy-*.exported")
    path.write_bytes(b"not a program")
    with pytest.warns(UserWarning, match=path.name):
        program = program_cache.cached_program("toy", counting(traces), (x, scale))
    np.testing.assert_allclose(np.asarray(program(x, scale)), np.tanh(x @ x.T) * 1.5, rtol=1e-6)
    assert len(traces) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        program_cache.cached_program("toy", counting(traces), (x, scale))  # the replaced file loads
    assert len(traces) == 2


def test_off_with_the_compilation_cache(monkeypatch, tmp_path):
    from diffusets_jax import compile_cache

    monkeypatch.setattr(compile_cache, "is_enabled", lambda: False)
    assert program_cache.directory() is None
    traces = []
    x, scale = np.ones((2, 2), np.float32), {"w": np.float32(1.0)}
    program = program_cache.cached_program("toy", counting(traces), (x, scale))
    program(x, scale)
    program_cache.cached_program("toy", counting(traces), (x, scale))(x, scale)
    assert len(traces) == 2  # plain jax.jit: each new jit traces


def test_the_key_follows_the_package_source(tmp_path, monkeypatch):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text("X = 1\n")
    monkeypatch.setattr(program_cache, "_PACKAGE", package)
    program_cache.source_digest.cache_clear()
    try:
        args = (np.ones(3, np.float32),)
        before = program_cache.program_key("toy", args)
        (package / "a.py").write_text("X = 2\n")
        program_cache.source_digest.cache_clear()
        assert program_cache.program_key("toy", args) != before
    finally:
        program_cache.source_digest.cache_clear()


def test_a_new_pipeline_loads_the_sampler_and_draws_the_same_ecgs(tiny_model_dir, folder, monkeypatch):
    exports = []
    real_export = jax.export.export
    monkeypatch.setattr(jax.export, "export", lambda *a, **k: exports.append(1) or real_export(*a, **k))
    run = lambda pipe: pipe("Sinus rhythm", num_samples=2, seed=5, num_steps=2, sampler="ddim", **CONDITIONS)  # noqa: E731
    first = run(Pipeline.from_pretrained(tiny_model_dir)).signals
    assert len(exports) == 1 and len(list(folder.glob("sampler-*.exported"))) == 1
    second = run(Pipeline.from_pretrained(tiny_model_dir)).signals  # a fresh pipeline, as a new process
    assert len(exports) == 1, "the new pipeline traced the sampler again"
    monkeypatch.setattr(program_cache, "directory", lambda: None)  # plain jax.jit of the sampler
    plain = run(Pipeline.from_pretrained(tiny_model_dir)).signals
    np.testing.assert_array_equal(second, first)
    np.testing.assert_allclose(first, plain, rtol=0, atol=1e-6)
