"""Weight conversion: `convert-torch` (official PyTorch -> model directory) and `export-torch` (back)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import UsageError, add_checkpoint_arg, add_override_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert-torch",
        help="official PyTorch weights -> pretrained model directory",
        description="Convert the official DiffuSETS checkpoints (unet_all.pth, vae_model.pth = "
        "{'encoder': ..., 'decoder': ...}) into a model directory that `generate` "
        "and Pipeline.from_pretrained load. .pth files are read with "
        "torch.load(weights_only=True); .npz files (one array per official key, VAE "
        "keys prefixed encoder./decoder.) need NumPy only. A missing, unknown or "
        "misshaped key is an error that names it.",
    )
    p.add_argument("--unet", required=True, type=Path, help="official U-Net state dict (unet_all.pth or .npz)")
    p.add_argument("--vae", required=True, type=Path, help="official VAE checkpoint (vae_model.pth or .npz)")
    p.add_argument("--out", required=True, type=Path, help="model directory to write")
    p.add_argument(
        "--config",
        default="paper",
        help="config of the official model: paper (default: official sizes, 1536-d ada-002 text) "
        "or a config name / .py path",
    )
    add_override_arg(p)
    p.set_defaults(func=cmd_convert_torch)

    p = sub.add_parser(
        "export-torch",
        help="pretrained model directory -> official PyTorch state dicts",
        description="Write unet_all.pth and vae_model.pth with the official key names, shapes "
        "and order, loadable by the official code with load_state_dict(strict=True).",
    )
    add_checkpoint_arg(p)
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument(
        "--format", choices=["pth", "npz"], default="pth", help="pth (torch.save, default) or npz (NumPy only)"
    )
    p.set_defaults(func=cmd_export_torch)


def cmd_convert_torch(args: argparse.Namespace) -> None:
    from diffusets_jax.config import load_config
    from diffusets_jax.torch_weights import convert_official

    for flag, path in (("--unet", args.unet), ("--vae", args.vae)):
        if not path.is_file():
            raise UsageError(f"{flag} {path} is not a file")
    out = convert_official(args.unet, args.vae, args.out, load_config(args.config, args.overrides))
    print(f"wrote pretrained model to {out}")


def cmd_export_torch(args: argparse.Namespace) -> None:
    from diffusets_jax.pretrained import DEFAULT_MODEL_DIR
    from diffusets_jax.torch_weights import export_official

    unet_path, vae_path = export_official(args.checkpoint or DEFAULT_MODEL_DIR, args.out, format=args.format)
    print(f"wrote {unet_path} and {vae_path}")
