"""Train, save and load the CLIP evaluator (official `clip/clip_train.py`).

AdamW(lr 1e-3, weight decay 1e-3) at a constant rate on the symmetric contrastive loss of each
batch (the official code computes it within chunks of 256). Unlike the official evaluator, which
is trained on VAE reconstructions of MIMIC-IV-ECG, this one trains on the real processed signals
`(B, 1024, 12)` mV and their stored text embeddings. Checkpoints in `workdir/evaluator/`; a
restart resumes from the last one.

An evaluator directory (`save_evaluator`, `load_evaluator`) holds plain files, no pickle:

    DIR/config.json    the ConfigDict it was built from (`evaluator` and `text` groups)
    DIR/evaluator.npz  parameters and BatchNorm running statistics, one array per flattened path
    DIR/MODEL_CARD.md  optional: data, steps, time, loss, retrieval accuracy
    DIR/MANIFEST.json  size and SHA-256 of the files above (the format: `diffusets_jax.checkpoints`)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx, struct
from tqdm.auto import tqdm

from diffusets_jax.data_pipelines.input_pipeline import ArraySource
from diffusets_jax.checkpoints import (
    CONFIG_FILE,
    EVALUATOR_DIR,
    load_model_dir,
    load_params_into,
    metrics_file,
    module_arrays,
    read_config,
    save_model_dir,
)
from diffusets_jax.errors import MissingFileError
from diffusets_jax.models import abstract_model
from diffusets_jax.evaluation.clip import ClipEvaluator, build_evaluator, contrastive_loss, retrieval_accuracy
from diffusets_jax.training import common
from diffusets_jax.training.setup import TrainingRun

#: The evaluator shipped inside the package (the `evaluator` config trained on the shared data).
DEFAULT_EVALUATOR_DIR = Path(__file__).resolve().parent.parent / "pretrained" / "evaluator"


@struct.dataclass
class ClipTrainState(common.TrainState):
    """`common.TrainState` plus the BatchNorm running statistics (an nnx.State), not optimised."""

    batch_stats: Any = None


def split_evaluator(model: ClipEvaluator):
    """`(graphdef, params, batch_stats)` of the evaluator (nnx.Param and nnx.BatchStat states)."""
    return nnx.split(model, nnx.Param, nnx.BatchStat)


def make_train_step(graphdef, tx, root_key, mesh):
    """Jitted `(state, batch) -> (state, metrics)`: one AdamW step on the contrastive loss of the
    batch's `signal` `(B, 1024, 12)` and `text_embedding` `(B, D)`, dropout keyed by the step."""

    def loss_fn(params, batch_stats, batch, key):
        model = nnx.merge(graphdef, params, batch_stats, copy=True)  # fresh Variables: BatchNorm updates them here
        logits = model(batch["signal"], batch["text_embedding"], train=True, rngs=nnx.Rngs(dropout=key))
        accuracy = jnp.mean(jnp.argmax(logits, axis=1) == jnp.arange(logits.shape[0]))
        return contrastive_loss(logits), (nnx.state(model, nnx.BatchStat), accuracy)

    def train_step(state: ClipTrainState, batch):
        key = jax.random.fold_in(root_key, state.step)
        (loss, (batch_stats, accuracy)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, batch, key
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "batch_top1": accuracy,
            "grad_norm": common.global_norm(grads),
            "logit_scale": jnp.exp(params["logit_scale"][...]),
        }
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, batch_stats=batch_stats)
        return new_state, metrics

    return common.compile_train_step(train_step, mesh)


def evaluator_features(
    model: ClipEvaluator, signals: np.ndarray, text_embeddings: np.ndarray, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Evaluation-mode `(ecg_features (N, embed_dim), text_features (N, embed_dim))`, unnormalised,
    of signals `(N, 1024, 12)` mV and text embeddings `(N, D)`, computed `batch_size` rows at a time."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def encode(state, signals, texts):
        model = nnx.merge(graphdef, state)
        return model.ecg_features(signals), model.text_features(texts)

    chunks = [
        encode(
            state,
            jnp.asarray(signals[i : i + batch_size], jnp.float32),
            jnp.asarray(text_embeddings[i : i + batch_size], jnp.float32),
        )
        for i in range(0, len(signals), batch_size)
    ]
    return tuple(np.concatenate([np.asarray(c[j]) for c in chunks]) for j in (0, 1))


def make_evaluate(graphdef, source: ArraySource, train_config):
    """`evaluate(state)` for `run_training`: 1 - the mean top-1 retrieval accuracy (ECG->text and
    text->ECG) over the first `eval_batches * batch_size` validation pairs, so that the "best"
    checkpoint (lowest value, logged as `val_loss`) retrieves best."""
    n = min(source.num_examples, train_config.eval_batches * train_config.batch_size)
    signals, texts = source.arrays["signal"][:n], source.arrays["text_embedding"][:n]

    def evaluate(state: ClipTrainState) -> float:
        model = nnx.merge(graphdef, state.params, state.batch_stats)
        accuracy = retrieval_accuracy(*evaluator_features(model, signals, texts, train_config.batch_size), ks=(1,))
        top1 = (accuracy["ecg_to_text_top1"] + accuracy["text_to_ecg_top1"]) / 2
        tqdm.write(
            f"validation retrieval over {n} pairs: ECG->text top-1 {accuracy['ecg_to_text_top1']:.3f}, "
            f"text->ECG top-1 {accuracy['text_to_ecg_top1']:.3f} (chance {accuracy['chance_top1']:.3f})"
        )
        return 1.0 - top1

    return evaluate


def _initial_state(config):
    model = build_evaluator(config)
    graphdef, params, batch_stats = split_evaluator(model)
    tc = config.evaluator
    tx = common.adamw(tc.learning_rate, tc)
    state = ClipTrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), batch_stats=batch_stats
    )
    return graphdef, tx, state


def train_clip(config, workdir: str | Path, data_dirs: Sequence[str | Path], stop_after: int | None = None) -> Path:
    """Train (or resume) the evaluator of `config.evaluator` on the processed sets `data_dirs`
    (folds `config.data.train_folds`; retrieval checked on `config.data.val_folds`).

    Returns the checkpoint directory `workdir/evaluator`. `stop_after` ends this run after that
    many steps (checkpointed); the next call resumes where it stopped.

    Raises ValueError for a missing/too-small dataset, text embeddings of another width than
    `config.text.embed_dim`, or a batch that does not split over the devices;
    `common.NonFiniteLossError` on a NaN/inf loss or gradient.
    """
    run = TrainingRun.begin(config, workdir, EVALUATOR_DIR, "evaluator")
    tc = run.train_config
    train_source = ArraySource.from_processed(data_dirs, folds=config.data.train_folds)
    width = train_source.arrays["text_embedding"].shape[1]
    if width != config.text.embed_dim:
        raise ValueError(
            f"the text embeddings of {list(map(str, data_dirs))} are {width}-d but "
            f"text.embed_dim={config.text.embed_dim}"
        )
    try:
        val_source = ArraySource.from_processed(data_dirs, folds=config.data.val_folds)
    except ValueError:  # no record in the validation folds
        val_source = None
    _, mesh = run.plan(train_source.num_examples)

    graphdef, tx, state = _initial_state(config)
    state = run.resume(state)
    run.train(
        state,
        source=train_source,
        train_step=make_train_step(graphdef, tx, jax.random.key(config.seed), mesh),
        learning_rate=optax.constant_schedule(tc.learning_rate),
        evaluate=make_evaluate(graphdef, val_source, tc) if val_source else None,
        stop_after=stop_after,
    )
    return run.directory


def load_trained_evaluator(workdir: str | Path) -> tuple[ml_collections.ConfigDict, ClipEvaluator, int]:
    """`(config, evaluator, step)` of the latest checkpoint in `workdir/evaluator`.

    Raises MissingFileError (a FileNotFoundError) if `workdir` has no config.json or no
    checkpoint, CheckpointError naming the step and file if no step restores (a broken newest step
    is warned about and skipped).
    """
    workdir = Path(workdir)
    if not (workdir / CONFIG_FILE).is_file():
        raise MissingFileError(f"{workdir / CONFIG_FILE} not found: not an evaluator training workdir")
    config = read_config(workdir)
    graphdef, _, state = _initial_state(config)
    restored = common.restore_latest(workdir / EVALUATOR_DIR, state, "train-evaluator")
    return config, nnx.merge(graphdef, restored.params, restored.batch_stats), int(restored.step)


#: The state an evaluator directory keeps: parameters and BatchNorm running statistics.
EVALUATOR_STATE = nnx.Any(nnx.Param, nnx.BatchStat)


def save_evaluator(
    directory: str | Path, config: ml_collections.ConfigDict, model: ClipEvaluator, model_card: str | None = None
) -> Path:
    """Write `config.json`, `evaluator.npz` (parameters and BatchNorm statistics), `MODEL_CARD.md`
    and `MANIFEST.json` (`checkpoints.save_model_dir`, each file atomically); returns `directory`."""
    return save_model_dir(
        directory, config, {EVALUATOR_DIR: module_arrays(model, nnx.Param, nnx.BatchStat)}, model_card=model_card
    )


def load_evaluator(directory: str | Path = DEFAULT_EVALUATOR_DIR) -> tuple[ml_collections.ConfigDict, ClipEvaluator]:
    """`(config, evaluator)` of an evaluator directory (default: the shipped one), in evaluation use.

    Raises MissingFileError naming a missing file, IntegrityError naming a file that differs from
    the manifest, CheckpointError (a ValueError) naming an unreadable archive, a NaN/inf array or a
    missing, unexpected or misshaped array.
    """
    read = load_model_dir(directory, (EVALUATOR_DIR,), kind="diffusets-jax evaluator directory")
    model = abstract_model(lambda: build_evaluator(read.config))
    flat = {key: jnp.asarray(value) for key, value in read.arrays[EVALUATOR_DIR].items()}
    load_params_into(model, flat, source=str(Path(directory) / f"{EVALUATOR_DIR}.npz"), what=EVALUATOR_STATE)
    return read.config, model


def held_out_retrieval(
    model: ClipEvaluator, data_dirs: Sequence[str | Path], folds: Sequence[int], ks=(1, 5)
) -> dict[str, float]:
    """`clip.retrieval_accuracy` (exact pair and same-report hits, chance levels) over every record
    of `folds` in the processed sets `data_dirs`, plus `num_pairs`, `mean_matched_cosine` and
    `mean_mismatched_cosine` (ECG i with text i, and with every text j != i)."""
    from diffusets_jax.data_pipelines.processed import load_processed

    data = load_processed(data_dirs, folds)
    ecg, text = evaluator_features(model, data.signals, data.text_embeddings)
    result = retrieval_accuracy(ecg, text, data.reports, ks=ks)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    cosine = unit(ecg) @ unit(text).T  # (N, N)
    n = len(cosine)
    result.update(
        num_pairs=n,
        mean_matched_cosine=float(np.trace(cosine) / n),
        mean_mismatched_cosine=float((cosine.sum() - np.trace(cosine)) / (n * n - n)),
    )
    return result


def export_evaluator(
    workdir: str | Path, out: str | Path, data_dirs: Sequence[str | Path], test_folds: Sequence[int] = (9, 10)
) -> Path:
    """Save the latest evaluator of `workdir` to `out` with a MODEL_CARD.md giving its data, steps,
    training time and last logged loss (from `workdir/evaluator_metrics.jsonl`), and retrieval
    accuracy on `test_folds` of `data_dirs` (`held_out_retrieval`). Returns `out`."""
    config, model, step = load_trained_evaluator(workdir)
    log = [json.loads(line) for line in (Path(workdir) / metrics_file(EVALUATOR_DIR)).read_text().splitlines()]
    # step_time_s is the mean time per step since the previous record: summed over the intervals,
    # the training time (first compilation included, evaluations included in their interval).
    previous_steps = [0] + [record["step"] for record in log[:-1]]
    seconds = sum(record["step_time_s"] * (record["step"] - before) for record, before in zip(log, previous_steps))
    test = held_out_retrieval(model, data_dirs, test_folds)
    train = held_out_retrieval(model, data_dirs, config.data.train_folds)
    parameters = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    save_evaluator(
        out, config, model, _model_card(config, data_dirs, step, seconds, log[-1], parameters, test, train, test_folds)
    )
    return Path(out)


def _model_card(config, data_dirs, step, seconds, last, parameters, test, train, test_folds) -> str:
    e = config.evaluator

    def table(r):
        rows = ["| | ECG -> text | text -> ECG | chance |", "|---|---|---|---|"]
        for k in (1, 5):
            rows.append(
                f"| top-{k}, exact pair | {r[f'ecg_to_text_top{k}']:.3f} | {r[f'text_to_ecg_top{k}']:.3f} "
                f"| {r[f'chance_top{k}']:.3f} |"
            )
            rows.append(
                f"| top-{k}, same report | {r[f'ecg_to_text_same_text_top{k}']:.3f} "
                f"| {r[f'text_to_ecg_same_text_top{k}']:.3f} | {r[f'chance_same_text_top{k}']:.3f} |"
            )
        rows.append(
            f"\nMean cosine of matching ECG/text features {r['mean_matched_cosine']:.3f}, "
            f"of mismatched pairs {r['mean_mismatched_cosine']:.3f}."
        )
        return "\n".join(rows)

    return f"""# DiffuSETS-JAX evaluator (`{config.name}`)

The ECG-text CLIP evaluator of the official code (`clip/clip_model.py`, `clip/clip_train.py`):
Net1D filters {tuple(e.filter_list)}, blocks {tuple(e.m_blocks_list)}, stem {e.base_filters}, kernel
{e.kernel_size}, groups of {e.groups_width} channels, dropout {e.dropout}; projections to {e.embed_dim}-d
(text MLP {config.text.embed_dim} -> {e.text_hidden} -> {e.embed_dim}); {parameters:,} parameters.
Load it with `diffusets_jax.evaluation.train_clip.load_evaluator()`.

**A small CPU stand-in, not the official evaluator.** The official one is the 22M-parameter Net1D
trained on VAE reconstructions of MIMIC-IV-ECG with OpenAI ada-002 embeddings; metrics computed
with this one are comparable only with each other.

## Data

Real processed signals (not VAE reconstructions, unlike the official evaluator), 1024 samples
x 12 leads in mV, with {config.text.embedder} embeddings of the reports, from
{", ".join(str(d) for d in data_dirs)}: folds {tuple(config.data.train_folds)} for training
({train["num_pairs"]} records), folds {tuple(test_folds)} held out ({test["num_pairs"]} records). The shared PTB-XL
subset has no record in folds 9-10, so the held-out records are LUDB only.

## Training

AdamW, lr {e.learning_rate} constant, weight decay {e.weight_decay}, batch {e.batch_size}, {step} steps,
{seconds / 60:.1f} minutes on a 2-core CPU. Last logged contrastive loss {last["loss"]:.3f}
(ln {e.batch_size} = {np.log(e.batch_size):.3f} at chance), in-batch top-1 {last["batch_top1"]:.3f}, logit scale
{last["logit_scale"]:.1f}.

## Retrieval on the held-out folds {tuple(test_folds)} ({test["num_pairs"]} pairs, by cosine of the 64-d features)

"Exact pair": the query's own partner is retrieved; "same report": a retrieved item has the
same report text as the query (many PTB-XL reports are identical, e.g. "normal ECG|sinus rhythm").

{table(test)}

## Retrieval on the training folds ({train["num_pairs"]} pairs, for comparison)

{table(train)}
"""
