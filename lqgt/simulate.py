"""Batched closed-loop Monte Carlo simulation in torch, with common random numbers.

Every estimator in one call sees the same initial state, process noise and measurement
noise, so differences in cost are differences between estimators, not luck. Fixed-gain
linear observers under a static gain run as one fused linear recursion (one ``addmm``
per step); any other estimator or a callable policy runs the generic step loop.
"""

from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from ._linalg import as_matrix, psd_sqrt
from ._resources import limit_threads, work_threads
from ._torch import check_memory, resolve_device, resolve_dtype, resolve_seed, tensor
from .closed_loop import closed_loop
from .errors import ConfigError, NonFiniteError, ShapeError
from .estimators.base import check_estimator
from .lqg import _cost_weights
from .plant import Plant

__all__ = ["simulate", "SimulationResult", "DivergenceWarning", "GainMismatchWarning"]

Policy = Callable[[torch.Tensor], torch.Tensor]

#: Elements of noise generated per chunk (per device type) when ``chunk`` is not given.
_CHUNK_ELEMS = {"cpu": 1 << 22, "cuda": 1 << 27}
#: On CPU, draw the next chunk of noise in a helper thread while the current one is used
#: (the draw is single-threaded and the same numbers come out either way). Only done when
#: a core is left over by torch's intra-op threads, so that nothing is oversubscribed.
_CPU_PREFETCH = True
#: On CUDA, chunks whose state rows have at most this many elements (batch * 2n) are
#: advanced by a log-depth scan instead of one launch per step (launch-bound otherwise).
_SCAN_MAX_ROW = 1 << 16
_SCAN_DEVICES = ("cuda",)
#: Largest default chunk (steps). The default chunk does not depend on the horizon, so a
#: shorter run with the same seed is a prefix of a longer one.
_MAX_CHUNK_STEPS = 1024
#: Seed offset of the generator of the outlier mask (``simulate(..., outliers=...)``).
_OUTLIER_SEED_OFFSET = 0x0A7F_0011
#: With ``progress=None`` (auto), the progress bar opens once a run has taken this long (s).
_PROGRESS_DELAY_S = 2.0
#: Two-sided 95% quantile of the standard normal.
_Z95 = 1.959963984540054


def _half_width95(v: torch.Tensor) -> float:
    """Half-width of the 95% normal confidence interval of the mean of ``v`` (``inf`` for one sample)."""
    return _Z95 * float(v.std()) / math.sqrt(v.numel()) if v.numel() > 1 else math.inf


def _as_int(name: str, value) -> int:
    """``int(value)`` for integral values only (no silent truncation of 7.5, no bools)."""
    ok = not isinstance(value, bool)
    try:
        iv = int(value)
        ok = ok and iv == value
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(float("inf"))
        ok = False
    if not ok:
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    return iv


def _check_simulation_memory(batch: int, horizon: int, chunk: int, n_est: int, n: int, m: int, p: int,
                             store: bool, dev: torch.device, dt: torch.dtype) -> None:
    """Refuse up front (ResourceError) a run that cannot fit: noise chunks, states, stored trajectories."""
    item = torch.empty((), dtype=dt).element_size()
    row = 2 * n + m + p
    elems = 3 * chunk * batch * (n + p)  # noise chunk, the prefetched next one, and (w, v)
    elems += n_est * batch * (2 * row + 1)  # per-estimator state, step outputs and cost totals
    elems += n_est * chunk * batch * row  # one chunk of trajectories per estimator
    if store:
        elems += n_est * batch * horizon * row
    check_memory(float(elems) * item, dev,
                 f"simulate(batch={batch}, horizon={horizon}, store={store}) with {n_est} estimator(s)")


def _is_linear(plant) -> bool:
    """``True`` for an :class:`lqgt.Plant`; ``False`` for a nonlinear plant (``f``, ``h``)."""
    if isinstance(plant, Plant):
        return True
    if getattr(plant, "is_linear", True) is False and callable(getattr(plant, "f", None)) \
            and callable(getattr(plant, "h", None)):
        return False
    raise ConfigError(
        f"plant must be an lqgt.Plant or a nonlinear plant (lqgt.NonlinearPlant), got {type(plant).__name__}"
    )


def _spare_core() -> bool:
    """Whether this process may use more cores than torch's intra-op thread count."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return cores > torch.get_num_threads()


class DivergenceWarning(UserWarning):
    """A closed loop produced non-finite values (the loop is unstable or an estimator diverged)."""


class GainMismatchWarning(UserWarning):
    """An estimator assumes another feedback gain than the ``K`` it is simulated with.

    An estimator that models the loop ``u = -K x̂`` (e.g. a closed-loop
    :class:`lqgt.TransformerFilter`) exposes that gain as ``feedback_gain``; simulated under
    a different ``K`` (or a callable policy) it predicts with the wrong loop, and the cost
    changes without any other sign.
    """


def _check_feedback_gain(name: str, est, Kmat, policy) -> None:
    """Warn (:class:`GainMismatchWarning`) when ``est.feedback_gain`` is not the simulated ``K``."""
    assumed = getattr(est, "feedback_gain", None)
    if assumed is None:
        return
    assumed = np.asarray(assumed.detach().cpu() if isinstance(assumed, torch.Tensor) else assumed, dtype=float)
    if Kmat is None:
        warnings.warn(f"estimator {name!r} assumes the static feedback u = -K x̂ with its feedback_gain, but the loop "
                      "is closed by a callable policy: its predictions use a loop that is not simulated",
                      GainMismatchWarning, stacklevel=4)
        return
    scale = max(float(np.abs(Kmat).max(initial=0.0)), float(np.abs(assumed).max(initial=0.0)), 1e-300)
    if assumed.shape != Kmat.shape or not np.allclose(assumed, Kmat, rtol=1e-9, atol=1e-12 * scale):
        diff = float(np.abs(assumed - Kmat).max()) if assumed.shape == Kmat.shape else math.inf
        warnings.warn(f"estimator {name!r} was built for the feedback gain K = {np.array2string(assumed, precision=4)} "
                      f"but is simulated with K = {np.array2string(Kmat, precision=4)} (largest difference "
                      f"{diff:.3g}): its predictions assume another loop; build it with the K you simulate",
                      GainMismatchWarning, stacklevel=4)


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

    def table(self) -> list[dict[str, Any]]:
        """The costs as rows: one dict per estimator (no pandas needed).

        Returns
        -------
        list of dict
            In the order simulated, each ``{"estimator", "cost", "ci_low", "ci_high",
            "ci_half_width", "batch", "steps"}`` (plain floats and ints; ``inf`` for a
            diverged loop).
        """
        steps = int(self.settings.get("horizon", len(self.t))) - int(self.settings.get("burn_in", 0))
        rows = []
        for name in self.cost:
            lo, hi = (float(v) for v in self.cost_ci[name])
            rows.append({"estimator": name, "cost": float(self.cost[name]), "ci_low": lo, "ci_high": hi,
                         "ci_half_width": (hi - lo) / 2.0 if math.isfinite(hi - lo) else math.inf,
                         "batch": int(self.cost_per_trajectory[name].numel()), "steps": steps})
        return rows

    def to_pandas(self):
        """The costs and their 95% intervals as a :class:`pandas.DataFrame` (one row per estimator).

        Returns
        -------
        pandas.DataFrame
            Indexed by ``estimator``; columns ``cost``, ``ci_low``, ``ci_high``,
            ``ci_half_width``, ``batch``, ``steps`` (see :meth:`table`).

        Raises
        ------
        ImportError
            pandas is not installed (it is optional: ``pip install pandas``).
        """
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("SimulationResult.to_pandas needs pandas, which is not installed "
                              "(pip install pandas); SimulationResult.table() gives the same rows as dicts") from None
        return pd.DataFrame(self.table()).set_index("estimator")

    def to_numpy(self) -> dict[str, Any]:
        """Everything as numpy arrays (on the CPU).

        Returns
        -------
        dict
            ``"cost"`` and ``"cost_ci"`` (``{name: float}``, ``{name: (lo, hi)}``),
            ``"cost_per_trajectory"`` (``{name: (B,)}``), ``"x"``, ``"x_hat"``, ``"u"``,
            ``"y"`` (``{name: (B, T, ·)}``, or ``None`` without stored trajectories), ``"t"``
            ``(T,)`` and ``"settings"``.
        """
        def arr(d):
            return None if d is None else {k: v.detach().cpu().numpy() for k, v in d.items()}

        return {"cost": dict(self.cost), "cost_ci": {k: tuple(v) for k, v in self.cost_ci.items()},
                "cost_per_trajectory": arr(self.cost_per_trajectory), "x": arr(self.x), "x_hat": arr(self.x_hat),
                "u": arr(self.u), "y": arr(self.y), "t": np.asarray(self.t), "settings": dict(self.settings)}


class _Noise:
    """Draws ``x0`` and chunks of standard normals ``e``, shared by all estimators.

    ``[w; v] = blockdiag(W^{1/2}, V^{1/2}) e``: the fused runner folds the square roots
    into its own matrices and reads ``e`` directly; :meth:`split` gives ``(w, v)`` for the
    generic runner. The stream of numbers depends only on the chunk sizes asked for.
    """

    def __init__(self, plant: Plant, batch: int, seed: int, device, dtype, enabled: bool = True,
                 outliers: tuple[float, float] | None = None) -> None:
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(int(seed))
        self.batch, self.device, self.dtype, self.enabled = batch, device, dtype, enabled
        # contaminated measurement noise: the outlier mask has its own generator, so the
        # Gaussian stream (and x0) are the same with and without outliers
        self.outliers = outliers if enabled else None
        if self.outliers is not None:
            self.gen_out = torch.Generator(device=device)
            self.gen_out.manual_seed(int(seed) + _OUTLIER_SEED_OFFSET)
        self.n, self.p = plant.n, plant.p
        self.Wh_np, self.Vh_np = psd_sqrt(plant.W), psd_sqrt(plant.V)
        self.Wh = tensor(self.Wh_np, device, dtype)
        self.Vh = tensor(self.Vh_np, device, dtype)
        m0 = tensor(plant.m0, device, dtype)
        if enabled:
            P0h = tensor(psd_sqrt(plant.P0), device, dtype)
            e0 = torch.randn(batch, plant.n, generator=self.gen, device=device, dtype=dtype)
            self.x0 = m0 + e0 @ P0h.T
        else:
            self.x0 = m0.expand(batch, -1).clone()

    @property
    def kernel_seed(self) -> int:
        """The Philox key of the fused kernels (the generator's seed, in ``[0, 2**63)``)."""
        return int(self.gen.initial_seed()) & ((1 << 63) - 1)

    def draw(self, c: int) -> torch.Tensor:
        """Return standard normals ``e`` ``(c, B, n + p)`` (contiguous; zeros without noise)."""
        if not self.enabled:
            return torch.zeros(c, self.batch, self.n + self.p, device=self.device, dtype=self.dtype)
        e = torch.randn(c, self.batch, self.n + self.p, generator=self.gen, device=self.device, dtype=self.dtype)
        if self.outliers is not None:  # with probability prob, v[t] of a trajectory is scaled by `scale`
            prob, scale = self.outliers
            hit = torch.rand(c, self.batch, 1, generator=self.gen_out, device=self.device, dtype=self.dtype) < prob
            e[..., self.n:] *= hit.to(self.dtype) * (scale - 1.0) + 1.0
        return e

    def split(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``w`` ``(c, B, n)`` and ``v`` ``(c, B, p)`` from ``e``."""
        return e[..., : self.n] @ self.Wh.T, e[..., self.n:] @ self.Vh.T


def _chunks(noise: _Noise, horizon: int, chunk: int, prefetch: bool):
    """Yield ``(t0, e)`` over the horizon; on CPU the next chunk is drawn in a helper thread.

    Drawing is single-threaded and in the same order either way, so the numbers are the
    same; the thread only lets the next draw overlap the current chunk's arithmetic.
    """
    starts = list(range(0, horizon, chunk))
    sizes = [chunk] * len(starts)  # whole chunks always (the stream must not depend on the horizon)
    if not prefetch or len(starts) < 2:
        for t0, c in zip(starts, sizes):
            yield t0, noise.draw(c)[: horizon - t0]
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lqgt-noise") as pool:
        fut = pool.submit(noise.draw, sizes[0])
        try:
            for i, t0 in enumerate(starts):
                e = fut.result()
                fut = pool.submit(noise.draw, sizes[i + 1]) if i + 1 < len(starts) else None
                yield t0, e[: horizon - t0]
        finally:
            if fut is not None:
                fut.cancel()
                try:
                    fut.result()
                except BaseException:  # noqa: BLE001 - the draw is abandoned anyway
                    pass


def _disturbance(d, batch: int, horizon: int, m: int, dev, dt):
    """Check the ``disturbance`` argument; return a function ``chunk(t0, c) -> (c, B, m)``."""
    if d is None:
        return None
    if callable(d) and not isinstance(d, (torch.Tensor, np.ndarray)):
        def chunk_fn(t0, c):
            rows = []
            for t in range(t0, t0 + c):
                dk = d(t)
                if not isinstance(dk, torch.Tensor) or tuple(dk.shape) != (batch, m):
                    got = tuple(dk.shape) if isinstance(dk, torch.Tensor) else type(dk).__name__
                    raise ShapeError(f"disturbance(t) must return a tensor of shape {(batch, m)}, got {got} at t={t}")
                rows.append(dk.to(device=dev, dtype=dt))
            return torch.stack(rows)
        return chunk_fn
    D = torch.as_tensor(d).to(device=dev, dtype=dt)
    if D.ndim == 2 and tuple(D.shape) == (horizon, m):
        D = D.unsqueeze(0).expand(batch, -1, -1)
    if tuple(D.shape) != (batch, horizon, m):
        raise ShapeError(f"disturbance has shape {tuple(D.shape)}, expected {(batch, horizon, m)} or {(horizon, m)}")
    if not bool(torch.isfinite(D).all()):
        raise NonFiniteError("disturbance contains NaN or infinite entries")
    return lambda t0, c: D[:, t0:t0 + c].transpose(0, 1)


def _check_outliers(outliers) -> tuple[float, float] | None:
    """Check ``outliers=(prob, scale)`` of :func:`simulate`; ``None`` when off."""
    if outliers is None:
        return None
    try:
        prob, scale = (float(v) for v in outliers)
    except (TypeError, ValueError):
        raise ConfigError(f"outliers must be a pair (prob, scale), got {outliers!r}") from None
    if not (math.isfinite(prob) and 0.0 <= prob <= 1.0):
        raise ConfigError(f"outliers: prob must satisfy 0 <= prob <= 1, got {prob!r}")
    if not (math.isfinite(scale) and scale > 0.0):
        raise ConfigError(f"outliers: scale must be a finite number > 0, got {scale!r}")
    return prob, scale


def _policy(K, plant: Plant) -> tuple[np.ndarray | None, Policy | None]:
    """Split the controller argument into a static gain or a callable policy."""
    if callable(K) and not isinstance(K, (np.ndarray, torch.Tensor)):
        return None, K
    if isinstance(K, torch.Tensor):
        K = K.detach().cpu().numpy()
    return as_matrix("K", K, (plant.m, plant.n)), None


@torch.no_grad()  # estimators with parameters (lqgt.learn) are run without building a graph
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
    progress: bool | None = None,
    noise: bool = True,
    disturbance=None,
    outliers: tuple[float, float] | None = None,
    backend: str = "auto",
) -> SimulationResult:
    """Simulate the closed loop of ``plant`` with each estimator, on common random numbers.

    Parameters
    ----------
    plant : Plant or NonlinearPlant
        The true plant (its ``W``, ``V``, ``m0``, ``P0`` generate the noise and ``x[0]``).
        A nonlinear plant (``x[t+1] = f(x, u) + w``, ``y = h(x) + v``) runs the generic loop.
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
    seed : int, None or numpy.random.Generator
        Seed of the noise generator (results are reproducible per device), an integer in
        ``[0, 2**64)``. ``None`` draws a fresh random seed and a numpy ``Generator`` draws
        one from it; the seed used is in ``result.settings["seed"]``.
    device : str or torch.device
        ``"cpu"`` or ``"cuda"``. On CPU, runs whose per-step tensors are small
        (``batch × width`` below ``lqgt._resources.SMALL_WORK`` elements) use one torch
        intra-op thread for the length of the run (torch's setting is restored
        afterwards; the environment variable ``LQGT_NUM_THREADS`` overrides): the
        thread pool costs more than it saves on such tensors, most of all on a busy machine.
    dtype : torch.dtype, optional
        ``torch.float64`` (default) or ``torch.float32``.
    store : bool
        Keep the trajectories (``(B, T, ·)`` tensors). ``False`` keeps only the costs, so
        very large batches fit in memory.
    burn_in : int
        Steps excluded from the cost average (to estimate the stationary cost).
    chunk : int, optional
        Steps of noise generated at once; chosen from the batch size by default.
    progress : bool, optional
        Show a tqdm progress bar (on stderr). ``None`` (default, auto): the bar opens
        only when the run is still going after 2 seconds, so short runs print nothing;
        ``True``: from the start; ``False``: never.
    noise : bool
        ``False`` switches the process and measurement noise off and starts every
        trajectory at ``m0`` (deterministic runs, e.g. frequency responses).
    disturbance : torch.Tensor of shape (B, T, m) or (T, m), or callable, optional
        Input disturbance ``d[t]`` added to the controller output before it enters the
        plant (``x[t+1] = A x + B (u + d) + w``, ``y = C x + D (u + d) + v``); a callable
        maps the step ``t`` to a ``(B, m)`` tensor. Estimators receive, and ``res.u``
        stores, the controller output ``u`` without ``d``; the cost uses ``u`` too.
        With a disturbance every estimator runs the generic step loop.
    outliers : (float, float), optional
        Contaminated measurement noise ``(prob, scale)``: independently for each step and
        trajectory, with probability ``prob`` the whole measurement-noise vector ``v[t]`` is
        multiplied by ``scale`` (e.g. ``(0.05, 10.0)``: 5% outliers at 10x the noise standard
        deviation). The outlier pattern comes from its own generator (seeded by ``seed``), so
        every estimator sees the same outliers and the Gaussian numbers are the same as
        without outliers. The fused linear path stays exact (it reads the same scaled noise).
    backend : {"auto", "torch", "triton"}
        ``"triton"``: on CUDA, fixed-gain linear loops (every estimator offering
        ``linear_gain()``, a static ``K``, no disturbance or outliers, with noise) run the
        fused Triton kernel of :mod:`lqgt.kernels` with its own Philox noise, shared by all
        estimators of the call (the numbers differ from the torch path's, the distribution
        is the same); anything else, a CPU device or a missing Triton falls back to the
        torch path with one warning. ``"auto"`` (default): the kernel where it applies on
        CUDA with at least 10,000 trajectories and a loop of moderate size (up to about
        n = 8; ``AUTO_TRITON_MIN_BATCH``, ``AUTO_TRITON_MAX_TERMS``), else the torch path
        (a missing Triton warns once per process). ``"torch"``: always the
        torch path (the numbers of earlier lqgt versions). The Transformer Filter (kernel
        form) has a fused kernel too (:mod:`lqgt.kernels.tf_loop`, same Philox noise):
        ``"triton"`` runs it at any size, ``"auto"`` at any batch size (its torch path is far
        slower) while its window fits in registers (token width × window rounded up to a power
        of two at most ``AUTO_TRITON_MAX_WINDOW_CELLS`` = 1024; e.g. ``two_mass`` up to
        H = 128); every estimator of the call must have a fused kernel for either to run.

    Returns
    -------
    SimulationResult

    Raises
    ------
    ShapeError, ConfigError
        Bad arguments (names the argument and what is allowed).
    ResourceError
        The run would need more memory than is free on ``device`` (the message gives the
        estimate; ``store=False`` drops the trajectories, the largest part).
        Bad arguments (names the argument and what is allowed).

    Warns
    -----
    DivergenceWarning
        A loop diverged (its cost is ``inf``).
    GainMismatchWarning
        An estimator's ``feedback_gain`` (the ``K`` it was built for) differs from ``K``,
        or the loop is closed by a callable policy.
    """
    linear = _is_linear(plant)
    if not isinstance(estimators, Mapping) or not estimators:
        raise ConfigError("estimators must be a non-empty dict {name: estimator}")
    horizon, batch, burn_in = (_as_int(k, v) for k, v in (("horizon", horizon), ("batch", batch), ("burn_in", burn_in)))
    if horizon < 1 or batch < 1:
        raise ConfigError(f"horizon and batch must be >= 1, got horizon={horizon}, batch={batch}")
    if not 0 <= burn_in < horizon:
        raise ConfigError(f"burn_in must satisfy 0 <= burn_in < horizon={horizon}, got {burn_in}")
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    Qz_np = _cost_weights(plant, Q, R, N)[3]
    Kmat, policy = _policy(K, plant)
    for name, est in estimators.items():
        check_estimator(name, est, plant.n)
        if est.form == "current" and plant.has_feedthrough:
            raise ShapeError(f"estimator {name!r} is current-form but the plant has D != 0 (algebraic loop)")
        _check_feedback_gain(name, est, Kmat, policy)
    n, m, p = plant.n, plant.m, plant.p
    if chunk is None:
        chunk = max(1, min(_MAX_CHUNK_STEPS, _CHUNK_ELEMS.get(dev.type, 1 << 22) // (batch * (n + p))))
    chunk = _as_int("chunk", chunk)
    if chunk < 1:
        raise ConfigError(f"chunk must be >= 1, got {chunk}")
    seed = resolve_seed(seed)
    _check_simulation_memory(batch, horizon, min(chunk, horizon), len(estimators), n, m, p, store, dev, dt)
    dist = _disturbance(disturbance, batch, horizon, m, dev, dt)

    outliers = _check_outliers(outliers)
    noise_src = _Noise(plant, batch, seed, dev, dt, enabled=bool(noise), outliers=outliers)
    # the kernel only when every estimator takes it: all of them must see the same (Philox) noise
    kinds = [_fused_kind(est) for est in estimators.values()]
    plain = linear and dist is None and outliers is None and bool(noise) and Kmat is not None
    use_triton = _use_triton(backend, dev, plain and all(k is not None for k in kinds),
                             batch, _loop_terms(plant, store),
                             auto_ok=all(_auto_fused(est, k) for est, k in zip(estimators.values(), kinds)),
                             min_batch=AUTO_TRITON_TF_MIN_BATCH if "tf" in kinds else AUTO_TRITON_MIN_BATCH)
    runners = {
        name: _make_runner(plant, linear, Kmat, policy, est, noise_src, Qz_np, dev, dt, min(chunk, horizon), store,
                           fused_ok=linear and dist is None, triton=use_triton)
        for name, est in estimators.items()
    }
    if not any(getattr(run, "needs_e", True) for run in runners.values()):  # all fused kernels: no noise draws
        chunk = horizon if not store else max(1, min(horizon, (1 << 26) // (batch * (2 * n + m + p))))
    need_wv = any(getattr(run, "needs_wv", True) for run in runners.values())
    total = {name: torch.zeros(batch, device=dev, dtype=dt) for name in estimators}
    stored = {k: {} for k in ("x", "x_hat", "u", "y")} if store else None
    if store:
        for name in estimators:
            for key, width in (("x", n), ("x_hat", n), ("u", m), ("y", p)):
                stored[key][name] = torch.empty(batch, horizon, width, device=dev, dtype=dt)

    # progress=None (auto): the bar opens only once the run has taken _PROGRESS_DELAY_S seconds
    bar = tqdm(total=horizon, disable=progress is False, delay=0.0 if progress else _PROGRESS_DELAY_S,
               desc="simulate", unit="step", leave=False)
    width = max(2 * n + p, max(int(getattr(est, "window", 1) or 1) * (n + p) for est in estimators.values()))
    with limit_threads(work_threads(batch * width, dev)):  # small per-step work: one intra-op thread on CPU
        prefetch = _CPU_PREFETCH and noise and dev.type == "cpu" and _spare_core()
        no_e = not any(getattr(run, "needs_e", True) for run in runners.values())
        chunks = (((t0, torch.empty(min(chunk, horizon - t0), 0, 0, device=dev, dtype=dt))
                   for t0 in range(0, horizon, chunk)) if no_e
                  else _chunks(noise_src, horizon, chunk, prefetch=prefetch))
        for t0, e in chunks:
            c = e.shape[0]
            lo = min(max(burn_in - t0, 0), c)  # steps of this chunk before burn_in are not costed
            wv = noise_src.split(e) if need_wv else None
            d = dist(t0, c) if dist is not None else None
            for name, run in runners.items():
                step_sum, traj = run(e, wv, lo, d, t0)  # (B,) cost over steps lo..c-1; (c, B, ·) tensors
                if step_sum is not None:
                    total[name] += step_sum
                if store:
                    for key in stored:
                        stored[key][name][:, t0:t0 + c] = traj[key].transpose(0, 1)
            bar.update(c)
    bar.close()

    steps = horizon - burn_in
    cost, ci, per = {}, {}, {}
    for name in estimators:
        per_traj = total[name] / steps
        per[name] = per_traj
        finite = bool(torch.isfinite(per_traj).all())
        if not finite:
            at = getattr(runners[name], "diverged_at", None)
            where = f" (the state first became non-finite at step {at})" if at is not None else ""
            warnings.warn(f"estimator {name!r}: the closed loop diverged (non-finite cost){where}",
                          DivergenceWarning, stacklevel=2)
            cost[name], ci[name] = math.inf, (math.inf, math.inf)
            continue
        mean = float(per_traj.mean())
        half = _half_width95(per_traj)
        ci[name] = (mean - half, mean + half)
        cost[name] = mean
    settings = dict(horizon=horizon, batch=batch, seed=seed, device=str(dev), dtype=str(dt).replace("torch.", ""),
                    burn_in=burn_in, chunk=chunk, store=store, noise=bool(noise), disturbance=dist is not None,
                    outliers=outliers)
    return SimulationResult(
        cost=cost, cost_ci=ci, cost_per_trajectory=per,
        x=stored["x"] if store else None, x_hat=stored["x_hat"] if store else None,
        u=stored["u"] if store else None, y=stored["y"] if store else None,
        t=np.arange(horizon) * plant.dt, settings=settings,
    )


#: ``backend="auto"`` runs the fused kernel on CUDA from this many trajectories on (measured on
#: an H200 at n = 4: 5x the torch path at 1e4, 12x at 1e6; docs/gpu.md) ...
AUTO_TRITON_MIN_BATCH = 10_000
#: ... and for loops of at most this many non-zero matrix entries (the kernel is unrolled over
#: them; a dense n = 16 loop has ~6000 and takes a minute to compile, so "auto" leaves it to
#: the torch path and ``backend="triton"`` asks for it).
AUTO_TRITON_MAX_TERMS = 1500
#: With a Transformer Filter in the call, "auto" fuses from this many trajectories on: the TF's
#: torch path is bound by kernel launches and its fused loop is 8-90x faster at every batch size
#: measured (1e2 to 1e6, H200, float32 and float64), while the fused linear loop of the same call
#: is no slower than its torch path at small batches (1.0x at 1e2, 1.2x at 1e3).
AUTO_TRITON_TF_MIN_BATCH = 1
_warned_no_triton = False


def _loop_terms(plant, store: bool) -> int:
    """Upper bound of the fused kernel's unrolled terms per step (dense matrices of the loop)."""
    n, m, p = plant.n, plant.m, plant.p
    w, q, k = 2 * n, n + p, n + m
    return (w + q) * (w + k + (w + m + p if store else 0))


#: ``backend="auto"`` runs the fused Transformer Filter only while its window fits in registers:
#: ``d × H'`` (token width times the window rounded up to a power of two) at most this
AUTO_TRITON_MAX_WINDOW_CELLS = 1024


def _auto_fused(est, kind: str | None) -> bool:
    """Whether ``backend="auto"`` may run ``est`` in its fused kernel ``kind``."""
    if kind == "linear":
        return True
    if kind == "tf":
        from .kernels.tf_loop import _p2  # the kernel's window slots

        return est._S_chol.shape[0] * _p2(est.window) <= AUTO_TRITON_MAX_WINDOW_CELLS  # token width × slots
    return False


def _fused_kind(est) -> str | None:
    """Which fused kernel can run ``est``: ``"linear"`` (a fixed gain), ``"tf"`` (the Transformer Filter's
    kernel form) or ``None``."""
    lin = getattr(est, "linear_gain", None)
    if callable(lin) and lin() is not None:
        return "linear"
    from .estimators.transformer import TransformerFilter

    if isinstance(est, TransformerFilter) and est.impl == "kernel":
        return "tf"
    return None


def _use_triton(backend: str, dev, applies: bool, batch: int = 0, terms: int = 0, auto_ok: bool = True,
                min_batch: int = AUTO_TRITON_MIN_BATCH) -> bool:
    """Whether the fused Triton kernels run (``backend`` checked; a missing Triton warns once).

    ``applies``: every estimator of the call has a fused kernel (and the loop is plain: linear
    plant, static ``K``, noise, no disturbance or outliers); ``auto_ok``: all of them are
    kernels that ``"auto"`` may pick, from ``min_batch`` trajectories on.
    """
    global _warned_no_triton
    if backend not in ("auto", "torch", "triton"):
        raise ConfigError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    if backend == "torch":
        return False
    if backend == "auto":
        if not (applies and auto_ok and dev.type == "cuda" and batch >= min_batch
                and terms <= AUTO_TRITON_MAX_TERMS):
            return False
        from .kernels import triton_available

        if not triton_available():
            if not _warned_no_triton:
                _warned_no_triton = True
                warnings.warn("Triton is not installed: the fused GPU kernel is off, using the torch path",
                              RuntimeWarning, stacklevel=3)
            return False
        return True
    if not applies:
        warnings.warn("backend='triton' applies only to fixed-gain linear observers and the Transformer Filter "
                      "(kernel form) on a linear plant under a static K without disturbance or outliers; using "
                      "the torch path", RuntimeWarning, stacklevel=3)
        return False
    from .kernels import triton_available

    if dev.type != "cuda" or not triton_available():
        why = "device is not CUDA" if dev.type != "cuda" else "Triton is not installed"
        warnings.warn(f"backend='triton': {why}; using the torch path", RuntimeWarning, stacklevel=3)
        return False
    return True


def _make_runner(plant, linear, Kmat, policy, est, noise, Qz_np, dev, dt, chunk, store, fused_ok=True,
                 triton=False):
    """Return a runner ``run(e, wv, lo, d, t0) -> (cost sum over steps lo.. of the chunk (B,), trajectories)``."""
    lin = getattr(est, "linear_gain", None)
    lin = lin() if callable(lin) and fused_ok else None
    if triton and Kmat is not None and lin is not None:
        from .kernels.linear_loop import TritonRunner

        return TritonRunner(plant, Kmat, est.form, lin, noise, Qz_np, dev, dt, store)
    if triton and Kmat is not None and _fused_kind(est) == "tf":
        from .kernels.tf_loop import TritonTFRunner

        return TritonTFRunner(plant, Kmat, est, noise, Qz_np, dev, dt, store)
    if Kmat is not None and lin is not None:
        return _FusedRunner(plant, Kmat, est.form, lin, noise, Qz_np, dev, dt, chunk, store)
    return _GenericRunner(plant, linear, Kmat, policy, est, noise.x0, Qz_np, dev, dt, store)


def _quadratic_factor(Qz: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Return ``(U, sign)`` with ``z'Qz z = sum_i sign_i (z'U)_i^2`` (``sign is None``: all +1).

    ``U = V sqrt|lambda|`` from the eigen-decomposition of the symmetric ``Qz``; zero
    eigenvalues drop out, so the cost needs only ``rank(Qz)`` columns.
    """
    lam, V = np.linalg.eigh(0.5 * (Qz + Qz.T))
    keep = np.abs(lam) > 1e-15 * max(float(np.abs(lam).max()), 1e-300)
    if not keep.any():
        keep[-1] = True
    lam, V = lam[keep], V[:, keep]
    U = V * np.sqrt(np.abs(lam))
    return U, (None if (lam >= 0).all() else np.sign(lam))


class _FusedRunner:
    """Fixed-gain linear observer under static feedback: ``ξ' = F ξ + G ν`` in one addmm per step.

    Per chunk of ``c`` steps: one GEMM turns the standard normals ``e`` into the drive
    ``G [w; v]`` (written straight into the state buffer), ``c`` in-place ``addmm`` advance
    the recursion, and two GEMMs and one reduction give each trajectory's cost
    ``|Qz^{1/2} z|^2`` with ``z = [x; u] = Hz ξ + Jz v``, without forming ``x``/``u``
    unless trajectories are stored. Buffers are reused from chunk to chunk.

    On CUDA with a small batch (``B * 2n <= _SCAN_MAX_ROW``) the ``c`` launches of the
    step loop would dominate, so the chunk is advanced instead by a log-depth scan
    (``ξ[k] = Σ_j F^(k-j) d[j]`` by doubling: ``ceil(log2(c+1))`` GEMMs with ``F^(2^i)``),
    the same numbers to rounding.
    """

    needs_wv = False

    def __init__(self, plant, Kmat, form, lin, noise, Qz_np, dev, dt, chunk, store):
        gain, model = lin
        cl = closed_loop(plant, Kmat, gain, form, model=model)
        n, p = plant.n, plant.p
        Wh, Vh = noise.Wh_np, noise.Vh_np
        # e -> [w; v]: blockdiag(Wh, Vh); only v enters the outputs
        S = np.zeros((n + p, n + p))
        S[:n, :n], S[n:, n:] = Wh, Vh
        Sv = np.vstack([np.zeros((n, p)), Vh.T])  # (n+p, p): v = e @ Sv
        sl = cl.slices()
        rows = np.r_[np.arange(sl["x"].start, sl["x"].stop), np.arange(sl["u"].start, sl["u"].stop)]
        U, sign = _quadratic_factor(Qz_np)
        self.F_T = tensor(cl.F.T, dev, dt).contiguous()
        self.Gd = tensor((cl.G @ S).T, dev, dt).contiguous()          # (n+p, 2n): drive = e @ Gd
        self.Hq = tensor(cl.H[rows].T @ U, dev, dt).contiguous()      # (2n, k)
        self.Jq = tensor(Sv @ cl.J[rows].T @ U, dev, dt).contiguous()  # (n+p, k)
        self.sign = None if sign is None else tensor(sign, dev, dt)
        if store:
            self.H_T = tensor(cl.H.T, dev, dt).contiguous()
            self.Je = tensor(Sv @ cl.J.T, dev, dt).contiguous()
        self.sl, self.store = sl, store
        B, w = noise.batch, 2 * n
        self.Xi = torch.empty(chunk + 1, B, w, device=dev, dtype=dt)
        self.Xi[0, :, :n] = noise.x0
        self.Xi[0, :, n:] = tensor(model.m0, dev, dt)
        self.r = torch.empty(chunk * B, self.Hq.shape[1], device=dev, dtype=dt)
        self.scan = dev.type in _SCAN_DEVICES and chunk > 1 and B * w <= _SCAN_MAX_ROW
        if self.scan:
            self.Xi2 = torch.empty_like(self.Xi)
            pows, P = [], cl.F.T
            for _ in range(max(1, int(chunk).bit_length())):  # F'^(2^i) while 2^i <= chunk
                pows.append(tensor(P, dev, dt).contiguous())
                P = P @ P
            self.pows = pows

    def _scan(self, c: int) -> torch.Tensor:
        """Advance ``Xi[:c+1]`` (state, then drives) by doubling; return the buffer that holds it."""
        X, Y = self.Xi, self.Xi2
        w = X.shape[2]
        s, i = 1, 0
        while s <= c:
            # Y[k] = X[k] + X[k-s] F'^s for k >= s, Y[k] = X[k] below s
            Y[:s].copy_(X[:s])
            torch.addmm(X[s:c + 1].view(-1, w), X[:c + 1 - s].view(-1, w), self.pows[i],
                        out=Y[s:c + 1].view(-1, w))
            X, Y = Y, X
            s, i = 2 * s, i + 1
        self.Xi, self.Xi2 = X, Y
        return X

    def __call__(self, e, wv, lo, d=None, t0=0):
        c, B, q = e.shape
        w = self.Xi.shape[2]
        torch.mm(e.view(c * B, q), self.Gd, out=self.Xi[1:c + 1].view(c * B, w))
        if self.scan:
            Xi = self._scan(c)[: c + 1]
        else:
            Xi = self.Xi[: c + 1]
            F_T, rows = self.F_T, Xi.unbind(0)
            for k in range(c):
                rows[k + 1].addmm_(rows[k], F_T)
        step_sum = None
        if lo < c:
            cc = c - lo
            r = self.r[: cc * B]
            torch.mm(Xi[lo:c].reshape(cc * B, w), self.Hq, out=r)
            r.addmm_(e[lo:].reshape(cc * B, q), self.Jq)
            r3 = r.view(cc, B, -1)
            if self.sign is None:
                step_sum = torch.linalg.vector_norm(r3, dim=(0, 2)).square_()
            else:
                step_sum = (r3 * r3 * self.sign).sum((0, 2))
        traj = None
        if self.store:
            out = torch.mm(Xi[:c].reshape(c * B, w), self.H_T).addmm_(e.view(c * B, q), self.Je).view(c, B, -1)
            traj = {key: out[..., s] for key, s in self.sl.items()}
        self.Xi[0].copy_(Xi[c])
        return step_sum, traj


class _GenericRunner:
    """Any estimator and controller: one Python step per time step."""

    needs_wv = True

    def __init__(self, plant, linear, Kmat, policy, est, x0, Qz_np, dev, dt, store):
        self._output, self._next = _plant_maps(plant, linear, dev, dt)
        self.diverged_at: int | None = None
        batch = x0.shape[0]
        est_state, x_hat = est.init(batch, device=dev, dtype=dt)
        if tuple(x_hat.shape) != (batch, plant.n):
            raise ShapeError(f"{type(est).__name__}.init returned an estimate of shape {tuple(x_hat.shape)}, expected {(batch, plant.n)}")
        self.Kt = None if Kmat is None else tensor(-Kmat.T, dev, dt).contiguous()
        self.policy, self.est, self.plant = policy, est, plant
        self.Qz = tensor(Qz_np, dev, dt)
        self.batch, self.dev, self.dt = batch, dev, dt
        self.st = {"x": x0.clone(), "est": est_state, "x_hat": x_hat,
                   "u_prev": torch.zeros(batch, plant.m, device=dev, dtype=dt)}
        self.predictor = est.form == "predictor"

    def control(self, xh):
        if self.Kt is not None:
            return xh @ self.Kt
        u = self.policy(xh)
        shape = (self.batch, self.plant.m)
        if not isinstance(u, torch.Tensor) or tuple(u.shape) != shape:
            got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
            raise ShapeError(f"the policy must return a tensor of shape {shape}, got {got}")
        return u

    def _check(self, xh):
        shape = (self.batch, self.plant.n)
        if not isinstance(xh, torch.Tensor) or tuple(xh.shape) != shape:
            got = tuple(xh.shape) if isinstance(xh, torch.Tensor) else type(xh).__name__
            raise ShapeError(f"{type(self.est).__name__}.step returned an estimate of shape {got}, expected {shape}")
        return xh

    def __call__(self, e, wv, lo, d=None, t0=0):
        w, v = wv
        c, batch, plant = w.shape[0], self.batch, self.plant
        dev, dt = self.dev, self.dt
        xs = torch.empty(c, batch, plant.n, device=dev, dtype=dt)
        xhs, us = torch.empty_like(xs), torch.empty(c, batch, plant.m, device=dev, dtype=dt)
        ys = torch.empty(c, batch, plant.p, device=dev, dtype=dt)
        est, control, check, output, advance = self.est, self.control, self._check, self._output, self._next
        st = self.st
        x, es, xh, u_prev = st["x"], st["est"], st["x_hat"], st["u_prev"]
        for k in range(c):
            xs[k] = x
            if self.predictor:
                u = control(xh)
                u_in = u if d is None else u + d[k]
                y = output(x, u_in, v[k])
                xhs[k] = xh
                es, xh = est.step(es, y, u)
                check(xh)
            else:
                y = output(x, None, v[k])  # D = 0 in current form (checked in simulate)
                es, xh = est.step(es, y, u_prev)
                u = control(check(xh))
                xhs[k] = xh
                u_prev = u
                u_in = u if d is None else u + d[k]
            us[k], ys[k] = u, y
            x = advance(x, u_in, w[k])
        st.update(x=x, est=es, x_hat=xh, u_prev=u_prev)
        if self.diverged_at is None and not bool(torch.isfinite(x).all()):
            bad = (~torch.isfinite(xs).reshape(c, -1).all(dim=1)).nonzero()
            self.diverged_at = t0 + (int(bad[0]) if bad.numel() else c)
        step_sum = None
        if lo < c:
            z = torch.cat([xs[lo:], us[lo:]], dim=-1)
            step_sum = ((z @ self.Qz) * z).sum(-1).sum(0)
        return step_sum, {"x": xs, "x_hat": xhs, "u": us, "y": ys}


def _plant_maps(plant, linear: bool, dev, dt):
    """The plant's ``output(x, u_in, v)`` and ``advance(x, u_in, w)``, chosen once per runner.

    Linear: ``y = C x + D u_in + v`` (the ``D`` term only when ``D != 0``) and
    ``x' = A x + B u_in + w``; nonlinear: ``y = h(x) + v`` and ``x' = f(x, u_in) + w``.
    """
    if not linear:
        f, h = plant.f, plant.h
        return (lambda x, u_in, v: h(x) + v), (lambda x, u_in, w: f(x, u_in) + w)
    A_T, B_T, C_T = (tensor(M.T, dev, dt).contiguous() for M in (plant.A, plant.B, plant.C))
    D_T = tensor(plant.D.T, dev, dt).contiguous() if plant.has_feedthrough else None

    def output(x, u_in, v):
        y = torch.addmm(v, x, C_T)
        return y if D_T is None else y.addmm_(u_in, D_T)

    def advance(x, u_in, w):
        return torch.addmm(w, x, A_T).addmm_(u_in, B_T)

    return output, advance
