"""Generation end to end: Python API and the `generate` command, on a tiny model and the shipped one."""

import numpy as np
import pytest
import wfdb

from diffusets_jax import Pipeline, cli
from diffusets_jax.pretrained import DEFAULT_MODEL_DIR


CONDITIONS = dict(age=63, sex="M", heart_rate=110)


def test_same_seed_same_ecgs(tiny_pipeline):
    a = tiny_pipeline("Sinus tachycardia|Left ventricular hypertrophy", num_samples=3, seed=7, **CONDITIONS)
    b = tiny_pipeline("Sinus tachycardia|Left ventricular hypertrophy", num_samples=3, seed=7, **CONDITIONS)
    c = tiny_pipeline("Sinus tachycardia|Left ventricular hypertrophy", num_samples=3, seed=8, **CONDITIONS)
    assert a.signals.shape == (3, 1024, 12) and a.signals.dtype == np.float32
    np.testing.assert_array_equal(a.signals, b.signals)
    assert not np.allclose(a.signals, c.signals)
    assert not np.allclose(a.signals[0], a.signals[1])  # samples of one call differ
    assert a.prompt.startswith("Most importantly, the 1st diagnosis is {Sinus tachycardia}.As a")


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(report="", **CONDITIONS), "report"),
        (dict(report=" | ", **CONDITIONS), "report"),
        (dict(report="Sinus rhythm", age=63, sex="X", heart_rate=70), "sex"),
        (dict(report="Sinus rhythm", age=150, sex="F", heart_rate=70), "age"),
        (dict(report="Sinus rhythm", age=float("nan"), sex="F", heart_rate=70), "age"),
        (dict(report="Sinus rhythm", age=40, sex="F", heart_rate=400), "heart_rate"),
        (dict(report="Sinus rhythm", num_samples=0, **CONDITIONS), "num_samples"),
        (dict(report="Sinus rhythm", num_steps=5000, **CONDITIONS), "num_steps"),
    ],
)
def test_bad_arguments_are_named(tiny_pipeline, kwargs, field):
    with pytest.raises(ValueError, match=field):
        tiny_pipeline(**kwargs)


def test_generate_command_writes_records_and_pictures(tiny_model_dir, tmp_path):
    out = tmp_path / "samples"
    status = cli.main(
        [
            "generate",
            "--report",
            "Sinus rhythm|Normal ECG",
            "--age",
            "50",
            "--sex",
            "F",
            "--hr",
            "70",
            "--num-samples",
            "2",
            "--seed",
            "1",
            "--checkpoint",
            str(tiny_model_dir),
            "--out",
            str(out),
        ]
    )
    assert status == 0
    for i in range(2):
        record = wfdb.rdrecord(str(out / f"ecg_{i:03d}"))
        assert record.p_signal.shape == (1024, 12)
        assert record.sig_name == ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
        assert record.fs == pytest.approx(102.4) and set(record.units) == {"mV"}
        assert any("Sinus rhythm|Normal ECG" in c for c in record.comments)
        assert (out / f"ecg_{i:03d}.png").stat().st_size > 20_000
    with np.load(out / "samples.npz") as saved:
        assert saved["signals"].shape == (2, 1024, 12)
        np.testing.assert_allclose(saved["signals"][0], wfdb.rdrecord(str(out / "ecg_000")).p_signal, atol=1e-3)


def test_generate_command_names_a_bad_argument(tiny_model_dir, tmp_path, capsys):
    status = cli.main(
        [
            "generate",
            "--report",
            "Sinus rhythm",
            "--age",
            "50",
            "--sex",
            "unknown",
            "--hr",
            "70",
            "--checkpoint",
            str(tiny_model_dir),
            "--out",
            str(tmp_path),
        ]
    )
    assert status == 2
    assert "sex" in capsys.readouterr().err


@pytest.mark.slow
def test_shipped_default_model_generates_plausible_ecgs():
    assert (DEFAULT_MODEL_DIR / "unet.npz").is_file(), "the default model must ship with the package"
    pipe = Pipeline.from_pretrained()
    result = pipe("Sinus rhythm|Normal ECG", age=50, sex="F", heart_rate=70, num_samples=2, seed=0)
    signals = result.signals
    assert signals.shape == (2, 1024, 12) and np.all(np.isfinite(signals))
    # Real resting ECGs in the training data: std ~0.1-0.25 mV, peaks of a few mV at most.
    assert 0.02 < signals.std() < 1.0
    assert np.abs(signals).max() < 10.0


def test_an_ecg_does_not_depend_on_the_batch_size(tiny_pipeline):
    together = tiny_pipeline("Sinus rhythm", num_samples=3, seed=7, batch_size=3, **CONDITIONS).signals
    one_by_one = tiny_pipeline("Sinus rhythm", num_samples=3, seed=7, batch_size=1, **CONDITIONS).signals
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


@pytest.mark.parametrize(
    "sampler",
    [pytest.param("ddpm", marks=pytest.mark.slow), "ddim", pytest.param("dpm-solver++", marks=pytest.mark.slow)],
)
def test_every_sampler_with_and_without_guidance(tiny_pipeline, sampler):
    run = lambda scale: tiny_pipeline(  # noqa: E731
        "Sinus rhythm",
        num_samples=2,
        seed=1,
        sampler=sampler,
        num_steps=4,
        guidance_scale=scale,
        **CONDITIONS,
    )
    plain, guided = run(1.0), run(3.0)
    assert plain.signals.shape == (2, 1024, 12) and np.all(np.isfinite(guided.signals))
    assert plain.sampler == sampler and guided.guidance_scale == 3.0
    assert not np.allclose(plain.signals, guided.signals, atol=1e-4)


def test_exact_limb_leads_change_only_the_derived_leads(tiny_pipeline):
    from diffusets_jax.evaluation.metrics import lead_identity_residuals

    plain = tiny_pipeline("Sinus rhythm", num_samples=2, seed=3, **CONDITIONS).signals
    exact = tiny_pipeline("Sinus rhythm", num_samples=2, seed=3, exact_limb_leads=True, **CONDITIONS).signals
    kept = [0, 1, *range(6, 12)]  # I, II, V1-V6
    np.testing.assert_allclose(exact[..., kept], plain[..., kept], atol=1e-6)
    assert np.abs(lead_identity_residuals(exact)).max() < 1e-5
    assert np.abs(lead_identity_residuals(plain)).max() > 1e-3  # the untrained model ignores the identities


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(sampler="euler"), "sampler"),
        (dict(guidance_scale=-1.0), "guidance_scale"),
        (dict(eta=2.0), "eta"),
        (dict(num_steps=0), "num_steps"),
    ],
)
def test_bad_sampling_arguments_are_named(tiny_pipeline, kwargs, field):
    with pytest.raises(ValueError, match=field):
        tiny_pipeline("Sinus rhythm", **kwargs, **CONDITIONS)


def test_one_sampling_value_is_passed_through_and_not_checked_again(tiny_pipeline, tiny_model_dir, monkeypatch):
    from diffusets_jax import sampling as sampling_module
    from diffusets_jax.pipeline import Sampling
    from diffusets_jax.pretrained import read_model_config

    options = tiny_pipeline.sampling("ddim", 2)
    assert options == Sampling.from_config(read_model_config(tiny_model_dir), sampler="ddim", num_steps=2)
    by_keywords = tiny_pipeline("Sinus rhythm", seed=5, sampler="ddim", num_steps=2, **CONDITIONS)
    monkeypatch.setattr(sampling_module, "_check_num_steps", lambda *a: pytest.fail("checked again"))
    monkeypatch.setattr(Sampling, "from_config", classmethod(lambda *a, **k: pytest.fail("made again")))
    by_value = tiny_pipeline("Sinus rhythm", seed=5, sampling=options, **CONDITIONS)
    np.testing.assert_array_equal(by_value.signals, by_keywords.signals)
    assert (by_value.sampler, by_value.num_steps) == ("ddim", 2)
    with pytest.raises(TypeError, match="not both"):
        tiny_pipeline("Sinus rhythm", sampling=options, num_steps=3, **CONDITIONS)
    with pytest.raises(TypeError, match="sampling must be a Sampling"):
        tiny_pipeline.generate_for_conditions(
            np.zeros((1, tiny_pipeline.config.text.embed_dim)), [1.0], [50.0], [70.0], sampling={"num_steps": 2}
        )


def test_a_sampling_is_checked_when_made(tiny_pipeline):
    import diffusets_jax
    from diffusets_jax.errors import InputError
    from diffusets_jax.pipeline import Sampling

    assert diffusets_jax.Sampling is Sampling  # the package exports it, as it does Pipeline

    with pytest.raises(InputError, match=r"eta must be a number in \[0, 1\], got 2"):
        Sampling("ddim", 10, eta=2)
    with pytest.raises(InputError, match="num_steps must be an integer of at least 1, got 0"):
        Sampling(num_steps=0)
    with pytest.raises(InputError, match=r"num_steps must be an integer in \[1, 1000\], got 5000"):
        tiny_pipeline.sampling(num_steps=5000)
    with pytest.raises(InputError, match="sampler must be one of"):
        Sampling("ddim").replace(sampler="euler")
    assert Sampling(num_steps=np.int64(3), guidance_scale=2).as_dict() == {
        "sampler": "ddpm",
        "num_steps": 3,
        "eta": 0.0,
        "guidance_scale": 2.0,
        "exact_limb_leads": False,
    }
    with pytest.warns(UserWarning, match="trained without condition dropout"):
        tiny_pipeline.sampling(guidance_scale=2.0)  # the tiny model has no condition dropout


CSV = """report,age,sex,hr,seed
Sinus rhythm|Normal ECG,50,F,70,
Sinus tachycardia,abc,M,120,
Atrial fibrillation,71,M,95,11
Sinus bradycardia,40,X,50,
Left ventricular hypertrophy,63,M,80,
"""


def _record(directory, row):
    return wfdb.rdrecord(str(directory / f"ecg_{row:05d}")).p_signal


def test_generate_from_csv_lists_bad_rows_and_generates_the_rest(tiny_model_dir, tiny_pipeline, tmp_path, capsys):
    (tmp_path / "conditions.csv").write_text(CSV)
    status = cli.main(
        [
            "generate",
            "--from-csv",
            str(tmp_path / "conditions.csv"),
            "--checkpoint",
            str(tiny_model_dir),
            "--batch-size",
            "2",
            "--no-png",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "row 1: age must be a number" in printed and "row 3: sex must be" in printed
    index = {int(r["row"]): r for r in csv_rows(tmp_path / "out" / "index.csv")}
    assert [index[i]["status"] for i in range(5)] == ["ok", "error", "ok", "error", "ok"]
    assert "age" in index[1]["message"]
    for row in (0, 2, 4):
        assert _record(tmp_path / "out", row).shape == (1024, 12)
    assert not (tmp_path / "out" / "ecg_00001.hea").exists()
    # A row with a seed is the first ECG of `generate --seed` with the same conditions.
    alone = tiny_pipeline("Atrial fibrillation", age=71, sex="M", heart_rate=95, seed=11).signals[0]
    np.testing.assert_allclose(_record(tmp_path / "out", 2), alone, atol=2e-3)  # WFDB stores 1 uV steps


def test_generate_from_csv_resumes_after_an_interruption(tiny_pipeline, tmp_path, monkeypatch):
    from diffusets_jax.batch_generation import generate_from_csv

    (tmp_path / "conditions.csv").write_text(CSV)
    options = tiny_pipeline.sampling()
    clean = generate_from_csv(
        tiny_pipeline,
        tmp_path / "conditions.csv",
        tmp_path / "clean",
        sampling=options,
        batch_size=1,
        png=False,
        progress=False,
    )
    assert clean.generated == [0, 2, 4] and [r.row for r in clean.bad] == [1, 3]

    calls, original = [], tiny_pipeline.generate_for_conditions

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as Ctrl-C in the second batch
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny_pipeline, "generate_for_conditions", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_from_csv(
            tiny_pipeline,
            tmp_path / "conditions.csv",
            tmp_path / "out",
            sampling=options,
            batch_size=1,
            png=False,
            progress=False,
        )
    monkeypatch.setattr(tiny_pipeline, "generate_for_conditions", original)
    resumed = generate_from_csv(
        tiny_pipeline,
        tmp_path / "conditions.csv",
        tmp_path / "out",
        sampling=options,
        batch_size=1,
        png=False,
        progress=False,
    )
    assert resumed.already_done == [0] and resumed.generated == [2, 4]
    for row in (0, 2, 4):  # the same ECGs; float rounding may move a value across one 1 uV WFDB step
        np.testing.assert_allclose(_record(tmp_path / "out", row), _record(tmp_path / "clean", row), atol=1.5e-3)
    # A changed row is generated again; other sampling options redo everything.
    (tmp_path / "conditions.csv").write_text(CSV.replace("50,F,70", "50,F,75"))
    again = generate_from_csv(
        tiny_pipeline,
        tmp_path / "conditions.csv",
        tmp_path / "out",
        sampling=options,
        batch_size=2,
        png=False,
        progress=False,
    )
    assert again.generated == [0] and again.already_done == [2, 4]
    other = generate_from_csv(
        tiny_pipeline,
        tmp_path / "conditions.csv",
        tmp_path / "out",
        sampling=options.replace(num_steps=3),
        batch_size=2,
        png=False,
        progress=False,
    )
    assert other.generated == [0, 2, 4]


def test_generate_from_csv_refuses_a_file_without_a_required_column(tiny_pipeline, tmp_path):
    from diffusets_jax.batch_generation import generate_from_csv

    (tmp_path / "conditions.csv").write_text("report,age,sex\nSinus rhythm,50,F\n")
    with pytest.raises(ValueError, match="missing column.*hr"):
        generate_from_csv(
            tiny_pipeline,
            tmp_path / "conditions.csv",
            tmp_path / "out",
            sampling=tiny_pipeline.sampling(),
            png=False,
            progress=False,
        )


def test_generate_command_refuses_csv_and_single_conditions_together(tiny_model_dir, tmp_path, capsys):
    status = cli.main(["generate", "--from-csv", "x.csv", "--report", "Sinus rhythm", "--out", str(tmp_path)])
    assert status == 2 and "--report" in capsys.readouterr().err
    status = cli.main(["generate", "--report", "Sinus rhythm", "--out", str(tmp_path)])
    assert status == 2 and "--age" in capsys.readouterr().err


def csv_rows(path):
    import csv

    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_generate_with_an_experience_index_augments_the_report(tiny_model_dir, processed_dirs, tmp_path, capsys):
    from diffusets_jax.sediff.retrieval import ExperienceIndex

    index = ExperienceIndex.from_processed(processed_dirs).save(tmp_path / "index.npz")
    status = cli.main(
        [
            "generate",
            "--report",
            "Sinus rhythm",
            "--age",
            "60",
            "--sex",
            "M",
            "--hr",
            "70",
            "--num-samples",
            "1",
            "--experience-index",
            str(index),
            "--retrieval-k",
            "3",
            "--checkpoint",
            str(tiny_model_dir),
            "--no-png",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert status == 0
    augmented = capsys.readouterr().out.split("retrieval-augmented report: ")[1].splitlines()[0]
    assert augmented.split("|")[0] == "Sinus rhythm"  # the request first, then what neighbours share
    comments = wfdb.rdrecord(str(tmp_path / "out" / "ecg_000")).comments
    assert any(f"report: {augmented}" in c for c in comments)
