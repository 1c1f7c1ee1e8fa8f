"""Scoring a trained estimator in the closed loop, against the Kalman filter and exact LQG.

:func:`evaluate` runs :func:`lqgt.simulate` with the learned estimator and the Kalman filter
of the same form on common random numbers (held-out noise: pick a ``seed`` not used for
training), and reports

* the state MSE ``E‖x̂[t] − x[t]‖²`` of each estimator (``x̂`` the estimate the controller
  used at step ``t``) and its ratio to the Kalman filter's in dB, with a 95% CI (delta
  method on the paired per-trajectory means);
* the closed-loop cost ``x'Qx + u'Ru`` per step with its 95% CI, and its gap to the exact
  LQG optimum of the same form (:func:`lqgt.lqg`: ``cost`` for current form,
  ``cost_predictor`` for predictor form).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from .._torch import resolve_device, resolve_dtype
from ..errors import ConfigError
from ..estimators.kalman import KalmanFilter
from ..lqg import lqg
from ..plant import Plant
from ..plants import Example
from ..simulate import simulate

__all__ = ["evaluate", "EvaluationResult", "db"]

_Z95 = 1.959963984540054
#: Largest number of stored trajectory elements per simulate call (the batch is split above it).
_MAX_ELEMS = 1 << 26


def db(ratio: float) -> float:
    """``10 log10(ratio)`` (``inf`` for non-positive or infinite ratios).

    Parameters
    ----------
    ratio : float
        A ratio of mean squared errors.

    Returns
    -------
    float
    """
    return 10.0 * math.log10(ratio) if 0 < ratio < math.inf else math.inf


@dataclass(frozen=True, eq=False)
class EvaluationResult:
    """Result of :func:`evaluate` (immutable).

    Attributes
    ----------
    names : list of str
        Estimators scored: ``"learned"``, ``"kalman"`` and any baselines.
    mse : dict of str to float
        State MSE per step, ``mean_{b,t} ‖x̂ − x‖²`` over ``burn_in <= t < horizon``.
    mse_db : dict of str to float
        ``10 log10(mse / mse["kalman"])`` (0 for the Kalman filter).
    mse_db_ci : dict of str to (float, float)
        95% CI of ``mse_db`` (delta method, paired trajectories).
    mse_curve : dict of str to numpy.ndarray, shape (T,)
        MSE at each step, averaged over the batch.
    cost : dict of str to float
        Mean closed-loop cost per step.
    cost_ci : dict of str to (float, float)
        95% CI of ``cost``.
    lqg_cost : float
        Exact optimal average cost of the form used (:func:`lqgt.lqg`).
    cost_gap : dict of str to float
        ``cost / lqg_cost − 1`` (relative excess cost).
    cost_gap_ci : dict of str to (float, float)
        95% CI of ``cost_gap``.
    settings : dict
        Arguments used (horizon, batch, seed, burn_in, form, device, dtype).
    """

    names: list
    mse: dict
    mse_db: dict
    mse_db_ci: dict
    mse_curve: dict
    cost: dict
    cost_ci: dict
    lqg_cost: float
    cost_gap: dict
    cost_gap_ci: dict
    settings: dict = field(default_factory=dict)

    def mse_db_at(self, start: int, stop: int | None = None) -> dict:
        """MSE ratio to the Kalman filter in dB over the steps ``start <= t < stop`` only.

        Parameters
        ----------
        start : int
            First step (e.g. 20 for "after 20 steps").
        stop : int, optional
            One past the last step (default: the horizon).

        Returns
        -------
        dict of str to float
        """
        ref = float(np.mean(self.mse_curve["kalman"][start:stop]))
        return {k: db(float(np.mean(v[start:stop])) / ref) for k, v in self.mse_curve.items()}

    def table(self) -> str:
        """A plain-text table: MSE, dB vs the Kalman filter (CI), cost (CI), gap to LQG (CI).

        Returns
        -------
        str
        """
        head = f"{'estimator':<14} {'MSE':>11} {'dB vs KF':>8} {'95% CI (dB)':>19} {'cost':>11} {'95% CI':>25} {'vs LQG':>9} {'95% CI':>21}"
        lines = [head, "-" * len(head)]
        for k in self.names:
            lo, hi = self.mse_db_ci[k]
            clo, chi = self.cost_ci[k]
            glo, ghi = self.cost_gap_ci[k]
            lines.append(f"{k:<14} {self.mse[k]:>11.5g} {self.mse_db[k]:>+8.3f} {f'[{lo:+.3f}, {hi:+.3f}]':>19} "
                         f"{self.cost[k]:>11.5g} {f'[{clo:.5g}, {chi:.5g}]':>25} {100 * self.cost_gap[k]:>+8.2f}% "
                         f"{f'[{100 * glo:+.2f}%, {100 * ghi:+.2f}%]':>21}")
        s = self.settings
        lines.append(f"exact LQG optimum ({s.get('form')} form): {self.lqg_cost:.6g}; horizon={s.get('horizon')}, "
                     f"batch={s.get('batch')}, seed={s.get('seed')}, burn_in={s.get('burn_in')}")
        return "\n".join(lines)


def evaluate(
    est: Any,
    plant: Plant,
    K=None,
    Q=None,
    R=None,
    *,
    horizon: int = 1000,
    batch: int = 10000,
    seed: int = 1,
    kalman: Any = None,
    baselines: Mapping[str, Any] | None = None,
    burn_in: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> EvaluationResult:
    """Score ``est`` in the closed loop ``u = −K x̂`` against the Kalman filter and exact LQG.

    Parameters
    ----------
    est : estimator
        The estimator to score (any estimator of the protocol).
    plant : Plant or example (plant, Q, R)
        The true plant (with an example, ``Q`` and ``R`` default to its weights).
    K : array_like, shape (m, n), optional
        Feedback gain (default: the LQR gain of ``Q``, ``R``).
    Q : array_like, shape (n, n)
        State weight.
    R : array_like, shape (m, m)
        Input weight.
    horizon : int
        Steps per trajectory.
    batch : int
        Trajectories (split into several simulations above ~6.7e7 stored elements; each
        part uses its own seed, all estimators the same noise).
    seed : int
        Noise seed (use one not used for training: held-out noise).
    kalman : estimator, optional
        The reference filter (default: the time-varying ``lqgt.KalmanFilter(plant, form=est.form,
        steady=False)``; pass a filter of a wrong nominal model to study mismatch).
    baselines : mapping of str to estimator, optional
        More estimators to score on the same noise.
    burn_in : int
        Steps left out of the MSE and cost averages.
    device : str or torch.device, optional
        Simulation device.
    dtype : torch.dtype or str, optional
        Simulation dtype (float64 by default).

    Returns
    -------
    EvaluationResult

    Raises
    ------
    ConfigError
        If ``Q``/``R`` are missing, or a name in ``baselines`` is reserved.
    """
    if isinstance(plant, Example):
        plant, Q0, R0 = plant
        Q = Q0 if Q is None else Q
        R = R0 if R is None else R
    if Q is None or R is None:
        raise ConfigError("evaluate: Q and R are required (or pass an example (plant, Q, R) as plant)")
    design = lqg(plant, Q, R)
    Kmat = design.K if K is None else np.asarray(K.detach().cpu() if isinstance(K, torch.Tensor) else K, dtype=float)
    form = est.form
    ref = kalman if kalman is not None else KalmanFilter(plant, form=form, steady=False)
    ests = {"learned": est, "kalman": ref}
    for k, v in (baselines or {}).items():
        if k in ests:
            raise ConfigError(f"evaluate: baseline name {k!r} is reserved")
        ests[k] = v
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    width = 2 * plant.n + plant.m + plant.p
    per = max(1, min(batch, _MAX_ELEMS // (horizon * width * len(ests))))
    sums = {k: [] for k in ests}       # per-trajectory mean MSE
    curves = {k: torch.zeros(horizon, dtype=torch.float64) for k in ests}
    costs = {k: [] for k in ests}
    was = isinstance(est, torch.nn.Module) and est.training
    if was:
        est.eval()
    try:
        for i, b0 in enumerate(range(0, batch, per)):
            b = min(per, batch - b0)
            with torch.no_grad():
                res = simulate(plant, Kmat, ests, Q=Q, R=R, horizon=horizon, batch=b,
                               seed=seed if i == 0 else seed * 1_000_003 + i, device=dev, dtype=dt, store=True,
                               burn_in=burn_in, progress=False)
            for k in ests:
                err = (res.x_hat[k] - res.x[k]).square().sum(-1).to(torch.float64).cpu()  # (b, T)
                sums[k].append(err[:, burn_in:].mean(1))
                curves[k] += err.sum(0)
                costs[k].append(res.cost_per_trajectory[k].to(torch.float64).cpu())
    finally:
        if was:
            est.train()
    opt = design.cost if form == "current" else design.cost_predictor
    mse, mse_db, mse_ci, curve, cost, cost_ci, gap, gap_ci = {}, {}, {}, {}, {}, {}, {}, {}
    kk = torch.cat(sums["kalman"])
    for k in ests:
        a = torch.cat(sums[k])
        c = torch.cat(costs[k])
        mse[k] = float(a.mean())
        curve[k] = (curves[k] / batch).numpy()
        r = mse[k] / float(kk.mean())
        mse_db[k] = db(r)
        if k == "kalman":
            mse_ci[k] = (0.0, 0.0)
        else:
            mse_ci[k] = _ratio_ci_db(a, kk)
        cost[k] = float(c.mean())
        half = _Z95 * float(c.std()) / math.sqrt(c.numel()) if c.numel() > 1 else math.inf
        cost_ci[k] = (cost[k] - half, cost[k] + half)
        gap[k] = cost[k] / opt - 1.0
        gap_ci[k] = (cost_ci[k][0] / opt - 1.0, cost_ci[k][1] / opt - 1.0)
    settings = dict(horizon=horizon, batch=batch, seed=seed, burn_in=burn_in, form=form, device=str(dev),
                    dtype=str(dt).replace("torch.", ""), kalman=type(ref).__name__)
    return EvaluationResult(names=list(ests), mse=mse, mse_db=mse_db, mse_db_ci=mse_ci, mse_curve=curve, cost=cost,
                            cost_ci=cost_ci, lqg_cost=float(opt), cost_gap=gap, cost_gap_ci=gap_ci, settings=settings)


def _ratio_ci_db(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """95% CI of ``10 log10(mean a / mean b)`` for paired samples (delta method)."""
    N = a.numel()
    if N < 2:
        return (-math.inf, math.inf)
    ma, mb = float(a.mean()), float(b.mean())
    if not (ma > 0 and mb > 0 and math.isfinite(ma) and math.isfinite(mb)):
        return (math.nan, math.nan)
    cov = torch.cov(torch.stack([a, b]))
    var = float(cov[0, 0]) / ma**2 + float(cov[1, 1]) / mb**2 - 2 * float(cov[0, 1]) / (ma * mb)
    half = _Z95 * math.sqrt(max(var, 0.0) / N) * 10.0 / math.log(10.0)
    mid = db(ma / mb)
    return (mid - half, mid + half)
