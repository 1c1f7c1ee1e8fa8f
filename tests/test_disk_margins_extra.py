"""lqgt.margins internals: μ upper bound tightness, destabilising perturbations, data input, errors.

Independent references: the complex-μ lower bound ``μ(M) = max_U ρ(M U)`` over diagonal
unitary ``U`` (a phase sweep, a lower bound for any sweep), random diagonal perturbations,
closed-loop eigenvalues of the perturbed loop, python-control's SISO ``disk_margins`` and
closed forms. See also tests/test_disk_margins.py.
"""

from __future__ import annotations

import math

import control
import numpy as np
import pytest
import torch

import lqgt
from lqgt.errors import ConfigError, NonFiniteError, ShapeError
from lqgt.margins import disk_gain_phase, disk_margins, mu_upper_bound

torch.set_num_threads(1)


def _satellite(a: float = 10.0):
    return control.ss([[0.0, a], [-a, 0.0]], np.eye(2), [[1.0, a], [-a, 1.0]], np.zeros((2, 2)))


def _sat_M(w: float, skew: float = 0.0, a: float = 10.0) -> np.ndarray:
    """S + (σ-1)/2 I of the satellite at jw, from the closed-form transfer matrix."""
    s = 1j * w
    L = np.array([[s - a * a, a * (s + 1)], [-a * (s + 1), s - a * a]]) / (s * s + a * a)
    return np.linalg.inv(np.eye(2) + L) + 0.5 * (skew - 1.0) * np.eye(2)


def _mu_lower(M: np.ndarray, grid: int = 721) -> float:
    """max over diagonal unitary U of ρ(M U) (first phase fixed): a lower bound of complex μ."""
    m = M.shape[0]
    th = np.linspace(0.0, 2 * np.pi, grid, endpoint=False)
    phases = np.stack(np.meshgrid(*([th] * (m - 1)), indexing="ij"), -1).reshape(-1, m - 1)
    U = np.concatenate([np.ones((phases.shape[0], 1)), np.exp(1j * phases)], 1)      # (g, m)
    return float(np.abs(np.linalg.eigvals(M[None] * U[:, None, :])).max())


def test_mu_bound_is_tight_against_phase_sweep_and_random_perturbations():
    """For m = 2, 3 the D-scaled bound equals μ (exact for ≤ 3 scalar blocks): the sweep reaches it from below."""
    rng = np.random.default_rng(11)
    for m, grid in ((2, 3601), (3, 181)):
        M = rng.normal(size=(5, m, m)) + 1j * rng.normal(size=(5, m, m))
        ub, d = mu_upper_bound(M)
        for i in range(5):
            lo = _mu_lower(M[i], grid)
            assert lo <= ub[i] * (1 + 1e-9)
            assert ub[i] == pytest.approx(lo, rel=2e-3 if m == 3 else 2e-6)
            # and the bound is really σ̄(D M D^-1) at the returned D
            assert np.linalg.norm(np.diag(d[i]) @ M[i] @ np.diag(1 / d[i]), 2) == pytest.approx(ub[i], rel=1e-12)
            # random diagonal perturbations with |δ| < 1/ub never make I - M Δ singular
            delta = rng.uniform(0, 1, (2000, m)) * np.exp(2j * np.pi * rng.uniform(size=(2000, m))) / ub[i]
            dets = np.linalg.det(np.eye(m)[None] - M[i][None] * delta[:, None, :] * 0.999)
            assert np.abs(dets).min() > 0


def test_satellite_multi_loop_margin_is_a_destabilising_boundary():
    """At the worst frequency, Δ = U*/λ (from the phase sweep) has |δ_i| = α and puts a closed-loop pole at jω."""
    L = _satellite()
    dm = disk_margins(L)
    assert dm.stable and 0.09 < dm.alpha < 0.11
    M = _sat_M(dm.omega_worst)
    assert 1.0 / dm.alpha == pytest.approx(_mu_lower(M, 36001), rel=1e-6)
    th = np.linspace(0, 2 * np.pi, 36001)
    rho = [np.abs(np.linalg.eigvals(M @ np.diag([1.0, np.exp(1j * t)]))).max() for t in th]
    t = th[int(np.argmax(rho))]
    U = np.diag([1.0, np.exp(1j * t)])
    lam, vec = np.linalg.eig(M @ U)
    lam = lam[np.argmax(np.abs(lam))]
    delta = np.diag(U) / lam
    np.testing.assert_allclose(np.abs(delta), dm.alpha, rtol=1e-6)
    f = (1 + 0.5 * delta) / (1 - 0.5 * delta)              # balanced disk factors, one per channel
    Acl = np.asarray(L.A) - np.asarray(L.B) @ np.diag(f) @ np.asarray(L.C)
    ev = np.linalg.eigvals(Acl)
    assert np.min(np.abs(ev - 1j * dm.omega_worst)) < 1e-4 * max(1.0, dm.omega_worst)
    # any perturbation strictly inside the disk keeps it stable (random search)
    rng = np.random.default_rng(5)
    for _ in range(400):
        dd = 0.98 * dm.alpha * rng.uniform(0, 1, 2) * np.exp(2j * np.pi * rng.uniform(size=2))
        ff = (1 + 0.5 * dd) / (1 - 0.5 * dd)
        A2 = np.asarray(L.A) - np.asarray(L.B) @ np.diag(ff) @ np.asarray(L.C)
        assert np.linalg.eigvals(A2).real.max() < 0


def test_loop_at_a_time_equals_siso_margin_of_the_broken_loop():
    """Breaking channel 0 with channel 1 closed: L_eff = 1/S_00 - 1, whose SISO disk margin is loop_alpha[0]."""
    L = _satellite()
    w = np.logspace(-2, 3, 800)                     # avoids the poles at ω = 10
    lat = disk_margins(L, w, kind="loop-at-a-time", skew=0.3)
    S00 = np.array([(_sat_M(x) + 0.5 * np.eye(2))[0, 0] for x in w])
    Leff = 1.0 / S00 - 1.0                          # the SISO loop seen at channel 0
    siso = disk_margins(Leff, w, skew=0.3)          # data input, one loop
    assert lat.loop_alpha[0] == pytest.approx(siso.alpha, rel=1e-9)
    assert lat.curve.shape == (w.size, 2)
    np.testing.assert_allclose(lat.curve[:, 0], siso.curve, rtol=1e-9)


@pytest.mark.parametrize("skew", [0.0, 0.5, -0.5])
def test_discrete_siso_matches_python_control_on_its_grid(skew):
    plant, Q, R = lqgt.plants.double_integrator()
    L = lqgt.loop_transfer(plant, lqgt.lqg(plant, Q, R))
    w = np.linspace(1e-3, math.pi / plant.dt, 3000)
    a_c, gm_c, pm_c = control.disk_margins(L, w, skew=skew)
    dm = disk_margins(L, w, skew=skew)
    assert dm.alpha == pytest.approx(float(a_c), rel=1e-9)
    assert dm.gain_margin_db == pytest.approx(float(gm_c), rel=1e-7)
    assert dm.phase_margin == pytest.approx(float(pm_c), rel=1e-7)
    # the refined default grid can only find a smaller (worse) margin, and not by much
    ref = disk_margins(L, skew=skew)
    assert ref.alpha <= dm.alpha * (1 + 1e-12) and ref.alpha == pytest.approx(dm.alpha, rel=1e-3)


def test_supremum_at_infinity_and_closed_forms():
    """L = k/(s+1), σ = -1: α = (1+k)/k at ω = 0 (T(0) = k/(1+k)); σ = 0: sup |S - 1/2| = 1/2 only as ω → ∞."""
    k = 3.0
    dm = disk_margins(control.tf([k], [1.0, 1.0]), skew=-1.0)
    assert dm.alpha == pytest.approx((1 + k) / k, rel=1e-12) and dm.omega_worst == 0.0
    assert dm.gain_margin == pytest.approx((0.0, 1 + (1 + k) / k))   # T-disk: |f - 1| ≤ α, lower end -1/k clipped
    dm = disk_margins(control.tf([k], [1.0, 1.0]))
    assert dm.alpha == pytest.approx(2.0, rel=1e-12) and dm.omega_worst == math.inf
    dm = disk_margins(control.tf([1.0], [1.0, 0.0]))                  # L = 1/s: |S - 1/2| = 1/2 everywhere
    assert dm.alpha == pytest.approx(2.0, rel=1e-9) and dm.phase_margin == pytest.approx(90.0, abs=1e-6)


def test_disk_gain_phase_agrees_with_python_control_formulas():
    for alpha in (0.05, 0.4, 1.0, 1.7):
        for skew in (-0.8, 0.0, 0.6):
            (lo, hi), gm_db, pm = disk_gain_phase(alpha, skew)
            a, b = 0.5 * alpha * (1 - skew), 0.5 * alpha * (1 + skew)
            assert lo == pytest.approx(max((1 - a) / (1 + b), 0.0))
            if b < 1:
                assert hi == pytest.approx((1 + a) / (1 - b))
                g0 = (1 - a) / (1 + b)                  # the disk's real-axis ends, unclipped (as python-control)
                c = (1 + g0 * hi) / (g0 + hi)
                assert pm == pytest.approx(math.degrees(math.acos(c)) if abs(c) < 1 else math.inf)
    assert disk_gain_phase(0.0, 0.3) == ((1.0, 1.0), 0.0, 0.0)
    assert disk_gain_phase(math.inf)[0] == (0.0, math.inf)


def test_data_and_callable_inputs_and_named_errors():
    L = _satellite()
    w = np.logspace(-1, 2, 401)                     # avoids the poles at ω = 10
    ref = disk_margins(L, w)
    resp = np.moveaxis(np.asarray(L(1j * w, squeeze=False)), -1, 0)
    assert disk_margins(resp, w).alpha == pytest.approx(ref.alpha, rel=1e-12)
    assert disk_margins(lambda om: np.moveaxis(np.asarray(L(1j * om, squeeze=False)), -1, 0), w).stable is None
    r = disk_margins(resp, w)
    assert not r.curve.flags.writeable and not r.omega.flags.writeable
    with pytest.raises(AttributeError):
        r.alpha = 1.0
    bad = resp.copy()
    bad[3, 0, 1] = np.nan
    with pytest.raises(NonFiniteError, match="NaN"):
        disk_margins(bad, w)
    with pytest.raises(ShapeError, match="square"):
        disk_margins(resp[:, :, :1], w)
    with pytest.raises(ShapeError, match="square"):
        disk_margins(control.ss(-np.eye(2), np.ones((2, 1)), np.eye(2), 0))
    with pytest.raises(ShapeError, match="k = len"):
        disk_margins(resp[:10], w)
    for sk, err in ((float("nan"), NonFiniteError), (math.inf, NonFiniteError), ("0", ConfigError),
                    (1j, ConfigError), ([0.0], ConfigError), (True, ConfigError)):
        with pytest.raises(err, match="skew"):
            disk_margins(L, w, skew=sk)
    with pytest.raises(ConfigError, match="kind"):
        disk_margins(L, w, kind="both")
    with pytest.raises(ConfigError, match="at must be"):
        disk_margins(L, w, at="middle")
    with pytest.raises(ConfigError, match="omega"):
        disk_margins(L, "x")
    with pytest.raises(NonFiniteError, match="omega"):
        disk_margins(L, [1.0, np.nan])
    with pytest.raises(ConfigError, match="points"):
        disk_margins(L, points=3)
    with pytest.raises(ConfigError, match="L must be"):
        disk_margins(resp)
    with pytest.raises(ConfigError, match="L must be"):
        disk_margins("L")
