"""Evaluation report: `metrics.json` plus a readable `report.md` with PNG figures beside it.

Generic on purpose: it takes numbers computed elsewhere (`diffusets_jax.evaluation.metrics`
on evaluator features) and the signal arrays, computes only the cheap signal checks itself
(heart-rate error, limb-lead residuals, per-condition heart-rate error) and draws the figures
with matplotlib's object API (no pyplot state), like `diffusets_jax.plotting`.
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from diffusets_jax.constants import FS
from diffusets_jax.plotting import plot_ecg_comparison

from .metrics import LEAD_IDENTITIES, heart_rate_mae, lead_identity_residuals, lead_residuals

#: File names written into `out_dir`.
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
HEART_RATE_FIGURE = "heart_rate.png"
CONDITION_FIGURE = "per_condition.png"
EXAMPLES_FIGURE = "examples.png"
RESIDUAL_FIGURE = "lead_residuals.png"
DENOISING_FIGURE = "denoising_error.png"
DPI = 120


def _plain(value: Any) -> Any:
    """JSON-safe copy: NumPy scalars/arrays -> Python, NaN/inf -> None, Paths -> str."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{'rfid': {'fid': 1}}` -> `{'rfid.fid': 1}`; only scalar leaves are kept."""
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        elif isinstance(value, (int, float, np.integer, np.floating, bool, np.bool_)) or value is None:
            flat[name] = value
    return flat


def _format(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    value = float(value)
    return "–" if not math.isfinite(value) else f"{value:.4g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join(cell if isinstance(cell, str) else _format(cell) for cell in row) + " |" for row in rows
    ]
    return "\n".join(lines)


def _heart_rate_figure(requested: np.ndarray, measured: np.ndarray, path: Path) -> None:
    """Scatter of measured vs requested HR with the identity line; undetected ECGs are counted."""
    detected = np.isfinite(measured)
    fig = Figure(figsize=(5, 5), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    ax.scatter(requested[detected], measured[detected], s=10, alpha=0.6, label="ECG")
    values = np.concatenate([requested, measured[detected]])
    low, high = (float(values.min()) - 5, float(values.max()) + 5) if values.size else (40.0, 120.0)
    ax.plot([low, high], [low, high], color="black", linewidth=0.8, label="identity")
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_xlabel("requested heart rate (bpm)")
    ax.set_ylabel("measured heart rate (bpm, XQRS)")
    ax.set_title(f"{int(detected.sum())} detected, {int((~detected).sum())} undetected", fontsize=9)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=DPI, format="png")


def _condition_figure(per_condition: Mapping[str, Mapping[str, Any]], path: Path) -> list[str]:
    """One bar chart per numeric metric across conditions; returns the metrics drawn."""
    names = list(per_condition)
    metric_names = sorted(
        {
            key
            for row in per_condition.values()
            for key, value in _flatten(row).items()
            if value is not None and not isinstance(value, (bool, np.bool_))
        }
    )
    if not names or not metric_names:
        return []
    fig = Figure(figsize=(max(6, 0.5 * len(names) + 2), 2.4 * len(metric_names)), dpi=DPI, layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(metric_names), 1, sharex=True))
    for ax, metric in zip(axes, metric_names):
        heights = [_flatten(per_condition[name]).get(metric) for name in names]
        heights = [np.nan if h is None else float(h) for h in heights]
        ax.bar(range(len(names)), heights, color="#4c72b0")
        ax.set_ylabel(metric, fontsize=8)
        ax.grid(axis="y", linewidth=0.4)
    axes[-1].set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    fig.savefig(path, dpi=DPI, format="png")
    return metric_names


def _residual_figure(real: np.ndarray, generated: np.ndarray, path: Path) -> None:
    """Histogram of per-ECG RMS identity residual (all four identities) for real and generated."""
    per_ecg = {
        name: np.sqrt(np.mean(lead_identity_residuals(x) ** 2, axis=(1, 2)))
        for name, x in (("real", real), ("generated", generated))
    }
    fig = Figure(figsize=(6, 3.5), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    high = max(float(v.max()) for v in per_ecg.values())
    bins = np.linspace(0.0, high if high > 0 else 1e-3, 31)
    for name, values in per_ecg.items():
        ax.hist(values, bins=bins, alpha=0.6, label=f"{name} (N={len(values)})")
    ax.set_xlabel("RMS limb-lead identity residual per ECG (mV)")
    ax.set_ylabel("ECGs")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=DPI, format="png")


def _denoising_figure(denoising: Mapping[str, Mapping[str, float]], path: Path) -> None:
    """eps-MSE per timestep, model and Gaussian (Wiener) predictor, on a log scale."""
    t = [int(k) for k in denoising]
    fig = Figure(figsize=(5, 3.5), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    ax.semilogy(t, [v["eps_mse"] for v in denoising.values()], marker="o", label="model")
    ax.semilogy(
        t, [v["wiener"] for v in denoising.values()], linestyle="--", color="grey", label="Gaussian (Wiener) predictor"
    )
    ax.set_xlabel("timestep t")
    ax.set_ylabel("eps-MSE per latent value")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=DPI, format="png")


def write_report(
    out_dir,
    metrics: Mapping[str, Any],
    *,
    real_signals,
    generated_signals,
    requested_hr,
    measured_hr,
    labels: Mapping[str, Any] | None = None,
    titles: Sequence[str] | None = None,
    fs: float = FS,
    num_examples: int = 4,
    title: str = "DiffuSETS evaluation",
    denoising: Mapping[str, Mapping[str, float]] | None = None,
) -> Path:
    """Write `metrics.json`, `report.md` and its PNG figures into `out_dir`.

    Args:
        out_dir: directory (created if missing); existing files of the same names are overwritten.
        metrics: feature-level numbers, either flat (`{'fid': 3.1, ...}`, taken as the generated
            set's) or structured:
            `{'generated': {...}, 'real_reference': {...}, 'per_condition': {label: {...}}, ...}`.
            `real_reference` holds the real-vs-real value of each metric (e.g. FID between the
            real halves, CLIP score of the real ECGs) and is shown next to `generated`; nested
            dicts (e.g. the output of `rfid`) are flattened to `'rfid.fid'`. Other keys are
            copied to `metrics.json` untouched.
        real_signals: `(N, L, 12)` real ECGs in mV at `fs`; row `i` is the record whose
            condition generated ECG `i` used (for the side-by-side examples).
        generated_signals: `(M, L, 12)` generated ECGs in mV at `fs`.
        requested_hr: `(M,)` conditioning heart rates (bpm) of the generated ECGs.
        measured_hr: `(M,)` measured rates (bpm, NaN = undetected), e.g. `metrics.heart_rates`.
        labels: optional `{condition: (M,) bool mask}` over the generated ECGs (e.g.
            `conditions.condition_labels(reports)`); adds sample counts and per-condition HR MAE.
        titles: optional caption per generated ECG (report text / age / sex / HR) for the examples.
        fs: sampling frequency in Hz.
        num_examples: number of real/generated pairs drawn.
        title: heading of `report.md`.
        denoising: optional `{t: {'eps_mse', 'wiener'}}` (`evaluate.denoising_error`); adds a
            section with its table and plot.

    Returns:
        Path of `report.md`.

    Raises:
        ValueError: inconsistent lengths of `requested_hr`, `measured_hr`, label masks or
            `titles` with `generated_signals`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    real = np.asarray(real_signals, dtype=np.float64)
    generated = np.asarray(generated_signals, dtype=np.float64)
    requested = np.asarray(requested_hr, dtype=np.float64).reshape(-1)
    measured = np.asarray(measured_hr, dtype=np.float64).reshape(-1)
    if not len(requested) == len(measured) == len(generated):
        raise ValueError(
            f"got {len(generated)} generated ECGs, {len(requested)} requested and {len(measured)} measured heart rates"
        )
    if titles is not None and len(titles) != len(generated):
        raise ValueError(f"got {len(titles)} titles for {len(generated)} generated ECGs")
    masks = {name: np.asarray(mask, dtype=bool).reshape(-1) for name, mask in (labels or {}).items()}
    for name, mask in masks.items():
        if len(mask) != len(generated):
            raise ValueError(f"label {name!r} has {len(mask)} entries for {len(generated)} generated ECGs")

    structured = any(key in metrics for key in ("generated", "real_reference", "per_condition"))
    generated_metrics = dict(metrics.get("generated", {})) if structured else dict(metrics)
    reference_metrics = dict(metrics.get("real_reference", {})) if structured else {}
    per_condition = {name: dict(row) for name, row in (metrics.get("per_condition", {}) if structured else {}).items()}

    # Signal checks computed here from the arrays.
    hr = heart_rate_mae(requested, measured)
    residuals = {"real": lead_residuals(real), "generated": lead_residuals(generated)}
    for name, mask in masks.items():
        row = per_condition.setdefault(name, {})
        row["n_samples"] = int(mask.sum())
        if mask.any():
            row["heart_rate_mae_bpm"] = heart_rate_mae(requested[mask], measured[mask])["mae"]

    figures = {}
    _heart_rate_figure(requested, measured, out_dir / HEART_RATE_FIGURE)
    figures["heart_rate"] = HEART_RATE_FIGURE
    if _condition_figure(per_condition, out_dir / CONDITION_FIGURE):
        figures["per_condition"] = CONDITION_FIGURE
    pairs = min(len(real), len(generated), num_examples)
    if pairs:
        plot_ecg_comparison(
            real[:pairs],
            generated[:pairs],
            titles=list(titles[:pairs]) if titles else None,
            fs=fs,
            path=out_dir / EXAMPLES_FIGURE,
        )
        figures["examples"] = EXAMPLES_FIGURE
    _residual_figure(real, generated, out_dir / RESIDUAL_FIGURE)
    figures["lead_residuals"] = RESIDUAL_FIGURE
    if denoising:
        _denoising_figure(denoising, out_dir / DENOISING_FIGURE)
        figures["denoising_error"] = DENOISING_FIGURE

    extra = {
        key: value
        for key, value in metrics.items()
        if not structured or key not in ("generated", "real_reference", "per_condition")
    }
    record = {
        "generated": generated_metrics,
        "real_reference": reference_metrics,
        "per_condition": per_condition,
        "heart_rate": hr,
        "lead_residuals_mv": residuals,
        "num_real": len(real),
        "num_generated": len(generated),
        "fs_hz": fs,
        "figures": figures,
    }
    if structured:
        record.update(extra)
    (out_dir / METRICS_FILE).write_text(json.dumps(_plain(record), indent=2, allow_nan=False) + "\n")

    generated_flat, reference_flat = _flatten(generated_metrics), _flatten(reference_metrics)
    metric_rows = [
        (name, generated_flat.get(name), reference_flat.get(name))
        for name in dict.fromkeys([*generated_flat, *reference_flat])
    ]
    signal_rows = [
        ("heart-rate MAE (bpm, detected only)", hr["mae"], None),
        ("heart rate detected / undetected", f"{hr['n_detected']} / {hr['n_undetected']}", "–"),
    ]
    signal_rows += [
        (f"residual {name} (RMS mV)", residuals["generated"][name], residuals["real"][name])
        for name in (*LEAD_IDENTITIES, "overall")
    ]
    condition_columns = sorted(
        {key for row in per_condition.values() for key in _flatten(row)}, key=lambda key: (key != "n_samples", key)
    )

    sections = [
        f"# {title}",
        "",
        f"Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. "
        f"{len(generated)} generated and {len(real)} real ECGs at {fs:g} Hz. "
        f"All numbers are also in `{METRICS_FILE}`.",
        "",
        "## Metrics",
        "",
        "Feature metrics use the evaluator's features; the real column is the real-vs-real "
        "reference (e.g. FID between the two halves of the real set).",
        "",
        _table(("metric", "generated", "real (reference)"), metric_rows)
        if metric_rows
        else "_No feature metrics given._",
        "",
        "## Signal checks",
        "",
        "Heart rate measured with WFDB XQRS (`diffusets_jax.data_pipelines.records.detect_heart_rate`); "
        "limb-lead residuals are the Einthoven/Goldberger identities, 0 for a consistent ECG.",
        "",
        _table(("check", "generated", "real"), signal_rows),
        "",
        "## Heart rate",
        "",
        f"![requested vs measured heart rate]({HEART_RATE_FIGURE})",
        "",
        "## Per condition",
        "",
    ]
    if per_condition:
        sections += [
            _table(
                ("condition", *condition_columns),
                [(name, *(_flatten(row).get(c) for c in condition_columns)) for name, row in per_condition.items()],
            ),
            "",
        ]
        if "per_condition" in figures:
            sections += [f"![per-condition metrics]({CONDITION_FIGURE})", ""]
    else:
        sections += ["_No condition labels given._", ""]
    sections += ["## Examples", ""]
    sections += (
        [
            f"Real (left) and generated (right), first {pairs} pairs.",
            "",
            f"![real and generated ECGs]({EXAMPLES_FIGURE})",
            "",
        ]
        if pairs
        else ["_No ECGs._", ""]
    )
    sections += ["## Lead residuals", "", f"![limb-lead identity residuals]({RESIDUAL_FIGURE})", ""]
    if denoising:
        sections += [
            "## Denoising error per timestep",
            "",
            "The U-Net's eps-MSE per latent value on the held-out records' latents (fixed noise), next to "
            "the Gaussian (Wiener) predictor's: a model that has learned to denoise is below it at every t.",
            "",
            _table(("t", "eps-MSE", "Wiener"), [(t, v["eps_mse"], v["wiener"]) for t, v in denoising.items()]),
            "",
            f"![denoising error per timestep]({DENOISING_FIGURE})",
            "",
        ]
    report_path = out_dir / REPORT_FILE
    report_path.write_text("\n".join(sections))
    return report_path
