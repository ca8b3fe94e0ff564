"""Bad input to `generate` (issue 18): one clear line naming the file, row or option at fault (exit
status 2), bad CSV rows listed and the rest generated, interrupted work resumed, nothing silently
overwritten or kept corrupt."""

import csv
import os

import numpy as np
import pytest
import wfdb

from diffusets_jax import Pipeline, cli
from diffusets_jax.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DiffusetsError,
    InputError,
    IntegrityError,
    MissingFileError,
)
from diffusets_jax.text import EmbedderError


def generate(model_dir, out, *extra, report="Sinus rhythm"):
    """`diffusets-jax generate` of one ECG with 2 sampler steps (plus `extra` arguments); the exit status."""
    conditions = (
        []
        if "--from-csv" in extra
        else ["--report", report, "--age", "50", "--sex", "F", "--hr", "70", "--num-samples", "1"]
    )
    return cli.main(
        [
            "generate",
            *conditions,
            "--num-steps",
            "2",
            "--no-png",
            "--checkpoint",
            str(model_dir),
            "--out",
            str(out),
            *extra,
        ]
    )


def one_error_line(capsys) -> str:
    """The single line printed on stderr (a traceback or several lines fail the test)."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# ---------------------------------------------------------------------------------------- seeds (item 7)


@pytest.mark.parametrize("seed", ["4294967296", "-1", str(2**70)])
def test_a_seed_out_of_range_is_refused(tiny_model_dir, tmp_path, capsys, seed):
    assert generate(tiny_model_dir, tmp_path / "out", "--seed", seed) == 2
    line = one_error_line(capsys)
    assert "--seed" in line and "4294967295" in line and seed in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("seed", [-1, 2**32, 2**70, 1.5])
def test_the_python_api_refuses_a_seed_out_of_range(tiny_pipeline, seed):
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 4294967295\]"):
        tiny_pipeline("Sinus rhythm", age=50, sex="F", heart_rate=70, seed=seed)


# ------------------------------------------------------------------------------ CSV batches (items 1, 3, 12)

CSV = "report,age,sex,hr\nSinus rhythm,50,F,70\nAtrial fibrillation,60,M,90\nSinus bradycardia,40,M,50\n"


def _signal(out, record):
    return wfdb.rdrecord(str(out / record)).p_signal


@pytest.mark.slow
def test_a_resumed_csv_run_regenerates_incomplete_or_corrupt_records(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "c.csv").write_text(CSV)
    out = tmp_path / "out"
    assert generate(tiny_model_dir, out, "--from-csv", str(tmp_path / "c.csv")) == 0
    first = _signal(out, "ecg_00000")
    with open(out / "ecg_00000.dat", "r+b") as file:  # truncated, as by a crash while writing
        file.truncate(100)
    (out / "ecg_00001.hea").write_text("")  # emptied header
    data = bytearray((out / "ecg_00002.dat").read_bytes())
    data[501] ^= 0x40  # one altered sample: only the header's checksum tells
    (out / "ecg_00002.dat").write_bytes(bytes(data))
    capsys.readouterr()
    assert generate(tiny_model_dir, out, "--from-csv", str(tmp_path / "c.csv")) == 0
    summary = capsys.readouterr().out.splitlines()[0]
    assert "wrote 3 ECGs" in summary and "3 regenerated" in summary and "0 were already done" in summary
    np.testing.assert_allclose(_signal(out, "ecg_00000"), first, atol=1.5e-3)
    assert generate(tiny_model_dir, out, "--from-csv", str(tmp_path / "c.csv")) == 0
    assert "wrote 0 ECGs" in capsys.readouterr().out  # all complete now


def test_a_line_break_in_a_report_separates_statements(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "c.csv").write_text(
        'report,age,sex,hr\n"Sinus rhythm\nNormal ECG",50,F,70\nAtrial fibrillation,60,M,90\n'
    )
    assert generate(tiny_model_dir, tmp_path / "out", "--from-csv", str(tmp_path / "c.csv")) == 0
    assert "wrote 2 ECGs" in capsys.readouterr().out
    assert "report: Sinus rhythm|Normal ECG" in wfdb.rdrecord(str(tmp_path / "out" / "ecg_00000")).comments
    assert generate(tiny_model_dir, tmp_path / "one", report="Sinus rhythm\r\nNormal ECG") == 0
    assert "report: Sinus rhythm|Normal ECG" in wfdb.rdrecord(str(tmp_path / "one" / "ecg_000")).comments


def test_a_row_that_cannot_be_written_is_listed_and_the_rest_are_written(tiny_pipeline, tmp_path, monkeypatch):
    from diffusets_jax import ecg_io
    from diffusets_jax.batch_generation import generate_from_csv

    write = ecg_io.write_wfdb

    def failing(signal, directory, name, **kwargs):
        if name == "ecg_00001":
            raise ValueError("signal contains NaN or infinite values")
        return write(signal, directory, name, **kwargs)

    monkeypatch.setattr(ecg_io, "write_wfdb", failing)
    (tmp_path / "c.csv").write_text(CSV)
    done = generate_from_csv(
        tiny_pipeline,
        tmp_path / "c.csv",
        tmp_path / "out",
        sampling=tiny_pipeline.sampling(),
        batch_size=3,
        png=False,
        progress=False,
    )
    assert done.generated == [0, 2] and [(r.row, r.error) for r in done.bad] == [
        (1, "could not write the record: signal contains NaN or infinite values")
    ]
    assert _signal(tmp_path / "out", "ecg_00002").shape == (1024, 12)


def test_a_csv_of_only_bad_rows_exits_with_status_2_and_lists_them(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "c.csv").write_text("report,age,sex,hr\nSinus rhythm,abc,F,70\nAtrial fibrillation,60,X,90\n")
    assert generate(tiny_model_dir, tmp_path / "out", "--from-csv", str(tmp_path / "c.csv")) == 2
    printed = capsys.readouterr()
    assert "row 0: age must be a number" in printed.out and "row 1: sex must be" in printed.out
    assert "no row of" in printed.err and "c.csv" in printed.err


def test_non_utf8_text_in_a_csv_row_is_named_and_the_other_rows_are_written(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "c.csv").write_bytes(b"report,age,sex,hr\nSinus rhythm caf\xe9,50,F,70\nAtrial fibrillation,60,M,90\n")
    assert generate(tiny_model_dir, tmp_path / "out", "--from-csv", str(tmp_path / "c.csv")) == 0
    printed = capsys.readouterr().out
    assert "wrote 1 ECGs" in printed and "row 0: report is not UTF-8 text" in printed
    assert (tmp_path / "out" / "ecg_00001.hea").is_file()


def test_an_unreadable_csv_is_named_with_its_line(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "c.csv").write_text('report,age,sex,hr\nSinus rhythm,50,F,70\n"' + "x" * 200_000 + '",50,F,70\n')
    assert generate(tiny_model_dir, tmp_path / "out", "--from-csv", str(tmp_path / "c.csv")) == 2
    line = one_error_line(capsys)
    assert "c.csv: not a readable CSV after line 2 (field larger than field limit" in line


# ------------------------------------------------------------------------------ options (items 8, 9)


@pytest.mark.parametrize("flags", [["--num-samples", "2"], ["--experience-index", "index.npz"], ["--retrieval-k", "3"]])
def test_from_csv_refuses_the_options_it_does_not_use(tiny_model_dir, tmp_path, capsys, flags):
    (tmp_path / "c.csv").write_text(CSV)
    assert generate(tiny_model_dir, tmp_path / "out", "--from-csv", str(tmp_path / "c.csv"), *flags) == 2
    line = one_error_line(capsys)
    assert flags[0] in line and "--from-csv" in line
    assert not (tmp_path / "out").exists()


def test_retrieval_k_without_an_experience_index_is_refused(tiny_model_dir, tmp_path, capsys):
    assert generate(tiny_model_dir, tmp_path / "out", "--retrieval-k", "3") == 2
    assert "--retrieval-k needs --experience-index" in one_error_line(capsys)


def test_an_output_path_that_cannot_be_written_is_refused_before_generating(
    tiny_model_dir, tmp_path, capsys, monkeypatch
):
    calls = []
    monkeypatch.setattr(Pipeline, "generate_for_conditions", lambda *args, **kwargs: calls.append(1))
    (tmp_path / "a_file").write_text("")
    for out in (tmp_path / "a_file", tmp_path / "a_file" / "sub"):
        assert generate(tiny_model_dir, out) == 2
        line = one_error_line(capsys)
        assert str(out) in line and "output directory" in line
    assert not calls


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write to a read-only directory")
def test_a_read_only_output_directory_is_refused_before_generating(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "ro").mkdir(mode=0o555)
    assert generate(tiny_model_dir, tmp_path / "ro" / "out") == 2
    assert "cannot write to the output directory" in one_error_line(capsys)


# ------------------------------------------------------------------------------ earlier runs (item 4)


def test_an_output_directory_holding_an_earlier_run_needs_overwrite(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert generate(tiny_model_dir, out, "--num-samples", "2") == 0
    (out / "notes.txt").write_text("not a run's file")
    first = (out / "ecg_000.dat").read_bytes()
    capsys.readouterr()
    assert generate(tiny_model_dir, out, report="Atrial fibrillation") == 2
    line = one_error_line(capsys)
    assert str(out) in line and "--overwrite" in line
    (tmp_path / "c.csv").write_text(CSV)
    assert generate(tiny_model_dir, out, "--from-csv", str(tmp_path / "c.csv")) == 2  # no mixing with a CSV run
    assert "--overwrite" in one_error_line(capsys)
    assert (out / "ecg_000.dat").read_bytes() == first and (out / "ecg_001.hea").is_file()

    assert generate(tiny_model_dir, out, "--overwrite", report="Atrial fibrillation") == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "MANIFEST.json",
        "ecg_000.dat",
        "ecg_000.hea",
        "notes.txt",
        "samples.npz",
    ]
    with np.load(out / "samples.npz") as saved:
        assert saved["signals"].shape[0] == 1 and str(saved["report"]) == "Atrial fibrillation"


# ------------------------------------------------------------------------------ report text (items 10, 11)

UNICODE_REPORT = 'Sinus rhythm ✓ 😀|نظم جيبي|קצב סינוס|Ä\\u00e9 "quoted"'


def test_non_ascii_report_text_round_trips_through_the_wfdb_header(tiny_model_dir, tmp_path):
    from diffusets_jax.ecg_io import comment_values

    assert generate(tiny_model_dir, tmp_path / "out", report=UNICODE_REPORT) == 0
    comments = wfdb.rdrecord(str(tmp_path / "out" / "ecg_000")).comments
    assert all(line.isascii() for line in comments)
    assert comment_values(comments)["report"] == UNICODE_REPORT
    assert comment_values(comments)["sex"] == "F"
    with np.load(tmp_path / "out" / "samples.npz") as saved:
        assert str(saved["report"]) == UNICODE_REPORT

    (tmp_path / "c.csv").write_text(
        f'report,age,sex,hr\n"{UNICODE_REPORT.replace(chr(34), 2 * chr(34))}",50,F,70\n', encoding="utf-8"
    )
    assert generate(tiny_model_dir, tmp_path / "batch", "--from-csv", str(tmp_path / "c.csv")) == 0
    comments = wfdb.rdrecord(str(tmp_path / "batch" / "ecg_00000")).comments
    assert comment_values(comments)["report"] == UNICODE_REPORT
    with open(tmp_path / "batch" / "index.csv", newline="", encoding="utf-8") as file:
        assert next(csv.DictReader(file))["report"] == UNICODE_REPORT


LONG_REPORT = "|".join(f"Statement number {i} about premature ventricular complexes" for i in range(20))


def test_a_report_longer_than_the_text_model_reads_is_warned_about(tiny_model_dir, tiny_pipeline, tmp_path, capsys):
    from diffusets_jax.text import build_prompt

    statements = LONG_REPORT.split("|")
    with pytest.warns(
        UserWarning,
        match=r"tokens long, but the text model minilm reads only the first 256: "
        r"it reads \d+ of the 20 statements",
    ):
        tiny_pipeline(LONG_REPORT, age=50, sex="F", heart_rate=70, num_steps=2)
    # What the warning says is true: the statements past the limit do not change the embedding.
    full, *_ = tiny_pipeline.embedder.embed([build_prompt(statements)])
    assert generate(tiny_model_dir, tmp_path / "out", report=LONG_REPORT) == 0
    line = one_warning_line(capsys)
    assert line.startswith("diffusets-jax generate: warning: ") and "reads only the first 256" in line
    n = int(line.split(" of the 20 statements")[0].rsplit(" ", 1)[1])
    assert 1 <= n < 20
    np.testing.assert_allclose(tiny_pipeline.embedder.embed([build_prompt(statements[: n + 1])])[0], full, atol=1e-6)
    assert not np.allclose(tiny_pipeline.embedder.embed([build_prompt(statements[:n])])[0], full, atol=1e-6)

    (tmp_path / "c.csv").write_text(f"report,age,sex,hr\n{LONG_REPORT},50,F,70\nSinus rhythm,50,F,70\n")
    assert generate(tiny_model_dir, tmp_path / "batch", "--from-csv", str(tmp_path / "c.csv")) == 0
    assert one_warning_line(capsys).startswith("diffusets-jax generate: warning: row 0: the report's prompt is ")


def one_warning_line(capsys) -> str:
    """The truncation warning printed on stderr: one whole line, without a source line."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "the report's prompt" in line]
    assert len(lines) == 1 and lines[0].endswith("ignores the rest") and "UserWarning" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------ configs and model files (item 13)


@pytest.mark.parametrize(
    "override, message",
    [
        ("vae_train.num_steps=abc", "--set vae_train.num_steps=abc: vae_train.num_steps must be of type int"),
        ("vae_train.num_steps=1.5", "--set vae_train.num_steps=1.5: vae_train.num_steps must be of type int"),
        ("vae_train=3", "--set vae_train=3: vae_train is a section of the config"),
        ("vae_train.num_steps.x=1", "override 'vae_train.num_steps.x=1': config has no field 'vae_train.num_steps.x'"),
        ("vae_train.nope=1", "override 'vae_train.nope=1': config has no field 'vae_train.nope'"),
    ],
)
def test_a_config_override_of_the_wrong_type_is_named(tmp_path, capsys, override, message):
    (tmp_path / "weights.pth").write_bytes(b"")
    status = cli.main(
        [
            "convert-torch",
            "--unet",
            str(tmp_path / "weights.pth"),
            "--vae",
            str(tmp_path / "weights.pth"),
            "--out",
            str(tmp_path / "out"),
            "--config",
            "small",
            "--set",
            override,
        ]
    )
    assert status == 2
    assert message in one_error_line(capsys)


def _damage(model, damage):
    import json

    if damage == "empty unet.npz":
        (model / "unet.npz").write_bytes(b"")
        return model / "unet.npz"
    if damage == "truncated vae.npz":
        (model / "vae.npz").write_bytes((model / "vae.npz").read_bytes()[:50_000])
        return model / "vae.npz"
    if damage == "config.json not JSON":
        (model / "config.json").write_text("{not json")
        return model / "config.json"
    if damage == "config.json in Latin-1":
        (model / "config.json").write_bytes(b'{"note": "caf\xe9"}')
        return model / "config.json"
    config = json.loads((model / "config.json").read_text())
    if damage == "config.json without vae":
        del config["vae"]
    elif damage == "config.json a list":
        config = [config]
    elif damage == "config.json vae.channels as text":
        config["vae"]["channels"] = "8, 16"
    elif damage == "config.json diffusion.num_train_timesteps a float":
        config["diffusion"]["num_train_timesteps"] = 999.5
    else:
        del config["diffusion"]["beta_start"]
    (model / "config.json").write_text(json.dumps(config))
    return model / "config.json"


@pytest.mark.parametrize(
    "damage, message",
    [
        ("empty unet.npz", ("bytes, its manifest says", "is not a readable .npz")),
        ("truncated vae.npz", ("bytes, its manifest says", "is not a readable .npz")),
        ("config.json not JSON", "is not JSON (line 1, column 2: Expecting property name"),
        ("config.json in Latin-1", "is not UTF-8 text (byte 13)"),
        ("config.json a list", "is not a config: a JSON list, not an object"),
        ("config.json without vae", "lacks the section(s) vae"),
        (
            "config.json without diffusion.beta_start",
            ("bytes, its manifest says", "config lacks the field 'beta_start'"),
        ),
        ("config.json vae.channels as text", ": vae.channels must be a list (like (16, 32, 64)), got '8, 16'"),
        (
            "config.json diffusion.num_train_timesteps a float",
            ": diffusion.num_train_timesteps must be an integer (like 1000), got 999.5",
        ),
    ],
)
def test_a_damaged_model_directory_is_named(tiny_model_dir, tmp_path, capsys, damage, message):
    import shutil

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    file = _damage(model, damage)
    assert generate(model, tmp_path / "out", "--checkpoint", str(model)) == 2
    line = one_error_line(capsys)
    assert str(file) in line and any(m in line for m in ((message,) if isinstance(message, str) else message))
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ the command line (item 13: Ctrl-C)


def _raise(error):
    def fail(*args, **kwargs):
        raise error

    return fail


@pytest.mark.parametrize(
    "error",
    [
        DiffusetsError("base kind"),
        InputError("an input"),
        ConfigError("a config"),
        DataError("a dataset file"),
        CheckpointError("a checkpoint"),
        IntegrityError("a sha-256"),
        MissingFileError("a missing file"),
        EmbedderError("an embedder"),
        PermissionError(13, "Permission denied", "/some/file"),
        ValueError("first line\nsecond line"),
    ],
)
def test_every_expected_error_is_one_line_with_status_2_and_no_empty_output_directory(
    tiny_model_dir, tmp_path, capsys, monkeypatch, error
):
    monkeypatch.setattr(Pipeline, "generate_for_conditions", _raise(error))  # after --out is created
    out = tmp_path / "new" / "out"
    assert generate(tiny_model_dir, out) == 2
    line = one_error_line(capsys)
    assert line.startswith("diffusets-jax generate: error: ") and "Traceback" not in line
    assert (str(error).splitlines()[0] if str(error) else type(error).__name__) in line
    assert not (tmp_path / "new").exists()  # both directories the run created, and left empty, are gone


def test_a_failed_run_keeps_an_output_directory_it_did_not_create_or_wrote_into(
    tiny_model_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(Pipeline, "generate_for_conditions", _raise(DataError("broken")))
    (tmp_path / "existing").mkdir()
    assert generate(tiny_model_dir, tmp_path / "existing") == 2
    assert (tmp_path / "existing").is_dir() and "broken" in one_error_line(capsys)
    monkeypatch.undo()
    monkeypatch.setattr("diffusets_jax.ecg_io.write_npz", _raise(OSError(28, "No space left on device", "x.npz")))
    assert generate(tiny_model_dir, tmp_path / "new") == 2  # fails after writing the WFDB record
    err = capsys.readouterr().err  # the progress bar, then the error
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        "diffusets-jax generate: error: [Errno 28] No space left on device: 'x.npz'"
    )
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["ecg_000.dat", "ecg_000.hea"]


def test_ctrl_c_is_one_line_with_status_130_and_debug_shows_the_traceback(
    tiny_model_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(Pipeline, "generate_for_conditions", _raise(KeyboardInterrupt()))
    assert generate(tiny_model_dir, tmp_path / "out") == 130
    assert one_error_line(capsys) == "diffusets-jax generate: interrupted"
    assert not (tmp_path / "out").exists()
    with pytest.raises(KeyboardInterrupt):
        generate(tiny_model_dir, tmp_path / "out", "--debug")
    monkeypatch.setattr(Pipeline, "generate_for_conditions", _raise(DataError("a dataset file")))
    with pytest.raises(DataError, match="a dataset file"):
        generate(tiny_model_dir, tmp_path / "out", "--debug")


SIGINT_SCRIPT = """
import signal, sys, time
from diffusets_jax import cli, pipeline

signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a background job ignores SIGINT)

def wait(*args, **kwargs):
    print("ready", flush=True)
    time.sleep(120)

pipeline.Pipeline.from_pretrained = classmethod(wait)
sys.exit(cli.main(["generate", "--report", "Sinus rhythm", "--age", "50", "--sex", "F", "--hr", "70",
                   "--out", sys.argv[1], *sys.argv[2:]]))
"""


@pytest.mark.parametrize("debug", [False, True])
def test_a_real_sigint_is_one_line_with_status_130(tmp_path, debug):
    import signal
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-c", SIGINT_SCRIPT, str(tmp_path / "out"), *(["--debug"] * debug)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    if debug:
        assert "Traceback" in err and "KeyboardInterrupt" in err
    else:
        assert process.returncode == 130 and "Traceback" not in err
        assert err.strip().splitlines()[-1] == "diffusets-jax generate: interrupted"
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ item 13: inputs named in one line


def test_non_utf8_bytes_in_the_report_argument_are_named(tiny_model_dir, tmp_path, capsys):
    report = b"Sinus rhythm caf\xe9".decode("utf-8", "surrogateescape")  # what Python makes of such argv bytes
    assert generate(tiny_model_dir, tmp_path / "out", report=report) == 2
    assert "report is not UTF-8 text (byte 0xe9)" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-size", "-1"], "--batch-size must be an integer of at least 1, got -1"),
        (["--batch-size", "0"], "--batch-size must be an integer of at least 1, got 0"),
        (["--from-csv", "c.csv", "--batch-size", "-1"], "--batch-size must be an integer of at least 1, got -1"),
        (["--experience-index", "random.npz"], "random.npz is not an experience index saved by `augment-dataset"),
        (["--from-csv", "bom.csv"], None),
    ],
)
def test_generate_names_the_option_or_file_at_fault(tiny_model_dir, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.csv").write_text(CSV)
    (tmp_path / "random.npz").write_bytes(np.random.default_rng(0).bytes(3000))
    (tmp_path / "bom.csv").write_text("report,age,sex,hr\nSinus rhythm,50,F,70\n", encoding="utf-8-sig")
    status = generate(tiny_model_dir, tmp_path / "out", *args)
    if message is None:  # the byte-order mark is read, not taken for part of the first column's name
        assert status == 0 and "wrote 1 ECGs" in capsys.readouterr().out
        return
    assert status == 2
    line = one_error_line(capsys)
    assert message in line and "allow_pickle" not in line
    assert not (tmp_path / "out").exists()


def test_csv_rows_with_a_bad_seed_or_binary_bytes_are_listed_and_the_rest_written(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "c.csv").write_bytes(
        b"report,age,sex,hr,seed\nSinus rhythm,50,F,70,-1\n"
        b"Sinus rhythm,50,F,70,4294967296\nSinus rhythm,50,F,70,1.5\n"
        b"Sinus\x00\x07rhythm,50,F,70,1\nSinus rhythm,50,F,70,4294967295\n"
    )
    assert generate(tiny_model_dir, tmp_path / "out", "--from-csv", str(tmp_path / "c.csv")) == 0
    printed = capsys.readouterr().out
    assert [line.strip() for line in printed.splitlines() if line.startswith("  row")] == [
        *(
            f"row {i}: seed must be an integer in [0, 4294967295], got '{s}'"
            for i, s in enumerate(["-1", str(2**32), "1.5"])
        ),
        "row 3: report holds the control character U+0000 (binary data?): 'Sinus\\x00\\x07rhythm'",
    ]
    assert "wrote 1 ECGs" in printed
    assert sorted(p.name for p in (tmp_path / "out").glob("ecg_*")) == ["ecg_00004.dat", "ecg_00004.hea"]


@pytest.mark.parametrize(
    "index, message",
    [
        (
            "x,y\n1,2\n",
            "index.csv is not the index of a `generate --from-csv` run (no column row, status): use --overwrite",
        ),
        ("row,status\nabc,ok\n", "index.csv, line 2: row 'abc' is not a row number: use --overwrite"),
        (b"row,status\n0,\xff\xfe\n", "index.csv is not a readable index (UnicodeDecodeError): use --overwrite"),
    ],
)
def test_a_garbled_index_of_an_earlier_csv_run_is_named(tiny_model_dir, tmp_path, capsys, index, message):
    (tmp_path / "c.csv").write_text(CSV)
    (tmp_path / "out").mkdir()
    write = (
        (tmp_path / "out" / "index.csv").write_bytes
        if isinstance(index, bytes)
        else (tmp_path / "out" / "index.csv").write_text
    )
    write(index)
    assert generate(tiny_model_dir, tmp_path / "out", "--from-csv", str(tmp_path / "c.csv")) == 2
    assert message in one_error_line(capsys)
    assert generate(tiny_model_dir, tmp_path / "out", "--from-csv", str(tmp_path / "c.csv"), "--overwrite") == 0


def test_a_ptbxl_database_without_strat_fold_is_named(ptbxl_root, tmp_path, capsys):
    import shutil

    import pandas as pd

    root = shutil.copytree(ptbxl_root, tmp_path / "ptb-xl")
    pd.read_csv(root / "ptbxl_database.csv").drop(columns="strat_fold").to_csv(root / "ptbxl_database.csv", index=False)
    assert cli.main(["prepare", "--dataset", "ptbxl", "--root", str(root), "--out", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys)
    assert f"{root / 'ptbxl_database.csv'} lacks the column(s) strat_fold" in line
    assert not (tmp_path / "out").exists()


def test_an_openai_connection_failure_is_one_line(monkeypatch):
    import sys
    import types

    from diffusets_jax.text import OpenAIEmbedder

    class OpenAIError(Exception):
        pass

    class APIConnectionError(OpenAIError):
        pass

    class Embeddings:
        def create(self, model, input):
            raise APIConnectionError("Connection error.\n(details of the proxy)")

    class OpenAI:
        def __init__(self, api_key):
            self.embeddings = Embeddings()

    monkeypatch.setitem(sys.modules, "openai", types.SimpleNamespace(OpenAI=OpenAI, OpenAIError=OpenAIError))
    embedder = OpenAIEmbedder(api_key="sk-secret")
    with pytest.raises(EmbedderError) as raised:
        embedder.embed(["Most importantly, the 1st diagnosis is {Sinus rhythm}."])
    message = str(raised.value)
    assert message == (
        "the OpenAI embedding request (text-embedding-ada-002) failed: APIConnectionError: Connection "
        "error. (details of the proxy); check the network connection and OPENAI_API_KEY"
    )
    assert isinstance(raised.value, RuntimeError) and "sk-secret" not in message


# ------------------------------------------------------------------------------ evaluate --samples (items 13, 15)


def _samples(path, kind):
    signals = np.zeros((4, 1024, 12), np.float32)
    if kind == "no signals":
        np.savez(path, ecgs=signals)
    elif kind == "8 leads":
        np.savez(path, signals=signals[..., :8])
    elif kind == "2-D":
        np.savez(path, signals=signals[0])
    elif kind == "NaN":
        signals[2, 10, 3] = np.nan
        np.savez(path, signals=signals)
    elif kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif kind == "5 ECGs":
        np.savez(path, signals=np.zeros((5, 1024, 12), np.float32))
    elif kind == ".npy":
        np.save(path, signals)
        path = path.with_suffix(".npz.npy")
    elif kind == "text":
        np.savez(path, signals=np.full((4, 1024, 12), "x"))
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("no signals", "has no 'signals' array (it holds ecgs)"),
        ("8 leads", "signals have shape (4, 1024, 8); need (N, 1024, 12)"),
        ("2-D", "signals have shape (1024, 12); need (N, 1024, 12)"),
        ("NaN", "1 of the 4 ECGs hold NaN or infinite values (the first is ECG 2)"),
        ("random bytes", "is not a readable .npz (truncated, or another kind of file)"),
        ("5 ECGs", "holds 5 ECGs, not --num-samples 4"),
        (".npy", "is a .npy array, not an .npz with 'signals'"),
        ("text", "signals are of type <U1, not real numbers (mV)"),
    ],
)
def test_evaluate_names_unusable_samples_before_loading_anything(tmp_path, capsys, kind, message):
    samples = _samples(tmp_path / "samples.npz", kind)
    status = cli.main(
        [
            "evaluate",
            "--dataset",
            str(tmp_path / "no-such-set"),
            "--num-samples",
            "4",
            "--samples",
            str(samples),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert status == 2
    line = one_error_line(capsys)
    assert f"{samples}" in line and message in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seed", "-1"], "--seed must be an integer in [0, 4294967295], got -1"),
        (["--seed", str(2**32)], f"--seed must be an integer in [0, 4294967295], got {2**32}"),
        (["--batch-size", "-1"], "--batch-size must be an integer of at least 1, got -1"),
        (
            ["--samples", "s.npz", "--sampler", "ddim", "--num-steps", "5"],
            "--samples scores ECGs already generated; drop --sampler, --num-steps",
        ),
        (["--samples", "s.npz", "--batch-size", "2"], "--samples scores ECGs already generated; drop --batch-size"),
    ],
)
def test_evaluate_refuses_bad_or_inapplicable_options(tmp_path, capsys, args, message):
    status = cli.main(["evaluate", "--dataset", str(tmp_path / "no-such-set"), "--out", str(tmp_path / "out"), *args])
    assert status == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_the_python_api_refuses_a_batch_size_below_one(tiny_pipeline):
    for batch_size in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="batch_size must be an integer of at least 1"):
            tiny_pipeline("Sinus rhythm", age=50, sex="F", heart_rate=70, batch_size=batch_size)


@pytest.mark.parametrize("command", ["train-vae", "train-diffusion", "train-evaluator"])
def test_training_names_a_missing_data_directory_before_creating_its_workdir(tmp_path, capsys, command):
    assert cli.main([command, "--workdir", str(tmp_path / "work"), "--data", str(tmp_path / "missing")]) == 2
    assert f"--data {tmp_path / 'missing'} not found: run `diffusets-jax prepare" in one_error_line(capsys)
    assert not (tmp_path / "work").exists()
