"""Adaptive Filter Attention experiments: Gaussian gap, outlier robustness, closed loop, learning.

1. **Gaussian noise (the paper's 2-D systems).** ``dx = A x dt + dw`` with
   ``A = [[-0.1, -1], [1, -0.1]]`` (decay 0.1/s, 1 rad/s), sampled at ``dt = 0.1`` s
   (Van Loan), ``y = x + v``; process-noise spectral density ``σ² I`` and measurement noise
   ``η² I`` with ``(σ², η²) ∈ {(0, 1), (0.3, 0.5), (0.5, 2.0)}``. State MSE (dB) of each
   estimator, open loop (``u = 0``), steps ``burn_in … horizon``; the gap to the Kalman
   filter in dB with a 95% CI (paired over trajectories, delta method). For ``σ² = 0`` the
   Kalman filter is the time-varying one from ``P0`` (the steady gain would be 0).
2. **Outliers.** The same, plus ``two_mass``, with ``outliers=(0.05, 10)``: 5% of the
   measurements hit by 10x the noise standard deviation (``lqgt.simulate(..., outliers=)``,
   common random numbers for all estimators). Goal: robust AFA ≥ 3 dB better than the
   Kalman filter.
3. **Closed loop.** LQG cost ``u = -K x̂`` (LQR gain; 2-D systems: ``Q = I, R = 1``) with
   and without outliers; each estimator's cost and its difference to the Kalman loop with a
   95% CI over trajectories (common random numbers: paired).
4. **Learning.** An :class:`lqgt.estimators.afa.AFAEstimator` whose projections are fixed to
   the identity (only the isotropic layer's ``μ``, ``ω``, ``q``, ``r``, ``ν`` learn) is
   trained with :func:`lqgt.learn.fit` by next-token prediction (``loss="output_prediction"``)
   on noisy sequences of a 2-D rotating, decaying system (``μ = 0.5``/s, ``ω = 2`` rad/s,
   ``dt = 0.1``, ``η² = 0.1``, ``x0 ~ N(0, 4I)``; ``σ² = 0`` and ``σ² = 0.05``), from
   ``μ₀ = 2μ``, ``ω₀ = 0.7ω``. Goal: both within 5%.

Estimators: ``kalman`` (current form), ``kalman-pred`` (predictor form, the fair baseline of
the Transformer Filter), ``afa-tensor`` / ``afa-isotropic`` / ``afa-matrix`` (robust, ν = 4),
``afa-tensor-gauss`` (Gaussian weights), ``tf`` (Transformer Filter, β = 10, window 32,
predictor form). The AFA window is chosen per system from {4, 8, …, 128} (at most half the
validation horizon) by the Gaussian-noise MSE of ``afa-tensor`` on a separate seed (no outlier
information is used).

Usage::

    python benchmarks/afa_experiments.py --quick --out /tmp/afa_exp       # CPU, < 1 minute
    python benchmarks/afa_experiments.py --device cuda --out out/afa_exp  # H200, ~3 minutes

Writes ``afa_experiments.json`` and ``afa_experiments.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch

import lqgt
from lqgt.estimators.afa import AFAEstimator
from lqgt.learn.fit import fit

Z95 = 1.959963984540054
SYSTEMS_2D = ((0.0, 1.0), (0.3, 0.5), (0.5, 2.0))


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="AFA experiments (Gaussian gap, outliers, closed loop, learning)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="small CPU run (well under a minute)")
    ap.add_argument("--out", default="afa_experiments_out")
    ap.add_argument("--batch", type=int, default=None, help="trajectories per run (default 256 quick, 20000 cuda)")
    ap.add_argument("--horizon", type=int, default=None, help="steps per run (default 300 quick, 600 otherwise)")
    ap.add_argument("--burn-in", type=int, default=100)
    ap.add_argument("--nu", type=float, default=4.0)
    ap.add_argument("--outliers", type=float, nargs=2, default=(0.05, 10.0), metavar=("PROB", "SCALE"))
    ap.add_argument("--learn-steps", type=int, default=None, help="optimizer steps (default 150 quick, 400)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["mse", "closed", "learn"], help="parts to skip")
    ap.add_argument("--seed", type=int, default=1)
    return ap.parse_args(argv)


def system_2d(s2: float, e2: float, dt: float = 0.1) -> lqgt.plants.Example:
    """The paper-style 2-D rotating, decaying system with (process, measurement) noise (σ², η²)."""
    Ac = np.array([[-0.1, -1.0], [1.0, -0.1]])
    plant = lqgt.Plant.from_continuous(Ac, np.array([[0.0], [1.0]]), np.eye(2), Wc=s2 * np.eye(2), V=e2 * np.eye(2),
                                       dt=dt, P0=np.eye(2))
    return lqgt.plants.Example(plant, np.eye(2), np.eye(1))


def systems() -> dict[str, lqgt.plants.Example]:
    out = {f"2d(σ²={s2:g},η²={e2:g})": system_2d(s2, e2) for s2, e2 in SYSTEMS_2D}
    out["two_mass"] = lqgt.plants.two_mass()
    return out


def estimators(plant: lqgt.Plant, window: int, nu: float) -> dict:
    steady = bool(np.any(plant.W))  # σ² = 0: the time-varying filter (the steady gain is 0)
    return {
        "kalman": lqgt.KalmanFilter(plant, steady=steady),
        "kalman-pred": lqgt.KalmanFilter(plant, form="predictor", steady=steady),
        "afa-tensor": lqgt.AFAFilter(plant, window=window, nu=nu, form="tensor"),
        "afa-isotropic": lqgt.AFAFilter(plant, window=window, nu=nu, form="isotropic"),
        "afa-matrix": lqgt.AFAFilter(plant, window=window, nu=nu, form="matrix"),
        "afa-tensor-gauss": lqgt.AFAFilter(plant, window=window, form="tensor", robust=False),
        "tf": lqgt.TransformerFilter(plant, beta=10.0, window=32),
    }


def per_traj_mse(res, name: str, burn: int) -> torch.Tensor:
    e = (res.x_hat[name] - res.x[name])[:, burn:]
    return e.square().sum(-1).mean(1).double().cpu()


def db_gap(a: torch.Tensor, k: torch.Tensor) -> tuple[float, float, float]:
    """``10 log10(mean a / mean k)`` and its paired 95% CI (delta method)."""
    ma, mk = float(a.mean()), float(k.mean())
    d = 10 * math.log10(ma / mk)
    z = a / ma - k / mk
    half = Z95 * (10 / math.log(10)) * float(z.std()) / math.sqrt(len(a))
    return d, d - half, d + half


def choose_window(ex, args, dev, dt) -> tuple[int, dict]:
    plant = ex.plant
    cands = [H for H in (4, 8, 16, 32, 64, 128) if H <= args.val_horizon // 2]
    ests = {f"H{H}": lqgt.AFAFilter(plant, window=H, nu=args.nu, form="tensor") for H in cands}
    res = lqgt.simulate(plant, np.zeros((plant.m, plant.n)), ests, Q=ex.Q, R=ex.R, horizon=args.val_horizon,
                        batch=args.val_batch, seed=args.seed + 1000, device=dev, dtype=dt)
    mse = {H: float(per_traj_mse(res, f"H{H}", args.burn_in).mean()) for H in cands}
    return min(mse, key=mse.get), mse


def run_mse(args, dev, dt) -> list[dict]:
    rows = []
    for sname, ex in systems().items():
        plant = ex.plant
        H, _ = choose_window(ex, args, dev, dt)
        ests = estimators(plant, H, args.nu)
        K0 = np.zeros((plant.m, plant.n))
        for cond, out in (("gaussian", None), ("outliers", tuple(args.outliers))):
            t0 = time.perf_counter()
            res = lqgt.simulate(plant, K0, ests, Q=ex.Q, R=ex.R, horizon=args.horizon, batch=args.batch,
                                seed=args.seed, device=dev, dtype=dt, outliers=out)
            k = per_traj_mse(res, "kalman", args.burn_in)
            for name in ests:
                a = per_traj_mse(res, name, args.burn_in)
                d, lo, hi = db_gap(a, k)
                rows.append(dict(system=sname, noise=cond, estimator=name, window=H if name.startswith("afa") else None,
                                 mse_db=10 * math.log10(float(a.mean())), vs_kalman_db=d, ci_lo=lo, ci_hi=hi))
            print(f"{sname:<22} {cond:<9} H={H:<3} " + "  ".join(
                f"{r['estimator']}:{r['mse_db']:+.2f}" for r in rows[-len(ests):]) + f"  ({time.perf_counter() - t0:.1f}s)")
    return rows


def run_closed(args, dev, dt, windows: dict) -> list[dict]:
    rows = []
    for sname, ex in systems().items():
        plant = ex.plant
        K, _, _ = lqgt.dlqr(plant.A, plant.B, ex.Q, ex.R)
        ests = estimators(plant, windows.get(sname, 16), args.nu)
        for cond, out in (("gaussian", None), ("outliers", tuple(args.outliers))):
            res = lqgt.simulate(plant, K, ests, Q=ex.Q, R=ex.R, horizon=args.horizon, batch=args.batch, seed=args.seed,
                                device=dev, dtype=dt, outliers=out, burn_in=args.burn_in, store=False)
            ck = res.cost_per_trajectory["kalman"].double().cpu()
            for name in ests:
                c = res.cost_per_trajectory[name].double().cpu()
                diff = c - ck
                half = Z95 * float(diff.std()) / math.sqrt(len(diff))
                rows.append(dict(system=sname, noise=cond, estimator=name, cost=res.cost[name],
                                 cost_ci=list(res.cost_ci[name]), diff_vs_kalman=float(diff.mean()),
                                 diff_ci=[float(diff.mean()) - half, float(diff.mean()) + half]))
            print(f"{sname:<22} {cond:<9} closed loop: " + "  ".join(
                f"{r['estimator']}:{r['cost']:.4g}" for r in rows[-len(ests):]))
    return rows


def run_learning(args, dev) -> list[dict]:
    rows = []
    mu, om, e2, dt = 0.5, 2.0, 0.1, 0.1
    configs = (0.05,) if args.quick else (0.0, 0.05)
    for s2 in configs:
        Ac = np.array([[-mu, -om], [om, -mu]])
        plant = lqgt.Plant.from_continuous(Ac, np.array([[0.0], [1.0]]), np.eye(2), Wc=s2 * np.eye(2),
                                           V=e2 * np.eye(2), dt=dt, P0=4.0 * np.eye(2))
        data = lqgt.learn.rollouts(plant, None, horizon=64, batch=1024, seed=args.seed, kalman=False, device=dev)
        est = AFAEstimator(2, 1, 2, form="predictor", d_model=2, heads=1, window=64, dt=dt, mu=2 * mu,
                           q=max(s2, 0.01), r=e2, omega=0.7 * om, learn_projections=False, robust=True)
        t0 = time.perf_counter()
        log = fit(est, data, loss="output_prediction", steps=args.learn_steps, lr=0.05, batch=256, progress=False,
                  schedule="cosine", device=dev, dtype=torch.float64)
        mu_hat, om_hat = float(est.layer.mu.detach()), float(est.layer.omega.detach().reshape(-1)[0])
        row = dict(sigma2=s2, eta2=e2, mu_true=mu, omega_true=om, mu_learned=mu_hat, omega_learned=om_hat,
                   mu_err_pct=100 * abs(mu_hat - mu) / mu, omega_err_pct=100 * abs(om_hat - om) / om,
                   q=float(est.layer.q.detach()), r=float(est.layer.r.detach()), nu=float(est.layer.nu.detach()),
                   final_loss=log.final_loss,
                   steps=args.learn_steps, seconds=time.perf_counter() - t0)
        rows.append(row)
        print(f"learning σ²={s2:g}: μ {mu_hat:.4f} (true {mu}, {row['mu_err_pct']:.1f}%)  ω {om_hat:.4f} "
              f"(true {om}, {row['omega_err_pct']:.2f}%)  [{row['seconds']:.1f}s]")
    return rows


def markdown(mse, closed, learn, meta) -> str:
    o = [f"# AFA experiments ({meta['device']}, batch {meta['batch']}, horizon {meta['horizon']}, "
         f"outliers {meta['outliers'][0]:g} at {meta['outliers'][1]:g}x)", ""]
    if mse:
        o += ["## State MSE (dB) and gap to the Kalman filter (dB, 95% CI, paired)", "",
              "| system | noise | estimator | window | MSE dB | vs KF dB | CI |", "|---|---|---|---:|---:|---:|---|"]
        for r in mse:
            o.append(f"| {r['system']} | {r['noise']} | {r['estimator']} | {r['window'] or ''} | {r['mse_db']:+.2f} | "
                     f"{r['vs_kalman_db']:+.2f} | [{r['ci_lo']:+.2f}, {r['ci_hi']:+.2f}] |")
        o.append("")
    if closed:
        o += ["## Closed-loop LQG cost (95% CI) and difference to the Kalman loop (paired CI)", "",
              "| system | noise | estimator | cost | CI | − KF | CI |", "|---|---|---|---:|---|---:|---|"]
        for r in closed:
            o.append(f"| {r['system']} | {r['noise']} | {r['estimator']} | {r['cost']:.4g} | [{r['cost_ci'][0]:.4g}, "
                     f"{r['cost_ci'][1]:.4g}] | {r['diff_vs_kalman']:+.4g} | [{r['diff_ci'][0]:+.3g}, {r['diff_ci'][1]:+.3g}] |")
        o.append("")
    if learn:
        o += ["## Learning the dynamics by next-token prediction (isotropic layer, identity projections)", "",
              "| σ² | η² | μ true | μ learned | err % | ω true | ω learned | err % | steps | s |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in learn:
            o.append(f"| {r['sigma2']:g} | {r['eta2']:g} | {r['mu_true']:g} | {r['mu_learned']:.4f} | {r['mu_err_pct']:.2f} | "
                     f"{r['omega_true']:g} | {r['omega_learned']:.4f} | {r['omega_err_pct']:.2f} | {r['steps']} | {r['seconds']:.1f} |")
    return "\n".join(o) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cpu":
        torch.set_num_threads(1)
    cuda = dev.type == "cuda"
    args.batch = args.batch or (20000 if cuda else (128 if args.quick else 1024))
    args.horizon = args.horizon or (300 if args.quick else 600)
    args.learn_steps = args.learn_steps or (120 if args.quick else 400)
    args.val_batch, args.val_horizon = (64, 200) if args.quick else (512, 400)
    dt = torch.float64
    t0 = time.perf_counter()
    mse = run_mse(args, dev, dt) if "mse" not in args.skip else []
    windows = {r["system"]: r["window"] for r in mse if r["window"]}
    closed = run_closed(args, dev, dt, windows) if "closed" not in args.skip else []
    learn = run_learning(args, dev) if "learn" not in args.skip else []
    meta = dict(device=str(dev), batch=args.batch, horizon=args.horizon, burn_in=args.burn_in, nu=args.nu,
                outliers=list(args.outliers), seed=args.seed, quick=args.quick, torch=torch.__version__,
                wall_s=time.perf_counter() - t0)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "afa_experiments.json"), "w") as f:
        json.dump(dict(meta=meta, mse=mse, closed_loop=closed, learning=learn), f, indent=1)
    md = markdown(mse, closed, learn, meta)
    with open(os.path.join(args.out, "afa_experiments.md"), "w") as f:
        f.write(md)
    print(md)
    print(f"wrote {args.out}/afa_experiments.json and .md ({meta['wall_s']:.1f} s)")


if __name__ == "__main__":
    main()
