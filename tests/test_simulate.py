"""Tests of the batched closed-loop simulator :func:`lqgt.simulate`.

Oracles used here (independent of the code under test):

* the exact stationary cost, both from :func:`lqgt.lqg_cost` and from a Lyapunov equation
  written out in this file from first principles (SPEC §2 for the predictor form; the
  current form derived below in :func:`exact_cost_current`);
* the generic step loop (estimator ``step`` calls) against the fused linear recursion;
* recursions re-evaluated in numpy on the stored trajectories (timing conventions);
* sample statistics of the recovered noises against ``W``, ``V``, ``P0``.

Statistical tolerance: Monte Carlo costs must lie within ``Z_TOL = 3.5`` standard errors of
the exact cost (the simulator reports a 1.96-sigma interval; 3.5 sigma keeps the
false-alarm rate below 5e-4 per check should a seed ever change). All seeds are fixed,
so the tests are deterministic. Each test also checks that its interval is narrow enough
to reject a wrong answer (power).
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache

import numpy as np
import pytest
import scipy.linalg
import torch

import lqgt
from lqgt.errors import ConfigError, LqgtError, ShapeError

F64 = torch.float64
#: Allowed distance of a Monte Carlo cost from the exact cost, in standard errors.
Z_TOL = 3.5
#: The simulator's interval is mean ± 1.96 standard errors.
Z95 = 1.959963984540054


# --------------------------------------------------------------------------- helpers


class Generic:
    """Delegates the estimator protocol but hides ``linear_gain``: forces the generic loop."""

    def __init__(self, est):
        self._est, self.form, self.n, self.calls = est, est.form, est.n, 0

    def init(self, batch, *, device, dtype):
        return self._est.init(batch, device=device, dtype=dtype)

    def step(self, state, y, u):
        self.calls += 1
        return self._est.step(state, y, u)


class Spy(Generic):
    """Like :class:`Generic` but keeps ``linear_gain`` (so the fused path should be taken)."""

    def linear_gain(self):
        return self._est.linear_gain()


def _np(t):
    return t.detach().cpu().numpy()


@lru_cache(maxsize=None)
def two_mass():
    return lqgt.plants.two_mass()


@lru_cache(maxsize=None)
def osc():
    return lqgt.plants.oscillator()


@lru_cache(maxsize=None)
def design(name):
    plant, Q, R = {"two_mass": two_mass, "osc": osc, "two_mass_D": two_mass_D, "osc_m0": osc_m0}[name]()
    return lqgt.lqg(plant, Q, R)


@lru_cache(maxsize=None)
def two_mass_D():
    """The two-mass plant with a feedthrough ``D`` and a non-zero initial mean."""
    p, Q, R = two_mass()
    plant = lqgt.Plant(p.A, p.B, p.C, W=p.W, V=p.V, D=[[0.5], [-0.3]], m0=[0.2, -0.1, 0.0, 0.3],
                       P0=p.P0, dt=p.dt)
    return plant, Q, R


@lru_cache(maxsize=None)
def osc_m0():
    """The oscillator with a non-zero initial mean and a correlated initial covariance."""
    p, Q, R = osc()
    plant = lqgt.Plant(p.A, p.B, p.C, W=p.W, V=p.V, m0=[1.0, -0.5], P0=[[0.5, 0.1], [0.1, 0.3]], dt=p.dt)
    return plant, Q, R


def _lyap_cost(F, G, Nz, M, Mv, V, Qz):
    """Stationary E[z'Qz z] for ξ' = Fξ + G[w; v], z = Mξ + Mv v."""
    Sigma = scipy.linalg.solve_discrete_lyapunov(F, G @ Nz @ G.T)
    cov = M @ Sigma @ M.T + Mv @ V @ Mv.T
    return float(np.sum(Qz * cov))


def exact_cost_predictor(plant, Q, R, K, L, N=None):
    """SPEC §2: F = [[A, -BK], [LC, A-BK-LC]], G = blockdiag(I, L) on ξ = [x; x̂[t|t-1]].

    A feedthrough D cancels: the observer subtracts D u from y, so F does not depend on D.
    """
    A, B, C, W, V = plant.A, plant.B, plant.C, plant.W, plant.V
    n, m, p = plant.n, plant.m, plant.p
    N = np.zeros((n, m)) if N is None else np.asarray(N, float)
    F = np.block([[A, -B @ K], [L @ C, A - B @ K - L @ C]])
    G = np.block([[np.eye(n), np.zeros((n, p))], [np.zeros((n, n)), L]])
    Nz = scipy.linalg.block_diag(W, V)
    assert max(abs(np.linalg.eigvals(F))) < 1
    M = np.block([[np.eye(n), np.zeros((n, n))], [np.zeros((m, n)), -K]])  # z = [x; u]
    Qz = np.block([[Q, N], [N.T, R]])
    return _lyap_cost(F, G, Nz, M, np.zeros((n + m, p)), V, Qz)


def exact_cost_current(plant, Q, R, K, Lf, N=None):
    """Current form on ξ = [x; x̄] (x̄ the prior), derived by hand.

    x̂ = Lf C x + (I - Lf C) x̄ + Lf v,  u = -K x̂,
    x'  = (A - BK Lf C) x - BK(I - Lf C) x̄ - BK Lf v + w,
    x̄' = (A - BK) x̂.
    """
    A, B, C, W, V = plant.A, plant.B, plant.C, plant.W, plant.V
    n, m, p = plant.n, plant.m, plant.p
    N = np.zeros((n, m)) if N is None else np.asarray(N, float)
    I = np.eye(n)
    ILC = I - Lf @ C
    Acl = A - B @ K
    F = np.block([[A - B @ K @ Lf @ C, -B @ K @ ILC], [Acl @ Lf @ C, Acl @ ILC]])
    G = np.block([[I, -B @ K @ Lf], [np.zeros((n, n)), Acl @ Lf]])
    Nz = scipy.linalg.block_diag(W, V)
    assert max(abs(np.linalg.eigvals(F))) < 1
    M = np.block([[I, np.zeros((n, n))], [-K @ Lf @ C, -K @ ILC]])
    Mv = np.vstack([np.zeros((n, p)), -K @ Lf])
    Qz = np.block([[Q, N], [N.T, R]])
    return _lyap_cost(F, G, Nz, M, Mv, V, Qz)


def burn_in_for(rho, decay=1e-8):
    """Steps after which a transient of the covariance (∝ rho^{2t}) has decayed below ``decay``."""
    assert rho < 1
    return int(math.ceil(math.log(decay) / (2 * math.log(rho))))


def closed_loop_rho(plant, K, gain, form):
    """Spectral radius of the closed loop (from this file's own F)."""
    A, B, C = plant.A, plant.B, plant.C
    if form == "predictor":
        F = np.block([[A, -B @ K], [gain @ C, A - B @ K - gain @ C]])
    else:
        ILC = np.eye(plant.n) - gain @ C
        F = np.block([[A - B @ K @ gain @ C, -B @ K @ ILC], [(A - B @ K) @ gain @ C, (A - B @ K) @ ILC]])
    return float(max(abs(np.linalg.eigvals(F))))


def assert_within_ci(res, name, exact, z=Z_TOL, max_rel_halfwidth=0.03):
    """``res.cost[name]`` within z standard errors of ``exact``, and the interval is narrow."""
    mc = res.cost[name]
    lo, hi = res.cost_ci[name]
    se = (hi - lo) / (2 * Z95)
    assert lo < mc < hi
    assert (hi - lo) / 2 < max_rel_halfwidth * exact, f"{name}: CI too wide to be a test ({lo}, {hi})"
    assert abs(mc - exact) <= z * se, f"{name}: MC {mc:.6g} ± {se:.3g} vs exact {exact:.6g} ({(mc - exact) / se:+.2f} se)"
    return se


# --------------------------------------------------------------------------- Monte Carlo vs exact


def _mc_cases():
    """Case names; :func:`_mc_setup` builds each."""
    return [
        "kalman-current",
        "kalman-predictor",
        "nonoptimal-current",
        "nonoptimal-predictor",
        "openloop-oscillator",
        "kalman-predictor-feedthrough",
        "kalman-current-crossweight",
    ]


def _mc_setup(case):
    if case == "openloop-oscillator":
        plant, Q, R = osc()
        d = design("osc")
        K, gain, form = d.K, np.zeros((plant.n, plant.p)), "predictor"
        est = lqgt.OpenLoopObserver(plant)
    elif case == "kalman-predictor-feedthrough":
        plant, Q, R = two_mass_D()
        d = design("two_mass_D")
        K, gain, form = d.K, d.L, "predictor"
        est = lqgt.KalmanFilter(plant, form="predictor")
    else:
        plant, Q, R = two_mass()
        d = design("two_mass")
        form = "current" if "current" in case else "predictor"
        if case.startswith("nonoptimal"):
            K = 0.6 * d.K
            gain = 0.5 * (d.Lf if form == "current" else d.L)
            est = lqgt.LinearObserver(plant, gain, form=form)
        else:
            K, gain = d.K, (d.Lf if form == "current" else d.L)
            est = lqgt.KalmanFilter(plant, form=form)
    N = None
    if case == "kalman-current-crossweight":
        N = np.array([[0.05], [0.0], [0.05], [0.0]])
        # [[Q, N], [N', R]] must stay PSD
        assert np.linalg.eigvalsh(np.block([[Q, N], [N.T, R]])).min() > 0
    return plant, Q, R, N, K, gain, form, est


@pytest.mark.parametrize("case", _mc_cases())
def test_mc_cost_matches_exact(case):
    plant, Q, R, N, K, gain, form, est = _mc_setup(case)
    exact_lib = lqgt.lqg_cost(plant, Q, R, K, gain, form=form, N=N)
    exact_own = (exact_cost_current if form == "current" else exact_cost_predictor)(plant, Q, R, K, gain, N)
    assert exact_lib == pytest.approx(exact_own, rel=1e-9)
    if case == "openloop-oscillator":
        # x̂ ≡ m0 = 0 so u ≡ 0 and x is AR(1): Σ = W / (1 - ρ²) for A = ρ·rotation, W = 0.1 I
        assert exact_own == pytest.approx(np.trace(Q @ plant.W) / (1 - 0.98 ** 2), rel=1e-12)
    rho = closed_loop_rho(plant, K, gain, form)
    burn = burn_in_for(rho)
    gen = Generic(est)
    res = lqgt.simulate(plant, K, {"fused": est, "generic": gen}, Q=Q, R=R, N=N, horizon=burn + 800,
                        batch=800, seed=11, burn_in=burn, store=False)
    assert gen.calls == burn + 800
    for name in ("fused", "generic"):
        assert_within_ci(res, name, exact_lib)
    # same noise, same loop: the two implementations agree far inside the CI
    assert res.cost["fused"] == pytest.approx(res.cost["generic"], rel=1e-10)


def test_mc_interval_has_power():
    """The Monte Carlo interval separates the current-form from the predictor-form cost
    (and a 20% detuned K), so the agreement tests above could fail."""
    plant, Q, R = two_mass()
    d = design("two_mass")
    burn = burn_in_for(closed_loop_rho(plant, d.K, d.Lf, "current"))
    res = lqgt.simulate(plant, d.K, {"kf": lqgt.KalmanFilter(plant, form="current")}, Q=Q, R=R,
                        horizon=burn + 800, batch=800, seed=5, burn_in=burn, store=False)
    se = assert_within_ci(res, "kf", d.cost)
    assert d.cost_predictor > d.cost
    assert abs(res.cost["kf"] - d.cost_predictor) > 2 * Z_TOL * se
    detuned = lqgt.lqg_cost(plant, Q, R, 1.5 * d.K, d.Lf, form="current")
    assert abs(res.cost["kf"] - detuned) > Z_TOL * se


def test_cost_aggregation_from_stored_trajectories():
    """cost, cost_per_trajectory and cost_ci recomputed from stored x, u (with N and burn_in)."""
    plant, Q, R = osc_m0()
    d = design("osc_m0")
    N = np.array([[0.1, 0.0], [0.0, -0.2]])
    T, B, burn = 60, 50, 17
    est = {"kf": lqgt.KalmanFilter(plant, form="current"), "gen": Generic(lqgt.KalmanFilter(plant, form="predictor"))}
    res = lqgt.simulate(plant, d.K, est, Q=Q, R=R, N=N, horizon=T, batch=B, seed=3, burn_in=burn)
    for name in est:
        x, u = _np(res.x[name]), _np(res.u[name])
        step = (np.einsum("bti,ij,btj->bt", x, Q, x) + np.einsum("bti,ij,btj->bt", u, R, u)
                + 2 * np.einsum("bti,ij,btj->bt", x, N, u))
        per = step[:, burn:].mean(1)
        np.testing.assert_allclose(_np(res.cost_per_trajectory[name]), per, rtol=1e-11, atol=1e-13)
        assert res.cost[name] == pytest.approx(per.mean(), rel=1e-11)
        half = Z95 * per.std(ddof=1) / math.sqrt(B)
        np.testing.assert_allclose(res.cost_ci[name], (per.mean() - half, per.mean() + half), rtol=1e-9)


# --------------------------------------------------------------------------- fused vs generic


def _fused_generic_case(case):
    if case == "two_mass-current":
        plant, Q, R = two_mass()
        return plant, Q, R, design("two_mass").K, lqgt.KalmanFilter(plant, form="current")
    if case == "two_mass-predictor":
        plant, Q, R = two_mass()
        return plant, Q, R, design("two_mass").K, lqgt.KalmanFilter(plant, form="predictor")
    if case == "feedthrough-predictor":
        plant, Q, R = two_mass_D()
        return plant, Q, R, design("two_mass_D").K, lqgt.KalmanFilter(plant, form="predictor")
    if case == "osc-m0-nonoptimal-current":
        plant, Q, R = osc_m0()
        d = design("osc_m0")
        return plant, Q, R, 0.5 * d.K, lqgt.LinearObserver(plant, 1.5 * d.Lf, form="current")
    if case == "osc-m0-openloop":
        plant, Q, R = osc_m0()
        return plant, Q, R, design("osc_m0").K, lqgt.OpenLoopObserver(plant)
    raise AssertionError(case)


FUSED_CASES = ["two_mass-current", "two_mass-predictor", "feedthrough-predictor",
               "osc-m0-nonoptimal-current", "osc-m0-openloop"]


def _assert_same_traj(ra, a, rb, b, atol=1e-10):
    """Trajectories ``ra.·[a]`` and ``rb.·[b]`` agree to ``atol`` (relative to their scale) and so do costs."""
    for key in ("x", "x_hat", "u", "y"):
        ta, tb = getattr(ra, key)[a], getattr(rb, key)[b]
        assert ta.shape == tb.shape
        scale = max(1.0, float(ta.abs().max()))
        err = float((ta - tb).abs().max())
        assert err <= atol * scale, f"{key}: {a} vs {b} differ by {err:.3g}"
    assert ra.cost[a] == pytest.approx(rb.cost[b], rel=1e-10, abs=1e-12)
    torch.testing.assert_close(ra.cost_per_trajectory[a], rb.cost_per_trajectory[b], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", FUSED_CASES)
def test_fused_equals_generic(case):
    plant, Q, R, K, est = _fused_generic_case(case)
    spy, gen = Spy(est), Generic(est)
    Kt = torch.tensor(K, dtype=F64)
    T = 120
    res = lqgt.simulate(plant, K, {"fused": spy, "generic": gen}, Q=Q, R=R, horizon=T, batch=64,
                        seed=7, burn_in=10, chunk=37)  # chunk 37: state carried over chunk borders
    res2 = lqgt.simulate(plant, lambda xh: -(xh @ Kt.T), {"policy": est}, Q=Q, R=R, horizon=T, batch=64,
                         seed=7, burn_in=10, chunk=37)
    assert spy.calls == 0, "an estimator with linear_gain under a static K should take the fused path"
    assert gen.calls == T
    _assert_same_traj(res, "fused", res, "generic")
    _assert_same_traj(res, "fused", res2, "policy")
    # not vacuous: the loop actually moved away from its start
    assert float(res.x["fused"][:, -1].abs().max()) > 1e-2


# --------------------------------------------------------------------------- common random numbers


def test_identical_estimators_identical_trajectories():
    plant, Q, R = two_mass()
    K = design("two_mass").K
    ests = {"a": lqgt.KalmanFilter(plant, form="current"), "b": lqgt.KalmanFilter(plant, form="current"),
            "ga": Generic(lqgt.KalmanFilter(plant, form="predictor")),
            "gb": Generic(lqgt.KalmanFilter(plant, form="predictor"))}
    res = lqgt.simulate(plant, K, ests, Q=Q, R=R, horizon=50, batch=32, seed=1)
    for a, b in (("a", "b"), ("ga", "gb")):
        for key in ("x", "x_hat", "u", "y"):
            assert torch.equal(getattr(res, key)[a], getattr(res, key)[b]), key
        assert res.cost[a] == res.cost[b]
        assert res.cost_ci[a] == res.cost_ci[b]
    assert res.names == list(ests)


def test_common_random_numbers_across_estimators():
    """Different estimators share x[:, 0], the process noise and the measurement noise."""
    plant, Q, R = two_mass_D()
    d = design("two_mass_D")
    ests = {"kf": lqgt.KalmanFilter(plant, form="predictor"),
            "open": lqgt.OpenLoopObserver(plant),
            "lo": Generic(lqgt.LinearObserver(plant, 0.5 * d.L)),
            "tv": lqgt.KalmanFilter(plant, form="predictor", steady=False)}
    res = lqgt.simulate(plant, d.K, ests, Q=Q, R=R, horizon=40, batch=16, seed=2)
    A, B, C, D = plant.A, plant.B, plant.C, plant.D
    ws, vs = {}, {}
    for name in ests:
        x, u, y = (_np(getattr(res, k)[name]) for k in ("x", "u", "y"))
        ws[name] = x[:, 1:] - x[:, :-1] @ A.T - u[:, :-1] @ B.T
        vs[name] = y - x @ C.T - u @ D.T
    ref = "kf"
    assert not np.allclose(_np(res.x["kf"][:, 1:]), _np(res.x["open"][:, 1:]))  # different loops...
    for name in ests:
        assert torch.equal(res.x[name][:, 0], res.x[ref][:, 0])  # ...same x0
        np.testing.assert_allclose(ws[name], ws[ref], atol=1e-12)  # ...same w
        np.testing.assert_allclose(vs[name], vs[ref], atol=1e-12)  # ...same v


def test_seed_reproducible_and_matters():
    plant, Q, R = osc()
    K = design("osc").K
    kw = dict(Q=Q, R=R, horizon=30, batch=8)
    r1 = lqgt.simulate(plant, K, {"kf": lqgt.KalmanFilter(plant)}, seed=4, **kw)
    r2 = lqgt.simulate(plant, K, {"kf": lqgt.KalmanFilter(plant)}, seed=4, **kw)
    r3 = lqgt.simulate(plant, K, {"kf": lqgt.KalmanFilter(plant)}, seed=5, **kw)
    assert torch.equal(r1.x["kf"], r2.x["kf"]) and torch.equal(r1.y["kf"], r2.y["kf"])
    assert not torch.equal(r1.x["kf"][:, 0], r3.x["kf"][:, 0])


# --------------------------------------------------------------------------- timing conventions


def _conv_run(form, path):
    plant, Q, R = osc_m0()
    d = design("osc_m0")
    est = lqgt.KalmanFilter(plant, form=form)
    if path == "generic":
        est = Generic(est)
    res = lqgt.simulate(plant, d.K, {"e": est}, Q=Q, R=R, horizon=150, batch=400, seed=9)
    return plant, d, res


@pytest.mark.parametrize("path", ["fused", "generic"])
@pytest.mark.parametrize("form", ["predictor", "current"])
def test_timing_conventions_exact(form, path):
    plant, d, res = _conv_run(form, path)
    A, B, C, K, m0 = plant.A, plant.B, plant.C, d.K, plant.m0
    x, xh, u, y = (_np(getattr(res, k)["e"]) for k in ("x", "x_hat", "u", "y"))
    Bt, T = x.shape[:2]
    assert x.shape == (Bt, T, 2) and xh.shape == (Bt, T, 2) and u.shape == (Bt, T, 2) and y.shape == (Bt, T, 1)
    # u[:, t] = -K x_hat[:, t]
    np.testing.assert_allclose(u, -xh @ K.T, atol=1e-12)
    if form == "predictor":
        L = d.L
        np.testing.assert_array_equal(xh[:, 0], np.broadcast_to(m0, (Bt, 2)))
        pred = xh[:, :-1] @ (A - L @ C).T + u[:, :-1] @ B.T + y[:, :-1] @ L.T
        np.testing.assert_allclose(xh[:, 1:], pred, atol=1e-11)
    else:
        Lf = d.Lf
        xbar = np.empty_like(xh)
        xbar[:, 0] = m0
        xbar[:, 1:] = xh[:, :-1] @ A.T + u[:, :-1] @ B.T
        post = xbar + (y - xbar @ C.T) @ Lf.T  # x_hat[:, t] uses y[:, t]
        np.testing.assert_allclose(xh, post, atol=1e-11)
        # and it is not the estimate from y[:, t-1] only: the innovation term matters
        assert np.abs((y - xbar @ C.T) @ Lf.T).max() > 0.1


def _cov(a, b=None):
    a = a.reshape(-1, a.shape[-1])
    b = a if b is None else b.reshape(-1, b.shape[-1])
    return (a - a.mean(0)).T @ (b - b.mean(0)) / (a.shape[0] - 1)


@pytest.mark.parametrize("path", ["fused", "generic"])
@pytest.mark.parametrize("form", ["predictor", "current"])
def test_timing_conventions_noise_statistics(form, path):
    """w = x[t+1] - A x - B u and v = y - C x - D u have covariances W and V and are white,
    independent of each other and of the current state and input."""
    plant, d, res = _conv_run(form, path)
    A, B, C, W, V = plant.A, plant.B, plant.C, plant.W, plant.V
    x, u, y = (_np(getattr(res, k)["e"]) for k in ("x", "u", "y"))
    w = x[:, 1:] - x[:, :-1] @ A.T - u[:, :-1] @ B.T
    v = y - x @ C.T
    # ~60 000 samples: relative std of a variance ≈ 0.6%; tolerance 4% is ~7 sigma
    np.testing.assert_allclose(_cov(w), W, rtol=0.04, atol=0.04 * np.abs(W).max())
    np.testing.assert_allclose(_cov(v), V, rtol=0.04)
    assert np.abs(w.mean((0, 1))).max() < 0.01 and np.abs(v.mean((0, 1))).max() < 0.01

    def corr(a, b):
        s = np.sqrt(np.outer(np.diag(_cov(a)), np.diag(_cov(b))))
        return np.abs(_cov(a, b) / s).max()

    # correlation estimates have std ≈ 1/sqrt(60 000) ≈ 0.004
    assert corr(w, x[:, :-1]) < 0.03 and corr(w, u[:, :-1]) < 0.03  # w[t] ⟂ (x[t], u[t])
    assert corr(v, x) < 0.03                                         # v[t] ⟂ x[t]
    assert corr(w, v[:, :-1]) < 0.03                                 # w[t] ⟂ v[t]
    assert corr(w[:, 1:], w[:, :-1]) < 0.03 and corr(v[:, 1:], v[:, :-1]) < 0.03  # white
    if form == "predictor":
        assert corr(v, u) < 0.03  # u[t] is computed before y[t] is measured
    else:
        assert corr(v, u) > 0.1  # current form: u[t] reacts to v[t]


def test_initial_state_distribution():
    plant, Q, R = osc_m0()
    res = lqgt.simulate(plant, design("osc_m0").K, {"kf": lqgt.KalmanFilter(plant)}, Q=Q, R=R,
                        horizon=1, batch=20000, seed=12)
    x0 = _np(res.x["kf"][:, 0])
    # std of the mean ≈ 0.005; of the covariance entries ≈ 0.005
    np.testing.assert_allclose(x0.mean(0), plant.m0, atol=0.025)
    np.testing.assert_allclose(np.cov(x0.T), plant.P0, atol=0.025)


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize("generic", [False, True])
def test_store_false_same_costs(generic):
    plant, Q, R = two_mass()
    K = design("two_mass").K
    mk = (lambda: Generic(lqgt.KalmanFilter(plant))) if generic else (lambda: lqgt.KalmanFilter(plant))
    kw = dict(Q=Q, R=R, horizon=90, batch=40, seed=8, burn_in=20, chunk=25)
    a = lqgt.simulate(plant, K, {"kf": mk(), "open": lqgt.OpenLoopObserver(plant)}, store=True, **kw)
    b = lqgt.simulate(plant, K, {"kf": mk(), "open": lqgt.OpenLoopObserver(plant)}, store=False, **kw)
    assert b.x is None and b.x_hat is None and b.u is None and b.y is None
    assert a.x is not None
    for name in ("kf", "open"):
        assert b.cost[name] == pytest.approx(a.cost[name], rel=1e-12)
        assert b.cost_ci[name] == pytest.approx(a.cost_ci[name], rel=1e-12)
        torch.testing.assert_close(b.cost_per_trajectory[name], a.cost_per_trajectory[name], rtol=1e-12, atol=0)


def test_result_metadata():
    plant, Q, R = osc()
    res = lqgt.simulate(plant, design("osc").K, {"b": lqgt.KalmanFilter(plant), "a": lqgt.OpenLoopObserver(plant)},
                        Q=Q, R=R, horizon=25, batch=3, seed=0, burn_in=5)
    assert res.names == ["b", "a"]
    np.testing.assert_allclose(res.t, np.arange(25) * plant.dt)
    assert res.settings["horizon"] == 25 and res.settings["batch"] == 3 and res.settings["burn_in"] == 5
    assert res.settings["seed"] == 0
    assert res.x["a"].dtype == F64 and res.x["a"].device.type == "cpu"
    assert res.cost_per_trajectory["a"].shape == (3,)
    one = lqgt.simulate(plant, design("osc").K, {"kf": lqgt.KalmanFilter(plant)}, Q=Q, R=R, horizon=5, batch=1)
    assert one.cost_ci["kf"] == (-math.inf, math.inf)
    assert math.isfinite(one.cost["kf"])


def test_callable_policy_nonlinear():
    plant, Q, R = osc()
    K = design("osc").K
    Kt = torch.tensor(K, dtype=F64)

    def policy(xh):
        return -torch.clamp(xh @ Kt.T, -0.3, 0.3)

    res = lqgt.simulate(plant, policy, {"kf": lqgt.KalmanFilter(plant, form="current"),
                                        "pred": lqgt.KalmanFilter(plant, form="predictor")},
                        Q=Q, R=R, horizon=200, batch=64, seed=3)
    for name in ("kf", "pred"):
        u, xh = res.u[name], res.x_hat[name]
        torch.testing.assert_close(u, policy(xh.reshape(-1, 2)).reshape(u.shape), rtol=0, atol=0)
        assert float(u.abs().max()) == pytest.approx(0.3)  # saturation was active
        assert math.isfinite(res.cost[name])
    # a saturated controller costs more than the linear one on the same noise
    lin = lqgt.simulate(plant, K, {"kf": lqgt.KalmanFilter(plant, form="current")}, Q=Q, R=R, horizon=200,
                        batch=64, seed=3)
    assert res.cost["kf"] > lin.cost["kf"]


def test_float32_cpu_cost():
    plant, Q, R = two_mass()
    d = design("two_mass")
    burn = burn_in_for(closed_loop_rho(plant, d.K, d.L, "predictor"))
    res = lqgt.simulate(plant, d.K, {"kf": lqgt.KalmanFilter(plant, form="predictor")}, Q=Q, R=R,
                        horizon=burn + 600, batch=600, seed=21, burn_in=burn, dtype=torch.float32, store=False)
    assert res.cost_per_trajectory["kf"].dtype == torch.float32
    assert_within_ci(res, "kf", d.cost_predictor, max_rel_halfwidth=0.04)
    res2 = lqgt.simulate(plant, d.K, {"kf": lqgt.KalmanFilter(plant)}, Q=Q, R=R, horizon=3, batch=2, dtype="float32")
    assert res2.x["kf"].dtype == torch.float32


# --------------------------------------------------------------------------- divergence


@pytest.mark.parametrize("generic", [False, True])
def test_unstable_loop_gives_inf_with_warning(generic):
    plant = lqgt.Plant([[2.0]], [[1.0]], [[1.0]], W=[[1.0]], V=[[1.0]])
    Q, R = np.eye(1), np.eye(1)
    good = lqgt.lqg(plant, Q, R)
    bad_K = np.array([[-1.0]])  # u = +x̂: pushes the unstable mode further
    assert lqgt.lqg_cost(plant, Q, R, bad_K, good.L, form="predictor") == math.inf
    kf = lqgt.KalmanFilter(plant, form="predictor")
    est = Generic(kf) if generic else kf
    with pytest.warns(lqgt.DivergenceWarning, match="'bad'"):
        res = lqgt.simulate(plant, bad_K, {"bad": est}, Q=Q, R=R, horizon=1500, batch=8, seed=0)
    assert res.cost["bad"] == math.inf and not math.isnan(res.cost["bad"])
    assert res.cost_ci["bad"] == (math.inf, math.inf)
    # a stable loop in the same call is not affected
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = lqgt.simulate(plant, good.K, {"bad": lqgt.OpenLoopObserver(plant), "good": est},
                            Q=Q, R=R, horizon=1500, batch=8, seed=0)
    assert res.cost["bad"] == math.inf
    assert math.isfinite(res.cost["good"])
    assert [str(r.message) for r in rec if issubclass(r.category, lqgt.DivergenceWarning)] and all(
        "'good'" not in str(r.message) for r in rec if issubclass(r.category, lqgt.DivergenceWarning))


# --------------------------------------------------------------------------- bad input


class _NoStep:
    form, n = "predictor", 2

    def init(self, batch, *, device, dtype):
        return None, torch.zeros(batch, 2, dtype=dtype, device=device)


class _BadInit:
    form, n = "predictor", 2

    def init(self, batch, *, device, dtype):
        return None, torch.zeros(batch, 3, dtype=dtype, device=device)

    def step(self, state, y, u):  # pragma: no cover - never reached
        return state, torch.zeros(y.shape[0], 2)


def _bad_inputs():
    plant, Q, R = osc()
    K = design("osc").K
    kf = lqgt.KalmanFilter(plant)
    pD, QD, RD = two_mass_D()
    p0, _, _ = two_mass()
    cases = {
        "estimators-not-dict": (dict(estimators=kf), ConfigError, "dict"),
        "estimators-list": (dict(estimators=[kf]), ConfigError, "dict"),
        "estimators-empty": (dict(estimators={}), ConfigError, "non-empty"),
        "missing-step": (dict(estimators={"ns": _NoStep()}), ConfigError, r"'ns'.*'step'"),
        "wrong-n": (dict(estimators={"big": lqgt.KalmanFilter(p0)}), ConfigError, r"n=4.*n=2"),
        "bad-init-shape": (dict(estimators={"bi": _BadInit()}), ShapeError, r"\(5, 3\)"),
        "policy-1d": (dict(K=lambda xh: -(xh @ torch.tensor(K).T)[:, 0]), ShapeError, r"policy.*\(5, 2\)"),
        "policy-numpy": (dict(K=lambda xh: -(xh.numpy() @ K.T)), ShapeError, r"policy.*ndarray"),
        "K-shape": (dict(K=np.ones((1, 2))), ShapeError, r"K.*\(1, 2\)"),
        "Q-shape": (dict(Q=np.eye(3)), ShapeError, "Q"),
        "current-with-D": (dict(plant=pD, K=design("two_mass_D").K, Q=QD, R=RD,
                                estimators={"cur": lqgt.KalmanFilter(p0, form="current")}), ShapeError, r"'cur'.*D"),
        "horizon-0": (dict(horizon=0), ConfigError, "horizon"),
        "batch-0": (dict(batch=0), ConfigError, "batch"),
        "burn_in-ge-horizon": (dict(burn_in=10), ConfigError, "burn_in"),
        "burn_in-negative": (dict(burn_in=-1), ConfigError, "burn_in"),
        "dtype-int": (dict(dtype=torch.int64), ConfigError, "dtype"),
        "dtype-half": (dict(dtype=torch.float16), ConfigError, "dtype"),
        "dtype-str": (dict(dtype="float16"), ConfigError, "dtype"),
        "plant-not-Plant": (dict(plant=(plant.A, plant.B, plant.C)), ConfigError, "Plant"),
    }
    base = dict(plant=plant, K=K, estimators={"kf": kf}, Q=Q, R=R, horizon=10, batch=5)
    return base, cases


BAD_INPUT_CASES = ["estimators-not-dict", "estimators-list", "estimators-empty", "missing-step", "wrong-n",
                   "bad-init-shape", "policy-1d", "policy-numpy", "K-shape", "Q-shape", "current-with-D",
                   "horizon-0", "batch-0", "burn_in-ge-horizon", "burn_in-negative", "dtype-int", "dtype-half",
                   "dtype-str", "plant-not-Plant"]


def test_bad_input_case_list_complete():
    assert sorted(BAD_INPUT_CASES) == sorted(_bad_inputs()[1])


@pytest.mark.parametrize("case", BAD_INPUT_CASES)
def test_bad_input_raises_clear_error(case):
    base, cases = _bad_inputs()
    override, exc, pattern = cases[case]
    kw = {**base, **override}
    plant, K, est = kw.pop("plant"), kw.pop("K"), kw.pop("estimators")
    with pytest.raises(exc, match=pattern) as info:
        lqgt.simulate(plant, K, est, **kw)
    assert isinstance(info.value, ValueError) and isinstance(info.value, LqgtError)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_clear_error():
    plant, Q, R = osc()
    with pytest.raises(ConfigError, match="cuda"):
        lqgt.simulate(plant, design("osc").K, {"kf": lqgt.KalmanFilter(plant)}, Q=Q, R=R, horizon=5,
                      batch=2, device="cuda")


def test_progress_bar_does_not_change_results():
    plant, Q, R = osc()
    K = design("osc").K
    kw = dict(Q=Q, R=R, horizon=40, batch=4, seed=6, chunk=9)
    a = lqgt.simulate(plant, K, {"kf": lqgt.KalmanFilter(plant)}, progress=True, **kw)
    b = lqgt.simulate(plant, K, {"kf": lqgt.KalmanFilter(plant)}, progress=False, **kw)
    assert torch.equal(a.x["kf"], b.x["kf"]) and a.cost == b.cost


# --------------------------------------------------------------------------- argument hygiene and reproducibility


class _WrongShapeStep:
    form, n = "predictor", 2

    def init(self, batch, *, device, dtype):
        return None, torch.zeros(batch, 2, dtype=dtype, device=device)

    def step(self, state, y, u):
        return state, torch.zeros(y.shape[0], 3, dtype=y.dtype, device=y.device)


def test_step_returning_wrong_shape_is_shape_error():
    plant, Q, R = osc()
    with pytest.raises(ShapeError, match=r"step.*\(4, 3\)"):
        lqgt.simulate(plant, design("osc").K, {"w": _WrongShapeStep()}, Q=Q, R=R, horizon=5, batch=4)


@pytest.mark.parametrize("chunk", [0, -5])
def test_bad_chunk_is_config_error(chunk):
    plant, Q, R = osc()
    with pytest.raises(ConfigError, match="chunk"):
        lqgt.simulate(plant, design("osc").K, {"kf": lqgt.KalmanFilter(plant)}, Q=Q, R=R, horizon=5, batch=4,
                      chunk=chunk)


@pytest.mark.parametrize("arg", [{"horizon": 7.5}, {"batch": 2.5}, {"burn_in": 1.5}, {"horizon": True}])
def test_non_integral_sizes_refused(arg):
    plant, Q, R = osc()
    kw = {"horizon": 10, "batch": 4, **arg}
    with pytest.raises(ConfigError):
        lqgt.simulate(plant, design("osc").K, {"kf": lqgt.KalmanFilter(plant)}, Q=Q, R=R, **kw)


def test_shorter_horizon_is_prefix_of_longer():
    plant, Q, R = osc()
    K = design("osc").K
    short = lqgt.simulate(plant, K, {"kf": lqgt.KalmanFilter(plant)}, Q=Q, R=R, horizon=100, batch=3, seed=0)
    long = lqgt.simulate(plant, K, {"kf": lqgt.KalmanFilter(plant)}, Q=Q, R=R, horizon=200, batch=3, seed=0)
    torch.testing.assert_close(short.x["kf"], long.x["kf"][:, :100], rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- noise=False and input disturbances


@pytest.mark.parametrize("form", ["predictor", "current"])
@pytest.mark.parametrize("as_callable", [False, True])
def test_disturbance_without_noise_matches_numpy_loop(form, as_callable):
    plant, Q, R = lqgt.plants.two_mass()
    plant = lqgt.Plant(plant.A, plant.B, plant.C, W=plant.W, V=plant.V, m0=[0.3, -0.2, 0.0, 0.1], dt=plant.dt)
    d_ = lqgt.lqg(plant, Q, R)
    kf = lqgt.KalmanFilter(plant, form)
    T, B = 60, 3
    rng = np.random.default_rng(1)
    dist = rng.standard_normal((B, T, plant.m))
    arg = (lambda t: torch.as_tensor(dist[:, t])) if as_callable else torch.as_tensor(dist)
    res = lqgt.simulate(plant, d_.K, {"kf": kf}, Q=Q, R=R, horizon=T, batch=B, noise=False, disturbance=arg)
    A, Bm, C, K, G = plant.A, plant.B, plant.C, d_.K, kf.gain
    for b in range(B):
        x, xh, u_prev = plant.m0.copy(), plant.m0.copy(), np.zeros(plant.m)
        started = False
        for t in range(T):
            y = C @ x
            if form == "predictor":
                u = -K @ xh
                used = xh
                xh = A @ xh + Bm @ u + G @ (y - C @ xh)
            else:
                if started:
                    xh = A @ xh + Bm @ u_prev
                xh = xh + G @ (y - C @ xh)
                started = True
                u = -K @ xh
                used = xh
                u_prev = u
            np.testing.assert_allclose(res.x["kf"][b, t].numpy(), x, atol=1e-12)
            np.testing.assert_allclose(res.x_hat["kf"][b, t].numpy(), used, atol=1e-12)
            np.testing.assert_allclose(res.u["kf"][b, t].numpy(), u, atol=1e-12)  # controller output, no d
            x = A @ x + Bm @ (u + dist[b, t])
    assert res.settings["noise"] is False and res.settings["disturbance"] is True


def test_noise_false_zero_disturbance_is_deterministic_decay():
    plant, Q, R = lqgt.plants.oscillator()
    K = lqgt.lqg(plant, Q, R).K
    res = lqgt.simulate(plant, K, {"kf": lqgt.KalmanFilter(plant)}, Q=Q, R=R, horizon=20, batch=2, noise=False)
    assert torch.count_nonzero(res.x["kf"]) == 0  # m0 = 0 and no noise: nothing moves
    assert res.cost["kf"] == 0.0


def test_disturbance_bad_shape_and_nan():
    plant, Q, R = lqgt.plants.oscillator()
    K = lqgt.lqg(plant, Q, R).K
    kw = dict(Q=Q, R=R, horizon=10, batch=2)
    with pytest.raises(ShapeError, match="disturbance has shape"):
        lqgt.simulate(plant, K, {"kf": lqgt.KalmanFilter(plant)}, disturbance=torch.zeros(2, 9, plant.m), **kw)
    with pytest.raises(lqgt.errors.NonFiniteError, match="disturbance"):
        bad = torch.zeros(2, 10, plant.m)
        bad[0, 3, 0] = float("nan")
        lqgt.simulate(plant, K, {"kf": lqgt.KalmanFilter(plant)}, disturbance=bad, **kw)
    with pytest.raises(ShapeError, match=r"disturbance\(t\)"):
        lqgt.simulate(plant, K, {"kf": lqgt.KalmanFilter(plant)}, disturbance=lambda t: torch.zeros(3), **kw)


def test_plant_must_be_a_plant():
    with pytest.raises(ConfigError, match="plant must be"):
        lqgt.simulate(object(), np.zeros((1, 2)), {"kf": None}, Q=np.eye(2), R=np.eye(1))


def test_divergence_warning_names_the_step():
    plant = lqgt.Plant([[1.5]], [[1.0]], [[1.0]], W=[[1.0]], V=[[1.0]])
    with pytest.warns(lqgt.DivergenceWarning, match=r"non-finite at step \d+"):
        res = lqgt.simulate(plant, np.zeros((1, 1)), {"ol": lqgt.OpenLoopObserver(plant)}, Q=np.eye(1), R=np.eye(1),
                            horizon=3000, batch=2, disturbance=torch.zeros(2, 3000, 1))
    assert res.cost["ol"] == math.inf
