"""Tests of diffusets_jax.plotting and diffusets_jax.ecg_io (CPU, no network)."""

from pathlib import Path

import numpy as np
import pytest
import wfdb
from matplotlib.image import imread

from diffusets_jax.constants import FS, LEADS, NUM_SAMPLES
from diffusets_jax.ecg_io import read_wfdb, write_npz, write_wfdb
from diffusets_jax.plotting import DPI, plot_ecg, plot_ecg_comparison

PTBXL_RECORD = Path("/work/shared/data/ptb-xl/records500/00000/00001_hr")


def synthetic_ecg(seed: int = 0) -> np.ndarray:
    """(1024, 12) mV: a 72 bpm spike train per lead with lead-specific gain, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(NUM_SAMPLES) / FS
    beats = np.exp(-(((t % (60 / 72)) - 0.3) ** 2) / (2 * 0.01**2))
    gains = np.linspace(-1.0, 2.0, len(LEADS))
    return (beats[:, None] * gains + 0.05 * rng.normal(size=(NUM_SAMPLES, len(LEADS)))).astype(np.float32)


# ------------------------------------------------------------------------------ WFDB


def test_wfdb_round_trip(tmp_path):
    signal = synthetic_ecg()
    signal[:, 7] *= 30.0  # a 60 mV lead exercises the int16 overflow guard
    comments = {"report": "Sinus rhythm|Borderline ECG", "age": 63, "sex": "M", "hr": 72.0}
    comments["seed"] = 0
    path = write_wfdb(signal, tmp_path / "out", "sample_0-a", comments=comments)
    assert path == tmp_path / "out" / "sample_0-a"
    assert path.with_suffix(".hea").exists() and path.with_suffix(".dat").exists()

    record = wfdb.rdrecord(str(path))
    assert record.n_sig == 12 and record.sig_len == NUM_SAMPLES
    assert record.sig_name == list(LEADS)
    assert record.fs == pytest.approx(102.4)
    assert record.units == ["mV"] * 12
    assert record.fmt == ["16"] * 12 and record.baseline == [0] * 12
    np.testing.assert_allclose(record.p_signal, signal, atol=1e-3)
    assert record.comments == ["report: Sinus rhythm|Borderline ECG", "age: 63", "sex: M", "hr: 72.0", "seed: 0"]

    read, fs, read_comments = read_wfdb(path.with_suffix(".hea"))
    assert read.shape == (NUM_SAMPLES, 12) and read.dtype == np.float32
    assert fs == pytest.approx(102.4) and read_comments == record.comments
    np.testing.assert_allclose(read, signal, atol=1e-3)
    assert np.abs(read - signal)[:, :7].max() <= 0.5e-3 + 1e-6  # 1 uV steps at gain 1000


@pytest.mark.parametrize("name", ["bad name", "a/b", "x.y", "", "ünï"])
def test_wfdb_rejects_invalid_record_name(tmp_path, name):
    with pytest.raises(ValueError, match="record_name"):
        write_wfdb(synthetic_ecg(), tmp_path, name)


def test_wfdb_rejects_bad_signal_and_comments(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        write_wfdb(np.zeros((1024, 8)), tmp_path, "r")
    with pytest.raises(ValueError, match="NaN"):
        write_wfdb(np.full((1024, 12), np.nan), tmp_path, "r")
    with pytest.raises(ValueError, match="single lines"):
        write_wfdb(synthetic_ecg(), tmp_path, "r", comments=["two\nlines"])


@pytest.mark.skipif(not PTBXL_RECORD.with_suffix(".hea").exists(), reason="PTB-XL not present")
def test_read_wfdb_ptbxl_lead_names():
    signal, fs, _ = read_wfdb(PTBXL_RECORD)
    record = wfdb.rdrecord(str(PTBXL_RECORD))
    assert signal.shape == (5000, 12) and fs == 500
    np.testing.assert_allclose(signal, record.p_signal, atol=1e-6)  # same order, 'AVR' == 'aVR'


def test_write_npz_round_trip(tmp_path):
    signals = np.stack([synthetic_ecg(0), synthetic_ecg(1)])
    path = write_npz(tmp_path / "batch.npz", signals, reports=["a|b", "c"], age=[60, 70], seed=3)
    with np.load(path, allow_pickle=False) as data:
        np.testing.assert_array_equal(data["signals"], signals)
        assert data["reports"].tolist() == ["a|b", "c"]
        assert data["age"].tolist() == [60, 70] and int(data["seed"]) == 3
    with pytest.raises(ValueError, match=r"\(B, 1024, 12\)"):
        write_npz(tmp_path / "x.npz", signals[0])
    with pytest.raises(ValueError, match="objects"):
        write_npz(tmp_path / "x.npz", signals, extra=[None, 1])


# ------------------------------------------------------------------------------ plotting


def test_plot_ecg_png_on_true_scale(tmp_path):
    png = tmp_path / "ecg.png"
    fig = plot_ecg(synthetic_ecg(), title="Sinus rhythm | age 63 | sex M | HR 72 bpm", path=png)
    assert png.stat().st_size > 50_000
    height_px, width_px = imread(png).shape[:2]
    width_mm, height_mm = fig.get_size_inches() * 25.4
    assert width_px == pytest.approx(width_mm / 25.4 * DPI, abs=1)
    assert height_px == pytest.approx(height_mm / 25.4 * DPI, abs=1)
    assert 250 < width_mm < 300  # 10 s at 25 mm/s plus margins

    # Paper scale: 1 data unit is 1 mm on the page, so 1 s is 25 mm and 1 mV is 10 mm.
    ax = fig.axes[0]
    px_per_mm = DPI / 25.4
    origin, x1, y1 = ax.transData.transform([(0, 0), (1, 0), (0, 1)])
    assert (x1 - origin)[0] == pytest.approx(px_per_mm, rel=1e-6)
    assert (y1 - origin)[1] == pytest.approx(px_per_mm, rel=1e-6)
    rhythm = [line for line in ax.get_lines() if len(line.get_xdata()) == NUM_SAMPLES]
    assert len(rhythm) == 1  # one full-length strip: lead II
    x = rhythm[0].get_xdata()
    assert x[-1] - x[0] == pytest.approx((NUM_SAMPLES - 1) / FS * 25)

    texts = {t.get_text() for t in ax.texts} | {t.get_text() for t in fig.texts}
    assert set(LEADS) <= texts
    assert any("25 mm/s, 10 mm/mV" in t for t in texts)
    assert any("Sinus rhythm" in t for t in texts)


@pytest.mark.parametrize("shape", [(12, 1024), (1000, 12), (1024, 11), (2, 1024, 12)])
def test_plot_ecg_rejects_wrong_shape(shape):
    with pytest.raises(ValueError, match=r"\(1024, 12\)"):
        plot_ecg(np.zeros(shape))


def test_plot_ecg_comparison(tmp_path):
    real = np.stack([synthetic_ecg(0), synthetic_ecg(1)])
    png = tmp_path / "cmp.png"
    fig = plot_ecg_comparison(real, real[::-1], ["Sinus rhythm", "Atrial fibrillation"], path=png)
    assert len(fig.axes) == 4 and png.stat().st_size > 10_000
    with pytest.raises(ValueError, match="titles"):
        plot_ecg_comparison(real, real, ["only one"])
    with pytest.raises(ValueError, match="generated"):
        plot_ecg_comparison(real, np.zeros((2, 1024, 3)))
