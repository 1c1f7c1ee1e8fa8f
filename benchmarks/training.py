"""Training speed of learned estimators on ``two_mass``, and their closed-loop throughput.

For each learned estimator (the ``TransformerEstimator``; the trainable Transformer Filter
and KalmanNet too when lqgt provides them):

1. **time to target**: train with :func:`lqgt.learn.fit` (``state_mse``) on matched-model
   data and stop as soon as the state MSE on a validation set (sequence mode, fixed
   held-out trajectories) is within ``--target-db`` (0.1 dB) of the Kalman filter's on
   the same trajectories; report the wall time (target: <= 5 minutes on one GPU) and
   the steps;
2. **training throughput**: trajectories per second and trajectory-steps per second of the
   optimizer loop (forward, backward, Adam);
3. **closed-loop throughput**: :func:`lqgt.simulate` at ``--sim-batch`` (1e6) trajectories,
   in trajectory-steps/s, with the steady Kalman filter (LQG) loop timed in the same run as
   the reference (target: >= 1e8 trajectory-steps/s for TF-sized models).

``python benchmarks/training.py --device cuda --out bench-training/`` (about 5 minutes on
an H200); ``--quick`` runs a small version on the CPU in under a minute. Writes
``training.json`` and ``training.md`` into ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import free, is_oom, sync  # noqa: E402

import lqgt  # noqa: E402
from lqgt._io import atomic_write_text  # noqa: E402


def estimators(plant, K, quick: bool, seed: int, names: list[str]) -> dict:
    """The learned estimators to benchmark: name -> constructor (no arguments)."""
    n, m, p = plant.n, plant.m, plant.p
    size = dict(window=16, layers=1, heads=2, width=16) if quick else dict(window=32, layers=2, heads=4, width=64)
    out = {"TransformerEstimator": lambda: lqgt.TransformerEstimator(n, m, p, **size, seed=seed)}
    TTF = getattr(lqgt, "TrainableTransformerFilter", None)
    if TTF is not None:
        out["TrainableTransformerFilter"] = lambda: TTF.from_construction(plant, beta=10.0, window=16 if quick else 32, K=K,
                                                                                  inputs="value")
    KN = getattr(lqgt, "KalmanNet", None)
    if KN is not None:
        out["KalmanNet"] = lambda: KN(plant, hidden=32, steady=False)
    return {k: v for k, v in out.items() if not names or k in names}


def _build(cls, plant, K, **kw):
    """Construct H2-style model-based estimators from the plant, trying the usual signatures."""
    for args in ((plant,), ()):
        try:
            return cls(*args, **kw)
        except TypeError:
            continue
    return cls(plant)


def val_db(est, val, kf_mse: float) -> float:
    """10 log10(MSE of est / MSE of the Kalman filter) on the validation trajectories (sequence mode)."""
    est.eval()
    with torch.no_grad():
        xh = est(val.y, val.u)
        tgt = val.targets(est.form)
        if est.form == "predictor":
            xh = xh[:, :-1]
        mse = float((xh - tgt).square().sum(-1).mean())
    est.train()
    return 10 * math.log10(mse / kf_mse)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="float32 (default on cuda) or float64 (default on cpu)")
    ap.add_argument("--out", default="bench-training/")
    ap.add_argument("--quick", action="store_true", help="small sizes: under a minute on a CPU")
    ap.add_argument("--target-db", type=float, default=0.1)
    ap.add_argument("--max-seconds", type=float, default=300.0, help="training time limit per estimator")
    ap.add_argument("--max-steps", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=256, help="training minibatch")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--check-every", type=int, default=50)
    ap.add_argument("--sim-batch", type=float, default=1e6)
    ap.add_argument("--sim-horizon", type=int, default=100)
    ap.add_argument("--estimators", nargs="*", default=[])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true",
                    help="closed loop: run the TransformerEstimator's step core through torch.compile "
                         "(compiled in the warm-up run, not timed)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    dt = {"float32": torch.float32, "float64": torch.float64}[args.dtype or ("float32" if dev.type == "cuda" else "float64")]
    if args.quick:
        args.max_seconds, args.max_steps, args.batch, args.lr = min(args.max_seconds, 20.0), min(args.max_steps, 400), 32, 3e-3
        args.sim_batch, args.sim_horizon, args.check_every = min(args.sim_batch, 2000), min(args.sim_horizon, 50), 25
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    plant, Q, R = lqgt.plants.two_mass()
    K = lqgt.lqg(plant, Q, R).K
    T = 100 if args.quick else 200
    data = lqgt.learn.rollouts(plant, K, horizon=T, batch=512 if args.quick else 16384, seed=args.seed, device=dev, dtype=dt)
    val = lqgt.learn.rollouts(plant, K, horizon=T, batch=256 if args.quick else 2048, seed=args.seed + 1000, device=dev,
                              dtype=dt)
    rows = []
    for name, make in estimators(plant, K, args.quick, args.seed, args.estimators).items():
        est = make()
        kf_mse = float((val.kalman(est.form) - val.targets(est.form)).square().sum(-1).mean())
        state = {"db": math.inf, "hit": None, "t0": None}

        def cb(step, loss, est=est, state=state, kf_mse=kf_mse):
            if step % args.check_every:
                return None
            sync(dev)
            state["db"] = val_db(est, val, kf_mse)
            wall = time.perf_counter() - state["t0"]
            if state["db"] <= args.target_db and state["hit"] is None:
                state["hit"] = (step, wall)
                return True
            return wall > args.max_seconds or None

        state["t0"] = time.perf_counter()
        log = lqgt.learn.fit(est, data, loss="state_mse", steps=args.max_steps, lr=args.lr, batch=args.batch,
                             device=dev, dtype=dt, progress=False, seed=args.seed, warmup=100, clip=1.0, callback=cb)
        rows.append(_row(name, est, log, state, args, T, kf_mse))
        # closed-loop throughput at a large batch, against the Kalman (LQG) loop of the same run
        if args.compile and hasattr(est, "compile"):
            est.compile = True
        rows[-1].update(_throughput(est, plant, K, Q, R, int(args.sim_batch), args.sim_horizon, dev, dt))
        free(dev)
    md = _table(rows, args, dev, dt)
    print(md)
    atomic_write_text(out / "training.md", md + "\n")
    atomic_write_text(out / "training.json", json.dumps({"rows": rows, "args": vars(args), "device": _device_name(dev)},
                                                        indent=2, default=str) + "\n")


def _row(name, est, log, state, args, T, kf_mse) -> dict:
    steps = int(log.steps[-1]) if len(log.steps) else 0
    wall = float(log.wall[-1]) if len(log.wall) else math.nan
    hit = state["hit"]
    return dict(estimator=name, params=sum(p.numel() for p in est.parameters()), steps=steps, wall_s=wall,
                target_db=args.target_db, reached=hit is not None, steps_to_target=hit[0] if hit else None,
                seconds_to_target=hit[1] if hit else None, final_val_db=state["db"], kf_mse=kf_mse,
                samples_per_s=steps * args.batch / wall if wall > 0 else math.nan,
                traj_steps_per_s_train=steps * args.batch * T / wall if wall > 0 else math.nan)


def _throughput(est, plant, K, Q, R, batch, horizon, dev, dt) -> dict:
    """Closed-loop trajectory-steps/s of ``est`` and of the steady Kalman (LQG) loop, same settings."""
    res = {}
    prec = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on GPUs that have them (throughput only)
    try:
        return _throughput_runs(est, plant, K, Q, R, batch, horizon, dev, dt, res)
    finally:
        torch.set_float32_matmul_precision(prec)


def _throughput_runs(est, plant, K, Q, R, batch, horizon, dev, dt, res) -> dict:
    for label, e in (("learned", est), ("kalman", lqgt.KalmanFilter(plant))):
        b = batch
        while b >= 1000:
            try:
                lqgt.simulate(plant, K, {label: e}, Q=Q, R=R, horizon=min(horizon, 5), batch=b, device=dev, dtype=dt)
                sync(dev)
                t0 = time.perf_counter()
                lqgt.simulate(plant, K, {label: e}, Q=Q, R=R, horizon=horizon, batch=b, device=dev, dtype=dt)
                sync(dev)
                res[f"{label}_sim_batch"] = b
                res[f"{label}_traj_steps_per_s"] = b * horizon / (time.perf_counter() - t0)
                break
            except Exception as exc:  # noqa: BLE001
                if not is_oom(exc):
                    raise
                free(dev)
                b //= 2
    return res


def _device_name(dev) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


def _fmt(v, spec=".3g") -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return format(v, spec)


def _table(rows, args, dev, dt) -> str:
    lines = [f"# Training on two_mass ({_device_name(dev)}, {str(dt).replace('torch.', '')}, batch {args.batch}, "
             f"lr {args.lr}; target: within {args.target_db} dB of the Kalman filter on held-out trajectories)", "",
             "| estimator | params | reached | steps to target | s to target | final dB vs KF | train samples/s "
             "| train traj-steps/s | sim batch | closed loop traj-steps/s | Kalman loop traj-steps/s |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['estimator']} | {r['params']} | {'yes' if r['reached'] else 'no'} | "
                     f"{_fmt(r['steps_to_target'], 'd')} | {_fmt(r['seconds_to_target'], '.1f')} | "
                     f"{_fmt(r['final_val_db'], '+.3f')} | {_fmt(r['samples_per_s'])} | {_fmt(r['traj_steps_per_s_train'])} | "
                     f"{_fmt(r.get('learned_sim_batch'), '.0e')} | {_fmt(r.get('learned_traj_steps_per_s'))} | "
                     f"{_fmt(r.get('kalman_traj_steps_per_s'))} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
