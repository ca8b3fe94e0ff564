"""Checkpoints: the model-directory format and its manifest, params-only restore from orbax, and
the fall-back past a broken newest step (issue 18 case 5, issue 15 item 1)."""

import json
import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_config
from diffusets_jax.checkpoints import MANIFEST_FILE, read_config, steps
from diffusets_jax.errors import CheckpointError, IntegrityError, MissingFileError
from diffusets_jax.pretrained import DEFAULT_MODEL_DIR, flatten_params, load_pretrained, save_pretrained
from diffusets_jax.training import common


# ------------------------------------------------------------------------------------------------
# A workdir with an intact VAE step 40 and a later step 60 (parameters doubled)


def _vae_state(config, vae, step, scale=1.0):
    from diffusets_jax.training.vae import vae_optimizer

    params = jax.tree.map(lambda x: x * scale, nnx.state(vae, nnx.Param))
    tx = vae_optimizer(config.vae_train, 1)
    return common.TrainState(step=jnp.full((), step, jnp.int32), params=params, opt_state=tx.init(params))


@pytest.fixture(scope="module")
def pristine_workdir(tiny_model_dir, tmp_path_factory):
    from diffusets_jax.training.diffusion import workdir_from_pretrained

    run = tmp_path_factory.mktemp("pristine") / "run"
    workdir_from_pretrained(tiny_model_dir, run)  # vae/40 and unet/40, config.json
    config, vae, _ = load_pretrained(tiny_model_dir)
    checkpoints = common.Checkpoints(run / "vae", 3)
    checkpoints.save(60, _vae_state(config, vae, 60, 2.0), None)
    checkpoints.wait_until_finished()
    return run


@pytest.fixture
def workdir(pristine_workdir, tmp_path):
    return shutil.copytree(pristine_workdir, tmp_path / "run")


def _largest_array_file(step_dir):
    files = [p for p in (step_dir / "default").rglob("*") if p.is_file() and p.parent.name == "d"]
    return max(files, key=lambda p: p.stat().st_size)


def _break(step_dir, how):
    """Damage a saved step as a full disk or a cut copy would; returns the damaged file."""
    path = step_dir / "default" / "_METADATA" if how.startswith("metadata") else _largest_array_file(step_dir)
    if how.endswith("truncated"):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:  # same size, bytes overwritten
        data = bytearray(path.read_bytes())
        data[8:-8] = bytes(len(data) - 16)
        path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("how", ["array truncated", "metadata truncated", "metadata garbled"])
def test_a_broken_newest_step_falls_back_to_the_intact_one_and_names_the_file(workdir, tiny_model_dir, how):
    from diffusets_jax.training.vae import load_trained_vae

    broken = _break(workdir / "vae" / "60", how)
    config = read_config(workdir)
    with pytest.warns(steps.CheckpointFallbackWarning) as caught:
        vae, step = load_trained_vae(config, workdir)
    message = str(caught[0].message)
    assert step == 40 and "step 60" in message and str(broken) in message, message
    expected = flatten_params(nnx.state(load_pretrained(tiny_model_dir)[1], nnx.Param))
    got = flatten_params(nnx.state(vae, nnx.Param))
    assert all(np.array_equal(got[k], expected[k]) for k in expected)
    assert broken.exists()  # read-only: nothing moved


@pytest.mark.slow
def test_export_falls_back_too_and_the_export_loads(workdir, tmp_path):
    from diffusets_jax.training.diffusion import export_workdir

    _break(workdir / "vae" / "60", "array truncated")
    with pytest.warns(steps.CheckpointFallbackWarning, match="step 60"):
        out = export_workdir(workdir, tmp_path / "model")
    assert (out / MANIFEST_FILE).is_file()
    load_pretrained(out)


def test_resuming_moves_the_broken_step_aside_and_later_steps_save(workdir, tiny_model_dir):
    config, vae, _ = load_pretrained(tiny_model_dir)
    broken = _break(workdir / "vae" / "60", "array truncated")
    checkpoints = common.Checkpoints(workdir / "vae", 3)
    with pytest.warns(steps.CheckpointFallbackWarning, match="moved the broken step 60"):
        restored = common.restore_or_init(checkpoints, _vae_state(config, vae, 0))
    assert int(restored.step) == 40
    kept = workdir / "vae_broken" / "60"
    assert (kept / broken.relative_to(workdir / "vae" / "60")).is_file()  # kept, not deleted
    assert checkpoints.latest_step() == 40
    checkpoints.save(60, _vae_state(config, vae, 60), None)  # the same number saves again
    checkpoints.wait_until_finished()
    assert checkpoints.latest_step() == 60


def test_when_no_step_restores_the_newest_is_named(workdir):
    from diffusets_jax.training.vae import load_trained_vae

    _break(workdir / "vae" / "60", "metadata truncated")
    _break(workdir / "vae" / "40", "array truncated")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError, match=r"vae can be restored; newest: step 60: .*_METADATA"):
            load_trained_vae(read_config(workdir), workdir)


def test_a_workdir_without_checkpoints_names_the_command(tmp_path):
    from diffusets_jax.training.diffusion import load_trained_unet

    with pytest.raises(MissingFileError, match="train-diffusion"):
        load_trained_unet(tiny_config(), tmp_path)


# ------------------------------------------------------------------------------------------------
# Model directories


def test_save_writes_a_manifest_and_loading_checks_it(tiny_model_dir, tmp_path):
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    manifest = json.loads((model / MANIFEST_FILE).read_text())
    assert set(manifest["files"]) == {"config.json", "vae.npz", "unet.npz"}
    assert not list(model.glob(".*tmp"))  # no temporary file left behind
    path = model / "unet.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4800] = bytes(4800)  # same size, 4.8 kB overwritten
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=f"{path}: SHA-256 differs"):
        load_pretrained(model)


@pytest.mark.parametrize("damage", ["garbled", "zero bytes", "truncated"])
def test_a_damaged_archive_without_manifest_is_named(tiny_model_dir, tmp_path, damage):
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (model / MANIFEST_FILE).unlink()  # as in a directory written before manifests
    path = model / "vae.npz"
    data = path.read_bytes()
    if damage == "garbled":
        data = data[:2000] + bytes(4800) + data[6800:]
    path.write_bytes(b"" if damage == "zero bytes" else data[: len(data) // 2] if damage == "truncated" else data)
    with pytest.raises(CheckpointError, match=str(path)):
        load_pretrained(model)


def test_nan_weights_are_named_with_the_parameter(tiny_model_dir, tmp_path):
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (model / MANIFEST_FILE).unlink()
    with np.load(model / "unet.npz") as data:
        arrays = dict(data)
    key = sorted(arrays)[3]
    arrays[key] = arrays[key].copy()
    arrays[key].flat[0] = np.nan
    np.savez(model / "unet.npz", **arrays)
    with pytest.raises(CheckpointError, match=f"unet.npz: parameter '{key}' holds 1 NaN/inf"):
        load_pretrained(model)


def test_directories_without_manifest_load_with_the_same_numbers(tiny_model_dir, tmp_path):
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (model / MANIFEST_FILE).unlink()
    _, vae, unet = load_pretrained(model)
    _, vae2, unet2 = load_pretrained(tiny_model_dir)
    for a, b in ((vae, vae2), (unet, unet2)):
        fa, fb = flatten_params(nnx.state(a, nnx.Param)), flatten_params(nnx.state(b, nnx.Param))
        assert all(np.array_equal(fa[k], fb[k]) for k in fb)


@pytest.mark.slow
def test_the_shipped_model_loads_and_its_manifest_matches():
    config, vae, unet = load_pretrained(DEFAULT_MODEL_DIR)
    assert config.unet_train.condition_dropout >= 0


def test_read_config_migrates_fields_added_later(tmp_path):
    config = tiny_config()
    save_pretrained(tmp_path, config, *_tiny_models(config))
    data = json.loads((tmp_path / "config.json").read_text())
    del data["unet_train"]["condition_dropout"], data["vae_train"]["grad_clip_norm"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    migrated = read_config(tmp_path)
    assert migrated.unet_train.condition_dropout == 0.0 and migrated.vae_train.grad_clip_norm == 0.0


def _tiny_models(config):
    from diffusets_jax.models import build_unet, build_vae

    return build_vae(config), build_unet(config)
