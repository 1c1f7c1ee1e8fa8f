"""``lqgt compare``: compare estimators on a plant described in a TOML file.

A configuration names a plant (a library example or its matrices), the cost weights,
any number of estimators with their options and the simulation settings:

```text
title = "two carts: Kalman vs Transformer Filter"

[plant]
name = "two_mass"            # lqgt.plants.NAMES; or the matrices A, B, C, W, V (D, m0, P0, dt)

[estimators.kalman]
type = "kalman"              # kalman | open_loop | observer | transformer
form = "current"

[estimators.tf]
type = "transformer"
beta = 100.0
window = 32

[simulation]
batch = 500
horizon = 600
```

:func:`load_config` (or :func:`parse_config` for a dict) checks every key and value and
raises :class:`~lqgt.errors.ConfigError` with a message that names the key (``plant.B``,
``estimators.tf.beta``) and says what is allowed. :func:`run_compare` designs the LQG
controller, simulates every estimator on common random numbers and writes ``table.md``,
``table.csv``, ``results.json``, ``trajectories.png`` and ``cost.png`` atomically into the
output directory. ``examples/compare.toml`` documents every key.
"""

from __future__ import annotations

import difflib
import inspect
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, TextIO

import numpy as np

from .errors import ConfigError, LqgtError

__all__ = [
    "ESTIMATOR_TYPES",
    "CompareConfig",
    "EstimatorSpec",
    "SimulationSettings",
    "PlotSettings",
    "load_config",
    "parse_config",
    "build",
    "run_compare",
    "check_device",
]

#: Estimator types and their options (``type`` itself is always allowed).
ESTIMATOR_TYPES: dict[str, tuple[str, ...]] = {
    "kalman": ("form", "steady"),
    "open_loop": (),
    "observer": ("gain", "form"),
    "transformer": ("beta", "window", "S", "impl", "closed_loop"),
    "learned": ("checkpoint",),
    "afa": ("form", "window", "nu", "attention", "robust"),
}
_ATTENTION_FORMS = ("tensor", "isotropic", "matrix")
_FORMS = ("current", "predictor")
_IMPLS = ("kernel", "attention")
_DTYPES = ("float64", "float32")
_TOP_KEYS = ("title", "plant", "cost", "estimators", "simulation", "plot", "run")
_RUN_KEYS = ("backend", "chunk", "address", "gpus_per_task", "results")
_PLANT_MATRICES = ("A", "B", "C", "W", "V", "D", "m0", "P0", "dt")
_SIM_KEYS = ("batch", "horizon", "burn_in", "seed", "device", "dtype", "outliers")
_PLOT_KEYS = ("state", "input", "state_label", "input_label", "k")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class SimulationSettings:
    """The ``[simulation]`` table.

    Attributes
    ----------
    batch : int
        Trajectories per estimator (default 1000).
    horizon : int
        Steps per trajectory (default 1000).
    burn_in : int
        Steps left out of the cost average (default ``3 * horizon // 10``).
    seed : int
        Noise seed (default 0).
    device : str
        ``"cpu"`` (default), ``"cuda"`` or ``"cuda:N"``.
    dtype : str
        ``"float64"`` (default) or ``"float32"``.
    outliers : tuple of (float, float) or None
        Contaminated measurement noise ``(probability, scale)`` (see :func:`lqgt.simulate`).
    """

    batch: int = 1000
    horizon: int = 1000
    burn_in: int = 300
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float64"
    outliers: tuple | None = None


@dataclass(frozen=True)
class RunSettings:
    """The ``[run]`` table: where the Monte Carlo work runs (:mod:`lqgt.sweep`).

    Attributes
    ----------
    backend : str
        ``"local"`` (default) or ``"ray"``.
    chunk : int or None
        Trajectories per task. With ``backend = "ray"`` or a ``chunk``, the batch is split
        into chunks on the sweep layer (each on a seed derived from ``simulation.seed``);
        otherwise one simulation runs in this process.
    address : str or None
        Ray cluster address (``"auto"`` joins a running cluster; none starts a local Ray).
    gpus_per_task : float
        GPUs each Ray task reserves.
    results : str or None
        Resumable results file of the chunks (``.parquet`` or ``.csv``), relative to the
        output directory.
    """

    backend: str = "local"
    chunk: int | None = None
    address: str | None = None
    gpus_per_task: float = 0.0
    results: str | None = None

    @property
    def chunked(self) -> bool:
        """Whether the Monte Carlo costs run through the sweep layer."""
        return self.backend != "local" or self.chunk is not None or self.results is not None


@dataclass(frozen=True)
class PlotSettings:
    """The ``[plot]`` table: what ``trajectories.png`` shows.

    Attributes
    ----------
    state : int
        Component of the state drawn in the upper panel (default 0).
    input : int
        Component of the input drawn in the lower panel (default 0).
    state_label, input_label : str or None
        Axis labels, with units (default ``"x[i]"``, ``"u[j]"``).
    k : float
        Half-width of the bands in standard deviations (default 2).
    """

    state: int = 0
    input: int = 0
    state_label: str | None = None
    input_label: str | None = None
    k: float = 2.0


@dataclass(frozen=True)
class EstimatorSpec:
    """One entry of the ``[estimators]`` table, checked.

    Attributes
    ----------
    name : str
        The entry's key: the estimator's name in the table and plots.
    type : str
        One of :data:`ESTIMATOR_TYPES`.
    options : dict
        The checked options (matrices as numpy arrays); defaults are not filled in.
    """

    name: str
    type: str
    options: dict[str, Any] = field(default_factory=dict)

    def build(self, plant, K: np.ndarray):
        """Construct the estimator for ``plant`` (``K`` closes the Transformer Filter's loop).

        Parameters
        ----------
        plant : lqgt.Plant
            The plant (also the estimator's model).
        K : numpy.ndarray, shape (m, n)
            The LQR gain of the loop.

        Returns
        -------
        Estimator
            A :class:`~lqgt.KalmanFilter`, :class:`~lqgt.OpenLoopObserver`,
            :class:`~lqgt.LinearObserver` or :class:`~lqgt.TransformerFilter`.

        Raises
        ------
        ConfigError
            The estimator refuses its options (e.g. ``form = "current"`` with ``D != 0``,
            ``S`` not positive definite); the message names the entry.
        """
        from .estimators import KalmanFilter, LinearObserver, OpenLoopObserver, TransformerFilter

        o = self.options
        try:
            if self.type == "kalman":
                return KalmanFilter(plant, o.get("form", "current"), steady=o.get("steady", True))
            if self.type == "open_loop":
                return OpenLoopObserver(plant)
            if self.type == "observer":
                return LinearObserver(plant, o["gain"], o.get("form", "predictor"))
            if self.type == "afa":
                from .estimators.afa import AFAFilter

                return AFAFilter(plant, window=o.get("window", 32), nu=o.get("nu", 4.0),
                                 form=o.get("attention", "tensor"), robust=o.get("robust", True),
                                 timing=o.get("form", "current"))
            if self.type == "learned":
                return _learned_estimator(o["checkpoint"], plant, _key("estimators", self.name, "checkpoint"))
            return TransformerFilter(plant, beta=o.get("beta", 50.0), window=o.get("window", 32),
                                     K=K if o.get("closed_loop", True) else None, S=o.get("S"),
                                     impl=o.get("impl", "kernel"))
        except LqgtError as exc:
            raise ConfigError(f"{_key('estimators', self.name)} (type {self.type!r}): {exc}") from exc


@dataclass(frozen=True, eq=False)
class CompareConfig:
    """A checked ``lqgt compare`` configuration (the result of :func:`parse_config`).

    Attributes
    ----------
    plant : lqgt.Plant
        The plant (true system and every estimator's model).
    plant_name : str or None
        The library example's name, ``None`` for a plant given by matrices.
    Q : numpy.ndarray, shape (n, n)
        State weight.
    R : numpy.ndarray, shape (m, m)
        Input weight.
    estimators : dict of str to EstimatorSpec
        The estimators, in table order.
    simulation : SimulationSettings
        Batch, horizon, burn-in, seed, device, dtype.
    plot : PlotSettings
        What the trajectory plot shows.
    run : RunSettings
        Backend of the Monte Carlo work (``[run]``).
    title : str
        Title of the table and plots.
    source : str
        Where the configuration came from (a path, or ``"<dict>"``).
    raw : dict
        The configuration as read (for ``results.json``).
    """

    plant: Any
    plant_name: str | None
    Q: np.ndarray
    R: np.ndarray
    estimators: dict[str, EstimatorSpec]
    simulation: SimulationSettings
    plot: PlotSettings
    title: str
    source: str = "<dict>"
    raw: dict = field(default_factory=dict)
    run: RunSettings = field(default_factory=RunSettings)


# --------------------------------------------------------------------------- value checks
def _key(*parts: str) -> str:
    """Dotted TOML key, quoting parts that are not bare keys: ``estimators."kalman (current)".form``."""
    return ".".join(p if _BARE_KEY.match(p) else json.dumps(p, ensure_ascii=False) for p in parts)


def _type_name(v: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "an array", dict: "a table"}.get(
        type(v), type(v).__name__)


def _got(v: Any) -> str:
    if isinstance(v, dict):
        return "got a table"
    text = repr(v)
    return f"got {text if len(text) <= 60 else text[:57] + '...'} ({_type_name(v)})"


def _did_you_mean(value: Any, choices) -> str:
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(table: Mapping, allowed: tuple[str, ...], where: str, context: str = "") -> None:
    """Refuse a key of ``table`` (the table ``[where]``, a dotted key) that is not in ``allowed``."""
    for k in table:
        if k not in allowed:
            name = f"{where}.{_key(k)}" if where else _key(k)
            what = (f"[{where}]" if where else "the top level") + context
            raise ConfigError(f"unknown key {name!r} in {what}{_did_you_mean(k, allowed)}; "
                              f"allowed keys: {', '.join(allowed)}")


def _table(v: Any, key: str) -> dict:
    if not isinstance(v, dict):
        raise ConfigError(f"{key} must be a table ([{key}] section), {_got(v)}")
    return v


def _int(v: Any, key: str, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{key} must be an integer >= {lo}, {_got(v)}")
    if v < lo:
        raise ConfigError(f"{key} must be an integer >= {lo}, got {v}")
    return v


def _real(v: Any, key: str, *, lo: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        bound = "" if lo is None else f" >= {lo:g}"
        raise ConfigError(f"{key} must be a finite number{bound}, {_got(v)}")
    if lo is not None and v < lo:
        raise ConfigError(f"{key} must be a finite number >= {lo:g}, got {v!r}")
    return float(v)


def _str(v: Any, key: str) -> str:
    if not isinstance(v, str):
        raise ConfigError(f"{key} must be a string, {_got(v)}")
    return v


def _choice(v: Any, key: str, choices: tuple[str, ...]) -> str:
    if not isinstance(v, str) or v not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(repr(c) for c in choices)}, {_got(v)}")
    return v


def _bool(v: Any, key: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{key} must be true or false, {_got(v)}")
    return v


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


_MATRIX_HELP = "a matrix written as a list of rows, e.g. [[1.0, 0.0], [0.0, 1.0]] (a number for 1 x 1)"


def _matrix(v: Any, key: str, shape: tuple[int | None, int | None], why: str = "") -> np.ndarray:
    """A finite float matrix from a number (1 x 1) or a list of equally long lists of numbers."""
    if _is_num(v):
        rows = [[v]]
    elif isinstance(v, list) and v and all(isinstance(r, list) for r in v):
        rows = v
    else:
        raise ConfigError(f"{key} must be {_MATRIX_HELP}; {_got(v)}")
    widths = {len(r) for r in rows}
    if len(widths) != 1 or 0 in widths:
        raise ConfigError(f"{key} must be {_MATRIX_HELP}; its rows have lengths {[len(r) for r in rows]}")
    bad = [x for r in rows for x in r if not _is_num(x)]
    if bad:
        raise ConfigError(f"{key} must contain only numbers, got {bad[0]!r} ({_type_name(bad[0])})")
    M = np.array(rows, dtype=float)
    if not np.all(np.isfinite(M)):
        raise ConfigError(f"{key} contains nan or inf")
    if any(w is not None and s != w for s, w in zip(M.shape, shape)):
        want = "(" + ", ".join("·" if w is None else str(w) for w in shape) + ")"
        raise ConfigError(f"{key} has shape {M.shape}, expected {want}{why}")
    return M


def _vector(v: Any, key: str, n: int) -> np.ndarray:
    if _is_num(v):
        v = [v]
    if not isinstance(v, list) or not all(_is_num(x) for x in v):
        raise ConfigError(f"{key} must be a list of numbers, e.g. [0.0, 1.0]; {_got(v)}")
    if len(v) != n:
        raise ConfigError(f"{key} has length {len(v)}, expected {n} (one entry per state)")
    x = np.array(v, dtype=float)
    if not np.all(np.isfinite(x)):
        raise ConfigError(f"{key} contains nan or inf")
    return x


# --------------------------------------------------------------------------- sections
def _plant_section(t: dict):
    """Return ``(plant, name, Q, R defaults or None)`` from ``[plant]``."""
    from . import plants
    from .plant import Plant

    if "name" in t:
        name = _str(t["name"], "plant.name")
        try:
            plants.get(name)  # checks the name (ConfigError naming the choices)
        except ConfigError as exc:
            raise ConfigError(f"plant.name: {exc}") from None
        func = getattr(plants, name)
        params = tuple(inspect.signature(func).parameters)
        matrices = [k for k in t if k in _PLANT_MATRICES[:-1]]
        if matrices:
            raise ConfigError(f"[plant] gives both name = {name!r} and {', '.join(matrices)}; give either a library "
                              f"plant name or the matrices A, B, C, W, V (and optionally D, m0, P0, dt)")
        _check_keys(t, ("name", *params), "plant", f" with name = {name!r}")
        kwargs = {p: _real(t[p], _key("plant", p)) for p in params if p in t}
        try:
            plant, Q, R = func(**kwargs)
        except LqgtError as exc:
            raise ConfigError(f"[plant] {name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}): {exc}") from exc
        return plant, name, Q, R

    _check_keys(t, ("name", *_PLANT_MATRICES), "plant")
    missing = [k for k in ("A", "B", "C", "W", "V") if k not in t]
    if missing:
        raise ConfigError(f"[plant] needs either name (one of {', '.join(plants.NAMES)}) or the matrices "
                          f"A, B, C, W, V; missing {', '.join(missing)}")
    A = _matrix(t["A"], "plant.A", (None, None))
    n = A.shape[0]
    A = _matrix(t["A"], "plant.A", (n, n), " (A must be square)")
    B = _matrix(t["B"], "plant.B", (n, None), f" (n = {n} rows, one per state of plant.A)")
    C = _matrix(t["C"], "plant.C", (None, n), f" (n = {n} columns, one per state of plant.A)")
    m, p = B.shape[1], C.shape[0]
    kw: dict[str, Any] = {
        "W": _matrix(t["W"], "plant.W", (n, n), f" (n x n with n = {n})"),
        "V": _matrix(t["V"], "plant.V", (p, p), f" (p x p with p = {p} outputs, the rows of plant.C)"),
    }
    if "D" in t:
        kw["D"] = _matrix(t["D"], "plant.D", (p, m), f" (p x m with p = {p} outputs, m = {m} inputs)")
    if "m0" in t:
        kw["m0"] = _vector(t["m0"], "plant.m0", n)
    if "P0" in t:
        kw["P0"] = _matrix(t["P0"], "plant.P0", (n, n), f" (n x n with n = {n})")
    if "dt" in t:
        kw["dt"] = _real(t["dt"], "plant.dt", lo=0.0)
        if kw["dt"] <= 0:
            raise ConfigError(f"plant.dt must be a positive sample time in seconds, got {t['dt']!r}")
    try:
        plant = Plant(A, B, C, **kw)
    except LqgtError as exc:
        raise ConfigError(f"[plant] {exc}") from exc
    return plant, None, None, None


def _cost_section(t: dict, plant, Q0, R0) -> tuple[np.ndarray, np.ndarray]:
    _check_keys(t, ("Q", "R"), "cost")
    n, m = plant.n, plant.m
    if Q0 is None:
        missing = [k for k in ("Q", "R") if k not in t]
        if missing:
            raise ConfigError(f"[cost] needs {' and '.join(missing)} when the plant is given by matrices "
                              f"(Q: {n} x {n} state weight, R: {m} x {m} input weight)")
    Q = _matrix(t["Q"], "cost.Q", (n, n), f" (n x n with n = {n} states)") if "Q" in t else Q0
    R = _matrix(t["R"], "cost.R", (m, m), f" (m x m with m = {m} inputs)") if "R" in t else R0
    from .lqg import cost_weights

    try:
        cost_weights(plant, Q, R)
    except LqgtError as exc:
        raise ConfigError(f"[cost] {exc}") from exc
    return Q, R


def _learned_estimator(path: str, plant, where: str):
    """Load a trained estimator from ``path`` and check that it fits ``plant``."""
    from .estimators.learned import load_estimator

    if not Path(path).is_file():
        raise ConfigError(f"{where}: no such checkpoint file {path!r}")
    est = load_estimator(path)
    if (est.n, est.m, est.p) != (plant.n, plant.m, plant.p):
        raise ConfigError(f"{where}: the checkpoint's estimator has (n, m, p) = {(est.n, est.m, est.p)} but the plant "
                          f"has {(plant.n, plant.m, plant.p)}")
    return est


def _estimator_entry(name: str, t: Any, plant) -> EstimatorSpec:
    where = _key("estimators", name)
    if not isinstance(t, dict):
        raise ConfigError(f"{where} must be a table with a type key, e.g. [{where}] type = \"kalman\"; {_got(t)}")
    if "type" not in t:
        raise ConfigError(f"{where} has no type; allowed types: {', '.join(ESTIMATOR_TYPES)}")
    typ = t["type"]
    if not isinstance(typ, str) or typ not in ESTIMATOR_TYPES:
        raise ConfigError(f"{where}.type: unknown estimator type {typ!r}{_did_you_mean(typ, ESTIMATOR_TYPES)}; "
                          f"allowed types: {', '.join(ESTIMATOR_TYPES)}")
    _check_keys(t, ("type", *ESTIMATOR_TYPES[typ]), where, f" (type {typ!r})")
    o: dict[str, Any] = {}

    def k(opt: str) -> str:
        return _key("estimators", name, opt)

    if "form" in t:
        o["form"] = _choice(t["form"], k("form"), _FORMS)
    if "steady" in t:
        o["steady"] = _bool(t["steady"], k("steady"))
    if typ == "observer":
        if "gain" not in t:
            raise ConfigError(f"{k('gain')} is required for an observer: the (n, p) = ({plant.n}, {plant.p}) gain, "
                              "L in predictor form or Lf in current form")
        o["gain"] = _matrix(t["gain"], k("gain"), (plant.n, plant.p),
                            f" (n x p with n = {plant.n} states, p = {plant.p} outputs)")
    if "beta" in t:
        o["beta"] = _real(t["beta"], k("beta"), lo=0.0)
    if "window" in t:
        o["window"] = _int(t["window"], k("window"), 1)
    if "impl" in t:
        o["impl"] = _choice(t["impl"], k("impl"), _IMPLS)
    if "closed_loop" in t:
        o["closed_loop"] = _bool(t["closed_loop"], k("closed_loop"))
    if "nu" in t:
        o["nu"] = _real(t["nu"], k("nu"), lo=0.0)
        if o["nu"] <= 0:
            raise ConfigError(f"{k('nu')} (Student-t degrees of freedom) must be > 0, got {o['nu']}")
    if "attention" in t:
        o["attention"] = _choice(t["attention"], k("attention"), _ATTENTION_FORMS)
    if "robust" in t:
        o["robust"] = _bool(t["robust"], k("robust"))
    if typ == "learned":
        ck = t.get("checkpoint")
        if not isinstance(ck, str) or not ck:
            raise ConfigError(f"{k('checkpoint')} is required for a learned estimator: the path of a file written by "
                              f"est.save(...) or lqgt.learn.fit(..., checkpoint=...); {_got(ck)}")
        o["checkpoint"] = ck
    if "S" in t:
        if isinstance(t["S"], str):
            if t["S"] != "whiten":
                raise ConfigError(f"{k('S')} must be \"whiten\" or a symmetric positive definite (d, d) matrix, "
                                  f"got {t['S']!r}")
            o["S"] = "whiten"
        else:
            closed = o.get("closed_loop", True)
            d = plant.n + plant.p + (0 if closed else plant.m)
            parts = "n + p" if closed else "n + p + m"
            o["S"] = _matrix(t["S"], k("S"), (d, d), f" (d x d with d = {parts} = {d}: the token [x̂; y"
                             + ("" if closed else "; u") + "])")
    return EstimatorSpec(name=name, type=typ, options=o)


def _simulation_section(t: dict) -> SimulationSettings:
    _check_keys(t, _SIM_KEYS, "simulation")
    kw: dict[str, Any] = {}
    if "batch" in t:
        kw["batch"] = _int(t["batch"], "simulation.batch", 1)
    if "horizon" in t:
        kw["horizon"] = _int(t["horizon"], "simulation.horizon", 2)
    horizon = kw.get("horizon", SimulationSettings.horizon)
    if "burn_in" in t:
        kw["burn_in"] = _int(t["burn_in"], "simulation.burn_in", 0)
        if kw["burn_in"] >= horizon:
            raise ConfigError(f"simulation.burn_in ({kw['burn_in']}) must be smaller than simulation.horizon ({horizon})")
    else:
        kw["burn_in"] = 3 * horizon // 10
    if "seed" in t:
        kw["seed"] = _int(t["seed"], "simulation.seed", 0)
    if "device" in t:
        kw["device"] = check_device(t["device"], "simulation.device")
    if "dtype" in t:
        kw["dtype"] = _choice(t["dtype"], "simulation.dtype", _DTYPES)
    if "outliers" in t:
        v = t["outliers"]
        if not (isinstance(v, list) and len(v) == 2 and all(_is_num(x) for x in v)):
            raise ConfigError(f"simulation.outliers must be [probability, scale], e.g. [0.05, 10.0]; {_got(v)}")
        prob, scale = float(v[0]), float(v[1])
        if not (0.0 <= prob <= 1.0) or not scale > 0:
            raise ConfigError(f"simulation.outliers = {v}: probability must be in [0, 1] and scale > 0")
        kw["outliers"] = (prob, scale)
    return SimulationSettings(**kw)


def _run_section(t: dict) -> RunSettings:
    _check_keys(t, _RUN_KEYS, "run")
    kw: dict[str, Any] = {}
    if "backend" in t:
        kw["backend"] = _choice(t["backend"], "run.backend", ("local", "ray"))
    if "chunk" in t:
        kw["chunk"] = _int(t["chunk"], "run.chunk", 1)
    if "address" in t:
        kw["address"] = _str(t["address"], "run.address")
    if "gpus_per_task" in t:
        kw["gpus_per_task"] = _real(t["gpus_per_task"], "run.gpus_per_task", lo=0.0)
    if "results" in t:
        kw["results"] = _str(t["results"], "run.results")
        if Path(kw["results"]).suffix.lower() not in (".parquet", ".csv"):
            raise ConfigError(f"run.results must end in .parquet or .csv, got {kw['results']!r}")
    return RunSettings(**kw)


def check_device(v: Any, key: str = "device") -> str:
    """Check a device name: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``, CUDA only where available.

    Parameters
    ----------
    v : Any
        The value from the configuration or the command line.
    key : str
        Its name, for the message.

    Returns
    -------
    str
        ``v``.

    Raises
    ------
    ConfigError
        Not one of the allowed names, or CUDA asked for where torch has none.
    """
    if not isinstance(v, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", v):
        raise ConfigError(f"{key} must be 'cpu', 'cuda' or 'cuda:N', {_got(v)}")
    if v.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise ConfigError(f"{key} = {v!r}, but CUDA is not available (torch {torch.__version__}, {build}); "
                              "use 'cpu', or a CUDA build of torch on a machine with an NVIDIA GPU")
    return v


def _plot_section(t: dict, plant) -> PlotSettings:
    _check_keys(t, _PLOT_KEYS, "plot")
    kw: dict[str, Any] = {}
    for key, size, what in (("state", plant.n, "states"), ("input", plant.m, "inputs")):
        if key in t:
            kw[key] = _int(t[key], f"plot.{key}", 0)
            if kw[key] >= size:
                raise ConfigError(f"plot.{key} = {kw[key]} is out of range: the plant has {size} {what} "
                                  f"(0 ... {size - 1})")
    for key in ("state_label", "input_label"):
        if key in t:
            kw[key] = _str(t[key], f"plot.{key}")
    if "k" in t:
        kw["k"] = _real(t["k"], "plot.k", lo=0.0)
    return PlotSettings(**kw)


def parse_config(data: Mapping[str, Any], *, source: str = "<dict>") -> CompareConfig:
    """Check a configuration given as a dict (as :mod:`tomllib` reads it).

    Parameters
    ----------
    data : mapping
        The configuration: tables ``plant`` (required), ``cost``, ``estimators``
        (required), ``simulation``, ``plot`` and a string ``title``; see
        ``examples/compare.toml`` for every key.
    source : str
        Where it came from, for messages and ``results.json``.

    Returns
    -------
    CompareConfig
        The checked configuration, with the plant built.

    Raises
    ------
    ConfigError
        An unknown key, a value of the wrong type or out of range, an unknown plant name
        or estimator type, a matrix of the wrong shape or not (semi)definite where it must
        be. The message names the key and says what is allowed.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"the configuration must be a table of sections, {_got(data)}")
    data = dict(data)
    _check_keys(data, _TOP_KEYS, "")
    if "plant" not in data:
        raise ConfigError("the configuration has no [plant] section; give name = \"two_mass\" (or another of "
                          "lqgt.plants.NAMES) or the matrices A, B, C, W, V")
    plant, name, Q0, R0 = _plant_section(_table(data["plant"], "plant"))
    Q, R = _cost_section(_table(data.get("cost", {}), "cost"), plant, Q0, R0)
    if "estimators" not in data:
        raise ConfigError("the configuration has no [estimators] section; add at least one, e.g. "
                          "[estimators.kalman] type = \"kalman\"")
    ests = _table(data["estimators"], "estimators")
    if not ests:
        raise ConfigError(f"[estimators] is empty; add at least one, with type one of {', '.join(ESTIMATOR_TYPES)}")
    specs = {str(k): _estimator_entry(str(k), v, plant) for k, v in ests.items()}
    sim = _simulation_section(_table(data.get("simulation", {}), "simulation"))
    plot = _plot_section(_table(data.get("plot", {}), "plot"), plant)
    run = _run_section(_table(data.get("run", {}), "run"))
    title = _str(data["title"], "title") if "title" in data else (
        f"{name or 'plant'}: estimators under LQG feedback u = −K x̂")
    return CompareConfig(plant=plant, plant_name=name, Q=Q, R=R, estimators=specs, simulation=sim, plot=plot,
                         title=title, source=source, raw=data, run=run)


def load_config(path: str | Path) -> CompareConfig:
    """Read and check a TOML configuration file.

    Parameters
    ----------
    path : str or pathlib.Path
        The ``.toml`` file.

    Returns
    -------
    CompareConfig

    Raises
    ------
    ConfigError
        The file cannot be read, is not valid TOML (the message gives the line), or
        fails :func:`parse_config`.
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the tomli backport (a dependency there)
        import tomli as tomllib

    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the configuration {str(path)!r}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return parse_config(data, source=str(path))


# --------------------------------------------------------------------------- running
def build(cfg: CompareConfig):
    """Design the LQG controller and construct the configured estimators.

    Parameters
    ----------
    cfg : CompareConfig
        A checked configuration.

    Returns
    -------
    design : lqgt.LQGDesign
        The LQG design of ``cfg.plant`` with ``cfg.Q``, ``cfg.R``.
    estimators : dict of str to Estimator
        The estimators, in table order.

    Raises
    ------
    ConfigError
        No LQG design exists (e.g. the plant is not stabilizable), or an estimator
        refuses its options.
    """
    from .lqg import lqg

    try:
        design = lqg(cfg.plant, cfg.Q, cfg.R)
    except LqgtError as exc:
        raise ConfigError(f"[plant]/[cost]: no LQG design: {exc}") from exc
    return design, {name: spec.build(cfg.plant, design.K) for name, spec in cfg.estimators.items()}


def _unique(name: str, taken) -> str:
    out, i = name, 2
    while out in taken:
        out, i = f"{name} {i}", i + 1
    return out


def run_compare(cfg: CompareConfig, out: str | Path = "lqgt-compare", *, progress: bool = True,
                stream: TextIO | None = None) -> dict:
    """Run a comparison: design, simulate, print the table and write the files into ``out``.

    Every estimator is simulated under the LQG feedback ``u = -K x̂`` on the same noise.
    Fixed-gain linear observers get their exact cost (:func:`lqgt.lqg_cost`); the others
    are scored as in ``lqgt demo``: ``J* + (MC − MC of the LQG loop on the same noise)``.
    When no configured estimator is the optimal LQG loop (and one is needed for such a
    gap), the steady Kalman filter is simulated beside them as the row
    ``"LQG reference (kalman, current)"``.

    Parameters
    ----------
    cfg : CompareConfig
        A checked configuration (:func:`load_config`).
    out : str or pathlib.Path
        Output directory (created if missing). Written atomically: ``table.md``,
        ``table.csv``, ``results.json``, ``trajectories.png``, ``cost.png``.
    progress : bool
        Show a progress bar while simulating.
    stream : text file, optional
        Where the table and messages go (default: ``sys.stdout``).

    Returns
    -------
    dict
        What was written to ``results.json``.

    Raises
    ------
    ConfigError
        See :func:`build`.
    NotADirectoryError
        ``out`` exists and is not a directory.
    """
    import torch

    from . import __version__
    from ._io import atomic_write_text
    from .report import (DemoRow, _csv_text, _exact_in_ci, _json_num, _row_costs, _save_costs, _save_trajectories,
                         _write_results, DIVERGED_RATIO, check_out, exact_cost, format_table, is_diverged)
    from .estimators import KalmanFilter
    from .simulate import _half_width95, simulate

    stream = sys.stdout if stream is None else stream
    out = check_out(out)
    t_start = time.perf_counter()
    plant, Q, R, sim = cfg.plant, cfg.Q, cfg.R, cfg.simulation
    design, ests = build(cfg)
    exact = {name: exact_cost(plant, Q, R, design.K, est) for name, est in ests.items()}
    if sim.outliers is not None:
        # exact costs assume Gaussian noise: with outliers every row is scored by Monte Carlo
        exact = dict.fromkeys(exact)
    # the LQG optimum: current form, or predictor form where D != 0 forbids the current form
    current_ok = not plant.has_feedthrough
    optimum = design.cost if current_ok else design.cost_predictor
    opt_form = "current" if current_ok else "predictor"
    types = {name: spec.type for name, spec in cfg.estimators.items()}
    ref = next((nm for nm, ex in exact.items() if ex is not None and abs(ex - optimum) <= 1e-9 * abs(optimum)), None)
    if ref is None and any(ex is None for ex in exact.values()):
        ref = _unique(f"LQG reference (kalman, {opt_form})", ests)
        ests[ref], exact[ref], types[ref] = KalmanFilter(plant, opt_form), optimum, "kalman"

    out.mkdir(parents=True, exist_ok=True)
    label = cfg.plant_name or "plant"
    print(f"lqgt {__version__} compare: {cfg.source}: {label} (n={plant.n}, m={plant.m}, p={plant.p}, "
          f"dt={plant.dt:g} s), {len(ests)} estimators, batch {sim.batch} x {sim.horizon} steps "
          f"(cost over steps {sim.burn_in}..{sim.horizon - 1}), device {sim.device}, {sim.dtype}, "
          f"torch {torch.__version__}", file=stream, flush=True)
    t_sim = time.perf_counter()
    if cfg.run.chunked:
        res, diffs = _chunked_costs(cfg, list(ests), ref, out, progress)
    else:
        res = simulate(plant, design.K, ests, Q=Q, R=R, horizon=sim.horizon, batch=sim.batch, burn_in=sim.burn_in,
                       seed=sim.seed, device=sim.device, dtype=sim.dtype, outliers=sim.outliers, progress=progress)
        diffs = None
    t_sim = time.perf_counter() - t_sim

    rows, gap_ci = [], {}
    for name, est in ests.items():
        mc, ex = res.cost[name], exact[name]
        if ex is None:
            # paired differences on common noise: J ≈ J* + mean(c_name − c_ref), with its 95% interval
            if diffs is None:
                d = (res.cost_per_trajectory[name] - res.cost_per_trajectory[ref]).double()
                half, dmean = _half_width95(d), float(d.mean())
            else:
                dm = diffs[name]
                half, dmean = dm.ci95[1] - dm.mean, dm.mean
            j = optimum + dmean
            gap_ci[name] = ((j - half) / optimum - 1.0, (j + half) / optimum - 1.0)
        else:
            j = ex
        rows.append(DemoRow(name=name, form=est.form, exact=ex, mc=mc, ci=tuple(res.cost_ci[name]),
                            gap=j / optimum - 1.0, diverged=is_diverged(mc, ex, optimum)))
    table = format_table(rows, optimum)
    diverged = [r.name for r in rows if r.diverged]
    if diverged:
        print(f"warning: diverged closed loop(s): {', '.join(map(repr, diverged))} (exact cost inf, or Monte Carlo "
              f"cost non-finite or above {DIVERGED_RATIO:g} x J*): the loop is unstable with this estimator",
              file=stream, flush=True)
    note = (f"LQG optimum J* = {optimum:.6g} (exact, Kalman {opt_form} form). Costs are average per step of "
            f"x'Qx + u'Ru; MC over {sim.batch} trajectories, steps {sim.burn_in}..{sim.horizon - 1}, seed {sim.seed}; "
            "the gap uses the exact cost where known, else (marked MC) J* + MC − MC of the LQG row "
            f"({ref!r}) on the same noise.\n" if gap_ci else
            f"LQG optimum J* = {optimum:.6g} (exact, Kalman {opt_form} form). Every row has an exact cost "
            f"(lqgt.lqg_cost); MC over {sim.batch} trajectories, steps {sim.burn_in}..{sim.horizon - 1}, "
            f"seed {sim.seed}.\n")
    if sim.outliers is not None:
        note += (f"Measurement outliers: with probability {sim.outliers[0]:g} a measurement's noise is scaled by "
                 f"{sim.outliers[1]:g}; no exact costs (they assume Gaussian noise), J* is the Gaussian optimum and "
                 "every gap is J* + MC − MC of the LQG row on the same noise.\n")
    print("\n" + table + "\n" + note, file=stream, flush=True)

    ps = cfg.plot
    files = {"trajectories.png": _save_trajectories(
        res, out / "trajectories.png", state=ps.state, input=ps.input, k=ps.k,
        state_label=ps.state_label or f"x[{ps.state}]", input_label=ps.input_label or f"u[{ps.input}]",
        title=cfg.title)}
    files["cost.png"] = _save_costs(res, exact, optimum, out / "cost.png", title=f"cost per estimator ({sim.batch} runs)",
                                    suptitle=cfg.title)
    files["table.md"] = atomic_write_text(out / "table.md", f"# {cfg.title}\n\n{table}\n{note}")
    files["table.csv"] = atomic_write_text(out / "table.csv", _csv_text(rows, optimum))

    results = {
        "lqgt_version": __version__,
        "torch_version": torch.__version__,
        "config": str(cfg.source),
        "title": cfg.title,
        "plant": {"name": cfg.plant_name, "n": plant.n, "m": plant.m, "p": plant.p, "dt": plant.dt},
        "settings": dict(res.settings),
        "lqg_optimum": _json_num(optimum),
        "lqg_optimum_form": opt_form,
        "lqg_optimum_predictor": _json_num(design.cost_predictor),
        "reference": ref,
        "design": {"K": design.K.tolist(), "L": design.L.tolist(), "Lf": design.Lf.tolist()},
        "estimators": [
            {"name": r.name, "type": types[r.name], **_row_costs(r),
             "gap_ci": [_json_num(g) for g in gap_ci[r.name]] if r.name in gap_ci else None,
             "exact_in_ci": _exact_in_ci(r)}
            for r in rows
        ],
        "config_data": _jsonable(cfg.raw),
        "runtime_s": {"simulate": round(t_sim, 3)},
    }
    return _write_results(out, results, files, t_start, t_sim, stream, ensure_ascii=False)


def _jsonable(v: Any) -> Any:
    """The raw configuration for JSON: non-finite floats become null, other odd values strings."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


@dataclass(frozen=True, eq=False)
class _CompareChunk:
    """Sweep task of a chunked comparison: rebuilds the estimators from the raw configuration
    (so it runs in any worker) and returns per-trajectory costs and differences to the reference."""

    raw: dict
    source: str
    names: tuple
    ref: str

    def __call__(self, point, *, trajectories, seed, device):
        from .estimators import KalmanFilter
        from .simulate import simulate

        cfg = parse_config(self.raw, source=self.source)
        design, ests = build(cfg)
        if self.ref not in ests:     # the LQG reference row run_compare added
            form = "predictor" if cfg.plant.has_feedthrough else "current"
            ests[self.ref] = KalmanFilter(cfg.plant, form)
        sim = cfg.simulation
        res = simulate(cfg.plant, design.K, {nm: ests[nm] for nm in self.names}, Q=cfg.Q, R=cfg.R,
                       horizon=sim.horizon, batch=trajectories, burn_in=sim.burn_in, seed=seed, device=device,
                       dtype=sim.dtype, outliers=sim.outliers, store=False, progress=False)
        c = res.cost_per_trajectory
        out = {}
        for i, nm in enumerate(self.names):
            out[f"cost_{i}"] = c[nm]
            out[f"diff_{i}"] = c[nm].double() - c[self.ref].double()
        return out


def _chunked_costs(cfg: CompareConfig, names: list, ref: str, out: Path, progress: bool):
    """Monte Carlo costs through :func:`lqgt.sweep.run` (``[run]`` backend), plus a small stored
    local run (at most 256 trajectories, seed ``simulation.seed``) for the trajectory plot."""
    import numpy as np

    from .simulate import SimulationResult, simulate
    from .sweep import Grid, run

    sim, rs = cfg.simulation, cfg.run
    task = _CompareChunk(dict(cfg.raw), str(cfg.source), tuple(names), ref)
    results = None if rs.results is None else out / rs.results
    tab = run(task, Grid(config=[str(cfg.source)]), trajectories=sim.batch, chunk=rs.chunk, seed=sim.seed,
              backend=rs.backend, address=rs.address, gpus_per_task=rs.gpus_per_task, device=sim.device,
              results=results, progress=progress)
    m = {k: v[0] for k, v in tab.metrics.items()}
    cost = {nm: m[f"cost_{i}"].mean for i, nm in enumerate(names)}
    ci = {nm: m[f"cost_{i}"].ci95 for i, nm in enumerate(names)}
    diffs = {nm: m[f"diff_{i}"] for i, nm in enumerate(names)}
    design, ests = build(cfg)
    if ref not in ests:
        from .estimators import KalmanFilter

        ests[ref] = KalmanFilter(cfg.plant, "predictor" if cfg.plant.has_feedthrough else "current")
    small = simulate(cfg.plant, design.K, {nm: ests[nm] for nm in names}, Q=cfg.Q, R=cfg.R, horizon=sim.horizon,
                     batch=min(sim.batch, 256), burn_in=sim.burn_in, seed=sim.seed, device=sim.device,
                     dtype=sim.dtype, outliers=sim.outliers, progress=False)
    settings = dict(small.settings, batch=sim.batch, backend=rs.backend, chunk=tab.settings["chunk"],
                    trajectories_plotted=min(sim.batch, 256))
    res = SimulationResult(cost=cost, cost_ci=ci, cost_per_trajectory={}, x=small.x, x_hat=small.x_hat, u=small.u,
                           y=small.y, t=np.asarray(small.t), settings=settings)
    return res, diffs
