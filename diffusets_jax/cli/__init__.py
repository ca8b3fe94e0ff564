"""The `diffusets-jax` command line: parses arguments and calls library functions.

    diffusets-jax prepare             dataset directory -> processed training set (in memory)
    diffusets-jax build-tfds          dataset directory -> sharded TFDS dataset (streamed, for large sets)
    diffusets-jax train-vae           stage 1, the VAE
    diffusets-jax train-diffusion     stage 2, the latent diffusion U-Net
    diffusets-jax export              training workdir -> pretrained model directory
    diffusets-jax generate            report text + age, sex, HR -> WFDB records, .npz and PNGs
    diffusets-jax serve               local web page and JSON API: type a report, see and download ECGs
    diffusets-jax train-evaluator     the ECG-text CLIP evaluator used by `evaluate`
    diffusets-jax evaluate            generate for held-out conditions and score them; report.md
    diffusets-jax convert-torch       official PyTorch weights -> pretrained model directory
    diffusets-jax export-torch        pretrained model directory -> official PyTorch state dicts
    diffusets-jax fit-ecgsyn          SE-Diff: per-class ECGSYN prior
    diffusets-jax augment-dataset     SE-Diff: retrieval-augmented reports
    diffusets-jax train-beat-decoder  SE-Diff: beat decoder of the physics losses
    diffusets-jax ablate              SE-Diff: each addition against the base model on one budget

One file per command group (`data`, `train`, `generate`, `evaluate`, `weights`, `sediff`), each
with `register(subparsers)` adding its parsers and `cmd_*` functions calling the library. Every
expected failure (`diffusets_jax.errors.DiffusetsError`, and the built-in `ValueError`,
`FileNotFoundError`, `ImportError` of older code paths) is printed as one line
`diffusets-jax COMMAND: error: ...` with exit status 2, as is an `OSError` (a full disk, a
permission: its message names the file); Ctrl-C prints one line and exits 130; `--debug` shows
the traceback instead. An output directory (`--out`, `--workdir`) that a failed or interrupted
run created and left empty is removed again. JAX's persistent compilation cache is on unless
`--no-compile-cache` is given.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# No "Loading weights" bars of the text model: stderr holds the command's own progress and one line per error.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from diffusets_jax.errors import DiffusetsError  # noqa: E402

from . import data, evaluate, generate, sediff, train, weights  # noqa: E402
from ._common import UsageError, print_warnings  # noqa: E402

GROUPS = (data, train, generate, evaluate, weights)

__all__ = ["UsageError", "build_parser", "main"]


def _add_global_options(p: argparse.ArgumentParser, default) -> None:
    p.add_argument(
        "--debug", action="store_true", default=default, help="show the full traceback of an error instead of one line"
    )
    p.add_argument(
        "--no-compile-cache",
        action="store_true",
        default=default,
        help="do not use JAX's persistent compilation cache (default: on, in the user's cache "
        "directory; DIFFUSETS_JAX_CACHE_DIR moves it)",
    )


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; the SE-Diff commands' own options are built only when `command` is one of them."""
    parser = argparse.ArgumentParser(
        prog="diffusets-jax",
        description="DiffuSETS in JAX: 12-lead ECGs from clinical report text, age, sex and heart rate.",
    )
    _add_global_options(parser, default=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    sediff.register(sub, full=command in sediff.HELP)
    for name, p in sub.choices.items():  # the global options may also follow the command
        _add_global_options(p, default=argparse.SUPPRESS)
    return parser


def _compile_cache(args: argparse.Namespace) -> None:
    """JAX's persistent compilation cache on (default directory, unless one is set already) or off."""
    from diffusets_jax import compile_cache

    if args.no_compile_cache:
        compile_cache.disable()
    elif args.command != "build-tfds":  # TensorFlow and the readers only
        compile_cache.ensure_enabled()


#: Errors printed as one line (exit status 2): the typed ones, and the built-ins of older code paths.
EXPECTED_ERRORS = (DiffusetsError, UsageError, ValueError, OSError, ImportError)
#: Options naming a directory a command writes into (removed again if a failed run created it and left it empty).
OUTPUT_OPTIONS = ("out", "workdir")


def _new_directories(args: argparse.Namespace) -> list[Path]:
    """The output directories of `args` that do not exist yet, each with the missing parents that
    creating it would add, deepest first."""
    created = []
    for option in OUTPUT_OPTIONS:
        path = getattr(args, option, None)
        if not isinstance(path, Path):
            continue
        path = path.absolute()
        while not path.exists() and path != path.parent:
            created.append(path)
            path = path.parent
    return created


def _remove_if_empty(directories: list[Path]) -> None:
    for directory in directories:
        try:
            directory.rmdir()  # only an empty directory; anything written there is kept
        except OSError:
            pass


def _one_line(error: BaseException) -> str:
    """The error's message on one line (a multi-line message from a library is joined with ' | ')."""
    text = str(error).strip() or type(error).__name__
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())


def main(argv=None) -> int:
    """Run one command; returns the exit status (0, 2 for an expected failure, 130 for Ctrl-C)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    args.argv = argv
    new_directories = _new_directories(args)
    try:
        print_warnings(args.command)  # e.g. a checkpoint fallback: one line, like errors
        _compile_cache(args)
        args.func(args)
    except KeyboardInterrupt:
        _remove_if_empty(new_directories)
        if args.debug:
            raise
        print(f"diffusets-jax {args.command}: interrupted", file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as error:
        _remove_if_empty(new_directories)
        if args.debug:
            raise
        print(f"diffusets-jax {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except BaseException:
        _remove_if_empty(new_directories)
        raise
    return 0
