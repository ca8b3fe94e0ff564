"""`diffusets-jax ablate`: fine-tune the base model and each SE-Diff addition on one budget, and score them.

Every variant starts from the same trained base workdir (or a pretrained model directory such as
the shipped one, written out once as a workdir with fresh optimizer moments): its `config.json`,
the latest VAE and U-Net checkpoints (parameters, AdamW moments and EMA) and, for the physics
losses, its beat decoder are copied into `OUT/<variant>/` (the base workdir is only read). Each
variant then trains the U-Net `steps` more steps with `train_diffusion` (the resume mechanism
continues from the base step), on the same batches (`config.seed`, step) at the same constant
learning rate; only the objective or the text differs:

| variant | objective | text |
|---|---|---|
| `base` | diffusion loss (official DiffuSETS) | the reports |
| `euler` | + `euler_weight` x Euler loss (ECGSYN prior) | the reports |
| `interlead` | + `interlead_weight` x inter-lead loss | the reports |
| `retrieval` | diffusion loss | retrieval-augmented reports (`--rag-dataset`) |
| `full` | + both losses | retrieval-augmented reports |
| `released` | both losses under `stop_gradient` (`sediff.physics_gradient = False`) | the reports |

Then each fine-tuned U-Net generates one ECG for each of the same held-out conditions and the
shipped evaluator scores them (`diffusets_jax.sediff.ablation_evaluation`, which also writes the
results: `OUT/ablation.json`, `OUT/ablation.md` and the table on stdout). A variant whose
fine-tune and scores are already in `OUT` is not redone.

See docs/se-diff.md, "Ablation".
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from diffusets_jax.config import load_config
from diffusets_jax.sediff.ablation_evaluation import (
    ablation_sampling,
    generate_and_score,
    held_out_conditions,
    reference_row,
    summary_row,
    training_summary,
    write_results,
)

#: Written into each variant directory: the settings its fine-tune was made with.
SPEC_FILE = "variant.json"
#: Written when a variant's fine-tune has reached its last step: wall time of that run.
FINETUNE_FILE = "finetune.json"
#: Written when a variant has been scored: the evaluation settings and the metrics.
METRICS_FILE = "metrics.json"
#: Where a base given as a pretrained model directory is written out as a training workdir.
BASE_FROM_MODEL = "base_workdir"
#: Physics-loss weights of the euler, interlead, full and released variants (`configs/sediff.py` `ablation`).
_DEFAULTS = load_config("sediff").ablation
DEFAULT_EULER_WEIGHT = _DEFAULTS.euler_weight
DEFAULT_INTERLEAD_WEIGHT = _DEFAULTS.interlead_weight


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: which SE-Diff additions are on."""

    name: str
    euler: bool  # Euler loss, weight `euler_weight`
    interlead: bool  # inter-lead loss, weight `interlead_weight`
    retrieval: bool  # trained and conditioned on the retrieval-augmented sets
    physics_gradient: bool  # False: the losses are logged under stop_gradient (the released code)
    description: str

    @property
    def uses_decoder(self) -> bool:
        return self.euler or self.interlead


VARIANTS = {
    v.name: v
    for v in (
        Variant("base", False, False, False, True, "official objective"),
        Variant("euler", True, False, False, True, "+ Euler loss (ECGSYN prior)"),
        Variant("interlead", False, True, False, True, "+ inter-lead loss"),
        Variant("retrieval", False, False, True, True, "+ retrieval-augmented reports"),
        Variant("full", True, True, True, True, "all three"),
        Variant("released", True, True, False, False, "Euler + inter-lead, no gradient (released code)"),
    )
}


@dataclass(frozen=True)
class BaseWorkdir:
    """The trained workdir every variant starts from."""

    path: Path
    config: object  # ml_collections.ConfigDict, with a complete `sediff` group
    vae_step: int
    unet_step: int
    decoder_dir: Path  # the beat decoder the physics variants copy


def parse_variants(names: str | Sequence[str]) -> list[str]:
    """The variant names of `"base,euler"` (or a list), in order, without repeats.

    Raises ValueError naming an unknown one and the known ones.
    """
    names = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)} in --variants; choose from {', '.join(VARIANTS)}")
    if not names:
        raise ValueError(f"--variants is empty; choose from {', '.join(VARIANTS)}")
    return list(dict.fromkeys(names))


def latest_step(directory: Path) -> int | None:
    """The highest finished orbax step in `directory` (its step-numbered subdirectories), or None.

    Listed rather than asked of an orbax CheckpointManager, which would create missing directories.
    """
    if not directory.is_dir():
        return None
    steps = [int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(steps, default=None)


def load_base(path: str | Path, beat_decoder_dir: str | Path | None, needs_decoder: bool) -> BaseWorkdir:
    """Check the base workdir and read its config (completed with `configs/common.py`'s `sediff`
    defaults: workdirs saved before SE-Diff have none).

    Raises FileNotFoundError naming the missing config, checkpoint or (if `needs_decoder`) beat decoder.
    """
    from diffusets_jax.checkpoints import CONFIG_FILE, read_config
    from diffusets_jax.configs.common import get_config as common_config

    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"--base-workdir {path}: no {CONFIG_FILE} (not a training workdir)")
    config = read_config(path)
    sediff = common_config().sediff
    sediff.update(config.get("sediff", {}))
    config.sediff = sediff
    vae_step, unet_step = latest_step(path / "vae"), latest_step(path / "unet")
    if vae_step is None:
        raise FileNotFoundError(
            f"--base-workdir {path}: no VAE checkpoint in {path / 'vae'} (run `diffusets-jax train-vae`)"
        )
    if unet_step is None:
        raise FileNotFoundError(
            f"--base-workdir {path}: no U-Net checkpoint in {path / 'unet'} (run `diffusets-jax train-diffusion`)"
        )
    decoder_dir = Path(beat_decoder_dir or config.sediff.beat_decoder_dir or path / "beat_decoder")
    if needs_decoder and not (decoder_dir / "beat_decoder.npz").is_file():
        raise FileNotFoundError(
            f"no beat decoder in {decoder_dir} (the physics variants need one): run "
            f"`diffusets-jax train-beat-decoder --workdir {path} --dataset DIR ...` or give "
            "--beat-decoder DIR"
        )
    return BaseWorkdir(path, config, vae_step, unet_step, decoder_dir)


def workdir_of(base: str | Path, out: Path) -> Path:
    """`base` if it is a training workdir; if it is a pretrained model directory (`config.json`,
    `vae.npz`, `unet.npz`, such as the shipped `diffusets_jax/pretrained/default`), the training
    workdir `out/BASE_FROM_MODEL` written from it once (`training.diffusion.workdir_from_pretrained`:
    its weights as parameters and EMA, fresh AdamW moments)."""
    from diffusets_jax.training.diffusion import workdir_from_pretrained

    base = Path(base)
    if (base / "unet").is_dir() or not (base / "unet.npz").is_file():
        return base
    workdir = out / BASE_FROM_MODEL
    if latest_step(workdir / "unet") is None:
        partial = out / f".{BASE_FROM_MODEL}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        vae_step, unet_step = workdir_from_pretrained(base, partial)
        partial.rename(workdir)
        print(
            f"{base} is a model directory: wrote the training workdir {workdir} from it (VAE step {vae_step}, "
            f"U-Net step {unet_step}, fresh optimizer moments)",
            flush=True,
        )
    return workdir


def variant_config(
    base: BaseWorkdir, variant: Variant, steps: int, learning_rate: float, euler_weight: float, interlead_weight: float
):
    """The base config set up to fine-tune `steps` more steps with `variant`'s objective.

    `num_steps = base step + steps` so that `train_diffusion` resumes from the base checkpoint;
    `final_lr_fraction = 1` makes the cosine schedule constant at `learning_rate` (raising
    `num_steps` alone would restart the cosine at a point that depends on `steps`).
    """
    config = base.config.copy_and_resolve_references()
    tc = config.unet_train
    tc.num_epochs, tc.num_steps = 0, base.unet_step + steps
    tc.learning_rate, tc.final_lr_fraction = learning_rate, 1.0
    config.sediff.euler_weight = euler_weight if variant.euler else 0.0
    config.sediff.interlead_weight = interlead_weight if variant.interlead else 0.0
    config.sediff.physics_gradient = variant.physics_gradient
    config.sediff.beat_decoder_dir = ""  # the copy in the variant's directory
    return config


def prepare_variant(base: BaseWorkdir, directory: Path, config, spec: dict, needs_decoder: bool) -> None:
    """Copy the base's config, latest VAE and U-Net checkpoints (and beat decoder) into `directory`.

    The copy is made in a sibling `.partial` directory and renamed, so an interrupted copy is
    redone. An existing `directory` must have been made with the same `spec`.

    Raises ValueError naming the directory if it exists with other settings or was not made here.
    """
    from diffusets_jax.checkpoints import write_config

    if directory.exists():
        stored_path = directory / SPEC_FILE
        if not stored_path.is_file():
            raise ValueError(
                f"{directory} exists but was not made by `diffusets-jax ablate` (no {SPEC_FILE}); choose another --out"
            )
        stored = json.loads(stored_path.read_text())
        differing = sorted(k for k in spec.keys() | stored.keys() if spec.get(k) != stored.get(k))
        if differing:
            raise ValueError(
                f"{directory} was fine-tuned with other settings ({', '.join(differing)} differ); "
                "use another --out or delete it"
            )
        return
    partial = directory.with_name(f".{directory.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    for name, step in (("vae", base.vae_step), ("unet", base.unet_step)):
        shutil.copytree(base.path / name / str(step), partial / name / str(step))
    if needs_decoder:
        shutil.copytree(base.decoder_dir, partial / "beat_decoder")
    write_config(partial, config)
    (partial / SPEC_FILE).write_text(json.dumps(spec, indent=1) + "\n")
    partial.rename(directory)


def finetune(directory: Path, config, data_dirs: Sequence[Path]) -> float:
    """Train `directory`'s U-Net to `config.unet_train.num_steps`; returns the wall seconds (data
    encoding, compilation and checkpoints included) and records them in `FINETUNE_FILE`."""
    from diffusets_jax.sediff.physics import physics_auxiliary
    from diffusets_jax.training.diffusion import train_diffusion

    start = time.perf_counter()
    train_diffusion(config, directory, data_dirs, auxiliary=physics_auxiliary(config, directory))
    seconds = time.perf_counter() - start
    record = {"train_s": seconds, "unet_step": latest_step(directory / "unet")}
    (directory / FINETUNE_FILE).write_text(json.dumps(record) + "\n")
    return seconds


def _as_stored(settings: dict) -> dict:
    return json.loads(json.dumps(settings))  # as read back from JSON: lists, not tuples


def run_ablation(
    base_workdir: str | Path,
    data_dirs: Sequence[str | Path],
    out: str | Path,
    *,
    variants: str | Sequence[str] = tuple(VARIANTS),
    rag_dirs: Sequence[str | Path] = (),
    steps: int = 1000,
    learning_rate: float | None = None,
    euler_weight: float = DEFAULT_EULER_WEIGHT,
    interlead_weight: float = DEFAULT_INTERLEAD_WEIGHT,
    beat_decoder_dir: str | Path | None = None,
    num_samples: int = 256,
    folds: Sequence[int] = (9, 10),
    sampler: str = "ddim",
    num_steps: int = 50,
    guidance_scale: float | None = None,
    batch_size: int = 64,
    weights: str = "ema",
    seed: int = 0,
    evaluator_dir: str | Path | None = None,
    command: str | None = None,
) -> dict:
    """Fine-tune and score each of `variants`; write `out/ablation.json` and `out/ablation.md`.

    Args:
        base_workdir: trained workdir (config, `vae/`, `unet/`, `beat_decoder/` for the physics variants).
        data_dirs, rag_dirs: processed sets and their retrieval-augmented twins (same order).
        steps: U-Net steps each variant trains after the base checkpoint.
        learning_rate: constant fine-tune learning rate (default: the base run's final one,
            `learning_rate * final_lr_fraction`).
        euler_weight, interlead_weight: loss weights of the variants that use them.
        beat_decoder_dir: default the base config's `sediff.beat_decoder_dir`, else `base_workdir/beat_decoder`.
        num_samples, folds, seed: held-out conditions (drawn once) and per-ECG sampling seeds.
        sampler, num_steps, guidance_scale (None: the model's), batch_size: generation.
        weights: 'ema' or 'raw' U-Net parameters for generation.
        evaluator_dir: default the shipped evaluator.

    Returns:
        `{'settings', 'variants': [summary_row...], 'real_reference': reference_row}`.

    Raises:
        ValueError: unknown variant, missing `rag_dirs` for retrieval variants, bad numbers, a
            variant directory made with other settings.
        FileNotFoundError: a missing base workdir part, beat decoder, dataset or evaluator.
    """
    from diffusets_jax.evaluation.train_clip import DEFAULT_EVALUATOR_DIR, load_evaluator

    names = parse_variants(variants)
    chosen = [VARIANTS[n] for n in names]
    data_dirs, rag_dirs, out = [Path(d) for d in data_dirs], [Path(d) for d in rag_dirs], Path(out)
    if steps < 1:
        raise ValueError(f"--steps must be at least 1, got {steps}")
    if num_samples < 8:
        raise ValueError(f"--num-samples must be at least 8 (k = 3 neighbours in each real half), got {num_samples}")
    if weights not in ("ema", "raw"):
        raise ValueError(f"--weights must be ema or raw, got {weights!r}")
    needs_rag = [v.name for v in chosen if v.retrieval]
    if needs_rag and not rag_dirs:
        raise ValueError(
            f"variant(s) {', '.join(needs_rag)} need the retrieval-augmented sets: give --rag-dataset "
            "(written by `diffusets-jax augment-dataset`) for each --dataset, or leave them out of "
            "--variants"
        )
    if rag_dirs and len(rag_dirs) != len(data_dirs):
        raise ValueError(f"give one --rag-dataset per --dataset ({len(data_dirs)}), got {len(rag_dirs)}")
    for flag, dirs in (("--dataset", data_dirs), ("--rag-dataset", rag_dirs)):
        for d in dirs:
            if not (d / "dataset.npz").is_file():
                raise FileNotFoundError(f"{flag} {d}: no dataset.npz there")
    base_workdir = workdir_of(base_workdir, out)
    base = load_base(base_workdir, beat_decoder_dir, any(v.uses_decoder for v in chosen))
    if learning_rate is None:
        learning_rate = base.config.unet_train.learning_rate * base.config.unet_train.final_lr_fraction
    options = ablation_sampling(base.config, sampler, num_steps, guidance_scale)  # before any fine-tune

    conditions = held_out_conditions(data_dirs, rag_dirs if needs_rag else (), folds, num_samples, seed)
    evaluator_dir = Path(evaluator_dir or DEFAULT_EVALUATOR_DIR)
    _, evaluator = load_evaluator(evaluator_dir)
    evaluation = _as_stored(
        {
            "num_samples": num_samples,
            "folds": list(folds),
            "seed": seed,
            "weights": weights,
            "evaluator": str(evaluator_dir.resolve()),
            "data": [str(d.resolve()) for d in data_dirs],
            "sampling": {"sampler": sampler, "num_steps": num_steps, "guidance_scale": guidance_scale},
        }
    )
    print(
        f"ablation of {', '.join(names)}: base {base.path} (U-Net step {base.unet_step}), {steps} steps each at "
        f"lr {learning_rate:g}; {num_samples} conditions from {conditions.num_records} records of folds "
        f"{list(folds)}",
        flush=True,
    )

    out.mkdir(parents=True, exist_ok=True)
    rows, reference = [], None
    for i, variant in enumerate(chosen, 1):
        directory = out / variant.name
        train_dirs = rag_dirs if variant.retrieval else data_dirs
        config = variant_config(base, variant, steps, learning_rate, euler_weight, interlead_weight)
        spec = _as_stored(
            {
                "variant": variant.name,
                "base_workdir": str(base.path.resolve()),
                "base_step": base.unet_step,
                "vae_step": base.vae_step,
                "steps": steps,
                "unet_step": base.unet_step + steps,
                "learning_rate": learning_rate,
                "euler_weight": config.sediff.euler_weight,
                "interlead_weight": config.sediff.interlead_weight,
                "physics_gradient": variant.physics_gradient,
                "data": [str(d.resolve()) for d in train_dirs],
            }
        )
        prefix = f"[{i}/{len(chosen)}] {variant.name}"
        prepare_variant(base, directory, config, spec, variant.uses_decoder)
        stored = json.loads((directory / METRICS_FILE).read_text()) if (directory / METRICS_FILE).is_file() else None
        if stored is not None and stored["evaluation"] == evaluation:
            print(f"{prefix}: already fine-tuned and scored in {directory}, skipped", flush=True)
            rows.append(stored["row"])
            reference = reference or stored["real_reference"]
            continue
        if latest_step(directory / "unet") == spec["unet_step"]:
            print(f"{prefix}: already fine-tuned to step {spec['unet_step']} in {directory}", flush=True)
            finished = directory / FINETUNE_FILE
            train_s = json.loads(finished.read_text())["train_s"] if finished.is_file() else None
        else:
            print(
                f"{prefix} ({variant.description}): fine-tuning steps {base.unet_step} -> {spec['unet_step']} "
                f"in {directory}",
                flush=True,
            )
            train_s = finetune(directory, config, train_dirs)
        losses = training_summary(directory, base.unet_step, steps)
        print(f"{prefix}: generating and scoring {num_samples} ECGs", flush=True)
        text = conditions.rag_text if variant.retrieval else conditions.text
        scores = generate_and_score(
            directory, conditions, text, evaluator, sampling=options, weights=weights, batch_size=batch_size, seed=seed
        )
        row = summary_row(variant, spec, train_s, losses, scores)
        reference = reference_row(scores["real_reference"])
        (directory / METRICS_FILE).write_text(
            json.dumps(
                {
                    "evaluation": evaluation,
                    "row": row,
                    "real_reference": reference,
                    "generated": scores["generated"],
                    "sampling": scores["sampling"],
                },
                indent=1,
            )
            + "\n"
        )
        rows.append(row)

    settings = {
        "command": command,
        "base_workdir": str(base.path),
        "base_step": base.unet_step,
        "steps": steps,
        "learning_rate": learning_rate,
        "euler_weight": euler_weight,
        "interlead_weight": interlead_weight,
        "rag_data": [str(d.resolve()) for d in rag_dirs],
        "num_records": conditions.num_records,
        **evaluation,
    }
    summary = {"settings": settings, "variants": rows, "real_reference": reference}
    table = write_results(out, summary)
    print(table, flush=True)
    print(f"wrote {out / 'ablation.json'} and {out / 'ablation.md'}", flush=True)
    return summary
