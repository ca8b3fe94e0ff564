"""A training workdir -> a model directory: the trained VAE and U-Net, read params-only.

`load_trained(config, workdir, name)` builds the model of `config` abstractly (`nnx.eval_shape`, no
initialisation) and fills it from the newest restorable orbax step of `workdir/<name>/`, reading
only the step number and the parameters (or the U-Net's EMA copy); no optimizer is rebuilt and
no optimizer state is read. `export_workdir` writes both into a model directory
(`pretrained.save_pretrained`, with its manifest).
"""

from __future__ import annotations

from pathlib import Path

from flax import nnx

from diffusets_jax.checkpoints import steps
from diffusets_jax.checkpoints.layout import CONFIG_FILE, UNET_DIR, VAE_DIR, read_config
from diffusets_jax.checkpoints.model_dir import flatten_params, load_params_into
from diffusets_jax.errors import MissingFileError

#: The command that writes each model's checkpoints, for the message when there is none.
TRAIN_COMMANDS = {VAE_DIR: "train-vae", UNET_DIR: "train-diffusion"}


def _abstract(config, name: str) -> nnx.Module:
    from diffusets_jax.models import abstract_model, build_unet, build_vae

    build = {VAE_DIR: build_vae, UNET_DIR: build_unet}[name]
    return abstract_model(lambda: build(config))


def load_trained(config, workdir: str | Path, name: str, *, use_ema: bool = True) -> tuple[nnx.Module, int]:
    """`(model, step)`: the model `name` ('vae' or 'unet') of `config` with the parameters of the
    newest restorable step in `workdir/<name>/` (the EMA copy when `use_ema` and the run kept one).

    A newer step that cannot be restored is warned about (`steps.CheckpointFallbackWarning`, naming
    the step and its broken file) and skipped; nothing in the workdir changes.

    Raises MissingFileError naming the directory and the command that writes it if there is no
    checkpoint, CheckpointError naming the step and file if none restores or the parameters hold
    NaN/inf.
    """
    model = _abstract(config, name)
    graphdef, params = nnx.split(model, nnx.Param)
    directory = Path(workdir) / name
    restored, step = steps.restore_params(
        directory, params, ema=use_ema and name == UNET_DIR, train_command=TRAIN_COMMANDS[name]
    )
    load_params_into(model, flatten_params(restored), source=f"{directory} step {step}")
    return model, step


def export_workdir(workdir: str | Path, out: str | Path, model_card: str | None = None) -> Path:
    """Write the model directory (config, VAE, U-Net -- EMA weights if kept, manifest) of a
    training workdir; returns `out`.

    Raises MissingFileError if `workdir/config.json` or a checkpoint is missing, CheckpointError if
    no step of a model restores (a broken newest step falls back to the newest intact one, warned).
    """
    from diffusets_jax.pretrained import save_pretrained

    workdir = Path(workdir)
    if not (workdir / CONFIG_FILE).is_file():
        raise MissingFileError(f"{workdir / CONFIG_FILE} not found: not a training workdir")
    config = read_config(workdir)
    vae, _ = load_trained(config, workdir, VAE_DIR)
    unet, _ = load_trained(config, workdir, UNET_DIR)
    return save_pretrained(out, config, vae, unet, model_card=model_card)
