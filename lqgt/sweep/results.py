"""The results file of a sweep: one row per finished chunk, rewritten atomically as chunks finish.

Columns: the grid axes, ``point`` (the point's canonical JSON), ``chunk``, ``seed`` (the
chunk's derived seed), ``trajectories``, ``run`` (the run's settings, JSON), and for each
metric ``<metric>__count``, ``__mean``, ``__m2``, ``__min``, ``__max``. Parquet (pyarrow)
for a ``.parquet`` path; CSV otherwise, and CSV beside a ``.parquet`` path when pyarrow is
missing. Floats are written so that they read back bit-exactly.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._io import atomic_open, atomic_write_text
from ..errors import ConfigError
from .stats import Moments

__all__ = ["ChunkRecord", "resolve_path", "read_chunks", "write_chunks"]

_FIELDS = ("count", "mean", "m2", "min", "max")


@dataclass(frozen=True)
class ChunkRecord:
    """One finished chunk of one grid point.

    Attributes
    ----------
    point : dict
        The grid point.
    key : str
        Canonical JSON of the point.
    chunk : int
        Chunk index.
    seed : int
        Seed the chunk ran with.
    trajectories : int
        Trajectories in the chunk.
    run : str
        JSON of the run settings (seed, chunk size, trajectories, common_noise).
    metrics : dict of str to Moments
        The chunk's statistics.
    """

    point: dict
    key: str
    chunk: int
    seed: int
    trajectories: int
    run: str
    metrics: dict


def _has_pyarrow() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_path(results: str | Path | None) -> Path | None:
    """The file actually written: a ``.parquet`` path falls back to ``.csv`` without pyarrow.

    Parameters
    ----------
    results : str or pathlib.Path or None
        Requested results path.

    Returns
    -------
    pathlib.Path or None
    """
    if results is None:
        return None
    path = Path(results)
    if path.suffix.lower() == ".parquet" and not _has_pyarrow():
        alt = path.with_suffix(".csv")
        warnings.warn(f"pyarrow is not installed; writing the sweep results as CSV to {alt} "
                      "(pip install pyarrow for Parquet)", stacklevel=3)
        return alt
    if path.exists() and path.is_dir():
        raise ConfigError(f"results={str(path)!r} is a directory; give a file name such as sweep.parquet")
    return path


def _rows(records: list[ChunkRecord]) -> tuple[list[str], list[dict[str, Any]]]:
    axes: list[str] = []
    metrics: list[str] = []
    for r in records:
        axes += [a for a in r.point if a not in axes]
        metrics += [m for m in r.metrics if m not in metrics]
    cols = axes + ["point", "chunk", "seed", "trajectories", "run"] + [f"{m}__{f}" for m in metrics for f in _FIELDS]
    rows = []
    for r in records:
        row: dict[str, Any] = {a: r.point.get(a) for a in axes}
        row.update(point=r.key, chunk=r.chunk, seed=r.seed, trajectories=r.trajectories, run=r.run)
        for m in metrics:
            s = r.metrics.get(m)
            for f in _FIELDS:
                row[f"{m}__{f}"] = None if s is None else getattr(s, f)
        rows.append(row)
    return cols, rows


def write_chunks(path: Path, records: list[ChunkRecord]) -> None:
    """Write all chunk records to ``path`` atomically (Parquet or CSV by suffix).

    Parameters
    ----------
    path : pathlib.Path
        Destination (its directory must exist).
    records : list of ChunkRecord
        Every finished chunk so far.
    """
    cols, rows = _rows(records)
    if path.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows) if rows else pa.table({c: [] for c in cols})
        with atomic_open(path, "wb") as f:
            pq.write_table(table, f)
        return
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for row in rows:
        w.writerow(["" if row[c] is None else (repr(row[c]) if isinstance(row[c], float) else row[c]) for c in cols])
    atomic_write_text(path, buf.getvalue())


def _num(v: Any) -> float:
    if v is None or v == "":
        return math.nan
    return float(v)


def read_chunks(path: Path) -> list[ChunkRecord]:
    """Read the chunk records of a results file (empty list when it does not exist).

    Parameters
    ----------
    path : pathlib.Path
        A file written by :func:`write_chunks`.

    Returns
    -------
    list of ChunkRecord

    Raises
    ------
    ConfigError
        The file is not a sweep results file.
    """
    if not path.exists():
        return []
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        try:
            metrics = {}
            for col in row:
                if col.endswith("__count"):
                    m = col[: -len("__count")]
                    if row[col] in (None, ""):
                        continue
                    metrics[m] = Moments(int(float(row[col])), *(_num(row[f"{m}__{f}"]) for f in _FIELDS[1:]))
            out.append(ChunkRecord(point=json.loads(row["point"]), key=str(row["point"]), chunk=int(row["chunk"]),
                                   seed=int(row["seed"]), trajectories=int(row["trajectories"]), run=str(row["run"]),
                                   metrics=metrics))
        except (KeyError, ValueError, TypeError) as exc:
            raise ConfigError(f"{path} is not an lqgt sweep results file ({type(exc).__name__}: {exc})") from None
    return out
