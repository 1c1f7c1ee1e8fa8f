"""DARE / LQR solve time: lqgt vs scipy vs python-control, median per solve.

For n in ``--sizes`` (default 4, 10, 50) a random stabilizable system ``(A, B)`` with a
few unstable modes, ``Q = C'C + 1e-3 I`` and ``R = I`` is solved by

* ``lqgt.dare`` (structure-preserving doubling, scipy fallback) and ``lqgt.dlqr``,
* ``scipy.linalg.solve_discrete_are``,
* ``control.dare`` and ``control.dlqr`` (slycot if installed, else scipy),

each timed as the median over ``--repeat`` batches of calls (timeit), after a warm-up.
The ratios are measured in the same run; ``> 1`` means lqgt is faster. The relative
difference of each ``X`` to scipy's is shown as a sanity check. ``--breakdown`` times the
stages inside ``lqgt.dare`` (input checks, stabilizability test, SDA iteration, residual,
gain and stability check) at the smallest size.

Usage::

    python benchmarks/riccati.py
    python benchmarks/riccati.py --sizes 4,10 --repeat 7 --breakdown
"""

from __future__ import annotations

import os

# Small dense problems: single-threaded BLAS/LAPACK for every method (threads only add
# synchronisation, and on a busy machine each barrier can stall for a scheduler tick).
# Set LQGT_BENCH_THREADS=keep to leave the libraries' defaults.
if os.environ.get("LQGT_BENCH_THREADS") != "keep":
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import timeit  # noqa: E402

import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402

import lqgt  # noqa: E402


def random_system(n: int, m: int, seed: int) -> tuple[np.ndarray, ...]:
    """A random stabilizable (A, B) with spectral radius about 1.1, Q = C'C + 1e-3 I, R = I."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, n))
    A *= 1.1 / max(abs(np.linalg.eigvals(A)))
    B = rng.standard_normal((n, m))
    C = rng.standard_normal((max(1, n // 2), n))
    Q = C.T @ C + 1e-3 * np.eye(n)
    R = np.eye(m)
    return A, B, Q, R


def median_time(fn, repeat: int, min_time: float = 0.05) -> float:
    """Median seconds per call over ``repeat`` batches, each batch lasting about ``min_time``."""
    fn()
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    number = max(1, int(number * min_time / 0.2))
    return statistics.median(t / number for t in timer.repeat(repeat=repeat, number=number))


def rel(X: np.ndarray, Y: np.ndarray) -> float:
    return float(np.abs(X - Y).max() / max(1.0, float(np.abs(Y).max())))


def breakdown(A, B, Q, R, repeat: int) -> list[tuple[str, float]]:
    """Time the stages of lqgt.dare (internals; for the notes, not an API)."""
    from lqgt import riccati as ric
    from lqgt._linalg import check_stabilizable

    A_, B_, Q_, R_, S_, _, _ = ric._check_lq(A, B, Q, R, None, ("A", "B", "Q", "R", "S"), lq=False)
    Rinv_St = np.linalg.solve(R_, S_.T)
    Qs_ = ric.symmetrize(Q_ - S_ @ Rinv_St)
    As = A_ - B_ @ Rinv_St
    G = ric.symmetrize(B_ @ np.linalg.solve(R_, B_.T))
    X = ric._sda(As, G, Qs_)
    stages = [
        ("_check_lq (as_matrix, symmetry checks)", lambda: ric._check_lq(A, B, Q, R, None, ("A", "B", "Q", "R", "S"), lq=False)),
        ("check_stabilizable (PBH)", lambda: check_stabilizable(A_, B_, ("A", "B"))),
        ("_check_unit_circle_observable", lambda: ric._check_unit_circle_observable(As, Qs_, ("A", "Q"))),
        ("_sda (doubling iteration)", lambda: ric._sda(As, G, Qs_)),
        ("_residual", lambda: ric._residual(A_, B_, Q_, R_, S_, X)),
        ("gain K + spectral_radius(A-BK)", lambda: ric._gain(A_, B_, R_, S_, X)),
        ("whole lqgt.dare", lambda: lqgt.dare(A, B, Q, R)),
    ]
    return [(name, median_time(fn, repeat)) for name, fn in stages]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="4,10,50")
    ap.add_argument("--repeat", type=int, default=7, help="timing batches per method (median)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--breakdown", action="store_true", help="time the stages of lqgt.dare at the smallest n")
    args = ap.parse_args(argv)
    try:
        import control
    except ImportError:
        control = None
    slycot = bool(control is not None and getattr(control, "slycot_check", lambda: False)())
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    print(f"BLAS threads: OMP={os.environ.get('OMP_NUM_THREADS', 'default')} "
          f"OPENBLAS={os.environ.get('OPENBLAS_NUM_THREADS', 'default')}")
    print(f"numpy {np.__version__}, scipy {scipy.__version__}, "
          f"python-control {getattr(control, '__version__', 'not installed')} (slycot {'yes' if slycot else 'no'})")

    rows = []
    for n in sizes:
        m = {4: 2, 10: 3}.get(n, max(1, n // 5))
        A, B, Q, R = random_system(n, m, args.seed + n)
        Xs = scipy.linalg.solve_discrete_are(A, B, Q, R)
        t = {
            "lqgt.dare": median_time(lambda: lqgt.dare(A, B, Q, R), args.repeat),
            "scipy.solve_discrete_are": median_time(lambda: scipy.linalg.solve_discrete_are(A, B, Q, R), args.repeat),
            "lqgt.dlqr": median_time(lambda: lqgt.dlqr(A, B, Q, R), args.repeat),
        }
        err = {"lqgt.dare": rel(lqgt.dare(A, B, Q, R)[0], Xs), "lqgt.dlqr": rel(lqgt.dlqr(A, B, Q, R)[1], Xs)}
        if control is not None:
            t["control.dare"] = median_time(lambda: control.dare(A, B, Q, R), args.repeat)
            t["control.dlqr"] = median_time(lambda: control.dlqr(A, B, Q, R), args.repeat)
            err["control.dare"] = rel(control.dare(A, B, Q, R)[0], Xs)
        rows.append((n, m, t, err))
        print(f"  n={n} m={m}: " + ", ".join(f"{k} {v * 1e6:.0f} us" for k, v in t.items()), flush=True)

    print("\n=== DARE solve time, median per call (microseconds; lower is better) ===")
    head = (f"{'n':>3}{'m':>3}{'lqgt.dare':>11}{'scipy':>9}{'ctrl.dare':>11}{'lqgt.dlqr':>11}{'ctrl.dlqr':>11}"
            f"{'ctrl/lqgt':>11}{'scipy/lqgt':>11}{'dlqr c/l':>10}{'|X-Xscipy|':>12}")
    print(head)
    print("-" * len(head))
    for n, m, t, err in rows:
        us = {k: v * 1e6 for k, v in t.items()}
        ld, ll, sp = us["lqgt.dare"], us["lqgt.dlqr"], us["scipy.solve_discrete_are"]
        cd, cl = us.get("control.dare"), us.get("control.dlqr")
        cd_s, cl_s = (f"{cd:.0f}", f"{cl:.0f}") if cd else ("-", "-")
        r_cd, r_cl = (f"{cd / ld:.2f}", f"{cl / ll:.2f}") if cd else ("-", "-")
        print(f"{n:>3}{m:>3}{ld:>11.0f}{sp:>9.0f}{cd_s:>11}{ll:>11.0f}{cl_s:>11}{r_cd:>11}{sp / ld:>11.2f}{r_cl:>10}"
              f"{err['lqgt.dare']:>12.1e}")
    print("ratios: ctrl/lqgt = control.dare time / lqgt.dare time (> 1: lqgt faster); "
          "dlqr c/l = control.dlqr / lqgt.dlqr")

    if args.breakdown:
        n = sizes[0]
        m = {4: 2, 10: 3}.get(n, max(1, n // 5))
        A, B, Q, R = random_system(n, m, args.seed + n)
        print(f"\n=== where lqgt.dare's time goes at n={n} (median us per call) ===")
        for name, sec in breakdown(A, B, Q, R, args.repeat):
            print(f"  {name:<40}{sec * 1e6:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
