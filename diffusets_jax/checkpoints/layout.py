"""The names of a training workdir and of a model directory, atomic writes, and `read_config`.

Training workdir (written by `train-vae` / `train-diffusion`, read by `export`):

    WORKDIR/config.json          the ConfigDict of the run (`CONFIG_FILE`)
    WORKDIR/vae/<step>/          orbax checkpoints of the VAE (`VAE_DIR`), the last `keep_checkpoints`
    WORKDIR/vae_best/<step>/     the best VAE checkpoint by validation loss (`best_dir(VAE_DIR)`)
    WORKDIR/unet/, unet_best/    the same for the U-Net (`UNET_DIR`)
    WORKDIR/<name>_metrics.jsonl one JSON line of metrics per logged step (`metrics_file(name)`)
    WORKDIR/<dir>_broken/<step>/ a checkpoint step that could not be restored, moved aside on resume
    WORKDIR/beat_decoder_checkpoints/<step>/, settings.json
                                 the SE-Diff beat decoder's orbax checkpoints while it trains
                                 (`BEAT_DECODER_CHECKPOINTS`) and the settings they were trained with;
                                 the finished decoder is a model directory, by default WORKDIR/beat_decoder

Model directory (`pretrained`, the evaluator, the SE-Diff beat decoder): `config.json` (or another
JSON record), one `<name>.npz` per model, optional `MODEL_CARD.md`, and `MANIFEST.json`
(`manifest.MANIFEST_FILE`).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterator

import ml_collections

from diffusets_jax.errors import ConfigError, MissingFileError

CONFIG_FILE = "config.json"
MODEL_CARD_FILE = "MODEL_CARD.md"
VAE_DIR = "vae"
UNET_DIR = "unet"
EVALUATOR_DIR = "evaluator"
BEAT_DECODER_CHECKPOINTS = "beat_decoder_checkpoints"
BEST_SUFFIX = "_best"
BROKEN_SUFFIX = "_broken"


def best_dir(name: str) -> str:
    """`'vae'` -> `'vae_best'`: the orbax directory of the best checkpoint beside `name`."""
    return name + BEST_SUFFIX


def metrics_file(name: str) -> str:
    """`'vae'` -> `'vae_metrics.jsonl'`: the JSON-lines metrics log of a trainer."""
    return f"{name}_metrics.jsonl"


# ------------------------------------------------------------------------------------------------
# Atomic writes: a temporary name in the same directory, flushed and fsync'ed, then os.replace
# (atomic on POSIX: a reader sees the old file or the new one, never a partial one).


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path`; on a clean exit flush, fsync and rename it to `path`.

    On an exception the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; returns `path`."""
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def atomic_write(path: str | Path, write: Callable[[IO], None]) -> Path:
    """Call `write(binary_file)` on a temporary file, then rename it to `path` (e.g. `np.savez`)."""
    with atomic_open(path, "wb") as f:
        write(f)
    return Path(path)


# ------------------------------------------------------------------------------------------------
# Configs


#: Fields added to the config after models were saved, with the value that reproduces the older
#: behaviour; `read_config` fills them in when the section exists and the field does not.
MIGRATIONS: dict[tuple[str, str], object] = {
    ("vae_train", "grad_clip_norm"): 0.0,
    ("vae_train", "preview_every"): 0,
    ("unet_train", "grad_clip_norm"): 0.0,
    ("unet_train", "preview_every"): 0,
    ("unet_train", "condition_dropout"): 0.0,
    ("unet_train", "text_dropout"): 0.0,
    ("unet_train", "patient_dropout"): 0.0,
    ("unet", "preconditioning"): "none",
    ("unet", "patient_mean"): (0.0, 0.0, 0.0),
    ("data", "hr_augment_copies"): 0,
    ("evaluator", "grad_clip_norm"): 0.0,
}


def migrate_config(config: ml_collections.ConfigDict) -> list[str]:
    """Add the `MIGRATIONS` fields missing from `config` in place; returns the dotted names added."""
    added = []
    for (section, field), value in MIGRATIONS.items():
        node = config.get(section)
        if isinstance(node, ml_collections.ConfigDict) and field not in node:
            with node.unlocked():
                node[field] = value
            added.append(f"{section}.{field}")
    return added


def read_json(path: str | Path) -> dict:
    """A JSON object from `path`; MissingFileError if absent, ConfigError naming the file if not JSON."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path} not found")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        raise ConfigError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path} holds a JSON {type(value).__name__}, expected an object")
    return value


def read_config(directory: str | Path, name: str = CONFIG_FILE) -> ml_collections.ConfigDict:
    """The ConfigDict of `directory/config.json` (a workdir or a model directory), migrated once.

    Fields that later versions added (`MIGRATIONS`) are filled in with the value that reproduces
    what the older code did, so the rest of the code can read `config.section.field` directly.

    Raises:
        MissingFileError: `directory/config.json` does not exist.
        ConfigError: it is not a JSON object.
    """
    config = ml_collections.ConfigDict(read_json(Path(directory) / name))
    migrate_config(config)
    return config


def write_config(directory: str | Path, config: ml_collections.ConfigDict) -> Path:
    """Write `directory/config.json` atomically (sorted keys, indented); returns its path."""
    from diffusets_jax.config import config_to_json

    return atomic_write_text(Path(directory) / CONFIG_FILE, config_to_json(config))
