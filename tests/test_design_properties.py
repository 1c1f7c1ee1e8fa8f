"""Property-based tests of the design layer (hypothesis).

Random stabilizable/detectable problems, with weights and noise over 20 decades, states
scaled over up to 3 decades, optional cross weights and rank-deficient weights:

* ``dlqr`` / ``dlqe`` / ``dare`` agree with python-control (scipy) where python-control's own
  answer is accurate, and are never less accurate (relative Riccati residual);
* the relative residual is small whatever the scale of the problem, the closed loop is
  stable, ``X`` and ``P`` are symmetric positive semidefinite;
* solutions scale exactly with the weights (``X(cQ, cR) = c X``);
* ``lqg``'s costs equal the Lyapunov cost of the loop and ``cost <= cost_predictor``.

Derandomized with a fixed number of examples, so the suite is deterministic and takes
about 10 s on one core.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
import control
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lqgt
from lqgt.riccati import _residual

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems(draw):
    """A random LQG problem: dict(A, B, C, Q, R, N, W, V) plus the scale used."""
    n = draw(st.integers(1, 6))
    m = draw(st.integers(1, 3))
    p = draw(st.integers(1, 3))
    rho = draw(st.floats(0.1, 1.8))
    spread = draw(st.floats(0.0, 3.0))
    log_q = draw(st.floats(-10.0, 10.0))
    log_w = draw(st.floats(-10.0, 10.0))
    rank_q = draw(st.integers(1, n))
    cross = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, n))
    A *= rho / max(1e-12, float(np.max(np.abs(np.linalg.eigvals(A)))))
    # similarity by a diagonal scaling: the same system in badly scaled coordinates
    d = 10.0 ** (spread * rng.uniform(-0.5, 0.5, n))
    A = (A * (1 / d)[:, None]) * d[None, :]
    B = rng.standard_normal((n, m)) / d[:, None]
    C = rng.standard_normal((p, n)) * d[None, :]
    G = rng.standard_normal((n, rank_q)) * d[:, None]
    Q = G @ G.T
    R = np.diag(rng.uniform(0.2, 3.0, m))
    N = None
    if cross:  # a PSD joint weight [[Q, N], [N', R]] = M M'
        M = rng.standard_normal((n + m, n + m))
        M[:n] *= d[:, None]
        Z = M @ M.T
        Q, N, R = Z[:n, :n], Z[:n, n:], Z[n:, n:]
    sq, sw = 10.0 ** log_q, 10.0 ** log_w
    H = rng.standard_normal((n, n)) / d[:, None]
    W = sw * (H @ H.T)
    V = sw * np.diag(rng.uniform(0.2, 3.0, p))
    return dict(A=A, B=B, C=C, Q=sq * Q, R=sq * R, N=None if N is None else sq * N, W=W, V=V)


def _rel(a, b) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def _psd(X) -> bool:
    lam = np.linalg.eigvalsh(0.5 * (X + X.T))
    return bool(lam.min() >= -1e-9 * max(abs(lam).max(), 1e-300)) and _rel(X, X.T) <= 1e-12


@SETTINGS
@given(problems())
def test_dlqr_matches_python_control_and_is_accurate_at_any_scale(pr):
    A, B, Q, R, N = pr["A"], pr["B"], pr["Q"], pr["R"], pr["N"]
    S = np.zeros(B.shape) if N is None else N
    K, X, E = lqgt.dlqr(A, B, Q, R, N) if N is not None else lqgt.dlqr(A, B, Q, R)
    res = _residual(A, B, Q, R, S, X)
    assert res <= 1e-9
    assert np.max(np.abs(E)) < 1.0 and _psd(X)
    assert _rel(K, np.linalg.solve(R + B.T @ X @ B, B.T @ X @ A + S.T)) <= 1e-8
    try:
        Kc, Xc, _ = control.dlqr(A, B, Q, R, S)
        res_c = _residual(A, B, Q, R, S, Xc)
    except Exception:  # noqa: BLE001 - python-control may fail where lqgt does not
        return
    assert res <= max(res_c, 1e-12) * 10
    if res_c <= 1e-12:
        assert _rel(X, Xc) <= 1e-6
    # dare returns the same solution in python-control's order
    Xd, Ld, Gd = lqgt.dare(A, B, Q, R, S)
    assert _rel(Xd, X) <= 1e-9 and _rel(Gd, K) <= 1e-8 and np.max(np.abs(Ld)) < 1.0


@SETTINGS
@given(problems(), st.floats(-12.0, 12.0))
def test_solutions_scale_with_the_weights(pr, log_c):
    c = 10.0 ** log_c
    A, B, C, Q, R, W, V = (pr[k] for k in "ABCQRWV")
    K1, X1, _ = lqgt.dlqr(A, B, Q, R)
    K2, X2, _ = lqgt.dlqr(A, B, c * Q, c * R)
    assert _rel(X2 / c, X1) <= 1e-7 and _rel(K2, K1) <= 1e-7
    L1, P1, _ = lqgt.dlqe(A, C, W, V)
    L2, P2, _ = lqgt.dlqe(A, C, c * W, c * V)
    assert _rel(P2 / c, P1) <= 1e-7 and _rel(L2, L1) <= 1e-7


@SETTINGS
@given(problems())
def test_dlqe_matches_python_control_and_is_accurate(pr):
    A, C, W, V = pr["A"], pr["C"], pr["W"], pr["V"]
    n, p = A.shape[0], C.shape[0]
    L, P, E = lqgt.dlqe(A, C, W, V)
    res = _residual(A.T, C.T, W, V, np.zeros((n, p)), P)
    assert res <= 1e-9 and np.max(np.abs(E)) < 1.0 and _psd(P)
    assert _rel(L, A @ P @ C.T @ np.linalg.inv(C @ P @ C.T + V)) <= 1e-8
    try:
        Lc, Pc, _ = control.dlqe(A, np.eye(n), C, W, V)
        res_c = _residual(A.T, C.T, W, V, np.zeros((n, p)), Pc)
    except Exception:  # noqa: BLE001
        return
    assert res <= max(res_c, 1e-12) * 10
    if res_c <= 1e-12:
        assert _rel(P, Pc) <= 1e-6


@SETTINGS
@given(problems())
def test_lqg_costs_are_the_lyapunov_costs(pr):
    A, B, C, Q, R, N, W, V = (pr[k] for k in ("A", "B", "C", "Q", "R", "N", "W", "V"))
    plant = lqgt.Plant(A, B, C, W=W, V=V)
    d = lqgt.lqg(plant, Q, R, N)
    assert math.isfinite(d.cost) and 0.0 <= d.cost <= d.cost_predictor * (1 + 1e-9)
    try:
        ref = lqgt.lqg_cost(plant, Q, R, d.K, d.Lf, form="current", N=N)
        ref_p = lqgt.lqg_cost(plant, Q, R, d.K, d.L, form="predictor", N=N)
    except lqgt.errors.IllConditionedError:
        return
    assert d.cost == pytest.approx(ref, rel=1e-6, abs=1e-12 * d.cost_predictor)
    assert d.cost_predictor == pytest.approx(ref_p, rel=1e-6)
