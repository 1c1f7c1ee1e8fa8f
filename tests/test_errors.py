"""Bad input raises a named lqgt error (a ValueError subclass) whose message names the cause.

Every case: the exact error class, ``isinstance(..., ValueError)``, and a message that names
the matrix (and, for shapes, both shapes). Never a bare numpy LinAlgError.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import control
import lqgt
from lqgt import errors as E

# a small, valid problem: unstable, controllable, observable
A = np.array([[1.1, 0.2], [0.0, 0.9]])
B = np.array([[0.0], [1.0]])
C = np.array([[1.0, 0.0]])
W = 0.1 * np.eye(2)
V = np.array([[0.2]])
Q = np.eye(2)
R = np.array([[1.0]])


def plant(**kw):
    args = dict(A=A, B=B, C=C, W=W, V=V)
    args.update(kw)
    a, b, c = args.pop("A"), args.pop("B"), args.pop("C")
    return lqgt.Plant(a, b, c, **args)


GOOD = plant()
DES = lqgt.lqg(GOOD, Q, R)

NAN2 = np.array([[1.0, np.nan], [0.0, 1.0]])
INF2 = np.array([[1.0, 0.0], [np.inf, 1.0]])
NONSYM = np.array([[1.0, 0.5], [0.0, 1.0]])
INDEF = np.array([[1.0, 0.0], [0.0, -0.5]])
PSD_SINGULAR = np.diag([1.0, 0.0])

CASES = [
    # ------------------------------------------------------------------ Plant: shapes
    ("Plant A not square", lambda: plant(A=np.ones((2, 3))), E.ShapeError, r"A has shape \(2, 3\), expected \(2, 2\)"),
    ("Plant A 3-D", lambda: plant(A=np.ones((2, 2, 2))), E.ShapeError, r"A must be a 2-D matrix.*\(2, 2, 2\)"),
    ("Plant B rows", lambda: plant(B=np.ones((3, 1))), E.ShapeError, r"B has shape \(3, 1\), expected \(2, "),
    ("Plant C cols", lambda: plant(C=np.ones((1, 3))), E.ShapeError, r"C has shape \(1, 3\), expected \(.*, 2\)"),
    ("Plant D shape", lambda: plant(D=np.ones((1, 2))), E.ShapeError, r"D has shape \(1, 2\), expected \(1, 1\)"),
    ("Plant W shape", lambda: plant(W=np.eye(3)), E.ShapeError, r"W has shape \(3, 3\), expected \(2, 2\)"),
    ("Plant V shape", lambda: plant(V=np.eye(2)), E.ShapeError, r"V has shape \(2, 2\), expected \(1, 1\)"),
    ("Plant m0 shape", lambda: plant(m0=[1.0, 2.0, 3.0]), E.ShapeError, r"m0 has shape \(3,\), expected \(2,\)"),
    ("Plant P0 shape", lambda: plant(P0=np.eye(3)), E.ShapeError, r"P0 has shape \(3, 3\), expected \(2, 2\)"),
    ("Plant B 1-D", lambda: plant(B=np.array([0.0, 1.0])), E.ShapeError, r"B must be a 2-D matrix, got a 1-D array of shape \(2,\)"),
    ("Plant C 1-D", lambda: plant(C=np.array([1.0, 0.0])), E.ShapeError, r"C must be a 2-D matrix, got a 1-D array"),
    ("Plant W 1-D", lambda: plant(W=np.array([0.1, 0.1])), E.ShapeError, r"W must be a 2-D matrix"),
    ("Plant A text", lambda: plant(A="abc"), E.ShapeError, r"A must be a numeric matrix"),
    ("Plant A ragged", lambda: plant(A=[[1.0, 2.0], [3.0]]), E.ShapeError, r"A must be a numeric matrix"),
    ("Plant A complex", lambda: plant(A=A * (1 + 1j)), E.NotRealError, r"A must be a real matrix"),
    ("Plant m0 text", lambda: plant(m0="ab"), E.ShapeError, r"m0 must be a numeric vector"),
    # ------------------------------------------------------------------ Plant: values
    ("Plant A NaN", lambda: plant(A=NAN2), E.NonFiniteError, r"A contains NaN or infinite"),
    ("Plant B inf", lambda: plant(B=np.array([[np.inf], [1.0]])), E.NonFiniteError, r"B contains NaN or infinite"),
    ("Plant C NaN", lambda: plant(C=np.array([[np.nan, 0.0]])), E.NonFiniteError, r"C contains NaN or infinite"),
    ("Plant W inf", lambda: plant(W=INF2), E.NonFiniteError, r"W contains NaN or infinite"),
    ("Plant V NaN", lambda: plant(V=[[np.nan]]), E.NonFiniteError, r"V contains NaN or infinite"),
    ("Plant m0 NaN", lambda: plant(m0=[0.0, np.nan]), E.NonFiniteError, r"m0 contains NaN or infinite"),
    ("Plant W nonsym", lambda: plant(W=NONSYM), E.NotSymmetricError, r"W must be symmetric"),
    ("Plant W not PSD", lambda: plant(W=INDEF), E.NotPositiveDefiniteError, r"W must be positive semidefinite.*-0\.5"),
    ("Plant V not PD", lambda: plant(V=[[0.0]]), E.NotPositiveDefiniteError, r"V must be positive definite"),
    ("Plant V negative", lambda: plant(V=[[-1.0]]), E.NotPositiveDefiniteError, r"V must be positive definite"),
    ("Plant V nonsym", lambda: plant(C=np.eye(2), V=NONSYM), E.NotSymmetricError, r"V must be symmetric"),
    ("Plant P0 not PSD", lambda: plant(P0=INDEF), E.NotPositiveDefiniteError, r"P0 must be positive semidefinite"),
    ("Plant dt zero", lambda: plant(dt=0.0), E.ConfigError, r"dt must be a positive finite sample time"),
    ("Plant dt negative", lambda: plant(dt=-0.1), E.ConfigError, r"dt must be a positive finite sample time"),
    ("Plant dt nan", lambda: plant(dt=float("nan")), E.ConfigError, r"dt must be a positive finite sample time"),
    ("Plant dt text", lambda: plant(dt="fast"), E.ConfigError, r"dt must be a positive finite sample time"),
    # ------------------------------------------------------------------ from_continuous / from_statespace
    ("from_continuous Ac shape", lambda: lqgt.Plant.from_continuous(np.ones((2, 3)), B, C, Wc=W, V=V, dt=0.1),
     E.ShapeError, r"Ac has shape \(2, 3\), expected \(2, 2\)"),
    ("from_continuous Bc rows", lambda: lqgt.Plant.from_continuous(A, np.ones((3, 1)), C, Wc=W, V=V, dt=0.1),
     E.ShapeError, r"Bc has shape \(3, 1\)"),
    ("from_continuous Wc not PSD", lambda: lqgt.Plant.from_continuous(A, B, C, Wc=INDEF, V=V, dt=0.1),
     E.NotPositiveDefiniteError, r"Wc must be positive semidefinite"),
    ("from_continuous Wc nonsym", lambda: lqgt.Plant.from_continuous(A, B, C, Wc=NONSYM, V=V, dt=0.1),
     E.NotSymmetricError, r"Wc must be symmetric"),
    ("from_continuous dt", lambda: lqgt.Plant.from_continuous(A, B, C, Wc=W, V=V, dt=-1.0),
     E.ConfigError, r"dt must be a positive finite sample time"),
    ("from_continuous V not PD", lambda: lqgt.Plant.from_continuous(A, B, C, Wc=W, V=[[0.0]], dt=0.1),
     E.NotPositiveDefiniteError, r"V must be positive definite"),
    ("from_statespace not ss", lambda: lqgt.Plant.from_statespace(A, W=W, V=V), E.ShapeError, r"StateSpace"),
    ("from_statespace continuous no dt", lambda: lqgt.Plant.from_statespace(control.ss(A, B, C, 0), W=W, V=V),
     E.LqgtError, r"continuous.*dt="),
    ("from_statespace dt mismatch", lambda: lqgt.Plant.from_statespace(control.ss(A, B, C, 0, 0.1), W=W, V=V, dt=0.2),
     E.LqgtError, r"dt=0\.2 differs.*0\.1"),
    # ------------------------------------------------------------------ dare / dlqr
    ("dlqr A not square", lambda: lqgt.dlqr(np.ones((2, 3)), B, Q, R), E.ShapeError, r"A has shape \(2, 3\), expected \(2, 2\)"),
    ("dlqr B rows", lambda: lqgt.dlqr(A, np.ones((3, 1)), Q, R), E.ShapeError, r"B has shape \(3, 1\), expected \(2, "),
    ("dlqr Q shape", lambda: lqgt.dlqr(A, B, np.eye(3), R), E.ShapeError, r"Q has shape \(3, 3\), expected \(2, 2\)"),
    ("dlqr R shape", lambda: lqgt.dlqr(A, B, Q, np.eye(2)), E.ShapeError, r"R has shape \(2, 2\), expected \(1, 1\)"),
    ("dlqr N shape", lambda: lqgt.dlqr(A, B, Q, R, np.ones((1, 2))), E.ShapeError, r"N has shape \(1, 2\), expected \(2, 1\)"),
    ("dlqr Q 1-D", lambda: lqgt.dlqr(A, B, np.ones(2), R), E.ShapeError, r"Q must be a 2-D matrix, got a 1-D array"),
    ("dlqr B 1-D", lambda: lqgt.dlqr(A, np.array([0.0, 1.0]), Q, R), E.ShapeError, r"B must be a 2-D matrix, got a 1-D array"),
    ("dlqr A NaN", lambda: lqgt.dlqr(NAN2, B, Q, R), E.NonFiniteError, r"A contains NaN or infinite"),
    ("dlqr Q inf", lambda: lqgt.dlqr(A, B, INF2, R), E.NonFiniteError, r"Q contains NaN or infinite"),
    ("dlqr R NaN", lambda: lqgt.dlqr(A, B, Q, np.nan), E.NonFiniteError, r"R contains NaN or infinite"),
    ("dlqr N NaN", lambda: lqgt.dlqr(A, B, Q, R, np.array([[np.nan], [0.0]])), E.NonFiniteError, r"N contains NaN"),
    ("dlqr Q nonsym", lambda: lqgt.dlqr(A, B, NONSYM, R), E.NotSymmetricError, r"Q must be symmetric"),
    ("dlqr Q not PSD", lambda: lqgt.dlqr(A, B, INDEF, R), E.NotPositiveDefiniteError, r"Q must be positive semidefinite"),
    ("dlqr R zero", lambda: lqgt.dlqr(A, B, Q, 0.0), E.NotPositiveDefiniteError, r"R must be positive definite"),
    ("dlqr R nonsym", lambda: lqgt.dlqr(A, np.eye(2), Q, NONSYM), E.NotSymmetricError, r"R must be symmetric"),
    ("dlqr R PSD only", lambda: lqgt.dlqr(A, np.eye(2), Q, PSD_SINGULAR), E.NotPositiveDefiniteError, r"R must be positive definite"),
    ("dlqr not stabilizable", lambda: lqgt.dlqr(np.diag([1.1, 0.5]), np.array([[0.0], [1.0]]), Q, R),
     E.NotStabilizableError, r"\(A, B\) is not stabilizable.*1\.1"),
    ("dlqr not stabilizable, marginal", lambda: lqgt.dlqr(np.diag([1.0, 1.0]), np.array([[1.0], [1.0]]), Q, R),
     E.NotStabilizableError, r"\(A, B\) is not stabilizable"),
    ("dlqr Q blind on unit circle", lambda: lqgt.dlqr(np.array([[1.0, 1.0], [0.0, 1.0]]), B, np.diag([0.0, 0.0]), R),
     E.NotDetectableError, r"Q\^\(1/2\), A\) has an unobservable mode on the unit circle"),
    ("dlqr QN not PSD", lambda: lqgt.dlqr(A, B, Q, R, np.array([[3.0], [0.0]])), E.LqgtError,
     r"\[\[Q, N\], \[N', R\]\] must be positive semidefinite"),
    ("dare S shape", lambda: lqgt.dare(A, B, Q, R, S=np.ones((2, 2))), E.ShapeError, r"S has shape \(2, 2\), expected \(2, 1\)"),
    ("dare not stabilizable", lambda: lqgt.dare(np.diag([1.1, 0.5]), np.array([[0.0], [1.0]]), Q, R),
     E.NotStabilizableError, r"\(A, B\) is not stabilizable"),
    # dare solves indefinite equations (as python-control); these two have no stabilizing solution
    ("dare Q indefinite, no solution", lambda: lqgt.dare(A, B, INDEF, R), E.RiccatiError, r"no stabilizing solution"),
    ("dare R negative, no solution", lambda: lqgt.dare(A, B, Q, -1.0), E.RiccatiError, r"no accurate stabilizing solution"),
    ("dare R nonsym", lambda: lqgt.dare(A, np.eye(2), Q, NONSYM), E.NotSymmetricError, r"R must be symmetric"),
    ("dare E singular", lambda: lqgt.dare(A, B, Q, R, E=PSD_SINGULAR), E.RiccatiError, r"E is singular"),
    ("dare Q blind on unit circle", lambda: lqgt.dare(np.eye(2), np.eye(2), np.zeros((2, 2)), np.eye(2)),
     E.NotDetectableError, r"unobservable mode on the unit circle"),
    # ------------------------------------------------------------------ dlqe
    ("dlqe C cols", lambda: lqgt.dlqe(A, np.ones((1, 3)), W, V), E.ShapeError, r"C has shape \(1, 3\), expected \(.*, 2\)"),
    ("dlqe W shape", lambda: lqgt.dlqe(A, C, np.eye(3), V), E.ShapeError, r"W has shape \(3, 3\), expected \(2, 2\)"),
    ("dlqe V shape", lambda: lqgt.dlqe(A, C, W, np.eye(2)), E.ShapeError, r"V has shape \(2, 2\), expected \(1, 1\)"),
    ("dlqe C 1-D", lambda: lqgt.dlqe(A, np.array([1.0, 0.0]), W, V), E.ShapeError, r"C must be a 2-D matrix, got a 1-D array"),
    ("dlqe C NaN", lambda: lqgt.dlqe(A, np.array([[np.nan, 0.0]]), W, V), E.NonFiniteError, r"C contains NaN"),
    ("dlqe W nonsym", lambda: lqgt.dlqe(A, C, NONSYM, V), E.NotSymmetricError, r"W must be symmetric"),
    ("dlqe W not PSD", lambda: lqgt.dlqe(A, C, INDEF, V), E.NotPositiveDefiniteError, r"W must be positive semidefinite"),
    ("dlqe V not PD", lambda: lqgt.dlqe(A, C, W, [[0.0]]), E.NotPositiveDefiniteError, r"V must be positive definite"),
    ("dlqe not detectable", lambda: lqgt.dlqe(np.diag([1.1, 0.5]), np.array([[0.0, 1.0]]), W, V),
     E.NotDetectableError, r"\(A, C\) is not detectable.*1\.1"),
    ("dlqe W unreachable on unit circle", lambda: lqgt.dlqe(np.array([[1.0, 1.0], [0.0, 1.0]]), C, np.zeros((2, 2)), V),
     E.NotStabilizableError, r"W.*unreachable mode on the unit circle"),
    # ------------------------------------------------------------------ lqg
    ("lqg Q shape", lambda: lqgt.lqg(GOOD, np.eye(3), R), E.ShapeError, r"Q has shape \(3, 3\), expected \(2, 2\)"),
    ("lqg R shape", lambda: lqgt.lqg(GOOD, Q, np.eye(2)), E.ShapeError, r"R has shape \(2, 2\), expected \(1, 1\)"),
    ("lqg N shape", lambda: lqgt.lqg(GOOD, Q, R, np.ones((1, 2))), E.ShapeError, r"N has shape \(1, 2\), expected \(2, 1\)"),
    ("lqg Q NaN", lambda: lqgt.lqg(GOOD, NAN2, R), E.NonFiniteError, r"Q contains NaN"),
    ("lqg Q nonsym", lambda: lqgt.lqg(GOOD, NONSYM, R), E.NotSymmetricError, r"Q must be symmetric"),
    ("lqg Q not PSD", lambda: lqgt.lqg(GOOD, INDEF, R), E.NotPositiveDefiniteError, r"Q must be positive semidefinite"),
    ("lqg R not PD", lambda: lqgt.lqg(GOOD, Q, [[0.0]]), E.NotPositiveDefiniteError, r"R must be positive definite"),
    ("lqg QN not PSD", lambda: lqgt.lqg(GOOD, Q, R, np.array([[3.0], [0.0]])), E.LqgtError,
     r"\[\[Q, N\], \[N', R\]\] must be positive semidefinite"),
    ("lqg not stabilizable", lambda: lqgt.lqg(plant(A=np.diag([1.1, 0.5]), B=np.array([[0.0], [1.0]])), Q, R),
     E.NotStabilizableError, r"\(A, B\) is not stabilizable"),
    ("lqg not detectable", lambda: lqgt.lqg(plant(A=np.diag([1.1, 0.5]), B=np.ones((2, 1)), C=np.array([[0.0, 1.0]])), Q, R),
     E.NotDetectableError, r"\(A, C\) is not detectable"),
    ("lqg noise misses a unit-circle mode",
     lambda: lqgt.lqg(plant(A=np.array([[1.0, 1.0], [0.0, 1.0]]), W=np.zeros((2, 2))), Q, R),
     E.NotStabilizableError, r"W.*unreachable mode on the unit circle"),
    ("lqg not a plant", lambda: lqgt.lqg(A, Q, R), E.LqgtError, r"plant must be an lqgt\.Plant, got ndarray"),
    ("lqg_cost not a plant", lambda: lqgt.lqg_cost(control.ss(A, B, C, 0, 1), Q, R, DES.K, DES.L), E.LqgtError,
     r"plant must be an lqgt\.Plant, got a control\.StateSpace.*Plant\.from_statespace"),
    # ------------------------------------------------------------------ lqg_cost
    ("lqg_cost K shape", lambda: lqgt.lqg_cost(GOOD, Q, R, np.ones((2, 2)), DES.L), E.ShapeError,
     r"K has shape \(2, 2\), expected \(1, 2\)"),
    ("lqg_cost L shape", lambda: lqgt.lqg_cost(GOOD, Q, R, DES.K, np.ones((1, 2))), E.ShapeError,
     r"L has shape \(1, 2\), expected \(2, 1\)"),
    ("lqg_cost K NaN", lambda: lqgt.lqg_cost(GOOD, Q, R, np.array([[np.nan, 0.0]]), DES.L), E.NonFiniteError,
     r"K contains NaN"),
    ("lqg_cost L inf", lambda: lqgt.lqg_cost(GOOD, Q, R, DES.K, np.array([[np.inf], [0.0]])), E.NonFiniteError,
     r"L contains NaN"),
    ("lqg_cost form", lambda: lqgt.lqg_cost(GOOD, Q, R, DES.K, DES.L, form="filter"), E.ConfigError,
     r"form must be one of.*'filter'"),
    ("lqg_cost Q not PSD", lambda: lqgt.lqg_cost(GOOD, INDEF, R, DES.K, DES.L), E.NotPositiveDefiniteError,
     r"Q must be positive semidefinite"),
    ("lqg_cost R not PD", lambda: lqgt.lqg_cost(GOOD, Q, [[-1.0]], DES.K, DES.L), E.NotPositiveDefiniteError,
     r"R must be positive definite"),
    ("lqg_cost model dims", lambda: lqgt.lqg_cost(GOOD, Q, R, DES.K, DES.L, model=plant(C=np.eye(2), V=np.eye(2))),
     E.ShapeError, r"model dimensions"),
    ("lqg_cost current with feedthrough", lambda: lqgt.lqg_cost(plant(D=[[1.0]]), Q, R, DES.K, DES.Lf, form="current"),
     E.LqgtError, r"feedthrough"),
]


@pytest.mark.parametrize("call,exc,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_named_error(call, exc, match):
    with pytest.raises(exc, match=match) as info:
        call()
    assert isinstance(info.value, E.LqgtError) and isinstance(info.value, ValueError)


def test_error_hierarchy():
    for name in E.__all__:
        cls = getattr(E, name)
        assert issubclass(cls, E.LqgtError) and issubclass(cls, ValueError), name
        assert cls.__doc__
    assert lqgt.LqgtError is E.LqgtError


def test_one_d_gains_are_handled_correctly():
    """A 1-D K (m = 1) is a row and a 1-D L (p = 1) a column: the same cost as the 2-D ones."""
    for form, G in (("predictor", DES.L), ("current", DES.Lf)):
        J = lqgt.lqg_cost(GOOD, Q, R, DES.K, G, form=form)
        assert lqgt.lqg_cost(GOOD, Q, R, DES.K.ravel(), G.ravel(), form=form) == pytest.approx(J, rel=1e-14)
    # scalars and lists work for 1x1 problems
    K, X, _ = lqgt.dlqr(1.2, 1.0, 1.0, 1.0)
    K2, X2, _ = lqgt.dlqr([[1.2]], [[1.0]], [[1.0]], [[1.0]])
    assert np.array_equal(K, K2) and np.array_equal(X, X2)
    # n = 1 with several inputs: a 1-D B is the row it must be
    K3, _, _ = lqgt.dlqr(1.2, [1.0, 2.0], 1.0, np.eye(2))
    K4, _, _ = lqgt.dlqr(1.2, [[1.0, 2.0]], 1.0, np.eye(2))
    assert np.array_equal(K3, K4)


def test_no_bare_linalg_error_on_absurd_scaling():
    """Extreme but finite inputs give a result or an LqgtError, never LinAlgError.

    Regression: A ~ 1e-111, B ~ 1e62, R ~ diag(1e42, 1e32) made R + B'XB numerically singular
    and np.linalg.LinAlgError escaped from the Riccati solver."""
    A_, B_ = np.array([[-3.533e-111]]), np.array([[-1.245e62, -8.448e61]])
    Q_, R_ = np.array([[2.344e41]]), np.diag([2.873e42, 1.042e32])
    try:
        lqgt.dlqr(A_, B_, Q_, R_)
    except E.LqgtError:
        pass
    rng = np.random.default_rng(0)
    outcomes = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for t in range(150):
            n, m, p = (int(k) for k in rng.integers(1, 4, size=3))
            A_ = rng.standard_normal((n, n)) * 10.0 ** rng.uniform(-120, 120)
            B_ = rng.standard_normal((n, m)) * 10.0 ** rng.uniform(-80, 80)
            C_ = rng.standard_normal((p, n)) * 10.0 ** rng.uniform(-80, 80)
            Q_ = np.diag(10.0 ** rng.uniform(-5, 80, n))
            R_ = np.diag(10.0 ** rng.uniform(-5, 80, m))
            W_ = np.diag(10.0 ** rng.uniform(-5, 80, n))
            V_ = np.diag(10.0 ** rng.uniform(-5, 80, p))
            for call in (lambda: lqgt.dlqr(A_, B_, Q_, R_), lambda: lqgt.dlqe(A_, C_, W_, V_),
                         lambda: lqgt.lqg(lqgt.Plant(A_, B_, C_, W=W_, V=V_), Q_, R_)):
                try:
                    out = call()
                except E.LqgtError as exc:
                    outcomes.add(type(exc).__name__)
                    continue
                arrays = out if isinstance(out, tuple) else (out.K, out.L, out.Lf, out.X, out.P)
                assert all(np.all(np.isfinite(a)) for a in arrays)  # never a silent non-finite gain
                outcomes.add("ok")
    assert "ok" in outcomes


def test_empty_matrices_are_refused():
    with pytest.raises(E.ShapeError, match="empty"):
        lqgt.Plant(np.zeros((0, 0)), np.zeros((0, 1)), np.zeros((1, 0)), W=np.zeros((0, 0)), V=[[1.0]])
    with pytest.raises(E.ShapeError, match="empty"):
        lqgt.dlqr(np.zeros((0, 0)), np.zeros((0, 1)), np.zeros((0, 0)), [[1.0]])


def test_indefinite_cross_weight_is_not_positive_definite_error():
    A, B = np.eye(2) * 0.5, np.ones((2, 1))
    with pytest.raises(lqgt.errors.NotPositiveDefiniteError, match=r"\[\[Q, N\], \[N', R\]\]"):
        lqgt.dlqr(A, B, np.eye(2), [[1.0]], N=[[3.0], [0.0]])


def test_free_dimension_is_printed_without_quotes():
    with pytest.raises(E.ShapeError, match=r"expected \(3, ·\)"):
        lqgt.dlqr(np.eye(3), np.ones((2, 1)), np.eye(3), [[1.0]])
