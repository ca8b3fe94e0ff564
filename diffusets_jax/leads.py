"""The frontal-plane lead identities: III, aVR, aVL and aVF are fixed combinations of I and II.

Einthoven: III = II - I. Goldberger: aVR = -(I + II) / 2, aVL = I - II / 2, aVF = II - I / 2.
A recorded ECG obeys them up to noise; a generator that learnt the twelve leads separately does
not (`identity_residuals` says by how much; `evaluation.metrics.lead_residuals` summarises it, and
SE-Diff's inter-lead loss is its mean square).
"""

from __future__ import annotations

import numpy as np

from diffusets_jax.constants import LEADS

I, II, III, AVR, AVL, AVF = (LEADS.index(name) for name in ("I", "II", "III", "aVR", "aVL", "aVF"))
#: The identities `identity_residuals` returns, in its column order.
LEAD_IDENTITIES = ("III - (II - I)", "aVR + (I + II)/2", "aVL - (I - II/2)", "aVF - (II - I/2)")


def _check(signals) -> None:
    if signals.shape[-1] != len(LEADS):
        raise ValueError(f"signals must have {len(LEADS)} leads on the last axis, got shape {signals.shape}")


def derive_limb_leads(signals):
    """`signals` `(..., L, 12)` in mV (LEADS order) with III, aVR, aVL, aVF recomputed from I and II.

    Works on NumPy and JAX arrays (returns the same kind); the precordial leads and I, II are
    unchanged. Raises ValueError if the last axis is not the 12 leads.
    """
    _check(signals)
    lead_i, lead_ii = signals[..., I], signals[..., II]
    derived = {
        III: lead_ii - lead_i,
        AVR: -(lead_i + lead_ii) / 2,
        AVL: lead_i - lead_ii / 2,
        AVF: lead_ii - lead_i / 2,
    }
    if isinstance(signals, np.ndarray):
        out = signals.copy()
        for index, lead in derived.items():
            out[..., index] = lead
        return out
    for index, lead in derived.items():
        signals = signals.at[..., index].set(lead)
    return signals


def identity_residuals(signals):
    """Einthoven/Goldberger residuals `(..., L, 4)` in mV of `signals` `(..., L, 12)` (LEADS order).

    Columns follow `LEAD_IDENTITIES`: `III - (II - I)`, `aVR + (I + II)/2`, `aVL - (I - II/2)`,
    `aVF - (II - I/2)`. A recorded ECG has residuals at the noise level. Works on NumPy and JAX
    arrays (returns the same kind, differentiable under JAX). Raises ValueError if the last axis is
    not the 12 leads.
    """
    _check(signals)
    xp = signals.__array_namespace__()
    lead_i, lead_ii = signals[..., I], signals[..., II]
    return xp.stack(
        [
            signals[..., III] - (lead_ii - lead_i),
            signals[..., AVR] + (lead_i + lead_ii) / 2,
            signals[..., AVL] - (lead_i - lead_ii / 2),
            signals[..., AVF] - (lead_ii - lead_i / 2),
        ],
        axis=-1,
    )
