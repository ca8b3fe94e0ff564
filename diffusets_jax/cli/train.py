"""Training commands: `train-vae`, `train-diffusion`, `export`, `train-evaluator`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_config_args, check_data_dirs, start_devices


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-vae", help="train the VAE (stage 1)")
    add_config_args(p)
    p.set_defaults(func=cmd_train_vae)

    p = sub.add_parser(
        "train-diffusion", help="train the latent diffusion U-Net (stage 2; needs a trained VAE in --workdir)"
    )
    add_config_args(p)
    p.add_argument(
        "--vae-from",
        default=None,
        type=Path,
        metavar="MODEL_DIR",
        help="a workdir without a VAE first takes the VAE of this model directory "
        "(e.g. diffusets_jax/pretrained/default), instead of running train-vae",
    )
    p.set_defaults(func=cmd_train_diffusion)

    p = sub.add_parser("export", help="write a pretrained model directory from a training workdir")
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--model-card", type=Path, default=None, help="Markdown file copied as MODEL_CARD.md")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "train-evaluator",
        help="train the ECG-text CLIP evaluator (Net1D + projections)",
        description="Contrastive training of the evaluator `evaluate` uses (official "
        "clip/clip_train.py), then, with --out, its export with a model card (retrieval "
        "accuracy on --test-folds).",
    )
    add_config_args(p)
    p.set_defaults(config="evaluator", func=cmd_train_evaluator)
    p.add_argument("--out", type=Path, default=None, help="evaluator directory to export to when training ends")


def cmd_train_vae(args: argparse.Namespace) -> None:
    from diffusets_jax.config import load_config
    from diffusets_jax.training.vae import train_vae

    check_data_dirs(args.data)
    start_devices(args)
    train_vae(load_config(args.config, args.overrides), args.workdir, args.data, args.stop_after)


def cmd_train_diffusion(args: argparse.Namespace) -> None:
    from diffusets_jax.config import load_config
    from diffusets_jax.training.diffusion import train_diffusion

    check_data_dirs(args.data)
    start_devices(args)
    config = load_config(args.config, args.overrides)
    if args.vae_from is not None and not (args.workdir / "vae").exists():
        from diffusets_jax.training.diffusion import workdir_from_pretrained

        vae_step, _ = workdir_from_pretrained(args.vae_from, args.workdir, models=("vae",))
        print(f"{args.workdir}: VAE of {args.vae_from} (step {vae_step})")
    auxiliary = None
    if config.get("sediff") is not None:
        from diffusets_jax.sediff.physics import physics_auxiliary

        auxiliary = physics_auxiliary(config, args.workdir)
    train_diffusion(config, args.workdir, args.data, args.stop_after, auxiliary=auxiliary)


def cmd_export(args: argparse.Namespace) -> None:
    from diffusets_jax.training.diffusion import export_workdir

    card = args.model_card.read_text() if args.model_card else None
    out = export_workdir(args.workdir, args.out, model_card=card)
    print(f"wrote pretrained model to {out}")


def cmd_train_evaluator(args: argparse.Namespace) -> None:
    from diffusets_jax.config import load_config
    from diffusets_jax.evaluation.train_clip import export_evaluator, train_clip

    check_data_dirs(args.data)
    start_devices(args)
    train_clip(load_config(args.config, args.overrides), args.workdir, args.data, args.stop_after)
    if args.out is not None:
        print(f"wrote evaluator to {export_evaluator(args.workdir, args.out, args.data)}")
