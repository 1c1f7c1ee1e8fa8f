"""Launch shapes of the fused Transformer Filter kernel: trajectory-steps/s per (block, warps).

Times :func:`lqgt.kernels.tf_loop.run_tf_loop` alone (its own Philox noise, no ``simulate``
around it) on ``two_mass`` under LQG with the Transformer Filter (β = 1e4), for each window
``H`` and dtype: the default shape (:func:`lqgt.kernels.tf_loop.launch_shape`) and four
neighbours (half the trajectories on 2 warps, twice on 8, the same on 2 and on 8 warps).
The first call's wall time (compile included, or Triton's disk cache) is printed beside.
CUDA and Triton only.

Usage::

    python benchmarks/tf_kernel_shapes.py                          # H = 8 32 128, float32 float64
    python benchmarks/tf_kernel_shapes.py --windows 32 --dtype float32 --batch 1e5
"""

from __future__ import annotations

import argparse
import time

import torch

import lqgt
from lqgt.kernels.tf_loop import TFLoop, _p2, launch_shape, run_tf_loop
from lqgt.lqg import _cost_weights
from lqgt.simulate import _Noise


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", nargs="+", type=int, default=[8, 32, 128])
    ap.add_argument("--dtype", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    ap.add_argument("--batch", type=float, default=1e6)
    ap.add_argument("--horizon", type=int, default=1000)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("tf_kernel_shapes.py needs CUDA (and Triton)")
    dev, B, T = torch.device("cuda"), int(args.batch), args.horizon
    plant, Q, R = lqgt.plants.two_mass()
    K = lqgt.lqg(plant, Q, R).K
    print(f"CUDA: {torch.cuda.get_device_name(0)}; two_mass, batch {B:.0e}, {T} steps; rates in trajectory-steps/s")
    print(f"{'dtype':>8} {'H':>4} {'block':>6} {'warps':>6} {'rate':>10} {'first call s':>13}")
    for dt_name in args.dtype:
        dt = getattr(torch, dt_name)
        for H in args.windows:
            tf = lqgt.TransformerFilter(plant, beta=1e4, window=H, K=K)
            nz = _Noise(plant, 8, 0, torch.device("cpu"), dt)
            loop = TFLoop.build(tf, plant, K, nz.Wh_np, nz.Vh_np, _cost_weights(plant, Q, R, None)[3], dev, dt)
            n, d = loop.dims[0], loop.dims[3]
            b0, w0 = launch_shape(H, torch.finfo(dt).bits // 8)
            for block, warps in ((b0, w0), (max(1, b0 // 2), 2), (b0 * 2, 8), (b0, 2), (b0, 8)):
                state = [torch.zeros(B, n, device=dev, dtype=dt), torch.zeros(B, n, device=dev, dtype=dt),
                         torch.zeros(d, B, _p2(H), device=dev, dtype=dt), torch.zeros(B, device=dev, dtype=dt)]
                run = lambda steps: run_tf_loop(loop, *state, t0=0, steps=steps, seed=1, block=block, num_warps=warps)
                t = time.perf_counter()
                run(4)
                torch.cuda.synchronize()
                first = time.perf_counter() - t
                best = float("inf")
                for _ in range(2):
                    t = time.perf_counter()
                    run(T)
                    torch.cuda.synchronize()
                    best = min(best, time.perf_counter() - t)
                tag = " (default)" if (block, warps) == (b0, w0) else ""
                print(f"{dt_name:>8} {H:>4} {block:>6} {warps:>6} {B * T / best:>10.3g} {first:>13.1f}{tag}", flush=True)


if __name__ == "__main__":
    main()
