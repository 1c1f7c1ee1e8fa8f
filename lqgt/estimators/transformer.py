"""The Transformer Filter (Goel & Bartlett, arXiv 2312.06937; SPEC §3).

Tokens are the filter's own past estimates paired with measurements,
``z[i] = [x̃[i]; y[i]]`` (with ``u[i]`` appended when the input is exogenous). One
softmax attention step over the causal window ``i = max(0, t-H+1) … t``,

    α[t, i]  = softmax_i( -β ‖z[t] - z[i]‖²_S )
    x̃[t+1]   = Σ_i α[t, i] M z[i]

with ``M = [A - LC, L, B - LD]`` (exogenous input) or ``M = [A - BK - LC + LDK, L]``
(closed loop ``u = -K x̃``), ``L`` the Kalman predictor gain. ``x̃[0] = m0``. As β → ∞
the self-token takes all the weight and ``x̃`` is the Kalman predictor; β = 0 gives the
window mean. Two implementations compute the same thing:

* ``impl="kernel"``: the Gaussian-kernel (Nadaraya–Watson) form on whitened tokens, with
  (B, H, ·) ring buffers; O(B·H·d) per step, never builds the quadratic embedding.
* ``impl="attention"``: a real causal self-attention block
  (:class:`TransformerFilterAttention`, an ``nn.Module`` with ``W_q``, ``W_k``, ``W_v``
  acting on ``φ(z) = [1; z; vec(z z')]``) with a key/value cache.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np
import scipy.linalg
import torch

from .._linalg import as_matrix, check_psd, spectral_radius, symmetrize
from .._resources import check_memory
from .._torch import resolve_dtype, tensor
from ..errors import ConfigError, NonFiniteError, NotPositiveDefiniteError, ShapeError
from ..layers.tf_attention import (
    TransformerFilterAttention,
    quadratic_embedding,
    scaled_logits,
)
from ..plant import Plant
from ..riccati import dlqe

# TransformerFilterAttention and quadratic_embedding live in lqgt.layers (a layer, not an
# estimator); they stay importable from here for existing code.
__all__ = ["TransformerFilter"]

IMPLS = ("kernel", "attention")


class TransformerFilter:
    """The Transformer Filter: a softmax-attention state estimator with inverse temperature β.

    Parameters
    ----------
    plant : Plant
        The model; its Kalman predictor gain ``L`` (from :func:`lqgt.dlqe`) defines ``M``.
    beta : float
        Inverse temperature β ≥ 0 (larger: sharper attention, closer to the Kalman predictor).
    window : int
        History window ``H`` ≥ 1 (tokens ``max(0, t-H+1) … t``).
    K : array_like, shape (m, n), optional
        Closed-loop gain. Given: the filter assumes ``u = -K x̃`` (the paper's controller),
        tokens are ``[x̃; y]`` and ``M = [A - BK - LC + LDK, L]``; the input passed to
        :meth:`step` is then ignored. ``None`` (default): the input is exogenous, a token
        component, and ``M = [A - LC, L, B - LD]``.
    S : array_like of shape (d, d), or "whiten", optional
        Distance weight (symmetric positive definite); identity by default. ``"whiten"``
        uses ``diag(P^{-1}, (CPC' + V)^{-1})`` (and ``I`` for the input block).
    impl : {"kernel", "attention"}
        Fast Gaussian-kernel form, or the explicit attention block
        (:class:`TransformerFilterAttention`).
    compile : bool
        Run the per-step attention core through :func:`torch.compile` (worth it on a GPU
        for large batches; the first call compiles, which takes tens of seconds).

    Attributes
    ----------
    form : str
        Always ``"predictor"``: the estimate returned by :meth:`step` is ``x̃[t+1]``.
    M : numpy.ndarray, shape (n, d)
        The value map.
    L : numpy.ndarray, shape (n, p)
        Kalman predictor gain.
    S : numpy.ndarray, shape (d, d)
        Distance weight.

    Raises
    ------
    ConfigError
        β < 0 or not finite, window < 1, unknown ``impl``.
    ShapeError, NonFiniteError, NotPositiveDefiniteError
        Bad ``K`` or ``S``.

    Notes
    -----
    Start-up: at step ``t < H`` the window holds the ``t + 1`` tokens ``0 … t``;
    ``x̃[0] = m0`` (the plant's initial mean). In :func:`lqgt.simulate`,
    ``res.x_hat[name][:, t]`` is ``x̃[t]``, the estimate ``u[t]`` was computed from.
    """

    form = "predictor"

    def __init__(self, plant: Plant, beta: float = 50.0, window: int = 32, K=None, S=None, impl: str = "kernel",
                 *, compile: bool = False) -> None:
        if not isinstance(plant, Plant):
            raise ConfigError(f"plant must be an lqgt.Plant, got {type(plant).__name__}")
        beta = _check_beta(beta)
        window = _check_window(window)
        if impl not in IMPLS:
            raise ConfigError(f"impl must be one of {IMPLS}, got {impl!r}")
        self.plant, self.beta, self.window, self.impl = plant, beta, window, impl
        self.n = plant.n
        L, P, _ = dlqe(plant.A, plant.C, plant.W, plant.V)
        self.L, self.P = L, P
        self.M, self.K = _value_map(plant, L, K)
        self.closed_loop = self.K is not None
        self.d = self.M.shape[1]
        self.S = _distance_weight(S, plant, P, self.d)
        self._S_chol = np.linalg.cholesky(self.S).T  # R with R'R = S: ‖z‖²_S = ‖R z‖²
        self._M_Rinv = scipy.linalg.solve_triangular(self._S_chol, self.M.T, trans="T", lower=False).T
        self.compile = bool(compile)
        self._power_sum: float | None = None

    @property
    def feedback_gain(self) -> np.ndarray | None:
        """The gain ``K`` of the loop ``u = -K x̃`` this filter assumes (``None``: exogenous input).

        :func:`lqgt.simulate` warns (:class:`lqgt.GainMismatchWarning`) when it closes the
        loop with another ``K``.
        """
        return self.K

    def __repr__(self) -> str:
        mode = "closed-loop" if self.closed_loop else "exogenous-u"
        return f"TransformerFilter(beta={self.beta:g}, window={self.window}, {mode}, impl={self.impl!r})"

    # ------------------------------------------------------------------ certificate
    def error_bound(self) -> float:
        """Certified ``sup_t ‖x̃[t] - x̂[t]‖`` versus the Kalman predictor (SPEC §3).

        ``ε(β) = (Σ_k ‖F^k‖) (H - 1) ‖M S^{-1/2}‖ / sqrt(2 e β)`` with ``F = A - LC``
        (exogenous input) or, in closed loop, the estimate block of the powers of the
        closed-loop matrix ``[[A, -BK], [LC, A - BK - LC]]`` (the TF and the Kalman loop
        then drive different plant trajectories on the same noise).

        Returns
        -------
        float
            The bound (``0`` for ``H = 1``, ``inf`` for β = 0 with ``H > 1`` or an
            unstable error recursion).
        """
        if self.window == 1:
            return 0.0
        if self._power_sum is None:
            self._power_sum = _bound_constant(self.plant, self.L, self.K, self.M, self.S)
        if self.beta == 0:
            return math.inf
        return self._power_sum * (self.window - 1) / math.sqrt(2.0 * math.e * self.beta)

    @classmethod
    def beta_for(cls, plant: Plant, eps: float, window: int = 32, K=None, S=None) -> float:
        """Smallest β whose certificate :meth:`error_bound` equals ``eps``.

        ``β(ε) = ((Σ_k ‖F^k‖)(H - 1)‖M S^{-1/2}‖)² / (2 e ε²)``.

        Parameters
        ----------
        plant : Plant
            The model.
        eps : float
            Required uniform error bound (> 0).
        window : int
            History window ``H``.
        K : array_like, shape (m, n), optional
            Closed-loop gain (as in the constructor).
        S : array_like or "whiten", optional
            Distance weight (as in the constructor).

        Returns
        -------
        float
            β ≥ 0 (``0`` when ``H = 1``).

        Raises
        ------
        ConfigError
            ``eps`` not a positive finite number, or so small that β exceeds the float
            range (the message gives the order of β and the smallest usable ``eps``).
        """
        if isinstance(eps, bool) or not (isinstance(eps, (int, float, np.integer, np.floating))
                                         and math.isfinite(eps) and eps > 0):
            raise ConfigError(f"eps must be a positive finite number, got {eps!r}")
        tf = cls(plant, beta=1.0, window=window, K=K, S=S)
        c = tf.error_bound() * math.sqrt(2.0 * math.e)  # ε(β) = c / sqrt(2 e β) with β = 1
        if c == 0.0:
            return 0.0
        if not math.isfinite(c):
            raise ConfigError("no finite β certifies any eps: the error recursion is not stable "
                              "(the certificate's power sum diverges)")
        # in logarithms: (c / eps)² overflows for tiny eps long before the answer is meaningless
        log_beta = 2.0 * (math.log(c) - math.log(float(eps))) - math.log(2.0 * math.e)
        if log_beta > math.log(sys.float_info.max):
            raise ConfigError(f"eps={eps!r} is too small: the certificate needs β ≈ 10^{log_beta / math.log(10):.0f}, "
                              f"beyond the largest float ({sys.float_info.max:.3g}); ask for eps >= "
                              f"{c / math.sqrt(2.0 * math.e * sys.float_info.max):.3g}")
        return math.exp(log_beta)

    # ------------------------------------------------------------------ estimator protocol
    def init(self, batch: int, *, device: torch.device, dtype: torch.dtype) -> tuple[Any, torch.Tensor]:
        """Return the state (empty window) and ``x̃[0] = m0`` repeated ``(batch, n)``.

        Parameters
        ----------
        batch : int
            Number of trajectories ``B``.
        device : torch.device
            Device of the buffers.
        dtype : torch.dtype
            Floating dtype.

        Returns
        -------
        state : _TFState
            Time-major ring buffers ``(H, B, ·)`` and the step counter.
        x_hat0 : torch.Tensor, shape (B, n)
        """
        return self._init(batch, device, dtype, self.window)

    def _init(self, batch: int, device, dtype, H: int):
        """:meth:`init` with ring buffers of ``H`` slots (``H < window`` is exact for runs of ``H`` steps)."""
        dtype = resolve_dtype(dtype)
        itemsize = torch.empty((), dtype=dtype).element_size()
        width = (1 + self.d + self.n) if self.impl == "attention" else self.d
        check_memory(f"the Transformer Filter's window buffers (window={H}, batch={batch}, token width {width})",
                     float(H) * batch * (width + 4) * itemsize, device,
                     hint="use a smaller window or batch")
        x0 = tensor(self.plant.m0, device, dtype).expand(batch, -1).clone()
        # β beyond float32's range would become inf and give inf·0 on the self-token;
        # 1e30 is already "infinite" for any token distance representable in float32.
        beta = min(self.beta, 1e30) if dtype == torch.float32 else self.beta
        if self.impl == "kernel":
            # whitened keys R z (R'R = S); values M z = (M R^{-1}) (R z) need no buffer
            keys = torch.zeros(H, batch, self.d, device=device, dtype=dtype)
            params = (tensor(self._S_chol.T, device, dtype), tensor(self._M_Rinv.T, device, dtype), beta)
            values = None
        else:
            blk = TransformerFilterAttention.from_construction(self.M, self.S, beta, H, dtype=dtype)
            blk = blk.to(device).requires_grad_(False)
            keys = torch.zeros(H, batch, 1 + self.d, device=device, dtype=dtype)
            values = torch.zeros(H, batch, self.n, device=device, dtype=dtype)
            params = (blk,)
        core = _compiled(self.impl) if self.compile else (_kernel_core if self.impl == "kernel" else _attention_core)
        masks = _StartupMasks(H, device, dtype)
        return (x0, keys, values, 0, params, core, masks), x0

    def step(self, state, y: torch.Tensor, u: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """Append the token ``[x̃[t]; y[t] (; u[t])]`` and attend: return ``x̃[t+1]``.

        Parameters
        ----------
        state : tuple
            From :meth:`init` or the previous call.
        y : torch.Tensor, shape (B, p)
            Measurement ``y[t]``.
        u : torch.Tensor, shape (B, m)
            Input ``u[t]`` (ignored in closed-loop mode, where ``u = -K x̃`` is assumed).

        Returns
        -------
        state : tuple
        x_hat : torch.Tensor, shape (B, n)
            ``x̃[t+1]``.
        """
        x_next, _, state = self._advance(state, y, u)
        return state, x_next

    def _advance(self, state, y, u):
        """One attention step: returns ``x̃[t+1]``, the weights ``(H, B)`` by ring slot, the new state."""
        x, keys, values, t, params, core, masks = state
        z = torch.cat([x, y] if self.closed_loop else [x, y, u], dim=-1)
        slot, mask = masks.get(t)
        if self.impl == "kernel":
            Rt, MRt, beta = params
            x_next, w = core(keys, z @ Rt, slot, mask, beta, MRt)
        else:
            (blk,) = params
            q, k, v = blk.project(z)
            x_next, w = core(keys, values, q, k, v, slot, mask, blk.scale)
        return x_next, w, (x_next, keys, values, t + 1, params, core, masks)

    def attention_module(self, dtype: torch.dtype = torch.float64) -> TransformerFilterAttention:
        """The explicit attention block (``nn.Module``) built by the construction of SPEC §3.

        Parameters
        ----------
        dtype : torch.dtype
            Parameter dtype.

        Returns
        -------
        TransformerFilterAttention
        """
        return TransformerFilterAttention.from_construction(self.M, self.S, self.beta, self.window, dtype=dtype)

    # ------------------------------------------------------------------ analysis
    def run(self, y, u=None, *, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Filter measurement sequences and return estimates and attention weights.

        Parameters
        ----------
        y : array_like or torch.Tensor, shape (T, p) or (B, T, p)
            Measurements (e.g. ``res.y[name]`` of a simulation).
        u : array_like or torch.Tensor, shape (T, m) or (B, T, m), optional
            Inputs; required for an exogenous-input filter, ignored in closed-loop mode.
        dtype : torch.dtype, optional
            Float64 by default.

        Returns
        -------
        x_hat : torch.Tensor, shape (B, T + 1, n) (or (T + 1, n))
            ``x̃[0] … x̃[T]``.
        weights : torch.Tensor, shape (B, T, T) (or (T, T))
            ``α[t, i]``, zero outside ``max(0, t-H+1) ≤ i ≤ t``.

        Raises
        ------
        ShapeError
            ``y`` or ``u`` of the wrong shape, or ``u`` missing for an exogenous-input filter.
        NonFiniteError
            NaN or infinity in ``y``, or in ``u`` where it is used (exogenous input).
        ResourceError
            The ``(B, T, T)`` weights or the window buffers would not fit in memory (the
            message gives the estimate).
        """
        dt = resolve_dtype(dtype)
        y_t = torch.as_tensor(y).to(dtype=dt)
        single = y_t.ndim == 2
        if single:
            y_t = y_t.unsqueeze(0)
        if y_t.ndim != 3 or y_t.shape[-1] != self.plant.p:
            raise ShapeError(f"y has shape {tuple(torch.as_tensor(y).shape)}, expected (T, {self.plant.p}) or (B, T, {self.plant.p})")
        if not torch.isfinite(y_t).all():
            raise NonFiniteError("y contains NaN or infinite entries")
        B, T, _ = y_t.shape
        dev = y_t.device
        if u is None:
            if not self.closed_loop:
                raise ShapeError("u is required for a Transformer Filter with exogenous input (K=None)")
            u_t = torch.zeros(B, T, self.plant.m, dtype=dt, device=dev)
        else:
            u_t = torch.as_tensor(u).to(dtype=dt, device=dev)
            if u_t.ndim == 2:
                u_t = u_t.unsqueeze(0)
            if tuple(u_t.shape) != (B, T, self.plant.m):
                raise ShapeError(f"u has shape {tuple(torch.as_tensor(u).shape)}, expected ({T}, {self.plant.m}) or ({B}, {T}, {self.plant.m})")
            if not self.closed_loop and not bool(torch.isfinite(u_t).all()):
                raise NonFiniteError("u contains NaN or infinite entries")
        itemsize = torch.empty((), dtype=dt).element_size()
        check_memory(f"the attention weights returned by run ({B} x {T} x {T} for batch={B}, T={T})",
                     float(B) * T * T * itemsize, dev, hint="run shorter sequences, or fewer at a time")
        H = min(self.window, T)  # a window longer than the run sees the same tokens with a shorter ring
        state, x = self._init(B, dev, dt, H)
        xs = torch.empty(B, T + 1, self.n, dtype=dt, device=dev)
        xs[:, 0] = x
        weights = torch.zeros(B, T, T, dtype=dt, device=dev)
        for t in range(T):
            x_next, w, state = self._advance(state, y_t[:, t], u_t[:, t])
            lo = max(0, t - H + 1)
            times = torch.arange(lo, t + 1, device=dev)
            weights[:, t, lo:t + 1] = w[times % H].T
            xs[:, t + 1] = x_next
        if single:
            return xs[0], weights[0]
        return xs, weights


def _check_beta(beta) -> float:
    if isinstance(beta, (bool, str)) or not isinstance(beta, (int, float, np.integer, np.floating)):
        raise ConfigError(f"beta must be a real number, got {beta!r}")
    try:
        b = float(beta)
    except OverflowError:
        raise ConfigError(f"beta must be a finite number >= 0 (at most {sys.float_info.max:.3g}), got an integer "
                          f"with {len(str(abs(int(beta))))} digits") from None
    if not math.isfinite(b) or b < 0:
        raise ConfigError(f"beta must be a finite number >= 0, got {beta!r}")
    return b


def _check_window(window) -> int:
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ConfigError(f"window must be an integer >= 1, got {window!r}")
    return int(window)


def _value_map(plant: Plant, L: np.ndarray, K) -> tuple[np.ndarray, np.ndarray | None]:
    """``M`` of SPEC §3 (with the feedthrough ``D`` folded in) and the checked ``K``."""
    A, B, C, D = plant.A, plant.B, plant.C, plant.D
    if K is None:
        return np.hstack([A - L @ C, L, B - L @ D]), None
    K = as_matrix("K", K, (plant.m, plant.n))
    return np.hstack([A - B @ K - L @ C + L @ D @ K, L]), K


def _distance_weight(S, plant: Plant, P: np.ndarray, d: int) -> np.ndarray:
    """Check ``S`` (or build the whitening) for tokens of dimension ``d``."""
    if S is None:
        return np.eye(d)
    if isinstance(S, str):
        if S != "whiten":
            raise ConfigError(f"S must be a (d, d) matrix, None or 'whiten', got {S!r}")
        lam = np.linalg.eigvalsh(P)
        if lam.min() <= 1e-12 * max(1.0, lam.max()):
            raise NotPositiveDefiniteError("S='whiten' needs a positive definite Kalman covariance P (it is singular here)")
        Sy = plant.C @ P @ plant.C.T + plant.V
        blocks = [symmetrize(np.linalg.inv(P)), symmetrize(np.linalg.inv(Sy))]
        if d > plant.n + plant.p:
            blocks.append(np.eye(d - plant.n - plant.p))
        return scipy.linalg.block_diag(*blocks)
    return check_psd("S", as_matrix("S", S, (d, d)), strict=True)


def _sum_of_powers(F: np.ndarray, select: slice | None = None, max_terms: int = 200_000) -> float:
    """``Σ_k ‖F^k[select, select]‖₂`` (the whole matrix when ``select`` is None); inf if it diverges."""
    if spectral_radius(F) >= 1.0:
        return math.inf
    total, Fk = 0.0, np.eye(F.shape[0])
    for _ in range(max_terms):
        full = float(np.linalg.norm(Fk, 2))
        total += full if select is None else float(np.linalg.norm(Fk[select, select], 2))
        if full < 1e-17 * total:
            return total
        Fk = F @ Fk
    return total


def _bound_constant(plant, L, K, M, S) -> float:
    """``(Σ_k ‖F^k‖) ‖M S^{-1/2}‖``: the β- and H-independent factor of ε(β)."""
    A, B, C = plant.A, plant.B, plant.C
    n = plant.n
    if K is None:
        s = _sum_of_powers(A - L @ C)
    else:
        F = np.block([[A, -B @ K], [L @ C, A - B @ K - L @ C]])
        s = _sum_of_powers(F, slice(n, 2 * n))
    lam, U = np.linalg.eigh(S)
    S_inv_half = (U / np.sqrt(lam)) @ U.T
    return s * float(np.linalg.norm(M @ S_inv_half, 2))


class _StartupMasks:
    """Ring-slot index and additive start-up mask ``(H, 1)`` (``-inf`` on slots not yet written).

    The mask of step ``t < H`` is made when asked for (``O(H)`` memory, not the ``H × H``
    table of every start-up step); from ``t = H - 1`` on it is all zeros.
    """

    def __init__(self, H: int, device, dtype) -> None:
        self.H = H
        self.slots = torch.arange(H, device=device)
        self.zeros = torch.zeros(H, 1, device=device, dtype=dtype)
        self._neg = torch.full((H, 1), -math.inf, device=device, dtype=dtype)

    def get(self, t: int):
        slot = self.slots[t % self.H: t % self.H + 1]
        if t >= self.H - 1:
            return slot, self.zeros
        return slot, torch.where(self.slots[:, None] > t, self._neg, self.zeros)


def _kernel_core(keys, kz, slot, mask, beta: float, MRt):
    """Gaussian-kernel step on time-major whitened keys ``(H, B, d)``; returns ``x̃[t+1]`` and ``α`` ``(H, B)``."""
    keys.index_copy_(0, slot, kz.unsqueeze(0))
    diff = keys - kz
    logits = (diff * diff).sum(-1) * (-beta) + mask  # ≤ 0; the self-token is 0, the max
    w = torch.softmax(logits, dim=0)
    return (w.unsqueeze(-1) * keys).sum(0) @ MRt, w


def _attention_core(keys, values, q, k, v, slot, mask, scale: float):
    """Softmax attention step with a time-major key/value cache; returns ``x̃[t+1]`` and ``α`` ``(H, B)``.

    The logits ``q·k`` are β-free; β multiplies them after the maximum is subtracted
    (:func:`lqgt.layers.tf_attention.scaled_logits`), so a huge β cannot overflow.
    """
    keys.index_copy_(0, slot, k.unsqueeze(0))
    values.index_copy_(0, slot, v.unsqueeze(0))
    logits = (keys * q).sum(-1) + mask
    w = torch.softmax(scaled_logits(logits - logits.amax(dim=0, keepdim=True), scale), dim=0)
    return (w.unsqueeze(-1) * values).sum(0), w


_COMPILED: dict[str, Any] = {}


def _compiled(impl: str):
    """``torch.compile`` of the step core (cached per implementation)."""
    if impl not in _COMPILED:
        fn = _kernel_core if impl == "kernel" else _attention_core
        _COMPILED[impl] = torch.compile(fn, dynamic=False)
    return _COMPILED[impl]
