"""Training data from the batched closed-loop simulator.

:func:`rollouts` runs :func:`lqgt.simulate` (``store=True``) and returns a :class:`Rollouts`:
the true states, the measurements, the inputs and the optimal (time-varying) Kalman
filter's estimates of the same trajectories, batch-first. Several plants (in-context
training) are concatenated along the batch, with :attr:`Rollouts.system` telling which
plant each trajectory came from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch

from .._torch import resolve_device, resolve_dtype, tensor
from ..errors import ConfigError, NonFiniteError, ShapeError
from ..estimators.kalman import KalmanFilter
from ..filtering import kalman_filter
from ..plant import Plant
from ..plants import Example
from ..simulate import simulate

__all__ = ["Rollouts", "rollouts"]

_FIELDS = ("x", "x_hat_kf", "y", "u")


@dataclass(frozen=True, eq=False)
class Rollouts:
    """Batch-first trajectories for training and scoring estimators (immutable).

    Attributes
    ----------
    y : torch.Tensor, shape (B, T, p)
        Measurements ``y[t] = C x[t] + D u[t] + v[t]``.
    u : torch.Tensor, shape (B, T, m)
        Inputs applied at step ``t`` (``u[t]`` enters ``x[t+1]``).
    x : torch.Tensor or None, shape (B, T, n)
        True states (``None`` for measured data without state labels).
    x_hat_kf : torch.Tensor or None, shape (B, T, n)
        The optimal time-varying Kalman filter's ``x̂[t|t]`` of each trajectory, computed
        with that trajectory's true plant (``None`` without a model).
    plants : tuple of Plant
        The plant of each system (one for ordinary data).
    system : torch.Tensor, shape (B,), int64
        Index into :attr:`plants` of each trajectory.
    settings : dict
        How the data was made (horizon, batch, seed, device, dtype, ...).

    Raises
    ------
    ShapeError
        If the tensors' shapes disagree (the message names the field and the shapes).
    NonFiniteError
        If a tensor contains NaN or infinity (the message names the field).
    """

    y: torch.Tensor
    u: torch.Tensor
    x: torch.Tensor | None = None
    x_hat_kf: torch.Tensor | None = None
    plants: tuple = ()
    system: torch.Tensor | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        y = self.y
        if not isinstance(y, torch.Tensor) or y.ndim != 3:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ShapeError(f"Rollouts: y must be a tensor of shape (B, T, p), got {got}")
        B, T = y.shape[:2]
        dims = {"y": y.shape[2]}
        for name in ("u", "x", "x_hat_kf"):
            v = getattr(self, name)
            if v is None:
                if name == "u":
                    raise ShapeError("Rollouts: u is required (use a (B, T, 0) tensor for no input)")
                continue
            if not isinstance(v, torch.Tensor) or v.ndim != 3 or tuple(v.shape[:2]) != (B, T):
                got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                raise ShapeError(f"Rollouts: {name} must have shape (B, T, ·) = ({B}, {T}, ·) like y, got {got}")
            if v.device != y.device or v.dtype != y.dtype:
                raise ShapeError(f"Rollouts: {name} is {v.dtype} on {v.device}, y is {y.dtype} on {y.device}")
            dims[name] = v.shape[2]
        if self.x is not None and self.x_hat_kf is not None and dims["x"] != dims["x_hat_kf"]:
            raise ShapeError(f"Rollouts: x has n={dims['x']} but x_hat_kf has n={dims['x_hat_kf']}")
        for name in _FIELDS:
            v = getattr(self, name)
            if v is not None and not bool(torch.isfinite(v).all()):
                bad = (~torch.isfinite(v)).nonzero()[0].tolist()
                raise NonFiniteError(f"Rollouts: {name} contains NaN or infinity (first at index {tuple(bad)})")
        plants = tuple(self.plants)
        for i, pl in enumerate(plants):
            if not isinstance(pl, Plant):
                raise ConfigError(f"Rollouts: plants[{i}] is a {type(pl).__name__}, not an lqgt.Plant")
            want = {"y": pl.p, "u": pl.m, "x": pl.n, "x_hat_kf": pl.n}
            for name, d in dims.items():
                if d != want[name]:
                    raise ShapeError(f"Rollouts: {name} has last dimension {d} but plants[{i}] has "
                                     f"{ {'y': 'p', 'u': 'm', 'x': 'n', 'x_hat_kf': 'n'}[name]}={want[name]}")
        object.__setattr__(self, "plants", plants)
        system = self.system
        if system is None:
            system = torch.zeros(B, dtype=torch.int64, device=y.device)
        elif not isinstance(system, torch.Tensor) or tuple(system.shape) != (B,):
            got = tuple(system.shape) if isinstance(system, torch.Tensor) else type(system).__name__
            raise ShapeError(f"Rollouts: system must have shape (B,) = ({B},), got {got}")
        else:
            system = system.to(device=y.device, dtype=torch.int64)
            if plants and B and (int(system.min()) < 0 or int(system.max()) >= len(plants)):
                raise ShapeError(f"Rollouts: system indices must lie in [0, {len(plants)})")
        object.__setattr__(self, "system", system)

    # ---- sizes ---------------------------------------------------------------------------
    @property
    def batch(self) -> int:
        """Number of trajectories ``B``."""
        return int(self.y.shape[0])

    @property
    def horizon(self) -> int:
        """Number of steps ``T``."""
        return int(self.y.shape[1])

    @property
    def n(self) -> int | None:
        """State dimension (``None`` without states or plants)."""
        if self.x is not None:
            return int(self.x.shape[2])
        return self.plants[0].n if self.plants else None

    @property
    def m(self) -> int:
        """Input dimension."""
        return int(self.u.shape[2])

    @property
    def p(self) -> int:
        """Measurement dimension."""
        return int(self.y.shape[2])

    @property
    def plant(self) -> Plant | None:
        """The plant when there is exactly one (``None`` otherwise)."""
        return self.plants[0] if len(self.plants) == 1 else None

    def __len__(self) -> int:
        return self.batch

    def __repr__(self) -> str:
        return (f"Rollouts(B={self.batch}, T={self.horizon}, n={self.n}, m={self.m}, p={self.p}, "
                f"systems={len(self.plants)}, device={self.y.device}, dtype={self.y.dtype})")

    # ---- selection -----------------------------------------------------------------------
    def __getitem__(self, idx) -> Rollouts:
        """Select trajectories (an int, slice, index list/tensor or boolean mask along ``B``)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1) if idx != -1 else slice(-1, None)
        if isinstance(idx, (list, np.ndarray)):
            idx = torch.as_tensor(np.asarray(idx))
        if isinstance(idx, torch.Tensor):
            idx = idx.to(self.y.device)
        pick = {k: (None if getattr(self, k) is None else getattr(self, k)[idx]) for k in _FIELDS}
        return replace(self, **pick, system=self.system[idx])

    def _take(self, idx: torch.Tensor, device=None, dtype=None) -> Rollouts:
        """Trajectories ``idx`` (optionally moved/cast), without re-validating (for training loops)."""
        out = object.__new__(Rollouts)
        for k in _FIELDS:
            v = getattr(self, k)
            if v is not None:
                v = v[idx]
                if device is not None:
                    v = v.to(device=device, dtype=dtype)
            object.__setattr__(out, k, v)
        system = self.system[idx]
        object.__setattr__(out, "system", system if device is None else system.to(device))
        object.__setattr__(out, "plants", self.plants)
        object.__setattr__(out, "settings", self.settings)
        return out

    def steps(self, start: int = 0, stop: int | None = None) -> Rollouts:
        """Select the time steps ``start <= t < stop`` (a window of every trajectory).

        Parameters
        ----------
        start : int
            First step.
        stop : int, optional
            One past the last step (default: the horizon).

        Returns
        -------
        Rollouts
        """
        sl = slice(start, stop)
        pick = {k: (None if getattr(self, k) is None else getattr(self, k)[:, sl]) for k in _FIELDS}
        return replace(self, **pick)

    def split(self, fraction: float = 0.8, *, seed: int | None = None) -> tuple[Rollouts, Rollouts]:
        """Split along the batch into two parts (e.g. training and validation).

        Parameters
        ----------
        fraction : float
            Share of trajectories in the first part, ``0 < fraction < 1``.
        seed : int, optional
            Shuffle with this seed first (default: keep the order).

        Returns
        -------
        first, second : Rollouts

        Raises
        ------
        ConfigError
            If ``fraction`` is not in ``(0, 1)`` or a part would be empty.
        """
        if not 0.0 < float(fraction) < 1.0:
            raise ConfigError(f"split: fraction must lie in (0, 1), got {fraction!r}")
        k = int(round(fraction * self.batch))
        if not 0 < k < self.batch:
            raise ConfigError(f"split: fraction={fraction} of B={self.batch} leaves an empty part")
        if seed is None:
            idx = torch.arange(self.batch, device=self.y.device)
        else:
            g = torch.Generator().manual_seed(int(seed))
            idx = torch.randperm(self.batch, generator=g).to(self.y.device)
        return self[idx[:k]], self[idx[k:]]

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | str | None = None) -> Rollouts:
        """Return a copy on ``device`` with floating tensors cast to ``dtype``.

        Parameters
        ----------
        device : str or torch.device, optional
            Target device (default: unchanged).
        dtype : torch.dtype or str, optional
            Target dtype (default: unchanged).

        Returns
        -------
        Rollouts
        """
        dev = self.y.device if device is None else resolve_device(device)
        dt = self.y.dtype if dtype is None else resolve_dtype(dtype)
        pick = {k: (None if getattr(self, k) is None else getattr(self, k).to(device=dev, dtype=dt)) for k in _FIELDS}
        return replace(self, **pick, system=self.system.to(dev), settings={**self.settings, "device": str(dev)})

    @classmethod
    def concat(cls, parts: Sequence[Rollouts]) -> Rollouts:
        """Concatenate rollouts along the batch (their plants are concatenated too).

        Parameters
        ----------
        parts : sequence of Rollouts
            Data sets with equal horizon and dimensions.

        Returns
        -------
        Rollouts

        Raises
        ------
        ConfigError
            If ``parts`` is empty, or some parts have state labels and others do not.
        ShapeError
            If horizons or dimensions differ.
        """
        parts = list(parts)
        if not parts:
            raise ConfigError("Rollouts.concat: parts is empty")
        pick = {}
        for k in _FIELDS:
            vals = [getattr(r, k) for r in parts]
            if all(v is None for v in vals):
                pick[k] = None
            elif any(v is None for v in vals):
                raise ConfigError(f"Rollouts.concat: some parts have {k} and others do not")
            else:
                shapes = {tuple(v.shape[1:]) for v in vals}
                if len(shapes) != 1:
                    raise ShapeError(f"Rollouts.concat: {k} has different (T, ·) shapes {sorted(shapes)}")
                pick[k] = torch.cat(vals, 0)
        plants, systems, off = [], [], 0
        for r in parts:
            plants.extend(r.plants)
            systems.append(r.system + off)
            off += len(r.plants)
        settings = {"concat": [r.settings for r in parts]}
        return cls(**pick, plants=tuple(plants), system=torch.cat(systems), settings=settings)

    # ---- targets -------------------------------------------------------------------------
    def targets(self, form: str) -> torch.Tensor:
        """The true states an estimator of ``form`` is trained to output.

        Parameters
        ----------
        form : {"current", "predictor"}
            ``"current"``: ``x[t]`` for every ``t`` ``(B, T, n)``; ``"predictor"``:
            ``x[t+1]`` for ``t < T - 1`` ``(B, T - 1, n)`` (the last prediction has no label).

        Returns
        -------
        torch.Tensor

        Raises
        ------
        ConfigError
            If the data has no state labels ``x`` or ``form`` is unknown.
        """
        if self.x is None:
            raise ConfigError("this Rollouts has no state labels x (measured data): use loss='output_prediction'")
        if form == "current":
            return self.x
        if form == "predictor":
            return self.x[:, 1:]
        raise ConfigError(f"form must be 'current' or 'predictor', got {form!r}")

    def kalman(self, form: str = "current") -> torch.Tensor:
        """The Kalman filter's estimates in ``form``, aligned with :meth:`targets`.

        Parameters
        ----------
        form : {"current", "predictor"}
            ``"current"``: ``x̂[t|t]`` ``(B, T, n)``; ``"predictor"``: ``x̂[t+1|t] = A x̂[t|t] + B u[t]``
            for ``t < T - 1`` ``(B, T - 1, n)``.

        Returns
        -------
        torch.Tensor

        Raises
        ------
        ConfigError
            If the data has no Kalman estimates or ``form`` is unknown.
        """
        if self.x_hat_kf is None:
            raise ConfigError("this Rollouts has no Kalman estimates x_hat_kf")
        if form == "current":
            return self.x_hat_kf
        if form != "predictor":
            raise ConfigError(f"form must be 'current' or 'predictor', got {form!r}")
        out = torch.empty_like(self.x_hat_kf[:, 1:])
        for i, pl in enumerate(self.plants):
            sel = self.system == i
            A = tensor(pl.A, self.y.device, self.y.dtype)
            Bm = tensor(pl.B, self.y.device, self.y.dtype)
            out[sel] = self.x_hat_kf[sel, :-1] @ A.T + self.u[sel, :-1] @ Bm.T
        return out


def _as_plant(obj) -> Plant:
    if isinstance(obj, Plant):
        return obj
    if isinstance(obj, tuple) and obj and isinstance(obj[0], Plant):  # an Example (plant, Q, R)
        return obj[0]
    raise ConfigError(f"plant must be an lqgt.Plant or an example (plant, Q, R), got {type(obj).__name__}")


def rollouts(
    plant,
    K=None,
    *,
    horizon: int = 200,
    batch: int = 1024,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    estimator=None,
    kalman: bool = True,
    dither=0.0,
) -> Rollouts:
    """Simulate closed-loop trajectories for training (via :func:`lqgt.simulate`).

    The loop is ``u = -K x̂`` with ``x̂`` from ``estimator`` (default: the plant's own
    steady-state Kalman filter, current form); with ``K=None`` the input is zero. The
    time-varying Kalman filter of each trajectory's true plant then gives ``x_hat_kf``.

    Parameters
    ----------
    plant : Plant, example (plant, Q, R), or a sequence of them
        The plant. A sequence gives in-context data: ``batch`` trajectories per plant,
        concatenated along the batch (seeds ``seed, seed + 1, ...``).
    K : array_like, shape (m, n), callable, sequence or None
        Feedback gain ``u = -K x̂`` or a policy ``x̂ -> u`` (see :func:`lqgt.simulate`);
        ``None`` gives ``u = 0``. With a sequence of plants, one entry per plant or one
        shared value.
    horizon : int
        Steps per trajectory ``T``.
    batch : int
        Trajectories (per plant).
    seed : int
        Seed of the simulator's noise.
    device : str or torch.device, optional
        Where to simulate and keep the data (CPU by default).
    dtype : torch.dtype or str, optional
        float64 by default.
    estimator : object, optional
        The estimator in the loop (any estimator of the protocol, e.g. a learned one, for
        on-policy data). Default: ``lqgt.KalmanFilter(plant)``.
    kalman : bool
        Compute ``x_hat_kf`` (default ``True``).
    dither : float or array_like of shape (m,)
        Standard deviation of a white Gaussian exploration signal ``d[t]`` added to the
        controller output (``u[t] = -K x̂[t] + d[t]`` enters the plant and is what the
        returned ``u`` holds; the estimator in the loop sees ``-K x̂[t]``). Persistent
        excitation: without it ``u`` is a function of past measurements, and a learned
        estimator may read the state from ``u`` instead of learning the input's effect,
        which fails once its own estimates close the loop. Default 0.

    Returns
    -------
    Rollouts

    Raises
    ------
    ConfigError
        Bad arguments (names the argument).
    ShapeError
        If ``K`` has the wrong shape.
    NonFiniteError
        If the simulated loop diverged (the message names the plant).
    """
    many = isinstance(plant, (list, tuple)) and not isinstance(plant, Example) and not (
        len(plant) == 3 and isinstance(plant[0], Plant) and not isinstance(plant[1], (Plant, tuple)))
    if not many:
        plants = [_as_plant(plant)]
        Ks = [K]
    else:
        plants = [_as_plant(p) for p in plant]
        if not plants:
            raise ConfigError("rollouts: the sequence of plants is empty")
        if isinstance(K, (list, tuple)):
            if len(K) != len(plants):
                raise ConfigError(f"rollouts: K has {len(K)} entries for {len(plants)} plants")
            Ks = list(K)
        else:
            Ks = [K] * len(plants)
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    parts = []
    for i, (pl, Ki) in enumerate(zip(plants, Ks)):
        parts.append(_one(pl, Ki, horizon, batch, seed + i, dev, dt, estimator, kalman, i if many else None, dither))
    return parts[0] if len(parts) == 1 else Rollouts.concat(parts)


def _one(pl: Plant, K, horizon, batch, seed, dev, dt, estimator, kalman, index, dither=0.0) -> Rollouts:
    Kmat = np.zeros((pl.m, pl.n)) if K is None else K
    est = estimator if estimator is not None else KalmanFilter(pl, "current" if not pl.has_feedthrough else "predictor")
    was = isinstance(est, torch.nn.Module) and est.training
    if was:
        est.eval()
    sd = np.broadcast_to(np.asarray(dither, dtype=float), (pl.m,)) if pl.m else np.zeros(0)
    if not np.all(np.isfinite(sd)) or np.any(sd < 0):
        raise ConfigError(f"rollouts: dither must be finite and >= 0, got {dither!r}")
    d = None
    if np.any(sd > 0):
        g = torch.Generator(device=dev).manual_seed(int(seed) + 7_777_777)
        d = torch.randn(batch, horizon, pl.m, generator=g, device=dev, dtype=dt) * torch.as_tensor(sd.copy(), device=dev,
                                                                                                   dtype=dt)
    with torch.no_grad():
        res = simulate(pl, Kmat, {"data": est}, Q=np.eye(pl.n), R=np.eye(pl.m), horizon=horizon, batch=batch,
                       seed=seed, device=dev, dtype=dt, store=True, progress=False, disturbance=d)
    if was:
        est.train()
    x, y, u = res.x["data"], res.y["data"], res.u["data"]
    if d is not None:
        u = u + d                      # the input that entered the plant
    where = "" if index is None else f" (plant {index})"
    if not (bool(torch.isfinite(x).all()) and bool(torch.isfinite(y).all())):
        raise NonFiniteError(f"rollouts: the simulated closed loop diverged{where}; check K and the estimator")
    xkf = None
    if kalman:
        xkf = kalman_filter(pl, y, u if pl.m else None, method="sequential", device=dev, dtype=dt).means
    settings = dict(res.settings, K=None if K is None else ("callable" if callable(K) else np.asarray(K).tolist()),
                    estimator=type(est).__name__)
    return Rollouts(y=y, u=u, x=x, x_hat_kf=xkf, plants=(pl,), settings=settings)
