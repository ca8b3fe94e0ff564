"""SE-Diff's beat decoder: VAE latent `(B, 128, 4)` -> one R-aligned beat per lead `(B, 61, 12)`.

This module holds the model (`BeatDecoder`), its Stage-1 losses (`beat_loss`, `log_spectrum`,
`spectral_weights`, `spectral_loss`), the per-record targets (`beat_targets`) and the files of a
trained decoder (`save_beat_decoder`, `load_beat_decoder`). Its training is
`diffusets_jax.sediff.beat_decoder_training`.

SE-Diff (Wang et al., "Simulator and Experience Enhanced Diffusion Model for Comprehensive ECG
Generation", ICLR 2026, arXiv:2511.09895, Stage 1 of its method) trains, next to the
VAE, a lightweight decoder `D_psi^beat` that maps the latent to ONE QRS-aligned cardiac cycle
(61 samples at 102.4 Hz, R at index 20: `[R - 20, R + 40]`). Stage 2 freezes it and applies the
simulator losses (`diffusets_jax.sediff.physics`) to the beat it decodes from the U-Net's
predicted clean latent.

Architecture: the released `MiniDecoderMSE(target_len=61, z_channels=4, base=128)` layer for
layer (official SE-Diff release, ignite-abd/SE-Diff, `vae/vae_model.py::MiniDecoderMSE`),
channels-last:

1. `conv_in` Conv(4 -> base, k3), then `blocks_in`: 3 residual blocks (GN, SiLU, conv3, GN,
   SiLU, conv3 + skip; the VAE's `diffusets_jax.models.vae.ResidualBlock`).
2. `time_proj`: a Linear over the time axis, 128 -> 61 (per channel; hard-wires latent length 128).
3. `norm_out` GN, SiLU, `conv_mid` Conv(k3), `block_out` residual block.
4. `conv_out` Conv1x1 (base -> 12).
5. `amplitude`: per-lead amplitude head on the time-averaged latent, Linear(4 -> 32), SiLU,
   Linear(32 -> 24) giving a scale `s = softplus(.) + 1e-3` and a bias `b` per lead;
   output `x s + b`.

Loss: SE-Diff's Stage-1 loss `L_beat + alpha_spec L_spec`:

* `L_beat = mean((C(x) - D(z))^2)` over the 61 x 12 samples, with `C(x)` the record's **mean**
  R-aligned beat (`diffusets_jax.sediff.fit_params.record_beats()`, R on lead II), not the
  paper's first cycle: the mean of the record's ~10 beats is the less noisy target for a decoder
  that sees the whole 10 s latent.
* `L_spec = 1/(12 J K) sum_{l,j,k} w(f_k) (S_hat_l[k] - S_l^(j)[k])^2` with
  `S = log(eps + |rfft(h - mean(h))|)` over the record's `J` beats (`log_spectrum()`,
  `spectral_weights()`: `w = 2` for 0.5-3 Hz, 1 above, 0 at DC; `eps = 0.1` mV).

Files: `save_beat_decoder()` writes `beat_decoder.npz` (parameters by flattened path) and
`beat_decoder.json` (architecture, training record) into a directory, by default
`<workdir>/beat_decoder`; `load_beat_decoder()` reads them back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffusets_jax.constants import FS, LATENT_CHANNELS, LATENT_LENGTH, NUM_LEADS
from diffusets_jax.models.layers import conv1d, group_norm, linear
from diffusets_jax.models import abstract_model
from diffusets_jax.models.vae import ResidualBlock
from diffusets_jax.sediff import ecgsyn

Array = jax.Array

FORMAT = "diffusets-jax/beat-decoder/1"
#: Default output directory inside a training workdir.
DIRECTORY_NAME = "beat_decoder"
#: The released width; the trained default (`configs/sediff.py` `beat_decoder`,
#: `beat_decoder_training.DEFAULT_BASE`) is 32.
OFFICIAL_BASE = 128
#: Floor of the log magnitude spectrum, in the unnormalised rFFT's units (mV x samples):
#: 0.1 is a 3 uV sinusoid over the 61-sample beat, below which bins are noise.
SPECTRUM_EPS = 0.1
#: SE-Diff's w(f) "may emphasise 0.5-3 Hz": weight of that band (bins at 1.68 Hz spacing).
LOW_BAND_HZ, LOW_BAND_WEIGHT = (0.5, 3.0), 2.0


class BeatDecoder(nnx.Module):
    """`MiniDecoderMSE` of the SE-Diff release: latent `(B, 128, 4)` -> beat `(B, 61, 12)` mV.

    Args:
        base: channel width (official 128).
        num_groups: GroupNorm groups (official 32; must divide `base`).
        latent_length, latent_channels: the VAE latent layout (128, 4).
        target_len: beat length (61 samples at 102.4 Hz, R at index 20).
        rngs: parameter initialisation.

    Source: SE-Diff release `vae/vae_model.py::MiniDecoderMSE`; layer names follow its parts.
    """

    def __init__(
        self,
        base: int = OFFICIAL_BASE,
        num_groups: int = 32,
        *,
        latent_length: int = LATENT_LENGTH,
        latent_channels: int = LATENT_CHANNELS,
        target_len: int = ecgsyn.BEAT_LENGTH,
        rngs: nnx.Rngs,
    ):
        if base % num_groups:
            raise ValueError(f"num_groups={num_groups} must divide base={base}")
        self.conv_in = conv1d(latent_channels, base, 3, rngs=rngs)
        self.blocks_in = nnx.List([ResidualBlock(base, base, num_groups, rngs=rngs) for _ in range(3)])
        self.time_proj = linear(latent_length, target_len, rngs=rngs)
        self.norm_out = group_norm(base, num_groups, rngs=rngs)
        self.conv_mid = conv1d(base, base, 3, rngs=rngs)
        self.block_out = ResidualBlock(base, base, num_groups, rngs=rngs)
        self.conv_out = conv1d(base, NUM_LEADS, 1, rngs=rngs)
        self.amplitude_hidden = linear(latent_channels, 32, rngs=rngs)
        self.amplitude_out = linear(32, 2 * NUM_LEADS, rngs=rngs)

    def __call__(self, z: Array) -> Array:
        """`z` `(B, 128, 4)` scaled latents (as the U-Net's x0) -> `(B, 61, 12)` beats in mV."""
        h = self.conv_in(z)  # (B, 128, base)
        for block in self.blocks_in:
            h = block(h)
        h = self.time_proj(jnp.swapaxes(h, 1, 2))  # (B, base, 61): Linear over time
        h = jnp.swapaxes(h, 1, 2)  # (B, 61, base)
        h = self.conv_mid(jax.nn.silu(self.norm_out(h)))
        h = self.block_out(h)
        x = self.conv_out(h)  # (B, 61, 12)
        amp = self.amplitude_out(jax.nn.silu(self.amplitude_hidden(jnp.mean(z, axis=1))))  # (B, 24)
        scale = jax.nn.softplus(amp[:, :NUM_LEADS]) + 1e-3
        return x * scale[:, None, :] + amp[:, None, NUM_LEADS:]


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def beat_loss(predicted: Array, target: Array, mask: Array | None = None) -> Array:
    """SE-Diff's `L_beat`: the mean squared error (mV^2) over `(B, 61, 12)`, rows with `mask`."""
    per_row = jnp.mean((predicted - target) ** 2, axis=(1, 2))
    if mask is None:
        return jnp.mean(per_row)
    return jnp.sum(per_row * mask) / jnp.maximum(jnp.sum(mask), 1)


def log_spectrum(beats: Array, eps: float = SPECTRUM_EPS) -> Array:
    """`log(eps + |rfft(h - mean(h))|)` per lead: `(..., 61, 12)` mV -> `(..., 31, 12)`."""
    centred = beats - jnp.mean(beats, axis=-2, keepdims=True)
    return jnp.log(eps + jnp.abs(jnp.fft.rfft(centred, axis=-2)))


def spectral_weights(length: int = ecgsyn.BEAT_LENGTH, fs: float = FS) -> np.ndarray:
    """`w(f_k)` `(length // 2 + 1,)`: 0 at DC (removed by centring), `LOW_BAND_WEIGHT` in
    0.5-3 Hz, 1 elsewhere."""
    f = np.fft.rfftfreq(length, 1.0 / fs)
    w = np.where((f >= LOW_BAND_HZ[0]) & (f <= LOW_BAND_HZ[1]), LOW_BAND_WEIGHT, 1.0)
    w[0] = 0.0
    return w.astype(np.float32)


def spectral_loss(predicted: Array, beat_spectra: Array, beat_mask: Array, weights: Array) -> Array:
    """SE-Diff's spectral multi-beat loss `L_spec`.

    Args:
        predicted: `(B, 61, 12)` decoded beats (mV).
        beat_spectra: `(B, J, K, 12)` `log_spectrum()` of each record's observed beats.
        beat_mask: `(B, J)` 1 for real beats, 0 for padding.
        weights: `(K,)` `spectral_weights()`.

    Returns:
        `1/(12 J K) sum w(f_k) (S_hat - S^(j))^2` averaged over the beats of each record, then
        over the records with beats.
    """
    s_hat = log_spectrum(predicted)[:, None]  # (B, 1, K, 12)
    per_beat = jnp.mean(weights[:, None] * (s_hat - beat_spectra) ** 2, axis=(2, 3))  # (B, J)
    count = jnp.sum(beat_mask, axis=1)
    per_row = jnp.sum(per_beat * beat_mask, axis=1) / jnp.maximum(count, 1)
    has = (count > 0).astype(per_row.dtype)
    return jnp.sum(per_row * has) / jnp.maximum(jnp.sum(has), 1)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass
class BeatTargets:
    """Per-record targets of the beat decoder (N records; J = most beats in one record)."""

    mean_beat: np.ndarray  # (N, 61, 12) mV, zeros where a record has no beat
    spectra: np.ndarray  # (N, J, 31, 12) log spectra of each beat
    beat_mask: np.ndarray  # (N, J) float32
    has_beats: np.ndarray  # (N,) bool


def beat_targets(signals: np.ndarray, fs: float = FS, progress: bool = False) -> BeatTargets:
    """Mean beat and per-beat log spectra of each ECG `(N, 1024, 12)` mV (R on lead II, XQRS).

    Beats come from `diffusets_jax.sediff.fit_params.record_beats()` (baseline removed,
    windows `[R - 20, R + 40]` cut at 2 ms alignment).
    """
    from tqdm import tqdm

    from diffusets_jax.sediff.fit_params import record_beats

    per_record = [record_beats(s, fs) for s in tqdm(signals, desc="beats", unit="rec", disable=not progress)]
    n, j = len(per_record), max([len(b) for b in per_record] + [1])
    k = ecgsyn.BEAT_LENGTH // 2 + 1
    mean_beat = np.zeros((n, ecgsyn.BEAT_LENGTH, NUM_LEADS), np.float32)
    spectra = np.zeros((n, j, k, NUM_LEADS), np.float32)
    mask = np.zeros((n, j), np.float32)
    for i, beats in enumerate(per_record):
        if len(beats):
            mean_beat[i] = beats.mean(0)
            spectra[i, : len(beats)] = np.asarray(log_spectrum(jnp.asarray(beats)))
            mask[i, : len(beats)] = 1.0
    return BeatTargets(mean_beat, spectra, mask, mask.sum(1) > 0)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def build_beat_decoder(architecture: dict, seed: int = 0) -> BeatDecoder:
    """A `BeatDecoder` from `{"base", "num_groups"}` (the JSON's `architecture`)."""
    return BeatDecoder(int(architecture["base"]), int(architecture["num_groups"]), rngs=nnx.Rngs(seed))


#: The model-directory names of the beat decoder (`diffusets_jax.checkpoints.model_dir`).
ARCHIVE, RECORD_FILE = "beat_decoder", "beat_decoder.json"


def save_beat_decoder(directory: str | Path, decoder: BeatDecoder, record: dict) -> Path:
    """Write `beat_decoder.npz`, `beat_decoder.json` (`record` must hold `architecture`) and
    `MANIFEST.json` (`checkpoints.save_model_dir`, each file atomically); returns `directory`."""
    from diffusets_jax.checkpoints import module_arrays, save_model_dir

    return save_model_dir(
        directory, {"format": FORMAT, **record}, {ARCHIVE: module_arrays(decoder)}, config_file=RECORD_FILE
    )


def load_beat_decoder(directory: str | Path) -> tuple[BeatDecoder, dict]:
    """The decoder saved in `directory` and its JSON record.

    Raises MissingFileError (a FileNotFoundError) naming the missing file and the command that
    writes it, IntegrityError naming a file that differs from the manifest, ValueError for another
    format, CheckpointError (a ValueError) for an unreadable archive, NaN/inf parameters or
    parameters that do not fit the recorded architecture.
    """
    from diffusets_jax.checkpoints import load_model_dir, load_params_into

    directory = Path(directory)
    read = load_model_dir(
        directory,
        (ARCHIVE,),
        config_file=RECORD_FILE,
        as_config=False,
        kind="beat decoder directory: run `diffusets-jax train-beat-decoder` first",
    )
    record = read.config
    if record.get("format") != FORMAT:
        raise ValueError(f"{directory}: format {record.get('format')!r}, expected {FORMAT!r}")
    decoder = abstract_model(lambda: build_beat_decoder(record["architecture"]))
    load_params_into(decoder, read.arrays[ARCHIVE], source=str(directory / f"{ARCHIVE}.npz"))
    return decoder, record
