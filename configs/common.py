"""Defaults shared by every configuration; each field is documented in docs/configs.md.

Groups: `data`, `text`, `vae`, `unet`, `diffusion`, `vae_train`, `unet_train`, `sampling`, `mesh`,
`sediff`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "common"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.dirs = ()  # processed datasets written by `diffusets-jax prepare`
    c.data.train_folds = (1, 2, 3, 4, 5, 6, 7, 8)  # PTB-XL strat_fold; patient hash elsewhere
    c.data.val_folds = (9,)  # validation loss and the best checkpoint; fold 10 is the test split
    c.data.shuffle = True  # the official loaders never shuffle (a bug we do not reproduce)
    # Heart-rate augmentation of in-memory sets for diffusion training (diffusets_jax.data_pipelines.augment):
    # copies per ECG, time-warped by s log-uniform in hr_augment_factor, new rate hr / s kept in
    # hr_augment_bpm. 0 copies: off (official).
    c.data.hr_augment_copies = 0
    c.data.hr_augment_factor = (0.7, 1.4)
    c.data.hr_augment_bpm = (40.0, 180.0)

    c.text = ml_collections.ConfigDict()
    c.text.embedder = "minilm"  # 'minilm' (384-d, offline) or 'openai-ada-002' (1536-d, official)
    c.text.embed_dim = 384

    c.vae = ml_collections.ConfigDict()
    c.vae.channels = (128, 256, 512)
    c.vae.latent_channels = 4
    c.vae.num_groups = 32

    c.unet = ml_collections.ConfigDict()
    c.unet.channels = (8, 16, 32, 64, 128, 256)
    c.unet.kernel_size = 7
    c.unet.num_heads = 8
    c.unet.bottleneck_hidden = 32
    c.unet.bottleneck_heads = 4
    c.unet.bottleneck_kernel_size = 3
    c.unet.closed_form_cross_attention = True  # exact; see models.unet.CrossAttention
    # (sex, age, HR) enter the condition as (value - mean) / std; official: raw values.
    c.unet.patient_mean = (0.0, 0.0, 0.0)
    c.unet.patient_std = (1.0, 1.0, 1.0)
    c.unet.output_activation = True  # Mish between the two output convolutions (official); see models.unet.UNet
    # 'edm': eps_hat = c_skip x_t + c_out F(c_in x_t) for latents of std data_std (Karras et al. 2022,
    # diffusion.eps_preconditioning); 'none': eps_hat = F(x_t) (official).
    c.unet.preconditioning = "none"
    c.unet.data_std = 0.18  # std of the 0.18215-scaled latents (measured 0.178 on the shipped VAE)

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.num_train_timesteps = 1000
    c.diffusion.beta_start = 0.00085
    c.diffusion.beta_end = 0.012
    c.diffusion.beta_schedule = "linear"
    c.diffusion.clip_sample = True
    c.diffusion.clip_sample_range = 1.0
    # Multiplies abar / (1 - abar) at every t (diffusion.make_schedule); 1: official. 1 / std(latent)**2
    # gives unit-variance-data signal-to-noise ratios to the official 0.18215-scaled latents.
    c.diffusion.snr_scale = 1.0
    c.diffusion.t_min = 1  # training t ~ U{t_min, ..., t_max - 1}; official randint(1, 999)
    c.diffusion.t_max = 999

    # VAE recipe of vae/vae_train.py: AdamW 1e-4, one-cycle to 2e-4, KL weight 0.1 -> 1.0 by tenths.
    c.vae_train = ml_collections.ConfigDict()
    c.vae_train.batch_size = 256
    c.vae_train.num_epochs = 10  # if > 0, num_steps = num_epochs * steps_per_epoch
    c.vae_train.num_steps = 0
    c.vae_train.max_learning_rate = 2e-4  # OneCycleLR peak; it overrides AdamW's lr=1e-4 (starts at peak/25)
    c.vae_train.weight_decay = 0.01
    c.vae_train.kl_weight_max = 1.0
    c.vae_train.kl_anneal_stages = 10  # weight (k + 1) / stages * kl_weight_max in stage k
    c.vae_train.grad_clip_norm = 0.0  # clip the gradient's global norm to this; 0: off (official)
    c.vae_train.compute_dtype = "float32"  # or "bfloat16" (parameters and optimizer stay float32)
    c.vae_train.log_every = 10
    c.vae_train.checkpoint_every = 500  # also evaluates the validation loss (best checkpoint)
    c.vae_train.keep_checkpoints = 2  # the last K, plus the best in <workdir>/vae_best
    c.vae_train.eval_batches = 8  # validation batches per evaluation
    c.vae_train.preview_every = 0  # steps between reconstruction pictures (0: only at the end)

    # U-Net recipe of utils/train.py (lr and batch per the paper; see docs/differences.md).
    c.unet_train = ml_collections.ConfigDict()
    c.unet_train.batch_size = 512
    c.unet_train.num_epochs = 200
    c.unet_train.num_steps = 0
    c.unet_train.learning_rate = 5e-4
    c.unet_train.final_lr_fraction = 0.1  # CosineAnnealingLR(eta_min = 0.1 lr)
    c.unet_train.weight_decay = 0.01
    c.unet_train.ema_decay = 0.0  # 0 disables the EMA (official: none)
    c.unet_train.sample_posterior = False  # official: one sampled latent per record, cached once
    c.unet_train.grad_clip_norm = 0.0
    # Classifier-free guidance: probability of training a row on the null condition (all of it,
    # its text only, its patient values only). 0: off (official); 0.1 is the usual choice.
    c.unet_train.condition_dropout = 0.0
    c.unet_train.text_dropout = 0.0
    c.unet_train.patient_dropout = 0.0
    c.unet_train.compute_dtype = "float32"
    c.unet_train.log_every = 10
    c.unet_train.checkpoint_every = 1000
    c.unet_train.keep_checkpoints = 2
    c.unet_train.eval_batches = 8
    c.unet_train.preview_every = 0  # steps between pictures of sampled ECGs (0: only at the end)
    c.unet_train.preview_steps = 50  # DDPM steps of those samples

    c.sampling = ml_collections.ConfigDict()
    c.sampling.sampler = "ddpm"  # 'ddpm' (official), 'ddim' or 'dpm-solver++' (diffusion.SAMPLERS)
    c.sampling.num_steps = 1000
    c.sampling.eta = 0.0  # DDIM only: 0 deterministic, 1 DDPM-like variance
    c.sampling.guidance_scale = 1.0  # classifier-free guidance; 1: none (needs condition dropout)
    c.sampling.exact_limb_leads = False  # derive III, aVR, aVL, aVF from I and II
    c.sampling.batch_size = 16

    # SE-Diff's simulator losses on the beat decoded from the predicted x0 (docs/se-diff.md, "Beat
    # decoder and physics losses"). All weights 0: off, the official DiffuSETS objective.
    c.sediff = ml_collections.ConfigDict()
    c.sediff.euler_weight = 0.0  # lambda of L_Euler, (mV/s)^2 (SE-Diff release: effectively 3e-7)
    c.sediff.interlead_weight = 0.0  # gamma of the Einthoven/Goldberger loss, mV^2 (release: 0)
    c.sediff.physics_gradient = True  # False: computed and logged under stop_gradient (the release)
    c.sediff.beat_decoder_dir = ""  # "": <workdir>/beat_decoder (diffusets-jax train-beat-decoder)
    c.sediff.ecgsyn_params = ""  # "": the shipped diffusets_jax/sediff/ecgsyn_params.json

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data_axis = "data"  # batch sharded over all devices, parameters replicated
    return c
