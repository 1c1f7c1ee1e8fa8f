"""Adaptive Filter Attention speed: the isotropic layer against SDPA, and AFAFilter in the closed loop.

Part ``layer``: forward and forward+backward time of :class:`lqgt.AdaptiveFilterAttention`
(isotropic, robust, causal) at sequence lengths N and widths d_model with 8 heads, against
``torch.nn.functional.scaled_dot_product_attention`` (causal) of the same shape in the same
run, both with their four ``d_model × d_model`` projections. Three AFA implementations:

* ``afa-dense``: the layer itself (materialises the ``(B, heads, N, N)`` score matrices);
* ``afa-flex``: the same mathematics with ``torch.nn.attention.flex_attention`` (the whole
  function under ``torch.compile``):
  the rotary dot product ``q̃_i·k̃_j`` is the flex score and a ``score_mod`` turns it into the
  AFA logit (decay, closed-form Lyapunov variance, Student-t term), with a causal block
  mask. The values' decay ``e^{-μΔ}`` is not a softmax weight, so a second flex pass with
  the logit ``- μΔ`` gives ``Σ_j α_ij e^{-μΔ} ṽ_j`` after rescaling by ``exp(lse₂ - lse₁)``
  (two passes: the goal "within 2x of SDPA" is therefore the best case);
* ``sdpa``: ``F.scaled_dot_product_attention(q, k, v, is_causal=True)``.

The flex result is checked against the dense layer on every run (max abs difference of the
outputs, printed). On the CPU only the forward of flex runs (torch has no CPU backward for it)
and uncompiled.

Part ``filter``: closed-loop trajectory-steps per second of :class:`lqgt.AFAFilter`
(tensor, isotropic and matrix forms, window 32) on ``two_mass`` against the Kalman loop
(fused linear recursion) and the Transformer Filter (kernel form, window 32), each one
``lqgt.simulate(..., store=False)`` call on the same noise, warm-up run first.

Usage::

    python benchmarks/afa.py --quick --out /tmp/afa_bench                 # CPU, < 1 minute
    python benchmarks/afa.py --device cuda --out out/afa_bench            # H200, ~3 minutes

Writes ``afa_bench.json`` and ``afa_bench.md`` into ``--out`` and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import torch
import torch.nn.functional as F
from _common import free, is_oom, timed

import lqgt
from lqgt.layers.afa import AdaptiveFilterAttention


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="AFA layer vs SDPA, AFAFilter closed-loop throughput")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--quick", action="store_true", help="small CPU sizes (well under a minute)")
    ap.add_argument("--out", default="afa_bench_out", help="output folder for JSON and markdown")
    ap.add_argument("--part", choices=["layer", "filter", "all"], default="all")
    ap.add_argument("--lengths", default=None, help="sequence lengths, e.g. 1024,4096,8192")
    ap.add_argument("--widths", default=None, help="d_model values, e.g. 64,256")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--batch", type=int, default=1, help="sequences per layer call")
    ap.add_argument("--dtype", default=None, help="layer dtype (default float32 on cuda, float64 on cpu)")
    ap.add_argument("--no-flex", action="store_true", help="skip the flex-attention implementation")
    ap.add_argument("--filter-batches", default=None, help="closed-loop batch sizes, e.g. 1e4,1e6")
    ap.add_argument("--filter-dtype", default=None, help="closed-loop dtype (default float32 on cuda, float64 on cpu)")
    ap.add_argument("--horizon", type=int, default=64, help="closed-loop steps per timed run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget", type=float, default=170.0, help="stop starting new configurations after this many s")
    return ap.parse_args(argv)


class SDPABlock(torch.nn.Module):
    """Causal multi-head attention with SDPA and the same four projections as the AFA layer."""

    def __init__(self, d_model: int, heads: int, **fk) -> None:
        super().__init__()
        self.heads = heads
        self.W_q, self.W_k, self.W_v, self.W_o = (torch.nn.Linear(d_model, d_model, bias=False, **fk) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = (W(x).view(B, N, self.heads, -1).transpose(1, 2) for W in (self.W_q, self.W_k, self.W_v))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.W_o(o.transpose(1, 2).reshape(B, N, D))


def make_flex_afa(layer: AdaptiveFilterAttention, N: int, device, mode: str):
    """Return ``fn(x) -> out``: the isotropic robust AFA layer through flex attention (two passes).

    ``mode``: ``"whole"`` compiles the whole function, ``"flex"`` only ``flex_attention``,
    ``"eager"`` compiles nothing (the unfused reference; the only choice on the CPU).
    """
    from torch.nn.attention.flex_attention import AuxRequest, create_block_mask, flex_attention

    flex = torch.compile(flex_attention, dynamic=False) if mode == "flex" else flex_attention
    bm = create_block_mask(lambda b, h, qi, kj: qi >= kj, None, None, N, N, device=device)
    dt, dh, tau = layer.dt, layer.d_head, layer.tau

    def fn(x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        q, k, v = (layer._split(W(x)) for W in (layer.W_q, layer.W_k, layer.W_v))
        t = torch.arange(N, device=x.device, dtype=x.dtype) * dt
        theta = layer.omega[:, None, :] * t[None, :, None]
        cos, sin = torch.cos(theta), torch.sin(theta)
        qr, kr, vr = (layer._rotate(z, cos, sin, -1.0).flatten(-2) for z in (q, k, v))
        qn, kn = q.square().sum((-1, -2)), k.square().sum((-1, -2))  # (B, h, N)
        mu, qq, rr, nu = layer.mu, layer.q, layer.r, layer.nu

        def logit(score, b, h, qi, kj):
            delta = (qi - kj).to(score.dtype) * dt
            m = mu[h]
            x2 = 2.0 * m * delta
            small = x2 < 1e-6
            g = torch.where(small, 1.0 - 0.5 * x2, -torch.expm1(-x2) / torch.where(small, 1.0, x2))
            dec = torch.exp(-m * delta)
            V = qq[h] * delta * g + dec * dec * rr[h]
            res2 = torch.clamp(qn[b, h, qi] + dec * dec * kn[b, h, kj] - 2.0 * dec * score, min=0.0)
            return tau * (-torch.log(V) - torch.log1p(res2 / (nu[h] * dh * (V + rr[h]))))

        def logit_decayed(score, b, h, qi, kj):
            return logit(score, b, h, qi, kj) - mu[h] * (qi - kj).to(score.dtype) * dt

        _, aux1 = flex(qr, kr, vr, score_mod=logit, block_mask=bm, scale=1.0, return_aux=AuxRequest(lse=True))
        o2, aux2 = flex(qr, kr, vr, score_mod=logit_decayed, block_mask=bm, scale=1.0, return_aux=AuxRequest(lse=True))
        o = o2 * torch.exp(aux2.lse - aux1.lse)[..., None]
        o = layer._rotate(o.view(B, layer.heads, N, layer.comps, 2), cos, sin, +1.0)
        return layer.W_o(o.permute(0, 2, 1, 3, 4).reshape(B, N, layer.d_model))

    # compiling the whole function (not flex_attention alone) lets the score_mods, which
    # capture per-call tensors (token norms, μ, q, r, ν), be traced once instead of recompiled
    return torch.compile(fn, dynamic=False) if mode == "whole" else fn


def bench_layer(args, device, dtype, t_start) -> list[dict]:
    Ns = [int(float(v)) for v in (args.lengths or ("128,256" if args.quick else "1024,2048,4096,8192")).split(",")]
    Ds = [int(float(v)) for v in (args.widths or ("64" if args.quick else "64,256")).split(",")]
    rows = []
    cuda = device.type == "cuda"
    for D in Ds:
        for N in Ns:
            if time.perf_counter() - t_start > args.budget:
                print(f"(budget reached: skipping N={N}, d_model={D})")
                continue
            torch.manual_seed(0)
            fk = dict(device=device, dtype=dtype)
            afa = AdaptiveFilterAttention(D, args.heads, form="isotropic", robust=True, dt=1.0, mu=0.01, **fk)
            sdpa = SDPABlock(D, args.heads, **fk)
            x = torch.randn(args.batch, N, D, **fk)
            impls = {"sdpa": sdpa, "afa-dense": afa}
            check = None
            flex_mode = None
            for mode in (() if args.no_flex else (("whole", "flex") if cuda else ("eager",))):
                try:
                    flex_fn = make_flex_afa(afa, N, device, mode)
                    with torch.no_grad():
                        check = float((flex_fn(x) - afa(x)).abs().max())
                    impls["afa-flex"], flex_mode = flex_fn, mode
                    break
                except Exception as exc:  # noqa: BLE001 - report and go on without flex
                    print(f"flex attention ({mode}) unavailable: {type(exc).__name__}: {str(exc)[:200]}")
            for name, mod in impls.items():
                row = dict(part="layer", impl=name, N=N, d_model=D, heads=args.heads, batch=args.batch,
                           dtype=str(dtype).replace("torch.", ""), flex_max_abs_diff=check if name == "afa-flex" else None,
                           flex_mode=flex_mode if name == "afa-flex" else None)
                try:
                    with torch.no_grad():
                        mod(x)
                        fwd, _ = timed(lambda: mod(x), device, args.repeats)
                    row["fwd_ms"] = 1e3 * fwd
                    if cuda or name != "afa-flex":
                        xg = x.clone().requires_grad_(True)

                        def fb():
                            out = mod(xg)
                            out.square().mean().backward()
                        fb()
                        fwdbwd, _ = timed(fb, device, args.repeats)
                        row["fwd_bwd_ms"] = 1e3 * fwdbwd
                    else:
                        row["fwd_bwd_ms"] = None
                except Exception as exc:
                    if is_oom(exc):
                        row["fwd_ms"] = row["fwd_bwd_ms"] = math.inf
                        print(f"{name} N={N} d={D}: OOM")
                    elif name == "afa-flex":  # a flex/compile failure must not end the benchmark
                        row["fwd_ms"] = row.get("fwd_ms")
                        row["fwd_bwd_ms"] = None
                        row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                        print(f"afa-flex N={N} d={D} failed: {row['error']}")
                    else:
                        raise
                rows.append(row)
                free(device)
            base = {k: r for r in rows if r["N"] == N and r["d_model"] == D for k in [r["impl"]]}
            for r in rows:
                if r["N"] == N and r["d_model"] == D:
                    for key in ("fwd_ms", "fwd_bwd_ms"):
                        b = base.get("sdpa", {}).get(key)
                        r[key.replace("_ms", "_vs_sdpa")] = (r[key] / b) if (r.get(key) and b) else None
            print_layer([r for r in rows if r["N"] == N and r["d_model"] == D], header=(N == Ns[0] and D == Ds[0]))
    return rows


def _fmt(v, spec=".3g"):
    return "—" if v is None else ("inf" if v == math.inf else format(v, spec))


def print_layer(rows, header=True):
    if header:
        print(f"{'impl':<10} {'N':>6} {'d':>4} {'fwd ms':>9} {'x sdpa':>7} {'fwd+bwd ms':>11} {'x sdpa':>7} {'flex err':>9}")
    for r in rows:
        print(f"{r['impl']:<10} {r['N']:>6} {r['d_model']:>4} {_fmt(r.get('fwd_ms')):>9} {_fmt(r.get('fwd_vs_sdpa')):>7} "
              f"{_fmt(r.get('fwd_bwd_ms')):>11} {_fmt(r.get('fwd_bwd_vs_sdpa')):>7} {_fmt(r.get('flex_max_abs_diff'), '.1e'):>9}")


def bench_filter(args, device, t_start) -> list[dict]:
    batches = [int(float(v)) for v in (args.filter_batches or ("1e3" if args.quick else "1e4,1e6")).split(",")]
    dtype = getattr(torch, args.filter_dtype) if args.filter_dtype else (torch.float32 if device.type == "cuda" else torch.float64)
    plant, Q, R = lqgt.plants.two_mass()
    K, _, _ = lqgt.dlqr(plant.A, plant.B, Q, R)
    ests = {
        "kalman": lqgt.KalmanFilter(plant),
        "tf-kernel": lqgt.TransformerFilter(plant, beta=1e4, window=32),
        "afa-tensor": lqgt.AFAFilter(plant, window=32, form="tensor"),
        "afa-isotropic": lqgt.AFAFilter(plant, window=32, form="isotropic"),
        "afa-matrix": lqgt.AFAFilter(plant, window=32, form="matrix"),
    }
    rows = []
    horizon = 16 if args.quick else args.horizon
    for B in batches:
        for name, est in ests.items():
            if time.perf_counter() - t_start > args.budget:
                print(f"(budget reached: skipping {name} at batch {B})")
                continue
            row = dict(part="filter", estimator=name, batch=B, horizon=horizon, dtype=str(dtype).replace("torch.", ""))
            try:
                kw = dict(Q=Q, R=R, batch=B, device=device, dtype=dtype, store=False, seed=0)
                lqgt.simulate(plant, K, {name: est}, horizon=4, **kw)  # warm-up
                sec, res = timed(lambda: lqgt.simulate(plant, K, {name: est}, horizon=horizon, **kw), device,
                                 max(1, args.repeats - 1), best=True)
                row.update(seconds=sec, steps_per_s=B * horizon / sec, cost=res.cost[name])
            except Exception as exc:
                if not is_oom(exc):
                    raise
                row.update(seconds=math.inf, steps_per_s=0.0, cost=math.nan)
            rows.append(row)
            free(device)
            print(f"{name:<14} B={B:>8} {row['steps_per_s']:>12.3e} traj-steps/s  cost {row['cost']:.4f}")
    return rows


def markdown(rows_layer, rows_filter, meta) -> str:
    out = [f"# AFA benchmarks ({meta['device_name']}, torch {meta['torch']})", ""]
    if rows_layer:
        out += ["## Isotropic AFA layer vs SDPA (causal, 8 heads)", "",
                "| impl | N | d_model | fwd ms | × SDPA | fwd+bwd ms | × SDPA | flex max diff |",
                "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows_layer:
            label = r["impl"] + (f" ({r['flex_mode']})" if r.get("flex_mode") else "")
            out.append(f"| {label} | {r['N']} | {r['d_model']} | {_fmt(r.get('fwd_ms'))} | {_fmt(r.get('fwd_vs_sdpa'))} | "
                       f"{_fmt(r.get('fwd_bwd_ms'))} | {_fmt(r.get('fwd_bwd_vs_sdpa'))} | {_fmt(r.get('flex_max_abs_diff'), '.1e')} |")
        out.append("")
    if rows_filter:
        out += ["## Closed loop on two_mass (window 32): trajectory-steps/s", "",
                "| estimator | batch | horizon | traj-steps/s | cost |", "|---|---:|---:|---:|---:|"]
        for r in rows_filter:
            out.append(f"| {r['estimator']} | {r['batch']} | {r['horizon']} | {r['steps_per_s']:.3e} | {r['cost']:.4f} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1 if args.quick else torch.get_num_threads())
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float32 if device.type == "cuda" else torch.float64)
    t_start = time.perf_counter()
    rows_layer = bench_layer(args, device, dtype, t_start) if args.part in ("layer", "all") else []
    rows_filter = bench_filter(args, device, t_start) if args.part in ("filter", "all") else []
    meta = dict(device=str(device), torch=torch.__version__, python=platform.python_version(),
                device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
                quick=args.quick, wall_s=time.perf_counter() - t_start)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "afa_bench.json"), "w") as f:
        json.dump({"meta": meta, "layer": rows_layer, "filter": rows_filter}, f, indent=1, default=str)
    md = markdown(rows_layer, rows_filter, meta)
    with open(os.path.join(args.out, "afa_bench.md"), "w") as f:
        f.write(md)
    print(f"\nwrote {args.out}/afa_bench.json and afa_bench.md ({meta['wall_s']:.1f} s)")


if __name__ == "__main__":
    main()
