"""Data parallelism and crash safety, each in fresh processes (JAX fixes its devices at start-up).

* One training step on 8 fake CPU devices gives the loss and parameters of the same step on 1.
* A checkpoint written on 8 devices restores on 1.
* A training process killed with SIGKILL resumes from its last checkpoint and reproduces the
  losses of an uninterrupted run.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_config
from diffusets_jax.data_pipelines.processed import load_processed
from diffusets_jax.models import build_unet
from diffusets_jax.pretrained import flatten_params
from diffusets_jax.training import common, diffusion as diffusion_training, vae as vae_training
from diffusets_jax.training.vae import train_vae

# 8 simulated devices in a subprocess and a SIGKILLed training run: minutes
pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent


def run_python(args, devices: int, **kwargs):
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(TESTS.parent),
    }
    return subprocess.Popen([sys.executable, *args], env=env, **kwargs)


@pytest.fixture(scope="module")
def step_results(tmp_path_factory, processed_dirs):
    """`{devices: (result dict, output dir)}` of tests/distributed_step.py on 1 and 8 devices."""
    dataset = load_processed(processed_dirs)
    root = tmp_path_factory.mktemp("distributed")
    np.savez(
        root / "batch.npz",
        signal=dataset.signals[:8],
        text_embedding=dataset.text_embeddings[:8],
        sex=dataset.sex_codes[:8],
        age=dataset.age[:8],
        heart_rate=dataset.heart_rate[:8],
    )
    results = {}
    for devices in (1, 8):
        out = root / f"devices_{devices}"
        out.mkdir()
        process = run_python(
            [str(TESTS / "distributed_step.py"), str(root / "batch.npz"), str(out)],
            devices,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        log, _ = process.communicate(timeout=600)
        assert process.returncode == 0, log
        with np.load(out / "result.npz") as data:
            results[devices] = (dict(data), out)
    return results


def test_eight_devices_give_the_single_device_step(step_results):
    one, eight = step_results[1][0], step_results[8][0]
    assert int(one["num_devices"]) == 1 and int(eight["num_devices"]) == 8
    for name in ("vae_loss", "vae_grad_norm", "unet_loss", "unet_grad_norm"):
        np.testing.assert_allclose(eight[name], one[name], rtol=1e-5, err_msg=name)
    config = tiny_config()
    first_lr = {
        "vae": vae_training.vae_learning_rate(config.vae_train, 10)(0),
        "unet": diffusion_training.unet_learning_rate(config.unet_train, 10)(0),
    }
    params = [k for k in one if k.startswith(("vae/", "unet/"))]
    assert len(params) > 100
    for key in params:
        model = key.split("/")[0]
        grad, grad_norm = one[f"{model}_grad/{key[len(model) + 1 :]}"], float(one[f"{model}_grad_norm"])
        np.testing.assert_allclose(
            eight[f"{model}_grad/{key[len(model) + 1 :]}"],
            grad,
            rtol=1e-4,
            atol=1e-6 * grad_norm,
            err_msg=f"gradient of {key}",
        )
        # Adam's first step moves every entry by about lr * sign(gradient). Entries whose exact
        # gradient is 0 (biases cancelled by a following normalisation, attention key biases)
        # carry float32 rounding noise whose sign depends on the reduction order: they may move
        # either way, by at most lr. All the others must agree.
        noise = np.abs(grad) < 1e-6 * grad_norm
        np.testing.assert_allclose(eight[key][~noise], one[key][~noise], rtol=1e-5, atol=1e-5, err_msg=key)
        assert np.all(np.abs(eight[key][noise] - one[key][noise]) <= 2.01 * first_lr[model]), key


def test_checkpoint_from_eight_devices_restores_on_one(step_results):
    eight, out = step_results[8]
    config = tiny_config()
    graphdef, params = nnx.split(build_unet(config), nnx.Param)
    tx = diffusion_training.unet_optimizer(config.unet_train, 10)
    mesh = common.make_mesh()
    template = common.replicate(
        common.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), ema_params=params),
        mesh,
    )
    restored = common.Checkpoints(out / "unet", keep=1).restore(template)
    assert int(restored.step) == 1 and jax.device_count() == 1
    for key, value in flatten_params(restored.params).items():
        np.testing.assert_array_equal(value, eight[f"unet/{key}"], err_msg=key)
    best = common.Checkpoints(out / "unet", keep=1).restore_best(template)
    assert int(best.step) == 1


def metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_sigkill_mid_run_resumes_with_the_same_losses(tmp_path, processed_dirs):
    config_file = tmp_path / "killable.py"
    config_file.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "from conftest import tiny_config\n\n"
        "def get_config():\n"
        "    config = tiny_config()\n"
        "    config.vae_train.num_steps = 120\n"
        "    config.vae_train.checkpoint_every = 10\n"
        "    return config\n"
    )
    killed = tmp_path / "killed"
    data_args = [arg for d in processed_dirs for arg in ("--data", str(d))]
    process = run_python(
        ["-m", "diffusets_jax.cli", "train-vae", "--config", str(config_file), "--workdir", str(killed), *data_args],
        1,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 600
    while len(metrics(killed / "vae_metrics.jsonl")) < 35 and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    logged_before_kill = len(metrics(killed / "vae_metrics.jsonl"))
    assert process.returncode == -signal.SIGKILL and 35 <= logged_before_kill < 120, logged_before_kill

    sys.path.insert(0, str(tmp_path))
    from killable import get_config  # the same config, in this process

    train_vae(get_config(), killed, processed_dirs)  # restarts from the last checkpoint (step >= 30)
    resumed = metrics(killed / "vae_metrics.jsonl")
    reference_dir = tmp_path / "uninterrupted"
    train_vae(get_config(), reference_dir, processed_dirs)
    reference = metrics(reference_dir / "vae_metrics.jsonl")
    assert [m["step"] for m in resumed] == list(range(1, 121))
    np.testing.assert_allclose([m["loss"] for m in resumed], [m["loss"] for m in reference], rtol=1e-4)
