"""Sequential vs time-parallel Kalman filter: wall time, speedup, agreement.

For every configuration (device × n × batch × T) this script times
``lqgt.filtering.kalman_filter`` with ``method="sequential"`` (the step-by-step torch
recursion: the baseline, measured in the same run) and ``method="parallel"`` in the
covariance form and the information form (associative scan, ``O(log T)`` depth), each as
the median of ``--repeats`` runs after a warm-up, with ``torch.cuda.synchronize()`` around
every timed call on CUDA. It prints one table row per configuration with the speedup of the
faster parallel form over the sequential filter and the largest relative difference of the
filtered means and the log-likelihood between the methods.

The model is a random stable system with ``n`` states and ``p = max(1, n // 2)`` outputs
(``W``, ``V``, ``P0`` positive definite, so that both forms apply); the data are standard
normal (timings do not depend on the values).

Configurations that would take too long (estimated from the previous, shorter ``T`` of the
same method) or need too much memory (estimated from the element sizes) print ``skipped``;
out-of-memory errors are caught and printed as ``OOM``. On CPU the default time budget
leaves out the big ones: pass ``--budget`` to change it.

Usage::

    python benchmarks/parallel_scan.py                          # CPU (and CUDA when present)
    python benchmarks/parallel_scan.py --device cpu --T 100,1000 --n 4 --batch 1
    python benchmarks/parallel_scan.py --device cuda --dtype float32 --json gpu.json

``--threads`` sets torch's CPU threads (1 by default: the matrices are tiny, and on a busy
machine every thread barrier can stall for a scheduler tick).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys

import numpy as np
import torch
from _common import ints, is_oom, timed

from lqgt.filtering import LinearGaussianModel, _scan_bytes, kalman_filter

METHODS = (("sequential", "covariance"), ("parallel", "covariance"), ("parallel", "information"))
LABELS = {("sequential", "covariance"): "seq", ("parallel", "covariance"): "par-cov",
          ("parallel", "information"): "par-info"}


def random_model(n: int, seed: int = 0) -> LinearGaussianModel:
    """A random stable model (spectral radius 0.95) with ``p = max(1, n // 2)`` outputs."""
    rng = np.random.default_rng(seed)
    p = max(1, n // 2)
    A = rng.standard_normal((n, n))
    A *= 0.95 / np.max(np.abs(np.linalg.eigvals(A)))
    C = rng.standard_normal((p, n))
    G = rng.standard_normal((n, n))
    W = G @ G.T / n + 0.1 * np.eye(n)
    V = 0.5 * np.eye(p)
    return LinearGaussianModel(A, None, C, W=W, V=V)


def free_memory(device: torch.device) -> float:
    """Bytes the run may use on ``device`` (CUDA: free memory; CPU: half the available RAM)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return float(free)
    try:
        import os

        pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return 0.5 * float(pages)
    except (ValueError, OSError, AttributeError):
        return 8e9


def estimated_bytes(method: str, n: int, p: int, B: int, T: int, itemsize: int) -> float:
    """Rough peak memory of one filter call (results plus scan temporaries)."""
    results = (2 * B * T * n + 2 * T * n * n + T * p * p) * itemsize
    if method == "sequential":
        return 2.5 * results
    return _scan_bytes(T, n, B, itemsize)  # the estimate method="auto" uses (measured on CPU)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.detach().double(), b.detach().double()
    return float((a64 - b64).abs().max() / b64.abs().max().clamp_min(1e-300))


def fmt_ms(v) -> str:
    if isinstance(v, str):
        return v
    return f"{1e3 * v:.1f}" if v < 10 else f"{1e3 * v:.0f}"


def run(args: argparse.Namespace) -> list[dict]:
    dtype = {"float64": torch.float64, "float32": torch.float32}[args.dtype]
    itemsize = torch.tensor([], dtype=dtype).element_size()
    devices = []
    for d in args.device.split(","):
        if d == "all":
            devices += ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        elif d == "cuda" and not torch.cuda.is_available():
            print("cuda: not available, skipped")
        else:
            devices.append(d)
    rows: list[dict] = []
    header = (f"| {'device':6} | {'dtype':7} | {'n':>3} | {'B':>5} | {'T':>7} | {'seq ms':>9} | "
              f"{'par-cov ms':>10} | {'par-info ms':>11} | {'speedup':>7} | {'max rel diff':>12} |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for dev_name in devices:
        device = torch.device(dev_name)
        budget = args.budget if args.budget is not None else (90.0 if device.type == "cuda" else 20.0)
        for n in args.n:
            model = random_model(n, seed=n)
            p = model.p
            for B in args.batch:
                per_step: dict[tuple[str, str], float] = {}  # seconds per step, from the last T
                for T in sorted(args.T):
                    row = dict(device=dev_name, dtype=args.dtype, n=n, B=B, T=T)
                    gen = torch.Generator(device="cpu").manual_seed(T)
                    try:
                        y = torch.randn(B, T, p, generator=gen, dtype=dtype).to(device)
                    except Exception as exc:
                        if not is_oom(exc):
                            raise
                        y = None
                    results = {}
                    for key in METHODS:
                        method, form = key
                        label = LABELS[key]
                        if key not in args.methods_keys:
                            row[label] = "-"
                            continue
                        if y is None:
                            row[label] = "OOM"
                            continue
                        if estimated_bytes(method, n, p, B, T, itemsize) > free_memory(device):
                            row[label] = "skipped"
                            continue
                        guess = per_step.get(key, 0.0) * T
                        if guess > budget:
                            row[label] = "skipped"
                            continue
                        repeats = args.repeats if guess * (args.repeats + 1) <= budget else 1
                        fn = lambda: kalman_filter(model, y, method=method, form=form, dtype=dtype,
                                                   device=device)
                        try:
                            if key not in per_step:
                                fn()  # warm-up (first-call costs, allocator); a shorter T warmed it otherwise
                            t, out = timed(fn, device, repeats)
                        except Exception as exc:
                            if not is_oom(exc):
                                raise
                            row[label] = "OOM"
                            if device.type == "cuda":
                                torch.cuda.empty_cache()
                            continue
                        row[label] = t
                        per_step[key] = t / T
                        results[label] = out
                        del out
                    seq = row.get("seq")
                    pars = [row[k] for k in ("par-cov", "par-info") if isinstance(row.get(k), float)]
                    row["speedup"] = (seq / min(pars)) if isinstance(seq, float) and pars else None
                    diffs = []
                    ref = results.get("seq")
                    for k in ("par-cov", "par-info"):
                        if ref is not None and k in results:
                            diffs.append(rel_diff(results[k].means, ref.means))
                            diffs.append(rel_diff(results[k].log_likelihood, ref.log_likelihood))
                    if not diffs and "par-cov" in results and "par-info" in results:
                        diffs = [rel_diff(results["par-info"].means, results["par-cov"].means)]
                    row["max_rel_diff"] = max(diffs) if diffs else None
                    results.clear()
                    rows.append(row)
                    sp = "-" if row["speedup"] is None else f"{row['speedup']:.2f}x"
                    df = "-" if row["max_rel_diff"] is None else f"{row['max_rel_diff']:.1e}"
                    print(f"| {dev_name:6} | {args.dtype:7} | {n:>3} | {B:>5} | {T:>7} | "
                          f"{fmt_ms(row.get('seq', '-')):>9} | {fmt_ms(row.get('par-cov', '-')):>10} | "
                          f"{fmt_ms(row.get('par-info', '-')):>11} | {sp:>7} | {df:>12} |", flush=True)
                    if device.type == "cuda":
                        del y
                        torch.cuda.empty_cache()
    return rows


def crossover(rows: list[dict]) -> None:
    """Print, per (device, n, B), the smallest T from which a parallel form beat the sequential one."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["device"], r["n"], r["B"]), []).append(r)
    print("\ncrossover (smallest measured T with speedup > 1):")
    for (dev, n, B), rs in groups.items():
        wins = [r["T"] for r in rs if r.get("speedup") is not None and r["speedup"] > 1.0]
        losses = [r["T"] for r in rs if r.get("speedup") is not None and r["speedup"] <= 1.0]
        if wins:
            print(f"  {dev} n={n} B={B}: parallel faster from T = {min(wins)}"
                  + (f" (slower at T = {sorted(losses)})" if losses else ""))
        elif losses:
            print(f"  {dev} n={n} B={B}: sequential faster at every measured T {sorted(losses)}")
        else:
            print(f"  {dev} n={n} B={B}: not enough measurements")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="all", help="cpu, cuda, all, or a comma list (default all)")
    ap.add_argument("--T", type=ints, default=ints("100,1000,10000,100000"), help="sequence lengths")
    ap.add_argument("--n", type=ints, default=ints("4,20"), help="state dimensions")
    ap.add_argument("--batch", type=ints, default=ints("1,1024"), help="batch sizes")
    ap.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per cell (median)")
    ap.add_argument("--budget", type=float, default=None,
                    help="skip a cell whose estimated time exceeds this many seconds "
                         "(default 20 on CPU, 90 on CUDA)")
    ap.add_argument("--methods", default="seq,par-cov,par-info",
                    help="comma list of seq, par-cov, par-info")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    wanted = {s.strip() for s in args.methods.split(",")}
    unknown = wanted - set(LABELS.values())
    if unknown:
        ap.error(f"unknown --methods {sorted(unknown)}")
    args.methods_keys = {k for k, v in LABELS.items() if v in wanted}
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, python {platform.python_version()}, "
          f"cpu threads {torch.get_num_threads()}"
          + (f", cuda {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
    rows = run(args)
    crossover(rows)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
