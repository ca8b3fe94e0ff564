"""SE-Diff's simulator-guided Euler loss and inter-lead loss on the beat of the predicted clean latent.

Stage 2 of SE-Diff (Wang et al., ICLR 2026, arXiv:2511.09895; official release
`utils/simulator_trainer.py`: `get_simulator_loss`, `interlead_constraint_loss`; the "Euler
loss" of MultiODE-GAN, Yehuda & Radinsky, arXiv:2409.17833, is their ancestor) adds two
training-only regularisers to the DDPM loss::

    L_total = L_DDPM + lambda L_Euler + gamma L_inter-lead

both computed on `h = D_beat(x0_hat)`, the beat that the frozen beat decoder
(`diffusets_jax.sediff.beat_decoder`) decodes from the U-Net's predicted clean latent
`x0_hat = predict_x0(x_t, eps_hat)`. Here they are differentiable through the frozen decoder into
the U-Net (the paper's formulation); the released code computes them under `torch.no_grad()` so
that they carry no gradient, which `sediff.physics_gradient = False` reproduces (the losses are
computed and logged under `stop_gradient`).

* `euler_loss()`, the paper's `L_Euler = 1/(12 (L_c - 1)) sum_lead sum_l
  ((h_{l+1} - h_l)/dt - f_z(x_l, y_l, h_l; eta_class))^2` (mV/s)^2, averaged over the batch:
  the forward-Euler residual of the decoded beat under the ECGSYN vector field `f_z`
  (`diffusets_jax.sediff.ecgsyn.beat_vector_field()`), with `(x_l, y_l)` the reference
  trajectory on the limit cycle at the record's heart rate (R at phase 0, index 20) and
  `eta_class` the per-class, per-lead wave parameters of `ecgsyn_params.json`
  (`diffusets_jax.sediff.fit_params.load_class_params()`). The fitted beats carry a
  per-lead baseline offset (mV); `f_z` relaxes `h - offset`. The released code instead
  matches the beat's difference quotient to that of a class template beat (`get_simulator_loss`).
* `interlead_loss()`, Einthoven/Goldberger consistency of the decoded beat itself: the mean
  squared residual (mV^2) of `III = II - I`, `aVR = -(I + II)/2`, `aVL = I - II/2`,
  `aVF = II - I/2` (`diffusets_jax.leads`). It is exactly 0 for a beat whose limb leads
  obey the identities. The paper's tuple form replaces the derivatives of the leads `p`, `q`
  by simulator fields `f_z(.; eta_p)` and the released code by template derivatives; both mix a
  second simulator loss into the identity and are not 0 for consistent beats, so they are not used.

The class of a record: the first class of `CLASS_PRIORITY` (conduction and rhythm
disorders that change the beat's shape before the broad classes) that its report matches by
`diffusets_jax.conditions.class_masks()` and that the parameter file holds, else
`all`. SE-Diff's released `simplify_label` takes the first match in its own list, which starts
with "sinus rhythm" and so puts most records into that class; it has no fallback ('other' records
get no loss).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffusets_jax.conditions import CLASS_PRIORITY, FALLBACK_CLASS
from diffusets_jax.constants import FS
from diffusets_jax.leads import identity_residuals
from diffusets_jax.sediff import ecgsyn
from diffusets_jax.training.diffusion import AuxiliaryLosses

Array = jax.Array

#: Heart rates (bpm) are clipped to this range before scaling the wave parameters.
HEART_RATE_RANGE = (30.0, 200.0)


class ClassTable(NamedTuple):
    """Per-class simulator parameters stacked for gathering by class index (a pytree of arrays).

    `names[c]` is class `c` (a tuple, not a leaf: keep it out of jitted arguments or close
    over the table). `theta`, `a`, `b`: `(C, 12, 5)` at 60 bpm; `offset` `(C, 12)` mV;
    `mean_beat` `(C, 61, 12)` mV (the class-mean real beat, the released code's template).
    """

    theta: Array
    a: Array
    b: Array
    offset: Array
    mean_beat: Array
    names: tuple[str, ...]


def load_class_table(path: str | Path | None = None) -> ClassTable:
    """The classes of `ecgsyn_params.json` (default: the shipped fit) in matching order:
    `CLASS_PRIORITY` order first, then any other class of the file, `all` last.

    Raises ValueError if the file has no `all` class (the fallback).
    """
    from diffusets_jax.sediff.fit_params import load_class_params

    classes = load_class_params(path)
    if FALLBACK_CLASS not in classes:
        raise ValueError(f"{path or 'the shipped ecgsyn_params.json'} has no {FALLBACK_CLASS!r} class")
    names = [n for n in CLASS_PRIORITY if n in classes]
    names += [n for n in classes if n not in names and n != FALLBACK_CLASS] + [FALLBACK_CLASS]
    stack = lambda f: jnp.asarray(np.stack([np.asarray(f(classes[n])) for n in names]), jnp.float32)  # noqa: E731
    return ClassTable(
        theta=stack(lambda c: c.params.theta),
        a=stack(lambda c: c.params.a),
        b=stack(lambda c: c.params.b),
        offset=stack(lambda c: c.offset),
        mean_beat=stack(lambda c: c.mean_beat),
        names=tuple(names),
    )


def _row_params(table: ClassTable, class_index: Array) -> tuple[ecgsyn.WaveParams, Array]:
    params = ecgsyn.WaveParams(table.theta[class_index], table.a[class_index], table.b[class_index])
    return params, table.offset[class_index]  # leaves (B, 12, 5), offset (B, 12)


def euler_residual(beats: Array, params: ecgsyn.WaveParams, offset: Array, heart_rate: Array, fs: float = FS) -> Array:
    """`(h_{l+1} - h_l) / dt - f_z(x_l, y_l, h_l - offset; eta)` in mV/s.

    Args:
        beats: `(B, 61, 12)` mV, R at index 20, `fs` Hz.
        params: `ecgsyn.WaveParams` with `(B, 12, 5)` leaves at 60 bpm.
        offset: `(B, 12)` mV baseline of the fitted beats.
        heart_rate: `(B,)` bpm (clipped to `HEART_RATE_RANGE`).

    Returns:
        `(B, 60, 12)` residuals of the forward-Euler step.
    """
    heart_rate = jnp.clip(heart_rate.astype(jnp.float32), *HEART_RATE_RANGE)
    per_lead = jax.vmap(lambda h, p, hr: ecgsyn.beat_vector_field(h, p, hr, fs=fs), in_axes=(0, 0, None))
    field = jax.vmap(per_lead)(jnp.swapaxes(beats, 1, 2) - offset[..., None], params, heart_rate)  # (B, 12, 61)
    field = jnp.swapaxes(field, 1, 2)  # (B, 61, 12)
    return (beats[:, 1:] - beats[:, :-1]) * fs - field[:, :-1]


def euler_loss(beats: Array, class_index: Array, heart_rate: Array, table: ClassTable, fs: float = FS) -> Array:
    """SE-Diff's simulator-guided Euler loss, mean over `(B, 60, 12)` of the squared
    `euler_residual()`, (mV/s)^2, with each row's class parameters (`class_index` `(B,)`)."""
    params, offset = _row_params(table, class_index)
    return jnp.mean(euler_residual(beats, params, offset, heart_rate, fs) ** 2)


def interlead_loss(beats: Array) -> Array:
    """Mean squared Einthoven/Goldberger residual (mV^2) of `(..., L, 12)` beats; 0 iff consistent."""
    return jnp.mean(identity_residuals(beats) ** 2)


class PhysicsLoss:
    """The frozen beat decoder plus the class table: x0_hat -> `{"euler_loss", "interlead_loss"}`.

    The decoder's parameters are closed over as constants (never trained here).
    """

    def __init__(self, decoder, table: ClassTable, record: dict | None = None):
        self.graphdef, self.params = nnx.split(decoder)
        self.table = table
        self.record = record or {}
        self.fallback_index = table.names.index(FALLBACK_CLASS)

    @classmethod
    def load(cls, decoder_dir: str | Path, params_path: str | Path | None = None) -> "PhysicsLoss":
        from diffusets_jax.sediff.beat_decoder import load_beat_decoder

        decoder, record = load_beat_decoder(decoder_dir)
        return cls(decoder, load_class_table(params_path or None), record)

    def decode(self, x0: Array) -> Array:
        """`(B, 128, 4)` scaled latents -> `(B, 61, 12)` mV beats (decoder frozen)."""
        decoder = nnx.merge(self.graphdef, jax.lax.stop_gradient(self.params))
        return decoder(x0.astype(jnp.float32))

    def __call__(self, x0: Array, class_index: Array | None, heart_rate: Array) -> dict[str, Array]:
        """Both losses of the beats decoded from `x0` `(B, 128, 4)`; `class_index` `(B,)`
        int (None: `all`), `heart_rate` `(B,)` bpm."""
        beats = self.decode(x0)
        if class_index is None:
            class_index = jnp.full(x0.shape[:1], self.fallback_index, jnp.int32)
        return {
            "euler_loss": euler_loss(beats, class_index, heart_rate, self.table),
            "interlead_loss": interlead_loss(beats),
        }


def physics_weights(config) -> tuple[float, float]:
    """`(euler_weight, interlead_weight)` of `config.sediff` (0, 0 for configs without it)."""
    sediff = config.get("sediff")
    if sediff is None:
        return 0.0, 0.0
    return float(sediff.get("euler_weight", 0.0)), float(sediff.get("interlead_weight", 0.0))


def physics_enabled(config) -> bool:
    return any(w > 0 for w in physics_weights(config))


def physics_from_config(config, workdir: str | Path, vae_step: int | None = None) -> PhysicsLoss:
    """The `PhysicsLoss` of `config.sediff`: decoder from `sediff.beat_decoder_dir`
    (default `workdir/beat_decoder`), parameters from `sediff.ecgsyn_params` (default the
    shipped fit). Prints a warning if the decoder was trained on another VAE checkpoint.

    Raises FileNotFoundError (naming `train-beat-decoder`) if there is no decoder.
    """
    from diffusets_jax.sediff.beat_decoder import DIRECTORY_NAME

    sediff = config.sediff
    directory = Path(sediff.get("beat_decoder_dir", "") or Path(workdir) / DIRECTORY_NAME)
    physics = PhysicsLoss.load(directory, sediff.get("ecgsyn_params", "") or None)
    trained_on = physics.record.get("training", {}).get("vae_step")
    if vae_step is not None and trained_on is not None and trained_on != vae_step:
        print(
            f"warning: the beat decoder in {directory} was trained on the VAE of step {trained_on}, "
            f"this run uses step {vae_step}"
        )
    return physics


def physics_aux_loss(physics: PhysicsLoss, config):
    """SE-Diff's weighted physics losses as a `training.diffusion.AuxLoss`.

    The losses act on the beat decoded (frozen decoder) from the step's
    `x0_hat = predict_x0(x_t, eps_hat)`; with `sediff.physics_gradient` False, `x0_hat` is under
    `stop_gradient` (the released code's `torch.no_grad()`): logged, not trained. Returns
    `euler_weight * euler_loss + interlead_weight * interlead_loss` and both losses as metrics.
    """
    euler_weight, interlead_weight = physics_weights(config)
    gradient = config.sediff.get("physics_gradient", True)

    def aux(terms, batch):
        x0_hat = terms.x0_hat if gradient else jax.lax.stop_gradient(terms.x0_hat)
        parts = physics(x0_hat, batch.get("class_index"), batch["heart_rate"])
        return euler_weight * parts["euler_loss"] + interlead_weight * parts["interlead_loss"], parts

    return aux


def physics_auxiliary(config, workdir: str | Path):
    """`train_diffusion`'s `auxiliary` for `config.sediff`: `vae_step -> AuxiliaryLosses` with the
    physics loss of `physics_from_config()` and its class table's names (None if the weights are 0)."""
    if not physics_enabled(config):
        return None

    def build(vae_step: int):
        physics = physics_from_config(config, workdir, vae_step)
        return AuxiliaryLosses((physics_aux_loss(physics, config),), class_names=physics.table.names)

    return build
