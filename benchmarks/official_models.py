"""The official PyTorch side of `benchmark_speed.py`: the official DiffuSETS models imported from a
checkout or a package, checked against the official parity goldens, and callables that time them.

The official code (`unet/unet_conditional.py` `ECGconditional`, `vae/vae_model.py` `VAE_Encoder` /
`VAE_Decoder`, diffusers `DDPMScheduler` as in `utils/inference.py`, the training step of
`utils/train.py`) is not part of this repository; `--official-repo PATH` or `--official-package NAME`
names it. Needs torch (pinned in setup.cfg) and, for the sampling rows, diffusers.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def load_official(repo: str | None, package: str | None):
    """The official modules: `(ECGconditional, VAE_Encoder, VAE_Decoder, DDPMScheduler or None)`.

    Raises SystemExit with a message when the checkout or package lacks them.
    """
    prefix = ""
    if repo is not None:
        root = Path(repo).expanduser().resolve()
        if not (root / "unet" / "unet_conditional.py").is_file() or not (root / "vae" / "vae_model.py").is_file():
            raise SystemExit(f"--official-repo {root}: no unet/unet_conditional.py and vae/vae_model.py there")
        sys.path.insert(0, str(root))
    else:
        prefix = package + "."
    try:
        unet_module = importlib.import_module(prefix + "unet.unet_conditional")
        vae_module = importlib.import_module(prefix + "vae.vae_model")
    except ImportError as error:
        raise SystemExit(f"cannot import the official DiffuSETS modules: {error}") from None
    try:
        from diffusers import DDPMScheduler
    except ImportError:
        DDPMScheduler = None  # the official sampler needs diffusers: those rows are then not run
    return unet_module.ECGconditional, vae_module.VAE_Encoder, vae_module.VAE_Decoder, DDPMScheduler


class Official:
    """Callables timing the official PyTorch models, built once with PyTorch's default init."""

    def __init__(self, modules, config, threads: int):
        import torch

        self.torch = torch
        torch.set_num_threads(threads)
        ECGconditional, VAE_Encoder, VAE_Decoder, self.DDPMScheduler = modules
        self.embed_dim = config.text.embed_dim
        torch.manual_seed(0)
        # Official DiffuSETS_inference.py: ECGconditional(T, kernel_size, num_levels, n_channels=4, text_embed_dim).
        self.unet = ECGconditional(
            config.diffusion.num_train_timesteps,
            kernel_size=config.unet.kernel_size,
            num_levels=len(config.unet.channels) + 1,
            n_channels=4,
            text_embed_dim=self.embed_dim,
        )
        self.encoder, self.decoder = VAE_Encoder(), VAE_Decoder()
        for module in (self.unet, self.encoder, self.decoder):
            module.eval()

    def parity_errors(self) -> dict[str, float]:
        """Relative errors of the given official modules, loaded with the parity weights, against the
        goldens of the official code in tests/data/parity (U-Net eps, VAE latent, decoder output): small
        errors show that the code timed is the official function, not a look-alike."""
        torch = self.torch
        sys.path.insert(0, str(ROOT / "tests"))
        from official_weights import official_state_dicts, parity_arrays

        weights, g = official_state_dicts(), parity_arrays()
        unet = type(self.unet)(1000, kernel_size=7, num_levels=7, n_channels=4, text_embed_dim=1536)
        encoder, decoder = type(self.encoder)(), type(self.decoder)()
        for module, name in ((unet, "unet"), (encoder, "vae_encoder"), (decoder, "vae_decoder")):
            module.load_state_dict({k: torch.from_numpy(v) for k, v in weights[name].items()})
            module.eval()
        t = lambda name: torch.from_numpy(np.array(g[name]))  # noqa: E731
        rel = lambda out, name: float(np.linalg.norm(out.numpy() - g[name]) / np.linalg.norm(g[name]))  # noqa: E731
        condition = {
            "gender": t("unet_in_sex")[:, None, None],
            "age": t("unet_in_age")[:, None, None],
            "heart rate": t("unet_in_hr")[:, None, None],
        }
        with torch.no_grad():
            eps = unet(t("unet_in_z"), t("unet_in_t").long(), t("unet_in_text")[:, None, :], condition)
            z = encoder(t("vae_in_x"), t("vae_in_noise"))[0]
            x = decoder(t("dec_in_z"))
        return {
            "U-Net": rel(eps, "unet_out_eps"),
            "VAE encoder": rel(z, "vae_out_z"),
            "VAE decoder": rel(x, "dec_out_x"),
        }

    def inputs(self, batch: int):
        torch = self.torch
        g = torch.Generator().manual_seed(batch)
        text = torch.randn(batch, 1, self.embed_dim, generator=g)
        condition = {
            "gender": torch.ones(batch, 1, 1),
            "age": torch.full((batch, 1, 1), 60.0),
            "heart rate": torch.full((batch, 1, 1), 70.0),
        }
        return torch.randn(batch, 4, 128, generator=g), torch.randint(0, 1000, (batch,), generator=g), text, condition

    def forward(self, batch: int):
        x, t, text, condition = self.inputs(batch)

        def run():
            with self.torch.no_grad():
                return self.unet(x, t, text, condition)

        return run

    def sample(self, batch: int, steps: int):
        if self.DDPMScheduler is None:
            return None
        scheduler = self.DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012)
        scheduler.set_timesteps(steps)
        x_T, _, text, condition = self.inputs(batch)

        def run():  # official utils/inference.py: generation_from_net
            xi = x_T
            with self.torch.no_grad():
                for i in scheduler.timesteps:
                    t = i * self.torch.ones(batch, dtype=self.torch.long)
                    eps = self.unet(xi, t, text, condition)
                    xi = scheduler.step(model_output=eps, timestep=i, sample=xi)["prev_sample"]
            return xi

        return run

    def vae(self, batch: int):
        torch = self.torch
        x, noise = torch.randn(batch, 1024, 12) * 0.3, torch.randn(batch, 4, 128)

        def run():
            with torch.no_grad():
                return self.decoder(self.encoder(x, noise)[0])

        return run

    def decode(self, batch: int):
        torch = self.torch
        z = torch.randn(batch, 4, 128) * 0.18215

        def run():
            with torch.no_grad():
                return self.decoder(z)

        return run

    def train_step(self, batch: int):
        torch = self.torch
        x0, _, text, condition = self.inputs(batch)
        x0 = x0 * 0.18
        unet = self.unet
        optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
        alphas_cumprod = torch.cumprod(1 - torch.linspace(0.00085, 0.012, 1000), 0)

        def run():  # official utils/train.py: train_epoch_channels, one batch
            unet.train()
            t = torch.randint(1, 999, (batch,))
            noise = torch.randn_like(x0)
            a = alphas_cumprod[t].view(-1, 1, 1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
            loss = torch.nn.functional.mse_loss(unet(xt, t, text, condition), noise, reduction="sum").div(batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            unet.eval()
            return loss

        return run
