"""Closed-loop Monte Carlo throughput: python-control vs numpy vs lqgt (CPU, GPU).

The loop: ``lqgt.plants.two_mass()`` (n=4, m=1, p=2) under LQG control with the steady
Kalman filter in current form, ``u = -K x̂[t|t]``. Every method simulates the same loop
from ``x0 ~ N(m0, P0)`` with process and measurement noise and reports

* trajectory-steps per second (batch x steps / wall time; median of ``--repeat`` runs),
* the Monte Carlo average cost per step (steps ``burn_in <= t < steps``) with a 95%
  interval over trajectories, next to the exact cost ``lqgt.lqg(...).cost``.

Methods:

(a) ``python-control``: the closed loop built by ``control.interconnect`` from the plant
    (inputs u, w, v) and the LQG compensator (input y, output u), independently of
    :mod:`lqgt.closed_loop`; one ``control.forced_response`` call per trajectory, with
    the noise as inputs, looped over ``--pc-traj`` trajectories and extrapolated.
(b) ``numpy``: the same recursion, batched over trajectories, one numpy step per time step.
(c) ``lqgt`` on CPU (float64; float32 with ``--cpu-float32``), ``store=False``.
(d) ``lqgt`` on CUDA, float32 and float64, ``store=False`` (when CUDA is available).

CPU runs with large batches use fewer steps (``--cpu-budget`` trajectory-steps per run);
the rate is per trajectory-step either way and the table says how many steps were run.
Ratios are against python-control measured in the same run.

Usage::

    python benchmarks/closed_loop.py                       # everything available
    python benchmarks/closed_loop.py --batches 1e3,1e4 --devices cpu
    python benchmarks/closed_loop.py --devices cuda --horizon 1000 --json out.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import sys
import time

import numpy as np
import torch
from _common import ints, measure_device, timed

import lqgt
from lqgt._linalg import psd_sqrt

Z95 = 1.959963984540054


def _ci(per_traj: np.ndarray) -> tuple[float, float]:
    """Mean and 95% half-width over trajectories."""
    per_traj = np.asarray(per_traj, dtype=float)
    mean = float(per_traj.mean())
    half = Z95 * float(per_traj.std(ddof=1)) / math.sqrt(per_traj.size) if per_traj.size > 1 else math.inf
    return mean, half


def _burn(steps: int, burn_in: int) -> int:
    """Burn-in actually used for a run of ``steps`` steps (at most half of them)."""
    return min(burn_in, steps // 2)


class Problem:
    """The benchmark loop: plant, weights, LQG design, exact cost, noise factors."""

    def __init__(self) -> None:
        self.plant, self.Q, self.R = lqgt.plants.two_mass()
        self.design = lqgt.lqg(self.plant, self.Q, self.R)
        self.exact = float(self.design.cost)
        P = self.plant
        self.n, self.m, self.p = P.n, P.m, P.p
        self.Wh, self.Vh, self.P0h = psd_sqrt(P.W), psd_sqrt(P.V), psd_sqrt(P.P0)

    def kalman(self):
        return lqgt.KalmanFilter(self.plant, form="current")

    def expected(self, steps: int, lo: int) -> float:
        """Exact expectation of the MC average over steps ``lo..steps-1`` from ``x0 ~ N(m0, P0)``.

        Second moment of ``ξ = [x; x̄]``: ``M' = F M F' + G diag(W, V) G'``; it equals the
        stationary :attr:`exact` as the run grows, and lets short runs be checked too.
        """
        from lqgt.closed_loop import closed_loop

        P, n, m = self.plant, self.n, self.m
        cl = closed_loop(P, self.design.K, self.design.Lf, "current")
        sl = cl.slices()
        rows = np.r_[np.arange(sl["x"].start, sl["x"].stop), np.arange(sl["u"].start, sl["u"].stop)]
        Hz, Jz = cl.H[rows], cl.J[rows]
        Qz = np.block([[self.Q, np.zeros((n, m))], [np.zeros((m, n)), self.R]])
        N = np.zeros((n + self.p, n + self.p))
        N[:n, :n], N[n:, n:] = P.W, P.V
        GNG = cl.G @ N @ cl.G.T
        mu = np.concatenate([P.m0, P.m0])
        M = np.outer(mu, mu)
        M[:n, :n] += P.P0
        const = float(np.sum(Qz * (Jz @ P.V @ Jz.T)))
        total = 0.0
        for t in range(steps):
            if t >= lo:
                total += float(np.sum(Qz * (Hz @ M @ Hz.T))) + const
            M = cl.F @ M @ cl.F.T + GNG
        return total / (steps - lo)


# ----------------------------------------------------------------------------- (a)
def python_control_system(pb: Problem):
    """Closed loop (inputs [w; v], outputs [x; u], states [x; x̄]) built by python-control."""
    import control

    P, K, Lf = pb.plant, pb.design.K, pb.design.Lf
    n, m, p = pb.n, pb.m, pb.p
    A, B, C = P.A, P.B, P.C
    # plant with inputs [u; w; v], outputs [y; x]
    plant = control.ss(
        A, np.hstack([B, np.eye(n), np.zeros((n, p))]),
        np.vstack([C, np.eye(n)]), np.hstack([np.zeros((p + n, m + n)), np.vstack([np.eye(p), np.zeros((n, p))])]),
        P.dt, inputs=[f"u[{i}]" for i in range(m)] + [f"w[{i}]" for i in range(n)] + [f"v[{i}]" for i in range(p)],
        outputs=[f"y[{i}]" for i in range(p)] + [f"x[{i}]" for i in range(n)], name="plant")
    # current-form LQG compensator, state x̄ = x̂[t|t-1]: x̂ = (I - Lf C) x̄ + Lf y, u = -K x̂, x̄' = A x̂ + B u
    I_LC = np.eye(n) - Lf @ C
    ABK = A - B @ K
    comp = control.ss(ABK @ I_LC, ABK @ Lf, -K @ I_LC, -K @ Lf, P.dt,
                      inputs=[f"y[{i}]" for i in range(p)], outputs=[f"u[{i}]" for i in range(m)], name="lqg")
    cl = control.interconnect(
        [plant, comp],
        inplist=[f"w[{i}]" for i in range(n)] + [f"v[{i}]" for i in range(p)],
        outlist=[f"x[{i}]" for i in range(n)] + [f"u[{i}]" for i in range(m)],
    )
    # a plain StateSpace (what a user would simulate), states ordered [x; x̄]
    return control.ss(cl.A, cl.B, cl.C, cl.D, P.dt)


def run_python_control(pb: Problem, steps: int, ntraj: int, burn_in: int, seed: int) -> dict:
    import control

    sys_cl = python_control_system(pb)
    rng = np.random.default_rng(seed)
    t = np.arange(steps) * pb.plant.dt
    Qz = np.block([[pb.Q, np.zeros((pb.n, pb.m))], [np.zeros((pb.m, pb.n)), pb.R]])
    S = np.zeros((pb.n + pb.p, pb.n + pb.p))
    S[: pb.n, : pb.n], S[pb.n:, pb.n:] = pb.Wh, pb.Vh
    m0 = pb.plant.m0
    lo = _burn(steps, burn_in)
    costs = []
    control.forced_response(sys_cl, T=t[:10], U=np.zeros((pb.n + pb.p, 10)), X0=np.zeros(2 * pb.n))  # warm-up
    t_start = time.perf_counter()
    for _ in range(ntraj):
        U = S @ rng.standard_normal((pb.n + pb.p, steps))
        x0 = m0 + pb.P0h @ rng.standard_normal(pb.n)
        resp = control.forced_response(sys_cl, T=t, U=U, X0=np.concatenate([x0, m0]))
        z = resp.outputs[:, lo:]
        costs.append(float(np.einsum("it,ij,jt->", z, Qz, z)) / z.shape[1])
    el = time.perf_counter() - t_start
    mean, half = _ci(np.array(costs))
    return dict(method="python-control", device="cpu", dtype="float64", batch=ntraj, steps=steps, burn_in=lo,
                seconds=el, rate=ntraj * steps / el, cost=mean, half=half, note="forced_response, 1 traj/call")


# ----------------------------------------------------------------------------- (b)
def run_numpy(pb: Problem, batch: int, steps: int, burn_in: int, seed: int, repeat: int) -> dict:
    P, K, Lf = pb.plant, pb.design.K, pb.design.Lf
    A_T, B_T, C_T = P.A.T.copy(), P.B.T.copy(), P.C.T.copy()
    Lf_T, mK_T = Lf.T.copy(), (-K).T.copy()
    Wh_T, Vh_T, P0h_T = pb.Wh.T.copy(), pb.Vh.T.copy(), pb.P0h.T.copy()
    n = pb.n
    lo = _burn(steps, burn_in)

    def once():
        rng = np.random.default_rng(seed)
        x = P.m0 + rng.standard_normal((batch, n)) @ P0h_T
        xbar = np.broadcast_to(P.m0, (batch, n)).copy()
        total = np.zeros(batch)
        for t in range(steps):
            e = rng.standard_normal((batch, n + pb.p))
            w, v = e[:, :n] @ Wh_T, e[:, n:] @ Vh_T
            y = x @ C_T + v
            xhat = xbar + (y - xbar @ C_T) @ Lf_T
            u = xhat @ mK_T
            if t >= lo:
                total += np.einsum("bi,ij,bj->b", x, pb.Q, x) + np.einsum("bi,ij,bj->b", u, pb.R, u)
            x = x @ A_T + u @ B_T + w
            xbar = xhat @ A_T + u @ B_T
        return total / (steps - lo)

    el, per = timed(once, "cpu", repeat)
    mean, half = _ci(per)
    return dict(method="numpy loop", device="cpu", dtype="float64", batch=batch, steps=steps, burn_in=lo,
                seconds=el, rate=batch * steps / el, cost=mean, half=half, note="batched, 1 step/iter")


# ----------------------------------------------------------------------------- (c, d)
def run_lqgt(pb: Problem, device: str, dtype: torch.dtype, batch: int, steps: int, burn_in: int, seed: int,
             repeat: int, backend: str = "torch") -> dict:
    K = pb.design.K
    est = {"kalman": pb.kalman()}
    lo = _burn(steps, burn_in)
    kw = dict(Q=pb.Q, R=pb.R, batch=batch, seed=seed, device=device, dtype=dtype, store=False, backend=backend)
    lqgt.simulate(pb.plant, K, est, horizon=min(steps, 4), **kw)  # warm-up (kernels, handles)
    el, res = timed(lambda: lqgt.simulate(pb.plant, K, est, horizon=steps, burn_in=lo, **kw), device, repeat)
    lo_ci, hi_ci = res.cost_ci["kalman"]
    mem = ""
    if device.startswith("cuda"):
        mem = f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
        torch.cuda.reset_peak_memory_stats()
    return dict(method="lqgt" if backend == "torch" else "lqgt triton", device=device, dtype=str(dtype).replace("torch.", ""), batch=batch, steps=steps,
                burn_in=lo, seconds=el, rate=batch * steps / el, cost=res.cost["kalman"], half=(hi_ci - lo_ci) / 2,
                note=f"store=False chunk={res.settings['chunk']} {mem}".strip())


# ----------------------------------------------------------------------------- roofline
def step_costs(pb: Problem) -> dict:
    """Bytes and flops per trajectory-step (per element size ``s`` in bytes for the byte counts).

    torch path (store=False): randn writes e (n+p), the drive GEMM reads e and writes 2n,
    each addmm reads and writes 2n, the cost GEMMs read ξ (2n) and e (n+p) and write k:
    about ``3(n+p) + 5(2n) + 2k`` elements. Fused kernel: the state stays in registers,
    so only ξ[0] and the cost move once per trajectory (~0 per step). Useful flops (both):
    ξ F' (2(2n)²), e Gd (2(n+p)2n), the cost (2(2n + n+p)k + 3k); Philox adds about
    (n+p)/4 x 10 rounds x ~12 integer ops plus Box-Muller (log, sqrt, sin, cos) per pair.
    """
    n, p = pb.n, pb.p
    W, Q, k = 2 * n, n + p, n + pb.m
    flops = 2 * W * W + 2 * Q * W + 2 * (W + Q) * k + 3 * k
    return dict(torch_elems=3 * Q + 5 * W + 2 * k, flops=flops, int_ops=math.ceil(Q / 4) * 10 * 12)


def roofline(rows: list[dict], pb: Problem) -> None:
    sc = step_costs(pb)
    print("\n=== roofline (per trajectory-step; measured in this run) ===")
    for dname in sorted({r["dtype"] for r in rows if r["device"] == "cuda"}):
        dt = getattr(torch, dname)
        s = torch.finfo(dt).bits // 8
        bw, peak = measure_device(dt)
        mem_bound = bw / (sc["torch_elems"] * s)
        flop_bound = peak / sc["flops"]
        print(f"{dname}: copy bandwidth {bw / 1e12:.2f} TB/s, matmul peak {peak / 1e12:.1f} TFLOP/s; "
              f"torch path moves ~{sc['torch_elems'] * s} B/traj-step -> memory limit {mem_bound:.3g} traj-steps/s; "
              f"{sc['flops']} useful flop + ~{sc['int_ops']} Philox int ops/traj-step -> flop limit "
              f"{flop_bound:.3g} traj-steps/s (fused kernel: ~0 B/traj-step, compute-bound)")
        for r in rows:
            if r["device"] == "cuda" and r["dtype"] == dname:
                print(f"  {r['method']:<12} B={r['batch']:<8} {r['rate']:.3g} traj-steps/s = "
                      f"{r['rate'] / mem_bound:.2f} x memory limit of the torch path, "
                      f"{r['rate'] * sc['flops'] / peak:.3f} of the matmul peak")


# ----------------------------------------------------------------------------- main
def _fmt_rate(r: float) -> str:
    return f"{r:.3g}"


def print_table(rows: list[dict], exact: float, pc_rate: float | None, out=sys.stdout) -> None:
    head = (f"{'method':<15}{'device':<7}{'dtype':<8}{'batch':>8}{'steps':>6}{'traj-steps/s':>13}"
            f"{'x pyctrl':>10}{'MC cost':>9}{'±95%':>8}{'expected':>9}{'z':>6}")
    print(head, file=out)
    print("-" * len(head), file=out)
    for r in rows:
        ratio = f"{r['rate'] / pc_rate:.3g}" if pc_rate else "-"
        half = r["half"]
        z = (r["cost"] - r["expected"]) / (half / Z95) if math.isfinite(half) and half > 0 else float("nan")
        print(f"{r['method']:<15}{r['device']:<7}{r['dtype']:<8}{r['batch']:>8}{r['steps']:>6}{_fmt_rate(r['rate']):>13}"
              f"{ratio:>10}{r['cost']:>9.5f}{half:>8.5f}{r['expected']:>9.5f}{z:>6.2f}", file=out)
    print(f"exact stationary LQG cost (lqgt.lqg(...).cost, current form): {exact:.6f}. MC cost: mean per step over "
          f"steps burn_in..steps-1 from x0 ~ N(m0, P0); 'expected' is its exact expectation for that run length "
          f"(= the stationary cost for long runs); z = (MC - expected) / standard error.", file=out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="1e3,1e4,1e5,1e6", help="comma-separated batch sizes")
    ap.add_argument("--devices", default="auto", help="comma-separated: cpu, cuda (auto: cpu and cuda if available)")
    ap.add_argument("--horizon", type=int, default=1000, help="steps T per trajectory")
    ap.add_argument("--burn-in", type=int, default=100, help="steps left out of the MC cost (at most half a run)")
    ap.add_argument("--methods", default="python-control,numpy,lqgt,triton",
                    help="comma-separated subset (triton: lqgt's fused kernel, CUDA only)")
    ap.add_argument("--pc-traj", type=int, default=20, help="trajectories for python-control (one call each)")
    ap.add_argument("--cpu-budget", type=float, default=3e7,
                    help="trajectory-steps per CPU run (numpy, lqgt CPU): large batches run fewer steps")
    ap.add_argument("--numpy-max-batch", type=float, default=1e6, help="largest batch for the numpy loop")
    ap.add_argument("--cpu-float32", action="store_true", help="also run lqgt on CPU in float32")
    ap.add_argument("--gpu-dtypes", default="float32,float64")
    ap.add_argument("--repeat", type=int, default=3, help="timed repeats (median) for lqgt and numpy")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    ap.add_argument("--no-prefetch", action="store_true",
                    help="lqgt CPU: draw noise in the main thread (A/B of the prefetch thread)")
    ap.add_argument("--scan-max-row", type=float, default=None,
                    help="lqgt CUDA: override the batch*2n threshold below which a chunk is advanced by a "
                         "log-depth scan instead of one launch per step (0: never scan)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write all rows here")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    sim_mod = importlib.import_module("lqgt.simulate")
    if args.no_prefetch:
        sim_mod._CPU_PREFETCH = False
    if args.scan_max_row is not None:
        sim_mod._SCAN_MAX_ROW = int(args.scan_max_row)
    batches = ints(args.batches)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.devices == "auto" else \
        [d.strip() for d in args.devices.split(",") if d.strip()]
    if "cuda" in devices and not torch.cuda.is_available():
        print("CUDA not available: skipping cuda", file=sys.stderr)
        devices.remove("cuda")
    methods = {m.strip() for m in args.methods.split(",")}
    T = args.horizon
    pb = Problem()

    info = [f"python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}",
            f"CPU: {os.cpu_count()} logical cores visible, affinity {len(os.sched_getaffinity(0))}, "
            f"torch threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}, "
            f"noise prefetch thread {'off (--no-prefetch)' if args.no_prefetch else sim_mod._spare_core() and 'on' or 'off (no spare core)'}"]
    if torch.cuda.is_available():
        info.append(f"GPU: {torch.cuda.get_device_name(0)}; lqgt scans chunks on CUDA when batch*2n <= "
                    f"{sim_mod._SCAN_MAX_ROW}")
    try:
        control = importlib.import_module("control")
        info.append(f"python-control {control.__version__}")
    except ImportError:
        control = None
        info.append("python-control: not installed (method (a) skipped)")
    for line in info:
        print(line, flush=True)
    print(f"plant two_mass n={pb.n} m={pb.m} p={pb.p}, LQG current form, T={T}, exact cost {pb.exact:.6f}", flush=True)

    rows: list[dict] = []
    pc_rate = None

    def add(row):
        row["expected"] = pb.expected(row["steps"], row["burn_in"])
        rows.append(row)
        print(f"  {row['method']:<15}{row['device']:<6}{row['dtype']:<8} B={row['batch']:<8} steps={row['steps']:<5} "
              f"{row['rate']:.3g} traj-steps/s  ({row['seconds']:.2f} s)  cost {row['cost']:.5f} ± {row['half']:.5f} "
              f"(expected {row['expected']:.5f})  "
              f"{row['note']}", flush=True)

    if "python-control" in methods and control is not None:  # the baseline, on the CPU whatever --devices says
        row = run_python_control(pb, T, args.pc_traj, args.burn_in, args.seed)
        pc_rate = row["rate"]
        add(row)

    def cpu_steps(b):
        return max(2, min(T, int(args.cpu_budget // b)))

    if "numpy" in methods and "cpu" in devices:
        for b in batches:
            if b <= args.numpy_max_batch:
                s = cpu_steps(b)
                add(run_numpy(pb, b, s, args.burn_in, args.seed, repeat=1 if b * s >= 1e7 else args.repeat))

    if "lqgt" in methods:
        cfgs = []
        if "cpu" in devices:
            cfgs.append(("cpu", torch.float64))
            if args.cpu_float32:
                cfgs.append(("cpu", torch.float32))
        if "cuda" in devices:
            cfgs += [("cuda", getattr(torch, d.strip())) for d in args.gpu_dtypes.split(",") if d.strip()]
        for dev, dt in cfgs:
            for b in batches:
                s = cpu_steps(b) if dev == "cpu" else T
                add(run_lqgt(pb, dev, dt, b, s, args.burn_in, args.seed, args.repeat))
                if dev == "cuda" and "triton" in methods:  # the fused kernel next to the torch path
                    add(run_lqgt(pb, dev, dt, b, s, args.burn_in, args.seed, args.repeat, backend="triton"))

    print("\n=== closed-loop Monte Carlo throughput (two_mass, LQG current form; higher is better) ===")
    print_table(rows, pb.exact, pc_rate)
    if "cuda" in devices:
        roofline(rows, pb)
    for line in info:
        print(line)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(info=info, exact=pb.exact, horizon=T, rows=rows), fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
