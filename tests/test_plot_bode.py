"""Tests of lqgt.plot.bode / bode_data: the drawn data (dB, unwrapped degrees, branches of measured
points), the axes (log frequency up to π/dt, labels with units), composition with given axes, errors."""

from __future__ import annotations

import io
import math

import control
import numpy as np
import pytest
from matplotlib.figure import Figure

import lqgt
from lqgt.errors import ConfigError, ShapeError
from lqgt.frequency import loop_transfer, lqr_loop_transfer
from lqgt.plot import bode, bode_data


@pytest.fixture(scope="module")
def loop():
    plant, Q, R = lqgt.plants.double_integrator()
    design = lqgt.lqg(plant, Q, R)
    return plant, design, loop_transfer(plant, design, "input", "predictor")


def _named(ax, label):
    lines = [ln for ln in ax.lines if ln.get_label() == label]
    assert len(lines) == 1, [ln.get_label() for ln in ax.lines]
    return lines[0]


def test_bode_data_conventions():
    w = np.geomspace(0.1, 10, 200)
    # a pure delay of 3 rad at ω = 1: phase -3 ω rad, which wraps many times; plus a 1/ω magnitude
    H = np.exp(-3j * w) / w
    mag, ph = bode_data(w, H)
    np.testing.assert_allclose(mag, -20 * np.log10(w), atol=1e-12)
    np.testing.assert_allclose(ph, np.degrees(-3 * w), atol=1e-9)      # continuous, no wrap
    assert np.all(np.abs(np.diff(ph)) < 180)
    # the lowest-frequency value lies in (center - 180, center + 180]
    _, ph2 = bode_data(w, -H)
    assert -180 < ph2[0] <= 180
    np.testing.assert_allclose(ph2 - ph, ph2[0] - ph[0])                # same shift everywhere
    _, ph3 = bode_data(w, -H, phase_center=-180.0)
    assert -360 < ph3[0] <= 0
    # given order is kept (not sorted)
    o = np.random.default_rng(0).permutation(w.size)
    m4, ph4 = bode_data(w[o], H[o])
    np.testing.assert_allclose(ph4, ph[o])
    np.testing.assert_allclose(m4, mag[o])


def test_bode_data_reference_branch():
    w_ref = np.geomspace(0.1, 10, 400)
    ph_ref = np.degrees(-3 * w_ref) - 720.0
    w = np.array([0.2, 1.0, 5.0])
    H = 2.0 * np.exp(-3j * w)
    mag, ph = bode_data(w, H, reference=(w_ref, ph_ref))
    np.testing.assert_allclose(ph, np.degrees(-3 * w) - 720.0, atol=1e-9)
    np.testing.assert_allclose(mag, 20 * np.log10(2.0))
    with pytest.raises(ShapeError, match="reference"):
        bode_data(w, H, reference=(w_ref, ph_ref[:-1]))
    with pytest.raises(ShapeError, match="same length"):
        bode_data(w, H[:2])


def test_bode_draws_the_analytic_curve_and_points(loop):
    plant, design, L = loop
    nyq = math.pi / plant.dt
    w_pts = np.array([0.3, 1.0, 3.0, 10.0])
    H_pts = L.frequency_response(w_pts).complex.ravel() * np.exp(2j * np.pi)   # same value, any branch
    ax_m, ax_p = bode({"LQG": L}, {"measured": (w_pts, H_pts)})
    assert ax_m.figure is ax_p.figure
    line_m, line_p = _named(ax_m, "LQG"), _named(ax_p, "LQG")
    w = line_m.get_xdata()
    assert w.size == 1000 and w.max() < nyq and w.max() == pytest.approx(0.999 * nyq)
    H = L.frequency_response(w).complex.ravel()
    np.testing.assert_allclose(line_m.get_ydata(), 20 * np.log10(np.abs(H)), rtol=1e-12)
    ph = line_p.get_ydata()
    assert np.all(np.abs(np.diff(ph)) < 90)                                    # unwrapped
    np.testing.assert_allclose(np.exp(1j * np.radians(ph)), H / np.abs(H), atol=1e-9)
    # the measured points sit on the curve, on the curve's branch
    pm, pp = _named(ax_m, "measured"), _named(ax_p, "measured")
    assert pm.get_linestyle() == "None" and pm.get_marker() == "o"
    ref_ph = np.interp(np.log(w_pts), np.log(w), ph)
    np.testing.assert_allclose(pp.get_ydata(), ref_ph, atol=0.5)
    # axes: log frequency up to π/dt, labelled with units, Nyquist line
    for a in (ax_m, ax_p):
        assert a.get_xscale() == "log"
        assert a.get_xlim()[1] == pytest.approx(nyq)
        assert any(ln.get_label() == "_Nyquist π/dt" and ln.get_xdata()[0] == pytest.approx(nyq) for ln in a.lines)
    assert ax_m.get_ylabel() == "magnitude (dB)"
    assert ax_p.get_ylabel() == "phase (deg)"
    assert ax_p.get_xlabel() == "frequency ω (rad/s)"
    # guides: 0 dB and -180° (the double integrator loop starts at -180°)
    assert any(ln.get_label() == "_0 dB" for ln in ax_m.lines)
    assert any(ln.get_label() == "_-180 deg" for ln in ax_p.lines)
    texts = [t.get_text() for t in ax_m.get_legend().get_texts()]
    assert texts == ["LQG", "measured"]
    buf = io.BytesIO()
    ax_m.figure.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"


def test_bode_composes_with_given_axes_and_pairs(loop):
    plant, design, L = loop
    fig = Figure()
    axs = fig.subplots(2, 1)
    w = np.geomspace(0.1, 30.0, 50)
    Lr = lqr_loop_transfer(plant, design.K)
    H = Lr.frequency_response(w).complex.ravel()
    out = bode({"LQR": (w, H)}, ax=tuple(axs), dt=plant.dt, styles={"LQR": {"color": "k", "linestyle": "--"}},
               title="LQR loop", legend=False)
    assert out[0] is axs[0] and out[1] is axs[1]
    ln = _named(axs[0], "LQR")
    np.testing.assert_allclose(ln.get_xdata(), w)
    assert ln.get_color() == "k" and ln.get_linestyle() == "--"
    assert axs[0].get_title() == "LQR loop" and axs[0].get_legend() is None
    assert axs[0].get_xlim()[1] == pytest.approx(math.pi / plant.dt)
    # without dt nor an LTI system, no Nyquist line and the axis ends at the data
    ax_m, _ = bode({"LQR": (w, H)}, nyquist=False)
    assert not any(str(ln.get_label()).startswith("_Nyquist") for ln in ax_m.lines)
    assert ax_m.get_xlim()[1] == pytest.approx(30.0)


def test_bode_points_only_and_reference_choice(loop):
    plant, design, L = loop
    w = np.array([0.5, 2.0, 8.0])
    H = L.frequency_response(w).complex.ravel()
    ax_m, ax_p = bode(points={"a": (w, H)}, dt=plant.dt)
    _, ph = bode_data(w, H)
    np.testing.assert_allclose(_named(ax_p, "a").get_ydata(), ph)
    # phase_center moves the curve by whole turns, and the points follow their reference curve
    w2 = np.geomspace(0.01, 30, 300)
    ax_m, ax_p = bode({"flat": (w2, -np.ones(300) + 0j), "loop": L}, {"a": (w, H)}, reference="loop",
                      phase_center=360.0)
    assert 180 < _named(ax_p, "loop").get_ydata()[0] <= 540
    ref = _named(ax_p, "loop")
    np.testing.assert_allclose(_named(ax_p, "a").get_ydata(),
                               np.interp(np.log(w), np.log(ref.get_xdata()), ref.get_ydata()), atol=0.5)
    with pytest.raises(ConfigError, match="reference"):
        bode({"first": L}, {"a": (w, H)}, reference="nope")


def test_bode_errors(loop):
    plant, design, L = loop
    with pytest.raises(ConfigError, match="nothing to draw"):
        bode()
    with pytest.raises(ShapeError, match="SISO"):
        bode({"mimo": control.ss(np.eye(2) * 0.5, np.eye(2), np.eye(2), 0, 0.1)})
    with pytest.raises(ConfigError, match="continuous"):
        bode({"ct": control.tf([1], [1, 1])})
    ax_m, _ = bode({"ct": control.tf([1], [1, 1])}, omega=np.geomspace(0.1, 10, 20))
    assert ax_m.get_xlim() == pytest.approx((0.1, 10))
    with pytest.raises(ConfigError, match="sample time"):
        bode({"a": L, "b": control.ss(L.A, L.B, L.C, L.D, 0.05)})
    with pytest.raises(ConfigError, match="pair"):
        bode({"x": 3.0})
    with pytest.raises(ConfigError, match="both a curve and points"):
        bode({"x": L}, {"x": ([1.0], [1.0])})
    with pytest.raises(ConfigError, match="ax must be"):
        bode({"x": L}, ax=Figure().add_subplot())
    with pytest.raises(ConfigError, match="Nyquist"):
        bode({"x": L}, omega=[1.0, 100.0])
