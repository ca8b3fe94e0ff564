"""Who owns checkpoints: the workdir layout, the model-directory format and its manifest.

* `layout`: names of the workdir and model-directory files (`CONFIG_FILE`, `VAE_DIR`, `UNET_DIR`,
  `metrics_file`), atomic writes, and `read_config`, which migrates older configs once at load;
* `manifest`: `MANIFEST.json` (size and SHA-256 per file), written last and checked at load;
* `model_dir`: `save_model_dir` / `load_model_dir`, the one format of every trained artefact, and
  `read_model_dir_config`, the one reader (checked) of a model directory's `config.json`;
* `steps` (imported on demand, it loads orbax): the orbax checkpoints of training, last-K and
  best, params-only restore, and the fall-back past a step that cannot be restored;
* `export` (imported on demand, it builds models): a workdir -> a model directory and back.
"""

from diffusets_jax.checkpoints.layout import (  # noqa: F401
    BEST_SUFFIX,
    BROKEN_SUFFIX,
    CONFIG_FILE,
    EVALUATOR_DIR,
    MIGRATIONS,
    MODEL_CARD_FILE,
    UNET_DIR,
    VAE_DIR,
    atomic_open,
    atomic_write,
    atomic_write_text,
    best_dir,
    metrics_file,
    migrate_config,
    read_config,
    read_json,
    write_config,
)
from diffusets_jax.checkpoints.manifest import (  # noqa: F401
    MANIFEST_FILE,
    read_manifest,
    sha256_file,
    verify_manifest,
    write_manifest,
)

#: Loaded on first use (they import JAX and Flax), so that data preparation stays light.
_MODEL_DIR_NAMES = (
    "ModelDir",
    "check_finite",
    "flatten_params",
    "load_model_dir",
    "load_params_into",
    "module_arrays",
    "read_model_dir_config",
    "read_npz",
    "save_model_dir",
)


def __getattr__(name):
    if name in _MODEL_DIR_NAMES:
        from diffusets_jax.checkpoints import model_dir

        return getattr(model_dir, name)
    raise AttributeError(f"module 'diffusets_jax.checkpoints' has no attribute {name!r}")
