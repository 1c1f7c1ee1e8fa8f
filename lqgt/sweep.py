"""β-sweeps of the Transformer Filter controller against the LQG (predictor) loop on common noise."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from .estimators.kalman import KalmanFilter
from .estimators.transformer import TransformerFilter
from .lqg import lqg
from .plant import Plant
from .simulate import _half_width95, simulate

__all__ = ["BetaSweep", "beta_sweep"]


@dataclass(frozen=True, eq=False)
class BetaSweep:
    """Result of :func:`beta_sweep` (arrays indexed like ``betas``).

    Attributes
    ----------
    betas : numpy.ndarray, shape (k,)
        Temperatures.
    cost : numpy.ndarray, shape (k,)
        Monte Carlo average cost of the TF controller.
    gap : numpy.ndarray, shape (k,)
        ``J_TF(β) - J_LQG`` estimated on common noise (per-trajectory differences).
    gap_ci : numpy.ndarray, shape (k, 2)
        95% confidence interval of ``gap``.
    cost_lqg : float
        Monte Carlo cost of the Kalman-predictor LQG loop in the same run.
    cost_lqg_exact : float
        Exact cost of that loop (:func:`lqgt.lqg_cost`, predictor form).
    error_max : numpy.ndarray, shape (k,)
        Measured ``sup_t ‖x̃[t] - x̂[t]‖`` over all trajectories (``x̂``: the Kalman
        predictor loop on the same noise).
    error_mean : numpy.ndarray, shape (k,)
        Mean over trajectories of ``sup_t ‖x̃[t] - x̂[t]‖``.
    bound : numpy.ndarray, shape (k,)
        Certified bound ``ε(β)`` (:meth:`TransformerFilter.error_bound`).
    settings : dict
        Window, batch, horizon, burn-in, seed, device.
    """

    betas: np.ndarray
    cost: np.ndarray
    gap: np.ndarray
    gap_ci: np.ndarray
    cost_lqg: float
    cost_lqg_exact: float
    error_max: np.ndarray
    error_mean: np.ndarray
    bound: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)


def beta_sweep(
    plant: Plant,
    Q,
    R,
    betas: Sequence[float],
    *,
    window: int = 32,
    S=None,
    batch: int = 500,
    horizon: int = 500,
    burn_in: int = 100,
    seed: int = 0,
    device: str | torch.device | None = "cpu",
    dtype: torch.dtype | None = None,
    impl: str = "kernel",
    progress: bool = False,
) -> BetaSweep:
    """Closed-loop cost gap and estimation error of the Transformer Filter controller versus β.

    All filters run in one :func:`lqgt.simulate` call, on the same noise as the LQG loop
    (``u = -K x̂`` with the Kalman predictor), so the gap ``J_TF(β) - J_LQG`` is estimated
    from per-trajectory differences with a tight confidence interval.

    Parameters
    ----------
    plant : Plant
        The plant.
    Q : array_like, shape (n, n)
        State weight.
    R : array_like, shape (m, m)
        Input weight.
    betas : sequence of float
        Temperatures to evaluate.
    window : int
        History window ``H``.
    S : array_like or "whiten", optional
        Distance weight of the filters.
    batch : int
        Trajectories.
    horizon : int
        Steps per trajectory.
    burn_in : int
        Steps excluded from the costs.
    seed : int
        Noise seed.
    device : str or torch.device
        Simulation device.
    dtype : torch.dtype, optional
        Float64 by default.
    impl : {"kernel", "attention"}
        Transformer Filter implementation.
    progress : bool
        Show a progress bar.

    Returns
    -------
    BetaSweep
    """
    design = lqg(plant, Q, R)
    betas = np.asarray([float(b) for b in betas])
    ests: dict[str, Any] = {"lqg": KalmanFilter(plant, form="predictor")}
    tfs = []
    for i, b in enumerate(betas):
        tf = TransformerFilter(plant, beta=b, window=window, K=design.K, S=S, impl=impl)
        tfs.append(tf)
        ests[f"tf{i}"] = tf
    res = simulate(plant, design.K, ests, Q=Q, R=R, horizon=horizon, batch=batch, seed=seed,
                   device=device, dtype=dtype, burn_in=burn_in, progress=progress)
    ref = res.cost_per_trajectory["lqg"]
    k = len(betas)
    cost, gap, gap_ci = np.empty(k), np.empty(k), np.empty((k, 2))
    err_max, err_mean = np.empty(k), np.empty(k)
    for i in range(k):
        name = f"tf{i}"
        diff = res.cost_per_trajectory[name] - ref
        cost[i] = res.cost[name]
        gap[i] = float(diff.mean())
        half = _half_width95(diff)
        gap_ci[i] = (gap[i] - half, gap[i] + half)
        e = (res.x_hat[name] - res.x_hat["lqg"]).norm(dim=-1).amax(dim=1)
        err_max[i], err_mean[i] = float(e.max()), float(e.mean())
    bound = np.array([tf.error_bound() for tf in tfs])
    return BetaSweep(
        betas=betas, cost=cost, gap=gap, gap_ci=gap_ci, cost_lqg=res.cost["lqg"],
        cost_lqg_exact=design.cost_predictor, error_max=err_max, error_mean=err_mean, bound=bound,
        settings=dict(window=window, batch=batch, horizon=horizon, burn_in=burn_in, seed=seed,
                      device=str(device), impl=impl),
    )
