"""Training losses of learned estimators.

* :func:`state_mse` — supervised on the simulated true state (``‖x̂ − x‖²`` per step, the
  quantity whose ratio to the Kalman filter's is reported in dB);
* :func:`output_prediction` — one-step-ahead measurement prediction ``‖ŷ[t+1] − y[t+1]‖²``;
  needs no state labels, so it also works on measured data;
* :func:`closed_loop_cost` — the LQ cost of the closed loop ``u = −K x̂`` with the estimator
  in it, differentiable through a torch simulation of the plant (truncated backpropagation
  through time), the noise drawn from a :class:`torch.Generator`.

Each returns a scalar tensor (mean per step, over the batch) that autograd differentiates.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._linalg import psd_sqrt
from .._torch import tensor
from ..errors import ConfigError, ShapeError
from ..lqg import _cost_weights
from ..plant import Plant
from .data import Rollouts

__all__ = ["state_mse", "output_prediction", "closed_loop_cost", "LOSSES"]

#: Names accepted by :func:`lqgt.learn.fit`.
LOSSES = ("state_mse", "output_prediction", "closed_loop_cost")


def _require_rollouts(data: Any, what: str) -> Rollouts:
    if not isinstance(data, Rollouts):
        raise ConfigError(f"{what}: data must be an lqgt.learn.Rollouts, got {type(data).__name__}")
    return data


def state_mse(est: Any, data: Rollouts) -> torch.Tensor:
    """Mean squared state error per step, ``mean_{b,t} ‖x̂[b,t] − x[b,t]‖²``.

    For a predictor-form estimator the estimate of ``x[t+1]`` is compared with ``x[t+1]``
    (the last step, whose successor is not in the data, is dropped).

    Parameters
    ----------
    est : LearnedEstimator
        The estimator (sequence mode ``est(y, u)`` is used).
    data : Rollouts
        A batch with state labels ``x``.

    Returns
    -------
    torch.Tensor, shape ()
        The loss (differentiable).

    Raises
    ------
    ConfigError
        If the data has no state labels.
    ShapeError
        If the estimator's output has the wrong shape.
    """
    data = _require_rollouts(data, "state_mse")
    target = data.targets(est.form)
    xh = est(data.y, data.u)
    if tuple(xh.shape) != tuple(data.y.shape[:2]) + (target.shape[-1],):
        raise ShapeError(f"state_mse: {type(est).__name__} returned shape {tuple(xh.shape)}, expected "
                         f"{tuple(data.y.shape[:2]) + (target.shape[-1],)}")
    if est.form == "predictor":
        xh = xh[:, :-1]
    return (xh - target).square().sum(-1).mean()


def output_prediction(est: Any, data: Rollouts) -> torch.Tensor:
    """Mean squared one-step-ahead output prediction error, ``mean_{b,t<T-1} ‖ŷ[t+1] − y[t+1]‖²``.

    Parameters
    ----------
    est : LearnedEstimator
        The estimator (``est.predict_output(y, u)`` is used).
    data : Rollouts
        A batch (state labels are not needed).

    Returns
    -------
    torch.Tensor, shape ()
        The loss (differentiable).

    Raises
    ------
    ShapeError
        If the prediction has the wrong shape or the horizon is shorter than 2.
    """
    data = _require_rollouts(data, "output_prediction")
    if data.horizon < 2:
        raise ShapeError(f"output_prediction needs a horizon of at least 2 steps, got T={data.horizon}")
    yp = est.predict_output(data.y, data.u)
    if tuple(yp.shape) != tuple(data.y.shape):
        raise ShapeError(f"output_prediction: predict_output returned {tuple(yp.shape)}, expected {tuple(data.y.shape)}")
    return (yp[:, :-1] - data.y[:, 1:]).square().sum(-1).mean()


def _detach(obj: Any) -> Any:
    """Detach every tensor in a (nested) state."""
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, dict):
        return {k: _detach(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        out = [_detach(v) for v in obj]
        return type(obj)(out) if not hasattr(obj, "_fields") else type(obj)(*out)
    return obj


def closed_loop_cost(
    est: Any,
    plant: Plant,
    K,
    Q,
    R,
    *,
    horizon: int = 100,
    batch: int = 64,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    tbptt: int | None = 50,
    burn_in: int = 0,
) -> torch.Tensor:
    """Mean closed-loop cost ``x'Qx + u'Ru`` per step with ``u = −K x̂`` and ``est`` in the loop.

    A torch simulation of ``plant`` with the estimator's ``init``/``step`` (grad enabled),
    the same timing as :func:`lqgt.simulate` (predictor form: ``u[t]`` from ``x̂[t|t-1]``;
    current form: from ``x̂[t|t]``). Every ``tbptt`` steps the plant and estimator states
    are detached, so the gradient is that of truncated backpropagation through time
    (each window's cost is differentiated through that window only).

    Parameters
    ----------
    est : LearnedEstimator
        The estimator (its protocol methods must be differentiable).
    plant : Plant
        The plant (linear).
    K : array_like, shape (m, n)
        Feedback gain.
    Q : array_like, shape (n, n)
        State weight.
    R : array_like, shape (m, m)
        Input weight.
    horizon : int
        Steps ``T``.
    batch : int
        Trajectories.
    generator : torch.Generator, optional
        Source of the noise (on ``device``); advanced by the call.
    seed : int, optional
        Seed for a fresh generator when ``generator`` is not given.
    device : str or torch.device, optional
        Simulation device (default: the estimator's parameters' device).
    dtype : torch.dtype, optional
        Simulation dtype (default: the estimator's parameters' dtype).
    tbptt : int, optional
        Truncation length of backpropagation through time (``None``: the whole horizon).
    burn_in : int
        Steps not costed at the start.

    Returns
    -------
    torch.Tensor, shape ()
        The mean cost per step over the batch and the steps ``burn_in <= t < horizon``.

    Raises
    ------
    ConfigError
        If the plant is not an :class:`lqgt.Plant`, or ``horizon``, ``batch``, ``tbptt``,
        ``burn_in`` are out of range.
    ShapeError
        If ``K``, ``Q`` or ``R`` has the wrong shape.
    """
    if not isinstance(plant, Plant):
        raise ConfigError(f"closed_loop_cost: plant must be an lqgt.Plant, got {type(plant).__name__}")
    if horizon < 1 or batch < 1 or not 0 <= burn_in < horizon or (tbptt is not None and tbptt < 1):
        raise ConfigError(f"closed_loop_cost: need horizon >= 1, batch >= 1, 0 <= burn_in < horizon, tbptt >= 1; "
                          f"got horizon={horizon}, batch={batch}, burn_in={burn_in}, tbptt={tbptt}")
    p0 = next(iter(est.parameters()), None) if hasattr(est, "parameters") else None
    dev = torch.device(device) if device is not None else (p0.device if p0 is not None else torch.device("cpu"))
    dt = dtype if dtype is not None else (p0.dtype if p0 is not None else torch.float64)
    Kmat = np.asarray(K.detach().cpu() if isinstance(K, torch.Tensor) else K, dtype=float)
    if Kmat.shape != (plant.m, plant.n):
        raise ShapeError(f"closed_loop_cost: K must have shape {(plant.m, plant.n)}, got {Kmat.shape}")
    Qz = _cost_weights(plant, Q, R)[3]
    if generator is None:
        generator = torch.Generator(device=dev)
        generator.manual_seed(0 if seed is None else int(seed))
    A, Bm, C, Dm = (tensor(M, dev, dt) for M in (plant.A, plant.B, plant.C, plant.D))
    Wh, Vh, P0h = (tensor(psd_sqrt(M), dev, dt) for M in (plant.W, plant.V, plant.P0))
    Kt, Qz_t = tensor(Kmat, dev, dt), tensor(Qz, dev, dt)
    n, m, p = plant.n, plant.m, plant.p
    predictor = est.form == "predictor"
    if not predictor and plant.has_feedthrough:
        raise ConfigError("closed_loop_cost: a current-form estimator needs D = 0 (algebraic loop)")

    def randn(*shape):
        return torch.randn(*shape, generator=generator, device=dev, dtype=dt)

    x = tensor(plant.m0, dev, dt) + randn(batch, n) @ P0h.T
    state, xh = est.init(batch, device=dev, dtype=dt)
    u_prev = torch.zeros(batch, m, device=dev, dtype=dt)
    total = torch.zeros((), device=dev, dtype=dt)
    for t in range(horizon):
        e = randn(batch, n + p)
        w, v = e[:, :n] @ Wh.T, e[:, n:] @ Vh.T
        if predictor:
            u = -xh @ Kt.T
            y = x @ C.T + u @ Dm.T + v
            state, xh = est.step(state, y, u)
        else:
            y = x @ C.T + v
            state, xh = est.step(state, y, u_prev)
            u = -xh @ Kt.T
            u_prev = u
        if t >= burn_in:
            z = torch.cat([x, u], dim=-1)
            total = total + ((z @ Qz_t) * z).sum()
        x = x @ A.T + u @ Bm.T + w
        if tbptt is not None and (t + 1) % tbptt == 0:
            x, xh, u_prev, state = x.detach(), xh.detach(), u_prev.detach(), _detach(state)
    return total / (batch * (horizon - burn_in))
