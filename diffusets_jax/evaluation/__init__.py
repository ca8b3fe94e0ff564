"""Evaluation of generated ECGs (reference section 7): the ECG-text CLIP evaluator and its metrics."""

from diffusets_jax.evaluation.clip import ClipEvaluator, build_evaluator, contrastive_loss, retrieval_accuracy
from diffusets_jax.evaluation.net1d import Net1D
from diffusets_jax.evaluation.train_clip import load_evaluator, save_evaluator, train_clip
from diffusets_jax.evaluation.metrics import (CONDITION_KEYWORDS, OFFICIAL_CONDITION_KEYWORDS, clip_score,
                                              condition_labels, frechet_distance, heart_rate_mae, heart_rates,
                                              interval_errors, lead_identity_residuals, lead_residuals,
                                              measure_intervals, paired_errors, precision_recall, rclip, rfid)
from diffusets_jax.evaluation.report import write_report
