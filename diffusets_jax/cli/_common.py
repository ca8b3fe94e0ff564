"""Pieces the command groups share: the usage error, option groups and their parsing."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffusets_jax.errors import InputError


class UsageError(InputError):
    """A bad command-line argument: printed as one line, exit status 2."""


def add_override_arg(p: argparse.ArgumentParser, example: str | None = None) -> None:
    """--set KEY=VALUE (repeatable, into `args.overrides`): a config field overridden, as `load_config` takes it."""
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config field{f', e.g. --set {example}' if example else ''} (repeatable)",
    )


def add_config_args(p: argparse.ArgumentParser) -> None:
    """--config, --set, --workdir, --data, --stop-after, --distributed of the training commands."""
    p.add_argument(
        "--config", default="small", help="config name in configs/ (small, paper) or a .py path (default: small)"
    )
    add_override_arg(p, "unet_train.num_steps=100")
    p.add_argument(
        "--workdir", required=True, type=Path, help="directory for checkpoints and logs (resumed if present)"
    )
    p.add_argument(
        "--data",
        action="append",
        required=True,
        type=Path,
        metavar="DIR",
        help="processed set written by `prepare` (repeatable), or one TFDS dataset written by "
        "`build-tfds` (its version directory, e.g. tfds/ptbxl/minilm-500hz/1.0.0)",
    )
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="N",
        help="stop this run after N steps (checkpointed); run again to resume",
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help="multi-host run (TPU slice, several GPU nodes): call jax.distributed.initialize() first; "
        "run the same command on every host",
    )


def add_checkpoint_arg(p: argparse.ArgumentParser) -> None:
    """--checkpoint: the pretrained model directory a command loads (None: the shipped model)."""
    p.add_argument(
        "--checkpoint", type=Path, default=None, help="pretrained model directory (default: the shipped model)"
    )


def add_sampling_args(p: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    """--sampler, --num-steps, --guidance-scale, --eta, --exact-limb-leads; choices from `diffusion.SAMPLERS`.

    `defaults` overrides the default of an option (by dest); otherwise each defaults to None,
    which means the model's config.
    """
    from diffusets_jax.diffusion import SAMPLERS

    defaults = defaults or {}
    p.add_argument(
        "--sampler",
        choices=list(SAMPLERS),
        default=defaults.get("sampler"),
        help="ddpm: the official ancestral sampler; ddim; dpm-solver++ (2M). Default: "
        + (defaults["sampler"] if "sampler" in defaults else "the model's config"),
    )
    p.add_argument(
        "--num-steps",
        type=int,
        default=defaults.get("num_steps"),
        help="sampler steps, 1-1000, one model call each (two with guidance; default: "
        + (str(defaults["num_steps"]) if "num_steps" in defaults else "the model's config; officially 1000 DDPM steps")
        + ")",
    )
    p.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="classifier-free guidance scale; 1 = none (default: the model's config)",
    )
    p.add_argument("--eta", type=float, default=None, help="DDIM noise, 0 (deterministic) to 1 (default 0)")
    p.add_argument(
        "--exact-limb-leads",
        action="store_true",
        default=None,
        help="derive III, aVR, aVL, aVF from I and II (Einthoven, Goldberger)",
    )


def sampling_options(args: argparse.Namespace) -> dict:
    """The values of `add_sampling_args`' options by field name (None: not given, the model's
    config): the keyword arguments of `Sampling.from_config` / `Pipeline.sampling`, which check them."""
    return dict(
        sampler=args.sampler,
        num_steps=args.num_steps,
        eta=args.eta,
        guidance_scale=args.guidance_scale,
        exact_limb_leads=args.exact_limb_leads,
    )


def parse_folds(text: str, option: str = "--folds") -> tuple[int, ...]:
    """'9,10' -> (9, 10); UsageError naming `option` otherwise."""
    try:
        folds = tuple(int(f) for f in text.split(",") if f.strip())
    except ValueError:
        raise UsageError(f"{option} must be comma-separated integers, got {text!r}") from None
    if not folds:
        raise UsageError(f"{option} names no fold")
    return folds


def check_data_dirs(dirs, option: str = "--data") -> None:
    """UsageError naming `option` and the first of `dirs` (local paths) that does not exist, before
    a training run creates its --workdir; remote ones (`gs://...`) are left to the reader."""
    for directory in dirs:
        if not str(directory).split("/")[0].endswith(":") and not Path(directory).exists():
            raise UsageError(
                f"{option} {directory} not found: run `diffusets-jax prepare --out {directory}` first "
                "(or give a TFDS dataset written by `build-tfds`)"
            )


def start_devices(args: argparse.Namespace) -> None:
    """`jax.distributed.initialize()` with --distributed; print the processes and devices."""
    import jax

    if args.distributed:
        jax.distributed.initialize()  # coordinator, process count and id from the cluster environment
    if jax.process_index() == 0:
        print(f"{jax.process_count()} process(es), {jax.device_count()} {jax.devices()[0].platform} device(s)")


def print_warnings(command: str) -> None:
    """Show warnings on one line each, `diffusets-jax COMMAND: warning: ...`, like errors (no source line)."""
    import warnings

    warnings.showwarning = lambda message, *_, **__: print(
        f"diffusets-jax {command}: warning: {message}", file=sys.stderr
    )
