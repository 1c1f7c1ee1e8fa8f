"""Nonlinear plants: EKF, UKF, the Koopman-lifted filter and Koopman LQG against the linearisation.

1. **Van der Pol estimation** (``lqgt.nonlinear_plants.van_der_pol``: limit cycle of
   amplitude 2, position measured). On the same noise, the RMSE of the EKF, the UKF,
   Koopman filters (EDMDc on polynomial and RBF dictionaries, fitted on simulated data)
   and the Kalman filter of the linearisation at the origin, with 95% intervals.
2. **Pendulum stabilisation** (``lqgt.nonlinear_plants.pendulum``, upright at θ = 0) from
   disturbed starts θ0 = 0.2 … 1.4 rad: the closed-loop cost of LQG on the linearisation
   (LQR + Kalman filter of the linear model) against Koopman LQG (lifted LQR + Koopman
   filter) with a rich (degree 3) and a coarse (degree 1: x and a constant) dictionary,
   and the mixed pairs (each controller with the EKF) that separate estimation from
   control. Costs are paired (common random numbers), so the gap has a tight interval.
3. Plots: ``vdp_estimation_error.png`` (RMS error over time), ``vdp_phase_portrait.png``
   (one trajectory and its estimates), ``pendulum_closed_loop.png`` (angle from the
   largest start and cost against θ0).

The closed loops run through :func:`lqgt.simulate` (generic step loop for a
:class:`~lqgt.nonlinear.NonlinearPlant`). Run ``python examples/nonlinear_koopman.py --out nl-example/``;
about 10 s on two CPU cores.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

import lqgt
from lqgt._linalg import psd_sqrt
from lqgt.errors import LqgtError
from lqgt.estimators.ekf import ExtendedKalmanFilter
from lqgt.estimators.ukf import UnscentedKalmanFilter
from lqgt.koopman import RBF, Koopman, KoopmanFilter, KoopmanLQR, Polynomial
from lqgt.nonlinear_plants import pendulum, van_der_pol

Z95 = 1.959963984540054


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="nl-example/", help="output directory for the PNGs (default: nl-example/)")
    ap.add_argument("--batch", type=int, default=200, help="Monte Carlo trajectories (default: 200)")
    ap.add_argument("--horizon", type=int, default=200, help="steps per trajectory (default: 200)")
    ap.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    return ap.parse_args(argv)


# -- closed loop ----------------------------------------------------------------------------------
def run(plant, policy, estimators: dict, Q, R, *, batch, horizon, seed) -> dict:
    """``{name: (cost per trajectory (B,), x (B, T, n), x_hat (B, T, n))}`` on common random numbers."""
    res = lqgt.simulate(plant, policy, estimators, Q=Q, R=R, horizon=horizon, batch=batch, seed=seed)
    return {k: (res.cost_per_trajectory[k], res.x[k], res.x_hat[k]) for k in estimators}


def mean_ci(v: torch.Tensor) -> tuple[float, float]:
    """Mean and 95% half-width over trajectories."""
    v = v.double()
    return float(v.mean()), Z95 * float(v.std()) / math.sqrt(v.numel())


# -- 1. Van der Pol estimation -------------------------------------------------------------------
def vdp_estimation(args, out: Path):
    plant, Q, R = van_der_pol()
    rng = np.random.default_rng(1)
    x0 = rng.uniform(-3.0, 3.0, size=(300, 2))
    fit = {"x0": x0, "horizon": 60, "u_std": 0.5, "seed": 11}
    t0 = time.perf_counter()
    k3 = Koopman.from_plant_data(plant, Polynomial(2, 3), **fit)
    k5 = Koopman.from_plant_data(plant, Polynomial(2, 5), **fit)
    krbf = Koopman.from_plant_data(plant, RBF(rng.uniform(-3, 3, size=(40, 2)), width=1.0, constant=True), **fit)
    t_fit = time.perf_counter() - t0
    ests = {
        "EKF": ExtendedKalmanFilter(plant),
        "UKF": UnscentedKalmanFilter(plant),
        "Koopman poly-3 (N=10)": KoopmanFilter(k3),
        "Koopman poly-5 (N=21)": KoopmanFilter(k5),
        "Koopman RBF-40 (N=43)": KoopmanFilter(krbf),
        "KF of linearisation": lqgt.KalmanFilter(plant.linearize(), steady=False),
    }
    t0 = time.perf_counter()
    res = run(plant, lambda xh: xh[:, :1] * 0.0, ests, Q, R, batch=args.batch, horizon=args.horizon, seed=args.seed)
    t_run = time.perf_counter() - t0
    print(f"\n## Van der Pol estimation (mu=1, dt={plant.dt} s, {args.batch} trajectories x {args.horizon} steps, "
          f"same noise; Koopman fits {t_fit:.1f} s, filters {t_run:.1f} s)\n")
    print("| estimator | RMSE ‖x − x̂‖ | 95% CI | RMSE after 2 s |")
    print("|---|---|---|---|")
    rows = {}
    skip = round(2.0 / plant.dt)
    for name, (_, x, xh) in res.items():
        e2 = ((x - xh) ** 2).sum(-1)
        m, h = mean_ci(e2.mean(1).sqrt())
        m2, h2 = mean_ci(e2[:, skip:].mean(1).sqrt())
        rows[name] = (m, h)
        print(f"| {name} | {m:.4f} | ±{h:.4f} | {m2:.4f} ± {h2:.4f} |")
    # plots
    t = np.arange(args.horizon) * plant.dt
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    look = {"EKF": {"lw": 3.0, "alpha": 0.6}, "UKF": {"lw": 1.2, "ls": "--", "color": "k"}}
    for name, (_, x, xh) in res.items():
        ax.plot(t, ((x - xh) ** 2).sum(-1).mean(0).sqrt().numpy(), label=name, **look.get(name, {"lw": 1.4}))
    ax.set_yscale("log")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("RMS estimation error over trajectories")
    ax.set_title("Van der Pol: estimation error (same noise for all; EKF and UKF overlap)")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(out / "vdp_estimation_error.png", dpi=130)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.2, 5.6))
    x = res["EKF"][1][0].numpy()
    ax.plot(x[:, 0], x[:, 1], "k-", lw=2.2, label="true state", zorder=5)
    styles = {"EKF": ("C0", "-"), "UKF": ("C1", "--"), "Koopman RBF-40 (N=43)": ("C2", "-"),
              "Koopman poly-3 (N=10)": ("C4", ":"), "KF of linearisation": ("C3", "-")}
    for name, (col, ls) in styles.items():
        xh = res[name][2][0].numpy()
        ax.plot(xh[:, 0], xh[:, 1], color=col, ls=ls, lw=1.1, label=name, alpha=0.9)
    ax.plot(*x[0], "ko", ms=6)
    ax.set_xlabel("position x")
    ax.set_ylabel("velocity x'")
    ax.set_title("Van der Pol: one trajectory and its estimates (start ●)")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "vdp_phase_portrait.png", dpi=130)
    plt.close(fig)
    return rows


# -- 2. Pendulum stabilisation ---------------------------------------------------------------------
def pendulum_control(args, out: Path):
    plant, Q, R = pendulum()
    lin = plant.linearize()
    K, _, _ = lqgt.dlqr(lin.A, lin.B, Q, R)
    Kt = torch.tensor(K)

    def lqr_lin(xh):
        return -xh @ Kt.T

    rng = np.random.default_rng(2)
    x0 = rng.uniform([-1.6, -3.0], [1.6, 3.0], size=(400, 2))
    t0 = time.perf_counter()
    models = {deg: Koopman.from_plant_data(plant, Polynomial(2, deg), x0=x0, horizon=40, u_std=1.0,
                                           policy=lqr_lin, seed=12) for deg in (1, 3)}
    ctl = {deg: KoopmanLQR(models[deg], Q, R) for deg in models}
    t_fit = time.perf_counter() - t0
    thetas = (0.2, 0.6, 1.0, 1.4)
    pairs = {
        "LQG on linearisation (LQR + KF)": lambda p: (lqr_lin, lqgt.KalmanFilter(p.linearize(), steady=False)),
        "LQR + EKF": lambda p: (lqr_lin, ExtendedKalmanFilter(p)),
        "Koopman LQG poly-3 (N=10)": lambda p: (ctl[3], KoopmanFilter(models[3], m0=p.m0, P0=p.P0)),
        "Koopman LQR poly-3 + EKF": lambda p: (ctl[3], ExtendedKalmanFilter(p)),
        "Koopman LQG poly-1 (N=3)": lambda p: (ctl[1], KoopmanFilter(models[1], m0=p.m0, P0=p.P0)),
    }
    ref = "LQG on linearisation (LQR + KF)"
    costs, traj = {}, {}
    t0 = time.perf_counter()
    for th in thetas:
        p = plant.with_initial(m0=[th, 0.0])
        for name, make in pairs.items():
            pol, est = make(p)
            c, x, _ = run(p, pol, {name: est}, Q, R, batch=args.batch, horizon=args.horizon, seed=args.seed)[name]
            costs[(th, name)] = c
            if th == thetas[-1]:
                traj[name] = x
    t_run = time.perf_counter() - t0
    print(f"\n## Pendulum stabilisation about the upright (dt={plant.dt} s, {args.batch} trajectories x "
          f"{args.horizon} steps, x0 ~ N([θ0, 0], 0.01 I); fits {t_fit:.1f} s, loops {t_run:.1f} s)\n")
    print("Average cost per step x'Qx + u'Ru, 95% CI; Δ = paired difference to LQG on the linearisation "
          "(negative: better).\n")
    print("| θ0 (rad) | controller + estimator | cost | Δ vs linear LQG |")
    print("|---|---|---|---|")
    for th in thetas:
        for name in pairs:
            m, h = mean_ci(costs[(th, name)])
            if name == ref:
                d = "—"
            else:
                dm, dh = mean_ci(costs[(th, name)] - costs[(th, ref)])
                d = f"{dm:+.4f} ± {dh:.4f}"
            print(f"| {th} | {name} | {m:.4f} ± {h:.4f} | {d} |")
    print(f"\nKoopman LQR closed-loop lifted spectral radius: poly-3 {np.max(np.abs(ctl[3].eigenvalues)):.4f}, "
          f"poly-1 {np.max(np.abs(ctl[1].eigenvalues)):.4f}; fixed-point residuals "
          f"{ctl[3].equilibrium_residual:.2e}, {ctl[1].equilibrium_residual:.2e}")

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    t = np.arange(args.horizon) * plant.dt
    # one colour per method in both panels (the reference is drawn in the left panel only)
    colour = {name: f"C{i}" for i, name in enumerate(pairs)}
    for name in (ref, "Koopman LQG poly-3 (N=10)", "Koopman LQG poly-1 (N=3)"):
        col = colour[name]
        th = traj[name][:, :, 0]
        mu, sd = th.mean(0).numpy(), th.std(0).numpy()
        a1.plot(t, mu, color=col, label=name)
        a1.fill_between(t, mu - sd, mu + sd, color=col, alpha=0.15)
    a1.axhline(0, color="k", lw=0.6)
    a1.set_xlim(0, 4)
    a1.set_xlabel("time (s)")
    a1.set_ylabel("angle from upright θ (rad)")
    a1.set_title(f"Pendulum from θ0 = {thetas[-1]} rad: mean ± 1 sd")
    a1.legend(fontsize=8)
    a1.grid(alpha=0.3)
    for i, name in enumerate(pairs):
        ms = [mean_ci(costs[(th, name)] - costs[(th, ref)]) for th in thetas]
        a2.errorbar(np.array(thetas) + 0.012 * (i - 2), [m for m, _ in ms], yerr=[h for _, h in ms], marker="o",
                    capsize=3, label=name, lw=1.2, color=colour[name])
    a2.axhline(0, color="k", lw=0.6)
    a2.set_xlabel("initial angle θ0 (rad)")
    a2.set_ylabel("cost − cost of linear LQG (paired, 95% CI)")
    a2.set_title("Closed-loop cost relative to LQG on the linearisation")
    a2.legend(fontsize=7)
    a2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "pendulum_closed_loop.png", dpi=130)
    plt.close(fig)
    return costs


def main(argv=None) -> list[Path]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    vdp_estimation(args, out)
    pendulum_control(args, out)
    paths = [out / "vdp_estimation_error.png", out / "vdp_phase_portrait.png", out / "pendulum_closed_loop.png"]
    print(f"\nwrote {', '.join(str(p) for p in paths)} in {time.perf_counter() - t0:.1f} s")
    return paths


if __name__ == "__main__":
    main()
