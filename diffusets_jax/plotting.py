"""12-lead ECG figures on ECG paper (matplotlib, Agg, no pyplot state).

Signals are `(num_samples, 12)` arrays in mV, leads in `constants.LEADS` order, 10 s long
(`(1024, 12)` at the project's 102.4 Hz). The figures are built on
`matplotlib.figure.Figure` directly, so nothing is registered with pyplot and nothing leaks
between calls; PNGs are rendered by Agg.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MultipleLocator

from .constants import DURATION_S, FS, LEADS, NUM_LEADS

#: Paper speed (mm per second) and gain (mm per mV) of the standard printout.
SPEED_MM_PER_S = 25.0
GAIN_MM_PER_MV = 10.0
#: Standard layout: rows of (lead names) shown in columns of 2.5 s, then a lead II rhythm strip.
LAYOUT = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
RHYTHM_LEAD = "II"
ROW_MM = 40.0  # vertical room per row: +-2 mV around the baseline before traces overlap
CAL_MM = 10.0  # left margin holding the 1 mV calibration pulse of each row
GRID_WIDTH_MM = CAL_MM + DURATION_S * SPEED_MM_PER_S  # 260 mm
GRID_HEIGHT_MM = (len(LAYOUT) + 1) * ROW_MM  # 160 mm
DPI = 150

_MINOR, _MAJOR, _TRACE = "#f6c8c8", "#e38b8b", "black"
_MM_PER_INCH = 25.4


def _check_signal(signal, fs: float, name: str = "signal") -> np.ndarray:
    signal = np.asarray(signal, dtype=np.float64)
    expected = (round(DURATION_S * fs), NUM_LEADS)
    if signal.shape != expected:
        raise ValueError(f"{name} must have shape {expected} (10 s at {fs} Hz, mV, leads {LEADS}), got {signal.shape}")
    return signal


def _paper_axes(fig: Figure, left_mm: float, bottom_mm: float, width_mm: float, height_mm: float):
    """Axes whose data unit is 1 mm of paper, with the 1 mm / 5 mm ECG grid."""
    fig_w, fig_h = (size * _MM_PER_INCH for size in fig.get_size_inches())
    ax = fig.add_axes((left_mm / fig_w, bottom_mm / fig_h, width_mm / fig_w, height_mm / fig_h))
    ax.set_xlim(0, width_mm)
    ax.set_ylim(0, height_mm)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MultipleLocator(5))
        axis.set_minor_locator(MultipleLocator(1))
    ax.grid(which="minor", color=_MINOR, linewidth=0.4)
    ax.grid(which="major", color=_MAJOR, linewidth=0.8)
    ax.set_axisbelow(True)
    ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
    for spine in ax.spines.values():
        spine.set_color(_MAJOR)
    return ax


def _trace(ax, values: np.ndarray, x0_mm: float, baseline_mm: float, fs: float) -> None:
    """Draw `values` (mV) from `x0_mm`, centred on `baseline_mm` by its median."""
    x = x0_mm + np.arange(len(values)) / fs * SPEED_MM_PER_S
    y = baseline_mm + (values - np.median(values)) * GAIN_MM_PER_MV
    ax.plot(x, y, color=_TRACE, linewidth=0.6, solid_joinstyle="round")


def plot_ecg(signal, fs: float = FS, title: str | None = None, path=None) -> Figure:
    """Standard clinical 12-lead printout of one 10 s ECG.

    Layout: 3 rows x 4 columns of 2.5 s segments (rows I/aVR/V1/V4, II/aVL/V2/V5,
    III/aVF/V3/V6; column k shows seconds 2.5k to 2.5(k+1) of its leads, as printouts do),
    then a full 10 s lead II rhythm strip. ECG paper: 1 mm minor / 5 mm major grid at
    25 mm/s and 10 mm/mV, drawn to true scale (the figure size is set in mm), a 1 mV
    calibration pulse at the start of each row, lead labels, the `title` (e.g. report /
    age / sex / HR) on top and the speed/gain caption at the bottom. Each trace is shifted
    vertically to its row baseline by its median (display only; amplitudes are unchanged).

    Args:
        signal: `(round(10 * fs), 12)` array in mV, leads in `LEADS` order;
            `(1024, 12)` at the default 102.4 Hz.
        fs: sampling frequency in Hz.
        title: caption text; long lines are wrapped.
        path: if given, the figure is saved there as PNG at `DPI` (150) dots per inch.

    Returns:
        The figure, 270 mm wide (260 mm of paper: 10 mm calibration + 250 mm for 10 s).

    Raises:
        ValueError: if `signal` does not have the expected shape.
    """
    signal = _check_signal(signal, fs)
    lead = {name: signal[:, i] for i, name in enumerate(LEADS)}
    lines = [line for text in (title or "").splitlines() for line in textwrap.wrap(text, 150)]
    left, right, bottom, top = 5.0, 5.0, 10.0, 6.0 + 5.0 * len(lines)
    width, height = left + GRID_WIDTH_MM + right, bottom + GRID_HEIGHT_MM + top
    fig = Figure(figsize=(width / _MM_PER_INCH, height / _MM_PER_INCH), dpi=DPI)
    ax = _paper_axes(fig, left, bottom, GRID_WIDTH_MM, GRID_HEIGHT_MM)

    segment_s = DURATION_S / 4
    rows = [[(name, k * segment_s, segment_s) for k, name in enumerate(row)] for row in LAYOUT]
    rows.append([(RHYTHM_LEAD, 0.0, DURATION_S)])
    for r, row in enumerate(rows):
        baseline = GRID_HEIGHT_MM - (r + 0.55) * ROW_MM
        cal = np.array([1, 3, 3, 8, 8, CAL_MM]), np.array([0, 0, 10, 10, 0, 0]) + baseline
        ax.plot(*cal, color=_TRACE, linewidth=0.8)
        for name, start_s, length_s in row:
            i0, i1 = round(start_s * fs), round((start_s + length_s) * fs)
            x0 = CAL_MM + start_s * SPEED_MM_PER_S
            _trace(ax, lead[name][i0 : i1 + 1], x0, baseline, fs)
            ax.text(x0 + 1.5, baseline + 11, name, fontsize=9, fontweight="bold")
            if start_s > 0:  # lead-change marker, as printed between columns
                ax.plot([x0, x0], [baseline - 4, baseline + 4], color=_TRACE, linewidth=0.8)

    for i, line in enumerate(lines):
        y_mm = height - 5.0 * (i + 1)
        fig.text(left / width, y_mm / height, line, fontsize=9, va="center")
    caption = f"{SPEED_MM_PER_S:g} mm/s, {GAIN_MM_PER_MV:g} mm/mV, fs {fs:g} Hz"
    fig.text(left / width, 4.0 / height, caption, fontsize=8, va="center")
    if path is not None:
        fig.savefig(Path(path), dpi=DPI, format="png")
    return fig


def plot_ecg_comparison(
    real, generated, titles: Sequence[str] | str | None = None, fs: float = FS, path=None
) -> Figure:
    """Compact side-by-side view: real ECGs (left) next to generated ones (right).

    Args:
        real, generated: `(N, round(10 * fs), 12)` or `(round(10 * fs), 12)` arrays in mV,
            leads in `LEADS` order; the 12 leads are stacked top to bottom, 3 mV apart.
        titles: one caption per pair (a single string when N is 1), e.g. the report.
        fs: sampling frequency in Hz.
        path: if given, the figure is saved there as PNG.

    Raises:
        ValueError: for a wrong shape, different N, or a wrong number of titles.
    """
    real, generated = np.asarray(real), np.asarray(generated)
    real = real[None] if real.ndim == 2 else real
    generated = generated[None] if generated.ndim == 2 else generated
    if len(real) != len(generated):
        raise ValueError(f"got {len(real)} real and {len(generated)} generated ECGs")
    titles = [titles] if isinstance(titles, str) else list(titles or [""] * len(real))
    if len(titles) != len(real):
        raise ValueError(f"got {len(titles)} titles for {len(real)} ECG pairs")

    spacing = 3.0
    t = np.arange(round(DURATION_S * fs)) / fs
    fig = Figure(figsize=(11, 3.6 * len(real)), dpi=DPI, layout="constrained")
    axes = fig.subplots(len(real), 2, squeeze=False, sharex=True, sharey=True)
    for i, pair in enumerate(zip(real, generated)):
        for j, (ecg, label) in enumerate(zip(pair, ("real", "generated"))):
            ecg = _check_signal(ecg, fs, name=label)
            ax = axes[i, j]
            offsets = -spacing * np.arange(NUM_LEADS)
            ax.plot(t, ecg - np.median(ecg, axis=0) + offsets, color=_TRACE, linewidth=0.5)
            ax.set_yticks(offsets, LEADS, fontsize=7)
            ax.grid(color=_MINOR, linewidth=0.5)
            ax.set_xlim(0, DURATION_S)
            ax.tick_params(labelsize=7)
            caption = f"{label}: {titles[i]}" if titles[i] and j == 0 else label
            ax.set_title(textwrap.shorten(caption, 90), fontsize=8, loc="left")
        axes[i, 0].set_ylabel(f"leads ({spacing:g} mV apart)", fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("time (s)", fontsize=8)
    if path is not None:
        fig.savefig(Path(path), dpi=DPI, format="png")
    return fig
