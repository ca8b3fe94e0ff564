"""Throughput of the training input pipeline (diffusets_jax.data_pipelines.input_pipeline) on this machine.

    python benchmarks/benchmark_input.py                         # fixture PTB-XL records (tests/data)
    python benchmarks/benchmark_input.py --ptbxl /data/ptb-xl    # real PTB-XL (any number of records)

Builds the PTB-XL TFDS dataset from `--ptbxl` and its latent dataset (a deterministic stand-in
encoder: `mean = signal[:, ::8, :4]`), then makes benchmark-sized shards by concatenating copies
of those TFRecord files (TFRecord records are self-delimiting, so the copies parse as real data):
`--signals` signal and `--latents` latent examples in 8 shards each. Prints a Markdown table of
examples/s for `TFRecordSource` (deterministic and not) and `ArraySource` (random arrays of the
same shapes), the time to the first batch when resuming mid-epoch, and a short loop feeding a
jitted dummy training step (`to_global` included) to show whether the step waits for input.
Targets on a 2-core CPU: >= 5,000 latent and >= 1,000 signal examples/s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from diffusets_jax.data_pipelines.input_pipeline import (
    LATENT_SHAPES,
    SIGNAL_SHAPES,
    ArraySource,  # noqa: E402
    TFRecordSource,
    to_global,
)
from diffusets_jax.data_pipelines.latents import write_latents  # noqa: E402
from diffusets_jax.data_pipelines.tfds import build_dataset  # noqa: E402

NUM_SHARDS = 8


def stand_in_encoder(signals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, 1024, 12) -> mean, log_variance (B, 128, 4): subsampled leads, no model."""
    return signals[:, ::8, :4], signals[:, ::8, 4:8]


def replicate(source_file: Path, count: int, target: int, out_dir: Path, prefix: str) -> tuple[list[Path], list[int]]:
    """`NUM_SHARDS` files holding `target` examples or more: copies of a `count`-example shard."""
    out_dir.mkdir(parents=True, exist_ok=True)
    copies = max(1, -(-target // (count * NUM_SHARDS)))
    data = source_file.read_bytes()
    files = []
    for i in range(NUM_SHARDS):
        path = out_dir / f"{prefix}.tfrecord-{i:05d}-of-{NUM_SHARDS:05d}"
        path.write_bytes(data * copies)
        files.append(path)
    return files, [copies * count] * NUM_SHARDS


def throughput(source, batch_size: int, seconds: float) -> tuple[float, float]:
    """(examples/s after the first batch, seconds to the first batch)."""
    start = time.perf_counter()
    batches = source.batches(batch_size, 0, seed=0, shuffle=True)
    next(batches)
    first = time.perf_counter() - start
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(batches)
        steps += 1
    return steps * batch_size / (time.perf_counter() - start), first


def resume_cost(source, batch_size: int) -> tuple[float, float]:
    """Seconds to the first batch when starting at step 0 and in the middle of the last epoch step."""
    times = []
    for start_step in (0, source.steps_per_epoch(batch_size) - 1):
        start = time.perf_counter()
        next(source.batches(batch_size, start_step, seed=0, shuffle=True))
        times.append(time.perf_counter() - start)
    return times[0], times[1]


def keep_up(source, batch_size: int, steps: int) -> dict[str, float]:
    """Milliseconds per step: dummy jitted step alone, fetching alone, and the loop of both."""
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    weights = jnp.ones((512, 512), jnp.float32) / 512

    @jax.jit
    def step(w, batch):  # a stand-in training step: one matmul-heavy gradient on the latents
        x = batch["mean"].reshape(batch["mean"].shape[0], -1)

        def loss(w):
            return jnp.mean(jnp.tanh(jnp.tanh(x @ w) @ w) ** 2) + jnp.mean(batch["text_embedding"] ** 2)

        return w - 1e-3 * jax.grad(loss)(w)

    batches = source.batches(batch_size, 0, seed=0, shuffle=True)
    batch = to_global(next(batches), mesh)
    weights = step(weights, batch).block_until_ready()
    start = time.perf_counter()
    for _ in range(steps):
        weights = step(weights, batch)
    weights.block_until_ready()
    step_ms = (time.perf_counter() - start) / steps * 1e3
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    fetch_ms = (time.perf_counter() - start) / steps * 1e3
    start = time.perf_counter()
    for _ in range(steps):
        weights = step(weights, to_global(next(batches), mesh))
    weights.block_until_ready()
    loop_ms = (time.perf_counter() - start) / steps * 1e3
    return {"step": step_ms, "fetch": fetch_ms, "loop": loop_ms}


def random_arrays(shapes: dict, count: int, embed_dim: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        key: rng.normal(size=(count, *(embed_dim if d is None else d for d in shape))).astype(np.float32)
        for key, shape in shapes.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ptbxl", default=str(Path(__file__).resolve().parents[1] / "tests" / "data" / "ptb-xl"))
    parser.add_argument("--signals", type=int, default=8192, help="signal examples in the benchmark shards")
    parser.add_argument("--latents", type=int, default=32768, help="latent examples in the benchmark shards")
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring time per row")
    parser.add_argument("--workdir", default=None, help="where to write (default: a temporary directory)")
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="benchmark_input_"))
    info = build_dataset("ptbxl", args.ptbxl, workdir / "tfds", num_shards=1)
    count = info.splits["train"].num_examples
    write_latents(stand_in_encoder, info.data_dir, "train", workdir / "latents", batch_size=256, num_shards=1)
    embed_dim = info.features["text_embedding"].shape[0]
    signal_files, signal_lengths = replicate(
        Path(info.splits["train"].filepaths[0]), count, args.signals, workdir / "bench", "signals"
    )
    latent_files, latent_lengths = replicate(
        next((workdir / "latents").glob("*.tfrecord-*")), count, args.latents, workdir / "bench", "latents"
    )
    signal_shapes = {**SIGNAL_SHAPES, "text_embedding": (embed_dim,)}
    latent_shapes = {**LATENT_SHAPES, "text_embedding": (embed_dim,)}

    def signal_source(deterministic: bool) -> TFRecordSource:
        return TFRecordSource(
            signal_files,
            signal_lengths,
            signal_shapes,
            where="signal benchmark",
            int64_fields=("sex",),
            deterministic=deterministic,
        )

    def latent_source(deterministic: bool) -> TFRecordSource:
        return TFRecordSource(
            latent_files, latent_lengths, latent_shapes, where="latent benchmark", deterministic=deterministic
        )

    rows = [
        ("latents", "TFRecordSource, deterministic", latent_source(True), 512, 5000),
        ("latents", "TFRecordSource, deterministic=False", latent_source(False), 512, 5000),
        ("latents", "ArraySource", ArraySource(random_arrays(latent_shapes, args.latents, embed_dim)), 512, 5000),
        ("signals", "TFRecordSource, deterministic", signal_source(True), 256, 1000),
        ("signals", "TFRecordSource, deterministic=False", signal_source(False), 256, 1000),
        ("signals", "ArraySource", ArraySource(random_arrays(signal_shapes, args.signals, embed_dim)), 256, 1000),
    ]
    print(
        f"\n{os.cpu_count()} CPU cores, jax {jax.__version__}; {count} PTB-XL records from {args.ptbxl} copied to "
        f"{sum(signal_lengths)} signal / {sum(latent_lengths)} latent examples in {NUM_SHARDS} shards each\n"
    )
    print("| data | source | batch | examples/s | target | first batch |")
    print("|---|---|---|---|---|---|")
    for data, name, source, batch_size, target in rows:
        rate, first = throughput(source, batch_size, args.seconds)
        print(
            f"| {data} | {name} | {batch_size} | {rate:,.0f} | {'>=' if rate >= target else 'BELOW'} {target:,} "
            f"| {first:.2f} s |",
            flush=True,
        )

    print("\nResuming mid-epoch (TFRecordSource skips the serialized records before the step, unparsed):\n")
    print("| data | steps/epoch | first batch at step 0 | first batch at the last step of epoch 0 |")
    print("|---|---|---|---|")
    for data, source, batch_size in (("latents", latent_source(True), 512), ("signals", signal_source(True), 256)):
        at_start, at_end = resume_cost(source, batch_size)
        print(f"| {data} | {source.steps_per_epoch(batch_size)} | {at_start:.2f} s | {at_end:.2f} s |")

    times = keep_up(latent_source(True), 512, steps=40)
    print(
        f"\nKeep-up, latents batch 512 with a jitted dummy step: step alone {times['step']:.1f} ms, fetch alone "
        f"{times['fetch']:.1f} ms, loop (fetch + to_global + step) {times['loop']:.1f} ms per step; input wait "
        f"{max(times['loop'] - times['step'], 0):.1f} ms per step. (The paper U-Net training step at batch 512 "
        "takes 3-8 s on this CPU, benchmarks/README.md.)"
    )
    if args.workdir is None:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
