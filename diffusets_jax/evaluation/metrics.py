"""Evaluation metrics of DiffuSETS and SE-Diff, in NumPy/SciPy on precomputed arrays.

Feature-level metrics (FID, rFID, precision/recall, CLIP score) take the evaluator's 64-d
features `(N, d)`; they do not run any network. Signal-level metrics take ECGs
`(N, L, 12)` in mV, leads in `diffusets_jax.constants.LEADS` order, at `fs` Hz
(`(N, 1024, 12)` at 102.4 Hz for the model's signals).

Sources:
    * DiffuSETS official `test_scripts/evaluation.py` (FID, rFID, k=3 precision/recall, CLIP
      score), `test_scripts/batch_hr_test.py` (HR MAE) and `test_scripts/batch_disease_gen.py`
      (condition keywords).
    * SE-Diff metrics (paired MAE/NRMSE, rCLIP, both rFID variants, beat-level interval errors):
      Wang et al., "Simulator and Experience Enhanced Diffusion Model for Comprehensive ECG
      Generation", ICLR 2026, arXiv:2511.09895, experiments; rCLIP and rFID as computed by the
      third-party scorer `score_clip64.py` of nvelingker/DiffuSETS_Exp.
"""

from __future__ import annotations

import warnings
from fractions import Fraction

import numpy as np
import scipy.linalg
import scipy.signal
import scipy.spatial.distance

from diffusets_jax.constants import FS, LEADS
from diffusets_jax.leads import LEAD_IDENTITIES, identity_residuals

#: Rows of the query set compared at once in `precision_recall()` (bounds memory to
#: `chunk x N` float64 distances: 1024 x 100k = 0.8 GB at worst, 8 MB for N = 1000).
DISTANCE_CHUNK_ROWS = 1024

#: Pin (and extra dependency) `interval_errors()` needs. 0.2.13 requires pandas < 3, which
#: conflicts with this project's pandas 3 pin; 0.2.12 has no pandas upper bound.
NEUROKIT2_REQUIREMENT = "neurokit2==0.2.12 PyWavelets>=1.4.0"
#: Rate (Hz) signals are upsampled to before delineation (NeuroKit's delineators and XQRS are
#: tuned for >= 250-500 Hz; the model's 102.4 Hz is too coarse for 10 ms interval differences).
DELINEATION_FS = 500.0
#: NeuroKit2 delineator. 'prominence' gave plausible PTB-XL intervals (PR 127-155, QRS 76-86,
#: QT 284-414 ms on fixture records 1, 2, 108); 'dwt' put QRS offsets in the ST segment (QRS
#: 156-216 ms, PR 62-102 ms on the same normal ECGs) and 'cwt' gave negative PR.
DELINEATION_METHOD = "prominence"


def _features(array, name: str) -> np.ndarray:
    """`array` as float64 `(N, d)`; raises ValueError for another rank or non-finite values."""
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a (N, d) feature array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or inf")
    return array


def _signals(array, name: str) -> np.ndarray:
    """`array` as float64 `(N, L, 12)`; a single `(L, 12)` ECG becomes `(1, L, 12)`."""
    array = np.asarray(array, dtype=np.float64)
    array = array[None] if array.ndim == 2 else array
    if array.ndim != 3 or array.shape[-1] != len(LEADS):
        raise ValueError(f"{name} must be (N, samples, {len(LEADS)}) ECGs in mV, got shape {array.shape}")
    return array


# --------------------------------------------------------------------------------------------
# Feature-level metrics (evaluator features)
# --------------------------------------------------------------------------------------------


def frechet_distance(real_features, generated_features) -> float:
    """Fréchet (inception-style) distance between two feature sets, official DiffuSETS definition.

    `FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 sqrtm(S_r S_g))` with `mu` the feature means,
    `S` = `np.cov(features, rowvar=False)` (unbiased, N - 1) and `scipy.linalg.sqrtm` of the
    product, whose imaginary part (numerical noise, or a genuinely complex root when the
    covariances are singular) is discarded, exactly as the official `FID_score`.

    Args:
        real_features: `(N, d)` evaluator features of real ECGs (unitless), N >= 2.
        generated_features: `(M, d)` features of generated ECGs, M >= 2, same d.

    Returns:
        The distance (squared feature units); 0 for identical sets up to float rounding.

    Raises:
        ValueError: wrong rank, different d, fewer than 2 rows, or non-finite values.

    Source: official `test_scripts/evaluation.py::FID_score`.
    """
    real = _features(real_features, "real_features")
    generated = _features(generated_features, "generated_features")
    if real.shape[1] != generated.shape[1]:
        raise ValueError(f"feature dimensions differ: {real.shape[1]} vs {generated.shape[1]}")
    if len(real) < 2 or len(generated) < 2:
        raise ValueError(f"need >= 2 rows per set for a covariance, got {len(real)} and {len(generated)}")
    mean_real, mean_generated = real.mean(axis=0), generated.mean(axis=0)
    cov_real = np.atleast_2d(np.cov(real, rowvar=False))
    cov_generated = np.atleast_2d(np.cov(generated, rowvar=False))
    cov_sqrt = scipy.linalg.sqrtm(cov_real @ cov_generated)
    if np.iscomplexobj(cov_sqrt):
        cov_sqrt = cov_sqrt.real  # official: keep the real part
    mean_term = np.sum((mean_real - mean_generated) ** 2)
    return float(mean_term + np.trace(cov_real + cov_generated - 2.0 * cov_sqrt))


def rfid(real_features, generated_features) -> dict[str, float]:
    """FID relative to the FID between the two contiguous halves of the real set.

    `fid_real_split = FID(real[:N//2], real[N//2:])` (contiguous halves, as the official code and
    the SE-Diff re-scorer; shuffle the real set beforehand if its order is not random).

    Returns:
        `{'fid', 'fid_real_split', 'rfid_iclr2026', 'rfid_arxiv_v1'}` where
        * `rfid_iclr2026 = fid_real_split / (fid_real_split + fid)` = `1 / (1 + fid / fid_real_split)`:
          SE-Diff ICLR 2026 table (higher is better, in (0, 1], 0.5 when generated ECGs are as far
          from the real set as one real half is from the other);
        * `rfid_arxiv_v1 = fid / fid_real_split`: SE-Diff arXiv v1 and the official DiffuSETS
          `rFID` (lower is better, about 1 for a perfect generator).

    Args:
        real_features: `(N, d)`, N >= 4 (each half needs 2 rows).
        generated_features: `(M, d)`.

    Raises:
        ValueError: as `frechet_distance()`, or if `fid_real_split` is 0 (identical halves).

    Source: official `evaluation.py` (`r_FID = fid_score / scaler`); SE-Diff definitions via the
    third-party scorer `score_clip64.py` (nvelingker/DiffuSETS_Exp).
    """
    real = _features(real_features, "real_features")
    half = len(real) // 2
    fid = frechet_distance(real, generated_features)
    fid_real_split = frechet_distance(real[:half], real[half:])
    if fid_real_split == 0:
        raise ValueError("the two halves of the real set have FID 0; rFID is undefined")
    return {
        "fid": fid,
        "fid_real_split": fid_real_split,
        "rfid_iclr2026": fid_real_split / (fid_real_split + fid),
        "rfid_arxiv_v1": fid / fid_real_split,
    }


def _kth_neighbour_radii(reference: np.ndarray, k: int) -> np.ndarray:
    """`(N,)` distance of each reference point to its k-th nearest other point."""
    radii = np.empty(len(reference))
    for start in range(0, len(reference), DISTANCE_CHUNK_ROWS):
        distances = scipy.spatial.distance.cdist(reference[start : start + DISTANCE_CHUNK_ROWS], reference)
        # Column k of the sorted row: index 0 is the point itself (distance 0), as the official
        # topk(k + 1)[1:] — duplicates of a point count as neighbours at distance 0 there too.
        radii[start : start + DISTANCE_CHUNK_ROWS] = np.partition(distances, k, axis=1)[:, k]
    return radii


def _fraction_inside(queries: np.ndarray, reference: np.ndarray, radii: np.ndarray) -> float:
    """Share of queries within `radii[j]` (inclusive) of at least one reference point j."""
    inside = 0
    for start in range(0, len(queries), DISTANCE_CHUNK_ROWS):
        distances = scipy.spatial.distance.cdist(queries[start : start + DISTANCE_CHUNK_ROWS], reference)
        inside += int((distances <= radii[None, :]).any(axis=1).sum())
    return inside / len(queries)


def precision_recall(real_features, generated_features, k: int = 3) -> dict[str, float]:
    """k-NN manifold precision, recall and F1 (Kynkäänniemi et al. 2019), official DiffuSETS variant.

    The manifold of a set is the union of balls around its points, each with radius = Euclidean
    distance to the point's k-th nearest neighbour in the same set (the point itself excluded). A
    query is inside if it lies within the radius (`<=`) of any reference point.
    `precision` = share of generated points inside the real manifold, `recall` = share of real
    points inside the generated manifold, `f1` = their harmonic mean (0 if either is 0).

    Distances are computed in chunks of `DISTANCE_CHUNK_ROWS` rows with
    `scipy.spatial.distance.cdist` in float64, so N = M = 10^4 needs ~80 MB, not N x M at once.

    Args:
        real_features: `(N, d)`, N > k.
        generated_features: `(M, d)`, M > k.
        k: neighbour rank (official: 3).

    Returns:
        `{'precision', 'recall', 'f1'}`, each in [0, 1].

    Raises:
        ValueError: wrong shapes, non-finite values, or a set with <= k points.

    Source: official `test_scripts/evaluation.py` (`ManifoldDetector`, `precision_recall`,
    lines 146-192).
    """
    real = _features(real_features, "real_features")
    generated = _features(generated_features, "generated_features")
    if real.shape[1] != generated.shape[1]:
        raise ValueError(f"feature dimensions differ: {real.shape[1]} vs {generated.shape[1]}")
    if k < 1 or min(len(real), len(generated)) <= k:
        raise ValueError(
            f"need k >= 1 and more than k points per set, got k={k}, {len(real)} real and {len(generated)} generated"
        )
    precision = _fraction_inside(generated, real, _kth_neighbour_radii(real, k))
    recall = _fraction_inside(real, generated, _kth_neighbour_radii(generated, k))
    f1 = 0.0 if precision == 0 or recall == 0 else 2 * precision * recall / (precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1}


def clip_score(ecg_features, text_features) -> float:
    """Mean cosine similarity between matching rows of ECG and text features.

    `mean_i cos(ecg_i, text_i)` = official `trace(S_n T_n^T) / N` with L2-normalised rows (a
    zero row gets norm 1e-12 instead of a division by zero).

    Args:
        ecg_features: `(N, d)` evaluator ECG features (`ecg_projector(encode_signal(x))`).
        text_features: `(N, d)` evaluator text features of the report each ECG was conditioned
            on / belongs to (repeat a row for several ECGs of one report).

    Returns:
        A value in [-1, 1].

    Raises:
        ValueError: different shapes or non-finite values.

    Source: official `evaluation.py::CLIP_Score_saved_samples`.
    """
    ecg = _features(ecg_features, "ecg_features")
    text = _features(text_features, "text_features")
    if ecg.shape != text.shape:
        raise ValueError(f"ecg_features {ecg.shape} and text_features {text.shape} must match row for row")
    ecg = ecg / np.maximum(np.linalg.norm(ecg, axis=1, keepdims=True), 1e-12)
    text = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
    return float(np.mean(np.sum(ecg * text, axis=1)))


def rclip(generated_score: float, real_score: float) -> float:
    """SE-Diff rCLIP: ratio of means, `clip_score(generated) / clip_score(real)` (higher is better).

    Args:
        generated_score: `clip_score()` of generated ECGs against their conditioning texts.
        real_score: `clip_score()` of the real ECGs against their own texts.

    Raises:
        ValueError: if `real_score` is 0 or not finite.

    Source: SE-Diff (ICLR 2026, arXiv:2511.09895) rCLIP, as the third-party scorer
    `score_clip64.py` of nvelingker/DiffuSETS_Exp computes it: ratio of means, not the mean of
    per-sample ratios.
    """
    if not np.isfinite(real_score) or real_score == 0:
        raise ValueError(f"real CLIP score must be finite and non-zero, got {real_score!r}")
    return float(generated_score) / float(real_score)


# --------------------------------------------------------------------------------------------
# Signal-level metrics
# --------------------------------------------------------------------------------------------


def heart_rates(signals, fs: float = FS) -> np.ndarray:
    """Heart rate of each ECG with the project's WFDB XQRS detector, NaN where none is found.

    Runs `diffusets_jax.data_pipelines.records.detect_heart_rate()` (upsampling to 500 Hz, XQRS on the first
    plausible leads of II, I, V5, ..., `60 / mean(RR)`, plausible range 20-300 bpm) on each ECG.
    The official `detect_hr` runs XQRS at 102.4 Hz and crashes when no lead has a beat; here
    that case, and ECGs with non-finite samples, give NaN (counted by `heart_rate_mae()`).

    Args:
        signals: `(N, L, 12)` or `(L, 12)` ECGs in mV, `LEADS` order, at `fs` Hz.
        fs: sampling frequency in Hz (102.4 for model outputs).

    Returns:
        `(N,)` float64 heart rates in bpm, NaN for undetectable rhythms (flat or noise-only).

    Raises:
        ValueError: wrong shape.

    Source: official `test_scripts/batch_hr_test.py::detect_hr`.
    """
    from diffusets_jax.data_pipelines.records import RecordError, detect_heart_rate  # data_pipelines imports wfdb

    batch = _signals(signals, "signals")
    rates = np.full(len(batch), np.nan)
    for i, ecg in enumerate(batch):
        if not np.isfinite(ecg).all():
            continue
        try:
            rates[i] = detect_heart_rate(ecg, fs, record_id=f"ecg {i}")
        except RecordError:
            pass  # no lead with >= 2 beats at a plausible rate
    return rates


def heart_rate_mae(requested, measured) -> dict[str, float | int]:
    """Mean absolute error (bpm) between requested (conditioning) and measured heart rates.

    ECGs whose measured rate is NaN (no rhythm detected, see `heart_rates()`) are left out
    of the mean and counted in `n_undetected`; report both, since a generator producing flat
    lines would otherwise look perfect. The official protocol averages per condition first
    (many samples per condition); pass per-condition subsets to get those means.

    Args:
        requested: `(N,)` conditioning heart rates in bpm (finite).
        measured: `(N,)` measured heart rates in bpm, NaN where undetected.

    Returns:
        `{'mae': bpm (NaN if nothing was detected), 'n_detected': int, 'n_undetected': int}`.

    Raises:
        ValueError: different shapes or non-finite requested rates.

    Source: official `batch_hr_test.py` (`mean(|HR_gen - HR_cond|)`); SE-Diff MAE_HR.
    """
    requested = np.asarray(requested, dtype=np.float64).reshape(-1)
    measured = np.asarray(measured, dtype=np.float64).reshape(-1)
    if requested.shape != measured.shape:
        raise ValueError(f"requested {requested.shape} and measured {measured.shape} differ in length")
    if not np.isfinite(requested).all():
        raise ValueError("requested heart rates must be finite")
    detected = np.isfinite(measured)
    mae = float(np.mean(np.abs(measured[detected] - requested[detected]))) if detected.any() else float("nan")
    return {"mae": mae, "n_detected": int(detected.sum()), "n_undetected": int((~detected).sum())}


def paired_errors(real, generated) -> dict[str, float]:
    """SE-Diff paired signal errors between each generated ECG and the real ECG of its condition.

    * `mae` = mean over records, samples and leads of `|generated - real|`, in mV.
    * `nrmse` = mean over (record, lead) of `RMSE_t(generated - real) / (max_t real - min_t real)`,
      i.e. the RMSE of each lead normalised by the peak-to-peak range of the real lead
      (unitless). Leads whose real range is 0 (flat) are left out; NaN if all are.

    The SE-Diff paper does not state its normaliser; range normalisation per lead is the common
    NRMSE definition and is the one used here.

    Args:
        real: `(N, L, 12)` ground-truth ECGs in mV (the records the conditions came from).
        generated: same shape, generated ECG `i` paired with `real[i]`.

    Returns:
        `{'mae': mV, 'nrmse': unitless}`.

    Raises:
        ValueError: shapes differ or are not `(N, L, 12)`.

    Source: SE-Diff (ICLR 2026, arXiv:2511.09895) signal-level metrics ("MAE and NRMSE, paired
    with the ground truth").
    """
    real = _signals(real, "real")
    generated = _signals(generated, "generated")
    if real.shape != generated.shape:
        raise ValueError(f"real {real.shape} and generated {generated.shape} must have the same shape")
    difference = generated - real
    rmse = np.sqrt(np.mean(difference**2, axis=1))  # (N, 12)
    value_range = np.ptp(real, axis=1)  # (N, 12)
    usable = value_range > 0
    nrmse = float(np.mean(rmse[usable] / value_range[usable])) if usable.any() else float("nan")
    return {"mae": float(np.mean(np.abs(difference))), "nrmse": nrmse}


#: Limb-lead identities, each as the residual that is 0 for a consistent ECG (mV).
def lead_identity_residuals(signals) -> np.ndarray:
    """Einthoven/Goldberger residuals of each ECG sample, `(N, L, 4)` in mV (`leads.identity_residuals`).

    Args:
        signals: `(N, L, 12)` or `(L, 12)` ECGs in mV, `LEADS` order.

    Raises:
        ValueError: wrong shape.
    """
    return identity_residuals(_signals(signals, "signals"))


def lead_residuals(signals) -> dict[str, float]:
    """Root-mean-square limb-lead identity residuals in mV, per identity and overall.

    Returns:
        `{identity: rms}` for each of `LEAD_IDENTITIES` (RMS over all ECGs and samples) and
        `'overall'`: RMS over all four identities together.

    Source: Einthoven's law and Goldberger's augmented-lead definitions; reported as the
    "frontal-identity RMSE" in the third-party SE-Diff re-evaluation of nvelingker/DiffuSETS_Exp.
    """
    residuals = lead_identity_residuals(signals)
    result = {name: float(np.sqrt(np.mean(residuals[..., j] ** 2))) for j, name in enumerate(LEAD_IDENTITIES)}
    result["overall"] = float(np.sqrt(np.mean(residuals**2)))
    return result


# --------------------------------------------------------------------------------------------
# Beat-level intervals (optional dependency)
# --------------------------------------------------------------------------------------------


def _import_neurokit2():
    try:
        import neurokit2
    except ImportError as err:
        raise ImportError(
            f"interval measurement needs NeuroKit2: pip install {NEUROKIT2_REQUIREMENT} "
            "(0.2.13 requires pandas < 3 and conflicts with this project)"
        ) from err
    return neurokit2


INTERVALS = ("pr", "qrs", "qt")


def measure_intervals(signals, fs: float = FS, lead: str = "II") -> dict[str, np.ndarray]:
    """Median PR, QRS and QT intervals (ms) of each ECG from NeuroKit2's delineation.

    The lead is upsampled to `DELINEATION_FS` = 500 Hz (`scipy.signal.resample_poly`), cleaned
    with `nk.ecg_clean`, R peaks found with `nk.ecg_peaks` and waves delineated with
    `nk.ecg_delineate(method='prominence')` (Emrich et al. 2023). Per beat: PR = QRS onset - P onset, QRS = QRS offset -
    QRS onset, QT = T offset - QRS onset; the per-ECG value is the median over beats where both
    points were found.

    Args:
        signals: `(N, L, 12)` or `(L, 12)` ECGs in mV at `fs` Hz.
        fs: sampling frequency in Hz.
        lead: lead name in `LEADS` (default II, the usual rhythm lead).

    Returns:
        `{'pr', 'qrs', 'qt'}` -> `(N,)` float64 ms, NaN where the interval could not be measured.

    Raises:
        ImportError: NeuroKit2 is not installed (message names `NEUROKIT2_REQUIREMENT`).
        ValueError: wrong shape or unknown lead.
    """
    nk = _import_neurokit2()
    if lead not in LEADS:
        raise ValueError(f"unknown lead {lead!r}; expected one of {LEADS}")
    batch = _signals(signals, "signals")[..., LEADS.index(lead)]
    ratio = Fraction(DELINEATION_FS / fs).limit_denominator(1000)
    rate = fs * ratio.numerator / ratio.denominator
    result = {name: np.full(len(batch), np.nan) for name in INTERVALS}
    for i, x in enumerate(batch):
        if not np.isfinite(x).all() or np.ptp(x) == 0:
            continue
        x = scipy.signal.resample_poly(x, ratio.numerator, ratio.denominator)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # NeuroKit warns on short/noisy signals and pandas 3
                cleaned = nk.ecg_clean(x, sampling_rate=rate)
                _, peaks = nk.ecg_peaks(cleaned, sampling_rate=rate)
                if len(peaks["ECG_R_Peaks"]) < 2:
                    continue
                _, waves = nk.ecg_delineate(cleaned, peaks, sampling_rate=rate, method=DELINEATION_METHOD)
        except Exception:  # NeuroKit raises assorted errors (ValueError, IndexError) on odd signals
            continue
        points = {key: np.asarray(value, dtype=np.float64) for key, value in waves.items()}
        start_end = {
            "pr": ("ECG_P_Onsets", "ECG_R_Onsets"),
            "qrs": ("ECG_R_Onsets", "ECG_R_Offsets"),
            "qt": ("ECG_R_Onsets", "ECG_T_Offsets"),
        }
        for name, (start, end) in start_end.items():
            if start not in points or end not in points or len(points[start]) != len(points[end]):
                continue
            durations = (points[end] - points[start]) / rate * 1000.0
            durations = durations[np.isfinite(durations) & (durations > 0)]
            if durations.size:
                result[name][i] = float(np.median(durations))
    return result


def interval_errors(real, generated, fs: float = FS, lead: str = "II") -> dict[str, dict[str, float]]:
    """SE-Diff beat-level errors: median |interval(generated) - interval(real)| over pairs, in ms.

    Intervals come from `measure_intervals()` (NeuroKit2 delineation of `lead`); a pair
    counts for an interval only if it was measured in both ECGs.

    Args:
        real: `(N, L, 12)` ground-truth ECGs in mV at `fs` Hz.
        generated: same shape, paired row by row with `real`.
        fs: sampling frequency in Hz.
        lead: delineated lead.

    Returns:
        `{'pr'|'qrs'|'qt': {'median_abs_error_ms', 'n_pairs'}}`; the error is NaN if no pair
        was measured in both.

    Raises:
        ImportError: NeuroKit2 missing (install `NEUROKIT2_REQUIREMENT`).
        ValueError: shapes differ.

    Source: SE-Diff (ICLR 2026, arXiv:2511.09895) beat-level metrics (median errors of PR, QRSd,
    QT; SE-Diff's own delineator is not released, so values are comparable within this project
    only).
    """
    real_array, generated_array = _signals(real, "real"), _signals(generated, "generated")
    if real_array.shape != generated_array.shape:
        raise ValueError(f"real {real_array.shape} and generated {generated_array.shape} must have the same shape")
    _import_neurokit2()  # fail before any work
    real_intervals = measure_intervals(real_array, fs, lead)
    generated_intervals = measure_intervals(generated_array, fs, lead)
    result = {}
    for name in INTERVALS:
        errors = np.abs(generated_intervals[name] - real_intervals[name])
        errors = errors[np.isfinite(errors)]
        result[name] = {
            "median_abs_error_ms": float(np.median(errors)) if errors.size else float("nan"),
            "n_pairs": int(errors.size),
        }
    return result
