"""Heart-rate augmentation of processed ECGs by time-warping.

A 10 s ECG resampled in time by a factor `s` (`s > 1` slower, `s < 1` faster) is an ECG of the
same morphology at heart rate `hr / s`. With a few hundred training ECGs, mostly at 60-90 bpm,
this gives the diffusion model the same patient at many rates, so that the heart-rate condition is
learnable (DiffuSETS trains on 794 k ECGs and needs no such help). QRS and QT stretch with the
rate here, which real hearts do only partly: a documented limitation of the augmentation.

Slower (`s >= 1`): the first 1024 samples of the stretched signal. Faster (`s < 1`): the
compressed signal is shorter than 10 s and is continued by itself from its start, joined by a
short linear crossfade (`CROSSFADE` samples) so that the baseline does not jump; the one beat
interval at the joint is irregular.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import resample

from diffusets_jax.constants import NUM_SAMPLES

#: Samples (at 102.4 Hz) over which a compressed signal fades into its own start.
CROSSFADE = 8


def time_warp(signal: np.ndarray, s: float) -> np.ndarray:
    """`signal` `(1024, L)` mV time-stretched by `s` (0 < s), back as `(1024, L)` float32.

    Raises ValueError for a signal of another length or `s` outside [0.5, 2].
    """
    signal = np.asarray(signal, np.float32)
    if signal.ndim != 2 or signal.shape[0] != NUM_SAMPLES:
        raise ValueError(f"time_warp expects a ({NUM_SAMPLES}, leads) signal, got {signal.shape}")
    if not 0.5 <= s <= 2.0:
        raise ValueError(f"time-warp factor must be in [0.5, 2], got {s}")
    length = int(round(NUM_SAMPLES * s))
    warped = resample(signal, length, axis=0).astype(np.float32)
    if length >= NUM_SAMPLES:
        return warped[:NUM_SAMPLES]
    out = np.empty_like(signal)
    out[:length] = warped
    fade = np.linspace(0.0, 1.0, CROSSFADE, dtype=np.float32)[:, None]
    filled = length
    while filled < NUM_SAMPLES:
        piece = warped[: NUM_SAMPLES - filled + CROSSFADE]
        n = len(piece) - CROSSFADE
        joint = out[filled - CROSSFADE : filled]
        out[filled - CROSSFADE : filled] = (1.0 - fade) * joint + fade * piece[:CROSSFADE]
        out[filled : filled + n] = piece[CROSSFADE:]
        filled += n
    return out


def augment_heart_rate(
    arrays: dict[str, np.ndarray], copies: int, s_range: tuple[float, float], hr_range: tuple[float, float], seed: int
) -> dict[str, np.ndarray]:
    """`arrays` (fields of a processed set, `signal` `(N, 1024, 12)`, `heart_rate` `(N,)` bpm) with
    `copies` time-warped copies of each record appended.

    Each copy draws `s` log-uniformly from `s_range`, clipped so that the new rate `hr / s` stays
    in `hr_range` (bpm); every other field is copied. Deterministic in `seed`. Returns new arrays
    of `N * (copies + 1)` rows, the originals first.
    """
    if copies <= 0:
        return arrays
    rng = np.random.default_rng(seed)
    hr = np.asarray(arrays["heart_rate"], np.float64)
    n = len(hr)
    lo, hi = np.log(s_range[0]), np.log(s_range[1])
    s = np.exp(rng.uniform(lo, hi, size=(copies, n)))
    s = np.clip(s, hr / hr_range[1], hr / hr_range[0])  # hr / s within hr_range
    s = np.clip(s, 0.5, 2.0)
    out = {key: np.concatenate([value] * (copies + 1)) for key, value in arrays.items()}
    signals = [time_warp(arrays["signal"][i], float(s[c, i])) for c in range(copies) for i in range(n)]
    out["signal"][n:] = np.stack(signals)
    out["heart_rate"][n:] = (hr[None, :] / s).reshape(-1).astype(out["heart_rate"].dtype)
    return out
