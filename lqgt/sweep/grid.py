"""Parameter grids and the seeds of their chunks."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from typing import Any, Iterator, Sequence

from ..errors import ConfigError

__all__ = ["Grid", "point_key", "chunk_seed"]


def _scalar(axis: str, v: Any) -> Any:
    """Grid values must survive a round trip through a results file (JSON scalars)."""
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()                                   # numpy / torch scalars
    if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ConfigError(f"Grid axis {axis!r}: values must be finite, got {v!r}")
        return v
    raise ConfigError(f"Grid axis {axis!r}: values must be numbers, strings or booleans, got {type(v).__name__} {v!r}")


def point_key(point: dict[str, Any]) -> str:
    """Canonical text of a grid point (sorted JSON), used for seeds and for resuming.

    Parameters
    ----------
    point : dict
        Axis name to value.

    Returns
    -------
    str
    """
    return json.dumps(point, sort_keys=True, separators=(",", ":"))


def chunk_seed(seed: int, key: str, chunk: int) -> int:
    """Seed of one chunk: a hash of the user's seed, the grid point and the chunk index.

    The same (seed, point, chunk) gives the same seed in every process and backend, so a
    chunk can be recomputed alone and the local and Ray backends draw the same noise.

    Parameters
    ----------
    seed : int
        The user's seed.
    key : str
        :func:`point_key` of the grid point (``""`` for noise common to all points).
    chunk : int
        Chunk index.

    Returns
    -------
    int
        A seed in ``[0, 2**63)``.
    """
    h = hashlib.sha256(f"lqgt-sweep|{int(seed)}|{key}|{int(chunk)}".encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


class Grid:
    """Cartesian product of named parameter axes.

    Parameters
    ----------
    **axes : sequence
        Axis name to its values, e.g. ``Grid(beta=[1, 10, 100], window=[8, 32])``. Values
        are numbers, strings or booleans; a scalar is a one-value axis.

    Raises
    ------
    ConfigError
        An empty axis, a non-identifier axis name, or an unsupported value.

    Examples
    --------
    ```python
    grid = lqgt.sweep.Grid(beta=[1, 10], plant=["two_mass", "double_integrator"])
    len(grid)          # 4
    list(grid)[0]      # {'beta': 1, 'plant': 'two_mass'}
    ```
    """

    def __init__(self, **axes: Sequence[Any]) -> None:
        if not axes:
            raise ConfigError("Grid needs at least one axis, e.g. Grid(beta=[1, 10])")
        self.axes: dict[str, tuple] = {}
        for name, values in axes.items():
            if not name.isidentifier():
                raise ConfigError(f"Grid axis names must be identifiers, got {name!r}")
            if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
                values = [values]
            vals = tuple(_scalar(name, v) for v in values)
            if not vals:
                raise ConfigError(f"Grid axis {name!r} is empty")
            if len({json.dumps(v) for v in vals}) != len(vals):
                raise ConfigError(f"Grid axis {name!r} repeats a value: {list(vals)}")
            self.axes[name] = vals

    def __iter__(self) -> Iterator[dict[str, Any]]:
        names = list(self.axes)
        for combo in itertools.product(*self.axes.values()):
            yield dict(zip(names, combo))

    def __len__(self) -> int:
        return math.prod(len(v) for v in self.axes.values())

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={list(v)}" for k, v in self.axes.items())
        return f"Grid({inner})"
