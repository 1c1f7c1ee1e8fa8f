"""dare / dlqr / dlqe against independent oracles.

Oracles: python-control (``control.dlqr`` / ``control.dlqe``, no slycot, so scipy inside),
``scipy.linalg.solve_discrete_are`` called directly, the Riccati residual, the closed-form
scalar solution, a Lyapunov identity (the LQR value of the gain) and similarity invariance.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

import control
import lqgt
import lqgt.riccati

RTOL = 1e-9  # relative agreement demanded by the issue
RES_TOL = 1e-9  # relative Riccati residual

SIZES = (1, 2, 3, 5, 8, 13, 20, 35, 50)
KINDS = ("stable", "unstable", "marginal", "illcond", "uncontrollable", "cross")
CASES = [
    (kind, n, seed)
    for seed, (kind, n) in enumerate((k, n) for k in KINDS for n in SIZES)
    if not (kind == "uncontrollable" and n == 1)
]


def _dims(n: int, seed: int) -> tuple[int, int]:
    m = 1 + seed % 3
    p = 1 + (seed // 3) % 3
    return min(m, max(n, 1) + 1), p


def _problem(gen, kind, n, seed):
    rng = np.random.default_rng(1000 + seed)
    m, p = _dims(n, seed)
    return gen.random_problem(rng, n, m, p, kind)


def control_residual(A, B, Q, R, S, X) -> float:
    """Relative residual of X = A'XA - (A'XB + S)(R + B'XB)^-1 (B'XA + S') + Q."""
    T = B.T @ X @ A + S.T
    res = A.T @ X @ A - T.T @ np.linalg.solve(R + B.T @ X @ B, T) + Q - X
    return float(np.linalg.norm(res) / max(np.linalg.norm(X), np.linalg.norm(Q), 1e-300))


def filter_residual(A, C, W, V, P) -> float:
    """Relative residual of P = APA' - APC'(CPC' + V)^-1 CPA' + W."""
    APC = A @ P @ C.T
    res = A @ P @ A.T - APC @ np.linalg.solve(C @ P @ C.T + V, APC.T) + W - P
    return float(np.linalg.norm(res) / max(np.linalg.norm(P), np.linalg.norm(W), 1e-300))


def _spectral_radius(M):
    return float(np.max(np.abs(np.linalg.eigvals(M))))


# --------------------------------------------------------------------------- dlqr / dare


@pytest.mark.parametrize("kind,n,seed", CASES, ids=[f"{k}-n{n}" for k, n, _ in CASES])
def test_dlqr_matches_control_and_scipy(gen, kind, n, seed):
    pr = _problem(gen, kind, n, seed)
    A, B, Q, R, N = pr["A"], pr["B"], pr["Q"], pr["R"], pr["N"]
    m = B.shape[1]
    S = np.zeros((n, m)) if N is None else N
    args = (A, B, Q, R) if N is None else (A, B, Q, R, N)

    K, X, E = lqgt.dlqr(*args)
    Kc, Xc, Ec = control.dlqr(*args)
    Xs = scipy.linalg.solve_discrete_are(A, B, Q, R, s=S)

    assert K.shape == (m, n) and X.shape == (n, n) and E.shape == (n,)
    assert gen.rel_err(X, Xc) <= RTOL
    assert gen.rel_err(K, Kc) <= RTOL
    assert gen.rel_err(X, Xs) <= RTOL
    # residual (1e-9, or within 10x of scipy's own on near-uncontrollable problems where
    # |X| ~ 1e8 and no solver does better), symmetry, PSD, stabilizing
    assert control_residual(A, B, Q, R, S, X) <= max(RES_TOL, 10 * control_residual(A, B, Q, R, S, Xs))
    assert np.array_equal(X, X.T) or gen.rel_err(X, X.T) <= 1e-14
    assert np.linalg.eigvalsh(X).min() >= -1e-9 * np.linalg.norm(X)
    assert _spectral_radius(A - B @ K) < 1.0
    # the gain is the one the DARE defines
    Kdef = np.linalg.solve(R + B.T @ X @ B, B.T @ X @ A + S.T)
    assert gen.rel_err(K, Kdef) <= 1e-10
    # E = eig(A - B K), matched one to one
    scale = max(1.0, float(np.abs(E).max()))
    assert gen.match_eigs(E, np.linalg.eigvals(A - B @ K)) <= 1e-12 * scale * n
    assert gen.match_eigs(E, Ec) <= 1e-6
    # dare gives the same X, and python-control's (X, closed-loop eigenvalues, gain) order
    Xd, Ld, Gd = lqgt.dare(A, B, Q, R) if N is None else lqgt.dare(A, B, Q, R, S=N)
    assert gen.rel_err(Xd, Xs) <= RTOL
    assert gen.rel_err(Gd, K) <= 1e-10
    assert gen.match_eigs(Ld, E) <= 1e-10 * scale * n


@pytest.mark.parametrize("kind,n,seed", CASES, ids=[f"{k}-n{n}" for k, n, _ in CASES])
def test_dlqr_value_is_lyapunov_cost_of_gain(gen, kind, n, seed):
    """Independent of any Riccati solver: X is the cost-to-go of u = -Kx, i.e. the
    solution of X = (A-BK)' X (A-BK) + Q - N K - K'N' + K'RK."""
    pr = _problem(gen, kind, n, seed)
    A, B, Q, R, N = pr["A"], pr["B"], pr["Q"], pr["R"], pr["N"]
    N0 = np.zeros(B.shape) if N is None else N
    K, X, _ = lqgt.dlqr(A, B, Q, R, N)
    Acl = A - B @ K
    stage = Q - N0 @ K - K.T @ N0.T + K.T @ R @ K
    Xl = scipy.linalg.solve_discrete_lyapunov(Acl.T, stage)
    assert gen.rel_err(X, Xl) <= 1e-8


@pytest.mark.parametrize(
    "a,b,q,r",
    [(1.0, 1.0, 1.0, 1.0), (2.0, 1.0, 1.0, 1.0), (-1.0, 0.5, 2.0, 0.3), (0.5, 1.0, 1.0, 1.0),
     (1.3, 2.0, 0.0, 1.0), (0.9, 0.1, 1e-3, 10.0), (-3.0, 1.0, 5.0, 1e-2)],
)
def test_scalar_closed_form(a, b, q, r):
    """n = m = 1: b² X² + (r(1 - a²) - q b²) X - q r = 0, take the stabilizing root."""
    c2, c1, c0 = b * b, r * (1 - a * a) - q * b * b, -q * r
    roots = np.roots([c2, c1, c0]).real
    stab = [x for x in roots if x >= -1e-12 and abs(a - b * (b * x * a) / (r + b * b * x)) < 1]
    assert len(stab) == 1
    Xref = max(stab[0], 0.0)
    K, X, E = lqgt.dlqr(a, b, q, r)  # plain scalars are accepted as 1x1
    assert X.shape == (1, 1)
    assert X[0, 0] == pytest.approx(Xref, rel=1e-12, abs=1e-14)
    assert K[0, 0] == pytest.approx(b * Xref * a / (r + b * b * Xref), rel=1e-12, abs=1e-14)
    assert E[0] == pytest.approx(a - b * K[0, 0], rel=1e-12, abs=1e-14)
    if (a, b, q, r) == (1.0, 1.0, 1.0, 1.0):
        assert X[0, 0] == pytest.approx((1 + 5 ** 0.5) / 2, rel=1e-14)  # the golden ratio
    # the dual: a scalar Kalman filter is the same equation with (b, q, r) -> (c, w, v)
    L, P, El = lqgt.dlqe(a, b, q, r)
    assert P[0, 0] == pytest.approx(Xref, rel=1e-12, abs=1e-14)
    assert L[0, 0] == pytest.approx(a * Xref * b / (b * b * Xref + r), rel=1e-12, abs=1e-14)


def test_similarity_invariance(gen):
    """x = T^-1 z: the problem (TAT^-1, TB, T^-T Q T^-1, R) has X_T = T^-T X T^-1, K_T = K T^-1,
    here with a badly conditioned T (cond 1e4)."""
    rng = np.random.default_rng(7)
    for n in (4, 12, 30):
        pr = gen.random_problem(rng, n, 2, 2, "unstable")
        A, B, Q, R = pr["A"], pr["B"], pr["Q"], pr["R"]
        d = np.logspace(-2, 2, n)
        T = np.diag(d) @ np.linalg.qr(rng.standard_normal((n, n)))[0]
        Ti = np.linalg.inv(T)
        K, X, E = lqgt.dlqr(A, B, Q, R)
        KT, XT, ET = lqgt.dlqr(T @ A @ Ti, T @ B, Ti.T @ Q @ Ti, R)
        assert gen.rel_err(KT, K @ Ti) <= RTOL
        assert gen.rel_err(T.T @ XT @ T, X) <= RTOL
        assert gen.match_eigs(E, ET) <= 1e-8


def test_marginal_textbook_systems(gen):
    """Double integrator measured in position only, a pure rotation, and lambda = -1,
    with rank-one weights/noise that still make the problem regular."""
    A = np.array([[1.0, 1.0], [0.0, 1.0]])
    B = np.array([[0.5], [1.0]])
    C = np.array([[1.0, 0.0]])
    Q = np.diag([1.0, 0.0])  # (Q^1/2, A) observable through the position
    R = np.array([[0.1]])
    W = B @ B.T  # rank one, (A, W^1/2) controllable
    V = np.array([[0.5]])
    rot = gen.rotation(0.7)
    Ctheta = np.array([[1.0, 0.0]])
    cases = [(A, B, C, Q, R, W, V), (rot, np.array([[0.0], [1.0]]), Ctheta, np.diag([1.0, 0.0]), R, np.diag([0.0, 1.0]), V),
             (np.diag([-1.0, 0.5]), np.array([[1.0], [0.0]]), np.array([[1.0, 1.0]]), np.eye(2), R, np.eye(2), V)]
    for A_, B_, C_, Q_, R_, W_, V_ in cases:
        K, X, _ = lqgt.dlqr(A_, B_, Q_, R_)
        Kc, Xc, _ = control.dlqr(A_, B_, Q_, R_)
        assert gen.rel_err(X, Xc) <= RTOL and gen.rel_err(K, Kc) <= RTOL
        assert control_residual(A_, B_, Q_, R_, np.zeros(B_.shape), X) <= 1e-12
        L, P, _ = lqgt.dlqe(A_, C_, W_, V_)
        Lc, Pc, _ = control.dlqe(A_, np.eye(2), C_, W_, V_)
        assert gen.rel_err(P, Pc) <= RTOL and gen.rel_err(L, Lc) <= RTOL
        assert filter_residual(A_, C_, W_, V_, P) <= 1e-12


def test_more_inputs_than_states(gen):
    rng = np.random.default_rng(3)
    A = gen.with_radius(rng, 2, 1.2)
    B = rng.standard_normal((2, 4))
    C = rng.standard_normal((5, 2))
    K, X, _ = lqgt.dlqr(A, B, np.eye(2), np.eye(4))
    Kc, Xc, _ = control.dlqr(A, B, np.eye(2), np.eye(4))
    assert K.shape == (4, 2) and gen.rel_err(K, Kc) <= RTOL
    L, P, _ = lqgt.dlqe(A, C, np.eye(2), np.eye(5))
    Lc, Pc, _ = control.dlqe(A, np.eye(2), C, np.eye(2), np.eye(5))
    assert L.shape == (2, 5) and gen.rel_err(L, Lc) <= RTOL


def test_scipy_fallback_path(gen, monkeypatch):
    """With the doubling iteration disabled the scipy fallback must give the same answer."""
    rng = np.random.default_rng(11)
    pr = gen.random_problem(rng, 6, 2, 2, "cross")
    ref = lqgt.dlqr(pr["A"], pr["B"], pr["Q"], pr["R"], pr["N"])
    monkeypatch.setattr(lqgt.riccati, "_sda", lambda *a, **k: None)
    fb = lqgt.dlqr(pr["A"], pr["B"], pr["Q"], pr["R"], pr["N"])
    assert gen.rel_err(fb[0], ref[0]) <= RTOL and gen.rel_err(fb[1], ref[1]) <= RTOL


def test_inputs_not_modified(gen):
    rng = np.random.default_rng(5)
    pr = gen.random_problem(rng, 5, 2, 2, "cross")
    copies = {k: None if v is None else v.copy() for k, v in pr.items()}
    lqgt.dlqr(pr["A"], pr["B"], pr["Q"], pr["R"], pr["N"])
    lqgt.dare(pr["A"], pr["B"], pr["Q"], pr["R"], S=pr["N"])
    lqgt.dlqe(pr["A"], pr["C"], pr["W"], pr["V"])
    for k, v in pr.items():
        if v is not None:
            assert np.array_equal(v, copies[k]), k


# --------------------------------------------------------------------------- dlqe


@pytest.mark.parametrize("kind,n,seed", CASES, ids=[f"{k}-n{n}" for k, n, _ in CASES])
def test_dlqe_matches_control_and_scipy(gen, kind, n, seed):
    pr = _problem(gen, kind, n, seed)
    A, C, W, V = pr["A"], pr["C"], pr["W"], pr["V"]
    p = C.shape[0]
    L, P, E = lqgt.dlqe(A, C, W, V)
    Lc, Pc, Ec = control.dlqe(A, np.eye(n), C, W, V)  # G = I, QN = W, RN = V
    Ps = scipy.linalg.solve_discrete_are(A.T, C.T, W, V)

    assert L.shape == (n, p) and P.shape == (n, n) and E.shape == (n,)
    assert gen.rel_err(P, Pc) <= RTOL
    assert gen.rel_err(L, Lc) <= RTOL
    assert gen.rel_err(P, Ps) <= RTOL
    assert filter_residual(A, C, W, V, P) <= max(RES_TOL, 10 * filter_residual(A, C, W, V, Ps))
    assert np.linalg.eigvalsh(P).min() >= -1e-9 * np.linalg.norm(P)
    # predictor gain L = A P C' (C P C' + V)^-1
    Ldef = A @ P @ C.T @ np.linalg.inv(C @ P @ C.T + V)
    assert gen.rel_err(L, Ldef) <= 1e-10
    assert _spectral_radius(A - L @ C) < 1.0
    scale = max(1.0, float(np.abs(E).max()))
    assert gen.match_eigs(E, np.linalg.eigvals(A - L @ C)) <= 1e-12 * scale * n
    assert gen.match_eigs(E, Ec) <= 1e-6


@pytest.mark.parametrize("n,seed", [(2, 0), (5, 1), (12, 2), (30, 3)])
def test_dlqe_detectable_not_observable(gen, n, seed):
    rng = np.random.default_rng(seed)
    A, C = gen.unobservable_problem(rng, n, 1 + seed % 2)
    W = gen.random_psd(rng, n, floor=0.05)
    V = gen.random_pd(rng, C.shape[0])
    L, P, _ = lqgt.dlqe(A, C, W, V)
    Lc, Pc, _ = control.dlqe(A, np.eye(n), C, W, V)
    assert gen.rel_err(P, Pc) <= RTOL and gen.rel_err(L, Lc) <= RTOL
    assert filter_residual(A, C, W, V, P) <= RES_TOL


def test_dlqe_is_dual_of_dlqr(gen):
    """dlqe(A, C, W, V) solves the control DARE of (A', C', W, V) and L = K'."""
    rng = np.random.default_rng(9)
    pr = gen.random_problem(rng, 7, 2, 3, "unstable")
    A, C, W, V = pr["A"], pr["C"], pr["W"], pr["V"]
    L, P, _ = lqgt.dlqe(A, C, W, V)
    K, X, _ = lqgt.dlqr(A.T, C.T, W, V)
    assert gen.rel_err(P, X) <= 1e-12 and gen.rel_err(L, K.T) <= 1e-12


def test_value_iteration_converges_to_X(gen):
    """Riccati difference equation from X0 = 0 converges to the stabilizing solution."""
    rng = np.random.default_rng(21)
    for kind in ("stable", "unstable", "cross"):
        pr = gen.random_problem(rng, 4, 2, 1, kind)
        A, B, Q, R = pr["A"], pr["B"], pr["Q"], pr["R"]
        S = np.zeros(B.shape) if pr["N"] is None else pr["N"]
        X = np.zeros_like(A)
        for _ in range(5000):
            T = B.T @ X @ A + S.T
            Xn = A.T @ X @ A - T.T @ np.linalg.solve(R + B.T @ X @ B, T) + Q
            Xn = 0.5 * (Xn + Xn.T)  # (the antisymmetric part would grow like A' . A)
            if np.abs(Xn - X).max() <= 1e-15 * np.abs(Xn).max():
                X = Xn
                break
            X = Xn
        _, Xl, _ = lqgt.dlqr(A, B, Q, R, pr["N"])
        assert gen.rel_err(Xl, X) <= 1e-11


@pytest.mark.parametrize("seed", [393, 1293, 1965])
def test_badly_scaled_pairs_are_not_refused(gen, seed):
    """Regression: states scaled by diag(logspace(-2, 2)) made the PBH rank test (absolute
    threshold) call stabilizable/detectable pairs 'not stabilizable'/'not detectable',
    although scipy solves them to a 1e-12 residual. Found by a random sweep."""
    rng = np.random.default_rng(seed)
    kind = KINDS[seed % 6]
    assert kind == "illcond"
    n = int(rng.choice([2, 3, 5, 8, 13, 20, 35, 50]))
    m, p = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    pr = gen.random_problem(rng, n, m, p, kind)
    A, B, C, Q, R, W, V = (pr[k] for k in "ABCQRWV")
    K, X, _ = lqgt.dlqr(A, B, Q, R)
    L, P, _ = lqgt.dlqe(A, C, W, V)
    Xs = scipy.linalg.solve_discrete_are(A, B, Q, R)
    Ps = scipy.linalg.solve_discrete_are(A.T, C.T, W, V)
    # scipy is not the more accurate one here: compare relative residuals, and the
    # solutions to within what scipy's own residual allows
    res = lqgt.riccati._residual
    Zn, Zp = np.zeros((n, m)), np.zeros((n, p))
    assert res(A, B, Q, R, Zn, X) <= max(1e-11, res(A, B, Q, R, Zn, Xs))
    assert res(A.T, C.T, W, V, Zp, P) <= max(1e-11, res(A.T, C.T, W, V, Zp, Ps))
    assert gen.rel_err(X, Xs) <= 1e-6 and gen.rel_err(P, Ps) <= 1e-6
    assert _spectral_radius(A - B @ K) < 1 and _spectral_radius(A - L @ C) < 1


def test_zero_weight_on_unstable_mode(gen):
    """Q = 0 (minimum-energy stabilization) and W = 0: the stabilizing solution is not the
    trivial X = 0. Regression: the doubling iteration stays at X = 0 from H0 = Q = 0 and
    lqgt raised RiccatiError instead of falling back to scipy."""
    A = np.diag([1.5, 0.5])
    b = np.array([[1.0], [1.0]])
    K, X, E = lqgt.dlqr(A, b, np.zeros((2, 2)), 1.0)
    Kc, Xc, _ = control.dlqr(A, b, np.zeros((2, 2)), 1.0)
    # only the unstable mode costs: scalar minimum-energy solution r (a² - 1) / b² = 1.25
    np.testing.assert_allclose(X, [[1.25, 0.0], [0.0, 0.0]], atol=1e-12)
    assert gen.rel_err(X, Xc) <= RTOL and gen.rel_err(K, Kc) <= RTOL
    assert np.abs(E).max() < 1
    L, P, El = lqgt.dlqe(A, b.T, np.zeros((2, 2)), 1.0)
    np.testing.assert_allclose(P, [[1.25, 0.0], [0.0, 0.0]], atol=1e-12)
    assert np.abs(El).max() < 1
