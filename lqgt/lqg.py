"""LQG design and the exact average cost of any linear estimator-feedback pair (SPEC §2)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from ._linalg import as_matrix, check_joint_psd, check_psd, spectral_radius, symmetrize
from .closed_loop import check_form, closed_loop
from .errors import IllConditionedError, RiccatiError, ShapeError
from .plant import Plant
from .riccati import _filter_gain, _is_statespace, dlqe, dlqr

__all__ = ["LQGDesign", "lqg", "lqg_cost", "cost_weights"]


def _require_plant(plant) -> None:
    """Raise a named error unless ``plant`` is an :class:`lqgt.Plant`."""
    if not isinstance(plant, Plant):
        if _is_statespace(plant):
            raise ShapeError(
                f"plant must be an lqgt.Plant, got a control.{type(plant).__name__}: convert it with "
                "lqgt.Plant.from_statespace(sys, W=W, V=V) (the noise covariances are needed; pass dt= "
                "to sample a continuous-time system)"
            )
        raise ShapeError(
            f"plant must be an lqgt.Plant, got {type(plant).__name__} "
            "(build one with lqgt.Plant(A, B, C, W=W, V=V), or from a control.StateSpace with "
            "lqgt.Plant.from_statespace(sys, W=W, V=V))"
        )


def cost_weights(plant: Plant, Q, R, N=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check and return the cost weights ``(Q, R, N)`` for ``plant``.

    Parameters
    ----------
    plant : Plant
        Gives the dimensions.
    Q : array_like, shape (n, n)
        State weight (symmetric PSD).
    R : array_like, shape (m, m)
        Input weight (symmetric positive definite).
    N : array_like, shape (n, m), optional
        Cross weight; ``[[Q, N], [N', R]]`` must be PSD.

    Returns
    -------
    Q, R, N : numpy.ndarray
    """
    return _cost_weights(plant, Q, R, N)[:3]


def _cost_weights(plant, Q, R, N=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`cost_weights` and the joint weight ``Qz = [[Q, N], [N', R]]`` of ``z = [x; u]``."""
    if not isinstance(plant, Plant) and getattr(plant, "is_linear", True) is not False:
        _require_plant(plant)
    n, m = plant.n, plant.m
    why = "the LQG cost (lqg, lqg_cost, simulate) must be nonnegative"
    Q = check_psd("Q", as_matrix("Q", Q, (n, n)), strict=False, needed_by=why)
    R = check_psd("R", as_matrix("R", R, (m, m)), strict=True, needed_by=why)
    N = np.zeros((n, m)) if N is None else as_matrix("N", N, (n, m))
    Qz = check_joint_psd(Q, R, N, needed_by="the LQG cost must be nonnegative")
    return Q, R, N, Qz


@dataclass(frozen=True, eq=False)
class LQGDesign:
    """Result of :func:`lqg`.

    Attributes
    ----------
    K : numpy.ndarray, shape (m, n)
        LQR gain, ``u = -K x̂``.
    L : numpy.ndarray, shape (n, p)
        Kalman predictor gain ``A P C'(CPC' + V)^{-1}``.
    Lf : numpy.ndarray, shape (n, p)
        Kalman filter ("current") gain ``P C'(CPC' + V)^{-1}``.
    X : numpy.ndarray, shape (n, n)
        Control DARE solution.
    P : numpy.ndarray, shape (n, n)
        Filter DARE solution (prior error covariance).
    cost : float
        Exact average cost per step of the optimal (current-form) LQG controller,
        ``tr(X W) + tr(K'(R + B'XB)K P_f)`` with ``P_f = P - Lf C P`` the posterior error
        covariance (finite and nonnegative). With a feedthrough ``D`` the controller
        subtracts ``D u`` from the innovation (it solves ``(I - K Lf D) u = ...`` when it
        measures first), so the loop and its cost are those of the plant without ``D``.
    cost_predictor : float
        Exact average cost of the same K with the predictor estimate (``u[t]`` from
        ``x̂[t|t-1]``), the loop the Transformer Filter copies:
        ``tr(X W) + tr(K'(R + B'XB)K P)``; also independent of ``D``.
    Q, R, N : numpy.ndarray
        The cost weights used.
    """

    K: np.ndarray
    L: np.ndarray
    Lf: np.ndarray
    X: np.ndarray
    P: np.ndarray
    cost: float
    cost_predictor: float
    Q: np.ndarray
    R: np.ndarray
    N: np.ndarray


def lqg(plant: Plant, Q, R, N=None) -> LQGDesign:
    """Design the LQG controller for ``plant`` and cost ``x'Qx + u'Ru + 2x'Nu``.

    Parameters
    ----------
    plant : Plant
        The plant with its noise model.
    Q : array_like, shape (n, n)
        State weight (symmetric PSD).
    R : array_like, shape (m, m)
        Input weight (symmetric positive definite).
    N : array_like, shape (n, m), optional
        Cross weight.

    Returns
    -------
    LQGDesign
        Gains, Riccati solutions and the exact average costs.

    Raises
    ------
    ShapeError
        ``plant`` is not an :class:`lqgt.Plant` (a :class:`control.StateSpace` is pointed
        to :meth:`lqgt.Plant.from_statespace`).
    NotPositiveDefiniteError
        ``Q`` or ``[[Q, N], [N', R]]`` not semidefinite, ``R`` not definite.
    NotStabilizableError, NotDetectableError, RiccatiError
        As raised by :func:`lqgt.dlqr` / :func:`lqgt.dlqe`; also a problem so badly
        scaled that the gains or costs come out non-finite.

    Notes
    -----
    The costs are computed from the Riccati solutions (separation principle: the cost of
    full-state LQR under the noise ``W``, plus the cost of acting on the estimate instead
    of the state), not from the Lyapunov equation of the augmented loop, which is far
    worse conditioned when a mode is close to the unit circle; :func:`lqg_cost` gives the
    same numbers for ``(K, Lf, "current")`` and ``(K, L, "predictor")`` (tested).
    """
    _require_plant(plant)
    Q, R, N, _ = _cost_weights(plant, Q, R, N)
    K, X, _ = dlqr(plant.A, plant.B, Q, R, N)
    L, P, _ = dlqe(plant.A, plant.C, plant.W, plant.V)
    B, C, V = plant.B, plant.C, plant.V
    with np.errstate(all="ignore"):
        try:
            Lf = _filter_gain(C, P, V)
            Pf = symmetrize(P - Lf @ C @ P)
            # x'Qx + u'Ru + 2x'Nu = V(x) - E V(x+) + tr(XW) + (u + Kx)'(R + B'XB)(u + Kx), V(x) = x'Xx;
            # with u = -K x̂ the last term is e'Γe with e = x - x̂, Γ = K'(R + B'XB)K
            Gam = symmetrize(K.T @ (R + B.T @ X @ B) @ K)
        except np.linalg.LinAlgError:
            Lf = Pf = Gam = None
        base = float(np.sum(X * plant.W))
        cost = base + float(np.sum(Gam * Pf)) if Gam is not None else math.nan
        cost_p = base + float(np.sum(Gam * P)) if Gam is not None else math.nan
    if Lf is None or not all(math.isfinite(v) for v in (cost, cost_p)) or not np.all(np.isfinite(Lf)):
        raise RiccatiError(
            "the LQG design is too badly scaled to evaluate: the filter gain or the costs are not finite "
            "(rescale the states, inputs and outputs)"
        )
    # both terms are nonnegative in exact arithmetic; clip rounding below zero
    return LQGDesign(K=K, L=L, Lf=Lf, X=X, P=P, cost=max(cost, 0.0), cost_predictor=max(cost_p, 0.0),
                     Q=Q, R=R, N=N)


def lqg_cost(plant: Plant, Q, R, K, L, form: str = "predictor", N=None, *, model: Plant | None = None) -> float:
    """Exact infinite-horizon average cost of the loop ``u = -K x̂`` with a fixed-gain observer.

    Solves the discrete Lyapunov equation of the augmented state (SPEC §2) and returns
    ``lim 1/T E Σ x'Qx + u'Ru + 2x'Nu``.

    Parameters
    ----------
    plant : Plant
        The true plant.
    Q : array_like, shape (n, n)
        State weight.
    R : array_like, shape (m, m)
        Input weight.
    K : array_like, shape (m, n)
        Feedback gain (any, not only LQR).
    L : array_like, shape (n, p)
        Observer gain: the predictor gain for ``form="predictor"``, the filter gain
        ``Lf`` for ``form="current"``.
    form : {"predictor", "current"}
        Which estimate the control uses.
    N : array_like, shape (n, m), optional
        Cross weight.
    model : Plant, optional
        The observer's model (defaults to ``plant``; differ to study model mismatch).

    Returns
    -------
    float
        The average cost per step; ``inf`` when the closed loop is not asymptotically stable.

    Raises
    ------
    ShapeError, NotPositiveDefiniteError, ConfigError
        Bad arguments.
    IllConditionedError
        The loop is stable but so close to the unit circle, or so badly scaled, that the
        Lyapunov equation cannot be solved accurately (the message gives the relative
        residual): the returned cost would be meaningless.
    """
    check_form(form)
    _require_plant(plant)
    Qz = _cost_weights(plant, Q, R, N)[3]
    K = as_matrix("K", K, (plant.m, plant.n))
    L = as_matrix("L", L, (plant.n, plant.p))
    return _average_cost(plant, Qz, K, L, form, model)


def _average_cost(plant: Plant, Qz: np.ndarray, K: np.ndarray, L: np.ndarray, form: str,
                  model: Plant | None = None) -> float:
    """:func:`lqg_cost` for checked arguments (``Qz`` from :func:`_cost_weights`)."""
    cl = closed_loop(plant, K, L, form, model=model)
    rho = spectral_radius(cl.F)
    if not rho < 1.0:
        return float("inf")
    Nz = np.zeros((plant.n + plant.p, plant.n + plant.p))
    Nz[: plant.n, : plant.n] = plant.W
    Nz[plant.n:, plant.n:] = plant.V
    Sigma, res = _stationary_covariance(cl.F, symmetrize(cl.G @ Nz @ cl.G.T))
    sl = cl.slices()
    rows = np.r_[np.arange(plant.n), np.arange(sl["u"].start, sl["u"].stop)]
    Hz, Jz = cl.H[rows], cl.J[rows]
    cov_z = Hz @ Sigma @ Hz.T + Jz @ plant.V @ Jz.T
    terms = Qz * cov_z
    cost = float(np.sum(terms))
    size = float(np.sum(np.abs(terms)))
    if not (res <= _LYAP_RTOL and math.isfinite(cost) and cost >= -1e-8 * size):
        raise IllConditionedError(
            f"the exact cost of this loop cannot be computed accurately: the closed-loop Lyapunov equation "
            f"has a relative residual of {res:.2g} (at most {_LYAP_RTOL:g} is accepted; spectral radius "
            f"{rho:.12g}, cost estimate {cost:.4g}); the loop is too close to the unit circle or too badly "
            "scaled (rescale the states, or estimate the cost by lqgt.simulate)"
        )
    return max(cost, 0.0)


#: Largest relative residual of the closed-loop Lyapunov equation accepted by lqg_cost.
_LYAP_RTOL = 1e-8


def _lyap_residual(F: np.ndarray, Qn: np.ndarray, S: np.ndarray) -> float:
    """``|S - F S F' - Qn| / (|S| + |F S F'| + |Qn|)`` (max norms); ``inf`` if not finite."""
    FSF = F @ S @ F.T
    res = float(np.abs(S - FSF - Qn).max())
    den = float(np.abs(S).max()) + float(np.abs(FSF).max()) + float(np.abs(Qn).max())
    if not (math.isfinite(res) and math.isfinite(den)):
        return math.inf
    return res / den if den > 0 else 0.0


def _stationary_covariance(F: np.ndarray, Qn: np.ndarray) -> tuple[np.ndarray, float]:
    """Solve ``S = F S F' + Qn`` for a stable ``F``; return ``S`` and its relative residual.

    Smith's doubling iteration ``S <- S + F_k S F_k'``, ``F_k <- F_k^2`` sums the series
    ``S = sum_j F^j Qn F'^j`` in ``log2`` of its length: every term is positive
    semidefinite, so nothing cancels and the cost read off ``S`` keeps its relative
    accuracy even where the Kronecker (Bartels-Stewart) solvers lose everything (a badly
    scaled integrator chain: 1e-3 relative error there against 1e-16 here, checked against
    60-digit arithmetic). When the doubling does not converge (a loop within ~1e-18 of the
    unit circle) or overflows, :func:`scipy.linalg.solve_discrete_lyapunov` is used and the
    caller judges the residual.
    """
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        S, Fk = Qn.copy(), F.copy()
        for _ in range(64):
            inc = Fk @ S @ Fk.T
            S = S + inc
            size = float(np.abs(S).max())
            if not math.isfinite(size):
                break
            if float(np.abs(inc).max()) <= 1e-17 * size:
                S = symmetrize(S)
                return S, _lyap_residual(F, Qn, S)
            Fk = Fk @ Fk
        try:
            S = symmetrize(scipy.linalg.solve_discrete_lyapunov(F, Qn))
            return S, _lyap_residual(F, Qn, S)
        except (np.linalg.LinAlgError, ValueError):
            return np.full_like(F, np.nan), math.inf
