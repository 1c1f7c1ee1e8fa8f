"""Training loop: Adam, gradient clipping, a progress bar, resumable atomic checkpoints.

:func:`fit` trains a :class:`~lqgt.estimators.learned.LearnedEstimator` on
:class:`~lqgt.learn.Rollouts` with one of the losses of :mod:`lqgt.learn.losses` (or any
callable ``loss(est, batch) -> scalar``). The run is a pure function of its arguments, the
estimator's initial weights and the seed: minibatches are drawn by a seeded generator, the
closed-loop noise by another, and both generators' states are saved in the checkpoint, so
a run that is interrupted and resumed from its checkpoint ends with the same weights as one
that was not (on the same device).
"""

from __future__ import annotations

import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .._io import atomic_write_bytes
from .._torch import resolve_device, resolve_dtype
from ..errors import CheckpointError, ConfigError
from ..plant import Plant
from ..plants import Example
from .data import Rollouts
from .losses import LOSSES, closed_loop_cost, output_prediction, state_mse

__all__ = ["fit", "TrainingLog"]


@dataclass(frozen=True, eq=False)
class TrainingLog:
    """Record of a :func:`fit` run (immutable).

    Attributes
    ----------
    steps : numpy.ndarray, shape (S,)
        Optimizer step of each record (1-based).
    loss : numpy.ndarray, shape (S,)
        Training loss of the minibatch at that step.
    wall : numpy.ndarray, shape (S,)
        Seconds since the start of the run (including earlier, resumed segments).
    lr : numpy.ndarray, shape (S,)
        Learning rate used at that step.
    val_steps : numpy.ndarray, shape (V,)
        Steps at which the validation loss was computed.
    val_loss : numpy.ndarray, shape (V,)
        Validation loss (full validation set) at those steps.
    settings : dict
        The arguments of the run (loss, steps, lr, batch, seed, device, ...), and
        ``resumed_from`` (the step a checkpoint resumed from, 0 for a fresh run).
    """

    steps: np.ndarray
    loss: np.ndarray
    wall: np.ndarray
    lr: np.ndarray
    val_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    val_loss: np.ndarray = field(default_factory=lambda: np.zeros(0))
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def final_loss(self) -> float:
        """Mean training loss over the last 10% of the steps (at least one)."""
        if not len(self.loss):
            return math.nan
        k = max(1, len(self.loss) // 10)
        return float(np.mean(self.loss[-k:]))

    @property
    def samples_per_s(self) -> float:
        """Training throughput: trajectories per second over the whole run."""
        if not len(self.wall) or self.wall[-1] <= 0:
            return math.nan
        return float(len(self.steps) * self.settings.get("batch", 0) / self.wall[-1])

    def to_dict(self) -> dict:
        """Return the log as plain lists and numbers (JSON-serialisable).

        Returns
        -------
        dict
        """
        return {"steps": self.steps.tolist(), "loss": self.loss.tolist(), "wall": self.wall.tolist(),
                "lr": self.lr.tolist(), "val_steps": self.val_steps.tolist(), "val_loss": self.val_loss.tolist(),
                "settings": {k: v for k, v in self.settings.items() if isinstance(v, (int, float, str, bool, type(None)))}}


def _lr_at(step: int, lr: float, steps: int, schedule: str, warmup: int) -> float:
    """Learning rate of (0-based) ``step``."""
    f = 1.0
    if warmup and step < warmup:
        f = (step + 1) / warmup
    if schedule == "cosine":
        f *= 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / max(steps, 1))) * 0.9 + 0.1
    return lr * f


def _loss_fn(loss, data, K, Q, R, horizon, tbptt, noise_gen, dev, dt, batch) -> tuple[str, Callable]:
    if callable(loss):
        return getattr(loss, "__name__", "custom"), loss
    if loss not in LOSSES:
        raise ConfigError(f"fit: loss must be one of {LOSSES} or a callable, got {loss!r}")
    if loss == "state_mse":
        return loss, state_mse
    if loss == "output_prediction":
        return loss, output_prediction
    plant = data.plant if isinstance(data, Rollouts) else data
    if not isinstance(plant, Plant):
        raise ConfigError("fit: loss='closed_loop_cost' needs data from a single plant (or the plant itself)")
    if K is None and isinstance(data, Rollouts) and isinstance(data.settings.get("K"), list):
        K = np.asarray(data.settings["K"])
    if K is None or Q is None or R is None:
        raise ConfigError("fit: loss='closed_loop_cost' needs K, Q and R")
    T = horizon if horizon is not None else (data.horizon if isinstance(data, Rollouts) else 100)

    def fn(est, _batch):
        return closed_loop_cost(est, plant, K, Q, R, horizon=T, batch=batch, generator=noise_gen, device=dev,
                                dtype=dt, tbptt=tbptt)

    return loss, fn


def _save(path: Path, est, opt, step: int, gens: dict, rec: dict, settings: dict) -> None:
    ckpt = {
        "format": "lqgt.fit/1",
        "estimator": est.checkpoint_dict(),
        "optimizer": opt.state_dict(),
        "step": int(step),
        "rng": {k: g.get_state() for k, g in gens.items()},
        "log": {k: list(v) for k, v in rec.items()},
        "settings": {k: v for k, v in settings.items() if isinstance(v, (int, float, str, bool, type(None)))},
    }
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    atomic_write_bytes(path, buf.getvalue())


def fit(
    est: Any,
    data: Rollouts | Plant,
    *,
    loss: str | Callable = "state_mse",
    steps: int = 1000,
    lr: float = 3e-4,
    batch: int = 256,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    seed: int = 0,
    clip: float | None = 1.0,
    weight_decay: float = 0.0,
    schedule: str = "constant",
    warmup: int = 0,
    val: Rollouts | None = None,
    val_every: int | None = None,
    K=None,
    Q=None,
    R=None,
    horizon: int | None = None,
    tbptt: int | None = 50,
    callback: Callable[[int, float], Any] | None = None,
) -> TrainingLog:
    """Train ``est`` on ``data`` with Adam.

    Minibatches of ``batch`` trajectories are drawn uniformly with replacement from
    ``data`` (data of several systems, :meth:`Rollouts.concat`, is mixed freely: an
    in-context estimator sees each system only through its tokens). Each step clips the
    gradient norm to ``clip`` and updates with Adam (``weight_decay`` as AdamW).

    Parameters
    ----------
    est : LearnedEstimator
        The estimator; trained in place (moved to ``device``/``dtype``). Before a fresh run
        its ``fit_scales(data)`` is called if it has one.
    data : Rollouts or Plant
        Training data; for ``loss="closed_loop_cost"`` the plant may be given instead.
    loss : {"state_mse", "output_prediction", "closed_loop_cost"} or callable
        The loss (:mod:`lqgt.learn.losses`) or ``loss(est, batch: Rollouts) -> scalar tensor``.
    steps : int
        Total optimizer steps (a resumed run continues up to this number).
    lr : float
        Peak learning rate.
    batch : int
        Trajectories per step (for the closed-loop loss: simulated trajectories per step).
    device : str or torch.device, optional
        Training device (default: CPU).
    dtype : torch.dtype or str, optional
        Training dtype (default: the estimator's current dtype).
    progress : bool
        Show a tqdm bar with the running loss.
    checkpoint : str or os.PathLike, optional
        Checkpoint file. If it exists, training resumes from it (the estimator must have
        the same class and configuration); it is rewritten atomically every
        ``checkpoint_every`` steps and at the end.
    checkpoint_every : int, optional
        Steps between checkpoints (default ``max(1, steps // 10)``).
    seed : int
        Seed of the minibatch sampler and of the closed-loop noise.
    clip : float, optional
        Maximum gradient norm (``None``: no clipping).
    weight_decay : float
        Decoupled weight decay (AdamW); 0 gives Adam.
    schedule : {"constant", "cosine"}
        Learning-rate schedule (cosine decays to 10% of ``lr`` at ``steps``).
    warmup : int
        Linear warm-up steps.
    val : Rollouts, optional
        Validation data, scored with the same loss every ``val_every`` steps (not for the
        closed-loop loss).
    val_every : int, optional
        Steps between validations (default ``max(1, steps // 20)``).
    K : array_like, shape (m, n), optional
        Feedback gain of the closed-loop loss (default: the gain ``data`` was made with).
    Q : array_like, shape (n, n), optional
        State weight of the closed-loop loss.
    R : array_like, shape (m, m), optional
        Input weight of the closed-loop loss.
    horizon : int, optional
        Horizon of the closed-loop loss (default: the data's horizon, or 100).
    tbptt : int, optional
        Truncated-BPTT length of the closed-loop loss.
    callback : callable, optional
        Called as ``callback(step, loss)`` after every step (1-based step); returning
        ``True`` stops training there (early stopping; recorded as ``settings["stopped_at"]``).

    Returns
    -------
    TrainingLog

    Raises
    ------
    ConfigError
        Bad arguments (names the argument), or a non-finite loss (names the step).
    CheckpointError
        If ``checkpoint`` holds a run of another architecture or is not a fit checkpoint.
    """
    if not isinstance(est, torch.nn.Module) or not hasattr(est, "checkpoint_dict"):
        raise ConfigError(f"fit: est must be a LearnedEstimator, got {type(est).__name__}")
    for name, v, lo in (("steps", steps, 0), ("batch", batch, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ConfigError(f"fit: {name} must be an integer >= {lo}, got {v!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ConfigError(f"fit: lr must be a positive number, got {lr!r}")
    if schedule not in ("constant", "cosine"):
        raise ConfigError(f"fit: schedule must be 'constant' or 'cosine', got {schedule!r}")
    if isinstance(data, Example):
        data = data.plant
    if not isinstance(data, (Rollouts, Plant)):
        raise ConfigError(f"fit: data must be an lqgt.learn.Rollouts (or a Plant for the closed-loop loss), "
                          f"got {type(data).__name__}")
    if isinstance(data, Plant) and loss != "closed_loop_cost":
        raise ConfigError(f"fit: loss={loss!r} needs data (an lqgt.learn.Rollouts), not a plant")
    if isinstance(data, Rollouts) and data.p != est.p or isinstance(data, Rollouts) and data.m != est.m:
        raise ConfigError(f"fit: data has p={data.p}, m={data.m} but the estimator has p={est.p}, m={est.m}")
    dev = resolve_device(device)
    p0 = next(iter(est.parameters()), None)
    dt = resolve_dtype(dtype) if dtype is not None else (p0.dtype if p0 is not None else torch.float64)
    steps, batch = int(steps), int(batch)
    every = max(1, steps // 10) if checkpoint_every is None else int(checkpoint_every)
    v_every = max(1, steps // 20) if val_every is None else int(val_every)

    path = Path(checkpoint) if checkpoint is not None else None
    ckpt = None
    if path is not None and path.exists():
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"fit: cannot read checkpoint {str(path)!r}: {exc}") from exc
        if not isinstance(ckpt, dict) or ckpt.get("format") != "lqgt.fit/1":
            what = "a saved estimator (est.save)" if isinstance(ckpt, dict) and "class" in ckpt else "something else"
            raise CheckpointError(f"fit: checkpoint={str(path)!r} holds {what}, not a training checkpoint of "
                                  "lqgt.learn.fit; give fit and est.save different paths, or remove the file")
    if ckpt is None and isinstance(data, Rollouts) and hasattr(est, "fit_scales"):
        est.fit_scales(data)
    if ckpt is not None:
        est.load_checkpoint_dict(ckpt["estimator"])
    est.to(device=dev, dtype=dt)
    est.train()
    params = [q for q in est.parameters() if q.requires_grad]
    fused = {"fused": True} if dev.type == "cuda" else {}  # one kernel for the whole update on the GPU
    opt = (torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **fused) if weight_decay
           else torch.optim.Adam(params, lr=lr, **fused))
    gens = {"batch": torch.Generator().manual_seed(int(seed))}
    noise_gen = torch.Generator(device=dev)
    noise_gen.manual_seed(int(seed) + 1)
    gens["noise"] = noise_gen
    rec: dict[str, list] = {"steps": [], "loss": [], "wall": [], "lr": [], "val_steps": [], "val_loss": []}
    start, t_prev = 0, 0.0
    if ckpt is not None:
        opt.load_state_dict(ckpt["optimizer"])
        start = int(ckpt["step"])
        for k, g in gens.items():
            g.set_state(ckpt["rng"][k])
        rec = {k: list(ckpt["log"].get(k, [])) for k in rec}
        t_prev = float(rec["wall"][-1]) if rec["wall"] else 0.0
    name, fn = _loss_fn(loss, data, K, Q, R, horizon, tbptt, noise_gen, dev, dt, batch)
    settings = dict(loss=name, steps=steps, lr=float(lr), batch=batch, device=str(dev), dtype=str(dt).replace("torch.", ""),
                    seed=int(seed), clip=clip, weight_decay=float(weight_decay), schedule=schedule, warmup=int(warmup),
                    estimator=type(est).__name__, resumed_from=start,
                    systems=len(data.plants) if isinstance(data, Rollouts) else 1)
    on_device = isinstance(data, Rollouts) and data.y.device == dev and data.y.dtype == dt

    def draw() -> Rollouts | None:
        if not isinstance(data, Rollouts):
            return None
        idx = torch.randint(data.batch, (batch,), generator=gens["batch"]).to(data.y.device)
        return data._take(idx) if on_device else data._take(idx, dev, dt)

    def val_loss() -> float:
        est.eval()
        with torch.no_grad():
            vals = []
            for i in range(0, val.batch, 4096):
                part = val[torch.arange(i, min(i + 4096, val.batch))].to(dev, dt)
                vals.append(float(fn(est, part)) * part.batch)
        est.train()
        return sum(vals) / val.batch

    if val is not None and (name == "closed_loop_cost" or not isinstance(val, Rollouts)):
        raise ConfigError("fit: val must be an lqgt.learn.Rollouts and is not used with the closed-loop loss")
    bar = tqdm(total=steps, initial=start, disable=not progress, desc=f"fit {type(est).__name__}", unit="step")
    t0 = time.perf_counter()
    running = None
    try:
        for k in range(start, steps):
            lr_k = _lr_at(k, lr, steps, schedule, warmup)
            for g in opt.param_groups:
                g["lr"] = lr_k
            b = draw()
            opt.zero_grad(set_to_none=True)
            value = fn(est, b)
            if not bool(torch.isfinite(value)):
                raise ConfigError(f"fit: the loss became non-finite at step {k + 1} (lower lr or check the data)")
            value.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            lv = float(value.detach())
            running = lv if running is None else 0.95 * running + 0.05 * lv
            rec["steps"].append(k + 1)
            rec["loss"].append(lv)
            rec["wall"].append(t_prev + time.perf_counter() - t0)
            rec["lr"].append(lr_k)
            if val is not None and ((k + 1) % v_every == 0 or k + 1 == steps):
                rec["val_steps"].append(k + 1)
                rec["val_loss"].append(val_loss())
            if progress and ((k + 1) % 10 == 0 or k + 1 == steps):
                bar.set_postfix(loss=f"{running:.4g}")
            bar.update(1)
            if path is not None and ((k + 1) % every == 0 or k + 1 == steps):
                _save(path, est, opt, k + 1, gens, rec, settings)
            if callback is not None and callback(k + 1, lv) is True:
                if path is not None and (k + 1) % every and k + 1 != steps:
                    _save(path, est, opt, k + 1, gens, rec, settings)
                settings["stopped_at"] = k + 1
                break
    finally:
        bar.close()
    est.eval()
    return TrainingLog(
        steps=np.asarray(rec["steps"], dtype=np.int64), loss=np.asarray(rec["loss"], dtype=float),
        wall=np.asarray(rec["wall"], dtype=float), lr=np.asarray(rec["lr"], dtype=float),
        val_steps=np.asarray(rec["val_steps"], dtype=np.int64), val_loss=np.asarray(rec["val_loss"], dtype=float),
        settings=settings,
    )
