"""Numerics shared by the Gaussian (Kalman-type) filters, in torch, batched over leading dims.

One home for what the EKF, the UKF, the lifted Koopman filter and :mod:`lqgt.filtering`
have in common: symmetrisation, the Joseph-form covariance update, the gain/mean
correction, the divergence check and the step timing of :mod:`lqgt.estimators.base`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import FilterDivergenceError

__all__ = ["check_covariance", "correct", "joseph", "step_timing", "sym"]


def sym(P: torch.Tensor) -> torch.Tensor:
    """Return ``(P + P') / 2`` (over the last two dims)."""
    return 0.5 * (P + P.mT)


def joseph(P: torch.Tensor, IKH: torch.Tensor, K: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Joseph-form covariance update ``(I − K H) P (I − K H)' + K V K'``, symmetrised.

    Parameters
    ----------
    P : torch.Tensor, shape (..., n, n)
        Prior covariance.
    IKH : torch.Tensor, shape (..., n, n)
        ``I − K H``.
    K : torch.Tensor, shape (..., n, p)
        Gain.
    V : torch.Tensor, shape (..., p, p)
        Measurement-noise covariance.

    Returns
    -------
    torch.Tensor, shape (..., n, n)
    """
    return sym(IKH @ P @ IKH.mT + K @ V @ K.mT)


def correct(x: torch.Tensor, Pxy: torch.Tensor, S: torch.Tensor, innovation: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-trajectory gain ``K = Pxy S⁻¹`` and corrected mean ``x + K (y − ŷ)``.

    Parameters
    ----------
    x : torch.Tensor, shape (B, n)
        Prior means.
    Pxy : torch.Tensor, shape (B, n, p)
        State–measurement cross covariances (``P H'`` for the EKF).
    S : torch.Tensor, shape (B, p, p)
        Innovation covariances (symmetric).
    innovation : torch.Tensor, shape (B, p)
        ``y − ŷ``.

    Returns
    -------
    x : torch.Tensor, shape (B, n)
    K : torch.Tensor, shape (B, n, p)
    """
    K = torch.linalg.solve(S, Pxy.mT).mT            # Pxy S^{-1} (S symmetric)
    return x + (K @ innovation.unsqueeze(-1)).squeeze(-1), K


def step_timing(form: str, started: bool, predict: Callable, update: Callable, x, P, y, u, c):
    """One filter step in the timing of :mod:`lqgt.estimators.base`.

    ``"current"``: predict with ``u[t-1]`` (not before the first measurement), then update
    with ``y[t]``; ``"predictor"``: update with ``y[t]``, then predict with ``u[t]``.
    ``predict(x, P, u, c)`` and ``update(x, P, y, c)`` return the new ``(x, P)``.
    """
    if form == "current" and started:
        x, P = predict(x, P, u, c)
    x, P = update(x, P, y, c)
    if form == "predictor":
        x, P = predict(x, P, u, c)
    return x, P


def check_covariance(name: str, P: torch.Tensor, ok: torch.Tensor, t: int) -> None:
    """Raise :class:`FilterDivergenceError` if ``P`` is non-finite for a trajectory with finite inputs.

    Parameters
    ----------
    name : str
        The filter's name, for the message.
    P : torch.Tensor, shape (B, k, k) or (k, k)
        Covariances (a shared ``(k, k)`` one counts for every trajectory).
    ok : torch.Tensor, shape (B,), bool
        Trajectories whose measurements and inputs have been finite so far (a diverging
        plant is the simulator's business, reported as an infinite cost).
    t : int
        The step, for the message.
    """
    finite = torch.isfinite(P).flatten(-2).all(-1)
    bad = ok & ~finite
    if not bool(bad.any()):
        return
    hint = "use float64, a smaller sample time, or a larger process noise W"
    if P.ndim == 2:
        raise FilterDivergenceError(f"{name}: the (shared) error covariance became NaN/inf at step {t}; "
                                    f"the filter failed numerically: {hint}")
    idx = torch.nonzero(bad.reshape(-1)).reshape(-1)
    raise FilterDivergenceError(
        f"{name}: the error covariance became NaN/inf at step {t} in {idx.numel()} of {ok.numel()} "
        f"trajectories whose measurements and inputs were finite (first: trajectory {int(idx[0])}); "
        f"the filter failed numerically: {hint}"
    )
