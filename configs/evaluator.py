"""The ECG-text CLIP evaluator (official `clip/clip_model.py`, `clip/clip_train.py`).

`get_config()` is the `small` DiffuSETS config plus an `evaluator` group sized for a 2-core CPU:
Net1D of 4 stages (16/32/64/128 channels, one block each, k 16, groups of 16 channels) on
MiniLM text embeddings (384-d). `get_config("paper")` has the official sizes (Net1D
64..1024, blocks 2,2,2,3,3,4,4: 18,660,992 parameters; 22,005,505 with the heads at 1536-d text).
Both train with the official AdamW(lr 1e-3, weight decay 1e-3) at a constant rate. The shipped
evaluator (diffusets_jax/pretrained/evaluator, MODEL_CARD.md for its time and accuracy) is

  python -c "from diffusets_jax.config import load_config; \
    from diffusets_jax.evaluation.train_clip import train_clip, export_evaluator; \
    train_clip(load_config('evaluator'), 'workdirs/evaluator', ['data/ptbxl', 'data/ludb']); \
    export_evaluator('workdirs/evaluator', 'diffusets_jax/pretrained/evaluator', ['data/ptbxl', 'data/ludb'])"

trained on folds 1-8 of the processed PTB-XL and LUDB sets (425 records) and tested on folds 9-10
(24 LUDB records: the shared PTB-XL subset has none there). Expect about 5 minutes for the 1500
steps on 2 CPU cores, a last logged loss near 1.4 (ln 32 = 3.47 at chance) and held-out top-1
retrieval of 0.25 ECG->text and 0.13 text->ECG (chance 0.04).
"""

import ml_collections

from diffusets_jax.configs import small


def get_config(size: str = "small"):
    """`size` "small" (CPU) or "paper" (official Net1D). Raises ValueError for another size."""
    if size not in ("small", "paper"):
        raise ValueError(f"evaluator size must be 'small' or 'paper', got {size!r}")
    c = small.get_config()
    c.name = f"evaluator-{size}"
    c.data.val_folds = (9, 10)  # retrieval accuracy while training; the generator keeps fold 10 for its tests

    e = c.evaluator = ml_collections.ConfigDict()
    e.base_filters = 64 if size == "paper" else 16  # stem conv width
    e.filter_list = (64, 128, 128, 256, 256, 512, 1024) if size == "paper" else (16, 32, 64, 128)
    e.m_blocks_list = (2, 2, 2, 3, 3, 4, 4) if size == "paper" else (1, 1, 1, 1)
    e.kernel_size = 16
    e.stride = 2  # downsampling of the first block of each stage
    e.groups_width = 16  # channels per group of the k-wide conv
    e.ratio = 1.0  # middle width / output width of a block
    e.dropout = 0.5
    e.embed_dim = 64  # ECG and text projections
    e.text_hidden = 2048  # hidden width of the text projector MLP

    e.batch_size = 256 if size == "paper" else 32  # official: contrastive loss within chunks of 256
    e.num_epochs = 10 if size == "paper" else 0  # if > 0, num_steps = num_epochs * steps_per_epoch
    e.num_steps = 0 if size == "paper" else 1500
    e.learning_rate = 1e-3
    e.weight_decay = 1e-3
    e.grad_clip_norm = 0.0  # official: no clipping
    e.log_every = 10
    e.checkpoint_every = 250  # also evaluates retrieval on the validation folds (best checkpoint)
    e.keep_checkpoints = 2
    e.eval_batches = 8  # validation batches of batch_size for the retrieval accuracy
    return c
