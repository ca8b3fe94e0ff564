"""Training on real records: losses fall, checkpoints resume, bad data is refused."""

import json

import numpy as np
import pytest

from conftest import tiny_config
from data_pipelines.processed import load_processed
from diffusets_jax.training.diffusion import export_workdir, train_diffusion
from diffusets_jax.training.vae import train_vae


def read_metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_processed_set_holds_conditions_and_embeddings(processed_dirs):
    dataset = load_processed(processed_dirs)
    n = len(dataset)
    assert n == 9  # 5 PTB-XL fixture records (one has no age) + 5 LUDB
    assert dataset.signals.shape == (n, 1024, 12) and dataset.signals.dtype == np.float32
    assert dataset.text_embeddings.shape == (n, 384)
    np.testing.assert_allclose(np.linalg.norm(dataset.text_embeddings, axis=1), 1.0, rtol=1e-4)
    assert set(dataset.sex) <= {"M", "F"} and np.all((dataset.age > 0) & (dataset.age < 120))
    assert np.all((dataset.heart_rate > 30) & (dataset.heart_rate < 200))
    assert all(p.startswith("Most importantly, the 1st diagnosis is {") for p in dataset.prompts)
    skipped = (processed_dirs[0] / "skipped.csv").read_text()
    assert "108" in skipped and "age" in skipped


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory, processed_dirs):
    workdir = tmp_path_factory.mktemp("workdir")
    config = tiny_config()
    train_vae(config, workdir, processed_dirs)
    train_diffusion(config, workdir, processed_dirs)
    return workdir


def test_vae_reconstruction_loss_falls(trained_workdir):
    losses = [m["reconstruction"] for m in read_metrics(trained_workdir / "vae_metrics.jsonl")]
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3])


def test_diffusion_loss_falls(trained_workdir):
    losses = [m["loss"] for m in read_metrics(trained_workdir / "unet_metrics.jsonl")]
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:5])


def test_interrupted_training_resumes_with_the_same_losses(tmp_path, processed_dirs, trained_workdir):
    config = tiny_config()
    train_vae(config, tmp_path, processed_dirs, stop_after=13)  # checkpoint at 13, then "crash"
    assert len(read_metrics(tmp_path / "vae_metrics.jsonl")) == 13
    train_vae(config, tmp_path, processed_dirs)  # restart: resumes from step 13
    resumed = read_metrics(tmp_path / "vae_metrics.jsonl")
    reference = read_metrics(trained_workdir / "vae_metrics.jsonl")
    assert [m["step"] for m in resumed] == list(range(1, 41))
    np.testing.assert_allclose(
        [m["loss"] for m in resumed], [m["loss"] for m in reference], rtol=1e-4
    )


def test_export_writes_a_loadable_model(trained_workdir, tmp_path):
    from diffusets_jax.pretrained import load_pretrained

    out = export_workdir(trained_workdir, tmp_path / "model")
    config, vae, unet = load_pretrained(out)
    assert tuple(config.vae.channels) == (8, 16, 16)
    assert unet.text_embed_dim == 384


def test_diffusion_needs_a_trained_vae(tmp_path, processed_dirs):
    with pytest.raises(FileNotFoundError, match="train-vae"):
        train_diffusion(tiny_config(), tmp_path, processed_dirs)


def test_missing_dataset_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare"):
        train_vae(tiny_config(), tmp_path / "w", [tmp_path / "nowhere"])


def test_batch_larger_than_dataset_is_refused(tmp_path, processed_dirs):
    config = tiny_config()
    config.vae_train.batch_size = 64
    with pytest.raises(ValueError, match="batch_size=64"):
        train_vae(config, tmp_path, processed_dirs)
