"""Kalman filtering and Rauch–Tung–Striebel smoothing, sequential or time-parallel (SPEC §5).

The model (SPEC §1, with optionally time-varying matrices):

    x[t+1] = A[t] x[t] + B[t] u[t] + w[t],   w[t] ~ N(0, W[t])
    y[t]   = C[t] x[t] + D[t] u[t] + v[t],   v[t] ~ N(0, V[t])
    x[0]   ~ N(m0, P0)

:func:`kalman_filter` returns the filtered moments ``x̂[t|t]``, ``P[t|t]``, the predicted
moments ``x̂[t|t-1]``, ``P[t|t-1]`` and the log-likelihood of the data;
:func:`rts_smoother` returns the smoothed moments ``x̂[t|T-1]``, ``P[t|T-1]``.

``method="sequential"`` runs the textbook recursion step by step (Joseph-form update).
``method="parallel"`` writes the filter as an associative scan (:mod:`lqgt.scan`) with
``O(log T)`` depth: the covariance form of Särkkä & García-Fernández (2021), or an
information form (the Kalman-Linear-Attention idea) whose elements are Gaussian potentials
on pairs of states, combined by marginalising the shared state. The smoother is a reverse
scan of the elements ``(E, g, L)``. Both methods give the same numbers to rounding
(float64: 1e-9). ``method="auto"`` picks by the rule in :func:`choose_method`.

Missing data: NaN entries of ``y`` are missing measurements. Their rows of ``C``, ``D`` and
``V`` are dropped at that step (the update uses the observed components only, with their
marginal noise covariance); a fully NaN ``y[t]`` means no measurement update at step ``t``.

Shapes are batch first (``docs/conventions.md``): ``y`` is ``(B, T, p)``; a ``(T, p)``
input gives unbatched results (the leading ``B`` dropped). Model parameters may be torch
tensors that require grad (see :class:`LinearGaussianModel`); the log-likelihood is
differentiable by autograd in both methods. See ``docs/filtering.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np
import torch

from ._linalg import SYM_RTOL
from ._torch import resolve_device, resolve_dtype, tensor
from .errors import (
    ConfigError,
    NonFiniteError,
    NotPositiveDefiniteError,
    NotSymmetricError,
    ShapeError,
)
from .estimators._gaussian import joseph, sym
from .plant import Plant
from .scan import SCAN_METHODS, associative_scan

__all__ = [
    "FORMS",
    "METHODS",
    "FilterResult",
    "LinearGaussianModel",
    "SmootherResult",
    "choose_method",
    "kalman_filter",
    "rts_smoother",
]

#: Accepted values of ``method``.
METHODS = ("sequential", "parallel", "auto")
#: Accepted values of ``form`` (the parallel filter's element representation).
FORMS = ("covariance", "information")

_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------


def _as_array(name: str, M: Any) -> Any:
    """A torch tensor is kept (floating, any device); anything else becomes float64 numpy."""
    if isinstance(M, torch.Tensor):
        if not (M.is_floating_point()):
            M = M.to(torch.float64)
        return M
    try:
        return np.array(M, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ShapeError(f"{name} must be a numeric array: {exc}") from None


def _numpy(M: Any) -> np.ndarray:
    if isinstance(M, torch.Tensor):
        return M.detach().to("cpu", torch.float64).numpy()
    return np.asarray(M, dtype=np.float64)


def _check_matrix(name: str, M: Any, rows: int | None, cols: int | None) -> tuple[Any, int | None]:
    """Check a constant ``(rows, cols)`` or per-step ``(T, rows, cols)`` matrix; return it and T."""
    M = _as_array(name, M)
    shape = tuple(M.shape)
    want = ("·" if rows is None else rows, "·" if cols is None else cols)
    if M.ndim not in (2, 3) or (rows is not None and shape[-2] != rows) or (cols is not None and shape[-1] != cols):
        raise ShapeError(
            f"{name} has shape {shape}, expected {want} (constant) or (T, {want[0]}, {want[1]}) (per step)"
        )
    if not np.all(np.isfinite(_numpy(M))):
        raise NonFiniteError(f"{name} contains NaN or infinite entries")
    return M, (shape[0] if M.ndim == 3 else None)


def _check_psd_steps(name: str, M: Any, *, strict: bool) -> None:
    """Symmetric PSD (``strict``: PD) check of a constant or per-step covariance, like ``check_psd``."""
    X = _numpy(M)
    X3 = X.reshape((-1,) + X.shape[-2:])
    if X3.shape[-1] == 0:
        return
    scale = np.maximum(1.0, np.abs(X3).max(axis=(1, 2)))
    asym = np.abs(X3 - np.swapaxes(X3, 1, 2)).max(axis=(1, 2))
    bad = np.nonzero(asym > SYM_RTOL * scale)[0]
    where = lambda k: f" at step {k}" if X.ndim == 3 else ""
    if bad.size:
        k = int(bad[0])
        raise NotSymmetricError(f"{name} must be symmetric{where(k)} (max |{name} - {name}'| = {asym[k]:.3g})")
    lam = np.linalg.eigvalsh(0.5 * (X3 + np.swapaxes(X3, 1, 2)))[:, 0]
    if strict:
        bad = np.nonzero(lam <= SYM_RTOL * scale * 1e-4)[0]
        kind = "positive definite"
    else:
        bad = np.nonzero(lam < -SYM_RTOL * scale)[0]
        kind = "positive semidefinite"
    if bad.size:
        k = int(bad[0])
        raise NotPositiveDefiniteError(f"{name} must be {kind}{where(k)} (smallest eigenvalue {lam[k]:.3g})")


@dataclass(frozen=True, eq=False)
class LinearGaussianModel:
    """A linear-Gaussian state-space model whose matrices may vary with time.

    ``x[t+1] = A[t] x[t] + B[t] u[t] + w[t]``, ``y[t] = C[t] x[t] + D[t] u[t] + v[t]``,
    ``w[t] ~ N(0, W[t])``, ``v[t] ~ N(0, V[t])``, ``x[0] ~ N(m0, P0)``.

    Every matrix is either constant, shape ``(r, c)``, or given per step, shape
    ``(T, r, c)``. The transition quantities ``A``, ``B``, ``W`` may have ``T`` or ``T - 1``
    steps (entry ``t`` maps step ``t`` to ``t + 1``; with ``T`` steps the last is unused).
    ``C``, ``D``, ``V`` per step have ``T`` entries. Entries may be numpy arrays or torch
    tensors, including tensors that require grad (the filters stay differentiable; the
    checks below look at detached copies).

    Parameters
    ----------
    A : array_like or torch.Tensor, shape (n, n) or (T, n, n)
        State transition.
    B : array_like or torch.Tensor, shape (n, m) or (T, n, m), or None
        Input matrix; ``None`` for a model without input.
    C : array_like or torch.Tensor, shape (p, n) or (T, p, n)
        Output matrix.
    W : array_like or torch.Tensor, shape (n, n) or (T, n, n)
        Process-noise covariance (symmetric PSD; positive definite for the information form).
    V : array_like or torch.Tensor, shape (p, p) or (T, p, p)
        Measurement-noise covariance (symmetric positive definite).
    D : array_like or torch.Tensor, shape (p, m) or (T, p, m), optional
        Feedthrough; zero by default (needs ``B``).
    m0 : array_like or torch.Tensor, shape (n,), optional
        Mean of ``x[0]``; zero by default.
    P0 : array_like or torch.Tensor, shape (n, n), optional
        Covariance of ``x[0]`` (symmetric PSD); identity by default.

    Raises
    ------
    ShapeError
        A matrix has the wrong shape, or the numbers of steps disagree.
    NonFiniteError
        A matrix has NaN or infinite entries.
    NotSymmetricError, NotPositiveDefiniteError
        ``W``/``P0`` not symmetric PSD or ``V`` not symmetric positive definite (the message
        names the step).

    Examples
    --------
    >>> import torch, lqgt
    >>> from lqgt.filtering import LinearGaussianModel
    >>> log_q = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    >>> model = LinearGaussianModel([[0.9]], None, [[1.0]], W=torch.exp(log_q).reshape(1, 1), V=[[0.5]])
    >>> model.n, model.m, model.p, model.steps
    (1, 0, 1, None)
    """

    A: Any
    B: Any
    C: Any
    W: Any = field(kw_only=True)
    V: Any = field(kw_only=True)
    D: Any = field(default=None, kw_only=True)
    m0: Any = field(default=None, kw_only=True)
    P0: Any = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        A, tA = _check_matrix("A", self.A, None, None)
        n = A.shape[-1]
        A, tA = _check_matrix("A", A, n, n)
        if self.B is None:
            B, tB, m = None, None, 0
        else:
            B, tB = _check_matrix("B", self.B, n, None)
            m = B.shape[-1]
        C, tC = _check_matrix("C", self.C, None, n)
        p = C.shape[-2]
        if self.D is None:
            D, tD = None, None
        else:
            if B is None:
                raise ShapeError("D was given but B is None: a feedthrough needs an input (pass B)")
            D, tD = _check_matrix("D", self.D, p, m)
        W, tW = _check_matrix("W", self.W, n, n)
        V, tV = _check_matrix("V", self.V, p, p)
        _check_psd_steps("W", W, strict=False)
        _check_psd_steps("V", V, strict=True)
        if self.m0 is None:
            m0 = np.zeros(n)
        else:
            m0 = _as_array("m0", self.m0)
            if m0.ndim == 2 and m0.shape[1] == 1:
                m0 = m0[:, 0]
            if tuple(m0.shape) != (n,):
                raise ShapeError(f"m0 has shape {tuple(m0.shape)}, expected ({n},)")
            if not np.all(np.isfinite(_numpy(m0))):
                raise NonFiniteError("m0 contains NaN or infinite entries")
        if self.P0 is None:
            P0 = np.eye(n)
        else:
            P0, tP = _check_matrix("P0", self.P0, n, n)
            if tP is not None:
                raise ShapeError(f"P0 has shape {tuple(P0.shape)}, expected ({n}, {n})")
            _check_psd_steps("P0", P0, strict=False)
        meas = {k: t for k, t in dict(C=tC, D=tD, V=tV).items() if t is not None}
        trans = {k: t for k, t in dict(A=tA, B=tB, W=tW).items() if t is not None}
        if len(set(meas.values())) > 1:
            raise ShapeError(f"per-step C, D, V disagree on the number of steps: {meas}")
        if len(set(trans.values())) > 1:
            raise ShapeError(f"per-step A, B, W disagree on the number of steps: {trans}")
        if meas and trans:
            Tm = next(iter(meas.values()))
            Tt = next(iter(trans.values()))
            if Tt not in (Tm, Tm - 1):
                raise ShapeError(
                    f"per-step A/B/W have {Tt} steps and C/D/V have {Tm}; A, B, W need T or T - 1 steps"
                )
        for name, val in dict(A=A, B=B, C=C, D=D, W=W, V=V, m0=m0, P0=P0).items():
            if isinstance(val, np.ndarray):
                val.setflags(write=False)
            object.__setattr__(self, name, val)
        object.__setattr__(self, "_dims", (n, m, p))
        object.__setattr__(self, "_steps", (next(iter(meas.values()), None), next(iter(trans.values()), None)))

    @property
    def n(self) -> int:
        """Number of states."""
        return self._dims[0]

    @property
    def m(self) -> int:
        """Number of inputs (0 when ``B`` is None)."""
        return self._dims[1]

    @property
    def p(self) -> int:
        """Number of outputs."""
        return self._dims[2]

    @property
    def steps(self) -> int | None:
        """Number of steps fixed by per-step matrices (``None`` when every matrix is constant).

        ``C``/``D``/``V`` per step fix it; per-step ``A``/``B``/``W`` alone give a lower bound
        (the data may have their length or one more).
        """
        Tm, Tt = self._steps
        return Tm if Tm is not None else Tt

    @property
    def time_varying(self) -> bool:
        """``True`` when at least one matrix is given per step."""
        return self._steps != (None, None)

    def __repr__(self) -> str:
        return f"LinearGaussianModel(n={self.n}, m={self.m}, p={self.p}, steps={self.steps})"

    @classmethod
    def from_plant(cls, plant: Plant) -> LinearGaussianModel:
        """The (time-invariant) model of an :class:`lqgt.Plant`.

        Parameters
        ----------
        plant : Plant
            The plant; its ``A, B, C, D, W, V, m0, P0`` are used.

        Returns
        -------
        LinearGaussianModel
        """
        B = plant.B if plant.m > 0 else None
        D = plant.D if plant.m > 0 else None
        return cls(plant.A, B, plant.C, W=plant.W, V=plant.V, D=D, m0=plant.m0, P0=plant.P0)


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FilterResult:
    """Result of :func:`kalman_filter` (immutable; tensors on the computation device).

    ``B`` is the batch size; for unbatched input (``y`` of shape ``(T, p)``) the leading
    ``B`` is dropped from every shape below.

    Attributes
    ----------
    means : torch.Tensor, shape (B, T, n)
        Filtered means ``x̂[t|t] = E[x[t] | y[0..t]]``.
    covariances : torch.Tensor, shape (T, n, n) or (B, T, n, n)
        Filtered covariances ``P[t|t]``. They do not depend on the data, so they are shared
        across the batch, shape ``(T, n, n)``, unless the trajectories have different
        missing-data patterns, shape ``(B, T, n, n)`` (see :attr:`shared_covariances`).
    predicted_means : torch.Tensor, shape (B, T, n)
        One-step predictions ``x̂[t|t-1]`` (``x̂[0|-1] = m0``).
    predicted_covariances : torch.Tensor, shape like ``covariances``
        ``P[t|t-1]`` (``P[0|-1] = P0``).
    log_likelihood : torch.Tensor, shape (B,)
        ``log p(y[0..T-1]) = Σ_t log N(y[t]; C x̂[t|t-1] + D u[t], C P[t|t-1] C' + V)``
        over the observed components (natural log; differentiable).
    method : str
        ``"sequential"`` or ``"parallel"``: the method that ran (``"auto"`` resolved).
    form : str or None
        ``"covariance"`` or ``"information"`` for the parallel method, ``None`` otherwise.
    """

    means: torch.Tensor
    covariances: torch.Tensor
    predicted_means: torch.Tensor
    predicted_covariances: torch.Tensor
    log_likelihood: torch.Tensor
    method: str
    form: str | None

    @property
    def shared_covariances(self) -> bool:
        """``True`` when the covariances are shared across the batch (no per-trajectory axis)."""
        return self.covariances.ndim == 3


@dataclass(frozen=True, eq=False)
class SmootherResult:
    """Result of :func:`rts_smoother` (immutable).

    Attributes
    ----------
    means : torch.Tensor, shape (B, T, n)
        Smoothed means ``x̂[t|T-1] = E[x[t] | y[0..T-1]]``.
    covariances : torch.Tensor, shape (T, n, n) or (B, T, n, n)
        Smoothed covariances ``P[t|T-1]`` (shared across the batch like the filter's).
    filtered : FilterResult
        The forward pass (filtered and predicted moments, log-likelihood).
    method : str
        ``"sequential"`` or ``"parallel"``.
    """

    means: torch.Tensor
    covariances: torch.Tensor
    filtered: FilterResult
    method: str

    @property
    def log_likelihood(self) -> torch.Tensor:
        """The data log-likelihood, ``filtered.log_likelihood``, shape ``(B,)``."""
        return self.filtered.log_likelihood


# --------------------------------------------------------------------------------------
# Choosing the method
# --------------------------------------------------------------------------------------

#: ``method="auto"`` thresholds, measured with ``benchmarks/parallel_scan.py`` (docs/filtering.md).
#: CPU: the scan does ~5x the arithmetic of the recursion, so it wins only while the
#: recursion is dominated by per-step interpreter overhead: short batches of small states.
_AUTO_CPU_MIN_T = 64
_AUTO_CPU_MAX_BN2 = 1024  # batch * n**2
#: CUDA: the recursion launches ~35 kernels per step, the scan ~50 per round over 2 log2(T)
#: rounds; measured crossover (H200, float64) between T = 10 and T = 30.
_AUTO_CUDA_MIN_T = 20


def _scan_bytes(T: int, n: int, batch: int, itemsize: int) -> float:
    """Rough peak memory of the parallel filter: element tensors, scan copies, temporaries."""
    return float(itemsize) * T * (12 * n * n + 12 * batch * n)


def choose_method(
    T: int,
    n: int,
    batch: int,
    device: torch.device | str,
    *,
    dtype: torch.dtype = torch.float64,
    free_memory: float | None = None,
) -> str:
    """The method ``method="auto"`` uses for ``T`` steps, ``n`` states and ``batch`` trajectories.

    The rule (crossovers measured with ``benchmarks/parallel_scan.py``, see
    ``docs/filtering.md``):

    * CUDA: ``"parallel"`` when ``T >= 20``, unless the scan's estimated memory
      (``≈ itemsize · T · (12 n² + 12 B n)`` bytes) exceeds ``free_memory``;
    * CPU (and other devices): ``"parallel"`` when ``T >= 64`` and ``batch · n² <= 1024``;
    * otherwise ``"sequential"``.

    Parameters
    ----------
    T : int
        Number of time steps.
    n : int
        State dimension.
    batch : int
        Number of trajectories ``B``.
    device : torch.device or str
        Where the computation runs.
    dtype : torch.dtype, optional
        Computation dtype (for the memory estimate); float64 by default.
    free_memory : float, optional
        Bytes available on ``device``; ``None`` skips the memory check.
        :func:`kalman_filter` passes the free CUDA memory.

    Returns
    -------
    str
        ``"sequential"`` or ``"parallel"``.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        if T < _AUTO_CUDA_MIN_T:
            return "sequential"
        itemsize = torch.empty((), dtype=dtype).element_size()
        if free_memory is not None and _scan_bytes(T, n, batch, itemsize) > free_memory:
            return "sequential"
        return "parallel"
    if T >= _AUTO_CPU_MIN_T and batch * n * n <= _AUTO_CPU_MAX_BN2:
        return "parallel"
    return "sequential"


# --------------------------------------------------------------------------------------
# Small batched linear-algebra helpers (batch dim 0 of matrices may be 1 while vectors have B)
# --------------------------------------------------------------------------------------


def _mv(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``M v`` for ``M (bm, *k, r, c)`` and ``v (bv, *k, c)``; a shared ``M`` (bm = 1) is never
    copied ``bv`` times: the batch of ``v`` becomes the columns of one matrix product."""
    if M.shape[0] == 1 and v.shape[0] != 1:
        if all(s == 1 for s in M.shape[1:-2]):
            return v @ M.reshape(M.shape[-2:]).mT
        return (M[0] @ v.movedim(0, -1)).movedim(-1, 0)
    return (M @ v.unsqueeze(-1)).squeeze(-1)


def _cho_solve_v(L: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``S^{-1} v`` with ``S = L L'`` (shapes as in :func:`_mv`)."""
    if L.shape[0] == 1 and v.shape[0] != 1:
        return torch.cholesky_solve(v.movedim(0, -1), L[0]).movedim(-1, 0)
    return torch.cholesky_solve(v.unsqueeze(-1), L).squeeze(-1)


def _tri_solve_v(L: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``L^{-1} v`` for lower-triangular ``L`` (shapes as in :func:`_mv`)."""
    if L.shape[0] == 1 and v.shape[0] != 1:
        return torch.linalg.solve_triangular(L[0], v.movedim(0, -1), upper=False).movedim(-1, 0)
    return torch.linalg.solve_triangular(L, v.unsqueeze(-1), upper=False).squeeze(-1)


def _bcat(parts: list[torch.Tensor], dim: int = 1) -> torch.Tensor:
    """Concatenate along ``dim`` after broadcasting the other dims (batch dim 0 included)."""
    shape = list(torch.broadcast_shapes(*[p.shape[:dim] + (1,) + p.shape[dim + 1:] for p in parts]))
    out = []
    for p in parts:
        s = list(shape)
        s[dim] = p.shape[dim]
        out.append(p.expand(*s))
    return torch.cat(out, dim=dim)


def _bstack(xs: list[torch.Tensor]) -> torch.Tensor:
    """Stack ``(b, ...)`` tensors along a new dim 1, broadcasting the batch dim 0."""
    return _bcat([x[:, None] for x in xs], 1)


def _require_pd(M: torch.Tensor, message: str) -> torch.Tensor:
    """Cholesky factor of ``M``; :class:`NotPositiveDefiniteError` with ``message`` if it fails."""
    L, info = torch.linalg.cholesky_ex(M)
    if bool((info != 0).any()):
        raise NotPositiveDefiniteError(message)
    return L


class _Chol:
    """Cholesky factorisations without a host sync per call; failures are checked at the end."""

    def __init__(self) -> None:
        self.infos: dict[str, list[torch.Tensor]] = {}

    def __call__(self, M: torch.Tensor, what: str) -> torch.Tensor:
        L, info = torch.linalg.cholesky_ex(M)
        self.infos.setdefault(what, []).append(info.reshape(-1))
        return L

    def check(self) -> None:
        for what, infos in self.infos.items():
            if bool((torch.cat(infos) != 0).any()):
                raise NotPositiveDefiniteError(
                    f"{what} lost positive definiteness during filtering (ill-conditioned model "
                    "or too little precision; try dtype=torch.float64)"
                )
        self.infos.clear()


# --------------------------------------------------------------------------------------
# Preparing the inputs
# --------------------------------------------------------------------------------------


def _signal(name: str, s: Any, width: int, what: str) -> torch.Tensor:
    """Convert ``y``/``u`` to a float64 tensor (device/dtype set later) and check its shape."""
    t = _as_array(name, s)
    if isinstance(t, np.ndarray):
        t = torch.tensor(t)
    if t.ndim not in (2, 3) or t.shape[-1] != width:
        raise ShapeError(
            f"{name} has shape {tuple(t.shape)}, expected (B, T, {width}) or (T, {width}) ({what})"
        )
    return t


def _per_step(M: Any, T: int, *, transition: bool, name: str, device, dtype) -> torch.Tensor:
    """A model matrix as a tensor ``(1, k, r, c)`` with ``k = 1`` (constant) or the steps used:
    ``T - 1`` transitions (``t -> t + 1``) or ``T`` measurements."""
    M = tensor(M, device, dtype)
    if M.ndim == 2:
        return M[None, None]
    steps = M.shape[0]
    if transition:
        if steps not in (T, T - 1) or (steps == 0 and T > 1):
            raise ShapeError(f"{name} has {steps} steps; the data have T = {T}, so {name} needs T or T - 1")
        return M[None, : max(T - 1, 0)]
    if steps != T:
        raise ShapeError(f"{name} has {steps} steps; the data have T = {T}")
    return M[None]


def _at(M: torch.Tensor, t: int) -> torch.Tensor:
    """Step ``t`` of a ``(b, k, ...)`` per-step tensor (``k = 1``: constant)."""
    return M[:, 0] if M.shape[1] == 1 else M[:, t]


def _from(M: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
    """Steps ``start:stop`` of a per-step tensor (a constant one is returned as it is)."""
    return M if M.shape[1] == 1 else M[:, start:stop]


def _prepare(model: Any, y: Any, u: Any, dtype: Any, device: Any) -> SimpleNamespace:
    if isinstance(model, Plant):
        model = LinearGaussianModel.from_plant(model)
    elif not isinstance(model, LinearGaussianModel):
        raise ShapeError(
            f"model must be an lqgt.Plant or lqgt.filtering.LinearGaussianModel, got {type(model).__name__}"
        )
    n, m, p = model.n, model.m, model.p
    yt = _signal("y", y, p, f"p = {p} outputs of the model")
    if device is None and isinstance(y, torch.Tensor):
        device = y.device
    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    batched = yt.ndim == 3
    y3 = (yt if batched else yt[None]).to(device=dev, dtype=dt)
    T = y3.shape[1]
    if T == 0:
        raise ShapeError("y has no time steps (T = 0)")
    if torch.isinf(y3).any():
        raise NonFiniteError("y contains infinite entries (NaN marks a missing measurement; inf is refused)")
    if model.steps is not None:
        Tm, Tt = model._steps
        if Tm is not None and Tm != T:
            raise ShapeError(f"the model's per-step C/D/V have {Tm} steps but y has T = {T}")
        if Tt is not None and Tt not in (T, T - 1):
            raise ShapeError(f"the model's per-step A/B/W have {Tt} steps but y has T = {T} (need T or T - 1)")
    if u is None:
        u3 = None
    else:
        if m == 0:
            raise ShapeError("u was given but the model has no input (B is None or has 0 columns)")
        ut = _signal("u", u, m, f"m = {m} inputs of the model")
        batched = batched or ut.ndim == 3
        u3 = (ut if ut.ndim == 3 else ut[None]).to(device=dev, dtype=dt)
        if u3.shape[1] != T:
            raise ShapeError(f"u has {u3.shape[1]} time steps but y has {T}")
        if not torch.isfinite(u3).all():
            raise NonFiniteError("u contains NaN or infinite entries")
        if u3.shape[0] not in (1, y3.shape[0]) and y3.shape[0] != 1:
            raise ShapeError(f"u has batch {u3.shape[0]} but y has batch {y3.shape[0]}")
    batch = max(y3.shape[0], 1 if u3 is None else u3.shape[0])

    kw = dict(device=dev, dtype=dt)
    A = _per_step(model.A, T, transition=True, name="A", **kw)
    W = sym(_per_step(model.W, T, transition=True, name="W", **kw))
    C = _per_step(model.C, T, transition=False, name="C", **kw)
    V = sym(_per_step(model.V, T, transition=False, name="V", **kw))
    m0 = tensor(model.m0, dev, dt)[None]
    P0 = sym(tensor(model.P0, dev, dt))[None]
    c = None  # B u[t] for the transitions t -> t + 1, shape (bu, T - 1, n)
    z = y3  # y - D u
    if u3 is not None:
        Bm = _per_step(model.B, T, transition=True, name="B", **kw)
        if T > 1:
            c = _mv(Bm, u3[:, : T - 1])
        if model.D is not None:
            Dm = _per_step(model.D, T, transition=False, name="D", **kw)
            z = y3 - _mv(Dm, u3)
    missing = torch.isnan(y3)
    any_missing = bool(missing.any())
    if any_missing:
        obs = ~missing
        if y3.shape[0] > 1 and bool((missing == missing[:1]).all()):
            obs = obs[:1]  # the same pattern everywhere: covariances stay shared
        z = torch.where(missing, torch.zeros((), **kw), z)
        of = obs.to(dt)
        H = C * of[..., None]  # (bo, T, p, n): the rows of missing components dropped
        R = V * of[..., :, None] * of[..., None, :] + torch.diag_embed(1.0 - of)
        nobs = of.sum(-1)
    else:
        H, R = C, V
        nobs = torch.full((1, 1), float(p), **kw)
    if z.shape[0] != batch:
        z = z.expand(batch, -1, -1)
    return SimpleNamespace(
        n=n, p=p, T=T, batch=batch, batched=batched, device=dev, dtype=dt,
        A=A, W=W, H=H, R=R, c=c, z=z, m0=m0, P0=P0, nobs=nobs,
        eye=torch.eye(n, **kw),
    )


# --------------------------------------------------------------------------------------
# Sequential filter and smoother
# --------------------------------------------------------------------------------------


def _steps(M: torch.Tensor, T: int) -> list[torch.Tensor]:
    """Per-step views ``M[:, t]`` of a ``(bm, k, ...)`` tensor for ``t < T`` (constant: one view)."""
    if M.shape[1] == 1:
        return [M[:, 0]] * T
    return list(M.unbind(1)[:T])


def _filter_sequential(pp: SimpleNamespace, chol: _Chol) -> tuple[torch.Tensor, ...]:
    T, I = pp.T, pp.eye
    # A, W are shared by the batch: 2-D per step. C, V (with missing rows dropped) are 2-D
    # when the batch shares them (then so does P), else 3-D (B, ., .).
    shared = pp.H.shape[0] == 1 and pp.R.shape[0] == 1
    Hs, Rs = _steps(pp.H, T), _steps(pp.R, T)
    if shared:
        vm = torch.matmul  # v M' as (B, k) @ (k, l)
        Hs, Rs = [h[0] for h in Hs], [r[0] for r in Rs]
        P = pp.P0[0]
    else:
        vm = lambda v, Mt: (v.unsqueeze(-2) @ Mt).squeeze(-2)
        P = pp.P0
    As = [a[0] for a in _steps(pp.A, T - 1)]
    Ws = [w[0] for w in _steps(pp.W, T - 1)]
    zs = pp.z.unbind(1)
    cs = None if pp.c is None else pp.c.unbind(1)
    m = pp.m0
    means, covs, pmeans, pcovs = [], [], [], []
    for t in range(T):
        if t > 0:
            F = As[t - 1]
            m = m @ F.mT
            if cs is not None:
                m = m + cs[t - 1]
            P = sym(F @ P @ F.mT + Ws[t - 1])
        pmeans.append(m)
        pcovs.append(P)
        H, R = Hs[t], Rs[t]
        HP = H @ P
        L = chol(HP @ H.mT + R, "the innovation covariance C P C' + V")
        Kt = torch.cholesky_solve(HP, L)  # K' = S^{-1} C P
        m = m + vm(zs[t] - vm(m, H.mT), Kt)
        K = Kt.mT
        P = joseph(P, I - K @ H, K, R)
        means.append(m)
        covs.append(P)

    def stack(xs: list[torch.Tensor], matrix: bool) -> torch.Tensor:
        return torch.stack(xs)[None] if matrix and shared else _bstack(xs)

    return stack(means, False), stack(covs, True), stack(pmeans, False), stack(pcovs, True)


def _smoother_sequential(pp: SimpleNamespace, m, P, pm, pP, chol: _Chol) -> tuple[torch.Tensor, torch.Tensor]:
    T = pp.T
    ms, Ps = [m[:, T - 1]], [P[:, T - 1]]
    msk, Psk = ms[0], Ps[0]
    As = _steps(pp.A, T - 1)
    ml, Pl, pml, pPl = m.unbind(1), P.unbind(1), pm.unbind(1), pP.unbind(1)
    for t in range(T - 2, -1, -1):
        Pt = Pl[t]
        L = chol(pPl[t + 1], "the predicted covariance A P A' + W (needed by the smoother)")
        E = torch.cholesky_solve(As[t] @ Pt, L).mT  # P A' P[t+1|t]^{-1}
        msk = ml[t] + _mv(E, msk - pml[t + 1])
        Psk = sym(Pt + E @ (Psk - pPl[t + 1]) @ E.mT)
        ms.append(msk)
        Ps.append(Psk)
    ms.reverse()
    Ps.reverse()
    return torch.stack(ms, dim=1), _bstack(Ps)


# --------------------------------------------------------------------------------------
# Parallel filter: covariance form (Särkkä & García-Fernández 2021)
# --------------------------------------------------------------------------------------


def _cov_op(e1, e2):
    A1, b1, C1, eta1, J1 = e1
    A2, b2, C2, eta2, J2 = e2
    I = torch.eye(A1.shape[-1], dtype=A1.dtype, device=A1.device)
    X = I + C1 @ J2
    LU, piv, _ = torch.linalg.lu_factor_ex(X)
    A2X = torch.linalg.lu_solve(LU, piv, A2, left=False)  # A2 (I + C1 J2)^{-1}
    # A1' (I + J2 C1)^{-1} = ((I + C1 J2)^{-1} A1)'   (C1, J2 symmetric)
    A1X = torch.linalg.lu_solve(LU, piv, A1).mT
    A = A2X @ A1
    b = _mv(A2X, b1 + _mv(C1, eta2)) + b2
    C = sym(A2X @ C1 @ A2.mT + C2)
    eta = _mv(A1X, eta2 - _mv(J2, b1)) + eta1
    J = sym(A1X @ J2 @ A1 + J1)
    return A, b, C, eta, J


def _gain(H: torch.Tensor, P: torch.Tensor, R: torch.Tensor, chol: _Chol, what: str
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Kalman gain ``K = P H' S^{-1}`` and the Cholesky factor of ``S = H P H' + R`` (symmetrised)."""
    HP = H @ P
    L = chol(sym(HP @ H.mT + R), what)
    return torch.cholesky_solve(HP, L).mT, L


def _cov_elements(pp: SimpleNamespace, chol: _Chol) -> tuple[torch.Tensor, ...]:
    I, T = pp.eye, pp.T
    # first element: the prior updated with y[0]
    H0, R0 = _at(pp.H, 0), _at(pp.R, 0)
    K0, _ = _gain(H0, pp.P0, R0, chol, "the innovation covariance C P C' + V")
    b0 = pp.m0 + _mv(K0, pp.z[:, 0] - _mv(H0, pp.m0))
    C0 = joseph(pp.P0, I - K0 @ H0, K0, R0)
    first = (
        torch.zeros_like(C0)[:, None], b0[:, None], C0[:, None],
        torch.zeros_like(b0[:1])[:, None], torch.zeros_like(C0[:1])[:, None],
    )
    if T == 1:
        return first
    F, Q = pp.A, pp.W  # (1, 1 or T-1, n, n)
    H, R = _from(pp.H, 1), _from(pp.R, 1)
    z = pp.z[:, 1:]
    K, Ls = _gain(H, Q, R, chol, "the innovation covariance C W C' + V")
    IKH = I - K @ H
    Ak = IKH @ F
    Ck = joseph(Q, IKH, K, R)
    r = z if pp.c is None else z - _mv(H, pp.c)
    bk = _mv(K, r) if pp.c is None else _mv(K, r) + pp.c
    HF = H @ F
    Y = torch.linalg.solve_triangular(Ls, HF, upper=False)
    Jk = Y.mT @ Y
    etak = _mv(HF.mT, _cho_solve_v(Ls, r))
    rest = (Ak, bk, Ck, etak, Jk)
    return tuple(_expand_cat(f, g, T) for f, g in zip(first, rest))


def _expand_cat(first: torch.Tensor, rest: torch.Tensor, T: int) -> torch.Tensor:
    """Concatenate the first element and the generic ones (a constant generic element is
    expanded to its ``T - 1`` steps)."""
    if rest.shape[1] != T - 1:
        rest = rest.expand(rest.shape[0], T - 1, *rest.shape[2:])
    return _bcat([first, rest], dim=1)


def _filter_parallel_cov(pp: SimpleNamespace, chol: _Chol, scan: str) -> tuple[torch.Tensor, torch.Tensor]:
    elems = _cov_elements(pp, chol)
    _, b, C, _, _ = associative_scan(_cov_op, elems, method=scan)
    return b, C


# --------------------------------------------------------------------------------------
# Parallel filter: information form
# --------------------------------------------------------------------------------------
#
# Element k is a Gaussian potential on the pair (x[k-1], x[k]) in information form,
#     ψ_k(x, x') ∝ exp(-½ [x; x']' [[J11, J12], [J12', J22]] [x; x'] + [h1; h2]' [x; x']),
# namely p(x[k] | x[k-1]) p(y[k] | x[k]) for k ≥ 1 and p(x[0]) p(y[0] | x[0]) for k = 0 (its
# x[-1] blocks are zero). Combining two neighbours multiplies the potentials and integrates
# out the shared state (a Schur complement), which is associative; the prefix up to k is
# ∝ p(x[k], y[0..k]), i.e. the filtered density in information form (J22, h2).


def _info_op(chol: _Chol):
    def op(a, b):
        a11, a12, a22, a1, a2 = a
        b11, b12, b22, b1, b2 = b
        Lk = chol(sym(a22 + b11), "the information matrix of a shared state")
        Ya = torch.linalg.solve_triangular(Lk, a12.mT, upper=False)
        Yb = torch.linalg.solve_triangular(Lk, b12, upper=False)
        yv = _tri_solve_v(Lk, a2 + b1)
        J11 = sym(a11 - Ya.mT @ Ya)
        J12 = -(Ya.mT @ Yb)
        J22 = sym(b22 - Yb.mT @ Yb)
        h1 = a1 - _mv(Ya.mT, yv)
        h2 = b2 - _mv(Yb.mT, yv)
        return J11, J12, J22, h1, h2

    return op


def _info_elements(pp: SimpleNamespace, chol: _Chol) -> tuple[torch.Tensor, ...]:
    T = pp.T

    def meas_info(H, R, z):
        Lr = chol(R, "V")
        Y = torch.linalg.solve_triangular(Lr, H, upper=False)
        return Y.mT @ Y, _mv(Y.mT, _tri_solve_v(Lr, z))  # C' V^{-1} C, C' V^{-1} z

    Lp = _require_pd(pp.P0, "P0 must be positive definite for form='information' (use form='covariance')")
    HRH0, HRz0 = meas_info(_at(pp.H, 0), _at(pp.R, 0), pp.z[:, 0])
    J22_0 = sym(torch.cholesky_solve(pp.eye[None], Lp) + HRH0)
    h2_0 = _cho_solve_v(Lp, pp.m0) + HRz0
    Z = torch.zeros_like(J22_0[:1])
    zv = torch.zeros_like(pp.m0)
    first = (Z[:, None], Z[:, None], J22_0[:, None], zv[:, None], h2_0[:, None])
    if T == 1:
        return first
    F = pp.A
    Lq = _require_pd(pp.W, "W must be positive definite for form='information' (use form='covariance')")
    Qi = torch.cholesky_solve(pp.eye.expand_as(Lq), Lq)
    QiF = torch.cholesky_solve(F, Lq)
    HRH, HRz = meas_info(_from(pp.H, 1), _from(pp.R, 1), pp.z[:, 1:])
    J11 = sym(F.mT @ QiF)
    J12 = -QiF.mT
    J22 = sym(Qi + HRH)
    if pp.c is None:
        h1 = torch.zeros_like(pp.m0)[:, None]
        h2 = HRz
    else:
        h1 = -_mv(QiF.mT, pp.c)
        h2 = _mv(Qi, pp.c) + HRz
    rest = (J11, J12, J22, h1, h2)
    return tuple(_expand_cat(f, g, T) for f, g in zip(first, rest))


def _filter_parallel_info(pp: SimpleNamespace, chol: _Chol, scan: str) -> tuple[torch.Tensor, torch.Tensor]:
    elems = _info_elements(pp, chol)
    _, _, Lam, _, nu = associative_scan(_info_op(chol), elems, method=scan)
    L = chol(Lam, "the filtered information matrix")
    P = sym(torch.cholesky_solve(pp.eye.expand_as(L), L))
    m = _cho_solve_v(L, nu)
    return m, P


# --------------------------------------------------------------------------------------
# Parallel smoother
# --------------------------------------------------------------------------------------


def _smooth_op(a, b):
    Ea, ga, La = a
    Eb, gb, Lb = b
    return Ea @ Eb, _mv(Ea, gb) + ga, sym(Ea @ Lb @ Ea.mT + La)


def _smoother_parallel(pp, m, P, pm, pP, chol: _Chol, scan: str) -> tuple[torch.Tensor, torch.Tensor]:
    T = pp.T
    if T == 1:
        return m, P
    F, Q = pp.A, pp.W
    Pk = P[:, :-1]
    L = chol(pP[:, 1:], "the predicted covariance A P A' + W (needed by the smoother)")
    E = torch.cholesky_solve(F @ Pk, L).mT  # P A' P[t+1|t]^{-1}
    Lk = joseph(Pk, pp.eye - E @ F, E, Q)
    g = m[:, :-1] - _mv(E, pm[:, 1:])
    last_P = P[:, -1:]
    elems = (
        _bcat([E, torch.zeros_like(last_P)], 1),
        _bcat([g, m[:, -1:]], 1),
        _bcat([Lk, last_P], 1),
    )
    _, ms, Ps = associative_scan(_smooth_op, elems, reverse=True, method=scan)
    return ms, Ps


# --------------------------------------------------------------------------------------
# Shared post-processing
# --------------------------------------------------------------------------------------


def _predicted(pp: SimpleNamespace, m: torch.Tensor, P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x̂[t|t-1]``, ``P[t|t-1]`` from the filtered moments (vectorised over t)."""
    if pp.T == 1:
        return pp.m0[:, None].expand(m.shape[0], 1, -1), pp.P0[:, None].expand(P.shape[0], 1, -1, -1)
    F = pp.A
    pm = _mv(F, m[:, :-1])
    if pp.c is not None:
        pm = pm + pp.c
    pP = sym(F @ P[:, :-1] @ F.mT + pp.W)
    return _bcat([pp.m0[:, None], pm], 1), _bcat([pp.P0[:, None], pP], 1)


def _log_likelihood(pp: SimpleNamespace, pm: torch.Tensor, pP: torch.Tensor, chol: _Chol) -> torch.Tensor:
    """``Σ_t log N(z[t]; H x̂[t|t-1], H P[t|t-1] H' + R)`` over the observed components, ``(B,)``."""
    H, R = pp.H, pp.R
    L = chol(sym(H @ pP @ H.mT + R), "the innovation covariance C P C' + V")
    e = pp.z - _mv(H, pm)
    w = _tri_solve_v(L, e)
    quad = (w * w).sum(-1)  # (B, T)
    logdet = 2.0 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)  # (bl, T or 1)
    terms = -0.5 * (quad + logdet + pp.nobs * _LOG_2PI)
    if terms.shape[1] != pp.T:
        terms = terms.expand(-1, pp.T)
    return terms.sum(-1)


def _check_args(method: str, form: str, scan: str) -> None:
    if method not in METHODS:
        raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
    if form not in FORMS:
        raise ConfigError(f"form must be one of {FORMS}, got {form!r}")
    if method == "sequential" and form != "covariance":
        raise ConfigError(f"form={form!r} is a variant of the parallel filter; use method='parallel'")
    if scan not in SCAN_METHODS:
        raise ConfigError(f"scan must be one of {SCAN_METHODS}, got {scan!r}")


class _Forward(NamedTuple):
    """The forward pass shared by :func:`kalman_filter` and :func:`rts_smoother` (internal shapes)."""

    pp: SimpleNamespace
    chol: _Chol
    method: str
    form: str | None
    m: torch.Tensor
    P: torch.Tensor
    pm: torch.Tensor
    pP: torch.Tensor
    ll: torch.Tensor

    def result(self) -> FilterResult:
        pp = self.pp
        return FilterResult(
            means=_finish(pp, self.m),
            covariances=_finish(pp, self.P, cov=True),
            predicted_means=_finish(pp, self.pm),
            predicted_covariances=_finish(pp, self.pP, cov=True),
            log_likelihood=_finish(pp, self.ll),
            method=self.method,
            form=self.form,
        )


def _run_filter(model: Any, y: Any, u: Any, method: str, form: str, scan: str, dtype: Any, device: Any) -> _Forward:
    """Check the options, prepare the data and run the forward filter (Cholesky failures unchecked)."""
    _check_args(method, form, scan)
    pp = _prepare(model, y, u, dtype, device)
    chol = _Chol()
    if method == "auto":
        free = None
        if pp.device.type == "cuda":
            free = float(torch.cuda.mem_get_info(pp.device)[0])
        method = choose_method(pp.T, pp.n, pp.batch, pp.device, dtype=pp.dtype, free_memory=free)
    if method == "sequential":
        m, P, pm, pP = _filter_sequential(pp, chol)
        form_used = None
    else:
        if form == "covariance":
            m, P = _filter_parallel_cov(pp, chol, scan)
        else:
            m, P = _filter_parallel_info(pp, chol, scan)
        pm, pP = _predicted(pp, m, P)
        form_used = form
    if m.shape[0] != pp.batch:
        m = m.expand(pp.batch, -1, -1)
        pm = pm.expand(pp.batch, -1, -1)
    return _Forward(pp, chol, method, form_used, m, P, pm, pP, _log_likelihood(pp, pm, pP, chol))


def _finish(pp: SimpleNamespace, x: torch.Tensor, cov: bool = False) -> torch.Tensor:
    """Drop the batch dim of shared covariances (and of everything for unbatched input)."""
    if cov and x.shape[0] == 1:
        return x[0]
    return x if pp.batched else x[0]


def _check_finite(*xs: torch.Tensor) -> None:
    for x in xs:
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteError(
                "the filter produced NaN or infinite values (overflow: an unstable model over a long "
                "horizon with too little precision? try dtype=torch.float64)"
            )


# --------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------


def kalman_filter(
    model: Plant | LinearGaussianModel,
    y: Any,
    u: Any = None,
    *,
    method: str = "auto",
    form: str = "covariance",
    scan: str = "odd_even",
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
) -> FilterResult:
    """Kalman filter of a batch of measurement sequences, sequential or time-parallel.

    Parameters
    ----------
    model : Plant or LinearGaussianModel
        The model; a :class:`LinearGaussianModel` may be time-varying and hold torch
        tensors that require grad.
    y : array_like or torch.Tensor, shape (B, T, p) or (T, p)
        Measurements ``y[t] = C x[t] + D u[t] + v[t]``. NaN entries are missing (their rows
        are dropped at that step; a fully NaN ``y[t]`` means no update). ``inf`` is refused.
    u : array_like or torch.Tensor, shape (B, T, m) or (T, m), optional
        Inputs: ``u[t]`` enters ``x[t+1]`` through ``B`` and ``y[t]`` through ``D``. A
        ``(T, m)`` input is shared by the batch. ``None``: no input.
    method : {"auto", "sequential", "parallel"}, optional
        ``"sequential"``: the step-by-step recursion (Joseph form). ``"parallel"``: an
        associative scan, ``O(log T)`` depth. ``"auto"`` (default): by :func:`choose_method`.
    form : {"covariance", "information"}, optional
        Elements of the parallel scan: Särkkä & García-Fernández's covariance form (default),
        or the information form (needs ``W`` and ``P0`` positive definite). Only for the
        parallel method (``"information"`` with ``method="sequential"`` raises; with
        ``"auto"`` it applies when the parallel method is chosen).
    scan : {"odd_even", "hillis_steele"}, optional
        The scan algorithm of :func:`lqgt.scan.associative_scan`.
    dtype : torch.dtype or str, optional
        Computation dtype; float64 by default.
    device : torch.device or str, optional
        Computation device; the device of ``y`` if it is a tensor, else CPU.

    Returns
    -------
    FilterResult
        Filtered and predicted moments and the log-likelihood (shapes in its docstring).

    Raises
    ------
    ShapeError
        ``y``, ``u`` or the model's per-step matrices have inconsistent shapes.
    NonFiniteError
        ``y`` has an infinite entry, ``u`` a NaN or infinite one, or the filter overflowed.
    NotPositiveDefiniteError
        A covariance the filter factorises lost positive definiteness (or, in the
        information form, ``W`` or ``P0`` is singular).
    ConfigError
        ``method``, ``form``, ``scan``, ``dtype`` or ``device`` is not an allowed value.

    Examples
    --------
    >>> import numpy as np, lqgt
    >>> from lqgt.filtering import kalman_filter
    >>> plant = lqgt.Plant([[0.9]], [[1.0]], [[1.0]], W=[[0.1]], V=[[0.5]])
    >>> y = np.random.default_rng(0).standard_normal((4, 100, 1))
    >>> a = kalman_filter(plant, y, method="sequential")
    >>> b = kalman_filter(plant, y, method="parallel")
    >>> a.means.shape, a.covariances.shape, a.log_likelihood.shape
    (torch.Size([4, 100, 1]), torch.Size([100, 1, 1]), torch.Size([4]))
    >>> bool((a.means - b.means).abs().max() < 1e-12)
    True
    """
    fw = _run_filter(model, y, u, method, form, scan, dtype, device)
    fw.chol.check()
    _check_finite(fw.m, fw.P, fw.ll)
    return fw.result()


def rts_smoother(
    model: Plant | LinearGaussianModel,
    y: Any,
    u: Any = None,
    *,
    method: str = "auto",
    form: str = "covariance",
    scan: str = "odd_even",
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
) -> SmootherResult:
    """Rauch–Tung–Striebel smoother: ``E[x[t] | y[0..T-1]]`` and its covariance.

    The forward pass is :func:`kalman_filter` with the same arguments; the backward pass is
    the RTS recursion (``"sequential"``) or a reverse associative scan of the elements
    ``(E, g, L)`` of Särkkä & García-Fernández (``"parallel"``).

    Parameters
    ----------
    model : Plant or LinearGaussianModel
        The model.
    y : array_like or torch.Tensor, shape (B, T, p) or (T, p)
        Measurements (NaN: missing, as in :func:`kalman_filter`).
    u : array_like or torch.Tensor, shape (B, T, m) or (T, m), optional
        Inputs.
    method : {"auto", "sequential", "parallel"}, optional
        For both passes; ``"auto"`` by :func:`choose_method`.
    form : {"covariance", "information"}, optional
        Form of the parallel forward pass.
    scan : {"odd_even", "hillis_steele"}, optional
        The scan algorithm.
    dtype : torch.dtype or str, optional
        Computation dtype; float64 by default.
    device : torch.device or str, optional
        Computation device; the device of ``y`` if it is a tensor, else CPU.

    Returns
    -------
    SmootherResult
        Smoothed moments and the forward :class:`FilterResult`.

    Raises
    ------
    ShapeError, NonFiniteError, NotPositiveDefiniteError, ConfigError
        As :func:`kalman_filter`; also ``NotPositiveDefiniteError`` when a predicted
        covariance ``A P A' + W`` is singular (the smoother gain needs its inverse).
    """
    fw = _run_filter(model, y, u, method, form, scan, dtype, device)
    pp, moments = fw.pp, (fw.m, fw.P, fw.pm, fw.pP)
    if fw.method == "sequential":
        ms, Ps = _smoother_sequential(pp, *moments, fw.chol)
    else:
        ms, Ps = _smoother_parallel(pp, *moments, fw.chol, scan)
    fw.chol.check()
    _check_finite(fw.m, fw.P, fw.ll, ms, Ps)
    return SmootherResult(means=_finish(pp, ms), covariances=_finish(pp, Ps, cov=True), filtered=fw.result(),
                          method=fw.method)
