"""Report code shared by ``lqgt demo`` (:mod:`lqgt.cli`) and ``lqgt compare`` (:mod:`lqgt.compare`).

The rows of a cost table (:class:`DemoRow`), the exact cost of a linear loop
(:func:`exact_cost`), the Markdown table and CSV text, ``results.json``, the checks of the
output directory and the saved figures. Both entry points import this module; it imports
neither of them. Every file is written atomically (see :mod:`lqgt._io`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TextIO

__all__ = ["DemoRow", "exact_cost", "format_table", "format_sweep", "is_diverged", "DIVERGED_RATIO", "check_out"]

@dataclass(frozen=True)
class DemoRow:
    """One estimator's line of the demo table.

    Attributes
    ----------
    name : str
        Estimator name.
    form : str
        ``"current"`` or ``"predictor"``.
    exact : float or None
        Exact average cost (:func:`lqgt.lqg_cost`), ``None`` if not known.
    mc : float
        Monte Carlo cost.
    ci : (float, float)
        95% confidence interval of ``mc``.
    gap : float
        Relative gap to the LQG optimum, ``J / J* - 1``, with ``J`` the exact cost where
        known, else the Monte Carlo cost.
    diverged : bool
        The loop diverged (see :func:`is_diverged`); the table marks the row "diverged".
    """

    name: str
    form: str
    exact: float | None
    mc: float
    ci: tuple[float, float]
    gap: float
    diverged: bool = False

    @property
    def gap_source(self) -> str:
        """``"exact"`` or ``"mc"``: which cost the gap is computed from."""
        return "exact" if self.exact is not None else "mc"


#: A loop whose Monte Carlo cost exceeds this multiple of the LQG optimum is reported as diverged.
DIVERGED_RATIO = 1e6


def is_diverged(mc: float, exact: float | None, optimum: float) -> bool:
    """Whether a loop counts as diverged in a cost table.

    Parameters
    ----------
    mc : float
        Monte Carlo cost of the loop.
    exact : float or None
        Exact cost (``inf`` for an unstable loop), ``None`` if unknown.
    optimum : float
        The LQG optimum ``J*``.

    Returns
    -------
    bool
        ``True`` when the exact cost is infinite, the Monte Carlo cost is not finite, or
        it exceeds ``DIVERGED_RATIO * |J*|`` (a finite 1e30 from an unstable loop that
        has not yet overflowed).
    """
    if exact is not None and not math.isfinite(exact):
        return True
    if not math.isfinite(mc):
        return True
    return abs(mc) > DIVERGED_RATIO * max(abs(optimum), 1e-300)


def exact_cost(plant, Q, R, K, estimator) -> float | None:
    """Exact average cost of the loop ``u = -K x̂`` with ``estimator``, if it is a linear observer.

    Parameters
    ----------
    plant : lqgt.Plant
        The true plant.
    Q : array_like, shape (n, n)
        State weight.
    R : array_like, shape (m, m)
        Input weight.
    K : array_like, shape (m, n)
        Feedback gain.
    estimator : Estimator
        Any estimator; its optional ``linear_gain()`` (see :mod:`lqgt.estimators.base`)
        tells whether an exact cost exists.

    Returns
    -------
    float or None
        :func:`lqgt.lqg_cost` with the estimator's gain, form and model; ``None`` when the
        estimator does not report a fixed linear gain (e.g. a learned filter).
    """
    from .lqg import lqg_cost

    lin = getattr(estimator, "linear_gain", None)
    lin = lin() if callable(lin) else None
    if lin is None:
        return None
    gain, model = lin
    return lqg_cost(plant, Q, R, K, gain, form=estimator.form, model=model)


def _fmt(v: float | None) -> str:
    from .plot import fmt_number

    return "—" if v is None else fmt_number(v)


def _fmt_gap(g: float) -> str:
    if not math.isfinite(g):
        return "inf"
    pct = round(100 * g, 2)
    return "0.00%" if pct == 0 else f"{pct:+.2f}%"


def format_table(rows: Sequence[DemoRow], optimum: float) -> str:
    """Format the demo rows as an aligned Markdown table.

    Parameters
    ----------
    rows : sequence of DemoRow
        The rows (a diverged row shows "diverged" in the gap column).
    optimum : float
        The LQG optimum ``J*`` (named in the gap column).

    Returns
    -------
    str
        The table, one line per row after the header, ending in a newline.
    """
    header = ["estimator", "form", "exact cost", "MC cost", "95% CI", "gap to LQG optimum"]
    body = [[r.name, r.form, _fmt(r.exact), _fmt(r.mc),
             f"[{_fmt(r.ci[0])}, {_fmt(r.ci[1])}]",
             "diverged" if r.diverged else _fmt_gap(r.gap) + (" (MC)" if r.gap_source == "mc" else "")] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    right = [False, False, True, True, True, True]

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if r else ("-" * (w + 2)) for w, r in zip(widths, right)) + "|"
    return "\n".join([line(header), sep, *(line(b) for b in body)]) + "\n"


def _csv_text(rows: Sequence[DemoRow], optimum: float) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["estimator", "form", "exact_cost", "mc_cost", "ci_low", "ci_high", "gap_to_optimum", "gap_source",
                "lqg_optimum", "diverged"])
    num = lambda v: "" if v is None else repr(float(v))  # noqa: E731
    for r in rows:
        w.writerow([r.name, r.form, num(r.exact), num(r.mc), num(r.ci[0]), num(r.ci[1]), num(r.gap), r.gap_source,
                    num(optimum), "true" if r.diverged else "false"])
    return buf.getvalue()


def format_sweep(sweep) -> str:
    """Format a :class:`lqgt.BetaSweep` as an aligned Markdown table.

    Parameters
    ----------
    sweep : lqgt.BetaSweep
        The sweep.

    Returns
    -------
    str
        Columns β, cost gap with its 95% half-width, measured sup error, certified bound.
    """
    header = ["β", "J_TF − J_LQG(predictor), MC", "± 95%", "sup‖x̃ − x̂‖ measured", "bound ε(β)"]
    body = []
    for b, g, (lo, hi), e, eb in zip(sweep.betas, sweep.gap, sweep.gap_ci, sweep.error_max, sweep.bound):
        body.append([f"{b:g}", f"{g:+.3e}", f"{(hi - lo) / 2:.2e}", f"{e:.3e}", f"{eb:.3e}"])
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in body)]) + "\n"


def _json_num(v):
    """JSON has no inf/nan: write them as null."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def check_out(out: str | Path) -> Path:
    """Check an output directory: ``out`` as a path, refused when it exists and is not a directory.

    Parameters
    ----------
    out : str or pathlib.Path
        The output directory (it need not exist yet).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    NotADirectoryError
        ``out`` names an existing file (the message names it); the command line exits
        with status 2 for it.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {str(out)!r} exists and is not a directory")
    return out



def _figure(figsize: tuple[float, float]):
    """A new figure on the Agg canvas (no pyplot, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_trajectories(res, path: Path, *, state: int, input: int, k: float, state_label: str, input_label: str,
                       title: str) -> Path:
    """``trajectories.png``: bands of ``x[state]`` over ``u[input]``, every estimator overlaid."""
    from ._io import atomic_savefig
    from .plot import trajectory_bands

    fig = _figure((8.0, 5.6))
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    trajectory_bands(res, "x", state, k=k, ax=ax1, ylabel=state_label, xlabel="")
    trajectory_bands(res, "u", input, k=k, ax=ax2, ylabel=input_label, legend=False)
    fig.suptitle(title)
    return atomic_savefig(fig, path, dpi=120)


def _save_costs(res, exact, optimum: float, path: Path, *, title: str, suptitle: str | None = None) -> Path:
    """``cost.png``: Monte Carlo costs with their intervals and the exact costs (:func:`lqgt.plot.cost_comparison`)."""
    from ._io import atomic_savefig
    from .plot import cost_comparison

    fig = _figure((8.0, 0.55 * len(res.cost) + 1.9))
    cost_comparison(res, exact=exact, ax=fig.add_subplot(), optimum=optimum,
                    xlabel="average cost per step  x'Qx + u'Ru", title=title)
    if suptitle is not None:
        fig.suptitle(suptitle)
    return atomic_savefig(fig, path, dpi=120)


def _row_costs(r: DemoRow) -> dict:
    """The costs of a table row for ``results.json`` (``form`` … ``gap_source``)."""
    return {"form": r.form, "exact_cost": _json_num(r.exact), "mc_cost": _json_num(r.mc), "ci_low": _json_num(r.ci[0]),
            "ci_high": _json_num(r.ci[1]), "gap_to_optimum": _json_num(r.gap), "gap_source": r.gap_source,
            "diverged": bool(r.diverged)}


def _exact_in_ci(r: DemoRow) -> bool | None:
    return None if r.exact is None else bool(r.ci[0] <= r.exact <= r.ci[1])


def _write_results(out: Path, results: dict, files: dict, t_start: float, t_sim: float, stream: TextIO,
                   ensure_ascii: bool = True) -> dict:
    """Add the total runtime and the file list to ``results``, write ``results.json``, report what was written."""
    from ._io import atomic_write_text

    results["runtime_s"]["total"] = round(time.perf_counter() - t_start, 3)
    results["files"] = sorted([*files, "results.json"])
    atomic_write_text(out / "results.json",
                      json.dumps(results, indent=2, allow_nan=False, ensure_ascii=ensure_ascii) + "\n")
    print(f"wrote {', '.join(results['files'])} to {out}/ "
          f"(simulate {t_sim:.1f} s, total {results['runtime_s']['total']:.1f} s)", file=stream, flush=True)
    return results


