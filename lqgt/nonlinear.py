"""Nonlinear plants with additive Gaussian noise (SPEC §1).

    x[t+1] = f(x[t], u[t]) + w[t],   w ~ N(0, W)
    y[t]   = h(x[t]) + v[t],         v ~ N(0, V)
    x[0]   ~ N(m0, P0)

``f`` and ``h`` are batched torch functions: ``f(x (B, n), u (B, m)) -> (B, n)`` and
``h(x (B, n)) -> (B, p)``, written with torch operations only, so that they run on any
device and dtype and can be differentiated (Jacobians by :mod:`torch.func`).
Continuous dynamics ``dx/dt = fc(x, u)`` are sampled by a fixed-step RK4 integrator with
the input held over the sample (zero-order hold), see
:meth:`NonlinearPlant.from_continuous`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from ._linalg import as_matrix, as_vector, check_psd, psd_sqrt
from ._torch import resolve_device, resolve_dtype, tensor
from .errors import ConfigError, FilterDivergenceError, NonFiniteError, ShapeError
from .plant import Plant, _sample_time

__all__ = ["FilterDivergenceError", "NonlinearPlant", "Trajectories", "rk4"]

BatchedMap = Callable[..., torch.Tensor]

#: Relative step of the central finite differences used by :meth:`NonlinearPlant.check_jacobians`.
FD_STEP = 1e-6


# FilterDivergenceError lives in lqgt.errors; re-exported here for convenience.


class Trajectories(NamedTuple):
    """Open-loop (or policy-driven) trajectories of a plant, batch-first.

    Attributes
    ----------
    x : torch.Tensor, shape (B, T + 1, n)
        States ``x[0] ... x[T]``.
    u : torch.Tensor, shape (B, T, m)
        Inputs ``u[0] ... u[T-1]``.
    y : torch.Tensor, shape (B, T + 1, p)
        Measurements ``y[t] = h(x[t]) + v[t]``.
    """

    x: torch.Tensor
    u: torch.Tensor
    y: torch.Tensor


def rk4(fc: BatchedMap, x: torch.Tensor, u: torch.Tensor, dt: float, substeps: int = 1) -> torch.Tensor:
    """Integrate ``dx/dt = fc(x, u)`` over ``dt`` with ``substeps`` classical RK4 steps (``u`` held).

    Parameters
    ----------
    fc : callable
        Batched vector field ``fc(x (B, n), u (B, m)) -> (B, n)``.
    x : torch.Tensor, shape (B, n)
        Initial states.
    u : torch.Tensor, shape (B, m)
        Inputs, constant over the interval (zero-order hold).
    dt : float
        Interval length.
    substeps : int
        Number of equal RK4 steps (local error ``O((dt/substeps)^5)`` each).

    Returns
    -------
    torch.Tensor, shape (B, n)
        The state after ``dt``.
    """
    h = dt / substeps
    for _ in range(substeps):
        k1 = fc(x, u)
        k2 = fc(x + (0.5 * h) * k1, u)
        k3 = fc(x + (0.5 * h) * k2, u)
        k4 = fc(x + h * k3, u)
        x = x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return x


def _probe(name: str, fn: BatchedMap, args: tuple, want: tuple[int, int]) -> torch.Tensor:
    """Call ``fn(*args)`` on a probe batch and check the result (names ``name`` on failure)."""
    shapes = ", ".join(str(tuple(a.shape)) for a in args)
    try:
        out = fn(*args)
    except Exception as exc:
        raise ConfigError(
            f"{name} raised {type(exc).__name__} on a probe batch (arguments of shapes {shapes}, "
            f"float64): {exc}. {name} must be a batched torch function"
        ) from exc
    if not isinstance(out, torch.Tensor):
        raise ShapeError(f"{name} must return a torch.Tensor, got {type(out).__name__}")
    if tuple(out.shape) != want:
        raise ShapeError(
            f"{name} returned shape {tuple(out.shape)} for arguments of shapes {shapes}; expected {want} "
            "(batch first: one row per trajectory)"
        )
    if out.dtype != torch.float64:
        raise ShapeError(f"{name} returned dtype {out.dtype} for float64 input; it must keep the input dtype")
    if not torch.isfinite(out).all():
        raise NonFiniteError(f"{name} returned NaN or infinite values on a probe batch near m0")
    # rows must not mix: the first row alone must give the same result
    one = fn(*(a[:1] for a in args))
    if tuple(one.shape) != (1, want[1]) or not torch.allclose(one, out[:1], rtol=1e-10, atol=1e-12):
        raise ShapeError(
            f"{name} mixes trajectories: its first output row changes when the batch changes; "
            "each row must depend only on the same row of the inputs"
        )
    return out


def _batched_jacobian(fn: Callable[..., torch.Tensor], x: torch.Tensor, k: int, *extra: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``fn(x, *extra)`` ``(B, k)`` and its per-row Jacobian in ``x`` ``(B, k, n)`` by ``k`` reverse passes
    of the batch sum. Works inside ``torch.no_grad`` and ``torch.inference_mode`` (inputs are cloned
    into normal tensors)."""
    with torch.inference_mode(False), torch.enable_grad():
        xr = x.detach().clone().requires_grad_(True)
        out = fn(xr, *(e.clone() for e in extra))
        if not out.requires_grad:  # does not depend on x at all
            return out.detach(), x.new_zeros(x.shape[0], k, x.shape[1])
        rows = []
        for i in range(k):
            g = torch.autograd.grad(out[:, i].sum(), xr, retain_graph=i + 1 < k, allow_unused=True)[0]
            rows.append(torch.zeros_like(xr) if g is None else g)
    return out.detach(), torch.stack(rows, 1)


def _vmap_jacobian(fn: Callable[..., torch.Tensor], *args: torch.Tensor, argnums: int | tuple[int, ...] = 0):
    """``fn(*args)`` per row and its Jacobian(s) in ``args[argnums]``, by ``torch.func.vmap(jacrev)``
    over the batch (``fn`` maps single rows)."""
    def g(*a):
        out = fn(*a)
        return out, out

    with torch.inference_mode(False):
        jac, value = torch.func.vmap(torch.func.jacrev(g, argnums=argnums, has_aux=True))(*(a.clone() for a in args))
    return value, jac


def _check_jacobian_method(method: str) -> None:
    if method not in ("autograd", "vmap"):
        raise ConfigError(f"method must be 'autograd' or 'vmap', got {method!r}")


class NonlinearPlant:
    """A discrete-time nonlinear plant with additive Gaussian noise.

    ``x[t+1] = f(x[t], u[t]) + w[t]``, ``y[t] = h(x[t]) + v[t]``, ``w ~ N(0, W)``,
    ``v ~ N(0, V)``, ``x[0] ~ N(m0, P0)``, all independent.

    Parameters
    ----------
    f : callable
        Batched one-step map ``f(x (B, n), u (B, m)) -> (B, n)`` (noise-free), built from
        torch operations (so it runs on any device/dtype and is differentiable).
    h : callable
        Batched measurement map ``h(x (B, n)) -> (B, p)``.
    W : array_like, shape (n, n)
        Process-noise covariance per sample (symmetric PSD).
    V : array_like, shape (p, p)
        Measurement-noise covariance (symmetric positive definite).
    n, m, p : int
        State, input and output dimensions.
    dt : float
        Sample time in seconds (time axes only); 1.0 by default.
    m0 : array_like, shape (n,), optional
        Initial-state mean; zero by default.
    P0 : array_like, shape (n, n), optional
        Initial-state covariance (symmetric PSD); identity by default.
    name : str, optional
        A label used in ``repr``.

    Attributes
    ----------
    is_linear : bool
        Always ``False`` (the simulator's switch between the linear and nonlinear loops).
    has_feedthrough : bool
        Always ``False`` (``y`` does not depend on ``u``).

    Raises
    ------
    ShapeError, NonFiniteError, NotSymmetricError, NotPositiveDefiniteError
        Bad dimensions or covariances, or ``f``/``h`` returning the wrong shape, dtype or
        non-finite values on a probe batch near ``m0`` (checked at construction).
    ConfigError
        ``f`` or ``h`` raised on the probe batch.

    Examples
    --------
    >>> import torch, lqgt
    >>> from lqgt.nonlinear import NonlinearPlant
    >>> f = lambda x, u: torch.cat([x[:, :1] + 0.1 * x[:, 1:], x[:, 1:] - 0.1 * torch.sin(x[:, :1]) + 0.1 * u], -1)
    >>> h = lambda x: x[:, :1]
    >>> plant = NonlinearPlant(f, h, W=1e-4 * torch.eye(2).numpy(), V=[[1e-2]], n=2, m=1, p=1, dt=0.1)
    >>> plant.linearize().A.round(3).tolist()
    [[1.0, 0.1], [-0.1, 1.0]]
    """

    is_linear = False
    has_feedthrough = False

    def __init__(self, f: BatchedMap, h: BatchedMap, *, W, V, n: int, m: int, p: int, dt: float = 1.0,
                 m0=None, P0=None, name: str | None = None) -> None:
        for label, val in (("n", n), ("m", m), ("p", p)):
            if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
                raise ShapeError(f"{label} must be a positive integer, got {val!r}")
        if not callable(f) or not callable(h):
            raise ConfigError("f and h must be callables (batched torch functions)")
        self.n, self.m, self.p = int(n), int(m), int(p)
        self.dt = _sample_time(dt)
        self.W = check_psd("W", as_matrix("W", W, (n, n)), strict=False)
        self.V = check_psd("V", as_matrix("V", V, (p, p)), strict=True)
        self.m0 = np.zeros(n) if m0 is None else as_vector("m0", m0, n)
        self.P0 = np.eye(n) if P0 is None else check_psd("P0", as_matrix("P0", P0, (n, n)), strict=False)
        for arr in (self.W, self.V, self.m0, self.P0):
            arr.setflags(write=False)
        self._f, self._h = f, h
        self.name = name
        self.fc: BatchedMap | None = None
        self.substeps: int | None = None
        self._check_functions()

    def _check_functions(self) -> None:
        gen = torch.Generator().manual_seed(0)
        scale = np.sqrt(np.clip(np.diag(self.P0), 0.0, None)) + 0.1
        x = torch.tensor(self.m0) + torch.randn(3, self.n, generator=gen, dtype=torch.float64) * torch.tensor(scale)
        u = 0.1 * torch.randn(3, self.m, generator=gen, dtype=torch.float64)
        _probe("f", self._f, (x, u), (3, self.n))
        _probe("h", self._h, (x,), (3, self.p))

    def __repr__(self) -> str:
        label = f"{self.name!r}, " if self.name else ""
        return f"NonlinearPlant({label}n={self.n}, m={self.m}, p={self.p}, dt={self.dt})"

    # -- the maps ---------------------------------------------------------------------------
    def f(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Noise-free one-step map ``(B, n), (B, m) -> (B, n)``.

        Parameters
        ----------
        x : torch.Tensor, shape (B, n)
            States.
        u : torch.Tensor, shape (B, m)
            Inputs.

        Returns
        -------
        torch.Tensor, shape (B, n)
        """
        return self._f(x, u)

    def h(self, x: torch.Tensor) -> torch.Tensor:
        """Noise-free measurement map ``(B, n) -> (B, p)``.

        Parameters
        ----------
        x : torch.Tensor, shape (B, n)
            States.

        Returns
        -------
        torch.Tensor, shape (B, p)
        """
        return self._h(x)

    @classmethod
    def from_continuous(cls, fc: BatchedMap, h: BatchedMap, *, Wc, V, n: int, m: int, p: int, dt: float,
                        substeps: int = 4, m0=None, P0=None, name: str | None = None) -> NonlinearPlant:
        """Sample continuous dynamics ``dx = fc(x, u) dt + dw`` by RK4 with zero-order hold.

        Parameters
        ----------
        fc : callable
            Batched vector field ``fc(x (B, n), u (B, m)) -> (B, n)``.
        h : callable
            Batched measurement map ``h(x (B, n)) -> (B, p)``.
        Wc : array_like, shape (n, n)
            Spectral density of the process noise ``dw`` (state² per second).
        V : array_like, shape (p, p)
            Covariance of the sampled measurement noise (discrete form).
        n, m, p : int
            Dimensions.
        dt : float
            Sample time in seconds.
        substeps : int
            RK4 steps per sample (step ``dt / substeps``); 4 by default.
        m0 : array_like, shape (n,), optional
            Initial-state mean.
        P0 : array_like, shape (n, n), optional
            Initial-state covariance.
        name : str, optional
            A label.

        Returns
        -------
        NonlinearPlant
            ``f(x, u) = RK4(fc, x, u, dt, substeps)`` and ``W = Wc · dt``.

        Notes
        -----
        ``W = Wc dt`` is the first-order (Euler–Maruyama) covariance of the noise integrated
        over one sample; for the linearisation ``A`` the exact value is the Van Loan integral
        ``∫_0^dt e^{As} Wc e^{A's} ds = Wc dt + (A Wc + Wc A') dt²/2 + O(dt³)``, so the
        relative error is ``O(‖A‖ dt)``: use a sample time well below the fastest time
        constant (which RK4 needs anyway).
        """
        substeps = int(substeps)
        if substeps < 1:
            raise ConfigError(f"substeps must be >= 1, got {substeps}")
        dt = _sample_time(dt)
        Wc = check_psd("Wc", as_matrix("Wc", Wc, (n, n)), strict=False)

        def f(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
            return rk4(fc, x, u, dt, substeps)

        plant = cls(f, h, W=Wc * dt, V=V, n=n, m=m, p=p, dt=dt, m0=m0, P0=P0, name=name)
        plant.fc, plant.substeps = fc, substeps
        return plant

    def with_initial(self, *, m0=None, P0=None) -> NonlinearPlant:
        """Return a copy with a different initial-state mean and/or covariance (same maps and noise).

        Parameters
        ----------
        m0 : array_like, shape (n,), optional
            New initial mean (unchanged when omitted).
        P0 : array_like, shape (n, n), optional
            New initial covariance (unchanged when omitted).

        Returns
        -------
        NonlinearPlant
        """
        return self._copy(m0=self.m0 if m0 is None else m0, P0=self.P0 if P0 is None else P0)

    def with_noise(self, *, W=None, V=None) -> NonlinearPlant:
        """Return a copy with a different process and/or measurement noise covariance.

        Parameters
        ----------
        W : array_like, shape (n, n), optional
            New process-noise covariance.
        V : array_like, shape (p, p), optional
            New measurement-noise covariance.

        Returns
        -------
        NonlinearPlant
        """
        return self._copy(W=self.W if W is None else W, V=self.V if V is None else V)

    def _copy(self, **changes) -> NonlinearPlant:
        kw = {"W": self.W, "V": self.V, "n": self.n, "m": self.m, "p": self.p, "dt": self.dt, "m0": self.m0, "P0": self.P0, "name": self.name}
        kw.update(changes)
        new = type(self)(self._f, self._h, **kw)
        new.fc, new.substeps = self.fc, self.substeps
        return new

    # -- derivatives --------------------------------------------------------------------------
    def _single_f(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self._f(x.unsqueeze(0), u.unsqueeze(0)).squeeze(0)

    def _single_h(self, x: torch.Tensor) -> torch.Tensor:
        return self._h(x.unsqueeze(0)).squeeze(0)

    def jacobian_f(self, x: torch.Tensor, u: torch.Tensor, *, method: str = "autograd"
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Return ``f(x, u)`` ``(B, n)`` and the Jacobians ``∂f/∂x`` ``(B, n, n)`` and ``∂f/∂u``.

        Parameters
        ----------
        x : torch.Tensor, shape (B, n)
            States.
        u : torch.Tensor, shape (B, m)
            Inputs.
        method : {"autograd", "vmap"}
            ``"autograd"`` (default, fastest): one reverse-mode pass per output of the batch
            sum (valid because rows are independent, which construction checks); ``∂f/∂u``
            is not computed (``None``). ``"vmap"``: ``torch.func.vmap(jacrev)`` per
            trajectory, both Jacobians.

        Returns
        -------
        fx : torch.Tensor, shape (B, n)
        Fx : torch.Tensor, shape (B, n, n)
        Fu : torch.Tensor, shape (B, n, m) or None
        """
        _check_jacobian_method(method)
        if method == "vmap":
            fx, (Fx, Fu) = _vmap_jacobian(self._single_f, x, u, argnums=(0, 1))
            return fx, Fx, Fu
        fx, Fx = _batched_jacobian(self._f, x, self.n, u)
        return fx, Fx, None

    def jacobian_h(self, x: torch.Tensor, *, method: str = "autograd") -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``h(x)`` ``(B, p)`` and ``∂h/∂x`` ``(B, p, n)``.

        Parameters
        ----------
        x : torch.Tensor, shape (B, n)
            States.
        method : {"autograd", "vmap"}
            As in :meth:`jacobian_f`.

        Returns
        -------
        hx : torch.Tensor, shape (B, p)
        Hx : torch.Tensor, shape (B, p, n)
        """
        _check_jacobian_method(method)
        if method == "vmap":
            return _vmap_jacobian(self._single_h, x)
        return _batched_jacobian(self._h, x, self.p)

    def _point(self, x_eq, u_eq) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.zeros(self.n, dtype=torch.float64) if x_eq is None else torch.tensor(as_vector("x_eq", x_eq, self.n))
        u = torch.zeros(self.m, dtype=torch.float64) if u_eq is None else torch.tensor(as_vector("u_eq", u_eq, self.m))
        return x, u

    def _point_jacobians(self, x: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``∂f/∂x``, ``∂f/∂u``, ``∂h/∂x`` at one point (``torch.func.jacrev``)."""
        with torch.inference_mode(False):
            A, B = torch.func.jacrev(self._single_f, argnums=(0, 1))(x, u)
            C = torch.func.jacrev(self._single_h)(x)
        return A, B, C

    def linearize(self, x_eq=None, u_eq=None, *, require_equilibrium: bool = True, tol: float = 1e-8) -> Plant:
        """Linearise about ``(x_eq, u_eq)`` by autograd: a :class:`lqgt.Plant` in deviation coordinates.

        The returned plant describes ``δx = x - x_eq``, ``δu = u - u_eq``, ``δy = y - h(x_eq)``:
        ``δx[t+1] ≈ A δx + B δu + w``, ``δy ≈ C δx + v`` with ``A = ∂f/∂x``, ``B = ∂f/∂u``,
        ``C = ∂h/∂x`` at the point (``torch.func.jacrev``). It carries this plant's ``W``,
        ``V``, ``P0`` and ``dt`` and the initial mean ``m0 - x_eq``. With the equilibria of the
        library plants at the origin, deviation and raw coordinates coincide.

        Parameters
        ----------
        x_eq : array_like, shape (n,), optional
            State of the operating point; the origin by default.
        u_eq : array_like, shape (m,), optional
            Input of the operating point; zero by default.
        require_equilibrium : bool
            Refuse a point with ``f(x_eq, u_eq) != x_eq`` (the affine term would be dropped).
        tol : float
            Tolerance of that check, relative to ``max(1, |x_eq|)``.

        Returns
        -------
        Plant
            ``Plant(A, B, C, W=W, V=V, m0=m0 - x_eq, P0=P0, dt=dt)``.

        Raises
        ------
        ConfigError
            ``(x_eq, u_eq)`` is not an equilibrium (with ``require_equilibrium=True``).
        NonFiniteError
            The Jacobians are not finite there.
        """
        x, u = self._point(x_eq, u_eq)
        with torch.no_grad():
            gap = float((self._single_f(x, u) - x).abs().max())
        scale = max(1.0, float(x.abs().max()))
        if require_equilibrium and gap > tol * scale:
            raise ConfigError(
                f"(x_eq, u_eq) is not an equilibrium: max |f(x_eq, u_eq) - x_eq| = {gap:.3g}; "
                "pass require_equilibrium=False to linearise anyway (the affine term is dropped)"
            )
        mats = [M.detach().numpy() for M in self._point_jacobians(x, u)]
        for label, M in zip("ABC", mats):
            if not np.all(np.isfinite(M)):
                raise NonFiniteError(f"the Jacobian {label} at (x_eq, u_eq) is not finite")
        return Plant(*mats, W=self.W, V=self.V, m0=self.m0 - x.numpy(), P0=self.P0, dt=self.dt)

    def check_jacobians(self, x=None, u=None, *, step: float = FD_STEP) -> float:
        """Largest relative gap between the autograd Jacobians and central finite differences.

        Parameters
        ----------
        x : array_like, shape (n,), optional
            Point (``m0`` by default).
        u : array_like, shape (m,), optional
            Input (zero by default).
        step : float
            Finite-difference step, relative to ``max(1, |x_k|)``.

        Returns
        -------
        float
            ``max |J_autograd - J_fd| / max(1, max |J_fd|)`` over ``∂f/∂x``, ``∂f/∂u``, ``∂h/∂x``.
        """
        x, u = self._point(self.m0 if x is None else x, u)
        A, B, C = self._point_jacobians(x, u)

        def fd(fn, z):
            cols = []
            for k in range(z.numel()):
                e = torch.zeros_like(z)
                e[k] = step * max(1.0, abs(float(z[k])))
                cols.append((fn(z + e) - fn(z - e)) / (2 * e[k]))
            return torch.stack(cols, -1)

        with torch.no_grad():
            refs = (fd(lambda z: self._single_f(z, u), x), fd(lambda z: self._single_f(x, z), u), fd(self._single_h, x))
        gaps = [float((J - R).abs().max()) / max(1.0, float(R.abs().max())) for J, R in zip((A, B, C), refs)]
        return max(gaps)

    # -- sampling -------------------------------------------------------------------------------
    def sample(self, horizon: int, *, batch: int = 1, u=None, x0=None, seed: int = 0, noise: bool = True,
               device: str | torch.device | None = "cpu", dtype: torch.dtype | str | None = None) -> Trajectories:
        """Simulate ``batch`` trajectories of ``horizon`` steps with given inputs or a state-feedback policy.

        Parameters
        ----------
        horizon : int
            Number of transitions ``T``.
        batch : int
            Number of trajectories ``B`` (ignored when ``u`` or ``x0`` fixes it).
        u : torch.Tensor of shape (B, T, m), or callable, optional
            Inputs, or a policy ``u[t] = u(x[t])`` on the TRUE state ``(B, n) -> (B, m)``
            (for data collection); zero by default.
        x0 : array_like, shape (B, n), optional
            Initial states; drawn from ``N(m0, P0)`` by default.
        seed : int
            Seed of the noise.
        noise : bool
            Add process and measurement noise (``False``: deterministic maps only).
        device : str or torch.device
            Where to simulate.
        dtype : torch.dtype, optional
            float64 by default.

        Returns
        -------
        Trajectories
        """
        dev, dt = resolve_device(device), resolve_dtype(dtype)
        horizon = int(horizon)
        if horizon < 1:
            raise ConfigError(f"horizon must be >= 1, got {horizon}")
        gen = torch.Generator(device=dev).manual_seed(int(seed))
        policy = u if callable(u) and not isinstance(u, torch.Tensor) else None
        if x0 is not None:
            x = tensor(x0, dev, dt)
            if x.ndim != 2 or x.shape[1] != self.n:
                raise ShapeError(f"x0 has shape {tuple(x.shape)}, expected (B, {self.n})")
            batch = x.shape[0]
        if u is not None and policy is None:
            U = tensor(u, dev, dt)
            if U.ndim != 3 or U.shape[1:] != (horizon, self.m) or (x0 is not None and U.shape[0] != batch):
                raise ShapeError(f"u has shape {tuple(U.shape)}, expected ({batch if x0 is not None else 'B'}, {horizon}, {self.m})")
            batch = U.shape[0]
        batch = int(batch)
        Wh, Vh = tensor(psd_sqrt(self.W), dev, dt), tensor(psd_sqrt(self.V), dev, dt)
        if x0 is None:
            x = tensor(self.m0, dev, dt) + torch.randn(batch, self.n, generator=gen, device=dev, dtype=dt) @ tensor(psd_sqrt(self.P0), dev, dt).T
        xs = torch.empty(batch, horizon + 1, self.n, device=dev, dtype=dt)
        us = torch.zeros(batch, horizon, self.m, device=dev, dtype=dt)
        xs[:, 0] = x
        with torch.no_grad():
            for t in range(horizon):
                if policy is not None:
                    ut = policy(x)
                    if not isinstance(ut, torch.Tensor) or tuple(ut.shape) != (batch, self.m):
                        raise ShapeError(f"the policy must return a tensor of shape {(batch, self.m)}")
                    us[:, t] = ut
                elif u is not None:
                    us[:, t] = U[:, t]
                x = self._f(x, us[:, t])
                if noise:
                    x = x + torch.randn(batch, self.n, generator=gen, device=dev, dtype=dt) @ Wh.T
                xs[:, t + 1] = x
            ys = self._h(xs.reshape(-1, self.n)).reshape(batch, horizon + 1, self.p)
            if noise:
                ys = ys + torch.randn(batch, horizon + 1, self.p, generator=gen, device=dev, dtype=dt) @ Vh.T
        return Trajectories(xs, us, ys)
