"""Training as filtering: an (extended) Kalman filter whose state is the weights of a torch model.

SPEC §7. The parameters ``θ`` (flattened, ``d`` numbers) follow a random walk
``θ_{k+1} = θ_k + η_k`` with ``η ~ N(0, q I)``; each datum ``(x, y)`` is a measurement
``y = f(x; θ) + v`` with ``v ~ N(0, r I)``. One step, with ``J = ∂f/∂θ`` at the current mean:

```text
S = J P J' + R,   G = P J' S⁻¹,   θ ← θ + G (y − f),   P ← P − G S G' (+ q I)
```

There is no learning rate: the gain ``G = P⁺ J' R⁻¹`` is a natural-gradient step with the
posterior covariance as the inverse Fisher matrix. Four covariance structures are offered:

- ``"full"``: dense ``P`` (``d × d``); exact (recursive least squares on a model linear in θ).
- ``"diagonal"``: the diagonal of the exact update is kept.
- ``"lowrank"``: precision form ``P = (δ I + W W')⁻¹`` with ``W`` of rank ``L`` (LoFi-style,
  Chang et al. 2023); the new information ``J' R^{-1/2}`` is appended to ``W`` and the SVD keeps the
  ``L`` largest directions; the dropped ones are discarded, which only *adds* variance (the
  kept precision is below the exact one), so P stays PD and is never over-confident. Exact
  (equal to ``"full"``) whenever ``L ≥ d``. Isotropic process noise is applied exactly.
- ``"kronecker"``: block diagonal over the ``nn.Linear`` modules; each block is
  ``P_l = P_G ⊗ P_A`` over the row-major weight ``[W b]`` (``out × (in+1)``). ``P_A`` (input side)
  receives the exact rank-B information ``Σ_b a_b a_b' / r`` (Sherman–Morrison–Woodbury), and the
  output-side precision ``P_G⁻¹`` is the running mean of ``Σ_j g_bj g_bj'`` (``g_bj = ∂f_j/∂s``, the
  back-propagated output Jacobian at the layer's pre-activation ``s``), started at ``I``: the
  K-FAC approximation ``Σ (a a') ⊗ (g g') ≈ (Σ a a') ⊗ mean(g g')``. Exact for a single linear
  layer with isotropic noise (then ``Σ_j g g' = I``). Process noise is added to ``P_A`` as
  ``q / mean(diag P_G)``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from ..errors import ConfigError, NonFiniteError, NotPositiveDefiniteError, ShapeError

__all__ = ["KalmanOptimizer", "StructuredCovariance"]

COVARIANCES = ("full", "diagonal", "lowrank", "kronecker")


def _sym(P: Tensor) -> Tensor:
    return 0.5 * (P + P.transpose(-1, -2))


@dataclass(frozen=True, eq=False)
class StructuredCovariance:
    """The weight covariance of a structured :class:`KalmanOptimizer` (read-only view).

    Parameters
    ----------
    kind : str
        ``"diagonal"``, ``"lowrank"`` or ``"kronecker"``.
    data : dict
        The factors: ``{"diag": (d,)}``; ``{"delta": float, "W": (d, L)}`` with
        ``P = (δ I + W W')⁻¹``; or ``{"blocks": [(P_G (out, out), P_A (in+1, in+1)), ...], "perm": (d,)}``
        (``perm`` maps the row-major ``[W b]`` order of the blocks to the parameter order).
    d : int
        Number of parameters.
    """

    kind: str
    data: dict
    d: int

    def diag(self) -> Tensor:
        """Marginal variances of the flattened parameters.

        Returns
        -------
        Tensor
            ``(d,)``.
        """
        if self.kind == "diagonal":
            return self.data["diag"].clone()
        if self.kind == "lowrank":
            delta, W = self.data["delta"], self.data["W"]
            # (δI + WW')⁻¹ = I/δ − W (δ I_L + W'W)⁻¹ W' / δ
            L = W.shape[1]
            M = torch.linalg.cholesky(delta * torch.eye(L, dtype=W.dtype, device=W.device) + W.T @ W)
            Z = torch.linalg.solve_triangular(M, W.T, upper=False)        # (L, d)
            return (1.0 - (Z * Z).sum(0)) / delta
        v = torch.cat([torch.kron(PG.diagonal(), PA.diagonal()) for PG, PA in self.data["blocks"]])
        out = torch.empty_like(v)
        out[self.data["perm"].to(v.device)] = v
        return out

    def dense(self) -> Tensor:
        """The full ``(d, d)`` covariance (memory ``O(d²)``; for small models and tests).

        Returns
        -------
        Tensor
            ``(d, d)``.
        """
        if self.kind == "diagonal":
            return torch.diag(self.data["diag"])
        if self.kind == "lowrank":
            delta, W = self.data["delta"], self.data["W"]
            eye = torch.eye(self.d, dtype=W.dtype, device=W.device)
            return torch.linalg.inv(delta * eye + W @ W.T)
        Pb = torch.block_diag(*[torch.kron(PG, PA) for PG, PA in self.data["blocks"]])
        perm = self.data["perm"].to(Pb.device)
        out = torch.empty_like(Pb)
        out[perm[:, None], perm[None, :]] = Pb
        return out


class KalmanOptimizer:
    """Train a torch model by an (extended) Kalman filter on its weights (SPEC §7); no learning rate.

    Memory and cost per :meth:`step` with ``d`` parameters, a batch of ``N = B·p`` scalar
    outputs and rank ``L`` (Jacobian ``J`` of ``O(N d)`` memory for all but ``"kronecker"``):

    - ``"full"``: memory ``O(d²)``, cost ``O(N d² + d³)`` (Joseph form).
    - ``"diagonal"``: memory ``O(d)``, cost ``O(N² d + N³)``.
    - ``"lowrank"``: memory ``O(d L)``, cost ``O(d (L+N)²)`` (a thin SVD) — linear in ``d``.
    - ``"kronecker"``: per layer ``in × out``: memory ``O(in² + out²)``, cost
      ``O(B (in² + out²) + p B in·out)``; linear in ``d`` at fixed layer widths, and the Jacobian
      is never formed (``p`` backward passes give ``g``).

    Parameters
    ----------
    model : torch.nn.Module
        Maps ``x (B, ...)`` to ``(B, p)`` (or ``(B,)``, taken as ``p = 1``). Its trainable
        parameters are updated in place. For ``"kronecker"`` every trainable parameter must
        belong to an ``nn.Linear``.
    covariance : str
        ``"full"``, ``"diagonal"``, ``"lowrank"`` or ``"kronecker"``.
    rank : int
        ``L`` for ``"lowrank"``; at most the number of parameters.
    obs_noise : float
        Measurement-noise variance ``r`` (``R = r I``), > 0.
    process_noise : float
        Random-walk variance ``q ≥ 0`` added to ``P`` after each step (tracks non-stationary data).
    prior_var : float or Tensor
        Initial covariance: a positive scalar (``P0 = prior_var·I``) or, for ``"full"``, a PD
        ``(d, d)`` matrix, or for ``"diagonal"`` a positive ``(d,)`` vector.
    adaptive_obs_noise : bool
        If true, ``r`` follows an exponential average (factor 0.05) of the innovation excess
        ``mean(e²) − mean(diag J P J')``, floored at ``1e-3·obs_noise`` (not for ``"kronecker"``).

    Attributes
    ----------
    r : float
        Current observation-noise variance.
    steps : int
        Number of accepted steps.

    Raises
    ------
    ConfigError
        Unknown ``covariance``; ``rank`` not in ``1..d``; ``obs_noise ≤ 0``; ``process_noise < 0``;
        no trainable parameters; non-Linear parameters with ``"kronecker"``.
    NotPositiveDefiniteError
        ``prior_var`` not positive definite.
    ShapeError
        ``prior_var`` of the wrong shape.
    """

    def __init__(self, model: nn.Module, covariance: str = "full", *, rank: int = 10, obs_noise: float = 1e-2,
                 process_noise: float = 1e-6, prior_var: Any = 1.0, adaptive_obs_noise: bool = False) -> None:
        if covariance not in COVARIANCES:
            raise ConfigError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
        if not obs_noise > 0:
            raise ConfigError(f"obs_noise must be > 0, got {obs_noise}")
        if not process_noise >= 0:
            raise ConfigError(f"process_noise must be >= 0, got {process_noise}")
        self.model = model
        self.kind = covariance
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError("model has no trainable parameters")
        self.shapes = [p.shape for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.d = d = sum(self.sizes)
        self.r = float(obs_noise)
        self.obs_noise0 = float(obs_noise)
        self.q = float(process_noise)
        self.adaptive = bool(adaptive_obs_noise)
        self.steps = 0
        p0 = self.params[0]
        dt, dev = p0.dtype, p0.device
        if covariance == "lowrank":
            if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= d:
                raise ConfigError(f"rank must be an int in 1..{d} (the parameter count), got {rank}")
        self.rank = rank
        pv = torch.as_tensor(prior_var, dtype=dt, device=dev)
        if covariance == "full":
            if pv.ndim == 0:
                self._check_pos(pv)
                self.P = pv * torch.eye(d, dtype=dt, device=dev)
            elif pv.shape == (d, d):
                if not torch.allclose(pv, pv.T, atol=1e-12 * float(pv.abs().max())):
                    raise NotPositiveDefiniteError("prior_var (d, d) is not symmetric")
                if torch.linalg.cholesky_ex(pv).info != 0:
                    raise NotPositiveDefiniteError("prior_var (d, d) is not positive definite")
                self.P = pv.clone()
            else:
                raise ShapeError(f"prior_var must be a scalar or ({d}, {d}) for 'full', got {tuple(pv.shape)}")
        elif covariance == "diagonal":
            if pv.ndim == 0:
                self._check_pos(pv)
                self.s = pv * torch.ones(d, dtype=dt, device=dev)
            elif pv.shape == (d,):
                if not bool((pv > 0).all()):
                    raise NotPositiveDefiniteError("prior_var (d,) has non-positive entries")
                self.s = pv.clone()
            else:
                raise ShapeError(f"prior_var must be a scalar or ({d},) for 'diagonal', got {tuple(pv.shape)}")
        else:
            if pv.ndim != 0:
                raise ShapeError(f"prior_var must be a scalar for {covariance!r}, got shape {tuple(pv.shape)}")
            self._check_pos(pv)
            if covariance == "lowrank":
                self.delta = 1.0 / float(pv)
                self.W = torch.zeros(d, rank, dtype=dt, device=dev)
            else:
                self._init_kronecker(float(pv))

    @staticmethod
    def _check_pos(pv: Tensor) -> None:
        if not bool(pv > 0) or not math.isfinite(float(pv)):
            raise NotPositiveDefiniteError(f"prior_var must be a positive finite variance, got {float(pv)}")

    # ------------------------------------------------------------------ helpers
    def _init_kronecker(self, pv: float) -> None:
        ids = {id(p) for p in self.params}
        self.layers: list[nn.Linear] = []
        covered: set[int] = set()
        for mod in self.model.modules():
            if isinstance(mod, nn.Linear) and mod.weight.requires_grad:
                self.layers.append(mod)
                covered.add(id(mod.weight))
                if mod.bias is not None:
                    if not mod.bias.requires_grad:
                        raise ConfigError("kronecker: a Linear with a frozen bias and trainable weight")
                    covered.add(id(mod.bias))
        if covered != ids:
            raise ConfigError("covariance='kronecker' needs every trainable parameter to belong to an nn.Linear")
        self.blocks = []
        self.gcount = []
        for mod in self.layers:
            o, i = mod.weight.shape
            k = i + (mod.bias is not None)
            w = mod.weight
            self.blocks.append([torch.eye(o, dtype=w.dtype, device=w.device),
                                pv * torch.eye(k, dtype=w.dtype, device=w.device)])
            self.gcount.append(1.0)

    def _flat(self) -> Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def _unflat(self, theta: Tensor) -> dict[str, Tensor]:
        out, i = {}, 0
        for n, s, k in zip(self.names, self.shapes, self.sizes):
            out[n] = theta[i:i + k].view(s)
            i += k
        return out

    def _set(self, theta: Tensor) -> None:
        with torch.no_grad():
            i = 0
            for p, k in zip(self.params, self.sizes):
                p.copy_(theta[i:i + k].view_as(p))
                i += k

    def _f(self, theta: Tensor, x: Tensor) -> Tensor:
        """Model output for ONE sample, flattened ``(p,)``."""
        out = functional_call(self.model, self._unflat(theta), (x.unsqueeze(0),))
        return out.reshape(-1)

    def jacobian(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Outputs and Jacobian w.r.t. the flattened parameters (torch.func ``jacrev`` + ``vmap``).

        Parameters
        ----------
        x : Tensor
            ``(B, ...)`` inputs.

        Returns
        -------
        f : Tensor
            ``(B, p)`` outputs at the current weights.
        J : Tensor
            ``(B, p, d)``.
        """
        theta = self._flat()
        with torch.no_grad():
            f = vmap(self._f, in_dims=(None, 0))(theta, x)
            J = vmap(jacrev(self._f), in_dims=(None, 0))(theta, x)
        return f, J

    # ------------------------------------------------------------------ public
    def covariance(self) -> Tensor | StructuredCovariance:
        """The current weight covariance.

        Returns
        -------
        Tensor or StructuredCovariance
            ``(d, d)`` for ``"full"``; otherwise a :class:`StructuredCovariance` with ``.diag()``
            and ``.dense()``. Parameters are ordered as ``model.parameters()`` (trainable only),
            each flattened row-major.
        """
        if self.kind == "full":
            return self.P.clone()
        if self.kind == "diagonal":
            return StructuredCovariance("diagonal", {"diag": self.s.clone()}, self.d)
        if self.kind == "lowrank":
            return StructuredCovariance("lowrank", {"delta": self.delta, "W": self.W.clone()}, self.d)
        return StructuredCovariance("kronecker", {"blocks": [(G.clone(), A.clone()) for G, A in self.blocks],
                                                  "perm": self._kron_perm()}, self.d)

    def _kron_perm(self) -> Tensor:
        """Index into the flattened parameter vector of each entry of the block order ``[W b]`` row-major."""
        offs, i = {}, 0
        for p, k in zip(self.params, self.sizes):
            offs[id(p)] = i
            i += k
        idx = []
        for mod in self.layers:
            o, n_in = mod.weight.shape
            w = offs[id(mod.weight)] + torch.arange(o * n_in).reshape(o, n_in)
            if mod.bias is not None:
                w = torch.cat([w, (offs[id(mod.bias)] + torch.arange(o))[:, None]], 1)
            idx.append(w.reshape(-1))
        return torch.cat(idx)

    def _lowrank_PJt(self, J: Tensor) -> Tensor:
        d, W = self.delta, self.W
        L = W.shape[1]
        M = d * torch.eye(L, dtype=W.dtype, device=W.device) + W.T @ W
        WtJ = W.T @ J.T                                                    # (L, N)
        return (J.T - W @ torch.linalg.solve(M, WtJ)) / d

    def predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Predictive mean and variance of ``y`` (linearised): ``f``, ``diag(J P J') + r``.

        Parameters
        ----------
        x : Tensor
            ``(B, ...)`` inputs.

        Returns
        -------
        mean : Tensor
            ``(B, p)``.
        var : Tensor
            ``(B, p)``; includes the observation noise ``r``.
        """
        f, J = self.jacobian(x)
        B, p, d = J.shape
        Jf = J.reshape(B * p, d)
        if self.kind == "kronecker":
            v = self._kron_var(Jf[:, self._kron_perm().to(Jf.device)])
        else:
            v = self._diag_JPJ(Jf)
        return f, v.reshape(B, p) + self.r

    def _diag_JPJ(self, J: Tensor) -> Tensor:
        if self.kind == "full":
            return ((J @ self.P) * J).sum(1)
        if self.kind == "diagonal":
            return (J * J * self.s).sum(1)
        return (J * self._lowrank_PJt(J).T).sum(1)

    def _kron_var(self, J: Tensor) -> Tensor:
        out, i = torch.zeros(J.shape[0], dtype=J.dtype, device=J.device), 0
        for PG, PA in self.blocks:
            o, k = PG.shape[0], PA.shape[0]
            Jb = J[:, i:i + o * k].reshape(-1, o, k)
            out = out + (Jb * (PG @ Jb @ PA)).sum((1, 2))
            i += o * k
        return out

    def step(self, x: Tensor, y: Tensor) -> Tensor:
        """One Kalman step on a batch of data ``(x, y)`` (treated as one joint measurement).

        Parameters
        ----------
        x : Tensor
            ``(B, ...)`` inputs.
        y : Tensor
            ``(B, p)`` (or ``(B,)``) targets.

        Returns
        -------
        Tensor
            ``(B, p)`` innovation ``y − f`` at the weights before the step.

        Raises
        ------
        NonFiniteError
            ``y`` or ``x`` contains NaN/inf. If the *update* is non-finite (e.g. the model
            overflows), a ``RuntimeWarning`` is issued and weights and covariance stay unchanged.
        ShapeError
            ``y`` does not match the model output.
        """
        if not bool(torch.isfinite(y).all()):
            raise NonFiniteError("y (targets) contains NaN or inf")
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteError("x (inputs) contains NaN or inf")
        if self.kind == "kronecker":
            return self._step_kronecker(x, y)
        f, J = self.jacobian(x)
        B, p, d = J.shape
        if y.numel() != B * p:
            raise ShapeError(f"y has shape {tuple(y.shape)}, the model output is ({B}, {p})")
        e = (y.reshape(B, p).to(f) - f)
        ef, Jf = e.reshape(-1), J.reshape(B * p, d)
        if not (bool(torch.isfinite(ef).all()) and bool(torch.isfinite(Jf).all())):
            warnings.warn("KalmanOptimizer.step: non-finite model output or Jacobian; step skipped",
                          RuntimeWarning, stacklevel=2)
            return e
        N = B * p
        eye = torch.eye(N, dtype=Jf.dtype, device=Jf.device)
        theta = self._flat()
        if self.adaptive:
            pred = self._diag_JPJ(Jf)
            excess = float((ef * ef).mean() - pred.mean())
            self.r = max(0.95 * self.r + 0.05 * excess, 1e-3 * self.obs_noise0)
        R = self.r * eye
        if self.kind == "full":
            PJt = self.P @ Jf.T
            S = _sym(Jf @ PJt + R)
            G = torch.linalg.solve(S, PJt.T).T                            # (d, N)
            new_theta = theta + G @ ef
            IKH = torch.eye(d, dtype=Jf.dtype, device=Jf.device) - G @ Jf
            new = _sym(IKH @ self.P @ IKH.T + G @ R @ G.T)                # Joseph form
            if self.q:
                new = new + self.q * torch.eye(d, dtype=Jf.dtype, device=Jf.device)
            state = {"P": new}
        elif self.kind == "diagonal":
            PJt = self.s[:, None] * Jf.T
            S = _sym(Jf @ PJt + R)
            G = torch.linalg.solve(S, PJt.T).T
            new_theta = theta + G @ ef
            red = (G * PJt).sum(1)                                          # diag(G S G') = diag(P J' S⁻¹ J P)
            s = torch.clamp(self.s - red, min=1e-12 * float(self.s.max())) + self.q
            state = {"s": s}
        else:
            # precision: Λ⁺ = δI + WW' + J'R⁻¹J; mean step uses the UNtruncated Λ⁺ (exact for this datum)
            Wn = torch.cat([self.W, Jf.T / math.sqrt(self.r)], dim=1)      # (d, L+N)
            K = Wn.shape[1]
            M = self.delta * torch.eye(K, dtype=Wn.dtype, device=Wn.device) + Wn.T @ Wn
            g = Jf.T @ ef / self.r                                          # J'R⁻¹e
            step = (g - Wn @ torch.linalg.solve(M, Wn.T @ g)) / self.delta  # Λ⁺⁻¹ g (Woodbury)
            new_theta = theta + step
            U, sv, _ = torch.linalg.svd(Wn, full_matrices=False)
            L = self.rank
            U, sv = U[:, :L], sv[:L]
            if U.shape[1] < L:
                pad = L - U.shape[1]
                U = torch.cat([U, torch.zeros(d, pad, dtype=U.dtype, device=U.device)], 1)
                sv = torch.cat([sv, torch.zeros(pad, dtype=sv.dtype, device=sv.device)])
            delta = self.delta
            lam = delta + sv**2                                             # eigenvalues on span(U)
            if self.q:
                # (Λ⁻¹ + qI)⁻¹ is again δ'I + U diag(λ' − δ') U' — exact
                delta_new = delta / (1.0 + self.q * delta)
                lam = lam / (1.0 + self.q * lam)
                sv = torch.sqrt(torch.clamp(lam - delta_new, min=0.0))
                delta = delta_new
            state = {"W": U * sv, "delta": delta}
        if not (bool(torch.isfinite(new_theta).all()) and all(bool(torch.isfinite(v).all())
                                                                for v in state.values() if isinstance(v, Tensor))):
            warnings.warn("KalmanOptimizer.step: non-finite update; weights and covariance unchanged",
                          RuntimeWarning, stacklevel=2)
            return e
        self._set(new_theta)
        for k, v in state.items():
            setattr(self, k, v)
        self.steps += 1
        return e

    # ------------------------------------------------------------------ kronecker
    def _step_kronecker(self, x: Tensor, y: Tensor) -> Tensor:
        acts: dict[int, Tensor] = {}
        pres: dict[int, Tensor] = {}

        def hook(mod, inp, out):
            acts[id(mod)] = inp[0].detach()
            pres[id(mod)] = out
        handles = [m.register_forward_hook(hook) for m in self.layers]
        try:
            with torch.enable_grad():
                out = self.model(x)
                B = out.shape[0]
                f = out.reshape(B, -1)
                p = f.shape[1]
                if y.numel() != B * p:
                    raise ShapeError(f"y has shape {tuple(y.shape)}, the model output is ({B}, {p})")
                e = y.reshape(B, p).to(f) - f.detach()
                outs = [pres[id(m)] for m in self.layers]
                gs = []                                                     # per output j: per layer (B, out)
                for j in range(p):
                    gj = torch.autograd.grad(f[:, j].sum(), outs, retain_graph=j < p - 1, allow_unused=True)
                    gs.append([torch.zeros_like(o) if g is None else g.detach() for g, o in zip(gj, outs)])
        finally:
            for h in handles:
                h.remove()
        if not bool(torch.isfinite(e).all()):
            warnings.warn("KalmanOptimizer.step: non-finite model output; step skipped", RuntimeWarning, stacklevel=2)
            return e
        r = self.r
        new_blocks, new_w = [], []
        for li, mod in enumerate(self.layers):
            a = acts[id(mod)].reshape(B, -1)
            if mod.bias is not None:
                a = torch.cat([a, torch.ones(B, 1, dtype=a.dtype, device=a.device)], 1)   # (B, k)
            g = torch.stack([gs[j][li].reshape(B, -1) for j in range(p)], 0)             # (p, B, o)
            PG, PA = self.blocks[li]
            # input factor: exact rank-B information a a'/r (Woodbury)
            PAa = PA @ a.T                                                   # (k, B)
            Sa = r * torch.eye(B, dtype=a.dtype, device=a.device) + a @ PAa
            PA_new = _sym(PA - PAa @ torch.linalg.solve(Sa, PAa.T))
            # output factor: running mean of Σ_j g g' (started at I), inverse by Woodbury
            cnt = self.gcount[li]
            beta = B / (cnt + B)
            V = g.permute(1, 0, 2).reshape(B * p, -1).T / math.sqrt(B)   # (o, B p): V V' = mean_b Σ_j g g'
            PGV = PG @ V                                                     # new precision (1-β) PG⁻¹ + β V V'
            Sg = ((1 - beta) / beta) * torch.eye(V.shape[1], dtype=V.dtype, device=V.device) + V.T @ PGV
            PG_new = _sym((PG - PGV @ torch.linalg.solve(Sg, PGV.T)) / (1 - beta))
            # mean: ΔW̃ = P_G (Σ_b δ_b a_b') P_A with δ_b = Σ_j g_bj e_bj / r
            delta_b = torch.einsum("pbo,bp->bo", g, e) / r                  # (B, o)
            dW = PG_new @ (delta_b.T @ a) @ PA_new
            if self.q:
                PA_new = PA_new + (self.q / float(PG_new.diagonal().mean())) * torch.eye(
                    PA_new.shape[0], dtype=a.dtype, device=a.device)
            new_blocks.append([PG_new, PA_new])
            new_w.append(dW)
        ok = all(bool(torch.isfinite(t).all()) for blk in new_blocks for t in blk) and \
            all(bool(torch.isfinite(t).all()) for t in new_w)
        if not ok:
            warnings.warn("KalmanOptimizer.step: non-finite update; weights and covariance unchanged",
                          RuntimeWarning, stacklevel=2)
            return e
        with torch.no_grad():
            for li, mod in enumerate(self.layers):
                dW = new_w[li]
                if mod.bias is not None:
                    mod.weight.add_(dW[:, :-1])
                    mod.bias.add_(dW[:, -1])
                else:
                    mod.weight.add_(dW)
                self.gcount[li] += B
        self.blocks = new_blocks
        self.steps += 1
        return e
