"""The set-up every trainer shares, in one place: `TrainingRun`.

A run goes through the same four stages in the VAE, U-Net, CLIP-evaluator and SE-Diff
beat-decoder trainers; only the model, its data and its step differ:

1. `TrainingRun.begin(config, workdir, name, section)`: the workdir created, its `config.json`
   written, the batch size checked against the devices (a trainer without a config of its own,
   the beat decoder, builds `TrainingRun(...)` directly: same check, no `config.json`);
2. `run.plan(num_examples)`: the number of steps (`num_epochs` or `num_steps` of the section) and
   the device mesh, which the optimizer schedule and the jitted step need;
3. `run.resume(state)`: the initial state replicated over the mesh, then replaced by the newest
   restorable checkpoint of `run.checkpoint_dir` if there is one ("resumed from checkpoint at
   step N in DIR");
4. `run.train(state, ...)`: `common.run_training` from there, with the batches of the training
   source at the resumed step (a function of `(seed, step)` only, so a resumed run sees the batches
   of an uninterrupted one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jax

from diffusets_jax.checkpoints import write_config
from diffusets_jax.data_pipelines.input_pipeline import BatchSource
from diffusets_jax.training import common


@dataclass
class TrainingRun:
    """One trainer's run in a workdir: where it checkpoints and logs, and its shared set-up.

    Attributes:
        name: the trainer's name (`'vae'`, `'unet'`, `'evaluator'`, `'beat_decoder'`): the
            metrics log `workdir/<name>_metrics.jsonl`, TensorBoard `workdir/tensorboard/<name>`,
            the progress bar `train-<name>` and, by default, the checkpoints `workdir/<name>/`.
        workdir: the training workdir (created by `begin`).
        train_config: the trainer's section (`batch_size`, `num_epochs`/`num_steps`,
            `log_every`, `checkpoint_every`, `keep_checkpoints`, optionally `preview_every`).
        seed, shuffle: the training batches' order (`BatchSource.batches`).
        data_axis: the mesh axis the batch is split over (`config.mesh.data_axis`).
        checkpoint_dir: the orbax checkpoints; default `workdir/<name>` (the best one goes to
            `<checkpoint_dir>_best`).
        num_steps, mesh: set by `plan`; checkpoints: set by `resume`.

    Raises:
        ValueError: (on construction) `train_config.batch_size` is not a multiple of the device
            count, naming both.
    """

    name: str
    workdir: Path
    train_config: Any
    seed: int
    shuffle: bool = True
    data_axis: str = "data"
    checkpoint_dir: Path | None = None
    num_steps: int | None = field(default=None, init=False)
    mesh: jax.sharding.Mesh | None = field(default=None, init=False)
    checkpoints: common.Checkpoints | None = field(default=None, init=False)

    def __post_init__(self):
        self.workdir = Path(self.workdir)
        self.checkpoint_dir = Path(self.checkpoint_dir) if self.checkpoint_dir else self.workdir / self.name
        common.check_batch_size(self.train_config.batch_size)

    @classmethod
    def begin(cls, config, workdir: str | Path, name: str, section: str) -> "TrainingRun":
        """Create `workdir`, write its `config.json` (atomically) and check the batch size of
        `config[section]`; the run's batches follow `config.seed` and `config.data.shuffle`.

        Raises ValueError for a batch that does not split over the devices.
        """
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        write_config(workdir, config)
        return cls(
            name,
            workdir,
            config[section],
            seed=config.seed,
            shuffle=config.data.shuffle,
            data_axis=config.mesh.data_axis,
        )

    @property
    def directory(self) -> Path:
        """The checkpoint directory, which the trainers return."""
        return self.checkpoint_dir

    def plan(self, num_examples: int) -> tuple[int, jax.sharding.Mesh]:
        """`(num_steps, mesh)` for a training set of `num_examples` records
        (`common.resolve_num_steps`, `common.make_mesh`); also kept as attributes.

        Raises ValueError if the set is smaller than one batch or no step count is set.
        """
        self.num_steps, _ = common.resolve_num_steps(self.train_config, num_examples)
        self.mesh = common.make_mesh(self.data_axis)
        return self.num_steps, self.mesh

    def resume(self, state: common.TrainState) -> common.TrainState:
        """`state` replicated over the mesh, or the newest restorable checkpoint of
        `checkpoint_dir` restored onto it (broken newer steps moved aside, `steps.restore_or_init`).

        Raises CheckpointError naming the step and file when checkpoints exist but none restores.
        """
        self._planned()
        state = common.replicate(state, self.mesh)
        self.checkpoints = common.Checkpoints(self.checkpoint_dir, self.train_config.keep_checkpoints)
        return common.restore_or_init(self.checkpoints, state)

    def train(
        self,
        state: common.TrainState,
        *,
        train_step: Callable,
        source: BatchSource,
        learning_rate: Callable[[int], float],
        evaluate: Callable | None = None,
        preview: Callable | None = None,
        stop_after: int | None = None,
    ) -> common.TrainState:
        """`common.run_training` from `state` (as `resume` returned it) to `num_steps`, or for
        `stop_after` steps, on `source`'s batches from `state.step`; returns the final state.

        Raises `common.NonFiniteLossError` on a NaN/inf loss or gradient (the last checkpoint
        intact).
        """
        self._planned()
        if self.checkpoints is None:
            raise RuntimeError("TrainingRun.train before TrainingRun.resume")
        batches = source.batches(self.train_config.batch_size, int(state.step), seed=self.seed, shuffle=self.shuffle)
        return common.run_training(
            name=self.name,
            workdir=self.workdir,
            state=state,
            train_step=train_step,
            batches=batches,
            train_config=self.train_config,
            num_steps=self.num_steps,
            checkpoints=self.checkpoints,
            mesh=self.mesh,
            learning_rate=learning_rate,
            evaluate=evaluate,
            preview=preview,
            stop_after=stop_after,
        )

    def _planned(self) -> None:
        if self.mesh is None:
            raise RuntimeError("TrainingRun.plan must come first")
