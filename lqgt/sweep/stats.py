"""Mergeable sufficient statistics: count, mean, second central moment, min and max.

A sweep never ships raw trajectories between processes: each chunk is reduced to a
:class:`Moments` per metric where it was computed, and chunks are combined with the
parallel-variance formula of Chan, Golub and LeVeque (1979):

```text
n = n_a + n_b,   δ = mean_b − mean_a
mean = mean_a + δ n_b / n
M2   = M2_a + M2_b + δ² n_a n_b / n
```

which is exact in real arithmetic, so a merged result does not depend on how the work was
split (in floating point it agrees with a single pass to rounding, ~1e-15 relative).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from ..errors import ConfigError

__all__ = ["Moments", "merge_all", "reduce_metrics"]

#: Two-sided 95% quantile of the standard normal.
_Z95 = 1.959963984540054


@dataclass(frozen=True)
class Moments:
    """Sufficient statistics of a sample of one scalar metric.

    Attributes
    ----------
    count : int
        Number of samples.
    mean : float
        Sample mean (``nan`` when ``count == 0``).
    m2 : float
        Sum of squared deviations from the mean, ``Σ (x_i − mean)²``.
    min, max : float
        Smallest and largest sample (``±inf`` when empty).
    """

    count: int
    mean: float
    m2: float
    min: float = math.inf
    max: float = -math.inf

    @classmethod
    def of(cls, samples) -> "Moments":
        """Statistics of a 1-D sample (numpy array, list or torch tensor), in float64.

        Parameters
        ----------
        samples : array_like, shape (k,)
            The sample.

        Returns
        -------
        Moments
        """
        if hasattr(samples, "detach"):
            samples = samples.detach().to("cpu").double().numpy()
        x = np.asarray(samples, dtype=np.float64).reshape(-1)
        if x.size == 0:
            return cls(0, math.nan, 0.0)
        mean = float(x.mean())
        return cls(int(x.size), mean, float(((x - mean) ** 2).sum()), float(x.min()), float(x.max()))

    def merge(self, other: "Moments") -> "Moments":
        """Combine with the statistics of a disjoint sample (Chan's parallel formula).

        Parameters
        ----------
        other : Moments
            Statistics of the other sample.

        Returns
        -------
        Moments
            Statistics of the union.
        """
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta * delta * (self.count * other.count / n)
        return Moments(n, mean, m2, min(self.min, other.min), max(self.max, other.max))

    @property
    def var(self) -> float:
        """Unbiased sample variance (``nan`` for fewer than two samples)."""
        return self.m2 / (self.count - 1) if self.count > 1 else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation."""
        return math.sqrt(self.var) if self.count > 1 else math.nan

    @property
    def sem(self) -> float:
        """Standard error of the mean (``inf`` for fewer than two samples)."""
        return self.std / math.sqrt(self.count) if self.count > 1 else math.inf

    @property
    def ci95(self) -> tuple[float, float]:
        """Normal 95% confidence interval of the mean."""
        h = _Z95 * self.sem
        return (self.mean - h, self.mean + h)


def merge_all(parts: Iterable[Moments]) -> Moments:
    """Merge statistics in the given order (use a fixed order for bit-identical results).

    Parameters
    ----------
    parts : iterable of Moments
        Statistics of disjoint samples.

    Returns
    -------
    Moments
    """
    out = Moments(0, math.nan, 0.0)
    for p in parts:
        out = out.merge(p)
    return out


def reduce_metrics(values: Mapping[str, object]) -> dict[str, Moments]:
    """Reduce a task's output ``{metric: samples or Moments}`` to ``{metric: Moments}``.

    Parameters
    ----------
    values : mapping of str to array_like or Moments or float
        Per-trajectory samples (1-D), a scalar (one sample) or ready statistics.

    Returns
    -------
    dict of str to Moments

    Raises
    ------
    ConfigError
        The task returned something that is not a mapping of metric names to samples.
    """
    if not isinstance(values, Mapping) or not values:
        raise ConfigError(f"a sweep task must return a non-empty dict {{metric: samples}}, got {type(values).__name__}")
    out = {}
    for k, v in values.items():
        if not isinstance(k, str) or not k.isidentifier():
            raise ConfigError(f"sweep metric names must be identifiers (they become columns), got {k!r}")
        out[k] = v if isinstance(v, Moments) else Moments.of(v)
    return out
