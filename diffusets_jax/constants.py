"""Fixed facts of the DiffuSETS data format, shared by every module.

Source: DiffuSETS official code (`dataset/mimic_iv_ecg_dataset.py`, `vae/vae_model.py`);
see docs/differences.md for where this port departs from it.
"""

#: Lead order of every signal array in this project, `(..., 12)` last axis.
LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
NUM_LEADS = len(LEADS)

#: Samples per ECG after resampling 10 s to 1024 points (official `scipy.signal.resample(x, 1024)`).
NUM_SAMPLES = 1024
DURATION_S = 10.0
#: Sampling frequency in Hz of every processed signal: 1024 samples / 10 s.
FS = NUM_SAMPLES / DURATION_S  # 102.4 Hz

#: VAE latent layout, channels-last: `(LATENT_LENGTH, LATENT_CHANNELS)` = (128, 4).
LATENT_LENGTH = 128
LATENT_CHANNELS = 4
#: Stable-Diffusion latent scale used (not re-estimated) by the official VAE.
LATENT_SCALE = 0.18215

#: Sex coding in the condition vector (official: 1.0 if 'M' else 0.0).
SEX_CODES = {"M": 1.0, "F": 0.0}
