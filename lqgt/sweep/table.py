"""The merged result of a sweep: one row per grid point, statistics per metric."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .stats import Moments, merge_all

__all__ = ["SweepTable"]


@dataclass(frozen=True, eq=False)
class SweepTable:
    """Statistics of every metric at every grid point, merged over chunks in chunk order.

    Attributes
    ----------
    points : list of dict
        The grid points, in grid order.
    metrics : dict of str to list of Moments
        For each metric, its statistics at each point (aligned with ``points``).
    chunks : int
        Number of chunk records merged.
    path : pathlib.Path or None
        The results file (chunk records), if one was written.
    settings : dict
        Run settings (seed, trajectories, chunk, backend, ...).
    """

    points: list[dict]
    metrics: dict[str, list[Moments]]
    chunks: int = 0
    path: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_records(cls, points: list[dict], keys: list[str], records, **kw) -> "SweepTable":
        """Merge chunk records point by point, in chunk order (deterministic).

        Parameters
        ----------
        points : list of dict
            Grid points.
        keys : list of str
            Their canonical keys.
        records : iterable of ChunkRecord
            Finished chunks (records of other points are ignored).
        **kw
            ``path`` and ``settings``.

        Returns
        -------
        SweepTable
        """
        by_key: dict[str, list] = {k: [] for k in keys}
        used = 0
        for r in records:
            if r.key in by_key:
                by_key[r.key].append(r)
                used += 1
        names: list[str] = []
        for k in keys:
            for r in by_key[k]:
                names += [m for m in r.metrics if m not in names]
        metrics = {m: [merge_all(r.metrics[m] for r in sorted(by_key[k], key=lambda r: r.chunk) if m in r.metrics)
                       for k in keys] for m in names}
        return cls(points=list(points), metrics=metrics, chunks=used, **kw)

    def __len__(self) -> int:
        return len(self.points)

    def _metric(self, metric: str) -> list[Moments]:
        if metric not in self.metrics:
            raise ConfigError(f"no metric {metric!r} in this sweep; it has {sorted(self.metrics)}")
        return self.metrics[metric]

    def column(self, metric: str, stat: str = "mean") -> np.ndarray:
        """One statistic of a metric at every point.

        Parameters
        ----------
        metric : str
            Metric name.
        stat : {"mean", "std", "sem", "var", "count", "min", "max", "ci_lo", "ci_hi"}
            Which statistic.

        Returns
        -------
        numpy.ndarray, shape (len(points),)
        """
        allowed = ("mean", "std", "sem", "var", "count", "min", "max", "ci_lo", "ci_hi")
        if stat not in allowed:
            raise ConfigError(f"stat must be one of {allowed}, got {stat!r}")
        ms = self._metric(metric)
        if stat in ("ci_lo", "ci_hi"):
            return np.array([m.ci95[0 if stat == "ci_lo" else 1] for m in ms])
        return np.array([getattr(m, stat) for m in ms], dtype=float)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per point: the axes, then ``<metric>_{mean,sem,ci_lo,ci_hi,std,count,min,max}``.

        Returns
        -------
        list of dict
        """
        out = []
        for i, p in enumerate(self.points):
            row = dict(p)
            for name, ms in self.metrics.items():
                m = ms[i]
                lo, hi = m.ci95
                row.update({f"{name}_mean": m.mean, f"{name}_sem": m.sem, f"{name}_ci_lo": lo, f"{name}_ci_hi": hi,
                            f"{name}_std": m.std, f"{name}_count": m.count, f"{name}_min": m.min,
                            f"{name}_max": m.max})
            out.append(row)
        return out

    def to_pandas(self):
        """The :meth:`rows` as a pandas DataFrame (pandas imported here; not a core dependency).

        Returns
        -------
        pandas.DataFrame
        """
        try:
            import pandas as pd
        except ImportError:
            raise ConfigError("SweepTable.to_pandas needs pandas: pip install pandas") from None
        return pd.DataFrame(self.rows())

    def plot(self, x: str, y: str, *, by: str | None = None, ax=None, ci: bool = True, logx: bool | None = None,
             logy: bool = False):
        """Plot a metric's mean (with its 95% CI) against one axis, a line per value of ``by``.

        Parameters
        ----------
        x : str
            Grid axis on the horizontal axis (numbers).
        y : str
            Metric name.
        by : str, optional
            Grid axis whose values get one line each. Points that differ in other axes
            not named here are drawn as separate lines too.
        ax : matplotlib.axes.Axes, optional
            Axes to draw into (a new figure otherwise).
        ci : bool
            Draw the 95% confidence band.
        logx : bool, optional
            Log-scaled ``x``; default: when all ``x`` are positive and span over two decades.
        logy : bool
            Log-scaled ``y``.

        Returns
        -------
        matplotlib.axes.Axes
        """
        import matplotlib.pyplot as plt

        if not self.points or x not in self.points[0]:
            raise ConfigError(f"x={x!r} is not a grid axis; axes: {list(self.points[0]) if self.points else []}")
        if by is not None and by not in self.points[0]:
            raise ConfigError(f"by={by!r} is not a grid axis; axes: {list(self.points[0])}")
        mean, lo, hi = (self.column(y, s) for s in ("mean", "ci_lo", "ci_hi"))
        if ax is None:
            ax = plt.figure(figsize=(6, 4)).add_subplot()
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(self.points):
            rest = {k: v for k, v in p.items() if k != x}
            label = ", ".join(f"{k}={v}" for k, v in rest.items()) if rest else y
            groups.setdefault(label, []).append(i)
        xs_all = np.array([float(p[x]) for p in self.points])
        for label, idx in groups.items():
            idx = sorted(idx, key=lambda i: xs_all[i])
            xs = xs_all[idx]
            line, = ax.plot(xs, mean[idx], marker="o", label=label)
            if ci:
                ax.fill_between(xs, lo[idx], hi[idx], color=line.get_color(), alpha=0.2, linewidth=0)
        if logx is None:
            logx = bool(np.all(xs_all > 0) and xs_all.max() / xs_all.min() > 100)
        if logx:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(x)
        ax.set_ylabel(f"{y} (mean, 95% CI)" if ci else y)
        ax.legend(fontsize="small")
        ax.grid(True, alpha=0.3)
        return ax
