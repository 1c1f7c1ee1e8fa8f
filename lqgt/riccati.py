"""Discrete algebraic Riccati equations: ``dare``, ``dlqr``, ``dlqe``.

Conventions (SPEC §2), names, call forms and return orders as in python-control 0.10:

* ``X, L, G = dare(A, B, Q, R, S=None, E=None)``: the generalised control DARE
  ``E'XE = A'XA - (A'XB + S)(R + B'XB)^{-1}(B'XA + S') + Q``, its stabilising solution
  ``X``, the closed-loop eigenvalues ``L`` and the gain ``G = (R + B'XB)^{-1}(B'XA + S')``;
  ``Q`` and ``[[Q, S], [S', R]]`` may be indefinite (any DARE with a stabilising solution);
* ``K, X, E = dlqr(A, B, Q, R, N=None)`` or ``dlqr(sys, Q, R, N=None)``, feedback ``u = -K x``,
  ``Q`` and ``[[Q, N], [N', R]]`` positive semidefinite (the cost must be nonnegative);
* ``L, P, E = dlqe(A, C, W, V)`` (lqgt), ``dlqe(A, G, C, QN, RN)`` or ``dlqe(sys, QN, RN)``
  (python-control): the filter DARE on the prior covariance
  ``P = APA' - APC'(CPC' + V)^{-1}CPA' + W`` with the *predictor* gain
  ``L = APC'(CPC' + V)^{-1}``.

The solver is the structure-preserving doubling algorithm (SDA, quadratically convergent,
pure numpy, no slycot) where its assumptions hold (``R > 0``, ``Q - S R^{-1} S' >= 0``),
:func:`scipy.linalg.solve_discrete_are` otherwise or when SDA fails; the result is
polished by Newton (Hewer) steps and accepted only when its Riccati residual is small
*relative to the size of the terms of the equation* (so a solution of size 1e-13 is as
accurate as one of size 1e13) and the closed loop is stable. A closed loop that is
stable only to within ``1e-6`` of the unit circle triggers the structural (PBH) tests,
so that a mode on the unit circle that the weight or noise cannot see raises
:class:`~lqgt.errors.NotDetectableError` / :class:`~lqgt.errors.NotStabilizableError`
instead of returning a gain that leaves it marginally stable.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import scipy.linalg

from ._linalg import (
    STAB_TOL,
    SYM_RTOL,
    _equilibrated_eigs,
    as_matrix,
    as_square,
    check_detectable,
    check_joint_psd,
    check_psd,
    check_stabilizable,
    spectral_radius,
    symmetrize,
)
from .errors import (
    ConfigError,
    NotDetectableError,
    NotStabilizableError,
    NotSymmetricError,
    RiccatiError,
)

__all__ = ["dare", "dlqr", "dlqe"]

_SDA_MAXITER = 100
#: SDA stops when an update is below this fraction of the iterate (relative, scale-free).
_SDA_RTOL = 1e-15
#: Relative residual accepted without Newton polishing.
_RESIDUAL_RTOL = 1e-12
#: Largest relative residual returned at all; worse is a RiccatiError (ill-conditioned).
_RESIDUAL_MAX = 1e-8
_NEWTON_STEPS = 4
#: A stabilizing closed loop this close to the unit circle is checked structurally (PBH).
_NEAR_CIRCLE = 1e-6


# --------------------------------------------------------------------------- helpers


def _is_statespace(obj: Any) -> bool:
    """``True`` for a python-control LTI object (checked by module, control is not imported)."""
    return type(obj).__module__.split(".")[0] == "control"


def _statespace_matrices(fn: str, sys: Any, call: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A, B, C)`` of a discrete :class:`control.StateSpace`; continuous or non-state-space refused."""
    if not all(hasattr(sys, k) for k in ("A", "B", "C")):
        raise ConfigError(
            f"{fn} takes a control.StateSpace, got a {type(sys).__name__}; convert it with control.ss(sys), "
            f"or call {call}"
        )
    dt = getattr(sys, "dt", None)
    if dt is None or (dt is not True and dt == 0):
        what = "continuous-time (sys.dt == 0)" if dt == 0 else "of unspecified timebase (sys.dt is None)"
        raise ConfigError(
            f"{fn} needs a discrete-time system, but sys is {what}: sample it first, e.g. "
            f"control.c2d(sys, dt) or lqgt.Plant.from_statespace(sys, W=W, V=V, dt=dt), or call {call}"
        )
    return tuple(np.asarray(M, dtype=float) for M in (sys.A, sys.B, sys.C))  # type: ignore[return-value]


def _check_symmetric(name: str, M: np.ndarray) -> np.ndarray:
    """Symmetry only (relative to the largest entry); the definiteness is not required."""
    scale = float(np.abs(M).max())
    asym = float(np.abs(M - M.T).max())
    if asym > SYM_RTOL * scale:
        raise NotSymmetricError(f"{name} must be symmetric (max |{name} - {name}'| = {asym:.3g})")
    return symmetrize(M)


def _terms(A, B, Q, R, S, X):
    """The terms of the control DARE at ``X``: ``A'XA``, ``T' G^{-1} T`` and ``(G, T)``."""
    BX = B.T @ X
    G = symmetrize(R + BX @ B)
    T = BX @ A + S.T
    return A.T @ X @ A, T.T @ np.linalg.solve(G, T), G, T


def _residual(A, B, Q, R, S, X) -> float:
    """Relative residual of the control DARE at ``X``.

    ``|A'XA - T'G^{-1}T + Q - X| / (|A'XA| + |T'G^{-1}T| + |Q| + |X|)`` (max norms): the
    error relative to the size of the terms that cancel, independent of the scale of the
    problem (0 for the exact solution ``X = 0`` of ``Q = 0``).
    """
    try:
        AXA, TGT, _, _ = _terms(A, B, Q, R, S, X)
    except np.linalg.LinAlgError:
        return math.inf
    res = float(np.abs(AXA - TGT + Q - X).max())
    den = sum(float(np.abs(M).max()) for M in (AXA, TGT, Q, X))
    if not math.isfinite(res) or not math.isfinite(den):
        return math.inf
    return res / den if den > 0 else 0.0


def _sda(A: np.ndarray, G: np.ndarray, H: np.ndarray) -> np.ndarray | None:
    """Structure-preserving doubling for ``X = A'X(I + G X)^{-1}A + H`` with ``G = B R^{-1} B'``.

    Iterates ``A+ = A W^{-1} A``, ``G+ = G + A W^{-1} G A'``, ``H+ = H + A' H W^{-1} A`` with
    ``W = I + G H``; ``H_k`` converges quadratically to the stabilizing solution. The
    stopping test is relative to the iterate (scale-free). Returns the last iterate when
    the updates stagnate at rounding level (the residual test decides), ``None`` when the
    iteration breaks down.
    """
    n = A.shape[0]
    eye = np.eye(n)
    Ak, Gk, Hk = A, G, H
    prev = math.inf
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
            size = float(np.abs(Hk).max())
            if delta <= _SDA_RTOL * size or not np.any(Ak):
                break
            if delta >= prev and delta <= 1e-10 * size:  # stagnating at rounding level
                break
            prev = delta
    return symmetrize(Hk) if np.all(np.isfinite(Hk)) else None


def _gain(A, B, R, S, X) -> tuple[np.ndarray, float]:
    """``K = (R + B'XB)^{-1}(B'XA + S')`` and the spectral radius of ``A - BK``."""
    K = np.linalg.solve(symmetrize(R + B.T @ X @ B), B.T @ X @ A + S.T)
    return K, spectral_radius(A - B @ K)


def _stabilizing(rho: float) -> bool:
    return bool(np.isfinite(rho)) and rho < 1.0 - STAB_TOL


def _newton(A, B, Q, R, S, X, res: float) -> tuple[np.ndarray, float]:
    """Polish a stabilizing ``X`` by Newton (Hewer) steps while the residual decreases.

    Each step solves the Lyapunov equation ``X+ = Ac' X+ Ac + [I; -K]' [[Q, S], [S', R]] [I; -K]``
    of the closed loop ``Ac = A - B K(X)``; it is Newton's method on the Riccati operator.
    """
    for _ in range(_NEWTON_STEPS):
        if res <= _RESIDUAL_RTOL * 1e-2:
            break
        try:
            K, rho = _gain(A, B, R, S, X)
            if not _stabilizing(rho):
                break
            Ac = A - B @ K
            Qc = Q - S @ K - K.T @ S.T + K.T @ R @ K
            with warnings.catch_warnings():  # ill-conditioning is judged by the residual below
                warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
                Xn = symmetrize(scipy.linalg.solve_discrete_lyapunov(Ac.T, symmetrize(Qc)))
        except (np.linalg.LinAlgError, ValueError):
            break
        rn = _residual(A, B, Q, R, S, Xn)
        if not rn < res:
            break
        X, res = Xn, rn
    return X, res


def _solve_dare(A, B, Q, R, S, *, sda: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """Checked inputs in, ``(X, K, rho(A - BK))`` out; ``RiccatiError`` when no stabilizing solution is reached."""
    cands: list[tuple[float, np.ndarray]] = []  # (residual, X) of stabilizing candidates
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if sda:
            try:
                Rinv_St = np.linalg.solve(R, S.T)
                X = _sda(A - B @ Rinv_St, symmetrize(B @ np.linalg.solve(R, B.T)), symmetrize(Q - S @ Rinv_St))
            except np.linalg.LinAlgError:
                X = None
            if X is not None:
                try:
                    stab = _stabilizing(_gain(A, B, R, S, X)[1])
                except np.linalg.LinAlgError:
                    stab = False
                if stab:
                    cands.append((_residual(A, B, Q, R, S, X), X))
        # SDA may fail, be inaccurate, or find a non-stabilizing solution (it does when
        # (Q^1/2, A) has unobservable modes outside the unit circle, e.g. Q = 0)
        if not cands or cands[0][0] > _RESIDUAL_RTOL:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
                    X = symmetrize(scipy.linalg.solve_discrete_are(A, B, Q, R, s=S))
                if np.all(np.isfinite(X)) and _stabilizing(_gain(A, B, R, S, X)[1]):
                    cands.append((_residual(A, B, Q, R, S, X), X))
            except (np.linalg.LinAlgError, ValueError):
                pass
        if not cands:
            raise RiccatiError("the DARE has no stabilizing solution (no solver reached one)")
        res, X = min(cands, key=lambda c: c[0])
        if res > _RESIDUAL_RTOL:
            X, res = _newton(A, B, Q, R, S, X, res)
        try:
            K, rho = _gain(A, B, R, S, X)
        except np.linalg.LinAlgError as exc:
            raise RiccatiError(f"the DARE is numerically singular ({exc}); check the scaling of the matrices") from None
    if res > _RESIDUAL_MAX:
        raise RiccatiError(
            f"the DARE has no accurate stabilizing solution: the best candidate found has a relative "
            f"residual of {res:.2g} (lqgt accepts at most {_RESIDUAL_MAX:g}); the equation may have no "
            "stabilizing solution, or be too ill-conditioned (rescale the states and inputs)"
        )
    if not _stabilizing(rho):
        raise RiccatiError(f"the DARE solution is not stabilizing (spectral radius of A - BK = {rho:.6g})")
    return X, K, rho


def _solve_or_diagnose(A, B, Q, R, S, diagnose, *, sda: bool) -> tuple[np.ndarray, np.ndarray]:
    """Solve; run ``diagnose()`` to name the cause when no stabilizing solution is found, and
    also when the solution found leaves the closed loop within ``_NEAR_CIRCLE`` of the unit circle.

    A clearly stabilizing solution proves stabilizability and the absence of unobservable
    unit-circle modes, so the (comparatively costly) PBH tests are needed only to explain a
    failure or to reject a marginal "solution" that rounding made look stabilizing.
    """
    try:
        X, K, rho = _solve_dare(A, B, Q, R, S, sda=sda)
    except RiccatiError:
        diagnose()  # raises NotStabilizableError / NotDetectableError when that is the cause
        raise
    if rho >= 1.0 - _NEAR_CIRCLE:
        diagnose()
    return X, K


def _check_unit_circle_observable(A: np.ndarray, Q: np.ndarray, names: tuple[str, str]) -> None:
    """A stabilizing DARE solution needs no unobservable mode of (Q^{1/2}, A) on |z| = 1.

    PBH test at each eigenvalue of ``A`` within ``_NEAR_CIRCLE`` of the unit circle, with
    ``Q`` normalised to the size of ``A`` (only its range matters), so the test does not
    depend on the overall scale of the weight.
    """
    n = A.shape[0]
    eigs = np.linalg.eigvals(A)
    on_circle = eigs[np.abs(np.abs(eigs) - 1.0) <= _NEAR_CIRCLE]
    if on_circle.size == 0:
        return
    scale = max(1.0, float(np.abs(A).max()))
    qn = float(np.abs(Q).max())
    Qn = Q * (scale / qn) if qn > 0 else Q
    for lam in on_circle:
        sv = np.linalg.svd(np.vstack([A - lam * np.eye(n), Qn]), compute_uv=False)
        if sv[n - 1] <= 1e-8 * scale:
            raise NotDetectableError(
                f"({names[1]}^(1/2), {names[0]}) has an unobservable mode on the unit circle "
                f"(lambda = {lam:.4g}, |lambda| - 1 = {abs(lam) - 1.0:.2g}; lqgt treats modes within "
                f"{_NEAR_CIRCLE:g} of the circle as on it): the Riccati equation has no stabilizing solution; "
                f"add weight on that mode in {names[1]}"
            )


def _psd_part(M: np.ndarray) -> np.ndarray:
    """The PSD part of a symmetric matrix (its positive eigenvalues), for structural tests."""
    lam, U = np.linalg.eigh(symmetrize(M))
    return (U * np.clip(lam, 0.0, None)) @ U.T


# --------------------------------------------------------------------------- control DARE


def _check_lq(A, B, Q, R, S, names, *, lq: bool, E=None):
    """Convert and check ``(A, B, Q, R, S[, E])``; return them with the flags for the solver.

    ``lq=True`` (``dlqr``, ``lqg``): ``Q`` PSD, ``R`` PD and the joint weight PSD.
    ``lq=False`` (``dare``): ``Q``, ``R`` only symmetric (``R`` nonsingular at the solution).
    """
    nA, nB, nQ, nR, nS = names
    A = as_square(nA, A)
    n = A.shape[0]
    B = as_matrix(nB, B, (n, None))
    m = B.shape[1]
    Q = as_matrix(nQ, Q, (n, n))
    R = np.eye(m) if R is None else as_matrix(nR, R, (m, m))
    S = np.zeros((n, m)) if S is None else as_matrix(nS, S, (n, m))
    if lq:
        fn = "dlqr"
        why = "dlqr (and lqg) need a nonnegative LQ cost; lqgt.dare solves indefinite Riccati equations"
        Q = check_psd(nQ, Q, strict=False, needed_by=why)
        R = check_psd(nR, R, strict=True, needed_by=why)
        if np.any(S):
            check_joint_psd(Q, R, S, (nQ, nR, nS), needed_by=f"{fn} needs a nonnegative cost; lqgt.dare does not")
        sda = True
    else:
        Q = _check_symmetric(nQ, Q)
        R = _check_symmetric(nR, R)
        # SDA's theory needs R > 0 and Q - S R^-1 S' >= 0; otherwise the QZ solver is used
        sda = bool(_equilibrated_eigs(R).min() > 1e-12)
        if sda:
            sda = bool(_equilibrated_eigs(symmetrize(Q - S @ np.linalg.solve(R, S.T))).min() >= -SYM_RTOL)
    if E is not None:
        E = as_matrix("E", E, (n, n))
    return A, B, Q, R, S, E, sda


def _solve_lq(A, B, Q, R, S, *, sda: bool, psd: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(X, K)`` of the control DARE from checked matrices."""

    def diagnose():
        check_stabilizable(A, B, ("A", "B"))
        if psd:
            Rinv_St = np.linalg.solve(R, S.T)
            _check_unit_circle_observable(A - B @ Rinv_St, _psd_part(Q - S @ Rinv_St), ("A", "Q"))

    return _solve_or_diagnose(A, B, Q, R, S, diagnose, sda=sda)


def dare(A, B, Q, R=None, S=None, E=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Solve the (generalised) discrete algebraic Riccati equation, as :func:`control.dare`.

    ``E'XE = A'XA - (A'XB + S)(R + B'XB)^{-1}(B'XA + S') + Q``; the stabilizing solution.
    ``Q`` (and the joint weight ``[[Q, S], [S', R]]``) may be indefinite: any DARE that has
    a stabilizing solution is solved. The LQ problem's definiteness requirements are
    enforced by :func:`dlqr` and :func:`lqgt.lqg`, not here.

    Parameters
    ----------
    A : array_like, shape (n, n)
        State matrix.
    B : array_like, shape (n, m)
        Input matrix.
    Q : array_like, shape (n, n)
        State weight, symmetric (not necessarily semidefinite).
    R : array_like, shape (m, m), optional
        Input weight, symmetric, with ``R + B'XB`` nonsingular; the identity when omitted
        (as in python-control).
    S : array_like, shape (n, m), optional
        Cross weight (the ``2 x'S u`` term); zero by default.
    E : array_like, shape (n, n), optional
        Descriptor matrix of the generalised equation; must be nonsingular (a singular
        ``E`` is refused by name). The identity by default.

    Returns
    -------
    X : numpy.ndarray, shape (n, n)
        The stabilizing solution (symmetric).
    L : numpy.ndarray, shape (n,)
        Closed-loop eigenvalues: ``eig(A - B G)``, with ``E`` the generalised eigenvalues
        of ``(A - B G, E)``; all inside the unit circle.
    G : numpy.ndarray, shape (m, n)
        Gain ``(R + B'XB)^{-1}(B'XA + S')``.

    Raises
    ------
    ShapeError, NonFiniteError, NotSymmetricError
        Bad matrices.
    NotStabilizableError
        ``(A, B)`` is not stabilizable.
    NotDetectableError
        With a semidefinite ``Q - S R^{-1} S'``: ``(Q^{1/2}, A)`` has an unobservable mode
        on the unit circle.
    RiccatiError
        No stabilizing solution was found, the equation is too ill-conditioned to solve
        accurately, or ``E`` is singular.

    Notes
    -----
    Same call and return order as :func:`control.dare` (python-control 0.10):
    ``X, L, G = dare(A, B, Q, R, S, E)``. Differences: python-control's ``method`` and
    ``stabilizing`` keywords are not taken (lqgt always returns the stabilizing solution),
    and a singular ``E`` is refused. Before lqgt 0.2, ``dare`` returned ``X`` alone.
    """
    A, B, Q, R, S, E, sda = _check_lq(A, B, Q, R, S, ("A", "B", "Q", "R", "S"), lq=False, E=E)
    if E is None:
        X, G = _solve_lq(A, B, Q, R, S, sda=sda, psd=sda)
        return X, np.linalg.eigvals(A - B @ G), G
    # E'XE = ...: with Y = E'XE, At = E^-1 A, Bt = E^-1 B the equation is the standard one in Y
    cond = np.linalg.cond(E)
    if not cond < 1e12:
        raise RiccatiError(
            f"E is singular or nearly so (condition number {cond:.3g}); lqgt.dare solves the generalised "
            "DARE only for a nonsingular E"
        )
    At, Bt = np.linalg.solve(E, A), np.linalg.solve(E, B)
    Y, G = _solve_lq(At, Bt, Q, R, S, sda=sda, psd=sda)
    Einv = np.linalg.inv(E)
    X = symmetrize(Einv.T @ Y @ Einv)
    return X, np.linalg.eigvals(At - Bt @ G), G


def dlqr(A, B, Q, R=None, N=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Discrete-time linear-quadratic regulator, as :func:`control.dlqr`.

    Minimises ``sum x'Qx + u'Ru + 2 x'N u`` for ``x[t+1] = A x[t] + B u[t]`` with
    ``u = -K x``. Two call forms, as in python-control: ``dlqr(A, B, Q, R[, N])`` and
    ``dlqr(sys, Q, R[, N])`` with a discrete-time :class:`control.StateSpace` ``sys``
    (its ``A``, ``B`` are used; a continuous-time ``sys`` is refused).

    Parameters
    ----------
    A : array_like, shape (n, n), or control.StateSpace
        State matrix, or a discrete-time system (then the remaining arguments shift
        left: ``dlqr(sys, Q, R, N)``).
    B : array_like, shape (n, m)
        Input matrix (``Q`` in the ``sys`` form).
    Q : array_like, shape (n, n)
        State weight, symmetric positive semidefinite (``R`` in the ``sys`` form).
    R : array_like, shape (m, m)
        Input weight, symmetric positive definite (``N`` in the ``sys`` form).
        Required in the matrix form.
    N : array_like, shape (n, m), optional
        Cross weight; zero by default. ``[[Q, N], [N', R]]`` must be positive semidefinite.

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
    ShapeError, NonFiniteError, NotSymmetricError
        Bad matrices.
    NotPositiveDefiniteError
        ``Q`` or ``[[Q, N], [N', R]]`` not semidefinite, or ``R`` not definite (the LQ
        cost must be nonnegative; :func:`dare` solves indefinite equations).
    NotStabilizableError, NotDetectableError, RiccatiError
        As for :func:`dare`.
    ConfigError
        A continuous-time or non-state-space ``sys``, or a missing ``R``.
    """
    if _is_statespace(A):
        if N is not None:
            raise ConfigError("dlqr(sys, Q, R, N) takes at most 4 arguments with a system")
        As, Bs, _ = _statespace_matrices("dlqr", A, "lqgt.dlqr(A, B, Q, R)")
        A, B, Q, R, N = As, Bs, B, Q, R
    if R is None:
        raise ConfigError("dlqr(A, B, Q, R[, N]) needs the input weight R (or call dlqr(sys, Q, R) with a system)")
    A, B, Q, R, N, _, sda = _check_lq(A, B, Q, R, N, ("A", "B", "Q", "R", "N"), lq=True)
    X, K = _solve_lq(A, B, Q, R, N, sda=sda, psd=True)
    return K, X, np.linalg.eigvals(A - B @ K)


def _filter_gain(C: np.ndarray, P: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Kalman filter ("current") gain ``Lf = P C'(C P C' + V)^{-1}`` from the prior covariance ``P``."""
    return np.linalg.solve(C @ P @ C.T + V, C @ P).T


def dlqe(A, C, W, V=None, RN=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steady-state Kalman predictor gain for ``x[t+1] = A x + w``, ``y = C x + v``.

    Three call forms:

    * ``dlqe(A, C, W, V)`` (lqgt): ``W`` is the process-noise covariance;
    * ``dlqe(A, G, C, QN, RN)`` (python-control): noise ``G w`` with ``cov(w) = QN``,
      so ``W = G QN G'`` and ``V = RN``;
    * ``dlqe(sys, QN, RN)`` (python-control): a discrete-time :class:`control.StateSpace`
      whose ``B`` is the noise input ``G`` (python-control's convention), ``C = sys.C``.

    Parameters
    ----------
    A : array_like, shape (n, n), or control.StateSpace
        State matrix, or a discrete-time system (then ``dlqe(sys, QN, RN)``).
    C : array_like, shape (p, n)
        Output matrix (``G``, shape (n, k), in the five-argument form; ``QN`` in the
        ``sys`` form).
    W : array_like, shape (n, n)
        Process-noise covariance, symmetric positive semidefinite (``C`` in the
        five-argument form; ``RN`` in the ``sys`` form).
    V : array_like, shape (p, p)
        Measurement-noise covariance, symmetric positive definite (``QN``, shape (k, k),
        in the five-argument form).
    RN : array_like, shape (p, p), optional
        Measurement-noise covariance of the five-argument form ``dlqe(A, G, C, QN, RN)``;
        giving it selects that form.

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
    ConfigError
        A continuous-time ``sys``, extra arguments with ``sys``, or a missing ``V``.
    """
    if _is_statespace(A):
        if V is not None or RN is not None:
            raise ConfigError("dlqe(sys, QN, RN) takes 3 arguments with a system")
        A, G, C_ = _statespace_matrices("dlqe", A, "lqgt.dlqe(A, C, W, V)")
        C, QN, V = C_, C, W
    elif RN is not None:
        G, C, QN, V = C, W, V, RN
    else:
        G = QN = None
        if V is None:
            raise ConfigError("dlqe(A, C, W, V) needs the measurement-noise covariance V "
                              "(python-control's form is dlqe(A, G, C, QN, RN))")
    A = as_square("A", A)
    n = A.shape[0]
    C = as_matrix("C", C, (None, n))
    p = C.shape[0]
    if G is not None:
        G = as_matrix("G", G, (n, None))
        QN = check_psd("QN", as_matrix("QN", QN, (G.shape[1], G.shape[1])), strict=False)
        W = symmetrize(G @ QN @ G.T)
        V = check_psd("RN", as_matrix("RN", V, (p, p)), strict=True)
    else:
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

    P, LT = _solve_or_diagnose(A.T, C.T, W, V, np.zeros((n, p)), diagnose, sda=True)
    L = LT.T
    return L, P, np.linalg.eigvals(A - L @ C)
