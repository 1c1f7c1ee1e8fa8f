"""Doyle's example: LQG loops have no guaranteed margins, LQR loops do.

J. C. Doyle, "Guaranteed margins for LQG regulators", IEEE TAC 23(4), 1978. The plant

    dx = [[1, 1], [0, 1]] x dt + [0; 1] u dt + [1; 1] dw,     y = [1, 0] x + v,

has state weight ``Q = q [1 1; 1 1]`` (``H'H`` with ``H = sqrt(q) [1 1]``), ``R = 1``, process
noise density ``Wc = σ [1; 1][1 1]`` and measurement noise density 1. In continuous time
``K = f [1 1]``, ``f = 2 + sqrt(4 + q)``, and the Kalman gain is ``d [1; 1]``,
``d = 2 + sqrt(4 + σ)``; the LQG loop is stable only for input gains below
``1 + 1/(f d)``, which tends to 1 as σ grows, while the LQR loop keeps its ``[1/2, ∞)``
gain and 60° phase margins.

Here the plant is sampled at ``dt`` (ZOH, Van Loan; measurement noise of density 1 has
per-sample variance ``V = 1/dt``) and, for each σ, this script prints the margins of
the LQR loop ``K (zI - A)^{-1} B`` and of the LQG loop ``Kc(z) P(z)`` (both broken at
the plant input, current and predictor forms) computed by :func:`lqgt.loop_margins`,
with the discrete LQR guarantee of :func:`lqgt.lqr_guaranteed_margins`, and writes

* ``doyle_bode.png``: Bode plots of the LQR loop and of LQG loops at three σ;
* ``doyle_margins.png``: phase margin and disk margin against σ;
* ``doyle_disk_margin.png``: the disk margin against frequency (:func:`lqgt.disk_margins`,
  :func:`lqgt.plot.disk_margin`) of the LQR loop and of the LQG loop at the largest σ.

Run ``python examples/doyle_margins.py --out doyle-example/`` (a few seconds).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

import lqgt
from lqgt.frequency import (
    loop_margins,
    loop_transfer,
    lqr_guaranteed_margins,
    lqr_loop_transfer,
)
from lqgt.plot import bode, disk_margin

SIGMAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="doyle-example/", help="output directory for the PNGs (default: doyle-example/)")
    ap.add_argument("--dt", type=float, default=0.01, help="sample time in seconds (default: 0.01)")
    ap.add_argument("--q", type=float, default=1.0, help="state weight q (default: 1)")
    ap.add_argument("--sigmas", type=float, nargs="+", default=list(SIGMAS), help="noise weights σ")
    return ap.parse_args(argv)


def doyle(sigma: float, q: float, dt: float) -> tuple[lqgt.Plant, lqgt.LQGDesign]:
    """Doyle's plant sampled at ``dt`` and its LQG design."""
    Ac = np.array([[1.0, 1.0], [0.0, 1.0]])
    Bc = np.array([[0.0], [1.0]])
    C = np.array([[1.0, 0.0]])
    G = np.array([[1.0], [1.0]])
    plant = lqgt.Plant.from_continuous(Ac, Bc, C, Wc=sigma * G @ G.T, V=[[1.0 / dt]], dt=dt)
    return plant, lqgt.lqg(plant, q * np.ones((2, 2)), [[1.0]])


def fmt_gain(m) -> str:
    """The stable gain interval ``[k_lo, k_hi]``."""
    hi = "inf" if math.isinf(m.gain_margin) else f"{m.gain_margin:.4f}"
    return f"[{m.gain_margin_lower:.4f}, {hi}]"


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    f = 2 + math.sqrt(4 + args.q)
    rows, loops = [], {}
    for sigma in args.sigmas:
        plant, design = doyle(sigma, args.q, args.dt)
        lqr = loop_margins(lqr_loop_transfer(plant, design))
        cur = loop_margins(loop_transfer(plant, design, "input", "current"))
        pred = loop_margins(loop_transfer(plant, design, "input", "predictor"))
        rows.append((sigma, lqr, cur, pred, lqr_guaranteed_margins(plant, design), 2 + math.sqrt(4 + sigma)))
        loops[sigma] = (plant, design)

    print(f"Doyle's example, q = {args.q:g}, dt = {args.dt:g} s (f = {f:.4f}); loops broken at the plant input.")
    print("Gain interval [k_lo, k_hi]: the closed loop with input gain k is stable for k_lo < k < k_hi.")
    print("PM: phase margin (deg); DM: balanced disk margin α (skew 0) and its phase margin (deg).\n")
    head = (f"{'sigma':>8} | {'LQR gains':>20} {'PM':>6} {'DM':>6} | {'LQG (current) gains':>20} {'PM':>6} "
            f"{'DM':>7} {'DPM':>6} | {'1+1/(fd)':>8} | {'LQG (predictor) gains':>21} {'PM':>6} {'DM':>7}")
    print(head)
    print("-" * len(head))
    for sigma, lqr, cur, pred, bound, d in rows:
        print(f"{sigma:8.3g} | {fmt_gain(lqr):>20} {lqr.phase_margin:6.2f} {lqr.disk_margin:6.3f} | "
              f"{fmt_gain(cur):>20} {cur.phase_margin:6.3f} {cur.disk_margin:7.4f} {cur.disk_phase_margin:6.3f} | "
              f"{1 + 1 / (f * d):8.4f} | {fmt_gain(pred):>21} {pred.phase_margin:6.3f} {pred.disk_margin:7.4f}")
    b = rows[0][4]
    print(f"\nDiscrete LQR guarantee (return difference, ρ = sqrt(R / (R + B'XB)) = {b.rho:.4f}): gains in "
          f"({b.gain_margin_lower:.4f}, {b.gain_margin:.2f}), PM ≥ {b.phase_margin:.2f}° "
          "(continuous time: ρ = 1, [0.5, inf), 60°).")
    print("1+1/(fd): Doyle's continuous-time upper gain limit of the LQG loop, d = 2 + sqrt(4 + σ).")

    # Bode plot: LQR loop and LQG loops at three noise weights
    pick = [args.sigmas[0], args.sigmas[len(args.sigmas) // 2], args.sigmas[-1]]
    plant0, design0 = loops[pick[0]]
    curves = {"LQR  K(zI−A)⁻¹B": lqr_loop_transfer(plant0, design0)}
    styles = {"LQR  K(zI−A)⁻¹B": {"color": "k", "linewidth": 2.2}}
    for i, sigma in enumerate(pick):
        plant, design = loops[sigma]
        name = f"LQG  σ = {sigma:g}"
        curves[name] = loop_transfer(plant, design, "input", "current")
        styles[name] = {"color": f"C{i}"}
    nyq = math.pi / args.dt
    omega = np.geomspace(1e-3, 0.999 * nyq, 2000)
    ax_m, ax_p = bode(curves, omega=omega, styles=styles, phase_center=-180.0,
                      title=f"Doyle's example: loop transfers at the plant input (q = {args.q:g}, dt = {args.dt:g} s)")
    ax_m.set_ylim(-60, 80)
    ax_m.figure.set_size_inches(8.0, 6.4)
    p1 = out / "doyle_bode.png"
    ax_m.figure.savefig(p1, dpi=120)

    # margins against sigma
    fig = Figure(figsize=(8.0, 3.6), layout="constrained")
    a1, a2 = fig.subplots(1, 2)
    s = np.array([r[0] for r in rows])
    for ax, attr, label in ((a1, "phase_margin", "phase margin (deg)"), (a2, "disk_margin", "disk margin α (skew 0)")):
        ax.plot(s, [getattr(r[1], attr) for r in rows], "k-o", label="LQR")
        ax.plot(s, [getattr(r[2], attr) for r in rows], "C3-s", label="LQG (current)")
        ax.plot(s, [getattr(r[3], attr) for r in rows], "C0--^", label="LQG (predictor)", markersize=4)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("process-noise weight σ (spectral density)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    a1.axhline(60.0, color="0.4", linestyle=":", linewidth=1.0)
    a1.text(s[-1], 52.0, "60°: continuous-time LQR guarantee", ha="right", va="top", fontsize="x-small", color="0.3")
    a1.set_ylim(top=150.0)
    a1.legend(fontsize="small")
    fig.suptitle(f"Margins shrink with σ for LQG, not for LQR (q = {args.q:g}, dt = {args.dt:g} s)",
                 fontsize="medium")
    p2 = out / "doyle_margins.png"
    fig.savefig(p2, dpi=120)

    # disk margin against frequency: LQR loop and the LQG loop at the largest σ
    plant, design = loops[args.sigmas[-1]]
    dm_lqr = lqgt.disk_margins(lqr_loop_transfer(plant, design))
    dm_lqg = lqgt.disk_margins((plant, design), at="input")
    ax = disk_margin(dm_lqr, label="LQR  K(zI−A)⁻¹B", color="k")
    disk_margin(dm_lqg, ax=ax, label=f"LQG (current), σ = {args.sigmas[-1]:g}", color="C3")
    ax.set_title("Doyle's example: balanced disk margin against frequency", fontsize="medium")
    ax.legend(fontsize="x-small", loc="best")
    p3 = out / "doyle_disk_margin.png"
    ax.figure.savefig(p3, dpi=120)
    print(f"disk margins (lqgt.disk_margins): LQR α = {dm_lqr.alpha:.4f} at ω = {dm_lqr.omega_worst:.3g} rad/s; "
          f"LQG σ = {args.sigmas[-1]:g}: α = {dm_lqg.alpha:.4g} at ω = {dm_lqg.omega_worst:.3g} rad/s")
    print(f"\nwrote {p1}, {p2} and {p3}")


if __name__ == "__main__":
    main()
