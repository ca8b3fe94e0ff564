"""Realism and condition-fidelity measures of generated ECGs that need no trained evaluator.

* Heart rate by a second, independent detector: NeuroKit2's R peaks (Makowski et al. 2021,
  `nk.ecg_peaks`, default method) on lead II upsampled to 500 Hz, next to the project's XQRS
  (`metrics.heart_rates`), and the median absolute error against the requested rate.
* Per-lead amplitude: the ratio of the mean per-ECG standard deviation of each lead, generated
  over real (1 = real amplitudes).
* A classifier two-sample test (C2ST; Lopez-Paz & Oquab 2017): gradient-boosted trees
  (scikit-learn's `HistGradientBoostingClassifier`) on per-lead summary features, real against
  generated, scored by 5-fold cross-validated AUROC. 0.5: the classifier cannot tell them apart;
  1: it always can. Report it next to real against real (two halves of the real set).
"""

from __future__ import annotations

import numpy as np
from scipy.signal import resample
from scipy.stats import kurtosis, skew

from diffusets_jax.constants import FS, LEADS, NUM_SAMPLES

LEAD_II = LEADS.index("II")
NEUROKIT_FS = 500.0


def _batch(signals, name: str) -> np.ndarray:
    array = np.asarray(signals, np.float64)
    if array.ndim != 3 or array.shape[1:] != (NUM_SAMPLES, len(LEADS)):
        raise ValueError(f"{name} must be (N, {NUM_SAMPLES}, {len(LEADS)}) mV, got {array.shape}")
    return array


def heart_rates_neurokit(signals, fs: float = FS) -> np.ndarray:
    """Heart rate `(N,)` bpm of each ECG `(N, 1024, 12)` from NeuroKit2's R peaks on lead II
    (upsampled to 500 Hz), `60 / mean(RR)`; NaN where fewer than two peaks are found or the
    rate is outside 20-300 bpm. Raises ValueError for a wrong shape."""
    import neurokit2 as nk

    batch = _batch(signals, "signals")
    length = int(round(batch.shape[1] * NEUROKIT_FS / fs))
    rates = np.full(len(batch), np.nan)
    for i, ecg in enumerate(batch):
        lead = resample(ecg[:, LEAD_II], length)
        if not np.isfinite(lead).all() or np.ptp(lead) == 0:
            continue
        try:
            _, info = nk.ecg_peaks(nk.ecg_clean(lead, sampling_rate=int(NEUROKIT_FS)), sampling_rate=int(NEUROKIT_FS))
        except Exception:  # noqa: BLE001 -- NeuroKit2 raises assorted errors on beat-free signals
            continue
        peaks = np.asarray(info["ECG_R_Peaks"])
        if len(peaks) >= 2:
            rate = 60.0 / (np.mean(np.diff(peaks)) / NEUROKIT_FS)
            rates[i] = rate if 20.0 <= rate <= 300.0 else np.nan
    return rates


def median_abs_error(requested, measured) -> dict[str, float | int]:
    """`{'median_abs_error', 'mean_abs_error', 'n_detected', 'n_undetected'}` in bpm; ECGs with a
    NaN measured rate are counted, not scored."""
    requested, measured = np.asarray(requested, np.float64), np.asarray(measured, np.float64)
    ok = np.isfinite(measured)
    errors = np.abs(measured[ok] - requested[ok])
    return {
        "median_abs_error": float(np.median(errors)) if ok.any() else float("nan"),
        "mean_abs_error": float(np.mean(errors)) if ok.any() else float("nan"),
        "n_detected": int(ok.sum()),
        "n_undetected": int((~ok).sum()),
    }


def amplitude_ratio(real, generated) -> np.ndarray:
    """Per lead `(12,)`: mean over ECGs of the lead's std, generated over real (1 = real scale)."""
    real, generated = _batch(real, "real"), _batch(generated, "generated")
    return generated.std(axis=1).mean(axis=0) / real.std(axis=1).mean(axis=0)


def summary_features(signals) -> np.ndarray:
    """`(N, 12 * 8)` per-lead summary features: std, 1st and 99th percentile, peak-to-peak, mean
    absolute first difference (high-frequency content), skewness, kurtosis, and the fraction of
    the lead's power below 5 Hz. Summaries, not raw samples, so that the C2ST judges realism
    and not the alignment of beats."""
    batch = _batch(signals, "signals")
    centred = batch - batch.mean(axis=1, keepdims=True)
    spectrum = np.abs(np.fft.rfft(centred, axis=1)) ** 2
    frequencies = np.fft.rfftfreq(batch.shape[1], 1.0 / FS)
    low = spectrum[:, frequencies < 5.0].sum(axis=1) / np.maximum(spectrum.sum(axis=1), 1e-12)
    features = [
        batch.std(axis=1),
        np.percentile(batch, 1, axis=1),
        np.percentile(batch, 99, axis=1),
        np.ptp(batch, axis=1),
        np.abs(np.diff(batch, axis=1)).mean(axis=1),
        skew(batch, axis=1),
        kurtosis(batch, axis=1),
        low,
    ]
    return np.nan_to_num(np.concatenate(features, axis=1))


def c2st_auroc(real, generated, folds: int = 5, seed: int = 0) -> float:
    """Classifier two-sample test: mean 5-fold AUROC of gradient-boosted trees telling `real`
    from `generated` ECGs (`(N, 1024, 12)` each) by `summary_features`. Raises ValueError when a
    set has fewer ECGs than `folds`."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    real, generated = _batch(real, "real"), _batch(generated, "generated")
    if min(len(real), len(generated)) < folds:
        raise ValueError(f"the C2ST needs at least {folds} ECGs per set, got {len(real)} and {len(generated)}")
    x = np.concatenate([summary_features(real), summary_features(generated)])
    y = np.concatenate([np.zeros(len(real)), np.ones(len(generated))])
    leaf = min(20, max(2, len(x) // 20))  # scikit-learn's default 20 cannot split a few dozen ECGs
    classifier = HistGradientBoostingClassifier(
        max_iter=200, learning_rate=0.1, min_samples_leaf=leaf, random_state=seed
    )
    splits = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(classifier, x, y, cv=splits, scoring="roc_auc")))
