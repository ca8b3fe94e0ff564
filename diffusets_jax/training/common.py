"""What the VAE and the diffusion trainers share: train state, mesh, optimizer, checkpoints, logging.

Conventions (docs/style.md):

* one root key from `config.seed` and `fold_in(root, step)` inside the step, and batches that are a
  function of `(seed, step)` (`diffusets_jax.data_pipelines.input_pipeline`), so that nothing but `step` is
  needed to resume the same run exactly;
* `jax.jit` over a `Mesh` with a `data` axis: parameters and optimizer state replicated, the
  global batch sharded along its first axis (built from each process's rows by
  `diffusets_jax.data_pipelines.input_pipeline.to_global`), the train state donated. The same code runs on one
  CPU, on fake CPU devices, on a GPU node and on a multi-host TPU slice;
* orbax checkpoints in the workdir (the last `keep_checkpoints`, plus the best one by validation
  loss), written atomically and restored automatically, onto any number of devices.
"""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from diffusets_jax.checkpoints import metrics_file, steps
from diffusets_jax.data_pipelines.input_pipeline import to_global
from diffusets_jax.errors import MissingFileError

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@struct.dataclass
class TrainState:
    """`step`, trainable `params` (an nnx.State), optax `opt_state`, and `ema_params` (or None)."""

    step: Any
    params: Any
    opt_state: Any
    ema_params: Any = None


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient became NaN/inf; training stops instead of saving garbage."""


# ------------------------------------------------------------------------------------------------
# Devices


def make_mesh(axis: str = "data") -> jax.sharding.Mesh:
    """A 1-D mesh over every device of every process, for data parallelism.

    The axis is `Auto`: XLA propagates the batch sharding through the model, whose code stays
    free of sharding annotations (explicit axes would make every reshape declare its sharding).
    """
    return jax.make_mesh((jax.device_count(),), (axis,), axis_types=(jax.sharding.AxisType.Auto,))


def replicate(tree, mesh):
    return jax.device_put(tree, NamedSharding(mesh, P()))


def check_batch_size(batch_size: int) -> None:
    """Refuse a global batch that does not split evenly over the devices (ValueError naming it)."""
    devices = jax.device_count()
    if batch_size % devices:
        raise ValueError(f"batch_size={batch_size} is not a multiple of the {devices} devices")


def compile_train_step(step_fn: Callable, mesh) -> Callable:
    """`jax.jit` of `step_fn(state, batch) -> (state, metrics)` with explicit shardings.

    State and metrics replicated, batch sharded along the data axis, and the incoming state
    donated (its buffers are reused for the new state: one copy of the parameters in memory).
    """
    replicated = NamedSharding(mesh, P())
    sharded = NamedSharding(mesh, P(mesh.axis_names[0]))
    return jax.jit(
        step_fn, in_shardings=(replicated, sharded), out_shardings=(replicated, replicated), donate_argnums=0
    )


# ------------------------------------------------------------------------------------------------
# Optimisation


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


def adamw(learning_rate, train_config) -> optax.GradientTransformation:
    """AdamW (betas 0.9/0.999, eps 1e-8, torch's defaults), after clipping the gradient's global
    norm to `train_config.grad_clip_norm` when it is > 0 (the official code does not clip)."""
    opt = optax.adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=train_config.weight_decay)
    clip = train_config.grad_clip_norm  # configs saved before it existed: checkpoints.MIGRATIONS
    if clip > 0:
        return optax.chain(optax.clip_by_global_norm(clip), opt)
    return opt


def compute_dtype(train_config):
    """The dtype of the forward and backward pass (`compute_dtype`: float32 or bfloat16)."""
    name = train_config.compute_dtype
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {sorted(COMPUTE_DTYPES)}, got {name!r}")
    return COMPUTE_DTYPES[name]


def cast_floating(tree, dtype):
    """Floating leaves of `tree` cast to `dtype` (parameters stay float32; this is the compute copy,
    and gradients flow back through the cast to the float32 parameters)."""
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def ema_update(ema, params, decay: float):
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def global_norm(tree) -> jax.Array:
    return optax.tree.norm(tree)


def check_finite(step: int, metrics: dict[str, float]) -> None:
    """NonFiniteLossError naming the first NaN/inf metric (loss or gradient norm) and the step."""
    for name, value in metrics.items():
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"{name} is {value} at step {step}; stopping (the last checkpoint is intact). "
                "Lower the learning rate, set grad_clip_norm, or check the data for NaNs."
            )


# ------------------------------------------------------------------------------------------------
# Checkpoints


# The orbax checkpoints live in `diffusets_jax.checkpoints.steps` (last K and best, the fall-back
# past a broken step); these names stay here for the trainers and their callers.
Checkpoints = steps.Checkpoints
restore_or_init = functools.partial(steps.restore_or_init, log=tqdm.write)


def restore_latest(directory: Path, state: TrainState, train_command: str) -> TrainState:
    """The newest restorable checkpoint in `directory`, restored onto `state`'s structure (a newer
    broken step is warned about and skipped, not moved).

    Raises MissingFileError (a FileNotFoundError) naming the directory and the command that writes
    it, CheckpointError naming the step and file when no step restores.
    """
    manager = ocp.CheckpointManager(Path(directory).absolute())
    try:
        if manager.latest_step() is None:
            raise MissingFileError(f"no checkpoint in {directory}: run `diffusets-jax {train_command}` first")
        return steps.restore_newest(manager, state)[0]
    finally:
        manager.close()


# ------------------------------------------------------------------------------------------------
# Logging


class MetricsLogger:
    """Progress bar, JSON-lines log `workdir/<name>_metrics.jsonl` and TensorBoard events in
    `workdir/tensorboard/<name>` (only process 0 writes).

    Each logged record holds the step's metrics plus `examples_per_s` and `step_time_s` averaged
    since the previous record. On a resume the log is cut back to the restored step, so that it
    always describes one run.
    """

    def __init__(self, workdir: Path, name: str, total_steps: int, start_step: int, batch_size: int):
        self.path, self.batch_size = workdir / metrics_file(name), batch_size
        self.writes = jax.process_index() == 0
        self.tensorboard = None
        if self.writes:
            self._truncate(start_step)
            from flax.metrics.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(workdir / "tensorboard" / name))
        self.bar = tqdm(
            total=total_steps,
            initial=start_step,
            desc=f"train-{name.replace('_', '-')}",
            unit="step",
            dynamic_ncols=True,
            disable=not self.writes,
        )
        self.last_time, self.last_step = time.perf_counter(), start_step

    def _truncate(self, start_step: int) -> None:
        if self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= start_step]
            self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        now = time.perf_counter()
        steps = max(step - self.last_step, 1)
        step_time = (now - self.last_time) / steps
        self.last_time, self.last_step = now, step
        record = {
            "step": step,
            **metrics,
            "examples_per_s": self.batch_size / max(step_time, 1e-9),
            "step_time_s": step_time,
        }
        shown = {k: f"{v:.4g}" for k, v in metrics.items() if k in ("loss", "reconstruction", "kl")}
        self.bar.set_postfix(**shown, ex_s=f"{record['examples_per_s']:.0f}")
        if not self.writes:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "step":
                self.tensorboard.scalar(key, value, step)

    def image(self, tag: str, figure, step: int, png_path: Path) -> None:
        """Save a matplotlib figure as PNG and as a TensorBoard image."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        if not self.writes:
            return
        png_path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(png_path, dpi=80)
        canvas = FigureCanvasAgg(figure)
        canvas.draw()
        self.tensorboard.image(tag, np.asarray(canvas.buffer_rgba())[..., :3], step)

    def advance(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()
        if self.tensorboard is not None:
            self.tensorboard.flush()


# ------------------------------------------------------------------------------------------------
# The loop


def run_training(
    *,
    name: str,
    workdir: Path,
    state: TrainState,
    train_step: Callable,
    batches: Iterator[dict],
    train_config,
    num_steps: int,
    checkpoints: Checkpoints,
    mesh,
    learning_rate: Callable[[int], float],
    evaluate: Callable[[TrainState], float | dict[str, float]] | None = None,
    preview: Callable[[TrainState, int], Any] | None = None,
    stop_after: int | None = None,
) -> TrainState:
    """The loop both trainers share.

    `batches` yields process-local batches starting at `state.step`. Every `log_every` steps the
    metrics (with the learning rate, examples/s and step time) are logged and checked for NaN/inf;
    every `checkpoint_every` steps and at the end the loss or gradient norm is checked again, the
    state is saved, and `evaluate(state)` (the validation loss, or a dict of validation metrics
    holding it as `val_loss`, all logged; the mean logged training loss since the last checkpoint
    if None) decides the best checkpoint. Every `preview_every` steps
    (0: never) and at the end, `preview(state, step)` draws a figure (sampled or reconstructed ECGs)
    saved under `workdir/previews/` and in TensorBoard.
    """
    start = int(state.step)
    end = num_steps if stop_after is None else min(num_steps, start + stop_after)
    batch_size = train_config.batch_size
    logger = MetricsLogger(workdir, name, num_steps, start, batch_size)
    parameters = sum(x.size for x in jax.tree.leaves(state.params))
    if jax.process_index() == 0:
        print(
            f"train-{name.replace('_', '-')}: batch {batch_size} over {jax.device_count()} device(s), "
            f"steps {start} -> {end} of {num_steps}, {parameters:,} parameters"
        )
    window: list[float] = []
    try:
        for step in range(start, end):
            state, metrics = train_step(state, to_global(next(batches), mesh))
            logger.advance()
            done = step + 1
            should_log = done % train_config.log_every == 0 or done == end
            should_save = done % train_config.checkpoint_every == 0 or done == end
            if should_log or should_save:
                values = {k: float(v) for k, v in metrics.items()}
                check_finite(done, values)
                if should_save and evaluate is not None:
                    result = evaluate(state)
                    values.update(result if isinstance(result, dict) else {"val_loss": result})
            if should_log:
                logger.log(done, {**values, "learning_rate": float(learning_rate(step))})
                window.append(values["loss"])
            if should_save:
                best_by = values.get("val_loss", float(np.mean(window)) if window else None)
                checkpoints.save(done, state, best_by)
                window = []
            preview_every = train_config.get("preview_every", 0)
            if preview is not None and ((preview_every and done % preview_every == 0) or done == end):
                figure = preview(state, done)
                logger.image(f"{name}/preview", figure, done, workdir / "previews" / f"{name}_step_{done:07d}.png")
    finally:
        checkpoints.wait_until_finished()
        logger.close()
    return state
