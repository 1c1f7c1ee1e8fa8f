"""Tests of lqgt.plot: the drawn data (lines, bands, image), scales and labels."""

from __future__ import annotations

import inspect
import io
import math
import re

import matplotlib.colors as mcolors
import numpy as np
import pytest
import torch
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

import lqgt
from lqgt import plot as plot_tf
from lqgt.errors import ConfigError, NonFiniteError, ShapeError
from lqgt.plot import attention_heatmap, beta_sweep_gap, certificate, gap_classes
from lqgt.sweep import BetaSweep


def _sweep(**over) -> BetaSweep:
    """A hand-made sweep with all three kinds of gap interval: resolved, unresolved, negative."""
    betas = np.array([1.0, 10.0, 100.0, 1e3, 1e4])
    gap = np.array([0.5, 0.05, 1e-4, -2e-6, -1e-6])
    half = np.array([0.02, 0.01, 2e-4, 1e-6, 3e-6])
    kw = dict(
        betas=betas, cost=1.0 + gap, gap=gap, gap_ci=np.stack([gap - half, gap + half], axis=1),
        cost_lqg=1.0, cost_lqg_exact=1.01,
        error_max=np.array([2.0, 0.5, 1e-2, 1e-9, 0.0]), error_mean=np.array([1.0, 0.2, 1e-3, 1e-11, 0.0]),
        bound=np.array([100.0, 31.6, 10.0, 3.16, 1.0]),
        settings=dict(window=8, batch=64, horizon=100, burn_in=20),
    )
    kw.update(over)
    return BetaSweep(**kw)


def _line(ax, label):
    lines = [ln for ln in ax.get_lines() if ln.get_label() == label]
    assert len(lines) == 1, f"expected one line labelled {label!r}, got {[ln.get_label() for ln in ax.get_lines()]}"
    return lines[0]


def _nan_equal(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    assert a.shape == b.shape
    assert np.array_equal(np.isnan(a), np.isnan(b)), (a, b)
    np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=1e-12, atol=0)


def _render(ax):
    buf = io.BytesIO()
    ax.figure.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"


# ---------------------------------------------------------------- gap_classes / beta_sweep_gap

def test_gap_classes():
    ci = np.array([[0.1, 0.2], [-0.1, 0.2], [-0.2, -0.1], [0.0, 0.1], [-0.1, 0.0]])
    assert gap_classes(ci).tolist() == ["positive", "unresolved", "negative", "unresolved", "unresolved"]
    with pytest.raises(ShapeError):
        gap_classes(np.zeros((3, 3)))


def test_beta_sweep_gap_draws_each_class_where_it_belongs():
    sw = _sweep()
    ax = beta_sweep_gap(sw)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    nan = np.nan
    main = _line(ax, "J_TF − J_LQG (predictor, MC)")
    _nan_equal(main.get_xdata(), sw.betas)
    _nan_equal(main.get_ydata(), [0.5, 0.05, nan, nan, nan])  # resolved: CI above 0
    up = _line(ax, "unresolved: 95% upper bound")
    assert up.get_linestyle() == "None"
    _nan_equal(up.get_ydata(), [nan, nan, 3e-4, nan, 2e-6])  # the upper end of the interval
    neg = _line(ax, "negative: |gap| (Monte Carlo error)")
    _nan_equal(neg.get_ydata(), [nan, nan, nan, 2e-6, nan])
    ref = _line(ax, "J_LQG (predictor, MC) = 1")
    assert list(ref.get_ydata()) == [1.0, 1.0]
    # the 95% band spans exactly [lo, hi] at the resolved points
    bands = [c for c in ax.collections if isinstance(c, PolyCollection) and c.get_label() == "95% CI (common noise)"]
    assert len(bands) == 1
    verts = np.vstack([p.vertices for p in bands[0].get_paths()])
    for b, lo, hi in zip(sw.betas[:2], sw.gap_ci[:2, 0], sw.gap_ci[:2, 1]):
        ys = verts[np.isclose(verts[:, 0], b), 1]
        assert np.any(np.isclose(ys, lo)) and np.any(np.isclose(ys, hi))
    assert verts[:, 0].max() <= 10.0  # no band over the unresolved points
    # error bars of the same intervals
    segs = [s for c in ax.collections if not isinstance(c, PolyCollection) for s in c.get_segments()]
    spans = sorted((float(s[0, 1]), float(s[1, 1])) for s in segs if len(s) == 2 and s[0, 0] == s[1, 0])
    np.testing.assert_allclose(spans, sorted(map(tuple, sw.gap_ci[:2])), rtol=1e-12)
    assert "β" in ax.get_xlabel()
    assert "J_TF − J_LQG" in ax.get_ylabel()
    assert "H = 8" in ax.get_title() and "64 runs" in ax.get_title()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "unresolved: 95% upper bound" in legend and "95% CI (common noise)" in legend
    _render(ax)


def test_beta_sweep_gap_relative_axis_and_given_axes():
    fig = Figure()
    ax0 = fig.add_subplot()
    ax = beta_sweep_gap(_sweep(), ax=ax0, title="T", relative_axis=False)
    assert ax is ax0 and ax.get_title() == "T"
    assert not ax.child_axes
    ax = beta_sweep_gap(_sweep(cost_lqg=2.0))
    (sec,) = ax.child_axes
    assert "%" in sec.get_ylabel()
    _render(ax)  # the secondary axis sets its limits when drawn
    np.testing.assert_allclose(sec.get_ylim(), 100.0 * np.asarray(ax.get_ylim()) / 2.0, rtol=1e-9)  # % of J_LQG


def test_beta_sweep_gap_omits_empty_classes():
    sw = _sweep(gap=np.array([1.0, 0.5, 0.1, 0.01, 1e-3]),
                gap_ci=np.array([[0.9, 1.1], [0.4, 0.6], [0.05, 0.15], [0.005, 0.015], [5e-4, 1.5e-3]]))
    ax = beta_sweep_gap(sw)
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert "unresolved: 95% upper bound" not in labels and "negative: |gap| (Monte Carlo error)" not in labels
    _nan_equal(_line(ax, "J_TF − J_LQG (predictor, MC)").get_ydata(), sw.gap)


def test_beta_sweep_gap_bad_input():
    with pytest.raises(ConfigError, match="β = 0|> 0"):
        beta_sweep_gap(_sweep(betas=np.array([0.0, 10.0, 100.0, 1e3, 1e4])))
    with pytest.raises(NonFiniteError):
        beta_sweep_gap(_sweep(gap=np.array([math.inf, 0.05, 1e-4, -2e-6, -1e-6])))
    with pytest.raises(ShapeError):
        beta_sweep_gap(_sweep(gap_ci=np.zeros((5, 3))))
    with pytest.raises(ConfigError, match="BetaSweep"):
        beta_sweep_gap(object())


# ---------------------------------------------------------------- certificate

def test_certificate_lines_are_the_sweep_data():
    sw = _sweep()
    ax = certificate(sw)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    _nan_equal(_line(ax, "certified bound ε(β)").get_ydata(), sw.bound)
    _nan_equal(_line(ax, "measured: max over runs").get_ydata(), [2.0, 0.5, 1e-2, 1e-9, np.nan])  # 0 -> NaN
    _nan_equal(_line(ax, "measured: mean over runs").get_ydata(), [1.0, 0.2, 1e-3, 1e-11, np.nan])
    for ln in ax.get_lines():
        _nan_equal(ln.get_xdata(), sw.betas)
    assert "bound violated" not in [ln.get_label() for ln in ax.get_lines()]
    texts = [t.get_text() for t in ax.texts]
    assert any("50 × measured max (β = 1)" in t for t in texts), texts  # min of bound / max = 100 / 2
    assert "β" in ax.get_xlabel() and "‖" in ax.get_ylabel() and "state units" in ax.get_ylabel()
    _render(ax)


def test_certificate_marks_a_violated_bound_and_infinite_bound_is_nan():
    sw = _sweep(bound=np.array([math.inf, 0.1, 10.0, 3.16, 1.0]))
    ax = certificate(sw, annotate=False)
    _nan_equal(_line(ax, "certified bound ε(β)").get_ydata(), [np.nan, 0.1, 10.0, 3.16, 1.0])
    bad = _line(ax, "bound violated")
    np.testing.assert_array_equal(bad.get_xdata(), [10.0])
    np.testing.assert_array_equal(bad.get_ydata(), [0.5])
    assert not ax.texts


def test_certificate_bad_input():
    with pytest.raises(ShapeError):
        certificate(_sweep(bound=np.ones(4)))
    with pytest.raises(NonFiniteError):
        certificate(_sweep(error_max=np.array([np.nan, 1, 1, 1, 1.0])))


# ---------------------------------------------------------------- attention_heatmap

def _weights(T=12, H=4, seed=0):
    """Random causal windowed softmax weights (rows sum to 1, zero outside the window)."""
    g = np.random.default_rng(seed)
    W = np.zeros((T, T))
    for t in range(T):
        lo = max(0, t - H + 1)
        e = np.exp(3 * g.standard_normal(t + 1 - lo))
        W[t, lo:t + 1] = e / e.sum()
    return W


def _image(ax) -> AxesImage:
    (im,) = ax.get_images()
    return im


def test_attention_heatmap_image_is_the_weights():
    W = _weights()
    ax = attention_heatmap(W)
    im = _image(ax)
    np.testing.assert_array_equal(np.ma.getdata(im.get_array()), W)
    assert isinstance(im.norm, mcolors.LogNorm) and im.norm.vmin == 1e-6 and im.norm.vmax == 1.0
    assert im.get_extent() == [-0.5, 11.5, 11.5, -0.5]  # query t downwards, key i across, in steps
    assert "query" in ax.get_ylabel() and "(step)" in ax.get_ylabel() and "key" in ax.get_xlabel()
    assert im.colorbar is not None and "α[t, i]" in im.colorbar.ax.get_ylabel()
    _render(ax)


def test_attention_heatmap_seconds_window_slice_and_linear():
    W = _weights(T=20, H=5)
    t = 0.1 * np.arange(20) + 2.0
    ax = attention_heatmap(torch.as_tensor(W), t=t, steps=slice(4, 14), window=5, log=False, colorbar=False)
    im = _image(ax)
    arr = im.get_array()
    np.testing.assert_array_equal(np.ma.getdata(arr), W[4:14, 4:14])
    lag = np.arange(10)[:, None] - np.arange(10)[None, :]
    np.testing.assert_array_equal(np.ma.getmaskarray(arr), (lag < 0) | (lag >= 5))
    np.testing.assert_allclose(im.get_extent(), [2.35, 3.35, 3.35, 2.35])
    assert isinstance(im.norm, mcolors.Normalize) and not isinstance(im.norm, mcolors.LogNorm)
    assert (im.norm.vmin, im.norm.vmax) == (0.0, 1.0)
    assert "(s)" in ax.get_xlabel() and "(s)" in ax.get_ylabel()
    assert im.colorbar is None
    assert any("H = 5" in tx.get_text() for tx in ax.texts)


def test_attention_heatmap_of_a_transformer_filter_run():
    plant, Q, R = lqgt.plants.oscillator()
    design = lqgt.lqg(plant, Q, R)
    tf = lqgt.TransformerFilter(plant, beta=30.0, window=8, K=design.K)
    res = lqgt.simulate(plant, design.K, {"tf": tf}, Q=Q, R=R, horizon=30, batch=1, seed=2)
    x_hat, w = tf.run(res.y["tf"][0])
    np.testing.assert_allclose(x_hat[:-1].numpy(), res.x_hat["tf"][0].numpy(), atol=1e-12)
    ax = attention_heatmap(w, window=8)
    arr = _image(ax).get_array()
    np.testing.assert_array_equal(np.ma.getdata(arr), w.numpy())
    np.testing.assert_allclose(np.ma.getdata(arr).sum(1), 1.0, atol=1e-12)
    assert not np.any(np.ma.getdata(arr)[np.ma.getmaskarray(arr)])  # nothing outside the window is hidden


def test_attention_heatmap_given_axes_returned():
    fig = Figure()
    ax0 = fig.add_subplot()
    assert attention_heatmap(_weights(), ax=ax0, title="α") is ax0
    assert ax0.get_title() == "α"


def test_attention_heatmap_bad_input():
    W = _weights()
    with pytest.raises(ShapeError, match="square"):
        attention_heatmap(np.ones((3, 12, 12)))
    with pytest.raises(ShapeError, match="square"):
        attention_heatmap(np.ones((3, 4)))
    bad = W.copy()
    bad[2, 1] = np.nan
    with pytest.raises(NonFiniteError):
        attention_heatmap(bad)
    with pytest.raises(ShapeError):
        attention_heatmap(W, t=np.arange(5))
    with pytest.raises(ConfigError, match="uniformly"):
        attention_heatmap(W, t=np.arange(12) ** 2)
    for floor in (0.0, 1.0):
        with pytest.raises(ConfigError, match="floor"):
            attention_heatmap(W, floor=floor)
    with pytest.raises(ConfigError, match="window"):
        attention_heatmap(W, window=0)
    with pytest.raises(ConfigError, match="steps"):
        attention_heatmap(W, steps=slice(0, 12, 2))
    with pytest.raises(ConfigError, match="selects no steps"):
        attention_heatmap(W, steps=slice(20, 30))
    with pytest.raises(ConfigError, match="colormap"):
        attention_heatmap(W, cmap="no-such-map")


# ---------------------------------------------------------------- with a real sweep; conventions

def test_plots_of_a_real_beta_sweep():
    plant, Q, R = lqgt.plants.oscillator()
    sw = lqgt.beta_sweep(plant, Q, R, [1.0, 100.0, 1e6], window=8, batch=32, horizon=60, burn_in=10)
    ax = beta_sweep_gap(sw)
    gap_line = _line(ax, "J_TF − J_LQG (predictor, MC)")
    assert gap_line.get_ydata()[0] == pytest.approx(sw.gap[0])  # β = 1 is far from LQG: resolved
    ax = certificate(sw)
    assert np.all(sw.error_max <= sw.bound)
    _nan_equal(_line(ax, "certified bound ε(β)").get_ydata(), sw.bound)
    _render(ax)


def test_no_pyplot_figures_are_made():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    beta_sweep_gap(_sweep())
    certificate(_sweep())
    attention_heatmap(_weights())
    assert plt.get_fignums() == before


@pytest.mark.parametrize("fn", [getattr(plot_tf, n) for n in ("beta_sweep_gap", "certificate", "attention_heatmap", "gap_classes")])
def test_docstrings_document_every_parameter(fn):
    doc = inspect.getdoc(fn)
    for section in ("Parameters", "Returns"):
        assert re.search(rf"^{section}\n-+$", doc, re.M), f"{fn.__name__}: no {section} section"
    for name in inspect.signature(fn).parameters:
        assert re.search(rf"^{name} :", doc, re.M), f"{fn.__name__}: parameter {name!r} is not documented"
