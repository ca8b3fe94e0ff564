"""SE-Diff commands: `fit-ecgsyn`, `augment-dataset`, `train-beat-decoder`, `ablate`.

Their modules load JAX and the evaluation stack, so their parsers are built only when one of
these commands runs (`register(..., full=False)` lists them by name and help for `--help`).
Their hyperparameters come from a config (`--config`, default `configs/sediff.py`) with
`--set section.key=value` overrides; an explicit option (e.g. `--steps`) wins over both.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

from ._common import UsageError, add_override_arg, parse_folds

HELP = {
    "fit-ecgsyn": "fit the per-class ECGSYN wave parameters (SE-Diff prior)",
    "augment-dataset": "retrieval-augmented reports for a processed set (SE-Diff experience retrieval)",
    "train-beat-decoder": "train SE-Diff's beat decoder (VAE latent -> one R-aligned beat per lead)",
    "ablate": "train and evaluate the base model and each SE-Diff addition on one budget",
}


def register(sub: argparse._SubParsersAction, full: bool = True) -> None:
    if not full:
        for name, text in HELP.items():
            sub.add_parser(name, help=text)
        return
    _fit_ecgsyn(sub)
    _augment_dataset(sub)
    _train_beat_decoder(sub)
    _ablate(sub)


def _description(module) -> str:
    return module.__doc__.split("\n\n")[0]


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        default="sediff",
        help="config with the SE-Diff hyperparameters: a name in configs/ or a .py path (default: sediff)",
    )
    add_override_arg(p, "beat_decoder.steps=4000")


def _settings(args: argparse.Namespace, section: str, **flags) -> dict:
    """`config[section]` as a dict, each of `flags` (name -> the option's value) replacing its entry
    unless None (the option was not given)."""
    from diffusets_jax.config import load_config

    config = load_config(args.config, args.overrides)
    if section not in config:
        raise UsageError(f"--config {args.config} has no {section!r} section (use configs/sediff.py as a template)")
    values = config[section].to_dict()
    values.update({name: value for name, value in flags.items() if value is not None})
    return values


@functools.lru_cache(maxsize=1)
def _sediff_config():
    from diffusets_jax.config import load_config

    return load_config("sediff")


def _default(section: str, name: str):
    """The default of `configs/sediff.py` shown in an option's help (the config is read once)."""
    return _sediff_config()[section][name]


# ------------------------------------------------------------------------------------ fit-ecgsyn
def _fit_ecgsyn(sub) -> None:
    from diffusets_jax.sediff import fit_params

    p = sub.add_parser("fit-ecgsyn", help=HELP["fit-ecgsyn"], description=_description(fit_params))
    p.add_argument(
        "--dataset",
        action="append",
        required=True,
        metavar="DIR",
        help="processed dataset directory (diffusets-jax prepare --out DIR); repeatable",
    )
    p.add_argument("--out", default=str(fit_params.DEFAULT_PARAMS_PATH), help="output JSON (default: the shipped file)")
    p.add_argument("--steps", type=int, default=None, help=f"Adam steps (default {_default('ecgsyn_fit', 'steps')})")
    p.add_argument(
        "--min-records",
        type=int,
        default=None,
        help=f"smallest class kept, records with beats (default {_default('ecgsyn_fit', 'min_records')})",
    )
    p.add_argument("--folds", default=None, help="comma-separated training folds (default 1-8)")
    _add_config_args(p)
    p.set_defaults(func=cmd_fit_ecgsyn)


def cmd_fit_ecgsyn(args: argparse.Namespace) -> None:
    from diffusets_jax.sediff.fit_params import dumps, fit_datasets, format_table

    s = _settings(
        args,
        "ecgsyn_fit",
        steps=args.steps,
        min_records=args.min_records,
        folds=None if args.folds is None else parse_folds(args.folds),
    )
    document = fit_datasets(args.dataset, tuple(s["folds"]), s["min_records"], s["steps"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dumps(document))
    print(format_table(document))
    print(f"wrote {out}")


# ------------------------------------------------------------------------------- augment-dataset
def _augment_dataset(sub) -> None:
    from diffusets_jax.sediff import retrieval as rag
    from diffusets_jax.sediff.similarity import DEFAULT_WEIGHTS, VIEWS
    from diffusets_jax.sediff.summarisers import SUMMARISERS

    p = sub.add_parser("augment-dataset", help=HELP["augment-dataset"], description=_description(rag))
    p.add_argument(
        "--dataset",
        action="append",
        required=True,
        metavar="DIR",
        help="processed set to augment (diffusets-jax prepare --out DIR); repeatable, merged into --out",
    )
    p.add_argument("--out", required=True, help="output processed set")
    p.add_argument(
        "--index",
        action="append",
        default=None,
        metavar="DIR",
        help="processed sets to retrieve from (default: the --dataset sets); repeatable",
    )
    p.add_argument("--k", type=int, default=None, help=f"neighbours per record (default {rag.DEFAULT_K})")
    p.add_argument(
        "--weights",
        default="",
        help="VIEW=W,... over " + ", ".join(VIEWS) + " (updates the "
        "defaults " + ",".join(f"{v}={w:g}" for v, w in DEFAULT_WEIGHTS.items()) + ")",
    )
    p.add_argument("--folds", default=None, help="comma-separated training folds the index holds (default 1-8)")
    p.add_argument(
        "--summariser",
        choices=list(SUMMARISERS),
        default=None,
        help="keyword (offline, default) or llm (OpenAI-style chat; needs OPENAI_API_KEY)",
    )
    p.add_argument(
        "--max-statements",
        type=int,
        default=None,
        help=f"statements per augmented report, the query's are kept "
        f"(default {_default('retrieval', 'max_statements')})",
    )
    p.add_argument(
        "--min-support",
        type=float,
        default=None,
        help=f"keyword: fraction of neighbours stating a finding (default {_default('retrieval', 'min_support')})",
    )
    p.add_argument(
        "--min-lift",
        type=float,
        default=None,
        help="keyword: neighbour fraction needed relative to the index-wide prevalence, capped at all "
        f"(default {_default('retrieval', 'min_lift')})",
    )
    p.add_argument(
        "--llm-model",
        default=None,
        help=f"chat model of the llm summariser (default {_default('retrieval', 'llm_model')})",
    )
    p.add_argument("--llm-base-url", default=None, help="OpenAI-compatible server (default: api.openai.com)")
    p.add_argument("--embedder", default=None, help="text embedder of the new reports (default: the set's)")
    p.add_argument("--exclude-same-patient", action="store_true", help="never retrieve a record of the query's patient")
    p.add_argument(
        "--hosp",
        default=None,
        metavar="DIR",
        help="MIMIC-IV hosp directory: link the code sets of MIMIC-IV-ECG sets (writes hosp_codes.jsonl into them)",
    )
    p.add_argument(
        "--save-index", default=None, metavar="FILE", help="also write the experience index (.npz) for generation"
    )
    p.add_argument("--examples", type=int, default=5, help="changed reports printed")
    _add_config_args(p)
    p.set_defaults(func=cmd_augment_dataset)


def cmd_augment_dataset(args: argparse.Namespace) -> None:
    import numpy as np

    from diffusets_jax.data_pipelines.mimic_hosp import attach_hosp_codes
    from diffusets_jax.sediff.augment import augment_dataset
    from diffusets_jax.sediff.retrieval import ExperienceIndex
    from diffusets_jax.sediff.similarity import parse_weights
    from diffusets_jax.sediff.summarisers import get_summariser
    from diffusets_jax.text import get_embedder

    s = _settings(
        args,
        "retrieval",
        k=args.k,
        summariser=args.summariser,
        max_statements=args.max_statements,
        min_support=args.min_support,
        min_lift=args.min_lift,
        llm_model=args.llm_model,
        folds=None if args.folds is None else parse_folds(args.folds),
    )
    folds = tuple(s["folds"])
    weights = {**s["weights"], **parse_weights(args.weights)}
    if args.hosp:
        for d in dict.fromkeys(args.dataset + (args.index or [])):
            if json.loads((Path(d) / "info.json").read_text())["source"] == "mimic":
                print(f"linked hospital codes: {attach_hosp_codes(d, args.hosp)}")
    summariser = get_summariser(
        s["summariser"], s["max_statements"], s["min_support"], s["min_lift"], s["llm_model"], args.llm_base_url
    )
    embedder = get_embedder(args.embedder) if args.embedder else None
    start = time.perf_counter()
    out = augment_dataset(
        args.dataset,
        args.out,
        s["k"],
        weights,
        summariser,
        embedder,
        folds=folds,
        index_dirs=args.index,
        exclude_same_patient=args.exclude_same_patient,
    )
    info = json.loads((out / "info.json").read_text())["augmentation"]
    print(
        f"wrote {out}: {info['reports_changed']} of {len(np.load(out / 'dataset.npz')['reports'])} reports changed, "
        f"statements per report {info['statements_before']:.2f} -> {info['statements_after']:.2f}; "
        f"index {info['index_records']} records, views {', '.join(info['index_views'])}; "
        f"{time.perf_counter() - start:.1f} s ({info['seconds']})"
    )
    shown = 0
    for line in (out / "records.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["report"] != row["original_report"] and shown < args.examples:
            print(f"  {row['record_id']}: {row['original_report']}\n    -> {row['report']}")
            shown += 1
    if args.save_index:
        index_dirs = args.index or args.dataset
        print(f"wrote {ExperienceIndex.from_processed(index_dirs, folds).save(args.save_index)}")


# ---------------------------------------------------------------------------- train-beat-decoder
def _train_beat_decoder(sub) -> None:
    from diffusets_jax.sediff import beat_decoder_training as bdt
    from diffusets_jax.sediff.beat_decoder import DIRECTORY_NAME, OFFICIAL_BASE

    p = sub.add_parser("train-beat-decoder", help=HELP["train-beat-decoder"], description=_description(bdt))
    p.add_argument("--workdir", required=True, help="training workdir with a trained VAE (vae/ checkpoints)")
    p.add_argument(
        "--dataset",
        action="append",
        required=True,
        metavar="DIR",
        help="processed dataset directory (diffusets-jax prepare --out DIR); repeatable",
    )
    p.add_argument("--steps", type=int, default=None, help=f"AdamW steps (default {bdt.DEFAULT_STEPS})")
    p.add_argument("--out", default=None, help=f"output directory (default: WORKDIR/{DIRECTORY_NAME})")
    p.add_argument("--batch-size", type=int, default=None, help=f"default {bdt.DEFAULT_BATCH_SIZE}")
    p.add_argument("--learning-rate", type=float, default=None, help=f"default {bdt.DEFAULT_LEARNING_RATE:g}")
    p.add_argument(
        "--base", type=int, default=None, help=f"channel width (default {bdt.DEFAULT_BASE}; official {OFFICIAL_BASE})"
    )
    p.add_argument(
        "--spectral-weight",
        type=float,
        default=None,
        help=f"alpha_spec, weight of the spectral multi-beat loss (default {bdt.DEFAULT_SPECTRAL_WEIGHT:g})",
    )
    p.add_argument(
        "--shifts",
        type=int,
        default=None,
        help=f"circularly shifted copies of each training ECG, 0: none (default {bdt.DEFAULT_SHIFTS})",
    )
    p.add_argument("--seed", type=int, default=None, help=f"default {_default('beat_decoder', 'seed')}")
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="N",
        help="stop this run after N steps (checkpointed in WORKDIR/beat_decoder_checkpoints); run again to resume",
    )
    _add_config_args(p)
    p.set_defaults(func=cmd_train_beat_decoder)


def cmd_train_beat_decoder(args: argparse.Namespace) -> None:
    from diffusets_jax.sediff.beat_decoder import DIRECTORY_NAME
    from diffusets_jax.sediff.beat_decoder_training import train_beat_decoder

    s = _settings(
        args,
        "beat_decoder",
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        base=args.base,
        spectral_weight=args.spectral_weight,
        shifts=args.shifts,
        seed=args.seed,
    )
    record = train_beat_decoder(
        args.workdir,
        args.dataset,
        steps=s["steps"],
        out=args.out,
        batch_size=s["batch_size"],
        learning_rate=s["learning_rate"],
        base=s["base"],
        num_groups=min(32, s["base"]),
        spectral_weight=s["spectral_weight"],
        shifts=s["shifts"],
        seed=s["seed"],
        stop_after=args.stop_after,
        **{k: s[k] for k in ("log_every", "checkpoint_every", "keep_checkpoints") if k in s},
    )
    if record is None:
        print(f"stopped after {args.stop_after} steps (checkpointed); run the same command again to resume")
        return
    if record.get("already_trained"):  # the library said so; nothing written
        return
    t = record["training"]
    print(
        f"trained on {t['train_records']} records ({t['val_records']} validation) in {t['train_s']:.0f} s "
        f"(+ {t['prepare_s']:.0f} s beats and latents)"
    )
    for name in ("train_metrics", "val_metrics"):
        m = record[name]
        if m:
            print(
                f"{name[:-8]:>5}: beat MSE {m['beat_mse']:.5f} mV^2 (mean-beat predictor {m['mean_beat_mse']:.5f}, "
                f"R^2 {m['r2']:.3f}), spectral {m['spectral']:.4f}"
            )
    print(f"wrote {Path(args.out) if args.out else Path(args.workdir) / DIRECTORY_NAME}")


# ---------------------------------------------------------------------------------------- ablate
def _ablate(sub) -> None:
    from diffusets_jax.diffusion import SAMPLERS
    from diffusets_jax.sediff import ablation

    p = sub.add_parser(
        "ablate",
        help=HELP["ablate"],
        description="Fine-tune the base model and each SE-Diff addition from the same base checkpoint, for the "
        "same number of steps on the same batches, then generate ECGs for the same held-out "
        "conditions and score them with the shipped evaluator (HR MAE, FID / rFID, precision, recall, "
        "CLIP score, lead residuals). Writes OUT/<variant>/ (the fine-tuned workdir, model/, "
        "samples.npz, metrics.json), OUT/ablation.json and OUT/ablation.md, and prints the table. "
        "Variants already done in OUT are skipped; an interrupted fine-tune resumes. "
        "Variants: " + "; ".join(f"{v.name}: {v.description}" for v in ablation.VARIANTS.values()) + ".",
    )
    p.add_argument(
        "--base-workdir",
        required=True,
        type=Path,
        metavar="DIR",
        help="trained workdir to start from (config.json, vae/, unet/, beat_decoder/), or a "
        "pretrained model directory (written out once as OUT/base_workdir, with fresh optimizer "
        "moments); only read",
    )
    p.add_argument(
        "--dataset",
        dest="data",
        action="append",
        required=True,
        type=Path,
        metavar="DIR",
        help="processed set (diffusets-jax prepare); repeatable. Training uses the base config's "
        "train folds, the conditions come from --folds",
    )
    p.add_argument(
        "--rag-dataset",
        dest="rag_data",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="retrieval-augmented twin of each --dataset, same order (diffusets-jax augment-dataset); "
        "needed by the retrieval and full variants",
    )
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="DIR",
        help="output directory (run again with the same one to resume)",
    )
    p.add_argument(
        "--variants",
        default=",".join(ablation.VARIANTS),
        metavar="NAMES",
        help=f"comma-separated, from {', '.join(ablation.VARIANTS)} (default: all)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"U-Net steps each variant trains after the base checkpoint (default {_default('ablation', 'steps')})",
    )
    p.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="constant fine-tune learning rate (default: the base run's final one, "
        "unet_train.learning_rate x final_lr_fraction)",
    )
    p.add_argument(
        "--euler-weight",
        type=float,
        default=None,
        help="sediff.euler_weight of the euler, full and released variants "
        f"(default {ablation.DEFAULT_EULER_WEIGHT:g})",
    )
    p.add_argument(
        "--interlead-weight",
        type=float,
        default=None,
        help="sediff.interlead_weight of the interlead, full and released variants "
        f"(default {ablation.DEFAULT_INTERLEAD_WEIGHT:g})",
    )
    p.add_argument(
        "--beat-decoder",
        type=Path,
        default=None,
        metavar="DIR",
        help="beat decoder of the physics variants (default: the base config's "
        "sediff.beat_decoder_dir, else beat_decoder/ in --base-workdir)",
    )
    p.add_argument(
        "--num-samples",
        type=int,
        default=None,
        help=f"ECGs generated and scored per variant (default {_default('ablation', 'num_samples')})",
    )
    p.add_argument("--folds", default="9,10", help="held-out folds the conditions come from (default 9,10)")
    p.add_argument(
        "--sampler",
        choices=list(SAMPLERS),
        default=None,
        help=f"sampler for the evaluation (default {_default('ablation', 'sampler')})",
    )
    p.add_argument(
        "--num-steps", type=int, default=None, help=f"sampler steps (default {_default('ablation', 'num_steps')})"
    )
    p.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="classifier-free guidance scale (default: the model's config)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"ECGs per sampler call (default {_default('ablation', 'batch_size')})",
    )
    p.add_argument(
        "--weights",
        choices=["ema", "raw"],
        default=None,
        help="U-Net parameters to generate with: the EMA the base config keeps, or the raw ones "
        f"(default {_default('ablation', 'weights')})",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help=f"draws the conditions and seeds the ECGs (default {_default('ablation', 'seed')}); the "
        "training batches follow the "
        "base config's seed",
    )
    p.add_argument(
        "--evaluator", type=Path, default=None, metavar="DIR", help="evaluator directory (default: the shipped one)"
    )
    _add_config_args(p)
    p.set_defaults(func=cmd_ablate)


def cmd_ablate(args: argparse.Namespace) -> None:
    from diffusets_jax.sediff.ablation import run_ablation

    s = _settings(
        args,
        "ablation",
        steps=args.steps,
        euler_weight=args.euler_weight,
        interlead_weight=args.interlead_weight,
        num_samples=args.num_samples,
        sampler=args.sampler,
        num_steps=args.num_steps,
        batch_size=args.batch_size,
        weights=args.weights,
        seed=args.seed,
    )
    run_ablation(
        args.base_workdir,
        args.data,
        args.out,
        variants=args.variants,
        rag_dirs=args.rag_data,
        steps=s["steps"],
        learning_rate=args.learning_rate,
        euler_weight=s["euler_weight"],
        interlead_weight=s["interlead_weight"],
        beat_decoder_dir=args.beat_decoder,
        num_samples=s["num_samples"],
        folds=parse_folds(args.folds),
        sampler=s["sampler"],
        num_steps=s["num_steps"],
        guidance_scale=args.guidance_scale,
        batch_size=s["batch_size"],
        weights=s["weights"],
        seed=s["seed"],
        evaluator_dir=args.evaluator,
        command="diffusets-jax " + " ".join(args.argv),
    )
