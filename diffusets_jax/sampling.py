"""How latents are sampled: one `Sampling` value, validated when it is made, passed everywhere.

`Sampling.from_config(config, **overrides)` (or `Pipeline.sampling(...)`) resolves the options a
caller leaves None from the model's `config.sampling`, checks them once and returns a `Sampling`.
That one value then travels through `Pipeline.__call__(..., sampling=)`,
`Pipeline.generate_for_conditions`, `batch_generation.generate_from_csv`,
`evaluation.evaluate.evaluate`, `serve` and `sediff.ablation`, none of which checks it again; it is
hashable, so the pipeline compiles one sampler per distinct value.

    >>> options = Sampling.from_config(config, sampler="ddim", num_steps=50)
    >>> pipe("Sinus rhythm", age=50, sex="F", heart_rate=70, sampling=options)
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np

from diffusets_jax.diffusion import SAMPLERS
from diffusets_jax.errors import InputError

MAX_GUIDANCE_SCALE = 50.0
GUIDANCE_WARNING = (
    "guidance_scale != 1 but this model was trained without condition dropout: its null "
    "condition is untrained and guidance may not help"
)


def short_repr(value, limit: int = 80) -> str:
    """`repr(value)` cut to `limit` characters: one line for any value in an error message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def is_real(value) -> bool:
    """Whether `value` is a finite int or float (NumPy's included), not a bool."""
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, (bool, np.bool_))
        and math.isfinite(value)
    )


def trained_for_guidance(config) -> bool:
    """Whether the U-Net of `config` saw the null condition in training (a condition dropout > 0),
    so that classifier-free guidance has a trained unconditional prediction to extrapolate from."""
    tc = config.get("unet_train", {})
    return any(tc.get(name, 0.0) > 0 for name in ("condition_dropout", "text_dropout", "patient_dropout"))


@dataclasses.dataclass(frozen=True)
class Sampling:
    """The sampling options of one generation, checked when made (frozen, hashable).

    Attributes:
      sampler: one of `diffusion.SAMPLERS`: 'ddpm' (the official ancestral sampler), 'ddim',
        'dpm-solver++' (2M).
      num_steps: model calls (two with guidance), an int >= 1; at most the model's
        `num_train_timesteps`, which `from_config` checks.
      eta: DDIM noise in [0, 1] (0: deterministic); the other samplers ignore it.
      guidance_scale: classifier-free guidance in [0, 50] (1: none).
      exact_limb_leads: derive III, aVR, aVL, aVF from I and II (Einthoven, Goldberger).

    Raises:
      InputError (a ValueError) naming the field at fault: a sampler not in `SAMPLERS`, a
        num_steps that is not an int >= 1, eta or guidance_scale out of range or not a finite
        number. Ints become floats and NumPy numbers Python ones, so equal options compare equal.
    """

    sampler: str = "ddpm"
    num_steps: int = 1000
    eta: float = 0.0
    guidance_scale: float = 1.0
    exact_limb_leads: bool = False

    def __post_init__(self):
        if not isinstance(self.sampler, str) or self.sampler not in SAMPLERS:
            raise InputError(f"sampler must be one of {', '.join(SAMPLERS)}, got {short_repr(self.sampler)}")
        _check_num_steps(self.num_steps)
        for name, value, high in (("eta", self.eta, 1.0), ("guidance_scale", self.guidance_scale, MAX_GUIDANCE_SCALE)):
            if not is_real(value) or not 0.0 <= value <= high:
                raise InputError(f"{name} must be a number in [0, {high:g}], got {short_repr(value)}")
        for name, value in (
            ("num_steps", int(self.num_steps)),
            ("eta", float(self.eta)),
            ("guidance_scale", float(self.guidance_scale)),
            ("exact_limb_leads", bool(self.exact_limb_leads)),
        ):
            object.__setattr__(self, name, value)

    @classmethod
    def from_config(
        cls,
        config,
        *,
        sampler: str | None = None,
        num_steps: int | None = None,
        eta: float | None = None,
        guidance_scale: float | None = None,
        exact_limb_leads: bool | None = None,
        stacklevel: int = 1,
    ) -> "Sampling":
        """The options of a model: each one given here, or else (None) the model's
        `config.sampling` value (else the field's default), checked once.

        `config` is the model's ConfigDict (`Pipeline.config`, `pretrained.read_model_config`);
        `num_steps` must be in [1, `config.diffusion.num_train_timesteps`]. Warns (`UserWarning`)
        when guidance_scale != 1 and the model was trained without condition dropout
        (`trained_for_guidance`); `stacklevel` 1 points the warning at the caller, 2 at its caller.

        Raises:
          InputError (a ValueError) naming the option at fault, as `Sampling`.
        """
        defaults = config.get("sampling", {})
        given = {
            "sampler": sampler,
            "num_steps": num_steps,
            "eta": eta,
            "guidance_scale": guidance_scale,
            "exact_limb_leads": exact_limb_leads,
        }
        values = {
            f.name: defaults.get(f.name, f.default) if given[f.name] is None else given[f.name]
            for f in dataclasses.fields(cls)
        }
        if isinstance(values["sampler"], str) and values["sampler"] in SAMPLERS:  # else the sampler is named first
            _check_num_steps(values["num_steps"], int(config.diffusion.num_train_timesteps))
        options = cls(**values)
        if message := options.guidance_warning(config):
            warnings.warn(message, stacklevel=stacklevel + 1)
        return options

    def guidance_warning(self, config) -> str | None:
        """`GUIDANCE_WARNING` if these options guide (guidance_scale != 1) a model of `config`
        trained without condition dropout, else None."""
        return GUIDANCE_WARNING if self.guidance_scale != 1.0 and not trained_for_guidance(config) else None

    def as_dict(self) -> dict:
        """`{'sampler', 'num_steps', 'eta', 'guidance_scale', 'exact_limb_leads'}`: JSON-ready, for records."""
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "Sampling":
        """A copy with `changes` (field names), checked as a new `Sampling` (not against a model's
        `num_train_timesteps`: use `from_config` for that)."""
        return dataclasses.replace(self, **changes)


#: The fields of `Sampling`, in order: also the names of the keyword arguments that override them.
FIELDS = tuple(f.name for f in dataclasses.fields(Sampling))


def _check_num_steps(value, high: int | None = None) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or value < 1
        or (high is not None and value > high)
    ):
        bound = f"in [1, {high}]" if high is not None else "of at least 1"
        raise InputError(f"num_steps must be an integer {bound}, got {short_repr(value)}")
