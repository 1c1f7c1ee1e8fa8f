"""Adaptive Filter Attention as a state estimator of an LTI plant (SPEC §6).

Tokens are state measurements ``z[j]`` of ``x[j]`` with a known noise covariance ``R_z``
(see *Tokens* below). At step ``t`` every token of the window ``j = t-H+1 … t`` is pulled
forward to ``t`` through the discrete model, inputs included,

    x̂_{t|j} = A^Δ z[j] + Σ_{k=j}^{t-1} A^{t-1-k} B u[k],        Δ = t - j,
    V(Δ)    = A^Δ R_z A^Δ' + Σ_{k<Δ} A^k W A^k'                   (discrete Lyapunov sum),

and the estimate is a robust, precision-weighted average of the pulled-forward tokens.
The residuals are measured against a reference that an outlier in the newest token does
not move: the filter's previous estimate pulled forward, ``x_ref[t] = A x̄[t-1] + B u[t-1]``
(``m0`` at ``t = 0``), whose covariance is taken as the steady Kalman prior covariance ``P``
(a fixed proxy; the reference is only used to rank residuals). Measured against the raw
newest token instead, an outlying newest token would have zero self-residual and pass
straight through (SPEC §6).

* ``form="tensor"``: in the eigen-coordinates ``ξ = S⁻¹ x`` of ``A = S Λ S⁻¹`` (complex),
  per component ``k``: ``α_tjk ∝ P_jk c_tj`` with the precision
  ``P_jk = 1 / diag(S⁻¹ V(Δ) S⁻ᴴ)_k`` and the robust factor
  ``c_tj = (1 + Σ_k |ξ_ref - ξ̂_{t|j}|²_k / (diag(S⁻¹ (V(Δ) + P) S⁻ᴴ)_k ν n))⁻¹``; then
  ``x̄ = Re(S Σ_j α_tj ⊙ ξ̂_{t|j})``. The covariances enter through their diagonals in the
  eigenbasis (exact when they are diagonal there, the paper's model). Needs a diagonalisable
  ``A`` (:class:`~lqgt.errors.NotDiagonalizableError` when the eigenvector matrix has
  condition number above ``max_cond``).
* ``form="isotropic"``: one scalar variance ``tr V(Δ) / n`` per lag, scalar weights
  ``α_tj ∝ c_tj / (tr V(Δ) / n)`` with ``c_tj = (1 + ‖x_ref - x̂_{t|j}‖² / (tr(V(Δ) + P) ν))⁻¹``,
  real arithmetic; any ``A``.
* ``form="matrix"`` (an lqgt extension, not in the paper): the full propagated precisions,
  ``x̄ = (Σ_j c_tj^τ V_j⁻¹)⁻¹ Σ_j c_tj^τ V_j⁻¹ x̂_{t|j}`` (one ``n × n`` solve per trajectory
  and step); with ``robust=False`` and ``W = 0`` exactly the GLS estimate for any ``A``.

``mahalanobis="full"`` (default) computes the robust factors' distances with the full
residual covariance, ``(x_ref - x̂_{t|j})' (V(Δ) + P)⁻¹ (x_ref - x̂_{t|j}) / (ν n)``;
``"diagonal"`` uses the form's own (eigen-diagonal or scalar) variances as written above.

Logits are ``τ (log P - log(1 + maha / (ν n)))`` and ``α`` their softmax over the window,
so ``τ = 1`` weights are exactly precision × robust factor. ``robust=False`` (``ν → ∞``)
gives the Gaussian weights ``∝ V(Δ)⁻¹``: with ``W = 0`` the estimate is then the
generalised-least-squares estimate of ``x[t]`` from the window's tokens.

Tokens (state reconstruction). With ``L`` the observability index of ``(A, C)`` (``L = 1``
when ``C`` has full column rank), the token of ``x[j]`` is the generalised-least-squares
estimate of ``x[j-L+1]`` from the ``L`` measurements ``y[j-L+1 … j]`` (their noise
covariance including the process noise between them, ``Γ_w (I⊗W) Γ_w' + I⊗V``), pulled
forward to ``j`` with the known inputs. Its error is a fixed linear map of the noises
``w``, ``v`` of those steps, so ``R_z`` is exact in closed form. For ``L = 1`` this is
``z = (C'V⁻¹C)⁻¹ C'V⁻¹ (y - D u)`` with ``R_z = (C'V⁻¹C)⁻¹``. At start-up (``j < L-1``)
the prior ``x[0] ~ N(m0, P0)`` completes the missing rows. Noise model: consecutive tokens
share measurements when ``L > 1``, and their correlation is ignored (as is the correlation
of the pulled-forward tokens through the common process noise): AFA treats tokens as
independent observations.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .._linalg import as_matrix, check_psd, symmetrize
from .._torch import resolve_dtype, tensor
from ..closed_loop import check_form
from ..errors import (
    ConfigError,
    NonFiniteError,
    NotDetectableError,
    NotDiagonalizableError,
    ShapeError,
)
from ..layers.afa import AdaptiveFilterAttention
from ..plant import Plant
from ..riccati import dlqe
from .learned import LearnedEstimator, register

__all__ = ["AFAEstimator", "AFAFilter", "state_token_maps"]

FORMS = ("tensor", "isotropic", "matrix")
MAHALANOBIS = ("full", "diagonal")


def _matpow(A: np.ndarray, k: int) -> np.ndarray:
    return np.linalg.matrix_power(A, k) if k > 0 else np.eye(A.shape[0])


def observability_index(A: np.ndarray, C: np.ndarray) -> int:
    """Smallest ``L`` with ``rank [C; CA; …; CA^{L-1}] = n``.

    Parameters
    ----------
    A : numpy.ndarray, shape (n, n)
        State matrix.
    C : numpy.ndarray, shape (p, n)
        Output matrix.

    Returns
    -------
    int
        The observability index.

    Raises
    ------
    NotDetectableError
        If ``(A, C)`` is not observable (no token can reconstruct the state).
    """
    n = A.shape[0]
    rows = []
    for ell in range(1, n + 1):
        rows.append(C @ _matpow(A, ell - 1))
        if np.linalg.matrix_rank(np.vstack(rows)) == n:
            return ell
    raise NotDetectableError("AFAFilter: (A, C) is not observable, so no token built from the measurements "
                             "can reconstruct the state")


def state_token_maps(plant: Plant, L: int) -> list[dict[str, np.ndarray]]:
    """Linear maps of the state-reconstructing tokens and their closed-form covariances.

    For each position class ``c = 0 … L-1`` (``c < L-1``: start-up token of ``x[c]`` from
    ``y[0 … c]`` and the prior; ``c = L-1``: steady token of ``x[j]`` from ``y[j-L+1 … j]``)
    the token is ``z = Gy vec(y window) + Gu vec(u window) + const`` with the windows of
    ``L`` steps ending at ``j`` (oldest first; start-up classes have zero columns for the
    steps before 0) and its error covariance is ``R``.

    Parameters
    ----------
    plant : Plant
        The model.
    L : int
        Number of measurements per token (at least the observability index).

    Returns
    -------
    list of dict
        ``[{"Gy": (n, L p), "Gu": (n, L m), "const": (n,), "R": (n, n)}, …]`` per class.
    """
    A, B, C, D, W, V = plant.A, plant.B, plant.C, plant.D, plant.W, plant.V
    n, m, p = plant.n, plant.m, plant.p
    out = []
    for c in range(L):
        ell = c + 1
        prior = c < L - 1
        O = np.vstack([C @ _matpow(A, i) for i in range(ell)])
        Gw = np.zeros((ell * p, max(ell - 1, 0) * n))
        Gu_y = np.zeros((ell * p, ell * m))
        for i in range(ell):
            Gu_y[i * p:(i + 1) * p, i * m:(i + 1) * m] = D
            for k in range(i):
                CA = C @ _matpow(A, i - 1 - k)
                Gw[i * p:(i + 1) * p, k * n:(k + 1) * n] = CA
                Gu_y[i * p:(i + 1) * p, k * m:(k + 1) * m] = CA @ B
        Sig = Gw @ np.kron(np.eye(max(ell - 1, 0)), W) @ Gw.T + np.kron(np.eye(ell), V)
        Si_O = np.linalg.solve(Sig, O)
        J = O.T @ Si_O
        if prior:
            P0i = np.linalg.pinv(plant.P0)
            J = J + P0i
        Ji = np.linalg.pinv(symmetrize(J)) if prior else np.linalg.inv(symmetrize(J))
        Gs = Ji @ Si_O.T                                   # (n, ell p): x̂_s from Ỹ
        Fw = _matpow(A, ell - 1)
        Psi = np.zeros((n, max(ell - 1, 0) * n))
        Hf = np.zeros((n, ell * m))
        for k in range(ell - 1):
            Ak = _matpow(A, ell - 2 - k)
            Psi[:, k * n:(k + 1) * n] = Ak
            Hf[:, k * m:(k + 1) * m] = Ak @ B
        Gy = Fw @ Gs
        Gu = Hf - Gy @ Gu_y
        Mw = Gy @ Gw - Psi
        R = Mw @ np.kron(np.eye(max(ell - 1, 0)), W) @ Mw.T + Gy @ np.kron(np.eye(ell), V) @ Gy.T
        const = np.zeros(n)
        if prior:
            M0 = Fw @ Ji @ P0i
            const = M0 @ plant.m0
            R = R + M0 @ plant.P0 @ M0.T
        pad = L - ell  # zero columns for the steps before time 0
        out.append({"Gy": np.hstack([np.zeros((n, pad * p)), Gy]), "Gu": np.hstack([np.zeros((n, pad * m)), Gu]),
                    "const": const, "R": symmetrize(R)})
    return out


class AFAFilter:
    """Adaptive Filter Attention state estimator (robust, from the plant's model).

    Parameters
    ----------
    plant : Plant
        The model (``A``, ``B``, ``C``, ``D``, ``W``, ``V``, ``m0``, ``P0``).
    window : int
        Attention window ``H ≥ 1`` (tokens ``t-H+1 … t``).
    nu : float
        Degrees of freedom ``ν > 0`` of the Student-t weights (ignored when not robust).
    form : {"tensor", "isotropic", "matrix"}
        Per-eigen-component weights (needs a diagonalisable ``A``), one weight per token, or
        full precision-matrix weights (see the module docstring).
    robust : bool
        Student-t (robust) weights; ``False`` gives the Gaussian weights ``∝ V(Δ)⁻¹``.
    timing : {"current", "predictor"}
        The estimator protocol's form: return ``x̄[t]`` (current) or ``A x̄[t] + B u[t]``
        (predictor). Stored as the protocol's attribute ``form`` (see Attributes).
    tau : float
        Inverse temperature ``τ > 0`` of the logits.
    reconstruct : int, optional
        Measurements per token ``L``; the observability index of ``(A, C)`` by default
        (1 when ``C`` has full column rank).
    P_ref : array_like, shape (n, n), optional
        Covariance of the residual reference (the previous estimate pulled forward); the
        steady Kalman prior covariance of the plant by default.
    mahalanobis : {"full", "diagonal"}
        Distances of the robust factors with the full residual covariance, or with the
        form's diagonal (eigen-diagonal / scalar) approximation (the matrix form always
        uses the full one).
    max_cond : float
        Largest condition number of the (unit-column) eigenvector matrix of ``A`` accepted
        by the tensor form.

    Attributes
    ----------
    form : str
        ``"current"`` or ``"predictor"`` (the ``timing`` argument; the protocol's name).
    attention_form : str
        ``"tensor"``, ``"isotropic"`` or ``"matrix"`` (the ``form`` argument).
    n : int
        State dimension.
    L : int
        Measurements per token.
    R_z : numpy.ndarray, shape (n, n)
        Covariance of the steady token.

    Raises
    ------
    ConfigError
        ``window < 1``, ``ν ≤ 0``, ``τ ≤ 0``, unknown ``form``/``timing``, ``reconstruct``
        below the observability index.
    NonFiniteError
        NaN ``ν`` or ``τ``.
    NotDetectableError
        ``(A, C)`` not observable.
    NotDiagonalizableError
        Tensor form with a non-diagonalisable (or nearly so) ``A``.
    ShapeError, NotSymmetricError, NotPositiveDefiniteError
        Current timing with ``D != 0``; ``P_ref`` of the wrong shape, not symmetric or not
        positive semidefinite.
    """

    def __init__(self, plant: Plant, window: int = 32, nu: float = 4.0, form: str = "tensor", robust: bool = True,
                 *, timing: str = "current", tau: float = 1.0, reconstruct: int | None = None, P_ref=None,
                 mahalanobis: str = "full", max_cond: float = 1e8) -> None:
        if not isinstance(plant, Plant):
            raise ConfigError(f"plant must be an lqgt.Plant, got {type(plant).__name__}")
        if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
            raise ConfigError(f"window must be an integer >= 1, got {window!r}")
        if form not in FORMS:
            raise ConfigError(f"form must be one of {FORMS} (use timing= for 'predictor'/'current'), got {form!r}")
        if timing not in ("current", "predictor"):
            raise ConfigError(f"timing must be 'current' or 'predictor', got {timing!r}")
        self.form = check_form(timing)
        if mahalanobis not in MAHALANOBIS:
            raise ConfigError(f"mahalanobis must be one of {MAHALANOBIS}, got {mahalanobis!r}")
        self.mahalanobis = "full" if form == "matrix" else mahalanobis
        if self.form == "current" and plant.has_feedthrough:
            raise ShapeError("timing='current' needs D = 0 (a feedthrough makes an algebraic loop)")
        for name, val in (("nu", nu), ("tau", tau)):
            if isinstance(val, bool) or not isinstance(val, (int, float, np.integer, np.floating)):
                raise ConfigError(f"{name} must be a real number, got {val!r}")
            if math.isnan(val):
                raise NonFiniteError(f"{name} is NaN")
            if val <= 0:
                raise ConfigError(f"{name} must be > 0, got {val!r}")
        if math.isinf(tau):
            raise ConfigError("tau must be finite")
        self.plant, self.window, self.nu, self.tau = plant, int(window), float(nu), float(tau)
        self.attention_form, self.robust = form, bool(robust)
        self.n = plant.n
        L0 = observability_index(plant.A, plant.C)
        if reconstruct is None:
            reconstruct = L0
        if isinstance(reconstruct, bool) or not isinstance(reconstruct, (int, np.integer)) or reconstruct < L0:
            raise ConfigError(f"reconstruct must be an integer >= the observability index {L0}, got {reconstruct!r}")
        self.L = int(reconstruct)
        self.tokens = state_token_maps(plant, self.L)
        self.R_z = self.tokens[-1]["R"]
        if P_ref is None:
            try:
                _, P_ref, _ = dlqe(plant.A, plant.C, plant.W, plant.V)
            except ValueError:  # no stabilising filter Riccati solution: use the token's covariance
                P_ref = plant.A @ self.R_z @ plant.A.T + plant.W
        self.P_ref = symmetrize(check_psd("P_ref", as_matrix("P_ref", P_ref, (plant.n, plant.n)), strict=False))
        if form == "tensor":
            lam, S = np.linalg.eig(plant.A)
            S = S / np.linalg.norm(S, axis=0, keepdims=True)
            cond = np.linalg.cond(S)
            if not np.isfinite(cond) or cond > max_cond:
                raise NotDiagonalizableError(f"AFAFilter(form='tensor') needs a diagonalisable A; its eigenvector "
                                             f"matrix has condition number {cond:.3g} > max_cond={max_cond:g} "
                                             "(use form='isotropic')")
            self._lam, self._S, self._Si = lam, S, np.linalg.inv(S)
        self._tables = self._build_tables()

    def __repr__(self) -> str:
        return (f"AFAFilter(window={self.window}, nu={self.nu:g}, form={self.attention_form!r}, robust={self.robust}, "
                f"timing={self.form!r}, L={self.L})")

    # ------------------------------------------------------------------ precomputation
    def _lag_covariances(self) -> np.ndarray:
        """``V[c, Δ]`` ``(L, H, n, n)``: token class ``c`` pulled forward by ``Δ`` steps."""
        A, W, H = self.plant.A, self.plant.W, self.window
        out = np.empty((self.L, H, self.n, self.n))
        for c, tok in enumerate(self.tokens):
            Q, Ak = np.zeros_like(W), np.eye(self.n)
            for d in range(H):
                out[c, d] = symmetrize(Ak @ tok["R"] @ Ak.T + Q)
                Q = A @ Q @ A.T + W
                Ak = A @ Ak
        return out

    def _build_tables(self) -> dict[str, np.ndarray]:
        """Per-step (ring-slot) precisions and residual whitening.

        Row ``k`` serves steps ``t = k`` for ``k < T0`` and the steps ``t ≥ T0`` with
        ``(t - T0) mod H = k - T0`` (the pattern is periodic once every slot holds a
        steady token). Slots not yet written have ``logP = -inf`` (zero weight) and zero
        precision.
        """
        H, L, n = self.window, self.L, self.n
        V = self._lag_covariances()                      # (L, H, n, n)
        Vr = V + self.P_ref                              # residual covariances
        if self.attention_form == "tensor":
            Si = self._Si
            var = np.einsum("kn,cdnm,km->cdk", Si, V, Si.conj()).real
            var_res = np.einsum("kn,cdnm,km->cdk", Si, Vr, Si.conj()).real
        else:  # isotropic (and the matrix form's diagonal fallback): scalar tr / n
            var = np.trace(V, axis1=-2, axis2=-1)[..., None] / n
            var_res = np.trace(Vr, axis1=-2, axis2=-1)[..., None] / n
        if np.any(var <= 0) or np.any(var_res <= 0):
            raise NotDetectableError("AFAFilter: a propagated token variance is not positive (singular token noise)")
        # full Mahalanobis: whitening Wh with Wh' Wh = (V + P)^{-1}; matrix form: precisions V^{-1}
        white = np.linalg.inv(np.linalg.cholesky(Vr))     # L^{-1}, (L^{-1})'(L^{-1}) = Vr^{-1}
        prec = np.linalg.inv(V) if self.attention_form == "matrix" else None
        self.T0 = H + L - 1
        K = self.T0 + H
        w = var.shape[-1]
        tab = {"logP": np.full((K, H, w), -np.inf), "inv_res": np.zeros((K, H, w)),
               "white": np.zeros((K, H, n, n)), "valid": np.zeros((K, H))}
        if prec is not None:
            tab["prec"] = np.zeros((K, H, n, n))
        for k in range(K):
            for s in range(H):
                j = k - ((k - s) % H)
                if j < 0:
                    continue
                age, c = k - j, min(j, L - 1)
                tab["logP"][k, s] = -np.log(var[c, age])
                tab["inv_res"][k, s] = 1.0 / var_res[c, age]
                tab["white"][k, s] = white[c, age]
                tab["valid"][k, s] = 1.0
                if prec is not None:
                    tab["prec"][k, s] = symmetrize(prec[c, age])
        return tab

    def _table_index(self, t: int) -> int:
        return t if t < self.T0 else self.T0 + (t - self.T0) % self.window

    # ------------------------------------------------------------------ estimator protocol
    def init(self, batch: int, *, device: torch.device, dtype: torch.dtype) -> tuple[Any, torch.Tensor]:
        """Return the state (empty window) and the initial estimate ``m0`` ``(batch, n)``.

        Parameters
        ----------
        batch : int
            Number of trajectories ``B``.
        device : torch.device
            Device of the buffers.
        dtype : torch.dtype
            Floating dtype (the tensor form works in the matching complex dtype).

        Returns
        -------
        state : dict
            Buffers and constants.
        x_hat0 : torch.Tensor, shape (B, n)
            ``m0``.
        """
        dtype = resolve_dtype(dtype)
        P, n, H, L = self.plant, self.n, self.window, self.L
        x0 = tensor(P.m0, device, dtype).expand(batch, -1).clone()
        cdt = torch.complex128 if dtype == torch.float64 else torch.complex64
        toks = self.tokens
        c = {
            "Gy": torch.stack([tensor(t["Gy"], device, dtype) for t in toks]).transpose(1, 2).contiguous(),
            "Gu": torch.stack([tensor(t["Gu"], device, dtype) for t in toks]).transpose(1, 2).contiguous(),
            "const": torch.stack([tensor(t["const"], device, dtype) for t in toks]),
            "A_T": tensor(P.A.T, device, dtype).contiguous(),
            "B_T": tensor(P.B.T, device, dtype).contiguous(),
        }
        for key, val in self._tables.items():
            c[key] = tensor(val, device, dtype)
        if self.mahalanobis == "full":
            c["white_T"] = c.pop("white").transpose(-1, -2).contiguous()
        if self.attention_form == "tensor":
            c["lam"] = torch.as_tensor(self._lam, dtype=cdt, device=device)
            c["S_T"] = torch.as_tensor(self._S.T, dtype=cdt, device=device)
            c["Si_T"] = torch.as_tensor(self._Si.T, dtype=cdt, device=device)
            c["SiB_T"] = torch.as_tensor((self._Si @ P.B).T, dtype=cdt, device=device)
            buf = torch.zeros(H, batch, n, dtype=cdt, device=device)
            xbar = x0.to(cdt) @ c["Si_T"]
        else:
            buf = torch.zeros(H, batch, n, dtype=dtype, device=device)
            xbar = x0.clone()
        state = {"t": 0, "buf": buf, "xbar": xbar, "yh": torch.zeros(batch, L, P.p, device=device, dtype=dtype),
                 "uh": torch.zeros(batch, L, P.m, device=device, dtype=dtype),
                 "u_prev": torch.zeros(batch, P.m, device=device, dtype=dtype), "c": c}
        return state, x0

    def step(self, state, y: torch.Tensor, u: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """Add the token of ``x[t]`` and attend over the window (see :mod:`lqgt.estimators.base`).

        Parameters
        ----------
        state : dict
            From :meth:`init` or the previous call.
        y : torch.Tensor, shape (B, p)
            Measurement ``y[t]``.
        u : torch.Tensor, shape (B, m)
            ``u[t]`` (predictor timing) or ``u[t-1]`` (current timing).

        Returns
        -------
        state : dict
        x_hat : torch.Tensor, shape (B, n)
            ``x̄[t]`` (current) or ``A x̄[t] + B u[t]`` (predictor).
        """
        state, x, _ = self._advance(state, y, u)
        return state, x

    def _advance(self, state, y, u):
        """One step: returns the new state, the estimate and the weights ``(H, B[, n])`` by ring slot."""
        c, t, H = state["c"], state["t"], self.window
        predictor = self.form == "predictor"
        u_prev = state["u_prev"] if predictor else u  # the input applied between t-1 and t
        # measurement/input history (oldest first); u[t] is known only in predictor timing (D = 0 otherwise)
        yh = torch.cat([state["yh"][:, 1:], y[:, None]], dim=1)
        uh = state["uh"]  # u[t-L … t-1]
        if t > 0:  # the last slot becomes the true u[t-1] (unknown at the previous step in current timing)
            uh = torch.cat([uh[:, :-1], u_prev[:, None]], dim=1)
        uh = torch.cat([uh[:, 1:], (u if predictor else torch.zeros_like(u))[:, None]], dim=1)  # u[t-L+1 … t]
        cls = min(t, self.L - 1)
        z = yh.flatten(1) @ c["Gy"][cls] + c["const"][cls]
        if uh.shape[-1]:
            z = z + uh.flatten(1) @ c["Gu"][cls]
        buf, xbar = state["buf"], state["xbar"]
        k = self._table_index(t)
        slot = t % H
        tensor_form = self.attention_form == "tensor"
        if t > 0:  # pull the window and the previous estimate forward by one step (inputs included)
            if tensor_form:
                drive = u_prev.to(buf.dtype) @ c["SiB_T"]
                buf, ref = buf * c["lam"] + drive, xbar * c["lam"] + drive
            else:
                drive = u_prev @ c["B_T"]
                buf, ref = buf @ c["A_T"] + drive, xbar @ c["A_T"] + drive
        else:
            buf, ref = buf.clone(), xbar
        buf[slot] = z.to(buf.dtype) @ c["Si_T"] if tensor_form else z
        rob = None  # log of the robust factor, (H, B)
        if self.robust:
            r = ref[None] - buf  # residuals against the reference, (H, B, n)
            if self.mahalanobis == "full":
                rr = (r @ c["S_T"]).real if tensor_form else r
                maha = (rr @ c["white_T"][k]).square().sum(-1)
            elif tensor_form:
                maha = ((r.real.square() + r.imag.square()) * c["inv_res"][k][:, None, :]).sum(-1)
            else:
                maha = r.square().sum(-1) * c["inv_res"][k]
            rob = -torch.log1p(maha / (self.nu * self.n))
        if self.attention_form == "matrix":
            # x̄ = (Σ_j c_j Λ_j)^{-1} Σ_j c_j Λ_j x̂_j, c_j = robust factor^τ (0 on empty slots)
            wts = c["valid"][k][:, None].expand(H, buf.shape[1]) if rob is None else \
                torch.exp(self.tau * rob) * c["valid"][k][:, None]
            prec = c["prec"][k]  # (H, n, n)
            Mw = torch.einsum("hb,hnm->bnm", wts, prec)
            bw = torch.einsum("hb,hnm,hbm->bn", wts, prec, buf)
            xbar = torch.linalg.solve(Mw, bw)
            alpha = wts / wts.sum(0, keepdim=True)  # the scalar robust weights (for plots)
            x = xbar
        elif tensor_form:
            logit = c["logP"][k][:, None, :] + (0.0 if rob is None else rob[..., None])
            alpha = torch.softmax(self.tau * logit.expand(H, buf.shape[1], -1), dim=0)  # (H, B, n)
            xbar = (alpha * buf).sum(0)
            x = (xbar @ c["S_T"]).real
        else:
            logit = c["logP"][k] + (0.0 if rob is None else rob)  # (H, B)
            alpha = torch.softmax(self.tau * logit.expand(H, buf.shape[1]), dim=0)
            xbar = (alpha[..., None] * buf).sum(0)
            x = xbar
        if predictor:
            x = x @ c["A_T"] + u @ c["B_T"]
        new = {"t": t + 1, "buf": buf, "xbar": xbar, "yh": yh, "uh": uh, "u_prev": u if predictor else u_prev,
               "c": c}
        return new, x, alpha

    # ------------------------------------------------------------------ analysis
    def _sequences(self, y, u, dtype):
        dt = resolve_dtype(dtype)
        y_t = torch.as_tensor(y).to(dtype=dt)
        single = y_t.ndim == 2
        if single:
            y_t = y_t.unsqueeze(0)
        p, m = self.plant.p, self.plant.m
        if y_t.ndim != 3 or y_t.shape[-1] != p:
            raise ShapeError(f"y has shape {tuple(torch.as_tensor(y).shape)}, expected (T, {p}) or (B, T, {p})")
        if not torch.isfinite(y_t).all():
            raise NonFiniteError("y contains NaN or infinite entries")
        B, T, _ = y_t.shape
        if u is None:
            u_t = torch.zeros(B, T, m, dtype=dt, device=y_t.device)
        else:
            u_t = torch.as_tensor(u).to(dtype=dt, device=y_t.device)
            if u_t.ndim == 2:
                u_t = u_t.unsqueeze(0)
            if tuple(u_t.shape) != (B, T, m):
                raise ShapeError(f"u has shape {tuple(torch.as_tensor(u).shape)}, expected ({T}, {m}) or ({B}, {T}, {m})")
            if not torch.isfinite(u_t).all():
                raise NonFiniteError("u contains NaN or infinite entries")
        return y_t, u_t, single

    @torch.no_grad()
    def run(self, y, u=None, *, dtype: torch.dtype | None = None, weights: bool = False):
        """Filter measurement sequences (open loop: ``u`` are the inputs applied, ``u[t]`` at step ``t``).

        Parameters
        ----------
        y : array_like or torch.Tensor, shape (T, p) or (B, T, p)
            Measurements ``y[0] … y[T-1]``.
        u : array_like or torch.Tensor, shape (T, m) or (B, T, m), optional
            Inputs (zero when not given).
        dtype : torch.dtype, optional
            Float64 by default.
        weights : bool
            Also return the attention weights.

        Returns
        -------
        x_hat : torch.Tensor, shape (B, T, n) (or (T, n))
            ``x̄[t]`` (current timing) or ``x̂[t+1|t]`` (predictor timing) for each ``t``.
        alpha : torch.Tensor
            Only with ``weights``: ``α[t, j]`` of shape ``(B, T, T)`` (isotropic) or
            ``(B, T, T, n)`` (tensor, per eigen-component), zero outside the window.

        Raises
        ------
        ShapeError, NonFiniteError
            Bad shapes, NaN or infinite inputs.
        """
        y_t, u_t, single = self._sequences(y, u, dtype)
        B, T, _ = y_t.shape
        state, _ = self.init(B, device=y_t.device, dtype=y_t.dtype)
        xs = torch.empty(B, T, self.n, dtype=y_t.dtype, device=y_t.device)
        tail = (self.n,) if self.attention_form == "tensor" else ()
        al = torch.zeros((B, T, T) + tail, dtype=y_t.dtype, device=y_t.device) if weights else None
        H = self.window
        for t in range(T):
            uu = u_t[:, t] if self.form == "predictor" else (u_t[:, t - 1] if t > 0 else torch.zeros_like(u_t[:, 0]))
            state, x, a = self._advance(state, y_t[:, t], uu)
            xs[:, t] = x
            if weights:
                lo = max(0, t - H + 1)
                times = torch.arange(lo, t + 1, device=y_t.device)
                al[:, t, lo:t + 1] = a[times % H].movedim(0, 1)
        if single:
            return (xs[0], al[0]) if weights else xs[0]
        return (xs, al) if weights else xs

    def attention_weights(self, y, u=None, *, component: int | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The attention weights ``α[t, j]`` of a run, e.g. for :func:`lqgt.plot.attention_heatmap`.

        Parameters
        ----------
        y : array_like or torch.Tensor, shape (T, p) or (B, T, p)
            Measurements of the run (e.g. ``res.y[name]``).
        u : array_like or torch.Tensor, shape (T, m) or (B, T, m), optional
            Inputs of the run (e.g. ``res.u[name]``).
        component : int, optional
            Tensor form: the eigen-component ``k`` whose weights to return; by default the
            mean over the components (rows still sum to 1). Ignored by the isotropic form.
        dtype : torch.dtype, optional
            Float64 by default.

        Returns
        -------
        torch.Tensor, shape (B, T, T) (or (T, T))
            Row ``t`` holds the weights of the tokens ``j`` in the estimate of step ``t``.

        Raises
        ------
        ConfigError
            ``component`` out of range.
        """
        _, a = self.run(y, u, dtype=dtype, weights=True)
        if self.attention_form != "tensor":
            return a
        if component is None:
            return a.mean(-1)
        if isinstance(component, bool) or not isinstance(component, (int, np.integer)) or not 0 <= component < self.n:
            raise ConfigError(f"component must be an integer in [0, {self.n}), got {component!r}")
        return a[..., int(component)]


@register
class AFAEstimator(LearnedEstimator):
    """A trainable estimator built on one :class:`~lqgt.layers.afa.AdaptiveFilterAttention` layer.

    Tokens are ``e_t = E [y_t; u_{t-1}]`` (``u_{-1} = 0``); the layer filters them with its
    learned dynamics; linear heads read the state estimate and the output prediction:

    * ``x̂ = H_x out_t`` (current form) or ``H_x out_{t+1|t} + G_x u_t`` (predictor form),
    * ``ŷ[t+1] = H_y out_{t+1|t} + G_y u_t``,

    where ``out_{t+1|t}`` is the layer's output pulled one step further forward
    (``lead=1``). Trained with :func:`lqgt.learn.fit` (e.g. ``loss="output_prediction"``,
    next-token prediction, which needs no state labels). The layer's decay ``μ``,
    frequencies ``ω``, noise levels ``q``, ``r``, ``ν`` and all projections are parameters.
    The inputs enter as token features (the layer's dynamics model has no input channel).

    Parameters
    ----------
    n : int
        State dimension.
    m : int
        Input dimension (may be 0).
    p : int
        Measurement dimension.
    form : {"predictor", "current"}
        Which estimate :meth:`step` and :meth:`forward` return.
    d_model : int, optional
        Layer width (default: the smallest multiple of ``2·heads`` that is ``≥ max(n, p)``).
    heads : int
        Attention heads.
    attention : {"isotropic", "tensor"}
        The layer's form.
    robust : bool
        Student-t weights (trainable ``ν``).
    nu : float
        Initial ``ν``.
    tau : float
        Logit inverse temperature.
    window : int
        Attention window (tokens ``t-window+1 … t``); the protocol mode keeps this many.
    dt : float
        Sample time (the layer's time unit).
    mu : float
        Initial decay rate (1/s).
    q : float
        Initial process-noise intensity.
    r : float
        Initial observation-noise variance.
    omega : float or list of float, optional
        Initial frequencies (rad/s) of the complex components (rotary-style by default).
    learn_projections : bool
        ``False`` fixes every projection and head to the identity (needs
        ``d_model == n == p``) so that only the dynamics and noise parameters are learned:
        the layer's ``μ`` and ``ω`` are then directly the system's decay and frequency.

    Raises
    ------
    ConfigError
        Bad sizes or options (see :class:`~lqgt.layers.afa.AdaptiveFilterAttention`).
    """

    def __init__(self, n: int, m: int, p: int, *, form: str = "predictor", d_model: int | None = None,
                 heads: int = 1, attention: str = "isotropic", robust: bool = True, nu: float = 4.0,
                 tau: float = 1.0, window: int = 64, dt: float = 1.0, mu: float = 0.1, q: float = 0.1,
                 r: float = 1.0, omega=None, learn_projections: bool = True) -> None:
        super().__init__(n, m, p, form=form)
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
            raise ConfigError(f"heads must be a positive integer, got {heads!r}")
        if d_model is None:
            step = 2 * heads
            d_model = step * math.ceil(max(n, p) / step)
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ConfigError(f"window must be an integer >= 1, got {window!r}")
        if not learn_projections and not (d_model == n == p):
            raise ConfigError(f"learn_projections=False needs d_model == n == p, got d_model={d_model}, n={n}, p={p}")
        self._cfg = dict(n=n, m=m, p=p, form=form, d_model=d_model, heads=heads, attention=attention,
                         robust=bool(robust), nu=float(nu), tau=float(tau), window=window, dt=float(dt), mu=float(mu),
                         q=float(q), r=float(r), omega=None if omega is None else np.atleast_1d(omega).tolist(),
                         learn_projections=bool(learn_projections))
        self.window = window
        self.layer = AdaptiveFilterAttention(d_model, heads, form=attention, robust=robust, nu=nu, tau=tau,
                                             window=window, dt=dt, mu=mu, q=q, r=r, dtype=torch.float64)
        if omega is not None:
            self.layer.set_dynamics(omega=torch.as_tensor(np.atleast_1d(omega), dtype=torch.float64))
        f64 = dict(bias=False, dtype=torch.float64)
        self.embed = torch.nn.Linear(p + m, d_model, **f64)
        self.head_x = torch.nn.Linear(d_model, n, **f64)
        self.head_y = torch.nn.Linear(d_model, p, **f64)
        self.skip_x = torch.nn.Linear(m, n, **f64) if m else None
        self.skip_y = torch.nn.Linear(m, p, **f64) if m else None
        if not learn_projections:
            with torch.no_grad():
                eye = torch.eye(d_model, dtype=torch.float64)
                for lin in (self.layer.W_q, self.layer.W_k, self.layer.W_v, self.layer.W_o, self.head_x, self.head_y):
                    lin.weight.copy_(eye)
                    lin.weight.requires_grad_(False)
                self.embed.weight.zero_()
                self.embed.weight[:, :p].copy_(eye)
                self.embed.weight.requires_grad_(False)

    def config(self) -> dict:
        """Return the constructor keyword arguments (JSON-serialisable).

        Returns
        -------
        dict
        """
        return dict(self._cfg)

    # ---- sequence mode -------------------------------------------------------------------
    def _tokens(self, y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        u_prev = torch.cat([torch.zeros_like(u[:, :1]), u[:, :-1]], dim=1)
        return self.embed(torch.cat([y, u_prev], dim=-1))

    def forward(self, y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Estimate the states of whole sequences (causal).

        Parameters
        ----------
        y : torch.Tensor, shape (B, T, p)
            Measurements.
        u : torch.Tensor, shape (B, T, m)
            Inputs, ``u[:, t]`` applied at step ``t``.

        Returns
        -------
        torch.Tensor, shape (B, T, n)
            ``x̂[t|t]`` (current form) or ``x̂[t+1|t]`` (predictor form).
        """
        y, u = self.check_sequences(y, u)
        predictor = self.form == "predictor"
        x = self.head_x(self.layer(self._tokens(y, u), lead=int(predictor)))
        if predictor and self.skip_x is not None:
            x = x + self.skip_x(u)
        return x

    def predict_output(self, y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Predict the next measurement of whole sequences (causal, next-token prediction).

        Parameters
        ----------
        y : torch.Tensor, shape (B, T, p)
            Measurements.
        u : torch.Tensor, shape (B, T, m)
            Inputs, ``u[:, t]`` applied at step ``t``.

        Returns
        -------
        torch.Tensor, shape (B, T, p)
            ``out[:, t]`` predicts ``y[t+1]``.
        """
        y, u = self.check_sequences(y, u)
        out = self.head_y(self.layer(self._tokens(y, u), lead=1))
        if self.skip_y is not None:
            out = out + self.skip_y(u)
        return out

    # ---- protocol mode -------------------------------------------------------------------
    def init(self, batch: int, *, device: torch.device, dtype: torch.dtype) -> tuple[Any, torch.Tensor]:
        """Return the state (no tokens yet) and the initial estimate 0 ``(batch, n)``.

        Parameters
        ----------
        batch : int
            Number of trajectories.
        device : torch.device
            Device of the simulation.
        dtype : torch.dtype
            Dtype of the simulation.

        Returns
        -------
        state : tuple
            Token buffer ``(B, ≤ window, d_model)`` and the previous input.
        x_hat0 : torch.Tensor, shape (batch, n)
        """
        self._place(device, dtype)
        buf = torch.zeros(batch, 0, self.layer.d_model, device=device, dtype=dtype)
        return (buf, torch.zeros(batch, self.m, device=device, dtype=dtype)), torch.zeros(batch, self.n, device=device, dtype=dtype)

    def step(self, state, y: torch.Tensor, u: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """One step: append the token ``E [y_t; u_{t-1}]`` and attend over the window.

        The layer's output depends only on time differences, so attending over the last
        ``window`` tokens equals the sequence mode's windowed attention.

        Parameters
        ----------
        state : tuple
            From :meth:`init` or the previous call.
        y : torch.Tensor, shape (B, p)
            ``y[t]``.
        u : torch.Tensor, shape (B, m)
            ``u[t]`` (predictor form) or ``u[t-1]`` (current form).

        Returns
        -------
        state : tuple
        x_hat : torch.Tensor, shape (B, n)
        """
        buf, u_prev = state
        predictor = self.form == "predictor"
        up = u_prev if predictor else u
        tok = self.embed(torch.cat([y, up], dim=-1))
        buf = torch.cat([buf[:, 1:] if buf.shape[1] >= self.window else buf, tok[:, None]], dim=1)
        x = self.head_x(self.layer(buf, lead=int(predictor))[:, -1])
        if predictor and self.skip_x is not None:
            x = x + self.skip_x(u)
        return (buf, u if predictor else u_prev), x
