"""Parity with python-control where lqgt mirrors it, and the robustness classes of issue 16.

Sections: (A) ``dare``/``dlqr``/``dlqe``/``lqg`` call forms and return orders against
python-control 0.10; (B) numerical classes found by fuzzing (tiny solutions, scale-free
definiteness, unit-circle modes the weight cannot see, torch tensors, LQG costs of nearly
marginal and badly scaled problems, error classes); (C) argument validation of the
simulation plumbing (seed, device, horizon, memory).
"""

from __future__ import annotations

import math

import control
import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

import lqgt
from lqgt import errors as E
from lqgt.riccati import _residual


def _gdare_residual(A, B, Q, R, S, E_, X) -> float:
    """Relative residual of the generalised DARE ``E'XE = A'XA - (A'XB + S)(R + B'XB)^-1(B'XA + S') + Q``."""
    T = B.T @ X @ A + S.T
    TGT = T.T @ np.linalg.solve(R + B.T @ X @ B, T)
    AXA, EXE = A.T @ X @ A, E_.T @ X @ E_
    den = sum(float(np.abs(M).max()) for M in (AXA, TGT, Q, EXE))
    return float(np.abs(AXA - TGT + Q - EXE).max()) / den


def _match_eigs(a, b) -> float:
    """Largest distance of a one-to-one matching of two eigenvalue lists."""
    from scipy.optimize import linear_sum_assignment

    a, b = np.asarray(a, complex), np.asarray(b, complex)
    D = np.abs(a[:, None] - b[None, :])
    r, c = linear_sum_assignment(D)
    return float(D[r, c].max())


def _random_lq(rng, n, m):
    A = rng.standard_normal((n, n)) / math.sqrt(n) * 1.2
    B = rng.standard_normal((n, m))
    G = rng.standard_normal((n, n))
    return A, B, G @ G.T / n + 0.1 * np.eye(n), np.eye(m) * rng.uniform(0.5, 2.0)


# =========================================================================== (A) parity


@pytest.mark.parametrize("n,m", [(1, 1), (3, 1), (3, 2), (6, 3)])
def test_dare_returns_x_eigs_gain_in_python_control_order(n, m):
    """Regression: ``X, L, G = lqgt.dare(A, B, Q, R)`` with n = 3 silently unpacked the rows of X."""
    rng = np.random.default_rng(n * 10 + m)
    A, B, Q, R = _random_lq(rng, n, m)
    X, L, G = lqgt.dare(A, B, Q, R)
    Xc, Lc, Gc = control.dare(A, B, Q, R)
    assert X.shape == (n, n) and L.shape == (n,) and G.shape == (m, n)
    assert np.allclose(X, Xc, rtol=1e-9, atol=1e-12 * np.abs(Xc).max())
    assert np.allclose(G, Gc, rtol=1e-9, atol=1e-12 * np.abs(Gc).max())
    assert _match_eigs(L, Lc) <= 1e-9
    assert _match_eigs(L, np.linalg.eigvals(A - B @ G)) <= 1e-12
    # the same gain and X as dlqr, whose order is (K, X, E)
    K, Xr, Er = lqgt.dlqr(A, B, Q, R)
    assert np.allclose(G, K, rtol=1e-12, atol=1e-14) and np.allclose(X, Xr) and _match_eigs(L, Er) <= 1e-12


# python-control's own mateqn tests (0.10): indefinite Q, and the generalised form with S and E
MATEQN = {
    "Q indefinite": dict(A=[[1.0, 0.0], [-1.0, 1.0]], B=[[1.0], [0.0]], Q=[[0.0, 1.0], [1.0, 1.0]], R=2.0),
    "Q PSD, S=0": dict(A=[[-0.6, 0.0], [-0.1, -0.4]], B=[[2.0, 1.0], [0.0, 1.0]], Q=[[2.0, 1.0], [1.0, 0.0]],
                       R=np.eye(2)),
    "S and E (test_dare_g)": dict(A=[[-0.6, 0.0], [-0.1, -0.4]], B=[[1.0, 5.0], [2.0, 4.0]],
                                  Q=[[2.0, 1.0], [1.0, 3.0]], R=np.eye(2), S=[[1.0, 0.0], [2.0, 0.0]],
                                  E=[[2.0, 1.0], [1.0, 2.0]]),
    "S and E (test_dare_g2)": dict(A=[[-0.6, 0.0], [-0.1, -0.4]], B=[[1.0], [2.0]], Q=[[2.0, 1.0], [1.0, 3.0]],
                                   R=1.0, S=[[1.0], [2.0]], E=[[2.0, 1.0], [1.0, 2.0]]),
}


@pytest.mark.parametrize("case", list(MATEQN))
def test_dare_solves_python_controls_indefinite_and_generalised_cases(case):
    kw = {k: np.atleast_2d(np.asarray(v, float)) for k, v in MATEQN[case].items()}
    X, L, G = lqgt.dare(**kw)
    Xc, Lc, Gc = control.dare(kw["A"], kw["B"], kw["Q"], kw["R"], kw.get("S"), kw.get("E"))
    A, B, Q, R = kw["A"], kw["B"], kw["Q"], kw["R"]
    S = kw.get("S", np.zeros(B.shape))
    E_ = kw.get("E", np.eye(A.shape[0]))
    assert _gdare_residual(A, B, Q, R, S, E_, X) <= 1e-13
    assert np.allclose(X, Xc, rtol=1e-9, atol=1e-12) and np.allclose(G, Gc, rtol=1e-9, atol=1e-12)
    assert np.allclose(G, np.linalg.solve(B.T @ X @ B + R, B.T @ X @ A + S.T))
    gen_eigs = scipy.linalg.eigvals(A - B @ G, E_)
    assert _match_eigs(L, gen_eigs) <= 1e-10 and _match_eigs(L, Lc) <= 1e-9
    assert np.max(np.abs(L)) < 1.0


def test_dare_refuses_singular_E_and_dlqr_keeps_the_psd_requirement():
    A, B, Q = np.array([[1.0, 0.0], [-1.0, 1.0]]), np.array([[1.0], [0.0]]), np.array([[0.0, 1.0], [1.0, 1.0]])
    with pytest.raises(E.RiccatiError, match=r"E is singular.*nonsingular E"):
        lqgt.dare(A, B, np.eye(2), [[1.0]], E=[[1.0, 1.0], [1.0, 1.0]])
    X, _, _ = lqgt.dare(A, B, Q, [[2.0]])  # indefinite Q: dare solves it
    assert _residual(A, B, Q, np.array([[2.0]]), np.zeros((2, 1)), X) <= 1e-13
    with pytest.raises(E.NotPositiveDefiniteError, match=r"Q must be positive semidefinite.*dlqr.*dare solves indefinite"):
        lqgt.dlqr(A, B, Q, [[2.0]])
    A, B = np.diag([0.5, 0.7]), np.eye(2)
    with pytest.raises(E.NotPositiveDefiniteError, match=r"\[\[Q, N\], \[N', R\]\].*dlqr needs a nonnegative cost"):
        lqgt.dlqr(A, B, np.eye(2), np.eye(2), 3 * np.eye(2))
    plant = lqgt.Plant(A, B, np.eye(2), W=np.eye(2), V=np.eye(2))
    with pytest.raises(E.NotPositiveDefiniteError, match=r"Q must be positive semidefinite.*LQG cost"):
        lqgt.lqg(plant, Q, np.eye(2))
    # dare's R defaults to the identity, as in python-control
    assert np.allclose(lqgt.dare(A, B, np.eye(2))[0], lqgt.dare(A, B, np.eye(2), np.eye(2))[0])


def test_dlqe_python_control_forms():
    rng = np.random.default_rng(3)
    n, k, p = 4, 2, 2
    A = rng.standard_normal((n, n)) / 2
    G = rng.standard_normal((n, k))
    C = rng.standard_normal((p, n))
    QN, RN = np.diag([1.0, 0.3]), np.diag([0.5, 2.0])
    L5, P5, E5 = lqgt.dlqe(A, G, C, QN, RN)
    Lc, Pc, Ec = control.dlqe(A, G, C, QN, RN)
    L4, P4, E4 = lqgt.dlqe(A, C, G @ QN @ G.T, RN)
    for ours in ((L5, P5), (L4, P4)):
        assert np.allclose(ours[0], Lc, rtol=1e-9, atol=1e-12) and np.allclose(ours[1], Pc, rtol=1e-9, atol=1e-12)
    assert _match_eigs(E5, Ec) <= 1e-9 and _match_eigs(E5, E4) <= 1e-12
    # dlqe(sys, QN, RN): python-control takes the noise input G from sys.B
    sys = control.ss(A, G, C, 0, 0.1)
    Ls, Ps, _ = lqgt.dlqe(sys, QN, RN)
    Lcs, Pcs, _ = control.dlqe(sys, QN, RN)
    assert np.allclose(Ls, Lcs, rtol=1e-9, atol=1e-12) and np.allclose(Ps, Pcs, rtol=1e-9, atol=1e-12)
    # errors name the form
    with pytest.raises(E.ShapeError, match=r"QN has shape \(3, 3\), expected \(2, 2\)"):
        lqgt.dlqe(A, G, C, np.eye(3), RN)
    with pytest.raises(E.NotPositiveDefiniteError, match="RN must be positive definite"):
        lqgt.dlqe(A, G, C, QN, np.zeros((2, 2)))
    with pytest.raises(E.ConfigError, match=r"needs the measurement-noise covariance V.*dlqe\(A, G, C, QN, RN\)"):
        lqgt.dlqe(A, C, np.eye(n))
    with pytest.raises(E.ConfigError, match="continuous-time.*lqgt.dlqe\\(A, C, W, V\\)"):
        lqgt.dlqe(control.ss(A, G, C, 0), QN, RN)
    with pytest.raises(E.ConfigError, match="takes 3 arguments"):
        lqgt.dlqe(sys, QN, RN, RN)


def test_dlqr_accepts_a_discrete_statespace_and_refuses_a_continuous_one():
    rng = np.random.default_rng(4)
    A, B, Q, R = _random_lq(rng, 3, 2)
    N = 0.05 * rng.standard_normal((3, 2))
    sys = control.ss(A, B, np.eye(3), 0, 0.05)
    for args in ((Q, R), (Q, R, N)):
        K, X, Ecl = lqgt.dlqr(sys, *args)
        Kc, Xc, Ec = control.dlqr(sys, *args)
        assert np.allclose(K, Kc, rtol=1e-9, atol=1e-12) and np.allclose(X, Xc, rtol=1e-9, atol=1e-12)
        assert _match_eigs(Ecl, Ec) <= 1e-9
    with pytest.raises(E.ConfigError, match=r"dlqr needs a discrete-time system.*continuous-time.*c2d"):
        lqgt.dlqr(control.ss(A, B, np.eye(3), 0), Q, R)
    with pytest.raises(E.ConfigError, match=r"control.ss\(sys\)"):
        lqgt.dlqr(control.tf([1.0], [1.0, -0.5], 0.1), [[1.0]], [[1.0]])
    with pytest.raises(E.ConfigError, match="needs the input weight R"):
        lqgt.dlqr(A, B, Q)


def test_lqg_with_a_statespace_points_to_from_statespace():
    sys = control.ss([[0.5]], [[1.0]], [[1.0]], 0, 0.1)
    with pytest.raises(E.ShapeError, match=r"control\.StateSpace.*lqgt\.Plant\.from_statespace\(sys, W=W, V=V\)"):
        lqgt.lqg(sys, [[1.0]], [[1.0]])
    plant = lqgt.Plant.from_statespace(sys, W=[[1.0]], V=[[1.0]])  # the suggested call works
    assert math.isfinite(lqgt.lqg(plant, [[1.0]], [[1.0]]).cost)


# =========================================================================== (B) robustness


def test_tiny_solutions_are_accurate_relative_to_their_scale():
    """Regressions from fuzzing: both were off by 12.6% and 7e-7 (absolute stopping tests)."""
    L, P, _ = lqgt.dlqe([[-0.708]], [[-1119000.0]], [[1.009e-13]], [[0.6909]])
    Ps = scipy.linalg.solve_discrete_are(np.array([[-0.708]]), np.array([[-1119000.0]]),
                                         np.array([[1.009e-13]]), np.array([[0.6909]]))
    assert abs(P[0, 0] / Ps[0, 0] - 1.0) <= 1e-10
    _, P, _ = lqgt.dlqe([[-1.0]], [[-1e6]], [[1e-12]], [[1.0]])
    assert abs(P[0, 0] / ((1 + math.sqrt(5)) / 2 * 1e-12) - 1.0) <= 1e-10


@pytest.mark.parametrize("scale", [1e-14, 1e-8, 1.0, 1e8, 1e14])
def test_solutions_scale_exactly_with_the_weights(scale):
    """X(sQ, sR) = s X(Q, R) and P(sW, sV) = s P(W, V): checks the relative residual and stopping tests."""
    rng = np.random.default_rng(7)
    A, B, Q, R = _random_lq(rng, 5, 2)
    C = rng.standard_normal((2, 5))
    K1, X1, _ = lqgt.dlqr(A, B, Q, R)
    Ks, Xs, _ = lqgt.dlqr(A, B, scale * Q, scale * R)
    assert np.abs(Xs / scale - X1).max() <= 1e-10 * np.abs(X1).max()
    assert np.abs(Ks - K1).max() <= 1e-10 * np.abs(K1).max()
    L1, P1, _ = lqgt.dlqe(A, C, Q, R)
    Ls, Ps, _ = lqgt.dlqe(A, C, scale * Q, scale * R)
    assert np.abs(Ps / scale - P1).max() <= 1e-10 * np.abs(P1).max()
    assert np.abs(Ls - L1).max() <= 1e-10 * np.abs(L1).max()


def test_definiteness_is_scale_free():
    A, B = np.array([[0.5]]), np.array([[1.0]])
    with pytest.raises(E.NotPositiveDefiniteError, match="Q must be positive semidefinite"):
        lqgt.dlqr(A, B, [[-5e-13]], [[1.0]])
    with pytest.raises(E.NotPositiveDefiniteError, match="W must be positive semidefinite"):
        lqgt.Plant(A, B, [[1.0]], W=[[-5e-13]], V=[[1.0]])
    K, X, _ = lqgt.dlqr(A, B, [[1.0]], [[1e-12]])  # a valid, small weight
    Xs = scipy.linalg.solve_discrete_are(A, B, np.eye(1), np.array([[1e-12]]))
    assert abs(X[0, 0] / Xs[0, 0] - 1.0) <= 1e-10
    lqgt.Plant(A, B, [[1.0]], W=[[1.0]], V=[[1e-12]])
    # the joint weight, when N is given (fuzzing reproducer: accepted before, Q - N R^-1 N' < 0)
    with pytest.raises(E.NotPositiveDefiniteError, match=r"\[\[Q, N\], \[N', R\]\] must be positive semidefinite"):
        lqgt.dlqr(np.diag([0.5, 0.5]), [[1.0], [1.0]], np.diag([1e-3, 1e15]), [[2.44]], [[-16.67], [0.0]])
    plant = lqgt.Plant(np.diag([0.5, 0.5]), [[1.0], [1.0]], np.eye(2), W=np.eye(2), V=np.eye(2))
    with pytest.raises(E.NotPositiveDefiniteError, match=r"\[\[Q, N\], \[N', R\]\]"):
        lqgt.lqg(plant, np.diag([1e-3, 1e15]), [[2.44]], [[-16.67], [0.0]])
    # a wide-range but PSD joint weight is accepted
    K, X, _ = lqgt.dlqr(np.diag([0.5, 0.5]), [[1.0], [1.0]], np.diag([1e-3, 1e15]), [[2.44]], [[0.04], [0.0]])
    assert np.all(np.isfinite(K))


def _rotation_problem(theta, n, seed, blind_rot: bool = True):
    A0 = np.zeros((n, n))
    A0[:2, :2] = [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]]
    for k in range(2, n):
        A0[k, k] = 0.5 if k % 2 else -0.3
    W0 = np.diag([0.0, 0.0] + [1.0] * (n - 2)) if blind_rot else np.eye(n)
    T = scipy.stats.ortho_group.rvs(n, random_state=seed)
    W = T @ W0 @ T.T
    return T @ A0 @ T.T, 0.5 * (W + W.T), np.ones((1, n)) @ T.T


@pytest.mark.parametrize("theta", [0.1, 0.7, 2.0, math.pi / 2])
def test_unit_circle_modes_invisible_to_the_weight_are_refused(theta):
    """Fuzzing: a rotation block with W (or Q) blind to it, in a random orthogonal basis, was
    accepted in 4 of 6 orientations with rho(A - LC) = 1 - 1e-9. Now every orientation raises."""
    for seed in range(6):
        A, W, C = _rotation_problem(theta, 3 + seed % 2, seed)
        with pytest.raises(E.NotStabilizableError, match=r"\(A, W\^\(1/2\)\)|unreachable mode on the unit circle"):
            lqgt.dlqe(A, C, W, [[1.0]])
        with pytest.raises(E.NotDetectableError, match="unobservable mode on the unit circle"):
            lqgt.dlqr(A, C.T, W, [[1.0]])
    # a weight that does see the rotation (however weakly) is a valid problem: stabilizing
    A, W, C = _rotation_problem(theta, 3, 0, blind_rot=False)
    L, P, Ecl = lqgt.dlqe(A, C, 1e-4 * W, [[1.0]])
    assert np.max(np.abs(Ecl)) < 1.0 - 1e-6


def test_torch_tensors_that_require_grad_are_accepted():
    A = torch.tensor([[1.1, 0.2], [0.0, 0.9]], dtype=torch.float64, requires_grad=True)
    B = torch.tensor([[0.0], [1.0]], requires_grad=True)
    Q = torch.eye(2, requires_grad=True)
    K, X, _ = lqgt.dlqr(A, B, Q, torch.ones(1, 1, requires_grad=True))
    Kn, Xn, _ = lqgt.dlqr(A.detach().numpy(), B.detach().numpy(), np.eye(2), [[1.0]])
    assert np.allclose(K, Kn, rtol=1e-12) and np.allclose(X, Xn, rtol=1e-12)
    plant = lqgt.Plant(A, B, torch.tensor([[1.0, 0.0]], requires_grad=True), W=0.1 * Q, V=torch.ones(1, 1))
    assert np.allclose(plant.A, A.detach().numpy()) and isinstance(plant.A, np.ndarray)
    L, P, _ = lqgt.dlqe(A, plant.C, plant.W, plant.V)
    assert np.all(np.isfinite(L))


def test_lqg_costs_agree_with_the_lyapunov_cost_including_feedthrough():
    """design.cost = tr(XW) + tr(K'(R+B'XB)K Pf) must equal the augmented-loop Lyapunov cost;
    with D != 0 it is finite and equal to the cost without D (docs/lqg.md says so)."""
    plant, Q, R = lqgt.plants.two_mass()
    d = lqgt.lqg(plant, Q, R)
    assert d.cost == pytest.approx(lqgt.lqg_cost(plant, Q, R, d.K, d.Lf, form="current"), rel=1e-10)
    assert d.cost_predictor == pytest.approx(lqgt.lqg_cost(plant, Q, R, d.K, d.L, form="predictor"), rel=1e-10)
    assert 0 < d.cost < d.cost_predictor
    D = 0.3 * np.ones((plant.p, plant.m))
    pd = lqgt.Plant(plant.A, plant.B, plant.C, W=plant.W, V=plant.V, D=D, dt=plant.dt)
    dd = lqgt.lqg(pd, Q, R)
    assert math.isfinite(dd.cost) and dd.cost == pytest.approx(d.cost, rel=1e-12)
    assert dd.cost_predictor == pytest.approx(lqgt.lqg_cost(pd, Q, R, dd.K, dd.L, form="predictor"), rel=1e-9)


def test_lqg_nearly_defective_marginal_pair_with_zero_noise_is_refused_by_name():
    """Fuzzing: eigenvalues 1 +- 1e-8 (a nearly defective pair) with W = 0 gave cost = inf."""
    A = np.array([[1.0 + 1e-8, 1.0], [0.0, 1.0 - 1e-8]])
    plant = lqgt.Plant(A, [[0.0], [1.0]], [[1.0, 0.0]], W=np.zeros((2, 2)), V=[[1.0]])
    with pytest.raises(E.NotStabilizableError, match=r"unreachable mode on the unit circle.*within 1e-06"):
        lqgt.lqg(plant, np.eye(2), [[1.0]])


@pytest.mark.parametrize("s", [1e3, 1e4, 1e6])
def test_lqg_on_a_badly_scaled_integrator_chain_is_right_or_refused(s):
    """Fuzzing: lqg returned -1.9e46 on a badly scaled integrator chain (ill-conditioned
    Lyapunov equation). The design cost now comes from the Riccati solutions; the Lyapunov
    cost either agrees or raises IllConditionedError, never a negative number."""
    n = 4
    A = np.eye(n) + np.diag([s] * (n - 1), 1)
    B = np.zeros((n, 1))
    B[-1] = 1.0
    C = np.zeros((1, n))
    C[0, 0] = 1.0
    plant = lqgt.Plant(A, B, C, W=np.eye(n), V=[[1.0]])
    d = lqgt.lqg(plant, np.eye(n), [[1.0]])
    assert 0.0 < d.cost <= d.cost_predictor and math.isfinite(d.cost_predictor)
    Z = np.zeros((n, 1))
    assert _residual(A, B, np.eye(n), np.eye(1), Z, d.X) <= 1e-8
    assert _residual(A.T, C.T, np.eye(n), np.eye(1), Z, d.P) <= 1e-8
    for gain, form, ref in ((d.Lf, "current", d.cost), (d.L, "predictor", d.cost_predictor)):
        try:
            c = lqgt.lqg_cost(plant, np.eye(n), [[1.0]], d.K, gain, form=form)
        except E.IllConditionedError as exc:
            assert "relative residual" in str(exc)
        else:
            assert c == pytest.approx(ref, rel=1e-4)


def test_error_classes_of_plant_arguments():
    with pytest.raises(E.ConfigError, match="dt must be a positive finite sample time"):
        lqgt.Plant([[0.5]], [[1.0]], [[1.0]], W=[[1.0]], V=[[1.0]], dt=0.0)
    with pytest.raises(E.ConfigError, match="dt must be a positive finite sample time"):
        lqgt.Plant([[0.5]], [[1.0]], [[1.0]], W=[[1.0]], V=[[1.0]], dt=-1.0)
    with pytest.raises(E.NotRealError, match="A must be a real matrix, got complex entries"):
        lqgt.Plant([[0.5 + 1j]], [[1.0]], [[1.0]], W=[[1.0]], V=[[1.0]])
    assert issubclass(E.NotRealError, ValueError) and issubclass(E.ConfigError, ValueError)


# =========================================================================== (C) simulation arguments


@pytest.fixture(scope="module")
def small_loop():
    plant = lqgt.Plant([[0.9, 0.1], [0.0, 0.8]], [[0.0], [1.0]], [[1.0, 0.0]], W=0.1 * np.eye(2), V=[[0.1]])
    Q, R = np.eye(2), np.eye(1)
    d = lqgt.lqg(plant, Q, R)
    return plant, Q, R, d, lqgt.KalmanFilter(plant, "current")


def _sim(small_loop, **kw):
    plant, Q, R, d, kf = small_loop
    base = dict(horizon=10, batch=4, progress=False)
    base.update(kw)
    return lqgt.simulate(plant, d.K, {"kf": kf}, Q=Q, R=R, **base)


@pytest.mark.parametrize("seed", ["x", float("nan"), 2**64, -1, True, 2.5])
def test_bad_seeds_are_named(small_loop, seed):
    with pytest.raises(E.ConfigError, match=r"seed must be an integer in \[0, 2\*\*64\)"):
        _sim(small_loop, seed=seed)


def test_seed_none_and_generator(small_loop):
    r1 = _sim(small_loop, seed=None)
    assert isinstance(r1.settings["seed"], int) and 0 <= r1.settings["seed"] < 2**64
    again = _sim(small_loop, seed=r1.settings["seed"])  # the recorded seed reproduces the run
    assert r1.cost["kf"] == again.cost["kf"]
    a = _sim(small_loop, seed=np.random.default_rng(5))
    b = _sim(small_loop, seed=np.random.default_rng(5))
    assert a.settings["seed"] == b.settings["seed"] and a.cost["kf"] == b.cost["kf"]
    assert _sim(small_loop, seed=2**64 - 1).settings["seed"] == 2**64 - 1


@pytest.mark.parametrize("device,hint", [("CPU", "did you mean 'cpu'"), ("", "got ''"), (5, "cuda:5"),
                                         (["cpu"], "of type list"), ("gpu", "did you mean 'cuda'"),
                                         ("meta", "not supported")])
def test_bad_devices_are_named(small_loop, device, hint):
    with pytest.raises(E.ConfigError, match=r"device must be 'cpu', 'cuda' or 'cuda:<index>'.*" + hint):
        _sim(small_loop, device=device)


def test_infinite_horizon_and_huge_batch_are_refused(small_loop):
    with pytest.raises(E.ConfigError, match="horizon must be an integer, got inf"):
        _sim(small_loop, horizon=float("inf"))
    with pytest.raises(E.ResourceError, match=r"simulate\(batch=1000000000000.*would need about [\d.]+ [TP]B"):
        _sim(small_loop, batch=10**12)
    with pytest.raises(E.ResourceError, match=r"store=True.*would need about"):
        _sim(small_loop, batch=10**6, horizon=10**6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device_index_and_memory_estimate(small_loop):
    with pytest.raises(E.ConfigError, match=r"only \d+ CUDA device\(s\) are present"):
        _sim(small_loop, device=f"cuda:{torch.cuda.device_count()}")
    with pytest.raises(E.ResourceError, match=r"would need about .* free on cuda"):
        _sim(small_loop, batch=10**12, device="cuda")
    r = _sim(small_loop, device="cuda", seed=np.random.default_rng(0))
    assert math.isfinite(r.cost["kf"])
