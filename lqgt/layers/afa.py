"""Adaptive Filter Attention as a trainable layer (Racioppo, arXiv 2509.04154; SPEC §6).

Each head treats its queries, keys and values as noisy observations of one trajectory of a
linear SDE with diagonal complex dynamics ``λ_k = -μ_k + iω_k`` on pairs of dimensions
(component ``k`` of a head of width ``d_h`` is the complex number ``z[2k] + i z[2k+1]``).
A key at time ``t_j`` is pulled forward to the query's time ``t_i`` (``Δ = t_i - t_j ≥ 0``),

    x̂_{i|j} = e^{λ Δ} k_j,
    V_ij    = q (1 - e^{-2μΔ}) / (2μ) + e^{-2μΔ} r          (→ qΔ + r as μ → 0, via expm1)

and the attention weights are robust (Student-t) reweightings of the propagated precisions,

    logit_ij = τ [ -log V_ij - log(1 + ‖q_i - e^{λΔ} k_j‖²_{(V_ij + r)^{-1}} / (ν d_h)) ]
    out_i    = Σ_j α_ij e^{λΔ} v_j,   α_ij = softmax_j(logit_ij)  over the causal window.

The residual is measured against the query, which has its own noise ``r`` (so the residual
covariance is ``V_ij + r``); the precision term uses the key's ``V_ij`` alone, so that for
``ν → ∞`` (``robust=False``) and ``q = 0`` the output is exactly the generalised
least-squares estimate of the value trajectory at ``t_i``.

* ``form="isotropic"``: one ``μ``, ``q``, ``r`` per head (and a set of frequencies ``ω``,
  one per pair), so ``V_ij`` is a scalar and the squared residual expands into matmuls,
  ``‖q_i‖² + e^{-2μΔ}‖k_j‖² - 2 e^{-μΔ} Re(conj(q̃_i)·k̃_j)`` with rotary-rotated
  ``q̃_i = e^{-iωt_i} q_i``, ``k̃_j = e^{-iωt_j} k_j``: O(N² d) like ordinary attention.
* ``form="tensor"``: ``μ``, ``q``, ``r`` per component; the precision and hence the
  weights are per component (``α_ijk``, each normalised over ``j``), the robust factor uses
  the whole-head Mahalanobis distance ``Σ_k |r_ijk|² / (V_ijk + r_k)``. O(N² d) time and
  memory (the weights are a ``(B, heads, d_h/2, N, N)`` tensor).

Parameters are stored unconstrained: ``μ = softplus(·)``, ``q = softplus(·)``,
``r = softplus(·)``, ``ν = softplus(·)`` (trainable when ``robust``), ``ω`` free.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, NonFiniteError, ShapeError

__all__ = ["AdaptiveFilterAttention", "lyapunov_variance"]

FORMS = ("isotropic", "tensor")


def _inv_softplus(x: torch.Tensor) -> torch.Tensor:
    """Inverse of softplus (``-inf`` for 0, so that ``softplus`` gives exactly 0 back)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    out = x + torch.log(-torch.expm1(-x.clamp_min(1e-300)))
    return torch.where(x > 0, out, torch.full_like(x, -math.inf))


def _one_minus_exp_over(x: torch.Tensor) -> torch.Tensor:
    """``(1 - e^{-x}) / x`` for ``x ≥ 0``, stable at ``x → 0`` (value 1) with finite gradients."""
    small = x < 1e-6
    xs = torch.where(small, torch.ones_like(x), x)
    return torch.where(small, 1.0 - 0.5 * x + x * x / 6.0, -torch.expm1(-xs) / xs)


def lyapunov_variance(mu: torch.Tensor, q: torch.Tensor, r: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Propagated variance ``q (1 - e^{-2μΔ}) / (2μ) + e^{-2μΔ} r`` (closed-form Lyapunov).

    Evaluated as ``q Δ g(2μΔ) + e^{-2μΔ} r`` with ``g(x) = (1 - e^{-x}) / x`` through
    ``expm1``, so ``μ → 0`` gives ``q Δ + r`` without cancellation.

    Parameters
    ----------
    mu : torch.Tensor
        Decay rates ``μ ≥ 0`` (broadcast with ``delta``).
    q : torch.Tensor
        Process-noise intensities ``q ≥ 0`` (per unit time).
    r : torch.Tensor
        Observation-noise variances ``r > 0``.
    delta : torch.Tensor
        Time lags ``Δ ≥ 0``.

    Returns
    -------
    torch.Tensor
        The variances (broadcast shape).
    """
    x = 2.0 * mu * delta
    return q * delta * _one_minus_exp_over(x) + torch.exp(-x) * r


def _check_positive(name: str, value, *, allow_zero: bool = False, allow_inf: bool = False) -> torch.Tensor:
    v = torch.as_tensor(value, dtype=torch.float64)
    if torch.isnan(v).any():
        raise NonFiniteError(f"{name} contains NaN")
    if not allow_inf and torch.isinf(v).any():
        raise NonFiniteError(f"{name} must be finite, got {value!r}")
    bad = (v < 0) if allow_zero else (v <= 0)
    if bad.any():
        cond = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be {cond}, got {value!r}")
    return v


class AdaptiveFilterAttention(nn.Module):
    """Causal Adaptive Filter Attention block (trainable; see the module docstring).

    Parameters
    ----------
    d_model : int
        Model width (input and output features).
    heads : int
        Number of heads; ``d_model / heads`` must be an even integer (pairs of dimensions
        are complex components).
    form : {"isotropic", "tensor"}
        One decay and noise level per head (isotropic), or per component (tensor).
    robust : bool
        Student-t weights with trainable ``ν`` (default), or Gaussian weights ``∝ V⁻¹``.
    nu : float
        Initial degrees of freedom ``ν > 0`` of the robust weights (``inf`` is the
        Gaussian limit and needs ``robust=False``).
    tau : float
        Inverse temperature ``τ > 0`` of the logits (1: weights are precisions).
    window : int, optional
        Each query attends to the last ``window`` tokens (itself included); all past
        tokens by default.
    dt : float
        Time between tokens (``t_i = i dt``).
    mu : float
        Initial decay rate ``μ ≥ 0`` (1/time).
    q : float
        Initial process-noise intensity ``q ≥ 0``.
    r : float
        Initial observation-noise variance ``r > 0``.
    omega_base : float
        Initial frequencies are rotary-style, ``ω_k = omega_base^{-k/(d_h/2)} / dt``.
    bias : bool
        Bias in the four projections.
    device : torch.device, optional
        Device of the parameters.
    dtype : torch.dtype, optional
        Dtype of the parameters.

    Raises
    ------
    ConfigError
        Bad sizes, unknown ``form``, ``ν ≤ 0``, ``τ ≤ 0``, negative noise levels,
        ``r ≤ 0``, ``window < 1``.
    NonFiniteError
        A NaN initial value.
    """

    def __init__(self, d_model: int, heads: int = 1, *, form: str = "isotropic", robust: bool = True,
                 nu: float = 4.0, tau: float = 1.0, window: int | None = None, dt: float = 1.0,
                 mu: float = 0.1, q: float = 0.1, r: float = 1.0, omega_base: float = 10000.0,
                 bias: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        for name, v in (("d_model", d_model), ("heads", heads)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if d_model % heads or (d_model // heads) % 2:
            raise ConfigError(f"d_model / heads must be an even integer (complex pairs), got d_model={d_model}, heads={heads}")
        if form not in FORMS:
            raise ConfigError(f"form must be one of {FORMS}, got {form!r}")
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ConfigError(f"window must be an integer >= 1 or None, got {window!r}")
        nu_t = _check_positive("nu", nu, allow_inf=True)
        if math.isinf(float(nu_t)) and robust:
            raise ConfigError("nu=inf is the Gaussian limit: use robust=False")
        tau_t = _check_positive("tau", tau)
        dt_t = _check_positive("dt", dt)
        _check_positive("mu", mu, allow_zero=True)
        _check_positive("q", q, allow_zero=True)
        _check_positive("r", r)
        fk = {"device": device, "dtype": torch.get_default_dtype() if dtype is None else dtype}
        self.d_model, self.heads, self.form, self.robust = d_model, heads, form, bool(robust)
        self.d_head = d_model // heads
        self.comps = self.d_head // 2
        self.window, self.dt, self.tau = window, float(dt_t), float(tau_t)
        shape = (heads,) if form == "isotropic" else (heads, self.comps)
        self.W_q = nn.Linear(d_model, d_model, bias=bias, **fk)
        self.W_k = nn.Linear(d_model, d_model, bias=bias, **fk)
        self.W_v = nn.Linear(d_model, d_model, bias=bias, **fk)
        self.W_o = nn.Linear(d_model, d_model, bias=bias, **fk)
        k = torch.arange(self.comps, dtype=torch.float64)
        omega = (float(omega_base) ** (-k / self.comps)) / self.dt
        self.omega = nn.Parameter(omega.expand(heads, -1).clone().to(**fk))
        self.mu_raw = nn.Parameter(_inv_softplus(torch.full(shape, float(mu))).to(**fk))
        self.q_raw = nn.Parameter(_inv_softplus(torch.full(shape, float(q))).to(**fk))
        self.r_raw = nn.Parameter(_inv_softplus(torch.full(shape, float(r))).to(**fk))
        nu0 = 1.0 if math.isinf(float(nu_t)) else float(nu_t)
        self.nu_raw = nn.Parameter(_inv_softplus(torch.full((heads,), nu0)).to(**fk), requires_grad=self.robust)

    # ------------------------------------------------------------------ parameters
    @property
    def mu(self) -> torch.Tensor:
        """Decay rates ``μ ≥ 0``, shape ``(heads,)`` (isotropic) or ``(heads, d_h/2)`` (tensor)."""
        return F.softplus(self.mu_raw)

    @property
    def q(self) -> torch.Tensor:
        """Process-noise intensities ``q ≥ 0`` (shape as :attr:`mu`)."""
        return F.softplus(self.q_raw)

    @property
    def r(self) -> torch.Tensor:
        """Observation-noise variances ``r > 0`` (shape as :attr:`mu`)."""
        return F.softplus(self.r_raw)

    @property
    def nu(self) -> torch.Tensor:
        """Degrees of freedom ``ν > 0`` of the robust weights, shape ``(heads,)``."""
        return F.softplus(self.nu_raw)

    @torch.no_grad()
    def set_dynamics(self, *, mu=None, omega=None, q=None, r=None, nu=None) -> AdaptiveFilterAttention:
        """Set the dynamics and noise parameters (exact zeros allowed for ``μ`` and ``q``).

        Parameters
        ----------
        mu : float or array_like, optional
            Decay rates ``μ ≥ 0`` (broadcast to :attr:`mu`'s shape).
        omega : float or array_like, optional
            Frequencies ``ω`` (rad per unit time), broadcast to ``(heads, d_h/2)``.
        q : float or array_like, optional
            Process-noise intensities ``q ≥ 0``.
        r : float or array_like, optional
            Observation-noise variances ``r > 0``.
        nu : float or array_like, optional
            Degrees of freedom ``ν > 0``.

        Returns
        -------
        AdaptiveFilterAttention
            ``self``.

        Raises
        ------
        ConfigError, NonFiniteError
            Negative noise levels or decays, ``r ≤ 0``, ``ν ≤ 0``, NaN.
        """
        for name, val, raw, zero in (("mu", mu, self.mu_raw, True), ("q", q, self.q_raw, True),
                                     ("r", r, self.r_raw, False), ("nu", nu, self.nu_raw, False)):
            if val is not None:
                v = _check_positive(name, val, allow_zero=zero)
                raw.copy_(_inv_softplus(v).expand(raw.shape).to(raw))
        if omega is not None:
            w = torch.as_tensor(omega, dtype=torch.float64)
            if not torch.isfinite(w).all():
                raise NonFiniteError("omega must be finite")
            self.omega.copy_(w.expand(self.omega.shape).to(self.omega))
        return self

    # ------------------------------------------------------------------ forward
    def _split(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, N, d_model)`` → ``(B, heads, N, d_h/2, 2)`` (real/imaginary pairs)."""
        B, N, _ = z.shape
        return z.view(B, N, self.heads, self.comps, 2).permute(0, 2, 1, 3, 4)

    @staticmethod
    def _rotate(z: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float) -> torch.Tensor:
        """Multiply the complex pairs ``z`` ``(..., N, c, 2)`` by ``e^{sign·iθ}`` (θ via cos, sin ``(h, N, c)``)."""
        a, b = z[..., 0], z[..., 1]
        s = sign * sin
        return torch.stack([a * cos - b * s, a * s + b * cos], dim=-1)

    def _mask(self, N: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.arange(N, device=device)
        lag = idx[:, None] - idx[None, :]
        mask = lag >= 0
        if self.window is not None:
            mask = mask & (lag < self.window)
        return mask, lag.clamp_min(0)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Attention logits (``-inf`` outside the causal window).

        Parameters
        ----------
        x : torch.Tensor, shape (B, N, d_model)
            Input sequence.

        Returns
        -------
        torch.Tensor
            ``(B, heads, N, N)`` (isotropic) or ``(B, heads, d_h/2, N, N)`` (tensor).
        """
        return self._attend(x, want="logits")

    def forward(self, x: torch.Tensor, return_weights: bool = False, lead: int = 0):
        """Causal AFA over a sequence.

        Parameters
        ----------
        x : torch.Tensor, shape (B, N, d_model)
            Input sequence (token ``i`` at time ``i·dt``).
        return_weights : bool
            Also return the attention weights.
        lead : int
            Pull the output ``lead ≥ 0`` further steps forward: ``out_i`` estimates the
            value trajectory at ``t_i + lead·dt`` (``lead=1``: next-token prediction).

        Returns
        -------
        out : torch.Tensor, shape (B, N, d_model)
            ``W_o`` of the filtered, pulled-forward values.
        weights : torch.Tensor
            Only with ``return_weights``: ``α`` of shape ``(B, heads, N, N)`` (isotropic)
            or ``(B, heads, d_h/2, N, N)`` (tensor); zero outside the window.

        Raises
        ------
        ShapeError
            ``x`` is not ``(B, N, d_model)``.
        NonFiniteError
            ``x`` contains NaN or infinity.
        """
        if isinstance(lead, bool) or not isinstance(lead, int) or lead < 0:
            raise ConfigError(f"lead must be an integer >= 0, got {lead!r}")
        out, w = self._attend(x, want="out", lead=lead)
        return (out, w) if return_weights else out

    def _attend(self, x: torch.Tensor, want: str, lead: int = 0):
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[-1] != self.d_model:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ShapeError(f"x must be a tensor of shape (B, N, d_model={self.d_model}), got {got}")
        if not torch.isfinite(x).all():
            raise NonFiniteError("x contains NaN or infinite entries")
        B, N, _ = x.shape
        q, k, v = (self._split(W(x)) for W in (self.W_q, self.W_k, self.W_v))  # (B, h, N, c, 2)
        t = torch.arange(N, device=x.device, dtype=x.dtype) * self.dt
        theta = self.omega[:, None, :] * t[None, :, None]  # (h, N, c)
        cos, sin = torch.cos(theta), torch.sin(theta)
        qr, kr, vr = (self._rotate(z, cos, sin, -1.0) for z in (q, k, v))  # e^{-iωt} z
        mask, lag = self._mask(N, x.device)
        delta = lag.to(x.dtype) * self.dt  # (N, N)
        mu, qn, rn = self.mu, self.q, self.r
        if self.form == "isotropic":
            mu_, q_, r_ = (p[:, None, None] for p in (mu, qn, rn))  # (h, 1, 1)
            dec = torch.exp(-mu_ * delta)  # (h, N, N)
            V = lyapunov_variance(mu_, q_, r_, delta)
            cross = qr.flatten(-2) @ kr.flatten(-2).transpose(-1, -2)  # Re(conj(q̃_i)·k̃_j), (B, h, N, N)
            q2 = q.square().sum((-1, -2))[..., :, None]
            k2 = k.square().sum((-1, -2))[..., None, :]
            res2 = (q2 + dec * dec * k2 - 2.0 * dec * cross).clamp_min(0.0)
            logit = -torch.log(V)
            if self.robust:
                nu = self.nu[:, None, None]
                logit = logit - torch.log1p(res2 / (nu * self.d_head * (V + r_)))
            logit = (self.tau * logit).masked_fill(~mask, -math.inf)
            if want == "logits":
                return logit
            alpha = torch.softmax(logit, dim=-1)
            outr = (alpha * dec) @ vr.flatten(-2)  # (B, h, N, d_h)
            outr = outr.view(B, self.heads, N, self.comps, 2)
            if lead:
                outr = outr * torch.exp(-mu * (lead * self.dt))[:, None, None, None]
        else:
            mu_, q_, r_ = (p[:, :, None, None] for p in (mu, qn, rn))  # (h, c, 1, 1)
            dec = torch.exp(-mu_ * delta)  # (h, c, N, N)
            V = lyapunov_variance(mu_, q_, r_, delta)
            logit = -torch.log(V)
            if self.robust:
                cross = torch.einsum("bhikz,bhjkz->bhkij", qr, kr)  # (B, h, c, N, N)
                q2 = q.square().sum(-1).transpose(-1, -2)[..., :, None]  # (B, h, c, N, 1)
                k2 = k.square().sum(-1).transpose(-1, -2)[..., None, :]
                res2 = (q2 + dec * dec * k2 - 2.0 * dec * cross).clamp_min(0.0)
                maha = (res2 / (V + r_)).sum(2, keepdim=True)  # (B, h, 1, N, N)
                nu = self.nu[:, None, None, None]
                logit = logit - torch.log1p(maha / (nu * self.d_head))
            else:
                logit = logit.expand(B, -1, -1, -1, -1)
            logit = (self.tau * logit).masked_fill(~mask, -math.inf)
            if want == "logits":
                return logit
            alpha = torch.softmax(logit, dim=-1)  # (B, h, c, N, N)
            outr = torch.einsum("bhkij,bhjkz->bhikz", alpha * dec, vr)
            if lead:
                outr = outr * torch.exp(-mu * (lead * self.dt))[:, None, :, None]
        if lead:
            theta = theta + self.omega[:, None, :] * (lead * self.dt)
            cos, sin = torch.cos(theta), torch.sin(theta)
        out = self._rotate(outr, cos, sin, +1.0)  # back: e^{iω(t_i + lead dt)}
        out = out.permute(0, 2, 1, 3, 4).reshape(B, N, self.d_model)
        return self.W_o(out), alpha

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, heads={self.heads}, form={self.form!r}, robust={self.robust}, "
                f"window={self.window}, dt={self.dt:g}, tau={self.tau:g}")
