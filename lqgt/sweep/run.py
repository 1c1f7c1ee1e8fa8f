"""Run a task over a grid in chunks, locally or on a Ray cluster, resumably.

The work is ``len(grid) × ceil(trajectories / chunk)`` independent chunks. Each chunk
calls ``task(point, trajectories=k, seed=s, device=d)`` with a seed derived from the
user's seed, the point and the chunk index (:func:`lqgt.sweep.grid.chunk_seed`), reduces
the returned per-trajectory samples to :class:`~lqgt.sweep.stats.Moments` where it ran,
and only those statistics travel back. Finished chunks are written to the results file
at once (atomically), so an interrupted run resumes where it stopped; the final table
merges the chunks of each point in chunk order, so it is the same whatever backend ran
the chunks and in whatever order they finished.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from tqdm.auto import tqdm

from ..errors import ConfigError, LqgtError
from .grid import Grid, chunk_seed, point_key
from .results import ChunkRecord, read_chunks, resolve_path, write_chunks
from .stats import reduce_metrics
from .table import SweepTable

__all__ = ["run", "run_chunk", "SweepTaskError", "MissingDependencyError", "BACKENDS"]

BACKENDS = ("local", "ray")

Task = Callable[..., Mapping[str, Any]]


class SweepTaskError(LqgtError, RuntimeError):
    """A sweep task raised; the chunks finished before it are kept in the results file."""


class MissingDependencyError(LqgtError, ImportError):
    """An optional dependency of the chosen backend is not installed (the message says what to install)."""


def run_chunk(task: Task, point: dict, key: str, chunk: int, trajectories: int, seed: int, device: str,
              run_id: str) -> ChunkRecord:
    """Run one chunk and reduce it to statistics (this is what a worker executes).

    Parameters
    ----------
    task : callable
        ``task(point, *, trajectories, seed, device) -> {metric: samples}``.
    point : dict
        The grid point.
    key : str
        Its canonical key.
    chunk : int
        Chunk index.
    trajectories : int
        Trajectories in this chunk.
    seed : int
        The chunk's seed.
    device : str
        Device passed to the task.
    run_id : str
        The run's settings (JSON), stored with the record.

    Returns
    -------
    ChunkRecord
    """
    out = task(dict(point), trajectories=trajectories, seed=seed, device=device)
    return ChunkRecord(point=dict(point), key=key, chunk=chunk, seed=seed, trajectories=trajectories, run=run_id,
                       metrics=reduce_metrics(out))


def _positive_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v) or v < 1 or not math.isfinite(v):
        raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def _local(jobs, task, device, run_id):
    for point, key, c, k, s in jobs:
        try:
            yield run_chunk(task, point, key, c, k, s, device, run_id)
        except LqgtError:
            raise
        except Exception as exc:
            raise SweepTaskError(f"task failed at point {key}, chunk {c} (seed {s}): {type(exc).__name__}: {exc}") from exc


def _ray(jobs, task, device, run_id, *, address, gpus_per_task, cpus_per_task, max_retries, ray_init):
    try:
        import ray
    except ImportError:
        raise MissingDependencyError('backend="ray" needs Ray: pip install "lqgt[distributed]" (or pip install ray)') from None
    if not ray.is_initialized():
        ray.init(address=address, **dict(ray_init or {}))
    remote = ray.remote(num_gpus=gpus_per_task, num_cpus=cpus_per_task, max_retries=max_retries)(run_chunk)
    task_ref = ray.put(task)
    pending = {remote.remote(task_ref, p, key, c, k, s, device, run_id): (key, c, s) for p, key, c, k, s in jobs}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            key, c, s = pending.pop(ref)
            try:
                yield ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                raise SweepTaskError(f"task failed at point {key}, chunk {c} (seed {s}): {exc}") from None
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)


def run(
    task: Task,
    grid: Grid,
    *,
    trajectories: int,
    chunk: int | None = None,
    seed: int = 0,
    backend: str = "local",
    address: str | None = None,
    gpus_per_task: float = 0,
    cpus_per_task: float = 1,
    device: str | None = None,
    results: str | Path | None = None,
    common_noise: bool = False,
    max_retries: int = 3,
    progress: bool = True,
    ray_init: Mapping[str, Any] | None = None,
) -> SweepTable:
    """Run ``task`` at every grid point on ``trajectories`` trajectories, in chunks.

    Parameters
    ----------
    task : callable
        ``task(point, *, trajectories, seed, device)`` returning ``{metric: samples}``
        (1-D per-trajectory samples, scalars, or :class:`~lqgt.sweep.stats.Moments`);
        e.g. :class:`lqgt.sweep.ClosedLoopTask`. With Ray it must be picklable
        (a module-level function or a dataclass instance).
    grid : Grid
        The grid points.
    trajectories : int
        Trajectories per grid point.
    chunk : int, optional
        Trajectories per task (default: all of them in one chunk).
    seed : int
        User seed; every chunk's seed is derived from it, the point and the chunk index.
    backend : {"local", "ray"}
        ``"local"`` runs the chunks one after another in this process; ``"ray"`` submits
        them as Ray tasks (``pip install "lqgt[distributed]"``).
    address : str, optional
        Ray cluster address (``"auto"`` for a running cluster; ``None`` starts a local Ray).
        Only used when this process has not called ``ray.init`` yet.
    gpus_per_task : float
        GPUs each Ray task reserves (fractions share a GPU between tasks).
    cpus_per_task : float
        CPUs each Ray task reserves.
    device : str, optional
        Device passed to the task: ``"cuda"`` when ``gpus_per_task > 0``, else ``"cpu"``.
    results : str or pathlib.Path, optional
        Results file (``.parquet`` or ``.csv``): one row of statistics per finished chunk,
        rewritten atomically after each chunk. An existing file of the same run is resumed:
        its chunks are not recomputed.
    common_noise : bool
        Derive chunk seeds from the chunk index only, so every grid point sees the same
        noise (common random numbers across the grid).
    max_retries : int
        Ray retries of a task whose worker died.
    progress : bool
        Show one progress bar over all chunks, with the trajectory throughput.
    ray_init : mapping, optional
        Extra keyword arguments of ``ray.init`` (e.g. ``{"num_cpus": 2}``).

    Returns
    -------
    SweepTable

    Raises
    ------
    ConfigError
        Bad arguments, or a results file written by a run with other settings.
    MissingDependencyError
        ``backend="ray"`` without Ray installed.
    SweepTaskError
        A task raised (chunks finished before are kept in the results file).
    """
    if not isinstance(grid, Grid):
        raise ConfigError(f"grid must be an lqgt.sweep.Grid, got {type(grid).__name__}")
    if not callable(task):
        raise ConfigError(f"task must be callable, got {type(task).__name__}")
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    trajectories = _positive_int("trajectories", trajectories)
    chunk = trajectories if chunk is None else _positive_int("chunk", chunk)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if not (isinstance(gpus_per_task, (int, float)) and gpus_per_task >= 0):
        raise ConfigError(f"gpus_per_task must be >= 0, got {gpus_per_task!r}")
    device = device or ("cuda" if gpus_per_task > 0 else "cpu")
    n_chunks = math.ceil(trajectories / chunk)
    run_id = json.dumps({"seed": seed, "trajectories": trajectories, "chunk": chunk,
                         "common_noise": bool(common_noise)}, sort_keys=True)

    path = resolve_path(results)
    records: list[ChunkRecord] = []
    if path is not None:
        for r in read_chunks(path):
            if r.run != run_id:
                raise ConfigError(f"{path} holds chunks of another run ({r.run}); this run is {run_id}. "
                                  "Use another results path or delete the file.")
            records.append(r)
    done = {(r.key, r.chunk) for r in records}

    points = list(grid)
    keys = [point_key(p) for p in points]
    jobs = []
    for p, key in zip(points, keys):
        for c in range(n_chunks):
            if (key, c) not in done:
                k = min(chunk, trajectories - c * chunk)
                jobs.append((p, key, c, k, chunk_seed(seed, "" if common_noise else key, c)))

    if backend == "local":
        stream = _local(jobs, task, device, run_id)
    else:
        stream = _ray(jobs, task, device, run_id, address=address, gpus_per_task=gpus_per_task,
                      cpus_per_task=cpus_per_task, max_retries=max_retries, ray_init=ray_init)
    total = len(points) * n_chunks
    bar = tqdm(total=total, initial=total - len(jobs), unit="chunk", desc="sweep", disable=not progress,
               dynamic_ncols=True)
    t0, traj = time.perf_counter(), 0
    try:
        for rec in stream:
            records.append(rec)
            if path is not None:
                write_chunks(path, records)
            traj += rec.trajectories
            bar.update(1)
            bar.set_postfix_str(f"{traj / max(time.perf_counter() - t0, 1e-9):.3g} traj/s")
    finally:
        bar.close()
    settings = dict(seed=seed, trajectories=trajectories, chunk=chunk, backend=backend, device=device,
                    common_noise=bool(common_noise), chunks_run=len(jobs), chunks_total=total)
    return SweepTable.from_records(points, keys, records, path=path, settings=settings)
