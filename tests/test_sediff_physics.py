"""SE-Diff's beat decoder, its training and the physics losses (diffusets_jax.sediff.beat_decoder,
.beat_decoder_training, .physics) and their integration into the U-Net trainer."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import tiny_config
from diffusets_jax.conditions import class_indices
from diffusets_jax.constants import LEADS
from diffusets_jax.errors import ConfigError
from diffusets_jax.leads import derive_limb_leads
from diffusets_jax.sediff import beat_decoder, beat_decoder_training, ecgsyn, physics


def small_config():
    """`tiny_config` with a two-level U-Net (compiles faster)."""
    config = tiny_config()
    config.unet.channels = (8, 16)
    return config


@pytest.fixture(scope="module")
def vae_workdir(tmp_path_factory):
    """A workdir with an untrained tiny VAE checkpoint (its latents still differ per record)."""
    from diffusets_jax.config import config_to_json
    from diffusets_jax.models import build_vae
    from diffusets_jax.training import common
    from diffusets_jax.training.vae import vae_optimizer

    workdir = tmp_path_factory.mktemp("physics_workdir")
    config = small_config()
    (workdir / "config.json").write_text(config_to_json(config))
    params = nnx.state(build_vae(config), nnx.Param)
    state = common.TrainState(
        step=jnp.ones((), jnp.int32), params=params, opt_state=vae_optimizer(config.vae_train, 1).init(params)
    )
    checkpoints = common.Checkpoints(workdir / "vae", 1)
    checkpoints.save(1, state, None)
    checkpoints.wait_until_finished()
    return workdir


@pytest.fixture(scope="module")
def decoder_record(vae_workdir, processed_dirs):
    return beat_decoder_training.train_beat_decoder(
        vae_workdir,
        processed_dirs,
        steps=150,
        batch_size=8,
        base=16,
        num_groups=8,
        learning_rate=3e-3,
        log_every=1,
        progress=False,
    )


@pytest.fixture(scope="module")
def table():
    return physics.load_class_table()


def test_beat_decoder_shapes():
    decoder = beat_decoder.BeatDecoder(16, 8, rngs=nnx.Rngs(0))
    assert decoder(jnp.zeros((3, 128, 4))).shape == (3, ecgsyn.BEAT_LENGTH, len(LEADS))
    with pytest.raises(ValueError, match="divide"):
        beat_decoder.BeatDecoder(12, 8, rngs=nnx.Rngs(0))


def test_beat_decoder_training_reduces_its_loss(decoder_record, vae_workdir):
    record = decoder_record
    first, last = record["initial_metrics"], record["train_metrics"]
    assert record["training"]["train_records"] == 9  # every fixture record has beats
    assert last["loss"] < 0.3 * first["loss"], (first, last)
    assert last["beat_mse"] < 0.3 * first["beat_mse"] and last["spectral"] < first["spectral"]
    history = [h["loss"] for h in record["history"]]  # every step's (log_every=1) batch loss
    assert [h["step"] for h in record["history"]] == list(range(1, 151))
    assert np.mean(history[-10:]) < 0.5 * history[0]
    # saved and loaded back: same outputs
    loaded, saved = beat_decoder.load_beat_decoder(vae_workdir / "beat_decoder")
    assert saved["architecture"]["base"] == 16
    z = jax.random.normal(jax.random.key(0), (2, 128, 4)) * 0.2
    decoder = beat_decoder.BeatDecoder(16, 8, rngs=nnx.Rngs(0))
    assert not np.allclose(loaded(z), decoder(z))  # trained != initial


def test_interrupted_beat_decoder_training_resumes_to_the_same_parameters(
    vae_workdir, processed_dirs, tmp_path, capsys
):
    """6 steps in one go, and 3 steps, "interrupted", then resumed to 6 in a second call: the same
    losses at every step and bit-identical parameters; a finished run is not retrained or
    overwritten, and other settings or another run's decoder are refused."""
    import shutil

    from diffusets_jax.checkpoints.model_dir import flatten_params

    def workdir(name):
        path = tmp_path / name
        path.mkdir()
        shutil.copy(vae_workdir / "config.json", path)
        shutil.copytree(vae_workdir / "vae", path / "vae")
        return path

    def train(path, **kwargs):
        return beat_decoder_training.train_beat_decoder(
            path,
            processed_dirs,
            **{
                "steps": 6,
                "batch_size": 8,
                "base": 16,
                "num_groups": 8,
                "shifts": 1,
                "log_every": 1,
                "checkpoint_every": 2,
                "progress": False,
                **kwargs,
            },
        )

    def metrics(path):
        return [json.loads(line) for line in (path / "beat_decoder_metrics.jsonl").read_text().splitlines()]

    whole, parts = workdir("whole"), workdir("parts")
    train(whole)
    assert train(parts, stop_after=3) is None
    assert not (parts / "beat_decoder").exists() and (parts / "beat_decoder_checkpoints" / "3").is_dir()
    capsys.readouterr()
    record = train(parts)
    assert (
        f"resumed from checkpoint at step 3 in {(parts / 'beat_decoder_checkpoints').absolute()}"
        in capsys.readouterr().out
    )
    assert record["training"]["resumed_from"] == 3 and record["training"]["steps"] == 6
    assert [h["step"] for h in record["history"]] == list(range(1, 7))
    for key in ("loss", "beat_mse", "spectral", "grad_norm"):
        assert [m[key] for m in metrics(parts)] == [m[key] for m in metrics(whole)], key
    expected = flatten_params(nnx.state(beat_decoder.load_beat_decoder(whole / "beat_decoder")[0], nnx.Param))
    resumed = flatten_params(nnx.state(beat_decoder.load_beat_decoder(parts / "beat_decoder")[0], nnx.Param))
    assert expected.keys() == resumed.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)

    # finished: a rerun trains nothing and leaves the decoder as it is
    saved = parts / "beat_decoder" / "beat_decoder.npz"
    stamp = saved.stat().st_mtime_ns
    again = train(parts)
    assert again["already_trained"] and again["training"]["created"] == record["training"]["created"]
    assert "nothing to do" in capsys.readouterr().out and saved.stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="base=16 \\(now 32\\)"):  # checkpoints of other settings
        train(parts, base=32)
    with pytest.raises(FileExistsError, match="not trained in"):  # another workdir's decoder
        train(parts, out=whole / "beat_decoder")
    fresh = workdir("fresh")
    with pytest.raises(FileExistsError, match="no checkpoint to resume"):
        train(fresh, out=whole / "beat_decoder")
    assert saved.stat().st_mtime_ns == stamp


def test_beat_targets_are_r_aligned(processed_dirs):
    from diffusets_jax.data_pipelines.processed import load_processed

    signals = load_processed(processed_dirs).signals[:3]
    targets = beat_decoder.beat_targets(signals)
    assert targets.has_beats.all() and targets.spectra.shape[2:] == (31, 12)
    lead_ii = targets.mean_beat[:, :, LEADS.index("II")]
    assert np.all(np.abs(np.argmax(np.abs(lead_ii), axis=1) - ecgsyn.BEAT_R_INDEX) <= 1)


def test_spectral_loss_is_zero_for_the_observed_beats_and_masks_padding():
    beats = jax.random.normal(jax.random.key(1), (2, 61, 12))
    spectra = beat_decoder.log_spectrum(beats)[:, None]  # one observed beat per record
    padded = jnp.concatenate([spectra, spectra + 5.0], axis=1)  # a second, padded beat
    w = jnp.asarray(beat_decoder.spectral_weights())
    assert w[0] == 0 and w[1] == beat_decoder.LOW_BAND_WEIGHT and w[-1] == 1.0
    assert float(beat_decoder.spectral_loss(beats, padded, jnp.array([[1.0, 0.0]] * 2), w)) == 0.0
    assert float(beat_decoder.spectral_loss(beats, padded, jnp.array([[1.0, 1.0]] * 2), w)) > 1.0


def test_interlead_loss_is_zero_exactly_for_consistent_beats():
    beats = derive_limb_leads(jax.random.normal(jax.random.key(2), (4, 61, 12)))
    assert float(physics.interlead_loss(beats)) == 0.0
    chest = beats.at[..., LEADS.index("V3")].add(1.0)  # the chest leads are unconstrained
    assert float(physics.interlead_loss(chest)) == 0.0
    for lead in ("I", "II", "III", "aVR", "aVL", "aVF"):
        broken = beats.at[0, 10, LEADS.index(lead)].add(0.1)
        assert float(physics.interlead_loss(broken)) > 1e-5, lead


def class_beat(table, name, heart_rate):
    """The class's fitted ECGSYN beat (61, 12) mV at `heart_rate`."""
    c = table.names.index(name)
    params = ecgsyn.WaveParams(table.theta[c], table.a[c], table.b[c])
    beats = jax.vmap(lambda p: ecgsyn.simulate_beat(p, heart_rate))(params)  # (12, 61)
    return beats.T + table.offset[c]


def test_euler_loss_prefers_simulated_beats_of_the_class(table):
    hr = jnp.array([70.0])
    losses = {}
    for name in ("all", "lbbb"):
        index = jnp.array([table.names.index(name)])
        simulated = class_beat(table, name, 70.0)[None]
        scale = float(jnp.std(simulated))
        noise = scale * jax.random.normal(jax.random.key(3), simulated.shape)
        losses[name] = (
            float(physics.euler_loss(simulated, index, hr, table)),
            float(physics.euler_loss(noise, index, hr, table)),
            float(physics.euler_loss(jnp.zeros_like(simulated), index, hr, table)),
        )
        sim, noisy, flat = losses[name]
        assert sim < 0.2 * noisy and sim < 0.5 * flat, (name, losses[name])
    # the class parameters matter: an LBBB beat fits the LBBB field better than the 'all' field
    lbbb = class_beat(table, "lbbb", 70.0)[None]
    all_index, lbbb_index = (jnp.array([table.names.index(n)]) for n in ("all", "lbbb"))
    assert physics.euler_loss(lbbb, lbbb_index, hr, table) < physics.euler_loss(lbbb, all_index, hr, table)


def test_class_indices_pick_the_specific_class(table):
    reports = ["sinus rhythm|left bundle branch block", "sinus rhythm", "unreadable", "normal ecg|sinus rhythm"]
    names = [table.names[i] for i in class_indices(reports, table.names)]
    assert names == ["lbbb", "sinus_rhythm", "all", "normal"]
    assert table.names[-1] == "all" and table.theta.shape == (len(table.names), 12, 5)


def _gradients(config, table, decoder, x0, condition, batch, key, plain=None):
    """`(plain gradient, physics gradient, physics total, its parts)`; `plain` reused if given."""
    from diffusets_jax.models import build_unet
    from diffusets_jax.training.common import compute_dtype
    from diffusets_jax.diffusion import schedule_from_config
    from diffusets_jax.training.diffusion import _loss

    graphdef, params = nnx.split(build_unet(config), nnx.Param)
    schedule, d, dtype = schedule_from_config(config.diffusion), config.diffusion, compute_dtype(config.unet_train)
    terms = physics.PhysicsLoss(decoder, table)
    if plain is None:
        plain = jax.jit(jax.value_and_grad(lambda p: _loss(graphdef, p, x0, condition, key, schedule, d, dtype)[0]))(
            params
        )
    plain_value, plain_grads = plain
    (value, parts), grads = jax.jit(
        jax.value_and_grad(
            lambda p: _loss(
                graphdef, p, x0, condition, key, schedule, d, dtype, [physics.physics_aux_loss(terms, config)], batch
            ),
            has_aux=True,
        )
    )(params)
    np.testing.assert_allclose(float(parts["diffusion_loss"]), float(plain_value), rtol=1e-6)
    return plain, grads, value, parts


def relative_changes(grads, reference):
    """Per parameter array: |grads - reference| / (|reference| + 1e-3 |all of reference|), Frobenius
    norms (the floor keeps arrays with a vanishing gradient from dividing by ~0)."""
    floor = 1e-3 * float(optax.tree.norm(reference))
    return np.array(
        [
            float(jnp.linalg.norm(a - c) / (jnp.linalg.norm(c) + floor))
            for a, c in zip(jax.tree.leaves(grads), jax.tree.leaves(reference))
        ]
    )


@pytest.mark.slow
def test_physics_gradient_reaches_the_unet_only_when_asked(table):
    config = small_config()
    config.sediff.euler_weight, config.sediff.interlead_weight = 1e-2, 100.0
    decoder = beat_decoder.BeatDecoder(16, 8, rngs=nnx.Rngs(1))
    b = 4
    x0 = 0.3 * jax.random.normal(jax.random.key(4), (b, 128, 4))
    condition = jax.random.normal(jax.random.key(5), (b, 384 + 3))
    batch = {"class_index": jnp.array([0, 1, 2, len(table.names) - 1]), "heart_rate": jnp.array([60.0, 75, 90, 120])}
    key = jax.random.key(6)

    config.sediff.physics_gradient = True
    plain, grads, value, parts = _gradients(config, table, decoder, x0, condition, batch, key)
    expected = parts["diffusion_loss"] + 1e-2 * parts["euler_loss"] + 100.0 * parts["interlead_loss"]
    np.testing.assert_allclose(float(value), float(expected), rtol=1e-6)
    assert float(parts["euler_loss"]) > 0 and float(parts["interlead_loss"]) > 0
    changed = relative_changes(grads, plain[1])
    print("relative gradient change, physics_gradient=True:", np.percentile(changed, [0, 50, 100]))
    assert np.all(np.isfinite(changed)) and np.median(changed) > 1e-3  # most U-Net layers

    config.sediff.physics_gradient = False
    plain, grads, value_off, _ = _gradients(config, table, decoder, x0, condition, batch, key, plain)
    np.testing.assert_allclose(float(value_off), float(value), rtol=1e-6)  # same losses, logged
    # equal up to float32 rounding (jit fuses the two computations differently)
    unchanged = relative_changes(grads, plain[1])
    print("relative gradient change, physics_gradient=False:", np.percentile(unchanged, [0, 50, 100]))
    assert np.max(unchanged) < 1e-5 < 1e-3 < np.median(changed)


@pytest.mark.slow
def test_training_with_physics_logs_the_extra_metrics(vae_workdir, decoder_record, processed_dirs):
    from diffusets_jax.training.diffusion import train_diffusion

    config = small_config()
    config.unet_train.num_steps = 6
    config.unet_train.checkpoint_every = 6
    config.unet_train.preview_every = 0
    config.sediff.euler_weight, config.sediff.interlead_weight = 1e-4, 1.0
    with pytest.raises(ConfigError, match="physics_auxiliary"):  # the core does not load SE-Diff by itself
        train_diffusion(config, vae_workdir, processed_dirs)
    train_diffusion(config, vae_workdir, processed_dirs, auxiliary=physics.physics_auxiliary(config, vae_workdir))
    records = [json.loads(line) for line in (vae_workdir / "unet_metrics.jsonl").read_text().splitlines()]
    assert len(records) == 6
    for r in records:
        for key in ("diffusion_loss", "euler_loss", "interlead_loss", "loss", "grad_norm"):
            assert np.isfinite(r[key]), (key, r)
        total = r["diffusion_loss"] + 1e-4 * r["euler_loss"] + r["interlead_loss"]
        assert r["loss"] == pytest.approx(total, rel=1e-5)
        assert r["euler_loss"] > 0


def test_physics_needs_a_beat_decoder(tmp_path, table):
    config = tiny_config()
    config.sediff.euler_weight = 1.0
    assert physics.physics_enabled(config) and not physics.physics_enabled(tiny_config())
    with pytest.raises(FileNotFoundError, match="train-beat-decoder"):
        physics.physics_from_config(config, tmp_path)
