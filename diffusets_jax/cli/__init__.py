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
`diffusets-jax COMMAND: error: ...` with exit status 2; Ctrl-C prints one line and exits 130;
`--debug` shows the traceback instead. JAX's persistent compilation cache is on unless
`--no-compile-cache` is given.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from . import data, evaluate, generate, sediff, train, weights  # noqa: E402
from ._common import UsageError  # noqa: E402

GROUPS = (data, train, generate, evaluate, weights)

__all__ = ["UsageError", "build_parser", "main"]


def _add_global_options(p: argparse.ArgumentParser, default) -> None:
    p.add_argument("--debug", action="store_true", default=default,
                   help="show the full traceback of an error instead of one line")
    p.add_argument("--no-compile-cache", action="store_true", default=default,
                   help="do not use JAX's persistent compilation cache (default: on, in the user's cache "
                        "directory; DIFFUSETS_JAX_CACHE_DIR moves it)")


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


def _enable_compile_cache(args: argparse.Namespace) -> None:
    if args.no_compile_cache or args.command == "build-tfds":
        return
    try:
        from diffusets_jax import compile_cache
    except ImportError:  # not there yet: nothing to enable
        return
    compile_cache.enable()


def main(argv=None) -> int:
    """Run one command; returns the exit status (0, 2 for an expected failure, 130 for Ctrl-C)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    args.argv = argv
    try:
        _enable_compile_cache(args)
        args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"diffusets-jax {args.command}: interrupted", file=sys.stderr)
        return 130
    except (UsageError, ValueError, FileNotFoundError, ImportError) as error:
        if args.debug:
            raise
        print(f"diffusets-jax {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


