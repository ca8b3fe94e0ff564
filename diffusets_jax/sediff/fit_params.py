"""Per-class ECGSYN wave parameters fitted to class-mean real beats: SE-Diff's simulator prior.

SE-Diff conditions its simulator losses on per-class McSharry parameters
`eta_class = {theta, a, b}` for the P, Q, R, S, T waves, "fitted offline to representative real
beats" (SE-Diff, Wang et al., ICLR 2026, arXiv:2511.09895, Stage 2; no per-class table is
published); the official `simulator_prior.pkl` is not released. This module rebuilds such a
prior from processed datasets:

1. **Beats.** For each record of the training folds: baseline removal (0.5 Hz 2nd-order
   Butterworth high-pass, zero phase), upsampling of the 102.4 Hz signal by 5 to 512 Hz, R peaks by
   WFDB's XQRS (`wfdb.processing.xqrs_detect`) on lead II (retried on lead II rescaled to 2 mV
   peak-to-peak, as `diffusets_jax.data_pipelines.records.detect_heart_rate()`), each peak moved to the
   largest positive deflection of lead II within +-40 ms (the negative one for records whose QRS
   is almost all negative there, `R_POLARITY_RATIO`), and windows
   `[R - 20, R + 40]` samples at 102.4 Hz (61 samples, SE-Diff's beat) cut from the 512 Hz signal
   (sub-sample R alignment). A record's mean beat is the mean of its beats.
2. **Classes.** `diffusets_jax.conditions.condition_labels()` (curated keyword
   classes) plus `diffusets_jax.conditions.EXTRA_CLASS_KEYWORDS` (SE-Diff classes and common statements the local
   data holds) plus `all`; a class is kept if it has at least `min_records` records with beats.
   The class-mean beat is the mean of its records' mean beats (each record counts once).
3. **Fit.** Per class and lead, `theta`, `a`, `b` (and a baseline offset in mV) minimise the
   MSE between `diffusets_jax.sediff.ecgsyn.simulate_beat()` at the class's median heart rate
   and the class-mean beat, by Adam (optax) on all classes and leads at once (vmap), starting from
   ECGSYN's default angles and widths with least-squares amplitudes (the beat is linear in `a`).

The result is `ecgsyn_params.json` next to this file; `load_class_params()` reads it.

Run: `diffusets-jax fit-ecgsyn --dataset data/ptbxl --dataset data/ludb`
(later `diffusets-jax fit-ecgsyn`).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.signal

from diffusets_jax.conditions import class_masks
from diffusets_jax.config import load_config
from diffusets_jax.constants import FS, LEADS
from diffusets_jax.sediff import ecgsyn

#: Shipped fit (see docs/se-diff.md, "ECGSYN prior").
DEFAULT_PARAMS_PATH = Path(__file__).resolve().parent / "ecgsyn_params.json"
FORMAT = "diffusets-jax/ecgsyn-class-params/1"

#: Beat extraction constants (see the module docstring).
UPSAMPLE = 5  # 102.4 Hz -> 512 Hz
HIGHPASS_HZ = 0.5
REFINE_S = 0.04
RESCALED_PTP_MV = 2.0
#: The R peak is the largest positive deflection within +-REFINE_S of the XQRS detection unless the
#: record's median positive peak is below this fraction of its median negative one (QS complexes).
R_POLARITY_RATIO = 0.25
#: Optimiser defaults: Adam, cosine-decayed learning rate, on (theta rad, log b, a / A_SCALE, offset mV).
DEFAULT_STEPS = load_config("sediff").ecgsyn_fit.steps  # configs/sediff.py
LEARNING_RATE = 0.02
A_SCALE = 10.0
#: Smallest Gaussian width (rad) the fit may reach (the quadrature grid is 2 pi / 1024 = 0.006 rad).
MIN_B = 0.02


# --------------------------------------------------------------------------------------------
# Beats
# --------------------------------------------------------------------------------------------


def _xqrs(x: np.ndarray, fs: float) -> np.ndarray:
    import wfdb.processing

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(wfdb.processing.xqrs_detect(x, fs=fs, verbose=False), dtype=int)


def _prepared(signal: np.ndarray, fs: float) -> tuple[np.ndarray, float]:
    """High-passed (0.5 Hz, zero phase) signal upsampled by `UPSAMPLE`: `(L * 5, 12)`, its rate."""
    x = np.asarray(signal, np.float64)
    if x.ndim != 2 or x.shape[1] != len(LEADS):
        raise ValueError(f"signal must be (L, {len(LEADS)}) mV, got shape {x.shape}")
    sos = scipy.signal.butter(2, HIGHPASS_HZ, "highpass", fs=fs, output="sos")
    x = scipy.signal.sosfiltfilt(sos, x, axis=0)
    return scipy.signal.resample_poly(x, UPSAMPLE, 1, axis=0), fs * UPSAMPLE


def _peaks_upsampled(up: np.ndarray, fs_up: float, lead: str) -> np.ndarray:
    """R peaks (indices into the upsampled signal) by XQRS, refined as described in `r_peaks()`."""
    ref = up[:, LEADS.index(lead)]
    peaks = _xqrs(ref, fs_up)
    if peaks.size < 2:
        low, high = np.percentile(ref, [0.5, 99.5])
        if high > low:
            peaks = _xqrs(ref * (RESCALED_PTP_MV / (high - low)), fs_up)
    if peaks.size == 0:
        return peaks
    half = int(round(REFINE_S * fs_up))
    windows = [slice(max(0, p - half), min(len(ref), p + half + 1)) for p in peaks]
    # R = the positive peak unless the record's QRS in this lead is (almost) all negative (QS)
    positive = np.median([ref[w].max() for w in windows])
    negative = np.median([-ref[w].min() for w in windows])
    polarity = 1.0 if positive >= R_POLARITY_RATIO * negative else -1.0
    return np.unique([w.start + int(np.argmax(polarity * ref[w])) for w in windows])


def r_peaks(signal: np.ndarray, fs: float = FS, lead: str = "II") -> np.ndarray:
    """R-peak times of one 12-lead ECG, in samples at `fs` (fractional: located at `5 fs`).

    Args:
        signal: `(L, 12)` mV at `fs` Hz, `LEADS` order. lead: detection lead.

    Returns:
        `(n,)` float64 sample positions, ascending (empty if XQRS finds nothing).

    Method: module docstring, step 1 (XQRS via `wfdb.processing.xqrs_detect` on the high-passed
    lead upsampled 5x, retried rescaled; each peak moved to the largest positive deflection within
    +-40 ms, or the negative one for a record with QS complexes in `lead`).
    """
    up, fs_up = _prepared(signal, fs)
    return _peaks_upsampled(up, fs_up, lead) / UPSAMPLE


def record_beats(
    signal: np.ndarray,
    fs: float = FS,
    lead: str = "II",
    length: int = ecgsyn.BEAT_LENGTH,
    r_index: int = ecgsyn.BEAT_R_INDEX,
) -> np.ndarray:
    """R-aligned beats of one 12-lead ECG.

    Args:
        signal: `(L, 12)` mV at `fs` Hz (102.4 for processed sets), `LEADS` order.
        fs: sampling rate in Hz. lead: lead for R detection (II).
        length, r_index: beat window (61 samples, R at 20: SE-Diff's `[R - 20, R + 40]`).

    Returns:
        `(n_beats, length, 12)` float32 mV, baseline removed; `n_beats` may be 0 (no beat
        detected, or none with its whole window inside the record).

    Method: `r_peaks()`; the windows are cut from the 5x upsampled signal, so beats are aligned
    to 1/(5 fs) s, not 1/fs (every 5th sample from `R - 5 r_index`).
    """
    up, fs_up = _prepared(signal, fs)
    peaks = _peaks_upsampled(up, fs_up, lead)
    start = peaks - r_index * UPSAMPLE
    stop = start + (length - 1) * UPSAMPLE + 1
    keep = (start >= 0) & (stop <= len(up))
    beats = [up[s:e:UPSAMPLE] for s, e in zip(start[keep], stop[keep])]
    return np.asarray(beats, np.float32).reshape(-1, length, len(LEADS))


@dataclass
class ClassBeat:
    """Class-mean beat of the records of one class."""

    beat: np.ndarray  # (61, 12) mV, mean over records of each record's mean beat
    records: int
    beats: int
    heart_rate: float  # bpm, median of the records' heart rates


def class_mean_beats(
    signals: np.ndarray,
    reports: Sequence[str],
    heart_rates: np.ndarray,
    min_records: int = 5,
    fs: float = FS,
    progress: bool = False,
) -> tuple[dict[str, ClassBeat], int]:
    """Class-mean R-aligned beats of a set of ECGs.

    Args:
        signals: `(N, L, 12)` mV at `fs` Hz. reports: `N` report strings.
        heart_rates: `(N,)` bpm (the processed set's measured rates).
        min_records: keep classes with at least this many records with beats.

    Returns:
        `({class: ClassBeat}, records_without_beats)`.
    """
    from tqdm import tqdm

    per_record = [record_beats(s, fs) for s in tqdm(signals, desc="beats", unit="rec", disable=not progress)]
    has_beats = np.array([len(b) > 0 for b in per_record])
    means = np.stack(
        [b.mean(0) if len(b) else np.zeros((ecgsyn.BEAT_LENGTH, len(LEADS)), np.float32) for b in per_record]
    )
    counts = np.array([len(b) for b in per_record])
    out = {}
    for name, mask in class_masks(list(reports)).items():
        mask = mask & has_beats
        if mask.sum() >= min_records:
            out[name] = ClassBeat(
                beat=means[mask].mean(0),
                records=int(mask.sum()),
                beats=int(counts[mask].sum()),
                heart_rate=float(np.median(np.asarray(heart_rates)[mask])),
            )
    return out, int((~has_beats).sum())


# --------------------------------------------------------------------------------------------
# Fit
# --------------------------------------------------------------------------------------------


def _beat(params: ecgsyn.WaveParams, heart_rate, offset):
    return ecgsyn.simulate_beat(params, heart_rate) + offset


def _to_params(z) -> ecgsyn.WaveParams:
    return ecgsyn.WaveParams(theta=z["theta"], a=z["a"] * A_SCALE, b=MIN_B + jnp.exp(z["log_b"]))


def _lstsq_init(target: jax.Array, heart_rate) -> dict:
    """Default angles and widths; amplitudes and offset by least squares (the beat is linear in a)."""
    default = ecgsyn.default_params()
    basis = jax.vmap(lambda a: ecgsyn.simulate_beat(default._replace(a=a), heart_rate))(jnp.eye(5))  # (5, 61)
    design = jnp.concatenate([basis, jnp.ones((1, basis.shape[1]))]).T  # (61, 6)
    # ridge toward the default amplitudes keeps waves that the window barely sees (P) well posed
    lam = 1e-3
    lhs = design.T @ design + lam * jnp.eye(6)
    rhs = design.T @ target + lam * jnp.concatenate([default.a, jnp.zeros(1)])
    coef = jnp.linalg.solve(lhs, rhs)
    return {"theta": default.theta, "log_b": jnp.log(default.b - MIN_B), "a": coef[:5] / A_SCALE, "offset": coef[5]}


def _default_mse(target, heart_rate):
    """MSE of the default ECGSYN parameters with the best constant offset."""
    beat = ecgsyn.simulate_beat(ecgsyn.default_params(), heart_rate)
    residual = target - beat
    return jnp.mean((residual - residual.mean()) ** 2)


def fit_beats(targets, heart_rates, steps: int = DEFAULT_STEPS, learning_rate: float = LEARNING_RATE):
    """Fit ECGSYN wave parameters to beats by Adam on the MSE, all beats at once.

    Args:
        targets: `(K, 61)` beats in mV (R at index 20, 102.4 Hz).
        heart_rates: `(K,)` bpm at which each beat is simulated (the parameters are stored at the
            60 bpm reference and scaled by `ecgsyn.scale_for_heart_rate()`).
        steps: Adam steps (cosine-decayed learning rate).

    Returns:
        dict of NumPy arrays: `theta, a, b (K, 5)`, `offset (K,)` mV, `mse (K,)` and
        `mse_default (K,)` mV^2 (default ECGSYN parameters with their best offset), `r (K,)`
        Pearson correlation of the fitted and target beats, `fitted (K, 61)` mV.
    """
    targets = jnp.asarray(targets, jnp.float32)
    heart_rates = jnp.asarray(heart_rates, jnp.float32)
    z0 = jax.jit(jax.vmap(_lstsq_init))(targets, heart_rates)
    schedule = optax.cosine_decay_schedule(learning_rate, max(1, steps), alpha=0.05)
    optimizer = optax.adam(schedule)

    def loss_one(z, target, hr):
        return jnp.mean((_beat(_to_params(z), hr, z["offset"]) - target) ** 2)

    def loss(z):
        return jnp.sum(jax.vmap(loss_one)(z, targets, heart_rates))  # sum: beats are independent

    @jax.jit
    def run(z):
        def step(carry, _):
            z, opt_state = carry
            value, grads = jax.value_and_grad(loss)(z)
            updates, opt_state = optimizer.update(grads, opt_state, z)
            return (optax.apply_updates(z, updates), opt_state), value

        (z, _), history = jax.lax.scan(step, (z, optimizer.init(z)), None, length=steps)
        return z, history

    z, _ = run(z0)
    params = jax.vmap(_to_params)(z)
    fitted = jax.jit(jax.vmap(_beat))(params, heart_rates, z["offset"])
    mse = jnp.mean((fitted - targets) ** 2, axis=1)
    centred = lambda v: v - v.mean(1, keepdims=True)  # noqa: E731
    r = jnp.sum(centred(fitted) * centred(targets), 1) / jnp.sqrt(
        jnp.sum(centred(fitted) ** 2, 1) * jnp.sum(centred(targets) ** 2, 1)
    )
    result = {
        "theta": params.theta,
        "a": params.a,
        "b": params.b,
        "offset": z["offset"],
        "mse": mse,
        "mse_default": jax.jit(jax.vmap(_default_mse))(targets, heart_rates),
        "r": r,
        "fitted": fitted,
    }
    return {k: np.asarray(v) for k, v in result.items()}


def fit_classes(
    class_beats: Mapping[str, ClassBeat], steps: int = DEFAULT_STEPS, learning_rate: float = LEARNING_RATE
) -> dict[str, dict]:
    """Fit every (class, lead) of `class_beats` at once; returns the JSON `classes` entries."""
    names = list(class_beats)
    targets = np.concatenate([class_beats[n].beat.T for n in names])  # (C * 12, 61)
    rates = np.repeat([class_beats[n].heart_rate for n in names], len(LEADS))
    fit = fit_beats(targets, rates, steps, learning_rate)
    out = {}
    for c, name in enumerate(names):
        rows = slice(c * len(LEADS), (c + 1) * len(LEADS))
        cb = class_beats[name]
        leads = {}
        for i, lead in enumerate(LEADS):
            k = c * len(LEADS) + i
            leads[lead] = {
                "theta": _round(fit["theta"][k]),
                "a": _round(fit["a"][k]),
                "b": _round(fit["b"][k]),
                "offset_mv": _round(fit["offset"][k]),
                "mse_mv2": _round(fit["mse"][k], 8),
                "mse_default_mv2": _round(fit["mse_default"][k], 8),
                "r": _round(fit["r"][k]),
            }
        out[name] = {
            "records": cb.records,
            "beats": cb.beats,
            "heart_rate_bpm": round(cb.heart_rate, 2),
            "mse_mv2": _round(fit["mse"][rows].mean(), 8),
            "mse_default_mv2": _round(fit["mse_default"][rows].mean(), 8),
            "r_min": _round(fit["r"][rows].min()),
            "leads": leads,
            "mean_beat_mv": {lead: _round(cb.beat[:, i], 4) for i, lead in enumerate(LEADS)},
        }
    return out


def _round(x, digits: int = 6):
    x = np.asarray(x, np.float64)
    return round(float(x), digits) if x.ndim == 0 else [round(float(v), digits) for v in x]


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


@dataclass
class ClassParams:
    """Fitted simulator prior of one class, ready for `ecgsyn.simulate_beat()` (vmap over leads)."""

    params: ecgsyn.WaveParams  # leaves (12, 5): theta rad, a paper units, b rad, at 60 bpm
    offset: np.ndarray  # (12,) mV
    heart_rate: float  # bpm the class was fitted at
    mean_beat: np.ndarray  # (61, 12) mV, the class-mean real beat
    records: int
    beats: int


def load_class_params(path: str | Path | None = None) -> dict[str, ClassParams]:
    """Read `ecgsyn_params.json` (default: the shipped `DEFAULT_PARAMS_PATH`).

    Raises:
        ValueError: the file is not of format `FORMAT`.
    """
    data = json.loads(Path(path or DEFAULT_PARAMS_PATH).read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: format {data.get('format')!r}, expected {FORMAT!r}")
    out = {}
    for name, entry in data["classes"].items():
        leads = [entry["leads"][lead] for lead in LEADS]
        params = ecgsyn.WaveParams(
            *(jnp.asarray([lead[k] for lead in leads], jnp.float32) for k in ("theta", "a", "b"))
        )
        out[name] = ClassParams(
            params=params,
            offset=np.array([lead["offset_mv"] for lead in leads], np.float32),
            heart_rate=entry["heart_rate_bpm"],
            mean_beat=np.array([entry["mean_beat_mv"][lead] for lead in LEADS], np.float32).T,
            records=entry["records"],
            beats=entry["beats"],
        )
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fit_datasets(
    dirs: Sequence[str | Path],
    folds: Sequence[int] = tuple(range(1, 9)),
    min_records: int = 5,
    steps: int = DEFAULT_STEPS,
    progress: bool = True,
) -> dict:
    """Class-mean beats of the processed sets `dirs` (folds `folds`) and their ECGSYN fit.

    Returns the JSON document (see `main()`). Raises as
    `diffusets_jax.data_pipelines.processed.load_processed()`, and ValueError if no class has `min_records`.
    """
    from diffusets_jax.data_pipelines.processed import load_processed

    signals, reports, rates, sources = [], [], [], []
    for d in dirs:
        data = load_processed(d, folds=folds)
        signals.append(data.signals)
        reports += list(data.reports)
        rates.append(data.heart_rate)
        info = json.loads((Path(d) / "info.json").read_text())
        sources.append(
            {
                "dir": str(d),
                "source": info.get("source"),
                "records_in_folds": len(data),
                "dataset_sha256": _sha256(Path(d) / "dataset.npz"),
            }
        )
    start = time.perf_counter()
    class_beats, without = class_mean_beats(
        np.concatenate(signals), reports, np.concatenate(rates), min_records=min_records, progress=progress
    )
    beats_s = time.perf_counter() - start
    if not class_beats:
        raise ValueError(f"no class has >= {min_records} records with detected beats in {list(map(str, dirs))}")
    start = time.perf_counter()
    classes = fit_classes(class_beats, steps)
    fit_s = time.perf_counter() - start
    return {
        "format": FORMAT,
        "description": (
            "ECGSYN (McSharry et al. 2003) P, Q, R, S, T wave parameters per class and lead, "
            "fitted to class-mean R-aligned beats (61 samples at 102.4 Hz, R at index 20) by "
            "diffusets_jax.sediff.fit_params; SE-Diff's simulator prior."
        ),
        "units": {
            "theta": "rad, at 60 bpm (scale with ecgsyn.scale_for_heart_rate)",
            "a": "McSharry units (z per rad per s); mV = z * ecgsyn.MV_PER_UNIT",
            "b": "rad, at 60 bpm",
            "offset_mv": "mV",
            "mse_mv2": "mV^2",
            "mean_beat_mv": "mV",
            "heart_rate_bpm": "bpm (class median; the beat was simulated at this rate)",
        },
        "waves": list(ecgsyn.WAVES),
        "leads": list(LEADS),
        "mv_per_unit": ecgsyn.MV_PER_UNIT,
        "beat": {"length": ecgsyn.BEAT_LENGTH, "r_index": ecgsyn.BEAT_R_INDEX, "fs_hz": FS},
        "provenance": {
            "command": "diffusets-jax fit-ecgsyn "
            + " ".join(f"--dataset {d}" for d in dirs)
            + f" --steps {steps} --min-records {min_records}"
            + (f" --folds {','.join(map(str, folds))}" if tuple(folds) != tuple(range(1, 9)) else ""),
            "datasets": sources,
            "folds": list(map(int, folds)),
            "min_records": min_records,
            "records_without_beats": without,
            "steps": steps,
            "learning_rate": LEARNING_RATE,
            "beat_extraction_s": round(beats_s, 1),
            "fit_s": round(fit_s, 1),
            "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "versions": _versions(),
        },
        "classes": classes,
    }


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    return {name: md.version(name) for name in ("jax", "optax", "wfdb", "scipy")}


def dumps(document: dict) -> str:
    """JSON text with one line per list of numbers (the file is read by people too)."""
    text = json.dumps(document, indent=1)
    return re.sub(r"\[\s+([-+0-9.eE,\s]+?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


def format_table(document: dict) -> str:
    """Markdown table: class, records, beats, HR, fit MSE, default-parameter MSE, min lead r."""
    lines = [
        "| class | records | beats | HR (bpm) | fit MSE (mV^2) | default MSE (mV^2) | min lead r |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, c in document["classes"].items():
        lines.append(
            f"| {name} | {c['records']} | {c['beats']} | {c['heart_rate_bpm']:.0f} | {c['mse_mv2']:.5f} "
            f"| {c['mse_default_mv2']:.4f} | {c['r_min']:.3f} |"
        )
    return "\n".join(lines)
