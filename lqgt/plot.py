"""Plots that read simulation results: ``ax=`` in, the Axes out.

No function here calls ``pyplot``: when ``ax`` is not given a new
:class:`matplotlib.figure.Figure` is made (reach it as ``ax.figure``), so the functions
work under any backend, Agg included, and touch no global state. Estimator ``i`` (in the
order given) is drawn in colour ``"C{i}"`` in every plot, so plots of one result match.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch
from matplotlib import colors as mcolors
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .errors import ConfigError, NonFiniteError, ShapeError

__all__ = [
    "trajectory_bands",
    "cost_comparison",
    "band_statistics",
    "fmt_number",
    "beta_sweep_gap",
    "certificate",
    "attention_heatmap",
    "gap_classes",
]

_KEYS = ("x", "x_hat", "u", "y")
#: A finite cost above this multiple of the optimum is annotated "diverged" (as in :mod:`lqgt.report`).
_DIVERGED_RATIO = 1e6


def __dir__() -> list[str]:
    """``dir(lqgt.plot)``: the public plotting functions only (``__all__``), not ``np``, ``torch``, ``Axes``."""
    return sorted(__all__)


def _new_axes(figsize: tuple[float, float]) -> Axes:
    fig = Figure(figsize=figsize, layout="constrained")
    return fig.add_subplot()


def band_statistics(res, key: str = "x", index: int = 0, names: Sequence[str] | None = None
                    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Mean and standard deviation across the batch of one signal component, per estimator.

    Parameters
    ----------
    res : lqgt.SimulationResult
        A result of :func:`lqgt.simulate` with stored trajectories (``store=True``).
    key : {"x", "x_hat", "u", "y"}
        Which signal.
    index : int
        Which component of the signal (``0 <= index < width``).
    names : sequence of str, optional
        Estimators to include (default: all, in the order simulated).

    Returns
    -------
    dict of str to (numpy.ndarray, numpy.ndarray)
        ``{name: (mean, std)}``, each of shape ``(T,)``; ``std`` is the sample standard
        deviation (``ddof=1``; ``0`` for a batch of one).

    Raises
    ------
    ConfigError
        Unknown ``key`` or estimator name, or a result without trajectories.
    ShapeError
        ``index`` out of range.
    """
    if key not in _KEYS:
        raise ConfigError(f"key must be one of {_KEYS}, got {key!r}")
    data = getattr(res, key)
    if data is None:
        raise ConfigError("the result holds no trajectories: simulate(..., store=False) kept only the costs; "
                          "simulate with store=True to plot trajectories")
    names = list(data) if names is None else list(names)
    if not names:
        raise ConfigError("names is empty: give at least one estimator to plot")
    out = {}
    for name in names:
        if name not in data:
            raise ConfigError(f"no estimator named {name!r} in the result; it has {list(data)}")
        sig = data[name]
        width = sig.shape[-1]
        if not -width <= index < width:
            raise ShapeError(f"index {index} is out of range for {key!r}, which has {width} component(s) "
                             f"(shape {tuple(sig.shape)} = (B, T, {width}))")
        s = sig[..., index].detach().to(torch.float64)  # (B, T)
        mean = s.mean(0)
        std = s.std(0, correction=1) if s.shape[0] > 1 else torch.zeros_like(mean)
        out[name] = (mean.cpu().numpy(), std.cpu().numpy())
    return out


def trajectory_bands(res, key: str = "x", index: int = 0, names: Sequence[str] | None = None, k: float = 2.0,
                     ax: Axes | None = None, *, ylabel: str | None = None, xlabel: str = "time (s)",
                     title: str | None = None, alpha: float = 0.2, legend: bool = True) -> Axes:
    """Draw the mean ± k·std across the batch of one signal over time, estimators overlaid.

    For each estimator a line at the batch mean and a shaded band from ``mean - k·std``
    to ``mean + k·std`` (see :func:`band_statistics`), against ``res.t`` in seconds.

    Parameters
    ----------
    res : lqgt.SimulationResult
        A result of :func:`lqgt.simulate` with stored trajectories; signals are
        ``(B, T, ·)``.
    key : {"x", "x_hat", "u", "y"}
        Which signal: state, estimate, input or measurement.
    index : int
        Which component of the signal.
    names : sequence of str, optional
        Estimators to draw, in this order (default: all).
    k : float
        Half-width of the band in standard deviations (``k >= 0``).
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure is made if not given.
    ylabel : str, optional
        Label of the y-axis, with units, e.g. ``"p1 (m)"``; default ``"x[0]"`` style.
    xlabel : str
        Label of the x-axis.
    title : str, optional
        Axes title.
    alpha : float
        Opacity of the bands.
    legend : bool
        Draw a legend (titled with ``k`` and the batch size). When two estimators give
        identical bands (the later one is hidden under the earlier), the title says so.

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn on. Per estimator, in order: a filled band (a ``PolyCollection``
        in ``ax.collections``), then in ``ax.lines`` the mean (``label`` = estimator
        name) followed by thin lines on the band's two edges (labels starting with ``_``).
    """
    if not (np.isfinite(k) and k >= 0):
        raise ConfigError(f"k must be a finite number >= 0, got {k!r}")
    stats = band_statistics(res, key, index, names)
    t = np.asarray(res.t, dtype=float)
    if ax is None:
        ax = _new_axes((7.0, 3.2))
    batch = next(iter(getattr(res, key).values())).shape[0]
    for i, (name, (mean, std)) in enumerate(stats.items()):
        color = f"C{i}"
        lo, hi = mean - k * std, mean + k * std
        ax.fill_between(t, lo, hi, color=color, alpha=alpha, linewidth=0)
        ax.plot(t, mean, color=color, linewidth=1.4, label=name)
        ax.plot(t, lo, color=color, linewidth=0.6, alpha=0.8, label=f"_{name} lower")
        ax.plot(t, hi, color=color, linewidth=0.6, alpha=0.8, label=f"_{name} upper")
    if t.size > 1:
        ax.set_xlim(t[0], t[-1])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel if ylabel is not None else f"{key}[{index}]")
    if title is not None:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if legend:
        same = _identical_bands(stats)
        note = "".join(f"\n{b} is hidden under {a} (identical band)" for a, b in same)
        ax.legend(title=f"mean ± {k:g}σ over {batch} runs{note}", fontsize="small", title_fontsize="small",
                  loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=min(len(stats), 3), frameon=False)
    return ax


def _identical_bands(stats: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> list[tuple[str, str]]:
    """Pairs ``(first, later)`` of estimators whose mean and std agree to rounding (the later band hides)."""
    names, out, hidden = list(stats), [], set()
    for j, b in enumerate(names):
        for a in names[:j]:
            if a in hidden:
                continue
            (ma, sa), (mb, sb) = stats[a], stats[b]
            scale = max(float(np.nanmax(np.abs(ma), initial=0.0)), float(np.nanmax(sa, initial=0.0)), 1e-300)
            if ma.shape == mb.shape and np.allclose(ma, mb, rtol=1e-9, atol=1e-9 * scale, equal_nan=True) \
                    and np.allclose(sa, sb, rtol=1e-9, atol=1e-9 * scale, equal_nan=True):
                out.append((a, b))
                hidden.add(b)
                break
    return out


def cost_comparison(costs, ci: Mapping[str, tuple[float, float]] | None = None,
                    exact: Mapping[str, float | None] | None = None, ax: Axes | None = None, *,
                    optimum: float | None = None, xlabel: str = "average cost per step",
                    title: str | None = None, annotate: bool = True, scale: str = "auto") -> Axes:
    """Compare estimators' costs: Monte Carlo bars with 95% CI error bars and exact-cost markers.

    One horizontal bar per estimator (first one at the top) whose length is the Monte
    Carlo cost, an error bar spanning its confidence interval, a diamond at the exact
    cost where known, and optionally a dashed line at the LQG optimum.

    Parameters
    ----------
    costs : lqgt.SimulationResult or mapping of str to float
        A simulation result (its ``cost`` and ``cost_ci`` are used; pass ``ci=None``), or
        the Monte Carlo cost per estimator (e.g. ``res.cost``). A non-finite cost (a
        diverged loop) is drawn as an empty bar marked "diverged"; so is a cost above
        ``1e6`` times ``optimum`` (where given).
    ci : mapping of str to (float, float), optional
        Confidence interval ``(lo, hi)`` per estimator (e.g. ``res.cost_ci``); every name
        in ``costs`` must have one. Non-finite bounds draw no error bar. Required with a
        mapping of costs, not allowed with a result.
    exact : mapping of str to float or None, optional
        Exact cost per estimator (e.g. from :func:`lqgt.lqg_cost`); ``None`` or a missing
        name draws no marker.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure is made if not given.
    optimum : float, optional
        The LQG optimum, drawn as a dashed vertical line.
    xlabel : str
        Label of the cost axis.
    title : str, optional
        Axes title.
    annotate : bool
        Write ``cost [lo, hi]`` beside each bar.
    scale : {"auto", "linear", "log"}
        Scale of the cost axis. ``"auto"``: logarithmic when the finite positive costs,
        exact costs, interval bounds and optimum span more than two decades (a diverging
        loop would otherwise flatten every other bar), else linear.

    Returns
    -------
    matplotlib.axes.Axes
        The axes: a ``BarContainer`` (Monte Carlo costs) and an ``ErrorbarContainer`` (the
        intervals, as ``xerr``) in ``ax.containers``, the exact markers as a line labelled
        ``"exact (Lyapunov)"``.

    Raises
    ------
    ConfigError
        Empty costs, a name without an interval, ``ci`` given with a result, unknown ``scale``.
    ShapeError
        An interval that is not a pair.
    """
    if hasattr(costs, "cost") and hasattr(costs, "cost_ci"):
        if ci is not None:
            raise ConfigError("ci must not be given with a SimulationResult (its cost_ci is used); "
                              "call cost_comparison(res, exact=...)")
        costs, ci = costs.cost, costs.cost_ci
    elif ci is None:
        raise ConfigError("ci is required when costs is a mapping (e.g. cost_comparison(res.cost, res.cost_ci)); "
                          "or pass the SimulationResult itself")
    if scale not in ("auto", "linear", "log"):
        raise ConfigError(f"scale must be 'auto', 'linear' or 'log', got {scale!r}")
    names = list(costs)
    if not names:
        raise ConfigError("costs is empty: give at least one estimator")
    exact = {} if exact is None else dict(exact)
    for name in names:
        if name not in ci:
            raise ConfigError(f"ci has no interval for {name!r}; it has {list(ci)}")
        if len(tuple(ci[name])) != 2:
            raise ShapeError(f"ci[{name!r}] must be a pair (lo, hi), got {ci[name]!r}")
    unknown = [n for n in exact if n not in costs]
    if unknown:
        raise ConfigError(f"exact names {unknown} are not in costs {names}")
    if ax is None:
        ax = _new_axes((7.0, 0.6 * len(names) + 1.6))

    y = np.arange(len(names), dtype=float)
    vals = np.array([float(costs[n]) for n in names])
    finite = np.isfinite(vals)
    has_opt = optimum is not None and math.isfinite(optimum)
    runaway = finite & (has_opt and optimum > 0) & (np.abs(vals) > _DIVERGED_RATIO * abs(optimum or 1.0))
    pos = [v for v in vals[finite] if v > 0] + [float(b) for n in names for b in ci[n]
                                               if math.isfinite(float(b)) and float(b) > 0]
    pos += [float(e) for e in exact.values() if e is not None and math.isfinite(float(e)) and float(e) > 0]
    pos += [float(optimum)] if has_opt and optimum > 0 else []
    log = scale == "log" or (scale == "auto" and len(pos) > 1 and max(pos) > 100.0 * min(pos))
    if log and not pos:
        raise ConfigError("scale='log' needs at least one positive finite cost")
    base = 10.0 ** math.floor(math.log10(min(pos)) - 0.3) if log else 0.0
    ax.barh(y, np.where(finite, vals - base, 0.0), left=base, height=0.6,
            color=[f"C{i}" for i in range(len(names))], alpha=0.55, label="Monte Carlo")
    ok = [i for i, n in enumerate(names) if finite[i] and all(math.isfinite(float(b)) for b in ci[n])]
    if ok:
        lo = np.array([float(ci[names[i]][0]) for i in ok])
        hi = np.array([float(ci[names[i]][1]) for i in ok])
        v = vals[ok]
        ax.errorbar(v, y[ok], xerr=np.vstack([v - lo, hi - v]), fmt="none", ecolor="black", elinewidth=1.2,
                    capsize=5, label="95% CI")
    ex = [(i, float(exact[n])) for i, n in enumerate(names) if exact.get(n) is not None and math.isfinite(float(exact[n]))]
    if ex:
        ax.plot([e for _, e in ex], [y[i] for i, _ in ex], linestyle="none", marker="D", markersize=7,
                markerfacecolor="white", markeredgecolor="black", label="exact (Lyapunov)")
    if has_opt:
        ax.axvline(optimum, color="0.25", linestyle="--", linewidth=1.0, label="LQG optimum")

    right = [v for v in vals[finite]] + [e for _, e in ex] + ([optimum] if has_opt else [])
    right += [float(ci[names[i]][1]) for i in ok]
    xmax = max(right) if right else 1.0
    if log:
        decades = math.log10(max(xmax, base * 10.0)) - math.log10(base)
        shift = lambda x, frac: x * 10.0 ** (frac * decades)
    else:
        shift = lambda x, frac: x + frac * xmax
    if annotate:
        for i, n in enumerate(names):
            if not finite[i]:
                ax.text(shift(base, 0.01) if log else 0.01 * xmax, y[i], "diverged", va="center", ha="left",
                        fontsize="small", color="C3")
                continue
            lo_hi = ci[n]
            txt = fmt_number(vals[i])
            if all(math.isfinite(float(b)) for b in lo_hi):
                txt += f"  [{fmt_number(lo_hi[0])}, {fmt_number(lo_hi[1])}]"
            if runaway[i]:
                txt += "  diverged"
            x_end = max([vals[i]] + ([float(lo_hi[1])] if i in ok else []) + [e for j, e in ex if j == i])
            ax.text(shift(x_end, 0.035), y[i], txt, va="center", ha="left", fontsize="small",
                    color="C3" if runaway[i] else "black")
    if log:
        ax.set_xscale("log")
        ax.set_xlim(base, shift(xmax, 0.45 if annotate else 0.08))
    else:
        ax.set_xlim(0.0, xmax * (1.45 if annotate else 1.08))
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    if title is not None:
        ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    order = ["Monte Carlo", "95% CI", "exact (Lyapunov)", "LQG optimum"]
    pairs = sorted(zip(handles, labels), key=lambda hl: order.index(hl[1]) if hl[1] in order else len(order))
    ax.legend([h for h, _ in pairs], [lab for _, lab in pairs], fontsize="small", loc="center left",
              bbox_to_anchor=(1.01, 0.5), frameon=False)
    return ax


def fmt_number(v: float, digits: int = 4) -> str:
    """Format a cost with ``digits`` significant digits, keeping trailing zeros (``0.3300``).

    Parameters
    ----------
    v : float
        The number (``inf``/``nan`` allowed).
    digits : int
        Significant digits.

    Returns
    -------
    str
        E.g. ``"0.3300"``, ``"1.825"``, ``"1235"``, ``"1.23e+06"``, ``"inf"``.
    """
    v = float(v)
    if not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if v != 0 and not 1e-4 <= abs(v) < 10 ** digits:
        return f"{v:.{digits - 1}e}"
    return f"{v:#.{digits}g}".rstrip(".")


# ---------------------------------------------------------------- Transformer Filter plots

def _sweep_arrays(sweep, names: tuple[str, ...]) -> list[np.ndarray]:
    """Fetch 1-D float arrays of equal length from a :class:`lqgt.BetaSweep`."""
    try:
        betas = np.asarray(sweep.betas, dtype=float)
        out = [np.asarray(getattr(sweep, n), dtype=float) for n in names]
    except AttributeError as exc:
        raise ConfigError(f"sweep must be an lqgt.BetaSweep (from lqgt.beta_sweep); {exc}") from None
    if betas.ndim != 1 or betas.size == 0:
        raise ShapeError(f"sweep.betas must be a non-empty 1-D array, got shape {betas.shape}")
    if not np.all(np.isfinite(betas)) or np.any(betas <= 0):
        raise ConfigError("sweep.betas must be finite and > 0 to be drawn on a log axis "
                          f"(got {betas.tolist()}); leave β = 0 out of the plot")
    return [betas] + out


def _settings_text(sweep) -> str:
    s = getattr(sweep, "settings", {}) or {}
    parts = []
    if "window" in s:
        parts.append(f"H = {s['window']}")
    if "batch" in s:
        parts.append(f"{s['batch']} runs")
    if "horizon" in s:
        steps = s["horizon"] - s.get("burn_in", 0)
        parts.append(f"{steps} steps")
    return ", ".join(parts)


def _beta_axes(ax: Axes, ylabel: str, title: str) -> None:
    """Log–log axes over the inverse temperature β (shared by the β-sweep plots)."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("inverse temperature β (larger: sharper attention)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize="medium")
    ax.grid(True, which="major", alpha=0.3)


def gap_classes(gap_ci) -> np.ndarray:
    """Classify each confidence interval of a cost gap as positive, unresolved or negative.

    Parameters
    ----------
    gap_ci : array_like, shape (k, 2)
        95% confidence intervals ``(lo, hi)`` of ``J_TF - J_LQG`` (``BetaSweep.gap_ci``).

    Returns
    -------
    numpy.ndarray of str, shape (k,)
        ``"positive"`` where ``lo > 0`` (the TF loop is significantly worse than LQG),
        ``"negative"`` where ``hi < 0`` (significantly better on this sample, which can
        only be Monte Carlo error or finite-horizon bias: LQG is optimal), else
        ``"unresolved"`` (the interval contains 0).
    """
    ci = np.asarray(gap_ci, dtype=float)
    if ci.ndim != 2 or ci.shape[1] != 2:
        raise ShapeError(f"gap_ci must have shape (k, 2), got {ci.shape}")
    out = np.full(ci.shape[0], "unresolved", dtype=object)
    out[ci[:, 0] > 0] = "positive"
    out[ci[:, 1] < 0] = "negative"
    return out.astype(str)


def beta_sweep_gap(sweep, ax: Axes | None = None, *, title: str | None = None, relative_axis: bool = True) -> Axes:
    """Closed-loop cost gap ``J_TF(β) - J_LQG`` versus β, log–log, with 95% Monte Carlo bands.

    The gap shrinks by many decades as β grows and eventually falls below what the Monte
    Carlo run can resolve (its interval then contains 0, and the point estimate may even be
    negative). A log axis cannot show such points as values, so they are drawn as what the
    data does say:

    * **resolved** (interval above 0): the gap as a line with markers and its 95% interval
      as a shaded band;
    * **unresolved** (interval contains 0): a hollow downward triangle at the interval's
      upper end, i.e. "the gap is below this, with 95% confidence";
    * **negative** (interval below 0; LQG is optimal, so this is sampling error): a cross
      at ``|gap|``.

    Parameters
    ----------
    sweep : lqgt.BetaSweep
        Result of :func:`lqgt.beta_sweep` (``betas`` > 0).
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure is made if not given.
    title : str, optional
        Axes title (a default names the window and the Monte Carlo size).
    relative_axis : bool
        Add a right-hand axis with the gap relative to the Monte Carlo LQG cost (in %).

    Returns
    -------
    matplotlib.axes.Axes
        Log–log axes holding, each only when some point falls in its class: the line
        ``"J_TF − J_LQG (predictor, MC)"`` (y-data: the gap where resolved, NaN elsewhere) with a filled
        band labelled ``"95% CI (common noise)"`` and error bars of the same intervals; the markers-only line
        ``"unresolved: 95% upper bound"``; the markers-only line
        ``"negative: |gap| (Monte Carlo error)"``; and a dotted horizontal line at
        the Monte Carlo cost of the Kalman-predictor LQG loop ``sweep.cost_lqg`` (labelled
        ``"J_LQG (predictor, MC) = ..."``; every ``J_LQG`` here is that predictor-form
        Monte Carlo cost, not the exact current-form optimum of a cost table).
    """
    betas, gap, ci = _sweep_arrays(sweep, ("gap", "gap_ci"))
    k = betas.size
    if gap.shape != (k,) or ci.shape != (k, 2):
        raise ShapeError(f"sweep.gap and sweep.gap_ci must have shapes ({k},) and ({k}, 2), got {gap.shape} and {ci.shape}")
    if not (np.all(np.isfinite(gap)) and np.all(np.isfinite(ci))):
        raise NonFiniteError("sweep.gap or sweep.gap_ci is not finite (a loop diverged?); "
                             f"gap = {gap.tolist()}")
    cls = gap_classes(ci)
    pos, unr, neg = cls == "positive", cls == "unresolved", cls == "negative"
    if ax is None:
        ax = _new_axes((6.4, 4.2))
    nan = np.full(k, np.nan)

    if np.any(pos):
        ax.fill_between(betas, np.where(pos, ci[:, 0], nan), np.where(pos, ci[:, 1], nan), color="C1", alpha=0.25,
                        linewidth=0, label="95% CI (common noise)")
        ax.plot(betas, np.where(pos, gap, nan), color="C1", marker="o", markersize=4, linewidth=1.6,
                label="J_TF − J_LQG (predictor, MC)")
        ax.errorbar(betas[pos], gap[pos], yerr=np.vstack([gap[pos] - ci[pos, 0], ci[pos, 1] - gap[pos]]),
                    fmt="none", ecolor="C1", elinewidth=1.0, capsize=3)
    up = unr & (ci[:, 1] > 0)
    if np.any(up):
        ax.plot(betas, np.where(up, ci[:, 1], nan), linestyle="none", marker="v", markersize=7,
                markerfacecolor="none", markeredgecolor="C1", label="unresolved: 95% upper bound")
    if np.any(neg):
        ax.plot(betas, np.where(neg, np.abs(gap), nan), linestyle="none", marker="x", markersize=7, color="C3",
                label="negative: |gap| (Monte Carlo error)")

    _beta_axes(ax, "J_TF − J_LQG(predictor), MC (cost per step)",
               title if title is not None else f"Transformer Filter vs LQG in closed loop ({_settings_text(sweep)})")
    J = float(getattr(sweep, "cost_lqg", math.nan))
    if math.isfinite(J) and J > 0:
        ax.axhline(J, color="0.4", linestyle=":", linewidth=1.0, label=f"J_LQG (predictor, MC) = {J:.4g}")
        if relative_axis:
            sec = ax.secondary_yaxis("right", functions=(lambda g: 100.0 * g / J, lambda r: r * J / 100.0))
            sec.set_ylabel("relative gap (% of J_LQG(predictor), MC)")
    ax.legend(fontsize="small", loc="lower left")
    return ax


def certificate(sweep, ax: Axes | None = None, *, title: str | None = None, annotate: bool = True) -> Axes:
    """Measured estimation error and its certified bound ``ε(β)`` versus β, log–log.

    Shows how loose the certificate of SPEC §3 is: the bound falls like ``β^{-1/2}``
    while the measured ``sup_t ‖x̃[t] - x̂[t]‖`` falls much faster (exponentially once
    β·min‖z[t] - z[i]‖² ≫ 1) until it reaches float rounding.

    Parameters
    ----------
    sweep : lqgt.BetaSweep
        Result of :func:`lqgt.beta_sweep` (``betas`` > 0).
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure is made if not given.
    title : str, optional
        Axes title.
    annotate : bool
        Write the smallest ratio ``bound / measured max`` over the sweep (how tight the
        bound gets) on the plot.

    Returns
    -------
    matplotlib.axes.Axes
        Log–log axes with three lines, labelled ``"certified bound ε(β)"``,
        ``"measured: max over runs"`` and ``"measured: mean over runs"`` (y-data: the
        sweep's ``bound``, ``error_max`` and ``error_mean``; zeros and infinities, which a
        log axis cannot show, as NaN).

    Notes
    -----
    A measured error above the bound (which would be a bug in the filter or the bound) is
    circled in red (a line labelled ``"bound violated"``).
    """
    betas, bound, emax, emean = _sweep_arrays(sweep, ("bound", "error_max", "error_mean"))
    k = betas.size
    for name, a in (("bound", bound), ("error_max", emax), ("error_mean", emean)):
        if a.shape != (k,):
            raise ShapeError(f"sweep.{name} must have shape ({k},), got {a.shape}")
    if np.any(np.isnan(emax)) or np.any(np.isnan(emean)):
        raise NonFiniteError("sweep.error_max / error_mean contain NaN (a loop diverged?)")

    def positive(a):
        return np.where(np.isfinite(a) & (a > 0), a, np.nan)

    if ax is None:
        ax = _new_axes((6.4, 4.2))
    ax.plot(betas, positive(bound), color="C3", linestyle="--", linewidth=1.8, label="certified bound ε(β)")
    ax.plot(betas, positive(emax), color="C0", marker="o", markersize=4, linewidth=1.6, label="measured: max over runs")
    ax.plot(betas, positive(emean), color="C0", marker=".", linestyle=":", linewidth=1.2, alpha=0.8,
            label="measured: mean over runs")
    bad = emax > bound
    if np.any(bad):
        ax.plot(betas[bad], emax[bad], linestyle="none", marker="o", markersize=12, markerfacecolor="none",
                markeredgecolor="red", markeredgewidth=2, label="bound violated")
    _beta_axes(ax, "sup_t ‖x̃[t] − x̂[t]‖  (state units)",
               title if title is not None else f"Certificate vs measured error ({_settings_text(sweep)})")
    ok = np.isfinite(bound) & (emax > 0)
    if annotate and np.any(ok):
        ratio = bound[ok] / emax[ok]
        i = int(np.argmin(ratio))
        ax.text(0.98, 0.98, f"tightest: bound = {ratio[i]:.3g} × measured max (β = {betas[ok][i]:.3g})",
                transform=ax.transAxes, ha="right", va="top", fontsize="small",
                bbox=dict(boxstyle="round", facecolor="white", alpha=0.8, edgecolor="0.7"))
    ax.legend(fontsize="small", loc="lower left")
    return ax


def attention_heatmap(weights, t=None, ax: Axes | None = None, *, steps: slice | None = None,
                      window: int | None = None, log: bool = True, floor: float = 1e-6, cmap: str = "viridis",
                      colorbar: bool = True, title: str | None = None) -> Axes:
    """Heat map of the attention weights ``α[t, i]`` of one trajectory.

    Row ``t`` (query time, downwards) holds the weights the filter put on the tokens ``i``
    (key time, across) when computing ``x̃[t+1]``; each row sums to 1 and is zero outside
    the causal window ``t-H+1 ≤ i ≤ t``.

    Parameters
    ----------
    weights : array_like or torch.Tensor, shape (T, T)
        The weights, e.g. the second output of :meth:`lqgt.TransformerFilter.run` on one
        trajectory.
    t : array_like, shape (T,), optional
        Time of each step in seconds (uniformly spaced, e.g. ``res.t``); the axes are in
        steps when not given.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure is made if not given.
    steps : slice, optional
        Steps to show (the same slice of queries and keys), e.g. ``slice(0, 100)``.
    window : int, optional
        The filter's window ``H``: cells outside the causal window (``i > t`` or
        ``i ≤ t - H``) are drawn light grey (and a note says so).
    log : bool
        Logarithmic colour scale (default), so the small weights across the window are
        visible; weights below ``floor`` (zeros included) take the lowest colour.
        ``False``: linear scale from 0 to 1.
    floor : float
        Lowest weight of the logarithmic scale (``0 < floor < 1``).
    cmap : str
        Matplotlib colormap name.
    colorbar : bool
        Add a colour bar (labelled "attention weight α[t, i]").
    title : str, optional
        Axes title.

    Returns
    -------
    matplotlib.axes.Axes
        The axes, holding one image whose array is the (sliced) weights, row ``k`` = query
        step ``k`` (drawn top to bottom); with ``window`` a masked array whose mask marks
        the cells outside the window.
    """
    if isinstance(weights, torch.Tensor):
        weights = weights.detach().to("cpu", torch.float64).numpy()
    W = np.asarray(weights, dtype=float)
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise ShapeError(f"weights must be a square (T, T) array of α[t, i], got shape {W.shape}; "
                         "for a batch (B, T, T) pick one trajectory, e.g. weights[0]")
    if not np.all(np.isfinite(W)):
        raise NonFiniteError("weights contain NaN or infinite entries")
    if not (0.0 < floor < 1.0):
        raise ConfigError(f"floor must satisfy 0 < floor < 1, got {floor!r}")
    if window is not None and (isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1):
        raise ConfigError(f"window must be an integer >= 1, got {window!r}")
    T = W.shape[0]
    idx = np.arange(T)
    if steps is not None:
        if not isinstance(steps, slice):
            raise ConfigError(f"steps must be a slice, e.g. slice(0, 100), got {steps!r}")
        idx = idx[steps]
        if idx.size == 0:
            raise ConfigError(f"steps={steps!r} selects no steps of the {T}")
        if idx.size > 1 and np.any(np.diff(idx) != 1):
            raise ConfigError(f"steps must select consecutive steps (step 1), got {steps!r}")
        W = W[idx[0]:idx[-1] + 1, idx[0]:idx[-1] + 1]
    if t is None:
        scale, origin, unit = 1.0, 0.0, "step"
    else:
        tt = np.asarray(t, dtype=float)
        if tt.shape != (T,):
            raise ShapeError(f"t must have shape ({T},) like the weights, got {tt.shape}")
        dt = float(tt[1] - tt[0]) if T > 1 else 1.0
        if T > 1 and not (dt > 0 and np.allclose(np.diff(tt), dt, rtol=1e-6, atol=0)):
            raise ConfigError("t must be uniformly spaced and increasing (e.g. res.t)")
        scale, origin, unit = dt, float(tt[0]), "s"
    lo, hi = origin + scale * (idx[0] - 0.5), origin + scale * (idx[-1] + 0.5)

    if ax is None:
        ax = _new_axes((5.6, 4.8))
    cm = _colormap(cmap, log)
    norm = mcolors.LogNorm(vmin=floor, vmax=1.0, clip=False) if log else mcolors.Normalize(vmin=0.0, vmax=1.0)
    data = W
    if window is not None:
        lag = idx[:, None] - idx[None, :]
        data = np.ma.masked_array(W, mask=(lag < 0) | (lag >= window))
    im = ax.imshow(data, cmap=cm, norm=norm, origin="upper", extent=(lo, hi, hi, lo), interpolation="nearest",
                   aspect="equal")
    if window is not None:
        ax.text(0.98, 0.98, f"grey: outside the causal window (H = {window})", transform=ax.transAxes,
                ha="right", va="top", fontsize="x-small", color="0.25")
    name = "t" if unit == "step" else "t·Δt"
    ax.set_xlabel("key time i (step)" if unit == "step" else "key time i·Δt (s)")
    ax.set_ylabel(f"query time {name} ({unit})")
    if title is not None:
        ax.set_title(title, fontsize="medium")
    if colorbar:
        cb = ax.figure.colorbar(im, ax=ax, extend="min" if log else "neither", shrink=0.9)
        cb.set_label("attention weight α[t, i]" + (" (log scale)" if log else ""))
    return ax


def _colormap(name: str, log: bool):
    """A copy of the named colormap: values below the scale's floor (and zeros) get the lowest
    colour; masked cells (outside the window) are light grey."""
    from matplotlib import colormaps

    try:
        cm = colormaps[name]
    except KeyError:
        raise ConfigError(f"unknown colormap {name!r}") from None
    return cm.with_extremes(under=cm(0.0), bad="0.88")


# ---------------------------------------------------------------- Bode plots

__all__ += ["bode", "bode_data"]


def _phase_branch(phase_deg: np.ndarray, center: float) -> np.ndarray:
    """Shift an unwrapped phase by a multiple of 360° so its first value lies in ``(center - 180, center + 180]``."""
    if phase_deg.size == 0 or not np.isfinite(phase_deg[0]):
        return phase_deg
    k = math.ceil((phase_deg[0] - center - 180.0) / 360.0)
    return phase_deg - 360.0 * k


def bode_data(omega, response, *, reference=None, phase_center: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Magnitude (dB) and phase (deg) of a frequency response, with the unwrapping convention of :func:`bode`.

    Conventions: magnitude ``20 log10 |H|`` in dB (``-inf`` where ``H = 0``). Phase
    ``angle(H)`` in degrees, unwrapped along increasing frequency (no jump larger than
    180° between neighbouring frequencies), then shifted by a whole number of turns so
    that the value at the lowest frequency lies in ``(phase_center - 180°,
    phase_center + 180°]``. With ``reference`` (a curve), each point instead takes the
    branch (``angle + 360° k``) nearest to the reference phase interpolated, linearly in
    ``log ω``, at its frequency: use this for sparse measured points drawn over a curve.
    A point more than 90° from the reference whose nearest branch falls outside the
    reference's phase range takes the other branch (the next-nearest, inside the range),
    so that one distorted point does not stretch the phase axis by a whole turn.

    Parameters
    ----------
    omega : array_like, shape (k,)
        Frequencies (rad/s, > 0 for a log axis), any order.
    response : array_like of complex, shape (k,)
        Frequency response ``H(e^{jω dt})`` (or ``H(jω)``).
    reference : (array_like, array_like), optional
        ``(omega_ref, phase_ref_deg)``: a curve's frequencies and (already unwrapped)
        phase in degrees, e.g. from ``bode_data`` of the analytic curve.
    phase_center : float
        Centre (deg) of the branch of the lowest-frequency value (ignored with
        ``reference``).

    Returns
    -------
    mag_db : numpy.ndarray, shape (k,)
    phase_deg : numpy.ndarray, shape (k,)
        In the order of ``omega`` as given.

    Raises
    ------
    ShapeError
        ``omega`` and ``response`` are not 1-D of one length, or the reference is malformed.
    NonFiniteError
        Non-finite frequencies.
    """
    w = np.asarray(omega, dtype=float)
    H = np.asarray(response, dtype=complex)
    if w.ndim != 1 or H.shape != w.shape:
        raise ShapeError(f"omega and response must be 1-D of the same length, got shapes {w.shape} and {H.shape}")
    if not np.all(np.isfinite(w)):
        raise NonFiniteError("omega contains NaN or infinite frequencies")
    with np.errstate(divide="ignore"):
        mag = 20.0 * np.log10(np.abs(H))
    ang = np.degrees(np.angle(H))
    if reference is not None:
        try:
            w_ref, ph_ref = (np.asarray(a, dtype=float) for a in reference)
        except (TypeError, ValueError):
            raise ShapeError("reference must be a pair (omega_ref, phase_ref_deg) of 1-D arrays") from None
        if w_ref.ndim != 1 or ph_ref.shape != w_ref.shape or w_ref.size == 0:
            raise ShapeError(f"reference arrays must be 1-D of one non-zero length, got {w_ref.shape} and {ph_ref.shape}")
        o = np.argsort(w_ref)
        with np.errstate(divide="ignore", invalid="ignore"):
            ref = np.interp(np.log(w), np.log(w_ref[o]), ph_ref[o])
        ph = ang + 360.0 * np.round((ref - ang) / 360.0)
        # a point about 180° off its reference (e.g. a distorted measurement) is ambiguous: of the
        # two branches nearly as close, keep the one inside the reference's phase range, so one
        # such point does not stretch the phase axis by a turn
        finite = ph_ref[np.isfinite(ph_ref)]
        if finite.size:
            lo, hi = float(finite.min()), float(finite.max())
            other = ph + np.where(ph > ref, -360.0, 360.0)
            swap = (np.abs(ph - ref) > 90.0) & ((ph < lo) | (ph > hi)) & (other >= lo) & (other <= hi)
            ph = np.where(swap, other, ph)
        return mag, ph
    o = np.argsort(w, kind="stable")
    ph = np.empty_like(ang)
    ph[o] = _phase_branch(np.degrees(np.unwrap(np.radians(ang[o]))), phase_center)
    return mag, ph


def _evaluate(name: str, item, omega, dt):
    """``(omega, H, dt)`` of a curve given as a python-control LTI system or as ``(omega, H)``."""
    import control

    if isinstance(item, control.LTI):
        if not item.issiso():
            raise ShapeError(f"{name!r}: the system is {item.noutputs} x {item.ninputs}; bode draws SISO responses, "
                             "pick one, e.g. sys[0, 0]")
        sys_dt = item.dt
        discrete = sys_dt not in (None, 0) and sys_dt is not False
        if discrete:
            d = 1.0 if sys_dt is True else float(sys_dt)
            if dt is not None and not math.isclose(d, dt, rel_tol=1e-9):
                raise ConfigError(f"{name!r} has sample time {d} but dt={dt} (all discrete curves must share one)")
            dt = d
        if omega is None:
            if not discrete:
                raise ConfigError(f"{name!r} is continuous-time: pass omega= (rad/s) to evaluate it")
            nyq = math.pi / dt
            # stop just short of π/dt: a sampled plant often has a zero at z = -1 (|H| = 0 there)
            omega = np.logspace(math.log10(nyq) - 4.0, math.log10(nyq * (1.0 - 1e-3)), 1000)
        w = np.asarray(omega, dtype=float)
        if discrete and np.any(w > math.pi / dt * (1 + 1e-12)):
            raise ConfigError(f"omega exceeds the Nyquist frequency π/dt = {math.pi / dt:.6g} rad/s of {name!r}")
        H = np.asarray(item.frequency_response(w).complex, dtype=complex).reshape(-1)
        return w, H, dt
    try:
        w, H = item
    except (TypeError, ValueError):
        raise ConfigError(f"{name!r} must be a control LTI system or a pair (omega, response)") from None
    return np.asarray(w, dtype=float), np.asarray(H, dtype=complex), dt


def _phase_locator(lo: float, hi: float):
    from matplotlib.ticker import MultipleLocator

    span = max(hi - lo, 1e-9)
    for base in (15.0, 30.0, 45.0, 90.0, 180.0, 360.0, 720.0):
        if span / base <= 8:
            return MultipleLocator(base)
    return MultipleLocator(360.0 * math.ceil(span / 360.0 / 8))


def bode(curves=None, points=None, ax=None, *, omega=None, dt: float | None = None, reference: str | None = None,
         styles: Mapping[str, dict] | None = None, phase_center: float = 0.0, nyquist: bool = True,
         guides: bool = True, title: str | None = None, legend: bool = True):
    """Bode plot: magnitude (dB) and phase (deg) against log frequency (rad/s), with measured points.

    Conventions (:func:`bode_data`): magnitude ``20 log10 |H|`` dB; phase in degrees,
    unwrapped along frequency with the lowest-frequency value in ``(phase_center - 180°,
    phase_center + 180°]``; measured ``points`` take the branch nearest to the
    ``reference`` curve. For a discrete system the frequency axis ends at the Nyquist
    frequency ``π/dt`` (a vertical dotted line). For loop transfers (negative feedback,
    :mod:`lqgt.frequency`) the guides at 0 dB and at ``-180° + 360° k`` mark the gain and
    phase crossovers.

    Parameters
    ----------
    curves : mapping of str to (control.LTI or (omega, response)), optional
        Lines. A SISO python-control system is evaluated on ``omega`` (default for a
        discrete system: 1000 log-spaced points over the four decades below
        ``0.999 π/dt``, short of the zero at ``z = -1`` that sampled plants often have);
        a pair gives frequencies (rad/s) and complex responses directly.
    points : mapping of str to (omega, response), optional
        Markers without lines, e.g. ``FrequencyResponse.response()`` of a sine sweep.
    ax : (matplotlib.axes.Axes, matplotlib.axes.Axes), optional
        ``(ax_magnitude, ax_phase)``; a new figure with two stacked axes sharing the
        frequency axis is made if not given.
    omega : array_like, optional
        Frequencies (rad/s) at which to evaluate the LTI curves.
    dt : float, optional
        Sample time (s), for the Nyquist line when no discrete system gives it.
    reference : str, optional
        Name of the curve whose phase places the points' branches (default: the first
        curve; without curves, points are unwrapped on their own).
    styles : mapping of str to dict, optional
        Extra matplotlib keyword arguments per curve or point name (e.g.
        ``{"TF β=10": {"marker": "s", "color": "C3"}}``).
    phase_center : float
        See :func:`bode_data` (e.g. ``-180`` draws a DC phase of ±180° as -180°).
    nyquist : bool
        Draw the Nyquist frequency and end the axis there (when a sample time is known).
    guides : bool
        Draw the 0 dB and ``-180° + 360° k`` guide lines.
    title : str, optional
        Title of the magnitude axes.
    legend : bool
        Draw a legend on the magnitude axes.

    Returns
    -------
    (matplotlib.axes.Axes, matplotlib.axes.Axes)
        ``(ax_magnitude, ax_phase)``, log-frequency x axes. Each curve is a line labelled
        with its name in both axes (y-data: ``bode_data`` of it; x-data: its frequencies
        sorted), each points entry a markers-only line labelled with its name; guides and
        the Nyquist line have labels starting with ``_``.

    Raises
    ------
    ConfigError
        Nothing to draw, a continuous system without ``omega``, curves with different
        sample times, an unknown ``reference``, or a malformed ``ax``.
    ShapeError
        A MIMO system, or frequencies and responses of different shapes.
    """
    curves = dict(curves or {})
    points = dict(points or {})
    styles = dict(styles or {})
    if not curves and not points:
        raise ConfigError("nothing to draw: give curves= and/or points=")
    clash = set(curves) & set(points)
    if clash:
        raise ConfigError(f"names {sorted(clash)} are used for both a curve and points; names label the legend")
    if ax is None:
        fig = Figure(figsize=(7.0, 5.6), layout="constrained")
        ax_m, ax_p = fig.subplots(2, 1, sharex=True)
    else:
        try:
            ax_m, ax_p = ax
        except (TypeError, ValueError):
            raise ConfigError("ax must be a pair (ax_magnitude, ax_phase)") from None
        if not (isinstance(ax_m, Axes) and isinstance(ax_p, Axes)):
            raise ConfigError("ax must be a pair of matplotlib Axes (ax_magnitude, ax_phase)")

    data, color = {}, 0
    for name, item in curves.items():
        w, H, dt = _evaluate(name, item, omega, dt)
        o = np.argsort(w, kind="stable")
        w, H = w[o], H[o]
        data[name] = (w, *bode_data(w, H, phase_center=phase_center))
    if reference is not None and reference not in data:
        raise ConfigError(f"reference {reference!r} is not a curve name; curves are {list(data)}")
    ref_name = reference if reference is not None else (next(iter(data)) if data else None)
    ref = None if ref_name is None else (data[ref_name][0], data[ref_name][2])
    for name, (w, mag, ph) in data.items():
        kw = dict(color=f"C{color}", linewidth=1.6, label=name)
        kw.update(styles.get(name, {}))
        ax_m.plot(w, mag, **kw)
        ax_p.plot(w, ph, **kw)
        color += 1
    w_all = [d[0] for d in data.values()]
    for name, item in points.items():
        try:
            w, H = item
        except (TypeError, ValueError):
            raise ConfigError(f"points[{name!r}] must be a pair (omega, response)") from None
        w = np.asarray(w, dtype=float)
        mag, ph = bode_data(w, H, reference=ref, phase_center=phase_center)
        kw = dict(color=f"C{color}", linestyle="none", marker="o", markersize=5, label=name)
        kw.update(styles.get(name, {}))
        ax_m.plot(w, mag, **kw)
        ax_p.plot(w, ph, **kw)
        w_all.append(w)
        color += 1

    w_all = np.concatenate([np.ravel(w) for w in w_all])
    w_pos = w_all[np.isfinite(w_all) & (w_all > 0)]
    for a in (ax_m, ax_p):
        a.set_xscale("log")
        a.grid(True, which="major", alpha=0.35)
        a.grid(True, which="minor", alpha=0.12)
    if w_pos.size:
        left = float(w_pos.min())
        right = float(w_pos.max())
        if nyquist and dt is not None:
            right = max(right, math.pi / dt)
        if right > left:
            ax_m.set_xlim(left, right)
    if nyquist and dt is not None:
        for a in (ax_m, ax_p):
            a.axvline(math.pi / dt, color="0.3", linestyle=":", linewidth=1.0, label="_Nyquist π/dt")
        ax_m.text(math.pi / dt, 0.98, f"π/dt = {math.pi / dt:.3g} rad/s ", transform=ax_m.get_xaxis_transform(),
                  ha="right", va="top", fontsize="x-small", color="0.3")
    ph_vals = np.concatenate([ln.get_ydata() for ln in ax_p.lines if not str(ln.get_label()).startswith("_")])
    ph_vals = ph_vals[np.isfinite(ph_vals)]
    if guides:
        ax_m.axhline(0.0, color="0.35", linewidth=0.8, linestyle="--", label="_0 dB")
        if ph_vals.size:
            lo, hi = float(ph_vals.min()), float(ph_vals.max())
            k0, k1 = math.floor((lo + 180.0) / 360.0), math.ceil((hi + 180.0) / 360.0)
            for k in range(k0, k1 + 1):
                g = -180.0 + 360.0 * k
                if lo - 20.0 <= g <= hi + 20.0:
                    ax_p.axhline(g, color="0.35", linewidth=0.8, linestyle="--", label=f"_{g:g} deg")
    if ph_vals.size:
        ax_p.yaxis.set_major_locator(_phase_locator(float(ph_vals.min()), float(ph_vals.max())))
    ax_m.set_ylabel("magnitude (dB)")
    ax_p.set_ylabel("phase (deg)")
    ax_p.set_xlabel("frequency ω (rad/s)")
    if title is not None:
        ax_m.set_title(title, fontsize="medium")
    if legend:
        ax_m.legend(fontsize="small", loc="best")
    return ax_m, ax_p


__all__ += ["training_curve"]


def training_curve(log, ax: Axes | None = None, *, smooth: int | None = None, reference: float | None = None,
                   reference_label: str = "reference", label: str = "training loss",
                   title: str | None = None) -> Axes:
    """Training loss against optimizer step (log-scale loss), from :func:`lqgt.learn.fit`.

    Draws the loss of every step (thin line), its moving average over ``smooth`` steps
    (thick line), the validation loss (markers) if the log has one, and an optional
    horizontal reference (e.g. the Kalman filter's MSE on the same data).

    Parameters
    ----------
    log : lqgt.learn.TrainingLog
        The log (its ``steps``, ``loss``, ``val_steps``, ``val_loss`` are used).
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure is made if not given.
    smooth : int, optional
        Window of the moving average (default: ``len(loss) // 50``, no average below 2).
    reference : float, optional
        Draw a dashed horizontal line at this loss.
    reference_label : str
        Legend label of the reference line.
    label : str
        Legend label of the loss curve.
    title : str, optional
        Axes title.

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    ShapeError
        If ``log.steps`` and ``log.loss`` differ in length or are empty.
    NonFiniteError
        If the loss contains NaN or infinity.
    """
    steps = np.asarray(log.steps, dtype=float)
    loss = np.asarray(log.loss, dtype=float)
    if steps.shape != loss.shape or steps.ndim != 1 or not steps.size:
        raise ShapeError(f"training_curve: log.steps {steps.shape} and log.loss {loss.shape} must be equal, 1-D, non-empty")
    if not np.isfinite(loss).all():
        raise NonFiniteError("training_curve: log.loss contains NaN or infinity")
    if ax is None:
        ax = _new_axes((6.0, 3.6))
    k = max(1, loss.size // 50) if smooth is None else int(smooth)
    ax.plot(steps, loss, color="C0", linewidth=0.6, alpha=0.45 if k > 1 else 1.0, label=label if k <= 1 else "_raw")
    if k > 1:
        kern = np.ones(k) / k
        avg = np.convolve(loss, kern, mode="valid")
        ax.plot(steps[k - 1:], avg, color="C0", linewidth=1.8, label=f"{label} ({k}-step mean)")
    vs = np.asarray(getattr(log, "val_steps", []), dtype=float)
    vl = np.asarray(getattr(log, "val_loss", []), dtype=float)
    if vs.size and vs.shape == vl.shape:
        ax.plot(vs, vl, "o", color="C1", markersize=4, label="validation loss")
    if reference is not None:
        ax.axhline(float(reference), color="0.3", linestyle="--", linewidth=1.0, label=reference_label)
    positive = (loss > 0).all() and (vl > 0).all() and (reference is None or reference > 0)
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss" + (" (log scale)" if positive else ""))
    if title is not None:
        ax.set_title(title, fontsize="medium")
    ax.legend(fontsize="small", loc="best")
    ax.grid(True, which="major", alpha=0.3)
    return ax


__all__ += ["disk_margin"]


def disk_margin(result, ax: Axes | None = None, *, label: str | None = None, title: str | None = None,
                color: str | None = None) -> Axes:
    """Disk margin against frequency, from :func:`lqgt.disk_margins`.

    Draws ``result.curve`` against ``result.omega`` (``1/μ(S_σ(jω))``; one line per channel
    for loop-at-a-time) on a log frequency axis (``ω > 0``), marks the worst case
    ``(result.omega_worst, result.alpha)`` and, for a discrete loop, the Nyquist frequency.

    Parameters
    ----------
    result : lqgt.DiskMargins
        From :func:`lqgt.disk_margins`.
    ax : matplotlib.axes.Axes, optional
        Axes to draw on (default: a new figure's).
    label : str, optional
        Legend label of the curve (default: the kind and skew).
    title : str, optional
        Axes title.
    color : str, optional
        Colour of the curve (one-curve results; default ``"C0"``, channel ``i`` in ``"C{i}"``).

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    ConfigError
        ``result`` is not a :class:`lqgt.DiskMargins`.
    """
    from .margins import DiskMargins

    if not isinstance(result, DiskMargins):
        raise ConfigError(f"disk_margin: result must be an lqgt.DiskMargins (from lqgt.disk_margins), "
                          f"got {type(result).__name__}")
    if ax is None:
        ax = _new_axes((6.0, 3.6))
    w = np.asarray(result.omega)
    curve = np.asarray(result.curve)
    curve = curve[:, None] if curve.ndim == 1 else curve
    base = label if label is not None else f"{result.kind}, σ = {result.skew:g}"
    keep = w > 0
    for i in range(curve.shape[1]):
        name = base if curve.shape[1] == 1 else f"{base}, channel {i}"
        ax.plot(w[keep], curve[keep, i], color=color if (color is not None and curve.shape[1] == 1) else f"C{i}",
                label=name)
    if result.stable is not False and math.isfinite(result.alpha) and math.isfinite(result.omega_worst):
        gm = result.gain_margin
        ax.plot([result.omega_worst], [result.alpha], "o", color=color or "k", markersize=5,
                label=f"α = {result.alpha:.4g} at ω = {result.omega_worst:.4g} rad/s "
                      f"(gain [{gm[0]:.4g}, {gm[1]:.4g}], phase ±{result.phase_margin:.3g}°)")
    if result.dt is not None and not any(ln.get_label() == "Nyquist π/dt" for ln in ax.get_lines()):
        ax.axvline(math.pi / result.dt, color="0.5", linestyle=":", linewidth=1.0, label="Nyquist π/dt")
    ax.set_xscale("log")
    finite = curve[keep][np.isfinite(curve[keep])]
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 100:
        ax.set_yscale("log")
    ax.set_xlabel("frequency ω (rad/s)")
    ax.set_ylabel("disk margin α(ω) = 1/μ(S_σ)")
    if title is not None:
        ax.set_title(title, fontsize="medium")
    ax.legend(fontsize="small", loc="best")
    ax.grid(True, which="major", alpha=0.3)
    return ax
