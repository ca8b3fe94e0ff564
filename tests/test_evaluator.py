"""The CLIP evaluator (official `clip/clip_model.py`): Net1D shapes and sizes, the contrastive
loss, training, saving/loading, and the shipped evaluator on the real fixture records."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from flax import nnx

from diffusets_jax.configs.evaluator import get_config
from diffusets_jax.config import load_config
from diffusets_jax.evaluation.clip import build_evaluator, contrastive_loss, retrieval_accuracy
from diffusets_jax.evaluation.net1d import BasicBlock, Net1D, paper_net1d_kwargs
from diffusets_jax.evaluation.train_clip import (
    DEFAULT_EVALUATOR_DIR,
    evaluator_features,
    load_evaluator,
    load_trained_evaluator,
    save_evaluator,
    train_clip,
)


def count(module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def tiny_evaluator_config():
    config = load_config("evaluator")
    e = config.evaluator
    e.base_filters, e.filter_list, e.m_blocks_list = 16, (16, 32), (1, 2)
    e.text_hidden = 64
    e.dropout = 0.0
    e.batch_size = 8
    e.num_steps = 30
    e.learning_rate = 3e-3
    e.log_every = 5
    e.checkpoint_every = 15
    e.eval_batches = 1
    config.data.train_folds = tuple(range(1, 11))
    return config


def test_paper_sizes_match_the_official_parameter_counts():
    net = nnx.eval_shape(lambda: Net1D(**paper_net1d_kwargs(), rngs=nnx.Rngs(0)))
    assert count(net) == 18_660_992
    config = get_config("paper")
    config.text.embed_dim = 1536  # OpenAI ada-002, as officially
    evaluator = nnx.eval_shape(lambda: build_evaluator(config))
    assert count(evaluator) == 22_005_505
    assert (count(evaluator.ecg_projector), count(evaluator.text_projector)) == (65_600, 3_278_912)


def test_net1d_halves_time_per_stage_and_returns_the_last_width():
    config = load_config("evaluator")
    evaluator = build_evaluator(config)
    net = evaluator.resnet
    signals = jnp.asarray(np.random.default_rng(0).normal(size=(2, 1024, 12)), jnp.float32)
    x = net.first_conv(signals)
    lengths = [x.shape[1]]
    for stage in net.stage_list:
        x = stage(x)
        lengths.append(x.shape[1])
    assert lengths == [512, 256, 128, 64, 32]
    assert x.shape[2] == config.evaluator.filter_list[-1]
    assert net(signals).shape == (2, config.evaluator.filter_list[-1])
    texts = jnp.ones((2, config.text.embed_dim))
    assert evaluator.ecg_features(signals).shape == evaluator.text_features(texts).shape == (2, 64)
    assert evaluator(signals, texts).shape == (2, 2)
    train_out = evaluator.ecg_features(signals, train=True, rngs=nnx.Rngs(dropout=1))
    assert train_out.shape == (2, 64) and not np.allclose(train_out, evaluator.ecg_features(signals))


def test_downsampling_block_identity_is_max_pooled_and_channel_padded():
    block = BasicBlock(
        4,
        8,
        ratio=1.0,
        kernel_size=16,
        stride=2,
        groups=1,
        downsample=True,
        is_first_block=False,
        dropout=0.5,
        rngs=nnx.Rngs(0),
    )
    block.conv3.kernel[...] = jnp.zeros_like(block.conv3.kernel[...])  # residual branch off: output = identity
    block.conv3.bias[...] = jnp.zeros_like(block.conv3.bias[...])
    x = np.random.default_rng(3).normal(size=(2, 6, 4)).astype(np.float32)
    pooled = np.maximum(x[:, 0::2], x[:, 1::2])  # (2, 3, 4)
    expected = np.pad(pooled, ((0, 0), (0, 0), (2, 2)))
    np.testing.assert_array_equal(block(jnp.asarray(x)), expected)


def test_net1d_rejects_widths_that_do_not_split_into_groups():
    with pytest.raises(ValueError, match="groups_width"):
        Net1D(filter_list=(24,), m_blocks_list=(1,), rngs=nnx.Rngs(0))


def test_contrastive_loss_matches_numpy():
    logits = np.random.default_rng(1).normal(size=(5, 5)) * 3

    def cross_entropy(rows):  # mean over rows i of -log softmax(rows[i])[i]
        return -np.mean(np.diag(scipy.special.log_softmax(rows, axis=1)))

    expected = (cross_entropy(logits) + cross_entropy(logits.T)) / 2
    np.testing.assert_allclose(contrastive_loss(jnp.asarray(logits, jnp.float32)), expected, rtol=1e-5)


def test_logit_scale_starts_at_one_over_0_07():
    logit_scale = build_evaluator(tiny_evaluator_config()).logit_scale[...]
    assert logit_scale.shape == () and math.isclose(float(np.exp(logit_scale)), 1 / 0.07, rel_tol=1e-5)


def test_retrieval_accuracy_counts_exact_and_same_report_hits():
    features = np.eye(4)
    perfect = retrieval_accuracy(features, features, np.array(["a", "a", "b", "c"]), ks=(1, 2))
    assert perfect["ecg_to_text_top1"] == perfect["text_to_ecg_top1"] == 1.0
    assert perfect["chance_top1"] == 0.25
    assert perfect["chance_same_text_top1"] == pytest.approx((2 + 2 + 1 + 1) / 16)
    swapped = retrieval_accuracy(features, features[[1, 0, 2, 3]], np.array(["a", "a", "b", "c"]), ks=(1,))
    assert swapped["ecg_to_text_top1"] == 0.5 and swapped["ecg_to_text_same_text_top1"] == 1.0


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory, processed_dirs):
    workdir = tmp_path_factory.mktemp("evaluator")
    config = tiny_evaluator_config()
    before = build_evaluator(config)  # the initialisation train_clip starts from (same seed)
    train_clip(config, workdir, processed_dirs)
    return config, before, workdir


def mean_loss(model, processed_dirs):
    from diffusets_jax.data_pipelines.processed import load_processed

    data = load_processed(processed_dirs)
    ecg, text = evaluator_features(model, data.signals, data.text_embeddings)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    logits = np.exp(model.logit_scale[...]) * unit(ecg) @ unit(text).T  # (N, N), every fixture record
    return float(contrastive_loss(jnp.asarray(logits)))


@pytest.mark.slow
def test_training_lowers_the_contrastive_loss(trained_tiny, processed_dirs):
    config, before, workdir = trained_tiny
    _, after, step = load_trained_evaluator(workdir)
    assert step == config.evaluator.num_steps
    assert mean_loss(after, processed_dirs) < mean_loss(before, processed_dirs) - 0.1


@pytest.mark.slow
def test_save_and_load_give_identical_features(trained_tiny, tmp_path):
    _, _, workdir = trained_tiny
    config, model, _ = load_trained_evaluator(workdir)
    save_evaluator(tmp_path / "saved", config, model, "card")
    _, loaded = load_evaluator(tmp_path / "saved")
    rng = np.random.default_rng(2)
    signals, texts = rng.normal(size=(3, 1024, 12)), rng.normal(size=(3, config.text.embed_dim))
    for a, b in zip(evaluator_features(model, signals, texts), evaluator_features(loaded, signals, texts)):
        np.testing.assert_array_equal(a, b)
    assert (tmp_path / "saved" / "MODEL_CARD.md").read_text() == "card"


@pytest.mark.slow
def test_evaluator_config_trains_one_step(tmp_path, processed_dirs):
    config = load_config("evaluator", ["evaluator.batch_size=8"])
    train_clip(config, tmp_path, processed_dirs, stop_after=1)
    _, _, step = load_trained_evaluator(tmp_path)
    assert step == 1


def test_load_evaluator_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_evaluator(tmp_path)


def test_shipped_evaluator_matches_real_ecgs_with_their_reports(processed_dirs):
    """8 of the 9 fixture records are in the shipped evaluator's training folds, so this checks that
    the shipped weights load and work, not how they generalise (MODEL_CARD.md has held-out numbers)."""
    from diffusets_jax.data_pipelines.processed import load_processed

    _, evaluator = load_evaluator(DEFAULT_EVALUATOR_DIR)
    data = load_processed(processed_dirs)
    ecg, text = evaluator_features(evaluator, data.signals, data.text_embeddings)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    cosine = unit(ecg) @ unit(text).T  # (N ECGs, N texts)
    n = len(cosine)
    matched = np.trace(cosine) / n
    mismatched = (cosine.sum() - np.trace(cosine)) / (n * n - n)
    assert matched > mismatched
