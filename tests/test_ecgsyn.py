"""Tests of diffusets_jax.sediff.ecgsyn (McSharry et al. 2003 ECGSYN in JAX).

Expected values come from neurokit2's independent NumPy/SciPy implementation
(`nk.ecg_simulate(method="ecgsyn")`, solve_ivp RK45), from the requested heart rate itself, from
the paper's formulas written out here (heart-rate scaling, LF/HF power ratio, peak frequencies),
from central finite differences, and from the RK4 simulation for the loop-free beat.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal

from diffusets_jax.sediff import ecgsyn

FS = ecgsyn.FS
jax_simulate = jax.jit(
    ecgsyn.simulate, static_argnames=("num_samples", "fs", "internal_factor", "scale_params", "rescale")
)


def r_peak_indices(ecg, fs=FS):
    """R peaks as the local maxima above 60 % of the range, at least 0.25 s apart."""
    ecg = np.asarray(ecg)
    height = ecg.min() + 0.6 * (ecg.max() - ecg.min())
    return scipy.signal.find_peaks(ecg, height=height, distance=int(0.25 * fs))[0]


def mean_beat(ecg, peaks, before=20, after=40):
    peaks = peaks[(peaks >= before) & (peaks + after < len(ecg))]
    return np.mean([ecg[p - before : p + after + 1] for p in peaks], axis=0)


@pytest.fixture(scope="module")
def neurokit():
    nk = pytest.importorskip("neurokit2")
    return nk


@pytest.mark.parametrize("heart_rate", [60.0, 80.0, 120.0])
def test_mean_rr_and_beat_shape_match_neurokit(neurokit, heart_rate):
    # 60 s at 102.4 Hz (RK4 at 512 Hz inside); neurokit at 512 Hz, every 5th sample = 102.4 Hz
    ours = np.asarray(jax_simulate(jax.random.PRNGKey(3), heart_rate, num_samples=6144).ecg)
    theirs = np.asarray(
        neurokit.ecg_simulate(
            duration=60, sampling_rate=512, heart_rate=heart_rate, method="ecgsyn", noise=0, random_state=3
        )
    )[::5]
    ours_peaks, theirs_peaks = r_peak_indices(ours), r_peak_indices(theirs)
    measured = 60.0 / (np.mean(np.diff(ours_peaks)) / FS)
    assert measured == pytest.approx(heart_rate, rel=0.02)
    # the reference itself meets the same tolerance (guards the measurement)
    assert 60.0 / (np.mean(np.diff(theirs_peaks)) / FS) == pytest.approx(heart_rate, rel=0.02)
    r = np.corrcoef(mean_beat(ours, ours_peaks), mean_beat(theirs, theirs_peaks))[0, 1]
    assert r > 0.99
    # the loop-free steady-state beat has the same shape as neurokit's average beat
    beat = np.asarray(ecgsyn.simulate_beat(ecgsyn.default_params(), heart_rate))
    assert np.corrcoef(beat, mean_beat(theirs, theirs_peaks))[0, 1] > 0.99
    assert int(np.argmax(beat)) == ecgsyn.BEAT_R_INDEX


def test_rr_process_spectrum_has_mayer_and_rsa_peaks():
    # McSharry eq. 2: power at 0.1 Hz (LF) and 0.25 Hz (HF) with LF/HF = sig1 / sig2 = 0.5
    n = 4096
    keys = jax.random.split(jax.random.PRNGKey(0), 8)
    rr = jax.vmap(lambda k: ecgsyn.rr_process(k, n, 75.0, hr_std=2.0))(keys)
    rr = np.asarray(rr, np.float64)
    assert np.allclose(rr.mean(1), 60.0 / 75.0, atol=1e-5)
    assert np.allclose(rr.std(1), 60.0 * 2.0 / 75.0**2, rtol=1e-3)
    power = np.mean(np.abs(np.fft.rfft(rr - rr.mean(1, keepdims=True), axis=1)) ** 2, axis=0)
    freqs = np.fft.rfftfreq(n, d=1.0)
    lf = power[(freqs > 0.05) & (freqs < 0.15)].sum()
    hf = power[(freqs > 0.2) & (freqs < 0.3)].sum()
    assert lf / hf == pytest.approx(0.5, rel=0.05)
    assert freqs[np.argmax(power)] == pytest.approx(0.25, abs=0.005)
    low_band = (freqs > 0.05) & (freqs < 0.15)
    assert freqs[low_band][np.argmax(power[low_band])] == pytest.approx(0.1, abs=0.005)


def test_heart_rate_scaling_follows_ecgsyn():
    scaled = ecgsyn.scale_for_heart_rate(ecgsyn.default_params(), 120.0)
    hrfact = np.sqrt(2.0)
    expected_theta = np.deg2rad([-70 * hrfact**0.5, -15 * hrfact, 0.0, 15 * hrfact, 100 * hrfact**0.5])
    np.testing.assert_allclose(scaled.theta, expected_theta, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(scaled.b, np.array([0.25, 0.1, 0.1, 0.1, 0.4]) * hrfact, rtol=1e-6)
    np.testing.assert_allclose(scaled.a, [1.2, -5, 30, -7.5, 0.75])


@pytest.mark.parametrize("heart_rate,period", [(76.8, 80), (96.0, 64)])
def test_steady_state_beat_matches_rk4_simulation(heart_rate, period):
    # RR = period samples exactly; constant RR and no baseline wander: after a few beats the RK4
    # trajectory is the periodic steady state that simulate_beat computes without a loop
    ecg = np.asarray(
        jax_simulate(jax.random.PRNGKey(0), heart_rate, num_samples=6144, hr_std=0.0, baseline_amplitude=0.0).ecg
    )
    beat = np.asarray(ecgsyn.simulate_beat(ecgsyn.default_params(), heart_rate))
    for k in (8, 12, 20):
        r = k * period
        np.testing.assert_allclose(ecg[r - 20 : r + 41], beat, atol=2e-3)


def test_mv_gain_gives_ecgsyn_range_at_60_bpm():
    # the default 60 bpm steady-state cycle spans ECGSYN's [-0.4, 1.2] mV = 1.6 mV; at 102.4 Hz the
    # sample phase moves by 0.4 sample per beat, so 40 beats sample the cycle on a 0.2-sample grid
    sixty = np.asarray(
        jax_simulate(jax.random.PRNGKey(0), 60.0, num_samples=6144, hr_std=0.0, baseline_amplitude=0.0).ecg
    )
    assert np.ptp(sixty[-4096:]) == pytest.approx(1.6, rel=0.005)


def test_vmap_over_heart_rates():
    rates = jnp.array([50.0, 70.0, 100.0, 140.0])
    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    batched = jax.jit(jax.vmap(lambda k, h: ecgsyn.simulate(k, h, num_samples=6144).ecg))(keys, rates)
    assert batched.shape == (4, 6144) and np.isfinite(batched).all()
    for row, rate in zip(np.asarray(batched), np.asarray(rates)):
        measured = 60.0 / (np.mean(np.diff(r_peak_indices(row))) / FS)
        assert measured == pytest.approx(rate, rel=0.03)
    single = jax_simulate(keys[2], rates[2], num_samples=6144).ecg
    np.testing.assert_allclose(batched[2], single, atol=1e-4)
    beats = jax.vmap(ecgsyn.simulate_beat, in_axes=(None, 0))(ecgsyn.default_params(), rates)
    assert beats.shape == (4, ecgsyn.BEAT_LENGTH)
    np.testing.assert_allclose(beats[1], ecgsyn.simulate_beat(ecgsyn.default_params(), 70.0), atol=1e-6)


def test_gradients_are_finite_nonzero_and_match_finite_differences():
    params = ecgsyn.default_params()

    def sim_loss(p):  # 2.5 s, RK4 at 512 Hz, every internal sample output
        return jnp.sum(
            ecgsyn.simulate(jax.random.PRNGKey(0), 70.0, p, num_samples=1280, fs=512.0, internal_factor=1).ecg ** 2
        )

    grads = jax.jit(jax.grad(sim_loss))(params)
    for name in ("theta", "a", "b"):
        g = np.asarray(getattr(grads, name))
        assert np.isfinite(g).all() and (np.abs(g) > 0).all(), (name, g)

    target = ecgsyn.simulate_beat(params._replace(theta=params.theta + 0.05, b=params.b * 1.2), 70.0)

    @jax.jit
    def beat_loss(p):
        return jnp.mean((ecgsyn.simulate_beat(p, 70.0) - target) ** 2)

    grads = jax.grad(beat_loss)(params)
    x64 = {name: np.asarray(getattr(params, name), np.float64) for name in ("theta", "a", "b")}
    for name in ("theta", "a", "b"):
        g = np.asarray(getattr(grads, name))
        assert np.isfinite(g).all() and (np.abs(g) > 0).all(), (name, g)
        for i in range(5):  # central differences, float32: check the large components
            step = 1e-3 * max(1.0, abs(x64[name][i]))
            plus, minus = dict(x64), dict(x64)
            plus[name] = x64[name].copy()
            plus[name][i] += step  # noqa: E702
            minus[name] = x64[name].copy()
            minus[name][i] -= step  # noqa: E702
            fd = beat_loss(ecgsyn.WaveParams(**{k: jnp.asarray(v, jnp.float32) for k, v in plus.items()})) - beat_loss(
                ecgsyn.WaveParams(**{k: jnp.asarray(v, jnp.float32) for k, v in minus.items()})
            )
            fd = float(fd) / (2 * step)
            if abs(fd) > 1e-3 * np.abs(g).max():
                assert g[i] == pytest.approx(fd, rel=0.05, abs=1e-6), (name, i)


def test_beat_vector_field_is_the_ode_right_hand_side():
    # along the steady-state beat, dz/dt = f_z: compare with a central difference of the beat
    params = ecgsyn.default_params()
    fine_fs = FS * 8
    beat = ecgsyn.simulate_beat(params, 75.0, fs=fine_fs, length=8 * 60 + 1, r_index=160)
    field = np.asarray(ecgsyn.beat_vector_field(beat, params, 75.0, fs=fine_fs, r_index=160))
    derivative = np.gradient(np.asarray(beat), 1.0 / fine_fs)
    scale = np.abs(derivative).max()
    np.testing.assert_allclose(field[2:-2], derivative[2:-2], atol=0.03 * scale)
