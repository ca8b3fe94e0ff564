"""Training throughput of the real train steps on 1 and on N fake CPU devices.

    python benchmarks/benchmark_training.py                    # small config, 1 and 8 devices
    python benchmarks/benchmark_training.py --config paper --devices 1 --devices 2 --steps 5

Each device count runs in a fresh process (`XLA_FLAGS=--xla_force_host_platform_device_count=N`,
set before JAX starts). For the VAE and the U-Net it compiles the jitted, sharded, donated train
step of `diffusets_jax.training` (compile time reported apart), runs one warm-up step, then times
`--steps` steps on a fixed random batch and prints examples/s. Fake devices share the same CPU
cores, so N devices measure the sharding overhead, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(config_name: str, steps: int) -> dict:
    """Runs inside the child process: times both train steps on this process's devices."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from diffusets_jax import diffusion
    from diffusets_jax.config import load_config
    from diffusets_jax.models import build_unet, build_vae
    from diffusets_jax.data_pipelines.input_pipeline import to_global
    from diffusets_jax.training import common, diffusion as diffusion_training, vae as vae_training

    config = load_config(config_name)
    mesh = common.make_mesh()
    rng = np.random.default_rng(0)
    rows = {}

    def condition_fields(b):
        return {
            "text_embedding": rng.standard_normal((b, config.text.embed_dim)).astype(np.float32),
            "sex": np.ones(b, np.float32),
            "age": np.full(b, 60.0, np.float32),
            "heart_rate": np.full(b, 70.0, np.float32),
        }

    def time_step(name, step, state, batch, batch_size):
        batch = to_global(batch, mesh)
        start = time.perf_counter()
        compiled = step.lower(state, batch).compile()
        compile_s = time.perf_counter() - start
        state, metrics = compiled(state, batch)  # warm-up
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        per_step = (time.perf_counter() - start) / steps
        rows[name] = {
            "batch": batch_size,
            "step_s": per_step,
            "examples_per_s": batch_size / per_step,
            "compile_s": compile_s,
        }

    b = config.vae_train.batch_size
    graphdef, params = nnx.split(build_vae(config), nnx.Param)
    tx = vae_training.vae_optimizer(config.vae_train, 100)
    state = common.replicate(common.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params)), mesh)
    step = vae_training.make_train_step(graphdef, tx, 100, config.vae_train, jax.random.key(0), mesh)
    time_step("VAE", step, state, {"signal": rng.standard_normal((b, 1024, 12)).astype(np.float32) * 0.2}, b)

    b = config.unet_train.batch_size
    graphdef, params = nnx.split(build_unet(config), nnx.Param)
    tx = diffusion_training.unet_optimizer(config.unet_train, 100)
    ema = jax.tree.map(jnp.copy, params) if config.unet_train.ema_decay > 0 else None
    state = common.replicate(common.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), ema), mesh)
    step = diffusion_training.make_train_step(
        graphdef, tx, diffusion.schedule_from_config(config.diffusion), config, jax.random.key(1), mesh
    )
    latents = {
        "mean": rng.standard_normal((b, 128, 4)).astype(np.float32),
        "log_variance": np.full((b, 128, 4), -4.0, np.float32),
        **condition_fields(b),
    }
    time_step("U-Net", step, state, latents, b)
    return {"devices": jax.device_count(), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="small", help="config name (default small)")
    parser.add_argument("--devices", type=int, action="append", help="device counts (default 1 and 8)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row (default 10)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.config, args.steps)))
        return
    results = []
    for devices in args.devices or [1, 8]:
        env = {
            **os.environ,
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
            "JAX_PLATFORMS": "cpu",
            "PYTHONPATH": str(ROOT),
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        out = subprocess.run(
            [sys.executable, __file__, "--child", "--config", args.config, "--steps", str(args.steps)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"\nconfig `{args.config}`, {os.cpu_count()} CPU cores, {args.steps} timed steps per row\n")
    print("| model | devices | batch | step | examples/s | compile |")
    print("|---|---|---|---|---|---|")
    for result in results:
        for name, row in result["rows"].items():
            print(
                f"| {name} | {result['devices']} | {row['batch']} | {row['step_s'] * 1e3:.1f} ms | "
                f"{row['examples_per_s']:.0f} | {row['compile_s']:.1f} s |"
            )


if __name__ == "__main__":
    main()
