"""Disk margins without slycot (lqgt.disk_margins): closed forms, python-control, Doyle, a 2x2 plant.

References: Seiler, Packard & Gahinet, "An introduction to disk margins" (2020); the
spinning satellite of Zhou, Doyle & Glover (Robust and Optimal Control, §9.1) / Doyle's
lecture notes, whose loop-at-a-time margins are [0, ∞) and 90° while simultaneous
perturbations of 10% destabilise it.
"""

from __future__ import annotations

import math

import control
import numpy as np
import pytest
import torch

import lqgt
from lqgt.errors import ConfigError, ShapeError
from lqgt.margins import disk_gain_phase, mu_upper_bound

torch.set_num_threads(1)


def _disk_factor(delta: complex, skew: float) -> complex:
    """The perturbation f(δ) = (1 + (1-σ)/2 δ) / (1 - (1+σ)/2 δ) of the disk D(α, σ)."""
    return (1 + 0.5 * (1 - skew) * delta) / (1 - 0.5 * (1 + skew) * delta)


def _closed_loop_unstable(L, F: np.ndarray) -> bool:
    """Whether feedback(L F, I) is unstable for a constant complex diagonal F (D = 0 loops)."""
    s = control.ss(L)
    a, b, c = (np.asarray(M, dtype=complex) for M in (s.A, s.B, s.C))
    ev = np.linalg.eigvals(a - b @ F @ c)
    return bool(np.abs(ev).max() >= 1.0) if s.dt else bool(ev.real.max() >= 0.0)


def _satellite(a: float = 10.0):
    """P = 1/(s² + a²) [[s - a², a(s + 1)], [-a(s + 1), s - a²]] with K = I (the loop L = P)."""
    return control.ss([[0.0, a], [-a, 0.0]], np.eye(2), [[1.0, a], [-a, 1.0]], np.zeros((2, 2)))


def _doyle(sigma, q=1.0, dt=0.01):
    Ac = np.array([[1.0, 1.0], [0.0, 1.0]])
    G = np.array([[1.0], [1.0]])
    plant = lqgt.Plant.from_continuous(Ac, [[0.0], [1.0]], [[1.0, 0.0]], Wc=sigma * G @ G.T, V=[[1.0 / dt]], dt=dt)
    return plant, lqgt.lqg(plant, q * np.ones((2, 2)), [[1.0]])


# ----------------------------------------------------------------------------- closed forms

@pytest.mark.parametrize("k", [1.5, 2.0, 4.0, 10.0])
def test_first_order_unstable_plant_closed_form(k):
    """L = k/(s - 1): S - 1/2 peaks at ω = 0 with (k + 1)/(2(k - 1)), so α = 2(k-1)/(k+1) and g_min = 1/k exactly."""
    dm = lqgt.disk_margins(control.tf([k], [1.0, -1.0]))
    assert dm.stable and dm.dt is None
    assert dm.alpha == pytest.approx(2 * (k - 1) / (k + 1), rel=1e-7)
    assert dm.gain_margin[0] == pytest.approx(1.0 / k, rel=1e-6)      # the true lower gain margin
    assert dm.omega_worst < 1e-3


@pytest.mark.parametrize("skew", [-1.0, -0.5, 0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("a,k", [(1.0, 3.0), (2.0, 0.5)])
def test_first_order_stable_plant_skewed_closed_form(skew, a, k):
    """L = k/(s+a): S_σ is first order, so |S_σ| is monotone: sup = max(|1 + c|, |a + c(a+k)|/(a+k)), c = (σ-1)/2."""
    c = 0.5 * (skew - 1.0)
    peak = max(abs(1 + c), abs(a + c * (a + k)) / (a + k))
    dm = lqgt.disk_margins(control.tf([k], [1.0, a]), skew=skew)
    assert dm.alpha == pytest.approx(1.0 / peak, rel=1e-6)
    assert dm.skew == skew


@pytest.mark.parametrize("skew", [0.0, 1.0, -1.0])
def test_discrete_first_order_closed_form(skew):
    """L = b/(z - 0.5), dt = 0.1: first order in z, so the sup of |S_σ| is at z = 1 or z = -1 (Nyquist)."""
    b, dt = 0.5, 0.1
    c = 0.5 * (skew - 1.0)
    S = lambda z: 1.0 / (1.0 + b / (z - 0.5))
    peak = max(abs(S(1.0) + c), abs(S(-1.0) + c))
    dm = lqgt.disk_margins(control.tf([b], [1.0, -0.5], dt), skew=skew)
    assert dm.dt == dt
    assert dm.alpha == pytest.approx(1.0 / peak, rel=1e-9)
    assert dm.omega.max() == pytest.approx(math.pi / dt)


def test_disk_gain_phase_formulas():
    """Balanced: g = (2 ∓ α)/(2 ± α), φ = 2 arctan(α/2); skew 1: g ∈ (1/(1+α), 1/(1-α)); skew -1: (1-α, 1+α)."""
    for alpha in (0.1, 0.5, 1.0, 1.9):
        (lo, hi), _, pm = disk_gain_phase(alpha, 0.0)
        assert lo == pytest.approx((2 - alpha) / (2 + alpha)) and hi == pytest.approx((2 + alpha) / (2 - alpha))
        assert pm == pytest.approx(math.degrees(2 * math.atan(alpha / 2)))
        (lo, hi), _, _ = disk_gain_phase(alpha, 1.0)
        assert lo == pytest.approx(1 / (1 + alpha)) and hi == (pytest.approx(1 / (1 - alpha)) if alpha < 1 else math.inf)
        (lo, hi), _, pm = disk_gain_phase(alpha, -1.0)
        assert lo == pytest.approx(max(1 - alpha, 0.0)) and hi == pytest.approx(1 + alpha)   # g_lo clipped at 0
    assert disk_gain_phase(2.0, 0.0)[0][1] == math.inf and disk_gain_phase(2.0, 0.0)[2] == pytest.approx(90.0)
    (lo, hi), _, pm = disk_gain_phase(4.0 / 3.0, 0.5)                  # α(1+σ)/2 = 1: unbounded above
    assert hi == math.inf and lo == pytest.approx(1.0 / 3.0)
    (lo, hi), gm_db, pm = disk_gain_phase(0.0, 0.3)
    assert (lo, hi, gm_db, pm) == (1.0, 1.0, 0.0, 0.0)


def test_margin_is_the_destabilising_boundary_siso():
    """At the worst frequency a δ of size α·(1+ε) (right phase) destabilises; every δ of size α·(1-ε) does not."""
    L = control.tf([2.0, 1.0], [1.0, 0.5, 2.0, 0.0])          # a lightly damped loop with an integrator
    for skew in (0.0, 0.7):
        dm = lqgt.disk_margins(L, skew=skew)
        assert dm.stable
        Lw = complex(control.evalfr(L, 1j * dm.omega_worst))
        Ss = 1.0 / (1.0 + Lw) + 0.5 * (skew - 1.0)
        # det(I - S_σ δ) = 0 at δ = 1/S_σ: the loop has a pole at jω
        delta = 1.0 / Ss
        assert abs(delta) == pytest.approx(dm.alpha, rel=1e-6)
        f = _disk_factor(delta, skew)
        assert abs(1.0 + f * Lw) < 1e-6 * abs(f * Lw)
        ok = [_disk_factor(0.999 * dm.alpha * np.exp(1j * t), skew) for t in np.linspace(0, 2 * np.pi, 73)]
        assert not any(_closed_loop_unstable(L, np.array([[f]])) for f in ok)
        assert _closed_loop_unstable(L, np.array([[_disk_factor(1.0005 * delta, skew)]])) \
            or _closed_loop_unstable(L, np.array([[_disk_factor(1.01 * delta, skew)]]))


# ----------------------------------------------------------------------------- python-control

@pytest.mark.parametrize("skew", [0.0, 1.0, -1.0, 0.4])
def test_siso_matches_python_control_disk_margins(skew):
    """python-control 0.10's SISO disk_margins runs without slycot; on its grid the margins agree."""
    if not hasattr(control, "disk_margins"):
        pytest.skip("this python-control has no disk_margins")
    L = control.tf([25.0], [1.0, 10.0, 10.0, 10.0])
    w = np.logspace(-2, 2, 2001)
    alpha_c, gm_db_c, pm_c = control.disk_margins(L, w, skew=skew)
    dm = lqgt.disk_margins(L, w, skew=skew)
    # lqgt refines the worst grid point (python-control takes the grid minimum): equal to the grid's
    # resolution, and never above it
    assert dm.alpha == pytest.approx(float(alpha_c), rel=1e-4) and dm.alpha <= float(alpha_c) * (1 + 1e-12)
    assert np.min(dm.curve) == pytest.approx(float(alpha_c), rel=1e-12)       # the same curve on the grid
    assert dm.phase_margin == pytest.approx(float(pm_c), rel=1e-3)
    assert dm.gain_margin_db == pytest.approx(float(gm_db_c), rel=1e-3)
    # and exactly python-control's numbers from lqgt's alpha
    (lo, hi), gm_db, pm = disk_gain_phase(float(alpha_c), skew)
    assert gm_db == pytest.approx(float(gm_db_c), rel=1e-12) and pm == pytest.approx(float(pm_c), rel=1e-12)


def test_mimo_matches_python_control_with_slycot():
    """Multi-loop and loop-at-a-time margins against control.disk_margins (needs slycot for MIMO μ)."""
    pytest.importorskip("slycot")
    L = _satellite()
    w = np.logspace(-2, 2, 801)
    alpha_c = control.disk_margins(L, w, skew=0.0, returnall=False)[0]
    assert lqgt.disk_margins(L, w).alpha == pytest.approx(float(np.min(alpha_c)), rel=1e-3)


# ----------------------------------------------------------------------------- MIMO

def test_spinning_satellite_loop_at_a_time_huge_multi_loop_tiny():
    """Each loop alone: S_ii - 1/2 = (s - 1)/(2(s + 1)), |.| = 1/2, α = 2 (gain [0, ∞), 90°); together α ≈ 0.0998."""
    L = _satellite(10.0)
    lat = lqgt.disk_margins(L, kind="loop-at-a-time")
    np.testing.assert_allclose(lat.loop_alpha, [2.0, 2.0], rtol=1e-9)
    assert lat.alpha == pytest.approx(2.0, rel=1e-9)
    assert lat.gain_margin[0] == pytest.approx(0.0, abs=1e-9) and lat.gain_margin[1] > 1e9
    assert lat.phase_margin == pytest.approx(90.0, abs=1e-6)
    assert lat.curve.shape == (lat.omega.size, 2)
    multi = lqgt.disk_margins(L, kind="multi")
    assert multi.alpha < 0.11 and multi.curve.shape == (multi.omega.size,)
    g_lo, g_hi = multi.gain_margin
    assert 0.89 < g_lo < 1.0 < g_hi < 1.12                          # about ±10% in both channels at once
    # the D-scaled bound is μ here: a phase sweep of diag(1, e^{jθ}) reaches it from below
    s = 1j * multi.omega_worst
    Lw = np.array([[1.0, 10.0], [-10.0, 1.0]]) @ np.linalg.inv(s * np.eye(2) - np.array([[0, 10.0], [-10.0, 0]]))
    M = np.linalg.inv(np.eye(2) + Lw) - 0.5 * np.eye(2)
    lower = max(np.abs(np.linalg.eigvals(M @ np.diag([1.0, np.exp(1j * t)]))).max()
                for t in np.linspace(0, 2 * np.pi, 3601))
    assert 1.0 / multi.alpha == pytest.approx(lower, rel=1e-5)
    # a complex diagonal perturbation of size α (per channel) puts a closed-loop pole at jω_worst
    th = np.linspace(0, 2 * np.pi, 3601)
    t = th[int(np.argmax([np.abs(np.linalg.eigvals(M @ np.diag([1.0, np.exp(1j * t)]))).max() for t in th]))]
    lam = np.linalg.eigvals(M @ np.diag([1.0, np.exp(1j * t)]))
    lam_max = lam[int(np.argmax(np.abs(lam)))]
    delta = np.diag([1.0, np.exp(1j * t)]) / lam_max                   # det(I - M Δ) = 0, |δ_i| = 1/|λ|
    np.testing.assert_allclose(np.abs(np.diag(delta)), multi.alpha, rtol=1e-5)
    F = np.diag([_disk_factor(d, 0.0) for d in np.diag(delta)])
    assert abs(np.linalg.det(np.eye(2) + Lw @ F)) < 1e-4 * np.linalg.norm(Lw @ F) ** 2
    # ... while every real pair of gains inside the disk keeps the loop stable (the guarantee)
    for g1 in np.linspace(g_lo, g_hi, 9)[1:-1]:
        for g2 in np.linspace(g_lo, g_hi, 9)[1:-1]:
            assert not _closed_loop_unstable(L, np.diag([g1, g2]))
    # and 10% in opposite directions, outside the disk, destabilises (Doyle's point)
    assert _closed_loop_unstable(L, np.diag([1.1, 0.9]))


def test_mu_upper_bound_properties():
    """Bound between the spectral radius and σ̄, invariant under diagonal similarity; exact for diagonal M."""
    rng = np.random.default_rng(3)
    for m in (2, 3, 4):
        M = rng.normal(size=(m, m)) + 1j * rng.normal(size=(m, m))
        b, d = mu_upper_bound(M[None])
        b, d = float(b[0]), d[0]
        assert np.abs(np.linalg.eigvals(M)).max() <= b * (1 + 1e-9) <= np.linalg.norm(M, 2) * (1 + 1e-9)
        assert np.linalg.norm(np.diag(d) @ M @ np.diag(1 / d), 2) == pytest.approx(b, rel=1e-9)
        Dm = np.diag(rng.uniform(0.1, 10.0, m))
        assert mu_upper_bound((Dm @ M @ np.linalg.inv(Dm))[None])[0][0] == pytest.approx(b, rel=1e-4)
    assert mu_upper_bound(np.diag([1.0, -3.0j, 2.0])[None])[0][0] == pytest.approx(3.0, rel=1e-9)


def test_doyle_example_disk_margin_vanishes_and_matches_loop_margins():
    """Doyle (1978): the LQG loop's disk margin shrinks towards 0 as the noise weight σ grows."""
    alphas = []
    for sigma in (1.0, 100.0, 1e4):
        plant, design = _doyle(sigma)
        L = lqgt.loop_transfer(plant, design, at="input")
        dm = lqgt.disk_margins((plant, design), at="input")
        assert dm.at == "input" and dm.dt == plant.dt
        assert dm.alpha == pytest.approx(lqgt.loop_margins(L).disk_margin, rel=1e-6)
        out = lqgt.disk_margins((plant, design), at="output")      # SISO: the same loop, up to ordering
        assert out.alpha == pytest.approx(dm.alpha, rel=1e-6)
        alphas.append(dm.alpha)
    assert alphas[0] > alphas[1] > alphas[2] and alphas[2] < 0.1 * alphas[0]
    # the LQR loop (full state) keeps a large disk margin (|S| ≤ 1 gives α ≥ 2/3 in continuous time)
    plant, design = _doyle(1e4)
    assert lqgt.disk_margins(lqgt.lqr_loop_transfer(plant, design)).alpha > 0.6 > 10 * alphas[2]


def test_mimo_lqg_input_and_output_and_unstable_closed_loop():
    """A 2-input, 2-output discrete LQG loop: multi ≤ loop-at-a-time; a destabilised loop has α = 0."""
    rng = np.random.default_rng(0)
    A = np.array([[1.02, 0.1, 0.0], [0.0, 0.95, 0.2], [0.05, 0.0, 0.9]])
    plant = lqgt.Plant(A=A, B=rng.normal(size=(3, 2)), C=rng.normal(size=(2, 3)), W=0.1 * np.eye(3),
                       V=0.1 * np.eye(2), dt=0.1)
    design = lqgt.lqg(plant, np.eye(3), np.eye(2))
    for at in ("input", "output"):
        multi = lqgt.disk_margins((plant, design), at=at)
        lat = lqgt.disk_margins((plant, design), at=at, kind="loop-at-a-time")
        same = lqgt.disk_margins(lqgt.loop_transfer(plant, design, at=at))  # (plant, design) forms this loop
        assert multi.at == at and multi.alpha == pytest.approx(same.alpha, rel=1e-12)
        assert multi.stable and 0 < multi.alpha <= lat.alpha * (1 + 1e-9)
        assert multi.alpha <= lat.loop_alpha.min() * (1 + 1e-9)
        assert 0 < multi.omega_worst <= math.pi / plant.dt
    bad = lqgt.disk_margins(5.0 * lqgt.loop_transfer(plant, design, at="input"))
    if not bad.stable:
        assert bad.alpha == 0.0 and math.isnan(bad.omega_worst) and bad.gain_margin == (1.0, 1.0)
    L = control.tf([3.0], [1.0, 1.0]) * control.tf([1.0], [1.0, -2.0])     # 3/((s+1)(s-2)): unstable loop
    dm = lqgt.disk_margins(L)
    assert not dm.stable and dm.alpha == 0.0 and dm.phase_margin == 0.0


def test_result_is_immutable_and_arguments_are_checked():
    dm = lqgt.disk_margins(control.tf([2.0], [1.0, 1.0]))
    with pytest.raises(AttributeError):
        dm.alpha = 1.0
    with pytest.raises(ValueError):
        dm.curve[0] = 1.0
    plant, design = _doyle(1.0)
    L = lqgt.loop_transfer(plant, design)
    with pytest.raises(ConfigError, match="kind"):
        lqgt.disk_margins(L, kind="both")
    with pytest.raises(ValueError, match="skew"):
        lqgt.disk_margins(L, skew=float("nan"))
    with pytest.raises(ConfigError, match="skew"):
        lqgt.disk_margins(L, skew="big")
    with pytest.raises(ConfigError, match="L must be"):
        lqgt.disk_margins(plant)
    with pytest.raises(ConfigError, match="at must be"):
        lqgt.disk_margins((plant, design), at="middle")
    with pytest.raises(ConfigError, match="points"):
        lqgt.disk_margins(L, points=None)
    with pytest.raises(ConfigError, match="omega"):
        lqgt.disk_margins(L, omega="x")
    with pytest.raises(ConfigError, match="Nyquist"):
        lqgt.disk_margins(L, omega=[1.0, 1e6])
    with pytest.raises(ConfigError, match="L must be"):
        lqgt.disk_margins(object())
    with pytest.raises(ConfigError, match="omega"):
        lqgt.disk_margins(np.ones((5, 2, 2)))
    with pytest.raises(ShapeError, match="square"):
        lqgt.disk_margins(control.ss(np.eye(2) * -1.0, np.ones((2, 1)), np.eye(2), 0))


# ----------------------------------------------------------------------------- plot

def test_plot_disk_margin_draws_the_curve_and_the_worst_case():
    pytest.importorskip("matplotlib")
    import lqgt.plot

    L = _satellite()
    lat = lqgt.disk_margins(L, kind="loop-at-a-time")
    ax = lqgt.plot.disk_margin(lat)
    lines = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    np.testing.assert_allclose(lines[0].get_ydata(), lat.curve[lat.omega > 0, 0])
    np.testing.assert_allclose(lines[1].get_xdata(), lat.omega[lat.omega > 0])
    multi = lqgt.disk_margins(L)
    ax = lqgt.plot.disk_margin(multi, label="multi")
    curve, marker = ax.get_lines()[0], ax.get_lines()[1]
    np.testing.assert_allclose(curve.get_ydata(), multi.curve[multi.omega > 0])
    assert marker.get_xdata()[0] == multi.omega_worst and marker.get_ydata()[0] == multi.alpha
    assert ax.get_xscale() == "log"
    plant, design = _doyle(1.0)
    ax = lqgt.plot.disk_margin(lqgt.disk_margins((plant, design)))
    assert any(ln.get_label() == "Nyquist π/dt" for ln in ax.get_lines())
    assert "disk_margin" in dir(lqgt.plot)
    with pytest.raises(ConfigError, match="DiskMargins"):
        lqgt.plot.disk_margin({"alpha": 1.0})
