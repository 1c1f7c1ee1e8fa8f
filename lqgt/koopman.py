"""Koopman lifting: dictionaries, EDMD with control, the lifted Kalman filter and lifted LQR (SPEC §4).

A dictionary ``ψ: R^n -> R^N`` that contains the state itself (``x = P ψ(x)``) lifts the
plant into coordinates where it is modelled as linear:

```text
ψ(x[t+1]) ≈ K ψ(x[t]) + B u[t] + wψ,   wψ ~ N(0, W)        (EDMDc, least squares)
y[t]      ≈ C ψ(x[t]) + v,              v ~ N(0, V + V_fit)
```

:func:`fit_edmdc` fits ``(K, B, C)`` on snapshot pairs and takes ``W`` (and ``V_fit``) from
the residual covariances; :class:`Koopman` is the fitted model;
:class:`KoopmanFilter` is the exact linear Kalman filter of the lifted model, with state
estimate ``x̂ = P ψ̂`` (no Jacobians); :class:`KoopmanLQR` is the LQR gain of the lifted
model with cost on ``x = P ψ``, applied as the nonlinear state feedback
``u = u_eq − G (ψ(x̂) − ψ(x_eq))``.

Coordinates: the model is fitted in the plant's raw coordinates; the only approximations
are the finite dictionary (projection of the Koopman operator on its span) and Gaussian
lifted noise. With the identity dictionary on a linear plant, everything is exact.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._linalg import as_matrix, as_vector, check_psd, psd_sqrt, symmetrize
from ._torch import tensor
from .closed_loop import check_form
from .errors import (
    ConfigError,
    LqgtError,
    NonFiniteError,
    NotStabilizableError,
    RiccatiError,
    ShapeError,
)
from .estimators._gaussian import check_covariance, joseph, step_timing, sym
from .nonlinear import NonlinearPlant
from .riccati import dlqe, dlqr

__all__ = [
    "RBF",
    "Dictionary",
    "DictionaryError",
    "EDMDc",
    "FunctionDictionary",
    "Identity",
    "Koopman",
    "KoopmanFilter",
    "KoopmanLQR",
    "Polynomial",
    "RankDeficientError",
    "TimeDelay",
    "as_dictionary",
    "fit_edmdc",
    "lifted_moments",
    "MAX_FEATURES",
]


class DictionaryError(ConfigError):
    """A dictionary does not contain the state, or returns the wrong shape."""


class RankDeficientError(LqgtError):
    """The snapshot matrix of an EDMD fit is rank-deficient (the least-squares fit is not unique)."""


# ---------------------------------------------------------------------------------------------
# Dictionaries
# ---------------------------------------------------------------------------------------------
class Dictionary:
    """Base class of a lifting ``ψ(x)``: a batched torch map ``(B, n·(delays+1)) -> (B, N)``.

    Subclasses set ``n`` (the plant's state dimension), ``dim`` (``N``), ``delays``
    (0 unless the input is a window of past states), ``state_index`` (the ``n`` columns of
    ``ψ`` that equal the current state, so ``x = P ψ``), ``constant_index`` (columns that
    are identically 1) and ``names``, and implement :meth:`__call__`.
    """

    n: int
    dim: int
    delays: int = 0
    state_index: tuple[int, ...]
    constant_index: tuple[int, ...] = ()
    names: tuple[str, ...]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def input_dim(self) -> int:
        """Width of the input: ``n`` (or ``n·(delays+1)`` for a window ``[x_t, x_{t-1}, …]``)."""
        return self.n * (self.delays + 1)

    def projection(self) -> np.ndarray:
        """The ``(n, N)`` selection matrix ``P`` with ``x = P ψ(x)``."""
        P = np.zeros((self.n, self.dim))
        P[np.arange(self.n), list(self.state_index)] = 1.0
        return P

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n}, dim={self.dim})"

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != self.input_dim:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ShapeError(f"{type(self).__name__} lifts inputs of shape (B, {self.input_dim}), got {got}")

    def _state_layout(self, constant: bool, extra: Sequence[str]) -> None:
        """Columns ``[1 (if constant), x_0, …, x_{n-1}, *extra]``: set names, dim and the indices."""
        self.names = tuple((["1"] if constant else []) + [f"x{k}" for k in range(self.n)] + list(extra))
        self.dim = len(self.names)
        off = 1 if constant else 0
        self.state_index = tuple(range(off, off + self.n))
        self.constant_index = (0,) if constant else ()

    def _stack(self, x: torch.Tensor, *features: torch.Tensor) -> torch.Tensor:
        """``[1 (if self.constant), x, *features]`` along the last dim (subclasses with a ``constant`` flag)."""
        cols = [x.new_ones(x.shape[0], 1)] if self.constant else []
        return torch.cat(cols + [x, *features], dim=-1)


#: Most features a :class:`Polynomial` dictionary may have (``C(n + degree, degree)``).
MAX_FEATURES = 10_000
#: Most stored monomial index entries (``Σ_d d · C(n + d - 1, d)``) of a :class:`Polynomial`.
_MAX_INDEX_ENTRIES = 20_000_000


def _whole(name: str, v: Any) -> int:
    """``v`` as an int when it is integral (no bools, no silent truncation of 1.5, no None)."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer, float, np.floating)):
        raise DictionaryError(f"{name} must be an integer, got {v!r} ({type(v).__name__})")
    if isinstance(v, (float, np.floating)) and not (math.isfinite(v) and float(v).is_integer()):
        raise DictionaryError(f"{name} must be an integer, got {v!r}")
    return int(v)


def _check_polynomial_size(n: int, degree: int) -> None:
    """Refuse a polynomial dictionary too large to build, before building it (counts only)."""
    log10_N = (math.lgamma(n + degree + 1) - math.lgamma(n + 1) - math.lgamma(degree + 1)) / math.log(10)
    N = math.comb(n + degree, degree) if log10_N < 15 else None  # exact count only where it is cheap
    if N is None or N > MAX_FEATURES:
        shown = f"{N:,}" if N is not None else f"about 10^{math.floor(log10_N)}"
        raise DictionaryError(f"Polynomial(n={n}, degree={degree}) would have C(n + degree, degree) = {shown} features, "
                              f"more than MAX_FEATURES = {MAX_FEATURES:,}; use a lower degree, fewer states, or an "
                              "RBF/FunctionDictionary")
    entries = sum(d * math.comb(n + d - 1, d) for d in range(2, degree + 1))
    if entries > _MAX_INDEX_ENTRIES:
        raise DictionaryError(f"Polynomial(n={n}, degree={degree}) would store {entries:,} monomial index entries "
                              f"(more than {_MAX_INDEX_ENTRIES:,}); use a lower degree")


def _monomial_name(idx: Sequence[int]) -> str:
    if not idx:
        return "1"
    parts = []
    for k, grp in itertools.groupby(idx):
        e = len(list(grp))
        parts.append(f"x{k}" if e == 1 else f"x{k}^{e}")
    return "*".join(parts)


class Polynomial(Dictionary):
    """All monomials of the state up to total degree ``degree`` (graded lexicographic order).

    ``ψ = [1, x_0, …, x_{n-1}, x_0², x_0 x_1, …]``; ``N = C(n + degree, degree)`` (one less
    without the constant).

    Parameters
    ----------
    n : int
        State dimension.
    degree : int
        Highest total degree (>= 1).
    constant : bool
        Include the constant 1 (first column).

    Raises
    ------
    DictionaryError
        ``n`` or ``degree`` not an integer >= 1, or more than :data:`MAX_FEATURES`
        features (``C(n + degree, degree)``, counted before anything is built; the
        message gives the count).
    """

    def __init__(self, n: int, degree: int, *, constant: bool = True) -> None:
        n, degree = _whole("n", n), _whole("degree", degree)
        if n < 1 or degree < 1:
            raise DictionaryError(f"Polynomial needs n >= 1 and degree >= 1, got n={n}, degree={degree}")
        _check_polynomial_size(n, degree)
        self.n, self.degree, self.constant = n, degree, bool(constant)
        self._groups = [
            np.array(list(itertools.combinations_with_replacement(range(self.n), d)), dtype=np.int64)
            for d in range(2, self.degree + 1)
        ]
        self._state_layout(self.constant, [_monomial_name(tuple(r)) for g in self._groups for r in g])
        self._idx_cache: dict[Any, list[torch.Tensor]] = {}

    def __repr__(self) -> str:
        return f"Polynomial(n={self.n}, degree={self.degree}, constant={self.constant}, dim={self.dim})"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        key = x.device
        if key not in self._idx_cache:
            self._idx_cache[key] = [torch.as_tensor(g, device=x.device) for g in self._groups]
        return self._stack(x, *(x[:, g].prod(-1) for g in self._idx_cache[key]))


class Identity(Polynomial):
    """The identity lifting ``ψ(x) = x`` (EDMDc is then DMDc, the linear least-squares model).

    Parameters
    ----------
    n : int
        State dimension.
    """

    def __init__(self, n: int) -> None:
        super().__init__(n, 1, constant=False)

    def __repr__(self) -> str:
        return f"Identity(n={self.n})"


class RBF(Dictionary):
    """The state and radial basis functions: ``ψ = [x, φ(‖x − c_1‖), …, φ(‖x − c_k‖)]`` (``[1, …]``).

    Parameters
    ----------
    centers : array_like, shape (k, n)
        Centres ``c_j``.
    width : float
        Length scale ``s`` of the Gaussian ``φ(r) = exp(−r² / (2 s²))``; ignored by the
        thin-plate spline.
    kernel : {"gaussian", "thin_plate"}
        ``exp(−r²/(2s²))`` or ``r² log r``.
    constant : bool
        Prepend the constant 1.
    """

    KERNELS = ("gaussian", "thin_plate")

    def __init__(self, centers, *, width: float = 1.0, kernel: str = "gaussian", constant: bool = False) -> None:
        C = as_matrix("centers", centers)
        if kernel not in self.KERNELS:
            raise DictionaryError(f"kernel must be one of {self.KERNELS}, got {kernel!r}")
        if not (math.isfinite(width) and width > 0):
            raise DictionaryError(f"width must be a positive number, got {width!r}")
        self.centers, self.width, self.kernel, self.constant = C, float(width), kernel, bool(constant)
        self.n = C.shape[1]
        self._state_layout(self.constant, [f"rbf{j}" for j in range(C.shape[0])])

    def __repr__(self) -> str:
        return f"RBF(n={self.n}, centers={self.centers.shape[0]}, kernel={self.kernel!r}, width={self.width})"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        c = tensor(self.centers, x.device, x.dtype)
        r2 = ((x.unsqueeze(-2) - c) ** 2).sum(-1)                      # (B, k)
        if self.kernel == "gaussian":
            phi = torch.exp(-r2 / (2.0 * self.width**2))
        else:
            phi = 0.5 * r2 * torch.log(r2.clamp_min(torch.finfo(x.dtype).tiny))  # r² log r
        return self._stack(x, phi)


class TimeDelay(Dictionary):
    """Delay coordinates: lifts the window ``[x_t, x_{t-1}, …, x_{t-d}]`` to ``[ψ_in(x_t), x_{t-1}, …, x_{t-d}]``.

    The input of this dictionary is the stacked window ``(B, n·(d+1))`` (current state
    first); :meth:`Koopman.from_trajectories` builds the windows from trajectories, and
    :class:`KoopmanFilter` starts from a window of equal states (the prior says nothing
    about the past). Delay dictionaries cannot be used by :class:`KoopmanLQR`, whose
    policy sees only ``x̂``.

    Parameters
    ----------
    inner : Dictionary or int
        Dictionary of the current state (an ``int`` ``n`` means :class:`Identity` ``(n)``).
    delays : int
        Number of past states ``d`` (>= 1).
    """

    def __init__(self, inner, delays: int) -> None:
        inner = Identity(int(inner)) if isinstance(inner, (int, np.integer)) else inner
        if not isinstance(inner, Dictionary) or inner.delays:
            raise DictionaryError("inner must be a Dictionary without delays (or an int n)")
        if int(delays) < 1:
            raise DictionaryError(f"delays must be >= 1, got {delays}")
        self.inner, self.delays, self.n = inner, int(delays), inner.n
        self.names = inner.names + tuple(f"x{k}[t-{d}]" for d in range(1, self.delays + 1) for k in range(self.n))
        self.dim = len(self.names)
        self.state_index = inner.state_index
        self.constant_index = inner.constant_index

    def __repr__(self) -> str:
        return f"TimeDelay({self.inner!r}, delays={self.delays}, dim={self.dim})"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return torch.cat([self.inner(x[:, : self.n]), x[:, self.n:]], dim=-1)


class FunctionDictionary(Dictionary):
    """A user-supplied batched torch function ``ψ(x)`` ``(B, n) -> (B, N)`` that contains ``x``.

    The columns equal to the state coordinates (and any constant columns) are found on a
    random probe batch at construction.

    Parameters
    ----------
    fn : callable
        The lifting.
    n : int
        State dimension.
    names : sequence of str, optional
        Feature names.

    Raises
    ------
    DictionaryError
        ``fn`` fails, returns the wrong shape, or does not contain every state coordinate.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], n: int, *, names: Sequence[str] | None = None) -> None:
        if not callable(fn):
            raise DictionaryError(f"a dictionary must be callable, got {type(fn).__name__}")
        self.fn, self.n = fn, int(n)
        gen = torch.Generator().manual_seed(12345)
        x = 1.7 * torch.randn(16, self.n, generator=gen, dtype=torch.float64) + 0.3
        try:
            psi = fn(x)
        except Exception as exc:
            raise DictionaryError(f"the dictionary function raised {type(exc).__name__} on a probe batch of shape (16, {self.n}): {exc}") from exc
        if not isinstance(psi, torch.Tensor) or psi.ndim != 2 or psi.shape[0] != 16:
            got = tuple(psi.shape) if isinstance(psi, torch.Tensor) else type(psi).__name__
            raise DictionaryError(f"the dictionary function must map (B, {self.n}) to (B, N); got {got} for B=16")
        self.dim = psi.shape[1]
        found, missing = [], []
        for k in range(self.n):
            err = (psi - x[:, k:k + 1]).abs().amax(0)
            j = int(torch.argmin(err))
            if float(err[j]) <= 1e-12 * (1.0 + float(x[:, k].abs().max())):
                found.append(j)
            else:
                missing.append(k)
        if missing:
            raise DictionaryError(
                f"the dictionary must contain the state x itself (so that x = P psi(x)), but no output column "
                f"equals x[:, k] for k in {missing} on a probe batch; prepend it, e.g. "
                "lambda x: torch.cat([x, g(x)], dim=-1)"
            )
        self.state_index = tuple(found)
        const = torch.nonzero((psi - 1.0).abs().amax(0) == 0).reshape(-1)
        self.constant_index = tuple(int(j) for j in const)
        self.names = tuple(names) if names is not None else tuple(f"psi{j}" for j in range(self.dim))
        if len(self.names) != self.dim:
            raise DictionaryError(f"names has {len(self.names)} entries for {self.dim} features")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.fn(x)


def as_dictionary(d, n: int) -> Dictionary:
    """Return ``d`` as a :class:`Dictionary` of an ``n``-state plant (a callable is wrapped and checked).

    Parameters
    ----------
    d : Dictionary or callable
        The lifting.
    n : int
        State dimension.

    Returns
    -------
    Dictionary
    """
    if isinstance(d, Dictionary):
        if d.n != n:
            raise DictionaryError(f"the dictionary lifts n={d.n} states but the data/plant has n={n}")
        return d
    if callable(d):
        return FunctionDictionary(d, n)
    raise DictionaryError(f"dictionary must be an lqgt.koopman.Dictionary or a callable, got {type(d).__name__}")


# ---------------------------------------------------------------------------------------------
# EDMD with control
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class EDMDc:
    """Result of :func:`fit_edmdc`: the lifted linear model and fit diagnostics.

    Attributes
    ----------
    K : numpy.ndarray, shape (N, N)
        Lifted transition (the finite-section Koopman matrix, ``Kψ``).
    B : numpy.ndarray, shape (N, m)
        Lifted input matrix ``Bψ``.
    C : numpy.ndarray, shape (p, N) or None
        Lifted output matrix ``Cψ`` (``None`` when no outputs were given).
    P : numpy.ndarray, shape (n, N)
        Projection ``x = P ψ``.
    W : numpy.ndarray, shape (N, N)
        Residual covariance of the lifted dynamics (lifted process noise ``Wψ``).
    V_fit : numpy.ndarray, shape (p, p) or None
        Residual covariance of the output fit (zero when ``h`` is in the span of ``ψ``
        and the outputs were noise-free).
    rank : int
        Numerical rank of the regressor ``[ψ(X), U]``.
    singular_values : numpy.ndarray
        Its singular values (descending).
    samples : int
        Number of snapshot pairs.
    ridge : float
        Tikhonov weight used.
    """

    K: np.ndarray
    B: np.ndarray
    C: np.ndarray | None
    P: np.ndarray
    W: np.ndarray
    V_fit: np.ndarray | None
    rank: int
    singular_values: np.ndarray
    samples: int
    ridge: float


def _as_2d(name: str, M, width: int | None = None) -> np.ndarray:
    if isinstance(M, torch.Tensor):
        M = M.detach().cpu().numpy()
    return as_matrix(name, M, (None, width))


def _lift_np(dictionary: Dictionary, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        psi = dictionary(torch.tensor(X, dtype=torch.float64))
    if not isinstance(psi, torch.Tensor) or tuple(psi.shape) != (X.shape[0], dictionary.dim):
        got = tuple(psi.shape) if isinstance(psi, torch.Tensor) else type(psi).__name__
        raise DictionaryError(f"the dictionary returned {got}, expected {(X.shape[0], dictionary.dim)}")
    out = psi.cpu().numpy().astype(np.float64)
    if not np.all(np.isfinite(out)):
        raise NonFiniteError("the dictionary returned NaN or infinite values on the snapshots")
    return out


def _mm(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A @ B`` by torch (avoids numpy's BLAS thread pool on large snapshot matrices)."""
    return (torch.from_numpy(np.ascontiguousarray(A)) @ torch.from_numpy(np.ascontiguousarray(B))).numpy()


def _svd(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD of a tall matrix by torch (float64; respects ``torch.set_num_threads``)."""
    U, s, Vt = torch.linalg.svd(torch.from_numpy(np.ascontiguousarray(Z)), full_matrices=False)
    return U.numpy(), s.numpy(), Vt.numpy()


def _ridge_lstsq(Z: np.ndarray, T: np.ndarray, s, Uz, Vt, ridge: float) -> np.ndarray:
    """``argmin ‖Z Θ − T‖² + ridge ‖Θ‖²`` through the SVD of ``Z`` (thin)."""
    f = s / (s**2 + ridge) if ridge > 0 else np.where(s > 0, 1.0 / np.where(s > 0, s, 1.0), 0.0)
    return Vt.T @ (f[:, None] * _mm(Uz.T, T))


def fit_edmdc(X, U, X_next, dictionary, *, Y=None, ridge: float = 0.0, rcond: float | None = None) -> EDMDc:
    """Fit a lifted linear model by EDMD with control (least squares on snapshot pairs).

    Solves ``min ‖ψ(X_next) − [ψ(X), U] [K, B]'‖² + ridge ‖[K, B]‖²`` and, when ``Y`` is
    given, ``min ‖Y − ψ(X) C'‖² + ridge ‖C‖²``, by the SVD of the regressor.

    Parameters
    ----------
    X : array_like or torch.Tensor, shape (T, n·(delays+1))
        States (windows for a delay dictionary) at the snapshot times.
    U : array_like or torch.Tensor, shape (T, m)
        Inputs applied at those times.
    X_next : array_like or torch.Tensor, shape (T, n·(delays+1))
        The states one step later.
    dictionary : Dictionary or callable
        The lifting; must contain ``x`` (checked).
    Y : array_like or torch.Tensor, shape (T, p), optional
        Outputs at the times of ``X`` (noise-free ``h(X)`` gives ``V_fit`` = approximation
        error only; noisy outputs put the measurement noise into ``V_fit``).
    ridge : float
        Tikhonov weight (>= 0). Needed when the regressor is rank-deficient.
    rcond : float, optional
        Singular values below ``rcond · s_max`` count as zero in the rank;
        ``max(T, N + m) · eps`` by default (as :func:`numpy.linalg.matrix_rank`).

    Returns
    -------
    EDMDc

    Raises
    ------
    ShapeError, NonFiniteError
        Mismatched or non-finite data.
    DictionaryError
        The dictionary does not contain ``x`` or returns the wrong shape.
    ConfigError
        ``ridge`` is not a real number.
    NonFiniteError
        The fit or a residual covariance overflows float64 (data of huge magnitude,
        e.g. near 1e200: rescale them).
    RankDeficientError
        ``[ψ(X), U]`` has numerical rank ``< N + m`` and ``ridge == 0`` (the message gives
        the rank and a ridge to try).
    """
    Xa = _as_2d("X", X)
    Ua = _as_2d("U", U)
    if isinstance(dictionary, Dictionary):
        d_in = dictionary.input_dim
        n = dictionary.n
    else:
        d_in = n = Xa.shape[1]
    dictionary = as_dictionary(dictionary, n)
    Xa = _as_2d("X", Xa, d_in)
    Xn = _as_2d("X_next", X_next, d_in)
    T = Xa.shape[0]
    if Ua.shape[0] != T or Xn.shape[0] != T:
        raise ShapeError(f"X, U and X_next must have the same number of rows (snapshots): got {T}, {Ua.shape[0]}, {Xn.shape[0]}")
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float, np.integer, np.floating)):
        raise ConfigError(f"ridge must be a finite number >= 0, got {ridge!r} ({type(ridge).__name__})")
    ridge = float(ridge)
    if not (math.isfinite(ridge) and ridge >= 0):
        raise ShapeError(f"ridge must be a finite number >= 0, got {ridge}")
    Psi, Psi_n = _lift_np(dictionary, Xa), _lift_np(dictionary, Xn)
    N, m = dictionary.dim, Ua.shape[1]
    Z = np.hstack([Psi, Ua])
    Uz, s, Vt = _svd(Z)
    tol = (max(T, N + m) * np.finfo(float).eps if rcond is None else float(rcond)) * (s[0] if s.size else 0.0)
    rank = int(np.sum(s > tol))
    if rank < N + m and ridge == 0.0:
        s0 = float(s[0]) if s.size else 1.0
        hint = 1e-8 * s0 * s0 if s0 < 1e150 else math.inf  # s0² would overflow: the data need rescaling
        reasons = "fewer snapshots than features" if T < N + m else (
            "linearly dependent dictionary functions on the data, or inputs that do not vary")
        raise RankDeficientError(
            f"the EDMDc regressor [psi(X), U] ({T} snapshots x {N}+{m} columns) has numerical rank {rank} < {N + m} "
            f"({reasons}): the least-squares fit is not unique. "
            + (f"Pass ridge > 0 (e.g. ridge={hint:.2g}, 1e-8 * s_max^2), use more varied data, or a smaller dictionary"
               if math.isfinite(hint) else
               f"The data are of huge magnitude (s_max = {s0:.3g}): rescale the states and inputs, e.g. to unit size")
        )
    Theta = _ridge_lstsq(Z, Psi_n, s, Uz, Vt, ridge)
    K, B = Theta[:N].T, Theta[N:].T
    if not np.all(np.isfinite(Theta)):
        raise NonFiniteError("the EDMDc fit [K, B] is not finite (the lifted data overflow float64; "
                             "rescale the states and inputs, e.g. to unit size)")
    Res = Psi_n - _mm(Z, Theta)
    dof = T - (N + m) if T > N + m else T
    W = _covariance("W", Res, dof)
    C = V_fit = None
    if Y is not None:
        Ya = _as_2d("Y", Y)
        if Ya.shape[0] != T:
            raise ShapeError(f"Y has {Ya.shape[0]} rows, expected {T} (one per snapshot)")
        Up, sp, Vtp = _svd(Psi)
        C = _ridge_lstsq(Psi, Ya, sp, Up, Vtp, ridge).T
        R = Ya - _mm(Psi, C.T)
        dof_y = T - N if T > N else T
        V_fit = _covariance("V_fit", R, dof_y)
    return EDMDc(K=K, B=B, C=C, P=dictionary.projection(), W=W, V_fit=V_fit, rank=rank,
                 singular_values=s, samples=T, ridge=ridge)


def _covariance(name: str, Res: np.ndarray, dof: int) -> np.ndarray:
    """``Res' Res / dof`` computed on ``Res / max|Res|`` (no overflow of the squares while the result fits)."""
    scale = float(np.max(np.abs(Res))) if Res.size else 0.0
    if not math.isfinite(scale):
        raise NonFiniteError(f"the residuals of {name} are not finite (the lifted data overflow float64; "
                             "rescale the states and inputs, e.g. to unit size)")
    if scale == 0.0:
        return np.zeros((Res.shape[1], Res.shape[1]))
    Rs = Res / scale
    with np.errstate(over="ignore"):
        cov = symmetrize(_mm(Rs.T, Rs) / dof * scale * scale)
    if not np.all(np.isfinite(cov)):
        raise NonFiniteError(f"the residual covariance {name} overflows float64 (residuals up to {scale:.3g}, "
                             f"squares up to {scale:.3g}^2); rescale the states and inputs, e.g. to unit size")
    return cov


def _windows(X: torch.Tensor, d: int) -> torch.Tensor:
    """``(B, T, n)`` trajectories -> ``(B, T - d, n (d+1))`` windows ``[x_t, x_{t-1}, …, x_{t-d}]``."""
    T = X.shape[1]
    return torch.cat([X[:, d - j: T - j] for j in range(d + 1)], dim=-1)


class Koopman:
    """A lifted linear model ``ψ+ = K ψ + B u + wψ``, ``y = C ψ + v`` of a nonlinear plant.

    Build it with :meth:`fit` (snapshot pairs), :meth:`from_trajectories` or
    :meth:`from_plant_data` (simulated from a :class:`~lqgt.nonlinear.NonlinearPlant`).

    Parameters
    ----------
    dictionary : Dictionary
        The lifting ``ψ`` (contains ``x``).
    fit : EDMDc
        The fitted matrices and diagnostics.
    dt : float
        Sample time.
    plant : NonlinearPlant, optional
        The plant the data came from; supplies the filter's defaults (``V``, ``m0``, ``P0``).

    Attributes
    ----------
    K, B, C, P, W, V_fit : numpy.ndarray
        As in :class:`EDMDc`.
    n, m, p, N : int
        State, input, output and lifted dimensions.
    """

    def __init__(self, dictionary: Dictionary, fit: EDMDc, *, dt: float = 1.0, plant: NonlinearPlant | None = None) -> None:
        self.dictionary, self.fit_result, self.dt, self.plant = dictionary, fit, float(dt), plant
        self.K, self.B, self.C, self.P, self.W, self.V_fit = fit.K, fit.B, fit.C, fit.P, fit.W, fit.V_fit
        self.n, self.N, self.m = dictionary.n, dictionary.dim, fit.B.shape[1]
        self.p = None if fit.C is None else fit.C.shape[0]

    def __repr__(self) -> str:
        return f"Koopman(n={self.n}, N={self.N}, m={self.m}, p={self.p}, rank={self.fit_result.rank}, {self.dictionary!r})"

    @classmethod
    def fit(cls, X, U, X_next, dictionary, *, Y=None, ridge: float = 0.0, rcond: float | None = None,
            dt: float = 1.0) -> Koopman:
        """Fit on snapshot pairs (see :func:`fit_edmdc` for the parameters).

        Parameters
        ----------
        X, U, X_next : array_like
            Snapshots ``(T, ·)``.
        dictionary : Dictionary or callable
            The lifting.
        Y : array_like, optional
            Outputs ``(T, p)``.
        ridge : float
            Tikhonov weight.
        rcond : float, optional
            Rank tolerance.
        dt : float
            Sample time.

        Returns
        -------
        Koopman
        """
        n = dictionary.n if isinstance(dictionary, Dictionary) else _as_2d("X", X).shape[1]
        d = as_dictionary(dictionary, n)
        return cls(d, fit_edmdc(X, U, X_next, d, Y=Y, ridge=ridge, rcond=rcond), dt=dt)

    @classmethod
    def from_trajectories(cls, X, U, dictionary, *, Y=None, ridge: float = 0.0, rcond: float | None = None,
                          dt: float = 1.0) -> Koopman:
        """Fit on trajectories (all consecutive pairs; windows for a delay dictionary).

        Parameters
        ----------
        X : torch.Tensor or array_like, shape (B, T + 1, n)
            States.
        U : torch.Tensor or array_like, shape (B, T, m)
            Inputs.
        dictionary : Dictionary or callable
            The lifting.
        Y : torch.Tensor or array_like, shape (B, T + 1, p), optional
            Outputs (noise-free ``h(x)`` preferably).
        ridge : float
            Tikhonov weight.
        rcond : float, optional
            Rank tolerance.
        dt : float
            Sample time.

        Returns
        -------
        Koopman
        """
        X = torch.as_tensor(X, dtype=torch.float64)
        U = torch.as_tensor(U, dtype=torch.float64)
        if X.ndim != 3 or U.ndim != 3 or U.shape[:2] != (X.shape[0], X.shape[1] - 1):
            raise ShapeError(f"X must be (B, T+1, n) and U (B, T, m); got {tuple(X.shape)} and {tuple(U.shape)}")
        d = as_dictionary(dictionary, X.shape[2])
        k = d.delays
        if X.shape[1] < k + 2:
            raise ShapeError(f"trajectories of {X.shape[1]} states are too short for {k} delays")
        Wn = _windows(X, k)                                   # (B, T+1-k, ·)
        Xs, Xn = Wn[:, :-1].reshape(-1, Wn.shape[-1]), Wn[:, 1:].reshape(-1, Wn.shape[-1])
        Us = U[:, k:].reshape(-1, U.shape[-1])
        Ys = None
        if Y is not None:
            Y = torch.as_tensor(Y, dtype=torch.float64)
            if Y.ndim != 3 or Y.shape[:2] != X.shape[:2]:
                raise ShapeError(f"Y must be (B, T+1, p) like X; got {tuple(Y.shape)}")
            Ys = Y[:, k:-1].reshape(-1, Y.shape[-1])
        return cls(d, fit_edmdc(Xs, Us, Xn, d, Y=Ys, ridge=ridge, rcond=rcond), dt=dt)

    @classmethod
    def from_plant_data(cls, plant: NonlinearPlant, dictionary, *, batch: int = 100, horizon: int = 100,
                        u_std: float = 1.0, policy: Callable | None = None, x0=None, noise: bool = True,
                        seed: int = 0, ridge: float = 0.0, rcond: float | None = None) -> Koopman:
        """Simulate ``plant`` and fit on the trajectories (outputs ``h(x)`` taken noise-free).

        Inputs are ``u = policy(x) + u_std · N(0, I)`` (``policy`` on the true state, e.g. a
        stabilising controller for an unstable plant; zero when omitted).

        Parameters
        ----------
        plant : NonlinearPlant
            The plant (its ``V``, ``m0``, ``P0`` become the filter's defaults).
        dictionary : Dictionary or callable
            The lifting.
        batch : int
            Number of trajectories.
        horizon : int
            Steps per trajectory.
        u_std : float
            Standard deviation of the random excitation.
        policy : callable, optional
            Feedback ``(B, n) -> (B, m)`` on the true state added to the excitation.
        x0 : array_like, shape (batch, n), optional
            Initial states (drawn from ``N(m0, P0)`` by default).
        noise : bool
            Simulate with process noise (the residual covariance then includes it).
        seed : int
            Seed.
        ridge : float
            Tikhonov weight.
        rcond : float, optional
            Rank tolerance.

        Returns
        -------
        Koopman
        """
        if not isinstance(plant, NonlinearPlant):
            raise ConfigError(f"plant must be a NonlinearPlant, got {type(plant).__name__}")
        gen = torch.Generator().manual_seed(int(seed) + 7919)
        if x0 is not None:
            batch = np.asarray(x0).shape[0]
        E = float(u_std) * torch.randn(int(batch), int(horizon), plant.m, generator=gen, dtype=torch.float64)
        step = {"t": 0}

        def excited(x):
            u = policy(x) + E[:, step["t"]]
            step["t"] += 1
            return u

        tr = plant.sample(horizon, batch=batch, u=E if policy is None else excited, x0=x0, seed=seed, noise=noise)
        if not torch.isfinite(tr.x).all():
            raise NonFiniteError("the simulated training trajectories diverged; shorten horizon= or add a stabilising policy=")
        with torch.no_grad():
            Yc = plant.h(tr.x.reshape(-1, plant.n)).reshape(tr.x.shape[0], tr.x.shape[1], plant.p)
        model = cls.from_trajectories(tr.x, tr.u, dictionary, Y=Yc, ridge=ridge, rcond=rcond, dt=plant.dt)
        model.plant = plant
        return model

    # -- use ---------------------------------------------------------------------------------
    def lift(self, x: torch.Tensor) -> torch.Tensor:
        """Lift states: ``ψ(x)``.

        Parameters
        ----------
        x : torch.Tensor, shape (B, n·(delays+1))
            States (windows ``[x_t, x_{t-1}, …]`` for a delay dictionary).

        Returns
        -------
        torch.Tensor, shape (B, N)
        """
        return self.dictionary(x)

    def eigenvalues(self) -> np.ndarray:
        """Eigenvalues of ``K`` (the identified Koopman spectrum)."""
        return np.linalg.eigvals(self.K)

    def predict(self, x0: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Open-loop multi-step prediction ``x̂[t] = P K^t ψ(x0) + …`` in the lifted model.

        Parameters
        ----------
        x0 : torch.Tensor, shape (B, n·(delays+1))
            Initial states (windows).
        u : torch.Tensor, shape (B, T, m)
            Inputs.

        Returns
        -------
        torch.Tensor, shape (B, T + 1, n)
            Predicted states.
        """
        dev, dt = x0.device, x0.dtype
        K, B, P = (tensor(M, dev, dt) for M in (self.K, self.B, self.P))
        psi = self.lift(x0)
        out = [psi @ P.T]
        for t in range(u.shape[1]):
            psi = psi @ K.T + u[:, t] @ B.T
            out.append(psi @ P.T)
        return torch.stack(out, 1)


# ---------------------------------------------------------------------------------------------
# The lifted Kalman filter
# ---------------------------------------------------------------------------------------------
def lifted_moments(dictionary: Dictionary, m0: np.ndarray, P0: np.ndarray, *, samples: int = 4096,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of ``ψ(x0)`` for ``x0 ~ N(m0, P0)`` (a delay window of equal states).

    Monte Carlo with moment-matched samples: the standard normals are centred and
    whitened so that their sample mean is 0 and sample covariance ``I`` exactly, hence the
    moments of the linear features (``x`` itself) are exact.

    Parameters
    ----------
    dictionary : Dictionary
        The lifting.
    m0 : numpy.ndarray, shape (n,)
        Mean.
    P0 : numpy.ndarray, shape (n, n)
        Covariance (PSD).
    samples : int
        Number of samples.
    seed : int
        Seed.

    Returns
    -------
    mean : numpy.ndarray, shape (N,)
    cov : numpy.ndarray, shape (N, N)
    """
    n = dictionary.n
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((max(int(samples), 2 * n + 2), n))
    Z -= Z.mean(0)
    Lz = np.linalg.cholesky(Z.T @ Z / Z.shape[0])
    Z = np.linalg.solve(Lz, Z.T).T
    X = m0 + Z @ psd_sqrt(P0).T
    Xw = np.tile(X, (1, dictionary.delays + 1))
    Psi = _lift_np(dictionary, Xw)
    mean = Psi.mean(0)
    D = Psi - mean
    return mean, symmetrize(D.T @ D / Psi.shape[0])


class KoopmanFilter:
    """The Kalman filter of a lifted (Koopman) model; its state estimate is ``x̂ = P ψ̂``.

    Exact linear Kalman filter (time-varying, Joseph form; or steady-state) of
    ``ψ[t+1] = K ψ[t] + B u[t] + wψ``, ``y[t] = C ψ[t] + v`` with ``wψ ~ N(0, W)``,
    ``v ~ N(0, V + V_fit)``, started from the moments of ``ψ(x0)``, ``x0 ~ N(m0, P0)``.
    No Jacobians: all the nonlinearity is in the fitted lifting.

    Parameters
    ----------
    model : Koopman
        The fitted lifted model (needs ``C``: fit with outputs).
    V : array_like, shape (p, p), optional
        Measurement-noise covariance; the source plant's ``V`` by default.
    W : array_like, shape (N, N), optional
        Lifted process noise; the fit's residual covariance by default.
    m0 : array_like, shape (n,), optional
        Prior mean of ``x0``; the source plant's by default.
    P0 : array_like, shape (n, n), optional
        Prior covariance of ``x0``; the source plant's by default.
    form : {"current", "predictor"}
        ``"current"`` (default) returns ``x̂[t|t]``; ``"predictor"`` ``x̂[t+1|t]``.
    steady : bool
        Use the steady-state gain of the lifted model (:func:`lqgt.dlqe`) instead of the
        time-varying covariance recursion (default ``False``: the lifted model often has
        undamped modes without noise, e.g. the constant feature, where the steady gain
        does not exist).
    add_fit_residual : bool
        Add the output-fit residual covariance ``V_fit`` to ``V`` (default ``True``).
    prior_samples : int
        Samples for the moments of ``ψ(x0)`` (see :func:`lifted_moments`).
    seed : int
        Seed of those samples.

    Attributes
    ----------
    n : int
        Dimension of the returned estimate (the plant's state).
    N : int
        Lifted dimension.

    Notes
    -----
    The covariance does not depend on the data, so one ``(N, N)`` covariance is shared by
    the whole batch; NaN/inf in it raises :class:`~lqgt.nonlinear.FilterDivergenceError`
    naming the step. :meth:`lifted` returns the lifted estimate ``ψ̂`` from a filter state.
    """

    label = "KoopmanFilter"

    def __init__(self, model: Koopman, *, V=None, W=None, m0=None, P0=None, form: str = "current",
                 steady: bool = False, add_fit_residual: bool = True, prior_samples: int = 4096, seed: int = 0) -> None:
        if not isinstance(model, Koopman):
            raise ConfigError(f"model must be an lqgt.koopman.Koopman, got {type(model).__name__}")
        if model.C is None:
            raise ConfigError("the Koopman model has no output matrix C: fit it with Y= (outputs) or from_plant_data")
        self.model, self.form = model, check_form(form)
        self.n, self.N, p = model.n, model.N, model.p
        src = model.plant
        if V is None and src is None:
            raise ConfigError("pass V= (the measurement-noise covariance): the model was not fitted from a plant")
        V = check_psd("V", as_matrix("V", src.V if V is None else V, (p, p)), strict=True)
        if add_fit_residual and model.V_fit is not None:
            V = symmetrize(V + model.V_fit)
        W = model.W if W is None else check_psd("W", as_matrix("W", W, (self.N, self.N)), strict=False)
        m0 = (np.zeros(self.n) if src is None else src.m0) if m0 is None else as_vector("m0", m0, self.n)
        P0 = (np.eye(self.n) if src is None else src.P0) if P0 is None else check_psd("P0", as_matrix("P0", P0, (self.n, self.n)), strict=False)
        self.V, self.W = V, W
        self.psi0, self.Ppsi0 = lifted_moments(model.dictionary, np.asarray(m0, float), np.asarray(P0, float),
                                               samples=prior_samples, seed=seed)
        self.steady = bool(steady)
        self.Lf = self.L = None
        if self.steady:
            L, Pss, _ = dlqe(model.K, model.C, W, V)
            self.L, self.Pss = L, Pss
            self.Lf = np.linalg.solve(model.C @ Pss @ model.C.T + V, model.C @ Pss).T

    def __repr__(self) -> str:
        return f"KoopmanFilter(form={self.form!r}, n={self.n}, N={self.N}, steady={self.steady})"

    def init(self, batch: int, *, device: torch.device, dtype: torch.dtype) -> tuple[Any, torch.Tensor]:
        """Return the state and the initial estimate ``P E[ψ(x0)]`` repeated ``(batch, n)``.

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
            ``(ψ̂ (B, N), Pψ (N, N), constants, started, step)``.
        x_hat0 : torch.Tensor, shape (batch, n)
            ``P E[ψ(x0)]``.
        """
        M = self.model
        c = {k: tensor(v, device, dtype) for k, v in {"K": M.K, "B": M.B, "C": M.C, "P": M.P, "W": self.W, "V": self.V}.items()}
        c["I"] = torch.eye(self.N, device=device, dtype=dtype)
        if self.steady:
            c["G"] = tensor(self.Lf if self.form == "current" else self.L, device, dtype)
        psi = tensor(self.psi0, device, dtype).expand(batch, -1).clone()
        P = tensor(self.Ppsi0, device, dtype)
        return (psi, P, c, False, 0), psi @ c["P"].T

    @staticmethod
    def lifted(state) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the lifted estimate and its covariance from a filter state.

        Parameters
        ----------
        state : tuple
            A state returned by :meth:`init` or :meth:`step`.

        Returns
        -------
        psi_hat : torch.Tensor, shape (B, N)
            The lifted estimate ``ψ̂``.
        P : torch.Tensor, shape (N, N)
            Its error covariance (shared by the batch).
        """
        return state[0], state[1]

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
            ``P ψ̂[t|t]`` (current form) or ``P ψ̂[t+1|t]`` (predictor form).

        Raises
        ------
        FilterDivergenceError
            The covariance became NaN/inf (names the step).
        """
        psi, P, c, started, t = state
        if self.steady:
            if self.form == "current":
                if started:
                    psi = psi @ c["K"].T + u @ c["B"].T
                psi = psi + (y - psi @ c["C"].T) @ c["G"].T
            else:
                psi = psi @ c["K"].T + u @ c["B"].T + (y - psi @ c["C"].T) @ c["G"].T
            return (psi, P, c, True, t + 1), psi @ c["P"].T
        psi, P = step_timing(self.form, started, self._predict, self._update, psi, P, y, u, c)
        check_covariance(self.label, P, torch.ones((), dtype=torch.bool, device=P.device), t)
        return (psi, P, c, True, t + 1), psi @ c["P"].T

    @staticmethod
    def _predict(psi, P, u, c):
        K = c["K"]
        return psi @ K.T + u @ c["B"].T, sym(K @ P @ K.T + c["W"])

    @staticmethod
    def _update(psi, P, y, c):
        C, V = c["C"], c["V"]
        S = C @ P @ C.T + V
        G = torch.linalg.solve(S, C @ P).T                    # P C' S^{-1}
        psi = psi + (y - psi @ C.T) @ G.T
        return psi, joseph(P, c["I"] - G @ C, G, V)


# ---------------------------------------------------------------------------------------------
# Lifted LQR
# ---------------------------------------------------------------------------------------------
def _unreachable_unstable_modes(A: np.ndarray, B: np.ndarray, rtol: float = 1e-8) -> list[complex]:
    """Eigenvalues ``|λ| >= 1`` of ``A`` with ``[A − λI, B]`` rank-deficient (PBH, no balancing:
    lifted models have exactly-zero couplings that balancing would amplify)."""
    n = A.shape[0]
    scale = max(1.0, float(np.abs(A).max()), float(np.abs(B).max()) if B.size else 0.0)
    bad = []
    for lam in np.linalg.eigvals(A):
        if abs(lam) >= 1.0 - 1e-9:
            sv = np.linalg.svd(np.hstack([A - lam * np.eye(n), B]), compute_uv=False)
            if sv[n - 1] <= rtol * scale:
                bad.append(complex(lam))
    return bad


class KoopmanLQR:
    """LQR of the lifted model with cost on ``x = P ψ``, used as a nonlinear state feedback.

    The deviation ``δψ = ψ − ψ(x_eq)`` of the non-constant features is modelled as
    ``δψ+ = K δψ + B δu`` (constant features have zero deviation and are dropped). The
    gain ``G`` minimises ``Σ δψ'(P'QP + ridge I)δψ + δu'R δu`` on that model (infinite
    horizon, :func:`lqgt.dlqr`; or ``horizon`` Riccati steps from the terminal weight for a
    receding-horizon gain when the lifted model is not stabilizable), and the policy is

        u = u_eq − G (ψ(x̂) − ψ(x_eq))

    a nonlinear feedback of the estimate ``x̂`` (certainty equivalence in ``x``: the
    lifted state is re-evaluated at ``x̂``, not taken from a lifted filter, so the same
    policy can follow any estimator). The approximations: the lifted model's fixed-point
    residual ``K ψ(x_eq) + B u_eq − ψ(x_eq)`` is ignored (see ``equilibrium_residual``)
    and ``ψ(x̂) ≠ E[ψ(x)]`` under uncertainty.

    Parameters
    ----------
    model : Koopman
        The lifted model (no delays).
    Q : array_like, shape (n, n)
        State weight (on ``x``).
    R : array_like, shape (m, m)
        Input weight.
    x_eq : array_like, shape (n,), optional
        Regulation point; the origin by default.
    u_eq : array_like, shape (m,), optional
        Input at the regulation point; zero by default.
    ridge : float
        Weight on every lifted feature added to ``P'QP`` (makes unobservable lifted modes
        visible to the cost; 1e-6 by default).
    horizon : int, optional
        ``None`` (default): infinite-horizon gain (needs a stabilizable lifted model).
        An integer: the first gain of a ``horizon``-step finite-horizon LQR with terminal
        weight ``P'QP + ridge I`` (always exists).

    Attributes
    ----------
    gain : numpy.ndarray, shape (m, N)
        ``G`` on the full lifted vector (zero columns at constant features).
    X : numpy.ndarray
        The Riccati solution on the non-constant features.
    eigenvalues : numpy.ndarray
        Eigenvalues of the lifted closed loop ``K − B G`` (non-constant features).
    equilibrium_residual : float
        ``max |K ψ(x_eq) + B u_eq − ψ(x_eq)|``.

    Raises
    ------
    ConfigError
        A delay dictionary.
    NotStabilizableError, RiccatiError
        The lifted model has no stabilizing infinite-horizon gain (with advice: pass
        ``horizon=``).
    """

    def __init__(self, model: Koopman, Q, R, *, x_eq=None, u_eq=None, ridge: float = 1e-6,
                 horizon: int | None = None) -> None:
        if not isinstance(model, Koopman):
            raise ConfigError(f"model must be an lqgt.koopman.Koopman, got {type(model).__name__}")
        d = model.dictionary
        if d.delays:
            raise ConfigError("KoopmanLQR needs a dictionary of the current state only (no time delays): "
                              "its policy sees only the estimate x_hat")
        n, m, N = model.n, model.m, model.N
        Q = check_psd("Q", as_matrix("Q", Q, (n, n)), strict=False)
        R = check_psd("R", as_matrix("R", R, (m, m)), strict=True)
        self.model, self.Q, self.R, self.ridge, self.horizon = model, Q, R, float(ridge), horizon
        self.x_eq = np.zeros(n) if x_eq is None else as_vector("x_eq", x_eq, n)
        self.u_eq = np.zeros(m) if u_eq is None else as_vector("u_eq", u_eq, m)
        self.psi_eq = _lift_np(d, self.x_eq[None])[0]
        self.equilibrium_residual = float(np.abs(model.K @ self.psi_eq + model.B @ self.u_eq - self.psi_eq).max())
        keep = np.array([j for j in range(N) if j not in set(d.constant_index)], dtype=int)
        self.keep = keep
        A, Bk, Pk = model.K[np.ix_(keep, keep)], model.B[keep], model.P[:, keep]
        Qpsi = symmetrize(Pk.T @ Q @ Pk) + self.ridge * np.eye(keep.size)
        advice = ("Lifted features whose one-step change the input cannot move (e.g. x^2, whose change is "
                  "bilinear in x and u) can have unstable uncontrollable modes; pass horizon=H for a "
                  "receding-horizon gain, fit on data with feedback-correlated inputs, or use a smaller dictionary")
        if horizon is None:
            bad = _unreachable_unstable_modes(A, Bk)
            if bad:
                modes = ", ".join(f"{z:.4g}" for z in bad)
                raise NotStabilizableError(
                    f"Koopman LQR: the lifted model (K, B) is not stabilizable: the mode(s) {modes} with "
                    f"|lambda| >= 1 cannot be reached through B. {advice}"
                )
            try:
                G, X, E = dlqr(A, Bk, Qpsi, R)
            except (NotStabilizableError, RiccatiError) as exc:
                raise type(exc)(f"Koopman LQR: {exc}. {advice}") from None
        else:
            H = int(horizon)
            if H < 1:
                raise ConfigError(f"horizon must be >= 1, got {horizon}")
            X = Qpsi
            for _ in range(H):
                BX = Bk.T @ X
                G = np.linalg.solve(R + BX @ Bk, BX @ A)
                X = symmetrize(Qpsi + A.T @ X @ (A - Bk @ G))
            E = np.linalg.eigvals(A - Bk @ G)
        self.X, self.eigenvalues = X, E
        gain = np.zeros((m, N))
        gain[:, keep] = G
        self.gain = gain
        self._cache: dict[Any, tuple[torch.Tensor, ...]] = {}

    def __repr__(self) -> str:
        h = "inf" if self.horizon is None else self.horizon
        return f"KoopmanLQR(N={self.model.N}, horizon={h}, max|eig|={np.max(np.abs(self.eigenvalues)):.4f})"

    def __call__(self, x_hat: torch.Tensor) -> torch.Tensor:
        """``u = u_eq − G (ψ(x̂) − ψ(x_eq))`` for estimates ``(B, n)``; returns ``(B, m)``."""
        key = (x_hat.device, x_hat.dtype)
        if key not in self._cache:
            self._cache[key] = tuple(tensor(M, *key) for M in (self.gain.T, self.psi_eq, self.u_eq))
        GT, psi_eq, u_eq = self._cache[key]
        return u_eq - (self.model.dictionary(x_hat) - psi_eq) @ GT
