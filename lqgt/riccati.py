"""Discrete algebraic Riccati equations: ``dare``, ``dlqr``, ``dlqe``.

Conventions (SPEC §2), names and return orders as in python-control:

* control DARE ``X = A'XA - (A'XB + S)(R + B'XB)^{-1}(B'XA + S') + Q``,
  ``K = (R + B'XB)^{-1}(B'XA + S')``, feedback ``u = -K x``;
* filter DARE on the prior covariance ``P = APA' - APC'(CPC' + V)^{-1}CPA' + W`` with
  the *predictor* gain ``L = APC'(CPC' + V)^{-1}`` (what ``control.dlqe`` returns).

The solver is the structure-preserving doubling algorithm (SDA, quadratically convergent,
pure numpy, no slycot), checked by its Riccati residual; when it does not converge or
the residual is poor it falls back to :func:`scipy.linalg.solve_discrete_are`.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg

from ._linalg import (
    STAB_TOL,
    as_matrix,
    as_square,
    check_detectable,
    check_psd,
    check_stabilizable,
    spectral_radius,
    symmetrize,
)
from .errors import NotDetectableError, NotPositiveDefiniteError, NotStabilizableError, RiccatiError

__all__ = ["dare", "dlqr", "dlqe"]

_SDA_MAXITER = 80
_SDA_RTOL = 1e-13
_RESIDUAL_RTOL = 1e-10


def _check_unit_circle_observable(A: np.ndarray, Q: np.ndarray, names: tuple[str, str]) -> None:
    """A stabilizing DARE solution needs no unobservable mode of (Q^{1/2}, A) on |z| = 1."""
    n = A.shape[0]
    eigs = np.linalg.eigvals(A)
    on_circle = eigs[np.abs(np.abs(eigs) - 1.0) <= 1e-7]
    if on_circle.size == 0:
        return
    scale = max(1.0, float(np.abs(A).max()), float(np.abs(Q).max()))
    for lam in on_circle:
        sv = np.linalg.svd(np.vstack([A - lam * np.eye(n), Q]), compute_uv=False)
        if sv[n - 1] <= 1e-9 * scale:
            raise NotDetectableError(
                f"({names[1]}^(1/2), {names[0]}) has an unobservable mode on the unit circle "
                f"(lambda = {lam:.4g}): the Riccati equation has no stabilizing solution; "
                f"add weight on that mode in {names[1]}"
            )


def _residual(A, B, Q, R, S, X) -> float:
    """Relative residual of the control DARE at ``X``."""
    BX = B.T @ X
    G = R + BX @ B
    T = BX @ A + S.T
    res = A.T @ X @ A - T.T @ np.linalg.solve(G, T) + Q - X
    return float(np.abs(res).max() / max(1.0, float(np.abs(X).max()), float(np.abs(Q).max())))


def _sda(A: np.ndarray, G: np.ndarray, H: np.ndarray) -> np.ndarray | None:
    """Structure-preserving doubling for ``X = A'X(I + G X)^{-1}A + H`` with ``G = B R^{-1} B'``.

    Iterates ``A+ = A W^{-1} A``, ``G+ = G + A W^{-1} G A'``, ``H+ = H + A' H W^{-1} A`` with
    ``W = I + G H``; ``H_k`` converges quadratically to the stabilizing solution.
    Returns ``None`` when the iteration breaks down or does not converge.
    """
    n = A.shape[0]
    eye = np.eye(n)
    Ak, Gk, Hk = A, G, H
    with np.errstate(over="ignore", invalid="ignore"):  # divergence is detected and reported below
        for _ in range(_SDA_MAXITER):
            try:
                sol = np.linalg.solve(eye + Gk @ Hk, np.hstack([Ak, Gk]))
            except np.linalg.LinAlgError:
                return None
            WA, WG = sol[:, :n], sol[:, n:]
            Hn = Hk + Ak.T @ (Hk @ WA)
            Gk = Gk + (Ak @ WG) @ Ak.T
            Ak = Ak @ WA
            delta = float(np.abs(Hn - Hk).max())
            Hk = Hn
            if not math.isfinite(delta):
                return None
            if delta <= _SDA_RTOL * max(1.0, float(np.abs(Hk).max())):
                return symmetrize(Hk)
    return None


def _solve_dare(A, B, Q, R, S) -> tuple[np.ndarray, np.ndarray]:
    """Checked inputs in, (X, K) out; a numerically singular problem is a RiccatiError."""
    try:
        return _solve_dare_unguarded(A, B, Q, R, S)
    except np.linalg.LinAlgError as exc:
        raise RiccatiError(
            f"the DARE is numerically singular ({exc}); check the scaling of the matrices"
        ) from None


def _gain(A, B, R, S, X) -> tuple[np.ndarray, float]:
    """``K = (R + B'XB)^{-1}(B'XA + S')`` and the spectral radius of ``A - BK``."""
    K = np.linalg.solve(R + B.T @ X @ B, B.T @ X @ A + S.T)
    return K, spectral_radius(A - B @ K)


def _stabilizing(rho: float) -> bool:
    return bool(np.isfinite(rho)) and rho < 1.0 - STAB_TOL


def _solve_dare_unguarded(A, B, Q, R, S) -> tuple[np.ndarray, np.ndarray]:
    """Checked inputs in, (X, K) out; SDA first, scipy fallback, stabilizing check last."""
    Rinv_St = np.linalg.solve(R, S.T)
    As = A - B @ Rinv_St
    Qs = symmetrize(Q - S @ Rinv_St)
    G = symmetrize(B @ np.linalg.solve(R, B.T))
    X = _sda(As, G, Qs)
    rho = math.inf
    if X is not None and _residual(A, B, Q, R, S, X) <= _RESIDUAL_RTOL:
        K, rho = _gain(A, B, R, S, X)
    if not _stabilizing(rho):
        # SDA failed, was inaccurate, or found a non-stabilizing solution (it does when
        # (Q^1/2, A) has unobservable modes outside the unit circle, e.g. Q = 0)
        try:
            X = scipy.linalg.solve_discrete_are(A, B, Q, R, s=S)
        except (np.linalg.LinAlgError, ValueError) as exc:
            raise RiccatiError(f"the DARE has no stabilizing solution ({exc})") from None
        X = symmetrize(X)
        K, rho = _gain(A, B, R, S, X)
    if not _stabilizing(rho):
        raise RiccatiError(
            f"the DARE solution is not stabilizing (spectral radius of A - BK = {rho:.6g})"
        )
    return X, K


def _solve_or_diagnose(A, B, Q, R, S, diagnose) -> tuple[np.ndarray, np.ndarray]:
    """Solve; only when no stabilizing solution is found run ``diagnose()`` to name the cause.

    A converged, stabilizing solution proves stabilizability and the absence of
    unobservable unit-circle modes, so the (comparatively costly) PBH tests are needed
    only to explain a failure.
    """
    try:
        return _solve_dare(A, B, Q, R, S)
    except RiccatiError:
        diagnose()  # raises NotStabilizableError / NotDetectableError when that is the cause
        raise


def _check_lq(A, B, Q, R, S, names):
    """Convert and check (A, B, Q, R, S) with names for messages."""
    nA, nB, nQ, nR, nS = names
    A = as_square(nA, A)
    n = A.shape[0]
    B = as_matrix(nB, B, (n, None))
    m = B.shape[1]
    Q = check_psd(nQ, as_matrix(nQ, Q, (n, n)), strict=False)
    R = check_psd(nR, as_matrix(nR, R, (m, m)), strict=True)
    if S is None:
        return A, B, Q, R, np.zeros((n, m)), Q
    S = as_matrix(nS, S, (n, m))
    Qs = symmetrize(Q - S @ np.linalg.solve(R, S.T))
    if np.min(np.linalg.eigvalsh(Qs)) < -1e-8 * max(1.0, float(np.abs(Q).max())):
        raise NotPositiveDefiniteError(
            f"[[{nQ}, {nS}], [{nS}', {nR}]] must be positive semidefinite "
            f"({nQ} - {nS} {nR}^-1 {nS}' has a negative eigenvalue)"
        )
    return A, B, Q, R, S, Qs


def _solve_lq(A, B, Q, R, S, Qs) -> tuple[np.ndarray, np.ndarray]:
    """``(X, K)`` of the control DARE from :func:`_check_lq`'s output (``dare`` and ``dlqr``)."""

    def diagnose():
        check_stabilizable(A, B, ("A", "B"))
        _check_unit_circle_observable(A - B @ np.linalg.solve(R, S.T), Qs, ("A", "Q"))

    return _solve_or_diagnose(A, B, Q, R, S, diagnose)


def dare(A, B, Q, R, S=None) -> np.ndarray:
    """Solve the discrete algebraic Riccati equation (control form).

    ``X = A'XA - (A'XB + S)(R + B'XB)^{-1}(B'XA + S') + Q``; the stabilizing solution.

    Parameters
    ----------
    A : array_like, shape (n, n)
        State matrix.
    B : array_like, shape (n, m)
        Input matrix.
    Q : array_like, shape (n, n)
        State weight, symmetric positive semidefinite.
    R : array_like, shape (m, m)
        Input weight, symmetric positive definite.
    S : array_like, shape (n, m), optional
        Cross weight (the ``2 x'S u`` term); zero by default.

    Returns
    -------
    X : numpy.ndarray, shape (n, n)
        The stabilizing solution (symmetric positive semidefinite).

    Raises
    ------
    ShapeError, NonFiniteError, NotSymmetricError, NotPositiveDefiniteError
        Bad matrices.
    NotStabilizableError
        ``(A, B)`` is not stabilizable.
    NotDetectableError
        ``(Q^{1/2}, A)`` has an unobservable mode on the unit circle.
    RiccatiError
        No stabilizing solution was found.

    Notes
    -----
    Unlike :func:`control.dare`, only ``X`` is returned; use :func:`dlqr` for the gain.
    """
    X, _ = _solve_lq(*_check_lq(A, B, Q, R, S, ("A", "B", "Q", "R", "S")))
    return X


def dlqr(A, B, Q, R, N=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Discrete-time linear-quadratic regulator.

    Minimises ``sum x'Qx + u'Ru + 2 x'N u`` for ``x[t+1] = A x[t] + B u[t]`` with
    ``u = -K x``. Same meaning and return order as :func:`control.dlqr`.

    Parameters
    ----------
    A : array_like, shape (n, n)
        State matrix.
    B : array_like, shape (n, m)
        Input matrix.
    Q : array_like, shape (n, n)
        State weight, symmetric positive semidefinite.
    R : array_like, shape (m, m)
        Input weight, symmetric positive definite.
    N : array_like, shape (n, m), optional
        Cross weight; zero by default.

    Returns
    -------
    K : numpy.ndarray, shape (m, n)
        State-feedback gain, ``u = -K x``.
    X : numpy.ndarray, shape (n, n)
        Stabilizing solution of the control DARE.
    E : numpy.ndarray, shape (n,)
        Closed-loop eigenvalues, ``eig(A - B K)``.

    Raises
    ------
    ShapeError, NonFiniteError, NotSymmetricError, NotPositiveDefiniteError,
    NotStabilizableError, NotDetectableError, RiccatiError
        As for :func:`dare`.
    """
    A, B, Q, R, N, Qs = _check_lq(A, B, Q, R, N, ("A", "B", "Q", "R", "N"))
    X, K = _solve_lq(A, B, Q, R, N, Qs)
    return K, X, np.linalg.eigvals(A - B @ K)


def _filter_gain(C: np.ndarray, P: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Kalman filter ("current") gain ``Lf = P C'(C P C' + V)^{-1}`` from the prior covariance ``P``."""
    return np.linalg.solve(C @ P @ C.T + V, C @ P).T


def dlqe(A, C, W, V) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steady-state Kalman predictor gain for ``x[t+1] = A x + w``, ``y = C x + v``.

    Parameters
    ----------
    A : array_like, shape (n, n)
        State matrix.
    C : array_like, shape (p, n)
        Output matrix.
    W : array_like, shape (n, n)
        Process-noise covariance, symmetric positive semidefinite.
    V : array_like, shape (p, p)
        Measurement-noise covariance, symmetric positive definite.

    Returns
    -------
    L : numpy.ndarray, shape (n, p)
        Predictor gain ``L = A P C'(C P C' + V)^{-1}``, used as
        ``x̂[t+1|t] = (A - L C) x̂[t|t-1] + B u[t] + L y[t]`` (as :func:`control.dlqe`).
        The filter gain is ``Lf = P C'(CPC' + V)^{-1}`` (see :class:`lqgt.LQGDesign`).
    P : numpy.ndarray, shape (n, n)
        Steady-state prior (one-step prediction) error covariance.
    E : numpy.ndarray, shape (n,)
        Estimator eigenvalues, ``eig(A - L C)``.

    Raises
    ------
    ShapeError, NonFiniteError, NotSymmetricError, NotPositiveDefiniteError
        Bad matrices.
    NotDetectableError
        ``(A, C)`` is not detectable.
    NotStabilizableError
        ``(A, W^{1/2})`` has an unreachable mode on the unit circle.
    RiccatiError
        No stabilizing solution was found.

    Notes
    -----
    The argument order is ``(A, C, W, V)``; :func:`control.dlqe` takes ``(A, G, C, QN, RN)``
    with ``W = G QN G'``.
    """
    A = as_square("A", A)
    n = A.shape[0]
    C = as_matrix("C", C, (None, n))
    p = C.shape[0]
    W = check_psd("W", as_matrix("W", W, (n, n)), strict=False)
    V = check_psd("V", as_matrix("V", V, (p, p)), strict=True)

    def diagnose():
        check_detectable(A, C, ("A", "C"))
        try:
            _check_unit_circle_observable(A.T, W, ("A", "W"))
        except NotDetectableError as exc:
            raise NotStabilizableError(
                str(exc).replace("unobservable", "unreachable").replace("weight on", "process noise on")
            ) from None

    P, LT = _solve_or_diagnose(A.T, C.T, W, V, np.zeros((n, p)), diagnose)
    L = LT.T
    return L, P, np.linalg.eigvals(A - L @ C)
