"""Linear estimators: fixed-gain observers and the Kalman filter (steady or time-varying)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._linalg import as_matrix
from .._torch import tensor
from ..closed_loop import check_form
from ..errors import ShapeError
from ..plant import Plant
from ..riccati import _filter_gain, dlqe
from ._gaussian import joseph, sym

__all__ = ["LinearObserver", "KalmanFilter", "OpenLoopObserver"]


class LinearObserver:
    """Fixed-gain (Luenberger) observer of ``plant``.

    Predictor form: ``x̂[t+1|t] = A x̂ + B u + L (y - C x̂ - D u)``.
    Current form: ``x̂[t|t] = x̄ + Lf (y - C x̄)`` with ``x̄[t] = A x̂[t-1|t-1] + B u[t-1]``.

    Parameters
    ----------
    plant : Plant
        The observer's model.
    gain : array_like, shape (n, p)
        ``L`` (predictor form) or ``Lf`` (current form).
    form : {"predictor", "current"}
        Which estimate is returned (see :mod:`lqgt.estimators.base`).

    Notes
    -----
    The initial estimate is the plant's ``m0``.
    """

    def __init__(self, plant: Plant, gain, form: str = "predictor") -> None:
        self.plant = plant
        self.form = check_form(form)
        self.gain = as_matrix("gain", gain, (plant.n, plant.p))
        if form == "current" and plant.has_feedthrough:
            raise ShapeError("form='current' needs D = 0 (a feedthrough makes an algebraic loop)")
        self.n = plant.n

    def __repr__(self) -> str:
        return f"{type(self).__name__}(form={self.form!r}, n={self.n})"

    def linear_gain(self) -> tuple[np.ndarray, Plant]:
        """Return ``(gain, model)``: this estimator is a fixed-gain linear observer."""
        return self.gain, self.plant

    def _mats(self, device, dtype):
        P = self.plant
        return tuple(tensor(M, device, dtype) for M in (P.A, P.B, P.C, P.D, self.gain))

    def _x0(self, batch: int, device, dtype) -> torch.Tensor:
        """The initial estimate: the plant's ``m0`` repeated ``(batch, n)``."""
        return tensor(self.plant.m0, device, dtype).expand(batch, -1).clone()

    def init(self, batch: int, *, device: torch.device, dtype: torch.dtype) -> tuple[Any, torch.Tensor]:
        """Return the state and the initial estimate ``m0`` repeated ``(batch, n)``.

        Parameters
        ----------
        batch : int
            Number of trajectories.
        device : torch.device
            Device of the returned tensors.
        dtype : torch.dtype
            Floating-point type of the returned tensors.

        Returns
        -------
        state : object
            The estimator state, passed back to :meth:`step`.
        x_hat0 : torch.Tensor, shape (batch, n)
            The initial estimate.
        """
        x0 = self._x0(batch, device, dtype)
        return (x0, self._mats(device, dtype), False), x0

    def step(self, state, y: torch.Tensor, u: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """One observer step (see :mod:`lqgt.estimators.base` for the timing of ``u``).

        Parameters
        ----------
        state : object
            The state returned by :meth:`init` or the previous :meth:`step`.
        y : torch.Tensor, shape (batch, p)
            The newest measurement ``y[t]``.
        u : torch.Tensor, shape (batch, m)
            The newest input already applied (``u[t]`` in predictor form, ``u[t-1]`` in
            current form).

        Returns
        -------
        state : object
            The new state.
        x_hat : torch.Tensor, shape (batch, n)
            The estimate the controller uses next.
        """
        x, (A, B, C, D, G), started = state
        if self.form == "predictor":
            innov = y - x @ C.T - u @ D.T
            x = x @ A.T + u @ B.T + innov @ G.T
        else:
            if started:
                x = x @ A.T + u @ B.T
            x = x + (y - x @ C.T) @ G.T
        return (x, (A, B, C, D, G), True), x


class OpenLoopObserver(LinearObserver):
    """Baseline that ignores the measurements: ``x̂[t+1] = A x̂[t] + B u[t]`` from ``m0``.

    Parameters
    ----------
    plant : Plant
        The observer's model.
    """

    def __init__(self, plant: Plant) -> None:
        super().__init__(plant, np.zeros((plant.n, plant.p)), form="predictor")


class KalmanFilter(LinearObserver):
    """The Kalman filter of ``plant``, steady-state or time-varying.

    Parameters
    ----------
    plant : Plant
        The model (its ``W``, ``V``, ``m0``, ``P0`` define the filter).
    form : {"current", "predictor"}
        ``"current"`` returns ``x̂[t|t]`` (uses ``y[t]``; the optimal LQG estimate);
        ``"predictor"`` returns ``x̂[t+1|t]``.
    steady : bool
        ``True`` (default) uses the steady-state gains from :func:`lqgt.dlqe`; ``False``
        propagates the covariance from ``P0`` with the Joseph-form update.

    Attributes
    ----------
    L : numpy.ndarray, shape (n, p)
        Steady predictor gain.
    Lf : numpy.ndarray, shape (n, p)
        Steady filter gain.
    P : numpy.ndarray, shape (n, n)
        Steady prior covariance.
    """

    def __init__(self, plant: Plant, form: str = "current", *, steady: bool = True) -> None:
        L, P, _ = dlqe(plant.A, plant.C, plant.W, plant.V)
        Lf = _filter_gain(plant.C, P, plant.V)
        super().__init__(plant, Lf if form == "current" else L, form)
        self.L, self.Lf, self.P = L, Lf, P
        self.steady = bool(steady)

    def linear_gain(self) -> tuple[np.ndarray, Plant] | None:
        """``(gain, model)`` for the steady filter; ``None`` for the time-varying one."""
        return super().linear_gain() if self.steady else None

    def init(self, batch: int, *, device: torch.device, dtype: torch.dtype) -> tuple[Any, torch.Tensor]:
        """Return the state and the initial estimate ``m0`` repeated ``(batch, n)``.

        Parameters
        ----------
        batch : int
            Number of trajectories.
        device : torch.device
            Device of the returned tensors.
        dtype : torch.dtype
            Floating-point type of the returned tensors.

        Returns
        -------
        state : object
            The estimator state, passed back to :meth:`step`.
        x_hat0 : torch.Tensor, shape (batch, n)
            The initial estimate.
        """
        if self.steady:
            return super().init(batch, device=device, dtype=dtype)
        x0 = self._x0(batch, device, dtype)
        W, V, P0 = (tensor(M, device, dtype) for M in (self.plant.W, self.plant.V, self.plant.P0))
        mats = self._mats(device, dtype)[:4] + (W, V, torch.eye(self.n, device=device, dtype=dtype))
        return (x0, P0, mats, False), x0

    def step(self, state, y: torch.Tensor, u: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """One filter step (see :mod:`lqgt.estimators.base` for the timing of ``u``).

        Parameters
        ----------
        state : object
            The state returned by :meth:`init` or the previous :meth:`step`.
        y : torch.Tensor, shape (batch, p)
            The newest measurement ``y[t]``.
        u : torch.Tensor, shape (batch, m)
            The newest input already applied (``u[t]`` in predictor form, ``u[t-1]`` in
            current form).

        Returns
        -------
        state : object
            The new state.
        x_hat : torch.Tensor, shape (batch, n)
            The estimate the controller uses next.
        """
        if self.steady:
            return super().step(state, y, u)
        x, P, mats, started = state
        A, B, C, D, W, V, I = mats
        if self.form == "current" and started:
            x, P = x @ A.T + u @ B.T, A @ P @ A.T + W
        # measurement update (Joseph form) on the prior (x, P)
        S = C @ P @ C.T + V
        Lf = torch.linalg.solve(S, C @ P).T
        innov = y - x @ C.T
        if self.form == "predictor":  # u is u[t] here; in current form D = 0 (checked)
            innov = innov - u @ D.T
        x_post = x + innov @ Lf.T
        P_post = joseph(P, I - Lf @ C, Lf, V)
        if self.form == "current":
            return (x_post, P_post, mats, True), x_post
        x_next = x_post @ A.T + u @ B.T
        P_next = A @ P_post @ A.T + W
        return (x_next, sym(P_next), mats, True), x_next
