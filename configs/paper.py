"""The official DiffuSETS model and its training recipes (MIMIC-IV-ECG, ada-002 text).

Model sizes are the official ones: VAE 29.6 M parameters, U-Net 13.3 M trainable
(`ECGconditional(1000, kernel_size=7, num_levels=7, n_channels=4, text_embed_dim=1536)`).

  diffusets-jax prepare --dataset mimic --root /data/mimic-iv-ecg --embedder openai-ada-002 --out data/mimic
  diffusets-jax train-vae --config paper --workdir workdirs/paper --data data/mimic
  diffusets-jax train-diffusion --config paper --workdir workdirs/paper --data data/mimic

Expected cost (official PyTorch timings of issue 19 in `benchmarks/README.md`): one U-Net epoch
over 794 k ECGs is 1,552 steps at batch 512; 200 epochs are 310 k steps, out of reach on a CPU
(about a month), a few days on one GPU.
A third-party retrain of the official VAE recipe (nvelingker/DiffuSETS_Exp) reached loss 46.4
(reconstruction 38.6, KL 7.8) after 10 epochs.
"""

from diffusets_jax.configs import common


def get_config():
    c = common.get_config()
    c.name = "paper"
    c.text.embedder = "openai-ada-002"
    c.text.embed_dim = 1536
    c.data.train_folds = tuple(range(1, 10))  # hold out fold 10 (the official code holds out nothing)
    return c
