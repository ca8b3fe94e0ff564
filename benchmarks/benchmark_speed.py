"""Speed of the paper-size DiffuSETS models in JAX on this machine, next to the official PyTorch.

    python benchmarks/benchmark_speed.py            # full run (about 10 min on a free 2-core CPU)
    python benchmarks/benchmark_speed.py --quick    # fewer repeats, to check that it works

The `paper` configuration (U-Net 13.3 M trainable parameters, VAE 29.6 M, 1536-d text) with random
weights, float32. Each measurement is compiled ahead of time (`jit(...).lower(...).compile()`, its
time reported separately), run once as a warm-up, then timed `reps` times with
`jax.block_until_ready`; the table gives the median and min-max. The official PyTorch figures are
those of reference section 10 (torch 2.13 CPU, 2 threads, on this kind of 2-core machine); the
ratio is JAX / PyTorch and the target is <= 0.5. Peak memory is the process's maximum resident set
size (`resource.getrusage`) after each row, so it only grows.

Only the times of an otherwise idle machine are meaningful; the header prints how busy the CPU
was with other work when the run started (and the footer when it ended).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import statistics
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from diffusets_jax import diffusion
from diffusets_jax.config import load_config
from diffusets_jax.models import build_unet, build_vae

# Official PyTorch on the 2-core CPU (reference section 10), seconds.
OFFICIAL = {
    "unet_fwd_1": 0.0238,
    "unet_fwd_8": 0.0716,
    "unet_fwd_32": 0.1617,
    "sample_1000": 69.7,
    "sample_50": 3.13,
    "vae_32": 3.95,
    "vae_enc_32": 1.48,
    "vae_dec_32": 2.36,
    "train_32": 0.506,
    "train_512": 10.3,
}
TARGET_RATIO = 0.5


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def cpu_busy_fraction(seconds: float = 1.0) -> float | None:
    """Fraction of all CPUs busy over `seconds` (this process is idle meanwhile: it is others' load)."""
    def snapshot():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values), idle
    try:
        total0, idle0 = snapshot()
        time.sleep(seconds)
        total1, idle1 = snapshot()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def fmt_time(seconds: float) -> str:
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


class Bench:
    def __init__(self, reps: int, slow_reps: int):
        self.reps, self.slow_reps = reps, slow_reps
        self.rows: list[dict] = []

    def run(self, name: str, label: str, fn: Callable, *args, slow: bool = False, official: str | None = None):
        """AOT-compile `fn(*args)`, warm up once, time `reps` calls."""
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(*args).compile()
        compile_s = time.perf_counter() - start
        jax.block_until_ready(compiled(*args))  # warm-up
        times = []
        for _ in range(self.slow_reps if slow else self.reps):
            start = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            times.append(time.perf_counter() - start)
        row = dict(
            name=name, label=label, median=statistics.median(times), min=min(times), max=max(times),
            reps=len(times), compile=compile_s, official=OFFICIAL.get(official or name), rss=peak_rss_mib(),
        )
        self.rows.append(row)
        print(f"  {label}: {fmt_time(row['median'])} (compile {compile_s:.1f} s, {len(times)} reps)",
              file=sys.stderr, flush=True)
        return row

    def table(self) -> str:
        lines = [
            "| measurement | JAX median (min–max) | reps | compile | official PyTorch | JAX / PyTorch | ≤ 0.5? | peak RSS |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            official = r["official"]
            ratio = r["median"] / official if official else None
            lines.append(
                f"| {r['label']} | {fmt_time(r['median'])} ({fmt_time(r['min'])}–{fmt_time(r['max'])}) "
                f"| {r['reps']} | {r['compile']:.1f} s | {fmt_time(official) if official else '–'} "
                f"| {f'{ratio:.2f}' if ratio is not None else '–'} "
                f"| {('yes' if ratio <= TARGET_RATIO else 'no') if ratio is not None else '–'} "
                f"| {r['rss']:.0f} MiB |"
            )
        return "\n".join(lines)


def random_inputs(key, batch: int, embed_dim: int):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    x = jax.random.normal(k1, (batch, 128, 4), jnp.float32)
    t = jax.random.randint(k2, (batch,), 0, 1000)
    text = jax.random.normal(k3, (batch, embed_dim), jnp.float32)
    text = text / jnp.linalg.norm(text, axis=-1, keepdims=True)
    extras = jnp.stack([
        jax.random.bernoulli(k4, 0.5, (batch,)).astype(jnp.float32),  # sex
        jnp.full((batch,), 60.0), jnp.full((batch,), 70.0),             # age, heart rate
    ], axis=-1)
    return x, t, jnp.concatenate([text, extras], axis=-1)


def init_params(builder, config, seed: int = 0):
    """Random parameters drawn with NumPy (jit-compiling the paper U-Net's init takes minutes).

    Kernels are N(0, 1/fan_in), biases N(0, 0.02^2), norm scales 1 + N(0, 0.1^2): the scales of the
    parity weights, so activations stay in a realistic range.
    """
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: builder(config)))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        z = rng.standard_normal(leaf.shape).astype(np.float32)
        if len(leaf.shape) >= 2:
            return jnp.asarray(z / np.sqrt(np.prod(leaf.shape[:-1])))
        return jnp.asarray(0.02 * z if name == "bias" else 1.0 + 0.1 * z)

    return graphdef, jax.tree_util.tree_map_with_path(draw, abstract)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=None, help="timed repeats of the fast measurements (default 10, quick 3)")
    parser.add_argument("--slow-reps", type=int, default=None,
                        help="timed repeats of 1000-step sampling and the batch-512 training step (default 3, quick 1)")
    parser.add_argument("--quick", action="store_true", help="few repeats, to check that the script works")
    parser.add_argument("--skip", action="append", default=[], metavar="NAME",
                        help="skip a group: forward, sample, vae, train (repeatable)")
    args = parser.parse_args(argv)
    reps = args.reps or (3 if args.quick else 10)
    slow_reps = args.slow_reps or (1 if args.quick else 3)

    config = load_config("paper")
    embed_dim = config.text.embed_dim
    busy = cpu_busy_fraction()
    print(f"# DiffuSETS-JAX speed, paper configuration, {datetime.datetime.now():%Y-%m-%d %H:%M}\n")
    print(f"- jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}, "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()})")
    busy_text = "unknown" if busy is None else f"{100 * busy:.0f}%"
    warning = " (other processes were using the CPU: times are inflated)" if busy is not None and busy > 0.1 else ""
    print(f"- XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; CPU busy with other work at start: {busy_text}{warning}")
    print(f"- repeats: {reps} (slow rows {slow_reps}), after one warm-up; mode {'quick' if args.quick else 'full'}\n")

    bench = Bench(reps, slow_reps)
    key = jax.random.key(0)
    unet_def, unet_params = init_params(build_unet, config)

    def unet_apply(params, x, t, c):
        return nnx.merge(unet_def, params)(x, t, c)

    if "forward" not in args.skip:
        for batch in (1, 8, 32):
            x, t, c = random_inputs(key, batch, embed_dim)
            bench.run(f"unet_fwd_{batch}", f"U-Net forward, batch {batch}", unet_apply, unet_params, x, t, c)

    if "sample" not in args.skip:
        schedule = diffusion.make_schedule()
        x_T, _, c = random_inputs(key, 8, embed_dim)
        for steps in (50, 1000):
            def sample(params, x_T, c, key, steps=steps):
                unet = nnx.merge(unet_def, params)
                return diffusion.sample_ddpm(lambda x, t: unet(x, t, c), schedule, x_T, key, steps)

            bench.run(f"sample_{steps}", f"DDPM sampling, {steps} steps, batch 8 (U-Net only)", sample,
                      unet_params, x_T, c, jax.random.key(1), slow=steps == 1000)

    if "vae" not in args.skip:
        vae_def, vae_params = init_params(build_vae, config)
        x = jax.random.normal(key, (32, 1024, 12), jnp.float32) * 0.3
        noise = jax.random.normal(key, (32, 128, 4), jnp.float32)

        def encode(params, x, noise):
            return nnx.merge(vae_def, params).encoder(x, noise)[0]

        def decode(params, z):
            return nnx.merge(vae_def, params).decoder(z)

        def encode_decode(params, x, noise):
            vae = nnx.merge(vae_def, params)
            return vae.decoder(vae.encoder(x, noise)[0])

        bench.run("vae_32", "VAE encode + decode, batch 32", encode_decode, vae_params, x, noise)
        bench.run("vae_enc_32", "  VAE encode, batch 32", encode, vae_params, x, noise)
        bench.run("vae_dec_32", "  VAE decode, batch 32", decode, vae_params, noise * 0.18)
        del vae_params

    if "train" not in args.skip:
        schedule = diffusion.make_schedule()
        tx = optax.adamw(1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)

        # As diffusets_jax/training/diffusion.py: t ~ U{1..998}, sum-MSE / B, AdamW.
        def train_step(params, opt_state, x0, c, key):
            def loss_fn(p):
                unet = nnx.merge(unet_def, p)
                return diffusion.diffusion_loss(lambda x, t: unet(x, t, c), schedule, x0, key)

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        opt_state = tx.init(unet_params)
        for batch in (32, 512):
            x0, _, c = random_inputs(key, batch, embed_dim)
            bench.run(f"train_{batch}", f"U-Net training step (fwd + bwd + AdamW), batch {batch}", train_step,
                      unet_params, opt_state, x0 * 0.18, c, jax.random.key(2), slow=batch == 512)

    print(bench.table())
    busy = cpu_busy_fraction()
    print(f"\nPeak resident memory of the process: {peak_rss_mib():.0f} MiB. CPU busy with other work at the "
          f"end: {'unknown' if busy is None else f'{100 * busy:.0f}%'}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
