"""The Transformer Filter as a trainable estimator: its attention block's weights are parameters.

:class:`TrainableTransformerFilter` runs the recurrence of SPEC §3, ``x̃[t+1] = Σ_i α[t, i]
v[i]`` over a window of tokens ``z[i] = [x̃[i]; y[i]]`` (``[x̃[i]; y[i]; u[i]]`` with
exogenous inputs), with the attention block :class:`lqgt.layers.TransformerFilterAttention`
(``W_q``, ``W_k``, ``W_v`` on the quadratic embedding; ``W_v`` holds ``M``). Built with
:meth:`TrainableTransformerFilter.from_construction` it IS the Transformer Filter of a
plant (equal to :class:`lqgt.TransformerFilter` to rounding); trained with
:func:`lqgt.learn.fit` it can move away from the construction, e.g. to fit a plant that the
model used for the construction gets wrong. Predictor form only (like the construction).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..layers.tf_attention import TransformerFilterAttention, scaled_logits
from ._model import as_model, model_config, predicted_outputs
from .learned import LearnedEstimator, register
from .transformer import TransformerFilter

__all__ = ["TrainableTransformerFilter"]


@register
class TrainableTransformerFilter(LearnedEstimator):
    """Transformer Filter whose attention weights (``W_q``, ``W_k``, ``W_v = M``) are trainable.

    Parameters
    ----------
    plant : Plant or dict
        The model: its dimensions, ``m0`` (the first token's estimate) and, for
        ``init="construction"``, the matrices of the construction (a dict as stored in a
        checkpoint's config is accepted too).
    window : int
        Attention window ``H`` (tokens attended to, the newest included).
    beta : float
        Inverse temperature β ≥ 0: the block's fixed logit scale.
    K : array_like of shape (m, n), optional
        Closed-loop mode: tokens ``[x̃; y]`` and ``M = [A − BK − LC, L]`` (the loop
        ``u = −K x̃`` is assumed, so ``u`` is not a token). ``None``: exogenous inputs,
        tokens ``[x̃; y; u]``, ``M = [A − LC, L, B]``.
    S : array_like or "whiten", optional
        Distance weight of the construction (identity by default).
    init : {"construction", "random"}
        ``"construction"``: the weights of SPEC §3 for ``plant``; ``"random"``: small random
        weights (``seed``), to be learned from data.
    seed : int, optional
        Seed of the random initialisation.
    form : {"predictor"}
        The Transformer Filter estimates ``x̃[t+1]``; ``"current"`` is refused.
    inputs : {"assumed", "value"}
        How the input enters when ``K`` is given (ignored without ``K``, where ``u`` is a
        token). ``"assumed"`` (default): the construction itself, ``u = −K x̃`` is built into
        ``M`` and the ``u`` passed in is ignored, so the filter is right only in its own loop:
        train it on data of that loop (``lqgt.learn.rollouts(..., estimator=tf)``) or with
        ``loss="closed_loop_cost"``, not on rollouts driven by another estimator.
        ``"value"``: the same tokens and attention, but each value is
        ``v[i] = M' z[i] + B_u u[i]`` with ``M' = [A − LC, L]`` and a trainable ``B_u``
        (initialised to ``B − LD``): equal to the construction (to rounding) in its own loop
        with gain ``K``, and correct on data of any loop.

    Raises
    ------
    ConfigError
        Bad ``plant``, ``window``, ``beta``, ``init``, ``form`` or ``inputs``.

    Examples
    --------
    ```python
    tf = lqgt.TrainableTransformerFilter.from_construction(plant, beta=100.0, window=32, K=design.K)
    lqgt.learn.fit(tf, data, loss="state_mse", steps=300)
    ```
    """

    def __init__(self, plant: Any, window: int = 32, beta: float = 1.0, K=None, S=None,
                 init: str = "construction", seed: int | None = None, form: str = "predictor",
                 inputs: str = "assumed") -> None:
        model = as_model(plant, "TrainableTransformerFilter")
        if form != "predictor":
            raise ConfigError("TrainableTransformerFilter: only form='predictor' (x̃[t+1], as the Transformer Filter); "
                              f"got {form!r}")
        super().__init__(model.n, model.m, model.p, form=form)
        if init not in ("construction", "random"):
            raise ConfigError(f"TrainableTransformerFilter: init must be 'construction' or 'random', got {init!r}")
        if inputs not in ("assumed", "value"):
            raise ConfigError(f"TrainableTransformerFilter: inputs must be 'assumed' or 'value', got {inputs!r}")
        # the constructed filter checks window, beta, K and S and gives M and S
        tf = TransformerFilter(model, beta=beta, window=window, K=None if K is None else np.asarray(K, float),
                               S=None if S is None else (S if isinstance(S, str) else np.asarray(S, float)))
        self.model, self.window, self.beta, self.init_kind, self.seed = model, tf.window, tf.beta, init, seed
        self.K = None if K is None else np.asarray(tf.K, float)
        self.S_arg = None if S is None else (S if isinstance(S, str) else np.asarray(S, float).tolist())
        self.closed_loop = K is not None
        self.inputs = inputs
        self.u_value = self.closed_loop and inputs == "value"
        self.feedback_gain = self.K            # simulate warns when simulated with another K
        self.d = tf.M.shape[1]
        if not math.isfinite(self.beta):
            raise ConfigError(f"TrainableTransformerFilter: beta must be finite, got {beta!r}")
        M = np.array(tf.M, dtype=float)
        if self.u_value:                   # take -BK + LDK out of M: the input enters as B_u u
            Bu = np.asarray(model.B, float) - tf.L @ np.asarray(model.D, float)
            M[:, :self.n] += Bu @ self.K
            self.B_u = torch.nn.Parameter(torch.tensor(Bu, dtype=torch.float64))
        if init == "construction":
            self.attn = TransformerFilterAttention.from_construction(M, tf.S, self.beta, self.window)
        else:
            self.attn = TransformerFilterAttention(self.d, self.n, self.window, scale=self.beta).double()
            gen = torch.Generator().manual_seed(int(seed) if seed is not None else 0)
            with torch.no_grad():
                for lin in (self.attn.W_q, self.attn.W_k, self.attn.W_v):
                    lin.weight.copy_(0.1 * torch.randn(lin.weight.shape, generator=gen, dtype=torch.float64)
                                     / math.sqrt(lin.weight.shape[1]))
        self.register_buffer("m0", torch.tensor(np.asarray(model.m0, float), dtype=torch.float64))
        self.register_buffer("C", torch.tensor(np.asarray(model.C, float), dtype=torch.float64))
        self.register_buffer("D", torch.tensor(np.asarray(model.D, float), dtype=torch.float64))

    @classmethod
    def from_construction(cls, plant: Any, beta: float = 50.0, window: int = 32, K=None, S=None,
                          form: str = "predictor", inputs: str = "assumed") -> "TrainableTransformerFilter":
        """The Transformer Filter of ``plant`` (SPEC §3), as a trainable module.

        Parameters
        ----------
        plant : Plant
            The model of the construction.
        beta : float
            Inverse temperature β.
        window : int
            Window ``H``.
        K : array_like of shape (m, n), optional
            Feedback gain of the closed-loop construction (``None``: exogenous inputs).
        S : array_like or "whiten", optional
            Distance weight.
        form : {"predictor"}
            Only the predictor form exists (the construction estimates ``x̃[t+1]``);
            ``"current"`` raises :class:`~lqgt.errors.ConfigError`.
        inputs : {"assumed", "value"}
            With ``K``: the input built into ``M`` (the construction) or entering the values
            through a trainable ``B_u`` (see the class).

        Returns
        -------
        TrainableTransformerFilter

        Raises
        ------
        ConfigError
            Bad ``plant``, ``window``, ``beta``, ``K``, ``S``, ``form`` or ``inputs``.
        """
        return cls(plant, window=window, beta=beta, K=K, S=S, init="construction", form=form, inputs=inputs)

    def config(self) -> dict:
        """Constructor arguments (matrices as nested lists).

        Returns
        -------
        dict
        """
        return {"plant": model_config(self.model), "window": self.window, "beta": self.beta,
                "K": None if self.K is None else self.K.tolist(), "S": self.S_arg, "init": self.init_kind,
                "seed": self.seed, "form": self.form, "inputs": self.inputs}

    # ---- one attention step, shared by both modes ------------------------------------------
    def _start(self, B: int, device, dtype):
        x0 = self.m0.to(device=device, dtype=dtype).expand(B, self.n).clone()
        e = 1 + self.d
        keys = torch.zeros(B, self.window, e, device=device, dtype=dtype)
        values = torch.zeros(B, self.window, self.n, device=device, dtype=dtype)
        return (x0, keys, values, 0)

    def _cell(self, state, y: torch.Tensor, u: torch.Tensor):
        """Append the token of step ``t`` (the newest slot is the last) and attend: ``x̃[t+1]``."""
        x, keys, values, t = state
        z = torch.cat([x, y] if self.closed_loop else [x, y, u], dim=-1)
        q, k, v = self.attn.project(z)
        if self.u_value:
            v = v + u @ self.B_u.T
        keys = torch.cat([keys[:, 1:], k.unsqueeze(1)], dim=1)
        values = torch.cat([values[:, 1:], v.unsqueeze(1)], dim=1)
        logits = (keys @ q.unsqueeze(-1)).squeeze(-1)                       # (B, H)
        H = self.window
        if t < H - 1:                                                       # empty slots at the start
            valid = torch.arange(H, device=y.device) >= H - 1 - t
            logits = logits.masked_fill(~valid, -math.inf)
        w = torch.softmax(scaled_logits(logits - logits.amax(dim=-1, keepdim=True), self.attn.scale), dim=-1)
        x_next = (w.unsqueeze(-1) * values).sum(1)
        return (x_next, keys, values, t + 1), x_next, w

    # ---- sequence mode ---------------------------------------------------------------------
    def forward(self, y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Estimates ``x̃[t+1]`` of whole sequences.

        Parameters
        ----------
        y : torch.Tensor, shape (B, T, p)
            Measurements.
        u : torch.Tensor, shape (B, T, m)
            Inputs (a token without ``K``; with ``K`` used only by ``inputs="value"``).

        Returns
        -------
        torch.Tensor, shape (B, T, n)
            ``out[:, t] = x̃[t+1]``.
        """
        y, u = self.check_sequences(y, u)
        s = self._start(y.shape[0], y.device, y.dtype)
        outs = []
        for t in range(y.shape[1]):
            s, x_next, _ = self._cell(s, y[:, t], u[:, t])
            outs.append(x_next)
        return torch.stack(outs, 1)

    def predict_output(self, y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """One-step output predictions ``C x̃[t+1] + D u[t+1]`` (``u[T] = 0``).

        Parameters
        ----------
        y : torch.Tensor, shape (B, T, p)
            Measurements.
        u : torch.Tensor, shape (B, T, m)
            Inputs.

        Returns
        -------
        torch.Tensor, shape (B, T, p)
        """
        x = self.forward(y, u)
        return predicted_outputs(x, u, self.C, self.D)

    # ---- protocol mode ---------------------------------------------------------------------
    def init(self, batch: int, *, device: torch.device, dtype: torch.dtype) -> tuple[Any, torch.Tensor]:
        """Empty window and ``x̃[0] = m0``.

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
        state : tuple
            ``(x̃, keys (B, H, 1+d), values (B, H, n), t)``.
        x_hat0 : torch.Tensor, shape (batch, n)
        """
        self._place(device, dtype)
        s = self._start(batch, device, dtype)
        return s, s[0].clone()

    def step(self, state, y: torch.Tensor, u: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """Append ``[x̃[t]; y[t] (; u[t])]`` and attend.

        Parameters
        ----------
        state : tuple
            From :meth:`init` or the previous call.
        y : torch.Tensor, shape (B, p)
            ``y[t]``.
        u : torch.Tensor, shape (B, m)
            ``u[t]``.

        Returns
        -------
        state : tuple
        x_hat : torch.Tensor, shape (B, n)
            ``x̃[t+1]``.
        """
        s, x_next, _ = self._cell(state, y, u)
        return s, x_next
