"""Compare U-Net training recipes side by side on one budget: per-timestep eps-MSE on held-out latents.

Each variant is the `small` config plus `--set`-style overrides, trained from a fresh U-Net for the
same number of steps, on the same latents (encoded by one model directory's VAE), with the same
batches; it is then scored by `diffusion.eps_mse_by_timestep` on the validation folds with fixed
noise, next to the Gaussian (Wiener) predictor `E[eps | x_t]` for latents of the data's variance,
which knows nothing of ECGs. A recipe that has learned to denoise beats it at every t.

  python benchmarks/diffusion_recipes.py --data data/ptbxl --data data/ludb --steps 400 \\
      --variant official: --variant linear-head:unet.output_activation=False \\
      --variant snr:diffusion.snr_scale=31.6 \\
      --variant both:unet.output_activation=False,diffusion.snr_scale=31.6

`--fixed-t 900` trains every variant at that one timestep only (is the identity reachable?).
Prints a Markdown table; `--json` also writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffusets_jax import diffusion
from diffusets_jax.config import load_config
from diffusets_jax.data_pipelines.input_pipeline import to_global
from diffusets_jax.models import build_unet
from diffusets_jax.pretrained import DEFAULT_MODEL_DIR, load_pretrained
from diffusets_jax.training import common
from diffusets_jax.training.data import latent_sources
from diffusets_jax.training.diffusion import batch_condition, make_train_step, unet_optimizer

TIMESTEPS = (20, 100, 300, 600, 900)


def run_variant(name, overrides, args, vae):
    config = load_config("small", overrides)
    config.data.val_folds = tuple(args.val_folds)
    config.unet_train.batch_size = args.batch_size
    config.unet_train.num_epochs = 0
    if args.fixed_t:
        config.diffusion.t_min, config.diffusion.t_max = args.fixed_t, args.fixed_t + 1
    train, validation = latent_sources(config, None, vae, 0, args.data)
    schedule = diffusion.schedule_from_config(config.diffusion)
    mesh = common.make_mesh(config.mesh.data_axis)
    unet = build_unet(config)
    graphdef, params = nnx.split(unet, nnx.Param)
    tx = unet_optimizer(config.unet_train, args.steps)
    state = common.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), ema_params=None)
    state = common.replicate(state, mesh)
    step_fn = make_train_step(graphdef, tx, schedule, config, jax.random.key(config.seed + 1), mesh)
    batches = train.batches(config.unet_train.batch_size, 0, seed=config.seed, shuffle=True)
    start, losses = time.perf_counter(), []
    for _ in range(args.steps):
        state, metrics = step_fn(state, to_global(next(batches), mesh))
        losses.append(metrics["loss"])
    seconds = time.perf_counter() - start
    val = validation.arrays
    x0 = jnp.asarray(val["mean"]) * 0.18215  # posterior means in the official latent scale
    condition = batch_condition({k: jnp.asarray(v) for k, v in val.items()})
    model = nnx.merge(graphdef, state.params)
    errors = np.asarray(
        diffusion.eps_mse_by_timestep(lambda x, t: model(x, t, condition), schedule, x0, jax.random.key(123), TIMESTEPS)
    )
    variance = float(np.var(np.asarray(x0)))
    baseline = diffusion.gaussian_eps_mse(np.asarray(schedule.alphas_cumprod)[list(TIMESTEPS)], variance)
    return {
        "variant": name,
        "overrides": overrides,
        "steps": args.steps,
        "seconds": seconds,
        "final_loss": float(np.mean([float(v) for v in losses[-50:]])),
        "eps_mse": dict(zip(map(str, TIMESTEPS), map(float, errors))),
        "wiener": dict(zip(map(str, TIMESTEPS), map(float, baseline))),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", action="append", required=True, help="processed dataset directory (repeatable)")
    p.add_argument("--model", default=None, help="model directory whose VAE encodes the data (default: shipped)")
    p.add_argument(
        "--variant",
        action="append",
        required=True,
        help="NAME:key=value,key=value (config overrides of `small`; empty after ':' = as is)",
    )
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--fixed-t", type=int, default=0, help="train at this timestep only (0: U{t_min..t_max-1})")
    p.add_argument("--val-folds", type=int, nargs="+", default=[9, 10])
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args(argv)
    _, vae, _ = load_pretrained(args.model or DEFAULT_MODEL_DIR)
    rows = []
    for spec in args.variant:
        name, _, overrides = spec.partition(":")
        rows.append(run_variant(name, [o for o in overrides.split(",") if o], args, vae))
        print(json.dumps(rows[-1]), flush=True)
    header = " | ".join(f"t={t}" for t in TIMESTEPS)
    print(f"\n| variant | {header} | final loss | train s |\n|---|{'---|' * len(TIMESTEPS)}---|---|")
    for r in rows:
        cells = " | ".join(f"{r['eps_mse'][str(t)]:.4f} (W {r['wiener'][str(t)]:.4f})" for t in TIMESTEPS)
        print(f"| {r['variant']} | {cells} | {r['final_loss']:.1f} | {r['seconds']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
