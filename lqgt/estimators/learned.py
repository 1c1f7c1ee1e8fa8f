"""Base class, registry and checkpoints of trainable (learned) estimators.

A learned estimator is a :class:`torch.nn.Module` with two ways of running that must agree
(to ``1e-10`` in float64):

* **sequence mode** (training): ``est(y, u)`` maps whole batches of sequences ``y``
  ``(B, T, p)``, ``u`` ``(B, T, m)`` (``u[:, t]`` the input applied at step ``t``) to the
  estimates ``x_hat`` ``(B, T, n)``, causally:

  - ``form == "current"``: ``x_hat[:, t]`` estimates ``x[t]`` from ``y[:, :t+1]``, ``u[:, :t]``;
  - ``form == "predictor"``: ``x_hat[:, t]`` estimates ``x[t+1]`` from ``y[:, :t+1]``, ``u[:, :t+1]``.

  ``est.predict_output(y, u)`` ``(B, T, p)`` predicts ``y[t+1]`` from the same history (the
  loss ``"output_prediction"`` of :mod:`lqgt.learn`, which needs no state labels).
* **protocol mode** (simulation): ``init``/``step`` of the estimator protocol
  (:mod:`lqgt.estimators.base`), so a trained estimator runs in :func:`lqgt.simulate`,
  sweeps and ``lqgt compare`` like any other.

Checkpoints are one file written atomically by :meth:`LearnedEstimator.save`: a dict
``{"class", "config", "state_dict", "lqgt_version"}`` (``torch.save`` format, loadable with
``weights_only=True``). :func:`load_estimator` rebuilds the registered class from its
``config`` and loads the weights bit-exactly; a checkpoint that does not fit (unknown class,
a config the class rejects, weights of another shape) raises
:class:`~lqgt.errors.CheckpointError`.
"""

from __future__ import annotations

import io
import json
import os
from importlib import metadata
from typing import Any

import torch

from .._io import atomic_write_bytes
from ..closed_loop import FORMS
from ..errors import CheckpointError, ConfigError, NonFiniteError, ShapeError

__all__ = ["LearnedEstimator", "register", "load_estimator", "registered", "check_sequences"]

_REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make ``cls`` loadable by :func:`load_estimator` (under ``cls.__name__``).

    Parameters
    ----------
    cls : type
        A subclass of :class:`LearnedEstimator`.

    Returns
    -------
    type
        ``cls`` itself.

    Raises
    ------
    ConfigError
        If ``cls`` is not a :class:`LearnedEstimator` subclass, or another class is
        already registered under the same name.
    """
    if not (isinstance(cls, type) and issubclass(cls, LearnedEstimator)):
        raise ConfigError(f"register: {cls!r} is not a subclass of LearnedEstimator")
    name = cls.__name__
    old = _REGISTRY.get(name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ConfigError(f"register: a different class is already registered as {name!r} ({old.__module__})")
    _REGISTRY[name] = cls
    return cls


def registered() -> dict[str, type]:
    """Return a copy of the registry ``{class name: class}`` of learned estimators.

    Returns
    -------
    dict of str to type
        Every class registered with :func:`register` so far.
    """
    return dict(_REGISTRY)


def _version() -> str:
    try:
        return metadata.version("lqgt")
    except metadata.PackageNotFoundError:  # pragma: no cover - source checkout without install
        return "unknown"


def check_sequences(y: Any, u: Any, p: int, m: int, *, what: str = "estimator") -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a batch of measurement and input sequences for sequence mode.

    Parameters
    ----------
    y : torch.Tensor, shape (B, T, p)
        Measurements.
    u : torch.Tensor, shape (B, T, m)
        Inputs, ``u[:, t]`` applied at step ``t``.
    p : int
        Expected measurement dimension.
    m : int
        Expected input dimension.
    what : str
        Name used in error messages.

    Returns
    -------
    y, u : torch.Tensor
        The same tensors (``u`` cast to ``y``'s device and dtype).

    Raises
    ------
    ShapeError
        If the tensors are not 3-D with the given last dimensions and equal ``(B, T)``.
    """
    if not isinstance(y, torch.Tensor) or y.ndim != 3 or y.shape[-1] != p:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ShapeError(f"{what}: y must be a tensor of shape (B, T, p={p}), got {got}")
    if not isinstance(u, torch.Tensor) or u.ndim != 3 or u.shape[-1] != m or u.shape[:2] != y.shape[:2]:
        got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise ShapeError(f"{what}: u must be a tensor of shape (B, T, m={m}) = {(*y.shape[:2], m)}, got {got}")
    return y, u.to(device=y.device, dtype=y.dtype)


class LearnedEstimator(torch.nn.Module):
    """Base class of every trainable estimator (follows the estimator protocol).

    Subclasses implement :meth:`forward`, :meth:`predict_output`, :meth:`init`,
    :meth:`step` and :meth:`config`, and are decorated with :func:`register`.

    Parameters
    ----------
    n : int
        State dimension of the estimate.
    m : int
        Input dimension.
    p : int
        Measurement dimension.
    form : {"predictor", "current"}
        Which estimate :meth:`step` returns (see :mod:`lqgt.estimators.base`).

    Raises
    ------
    ConfigError
        If a dimension is not a positive integer (``m`` may be 0) or ``form`` is unknown.
    """

    form: str
    n: int
    m: int
    p: int
    #: Config keys that do not change the architecture (ignored when loading weights into an instance).
    config_ignore: tuple = ("seed",)

    def __init__(self, n: int, m: int, p: int, *, form: str) -> None:
        super().__init__()
        for name, v, lo in (("n", n, 1), ("m", m, 0), ("p", p, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"{type(self).__name__}: {name} must be an integer >= {lo}, got {v!r}")
        if form not in FORMS:
            raise ConfigError(f"{type(self).__name__}: form must be one of {FORMS}, got {form!r}")
        self.n, self.m, self.p, self.form = int(n), int(m), int(p), form

    # ---- sequence mode -------------------------------------------------------------------
    def forward(self, y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
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
        raise NotImplementedError

    def predict_output(self, y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Predict the next measurement of whole sequences (causal).

        Parameters
        ----------
        y : torch.Tensor, shape (B, T, p)
            Measurements.
        u : torch.Tensor, shape (B, T, m)
            Inputs, ``u[:, t]`` applied at step ``t``.

        Returns
        -------
        torch.Tensor, shape (B, T, p)
            ``out[:, t]`` predicts ``y[t+1]`` from ``y[:, :t+1]``, ``u[:, :t+1]``.
        """
        raise NotImplementedError

    # ---- protocol mode -------------------------------------------------------------------
    def init(self, batch: int, *, device: torch.device, dtype: torch.dtype) -> tuple[Any, torch.Tensor]:  # pragma: no cover
        """Return the state for ``batch`` trajectories and the initial estimate ``(batch, n)``.

        Parameters
        ----------
        batch : int
            Number of trajectories.
        device : torch.device
            Device of the simulation (parameters are moved there).
        dtype : torch.dtype
            Floating-point type of the simulation (parameters are cast to it).

        Returns
        -------
        state : object
            The estimator state.
        x_hat0 : torch.Tensor, shape (batch, n)
            The initial estimate.
        """
        raise NotImplementedError

    def step(self, state: Any, y: torch.Tensor, u: torch.Tensor) -> tuple[Any, torch.Tensor]:  # pragma: no cover
        """Consume ``y`` ``(B, p)`` and ``u`` ``(B, m)``; return the new state and estimate ``(B, n)``.

        Parameters
        ----------
        state : object
            The state from :meth:`init` or the previous :meth:`step`.
        y : torch.Tensor, shape (B, p)
            The newest measurement.
        u : torch.Tensor, shape (B, m)
            The newest input already applied (``u[t]`` predictor form, ``u[t-1]`` current form).

        Returns
        -------
        state : object
            The new state.
        x_hat : torch.Tensor, shape (B, n)
            The estimate the controller uses next.
        """
        raise NotImplementedError

    def _place(self, device: torch.device, dtype: torch.dtype) -> None:
        """Move and cast the parameters and buffers to the simulation's device and dtype."""
        p0 = next(iter(self.parameters()), None)
        if p0 is None or p0.device != torch.device(device) or p0.dtype != dtype:
            self.to(device=device, dtype=dtype)

    def check_sequences(self, y: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate ``y`` ``(B, T, p)`` and ``u`` ``(B, T, m)`` for this estimator.

        Parameters
        ----------
        y : torch.Tensor, shape (B, T, p)
            Measurements.
        u : torch.Tensor, shape (B, T, m)
            Inputs.

        Returns
        -------
        y, u : torch.Tensor
            The same tensors (``u`` on ``y``'s device and dtype).

        Raises
        ------
        ShapeError
            On a wrong shape (the message names the argument and the expected shape).
        """
        return check_sequences(y, u, self.p, self.m, what=type(self).__name__)

    # ---- persistence ---------------------------------------------------------------------
    def config(self) -> dict:  # pragma: no cover - abstract
        """Return the constructor keyword arguments (JSON-serialisable; matrices as nested lists).

        Returns
        -------
        dict
            ``type(self)(**self.config())`` builds an estimator of the same architecture.
        """
        raise NotImplementedError

    def checkpoint_dict(self) -> dict:
        """Return the checkpoint content ``{"class", "config", "state_dict", "lqgt_version"}``.

        Returns
        -------
        dict
            Tensors are detached CPU copies (bit-exact).

        Raises
        ------
        CheckpointError
            If :meth:`config` is not JSON-serialisable or the class is not registered.
        """
        name = type(self).__name__
        if _REGISTRY.get(name) is not type(self):
            raise CheckpointError(f"{name} is not registered with lqgt.estimators.learned.register; "
                                  "load_estimator could not rebuild it")
        cfg = self.config()
        try:
            cfg = json.loads(json.dumps(cfg))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{name}.config() is not JSON-serialisable: {exc}") from exc
        state = {k: v.detach().to("cpu").clone() for k, v in self.state_dict().items()}
        return {"class": name, "config": cfg, "state_dict": state, "lqgt_version": _version()}

    def save(self, path: str | os.PathLike) -> None:
        """Write a checkpoint to ``path`` atomically (see :func:`load_estimator`).

        Parameters
        ----------
        path : str or os.PathLike
            Destination file (its directory must exist).

        Raises
        ------
        CheckpointError
            If the estimator cannot be serialised (see :meth:`checkpoint_dict`).
        """
        buf = io.BytesIO()
        torch.save(self.checkpoint_dict(), buf)
        atomic_write_bytes(path, buf.getvalue())

    def load_checkpoint_dict(self, ckpt: dict) -> None:
        """Load weights from a checkpoint dict into this estimator (same class and config only).

        Parameters
        ----------
        ckpt : dict
            As returned by :meth:`checkpoint_dict`.

        Raises
        ------
        CheckpointError
            If the checkpoint is of another class or configuration, or its weights do not fit.
        """
        _check_ckpt(ckpt, "checkpoint")
        name = type(self).__name__
        if ckpt["class"] != name:
            raise CheckpointError(f"checkpoint is of class {ckpt['class']!r}, not {name!r}")
        mine = json.loads(json.dumps(self.config()))
        diff = sorted(k for k in set(mine) | set(ckpt["config"])
                      if k not in self.config_ignore and mine.get(k) != ckpt["config"].get(k))
        if diff:
            raise CheckpointError(f"checkpoint of {name} has another configuration (differs in {diff})")
        _load_state(self, ckpt["state_dict"])


def _check_ckpt(ckpt: Any, where: str) -> None:
    if not isinstance(ckpt, dict) or not {"class", "config", "state_dict"} <= set(ckpt):
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{where} is not an lqgt estimator checkpoint (keys {keys}; "
                              "expected 'class', 'config', 'state_dict')")


def _load_state(est: torch.nn.Module, state: dict) -> None:
    # cast to the saved floating dtype first, so that copying the values is bit-exact
    dtypes = {v.dtype for v in state.values() if isinstance(v, torch.Tensor) and torch.is_floating_point(v)}
    if len(dtypes) == 1:
        est.to(dtype=dtypes.pop())
    try:
        est.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not fit {type(est).__name__}: {exc}") from exc


def load_estimator(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> LearnedEstimator:
    """Load an estimator saved by :meth:`LearnedEstimator.save` (bit-exact weights).

    Parameters
    ----------
    path : str or os.PathLike
        The checkpoint file. A training checkpoint of :func:`lqgt.learn.fit` is accepted too
        (its ``"estimator"`` entry is used).
    map_location : str or torch.device
        Device the weights are loaded onto.

    Returns
    -------
    LearnedEstimator
        A new estimator of the saved class and configuration, in eval mode.

    Raises
    ------
    CheckpointError
        If the file is not a checkpoint, its class is not registered (import the module
        that defines it first), its config is rejected by the class, or its weights do not
        fit the architecture.
    FileNotFoundError
        If ``path`` does not exist.
    """
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - unpickling errors have many types
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {exc}") from exc
    if isinstance(ckpt, dict) and "estimator" in ckpt and "class" not in ckpt:
        ckpt = ckpt["estimator"]
    _check_ckpt(ckpt, f"file {str(path)!r}")
    _ensure_builtin_registered()
    cls = _REGISTRY.get(ckpt["class"])
    if cls is None:
        raise CheckpointError(f"checkpoint {str(path)!r} is of class {ckpt['class']!r}, which is not registered "
                              f"(registered: {sorted(_REGISTRY)}); import the module that defines it")
    try:
        est = cls(**ckpt["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r}: {ckpt['class']} rejects its config: {exc}") from exc
    _load_state(est, ckpt["state_dict"])
    est.to(device=map_location)
    return est.eval()


def _ensure_builtin_registered() -> None:
    """Import the library's own learned estimators so that their classes are registered."""
    import importlib

    for mod in ("transformer_estimator", "trainable_tf", "kalmannet"):
        try:
            importlib.import_module(f"{__package__}.{mod}")
        except ImportError:
            pass
