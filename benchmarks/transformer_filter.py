"""Closed-loop throughput of the Transformer Filter controller against the Kalman (LQG) loop.

Plant: ``lqgt.plants.two_mass`` (n=4, m=1, p=2), LQR gain, window H=32. For each device,
dtype and batch size B the script times three closed loops, each one
``lqgt.simulate(..., store=False)`` call on the same noise (same seed):

* ``kalman``   : Kalman predictor, ``u = -K x̂`` (the fused linear recursion): the reference;
* ``tf-kernel``: Transformer Filter, ``impl="kernel"`` (Gaussian-kernel form, ring buffers),
  on the torch path (``backend="torch"``);
* ``tf-attn``  : Transformer Filter, ``impl="attention"`` (the explicit attention block
  on the quadratic embedding, with a key/value cache), torch path;
* ``tf-fused`` (``--fused``, CUDA): the kernel form as one fused Triton kernel
  (``simulate(..., backend="triton")``, :mod:`lqgt.kernels.tf_loop`; its own Philox noise,
  the same numbers as the fused ``kalman`` column, so at a large β the two costs are equal;
  against the torch-path columns they differ by Monte Carlo error only).

On CUDA the ``kalman`` reference itself runs lqgt's fused linear kernel from 10⁴
trajectories on (``backend="auto"``).

Throughput is trajectory-steps per second, ``B × horizon / wall time`` (noise generation
and the cost included: what a user of ``simulate`` gets). Each configuration is run once
with a short horizon to warm up (CUDA context, kernel selection, allocator), then timed
``--repeats`` times (best kept), with ``torch.cuda.synchronize()`` before starting and
before stopping the clock. The TF temperature is large (β = 1e4 by default) so that the
costs, printed beside the timings, agree with the Kalman loop's: they show that all three
loops simulate the same thing. A configuration that runs out of memory prints ``OOM`` and
the table goes on.

Usage::

    python benchmarks/transformer_filter.py                       # CPU (and GPU if present)
    python benchmarks/transformer_filter.py --devices cuda --dtype float32 float64
    python benchmarks/transformer_filter.py --devices cpu --batches 1e3 1e4 --horizon 64
"""

from __future__ import annotations

import argparse
import math
import platform

import torch
from _common import free, is_oom, measure_device, timed

import lqgt

#: default horizon per batch size when --horizon is not given (steps; ≥ 2H so the window is full most of the run)
DEFAULT_HORIZON = {1_000: 256, 10_000: 128, 100_000: 64, 1_000_000: 64}
IMPLS = ("kernel", "attention")
#: simulate's backend per column: the Kalman reference as a user gets it, the TF columns on the torch
#: path (which "auto" would replace by the fused kernel on CUDA), the fused column on the kernel
BACKEND = {"kalman": "auto", "tf-fused": "triton"}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Transformer Filter closed-loop throughput vs the Kalman loop")
    ap.add_argument("--batches", nargs="+", type=float, default=[1e3, 1e4, 1e5, 1e6],
                    help="batch sizes (trajectories), default 1e3 1e4 1e5 1e6")
    ap.add_argument("--devices", nargs="+", default=None,
                    help="torch devices (default: cpu, and cuda when available)")
    ap.add_argument("--horizon", type=int, default=None,
                    help=f"steps per timed run (default per batch size: {DEFAULT_HORIZON}, else 64)")
    ap.add_argument("--dtype", nargs="+", default=["float64", "float32"], choices=["float64", "float32"],
                    help="dtypes to run (default: float64 float32)")
    ap.add_argument("--window", type=int, default=32, help="attention window H (default 32)")
    ap.add_argument("--beta", type=float, default=1e4, help="TF temperature (default 1e4; cost of a step does not depend on it)")
    ap.add_argument("--impls", nargs="+", default=list(IMPLS), choices=list(IMPLS), help="TF implementations")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per configuration, best kept (default 2)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fused", action="store_true", help="also time the fused Triton TF kernel (CUDA)")
    ap.add_argument("--roofline", action="store_true",
                    help="after the table, compare the CUDA rates with the card's measured bandwidth and flop peak")
    ap.add_argument("--compile", action="store_true",
                    help="also time each TF implementation with compile=True (torch.compile of the step core)")
    return ap.parse_args(argv)


def time_loop(plant, Q, R, K, est, *, batch, horizon, dev, dtype, repeats, seed, backend="auto"):
    """Warm up, then time ``simulate(store=False)``; return (best seconds, cost) or raise."""
    common = dict(Q=Q, R=R, batch=batch, seed=seed, device=dev, dtype=dtype, store=False, backend=backend,
                  progress=False)
    lqgt.simulate(plant, K, {"e": est}, horizon=min(horizon, 8), **common)  # warm-up
    best, res = timed(lambda: lqgt.simulate(plant, K, {"e": est}, horizon=horizon, **common), dev, repeats, best=True)
    return best, res.cost["e"]


def tf_step_costs(n: int, m: int, p: int, H: int, exogenous: bool = False) -> dict:
    """Flops and bytes per trajectory-step of the Transformer Filter loop (kernel form, dense counts).

    Token ``d = n + p (+ m)``. Attention over the ``H`` slots: distances ``3dH`` (subtract,
    multiply, add), ``H`` exponentials (counted as one flop each; they run on the special
    function units), the weight sum ``H`` and the weighted keys ``2dH``, normalisation ``d``.
    The linear parts: ``u`` ``2nm``, ``y`` ``2(n+m)p``, the noise maps ``2(n²+p²)``, the key
    ``2d²``, the value map ``2dn``, the plant ``2n(n+m)``, the cost ``≈ 2(n+m)² + 3(n+m)``.
    Bytes: the fused kernel keeps the window in registers (~0 per step); the torch path must
    at least read the ``d×H`` window twice (distances, weighted sum) and write and read the
    ``H`` weights: ``2dH + 2H`` elements, a lower bound on its traffic.
    """
    d = n + p + (m if exogenous else 0)
    k = n + m
    attn = 3 * d * H + H + H + 2 * d * H + d
    lin = 2 * n * m + 2 * k * p + 2 * (n * n + p * p) + 2 * d * d + 2 * d * n + 2 * n * k + 2 * k * k + 3 * k
    return dict(flops=attn + lin, exps=H, torch_elems=2 * d * H + 2 * H)


def roofline(rows: list[tuple], costs: dict) -> None:
    """Print each CUDA Transformer Filter rate against the card's measured limits (bandwidth and matmul
    peak, this run; the Kalman loop's roofline is in ``closed_loop.py``)."""
    print("\n=== roofline (per trajectory-step; limits measured in this run) ===")
    for dname in sorted({r[1] for r in rows}):
        dt = getattr(torch, dname)
        s = torch.finfo(dt).bits // 8
        bw, peak = measure_device(dt)
        flop_bound = peak / costs["flops"]
        mem_bound = bw / (costs["torch_elems"] * s)
        print(f"{dname}: copy bandwidth {bw / 1e12:.2f} TB/s, matmul peak {peak / 1e12:.1f} TFLOP/s; "
              f"{costs['flops']} flop/traj-step ({costs['exps']} exp) -> flop limit {flop_bound:.3g} traj-steps/s; "
              f"torch path moves >= {costs['torch_elems'] * s} B/traj-step -> memory limit {mem_bound:.3g}; "
              "fused kernel: ~0 B/traj-step")
        for dev_name, dn, B, name, rate in rows:
            if dn == dname and math.isfinite(rate):
                print(f"  {name:<10} B={B:<8} {rate:.3g} traj-steps/s = {rate / flop_bound:.3f} of the flop limit, "
                      f"{rate / mem_bound:.2f} x the torch path's memory limit")


def fmt_rate(r: float) -> str:
    return f"{r:9.3g}" if math.isfinite(r) else f"{'-':>9}"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    plant, Q, R = lqgt.plants.two_mass()
    K = lqgt.lqg(plant, Q, R).K
    batches = [int(b) for b in args.batches]

    print(f"lqgt {lqgt.__version__}, torch {torch.__version__}, python {platform.python_version()}, "
          f"{platform.processor() or platform.machine()}, torch CPU threads {torch.get_num_threads()}")
    if torch.cuda.is_available():
        print(f"CUDA: {torch.cuda.get_device_name(0)}")
    print(f"plant two_mass (n={plant.n}, m={plant.m}, p={plant.p}), H={args.window}, β={args.beta:g}, "
          f"repeats={args.repeats} (best), simulate(store=False); rates in trajectory-steps/s; "
          "ratio = rate / Kalman rate; cost = mean cost per step (same noise)")
    cols = ["kalman"] + [f"tf-{'attn' if i == 'attention' else i}" for i in args.impls]
    if args.compile:
        cols += [f"tf-{'attn' if i == 'attention' else i}+c" for i in args.impls]
    if args.fused:
        cols.append("tf-fused")
    head = f"{'device':>6} {'dtype':>7} {'batch':>8} {'T':>4}  " + "  ".join(f"{c:>9}" for c in cols) + "  " + \
        "  ".join(f"{c + '/kal':>14}" for c in cols[1:]) + "  " + "  ".join(f"{'J ' + c:>12}" for c in cols)
    print(head)
    print("-" * len(head))
    cuda_rows = []
    for dev_name in devices:
        dev = torch.device(dev_name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            print(f"{dev_name:>6}  (CUDA not available: skipped)")
            continue
        for dt_name in args.dtype:
            dtype = getattr(torch, dt_name)
            for B in batches:
                T = args.horizon or DEFAULT_HORIZON.get(B, 64)
                ests = {"kalman": lqgt.KalmanFilter(plant, form="predictor")}
                for impl in args.impls:
                    name = f"tf-{'attn' if impl == 'attention' else impl}"
                    ests[name] = lqgt.TransformerFilter(plant, beta=args.beta, window=args.window, K=K, impl=impl)
                    if args.compile:
                        ests[name + "+c"] = lqgt.TransformerFilter(plant, beta=args.beta, window=args.window, K=K,
                                                                   impl=impl, compile=True)
                if args.fused:
                    ests["tf-fused"] = lqgt.TransformerFilter(plant, beta=args.beta, window=args.window, K=K)
                rates, costs = {}, {}
                for name, est in ests.items():
                    if name == "tf-fused" and dev.type != "cuda":
                        rates[name], costs[name] = math.nan, math.nan
                        continue
                    try:
                        sec, cost = time_loop(plant, Q, R, K, est, batch=B, horizon=T, dev=dev, dtype=dtype,
                                              repeats=args.repeats, seed=args.seed,
                                              backend=BACKEND.get(name, "torch"))
                        rates[name], costs[name] = B * T / sec, cost
                    except Exception as exc:  # noqa: BLE001 - one failed configuration must not end the table
                        if not is_oom(exc):
                            raise
                        rates[name], costs[name] = math.nan, math.nan
                        costs[name + "!"] = "OOM"
                    finally:
                        free(dev)
                line = f"{dev_name:>6} {dt_name:>7} {B:>8.0e} {T:>4}  "
                line += "  ".join(("      OOM" if costs.get(c + "!") else fmt_rate(rates[c])) for c in cols) + "  "
                kal = rates["kalman"]
                line += "  ".join(f"{rates[c] / kal:14.3g}" if math.isfinite(rates[c]) and math.isfinite(kal)
                                  else f"{'-':>14}" for c in cols[1:]) + "  "
                line += "  ".join(f"{costs[c]:12.6g}" if isinstance(costs[c], float) and math.isfinite(costs[c])
                                  else f"{'-':>12}" for c in cols)
                print(line, flush=True)
                if dev.type == "cuda":
                    cuda_rows += [(dev_name, dt_name, B, c, rates[c]) for c in cols if c.startswith("tf-")]
    if args.roofline and cuda_rows:
        roofline(cuda_rows, tf_step_costs(plant.n, plant.m, plant.p, args.window))


if __name__ == "__main__":
    main()
