"""Text-and-patient-to-ECG generation: `Pipeline.from_pretrained(path)(report, age=..., sex=..., heart_rate=...)`.

Official `utils/inference.py:generation_from_net`: embed the ordered prompt of the report, build
the condition vector [text, sex, age, HR], draw x_T ~ N(0, I) of shape `(B, 128, 4)`, run the
ancestral DDPM sampler, decode with the VAE to `(B, 1024, 12)` mV at 102.4 Hz. Options: one
`Sampling` (`diffusets_jax.sampling`, re-exported here), made by `Pipeline.sampling(...)`: DDIM or
DPM-Solver++ with fewer steps, classifier-free guidance, limb leads derived from I and II.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from diffusets_jax import diffusion, program_cache
from diffusets_jax.constants import FS, LATENT_LENGTH, LEADS, SEX_CODES
from diffusets_jax.errors import InputError
from diffusets_jax.leads import derive_limb_leads
from diffusets_jax.models import make_condition, null_condition
from diffusets_jax.pretrained import DEFAULT_MODEL_DIR, config_errors, load_pretrained
from diffusets_jax.sampling import Sampling, is_real, short_repr, trained_for_guidance  # noqa: F401 - public here too

AGE_RANGE = (0.0, 120.0)  # years
HEART_RATE_RANGE = (20.0, 300.0)  # bpm
MAX_SAMPLES = 10_000
MAX_SEED = 2**32 - 1  # PRNG seeds are uint32: a larger or negative one would wrap to another seed's ECGs
#: Longest report accepted, in characters (the text model reads only its first few hundred words).
MAX_REPORT_CHARS = 5_000


def check_seed(seed, name: str = "seed") -> int:
    """`seed` (an int, or its text, e.g. a CSV cell) as an int in [0, MAX_SEED]; InputError (a
    ValueError) naming `name` otherwise (negative, > 2**32 - 1, a float, a bool, not a number)."""
    try:
        value = int(seed.strip()) if isinstance(seed, str) else seed
    except ValueError:
        value = None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= MAX_SEED:
        raise InputError(f"{name} must be an integer in [0, {MAX_SEED}], got {short_repr(seed)}")
    return int(value)


def check_batch_size(batch_size, name: str = "batch_size") -> int | None:
    """`batch_size` as an int >= 1, or None (the model's `config.sampling.batch_size`); InputError naming `name`."""
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"{name} must be an integer of at least 1, got {short_repr(batch_size)}")
    return int(batch_size)


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
    sampler: str = "ddpm"
    guidance_scale: float = 1.0
    exact_limb_leads: bool = False
    fs: float = FS
    leads: tuple[str, ...] = LEADS
    extra: dict = field(default_factory=dict)


def validate_conditions(report, age, sex, heart_rate, num_samples: int = 1):
    """Normalise and check the conditions of a generation: `(statements, sex_code)`, the report's
    non-empty statements (split at '|' and line breaks, stripped) and 'M' or 'F'.

    `report`: text or a list of statements, at most `MAX_REPORT_CHARS` characters, any language
    (kept as given; no control characters but tab); `age` years in `AGE_RANGE`, `heart_rate` bpm
    in `HEART_RATE_RANGE` (finite numbers, not bools); `sex` 'M'/'F'/male/female; `num_samples`
    an int in [1, MAX_SAMPLES]. The sampling options are checked by `Sampling`. Raises InputError
    (a ValueError) naming the argument at fault.
    """
    if isinstance(report, (list, tuple)) and all(isinstance(s, str) for s in report):
        text = "|".join(report)
    elif isinstance(report, str):
        text = report
    else:
        raise InputError(f"report must be text or a list of statements (text), got {short_repr(report)}")
    if len(text) > MAX_REPORT_CHARS:
        raise InputError(f"report is too long: {len(text)} characters, at most {MAX_REPORT_CHARS}")
    if bad := next((c for c in text if "\ud800" <= c <= "\udfff"), None):  # undecodable bytes (surrogateescape)
        byte = f" (byte 0x{ord(bad) - 0xDC00:02x})" if "\udc80" <= bad <= "\udcff" else ""
        raise InputError(f"report is not UTF-8 text{byte}: {short_repr(text)}")
    # A line break inside a report separates statements, like '|' (WFDB header comments are single lines).
    parts = (
        "|".join(text.splitlines()).split("|")
        if isinstance(report, str)
        else [p for s in report for p in s.splitlines()]
    )
    statements = [p.strip() for p in parts if p.strip()]
    if bad := next((c for s in statements for c in s if c != "\t" and (c < " " or "\x7f" <= c < "\xa0")), None):
        raise InputError(f"report holds the control character U+{ord(bad):04X} (binary data?): {short_repr(text)}")
    if not statements:
        raise InputError(
            f"report has no statements: {short_repr(report)}"
            if isinstance(report, str)
            else "report is empty: give at least one statement, e.g. 'Sinus rhythm'"
        )
    sex_code = str(sex).strip().upper()[:1] if str(sex).strip().lower() in ("m", "f", "male", "female") else None
    if sex_code not in SEX_CODES:
        raise InputError(f"sex must be 'M' or 'F' (or male/female), got {short_repr(sex)}")
    for name, value, (low, high) in (("age", age, AGE_RANGE), ("heart_rate", heart_rate, HEART_RATE_RANGE)):
        if not is_real(value) or not low <= value <= high:
            raise InputError(f"{name} must be a number in [{low:g}, {high:g}], got {short_repr(value)}")
    if (
        isinstance(num_samples, bool)
        or not isinstance(num_samples, (int, np.integer))
        or not 1 <= num_samples <= MAX_SAMPLES
    ):
        raise InputError(f"num_samples must be an integer in [1, {MAX_SAMPLES}], got {short_repr(num_samples)}")
    return statements, sex_code


def _sampling_value(sampling) -> Sampling:
    """`sampling` if it is a `Sampling`; TypeError otherwise (e.g. a dict of options)."""
    if not isinstance(sampling, Sampling):
        raise TypeError(
            f"sampling must be a Sampling (made by Pipeline.sampling(...) or Sampling.from_config), "
            f"got {type(sampling).__name__}"
        )
    return sampling


class Pipeline:
    """A trained VAE + U-Net + text embedder, ready to generate ECGs.

    Example:
        >>> pipe = Pipeline.from_pretrained()            # the shipped default model
        >>> out = pipe("Sinus tachycardia|Left ventricular hypertrophy", age=63, sex="M", heart_rate=110,
        ...            num_samples=4, seed=0, sampler="dpm-solver++", num_steps=50)
        >>> out.signals.shape                            # (4, 1024, 12) mV at 102.4 Hz
    """

    def __init__(self, config, vae, unet, embedder=None):
        from diffusets_jax.text import cached_embedder

        self.config, self.vae, self.unet = config, vae, unet
        # Default: the config's text model, its embeddings remembered across processes (issue 19).
        self.embedder = embedder or cached_embedder(config.text.embedder)
        if self.embedder.dim != config.text.embed_dim:
            raise ValueError(
                f"text embedder {self.embedder.name} gives {self.embedder.dim}-d vectors, "
                f"the model expects {config.text.embed_dim}"
            )
        self.schedule = diffusion.schedule_from_config(config.diffusion)
        self._graphs = (nnx.split(vae), nnx.split(unet))
        self._programs: dict[tuple, callable] = {}  # (options, shapes, key impl) -> `_program`

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, embedder=None) -> "Pipeline":
        """Load a model directory (see `diffusets_jax.pretrained`); None means the shipped default model.

        Raises FileNotFoundError naming a missing file, ConfigError naming `config.json` and the key
        if it lacks a section or has a field of the wrong type (checked first, `read_model_config`),
        ValueError for unusable weights.
        """
        path = Path(DEFAULT_MODEL_DIR if path is None else path)
        config, vae, unet = load_pretrained(path)
        with config_errors(path / "config.json"):
            return cls(config, vae, unet, embedder)

    @property
    def trained_for_guidance(self) -> bool:
        """Whether the U-Net saw the null condition in training (condition dropout > 0)."""
        return trained_for_guidance(self.config)

    def sampling(
        self,
        sampler: str | None = None,
        num_steps: int | None = None,
        eta: float | None = None,
        guidance_scale: float | None = None,
        exact_limb_leads: bool | None = None,
    ) -> Sampling:
        """This model's sampling options, checked once (`Sampling.from_config(self.config, ...)`):
        None takes the model's `config.sampling` value. `sampler` one of `diffusion.SAMPLERS`,
        `num_steps` an int in [1, num_train_timesteps], `eta` in [0, 1], `guidance_scale` in [0, 50].

        Raises InputError (a ValueError) naming a bad one; warns if guidance_scale != 1 and the
        model was trained without condition dropout.
        """
        return Sampling.from_config(
            self.config,
            sampler=sampler,
            num_steps=num_steps,
            eta=eta,
            guidance_scale=guidance_scale,
            exact_limb_leads=exact_limb_leads,
            stacklevel=3,
        )

    def _sampler(self, options: Sampling):
        """`(vae_state, unet_state, condition (B, D+3), keys (B,)) -> (B, 1024, 12)`, to be traced
        (by `_program`, which compiles and keeps it per options and batch shape)."""
        (vae_def, _), (unet_def, _) = self._graphs
        schedule, channels = self.schedule, self.config.vae.latent_channels
        patient_mean = tuple(self.config.unet.get("patient_mean", (0.0, 0.0, 0.0)))

        def generate(vae_state, unet_state, condition, keys):
            unet = nnx.merge(unet_def, unet_state)
            noise_keys, step_keys = jax.vmap(jax.random.split, out_axes=1)(keys)
            x_T = jax.vmap(lambda k: jax.random.normal(k, (LATENT_LENGTH, channels)))(noise_keys)
            model_fn = diffusion.guided(
                unet, condition, null_condition(condition, patient_mean), options.guidance_scale
            )
            latents = diffusion.sample(
                model_fn, schedule, x_T, step_keys, options.num_steps, options.sampler, options.eta
            )
            signals = nnx.merge(vae_def, vae_state).decoder(latents)
            return derive_limb_leads(signals) if options.exact_limb_leads else signals

        return generate

    def _program(self, options: Sampling, condition_shape: tuple, key_shape: tuple, impl: str):
        """`_sampler(options)` for one batch shape, on flat arguments `(vae_leaves, unet_leaves,
        condition (B, D+3), key_data (B, *key_shape))` of PRNG keys of implementation `impl`; kept on
        disk by `program_cache` when the compilation cache is on, so that a new process loads it
        instead of tracing it (~1.5 s of a warm start on a 2-core CPU)."""
        slot = (options, condition_shape, key_shape, impl)
        if slot not in self._programs:
            sampler = self._sampler(options)
            (_, vae_state), (_, unet_state) = self._graphs
            (vae_leaves, vae_tree), (unet_leaves, unet_tree) = jax.tree.flatten(vae_state), jax.tree.flatten(unet_state)

            def flat(vae_leaves, unet_leaves, condition, key_data):
                vae, unet = jax.tree.unflatten(vae_tree, vae_leaves), jax.tree.unflatten(unet_tree, unet_leaves)
                return sampler(vae, unet, condition, jax.random.wrap_key_data(key_data, impl=impl))

            # What the trace depends on beyond the package's source and the arguments' shapes.
            options_key = (options, impl, self.config.to_json(sort_keys=True), vae_tree, unet_tree)
            batch = condition_shape[0]
            args = (
                vae_leaves,
                unet_leaves,
                jax.ShapeDtypeStruct(condition_shape, np.float32),
                jax.ShapeDtypeStruct((batch, *key_shape), np.uint32),
            )
            self._programs[slot] = program_cache.cached_program("sampler", flat, args, options_key)
        return self._programs[slot]

    def embed(self, statements: Sequence[str]) -> tuple[np.ndarray, str]:
        """The official ordered prompt of the statements and its `(D,)` embedding."""
        from diffusets_jax.text import build_prompt, truncation_warning

        prompt = build_prompt(list(statements))
        embedding = self.embedder.embed([prompt])[0]  # first: a cache miss records the token count too
        if message := truncation_warning(statements, self.embedder):
            warnings.warn(message, stacklevel=3)
        return embedding, prompt

    def __call__(
        self,
        report: str | Sequence[str],
        *,
        age: float,
        sex: str,
        heart_rate: float,
        num_samples: int = 1,
        seed: int = 0,
        sampling: Sampling | None = None,
        num_steps: int | None = None,
        sampler: str | None = None,
        guidance_scale: float | None = None,
        eta: float | None = None,
        exact_limb_leads: bool | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> GenerationResult:
        """Generate `num_samples` ECGs `(B, 1024, 12)` in mV for one report and patient.

        Args:
          report: statements separated by '|' (or a list), most important first.
          age: years in [0, 120]; sex: 'M' or 'F'; heart_rate: bpm in [20, 300].
          seed: in [0, 2**32 - 1]; ECG j comes from the key `fold_in(key(seed), j)`: the same seed
            and options give the same ECGs whatever the batch size.
          sampling: the sampling options, a `Sampling` made by `self.sampling(...)` (not checked again);
            or give them one by one, as the keywords below (the two ways do not mix).
          num_steps: model calls in [1, 1000]; sampler: 'ddpm' (official), 'ddim', 'dpm-solver++';
          guidance_scale: classifier-free guidance (1: none); eta: DDIM noise (0: deterministic);
          exact_limb_leads: derive III, aVR, aVL, aVF from I and II. None: `config.sampling`.
          batch_size: ECGs per compiled call, >= 1 (default `config.sampling.batch_size`).
        Raises:
          InputError (a ValueError) naming the argument at fault; TypeError for `sampling` that is
          not a `Sampling`, or given together with one of the separate options.
        """
        separate = dict(
            sampler=sampler,
            num_steps=num_steps,
            eta=eta,
            guidance_scale=guidance_scale,
            exact_limb_leads=exact_limb_leads,
        )
        if sampling is None:
            options = self.sampling(**separate)
        elif given := [name for name, value in separate.items() if value is not None]:
            raise TypeError(f"give the sampling options as sampling= or one by one, not both ({', '.join(given)})")
        else:
            options = _sampling_value(sampling)
        batch_size = check_batch_size(batch_size)
        statements, sex_code = validate_conditions(report, age, sex, heart_rate, num_samples)
        seed = check_seed(seed)
        embedding, prompt = self.embed(statements)
        signals = self.generate_for_conditions(
            np.repeat(embedding[None], num_samples, 0),
            np.full(num_samples, SEX_CODES[sex_code], np.float32),
            np.full(num_samples, age, np.float32),
            np.full(num_samples, heart_rate, np.float32),
            seed=seed,
            sampling=options,
            batch_size=batch_size,
            progress=progress,
        )
        return GenerationResult(
            signals=signals,
            report="|".join(statements),
            age=float(age),
            sex=sex_code,
            heart_rate=float(heart_rate),
            seed=seed,
            num_steps=options.num_steps,
            prompt=prompt,
            sampler=options.sampler,
            guidance_scale=options.guidance_scale,
            exact_limb_leads=options.exact_limb_leads,
        )

    def generate_for_conditions(
        self,
        text_embeddings: np.ndarray,
        sex: np.ndarray,
        age: np.ndarray,
        heart_rate: np.ndarray,
        *,
        seed: int = 0,
        keys: jax.Array | None = None,
        sampling: Sampling | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """One ECG per condition row: `(N, 1024, 12)` mV for text embeddings `(N, D)` (already
        embedded, e.g. a processed set's), sex `(N,)` (1.0 male, 0.0 female), age (years) and heart
        rate (bpm) `(N,)`.

        Row j comes from the key `fold_in(key(seed), j)`, or from `keys[j]` (`(N,)` keys, see
        `row_keys`), so no row depends on its batch-mates. Batches of `compiled_batch_size(N,
        batch_size)` rows, the last one padded: one compiled sampler serves every batch, and runs
        of other N reuse it (in this process, and in later ones through the compilation cache).
        `sampling`: a `Sampling` (`self.sampling(...)`, not checked again); None: the model's defaults.

        Raises ValueError for rows of different lengths, a text width the model does not take, or a
        bad seed or batch size (InputError); TypeError for `sampling` that is not a `Sampling`.
        """
        batch_size = check_batch_size(batch_size)
        text_embeddings = np.asarray(text_embeddings, np.float32)
        n = len(text_embeddings)
        lengths = {len(sex), len(age), len(heart_rate)} | ({len(keys)} if keys is not None else set())
        if lengths != {n}:
            raise ValueError(
                f"condition arrays have different lengths: text {n}, sex {len(sex)}, "
                f"age {len(age)}, heart_rate {len(heart_rate)}" + (f", keys {len(keys)}" if keys is not None else "")
            )
        if text_embeddings.ndim != 2 or text_embeddings.shape[1] != self.config.text.embed_dim:
            raise ValueError(
                f"text embeddings have shape {text_embeddings.shape}; the model takes "
                f"(N, {self.config.text.embed_dim}) ({self.config.text.embedder})"
            )
        options = self.sampling() if sampling is None else _sampling_value(sampling)
        batch_size = compiled_batch_size(n, batch_size or self.config.sampling.batch_size)
        condition = np.asarray(make_condition(text_embeddings, sex, age, heart_rate))
        keys = row_keys(np.full(n, check_seed(seed)), np.arange(n)) if keys is None else keys
        (_, vae_state), (_, unet_state) = self._graphs
        vae_leaves, unet_leaves = jax.tree.leaves(vae_state), jax.tree.leaves(unet_state)
        if not jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
            keys = jax.random.wrap_key_data(keys)  # raw uint32 keys of the default implementation
        key_data, impl = np.asarray(jax.random.key_data(keys)), str(jax.random.key_impl(keys))
        program = self._program(options, (batch_size, *condition.shape[1:]), key_data.shape[1:], impl)
        chunks = []
        with tqdm(
            total=n, desc=f"generating ({options.sampler}, {options.num_steps} steps)", unit="ECG", disable=not progress
        ) as bar:
            for first in range(0, n, batch_size):
                rows = slice(first, first + batch_size)
                size = len(condition[rows])
                pad = lambda a: np.concatenate([a, np.repeat(a[-1:], batch_size - size, 0)])  # noqa: E731
                signals = program(vae_leaves, unet_leaves, pad(condition[rows]), pad(key_data[rows]))
                chunks.append(np.asarray(signals)[:size])
                bar.update(size)
        return np.concatenate(chunks).astype(np.float32)


def compiled_batch_size(n: int, batch_size: int) -> int:
    """The batch shape to compile for `n` rows with at most `batch_size` per call: `batch_size`
    when `n` fills it, else the next power of two >= `n` (capped at `batch_size`).

    A compiled sampler is specific to its batch shape, so sizing batches by `n` alone would compile
    (about 10 s per sampler on a 2-core CPU) for every new `n` and for every last partial batch;
    these buckets bound the shapes to log2(batch_size) + 1 while one ECG still runs at batch 1.
    """
    batch_size = max(int(batch_size), 1)
    return batch_size if n >= batch_size else min(batch_size, 1 << max(int(n) - 1, 0).bit_length())


def row_keys(seeds: np.ndarray, indices: np.ndarray) -> jax.Array:
    """`(N,)` PRNG keys `fold_in(key(seeds[j]), indices[j])`, the per-ECG keys of the samplers."""
    return jax.vmap(lambda s, i: jax.random.fold_in(jax.random.key(s), i))(
        jax.numpy.asarray(seeds, jax.numpy.uint32), jax.numpy.asarray(indices, jax.numpy.uint32)
    )


#: The files a `generate` run writes into its output directory (`write_outputs`, `generate_from_csv`).
RUN_FILES = ("ecg_*.hea", "ecg_*.dat", "ecg_*.png", "samples.npz", "index.csv")


def prepare_output_dir(out_dir: str | Path, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Make `out_dir` ready for a run, before anything is generated: created if missing, checked
    writable (a probe file), and holding no earlier run's files (`RUN_FILES`) unless `overwrite`
    (they are deleted first) or `resume` and the earlier run was a `--from-csv` one (its
    `index.csv`), which then continues. Other files are left alone.

    Raises ValueError naming the directory (and `--overwrite` for an earlier run).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output directory {out_dir} is a file")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".diffusets-jax-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"cannot write to the output directory {out_dir}: {error.strerror or error}") from None
    earlier = sorted({path for pattern in RUN_FILES for path in out_dir.glob(pattern)})
    if earlier and overwrite:
        for path in earlier:
            path.unlink()
    elif earlier and not (resume and (out_dir / "index.csv").is_file()):
        raise ValueError(
            f"output directory {out_dir} holds an earlier run's files ({earlier[0].name}, ...): "
            "use --overwrite to replace them, or another --out"
        )
    return out_dir


def write_outputs(
    result: GenerationResult, out_dir: str | Path, png: bool = True, overwrite: bool = False
) -> list[Path]:
    """Write `ecg_000.hea/.dat` (+ `.png`) per ECG and `samples.npz`; returns the record paths.

    An earlier run's files in `out_dir` are refused, or with `overwrite` deleted (`prepare_output_dir`).
    """
    from diffusets_jax.ecg_io import write_npz, write_wfdb
    from diffusets_jax.plotting import plot_ecg

    out_dir = prepare_output_dir(out_dir, overwrite=overwrite)
    comments = {
        "report": result.report,
        "age": f"{result.age:g}",
        "sex": result.sex,
        "heart_rate_bpm": f"{result.heart_rate:g}",
        "seed": str(result.seed),
        "num_steps": str(result.num_steps),
        "sampler": result.sampler,
        "guidance_scale": f"{result.guidance_scale:g}",
        "exact_limb_leads": str(result.exact_limb_leads),
        "generator": "diffusets-jax",
    }
    paths = []
    for i, signal in enumerate(result.signals):
        name = f"ecg_{i:03d}"
        paths.append(write_wfdb(signal, out_dir, name, fs=result.fs, comments={**comments, "index": str(i)}))
        if png:
            title = (
                f"{result.report}  |  {result.sex}, {result.age:g} y, {result.heart_rate:g} bpm  |  "
                f"seed {result.seed} #{i}"
            )
            fig = plot_ecg(signal, fs=result.fs, title=title, path=out_dir / f"{name}.png")
            del fig
    write_npz(
        out_dir / "samples.npz",
        result.signals,
        report=np.array(result.report),
        age=np.float32(result.age),
        sex=np.array(result.sex),
        heart_rate=np.float32(result.heart_rate),
        seed=np.int64(result.seed),
        num_steps=np.int64(result.num_steps),
        sampler=np.array(result.sampler),
        guidance_scale=np.float32(result.guidance_scale),
        fs=np.float32(result.fs),
        leads=np.array(result.leads),
    )
    from diffusets_jax.checkpoints import write_manifest

    write_manifest(out_dir, [p.name for p in out_dir.glob("ecg_*")] + ["samples.npz"])  # size, SHA-256 of each
    return paths
