"""The Transformer Filter controller against LQG: β-sweep, certificate, attention weights.

For the demo plant (``two_mass``: two carts on springs, n=4, p=2) and a damped
oscillator of the kind Goel & Bartlett use (n=2, p=1), this script

1. runs :func:`lqgt.beta_sweep`: the closed loop ``u = -K x̃`` with the Transformer Filter
   (window H=32) at 11 temperatures β = 10^0 … 10^5, and the LQG loop (Kalman predictor),
   all on the same noise, and prints the cost gap with its 95% interval, the measured
   ``sup_t ‖x̃ - x̂‖`` and the certified bound ``ε(β)``;
2. writes ``beta_sweep_<plant>.png`` (cost gap vs β) and ``certificate_<plant>.png``
   (measured error and bound vs β);
3. simulates one closed-loop trajectory with β=30, re-runs the filter on its
   measurements with :meth:`lqgt.TransformerFilter.run` (checking it reproduces the
   estimates of the simulation) and writes the attention weights of the first 100 steps,
   ``attention_<plant>.png``.

Run ``python examples/transformer_filter.py --out tf-example/``; about 10–20 s on two CPU
cores with the defaults.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import lqgt
from lqgt.plot import attention_heatmap, beta_sweep_gap, certificate, gap_classes

#: name -> (description, whether the plant's sample time is physical, so plots use seconds)
PLANTS = {
    "two_mass": ("two carts on springs (n=4, p=2, Δt=0.1 s)", True),
    "oscillator": ("damped oscillator (n=2, p=1, discrete time)", False),
}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="tf-example/", help="output directory for the PNGs (default: tf-example/)")
    ap.add_argument("--batch", type=int, default=500, help="Monte Carlo trajectories per β (default: 500)")
    ap.add_argument("--horizon", type=int, default=500, help="steps per trajectory (default: 500)")
    ap.add_argument("--burn-in", type=int, default=100, help="steps left out of the cost average (default: 100)")
    ap.add_argument("--window", type=int, default=32, help="attention window H (default: 32)")
    ap.add_argument("--beta-attention", type=float, default=30.0, help="β of the attention heat map (default: 30)")
    ap.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads for torch (default: 1; the loop is many small operations, for which "
                         "more threads only add synchronisation, badly so on a busy machine)")
    ap.add_argument("--plants", nargs="+", default=list(PLANTS), choices=list(PLANTS), help="plants to run")
    ap.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    return ap.parse_args(argv)


def table(sweep: lqgt.BetaSweep) -> str:
    """The β-sweep as a text table."""
    cls = gap_classes(sweep.gap_ci)
    lines = [f"{'beta':>9}  {'J_TF':>8}  {'gap J_TF-J_LQG':>23}  {'':>3}  {'err max':>9}  {'err mean':>9}  "
             f"{'bound':>9}  {'bound/max':>9}"]
    for i, b in enumerate(sweep.betas):
        half = 0.5 * (sweep.gap_ci[i, 1] - sweep.gap_ci[i, 0])
        flag = {"positive": "", "unresolved": "n.s", "negative": "<0"}[cls[i]]
        ratio = sweep.bound[i] / sweep.error_max[i] if sweep.error_max[i] > 0 else float("inf")
        lines.append(f"{b:9.3g}  {sweep.cost[i]:8.4f}  {sweep.gap[i]:+11.3e} ± {half:9.2e}  {flag:>3}  "
                     f"{sweep.error_max[i]:9.2e}  {sweep.error_mean[i]:9.2e}  {sweep.bound[i]:9.2e}  {ratio:9.2e}")
    lines.append(f"J_LQG: Monte Carlo {sweep.cost_lqg:.4f}, exact {sweep.cost_lqg_exact:.4f}.  "
                 "n.s: the 95% interval contains 0; <0: significantly negative (Monte Carlo error, LQG is optimal)")
    return "\n".join(lines)


def attention_figure(plant, Q, R, name: str, args, out: Path) -> Path:
    """Simulate one closed-loop trajectory, re-run the filter on it, draw α[t, i] of the first 100 steps."""
    design = lqgt.lqg(plant, Q, R)
    tf = lqgt.TransformerFilter(plant, beta=args.beta_attention, window=args.window, K=design.K)
    steps = 100
    res = lqgt.simulate(plant, design.K, {"tf": tf}, Q=Q, R=R, horizon=steps, batch=1, seed=args.seed + 1,
                        device=args.device)
    x_hat, w = tf.run(res.y["tf"][0].cpu())
    # closed-loop mode: run() reproduces the estimates the simulated loop used
    err = float((x_hat[:-1] - res.x_hat["tf"][0].cpu()).abs().max())
    assert err < 1e-10, f"TransformerFilter.run does not reproduce the simulation's estimates (max diff {err:.2e})"
    ax = attention_heatmap(w, t=res.t if PLANTS[name][1] else None, window=args.window, steps=slice(0, steps),
                           title=f"{name}: attention weights α[t, i], β = {args.beta_attention:g}, H = {args.window}")
    path = out / f"attention_{name}.png"
    ax.figure.savefig(path, dpi=130)
    lag = np.arange(w.shape[0])[:, None] - np.arange(w.shape[0])[None, :]
    wn = w.numpy()
    print(f"attention (β={args.beta_attention:g}): mean self-weight α[t,t] = {np.diag(wn)[args.window:].mean():.3f}, "
          f"mean weight at lag 1 = {wn[lag == 1].mean():.3f}, mean lag = "
          f"{(wn * lag).sum(1)[args.window:].mean():.2f} steps")
    return path


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    betas = np.logspace(0, 5, 11)
    t_start = time.perf_counter()
    for name in args.plants:
        plant, Q, R = getattr(lqgt.plants, name)()
        t0 = time.perf_counter()
        sweep = lqgt.beta_sweep(plant, Q, R, betas, window=args.window, batch=args.batch, horizon=args.horizon,
                                burn_in=args.burn_in, seed=args.seed, device=args.device)
        print(f"\n== {name}: {PLANTS[name][0]}; H={args.window}, {args.batch} runs x {args.horizon} steps "
              f"(burn-in {args.burn_in}), {time.perf_counter() - t0:.1f} s")
        print(table(sweep))
        if np.any(sweep.error_max > sweep.bound):
            print("WARNING: the measured error exceeds the certified bound at some β")
        paths = []
        ax = beta_sweep_gap(sweep, title=f"{name}: TF controller vs LQG (H={args.window}, {args.batch} runs)")
        paths.append(out / f"beta_sweep_{name}.png")
        ax.figure.savefig(paths[-1], dpi=130)
        ax = certificate(sweep, title=f"{name}: certified bound vs measured error (H={args.window})")
        paths.append(out / f"certificate_{name}.png")
        ax.figure.savefig(paths[-1], dpi=130)
        paths.append(attention_figure(plant, Q, R, name, args, out))
        print("wrote " + ", ".join(str(p) for p in paths))
    print(f"\ntotal {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
