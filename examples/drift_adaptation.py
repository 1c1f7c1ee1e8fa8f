"""Adaptation after a plant change: Kalman training vs the Bayesian head vs Adam with replay (SPEC §7).

A learned policy (a small MLP on a window of past measurements and inputs, so it is its own
estimator: a decision-transformer-like imitator, the Kalman Bayesian Transformer's setting) is
pretrained by imitating the LQG controller of the nominal pendulum (upright, torque input, angle
measured). Then the pendulum changes: mass +50 %, length −30 %. Samples after the change are
(window, action of the post-change oracle) pairs streamed one at a time from oracle episodes on the
changed plant (oracle = LQR + Kalman filter designed on the changed plant's linearisation). The
body of the network is frozen; its head (Linear → ReLU → Linear) is adapted by

- ``KalmanOptimizer`` with each covariance form (full, diagonal, lowrank, kronecker), one sample in memory;
- ``BayesianHead`` (moment propagation + RTS step), one sample in memory;
- Adam warm-started from the pretrained head, replay memory 1, 10, 100 (one step per sample).

After k samples each adapted policy closes the loop on the changed nonlinear pendulum for many
episodes; we report the stabilisation success rate (|θ| < 0.2 rad over the final 100 steps) and the
closed-loop cost relative to the oracle on the same noise. A learned estimator is adapted the same
way: an MLP one-step measurement predictor (window and current input → next measurement, trained
on output prediction, no state labels; a stand-in for ``lqgt.TransformerEstimator``), scored by its
prediction MSE on held-out changed-plant data relative to the oracle Kalman predictor's.

```text
python examples/drift_adaptation.py --quick --out /tmp/drift          # CPU, < 1 min
python examples/drift_adaptation.py --device cuda --out results/drift   # full run
```

Writes ``results.json``, ``table.md`` and ``drift_adaptation.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import lqgt
from lqgt.learn import BayesianHead, KalmanOptimizer
from lqgt.nonlinear_plants import pendulum

H_Y, H_U = 6, 5                          # window: last 6 measurements, last 5 inputs
Q = np.diag([1.0, 0.1])
RU = np.array([[0.1]])


def design(plant):
    lin = plant.linearize()
    d = lqgt.lqg(lin, Q, RU)
    return lin, d


class Policy(nn.Module):
    """window (B, H_Y + H_U) → body (frozen after pretraining) → head Linear → ReLU → Linear → u."""

    def __init__(self, width: int = 32, hidden: int = 16, n_in: int = H_Y + H_U):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_in, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh())
        self.head = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, w):
        return self.head(self.body(w))


def rollout(plant, lin, d, T, B, gen, dev, dt, *, policy=None, explore=0.0):
    """Closed loop on the nonlinear ``plant``; controller = oracle LQG (``d`` on ``lin``) or ``policy``.

    Returns windows (B, T, H), oracle actions (B, T), theta (B, T), cost per episode (B,), and the
    oracle Kalman filter's one-step output predictions ``C x̂[t+1|t]`` (B, T).
    """
    n = 2
    A, Bm, C = (torch.tensor(M, dtype=dt, device=dev) for M in (lin.A, lin.B, lin.C))
    K, Lf = torch.tensor(d.K, dtype=dt, device=dev), torch.tensor(d.Lf, dtype=dt, device=dev)
    Wc = torch.linalg.cholesky(torch.tensor(plant.W, dtype=dt, device=dev) + 1e-12 * torch.eye(n, dtype=dt, device=dev))
    sv = math.sqrt(float(plant.V[0, 0]))
    x = torch.randn(B, n, generator=gen, dtype=dt, device="cpu").to(dev) * 0.1
    xp = torch.zeros(B, n, dtype=dt, device=dev)                   # KF prior mean
    ys = torch.zeros(B, H_Y, dtype=dt, device=dev)
    us = torch.zeros(B, H_U, dtype=dt, device=dev)
    Qt, Rt = torch.tensor(Q, dtype=dt, device=dev), float(RU[0, 0])
    win, act, th, cost, ypred = [], [], [], torch.zeros(B, dtype=dt, device=dev), []
    noise = torch.randn(T, B, n + 2, generator=gen, dtype=dt).to(dev)
    for t in range(T):
        y = x[:, :1] + sv * noise[t, :, n:n + 1]
        ys = torch.cat([ys[:, 1:], y], 1)
        xf = xp + (y - xp @ C.T) @ Lf.T                              # KF current estimate
        u_or = -(xf @ K.T)
        w = torch.cat([ys, us], 1)
        if policy is None:
            u = u_or + explore * noise[t, :, n + 1:n + 2]
        else:
            with torch.no_grad():
                u = policy(w)
        win.append(w)
        act.append(u_or[:, 0])
        th.append(x[:, 0])
        cost = cost + ((x @ Qt) * x).sum(1) + Rt * (u[:, 0] ** 2)
        us = torch.cat([us[:, 1:], u], 1)
        xp = xf @ A.T + u @ Bm.T
        ypred.append((xp @ C.T)[:, 0])
        x = plant.f(x, u) + noise[t, :, :n] @ Wc.T
        x = torch.nan_to_num(x, nan=1e3).clamp(-1e3, 1e3)
    return torch.stack(win, 1), torch.stack(act, 1), torch.stack(th, 1), cost / T, torch.stack(ypred, 1)


def predictor_data(W, ypred):
    """One-step measurement prediction pairs from windows: input (window_t, u_t), target y[t+1]."""
    inp = torch.cat([W[:, :-1], W[:, 1:, -1:]], -1)                # u_t is the newest input of window t+1
    return inp.reshape(-1, inp.shape[-1]), W[:, 1:, H_Y - 1].reshape(-1), ypred[:, :-1].reshape(-1)


def evaluate(plant, lin, d, policy, T, B, seed, dev, dt):
    g = torch.Generator().manual_seed(seed)
    _, _, th, c, _ = rollout(plant, lin, d, T, B, g, dev, dt, policy=policy)
    g = torch.Generator().manual_seed(seed)
    _, _, _, c_or, _ = rollout(plant, lin, d, T, B, g, dev, dt)          # oracle on the same noise
    success = float((th[:, -100:].abs() < 0.2).all(1).double().mean())
    return success, float(c.mean() / c_or.mean())


def pretrain(plant, lin, d, args, dev, dt, *, predictor=False):
    g = torch.Generator().manual_seed(0)
    W, U, _, _, yp = rollout(plant, lin, d, 200, args.pre_episodes, g, dev, dt, explore=0.5)
    if predictor:
        W, U, _ = predictor_data(W, yp)
        U = U[:, None]
    else:
        W, U = W.reshape(-1, W.shape[-1]), U.reshape(-1, 1)
    torch.manual_seed(0)
    pol = Policy(n_in=W.shape[-1]).to(device=dev, dtype=dt)
    opt = torch.optim.Adam(pol.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    for it in range(args.pre_steps):
        idx = torch.randint(0, W.shape[0], (256,), generator=gen).to(dev)
        loss = ((pol(W[idx]) - U[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it == int(0.7 * args.pre_steps):
            for pg in opt.param_groups:
                pg["lr"] = 1e-3
    for p in pol.body.parameters():
        p.requires_grad_(False)
    return pol, loss.item()


class HeadPolicy(nn.Module):
    """Frozen body + the Bayesian head's mean."""

    def __init__(self, body, bhead):
        super().__init__()
        self.body, self.bhead = body, bhead

    def forward(self, w):
        return self.bhead(self.body(w))[0]


def adapt_run(method, base, stream_w, stream_u, checkpoints, plant, lin, d, args, seed, dev, dt, *, scorer=None):
    pol = copy.deepcopy(base)
    feats = pol.body(stream_w).detach()
    out = []
    kind = method.split(":")[1] if method.startswith("kalman") else None
    if kind:
        opt = KalmanOptimizer(pol.head, kind, rank=10, obs_noise=args.obs_noise, process_noise=1e-6,
                              prior_var=args.prior_var)
        ev_pol = pol
    elif method == "bayes_head":
        bh = BayesianHead.from_linear_layers(pol.head, prior_var=args.prior_var, hidden_var=0.0,
                                             obs_noise=args.obs_noise, process_noise=1e-6)
        ev_pol = HeadPolicy(pol.body, bh)
    else:
        mem = int(method.split(":")[1])
        opt = torch.optim.Adam(pol.head.parameters(), lr=args.lr)
        ev_pol = pol
    k = 0
    for c in checkpoints:
        while k < c:
            x, y = feats[k:k + 1], stream_u[k:k + 1, None]
            if kind:
                opt.step(x, y)
            elif method == "bayes_head":
                bh.update(x, y)
            else:
                lo = max(0, k + 1 - mem)
                xb, yb = feats[lo:k + 1], stream_u[lo:k + 1, None]
                loss = ((pol.head(xb) - yb) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            k += 1
        if scorer is None:
            out.append(evaluate(plant, lin, d, ev_pol, args.T, args.episodes, 1000 + seed, dev, dt))
        else:
            out.append(scorer(ev_pol))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small CPU run (< 1 min)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="results/drift_adaptation")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--obs-noise", type=float, default=1e-2)
    ap.add_argument("--prior-var", type=float, default=1e-3, help="prior weight variance (Kalman, Bayesian head)")
    ap.add_argument("--lr", type=float, default=3e-3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1 if args.device == "cpu" else torch.get_num_threads())
    dev, dt = torch.device(args.device), torch.float64
    q = args.quick
    args.seeds = args.seeds or (2 if q else 5)
    args.T, args.episodes = 200, (64 if q else 512)
    args.pre_episodes, args.pre_steps = (64, 600) if q else (256, 3000)
    checkpoints = [0, 10, 50, 200] if q else [0, 5, 10, 20, 50, 100, 200]
    methods = ["kalman:full", "kalman:diagonal", "kalman:lowrank", "kalman:kronecker", "bayes_head",
               "adam:1", "adam:10", "adam:100"]
    t0 = time.time()
    nominal = pendulum().plant
    changed = pendulum(mass=1.5, length=0.7).plant
    lin0, d0 = design(nominal)
    lin1, d1 = design(changed)
    base, pre_loss = pretrain(nominal, lin0, d0, args, dev, dt)
    # reference points: the nominal (unadapted) pretrained policy and the nominal LQG on the changed plant
    ref = {"pretrained_on_nominal": evaluate(nominal, lin0, d0, base, args.T, args.episodes, 7, dev, dt),
           "pretrained_on_changed": evaluate(changed, lin1, d1, base, args.T, args.episodes, 7, dev, dt)}
    g_nom = torch.Generator().manual_seed(7)
    _, _, _, c_nom, _ = rollout(changed, lin0, d0, args.T, args.episodes, g_nom, dev, dt)
    g_or = torch.Generator().manual_seed(7)
    _, _, _, c_or, _ = rollout(changed, lin1, d1, args.T, args.episodes, g_or, dev, dt)
    ref["nominal_lqg_on_changed_cost_ratio"] = float(c_nom.mean() / c_or.mean())
    # the learned estimator: a one-step measurement predictor (no state labels), scored by its
    # prediction MSE on held-out changed-plant data relative to the oracle Kalman predictor's
    pred_base, pred_loss = pretrain(nominal, lin0, d0, args, dev, dt, predictor=True)
    W_te, _, _, _, yp_te = rollout(changed, lin1, d1, args.T, 32, torch.Generator().manual_seed(9), dev, dt)
    x_te, y_te, kf_te = predictor_data(W_te, yp_te)
    kf_mse = float(((kf_te - y_te) ** 2).mean())

    def pred_scorer(model):
        with torch.no_grad():
            return (1.0, float(((model(x_te)[:, 0] - y_te) ** 2).mean()) / kf_mse)
    ref["pretrained_predictor_mse_ratio_on_changed"] = pred_scorer(pred_base)[1]
    results = {m: [] for m in methods}
    presults = {m: [] for m in methods}
    for seed in range(args.seeds):
        g = torch.Generator().manual_seed(100 + seed)
        W, U, _, _, yp = rollout(changed, lin1, d1, 100, 4, g, dev, dt, explore=0.5)
        sw, su = W.reshape(-1, W.shape[-1]), U.reshape(-1)
        perm = torch.randperm(sw.shape[0], generator=torch.Generator().manual_seed(seed)).to(dev)
        sw, su = sw[perm], su[perm]
        px, py, _ = predictor_data(W, yp)
        pperm = torch.randperm(px.shape[0], generator=torch.Generator().manual_seed(seed)).to(dev)
        px, py = px[pperm], py[pperm]
        for m in methods:
            results[m].append(adapt_run(m, base, sw, su, checkpoints, changed, lin1, d1, args, seed, dev, dt))
            presults[m].append(adapt_run(m, pred_base, px, py, checkpoints, changed, lin1, d1, args, seed, dev, dt,
                                         scorer=pred_scorer))
    elapsed = time.time() - t0
    summary = {}
    for m in methods:
        arr = np.array(results[m])                                  # (seeds, checkpoints, 2)
        parr = np.array(presults[m])[:, :, 1]
        summary[m] = {"success_mean": arr[:, :, 0].mean(0).tolist(), "success_sd": arr[:, :, 0].std(0).tolist(),
                      "cost_ratio_mean": arr[:, :, 1].mean(0).tolist(), "cost_ratio_sd": arr[:, :, 1].std(0).tolist(),
                      "pred_mse_ratio_mean": parr.mean(0).tolist(), "pred_mse_ratio_sd": parr.std(0).tolist()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(device=str(dev), quick=q, seeds=args.seeds, episodes=args.episodes, T=args.T, checkpoints=checkpoints,
                pretrain_loss=pre_loss, predictor_pretrain_loss=pred_loss, elapsed_s=elapsed, reference=ref, obs_noise=args.obs_noise,
                prior_var=args.prior_var, adam_lr=args.lr)
    (out / "results.json").write_text(json.dumps({"meta": meta, "summary": summary, "raw": results}, indent=1))
    lines = ["| method | " + " | ".join(f"k={c}" for c in checkpoints) + " |",
             "|---|" + "---|" * len(checkpoints)]
    for m in methods:
        s = summary[m]
        lines.append(f"| {m} | " + " | ".join(f"{s['success_mean'][i]:.2f} / {s['cost_ratio_mean'][i]:.3f}"
                                               for i in range(len(checkpoints))) + " |")
    lines += ["", "one-step measurement prediction MSE / oracle Kalman predictor MSE (changed plant)", "",
              "| method | " + " | ".join(f"k={c}" for c in checkpoints) + " |", "|---|" + "---|" * len(checkpoints)]
    for m in methods:
        s = summary[m]
        lines.append(f"| {m} | " + " | ".join(f"{v:.3f}" for v in s["pred_mse_ratio_mean"]) + " |")
    table = "\n".join(lines)
    hdr = (f"success rate / cost relative to oracle, vs samples k after the change ({args.seeds} seeds, "
           f"{args.episodes} episodes of {args.T} steps, device {dev}, {elapsed:.0f} s)\n\n")
    (out / "table.md").write_text(hdr + table + "\n\nreference: " + json.dumps(ref) + "\n")
    print(hdr + table)
    print("reference:", json.dumps(ref))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axs = plt.subplots(1, 3, figsize=(16, 4))
        xs = np.maximum(np.array(checkpoints), 1)
        for m in methods:
            s = summary[m]
            for ax, key in zip(axs, ["success", "cost_ratio", "pred_mse_ratio"]):
                mu, sd = np.array(s[key + "_mean"]), np.array(s[key + "_sd"])
                ls = "--" if m.startswith("adam") else "-"
                ax.plot(xs, mu, ls, marker="o", ms=3, label=m)
                ax.fill_between(xs, mu - sd, mu + sd, alpha=0.15)
        axs[0].set(xscale="log", xlabel="samples after the change (k=0 plotted at 1)", ylabel="success rate")
        axs[1].set(xscale="log", xlabel="samples after the change", ylabel="cost / oracle cost")
        axs[1].axhline(1.1, color="k", lw=0.5, ls=":")
        axs[2].set(xscale="log", xlabel="samples after the change", ylabel="prediction MSE / Kalman MSE")
        axs[1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "drift_adaptation.png", dpi=120)
    except ImportError:
        print("matplotlib missing: no figure")
    return summary


if __name__ == "__main__":
    main()
