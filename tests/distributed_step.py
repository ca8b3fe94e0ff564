"""One VAE and one U-Net training step on however many devices this process has; run by
tests/test_distributed.py in a subprocess (the device count is fixed when JAX starts), e.g.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/distributed_step.py batch.npz out/

`batch.npz` holds 8 real ECGs and their conditions (`signal`, `text_embedding`, `sex`, `age`,
`heart_rate`). Writes `out/result.npz` (losses, gradient norms, the gradients of the step, keys
`vae_grad/...` and `unet_grad/...`, and every parameter after the step, keys `vae/...` and
`unet/...`) and a U-Net checkpoint in `out/unet/`.
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).parent))

from conftest import tiny_config  # noqa: E402
from diffusets_jax.models import build_unet, build_vae  # noqa: E402
from diffusets_jax.pretrained import flatten_params  # noqa: E402
from diffusets_jax import diffusion  # noqa: E402
from diffusets_jax.data_pipelines.input_pipeline import to_global  # noqa: E402
from diffusets_jax.training import common, diffusion as diffusion_training, vae as vae_training  # noqa: E402


def latent_batch(batch):
    """Stand-in VAE posteriors of the real ECGs: the first 4 leads averaged over 8 samples."""
    signal = batch["signal"]
    mean = signal.reshape(len(signal), 128, 8, 12).mean(axis=2)[..., :4] * 5.0
    return {
        **{k: v for k, v in batch.items() if k != "signal"},
        "mean": mean.astype(np.float32),
        "log_variance": np.full_like(mean, -4.0, dtype=np.float32),
    }


def main(batch_path: str, out_dir: str) -> None:
    out = Path(out_dir)
    with np.load(batch_path) as data:
        batch = dict(data)
    config = tiny_config()
    config.vae_train.batch_size = config.unet_train.batch_size = len(batch["signal"])
    mesh = common.make_mesh()
    result = {"num_devices": np.array(jax.device_count())}

    vae = build_vae(config)
    graphdef, params = nnx.split(vae, nnx.Param)
    tx = vae_training.vae_optimizer(config.vae_train, 10)
    state = common.replicate(
        common.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params)), mesh
    )
    step = vae_training.make_train_step(graphdef, tx, 10, config.vae_train, jax.random.key(0), mesh)
    global_signal = to_global(batch, mesh)
    weight = vae_training.kl_weight(0, 10, config.vae_train.kl_anneal_stages, config.vae_train.kl_weight_max)
    grads = jax.jit(
        jax.grad(
            lambda p: vae_training._loss(
                graphdef, p, global_signal["signal"], jax.random.fold_in(jax.random.key(0), 0), weight, jnp.float32
            )[0]
        )
    )(state.params)
    result.update({f"vae_grad/{k}": np.asarray(v) for k, v in flatten_params(grads).items()})
    state, metrics = step(state, global_signal)
    result.update({f"vae/{k}": np.asarray(v) for k, v in flatten_params(state.params).items()})
    result.update({"vae_loss": np.asarray(metrics["loss"]), "vae_grad_norm": np.asarray(metrics["grad_norm"])})

    unet = build_unet(config)
    graphdef, params = nnx.split(unet, nnx.Param)
    tx = diffusion_training.unet_optimizer(config.unet_train, 10)
    state = common.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        ema_params=jax.tree.map(jnp.copy, params),
    )
    state = common.replicate(state, mesh)
    schedule = diffusion.schedule_from_config(config.diffusion)
    step = diffusion_training.make_train_step(graphdef, tx, schedule, config, jax.random.key(1), mesh)
    global_latents = to_global(latent_batch(batch), mesh)

    def unet_loss(params):  # the loss of the step below, as make_train_step computes it
        latent_key, loss_key = jax.random.split(jax.random.fold_in(jax.random.key(1), 0))
        x0 = diffusion_training.clean_latents(global_latents, latent_key, config.unet_train.sample_posterior)
        condition = diffusion_training.batch_condition(global_latents)
        return diffusion_training._loss(
            graphdef, params, x0, condition, loss_key, schedule, config.diffusion, jnp.float32
        )[0]

    grads = jax.jit(jax.grad(unet_loss))(state.params)
    result.update({f"unet_grad/{k}": np.asarray(v) for k, v in flatten_params(grads).items()})
    state, metrics = step(state, global_latents)
    result.update({f"unet/{k}": np.asarray(v) for k, v in flatten_params(state.params).items()})
    result.update({"unet_loss": np.asarray(metrics["loss"]), "unet_grad_norm": np.asarray(metrics["grad_norm"])})

    checkpoints = common.Checkpoints(out / "unet", keep=1)
    checkpoints.save(1, state, float(metrics["loss"]))
    checkpoints.wait_until_finished()
    np.savez(out / "result.npz", **result)


if __name__ == "__main__":
    main(*sys.argv[1:])
