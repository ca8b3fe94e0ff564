"""Realism measures without an evaluator: NeuroKit2 heart rate, amplitude ratio, the C2ST."""

import numpy as np
import pytest

from diffusets_jax.data_pipelines.processed import load_processed
from diffusets_jax.evaluation import metrics as M
from diffusets_jax.evaluation import realism as R


@pytest.fixture(scope="module")
def real(processed_dirs):
    return load_processed(processed_dirs, tuple(range(1, 11))).signals


def test_neurokit_heart_rate_agrees_with_xqrs_on_real_records(real):
    neurokit, xqrs = R.heart_rates_neurokit(real), M.heart_rates(real)
    ok = np.isfinite(neurokit) & np.isfinite(xqrs)
    assert ok.sum() >= len(real) - 1
    assert np.median(np.abs(neurokit[ok] - xqrs[ok])) < 3.0
    flat = np.zeros((1, 1024, 12))
    assert np.isnan(R.heart_rates_neurokit(flat)[0])


def test_median_abs_error_counts_undetected_ecgs():
    out = R.median_abs_error([60, 60, 100], [62, np.nan, 90])
    assert out == {"median_abs_error": 6.0, "mean_abs_error": 6.0, "n_detected": 2, "n_undetected": 1}


def test_amplitude_ratio_is_one_for_real_and_scales_with_the_signal(real):
    np.testing.assert_allclose(R.amplitude_ratio(real, real), 1.0)
    np.testing.assert_allclose(R.amplitude_ratio(real, 2 * real), 2.0, rtol=1e-6)
    with pytest.raises(ValueError, match="1024"):
        R.amplitude_ratio(real, real[:, :512])


def test_c2st_cannot_tell_a_set_from_itself_and_can_tell_distorted_ecgs(real):
    # the fixture's 9 records and 3 time-warped copies of each: enough ECGs for 5-fold AUROC
    from diffusets_jax.data_pipelines.augment import augment_heart_rate

    real = augment_heart_rate(
        {"signal": real, "heart_rate": np.full(len(real), 70.0)}, 3, (0.8, 1.25), (40.0, 180.0), seed=0
    )["signal"]
    assert R.c2st_auroc(real, real) <= 0.6
    assert R.c2st_auroc(real, 2.0 * real) >= 0.9
    noisy = real + 0.05 * np.random.default_rng(0).standard_normal(real.shape)
    assert R.c2st_auroc(real, noisy) >= 0.9
    with pytest.raises(ValueError, match="at least 5"):
        R.c2st_auroc(real[:3], real[:3])
