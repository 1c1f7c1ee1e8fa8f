"""The ``lqgt`` command line: ``lqgt demo`` and ``lqgt compare CONFIG`` (see :mod:`lqgt.compare`).

``lqgt demo`` designs the LQG controller of the default plant (:func:`lqgt.plants.default`),
simulates the closed loop with several estimators on common random numbers, prints a
table of exact and Monte Carlo costs and writes ``table.md``, ``table.csv``,
``results.json``, ``trajectories.png`` and ``cost.png`` into ``--out``. Every file is
written atomically (see :mod:`lqgt._io`).

The rows of the demo come from :func:`demo_estimators`, a dict
``{name: (estimator, exact_cost or None)}``; add a row there to compare a new estimator.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence, TextIO

from .report import (
    DemoRow,
    _csv_text,
    _exact_in_ci,
    _figure,
    _json_num,
    _row_costs,
    _save_costs,
    _save_trajectories,
    _write_results,
    check_out,
    exact_cost,
    format_sweep,
    format_table,
    is_diverged,
)

__all__ = ["main", "build_parser", "demo_estimators", "exact_cost", "run_demo", "DemoRow", "format_table", "format_sweep"]

#: Inverse temperatures β and window of the Transformer Filter controllers in the demo table.
DEMO_BETAS = (10.0, 100.0)
DEMO_WINDOW = 32
#: β grid of the demo's β-sweep (cost gap and certificate plots).
SWEEP_BETAS = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 1e4, 1e5)

#: Axis labels (with units) of the signals plotted for the default plant (two_mass).
_P1_LABEL = "p1: cart 1 position (m)"
_U_LABEL = "u: force on cart 1 (N)"


def demo_estimators(plant, Q, R, design) -> dict[str, tuple[Any, float | None]]:
    """The estimators ``lqgt demo`` compares, with their exact costs.

    Parameters
    ----------
    plant : lqgt.Plant
        The plant.
    Q : array_like, shape (n, n)
        State weight.
    R : array_like, shape (m, m)
        Input weight.
    design : lqgt.LQGDesign
        The LQG design (its ``K`` closes every loop).

    Returns
    -------
    dict of str to (estimator, float or None)
        ``{name: (estimator, exact cost or None)}``, in table order. To add a row, add an
        entry; use ``None`` as the exact cost of an estimator without a closed form.
    """
    from .estimators import KalmanFilter, OpenLoopObserver, TransformerFilter

    ests = {
        "kalman (current)": KalmanFilter(plant, "current"),
        "kalman (predictor)": KalmanFilter(plant, "predictor"),
        "open-loop observer (no feedback)": OpenLoopObserver(plant),
    }
    for beta in DEMO_BETAS:
        ests[f"transformer filter (β={beta:g}, H={DEMO_WINDOW})"] = TransformerFilter(
            plant, beta=beta, window=DEMO_WINDOW, K=design.K)
    return {name: (est, exact_cost(plant, Q, R, design.K, est)) for name, est in ests.items()}


def run_demo(out: str | Path = "lqgt-demo", *, device: str = "cpu", batch: int = 2000, horizon: int = 1000,
             burn_in: int = 300, seed: int = 0, progress: bool = True, stream: TextIO | None = None) -> dict:
    """Run the demo: design, simulate, print the table and write the files into ``out``.

    Parameters
    ----------
    out : str or pathlib.Path
        Output directory (created if missing).
    device : {"cpu", "cuda"}
        Simulation device.
    batch : int
        Trajectories per estimator.
    horizon : int
        Steps per trajectory.
    burn_in : int
        Steps left out of the cost average.
    seed : int
        Noise seed.
    progress : bool
        Show a progress bar while simulating.
    stream : text file, optional
        Where the table and messages go (default: ``sys.stdout``).

    Returns
    -------
    dict
        What was written to ``results.json``.
    """
    import torch

    from . import __version__, plants
    from ._io import atomic_savefig, atomic_write_text
    from .lqg import lqg
    from .plot import attention_heatmap, beta_sweep_gap, certificate
    from .simulate import simulate
    from .sweep import beta_sweep

    stream = sys.stdout if stream is None else stream
    out = check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    plant, Q, R = plants.default()
    design = lqg(plant, Q, R)
    rows_in = demo_estimators(plant, Q, R, design)
    print(f"lqgt {__version__} demo: plant two_mass (n={plant.n}, m={plant.m}, p={plant.p}, dt={plant.dt:g} s), "
          f"{len(rows_in)} estimators, batch {batch} x {horizon} steps (cost over steps {burn_in}..{horizon - 1}), "
          f"device {device}, torch {torch.__version__}", file=stream, flush=True)

    t_sim = time.perf_counter()
    res = simulate(plant, design.K, {name: est for name, (est, _) in rows_in.items()}, Q=Q, R=R,
                   horizon=horizon, batch=batch, burn_in=burn_in, seed=seed, device=device, progress=progress)
    t_sim = time.perf_counter() - t_sim

    optimum = design.cost
    rows = []
    # rows without an exact cost: J ≈ J* + (MC_row − MC_LQG) on common noise, far tighter than MC_row alone
    lqg_name = next(name for name, (_, ex) in rows_in.items() if ex is not None and abs(ex - optimum) <= 1e-12 * optimum)
    for name, (est, ex) in rows_in.items():
        mc = res.cost[name]
        ref = ex if ex is not None else optimum + (mc - res.cost[lqg_name])
        rows.append(DemoRow(name=name, form=est.form, exact=ex, mc=mc, ci=tuple(res.cost_ci[name]),
                            gap=ref / optimum - 1.0, diverged=is_diverged(mc, ex, optimum)))
    table = format_table(rows, optimum)
    note = (f"LQG optimum J* = {optimum:.6g} (exact, Kalman current form). Costs are average per step of "
            f"x'Qx + u'Ru; MC over {batch} trajectories, steps {burn_in}..{horizon - 1}, seed {seed}; "
            f"the gap uses the exact cost where known, else (marked MC) J* + MC − MC of the LQG row on the same noise.\n")
    print("\n" + table + "\n" + note, file=stream, flush=True)

    # figures
    files = {"trajectories.png": _save_trajectories(
        res, out / "trajectories.png", state=0, input=0, k=2.0, state_label=_P1_LABEL, input_label=_U_LABEL,
        title=f"two_mass (dt = {plant.dt:g} s) under LQG feedback u = −K x̂, per estimator")}
    files["cost.png"] = _save_costs(res, {r.name: r.exact for r in rows}, optimum, out / "cost.png",
                                    title=f"two_mass: cost per estimator ({batch} runs)")

    # Transformer Filter: β-sweep of the cost gap and the certificate, attention weights
    t_sweep = time.perf_counter()
    sb, sh, sbi = min(batch, 256), min(horizon, 400), min(burn_in, 100)
    print(f"β-sweep of the Transformer Filter controller: {len(SWEEP_BETAS)} values of β, H = {DEMO_WINDOW}, "
          f"{sb} trajectories x {sh} steps", file=stream, flush=True)
    sweep = beta_sweep(plant, Q, R, SWEEP_BETAS, window=DEMO_WINDOW, batch=sb, horizon=sh, burn_in=min(sbi, sh - 1),
                       seed=seed, device=device, progress=progress)
    t_sweep = time.perf_counter() - t_sweep
    print("\n" + format_sweep(sweep), file=stream, flush=True)
    fig = _figure((11.0, 4.4))
    axg, axc = fig.subplots(1, 2)
    beta_sweep_gap(sweep, ax=axg, title="cost gap J_TF(β) − J_LQG(predictor form), Monte Carlo")
    certificate(sweep, ax=axc, title="estimation error vs certificate ε(β)")
    fig.suptitle(f"two_mass: Transformer Filter controller vs LQG on common noise (H = {DEMO_WINDOW})")
    files["beta_sweep.png"] = atomic_savefig(fig, out / "beta_sweep.png", dpi=120)

    tf_name = next(name for name in rows_in if name.startswith("transformer filter"))
    tf = rows_in[tf_name][0]
    steps = min(horizon, 120)
    _, weights = tf.run(res.y[tf_name][0, :steps].cpu(), res.u[tf_name][0, :steps].cpu())
    fig = _figure((6.4, 5.4))
    attention_heatmap(weights, t=res.t[:steps], ax=fig.add_subplot(), window=tf.window,
                      title=f"attention weights α[t, i], {tf_name}, trajectory 0")
    files["attention.png"] = atomic_savefig(fig, out / "attention.png", dpi=120)

    results = {
        "lqgt_version": __version__,
        "torch_version": torch.__version__,
        "plant": {"name": "two_mass", "n": plant.n, "m": plant.m, "p": plant.p, "dt": plant.dt},
        "settings": dict(res.settings),
        "lqg_optimum": _json_num(optimum),
        "lqg_optimum_predictor": _json_num(design.cost_predictor),
        "design": {"K": design.K.tolist(), "L": design.L.tolist(), "Lf": design.Lf.tolist()},
        "estimators": [{"name": r.name, **_row_costs(r), "exact_in_ci": _exact_in_ci(r)} for r in rows],
        "beta_sweep": {
            "betas": sweep.betas.tolist(), "gap": [_json_num(g) for g in sweep.gap],
            "gap_ci": [[_json_num(a), _json_num(b)] for a, b in sweep.gap_ci],
            "error_max": [_json_num(e) for e in sweep.error_max], "bound": [_json_num(e) for e in sweep.bound],
            "cost_lqg_predictor_mc": _json_num(sweep.cost_lqg), "settings": dict(sweep.settings),
        },
        "runtime_s": {"simulate": round(t_sim, 3), "beta_sweep": round(t_sweep, 3)},
    }
    files["table.md"] = atomic_write_text(out / "table.md", table + "\n" + note + "\n## Transformer Filter β-sweep\n\n"
                                          + format_sweep(sweep))
    files["table.csv"] = atomic_write_text(out / "table.csv", _csv_text(rows, optimum))
    return _write_results(out, results, files, t_start, t_sim, stream)


def _int_at_least(lo: int):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {s!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, got {v}")
        return v

    parse.__name__ = f"int>={lo}"
    return parse


def build_parser() -> argparse.ArgumentParser:
    """Build the ``lqgt`` argument parser.

    Returns
    -------
    argparse.ArgumentParser
        The parser, with one subparser per command.
    """
    from . import __version__

    parser = argparse.ArgumentParser(prog="lqgt", description="lqgt: LQG control and learned estimators "
                                     "in one batched torch closed loop.")
    parser.add_argument("--version", action="version", version=f"lqgt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = sub.add_parser(
        "demo", help="design LQG for the default plant, compare estimators, write a table and plots",
        description="Design the LQG controller of the default plant (two_mass), simulate the closed loop "
                    "with the Kalman filter (current and predictor form), an open-loop observer and the Transformer "
                    "Filter controller on common random numbers, print exact and Monte Carlo costs, sweep the "
                    "Transformer Filter's inverse temperature β, and write table.md, table.csv, results.json, "
                    "trajectories.png, cost.png, beta_sweep.png and attention.png into --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("--out", default="lqgt-demo", metavar="DIR", help="output directory")
    demo.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="simulation device")
    demo.add_argument("--batch", type=_int_at_least(1), default=2000, metavar="N", help="trajectories per estimator")
    demo.add_argument("--horizon", type=_int_at_least(2), default=1000, metavar="T", help="steps per trajectory")
    demo.add_argument("--burn-in", type=_int_at_least(0), default=300, metavar="S",
                      help="initial steps left out of the cost (must be < --horizon)")
    demo.add_argument("--seed", type=int, default=0, help="noise seed")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(subparser=demo)  # so that main() reports errors as "lqgt demo: error: ..."
    _add_compare_parser(sub)
    return parser


def _add_compare_parser(sub) -> None:
    """Add ``lqgt compare CONFIG [--out DIR] [--device DEV] [--no-progress]`` (see :mod:`lqgt.compare`)."""
    p = sub.add_parser(
        "compare", help="compare the estimators of a TOML configuration, write a table and plots",
        description="Read a TOML configuration (plant, cost, estimators, simulation; see examples/compare.toml), "
                    "design the LQG controller, simulate every estimator on common random numbers, print exact and "
                    "Monte Carlo costs, and write table.md, table.csv, results.json, trajectories.png and cost.png "
                    "into --out. An invalid configuration exits with status 2 and a message naming the key.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("config", metavar="CONFIG", help="TOML configuration file")
    p.add_argument("--out", default="lqgt-compare", metavar="DIR", help="output directory")
    p.add_argument("--device", default=argparse.SUPPRESS, metavar="DEV",
                   help="simulation device, 'cpu', 'cuda' or 'cuda:N' (default: simulation.device of CONFIG)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _main_compare(args) -> int:
    """Run ``lqgt compare``: 0 on success, 2 for an invalid configuration, 1 when the run fails."""
    import dataclasses

    from .compare import check_device, load_config, run_compare
    from .errors import ConfigError, LqgtError

    try:
        check_out(args.out)
        cfg = load_config(args.config)
        if "device" in args:
            sim = dataclasses.replace(cfg.simulation, device=check_device(args.device, "--device"))
            cfg = dataclasses.replace(cfg, simulation=sim)
        run_compare(cfg, args.out, progress=not args.no_progress)
    except (ConfigError, NotADirectoryError) as exc:
        print(f"lqgt compare: error: {exc}", file=sys.stderr)
        return 2
    except (LqgtError, OSError) as exc:
        print(f"lqgt compare: error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lqgt`` console script.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 on success, 1 when the run fails, 2 for an invalid ``lqgt compare``
        configuration or an ``--out`` that names an existing file. Bad arguments exit with
        status 2 (``SystemExit``) and a message naming the argument.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo_parser = args.subparser
        if args.burn_in >= args.horizon:
            demo_parser.error(f"--burn-in ({args.burn_in}) must be smaller than --horizon ({args.horizon})")
        try:
            check_out(args.out)
        except NotADirectoryError as exc:
            demo_parser.error(str(exc))
        if args.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
                demo_parser.error(f"--device cuda: CUDA is not available (torch {torch.__version__}, {build}; "
                                  "torch.cuda.is_available() is False). Use --device cpu, or install a CUDA "
                                  "build of torch on a machine with an NVIDIA GPU.")
        from .errors import LqgtError

        try:
            run_demo(args.out, device=args.device, batch=args.batch, horizon=args.horizon, burn_in=args.burn_in,
                     seed=args.seed, progress=not args.no_progress)
        except (LqgtError, OSError) as exc:
            print(f"lqgt demo: error: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "compare":
        return _main_compare(args)
    parser.error(f"unknown command {args.command!r}")  # unreachable: argparse checks the choices
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
