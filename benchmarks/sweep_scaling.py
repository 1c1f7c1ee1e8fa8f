"""Scaling of the sweep layer: local backend vs Ray with 1, 2, ... workers, and per-task overhead.

Each task is a closed loop of ``--batch`` trajectories × ``--horizon`` steps (the Kalman
loop, and the Transformer Filter loop at ``beta`` when ``--tf``), via
:class:`lqgt.sweep.ClosedLoopTask`. For every worker count ``w`` the same grid and seed run
with ``--tasks-per-worker × w`` chunks; throughput is trajectory-steps per second of wall
time, efficiency is ``rate(w) / (w · rate(1))``. Per-task overhead is the wall time of
trivial tasks through each backend. The table of each Ray run is compared with the local
run of the same chunks (bit-identical expected on one device kind).

On one GPU, ``--share`` gives every worker a fraction of it (``gpus_per_task = 1/w``), which
measures the layer's overhead, not multi-GPU scaling.

Run: ``python benchmarks/sweep_scaling.py --device cuda --workers 1,2,4,8 --batch 1e6``
(needs ``pip install "lqgt[distributed]"``); ``--device cpu --batch 2e3 --horizon 200`` on a laptop.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import ints  # noqa: E402

import lqgt  # noqa: E402
from lqgt.sweep import ClosedLoopTask, Grid  # noqa: E402


def trivial(point, *, trajectories, seed, device):
    """A task that does nothing but return one sample (measures per-task overhead)."""
    return {"x": [float(seed % 7)]}


def _same(a, b) -> bool:
    return all((x.count, x.mean, x.m2) == (y.count, y.mean, y.m2)
               for m in a.metrics for x, y in zip(a.metrics[m], b.metrics[m]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--workers", type=ints, default=None, help="worker counts (default 1,2,4.. up to the GPUs/CPUs)")
    ap.add_argument("--batch", type=float, default=1e6, help="trajectories per task")
    ap.add_argument("--horizon", type=int, default=1000)
    ap.add_argument("--tasks-per-worker", type=int, default=3)
    ap.add_argument("--tf", action="store_true", help="also the Transformer Filter loop (beta=100, H=32)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--share", action="store_true", help="workers share one GPU (fractional gpus_per_task)")
    ap.add_argument("--overhead-tasks", type=int, default=200)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import ray

    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    cpus = os.cpu_count() or 1
    top = (gpus if not args.share else 8) if args.device == "cuda" else max(1, cpus // 2)
    workers = args.workers or [w for w in (1, 2, 4, 8, 16) if w <= top]
    batch = int(args.batch)
    task = ClosedLoopTask(horizon=args.horizon, burn_in=min(100, args.horizon // 4), dtype=args.dtype)
    grid = Grid(plant=["two_mass"], beta=[100.0]) if args.tf else Grid(plant=["two_mass"])

    def start(w: int) -> float:
        """(Re)start Ray with room for exactly ``w`` concurrent tasks; return gpus_per_task."""
        ray.shutdown()
        if args.device == "cuda":
            ray.init(num_gpus=1 if args.share else w, num_cpus=max(cpus, w), include_dashboard=False,
                     log_to_driver=False)
            return 1.0 / w if args.share else 1.0
        ray.init(num_gpus=0, num_cpus=w, include_dashboard=False, log_to_driver=False)
        return 0.0

    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"# sweep scaling on {name}: {gpus} GPU(s), {cpus} CPUs, torch {torch.__version__}, "
          f"ray {ray.__version__}; task = two_mass closed loop{' + TF(beta=100, H=32)' if args.tf else ''}, "
          f"batch {batch:.0e} x {args.horizon} steps, {args.dtype}", flush=True)

    # warm-up: compile/caches in this process
    lqgt.sweep.run(task, grid, trajectories=min(batch, 1000), seed=99, device=args.device, progress=False)
    rows = []
    base_rate = None
    n_tasks = args.tasks_per_worker * max(workers)     # the same chunks for every worker count
    traj = n_tasks * batch
    for w in workers:
        t0 = time.perf_counter()
        local = lqgt.sweep.run(task, grid, trajectories=traj, chunk=batch, seed=1, device=args.device,
                               progress=False) if w == 1 else None
        t_local = time.perf_counter() - t0 if local is not None else None
        gpt = start(w)
        # warm the w workers (process start, imports, CUDA context) outside the timing
        lqgt.sweep.run(task, grid, trajectories=w * min(batch, 1000), chunk=min(batch, 1000), seed=98, backend="ray",
                       device=args.device, gpus_per_task=gpt, cpus_per_task=1, progress=False)
        t0 = time.perf_counter()
        tab = lqgt.sweep.run(task, grid, trajectories=traj, chunk=batch, seed=1, backend="ray", device=args.device,
                             gpus_per_task=gpt, cpus_per_task=1, progress=False)
        t_ray = time.perf_counter() - t0
        steps = traj * args.horizon * (2 if args.tf else 1)
        rate = steps / t_ray
        if w == 1:
            base_rate, ref = rate, local
        eff = rate / (w * base_rate)
        if w == 1:
            ref_tab = tab
        same = _same(ref_tab, tab)
        rows.append(dict(workers=w, tasks=n_tasks, seconds=t_ray, traj_steps_per_s=rate, efficiency=eff,
                         local_seconds=t_local, same_as_reference=same,
                         cost_kalman=float(tab.column("cost_kalman")[0])))
        if local is not None:
            rows[-1]["local_traj_steps_per_s"] = steps / t_local
            rows[-1]["same_as_local"] = _same(local, tab)
        r = rows[-1]
        print(f"  workers {w}: {r['seconds']:.2f} s, {r['traj_steps_per_s']:.3g} traj-steps/s, "
              f"efficiency {r['efficiency']:.0%}, table == 1-worker table: {r['same_as_reference']}", flush=True)

    # per-task overhead: trivial tasks, local vs ray
    n = args.overhead_tasks
    t0 = time.perf_counter()
    lqgt.sweep.run(trivial, Grid(i=[0]), trajectories=n, chunk=1, seed=0, progress=False)
    t_local = (time.perf_counter() - t0) / n
    start(max(workers))
    lqgt.sweep.run(trivial, Grid(i=[0]), trajectories=8, chunk=1, seed=0, backend="ray", progress=False)
    t0 = time.perf_counter()
    lqgt.sweep.run(trivial, Grid(i=[0]), trajectories=n, chunk=1, seed=0, backend="ray", progress=False)
    t_rayo = (time.perf_counter() - t0) / n
    ray.shutdown()

    print("\n| workers | tasks | wall s | traj-steps/s | efficiency vs 1 | table == 1-worker table | cost (kalman) |")
    print("| ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for r in rows:
        print(f"| {r['workers']} | {r['tasks']} | {r['seconds']:.2f} | {r['traj_steps_per_s']:.3g} | "
              f"{r['efficiency']:.0%} | {r['same_as_reference']} | {r['cost_kalman']:.5f} |")
    r1 = rows[0]
    print(f"\nlocal backend, 1 worker: {r1['local_traj_steps_per_s']:.3g} traj-steps/s "
          f"(ray/local = {r1['traj_steps_per_s'] / r1['local_traj_steps_per_s']:.2f}); ray table == local table: "
          f"{r1['same_as_local']}")
    print(f"per-task overhead (trivial task, {n} tasks): local {1e3 * t_local:.2f} ms, ray {1e3 * t_rayo:.2f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(rows=rows, overhead_ms=dict(local=1e3 * t_local, ray=1e3 * t_rayo), device=name,
                           gpus=gpus, share=args.share), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
