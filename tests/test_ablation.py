"""`diffusets-jax ablate` (diffusets_jax.sediff.ablation, .ablation_evaluation) on a tiny base workdir and
the fixture records."""

import hashlib
import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_config
from diffusets_jax import cli
from diffusets_jax.sediff import ablation, ablation_evaluation

# trains a base model and fine-tunes every variant: minutes
pytestmark = pytest.mark.slow

BASE_STEPS = 4
STEPS = 3
LEARNING_RATE = 1e-3


@pytest.fixture(scope="module", autouse=True)
def fast_compilation():
    """XLA with most optimisations off: compiling each variant's training step and sampler is most
    of this file's time (about a third less this way); every variant compiles under the same flag."""
    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="module")
def base_workdir(tmp_path_factory):
    """A base workdir in the layout `train-vae`, `train-diffusion` and `train-beat-decoder` leave:
    config, VAE checkpoint (step 1), U-Net checkpoint (step `BASE_STEPS`, the train state
    `train_diffusion` saves, EMA included) and a beat decoder, all untrained (training them here
    would only add compilation time; the fine-tunes run `train_diffusion`)."""
    from diffusets_jax.config import config_to_json
    from diffusets_jax.models import build_unet, build_vae
    from diffusets_jax.sediff.beat_decoder import BeatDecoder, save_beat_decoder
    from diffusets_jax.training import common
    from diffusets_jax.training.diffusion import unet_optimizer
    from diffusets_jax.training.vae import vae_optimizer

    workdir = tmp_path_factory.mktemp("ablation_base")
    config = tiny_config()
    config.unet.channels = (8,)  # one level: the U-Net's compilation dominates the test's time
    config.data.val_folds = ()  # no validation loss to compile
    del config.sediff  # as in workdirs saved before SE-Diff: the ablation must supply the group
    (workdir / "config.json").write_text(config_to_json(config))
    for name, model, tx, step in (
        ("vae", build_vae(config), vae_optimizer(config.vae_train, 1), 1),
        ("unet", build_unet(config), unet_optimizer(config.unet_train, 1), BASE_STEPS),
    ):
        params = nnx.state(model, nnx.Param)
        state = common.TrainState(
            step=jnp.full((), step, jnp.int32),
            params=params,
            opt_state=tx.init(params),
            ema_params=params if name == "unet" else None,
        )
        checkpoints = common.Checkpoints(workdir / name, 2)
        checkpoints.save(step, state, None)
        checkpoints.wait_until_finished()
    save_beat_decoder(
        workdir / "beat_decoder",
        BeatDecoder(16, 8, rngs=nnx.Rngs(0)),
        {"architecture": {"base": 16, "num_groups": 8}, "training": {"vae_step": 1}},
    )
    return workdir


def snapshot(directory):
    """{relative path: SHA-256} of every file under `directory`."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def ablate(base_workdir, processed_dirs, out, *extra):
    data = [arg for d in processed_dirs for arg in ("--dataset", str(d))]
    return cli.main(
        [
            "ablate",
            "--base-workdir",
            str(base_workdir),
            *data,
            "--out",
            str(out),
            "--steps",
            str(STEPS),
            "--learning-rate",
            str(LEARNING_RATE),
            "--interlead-weight",
            "1000",
            "--num-samples",
            "8",
            "--folds",
            ",".join(map(str, range(1, 11))),
            "--num-steps",
            "2",
            "--batch-size",
            "8",
            *extra,
        ]
    )


def test_ablation_trains_each_variant_on_one_budget_and_resumes(base_workdir, processed_dirs, tmp_path, capsys):
    before = snapshot(base_workdir)
    out = tmp_path / "ablation"
    assert ablate(base_workdir, processed_dirs, out, "--variants", "base,interlead") == 0
    first = capsys.readouterr().out
    assert "[1/2] base (official objective): fine-tuning steps 4 -> 7" in first
    scored = {v: (out / v / ablation.METRICS_FILE).stat().st_mtime_ns for v in ("base", "interlead")}

    # a rerun with one more variant skips the two finished ones
    assert ablate(base_workdir, processed_dirs, out, "--variants", "base,interlead,released") == 0
    second = capsys.readouterr().out
    for name in ("base", "interlead"):
        assert f"{name}: already fine-tuned and scored" in second
        assert (out / name / ablation.METRICS_FILE).stat().st_mtime_ns == scored[name]
    assert "[3/3] released" in second and "fine-tuning steps 4 -> 7" in second
    assert snapshot(base_workdir) == before  # only read

    summary = json.loads((out / "ablation.json").read_text())
    rows = {r["variant"]: r for r in summary["variants"]}
    assert list(rows) == ["base", "interlead", "released"]
    logged = {
        name: [json.loads(line) for line in (out / name / "unet_metrics.jsonl").read_text().splitlines()]
        for name in rows
    }
    for name, row in rows.items():
        assert row["unet_step"] == BASE_STEPS + STEPS == ablation.latest_step(out / name / "unet"), name
        for key in (
            "fid",
            "rfid_arxiv_v1",
            "precision",
            "recall",
            "clip_score",
            "lead_residual_mV",
            "loss",
            "diffusion_loss",
        ):
            assert math.isfinite(row[key]), (name, key, row[key])
        assert math.isfinite(row["hr_mae"]) or row["hr_undetected"] == 8, row
        assert [r["step"] for r in logged[name]] == list(range(BASE_STEPS + 1, BASE_STEPS + STEPS + 1))
        assert all(r["learning_rate"] == pytest.approx(LEARNING_RATE) for r in logged[name])  # constant
    assert rows["base"]["euler_loss"] is None and rows["base"]["loss"] == rows["base"]["diffusion_loss"]
    assert rows["interlead"]["loss"] > rows["interlead"]["diffusion_loss"]  # the weighted physics term
    assert rows["released"]["interlead_loss"] > 0 and rows["released"]["euler_loss"] > 0
    table = (out / "ablation.md").read_text()
    assert "| released |" in table and "| real (reference) |" in table and "| released |" in second

    # every variant starts from the same parameters on the same batch and noise: equal first losses
    diffusion = {
        name: np.array([r.get("diffusion_loss", r["loss"]) for r in records]) for name, records in logged.items()
    }
    assert diffusion["interlead"][0] == pytest.approx(diffusion["base"][0], rel=1e-6)
    # `released` (losses under stop_gradient) then trains like `base`, `interlead` does not
    np.testing.assert_allclose(diffusion["released"], diffusion["base"], rtol=1e-5)
    assert not np.allclose(diffusion["interlead"][1:], diffusion["base"][1:], rtol=1e-5)
    unet = {name: np.load(out / name / "model" / "unet.npz") for name in rows}
    distance = lambda a, b: math.sqrt(  # noqa: E731
        sum(float(np.sum((unet[a][k] - unet[b][k]) ** 2)) for k in unet[a].files)
    )
    assert distance("base", "interlead") > 1e-3
    # not bit-identical: XLA orders the two programs' sums differently and Adam magnifies it
    assert distance("base", "released") < 0.05 * distance("base", "interlead")
    samples = {name: np.load(out / name / "samples.npz")["signals"] for name in rows}
    np.testing.assert_allclose(samples["released"], samples["base"], atol=1e-4)
    assert not np.allclose(samples["interlead"], samples["base"], atol=1e-3)
    assert rows["released"]["fid"] == pytest.approx(rows["base"]["fid"], rel=1e-3)

    # the same directory with other settings is refused, not mixed
    assert ablate(base_workdir, processed_dirs, out, "--variants", "base", "--steps", "5") == 2
    assert "other settings (steps, unet_step differ)" in capsys.readouterr().err


def test_ablation_reports_bad_variants_and_missing_inputs(base_workdir, processed_dirs, tmp_path, capsys):
    out = tmp_path / "out"
    assert ablate(base_workdir, processed_dirs, out, "--variants", "base,bogus") == 2
    error = capsys.readouterr().err
    assert "unknown variant(s) bogus" in error and "base, euler, interlead, retrieval, full, released" in error
    assert ablate(base_workdir, processed_dirs, out, "--variants", "base,retrieval") == 2
    assert "retrieval need the retrieval-augmented sets: give --rag-dataset" in capsys.readouterr().err
    assert ablate(base_workdir, processed_dirs, out, "--variants", "euler", "--beat-decoder", str(tmp_path)) == 2
    assert f"no beat decoder in {tmp_path}" in capsys.readouterr().err
    assert ablate(tmp_path, processed_dirs, out, "--variants", "base") == 2
    assert f"--base-workdir {tmp_path}: no config.json" in capsys.readouterr().err
    assert not out.exists()  # nothing was started
    # wired into the command line
    with pytest.raises(SystemExit):
        cli.main(["ablate", "--help"])
    assert "retrieval-augmented reports" in capsys.readouterr().out


def test_variant_configs_set_the_objective_on_a_constant_learning_rate(base_workdir):
    base = ablation.load_base(base_workdir, None, needs_decoder=True)
    assert base.unet_step == BASE_STEPS and base.vae_step == 1
    assert base.decoder_dir == base_workdir / "beat_decoder"
    expected = {
        "base": (0, 0, True),
        "euler": (0.5, 0, True),
        "interlead": (0, 7.0, True),
        "retrieval": (0, 0, True),
        "full": (0.5, 7.0, True),
        "released": (0.5, 7.0, False),
    }
    for name, (euler, interlead, gradient) in expected.items():
        config = ablation.variant_config(base, ablation.VARIANTS[name], 10, 3e-4, 0.5, 7.0)
        assert (config.sediff.euler_weight, config.sediff.interlead_weight, config.sediff.physics_gradient) == (
            euler,
            interlead,
            gradient,
        ), name
        tc = config.unet_train
        assert (tc.num_steps, tc.learning_rate, tc.final_lr_fraction) == (BASE_STEPS + 10, 3e-4, 1.0), name
    assert base.config.sediff.euler_weight == 0.0 and base.config.unet_train.final_lr_fraction == 0.1  # copies
    assert "sediff" not in json.loads((base_workdir / "config.json").read_text())  # the base config is untouched


def test_retrieval_conditions_are_the_same_records_in_the_augmented_sets(processed_dirs, tmp_path):
    """The retrieval variants condition on the augmented sets' embeddings of the drawn records."""
    from diffusets_jax.data_pipelines.processed import MANIFEST_FILES
    from diffusets_jax.checkpoints import write_manifest

    rag_dirs = []
    for d in processed_dirs:
        rag = shutil.copytree(d, tmp_path / f"{d.name}_rag")
        with np.load(rag / "dataset.npz") as data:
            arrays = dict(data)
        arrays["text_embeddings"] = -arrays["text_embeddings"]  # stands in for the augmented reports'
        np.savez(rag / "dataset.npz", **arrays)
        write_manifest(rag, MANIFEST_FILES)  # a deliberate change: the set's manifest follows it
        rag_dirs.append(rag)
    folds = range(1, 11)
    conditions = ablation_evaluation.held_out_conditions(processed_dirs, rag_dirs, folds, 8, seed=0)
    np.testing.assert_array_equal(conditions.rag_text, -conditions.text)
    assert conditions.real.shape == (8, 1024, 12) and len(np.unique(conditions.heart_rate)) > 1
    with pytest.raises(ValueError, match="same order"):
        ablation_evaluation.held_out_conditions(processed_dirs, rag_dirs[::-1], folds, 8, seed=0)


def test_a_pretrained_model_directory_becomes_the_base_workdir(tmp_path, capsys):
    """`--base-workdir diffusets_jax/pretrained/default` works: the model directory is written out
    once as a training workdir whose checkpoints hold its weights (as parameters and as EMA)."""
    from diffusets_jax.models import build_unet, build_vae
    from diffusets_jax.pretrained import flatten_params, save_pretrained
    from diffusets_jax.training.diffusion import load_trained_unet, workdir_from_pretrained
    from diffusets_jax.training.vae import load_trained_vae

    config = tiny_config()
    config.unet.channels = (8,)
    config.vae_train.num_steps, config.unet_train.num_steps = 5, 12
    vae, unet = build_vae(config), build_unet(config)
    model = save_pretrained(tmp_path / "model", config, vae, unet)
    out = tmp_path / "out"

    workdir = ablation.workdir_of(model, out)
    assert workdir == out / ablation.BASE_FROM_MODEL
    assert "is a model directory: wrote the training workdir" in capsys.readouterr().out
    base = ablation.load_base(workdir, None, needs_decoder=False)
    assert (base.vae_step, base.unet_step) == (5, 12)
    weights = lambda module: flatten_params(nnx.state(module, nnx.Param))  # noqa: E731
    expected = {"vae": weights(vae), "unet": weights(unet)}
    loaded = {
        "vae": weights(load_trained_vae(base.config, workdir)[0]),
        "unet_ema": weights(load_trained_unet(base.config, workdir, use_ema=True)[0]),
        "unet_raw": weights(load_trained_unet(base.config, workdir, use_ema=False)[0]),
    }
    for name, flat in loaded.items():
        reference = expected[name.split("_")[0]]
        assert flat.keys() == reference.keys(), name
        for key in flat:
            np.testing.assert_array_equal(flat[key], reference[key], err_msg=f"{name} {key}")

    before = snapshot(workdir)
    assert ablation.workdir_of(model, out) == workdir and snapshot(workdir) == before  # written once
    assert "model directory" not in capsys.readouterr().out
    assert ablation.workdir_of(workdir, out) == workdir  # a training workdir is used as it is
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        workdir_from_pretrained(model, workdir)
