"""β-sweeps of the Transformer Filter controller against the LQG (predictor) loop on common noise."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..estimators.kalman import KalmanFilter
from ..estimators.transformer import TransformerFilter
from ..lqg import lqg
from ..plant import Plant
from ..simulate import _half_width95, simulate

__all__ = ["BetaSweep", "beta_sweep"]


@dataclass(frozen=True, eq=False)
class BetaSweep:
    """Result of :func:`beta_sweep` (arrays indexed like ``betas``).

    Attributes
    ----------
    betas : numpy.ndarray, shape (k,)
        Inverse temperatures β (larger β sharpens the attention).
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
    chunk: int | None = None,
    backend: str = "local",
    address: str | None = None,
    gpus_per_task: float = 0,
    results=None,
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
        Inverse temperatures β to evaluate.
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
    chunk : int, optional
        Trajectories per task. When given (or with ``backend="ray"`` or ``results``) the
        batch is split into chunks run through :func:`lqgt.sweep.run`, each on its own
        derived seed, and the statistics are merged exactly; otherwise one simulation
        with ``seed`` runs in this process.
    backend : {"local", "ray"}
        Backend of :func:`lqgt.sweep.run`.
    address : str, optional
        Ray cluster address (``"auto"``), see :func:`lqgt.sweep.run`.
    gpus_per_task : float
        GPUs per Ray task.
    results : str or pathlib.Path, optional
        Results file of the chunks (resumable), see :func:`lqgt.sweep.run`.

    Returns
    -------
    BetaSweep
    """
    design = lqg(plant, Q, R)
    betas = np.asarray([float(b) for b in betas])
    if chunk is not None or backend != "local" or results is not None:
        return _chunked(plant, Q, R, design, betas, window=window, S=S, batch=batch, horizon=horizon,
                        burn_in=burn_in, seed=seed, device=device, dtype=dtype, impl=impl, progress=progress,
                        chunk=chunk, backend=backend, address=address, gpus_per_task=gpus_per_task,
                        results=results)
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


@dataclass(frozen=True, eq=False)
class _BetaChunk:
    """Sweep task of a chunked β-sweep: per-trajectory costs, gaps and sup errors of every β."""

    plant: Plant
    Q: np.ndarray
    R: np.ndarray
    K: np.ndarray
    betas: tuple
    window: int
    S: Any
    horizon: int
    burn_in: int
    dtype: Any
    impl: str

    def __call__(self, point, *, trajectories, seed, device):
        ests: dict[str, Any] = {"lqg": KalmanFilter(self.plant, form="predictor")}
        for i, b in enumerate(self.betas):
            ests[f"tf{i}"] = TransformerFilter(self.plant, beta=b, window=self.window, K=self.K, S=self.S,
                                               impl=self.impl)
        res = simulate(self.plant, self.K, ests, Q=self.Q, R=self.R, horizon=self.horizon, batch=trajectories,
                       seed=seed, device=device, dtype=self.dtype, burn_in=self.burn_in)
        ref = res.cost_per_trajectory["lqg"]
        out = {"cost_lqg": ref}
        for i in range(len(self.betas)):
            c = res.cost_per_trajectory[f"tf{i}"]
            out[f"cost_{i}"], out[f"gap_{i}"] = c, c - ref
            out[f"err_{i}"] = (res.x_hat[f"tf{i}"] - res.x_hat["lqg"]).norm(dim=-1).amax(dim=1)
        return out


def _chunked(plant, Q, R, design, betas, *, window, S, batch, horizon, burn_in, seed, device, dtype, impl,
             progress, chunk, backend, address, gpus_per_task, results) -> BetaSweep:
    from .grid import Grid
    from .run import run

    task = _BetaChunk(plant, np.asarray(Q, float), np.asarray(R, float), design.K, tuple(float(b) for b in betas),
                      window, S, horizon, burn_in, dtype, impl)
    tab = run(task, Grid(window=[int(window)]), trajectories=batch, chunk=chunk, seed=seed, backend=backend,
              address=address, gpus_per_task=gpus_per_task, device=str(device or "cpu"), results=results,
              progress=progress)
    k = len(betas)
    m = {name: ms[0] for name, ms in tab.metrics.items()}
    gap_ci = np.array([m[f"gap_{i}"].ci95 for i in range(k)]).reshape(k, 2)
    bound = np.array([TransformerFilter(plant, beta=b, window=window, K=design.K, S=S, impl=impl).error_bound()
                      for b in betas])
    return BetaSweep(
        betas=betas, cost=np.array([m[f"cost_{i}"].mean for i in range(k)]),
        gap=np.array([m[f"gap_{i}"].mean for i in range(k)]), gap_ci=gap_ci, cost_lqg=m["cost_lqg"].mean,
        cost_lqg_exact=design.cost_predictor, error_max=np.array([m[f"err_{i}"].max for i in range(k)]),
        error_mean=np.array([m[f"err_{i}"].mean for i in range(k)]), bound=bound,
        settings=dict(window=window, batch=batch, horizon=horizon, burn_in=burn_in, seed=seed, device=str(device),
                      impl=impl, chunk=tab.settings["chunk"], backend=backend),
    )
