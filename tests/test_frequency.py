"""Tests of lqgt.frequency: LQG loop transfers, margins, and the sine-sweep describing function.

Oracles: python-control's interconnect of the separately built pieces (plant, observer,
gain); the separation principle (closed-loop poles); the discrete return-difference
identity (an equality at every frequency); Doyle's 1978 closed forms; the roots of the
closed loop at the computed gain and phase margins; and, for the sine sweep, the analytic
loop transfer (the loop is linear with a Kalman filter, so the two agree to rounding).
"""

from __future__ import annotations

import math

import control
import numpy as np
import pytest
import torch

import lqgt
from lqgt.errors import ConfigError, ShapeError
from lqgt.frequency import (
    controller,
    frequency_response,
    loop_margins,
    loop_transfer,
    lqr_guaranteed_margins,
    lqr_loop_transfer,
)

FORMS = ("current", "predictor")


def _plant(prob, dt=0.1, D=None):
    return lqgt.Plant(prob["A"], prob["B"], prob["C"], W=prob["W"], V=prob["V"], D=D, dt=dt)


def _resp(sys, omega):
    """Frequency response as a complex array (k, outputs, inputs)."""
    fr = sys.frequency_response(omega, squeeze=False)
    return np.moveaxis(np.asarray(fr.complex), -1, 0)


def _interconnect_loop(plant, design, form, at):
    """The loop transfer built from separate blocks with control.interconnect (independent oracle).

    Blocks: the plant P (input ``e``, output ``y``), the observer (inputs ``y`` and the
    controller output ``u``, output the estimate used for control), and the static gain
    ``u = -K x̂``. At the input the loop is cut between ``u`` and ``e``: ``L_i = -(e -> u)``.
    At the output it is cut between ``y`` and the observer's measurement input ``r``:
    ``L_o = -(r -> y)``.
    """
    A, B, C, D = plant.A, plant.B, plant.C, plant.D
    n, m, p, dt = plant.n, plant.m, plant.p, plant.dt
    names = lambda s, k: [f"{s}{i}" for i in range(k)]
    if form == "predictor":
        L = design.L
        obs = control.ss(A - L @ C, np.hstack([L, B - L @ D]), np.eye(n), 0, dt,
                         inputs=names("r", p) + names("u", m), outputs=names("xh", n), name="obs")
    else:
        Lf = design.Lf
        I = np.eye(n)
        # state x̄ (prior); x̂ = (I - Lf C) x̄ + Lf r; x̄+ = A x̂ + B u
        obs = control.ss(A @ (I - Lf @ C), np.hstack([A @ Lf, B]), I - Lf @ C, np.hstack([Lf, np.zeros((n, m))]),
                         dt, inputs=names("r", p) + names("u", m), outputs=names("xh", n), name="obs")
    gain = control.ss([], [], [], -design.K, dt, inputs=names("xh", n), outputs=names("u", m), name="gain")
    if at == "input":
        P = control.ss(A, B, C, D, dt, inputs=names("e", m), outputs=names("r", p), name="P")
        sys = control.interconnect([P, obs, gain], inplist=names("e", m), outlist=names("u", m))
    else:
        P = control.ss(A, B, C, D, dt, inputs=names("u", m), outputs=names("y", p), name="P")
        sys = control.interconnect([P, obs, gain], inplist=names("r", p), outlist=names("y", p))
    return -sys


def _problem(gen, rng, kind, n=3, m=2, p=2):
    prob = gen.random_problem(rng, n, m, p, kind)
    return prob


# ----------------------------------------------------------------------------- LTI pieces

@pytest.mark.parametrize("kind", ["stable", "unstable", "marginal", "cross"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("at", ["input", "output"])
def test_loop_transfer_matches_interconnect(gen, rng, kind, form, at):
    prob = _problem(gen, rng, kind)
    plant = _plant(prob)
    design = lqgt.lqg(plant, prob["Q"], prob["R"], prob["N"])
    Lh = loop_transfer(plant, design, at=at, form=form)
    Lref = _interconnect_loop(plant, design, form, at)
    assert Lh.dt == plant.dt
    assert Lh.ninputs == Lh.noutputs == (plant.m if at == "input" else plant.p)
    omega = np.linspace(0.01, 0.999, 57) * math.pi / plant.dt
    a, b = _resp(Lh, omega), _resp(Lref, omega)
    assert np.abs(a - b).max() <= 1e-9 * max(1.0, np.abs(b).max())


def test_predictor_loop_with_feedthrough_matches_interconnect(gen, rng):
    prob = _problem(gen, rng, "unstable")
    plant = _plant(prob, D=0.3 * rng.standard_normal((2, 2)))
    design = lqgt.lqg(plant, prob["Q"], prob["R"])
    for at in ("input", "output"):
        omega = np.linspace(0.01, 0.99, 31) * math.pi / plant.dt
        a = _resp(loop_transfer(plant, design, at=at, form="predictor"), omega)
        b = _resp(_interconnect_loop(plant, design, "predictor", at), omega)
        assert np.abs(a - b).max() <= 1e-9 * max(1.0, np.abs(b).max())
    with pytest.raises(ShapeError, match="algebraic loop"):
        controller(plant, design, "current")


@pytest.mark.parametrize("kind", ["stable", "unstable", "marginal", "uncontrollable", "cross"])
@pytest.mark.parametrize("form", FORMS)
def test_closed_loop_poles_are_separation_poles(gen, rng, kind, form):
    prob = _problem(gen, rng, kind, n=4, m=2, p=2)
    plant = _plant(prob)
    design = lqgt.lqg(plant, prob["Q"], prob["R"], prob["N"])
    expected = np.concatenate([np.linalg.eigvals(plant.A - plant.B @ design.K),
                               np.linalg.eigvals(plant.A - design.L @ plant.C)])
    for at in ("input", "output"):
        Lh = loop_transfer(plant, design, at=at, form=form)
        cl = control.feedback(Lh, np.eye(Lh.ninputs))
        got = np.linalg.eigvals(np.asarray(cl.A))
        assert got.size == 2 * plant.n
        assert gen.match_eigs(np.sort_complex(got), np.sort_complex(expected)) <= 1e-8 * max(1.0, np.abs(expected).max())


def test_controller_sign_and_lqr_loop(gen, rng):
    """u = -Kc y: the controller's DC gain reproduces the steady state of the observer loop; the LQR
    loop closes to eig(A - BK)."""
    prob = _problem(gen, rng, "stable", n=3, m=1, p=1)
    plant = _plant(prob)
    design = lqgt.lqg(plant, prob["Q"], prob["R"])
    Kc = controller(plant, design, "predictor")
    # constant y = 1: x̂ = (I - (A - BK - LC))^{-1} L, u = -K x̂ = -Kc(1)
    xh = np.linalg.solve(np.eye(3) - (plant.A - plant.B @ design.K - design.L @ plant.C), design.L)
    np.testing.assert_allclose(np.real(Kc(1.0)), design.K @ xh, rtol=1e-10)
    Lr = lqr_loop_transfer(plant, design.K)
    cl = control.feedback(Lr, 1)
    assert gen.match_eigs(np.linalg.eigvals(np.asarray(cl.A)), np.linalg.eigvals(plant.A - plant.B @ design.K)) < 1e-10


def test_bad_arguments(gen, rng):
    prob = _problem(gen, rng, "stable", n=2, m=1, p=1)
    plant = _plant(prob)
    design = lqgt.lqg(plant, prob["Q"], prob["R"])
    with pytest.raises(ConfigError, match="at must be"):
        loop_transfer(plant, design, at="middle")
    with pytest.raises(ConfigError, match="form"):
        loop_transfer(plant, design, form="smoother")
    with pytest.raises(ConfigError, match="LQGDesign"):
        controller(plant, design.K)
    with pytest.raises(ConfigError, match="lqgt.Plant"):
        loop_transfer(plant.to_statespace(), design)
    with pytest.raises(ShapeError, match="K"):
        lqr_loop_transfer(plant, np.ones((2, 2)))


def test_frequency_functions_take_plant_and_design(gen, rng):
    """One convention: (plant, design); explicit gains by keyword; the old positional gain still works."""
    prob = _problem(gen, rng, "stable", n=2, m=1, p=1)
    plant = _plant(prob)
    design = lqgt.lqg(plant, prob["Q"], prob["R"])
    by_design = lqr_loop_transfer(plant, design)
    for other in (lqr_loop_transfer(plant, K=design.K), lqr_loop_transfer(plant, design.K),
                  lqr_loop_transfer(plant, torch.as_tensor(design.K))):
        for a, b in zip(control.ssdata(by_design), control.ssdata(other)):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ConfigError, match="not both"):
        lqr_loop_transfer(plant, design, K=design.K)
    with pytest.raises(ConfigError, match="K="):
        lqr_loop_transfer(plant)
    with pytest.raises(ShapeError, match="K"):
        lqr_loop_transfer(plant, K=np.ones((2, 2)))
    kf = lqgt.KalmanFilter(plant, "current")
    a = frequency_response(plant, design, kf, [1.0, 3.0])
    b = frequency_response(plant, design.K, kf, [1.0, 3.0])
    np.testing.assert_array_equal(a.gain, b.gain)


def test_loop_margins_points_is_validated(gen, rng):
    plant, design = _doyle(1.0)
    L = loop_transfer(plant, design)
    for bad in (None, 3.5, "400", True, 8):
        with pytest.raises(ConfigError, match="points must be an integer >= 16"):
            loop_margins(L, points=bad)
    assert loop_margins(L, points=64).stable


# ----------------------------------------------------------------------------- margins

def _spectral_radius_with_gain(L, g: complex) -> float:
    """Spectral radius of the closed loop feedback(g L, 1) for a complex gain ``g`` (SISO)."""
    s = control.ss(L)
    a, b, c, d = (np.asarray(M, dtype=complex) for M in (s.A, s.B, s.C, s.D))
    Acl = a - b @ (g * c) / (1.0 + g * d[0, 0])
    return float(np.abs(np.linalg.eigvals(Acl)).max())


def _doyle(sigma, q=1.0, dt=0.01):
    """Doyle (1978): double unstable pole, noise entering along [1; 1], measurement of x1."""
    Ac = np.array([[1.0, 1.0], [0.0, 1.0]])
    Bc = np.array([[0.0], [1.0]])
    C = np.array([[1.0, 0.0]])
    G = np.array([[1.0], [1.0]])
    # continuous measurement-noise density 1, sampled: V = 1/dt per sample
    plant = lqgt.Plant.from_continuous(Ac, Bc, C, Wc=sigma * G @ G.T, V=[[1.0 / dt]], dt=dt)
    design = lqgt.lqg(plant, q * np.ones((2, 2)), [[1.0]])
    return plant, design


@pytest.mark.parametrize("form", FORMS)
def test_loop_margins_are_exact_boundaries(form):
    """Closing the loop just inside each margin is stable, just outside it is not."""
    plant, design = _doyle(10.0)
    L = loop_transfer(plant, design, "input", form)
    mg = loop_margins(L)
    assert mg.stable and _spectral_radius_with_gain(L, 1.0) < 1
    eps = 1e-6
    for k in (mg.gain_margin, mg.gain_margin_lower):
        assert 0 < k < math.inf
        assert _spectral_radius_with_gain(L, k * (1 - eps) if k > 1 else k * (1 + eps)) < 1
        assert _spectral_radius_with_gain(L, k * (1 + eps) if k > 1 else k * (1 - eps)) > 1
    phi = math.radians(mg.phase_margin)
    radii_in = [_spectral_radius_with_gain(L, np.exp(s * 1j * phi * (1 - eps))) for s in (1, -1)]
    radii_out = [_spectral_radius_with_gain(L, np.exp(s * 1j * phi * (1 + eps))) for s in (1, -1)]
    assert max(radii_in) < 1 and max(radii_out) > 1
    # disk margin: same as python-control's on the same frequencies (SISO, skew 0)
    w = np.geomspace(1e-9, 0.999, 20000) * math.pi / plant.dt  # the worst case is at DC here
    dm, _, dpm = control.disk_margins(L, w, skew=0.0)
    assert mg.disk_margin <= dm * (1 + 1e-9)
    assert mg.disk_margin == pytest.approx(dm, rel=1e-5)
    assert mg.disk_phase_margin == pytest.approx(dpm, rel=1e-5)


@pytest.mark.filterwarnings("ignore:stability_margins:UserWarning")
def test_loop_margins_match_python_control_for_stable_open_loop():
    plant, Q, R = lqgt.plants.two_mass()
    design = lqgt.lqg(plant, Q, R)
    L = loop_transfer(plant, design, "input", "current")
    mg = loop_margins(L)
    gm, pm, sm, wpc, wgc, wms = control.stability_margins(L)
    assert mg.stable
    assert mg.gain_margin == pytest.approx(gm, rel=1e-6)
    assert mg.phase_margin == pytest.approx(abs(pm), rel=1e-6)
    assert mg.omega_gain_crossover == pytest.approx(wgc, rel=1e-6)
    assert mg.stability_margin == pytest.approx(sm, rel=1e-5)


def test_loop_margins_unstable_and_errors():
    plant, design = _doyle(1.0)
    L = loop_transfer(plant, design, "input", "current")
    bad = loop_margins(3.0 * L)  # beyond the upper gain margin 1.06
    assert not bad.stable and bad.phase_margin == 0 and bad.gain_margin_db == 0
    with pytest.raises(ShapeError, match="SISO"):
        loop_margins(control.ss(np.eye(2) * 0.5, np.eye(2), np.eye(2), 0, 0.1))
    with pytest.raises(ConfigError, match="discrete"):
        loop_margins(control.tf([1], [1, 1]))
    with pytest.raises(ConfigError, match="control.StateSpace"):
        loop_margins(np.ones(3))


@pytest.mark.parametrize("kind", ["stable", "unstable", "marginal"])
def test_discrete_return_difference_identity(gen, rng, kind):
    """(I + L)^H (R + B'XB) (I + L) = R + G^H Q G on the unit circle, hence σ_min(I + L) ≥ ρ."""
    prob = _problem(gen, rng, kind, n=3, m=2, p=1)
    plant = _plant(prob)
    design = lqgt.lqg(plant, prob["Q"], prob["R"])
    A, B = plant.A, plant.B
    M = design.R + B.T @ design.X @ B
    theta = np.linspace(1e-3, math.pi, 400)
    bound = lqr_guaranteed_margins(plant, design)
    smin = np.inf
    for th in theta:
        z = np.exp(1j * th)
        G = np.linalg.solve(z * np.eye(3) - A, B)
        F = np.eye(2) + design.K @ G
        lhs = F.conj().T @ M @ F
        rhs = design.R + G.conj().T @ design.Q @ G
        assert np.abs(lhs - rhs).max() <= 1e-9 * np.abs(rhs).max()
        smin = min(smin, np.linalg.svd(F, compute_uv=False).min())
    assert smin >= bound.rho * (1 - 1e-12)
    assert 0 < bound.rho < 1


@pytest.mark.parametrize("dt", [0.2, 0.05, 0.01])
def test_lqr_margins_meet_the_discrete_guarantee(dt):
    """SISO LQR loops: |1 + L| ≥ ρ, gains in (1/(1+ρ), 1/(1-ρ)) and PM ≥ 2 asin(ρ/2); ρ → 1 as dt → 0."""
    plant, design = _doyle(1.0, dt=dt)
    bound = lqr_guaranteed_margins(plant, design)
    mg = loop_margins(lqr_loop_transfer(plant, design))
    assert mg.stable
    assert mg.stability_margin >= bound.rho * (1 - 1e-9)
    assert mg.gain_margin >= bound.gain_margin * (1 - 1e-9)
    assert mg.gain_margin_lower <= bound.gain_margin_lower * (1 + 1e-9)
    assert mg.phase_margin >= bound.phase_margin * (1 - 1e-9)
    # B'XB = O(dt): the continuous 60° guarantee is approached
    assert 1 - bound.rho <= 3.0 * dt
    if dt <= 0.01:
        assert bound.phase_margin >= 58.0 and mg.phase_margin >= 60.0


def test_lqr_guaranteed_margins_refuses_cross_weight(gen, rng):
    prob = _problem(gen, rng, "cross", n=3, m=1, p=1)
    plant = _plant(prob)
    design = lqgt.lqg(plant, prob["Q"], prob["R"], prob["N"])
    with pytest.raises(ConfigError, match="cross weight"):
        lqr_guaranteed_margins(plant, design)


# ----------------------------------------------------------------------------- Doyle's example

SIGMAS = [0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5]


def test_doyle_gains_match_the_continuous_closed_forms():
    """K → f [1 1], f = 2 + sqrt(4 + q); L/dt → d [1; 1], d = 2 + sqrt(4 + σ) (Doyle 1978), as dt → 0."""
    for q, sigma in ((1.0, 1.0), (4.0, 10.0)):
        plant, design = _doyle(sigma, q=q, dt=0.001)
        f, d = 2 + math.sqrt(4 + q), 2 + math.sqrt(4 + sigma)
        np.testing.assert_allclose(design.K.ravel(), [f, f], rtol=3e-3)
        np.testing.assert_allclose(design.L.ravel() / plant.dt, [d, d], rtol=1e-2)


def test_doyle_lqg_margins_vanish_while_lqr_keeps_60_degrees():
    lqg_m = {form: [] for form in FORMS}
    for sigma in SIGMAS:
        plant, design = _doyle(sigma)
        for form in FORMS:
            lqg_m[form].append(loop_margins(loop_transfer(plant, design, "input", form)))
        lqr = loop_margins(lqr_loop_transfer(plant, design))
        bound = lqr_guaranteed_margins(plant, design)
        assert lqr.phase_margin >= 60.0 and lqr.phase_margin >= bound.phase_margin
        assert lqr.gain_margin_lower <= 0.5 and lqr.gain_margin > 40
        # Doyle's closed form for the upward gain margin, 1 + 1/(f d) (the DC root), at small dt
        f, d = 2 + math.sqrt(5.0), 2 + math.sqrt(4 + sigma)
        if sigma <= 100:
            assert lqg_m["current"][-1].gain_margin == pytest.approx(1 + 1 / (f * d), rel=2e-3)
    for form in FORMS:
        ms = lqg_m[form]
        assert all(m.stable for m in ms)
        for attr in ("gain_margin_db", "phase_margin", "disk_margin", "stability_margin"):
            vals = np.array([getattr(m, attr) for m in ms])
            assert np.all(np.diff(vals) < 0), (form, attr, vals)
        assert ms[0].phase_margin < 5.0 and ms[-1].phase_margin < 0.5
        assert ms[-1].gain_margin_db < 0.01 and ms[-1].disk_margin < 2e-3


# ----------------------------------------------------------------------------- sine sweep

def _analytic(plant, design, form, omega):
    return _resp(loop_transfer(plant, design, "input", form), omega)


@pytest.fixture(scope="module")
def di():
    plant, Q, R = lqgt.plants.double_integrator()
    return plant, lqgt.lqg(plant, Q, R)


@pytest.mark.parametrize("form", FORMS)
def test_sine_sweep_of_kalman_loop_matches_analytic(di, form):
    """Noise-free linear loop: the fitted first harmonic is the loop transfer to ~1e-9 (float64)."""
    plant, design = di
    omega = np.geomspace(0.3, 0.95 * math.pi / plant.dt, 9)
    res = frequency_response(plant, design.K, lqgt.KalmanFilter(plant, form), omega, amplitudes=(0.5, 4.0))
    ref = _analytic(plant, design, form, res.omega)                     # (k, 1, 1)
    assert res.gain.shape == (9, 2, 1, 1)
    for ia in range(2):
        rel = np.abs(res.gain[:, ia] / ref - 1.0)
        assert rel.max() < 1e-8, rel.ravel()
    np.testing.assert_allclose(res.sensitivity[:, 0], 1.0 / (1.0 + ref), rtol=1e-8)
    assert np.all(res.distortion < 1e-8)
    assert np.all(np.abs(res.omega / res.omega_requested - 1) <= 2.0 / res.window.max())
    assert np.all(res.window * res.omega * plant.dt == pytest.approx(2 * math.pi * res.periods, rel=1e-12))
    w, H = res.response(amplitude=1)
    np.testing.assert_array_equal(H, res.gain[:, 1, 0, 0])


def test_sine_sweep_mimo_matches_analytic():
    plant, Q, R = lqgt.plants.oscillator()
    design = lqgt.lqg(plant, Q, R)
    assert plant.m == 2
    omega = np.array([0.05, 0.3, 1.0, 2.5])
    res = frequency_response(plant, design.K, lqgt.KalmanFilter(plant, "current"), omega)
    ref = _analytic(plant, design, "current", res.omega)                 # (k, 2, 2)
    assert res.gain.shape == (4, 1, 2, 2)
    assert np.abs(res.gain[:, 0] - ref).max() <= 1e-8 * np.abs(ref).max()
    part = frequency_response(plant, design.K, lqgt.KalmanFilter(plant, "current"), omega, inputs=[1])
    assert np.all(np.isnan(part.gain))
    np.testing.assert_allclose(part.sensitivity[:, 0, :, 1], res.sensitivity[:, 0, :, 1], rtol=1e-9)


def test_sine_sweep_with_a_policy(di):
    """A callable policy u = policy(x̂) is swept like the static gain it equals (settle= is then required)."""
    plant, design = di
    Kt = torch.tensor(-design.K.T)
    omega = [0.5, 5.0]
    kf = lqgt.KalmanFilter(plant, "current")
    a = frequency_response(plant, design.K, kf, omega)
    b = frequency_response(plant, lambda xh: xh @ Kt, kf, omega, settle=a.settle)
    np.testing.assert_allclose(b.gain, a.gain, rtol=1e-12)


def test_sine_sweep_float32(di):
    plant, design = di
    omega = np.geomspace(0.3, 25.0, 5)
    res = frequency_response(plant, design.K, lqgt.KalmanFilter(plant, "predictor"), omega, dtype=torch.float32)
    ref = _analytic(plant, design, "predictor", res.omega)
    assert np.abs(res.gain[:, 0] / ref - 1).max() < 1e-3


def test_transformer_filter_describing_function(di):
    """The TF controller is not LTI: its describing function depends on the amplitude a only through
    β a² (with m0 = 0 and noise off, scaling the signals by a scales every token distance by a), and it
    approaches the analytic predictor-form curve as β a² grows."""
    plant, design = di
    omega = np.geomspace(0.3, 10.0, 5)
    H = 8

    def df(beta, amps):
        tf = lqgt.TransformerFilter(plant, beta=beta, window=H, K=design.K)
        return frequency_response(plant, design.K, tf, omega, amplitudes=amps, settle=400)

    r_lo = df(1.0, (10.0,))
    r_hi = df(100.0, (1.0,))
    np.testing.assert_allclose(r_lo.gain, r_hi.gain, rtol=1e-9, atol=1e-12)
    errs = []
    for beta in (1e2, 1e4, 1e8):
        r = df(beta, (1.0,))
        ref_r = _analytic(plant, design, "predictor", r.omega)
        errs.append(np.abs(r.gain[:, 0] / ref_r - 1).max())
    assert errs[0] > errs[1] > errs[2]
    assert errs[0] > 1e-2 and errs[2] < 1e-3


def test_sine_sweep_bad_arguments(di):
    plant, design = di
    kf = lqgt.KalmanFilter(plant, "predictor")
    nyq = math.pi / plant.dt
    with pytest.raises(ConfigError, match="Nyquist"):
        frequency_response(plant, design.K, kf, [1.0, nyq])
    with pytest.raises(ConfigError, match="Nyquist"):
        frequency_response(plant, design.K, kf, [0.0])
    with pytest.raises(ConfigError, match="amplitudes"):
        frequency_response(plant, design.K, kf, [1.0], amplitudes=(1.0, -1.0))
    with pytest.raises(ConfigError, match="periods"):
        frequency_response(plant, design.K, kf, [1.0], periods=0)
    with pytest.raises(ConfigError, match="settle"):
        frequency_response(plant, design.K, kf, [1.0], settle=-1)
    with pytest.raises(ConfigError, match="inputs"):
        frequency_response(plant, design.K, kf, [1.0], inputs=[1])
    with pytest.raises(ConfigError, match="settle= is required"):
        frequency_response(plant, lambda x: -x[:, :1], kf, [1.0])
    with pytest.raises(ConfigError, match="not stable"):
        frequency_response(plant, -design.K, kf, [1.0])
    for bad in ("x", ["a", "b"], None, {1: 2}):
        with pytest.raises(ConfigError, match="omegas"):
            frequency_response(plant, design.K, kf, bad)
    with pytest.raises(ConfigError, match="amplitudes"):
        frequency_response(plant, design.K, kf, [1.0], amplitudes="big")


def test_sine_sweep_refuses_sizes_up_front(di):
    """settle=10**12 is refused before anything is allocated, with the estimate in the message."""
    from lqgt.errors import ResourceError

    plant, design = di
    kf = lqgt.KalmanFilter(plant, "predictor")
    with pytest.raises(ResourceError, match=r"frequency_response \(1 runs x horizon 1000000000\d+ = settle 10+ .*TB"):
        frequency_response(plant, design.K, kf, [1.0], settle=10**12)
    with pytest.raises(ResourceError, match="frequency_response"):
        frequency_response(plant, design.K, kf, np.linspace(0.5, 30.0, 10**5), settle=10**6)



def _reference_loop(plant, K, estimator, d):
    """The noise-free loop with input disturbance ``d`` ``(B, T, m)``, written out step by step (float64, CPU).

    The contract of lqgt.simulate(noise=False, disturbance=d): ``x[0] = m0``, ``w = v = 0``; the plant
    receives ``u + d``, the estimator (protocol of lqgt.estimators.base) the controller output ``u``.
    Returns ``u`` ``(B, T, m)``.
    """
    B, T, m = d.shape
    f64 = lambda M: torch.tensor(np.array(M, dtype=float))
    A, Bm, C, D, Km = (f64(M) for M in (plant.A, plant.B, plant.C, plant.D, K))
    x = f64(plant.m0).expand(B, -1).clone()
    st, xh = estimator.init(B, device=torch.device("cpu"), dtype=torch.float64)
    u_prev = torch.zeros(B, m, dtype=torch.float64)
    us = torch.empty(B, T, m, dtype=torch.float64)
    for t in range(T):
        if estimator.form == "predictor":
            u = -xh @ Km.T
            y = x @ C.T + (u + d[:, t]) @ D.T
            st, xh = estimator.step(st, y, u)
        else:
            st, xh = estimator.step(st, x @ C.T, u_prev)
            u = -xh @ Km.T
            u_prev = u
        us[:, t] = u
        x = x @ A.T + (u + d[:, t]) @ Bm.T
    return us


@pytest.mark.parametrize("which", ["kalman-current", "kalman-predictor", "tf"])
def test_simulator_disturbance_hook_matches_reference_loop(di, which):
    """lqgt.simulate(noise=False, disturbance=d), which frequency_response runs, is the loop of the
    contract (tensor and callable d)."""
    plant, design = di
    est = {"kalman-current": lqgt.KalmanFilter(plant, "current"),
           "kalman-predictor": lqgt.KalmanFilter(plant, "predictor"),
           "tf": lqgt.TransformerFilter(plant, beta=30.0, window=8, K=design.K)}[which]
    d = torch.randn(3, 150, plant.m, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = _reference_loop(plant, design.K, est, d)
    kw = dict(Q=np.eye(plant.n), R=np.eye(plant.m), horizon=150, batch=3, noise=False, dtype=torch.float64)
    res = lqgt.simulate(plant, design.K, {"e": est}, disturbance=d, **kw)
    torch.testing.assert_close(res.u["e"], ref, rtol=1e-10, atol=1e-12)
    res = lqgt.simulate(plant, design.K, {"e": est}, disturbance=lambda t: d[:, t], **kw)
    torch.testing.assert_close(res.u["e"], ref, rtol=1e-10, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sine_sweep_on_cuda(di):
    """The whole sweep as one CUDA batch: float64 equals the CPU result to 1e-9 and the analytic curve;
    float32 within 1e-3 (the loop's transient and the fit are the same arithmetic in single precision)."""
    plant, design = di
    omega = np.geomspace(0.3, 0.95 * math.pi / plant.dt, 9)
    tf = lqgt.TransformerFilter(plant, beta=1e4, window=8, K=design.K)
    for est in (lqgt.KalmanFilter(plant, "current"), tf):
        cpu = frequency_response(plant, design.K, est, omega, amplitudes=(1.0, 3.0))
        gpu = frequency_response(plant, design.K, est, omega, amplitudes=(1.0, 3.0), device="cuda")
        ok = cpu.distortion[:, :, 0] < 1e-6           # the periodic responses (all, for the Kalman loop)
        assert np.abs(gpu.gain - cpu.gain)[ok].max() <= 1e-9 * np.abs(cpu.gain)[ok].max()
    res = frequency_response(plant, design.K, lqgt.KalmanFilter(plant, "current"), omega, device="cuda",
                             dtype=torch.float32)
    ref = _analytic(plant, design, "current", res.omega)
    assert np.abs(res.gain[:, 0] / ref - 1).max() < 1e-3
