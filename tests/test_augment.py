"""Heart-rate augmentation by time-warping, on real PTB-XL and LUDB records."""

import numpy as np
import pytest

from diffusets_jax.data_pipelines import ludb, ptbxl
from diffusets_jax.data_pipelines.augment import augment_heart_rate, time_warp
from diffusets_jax.data_pipelines.records import detect_heart_rate
from diffusets_jax.constants import FS


@pytest.fixture(scope="module")
def records(ptbxl_root, ludb_root):
    return [ptbxl.load_record(ptbxl_root, "1"), ludb.load_record(ludb_root, "1")]


@pytest.mark.parametrize("s", [0.75, 0.9, 1.2, 1.4])
def test_time_warp_moves_the_measured_heart_rate_to_hr_over_s(records, s):
    for record in records:
        warped = time_warp(record.signal, s)
        assert warped.shape == record.signal.shape and warped.dtype == np.float32
        measured = detect_heart_rate(warped, FS)
        assert measured == pytest.approx(record.heart_rate / s, abs=4.0), (record.record_id, s)


def test_time_warp_by_one_is_the_identity_and_keeps_amplitudes(records):
    signal = records[0].signal
    np.testing.assert_allclose(time_warp(signal, 1.0), signal, atol=1e-4)
    for s in (0.75, 1.3):
        ratio = time_warp(signal, s).std(axis=0) / signal.std(axis=0)
        assert np.all((ratio > 0.85) & (ratio < 1.15)), (s, ratio)


def test_faster_signals_continue_without_a_baseline_jump(records):
    signal = records[0].signal
    warped = time_warp(signal, 0.75)
    step = np.abs(np.diff(warped, axis=0)).max(axis=0)
    assert np.all(step <= 1.5 * np.abs(np.diff(signal, axis=0)).max(axis=0) + 0.05)


def test_bad_factors_and_shapes_are_refused(records):
    with pytest.raises(ValueError, match="factor"):
        time_warp(records[0].signal, 3.0)
    with pytest.raises(ValueError, match="1024"):
        time_warp(records[0].signal[:500], 1.1)


def test_augment_heart_rate_appends_labelled_copies_within_the_rate_range(records):
    arrays = {
        "signal": np.stack([r.signal for r in records]),
        "heart_rate": np.array([r.heart_rate for r in records], np.float32),
        "age": np.array([r.age for r in records], np.float32),
    }
    out = augment_heart_rate(arrays, 3, (0.7, 1.4), (50.0, 120.0), seed=0)
    assert out["signal"].shape == (8, 1024, 12)
    np.testing.assert_array_equal(out["signal"][:2], arrays["signal"])
    np.testing.assert_array_equal(out["age"], np.tile(arrays["age"], 4))
    hr = out["heart_rate"][2:]
    assert np.all((hr >= 50.0 - 1e-3) & (hr <= 120.0 + 1e-3))
    for row in range(2, 8):
        measured = detect_heart_rate(out["signal"][row], FS)
        assert measured == pytest.approx(out["heart_rate"][row], abs=5.0)
    again = augment_heart_rate(arrays, 3, (0.7, 1.4), (50.0, 120.0), seed=0)
    np.testing.assert_array_equal(again["signal"], out["signal"])
    assert augment_heart_rate(arrays, 0, (0.7, 1.4), (50.0, 120.0), seed=0) is arrays
