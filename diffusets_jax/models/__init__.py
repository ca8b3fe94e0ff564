"""Flax NNX models of DiffuSETS: the 1-D VAE and the conditional 1-D U-Net."""

from diffusets_jax.models.unet import UNet, make_condition
from diffusets_jax.models.vae import VAE, Decoder, Encoder, vae_loss

__all__ = ["VAE", "Encoder", "Decoder", "UNet", "make_condition", "vae_loss"]
