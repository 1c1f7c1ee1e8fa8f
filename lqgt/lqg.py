"""LQG design and the exact average cost of any linear estimator-feedback pair (SPEC §2)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import scipy.linalg

from ._linalg import as_matrix, check_psd, spectral_radius, symmetrize
from .closed_loop import check_form, closed_loop
from .errors import NotPositiveDefiniteError, ShapeError
from .plant import Plant
from .riccati import _filter_gain, dlqe, dlqr

__all__ = ["LQGDesign", "lqg", "lqg_cost", "cost_weights"]


def _require_plant(plant) -> None:
    """Raise a named error unless ``plant`` is an :class:`lqgt.Plant`."""
    if not isinstance(plant, Plant):
        raise ShapeError(
            f"plant must be an lqgt.Plant, got {type(plant).__name__} "
            "(build one with lqgt.Plant(A, B, C, W=W, V=V))"
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
    Q = check_psd("Q", as_matrix("Q", Q, (n, n)), strict=False)
    R = check_psd("R", as_matrix("R", R, (m, m)), strict=True)
    N = np.zeros((n, m)) if N is None else as_matrix("N", N, (n, m))
    Qz = np.block([[Q, N], [N.T, R]])
    if np.min(np.linalg.eigvalsh(Qz)) < -1e-8 * max(1.0, float(np.abs(Qz).max())):
        raise NotPositiveDefiniteError("[[Q, N], [N', R]] must be positive semidefinite")
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
        Exact average cost per step of the optimal (current-form) LQG controller. With a
        feedthrough ``D`` the controller solves the algebraic loop ``(I - K Lf D) u = ...``
        and the cost equals that of the plant without ``D``.
    cost_predictor : float
        Exact average cost of the same K with the predictor estimate (``u[t]`` from
        ``x̂[t|t-1]``), the loop the Transformer Filter copies.
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
    NotStabilizableError, NotDetectableError, RiccatiError, LqgtError
        As raised by :func:`lqgt.dlqr` / :func:`lqgt.dlqe` or by weight checks.
    """
    _require_plant(plant)
    Q, R, N, Qz = _cost_weights(plant, Q, R, N)
    K, X, _ = dlqr(plant.A, plant.B, Q, R, N)
    L, P, _ = dlqe(plant.A, plant.C, plant.W, plant.V)
    Lf = _filter_gain(plant.C, P, plant.V)
    # With a feedthrough D the current-form controller must solve the algebraic loop
    # (I - K Lf D) u = -K (x̄ + Lf (y - C x̄)); the D u terms then cancel in the innovation,
    # so the closed loop, and its cost, are those of the plant without D.
    no_d = replace(plant, D=None) if plant.has_feedthrough else plant
    cost = _average_cost(no_d, Qz, K, Lf, "current")
    cost_p = _average_cost(plant, Qz, K, L, "predictor")
    return LQGDesign(K=K, L=L, Lf=Lf, X=X, P=P, cost=cost, cost_predictor=cost_p, Q=Q, R=R, N=N)


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
    if spectral_radius(cl.F) >= 1.0:
        return float("inf")
    Nz = np.zeros((plant.n + plant.p, plant.n + plant.p))
    Nz[: plant.n, : plant.n] = plant.W
    Nz[plant.n:, plant.n:] = plant.V
    Sigma = symmetrize(scipy.linalg.solve_discrete_lyapunov(cl.F, cl.G @ Nz @ cl.G.T))
    sl = cl.slices()
    rows = np.r_[np.arange(plant.n), np.arange(sl["u"].start, sl["u"].stop)]
    Hz, Jz = cl.H[rows], cl.J[rows]
    cov_z = Hz @ Sigma @ Hz.T + Jz @ plant.V @ Jz.T
    return float(np.sum(Qz * cov_z))
