"""Per-step time and memory of the KalmanOptimizer covariance forms vs parameter count, next to Adam.

Models: an MLP of input 32 and scalar output. The smallest point is one hidden layer of width 32
(about 1e3 parameters); the others keep the width fixed at 128 and add layers (1.7e4 per layer), so
the parameter count grows at fixed layer widths — the regime where the low-rank and Kronecker forms
cost O(d) (Kronecker's per-layer cost grows with width³, not with depth). The ``"full"`` form runs
only where its ``d × d`` covariance fits (``--full-max``). One sample per step (batch 1), float32.

For each (d, form): median seconds per step over ``--repeats`` steps (after a warm-up step), the
bytes of the optimizer state (covariance factors), and on CUDA the peak allocated memory of a step.
The last column is the time relative to an Adam step on the same model in the same run, and a
log-log slope of time vs d over the fixed-width points checks linear scaling.

```text
python benchmarks/kalman_optimizer.py --quick                       # CPU, < 1 min
python benchmarks/kalman_optimizer.py --device cuda --out bench-kalman/   # H200, ~1-2 min
```
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import timed

from lqgt.learn import KalmanOptimizer


def mlp(depth: int, width: int) -> nn.Module:
    layers, k = [], 32
    for _ in range(depth):
        layers += [nn.Linear(k, width), nn.Tanh()]
        k = width
    return nn.Sequential(*layers, nn.Linear(k, 1))


def state_bytes(opt: KalmanOptimizer) -> int:
    if opt.kind == "full":
        ts = [opt.P]
    elif opt.kind == "diagonal":
        ts = [opt.s]
    elif opt.kind == "lowrank":
        ts = [opt.W]
    else:
        ts = [t for blk in opt.blocks for t in blk]
    return int(sum(t.numel() * t.element_size() for t in ts))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--full-max", type=int, default=None, help="largest d for the full covariance")
    ap.add_argument("--rank", type=int, default=10)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cpu":
        torch.set_num_threads(1)
    configs = [(1, 32), (1, 128), (6, 128), (20, 128)] + ([] if args.quick else [(60, 128)])
    full_max = args.full_max or (2000 if dev.type == "cpu" else 20000)
    rows = []
    torch.manual_seed(0)
    for depth, width in configs:
        model = mlp(depth, width).to(dev)
        d = sum(p.numel() for p in model.parameters())
        x = torch.randn(1, 32, device=dev)
        y = torch.randn(1, 1, device=dev)
        adam = torch.optim.Adam(model.parameters(), lr=1e-4)

        def adam_step(model=model, x=x, y=y, adam=adam):
            loss = ((model(x) - y) ** 2).mean()
            adam.zero_grad()
            loss.backward()
            adam.step()
        adam_step()
        t_adam, _ = timed(adam_step, dev, args.repeats)
        rows.append(dict(d=d, depth=depth, width=width, form="adam", seconds=t_adam, state_bytes=2 * 4 * d,
                         peak_bytes=None, vs_adam=1.0))
        for form in ["full", "diagonal", "lowrank", "kronecker"]:
            if form == "full" and d > full_max:
                continue
            try:
                opt = KalmanOptimizer(model, form, rank=min(args.rank, d), obs_noise=1e-2, process_noise=1e-6,
                                      prior_var=1e-3)
                opt.step(x, y)
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
                    base = torch.cuda.memory_allocated(dev)
                t, _ = timed(lambda opt=opt, x=x, y=y: opt.step(x, y), dev, args.repeats)
                peak = (torch.cuda.max_memory_allocated(dev) - base) if dev.type == "cuda" else None
                rows.append(dict(d=d, depth=depth, width=width, form=form, seconds=t, state_bytes=state_bytes(opt),
                                 peak_bytes=peak, vs_adam=t / t_adam))
                del opt
            except (RuntimeError, MemoryError) as exc:              # OOM: record and go on
                rows.append(dict(d=d, depth=depth, width=width, form=form, seconds=math.nan, state_bytes=None,
                                 peak_bytes=None, vs_adam=math.nan, error=str(exc)[:120]))
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
    slopes = {}
    for form in ["adam", "diagonal", "lowrank", "kronecker"]:
        pts = [(r["d"], r["seconds"]) for r in rows if r["form"] == form and r["width"] == 128
               and math.isfinite(r["seconds"])]
        if len(pts) >= 2:
            ld, lt = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
            slopes[form] = float(np.polyfit(ld, lt, 1)[0])
    lines = [f"KalmanOptimizer per-step cost, device {dev}, batch 1, float32, rank {args.rank}", "",
             "| d | depth×width | form | ms/step | state MB | peak MB | × Adam |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        pk = "" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 1e6:.1f}"
        sb = "" if r["state_bytes"] is None else f"{r['state_bytes'] / 1e6:.3f}"
        lines.append(f"| {r['d']} | {r['depth']}×{r['width']} | {r['form']} | {1e3 * r['seconds']:.2f} | {sb} | {pk} | "
                     f"{r['vs_adam']:.1f} |")
    lines += ["", "log-log slope of time vs d at width 128 (1 = linear): "
              + ", ".join(f"{k} {v:.2f}" for k, v in slopes.items())]
    text = "\n".join(lines)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "kalman_optimizer.json").write_text(json.dumps({"rows": rows, "slopes": slopes}, indent=1))
        (out / "kalman_optimizer.md").write_text(text + "\n")
    return rows, slopes


if __name__ == "__main__":
    main()
