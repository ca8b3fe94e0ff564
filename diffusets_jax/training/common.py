"""What the VAE and the diffusion trainers share: train state, mesh, batches, checkpoints, logging.

Conventions (docs/style.md): one root key from `config.seed`, `fold_in(root, step)` inside the
step, so that nothing but `step` is needed to resume the same random stream; `jax.jit` over a
`Mesh` with a `data` axis, parameters replicated and the batch sharded; orbax checkpoints in the
workdir, restored automatically.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm


@struct.dataclass
class TrainState:
    """`step`, trainable `params` (an nnx.State), optax `opt_state`, and `ema_params` (or None)."""

    step: Any
    params: Any
    opt_state: Any
    ema_params: Any = None


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient became NaN/inf; training stops instead of saving garbage."""


def make_mesh(axis: str = "data") -> jax.sharding.Mesh:
    """A 1-D mesh over every device, for data parallelism."""
    return jax.make_mesh((jax.device_count(),), (axis,))


def shard_batch(batch: dict[str, np.ndarray], mesh, axis: str = "data") -> dict[str, jax.Array]:
    """Place a host batch on the mesh, split along its first axis (which must divide evenly)."""
    sharding = NamedSharding(mesh, P(axis))
    return {k: jax.device_put(v, sharding) for k, v in batch.items()}


def replicate(tree, mesh):
    return jax.device_put(tree, NamedSharding(mesh, P()))


def resolve_num_steps(train_config, num_examples: int) -> tuple[int, int]:
    """`(num_steps, steps_per_epoch)`: `num_epochs * steps_per_epoch` if `num_epochs > 0`.

    Raises ValueError if the dataset is smaller than one batch.
    """
    batch_size = train_config.batch_size
    if num_examples < batch_size:
        raise ValueError(
            f"the training set has {num_examples} records, fewer than batch_size={batch_size}; "
            "lower the batch size (e.g. --set vae_train.batch_size=8)"
        )
    steps_per_epoch = num_examples // batch_size  # last partial batch dropped
    if train_config.num_epochs > 0:
        return train_config.num_epochs * steps_per_epoch, steps_per_epoch
    if train_config.num_steps <= 0:
        raise ValueError("set num_epochs or num_steps to a positive number")
    return train_config.num_steps, steps_per_epoch


def batch_indices(num_examples: int, batch_size: int, step: int, seed: int, shuffle: bool) -> np.ndarray:
    """Indices of the batch at `step`: a fresh seeded permutation per epoch, deterministic in step.

    Restarting at any step therefore replays exactly the batches an uninterrupted run would see.
    """
    steps_per_epoch = num_examples // batch_size
    epoch, offset = divmod(step, steps_per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_examples) if shuffle else np.arange(num_examples)
    return order[offset * batch_size : (offset + 1) * batch_size]


def checkpoint_manager(directory: Path, keep: int) -> ocp.CheckpointManager:
    """Orbax manager for `directory` (atomic saves, keeps the last `keep`)."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(directory.absolute(), options=options)


def _restore(manager: ocp.CheckpointManager, step: int, state: TrainState) -> TrainState:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def restore_or_init(manager: ocp.CheckpointManager, state: TrainState) -> TrainState:
    """The latest checkpoint restored onto `state`'s structure and shardings, or `state` itself."""
    step = manager.latest_step()
    if step is None:
        return state
    restored = _restore(manager, step, state)
    tqdm.write(f"resumed from checkpoint at step {int(restored.step)} in {manager.directory}")
    return restored


def restore_latest(directory: Path, state: TrainState, train_command: str) -> TrainState:
    """The latest checkpoint in `directory`, restored onto `state`'s structure.

    Raises FileNotFoundError naming the directory and the command that writes it.
    """
    manager = checkpoint_manager(directory, 1)
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {directory}: run `diffusets-jax {train_command}` first")
    return _restore(manager, step, state)


def ema_update(ema, params, decay: float):
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def global_norm(tree) -> jax.Array:
    return optax.tree.norm(tree)


class MetricsLogger:
    """Progress bar with loss and examples/s, plus a JSON-lines log `workdir/<name>_metrics.jsonl`."""

    def __init__(self, path: Path, total_steps: int, start_step: int, batch_size: int, desc: str):
        self.path, self.batch_size = path, batch_size
        self.bar = tqdm(total=total_steps, initial=start_step, desc=desc, unit="step", dynamic_ncols=True)
        self.last_time, self.last_step = time.perf_counter(), start_step

    def log(self, step: int, metrics: dict[str, float]) -> None:
        now = time.perf_counter()
        steps = max(step - self.last_step, 1)
        rate = steps * self.batch_size / max(now - self.last_time, 1e-9)
        self.last_time, self.last_step = now, step
        record = {"step": step, **{k: float(v) for k, v in metrics.items()}, "examples_per_s": rate}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        shown = {k: f"{v:.4g}" for k, v in metrics.items() if k in ("loss", "reconstruction", "kl")}
        self.bar.set_postfix(**shown, ex_s=f"{rate:.0f}")

    def advance(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def check_finite(step: int, metrics: dict[str, float]) -> None:
    for name, value in metrics.items():
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"{name} is {value} at step {step}; stopping (the last checkpoint is intact). "
                "Lower the learning rate or check the data for NaNs."
            )


def run_training(
    *, name: str, workdir: Path, state: TrainState, train_step, arrays: dict[str, np.ndarray],
    train_config, num_steps: int, manager: ocp.CheckpointManager, mesh, seed: int, shuffle: bool,
    stop_after: int | None = None,
) -> TrainState:
    """The loop both trainers share: batches of `arrays` (first axis = records) by step, logging
    every `log_every` steps, a checkpoint every `checkpoint_every` steps and at the end."""
    num_examples = len(next(iter(arrays.values())))
    start = int(state.step)
    end = num_steps if stop_after is None else min(num_steps, start + stop_after)
    batch_size = train_config.batch_size
    logger = MetricsLogger(workdir / f"{name}_metrics.jsonl", num_steps, start, batch_size, f"train-{name}")
    parameters = sum(x.size for x in jax.tree.leaves(state.params))
    print(f"train-{name}: {num_examples} ECGs, batch {batch_size}, steps {start} -> {end} of {num_steps}, "
          f"{parameters:,} parameters")
    try:
        for step in range(start, end):
            idx = batch_indices(num_examples, batch_size, step, seed, shuffle)
            state, metrics = train_step(state, shard_batch({k: v[idx] for k, v in arrays.items()}, mesh))
            logger.advance()
            done = step + 1
            if done % train_config.log_every == 0 or done == end:
                values = {k: float(v) for k, v in metrics.items()}
                check_finite(done, values)
                logger.log(done, values)
            if done % train_config.checkpoint_every == 0 or done == end:
                manager.save(done, args=ocp.args.StandardSave(state))
    finally:
        manager.wait_until_finished()
        logger.close()
    return state
