"""The `diffusets-jax` command line: a thin layer that parses arguments and calls library functions.

    diffusets-jax prepare          dataset directory -> processed training set (in memory)
    diffusets-jax build-tfds       dataset directory -> sharded TFDS dataset (streamed, for large sets)
    diffusets-jax train-vae        stage 1, the VAE
    diffusets-jax train-diffusion  stage 2, the latent diffusion U-Net
    diffusets-jax export           training workdir -> pretrained model directory
    diffusets-jax generate         report text + age, sex, HR -> WFDB records, .npz and PNGs
    diffusets-jax train-evaluator  the ECG-text CLIP evaluator used by `evaluate`
    diffusets-jax evaluate         generate for held-out conditions and score: FID, precision/recall,
                                   HR MAE, CLIP score, paired errors, lead consistency; report.md
    diffusets-jax convert-torch    official PyTorch weights -> pretrained model directory
    diffusets-jax export-torch     pretrained model directory -> official PyTorch state dicts
    diffusets-jax serve            local web page and JSON API: type a report, see and download ECGs
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class UsageError(Exception):
    """A bad argument: printed as one line, exit status 2."""


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="small", help="config name in configs/ (small, paper) or a .py path (default: small)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set unet_train.num_steps=100 (repeatable)")
    p.add_argument("--workdir", required=True, type=Path, help="directory for checkpoints and logs (resumed if present)")
    p.add_argument("--data", action="append", required=True, type=Path, metavar="DIR",
                   help="processed set written by `prepare` (repeatable), or one TFDS dataset written by "
                        "`build-tfds` (its version directory, e.g. tfds/ptbxl/minilm-500hz/1.0.0)")
    p.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="stop this run after N steps (checkpointed); run again to resume")
    p.add_argument("--distributed", action="store_true",
                   help="multi-host run (TPU slice, several GPU nodes): call jax.distributed.initialize() first; "
                        "run the same command on every host")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffusets-jax",
        description="DiffuSETS in JAX: 12-lead ECGs from clinical report text, age, sex and heart rate.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prepare", help="turn a dataset directory into a processed training set",
                       description="Read PTB-XL, LUDB, MIMIC-IV-ECG or PhysioNet/CinC Challenge 2020/2021 records "
                                   "(CinC: one example per 10 s window), resample to 1024 samples (102.4 Hz), "
                                   "detect heart rates, embed the report prompts, and write DIR/dataset.npz. "
                                   "Bad records are skipped and listed with their reason.")
    p.add_argument("--dataset", required=True, choices=["ptbxl", "ludb", "mimic", "cinc"], help="which reader")
    p.add_argument("--root", required=True, type=Path, help="dataset directory (e.g. .../ptb-xl)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--embedder", default="minilm", help="text embedder: minilm (default, offline) or openai-ada-002")
    p.add_argument("--sampling-rate", type=int, choices=[100, 500], default=500, help="PTB-XL records to read (default 500)")
    p.add_argument("--limit", type=int, default=None, help="only the first N records (for quick trials)")

    p = sub.add_parser("build-tfds", help="build a sharded TFDS dataset (TFRecords) from a dataset directory",
                       description="Like `prepare`, but writes a tensorflow-datasets dataset of sharded TFRecords "
                                   "(train / validation / test by patient-wise folds) that training streams with "
                                   "tf.data: for MIMIC-IV-ECG-sized sets. Offline; records are loaded by --workers "
                                   "processes. Prints the splits, the skipped records, time and peak memory.")
    p.add_argument("--dataset", required=True, choices=["ptbxl", "ludb", "mimic", "cinc"], help="which reader")
    p.add_argument("--root", required=True, type=Path, help="dataset directory (the manual download)")
    p.add_argument("--data-dir", required=True, type=Path, help="TFDS data directory to write to")
    p.add_argument("--embedder", default="minilm", help="text embedder: minilm (default, offline) or openai-ada-002")
    p.add_argument("--workers", type=int, default=1, help="processes loading records (default 1)")
    p.add_argument("--sampling-rate", type=int, choices=[100, 500], default=None, help="PTB-XL files to read (default 500)")
    p.add_argument("--num-shards", type=int, default=None,
                   help="shard files per split (default: by size); use at least the number of training hosts")

    p = sub.add_parser("train-vae", help="train the VAE (stage 1)")
    _add_config_args(p)
    p = sub.add_parser("train-diffusion", help="train the latent diffusion U-Net (stage 2; needs a trained VAE in --workdir)")
    _add_config_args(p)
    p.add_argument("--vae-from", default=None, type=Path, metavar="MODEL_DIR",
                   help="a workdir without a VAE first takes the VAE of this model directory "
                        "(e.g. diffusets_jax/pretrained/default), instead of running train-vae")

    p = sub.add_parser("export", help="write a pretrained model directory from a training workdir")
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--model-card", type=Path, default=None, help="Markdown file copied as MODEL_CARD.md")

    p = sub.add_parser("generate", help="generate 12-lead ECGs from report text and patient information",
                       description="Writes, per ECG, a WFDB record (.hea/.dat, 12 leads, mV, 102.4 Hz) and a PNG "
                                   "in the clinical layout, plus samples.npz with all signals. With --from-csv, one "
                                   "ECG per CSV row (columns report, age, sex, hr, optional seed), an index.csv, "
                                   "bad rows listed and skipped, and a rerun resumes where an interrupted one stopped.")
    p.add_argument("--report", help="report statements separated by '|', most important first")
    p.add_argument("--age", type=float, help="age in years (0-120)")
    p.add_argument("--sex", help="M or F")
    p.add_argument("--hr", type=float, help="heart rate in bpm (20-300)")
    p.add_argument("--from-csv", type=Path, default=None, metavar="CSV",
                   help="generate one ECG per row of this CSV instead (columns report, age, sex, hr; optional seed)")
    p.add_argument("--num-samples", type=int, default=None, help="number of ECGs (default 4; not with --from-csv)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed, 0 to 2**32 - 1; the same seed and options give the same ECGs (default 0)")
    _add_sampling_args(p)
    p.add_argument("--experience-index", type=Path, default=None, metavar="NPZ",
                   help="augment the report with the statements of the most similar training records "
                        "(an index saved by `augment-dataset --save-index`; SE-Diff experience retrieval)")
    p.add_argument("--retrieval-k", type=int, default=None,
                   help="neighbours retrieved with --experience-index (default 5)")
    p.add_argument("--batch-size", type=int, default=None, help="ECGs per sampler call (default: the model's config)")
    p.add_argument("--checkpoint", type=Path, default=None, help="pretrained model directory (default: the shipped model)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--no-png", action="store_true", help="skip the PNG pictures")
    p.add_argument("--overwrite", action="store_true",
                   help="delete an earlier run's files in --out (ecg_*, samples.npz, index.csv) instead of refusing "
                        "them; with --from-csv, start over instead of resuming")

    p = sub.add_parser("train-evaluator", help="train the ECG-text CLIP evaluator (Net1D + projections)",
                       description="Contrastive training of the evaluator `evaluate` uses (official clip/clip_train.py), "
                                   "then, with --out, its export with a model card (retrieval accuracy on --test-folds).")
    _add_config_args(p)
    p.set_defaults(config="evaluator")
    p.add_argument("--out", type=Path, default=None, help="evaluator directory to export to when training ends")

    p = sub.add_parser("evaluate", help="generate ECGs for held-out conditions and score them",
                       description="Draws --num-samples conditions from the held-out folds of processed sets, "
                                   "generates one ECG each (or reads --samples), and writes metrics.json, report.md "
                                   "and figures: FID / rFID, precision and recall (k=3), heart-rate MAE, CLIP score "
                                   "and rCLIP (overall and per keyword condition), paired MAE / NRMSE, PR / QRS / QT "
                                   "errors and lead-identity residuals, next to the same for real ECGs.")
    p.add_argument("--checkpoint", type=Path, default=None, help="pretrained model directory (default: the shipped model)")
    p.add_argument("--dataset", dest="data", action="append", required=True, type=Path, metavar="DIR",
                   help="processed set written by `prepare` (repeatable); conditions come from its --folds")
    p.add_argument("--folds", default="9,10", help="held-out folds to draw conditions from (default 9,10)")
    p.add_argument("--num-samples", type=int, default=100, help="ECGs to generate and score (default 100)")
    _add_sampling_args(p)
    p.add_argument("--batch-size", type=int, default=None, help="ECGs per sampler call (default: the model's config)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--evaluator", type=Path, default=None, help="evaluator directory (default: the shipped one)")
    p.add_argument("--samples", type=Path, default=None, help="score these ECGs (samples.npz of a previous run) instead of generating")
    p.add_argument("--no-intervals", action="store_true", help="skip the PR / QRS / QT delineation (slow)")
    p.add_argument("--out", required=True, type=Path, help="output directory")

    # Listed here; `main` hands their arguments (and --help) to the modules' own parsers.
    for name, (_, text) in DELEGATED.items():
        sub.add_parser(name, help=text)

    p = sub.add_parser("convert-torch", help="official PyTorch weights -> pretrained model directory",
                       description="Convert the official DiffuSETS checkpoints (unet_all.pth, vae_model.pth = "
                                   "{'encoder': ..., 'decoder': ...}) into a model directory that `generate` "
                                   "and Pipeline.from_pretrained load. .pth files are read with "
                                   "torch.load(weights_only=True); .npz files (one array per official key, VAE "
                                   "keys prefixed encoder./decoder.) need NumPy only. A missing, unknown or "
                                   "misshaped key is an error that names it.")
    p.add_argument("--unet", required=True, type=Path, help="official U-Net state dict (unet_all.pth or .npz)")
    p.add_argument("--vae", required=True, type=Path, help="official VAE checkpoint (vae_model.pth or .npz)")
    p.add_argument("--out", required=True, type=Path, help="model directory to write")
    p.add_argument("--config", default="paper",
                   help="config of the official model: paper (default: official sizes, 1536-d ada-002 text) "
                        "or a config name / .py path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable)")

    p = sub.add_parser("export-torch", help="pretrained model directory -> official PyTorch state dicts",
                       description="Write unet_all.pth and vae_model.pth with the official key names, shapes "
                                   "and order, loadable by the official code with load_state_dict(strict=True).")
    p.add_argument("--checkpoint", type=Path, default=None, help="pretrained model directory (default: the shipped model)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--format", choices=["pth", "npz"], default="pth",
                   help="pth (torch.save, default) or npz (NumPy only)")

    p = sub.add_parser("serve", help="local web page and JSON API: type a report, see and download ECGs",
                       description="Start a local web server: a page (report, age, sex, heart rate, sampling "
                                   "options) showing each generated ECG in the clinical layout with its measured "
                                   "heart rate and WFDB / PNG / .npz downloads, a side-by-side comparison tab, "
                                   "and a JSON API (/api/generate, /api/health, /api/model; docs at /docs). "
                                   "The model compiles in the background at start-up; one request runs at a "
                                   "time; files live in a temporary directory removed at exit. Ctrl-C stops it.")
    p.add_argument("--checkpoint", type=Path, default=None, help="pretrained model directory (default: the shipped model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-samples", type=int, default=16, help="most ECGs one request may ask for (default 16)")
    return parser


def _add_sampling_args(p) -> None:
    p.add_argument("--sampler", choices=["ddpm", "ddim", "dpm-solver++"], default=None,
                   help="ddpm: the official ancestral sampler; ddim; dpm-solver++ (2M). Default: the model's config")
    p.add_argument("--num-steps", type=int, default=None,
                   help="sampler steps, 1-1000, one model call each (two with guidance; default: the model's config; officially 1000 DDPM steps)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance scale; 1 = none (default: the model's config)")
    p.add_argument("--eta", type=float, default=None, help="DDIM noise, 0 (deterministic) to 1 (default 0)")
    p.add_argument("--exact-limb-leads", action="store_true", default=None,
                   help="derive III, aVR, aVL, aVF from I and II (Einthoven, Goldberger)")


def _sampling(pipeline, args):
    return pipeline.sampling(args.sampler, args.num_steps, args.eta, args.guidance_scale, args.exact_limb_leads)


def cmd_prepare(args) -> None:
    from data_pipelines.prepare import format_skipped, load_records
    from data_pipelines.processed import save_processed
    from diffusets_jax.text import get_embedder

    if not args.root.is_dir():
        raise UsageError(f"--root {args.root} is not a directory")
    embedder = get_embedder(args.embedder)
    options = {"sampling_rate": args.sampling_rate} if args.dataset == "ptbxl" else {}
    record_ids = None
    if args.limit is not None:
        from data_pipelines import get_reader

        record_ids = get_reader(args.dataset).list_records(args.root)[: args.limit]
    records, skipped = load_records(args.dataset, args.root, record_ids, **options)
    print(f"loaded {len(records)} records, skipped {len(skipped)}")
    if skipped:
        print(format_skipped(skipped, max_lines=len(skipped)))
    out = save_processed(records, skipped, args.out, embedder, source=args.dataset, root=str(args.root))
    print(f"wrote {out / 'dataset.npz'} ({len(records)} ECGs, text embedder {embedder.name})")


def cmd_build_tfds(args) -> None:
    from data_pipelines.tfds.__main__ import main as build_main

    if not args.root.is_dir():
        raise UsageError(f"--root {args.root} is not a directory")
    argv = [args.dataset, str(args.root), str(args.data_dir), "--embedder", args.embedder,
            "--num-workers", str(args.workers)]
    for flag, value in (("--sampling-rate", args.sampling_rate), ("--num-shards", args.num_shards)):
        if value is not None:
            argv += [flag, str(value)]
    build_main(argv)


def _start_devices(args) -> None:
    import jax

    if args.distributed:
        jax.distributed.initialize()  # coordinator, process count and id from the cluster environment
    if jax.process_index() == 0:
        print(f"{jax.process_count()} process(es), {jax.device_count()} {jax.devices()[0].platform} device(s)")


def cmd_train_vae(args) -> None:
    from diffusets_jax.config import load_config
    from diffusets_jax.training.vae import train_vae

    _start_devices(args)
    train_vae(load_config(args.config, args.overrides), args.workdir, args.data, args.stop_after)


def cmd_train_diffusion(args) -> None:
    from diffusets_jax.config import load_config
    from diffusets_jax.training.diffusion import train_diffusion

    _start_devices(args)
    config = load_config(args.config, args.overrides)
    if args.vae_from is not None and not (args.workdir / "vae").exists():
        from diffusets_jax.training.diffusion import workdir_from_pretrained

        vae_step, _ = workdir_from_pretrained(args.vae_from, args.workdir, models=("vae",))
        print(f"{args.workdir}: VAE of {args.vae_from} (step {vae_step})")
    train_diffusion(config, args.workdir, args.data, args.stop_after)


def cmd_export(args) -> None:
    from diffusets_jax.training.diffusion import export_workdir

    card = args.model_card.read_text() if args.model_card else None
    out = export_workdir(args.workdir, args.out, model_card=card)
    print(f"wrote pretrained model to {out}")


def _print_warnings(command: str) -> None:
    """Show warnings on one line each, `diffusets-jax COMMAND: warning: ...`, like errors (no source line)."""
    import warnings

    warnings.showwarning = lambda message, *_, **__: print(f"diffusets-jax {command}: warning: {message}",
                                                           file=sys.stderr)


def cmd_generate(args) -> None:
    from diffusets_jax.pipeline import Pipeline, check_seed, prepare_output_dir, validate_conditions, write_outputs

    _print_warnings("generate")
    check_seed(args.seed, "--seed")
    single = {"--report": args.report, "--age": args.age, "--sex": args.sex, "--hr": args.hr}
    per_run = {"--num-samples": args.num_samples, "--experience-index": args.experience_index,
               "--retrieval-k": args.retrieval_k}
    if args.from_csv is not None:
        given = [flag for flag, value in {**single, **per_run}.items() if value is not None]
        if given:
            raise UsageError(f"--from-csv takes the conditions from the CSV, one ECG per row, without retrieval; "
                             f"drop {', '.join(given)}")
    elif missing := [flag for flag, value in single.items() if value is None]:
        raise UsageError(f"give {', '.join(missing)} (or --from-csv)")
    if args.retrieval_k is not None and args.experience_index is None:
        raise UsageError("--retrieval-k needs --experience-index")
    if args.experience_index is not None and not args.experience_index.is_file():
        raise UsageError(f"--experience-index {args.experience_index} not found")
    num_samples = 4 if args.num_samples is None else args.num_samples
    if args.from_csv is None:
        validate_conditions(args.report, args.age, args.sex, args.hr, num_samples, 1, 1)
    pipeline = Pipeline.from_pretrained(args.checkpoint)
    options = _sampling(pipeline, args)
    prepare_output_dir(args.out, overwrite=args.overwrite, resume=args.from_csv is not None)  # before the compute
    if args.from_csv is not None:
        from diffusets_jax.batch_generation import generate_from_csv

        done = generate_from_csv(pipeline, args.from_csv, args.out, options=options, seed=args.seed,
                                 batch_size=args.batch_size, png=not args.no_png)
        redone = (f" ({len(done.redone)} regenerated: an earlier run's record was incomplete or corrupt)"
                  if done.redone else "")
        print(f"wrote {len(done.generated)} ECGs to {args.out}{redone}, {len(done.already_done)} were already done; "
              f"index: {done.index_path}")
        if done.bad:
            print(f"skipped {len(done.bad)} bad row(s) of {args.from_csv} (row = data line, from 0):")
            for row in done.bad:
                print(f"  row {row.row}: {row.error}")
        if not done.generated and not done.already_done:
            raise UsageError(f"no row of {args.from_csv} could be generated ({len(done.bad)} bad, listed above)")
        return
    report = args.report
    if args.experience_index is not None:
        from diffusets_jax.sediff.retrieval import ExperienceIndex, augment_report

        report = augment_report(ExperienceIndex.load(args.experience_index), report, args.age, args.sex, args.hr,
                                5 if args.retrieval_k is None else args.retrieval_k, embedder=pipeline.embedder)
        print(f"retrieval-augmented report: {report}")
    result = pipeline(report, age=args.age, sex=args.sex, heart_rate=args.hr, num_samples=num_samples,
                      seed=args.seed, batch_size=args.batch_size, progress=True, **options._asdict())
    paths = write_outputs(result, args.out, png=not args.no_png)
    print(f"wrote {len(paths)} ECGs to {args.out} ({', '.join(p.name for p in paths[:4])}{', ...' if len(paths) > 4 else ''})")


def cmd_train_evaluator(args) -> None:
    from diffusets_jax.config import load_config
    from diffusets_jax.evaluation.train_clip import export_evaluator, train_clip

    _start_devices(args)
    train_clip(load_config(args.config, args.overrides), args.workdir, args.data, args.stop_after)
    if args.out is not None:
        print(f"wrote evaluator to {export_evaluator(args.workdir, args.out, args.data)}")


def cmd_evaluate(args) -> None:
    from diffusets_jax.evaluation.evaluate import evaluate

    try:
        folds = tuple(int(f) for f in args.folds.split(","))
    except ValueError:
        raise UsageError(f"--folds must be comma-separated integers, got {args.folds!r}") from None
    if args.num_samples < 4:
        raise UsageError(f"--num-samples must be at least 4 (k = 3 nearest neighbours), got {args.num_samples}")
    evaluate(args.checkpoint, args.data, args.out, num_samples=args.num_samples, folds=folds,
             batch_size=args.batch_size, seed=args.seed, evaluator_dir=args.evaluator,
             samples=args.samples, intervals=not args.no_intervals,
             sampling=dict(sampler=args.sampler, num_steps=args.num_steps, eta=args.eta,
                           guidance_scale=args.guidance_scale, exact_limb_leads=args.exact_limb_leads))


def cmd_convert_torch(args) -> None:
    from diffusets_jax.config import load_config
    from diffusets_jax.torch_weights import convert_official

    for flag, path in (("--unet", args.unet), ("--vae", args.vae)):
        if not path.is_file():
            raise UsageError(f"{flag} {path} is not a file")
    out = convert_official(args.unet, args.vae, args.out, load_config(args.config, args.overrides))
    print(f"wrote pretrained model to {out}")


def cmd_export_torch(args) -> None:
    from diffusets_jax.pretrained import DEFAULT_MODEL_DIR
    from diffusets_jax.torch_weights import export_official

    unet_path, vae_path = export_official(args.checkpoint or DEFAULT_MODEL_DIR, args.out, format=args.format)
    print(f"wrote {unet_path} and {vae_path}")


def cmd_serve(args) -> None:
    from diffusets_jax.serve import serve

    serve(args.checkpoint, host=args.host, port=args.port, max_samples=args.max_samples)


COMMANDS = {
    "prepare": cmd_prepare,
    "build-tfds": cmd_build_tfds,
    "train-vae": cmd_train_vae,
    "train-diffusion": cmd_train_diffusion,
    "export": cmd_export,
    "generate": cmd_generate,
    "train-evaluator": cmd_train_evaluator,
    "evaluate": cmd_evaluate,
    "convert-torch": cmd_convert_torch,
    "export-torch": cmd_export_torch,
    "serve": cmd_serve,
}


#: Commands whose module parses its own arguments: name -> (module with `main(argv)`, help).
DELEGATED = {
    "fit-ecgsyn": ("diffusets_jax.sediff.fit_params", "fit the per-class ECGSYN wave parameters (SE-Diff prior)"),
    "augment-dataset": ("diffusets_jax.sediff.retrieval",
                        "retrieval-augmented reports for a processed set (SE-Diff experience retrieval)"),
    "train-beat-decoder": ("diffusets_jax.sediff.beat_decoder",
                           "train SE-Diff's beat decoder (VAE latent -> one R-aligned beat per lead)"),
    "ablate": ("diffusets_jax.sediff.ablation",
               "train and evaluate the base model and each SE-Diff addition on one budget"),
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and argv[0] in DELEGATED:
        import importlib

        return importlib.import_module(DELEGATED[argv[0]][0]).main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except (UsageError, ValueError, FileNotFoundError, ImportError) as error:
        print(f"diffusets-jax {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
