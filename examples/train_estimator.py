"""Train a TransformerEstimator on the two-cart plant and score it against the Kalman filter.

1. simulates training data with :func:`lqgt.learn.rollouts` (the LQG loop of ``two_mass``),
2. trains a causal transformer over the tokens ``[y[t]; u[t-1]]`` with
   :func:`lqgt.learn.fit` (loss ``state_mse``; a resumable checkpoint in ``--out``),
3. scores it on held-out noise with :func:`lqgt.learn.evaluate`: state MSE in dB against
   the Kalman filter and closed-loop cost against the exact LQG optimum, at the training
   horizon and at 10x that horizon,
4. saves it, loads it back with :func:`lqgt.load_estimator`, and runs it in
   :func:`lqgt.simulate` beside the Kalman filter,
5. writes ``training_curve.png`` and ``table.md`` into ``--out``.

``python examples/train_estimator.py --quick`` takes about a minute on a CPU;
``--device cuda`` with the defaults trains the full-size model.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import lqgt
from lqgt._io import atomic_savefig, atomic_write_text
from lqgt.plot import training_curve


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="train-estimator/", help="output directory (default: train-estimator/)")
    ap.add_argument("--quick", action="store_true", help="small model and data: about a minute on a CPU")
    ap.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default: 3000, --quick: 800)")
    ap.add_argument("--seed", type=int, default=0, help="seed of data, initialisation and minibatches")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default: 1)")
    ap.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in --out")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    dev = torch.device(args.device)
    dtype = torch.float64 if dev.type == "cpu" else torch.float32
    horizon = 100 if quick else 200
    steps = args.steps if args.steps is not None else (800 if quick else 3000)

    plant, Q, R = lqgt.plants.two_mass()
    K = lqgt.lqg(plant, Q, R).K
    t0 = time.perf_counter()
    data = lqgt.learn.rollouts(plant, K, horizon=horizon, batch=1024 if quick else 8192, seed=args.seed,
                               device=dev, dtype=dtype)
    train, val = data.split(0.9)
    kf_mse = float((val.x - val.x_hat_kf).square().sum(-1).mean())
    print(f"data: {data} ({time.perf_counter() - t0:.1f} s); Kalman filter MSE on it: {kf_mse:.5g}")

    size = dict(window=16, layers=1, heads=2, width=16) if quick else dict(window=32, layers=2, heads=4, width=64)
    est = lqgt.TransformerEstimator(plant.n, plant.m, plant.p, **size, seed=args.seed)
    ckpt = out / "checkpoint.pt"
    if args.fresh and ckpt.exists():
        ckpt.unlink()
    log = lqgt.learn.fit(est, train, loss="state_mse", steps=steps, lr=3e-3 if quick else 1e-3,
                         batch=64 if quick else 256, device=dev, dtype=dtype, checkpoint=ckpt, seed=args.seed,
                         schedule="cosine", warmup=min(100, steps // 10), val=val, progress=True)
    print(f"trained {log.steps[-1]} steps in {log.wall[-1]:.1f} s ({log.samples_per_s:.0f} trajectories/s); "
          f"final loss {log.final_loss:.5g}")

    ax = training_curve(log, reference=kf_mse, reference_label="Kalman filter MSE",
                        title=f"TransformerEstimator on two_mass ({sum(p.numel() for p in est.parameters())} parameters)")
    atomic_savefig(ax.figure, out / "training_curve.png", dpi=120)

    sections = []
    for T in (horizon, 10 * horizon):
        ev = lqgt.learn.evaluate(est, plant, K, Q, R, horizon=T, batch=500 if quick else 5000,
                                 seed=10_000 + args.seed, device=dev, dtype=dtype)  # held-out noise
        text = f"horizon {T}:\n{ev.table()}"
        print(text)
        sections.append(text)

    est.save(out / "estimator.pt")
    est2 = lqgt.load_estimator(out / "estimator.pt", map_location=dev)
    res = lqgt.simulate(plant, K, {"kalman": lqgt.KalmanFilter(plant), "learned": est2}, Q=Q, R=R,
                        horizon=horizon, batch=200, seed=123, device=dev, dtype=dtype)
    line = "lqgt.simulate with the reloaded estimator: " + ", ".join(
        f"{k} {v:.5g} [{res.cost_ci[k][0]:.5g}, {res.cost_ci[k][1]:.5g}]" for k, v in res.cost.items())
    print(line)
    atomic_write_text(out / "table.md", "```\n" + "\n\n".join(sections) + "\n\n" + line + "\n```\n")
    print(f"wrote {out / 'training_curve.png'}, {out / 'table.md'}, {out / 'estimator.pt'}")


if __name__ == "__main__":
    main()
