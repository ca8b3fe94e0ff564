"""The orbax checkpoints of training: last K and best, params-only restore, falling back past a
step that cannot be restored.

Each trainer keeps `WORKDIR/<name>/<step>/` (the last `keep_checkpoints` steps) and
`WORKDIR/<name>_best/<step>/` (the lowest validation loss) with `orbax.checkpoint.CheckpointManager`
(https://orbax.readthedocs.io/en/latest/guides/checkpoint/api_refactor.html): each step is written
to a temporary directory and renamed when complete, so a killed save leaves the earlier steps
intact. A step can still be damaged afterwards (a full disk, a copy cut short, a bad sector): its
`_METADATA` no longer parses, or tensorstore cannot decode an array file of it.

What happens then (the newest step is always tried first):

* `restore_newest` (export, loading a trained model; read-only): warns which step and file are
  broken and restores the newest intact step; the broken step is left where it is.
* `restore_or_init` (resuming training): the same, and then moves each broken step to
  `WORKDIR/<name>_broken/<step>/` (nothing is deleted or overwritten). The move is needed because
  the manager never saves a step at or below its latest step (`CheckpointManager.should_save`), so
  a broken step left in place would silently stop every later save up to its number; once it is out
  of the way, training resumes from the intact step and saves the following steps under their
  usual numbers.
* if no step can be restored, CheckpointError names the newest step and its broken file.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from diffusets_jax.checkpoints.layout import BROKEN_SUFFIX, best_dir
from diffusets_jax.checkpoints.model_dir import check_finite, flatten_params
from diffusets_jax.errors import CheckpointError, MissingFileError

ITEM = "default"  # the item name orbax gives a StandardSave / PyTreeSave
METADATA = "_METADATA"


class CheckpointFallbackWarning(UserWarning):
    """A checkpoint step could not be restored and an earlier one was used instead."""


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def step_directory(directory: Path, step: int) -> Path:
    return Path(directory) / str(step)


def _tree_metadata(step_dir: Path) -> dict:
    """The `tree_metadata` of a step's `_METADATA` (orbax's JSON index of the saved tree).

    Raises CheckpointError naming the file if it is missing or not JSON (truncated, garbled).
    """
    path = step_dir / ITEM / METADATA
    try:
        return json.loads(path.read_text(encoding="utf-8"))["tree_metadata"]
    except FileNotFoundError:
        raise CheckpointError(f"step {step_dir.name}: {path} is missing") from None
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"step {step_dir.name}: {path} is unreadable ({type(error).__name__}: {str(error)[:120]})"
        ) from None


def has_field(step_dir: Path, field: str) -> bool:
    """Whether the saved tree of the step has arrays under the top-level `field` (e.g. 'ema_params')."""
    return any(key.startswith(f"('{field}', ") for key in _tree_metadata(step_dir))


_FILE_IN_ERROR = re.compile(r'local file "([^"]+)"')


def _culprit(step_dir: Path, text: str) -> str:
    """The file of `step_dir` that a tensorstore/orbax error message points at: a file it names, or
    the one file whose size is the "value of size N" it could not read past; else the step
    directory and the array being read."""
    named = [f for f in _FILE_IN_ERROR.findall(text) if Path(f).is_file()]
    if named:
        return named[-1]
    size = re.search(r"value of size (\d+)", text)
    if size:
        same = [p for p in step_dir.rglob("*") if p.is_file() and p.stat().st_size == int(size.group(1))]
        if len(same) == 1:
            return str(same[0])
    array = re.search(r'Error reading "([^"/]+)', text)
    return f"{step_dir} (array {array.group(1)})" if array else str(step_dir)


def describe_failure(step_dir: Path, error: BaseException) -> str:
    """One line: the step, the file of it that failed (`_culprit`) and the gist of the error."""
    if isinstance(error, CheckpointError):
        return str(error)
    text = str(error).replace("\n", " ").split(" [tensorstore_spec=")[0]
    reason = text.rsplit(": ", 1)[-1][:160]
    return f"step {step_dir.name}: {_culprit(step_dir, text)} cannot be restored ({type(error).__name__}: {reason})"


def _restore_step(manager, step: int, target, *, partial: bool = False):
    """Step `step` restored onto `target` (all of it onto its shardings; with `partial`, only the
    fields of `target`, as NumPy arrays); CheckpointError naming the step and the broken file."""
    step_dir = step_directory(manager.directory, step)
    _tree_metadata(step_dir)  # names a truncated or garbled _METADATA
    abstract = _abstract(target)
    try:
        if partial:
            restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
            args = ocp.args.PyTreeRestore(abstract, restore_args=restore_args, partial_restore=True)
        else:
            args = ocp.args.StandardRestore(abstract)
        restored = manager.restore(step, args=args)
    except (ValueError, OSError, RuntimeError, KeyError, TypeError) as error:
        raise CheckpointError(describe_failure(step_dir, error)) from error
    for field in ("params", "ema_params"):
        value = restored.get(field) if isinstance(restored, dict) else getattr(restored, field, None)
        if value is not None:
            check_finite(flatten_params(value), f"step {step}: {step_dir} ({field})")
    return restored


def restore_newest(
    manager, target, *, partial: bool = False, steps: list[int] | None = None
) -> tuple[Any, int, list[tuple[int, str]]]:
    """`(restored, step, broken)`: the newest step of `manager` that restores onto `target`, and
    `(step, reason)` for each newer step that did not (each also warned about).

    `partial=True` restores only the fields of `target` (e.g. step and params, not the optimizer).
    Raises MissingFileError if there is no step, CheckpointError naming the newest step and file if
    none restores.
    """
    steps = sorted(manager.all_steps() if steps is None else steps, reverse=True)
    if not steps:
        raise MissingFileError(f"no checkpoint in {manager.directory}")
    broken: list[tuple[int, str]] = []
    for step in steps:
        try:
            restored = _restore_step(manager, step, target, partial=partial)
        except CheckpointError as error:
            broken.append((step, str(error)))
            continue
        for bad, reason in broken:
            warnings.warn(
                f"{reason}; using the newest intact checkpoint, step {step}", CheckpointFallbackWarning, stacklevel=3
            )
        return restored, step, broken
    raise CheckpointError(f"no checkpoint in {manager.directory} can be restored; newest: {broken[0][1]}")


class Checkpoints:
    """The last `keep` checkpoints in `directory` and the best one (lowest `metric`) in `directory_best`.

    Orbax writes each checkpoint to a temporary directory and renames it when complete, so a
    process killed while saving leaves the previous checkpoint intact. Restoring uses the
    shardings of the state it is given, so a run saved on 8 devices resumes on 1 and back.
    """

    def __init__(self, directory: Path, keep: int):
        directory = Path(directory).absolute()
        self.directory, self.keep = directory, keep
        self.latest = self._manager()
        best_options = ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=lambda m: m["loss"], best_mode="min", create=True
        )
        self.best = ocp.CheckpointManager(directory.with_name(best_dir(directory.name)), options=best_options)

    def _manager(self):
        options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True)
        return ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore(self, state, step: int | None = None):
        """Checkpoint `step` (default: the newest that restores, see `restore_newest`) restored onto
        `state`'s structure and shardings. CheckpointError names a step that cannot be restored."""
        if step is not None:
            return _restore_step(self.latest, step, state)
        return restore_newest(self.latest, state)[0]

    def restore_best(self, state):
        step = self.best.best_step()
        if step is None:
            raise MissingFileError(f"no best checkpoint in {self.best.directory}")
        return _restore_step(self.best, step, state)

    def quarantine(self, step: int) -> Path:
        """Move step `step` to `<directory>_broken/<step>[.N]` (never over an earlier one); returns
        where it went. The manager is rebuilt so that it forgets the step."""
        self.wait_until_finished()
        target_root = self.directory.with_name(self.directory.name + BROKEN_SUFFIX)
        target_root.mkdir(parents=True, exist_ok=True)
        target, n = target_root / str(step), 1
        while target.exists():
            target, n = target_root / f"{step}.{n}", n + 1
        shutil.move(str(step_directory(self.directory, step)), str(target))
        self.latest.close()
        self.latest = self._manager()
        return target

    def save(self, step: int, state, loss: float | None) -> None:
        self.latest.save(step, args=ocp.args.StandardSave(state))
        if loss is not None and math.isfinite(loss):
            self.best.save(step, args=ocp.args.StandardSave(state), metrics={"loss": float(loss)})

    def wait_until_finished(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()


def latest_step(directory: str | Path) -> int | None:
    """The newest step number saved in `directory` (not checked for restorability), or None if
    there is none or no such directory; nothing is created."""
    directory = Path(directory).absolute()
    if not directory.is_dir():
        return None
    manager = ocp.CheckpointManager(directory)
    try:
        return manager.latest_step()
    finally:
        manager.close()


def restore_or_init(checkpoints: Checkpoints, state, log: Callable[[str], None] = print):
    """The newest restorable checkpoint onto `state`'s structure and shardings, or `state` itself
    if there is none. Newer steps that cannot be restored are warned about and moved aside
    (`Checkpoints.quarantine`); CheckpointError if none restores."""
    if checkpoints.latest_step() is None:
        return state
    restored, step, broken = restore_newest(checkpoints.latest, state)
    for bad, _ in broken:
        moved = checkpoints.quarantine(bad)
        warnings.warn(
            f"moved the broken step {bad} to {moved} (kept, not deleted); training resumes from step {step}",
            CheckpointFallbackWarning,
            stacklevel=2,
        )
    log(f"resumed from checkpoint at step {int(restored.step)} in {checkpoints.directory}")
    return restored


def restore_params(directory: str | Path, params, *, ema: bool = False, train_command: str = "train"):
    """`(params, step)` of the newest restorable step in `directory`, reading only `step` and
    `params` (or the EMA copy, `ema_params`, when `ema` and the step has one): no optimizer state
    is built or read (orbax partial restore, `PyTreeRestore(partial_restore=True)`).

    `params` is the target structure (e.g. `nnx.state(nnx.eval_shape(build), nnx.Param)`); the
    result has the same structure with NumPy arrays. Broken newer steps are warned about and
    skipped (nothing is moved).

    Raises MissingFileError naming `directory` and the command that writes it when there is no
    checkpoint, CheckpointError naming the step and file when none restores.
    """
    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise MissingFileError(f"no checkpoint in {directory}: run `diffusets-jax {train_command}` first")
    manager = ocp.CheckpointManager(directory)
    try:
        steps = manager.all_steps()
        if not steps:
            raise MissingFileError(f"no checkpoint in {directory}: run `diffusets-jax {train_command}` first")
        broken: list[tuple[int, str]] = []
        for step in sorted(steps, reverse=True):
            step_dir = step_directory(directory, step)
            try:
                field = "ema_params" if ema and has_field(step_dir, "ema_params") else "params"
                target = {"step": np.zeros((), np.int32), field: params}
                restored = _restore_step(manager, step, target, partial=True)
            except CheckpointError as error:
                broken.append((step, str(error)))
                continue
            for bad, reason in broken:
                warnings.warn(
                    f"{reason}; using the newest intact checkpoint, step {step}",
                    CheckpointFallbackWarning,
                    stacklevel=2,
                )
            return restored[field], int(restored["step"])
        raise CheckpointError(f"no checkpoint in {directory} can be restored; newest: {broken[0][1]}")
    finally:
        manager.close()
