"""The `evaluate` command end to end on real records, with the shipped default model and evaluator."""

import json

import numpy as np
import pytest

from diffusets_jax import cli


@pytest.mark.slow
def test_evaluate_command_writes_metrics_and_report(tmp_path, processed_dirs):
    out = tmp_path / "evaluation"
    data = [arg for d in processed_dirs for arg in ("--dataset", str(d))]
    status = cli.main(
        [
            "evaluate",
            *data,
            "--folds",
            ",".join(map(str, range(1, 11))),
            "--num-samples",
            "8",
            "--num-steps",
            "3",
            "--batch-size",
            "4",
            "--out",
            str(out),
        ]
    )
    assert status == 0
    metrics = json.loads((out / "metrics.json").read_text())
    generated, real = metrics["generated"], metrics["real_reference"]
    assert generated["fid"] >= 0 and 0 <= generated["precision"] <= 1 and 0 <= generated["recall"] <= 1
    assert -1 <= generated["clip_score"] <= 1 and real["rclip"] == 1.0
    assert generated["hr"]["n_detected"] + generated["hr"]["n_undetected"] == 8
    # The requested heart rates were measured on these real ECGs: measured again, they agree.
    assert real["hr"]["mae"] < 2.0
    assert metrics["protocol"]["num_samples"] == 8
    report = (out / "report.md").read_text()
    assert "| fid |" in report and "heart_rate.png" in report
    with np.load(out / "samples.npz") as samples:
        assert samples["signals"].shape == (8, 1024, 12)

    # Scoring saved samples again gives the same numbers without generating.
    again = tmp_path / "again"
    assert (
        cli.main(
            [
                "evaluate",
                *data,
                "--folds",
                ",".join(map(str, range(1, 11))),
                "--num-samples",
                "8",
                "--samples",
                str(out / "samples.npz"),
                "--no-intervals",
                "--out",
                str(again),
            ]
        )
        == 0
    )
    assert json.loads((again / "metrics.json").read_text())["generated"]["fid"] == generated["fid"]


def test_evaluate_names_bad_arguments(tmp_path, processed_dirs, capsys):
    assert cli.main(["evaluate", "--dataset", str(processed_dirs[0]), "--folds", "nine", "--out", str(tmp_path)]) == 2
    assert "--folds" in capsys.readouterr().err
    assert cli.main(["evaluate", "--dataset", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert "missing" in capsys.readouterr().err
