"""Generation end to end: Python API and the `generate` command, on a tiny model and the shipped one."""

import numpy as np
import pytest
import wfdb

from conftest import tiny_config
from diffusets_jax import Pipeline, cli
from diffusets_jax.models import build_unet, build_vae
from diffusets_jax.pretrained import DEFAULT_MODEL_DIR, save_pretrained


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    config = tiny_config()
    return save_pretrained(tmp_path_factory.mktemp("tiny"), config, build_vae(config), build_unet(config))


@pytest.fixture(scope="module")
def tiny_pipeline(tiny_model_dir):
    return Pipeline.from_pretrained(tiny_model_dir)


CONDITIONS = dict(age=63, sex="M", heart_rate=110)


def test_same_seed_same_ecgs(tiny_pipeline):
    a = tiny_pipeline("Sinus tachycardia|Left ventricular hypertrophy", num_samples=3, seed=7, **CONDITIONS)
    b = tiny_pipeline("Sinus tachycardia|Left ventricular hypertrophy", num_samples=3, seed=7, **CONDITIONS)
    c = tiny_pipeline("Sinus tachycardia|Left ventricular hypertrophy", num_samples=3, seed=8, **CONDITIONS)
    assert a.signals.shape == (3, 1024, 12) and a.signals.dtype == np.float32
    np.testing.assert_array_equal(a.signals, b.signals)
    assert not np.allclose(a.signals, c.signals)
    assert not np.allclose(a.signals[0], a.signals[1])  # samples of one call differ
    assert a.prompt.startswith("Most importantly, the 1st diagnosis is {Sinus tachycardia}.As a")


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(report="", **CONDITIONS), "report"),
        (dict(report=" | ", **CONDITIONS), "report"),
        (dict(report="Sinus rhythm", age=63, sex="X", heart_rate=70), "sex"),
        (dict(report="Sinus rhythm", age=150, sex="F", heart_rate=70), "age"),
        (dict(report="Sinus rhythm", age=float("nan"), sex="F", heart_rate=70), "age"),
        (dict(report="Sinus rhythm", age=40, sex="F", heart_rate=400), "heart_rate"),
        (dict(report="Sinus rhythm", num_samples=0, **CONDITIONS), "num_samples"),
        (dict(report="Sinus rhythm", num_steps=5000, **CONDITIONS), "num_steps"),
    ],
)
def test_bad_arguments_are_named(tiny_pipeline, kwargs, field):
    with pytest.raises(ValueError, match=field):
        tiny_pipeline(**kwargs)


def test_generate_command_writes_records_and_pictures(tiny_model_dir, tmp_path):
    out = tmp_path / "samples"
    status = cli.main([
        "generate", "--report", "Sinus rhythm|Normal ECG", "--age", "50", "--sex", "F", "--hr", "70",
        "--num-samples", "2", "--seed", "1", "--checkpoint", str(tiny_model_dir), "--out", str(out),
    ])
    assert status == 0
    for i in range(2):
        record = wfdb.rdrecord(str(out / f"ecg_{i:03d}"))
        assert record.p_signal.shape == (1024, 12)
        assert record.sig_name == ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
        assert record.fs == pytest.approx(102.4) and set(record.units) == {"mV"}
        assert any("Sinus rhythm|Normal ECG" in c for c in record.comments)
        assert (out / f"ecg_{i:03d}.png").stat().st_size > 20_000
    with np.load(out / "samples.npz") as saved:
        assert saved["signals"].shape == (2, 1024, 12)
        np.testing.assert_allclose(saved["signals"][0], wfdb.rdrecord(str(out / "ecg_000")).p_signal, atol=1e-3)


def test_generate_command_names_a_bad_argument(tiny_model_dir, tmp_path, capsys):
    status = cli.main([
        "generate", "--report", "Sinus rhythm", "--age", "50", "--sex", "unknown", "--hr", "70",
        "--checkpoint", str(tiny_model_dir), "--out", str(tmp_path),
    ])
    assert status == 2
    assert "sex" in capsys.readouterr().err


def test_shipped_default_model_generates_plausible_ecgs():
    assert (DEFAULT_MODEL_DIR / "unet.npz").is_file(), "the default model must ship with the package"
    pipe = Pipeline.from_pretrained()
    result = pipe("Sinus rhythm|Normal ECG", age=50, sex="F", heart_rate=70, num_samples=2, seed=0)
    signals = result.signals
    assert signals.shape == (2, 1024, 12) and np.all(np.isfinite(signals))
    # Real resting ECGs in the training data: std ~0.1-0.25 mV, peaks of a few mV at most.
    assert 0.02 < signals.std() < 1.0
    assert np.abs(signals).max() < 10.0
