"""KalmanNet: the model's predict/update with a gain produced by a recurrent network.

After Revach, Shlezinger, Ni, Escoriza, van Sloun and Eldar, "KalmanNet: neural network
aided Kalman filtering for partially known dynamics" (IEEE TSP, 2022). Each step:

```text
x̂⁻  = A x̂⁺[t-1] + B u[t-1]                (x̂⁻ = m0 at t = 0)
ŷ   = C x̂⁻ (+ D u[t])                       innovation δ = y[t] − ŷ
G   = L[t] + s · reshape(head(h[t]))        h[t] = GRU(features[t], h[t-1])
x̂⁺  = x̂⁻ + G δ
```

The features are the paper's four differences, divided by fixed scales from the model
(√diag(CPC'+V) for the measurement ones, √diag(P) for the state ones): the observation
difference ``y[t] − y[t-1]``, the innovation ``δ``, the forward-evolution difference
``x̂⁺[t-1] − x̂⁺[t-2]`` and the forward-update difference ``x̂⁺[t-1] − x̂⁻[t-1]``.

Unlike the paper, the network outputs a *correction* to the Kalman gain ``L[t]`` of the
model (the steady gain ``Lf`` by default; with ``steady=False`` the time-varying gains of the
Kalman filter started from ``P0``, which reach ``Lf`` after the transient) and its last
layer starts at zero: the untrained KalmanNet is exactly the Kalman filter of the model (a
test checks it), and training starts from the optimal linear filter of the nominal model.
This makes training stable where the paper's from-scratch gains are known to fail to
converge, and keeps the learned part small where the model is right.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..riccati import _filter_gain, dlqe
from ._model import as_model, model_config, predicted_outputs

from .learned import LearnedEstimator, register

__all__ = ["KalmanNet"]


def _gain_schedule(model, Lf: np.ndarray, max_steps: int = 10_000) -> np.ndarray:
    """Kalman gains ``L[t] = P⁻[t] C'(C P⁻[t] C' + V)⁻¹`` from ``P⁻[0] = P0`` until they reach ``Lf``."""
    A, C, W, V = model.A, model.C, model.W, model.V
    P, out, I = np.asarray(model.P0, float), [], np.eye(model.n)
    tol = 1e-13 * (1.0 + np.abs(Lf).max())
    for _ in range(max_steps):
        L = _filter_gain(C, P, V)
        if np.abs(L - Lf).max() <= tol:
            break
        out.append(L)
        J = I - L @ C
        P = A @ (J @ P @ J.T + L @ V @ L.T) @ A.T + W
        P = 0.5 * (P + P.T)
    return np.asarray(out, float).reshape(-1, model.n, model.p)


@register
class KalmanNet(LearnedEstimator):
    """Kalman filter of a model whose gain is corrected by a GRU over innovation features.

    Parameters
    ----------
    plant : Plant or dict
        The model ``(A, B, C, D, W, V, m0, P0)`` used for predict and update (a dict as
        stored in a checkpoint's config is accepted too). ``W`` and ``V`` only set the
        initial gain ``Lf`` and the feature scales.
    hidden : int
        Width of the GRU state.
    form : {"current", "predictor"}
        ``"current"``: returns ``x̂[t|t]``; ``"predictor"``: returns ``x̂[t+1|t]``.
    gain_scale : float
        Scale ``s`` of the network's gain correction (the correction head starts at zero).
    seed : int, optional
        Seed of the parameter initialisation.
    steady : bool
        ``True`` (default): the base gain is the steady Kalman gain (the untrained net is
        ``lqgt.KalmanFilter(plant, form)``); ``False``: the time-varying Kalman gains from
        ``P0`` (the untrained net is ``lqgt.KalmanFilter(plant, form, steady=False)``, the
        reference of :func:`lqgt.learn.evaluate`).

    Raises
    ------
    ConfigError
        If ``plant`` is not a plant, ``hidden < 1``, ``gain_scale <= 0``, or the current
        form is asked for with ``D != 0``.

    Examples
    --------
    ```python
    net = lqgt.KalmanNet(plant, hidden=32)          # == lqgt.KalmanFilter(plant) before training
    lqgt.learn.fit(net, data, loss="state_mse", steps=500)
    ```
    """

    def __init__(self, plant: Any, hidden: int = 32, form: str = "current", gain_scale: float = 0.1,
                 seed: int | None = None, steady: bool = True) -> None:
        model = as_model(plant, "KalmanNet")
        super().__init__(model.n, model.m, model.p, form=form)
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ConfigError(f"KalmanNet: hidden must be an integer >= 1, got {hidden!r}")
        if not (isinstance(gain_scale, (int, float)) and np.isfinite(gain_scale) and gain_scale > 0):
            raise ConfigError(f"KalmanNet: gain_scale must be a positive number, got {gain_scale!r}")
        if form == "current" and model.has_feedthrough:
            raise ConfigError("KalmanNet: the current form needs D = 0 (u[t] depends on x̂[t|t]); use form='predictor'")
        if not isinstance(steady, (bool, np.bool_)):
            raise ConfigError(f"KalmanNet: steady must be True or False, got {steady!r}")
        self.model, self.hidden, self.gain_scale, self.seed = model, int(hidden), float(gain_scale), seed
        self.steady = bool(steady)
        _, P, _ = dlqe(model.A, model.C, model.W, model.V)
        Lf = _filter_gain(model.C, P, model.V)
        S = model.C @ P @ model.C.T + model.V
        f64 = dict(dtype=torch.float64)
        for name, val in (("A", model.A), ("B", model.B), ("C", model.C), ("D", model.D), ("m0", model.m0),
                          ("Lf", Lf), ("y_scale", np.sqrt(np.diag(S))), ("x_scale", np.sqrt(np.maximum(np.diag(P), 1e-300)))):
            self.register_buffer(name, torch.tensor(np.asarray(val, dtype=float), **f64))
        # gains of the transient (time-varying filter), rebuilt from the config: not saved
        sched = np.zeros((0, model.n, model.p)) if self.steady else _gain_schedule(model, Lf)
        self.register_buffer("L_sched", torch.tensor(sched, **f64), persistent=False)
        gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        n, p = self.n, self.p
        self.gru = nn.GRUCell(2 * p + 2 * n, self.hidden, dtype=torch.float64)
        self.head = nn.Linear(self.hidden, n * p, dtype=torch.float64)
        if gen is not None:
            with torch.no_grad():
                for prm in self.gru.parameters():
                    prm.uniform_(-1.0 / np.sqrt(self.hidden), 1.0 / np.sqrt(self.hidden), generator=gen)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()

    def config(self) -> dict:
        """Constructor arguments (the model's matrices as nested lists).

        Returns
        -------
        dict
        """
        return {"plant": model_config(self.model), "hidden": self.hidden, "form": self.form,
                "gain_scale": self.gain_scale, "seed": self.seed, "steady": self.steady}

    # ---- one step, shared by both modes ----------------------------------------------------
    def _start(self, B: int, device, dtype) -> dict:
        z = dict(device=device, dtype=dtype)
        x0 = self.m0.to(**z).expand(B, self.n)
        return {"t": 0, "prior": x0.clone(), "post1": x0.clone(), "post2": x0.clone(), "prior1": x0.clone(),
                "y1": torch.zeros(B, self.p, **z), "h": torch.zeros(B, self.hidden, **z),
                "u_prev": torch.zeros(B, self.m, **z)}

    def _cell(self, s: dict, y: torch.Tensor, u_in: torch.Tensor, u_meas: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """Update from ``y[t]``: ``u_in`` is the input that moved the state since the last
        posterior (``u[t-1]``), ``u_meas`` the input in ``y[t]`` (``u[t]``, for ``D``).
        Returns the new state and ``x̂[t|t]``."""
        if s["t"] == 0:
            prior = s["prior"]
        else:
            prior = s["post1"] @ self.A.T + u_in @ self.B.T
        yhat = prior @ self.C.T + u_meas @ self.D.T
        innov = y - yhat
        first = s["t"] == 0
        f1 = (y - s["y1"]) / self.y_scale if not first else torch.zeros_like(y)
        f3 = (s["post1"] - s["post2"]) / self.x_scale
        f4 = (s["post1"] - s["prior1"]) / self.x_scale
        feats = torch.cat([f1, innov / self.y_scale, f3, f4], dim=-1)
        h = self.gru(feats, s["h"])
        t = s["t"]
        base = self.L_sched[t] if t < self.L_sched.shape[0] else self.Lf
        G = base + self.gain_scale * self.head(h).view(-1, self.n, self.p)
        post = prior + (G @ innov.unsqueeze(-1)).squeeze(-1)
        s = {"t": s["t"] + 1, "prior": prior, "post1": post, "post2": s["post1"], "prior1": prior, "y1": y, "h": h,
             "u_prev": s["u_prev"]}
        return s, post

    # ---- sequence mode ---------------------------------------------------------------------
    def forward(self, y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Estimates of whole sequences.

        Parameters
        ----------
        y : torch.Tensor, shape (B, T, p)
            Measurements.
        u : torch.Tensor, shape (B, T, m)
            Inputs (``u[:, t]`` applied at step ``t``).

        Returns
        -------
        torch.Tensor, shape (B, T, n)
            ``x̂[t|t]`` (current) or ``x̂[t+1|t]`` (predictor).
        """
        return self._run(y, u)[0]

    def _run(self, y, u):
        y, u = self.check_sequences(y, u)
        B, T, _ = y.shape
        s = self._start(B, y.device, y.dtype)
        zero_u = torch.zeros(B, self.m, device=y.device, dtype=y.dtype)
        posts, preds = [], []
        for t in range(T):
            u_in = u[:, t - 1] if t > 0 else zero_u
            s, post = self._cell(s, y[:, t], u_in, u[:, t] if self.form == "predictor" else zero_u)
            posts.append(post)
            preds.append(post @ self.A.T + u[:, t] @ self.B.T)
        post, pred = torch.stack(posts, 1), torch.stack(preds, 1)
        return (post if self.form == "current" else pred), pred

    def predict_output(self, y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """One-step output predictions ``C x̂[t+1|t] + D u[t+1]``.

        Parameters
        ----------
        y : torch.Tensor, shape (B, T, p)
            Measurements.
        u : torch.Tensor, shape (B, T, m)
            Inputs (``u[:, T-1+1]`` is taken as zero for the last prediction's ``D`` term).

        Returns
        -------
        torch.Tensor, shape (B, T, p)
            ``out[:, t]`` predicts ``y[t+1]``.
        """
        _, pred = self._run(y, u)
        return predicted_outputs(pred, u, self.C, self.D)

    # ---- protocol mode ---------------------------------------------------------------------
    def init(self, batch: int, *, device: torch.device, dtype: torch.dtype) -> tuple[Any, torch.Tensor]:
        """Initial state (prior mean ``m0``, zero GRU state) for ``batch`` trajectories.

        Parameters
        ----------
        batch : int
            Number of trajectories.
        device : torch.device
            Device of the simulation.
        dtype : torch.dtype
            Floating-point type of the simulation.

        Returns
        -------
        state : dict
            Step counter, the last posteriors and prior, the last measurement, the GRU state.
        x_hat0 : torch.Tensor, shape (batch, n)
            ``m0``.
        """
        self._place(device, dtype)
        s = self._start(batch, device, dtype)
        return s, s["prior"].clone()

    def step(self, state: dict, y: torch.Tensor, u: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """Consume ``y[t]`` and the newest input.

        Parameters
        ----------
        state : dict
            From :meth:`init` or the previous :meth:`step`.
        y : torch.Tensor, shape (B, p)
            ``y[t]``.
        u : torch.Tensor, shape (B, m)
            ``u[t-1]`` (current form) or ``u[t]`` (predictor form).

        Returns
        -------
        state : dict
            The new state.
        x_hat : torch.Tensor, shape (B, n)
            ``x̂[t|t]`` (current) or ``x̂[t+1|t]`` (predictor).
        """
        if self.form == "current":
            return self._cell(state, y, u, torch.zeros_like(u))
        s, post = self._cell(state, y, state["u_prev"], u)
        s["u_prev"] = u
        return s, post @ self.A.T + u @ self.B.T
