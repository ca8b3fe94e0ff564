"""Text-and-patient-to-ECG generation: `Pipeline.from_pretrained(path)(report, age=..., sex=..., heart_rate=...)`.

Official `utils/inference.py:generation_from_net`: embed the ordered prompt of the report, build
the condition vector [text, sex, age, HR], draw x_T ~ N(0, I) of shape `(B, 128, 4)`, run the
ancestral DDPM sampler, decode with the VAE to `(B, 1024, 12)` mV at 102.4 Hz.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import jax
import numpy as np
from flax import nnx

from diffusets_jax import diffusion
from diffusets_jax.constants import FS, LATENT_LENGTH, LEADS, SEX_CODES
from diffusets_jax.models import make_condition
from diffusets_jax.pretrained import DEFAULT_MODEL_DIR, load_pretrained

AGE_RANGE = (0.0, 120.0)  # years
HEART_RATE_RANGE = (20.0, 300.0)  # bpm
MAX_SAMPLES = 10_000


@dataclass
class GenerationResult:
    """Generated ECGs and the conditions they were generated from."""

    signals: np.ndarray  # (B, 1024, 12) float32 mV, LEADS order, 102.4 Hz
    report: str
    age: float
    sex: str
    heart_rate: float
    seed: int
    num_steps: int
    prompt: str
    fs: float = FS
    leads: tuple[str, ...] = LEADS
    extra: dict = field(default_factory=dict)


def validate_conditions(report, age, sex, heart_rate, num_samples: int, num_steps: int, max_steps: int):
    """Normalise and check generation arguments; ValueError naming the argument at fault."""
    from diffusets_jax.text import split_report

    statements = split_report(report) if isinstance(report, str) else [s.strip() for s in report if s.strip()]
    if not statements:
        raise ValueError("report is empty: give at least one statement, e.g. 'Sinus rhythm'")
    sex_code = str(sex).strip().upper()[:1] if str(sex).strip().lower() in ("m", "f", "male", "female") else None
    if sex_code not in SEX_CODES:
        raise ValueError(f"sex must be 'M' or 'F' (or male/female), got {sex!r}")
    for name, value, (low, high) in (("age", age, AGE_RANGE), ("heart_rate", heart_rate, HEART_RATE_RANGE)):
        if not isinstance(value, (int, float, np.number)) or not math.isfinite(value) or not low <= value <= high:
            raise ValueError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")
    if not isinstance(num_samples, (int, np.integer)) or not 1 <= num_samples <= MAX_SAMPLES:
        raise ValueError(f"num_samples must be an integer in [1, {MAX_SAMPLES}], got {num_samples!r}")
    if not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= max_steps:
        raise ValueError(f"num_steps must be an integer in [1, {max_steps}], got {num_steps!r}")
    return statements, sex_code


class Pipeline:
    """A trained VAE + U-Net + text embedder, ready to generate ECGs.

    Example:
        >>> pipe = Pipeline.from_pretrained()            # the shipped default model
        >>> out = pipe("Sinus tachycardia|Left ventricular hypertrophy", age=63, sex="M", heart_rate=110,
        ...            num_samples=4, seed=0)
        >>> out.signals.shape                            # (4, 1024, 12) mV at 102.4 Hz
    """

    def __init__(self, config, vae, unet, embedder=None):
        from diffusets_jax.text import get_embedder

        self.config, self.vae, self.unet = config, vae, unet
        self.embedder = embedder or get_embedder(config.text.embedder)
        if self.embedder.dim != config.text.embed_dim:
            raise ValueError(
                f"text embedder {self.embedder.name} gives {self.embedder.dim}-d vectors, "
                f"the model expects {config.text.embed_dim}"
            )
        d = config.diffusion
        self.schedule = diffusion.make_schedule(
            d.beta_start, d.beta_end, d.num_train_timesteps, d.beta_schedule, d.clip_sample, d.clip_sample_range
        )
        self._graphs = (nnx.split(vae), nnx.split(unet))
        self._samplers: dict[int, callable] = {}

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, embedder=None) -> "Pipeline":
        """Load a model directory (see `diffusets_jax.pretrained`); None means the shipped default model."""
        config, vae, unet = load_pretrained(DEFAULT_MODEL_DIR if path is None else path)
        return cls(config, vae, unet, embedder)

    def _sampler(self, num_steps: int):
        """`(vae_state, unet_state, condition (B, D+3), key) -> (B, 1024, 12)`, compiled once per step count."""
        if num_steps not in self._samplers:
            (vae_def, _), (unet_def, _) = self._graphs
            schedule, channels = self.schedule, self.config.vae.latent_channels

            def generate(vae_state, unet_state, condition, key):
                unet = nnx.merge(unet_def, unet_state)
                noise_key, step_key = jax.random.split(key)
                x_T = jax.random.normal(noise_key, (condition.shape[0], LATENT_LENGTH, channels))
                model_fn = lambda x, t: unet(x, t, condition)  # noqa: E731
                latents = diffusion.sample_ddpm(model_fn, schedule, x_T, step_key, num_steps)
                return nnx.merge(vae_def, vae_state).decoder(latents)

            self._samplers[num_steps] = jax.jit(generate)
        return self._samplers[num_steps]

    def embed(self, statements: Sequence[str]) -> tuple[np.ndarray, str]:
        """The official ordered prompt of the statements and its `(D,)` embedding."""
        from diffusets_jax.text import build_prompt

        prompt = build_prompt(list(statements))
        return self.embedder.embed([prompt])[0], prompt

    def __call__(
        self, report: str | Sequence[str], *, age: float, sex: str, heart_rate: float,
        num_samples: int = 1, seed: int = 0, num_steps: int | None = None, batch_size: int | None = None,
        progress: bool = False,
    ) -> GenerationResult:
        """Generate `num_samples` ECGs `(B, 1024, 12)` in mV for one report and patient.

        Args:
          report: statements separated by '|' (or a list), most important first.
          age: years in [0, 120]; sex: 'M' or 'F'; heart_rate: bpm in [20, 300].
          seed: the same seed (and step count) gives the same ECGs.
          num_steps: DDPM steps in [1, 1000] (default `config.sampling.num_steps`).
          batch_size: ECGs per compiled call (default `config.sampling.batch_size`).
        Raises:
          ValueError naming the argument at fault.
        """
        num_steps = int(num_steps or self.config.sampling.num_steps)
        statements, sex_code = validate_conditions(
            report, age, sex, heart_rate, num_samples, num_steps, self.config.diffusion.num_train_timesteps
        )
        embedding, prompt = self.embed(statements)
        batch_size = batch_size or self.config.sampling.batch_size
        sampler = self._sampler(num_steps)
        (_, vae_state), (_, unet_state) = self._graphs
        chunks, start_time = [], time.perf_counter()
        for first in range(0, num_samples, batch_size):
            size = min(batch_size, num_samples - first)
            condition = make_condition(
                np.repeat(embedding[None], size, 0), [SEX_CODES[sex_code]] * size, [age] * size, [heart_rate] * size
            )
            key = jax.random.fold_in(jax.random.key(seed), first // batch_size)
            chunks.append(np.asarray(sampler(vae_state, unet_state, condition, key)))
            if progress:
                print(f"generated {first + size}/{num_samples} ECGs ({time.perf_counter() - start_time:.1f} s)", flush=True)
        return GenerationResult(
            signals=np.concatenate(chunks).astype(np.float32), report="|".join(statements), age=float(age),
            sex=sex_code, heart_rate=float(heart_rate), seed=seed, num_steps=num_steps, prompt=prompt,
        )


    def generate_for_conditions(
        self, text_embeddings: np.ndarray, sex: np.ndarray, age: np.ndarray, heart_rate: np.ndarray, *,
        seed: int = 0, num_steps: int | None = None, batch_size: int | None = None, progress: bool = False,
    ) -> np.ndarray:
        """One ECG per condition row: `(N, 1024, 12)` mV for text embeddings `(N, D)` (already
        embedded, e.g. a processed set's), sex `(N,)` (1.0 male, 0.0 female), age (years) and heart
        rate (bpm) `(N,)`. Batches of `batch_size` (the last one padded, so one compiled sampler
        serves all); batch i uses the key `fold_in(key(seed), i)`.

        Raises ValueError for rows of different lengths or a text width the model does not take.
        """
        text_embeddings = np.asarray(text_embeddings, np.float32)
        n = len(text_embeddings)
        if {len(sex), len(age), len(heart_rate)} != {n}:
            raise ValueError(f"condition arrays have different lengths: text {n}, sex {len(sex)}, "
                             f"age {len(age)}, heart_rate {len(heart_rate)}")
        if text_embeddings.shape[1] != self.config.text.embed_dim:
            raise ValueError(f"text embeddings are {text_embeddings.shape[1]}-d; the model takes "
                             f"{self.config.text.embed_dim}-d ({self.config.text.embedder})")
        num_steps = int(num_steps or self.config.sampling.num_steps)
        batch_size = min(batch_size or self.config.sampling.batch_size, n)
        condition = np.asarray(make_condition(text_embeddings, sex, age, heart_rate))
        sampler = self._sampler(num_steps)
        (_, vae_state), (_, unet_state) = self._graphs
        chunks = []
        from tqdm.auto import tqdm

        for first in tqdm(range(0, n, batch_size), desc="generating", unit="batch", disable=not progress):
            rows = condition[first : first + batch_size]
            padded = np.concatenate([rows, np.repeat(rows[-1:], batch_size - len(rows), 0)])
            key = jax.random.fold_in(jax.random.key(seed), first // batch_size)
            chunks.append(np.asarray(sampler(vae_state, unet_state, padded, key))[: len(rows)])
        return np.concatenate(chunks).astype(np.float32)


def write_outputs(result: GenerationResult, out_dir: str | Path, png: bool = True) -> list[Path]:
    """Write `ecg_000.hea/.dat` (+ `.png`) per ECG and `samples.npz`; returns the record paths."""
    from diffusets_jax.ecg_io import write_npz, write_wfdb
    from diffusets_jax.plotting import plot_ecg

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    comments = {
        "report": result.report, "age": f"{result.age:g}", "sex": result.sex,
        "heart_rate_bpm": f"{result.heart_rate:g}", "seed": str(result.seed), "num_steps": str(result.num_steps),
        "generator": "diffusets-jax",
    }
    paths = []
    for i, signal in enumerate(result.signals):
        name = f"ecg_{i:03d}"
        paths.append(write_wfdb(signal, out_dir, name, fs=result.fs, comments={**comments, "index": str(i)}))
        if png:
            title = f"{result.report}  |  {result.sex}, {result.age:g} y, {result.heart_rate:g} bpm  |  seed {result.seed} #{i}"
            fig = plot_ecg(signal, fs=result.fs, title=title, path=out_dir / f"{name}.png")
            del fig
    write_npz(
        out_dir / "samples.npz", result.signals, report=np.array(result.report), age=np.float32(result.age),
        sex=np.array(result.sex), heart_rate=np.float32(result.heart_rate), seed=np.int64(result.seed),
        num_steps=np.int64(result.num_steps), fs=np.float32(result.fs), leads=np.array(result.leads),
    )
    return paths
