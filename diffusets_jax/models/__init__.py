"""Flax NNX models of DiffuSETS: the 1-D VAE and the conditional 1-D U-Net."""

import contextlib
from typing import Callable, TypeVar

from flax import nnx

from diffusets_jax import diffusion
from diffusets_jax.models.unet import UNet, make_condition, null_condition
from diffusets_jax.models.vae import VAE, Decoder, Encoder, vae_loss

__all__ = [
    "VAE",
    "Encoder",
    "Decoder",
    "UNet",
    "abstract_model",
    "make_condition",
    "null_condition",
    "vae_loss",
    "build_vae",
    "build_unet",
]

Model = TypeVar("Model")


@contextlib.contextmanager
def _discarded_tracer_messages():
    """Skip building the messages of tracer errors that are caught and discarded.

    Flax asks every new parameter for its `.sharding` (`hasattr`), and under tracing JAX answers
    with an AttributeError whose message walks the whole trace so far
    (`DynamicJaxprTracer._origin_msg`): quadratic in the number of parameters, about 10 s to build
    the small U-Net abstractly with jax 0.10.2, 0.5 s without it. Nothing else changes; if JAX
    moves that private method, this does nothing.
    """
    try:
        from jax._src.interpreters import partial_eval

        tracer, original = partial_eval.DynamicJaxprTracer, partial_eval.DynamicJaxprTracer._origin_msg
    except (ImportError, AttributeError):  # pragma: no cover - JAX internals moved
        yield
        return
    tracer._origin_msg = lambda self: ""
    try:
        yield
    finally:
        tracer._origin_msg = original


def abstract_model(build: Callable[[], Model]) -> Model:
    """`nnx.eval_shape(build)`: the model with `jax.ShapeDtypeStruct` parameters, nothing drawn or
    allocated (a restore or load target), built in a fraction of a second."""
    with _discarded_tracer_messages():
        return nnx.eval_shape(build)


def build_vae(config, rngs: nnx.Rngs | None = None) -> VAE:
    """The VAE of `config.vae` (random initialisation from `config.seed` unless `rngs` is given)."""
    rngs = rngs or nnx.Rngs(config.seed)
    return VAE(tuple(config.vae.channels), config.vae.latent_channels, config.vae.num_groups, rngs=rngs)


def unet_preconditioning(config):
    """`diffusion.eps_preconditioning` tables of the config's schedule when `unet.preconditioning`
    is 'edm' (with `unet.data_std`, the std of the scaled training latents); None when 'none'
    (official) or absent (model directories written before the option existed)."""
    kind = config.unet.get("preconditioning", "none")
    if kind == "none":
        return None
    if kind != "edm":
        raise ValueError(f"unet.preconditioning must be 'none' or 'edm', got {kind!r}")
    d = config.diffusion
    _, alphas_cumprod = diffusion.schedule_arrays(
        d.beta_start, d.beta_end, d.num_train_timesteps, d.beta_schedule, d.get("snr_scale", 1.0)
    )
    return diffusion.eps_preconditioning(alphas_cumprod, float(config.unet.data_std))


def build_unet(config, rngs: nnx.Rngs | None = None) -> UNet:
    """The U-Net of `config.unet`, conditioned on `config.text.embed_dim`-wide text embeddings."""
    u = config.unet
    return UNet(
        channels=tuple(u.channels),
        latent_channels=config.vae.latent_channels,
        text_embed_dim=config.text.embed_dim,
        kernel_size=u.kernel_size,
        num_heads=u.num_heads,
        bottleneck_hidden=u.bottleneck_hidden,
        bottleneck_heads=u.bottleneck_heads,
        bottleneck_kernel_size=u.bottleneck_kernel_size,
        closed_form_cross_attention=u.closed_form_cross_attention,
        patient_mean=tuple(u.get("patient_mean", (0.0, 0.0, 0.0))),
        patient_std=tuple(u.get("patient_std", (1.0, 1.0, 1.0))),
        output_activation=u.get("output_activation", True),
        preconditioning=unet_preconditioning(config),
        rngs=rngs or nnx.Rngs(config.seed + 1),
    )
