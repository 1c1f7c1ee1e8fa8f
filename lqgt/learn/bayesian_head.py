"""The Kalman Bayesian head (SPEC §7, seed 002): Linear → ReLU → Linear [→ Softmax] with Gaussian weights.

The head sits on a frozen feature extractor. Its weights carry means and covariances (one
``(k, k)`` covariance per output row of each layer, rows independent). The forward pass
propagates activation moments: ReLU exactly (Gaussian mean and variance through Φ and φ),
softmax to first order (its Jacobian). :meth:`BayesianHead.update` is one RTS-style step: a
Kalman update of the output given the target, then a backward smoother pass that moves the
weight moments of layer 2, the hidden activations, the ReLU pre-activations and the weights of
layer 1, each by its cross-covariance with the next quantity. Only the current sample is held
in memory. Cross-covariances between rows and between outputs are ignored, as in the seed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import ConfigError, NonFiniteError, ShapeError

__all__ = ["BayesianHead", "relu_moments", "softmax_moments"]

_SQRT2 = math.sqrt(2.0)
_SQRT2PI = math.sqrt(2.0 * math.pi)


def relu_moments(mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Exact mean and variance of ``max(h, 0)`` for ``h ~ N(mean, var)``, and ``Cov(h, max(h, 0))``.

    ``E = μΦ(α) + σφ(α)``, ``E² = (μ² + σ²)Φ(α) + μσφ(α)``, ``Cov = σ²Φ(α)``, ``α = μ/σ``; at
    ``σ = 0`` the deterministic ReLU.

    Parameters
    ----------
    mean : Tensor
        ``(...)`` means of the pre-activations.
    var : Tensor
        ``(...)`` variances, ``≥ 0``.

    Returns
    -------
    mean_out : Tensor
        ``(...)``.
    var_out : Tensor
        ``(...)``, ``≥ 0``.
    cov_in_out : Tensor
        ``(...)`` covariance between input and output.
    """
    var = torch.clamp(var, min=0.0)
    pos = var > 0
    sd = torch.sqrt(torch.where(pos, var, torch.ones_like(var)))
    a = mean / sd
    Phi = 0.5 * (1.0 + torch.erf(a / _SQRT2))
    phi = torch.exp(-0.5 * a * a) / _SQRT2PI
    m = mean * Phi + sd * phi
    m2 = (mean * mean + var) * Phi + mean * sd * phi
    v = torch.clamp(m2 - m * m, min=0.0)
    c = var * Phi
    relu = torch.clamp(mean, min=0.0)
    zero = torch.zeros_like(mean)
    return torch.where(pos, m, relu), torch.where(pos, v, zero), torch.where(pos, c, zero)


def softmax_moments(mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
    """First-order Taylor moments of ``softmax(z)`` for independent ``z_k ~ N(mean_k, var_k)``.

    Mean ``softmax(μ)``; variance ``diag(J diag(var) J')`` with ``J = diag(s) − s s'``. The mean's
    error is second order in the variance scale (see ``docs/training_as_filtering.md``).

    Parameters
    ----------
    mean : Tensor
        ``(..., K)`` logit means.
    var : Tensor
        ``(..., K)`` logit variances.

    Returns
    -------
    mean_out : Tensor
        ``(..., K)``.
    var_out : Tensor
        ``(..., K)``.
    """
    s = torch.softmax(mean, dim=-1)
    J = torch.diag_embed(s) - s.unsqueeze(-1) * s.unsqueeze(-2)
    return s, (J * J * var.unsqueeze(-2)).sum(-1)


class BayesianHead(nn.Module):
    """Linear → ReLU → Linear [→ Softmax] head with Gaussian weights, trained by an RTS-style step.

    Memory: ``h k1² + o k2²`` numbers for the covariances (``k1 = in + 1``, ``k2 = h + 1``).
    Cost per :meth:`update` (one sample): ``O(h k1² + o k2²)``.

    Parameters
    ----------
    m1 : Tensor
        ``(h, in + 1)`` layer-1 weight means (last column: bias).
    S1 : Tensor
        ``(h, in + 1, in + 1)`` per-row covariances of layer 1.
    m2 : Tensor
        ``(o, h + 1)`` layer-2 weight means (last column: bias).
    S2 : Tensor
        ``(o, h + 1, h + 1)`` per-row covariances of layer 2.
    softmax : bool
        Apply a softmax to the output.
    obs_noise : float
        Target noise variance ``r`` (> 0) used by :meth:`update` and :meth:`predictive`.
    process_noise : float
        ``q ≥ 0`` added to every weight variance after each update (tracks drift).

    Raises
    ------
    ShapeError
        Inconsistent shapes.
    ConfigError
        ``obs_noise ≤ 0`` or ``process_noise < 0``.
    """

    def __init__(self, m1: Tensor, S1: Tensor, m2: Tensor, S2: Tensor, *, softmax: bool = False,
                 obs_noise: float = 1e-2, process_noise: float = 0.0) -> None:
        super().__init__()
        h, k1 = m1.shape
        o, k2 = m2.shape
        if S1.shape != (h, k1, k1) or S2.shape != (o, k2, k2) or k2 != h + 1:
            raise ShapeError(f"m1 {tuple(m1.shape)}, S1 {tuple(S1.shape)}, m2 {tuple(m2.shape)}, S2 {tuple(S2.shape)}:"
                             " need S1 (h, k1, k1), m2 (o, h+1), S2 (o, h+1, h+1)")
        if not obs_noise > 0:
            raise ConfigError(f"obs_noise must be > 0, got {obs_noise}")
        if not process_noise >= 0:
            raise ConfigError(f"process_noise must be >= 0, got {process_noise}")
        self.register_buffer("m1", m1.clone())
        self.register_buffer("S1", S1.clone())
        self.register_buffer("m2", m2.clone())
        self.register_buffer("S2", S2.clone())
        self.softmax = bool(softmax)
        self.r = float(obs_noise)
        self.q = float(process_noise)

    @classmethod
    def from_linear_layers(cls, *layers: nn.Module, softmax: bool = False, prior_var: float = 1e-2,
                           hidden_var: float | None = None, obs_noise: float = 1e-2,
                           process_noise: float = 0.0) -> BayesianHead:
        """Build a head whose mean output equals a pretrained deterministic head exactly.

        - One ``nn.Linear`` ``(o × in)``: the copy-negative construction, hidden ``2·in`` units
          ``[I; −I] φ`` and output ``[W, −W] relu(·) + b``. Since ``E relu(h) − E relu(−h') = μ`` for
          any two Gaussians of equal marginals, the output mean is ``W φ + b`` *for any weight
          variance*, so both layers start uncertain (``prior_var``).
        - ``Linear, ReLU, Linear`` (or two Linears): the pretrained weights; layer 1 starts with
          variance ``hidden_var`` (default 0: exact reproduction; it grows by ``process_noise``),
          layer 2 with ``prior_var``.

        Parameters
        ----------
        *layers : torch.nn.Module
            One ``nn.Linear``, or ``nn.Linear, [nn.ReLU,] nn.Linear`` (an ``nn.Sequential`` is unpacked;
            a trailing ``nn.Softmax`` sets ``softmax=True``).
        softmax : bool
            Apply a softmax to the output.
        prior_var : float
            Initial weight variance (isotropic per row).
        hidden_var : float or None
            Layer-1 initial variance for the two-layer case (default 0).
        obs_noise : float
            Target noise variance.
        process_noise : float
            Weight random-walk variance per update.

        Returns
        -------
        BayesianHead

        Raises
        ------
        ConfigError
            Layers of another structure.
        """
        mods = []
        for l in layers:
            mods.extend(list(l) if isinstance(l, nn.Sequential) else [l])
        if mods and isinstance(mods[-1], nn.Softmax):
            softmax = True
            mods = mods[:-1]
        mods = [m for m in mods if not isinstance(m, nn.ReLU)]
        if not all(isinstance(m, nn.Linear) for m in mods) or len(mods) not in (1, 2):
            raise ConfigError("from_linear_layers needs Linear or Linear -> ReLU -> Linear [-> Softmax], got "
                              f"{[type(m).__name__ for m in layers]}")

        def aug(lin: nn.Linear) -> Tensor:
            W = lin.weight.detach()
            b = lin.bias.detach() if lin.bias is not None else torch.zeros(W.shape[0], dtype=W.dtype, device=W.device)
            return torch.cat([W, b[:, None]], 1)
        if len(mods) == 1:
            A = aug(mods[0])
            o, k = A.shape
            n_in = k - 1
            eye = torch.eye(n_in, dtype=A.dtype, device=A.device)
            zero = torch.zeros(n_in, 1, dtype=A.dtype, device=A.device)
            m1 = torch.cat([torch.cat([eye, zero], 1), torch.cat([-eye, zero], 1)], 0)
            m2 = torch.cat([A[:, :n_in], -A[:, :n_in], A[:, n_in:]], 1)
            v1 = prior_var
        else:
            m1, m2 = aug(mods[0]), aug(mods[1])
            if m2.shape[1] != m1.shape[0] + 1:
                raise ConfigError(f"layer sizes do not chain: {tuple(m1.shape)} then {tuple(m2.shape)}")
            v1 = 0.0 if hidden_var is None else hidden_var
        h, k1 = m1.shape
        o, k2 = m2.shape
        S1 = v1 * torch.eye(k1, dtype=m1.dtype, device=m1.device).expand(h, k1, k1).clone()
        S2 = prior_var * torch.eye(k2, dtype=m1.dtype, device=m1.device).expand(o, k2, k2).clone()
        return cls(m1, S1, m2, S2, softmax=softmax, obs_noise=obs_noise, process_noise=process_noise)

    def _moments(self, features: Tensor) -> dict:
        B = features.shape[0]
        one = torch.ones(B, 1, dtype=features.dtype, device=features.device)
        f = torch.cat([features, one], 1)                                        # (B, k1)
        mh = f @ self.m1.T                                                       # (B, h)
        vh = torch.einsum("bk,hkl,bl->bh", f, self.S1, f)
        Er, Vr, Chr = relu_moments(mh, vh)
        rt = torch.cat([Er, one], 1)                                             # (B, k2)
        Vrt = torch.cat([Vr, torch.zeros_like(one)], 1)
        mz = rt @ self.m2.T                                                      # (B, o)
        vz = (Vrt @ (self.m2 * self.m2).T + torch.einsum("bk,okl,bl->bo", rt, self.S2, rt)
              + Vrt @ torch.diagonal(self.S2, dim1=1, dim2=2).T)
        return dict(f=f, mh=mh, vh=vh, Er=Er, Vr=Vr, Chr=Chr, rt=rt, mz=mz, vz=vz)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Output mean and variance from the weight uncertainty (no target noise).

        Parameters
        ----------
        features : Tensor
            ``(B, in)`` or ``(in,)`` features from the frozen encoder.

        Returns
        -------
        mean : Tensor
            ``(B, o)`` (probabilities if ``softmax``).
        var : Tensor
            ``(B, o)``.
        """
        x = self._check(features)
        mo = self._moments(x)
        if self.softmax:
            return softmax_moments(mo["mz"], mo["vz"])
        return mo["mz"], mo["vz"]

    def predictive(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Predictive mean and variance of a target: :meth:`forward` plus the noise ``r``.

        Parameters
        ----------
        features : Tensor
            ``(B, in)`` features.

        Returns
        -------
        mean : Tensor
            ``(B, o)``.
        var : Tensor
            ``(B, o)``.
        """
        m, v = self.forward(features)
        return m, v + self.r

    def _check(self, features: Tensor) -> Tensor:
        x = features.unsqueeze(0) if features.ndim == 1 else features
        if x.ndim != 2 or x.shape[1] != self.m1.shape[1] - 1:
            raise ShapeError(f"features must be (B, {self.m1.shape[1] - 1}), got {tuple(features.shape)}")
        return x.to(self.m1)

    @torch.no_grad()
    def update(self, features: Tensor, target: Tensor) -> None:
        """RTS-style update from one sample (a batch is processed one sample at a time).

        Output Kalman step ``z⁺ = μ_z + Σ_z J'(JΣ_zJ' + rI)⁻¹(y − g(μ_z))`` (``g`` = identity or
        softmax, ``J`` its Jacobian, ``Σ_z`` diagonal); then, for each quantity ``u`` upstream with
        cross-covariance ``C = Cov(u, z)``: ``u⁺ = u + C Σ_z⁻¹ (z⁺ − μ_z)``,
        ``Σ_u⁺ = Σ_u + C Σ_z⁻¹ (Σ_z⁺ − Σ_z) Σ_z⁻¹ C'`` — layer-2 rows, hidden activations, through the
        ReLU to the pre-activations, and layer-1 rows.

        Parameters
        ----------
        features : Tensor
            ``(B, in)`` or ``(in,)``.
        target : Tensor
            ``(B, o)`` or ``(o,)`` targets (probabilities / one-hot for a softmax head).

        Raises
        ------
        NonFiniteError
            NaN/inf in ``features`` or ``target``.
        ShapeError
            Wrong shapes.
        """
        x = self._check(features)
        y = target.unsqueeze(0) if target.ndim == 1 else target
        o = self.m2.shape[0]
        if y.shape != (x.shape[0], o):
            raise ShapeError(f"target must be ({x.shape[0]}, {o}), got {tuple(target.shape)}")
        if not (bool(torch.isfinite(x).all()) and bool(torch.isfinite(y).all())):
            raise NonFiniteError("features or target contains NaN or inf")
        for b in range(x.shape[0]):
            self._update_one(x[b:b + 1], y[b:b + 1].to(x))

    def _update_one(self, x: Tensor, y: Tensor) -> None:
        mo = self._moments(x)
        mz, vz = mo["mz"][0], torch.clamp(mo["vz"][0], min=1e-300)
        o = mz.shape[0]
        eye = torch.eye(o, dtype=x.dtype, device=x.device)
        if self.softmax:
            s = torch.softmax(mz, 0)
            J = torch.diag(s) - torch.outer(s, s)
            pred = s
        else:
            J, pred = eye, mz
        Sz = torch.diag(vz)
        S = J @ Sz @ J.T + self.r * eye
        K = torch.linalg.solve(S, J @ Sz).T                                      # (o, o)
        dz = K @ (y[0] - pred)                                                   # z⁺ − μ_z
        dS = -(K @ S @ K.T).diagonal()                                            # diag(Σ_z⁺ − Σ_z)
        a = dz / vz                                                               # Σ_z⁻¹ (z⁺ − μ_z)
        c = dS / (vz * vz)                                                        # diag Σ_z⁻¹ ΔΣ Σ_z⁻¹
        # layer-2 rows: Cov(w2_k, z_k) = S2_k r̃
        rt = mo["rt"][0]
        v2 = self.S2 @ rt                                                         # (o, k2)
        m2_new = self.m2 + v2 * a[:, None]
        S2_new = self.S2 + c[:, None, None] * v2[:, :, None] * v2[:, None, :]
        # hidden activations: Cov(r_i, z_k) = Var(r_i) m2_ki
        h = self.m1.shape[0]
        Vr = mo["Vr"][0]
        Crz = Vr[:, None] * self.m2[:, :h].T                                      # (h, o)
        dr = Crz @ a
        dVr = (Crz * Crz) @ c
        # through the ReLU: Cov(h_i, r_i) = σ²Φ
        vh, Chr = mo["vh"][0], mo["Chr"][0]
        live = Vr > 1e-300
        g = torch.where(live, Chr / torch.where(live, Vr, torch.ones_like(Vr)), torch.zeros_like(Vr))
        dh = g * dr
        dvh = g * g * dVr
        # layer-1 rows: Cov(w1_i, h_i) = S1_i f̃
        f = mo["f"][0]
        v1 = self.S1 @ f                                                          # (h, k1)
        lh = vh > 1e-300
        vh_safe = torch.where(lh, vh, torch.ones_like(vh))
        a1 = torch.where(lh, dh / vh_safe, torch.zeros_like(vh))
        c1 = torch.where(lh, dvh / (vh_safe * vh_safe), torch.zeros_like(vh))
        m1_new = self.m1 + v1 * a1[:, None]
        S1_new = self.S1 + c1[:, None, None] * v1[:, :, None] * v1[:, None, :]
        S1_new = 0.5 * (S1_new + S1_new.transpose(1, 2))
        S2_new = 0.5 * (S2_new + S2_new.transpose(1, 2))
        if self.q:
            S1_new = S1_new + self.q * torch.eye(S1_new.shape[1], dtype=x.dtype, device=x.device)
            S2_new = S2_new + self.q * torch.eye(S2_new.shape[1], dtype=x.dtype, device=x.device)
        if all(bool(torch.isfinite(t).all()) for t in (m1_new, S1_new, m2_new, S2_new)):
            self.m1.copy_(m1_new)
            self.S1.copy_(S1_new)
            self.m2.copy_(m2_new)
            self.S2.copy_(S2_new)
