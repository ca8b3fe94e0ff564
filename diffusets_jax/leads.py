"""The frontal-plane lead identities: III, aVR, aVL and aVF are fixed combinations of I and II.

Einthoven: III = II - I. Goldberger: aVR = -(I + II) / 2, aVL = I - II / 2, aVF = II - I / 2.
A recorded ECG obeys them up to noise; a generator that learnt the twelve leads separately does
not (`evaluation.metrics.lead_residuals` measures by how much).
"""

from __future__ import annotations

import numpy as np

from diffusets_jax.constants import LEADS

I, II, III, AVR, AVL, AVF = (LEADS.index(name) for name in ("I", "II", "III", "aVR", "aVL", "aVF"))


def derive_limb_leads(signals):
    """`signals` `(..., L, 12)` in mV (LEADS order) with III, aVR, aVL, aVF recomputed from I and II.

    Works on NumPy and JAX arrays (returns the same kind); the precordial leads and I, II are
    unchanged. Raises ValueError if the last axis is not the 12 leads.
    """
    if signals.shape[-1] != len(LEADS):
        raise ValueError(f"signals must have {len(LEADS)} leads on the last axis, got shape {signals.shape}")
    lead_i, lead_ii = signals[..., I], signals[..., II]
    derived = {III: lead_ii - lead_i, AVR: -(lead_i + lead_ii) / 2, AVL: lead_i - lead_ii / 2, AVF: lead_ii - lead_i / 2}
    if isinstance(signals, np.ndarray):
        out = signals.copy()
        for index, lead in derived.items():
            out[..., index] = lead
        return out
    for index, lead in derived.items():
        signals = signals.at[..., index].set(lead)
    return signals
