"""Batched closed-loop Monte Carlo simulation in torch, with common random numbers.

Every estimator in one call sees the same initial state, process noise and measurement
noise, so differences in cost are differences between estimators, not luck. Fixed-gain
linear observers under a static gain run as one fused linear recursion (one ``addmm``
per step); any other estimator or a callable policy runs the generic step loop.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from ._linalg import as_matrix, psd_sqrt
from ._torch import resolve_device, resolve_dtype, tensor
from .closed_loop import closed_loop
from .errors import ConfigError, ShapeError
from .estimators.base import check_estimator
from .lqg import cost_weights
from .plant import Plant

__all__ = ["simulate", "SimulationResult", "DivergenceWarning"]

Policy = Callable[[torch.Tensor], torch.Tensor]

#: Elements of noise generated per chunk (per device type) when ``chunk`` is not given.
_CHUNK_ELEMS = {"cpu": 1 << 22, "cuda": 1 << 27}


class DivergenceWarning(UserWarning):
    """A closed loop produced non-finite values (the loop is unstable or an estimator diverged)."""


@dataclass(frozen=True, eq=False)
class SimulationResult:
    """Result of :func:`simulate` (immutable; tensors are on the simulation device).

    Attributes
    ----------
    cost : dict of str to float
        Mean per-step cost ``x'Qx + u'Ru + 2x'Nu`` over the batch and the steps
        ``burn_in ≤ t < horizon``; ``inf`` if the loop diverged.
    cost_ci : dict of str to (float, float)
        95% confidence interval of ``cost`` (normal approximation over the independent
        trajectories; ``(-inf, inf)`` for a batch of one).
    cost_per_trajectory : dict of str to torch.Tensor, shape (B,)
        Each trajectory's mean per-step cost.
    x, x_hat, u, y : dict of str to torch.Tensor, or None
        Trajectories, batch-first: ``x`` ``(B, T, n)``, ``x_hat`` ``(B, T, n)`` (the estimate
        ``u[:, t]`` was computed from), ``u`` ``(B, T, m)``, ``y`` ``(B, T, p)`` with
        ``y[:, t] = C x[:, t] + D u[:, t] + v[:, t]``. ``None`` when ``store=False``.
    t : numpy.ndarray, shape (T,)
        Time of each step in seconds (``arange(T) * plant.dt``).
    settings : dict
        The arguments used (horizon, batch, seed, device, dtype, burn_in, chunk).
    """

    cost: dict[str, float]
    cost_ci: dict[str, tuple[float, float]]
    cost_per_trajectory: dict[str, torch.Tensor]
    x: dict[str, torch.Tensor] | None
    x_hat: dict[str, torch.Tensor] | None
    u: dict[str, torch.Tensor] | None
    y: dict[str, torch.Tensor] | None
    t: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """Estimator names, in the order given."""
        return list(self.cost)


class _Noise:
    """Draws ``x0`` and chunks of ``[w; v]`` once, shared by all estimators."""

    def __init__(self, plant: Plant, batch: int, seed: int, device, dtype) -> None:
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(int(seed))
        self.batch, self.device, self.dtype = batch, device, dtype
        self.n, self.p = plant.n, plant.p
        self.Wh = tensor(psd_sqrt(plant.W), device, dtype)
        self.Vh = tensor(psd_sqrt(plant.V), device, dtype)
        P0h = tensor(psd_sqrt(plant.P0), device, dtype)
        e0 = torch.randn(batch, plant.n, generator=self.gen, device=device, dtype=dtype)
        self.x0 = tensor(plant.m0, device, dtype) + e0 @ P0h.T

    def chunk(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``w`` ``(c, B, n)`` and ``v`` ``(c, B, p)``."""
        e = torch.randn(c, self.batch, self.n + self.p, generator=self.gen, device=self.device, dtype=self.dtype)
        return e[..., : self.n] @ self.Wh.T, e[..., self.n:] @ self.Vh.T


def _policy(K, plant: Plant) -> tuple[np.ndarray | None, Policy | None]:
    """Split the controller argument into a static gain or a callable policy."""
    if callable(K) and not isinstance(K, (np.ndarray, torch.Tensor)):
        return None, K
    if isinstance(K, torch.Tensor):
        K = K.detach().cpu().numpy()
    return as_matrix("K", K, (plant.m, plant.n)), None


def simulate(
    plant: Plant,
    K,
    estimators: Mapping[str, Any],
    *,
    Q,
    R,
    N=None,
    horizon: int = 1000,
    batch: int = 1024,
    seed: int = 0,
    device: str | torch.device | None = "cpu",
    dtype: torch.dtype | str | None = None,
    store: bool = True,
    burn_in: int = 0,
    chunk: int | None = None,
    progress: bool = False,
) -> SimulationResult:
    """Simulate the closed loop of ``plant`` with each estimator, on common random numbers.

    Parameters
    ----------
    plant : Plant
        The true plant (its ``W``, ``V``, ``m0``, ``P0`` generate the noise and ``x[0]``).
    K : array_like of shape (m, n), or callable
        Static feedback ``u = -K x̂``, or a policy ``u = K(x_hat)`` mapping a ``(B, n)``
        tensor to a ``(B, m)`` tensor.
    estimators : mapping of str to estimator
        Estimators following the protocol of :mod:`lqgt.estimators.base`.
    Q : array_like, shape (n, n)
        State weight of the cost.
    R : array_like, shape (m, m)
        Input weight of the cost.
    N : array_like, shape (n, m), optional
        Cross weight of the cost.
    horizon : int
        Number of steps ``T``.
    batch : int
        Number of independent trajectories ``B``.
    seed : int
        Seed of the noise generator (results are reproducible per device).
    device : str or torch.device
        ``"cpu"`` or ``"cuda"``.
    dtype : torch.dtype, optional
        ``torch.float64`` (default) or ``torch.float32``.
    store : bool
        Keep the trajectories (``(B, T, ·)`` tensors). ``False`` keeps only the costs, so
        very large batches fit in memory.
    burn_in : int
        Steps excluded from the cost average (to estimate the stationary cost).
    chunk : int, optional
        Steps of noise generated at once; chosen from the batch size by default.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    SimulationResult

    Raises
    ------
    ShapeError, ConfigError
        Bad arguments (names the argument and what is allowed).
    """
    if not isinstance(plant, Plant):
        raise ConfigError(f"plant must be an lqgt.Plant, got {type(plant).__name__}")
    if not isinstance(estimators, Mapping) or not estimators:
        raise ConfigError("estimators must be a non-empty dict {name: estimator}")
    horizon, batch, burn_in = int(horizon), int(batch), int(burn_in)
    if horizon < 1 or batch < 1:
        raise ConfigError(f"horizon and batch must be >= 1, got horizon={horizon}, batch={batch}")
    if not 0 <= burn_in < horizon:
        raise ConfigError(f"burn_in must satisfy 0 <= burn_in < horizon={horizon}, got {burn_in}")
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    Qn, Rn, Nn = cost_weights(plant, Q, R, N)
    Kmat, policy = _policy(K, plant)
    for name, est in estimators.items():
        check_estimator(name, est, plant.n)
        if est.form == "current" and plant.has_feedthrough:
            raise ShapeError(f"estimator {name!r} is current-form but the plant has D != 0 (algebraic loop)")
    n, m, p = plant.n, plant.m, plant.p
    if chunk is None:
        chunk = max(1, min(horizon, _CHUNK_ELEMS.get(dev.type, 1 << 22) // (batch * (n + p))))
    chunk = int(chunk)

    noise = _Noise(plant, batch, seed, dev, dt)
    Qz = tensor(np.block([[Qn, Nn], [Nn.T, Rn]]), dev, dt)
    runners = {name: _make_runner(plant, Kmat, policy, est, noise.x0, dev, dt) for name, est in estimators.items()}
    total = {name: torch.zeros(batch, device=dev, dtype=dt) for name in estimators}
    stored = {k: {} for k in ("x", "x_hat", "u", "y")} if store else None
    if store:
        for name in estimators:
            for key, width in (("x", n), ("x_hat", n), ("u", m), ("y", p)):
                stored[key][name] = torch.empty(batch, horizon, width, device=dev, dtype=dt)

    bar = tqdm(total=horizon, disable=not progress, desc="simulate", unit="step", leave=False)
    t0 = 0
    while t0 < horizon:
        c = min(chunk, horizon - t0)
        w, v = noise.chunk(c)
        for name, run in runners.items():
            traj = run(w, v)  # dict of (c, B, ·) tensors: x, x_hat, u, y
            z = torch.cat([traj["x"], traj["u"]], dim=-1)
            step_cost = ((z @ Qz) * z).sum(-1)  # (c, B)
            lo = max(burn_in - t0, 0)
            if lo < c:
                total[name] += step_cost[lo:].sum(0)
            if store:
                for key in stored:
                    stored[key][name][:, t0:t0 + c] = traj[key].transpose(0, 1)
        t0 += c
        bar.update(c)
    bar.close()

    steps = horizon - burn_in
    cost, ci, per = {}, {}, {}
    for name in estimators:
        per_traj = total[name] / steps
        per[name] = per_traj
        finite = bool(torch.isfinite(per_traj).all())
        if not finite:
            warnings.warn(f"estimator {name!r}: the closed loop diverged (non-finite cost)", DivergenceWarning, stacklevel=2)
            cost[name], ci[name] = math.inf, (math.inf, math.inf)
            continue
        mean = float(per_traj.mean())
        if batch > 1:
            half = 1.959963984540054 * float(per_traj.std(unbiased=True)) / math.sqrt(batch)
            ci[name] = (mean - half, mean + half)
        else:
            ci[name] = (-math.inf, math.inf)
        cost[name] = mean
    settings = dict(horizon=horizon, batch=batch, seed=seed, device=str(dev), dtype=str(dt).replace("torch.", ""),
                    burn_in=burn_in, chunk=chunk, store=store)
    return SimulationResult(
        cost=cost, cost_ci=ci, cost_per_trajectory=per,
        x=stored["x"] if store else None, x_hat=stored["x_hat"] if store else None,
        u=stored["u"] if store else None, y=stored["y"] if store else None,
        t=np.arange(horizon) * plant.dt, settings=settings,
    )


def _make_runner(plant, Kmat, policy, est, x0, dev, dt):
    """Return a closure ``run(w, v) -> dict of (c, B, ·) tensors`` advancing one estimator's loop."""
    lin = getattr(est, "linear_gain", None)
    lin = lin() if callable(lin) else None
    if Kmat is not None and lin is not None:
        return _fused_runner(plant, Kmat, est.form, lin, x0, dev, dt)
    return _generic_runner(plant, Kmat, policy, est, x0, dev, dt)


def _fused_runner(plant, Kmat, form, lin, x0, dev, dt):
    """Fixed-gain linear observer under static feedback: ``ξ' = F ξ + G ν`` in one addmm per step."""
    gain, model = lin
    cl = closed_loop(plant, Kmat, gain, form, model=model)
    F_T = tensor(cl.F.T, dev, dt).contiguous()
    G_T, H_T, J_T = (tensor(M.T, dev, dt) for M in (cl.G, cl.H, cl.J))
    sl = cl.slices()
    xi = torch.cat([x0, tensor(model.m0, dev, dt).expand(x0.shape[0], -1)], dim=1)
    state = {"xi": xi}

    def run(w, v):
        c, B = w.shape[0], w.shape[1]
        drive = torch.cat([w, v], dim=-1) @ G_T  # (c, B, 2n)
        Xi = torch.empty(c + 1, B, xi.shape[1], device=dev, dtype=dt)
        Xi[0] = state["xi"]
        for k in range(c):
            torch.addmm(drive[k], Xi[k], F_T, out=Xi[k + 1])
        state["xi"] = Xi[c]
        out = Xi[:c] @ H_T + v @ J_T
        return {key: out[..., s] for key, s in sl.items()}

    return run


def _generic_runner(plant, Kmat, policy, est, x0, dev, dt):
    """Any estimator and controller: one Python step per time step."""
    A, B, C, D = (tensor(M, dev, dt) for M in (plant.A, plant.B, plant.C, plant.D))
    batch = x0.shape[0]
    est_state, x_hat = est.init(batch, device=dev, dtype=dt)
    if tuple(x_hat.shape) != (batch, plant.n):
        raise ShapeError(f"{type(est).__name__}.init returned an estimate of shape {tuple(x_hat.shape)}, expected {(batch, plant.n)}")
    Kt = None if Kmat is None else tensor(Kmat.T, dev, dt)

    def control(xh):
        if Kt is not None:
            return -(xh @ Kt)
        u = policy(xh)
        if not isinstance(u, torch.Tensor) or tuple(u.shape) != (batch, plant.m):
            got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
            raise ShapeError(f"the policy must return a tensor of shape {(batch, plant.m)}, got {got}")
        return u

    st = {"x": x0.clone(), "est": est_state, "x_hat": x_hat, "u_prev": torch.zeros(batch, plant.m, device=dev, dtype=dt)}
    predictor = est.form == "predictor"

    def run(w, v):
        c = w.shape[0]
        xs = torch.empty(c, batch, plant.n, device=dev, dtype=dt)
        xhs, us = torch.empty_like(xs), torch.empty(c, batch, plant.m, device=dev, dtype=dt)
        ys = torch.empty(c, batch, plant.p, device=dev, dtype=dt)
        x, es, xh, u_prev = st["x"], st["est"], st["x_hat"], st["u_prev"]
        for k in range(c):
            if predictor:
                u = control(xh)
                y = x @ C.T + u @ D.T + v[k]
                xhs[k] = xh
                es, xh = est.step(es, y, u)
            else:
                y = x @ C.T + v[k]
                es, xh = est.step(es, y, u_prev)
                u = control(xh)
                xhs[k] = xh
                u_prev = u
            xs[k], us[k], ys[k] = x, u, y
            x = x @ A.T + u @ B.T + w[k]
        st.update(x=x, est=es, x_hat=xh, u_prev=u_prev)
        return {"x": xs, "x_hat": xhs, "u": us, "y": ys}

    return run
