"""ECGSYN, the McSharry et al. (2003) dynamical ECG model, in JAX: jit-able, vmap-able, differentiable.

The model (McSharry, Clifford, Tarassenko, Smith, "A dynamical model for generating synthetic
electrocardiogram signals", IEEE TBME 50(3):289-294, 2003)
is a point `(x, y, z)` that circles the unit limit cycle of the `(x, y)` plane once per beat
while `z` (the ECG) is pushed up or down by five Gaussians at the phase angles of the P, Q, R,
S and T waves (McSharry eq. 3, [NK] `_ecg_simulate_derivsecgsyn`)::

    dx/dt = alpha x - omega y
    dy/dt = alpha y + omega x
    dz/dt = - sum_i a_i dtheta_i exp(-dtheta_i^2 / (2 b_i^2)) - (z - z0(t))

with `alpha = 1 - sqrt(x^2 + y^2)`, `theta = atan2(y, x)`, `dtheta_i = (theta - theta_i)`
wrapped to `(-pi, pi]`, `omega = 2 pi / RR(t)` rad/s and the respiratory baseline
`z0(t) = A sin(2 pi f_resp t)` (`A = 0.005`, `f_resp = 0.25` Hz as [NK]).

What is here:

* `simulate()`: the full model as ECGSYN/[NK] run it: the bimodal RR process
  (`rr_process()`, McSharry eq. 2 and section II.A), RR held constant within each beat,
  fixed-step RK4 at `internal_factor * fs` Hz in one `jax.lax.scan`, sampled at `fs` Hz.
* `simulate_beat()`: one R-aligned beat, 61 samples at 102.4 Hz (R at index 20, i.e. 0.195 s
  before to 0.391 s after R), the beat representation of SE-Diff's beat decoder and simulator
  prior (SE-Diff release: `MiniDecoderMSE(target_len=61)` in `vae/vae_model.py`, 61-sample
  class templates in `utils/simulator_trainer.py`). It is the periodic steady state of the same
  ODE on the limit cycle at a constant heart rate, computed without a sequential loop (see its
  docstring), so a batch of beats and its gradient cost a few milliseconds. This is what the
  physics losses use.
* `scale_for_heart_rate()`: ECGSYN's heart-rate adaptation of the wave parameters.
* `beat_vector_field()`: `f_z` along the beat's phase, for the Euler-type losses.

Units. `theta` and `b` are in radians, `a` in the paper's units (z units per rad per s;
`a_R = 30`), heart rates in bpm, RR in s, `fs` in Hz. ECGSYN and [NK] min-max scale each
output to [-0.4, 1.2] mV, which throws the amplitude away; here `z` is converted to mV with one
fixed gain, `MV_PER_UNIT`, chosen so that the default parameters at 60 bpm give that same
[-0.4, 1.2] mV range. Amplitudes therefore stay differentiable and comparable between beats, and
fitted `a` values stay on the paper's scale. `simulate(..., rescale=True)` reproduces the
per-signal min-max scaling of [NK].

Departures from [NK] (each small and documented at the function): fixed-step RK4 instead of
`solve_ivp` (RK45); the 1 Hz RR series is upsampled by linear interpolation, not
`scipy.ndimage.zoom`; JAX's PRNG replaces NumPy's, so sample paths differ (the statistics are the
same).

References: [NK] neurokit2 0.2.12 `neurokit2/ecg/ecg_simulate.py`; the MATLAB `ecgsyn.m` on
PhysioNet (McSharry & Clifford); SE-Diff (ICLR 2026, arXiv 2511.09895) section "simulator prior".
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusets_jax.constants import FS

Array = jax.Array

#: Wave order of every `(..., 5)` parameter array.
WAVES = ("P", "Q", "R", "S", "T")
#: ECGSYN code (`ecgsyn.m`) / [NK] defaults: angles in degrees, a, b (rad).
DEFAULT_THETA_DEG = (-70.0, -15.0, 0.0, 15.0, 100.0)
DEFAULT_A = (1.2, -5.0, 30.0, -7.5, 0.75)
DEFAULT_B = (0.25, 0.1, 0.1, 0.1, 0.4)
#: The paper's (Table 1) angles, which differ from the code's for P (-60) and T (90).
PAPER_THETA_DEG = (-60.0, -15.0, 0.0, 15.0, 90.0)
#: Respiratory baseline wander z0(t) = A sin(2 pi f t) of [NK] (model units, Hz).
BASELINE_AMPLITUDE = 0.005
RESPIRATION_HZ = 0.25
#: Initial state (x, y, z) of ECGSYN and [NK].
INITIAL_STATE = (1.0, 0.0, 0.04)
#: RR-process defaults (McSharry section II.A, [NK]): Mayer and RSA peak frequencies and widths
#: (Hz) and the LF/HF power ratio.
MAYER_HZ, RSA_HZ, MAYER_STD_HZ, RSA_STD_HZ, LF_HF_RATIO = 0.1, 0.25, 0.01, 0.01, 0.5

#: SE-Diff beat geometry: 61 samples at 102.4 Hz, R peak at index 20 ([R - 20, R + 40]).
BEAT_LENGTH = 61
BEAT_R_INDEX = 20

#: mV per model unit of z: 1.6 mV / (peak-to-peak z of the default parameters at 60 bpm in the
#: periodic steady state, 0.05831 units), so that the default beat spans ECGSYN's [-0.4, 1.2] mV.
#: Measured with `simulate_beat(default_params(), 60.0, num_phase_steps=8192)` over a whole
#: cycle; `tests/test_ecgsyn.py` checks it against the RK4 simulation.
MV_PER_UNIT = 27.44


class WaveParams(NamedTuple):
    """Wave parameters of the P, Q, R, S, T Gaussians (a pytree; any leading batch shape).

    Attributes:
        theta: `(..., 5)` phase angles of the waves in rad (R at 0), McSharry eq. 3 `theta_i`.
        a: `(..., 5)` amplitudes in the paper's z units per rad per s (`a_R = 30`).
        b: `(..., 5)` Gaussian widths in rad, > 0.
    """

    theta: Array
    a: Array
    b: Array


class Simulation(NamedTuple):
    """Output of `simulate()` for one ECG of `L` samples at `fs` Hz."""

    ecg: Array  # (L,) mV
    states: Array  # (L, 3) x, y (unitless), z (model units) at each output sample
    rr: Array  # (L,) s, the RR interval in force at each output sample


def default_params(theta_deg=DEFAULT_THETA_DEG, a=DEFAULT_A, b=DEFAULT_B, dtype=jnp.float32) -> WaveParams:
    """ECGSYN's default wave parameters as a `WaveParams` of `(5,)` arrays.

    Args:
        theta_deg: angles in degrees (default: the ECGSYN code's; `PAPER_THETA_DEG` for the paper's).
        a: amplitudes (paper units). b: widths (rad).

    Source: [NK] `_ecg_simulate_ecgsyn` defaults, the same as `ecgsyn.m`'s.
    """
    return WaveParams(
        theta=jnp.deg2rad(jnp.asarray(theta_deg, dtype)), a=jnp.asarray(a, dtype), b=jnp.asarray(b, dtype)
    )


def scale_for_heart_rate(params: WaveParams, heart_rate) -> WaveParams:
    """ECGSYN's adaptation of the wave parameters to the mean heart rate.

    `hrfact = sqrt(HR / 60)`, `hrfact2 = sqrt(hrfact)`; `b_i <- hrfact b_i` and
    `theta_i <- [hrfact2, hrfact, 1, hrfact, hrfact2]_i theta_i` (so at a faster rate the waves
    occupy a larger share of the cycle, as the QT interval shortens less than RR). `a` is kept.

    Args:
        params: wave parameters at the reference rate of 60 bpm, `(..., 5)`.
        heart_rate: bpm, scalar or broadcastable to `params`' leading shape.

    Returns:
        The scaled `WaveParams`, same shapes.

    Source: McSharry et al. 2003 section II ("the parameters ... are scaled by sqrt(hrmean/60)"),
    `ecgsyn.m` and [NK] lines "Adjust extrema parameters for mean heart rate".
    """
    hrfact = jnp.sqrt(jnp.asarray(heart_rate, params.b.dtype) / 60.0)[..., None]
    hrfact2 = jnp.sqrt(hrfact)
    theta_factor = jnp.concatenate([hrfact2, hrfact, jnp.ones_like(hrfact), hrfact, hrfact2], axis=-1)
    return WaveParams(theta=params.theta * theta_factor, a=params.a, b=params.b * hrfact)


def wrap_angle(angle: Array) -> Array:
    """`angle` (rad) wrapped to [-pi, pi] with [NK]'s `x - round(x / 2pi) 2pi` (gradient 1)."""
    return angle - jax.lax.stop_gradient(jnp.round(angle / (2 * jnp.pi))) * 2 * jnp.pi


def wave_forcing(theta: Array, params: WaveParams) -> Array:
    """The Gaussian forcing `-sum_i a_i dtheta_i exp(-dtheta_i^2 / (2 b_i^2))` of McSharry eq. 3.

    Args:
        theta: phase angles (rad), any shape `S`.
        params: `WaveParams` with `(5,)` leaves (already heart-rate scaled).

    Returns:
        `S`-shaped array, model units per s: the wave part of `dz/dt` (as in the paper and [NK],
        not multiplied by `omega`, so a wave's z amplitude is about `a_i b_i^2 / omega`).
    """
    dtheta = wrap_angle(theta[..., None] - params.theta)  # S + (5,)
    return -jnp.sum(params.a * dtheta * jnp.exp(-0.5 * (dtheta / params.b) ** 2), axis=-1)


def derivatives(
    state: Array,
    t: Array,
    omega: Array,
    params: WaveParams,
    baseline_amplitude: float = BASELINE_AMPLITUDE,
    respiration_hz: float = RESPIRATION_HZ,
) -> Array:
    """Right-hand side of the ECGSYN ODE (McSharry et al. 2003 eq. 3).

    Args:
        state: `(3,)` `(x, y, z)`; x, y unitless, z in model units (mV = z * MV_PER_UNIT).
        t: time in s (for the respiratory baseline `z0(t)`).
        omega: angular velocity `2 pi / RR` in rad/s.
        params: heart-rate-scaled `WaveParams` with `(5,)` leaves.
        baseline_amplitude, respiration_hz: `z0(t) = A sin(2 pi f t)`.

    Returns:
        `(3,)` time derivative, per s.

    Source: [NK] `_ecg_simulate_derivsecgsyn` (same terms; the phase wrap uses `round`).
    """
    x, y, z = state[0], state[1], state[2]
    alpha = 1.0 - jnp.sqrt(x * x + y * y)
    theta = jnp.arctan2(y, x)
    z0 = baseline_amplitude * jnp.sin(2 * jnp.pi * respiration_hz * t)
    dz = wave_forcing(theta, params) - (z - z0)
    return jnp.stack([alpha * x - omega * y, alpha * y + omega * x, dz])


def rr_process(
    key: Array,
    num_points: int,
    heart_rate,
    hr_std=1.0,
    lf_hf_ratio=LF_HF_RATIO,
    mayer_hz: float = MAYER_HZ,
    rsa_hz: float = RSA_HZ,
    mayer_std_hz: float = MAYER_STD_HZ,
    rsa_std_hz: float = RSA_STD_HZ,
) -> Array:
    """Bimodal RR-interval series sampled at 1 Hz (McSharry et al. 2003 eq. 2, section II.A).

    The power spectrum is `S(f) = sig1^2 G(f; f1, c1) + sig2^2 G(f; f2, c2)` with Gaussians at the
    Mayer (`f1` = 0.1 Hz) and RSA (`f2` = 0.25 Hz) frequencies; as in `ecgsyn.m` and [NK],
    `sig1 = lf_hf_ratio`, `sig2 = 1`, the amplitudes `sqrt(S)` get uniform random phases with
    Hermitian symmetry, the inverse FFT gives the series, which is rescaled to mean `60 / HR` s
    and standard deviation `60 hr_std / HR^2` s.

    Args:
        key: JAX PRNG key (the random phases).
        num_points: series length `n` (static; a power of two in ECGSYN), one value per second.
        heart_rate: mean heart rate in bpm (may be traced, e.g. under vmap).
        hr_std: standard deviation of the heart rate in bpm (0: constant RR).
        lf_hf_ratio: LF/HF power ratio.

    Returns:
        `(num_points,)` RR intervals in s.

    Source: [NK] `_ecg_simulate_rrprocess` (line for line, with a JAX key).
    """
    n = int(num_points)
    if n < 4 or n % 2:
        raise ValueError(f"num_points must be even and >= 4, got {num_points}")
    heart_rate = jnp.asarray(heart_rate, jnp.float32)
    w = jnp.arange(n) * 2 * jnp.pi / n  # rad/s at sfrr = 1 Hz
    c1, c2 = 2 * jnp.pi * mayer_std_hz, 2 * jnp.pi * rsa_std_hz
    hw = lf_hf_ratio * jnp.exp(-0.5 * ((w - 2 * jnp.pi * mayer_hz) / c1) ** 2) / jnp.sqrt(2 * jnp.pi * c1**2) + jnp.exp(
        -0.5 * ((w - 2 * jnp.pi * rsa_hz) / c2) ** 2
    ) / jnp.sqrt(2 * jnp.pi * c2**2)
    hw0 = jnp.concatenate([hw[: n // 2], hw[n // 2 - 1 :: -1]])  # mirrored, as [NK]
    amplitude = 0.5 * jnp.sqrt(hw0)
    ph0 = 2 * jnp.pi * jax.random.uniform(key, (n // 2 - 1,))
    phase = jnp.concatenate([jnp.zeros(1), ph0, jnp.zeros(1), -ph0[::-1]])
    x = jnp.real(jnp.fft.ifft(amplitude * jnp.exp(1j * phase))) / n
    rr_mean = 60.0 / heart_rate
    rr_std = 60.0 * hr_std / heart_rate**2
    return rr_mean + x * (rr_std / jnp.std(x))


def rr_tachogram(
    key: Array, num_internal: int, fs_internal: float, heart_rate, hr_std=1.0, lf_hf_ratio=LF_HF_RATIO
) -> Array:
    """RR interval in force at each internal sample: the 1 Hz `rr_process()` upsampled to
    `fs_internal` and held constant over each beat, as ECGSYN's `rrn` series.

    A beat that starts at internal sample `i` lasts `RR(i)` s, i.e. until sample
    `round(t_beat_end * fs_internal)`; the loop is a `jax.lax.scan`.

    Args:
        key: PRNG key. num_internal: samples (static). fs_internal: Hz.
        heart_rate: bpm. hr_std: bpm. lf_hf_ratio: LF/HF ratio.

    Returns:
        `(num_internal,)` RR intervals in s.

    Source: [NK] "Make the rrn time series" loop. [NK] upsamples with `scipy.ndimage.zoom`
    (cubic spline); this uses linear interpolation of the 1 Hz series.
    """
    duration = num_internal / fs_internal
    n = max(4, 2 ** math.ceil(math.log2(max(duration, 1.0))))  # [NK]: 2^ceil(log2(N * RRmean))
    n += n % 2
    rr_1hz = rr_process(key, n, heart_rate, hr_std, lf_hf_ratio)
    t = jnp.arange(num_internal) / fs_internal
    rr_fine = jnp.interp(t, jnp.arange(n, dtype=jnp.float32), rr_1hz)
    dt = 1.0 / fs_internal

    def step(carry, inputs):
        beat_end, current = carry  # time (s) at which the current beat ends, its RR (s)
        i, rr_i = inputs
        new_beat = i >= jnp.round(beat_end / dt)
        current = jnp.where(new_beat, rr_i, current)
        beat_end = jnp.where(new_beat, beat_end + rr_i, beat_end)
        return (beat_end, current), current

    _, held = jax.lax.scan(step, (jnp.zeros((), rr_fine.dtype), rr_fine[0]), (jnp.arange(num_internal), rr_fine))
    return held


def simulate(
    key: Array,
    heart_rate,
    params: WaveParams | None = None,
    *,
    num_samples: int = 1024,
    fs: float = FS,
    internal_factor: int = 5,
    hr_std=1.0,
    lf_hf_ratio=LF_HF_RATIO,
    baseline_amplitude: float = BASELINE_AMPLITUDE,
    scale_params: bool = True,
    rescale: bool = False,
) -> Simulation:
    """Simulate one ECGSYN signal: RR process, RK4 integration in a `jax.lax.scan`, downsampling.

    The ODE (McSharry eq. 3, `derivatives()`) is integrated from `(1, 0, 0.04)` with fixed-step
    RK4 at `fs_internal = internal_factor * fs` Hz (512 Hz for the default 102.4 Hz output, as
    [NK]'s default internal rate); `omega = 2 pi / RR` is constant within a step and RR is held
    per beat (`rr_tachogram()`). Output sample `k` is the state at `t = k / fs` (sample 0 is
    the initial state), as [NK]'s `X0[:, ::q]`.

    jit it with `jax.jit(simulate, static_argnames=("num_samples", "fs", "internal_factor",
    "scale_params", "rescale"))`; batch with `jax.vmap` over `key`, `heart_rate`, `params`.
    Differentiable in `params` (gradients w.r.t. theta, a, b flow through the scan).

    Args:
        key: PRNG key for the RR process.
        heart_rate: mean heart rate in bpm (scalar; may be traced).
        params: `WaveParams` with `(5,)` leaves at 60 bpm (default `default_params()`).
        num_samples: output length `L` (static). fs: output rate in Hz (static).
        internal_factor: RK4 steps per output sample (static).
        hr_std: heart-rate standard deviation in bpm (0: constant RR). lf_hf_ratio: LF/HF ratio.
        baseline_amplitude: respiratory wander amplitude `A` (model units; 0 disables it).
        scale_params: apply `scale_for_heart_rate()` (ECGSYN does).
        rescale: min-max scale the output to [-0.4, 1.2] mV per signal as ECGSYN/[NK]; otherwise
            `ecg = z * MV_PER_UNIT`.

    Returns:
        `Simulation` with `ecg (L,)` mV, `states (L, 3)`, `rr (L,)` s.
    """
    params = default_params() if params is None else params
    heart_rate = jnp.asarray(heart_rate, jnp.float32)
    if scale_params:
        params = scale_for_heart_rate(params, heart_rate)
    q = int(internal_factor)
    fs_internal = fs * q
    dt = 1.0 / fs_internal
    rr = rr_tachogram(key, num_samples * q, fs_internal, heart_rate, hr_std, lf_hf_ratio)
    omega = (2 * jnp.pi / rr).reshape(num_samples, q)  # (L, q) rad/s
    f = lambda s, t, w: derivatives(s, t, w, params, baseline_amplitude)  # noqa: E731

    def output_step(state, inputs):
        k, omegas = inputs
        start = state
        for j in range(q):  # q RK4 steps per output sample (unrolled, q is small)
            t = (k * q + j) * dt
            k1 = f(state, t, omegas[j])
            k2 = f(state + 0.5 * dt * k1, t + 0.5 * dt, omegas[j])
            k3 = f(state + 0.5 * dt * k2, t + 0.5 * dt, omegas[j])
            k4 = f(state + dt * k3, t + dt, omegas[j])
            state = state + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        return state, start

    state0 = jnp.asarray(INITIAL_STATE, jnp.float32)
    _, states = jax.lax.scan(output_step, state0, (jnp.arange(num_samples), omega))
    z = states[:, 2]
    if rescale:
        ecg = (z - z.min()) * 1.6 / (z.max() - z.min()) - 0.4
    else:
        ecg = z * MV_PER_UNIT
    return Simulation(ecg=ecg, states=states, rr=rr[::q])


def beat_times(fs: float = FS, length: int = BEAT_LENGTH, r_index: int = BEAT_R_INDEX) -> np.ndarray:
    """`(length,)` times in s of the beat samples relative to the R peak: `(k - r_index) / fs`."""
    return (np.arange(length) - r_index) / fs


def _steady_state_cycle(params: WaveParams, omega: Array, num_phase_steps: int) -> tuple[Array, Array]:
    """z over one cycle of the periodic steady state on the limit cycle, at `M + 1` phase points.

    Returns `(theta_grid (M + 1,) rad from -pi to pi, z (M + 1,) model units)`.
    """
    m = int(num_phase_steps)
    theta = jnp.linspace(-jnp.pi, jnp.pi, m + 1)  # (M + 1,)
    s = theta / omega  # time of each phase point, s (R at 0)
    period = 2 * jnp.pi / omega
    # z' = F(t) - z  =>  p(t) = int_{s0}^t e^{-(t - u)} F(u) du = e^{-t} int e^{u} F(u) du; |u| <= RR/2.
    integrand = jnp.exp(s) * wave_forcing(theta, params)
    h = period / m
    cumulative = jnp.concatenate([jnp.zeros(1), jnp.cumsum(0.5 * h * (integrand[1:] + integrand[:-1]))])
    particular = jnp.exp(-s) * cumulative  # z with z(s0) = 0
    z_start = particular[-1] / (1.0 - jnp.exp(-period))  # periodicity: z(s0) = z(s0 + RR)
    return theta, particular + jnp.exp(-(s - s[0])) * z_start


def simulate_beat(
    params: WaveParams,
    heart_rate,
    *,
    fs: float = FS,
    length: int = BEAT_LENGTH,
    r_index: int = BEAT_R_INDEX,
    num_phase_steps: int = 1024,
    scale_params: bool = True,
) -> Array:
    """One R-aligned ECGSYN beat in mV: `(61,)` samples at 102.4 Hz, R (theta = 0) at index 20.

    On the limit cycle (`x^2 + y^2 = 1`, where the simulator settles within a beat) the phase is
    `theta(t) = omega t` with `omega = 2 pi HR / 60`, and McSharry eq. 3 for `z` becomes linear:
    `z' = F(theta(t)) - z` with `F` the Gaussian forcing (`wave_forcing()`). Its periodic
    steady state (constant heart rate, no RR variability, no respiratory wander) is computed exactly
    up to quadrature: `z(t) = int_{-inf}^t e^{-(t-u)} F(u) du` as one cumulative trapezoid sum over
    `num_phase_steps` phase points plus the periodic initial value `p(RR) / (1 - e^{-RR})`, then
    linearly interpolated at the sample times (samples beyond half a cycle wrap into the
    neighbouring beats). No sequential loop: a vmapped batch of beats and its gradient take
    milliseconds. It matches the RK4 `simulate()` at `hr_std = 0` (tests/test_ecgsyn.py).

    Args:
        params: `WaveParams` with `(5,)` leaves at 60 bpm (scaled to `heart_rate` here
            unless `scale_params=False`). vmap for a batch.
        heart_rate: bpm (scalar, may be traced).
        fs: sampling rate in Hz (102.4, SE-Diff's). length, r_index: beat geometry (61, 20).
        num_phase_steps: quadrature points per cycle (1024: max error ~1e-4 mV).

    Returns:
        `(length,)` beat in mV (`z * MV_PER_UNIT`), differentiable in `params` and `heart_rate`.

    Source: McSharry et al. 2003 eq. 3 restricted to the limit cycle (on the limit cycle r = 1 the
    phase is theta(t) = theta_0 + int omega dt, so the z-ODE is linear given theta(t)); SE-Diff beat
    window [R-20, R+40].
    """
    heart_rate = jnp.asarray(heart_rate, jnp.float32)
    if scale_params:
        params = scale_for_heart_rate(params, heart_rate)
    omega = 2 * jnp.pi * heart_rate / 60.0
    grid, z = _steady_state_cycle(params, omega, num_phase_steps)
    phase = wrap_angle(omega * jnp.asarray(beat_times(fs, length, r_index), jnp.float32))
    return jnp.interp(phase, grid, z) * MV_PER_UNIT


def beat_phase(heart_rate, *, fs: float = FS, length: int = BEAT_LENGTH, r_index: int = BEAT_R_INDEX) -> Array:
    """`(length,)` phase angles theta (rad, wrapped) of the beat samples on the limit cycle; the
    reference trajectory is `x = cos(theta)`, `y = sin(theta)`."""
    omega = 2 * jnp.pi * jnp.asarray(heart_rate, jnp.float32) / 60.0
    return wrap_angle(omega * jnp.asarray(beat_times(fs, length, r_index), jnp.float32))


def beat_vector_field(
    beat_mv: Array,
    params: WaveParams,
    heart_rate,
    *,
    fs: float = FS,
    r_index: int = BEAT_R_INDEX,
    scale_params: bool = True,
) -> Array:
    """`f_z` of McSharry eq. 3 in mV/s along a beat: `MV_PER_UNIT F(theta_k) - h_k`.

    For SE-Diff's simulator ("Euler") loss `|(h_{k+1} - h_k)/dt - f_z(x_k, y_k, h_k; eta)|^2`
    (SE-Diff, ICLR 2026, arXiv:2511.09895, Stage 2), with `(x_k, y_k)` on the limit cycle at the
    beat's phases.

    Args:
        beat_mv: `(..., L)` beats in mV, R at index `r_index` (20), `fs` Hz.
        params: `WaveParams` at 60 bpm with `(5,)` leaves (or broadcastable).
        heart_rate: bpm.

    Returns:
        `(..., L)` mV/s.
    """
    heart_rate = jnp.asarray(heart_rate, jnp.float32)
    if scale_params:
        params = scale_for_heart_rate(params, heart_rate)
    theta = beat_phase(heart_rate, fs=fs, length=beat_mv.shape[-1], r_index=r_index)
    return MV_PER_UNIT * wave_forcing(theta, params) - beat_mv
