"""Evaluation of generated ECGs (DiffuSETS, arXiv:2501.05932, section 4; official `clip/` and `test_scripts/`):
the ECG-text CLIP evaluator and its metrics."""

from diffusets_jax.conditions import CONDITION_KEYWORDS, OFFICIAL_CONDITION_KEYWORDS, condition_labels
from diffusets_jax.evaluation.clip import ClipEvaluator, build_evaluator, contrastive_loss, retrieval_accuracy
from diffusets_jax.evaluation.net1d import Net1D
from diffusets_jax.evaluation.train_clip import load_evaluator, save_evaluator, train_clip
from diffusets_jax.evaluation.metrics import (
    clip_score,
    frechet_distance,
    heart_rate_mae,
    heart_rates,
    interval_errors,
    lead_identity_residuals,
    lead_residuals,
    measure_intervals,
    paired_errors,
    precision_recall,
    rclip,
    rfid,
)
from diffusets_jax.evaluation.report import write_report

__all__ = [
    "CONDITION_KEYWORDS",
    "OFFICIAL_CONDITION_KEYWORDS",
    "ClipEvaluator",
    "Net1D",
    "build_evaluator",
    "clip_score",
    "condition_labels",
    "contrastive_loss",
    "frechet_distance",
    "heart_rate_mae",
    "heart_rates",
    "interval_errors",
    "lead_identity_residuals",
    "lead_residuals",
    "load_evaluator",
    "measure_intervals",
    "paired_errors",
    "precision_recall",
    "rclip",
    "retrieval_accuracy",
    "rfid",
    "save_evaluator",
    "train_clip",
    "write_report",
]
