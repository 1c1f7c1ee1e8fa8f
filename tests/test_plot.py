"""Tests of lqgt.plot: the drawn data, labels and error bars, not only that a call returns."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from matplotlib.collections import PolyCollection
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.figure import Figure

import lqgt
from lqgt.errors import ConfigError, ShapeError
from lqgt.plot import band_statistics, cost_comparison, fmt_number, trajectory_bands

NAMES = ["kalman", "open-loop"]


@pytest.fixture(scope="module")
def res():
    plant, Q, R = lqgt.plants.default()
    design = lqgt.lqg(plant, Q, R)
    ests = {"kalman": lqgt.KalmanFilter(plant, "current"), "open-loop": lqgt.OpenLoopObserver(plant)}
    return lqgt.simulate(plant, design.K, ests, Q=Q, R=R, horizon=40, batch=64, seed=3)


def _reference(res, key, index, name):
    """Mean and sample std across the batch, computed with numpy (independent of plot.py)."""
    a = getattr(res, key)[name][:, :, index].cpu().numpy()
    return a.mean(axis=0), a.std(axis=0, ddof=1)


def _assert_band(poly, t, lo, hi):
    """Every vertex of the fill polygon lies on the lower or upper curve, and both curves are covered."""
    verts = poly.get_paths()[0].vertices
    seen_lo, seen_hi = np.zeros(t.size, bool), np.zeros(t.size, bool)
    for x, y in verts:
        i = int(np.argmin(np.abs(t - x)))
        assert t[i] == pytest.approx(x, abs=1e-12)
        on_lo, on_hi = math.isclose(y, lo[i], rel_tol=1e-12, abs_tol=1e-12), math.isclose(y, hi[i], rel_tol=1e-12,
                                                                                            abs_tol=1e-12)
        assert on_lo or on_hi, f"vertex ({x}, {y}) is on neither band edge"
        seen_lo[i] |= on_lo
        seen_hi[i] |= on_hi
    assert seen_lo.all() and seen_hi.all()


# ---------------------------------------------------------------- band_statistics

@pytest.mark.parametrize("key,index", [("x", 0), ("x", 3), ("u", 0), ("y", 1), ("x_hat", 2)])
def test_band_statistics_match_numpy(res, key, index):
    stats = band_statistics(res, key, index)
    assert list(stats) == NAMES
    for name in NAMES:
        mean, std = stats[name]
        ref_mean, ref_std = _reference(res, key, index, name)
        assert mean.shape == std.shape == (40,)
        np.testing.assert_allclose(mean, ref_mean, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(std, ref_std, rtol=1e-12, atol=1e-14)


def test_band_statistics_batch_of_one_has_zero_std():
    plant, Q, R = lqgt.plants.scalar_unstable()
    d = lqgt.lqg(plant, Q, R)
    r = lqgt.simulate(plant, d.K, {"kf": lqgt.KalmanFilter(plant)}, Q=Q, R=R, horizon=5, batch=1)
    mean, std = band_statistics(r, "x", 0)["kf"]
    np.testing.assert_array_equal(std, 0.0)
    np.testing.assert_allclose(mean, r.x["kf"][0, :, 0].numpy())


# ---------------------------------------------------------------- trajectory_bands

@pytest.mark.parametrize("k", [2.0, 1.0, 0.0])
def test_trajectory_bands_draws_mean_and_k_sigma_band(res, k):
    ax = trajectory_bands(res, "x", 0, k=k, ylabel="p1 (m)")
    t = res.t
    polys = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(polys) == len(NAMES)
    for i, name in enumerate(NAMES):
        mean, std = _reference(res, "x", 0, name)
        line, lo_line, hi_line = ax.lines[3 * i: 3 * i + 3]
        assert line.get_label() == name
        np.testing.assert_allclose(line.get_xdata(), t)
        np.testing.assert_allclose(line.get_ydata(), mean, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(lo_line.get_ydata(), mean - k * std, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(hi_line.get_ydata(), mean + k * std, rtol=1e-12, atol=1e-14)
        _assert_band(polys[i], t, mean - k * std, mean + k * std)
    # same colour for an estimator's line and band
    from matplotlib.colors import to_rgb

    for i in range(len(NAMES)):
        assert to_rgb(ax.lines[3 * i].get_color()) == pytest.approx(tuple(polys[i].get_facecolor()[0][:3]))


def test_trajectory_bands_labels_and_legend(res):
    ax = trajectory_bands(res, "u", 0, ylabel="u: force (N)", title="input")
    assert ax.get_xlabel() == "time (s)"
    assert ax.get_ylabel() == "u: force (N)"
    assert ax.get_title() == "input"
    leg = ax.get_legend()
    assert [tx.get_text() for tx in leg.get_texts()] == NAMES
    assert leg.get_title().get_text() == "mean ± 2σ over 64 runs"
    assert ax.get_xlim() == pytest.approx((res.t[0], res.t[-1]))
    # the time axis is in seconds: dt = 0.1 s for the default plant
    assert res.t[1] - res.t[0] == pytest.approx(0.1)


def test_trajectory_bands_default_label_names_subset_and_given_axes(res):
    ax0 = Figure().add_subplot()
    ax = trajectory_bands(res, "y", 1, names=["open-loop"], ax=ax0, legend=False)
    assert ax is ax0
    assert ax.get_ylabel() == "y[1]"
    assert ax.get_legend() is None
    assert [ln.get_label() for ln in ax.lines if not ln.get_label().startswith("_")] == ["open-loop"]
    mean, _ = _reference(res, "y", 1, "open-loop")
    np.testing.assert_allclose(ax.lines[0].get_ydata(), mean)


def test_trajectory_bands_new_figure_renders_without_pyplot(res):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    ax = trajectory_bands(res)
    assert plt.get_fignums() == before  # no pyplot figure was made
    buf = io.BytesIO()
    ax.figure.savefig(buf, format="png")
    assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trajectory_bands_bad_input(res):
    with pytest.raises(ConfigError, match="key must be one of"):
        trajectory_bands(res, "z")
    with pytest.raises(ConfigError, match="no estimator named 'nope'"):
        trajectory_bands(res, names=["nope"])
    with pytest.raises(ShapeError, match="index 4 is out of range for 'x'"):
        trajectory_bands(res, "x", 4)
    with pytest.raises(ConfigError, match="k must be"):
        trajectory_bands(res, k=-1.0)
    with pytest.raises(ConfigError, match="names is empty"):
        trajectory_bands(res, names=[])
    plant, Q, R = lqgt.plants.scalar_unstable()
    d = lqgt.lqg(plant, Q, R)
    r = lqgt.simulate(plant, d.K, {"kf": lqgt.KalmanFilter(plant)}, Q=Q, R=R, horizon=5, batch=4, store=False)
    with pytest.raises(ConfigError, match="store=False"):
        trajectory_bands(r)


# ---------------------------------------------------------------- cost_comparison

COSTS = {"a": 1.0, "b": 2.5, "c": 0.4}
CI = {"a": (0.9, 1.2), "b": (2.0, 2.6), "c": (0.35, 0.45)}
EXACT = {"a": 1.05, "b": None, "c": 0.41}


def _errorbar(ax) -> ErrorbarContainer:
    (eb,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    return eb


def test_cost_comparison_bars_errorbars_and_exact_markers():
    ax = cost_comparison(COSTS, CI, EXACT, optimum=0.3)
    (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [p.get_width() for p in bars.patches] == pytest.approx([1.0, 2.5, 0.4])
    ys = [p.get_y() + p.get_height() / 2 for p in bars.patches]
    assert ys == pytest.approx([0.0, 1.0, 2.0])
    # error bars span exactly the confidence intervals (xerr), at the bar centres
    segs = _errorbar(ax).lines[2][0].get_segments()
    assert len(segs) == 3
    for seg, name, y in zip(segs, COSTS, ys):
        (x0, y0), (x1, y1) = seg
        assert (min(x0, x1), max(x0, x1)) == pytest.approx(CI[name])
        assert y0 == y1 == pytest.approx(y)
        assert abs(x1 - x0) == pytest.approx(CI[name][1] - CI[name][0])
    # exact markers only where given
    (exact_line,) = [ln for ln in ax.lines if ln.get_label() == "exact (Lyapunov)"]
    assert list(exact_line.get_xdata()) == pytest.approx([1.05, 0.41])
    assert list(exact_line.get_ydata()) == pytest.approx([0.0, 2.0])
    (opt,) = [ln for ln in ax.lines if ln.get_label() == "LQG optimum"]
    assert list(opt.get_xdata()) == pytest.approx([0.3, 0.3])
    # names on the y-axis, first at the top
    assert [tl.get_text() for tl in ax.get_yticklabels()] == list(COSTS)
    assert ax.yaxis_inverted()
    assert ax.get_xlabel() == "average cost per step"
    legend = [tx.get_text() for tx in ax.get_legend().get_texts()]
    assert legend == ["Monte Carlo", "95% CI", "exact (Lyapunov)", "LQG optimum"]
    texts = [tx.get_text() for tx in ax.texts]
    assert texts[0] == "1.000  [0.9000, 1.200]"
    assert ax.get_xlim()[0] == 0.0 and ax.get_xlim()[1] > 2.6


def test_cost_comparison_diverged_and_infinite_ci_draw_no_errorbar():
    costs = {"ok": 1.0, "diverged": math.inf, "single": 2.0}
    ci = {"ok": (0.8, 1.1), "diverged": (math.inf, math.inf), "single": (-math.inf, math.inf)}
    ax0 = Figure().add_subplot()
    ax = cost_comparison(costs, ci, None, ax=ax0)
    assert ax is ax0
    segs = _errorbar(ax).lines[2][0].get_segments()
    assert len(segs) == 1
    assert (segs[0][0][0], segs[0][1][0]) == pytest.approx((0.8, 1.1))
    assert "diverged" in [tx.get_text() for tx in ax.texts]
    assert not [ln for ln in ax.lines if ln.get_label() == "exact (Lyapunov)"]
    buf = io.BytesIO()
    ax.figure.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"


def test_cost_comparison_bad_input():
    with pytest.raises(ConfigError, match="ci has no interval for 'b'"):
        cost_comparison({"a": 1.0, "b": 2.0}, {"a": (0.9, 1.1)})
    with pytest.raises(ConfigError, match=r"exact names \['z'\]"):
        cost_comparison({"a": 1.0}, {"a": (0.9, 1.1)}, {"z": 1.0})
    with pytest.raises(ShapeError, match="pair"):
        cost_comparison({"a": 1.0}, {"a": (0.9, 1.0, 1.1)})
    with pytest.raises(ConfigError, match="costs is empty"):
        cost_comparison({}, {})


def test_cost_comparison_from_a_simulation(res):
    ax = cost_comparison(res.cost, res.cost_ci)
    (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [p.get_width() for p in bars.patches] == pytest.approx([res.cost[n] for n in NAMES])
    for seg, n in zip(_errorbar(ax).lines[2][0].get_segments(), NAMES):
        assert (seg[0][0], seg[1][0]) == pytest.approx(res.cost_ci[n])


@pytest.mark.parametrize("v,s", [(0.33002, "0.3300"), (1.8249, "1.825"), (1234.4, "1234"), (2e6, "2.000e+06"),
                                 (0.0, "0.000"), (math.inf, "inf"), (math.nan, "nan"), (-0.5, "-0.5000")])
def test_fmt_number(v, s):
    assert fmt_number(v) == s


def test_plot_accepts_tensors_on_the_result_device(res):
    # band_statistics moves data to the CPU itself; float32 results work too
    plant, Q, R = lqgt.plants.default()
    d = lqgt.lqg(plant, Q, R)
    r = lqgt.simulate(plant, d.K, {"kf": lqgt.KalmanFilter(plant)}, Q=Q, R=R, horizon=10, batch=8,
                      dtype=torch.float32)
    mean, std = band_statistics(r, "x", 0)["kf"]
    assert mean.dtype == np.float64
    np.testing.assert_allclose(mean, r.x["kf"][:, :, 0].double().mean(0).numpy(), rtol=1e-12)
