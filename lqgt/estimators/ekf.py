"""The extended Kalman filter of a nonlinear plant, batched over trajectories in torch.

Model (SPEC §1): ``x[t+1] = f(x[t], u[t]) + w``, ``y[t] = h(x[t]) + v``. Each step
linearises ``f`` and ``h`` at the current estimate (Jacobians by torch autograd, see
:meth:`lqgt.nonlinear.NonlinearPlant.jacobian_f`) and applies the Kalman equations to the linearisation:

```text
predict:  x̄ = f(x̂, u),            P̄ = F P F' + W,            F = ∂f/∂x (x̂, u)
update:   S = H P̄ H' + V,          K = P̄ H' S⁻¹,              H = ∂h/∂x (x̄)
          x̂ = x̄ + K (y − h(x̄)),   P = (I − K H) P̄ (I − K H)' + K V K'   (Joseph form)
```

and symmetrises ``P`` after every step. Timing follows :mod:`lqgt.estimators.base`.
"""

from __future__ import annotations

from typing import Any

import torch

from .._torch import tensor
from ..closed_loop import check_form
from ..errors import ConfigError, ShapeError
from ..nonlinear import NonlinearPlant
from ..plant import Plant
from ._gaussian import check_covariance, correct, joseph, step_timing, sym

__all__ = ["ExtendedKalmanFilter", "as_nonlinear"]


def as_nonlinear(plant) -> NonlinearPlant:
    """Return ``plant`` as a :class:`~lqgt.nonlinear.NonlinearPlant` (a linear :class:`lqgt.Plant` is wrapped).

    Parameters
    ----------
    plant : NonlinearPlant or Plant
        The model. A linear plant must have ``D = 0``.

    Returns
    -------
    NonlinearPlant
        ``f(x, u) = A x + B u``, ``h(x) = C x`` with the same noise and initial state.
    """
    if isinstance(plant, NonlinearPlant):
        return plant
    if isinstance(plant, Plant):
        if plant.has_feedthrough:
            raise ShapeError("a linear plant with D != 0 cannot be used as a nonlinear filter model (h(x) has no u)")
        A, B, C = (torch.tensor(M) for M in (plant.A, plant.B, plant.C))

        def f(x, u):
            return x @ A.to(x).T + u @ B.to(x).T

        def h(x):
            return x @ C.to(x).T

        return NonlinearPlant(f, h, W=plant.W, V=plant.V, n=plant.n, m=plant.m, p=plant.p, dt=plant.dt,
                              m0=plant.m0, P0=plant.P0, name="linear")
    raise ConfigError(f"plant must be an lqgt.nonlinear.NonlinearPlant or lqgt.Plant, got {type(plant).__name__}")


class _GaussianFilter:
    """Shared shell of the EKF and UKF: timing, state, checks. Subclasses give predict/update."""

    label = "filter"

    def __init__(self, plant, form: str) -> None:
        self.plant = as_nonlinear(plant)
        self.form = check_form(form)
        self.n = self.plant.n

    def __repr__(self) -> str:
        return f"{type(self).__name__}(form={self.form!r}, n={self.n})"

    def _consts(self, device, dtype) -> dict:
        P = self.plant
        return {"W": tensor(P.W, device, dtype), "V": tensor(P.V, device, dtype),
                "I": torch.eye(P.n, device=device, dtype=dtype)}

    def init(self, batch: int, *, device: torch.device, dtype: torch.dtype) -> tuple[Any, torch.Tensor]:
        """Return the state and the initial estimate (the prior mean ``m0``) repeated ``(batch, n)``.

        Parameters
        ----------
        batch : int
            Number of trajectories.
        device : torch.device
            Device of the tensors.
        dtype : torch.dtype
            Floating-point type of the tensors.

        Returns
        -------
        state : tuple
            ``(x̂ (B, n), P (B, n, n), constants, started, step, ok (B,))``.
        x_hat0 : torch.Tensor, shape (batch, n)
            The prior mean.
        """
        x0 = tensor(self.plant.m0, device, dtype).expand(batch, -1).clone()
        P0 = tensor(self.plant.P0, device, dtype).expand(batch, -1, -1).clone()
        ok = torch.ones(batch, dtype=torch.bool, device=device)
        return (x0, P0, self._consts(device, dtype), False, 0, ok), x0

    def step(self, state, y: torch.Tensor, u: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """One filter step (see :mod:`lqgt.estimators.base` for the timing of ``u``).

        Parameters
        ----------
        state : tuple
            From :meth:`init` or the previous step.
        y : torch.Tensor, shape (batch, p)
            The newest measurement ``y[t]``.
        u : torch.Tensor, shape (batch, m)
            The newest applied input (``u[t-1]`` in current form, ``u[t]`` in predictor form).

        Returns
        -------
        state : tuple
            The new state.
        x_hat : torch.Tensor, shape (batch, n)
            ``x̂[t|t]`` (current form) or ``x̂[t+1|t]`` (predictor form).

        Raises
        ------
        FilterDivergenceError
            The covariance became non-finite while the inputs were finite (names the step).
        """
        x, P, c, started, t, ok = state
        ok = ok & torch.isfinite(y).all(-1) & torch.isfinite(u).all(-1)
        x, P = step_timing(self.form, started, self._predict, self._update, x, P, y, u, c)
        check_covariance(self.label, P, ok, t)
        return (x, P, c, True, t + 1, ok), x

    def _predict(self, x, P, u, c):
        raise NotImplementedError

    def _update(self, x, P, y, c):
        raise NotImplementedError


class ExtendedKalmanFilter(_GaussianFilter):
    """Extended Kalman filter of a nonlinear plant, batched over trajectories.

    Parameters
    ----------
    plant : NonlinearPlant or Plant
        The filter's model: ``f``, ``h``, ``W``, ``V``, and the prior ``m0``, ``P0``.
    form : {"current", "predictor"}
        ``"current"`` (default) returns ``x̂[t|t]``; ``"predictor"`` returns ``x̂[t+1|t]``.
    jacobian : {"autograd", "vmap"}
        How the Jacobians are computed (see Notes).

    Notes
    -----
    Jacobians come from reverse-mode autograd of the batch sums (``n`` and ``p``
    vector-Jacobian products per step, valid because rows are independent;
    ``jacobian="vmap"`` uses :func:`torch.func.vmap` of :func:`torch.func.jacrev` per
    trajectory instead: same numbers, slower). The covariance update
    is the Joseph form, symmetrised, as in :class:`filterpy.kalman.ExtendedKalmanFilter`
    (with which it agrees to rounding; see the tests). The covariance is checked every
    step: NaN/inf for a trajectory whose measurements were finite raises
    :class:`~lqgt.nonlinear.FilterDivergenceError` naming the step.

    Examples
    --------
    >>> import torch, lqgt
    >>> from lqgt.nonlinear_plants import van_der_pol
    >>> from lqgt.estimators.ekf import ExtendedKalmanFilter
    >>> plant = van_der_pol().plant
    >>> ekf = ExtendedKalmanFilter(plant)
    >>> state, x_hat = ekf.init(8, device=torch.device("cpu"), dtype=torch.float64)
    >>> state, x_hat = ekf.step(state, torch.zeros(8, 1, dtype=torch.float64), torch.zeros(8, 1, dtype=torch.float64))
    >>> tuple(x_hat.shape)
    (8, 2)
    """

    label = "ExtendedKalmanFilter"

    def __init__(self, plant, form: str = "current", *, jacobian: str = "autograd") -> None:
        super().__init__(plant, form)
        if jacobian not in ("autograd", "vmap"):
            raise ConfigError(f"jacobian must be 'autograd' or 'vmap', got {jacobian!r}")
        self.jacobian = jacobian

    def _predict(self, x, P, u, c):
        fx, F, _ = self.plant.jacobian_f(x, u, method=self.jacobian)
        return fx, sym(F @ P @ F.mT + c["W"])

    def _update(self, x, P, y, c):
        hx, H = self.plant.jacobian_h(x, method=self.jacobian)
        PHt = P @ H.mT                                      # (B, n, p)
        S = H @ PHt + c["V"]                                # (B, p, p)
        x, K = correct(x, PHt, S, y - hx)                   # K = P H' S^{-1}
        return x, joseph(P, c["I"] - K @ H, K, c["V"])
