"""Shared pytest fixtures: paths of the small real-data fixtures in tests/data (see ATTRIBUTION.md)."""

import os
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """One persistent JAX compilation cache for the run: `$DIFFUSETS_JAX_CACHE_DIR` (CI shares one
    between the two test tiers), else a temporary directory. A program compiled by one test (or
    by a CLI subprocess, which inherits the variable) is loaded, not compiled again, by the next."""
    from diffusets_jax import compile_cache

    os.environ.setdefault(compile_cache.ENV_VAR, str(tmp_path_factory.mktemp("jax-cache")))
    return compile_cache.enable(os.environ[compile_cache.ENV_VAR])


@pytest.fixture(scope="session", autouse=True)
def embedding_cache(tmp_path_factory):
    """The prompt-embedding cache of generation (`text.CachedEmbedder`) in a temporary directory,
    not the user's (CLI subprocesses inherit the variable)."""
    from diffusets_jax.text import EMBEDDING_CACHE_ENV_VAR

    os.environ[EMBEDDING_CACHE_ENV_VAR] = str(tmp_path_factory.mktemp("embedding-cache"))
    return Path(os.environ[EMBEDDING_CACHE_ENV_VAR])


@pytest.fixture(scope="session")
def ptbxl_root() -> Path:
    return DATA / "ptb-xl"


@pytest.fixture(scope="session")
def ludb_root() -> Path:
    return DATA / "ludb"


@pytest.fixture(scope="session")
def mimic_root() -> Path:
    return DATA / "mimic_fixture"


@pytest.fixture(scope="session")
def cinc_root() -> Path:
    return DATA / "cinc"


def tiny_config():
    """The `small` config shrunk further so that a training step takes well under a second."""
    from diffusets_jax.config import load_config

    config = load_config("small")
    config.vae.channels = (8, 16, 16)
    config.unet.channels = (8, 16, 32)
    for train in (config.vae_train, config.unet_train):
        train.batch_size = 4
        train.num_epochs = 0
        train.num_steps = 40
        train.log_every = 1
        train.checkpoint_every = 20
    config.vae_train.max_learning_rate = 3e-3
    config.unet_train.learning_rate = 2e-3
    config.unet_train.ema_decay = 0.9
    config.unet_train.preview_steps = 5
    # Condition dropout makes 40-step losses noisier; the loss-falls test needs the plain objective,
    # which EDM preconditioning (whose loss starts near the Gaussian optimum) and heart-rate
    # augmentation (4x the examples to encode) would change: they have tests of their own.
    config.unet_train.condition_dropout = 0.0
    config.unet.preconditioning = "none"
    config.data.hr_augment_copies = 0
    config.data.train_folds = tuple(range(1, 11))
    config.sampling.num_steps = 10
    config.sampling.batch_size = 2
    return config


@pytest.fixture(scope="session")
def processed_dirs(tmp_path_factory, ptbxl_root, ludb_root):
    """The fixture PTB-XL and LUDB records prepared as training sets (MiniLM embeddings)."""
    from diffusets_jax.data_pipelines.prepare import load_records
    from diffusets_jax.data_pipelines.processed import save_processed
    from diffusets_jax.text import get_embedder

    embedder = get_embedder("minilm")
    out = tmp_path_factory.mktemp("processed")
    dirs = []
    for source, root in (("ptbxl", ptbxl_root), ("ludb", ludb_root)):
        records, skipped = load_records(source, root, progress=False)
        dirs.append(save_processed(records, skipped, out / source, embedder, source=source, root=str(root)))
    return dirs


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised `tiny_config` model directory (fast to load and sample)."""
    from diffusets_jax.models import build_unet, build_vae
    from diffusets_jax.pretrained import save_pretrained

    config = tiny_config()
    return save_pretrained(tmp_path_factory.mktemp("tiny"), config, build_vae(config), build_unet(config))


@pytest.fixture(scope="module")
def tiny_pipeline(tiny_model_dir):
    from diffusets_jax import Pipeline

    return Pipeline.from_pretrained(tiny_model_dir)
