"""Sweeps: grids of settings run in chunks on a local or Ray backend, with mergeable statistics.

```python
grid = lqgt.sweep.Grid(beta=[1, 10, 100], window=[8, 32], plant=["two_mass"])
table = lqgt.sweep.run(lqgt.sweep.ClosedLoopTask(horizon=500), grid, trajectories=10_000,
                       chunk=2_000, seed=0, results="sweep.parquet")
table.plot(x="beta", y="gap_tf", by="window")
```

Also here: :func:`beta_sweep`, the Transformer Filter β-sweep on common noise.
"""

from .beta import BetaSweep, beta_sweep
from .grid import Grid, chunk_seed, point_key
from .results import read_chunks
from .run import BACKENDS, MissingDependencyError, SweepTaskError, run, run_chunk
from .stats import Moments, merge_all
from .table import SweepTable
from .tasks import ClosedLoopTask

__all__ = ["Grid", "run", "SweepTable", "Moments", "merge_all", "ClosedLoopTask", "load", "chunk_seed",
           "point_key", "run_chunk", "SweepTaskError", "MissingDependencyError", "BACKENDS", "BetaSweep",
           "beta_sweep"]


def load(path) -> SweepTable:
    """Read a results file and merge its chunks per point (in the order the points first appear).

    Parameters
    ----------
    path : str or pathlib.Path
        A results file written by :func:`run`.

    Returns
    -------
    SweepTable
    """
    from pathlib import Path

    from ..errors import ConfigError

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"no sweep results file at {path}")
    recs = read_chunks(path)
    keys, points = [], []
    for r in recs:
        if r.key not in keys:
            keys.append(r.key)
            points.append(r.point)
    return SweepTable.from_records(points, keys, recs, path=path)
