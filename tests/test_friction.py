"""Friction a new user hit (issue 16): threads, progress, gain mismatch, diverged rows and log axes,
exit codes, ``python -m lqgt``, the plant registry and API shape, results as numpy/pandas, plot
labels and phase branches, docstrings, the report module, and the Transformer Filter / Koopman
fuzz classes (named errors or correct results)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import lqgt
from lqgt import cli, koopman
from lqgt._resources import SMALL_WORK, THREADS_ENV, check_memory, limit_threads, work_threads
from lqgt.errors import ConfigError, NonFiniteError, ResourceError
from lqgt.koopman import DictionaryError, Identity, Polynomial, fit_edmdc

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def two_mass():
    plant, Q, R = lqgt.plants.two_mass()
    return plant, Q, R, lqgt.lqg(plant, Q, R)


def _run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


# ----------------------------------------------------------------------------------- threads
def test_work_threads_choice_and_env(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert work_threads(SMALL_WORK - 1, "cpu") == 1
    assert work_threads(SMALL_WORK, "cpu") is None
    assert work_threads(10, "cuda") is None
    monkeypatch.setenv(THREADS_ENV, "3")
    assert work_threads(10, "cpu") == 3
    monkeypatch.setenv(THREADS_ENV, "zero")
    with pytest.raises(ConfigError, match=THREADS_ENV):
        work_threads(10, "cpu")


def test_limit_threads_restores_torch_setting():
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with limit_threads(1) as k:
            assert k == 1 and torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), limit_threads(1):
            raise RuntimeError("boom")
        assert torch.get_num_threads() == 2
        with limit_threads(8) as k:  # a limit never raises the count
            assert k == 2 and torch.get_num_threads() == 2
        with limit_threads(None):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)


def test_simulate_uses_one_thread_for_small_work_and_restores(two_mass, monkeypatch):
    plant, Q, R, d = two_mass
    monkeypatch.delenv(THREADS_ENV, raising=False)
    seen = []

    def policy(xh):
        seen.append(torch.get_num_threads())
        return -xh @ torch.as_tensor(d.K.T)

    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        lqgt.simulate(plant, policy, {"kf": lqgt.KalmanFilter(plant)}, Q=Q, R=R, horizon=5, batch=4, progress=False)
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)


# ----------------------------------------------------------------------------------- progress
def test_simulate_progress_default_is_auto(two_mass, capsys):
    import inspect

    plant, Q, R, d = two_mass
    assert inspect.signature(lqgt.simulate).parameters["progress"].default is None
    # a short run in auto mode prints nothing; progress=True prints a bar from the start
    lqgt.simulate(plant, d.K, {"kf": lqgt.KalmanFilter(plant)}, Q=Q, R=R, horizon=20, batch=4)
    assert "simulate" not in capsys.readouterr().err
    lqgt.simulate(plant, d.K, {"kf": lqgt.KalmanFilter(plant)}, Q=Q, R=R, horizon=20, batch=4, progress=True)
    assert "simulate" in capsys.readouterr().err
    lqgt.simulate(plant, d.K, {"kf": lqgt.KalmanFilter(plant)}, Q=Q, R=R, horizon=20, batch=4, progress=False)
    assert "simulate" not in capsys.readouterr().err


def test_simulate_progress_auto_opens_after_delay(two_mass, capsys, monkeypatch):
    sim_mod = sys.modules["lqgt.simulate"]

    plant, Q, R, d = two_mass
    monkeypatch.setattr(sim_mod, "_PROGRESS_DELAY_S", 0.0)  # "the run already took long enough"
    lqgt.simulate(plant, d.K, {"kf": lqgt.KalmanFilter(plant)}, Q=Q, R=R, horizon=20, batch=4, chunk=5)
    assert "simulate" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- gain mismatch
def test_gain_mismatch_warns_and_matching_gain_does_not(two_mass):
    plant, Q, R, d = two_mass
    bad = lqgt.TransformerFilter(plant, beta=10.0, window=4, K=0.5 * d.K)
    good = lqgt.TransformerFilter(plant, beta=10.0, window=4, K=d.K)
    assert np.array_equal(bad.feedback_gain, 0.5 * d.K)
    assert lqgt.TransformerFilter(plant, beta=1.0, window=4).feedback_gain is None
    with pytest.warns(lqgt.GainMismatchWarning, match=r"'bad'.*simulated with K"):
        lqgt.simulate(plant, d.K, {"bad": bad}, Q=Q, R=R, horizon=5, batch=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", lqgt.GainMismatchWarning)
        lqgt.simulate(plant, d.K, {"good": good, "kf": lqgt.KalmanFilter(plant)}, Q=Q, R=R, horizon=5, batch=2)
    # any estimator exposing feedback_gain is checked, and a callable policy is flagged too

    class Assumes(lqgt.KalmanFilter):
        feedback_gain = 2.0 * d.K

    with pytest.warns(lqgt.GainMismatchWarning, match="'a'"):
        lqgt.simulate(plant, d.K, {"a": Assumes(plant)}, Q=Q, R=R, horizon=5, batch=2)
    with pytest.warns(lqgt.GainMismatchWarning, match="callable policy"):
        lqgt.simulate(plant, lambda xh: -xh @ torch.as_tensor(d.K.T), {"good": good}, Q=Q, R=R, horizon=5, batch=2)


# ----------------------------------------------------------------------------------- diverged rows, log axis
def test_is_diverged_rule():
    from lqgt.report import DIVERGED_RATIO, is_diverged

    assert is_diverged(1.0, math.inf, 1.0)
    assert is_diverged(math.inf, None, 1.0) and is_diverged(math.nan, None, 1.0)
    assert is_diverged(2e30, None, 1.0)
    assert is_diverged(DIVERGED_RATIO * 2.0, None, 1.0)
    assert not is_diverged(5.0, 5.0, 1.0)


def test_compare_flags_diverging_loop(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('title = "unstable"\n[plant]\nname = "scalar_unstable"\n'
                   '[estimators.kf]\ntype = "kalman"\n[estimators.open]\ntype = "open_loop"\n'
                   '[simulation]\nbatch = 16\nhorizon = 400\nburn_in = 10\n')
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc, out, err = _run_cli(["compare", str(cfg), "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 0, err
    row = next(line for line in out.splitlines() if line.startswith("| open"))
    assert row.rstrip(" |").endswith("diverged")
    assert "warning: diverged closed loop(s): 'open'" in out
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    flags = {e["name"]: e["diverged"] for e in res["estimators"]}
    assert flags == {"kf": False, "open": True}
    assert "diverged" in (tmp_path / "o" / "table.csv").read_text().splitlines()[0]


def test_cost_comparison_log_axis_when_costs_span_decades(two_mass):
    from lqgt.plot import cost_comparison

    costs = {"a": 1.0, "b": 1.2, "c": 2e30}
    ci = {"a": (0.9, 1.1), "b": (1.1, 1.3), "c": (1e30, 3e30)}
    ax = cost_comparison(costs, ci, optimum=1.0)
    assert ax.get_xscale() == "log"
    bars = ax.containers[0]
    assert bars[2].get_x() + bars[2].get_width() == pytest.approx(2e30)  # the bar still ends at the cost
    assert any("diverged" in t.get_text() for t in ax.texts)
    assert cost_comparison({"a": 1.0, "b": 3.0}, {"a": (0.9, 1.1), "b": (2.9, 3.1)}).get_xscale() == "linear"
    assert cost_comparison({"a": 1.0, "b": 3.0}, {"a": (0.9, 1.1), "b": (2.9, 3.1)}, scale="log").get_xscale() == "log"
    with pytest.raises(ConfigError, match="scale"):
        cost_comparison(costs, ci, scale="symlog")


# ----------------------------------------------------------------------------------- exit codes, python -m lqgt
def test_out_naming_a_file_exits_2(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--out", str(f), "--batch", "4", "--horizon", "20", "--burn-in", "5"])
    assert exc.value.code == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    rc, _, err = _run_cli(["compare", str(ROOT / "examples" / "compare.toml"), "--out", str(f)])
    assert rc == 2 and "exists and is not a directory" in err


def test_python_dash_m_lqgt():
    proc = subprocess.run([sys.executable, "-m", "lqgt", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.startswith("lqgt ")
    proc = subprocess.run([sys.executable, "-m", "lqgt", "nope"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2


# ----------------------------------------------------------------------------------- API shape
def test_one_plant_registry_without_import_loop():
    import lqgt.nonlinear_plants as nlp

    assert lqgt.nonlinear_plants is nlp  # reachable after "import lqgt"
    assert lqgt.plants.Example is nlp.Example
    assert set(lqgt.plants.ALL_NAMES) == set(lqgt.plants.NAMES) | set(nlp.NAMES)
    assert "pendulum" in dir(lqgt.plants)
    assert type(lqgt.plants.get("pendulum", kind="any").plant).__name__ == "NonlinearPlant"
    assert isinstance(lqgt.plants.get("two_mass", kind="any").plant, lqgt.Plant)
    with pytest.raises(ConfigError, match="kind='nonlinear'"):
        lqgt.plants.get("pendulum")
    with pytest.raises(ConfigError, match="kind must be"):
        lqgt.plants.get("two_mass", kind="both")
    src = (ROOT / "lqgt" / "nonlinear_plants.py").read_text()
    assert "from .plants import" not in src and "from . import plants" not in src
    proc = subprocess.run([sys.executable, str(ROOT.parent / "shared" / "tools" / "import_loops.py"), "lqgt"],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode == 0 or proc.stdout:
        assert "plants" not in proc.stdout and "lqgt.cli <-> lqgt.compare" not in proc.stdout


def test_dir_plot_is_public_only():
    names = dir(lqgt.plot)
    assert "np" not in names and "torch" not in names and "Axes" not in names
    assert {"cost_comparison", "trajectory_bands", "bode"} <= set(names)
    assert set(names) == set(lqgt.plot.__all__)


def test_attention_block_is_a_layer():
    import lqgt.estimators
    import lqgt.layers

    assert lqgt.TransformerFilterAttention is lqgt.layers.TransformerFilterAttention
    assert "TransformerFilterAttention" not in lqgt.estimators.__all__
    assert "TransformerFilterAttention" in lqgt.layers.__all__


def test_report_module_is_below_cli_and_compare():
    import lqgt.compare
    import lqgt.report

    src = (ROOT / "lqgt" / "compare.py").read_text()
    assert "from .cli import" not in src
    assert "from . import cli" not in src
    assert "from .cli" not in (ROOT / "lqgt" / "report.py").read_text()
    assert cli.format_table is lqgt.report.format_table  # re-exported for existing code


# ----------------------------------------------------------------------------------- results as data
def test_result_to_numpy_table_and_pandas(two_mass):
    plant, Q, R, d = two_mass
    res = lqgt.simulate(plant, d.K, {"kf": lqgt.KalmanFilter(plant), "open": lqgt.OpenLoopObserver(plant)},
                        Q=Q, R=R, horizon=30, batch=8, burn_in=10)
    arr = res.to_numpy()
    assert isinstance(arr["x"]["kf"], np.ndarray) and arr["x"]["kf"].shape == (8, 30, plant.n)
    assert arr["cost_per_trajectory"]["open"].shape == (8,)
    rows = res.table()
    assert [r["estimator"] for r in rows] == ["kf", "open"]
    assert rows[0]["cost"] == res.cost["kf"] and (rows[0]["ci_low"], rows[0]["ci_high"]) == res.cost_ci["kf"]
    assert rows[0]["batch"] == 8 and rows[0]["steps"] == 20
    pd = pytest.importorskip("pandas")
    df = res.to_pandas()
    assert isinstance(df, pd.DataFrame) and list(df.index) == ["kf", "open"]
    assert df.loc["open", "cost"] == res.cost["open"]


def test_to_pandas_without_pandas_says_so(two_mass, monkeypatch):
    plant, Q, R, d = two_mass
    res = lqgt.simulate(plant, d.K, {"kf": lqgt.KalmanFilter(plant)}, Q=Q, R=R, horizon=5, batch=2)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"pip install pandas.*table\(\)"):
        res.to_pandas()


def test_cost_comparison_accepts_a_result(two_mass):
    from lqgt.plot import cost_comparison

    plant, Q, R, d = two_mass
    res = lqgt.simulate(plant, d.K, {"kf": lqgt.KalmanFilter(plant), "pred": lqgt.KalmanFilter(plant, "predictor")},
                        Q=Q, R=R, horizon=30, batch=8)
    ax = cost_comparison(res, exact={"kf": d.cost})
    widths = [b.get_width() for b in ax.containers[0]]
    np.testing.assert_allclose(widths, [res.cost["kf"], res.cost["pred"]])
    with pytest.raises(ConfigError, match="ci must not be given"):
        cost_comparison(res, res.cost_ci)
    with pytest.raises(ConfigError, match="ci is required"):
        cost_comparison(res.cost)


# ----------------------------------------------------------------------------------- plot labels
def test_beta_axis_and_jlqg_labels_name_form_and_source():
    from types import SimpleNamespace

    from lqgt.plot import beta_sweep_gap

    sw = SimpleNamespace(betas=np.array([1.0, 10.0]), gap=np.array([1.0, 0.1]),
                         gap_ci=np.array([[0.9, 1.1], [0.05, 0.15]]), cost_lqg=2.0, settings={})
    ax = beta_sweep_gap(sw)
    assert ax.get_xlabel().startswith("inverse temperature β")
    labels = [ln.get_label() for ln in ax.lines]
    assert "J_TF − J_LQG (predictor, MC)" in labels and "J_LQG (predictor, MC) = 2" in labels
    assert not any(lab.startswith("J_LQG =") for lab in labels)


def test_identical_bands_get_a_legend_note(two_mass):
    from lqgt.plot import trajectory_bands

    plant, Q, R, d = two_mass
    kf = lqgt.KalmanFilter(plant)
    res = lqgt.simulate(plant, d.K, {"a": kf, "b": lqgt.KalmanFilter(plant), "c": lqgt.OpenLoopObserver(plant)},
                        Q=Q, R=R, horizon=20, batch=8)
    title = trajectory_bands(res, "x", 0).get_legend().get_title().get_text()
    assert "b is hidden under a (identical band)" in title
    assert "c is hidden" not in title


def test_bode_points_keep_inside_reference_phase_range():
    from lqgt.plot import bode_data

    w_ref = np.geomspace(0.1, 10.0, 200)
    ph_ref = np.linspace(-180.0, -450.0, 200)  # a curve ending at -450°
    w = np.array([1.0, 9.9])
    # second point: -225° (= 135°) is 145° from the reference there (~ -448°) while -585° is 137° from it
    # and would stretch the axis by a turn; a clean point keeps its nearest branch
    H = np.array([np.exp(1j * np.radians(-300.0)), np.exp(1j * np.radians(135.0))])
    _, ph = bode_data(w, H, reference=(w_ref, ph_ref))
    ref = np.interp(np.log(w), np.log(w_ref), ph_ref)
    assert ph[0] == pytest.approx(-300.0 + 360.0 * round((ref[0] + 300.0) / 360.0))
    assert ph[1] == pytest.approx(-225.0)
    assert ph_ref.min() <= ph.min() and ph.max() <= ph_ref.max()


def test_pendulum_figure_one_colour_per_method(tmp_path, monkeypatch):
    import importlib.util

    from matplotlib.figure import Figure

    spec = importlib.util.spec_from_file_location("nlk", ROOT / "examples" / "nonlinear_koopman.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, "pendulum_control"):
        pytest.skip("example layout changed")
    figs = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: figs.append(self))
    args = mod.parse_args(["--out", str(tmp_path), "--batch", "4", "--horizon", "40"])
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        mod.pendulum_control(args, tmp_path)
    (fig,) = figs
    a1, a2 = fig.axes[:2]

    def colours(ax):
        out = {}
        for ln in ax.lines:
            if not ln.get_label().startswith("_"):
                out[ln.get_label()] = ln.get_color()
        for c in ax.containers:
            lab = c.get_label()
            if lab and not lab.startswith("_"):
                out[lab] = c.lines[0].get_color()
        return out

    left, right = colours(a1), colours(a2)
    common = set(left) & set(right)
    assert common, (left, right)
    for name in common:
        assert left[name] == right[name], name


# ----------------------------------------------------------------------------------- docs
def test_no_rest_literal_blocks_in_docstrings():
    import ast

    offenders = []
    for f in (ROOT / "lqgt").rglob("*.py"):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=False)
                if doc and any(line.rstrip().endswith("::") for line in doc.splitlines()):
                    offenders.append(f"{f.relative_to(ROOT)}:{getattr(node, 'name', '<module>')}")
    mine = [o for o in offenders if not o.startswith(("lqgt/sweep/", "lqgt/learn/"))]
    assert not mine, mine


def test_timing_claims_match_measurements():
    text = "\n".join((ROOT / p).read_text() for p in ("README.md", "docs/getting_started.md", "docs/index.md",
                                                      "examples/compare.toml"))
    assert "96 s" not in text and "about 20 s" not in text


# ----------------------------------------------------------------------------------- Transformer Filter fuzz
def test_transformer_beta_overflow_and_beta_for_extremes(two_mass):
    plant, Q, R, d = two_mass
    with pytest.raises(ConfigError, match="beta must be a finite number"):
        lqgt.TransformerFilter(plant, beta=10**400)
    b = lqgt.TransformerFilter.beta_for(plant, 1e-3, window=8)
    tf = lqgt.TransformerFilter(plant, beta=b, window=8)
    assert tf.error_bound() == pytest.approx(1e-3, rel=1e-9)
    b = lqgt.TransformerFilter.beta_for(plant, 1e-150, window=8)  # large but representable: still exact
    assert math.isfinite(b) and lqgt.TransformerFilter(plant, beta=b, window=8).error_bound() == pytest.approx(
        1e-150, rel=1e-9)
    for eps in (1e-160, 5e-324):
        with pytest.raises(ConfigError, match=r"too small: the certificate needs β ≈ 10\^\d+"):
            lqgt.TransformerFilter.beta_for(plant, eps, window=8)
    assert lqgt.TransformerFilter.beta_for(plant, 1e-3, window=1) == 0.0


def test_transformer_huge_window_run_is_exact_and_cheap(two_mass):
    plant, Q, R, d = two_mass
    rng = np.random.default_rng(0)
    y = torch.as_tensor(rng.standard_normal((12, plant.p)))
    small = lqgt.TransformerFilter(plant, beta=2.0, window=12, K=d.K)
    huge = lqgt.TransformerFilter(plant, beta=2.0, window=10**6, K=d.K)
    xs, ws = small.run(y)
    xh, wh = huge.run(y)
    torch.testing.assert_close(xh, xs, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(wh, ws, rtol=1e-13, atol=1e-13)
    # step-by-step use of a huge window allocates O(H) per step, not O(H²) start-up masks
    state, _ = huge.init(1, device=torch.device("cpu"), dtype=torch.float64)
    assert state[-1].zeros.numel() == 10**6


def test_memory_estimates_refuse_with_named_error(two_mass):
    plant, Q, R, d = two_mass
    with pytest.raises(ResourceError, match=r"needs about .*B but only"):
        check_memory("a test buffer", 1e30, "cpu")
    tf = lqgt.TransformerFilter(plant, beta=2.0, window=10**6, K=d.K)
    with pytest.raises(ResourceError, match=r"window buffers \(window=1000000, batch=10000000"):
        tf.init(10**7, device=torch.device("cpu"), dtype=torch.float64)
    with pytest.raises(ResourceError, match=r"attention weights returned by run \(1 x 1000000 x 1000000"):
        lqgt.TransformerFilter(plant, beta=2.0, window=4, K=d.K).run(torch.zeros(10**6, plant.p))


def test_transformer_run_checks_u(two_mass):
    plant, Q, R, d = two_mass
    tf = lqgt.TransformerFilter(plant, beta=2.0, window=4)
    y, u = torch.zeros(6, plant.p), torch.zeros(6, plant.m)
    u[3, 0] = math.nan
    with pytest.raises(NonFiniteError, match="u contains NaN"):
        tf.run(y, u)
    u[3, 0] = math.inf
    with pytest.raises(NonFiniteError, match="u contains"):
        tf.run(y, u)


def test_attention_impl_is_stable_at_huge_beta(two_mass):
    plant, Q, R, d = two_mass
    rng = np.random.default_rng(1)
    y = torch.as_tensor(1e8 * rng.standard_normal((10, plant.p)))
    kern = lqgt.TransformerFilter(plant, beta=1e300, window=4, K=d.K, impl="kernel").run(y)
    att = lqgt.TransformerFilter(plant, beta=1e300, window=4, K=d.K, impl="attention").run(y)
    assert torch.isfinite(att[0]).all() and torch.isfinite(att[1]).all()
    torch.testing.assert_close(att[1], kern[1], rtol=0, atol=1e-12)
    torch.testing.assert_close(att[0], kern[0], rtol=1e-9, atol=1e-6)
    blk = lqgt.TransformerFilter(plant, beta=1e308, window=4, K=d.K).attention_module()
    for lin in (blk.W_q, blk.W_k, blk.W_v):
        assert torch.isfinite(lin.weight).all()
    assert blk.scale == 1e308
    z = torch.as_tensor(rng.standard_normal((1, 6, blk.d)))
    out, w = blk(z)
    assert torch.isfinite(out).all() and torch.allclose(w.diagonal(dim1=-2, dim2=-1), torch.ones(1, 6, dtype=w.dtype))
    # β = 0: uniform weights over the window, no NaN from -inf · 0
    blk0 = lqgt.TransformerFilter(plant, beta=0.0, window=3, K=d.K).attention_module()
    _, w0 = blk0(z)
    assert torch.isfinite(w0).all()
    torch.testing.assert_close(w0[0, 5, 3:6], torch.full((3,), 1 / 3, dtype=w0.dtype))


# ----------------------------------------------------------------------------------- Koopman fuzz
@pytest.mark.parametrize("n, degree, match", [
    (3, 400, r"10,827,401 features"), (1, 20000, r"20,001 features"), (10**6, 10**6, r"about 10\^"),
    (1, None, "degree must be an integer"), (1, 1.5, "degree must be an integer, got 1.5"),
    (1, True, "degree must be an integer"), ("2", 2, "n must be an integer"), (0, 2, "n >= 1"),
])
def test_polynomial_size_and_type_checks_are_instant(n, degree, match):
    import time

    t0 = time.perf_counter()
    with pytest.raises(DictionaryError, match=match):
        Polynomial(n, degree)
    assert time.perf_counter() - t0 < 1.0


def test_polynomial_accepts_integral_values():
    assert Polynomial(2, 3.0).dim == math.comb(5, 3)
    assert Polynomial(np.int64(2), np.int32(2)).dim == 6
    assert koopman.MAX_FEATURES >= 1000


def test_fit_edmdc_ridge_type_and_huge_data():
    rng = np.random.default_rng(0)
    X, U = rng.standard_normal((40, 1)), rng.standard_normal((40, 1))
    Xn = 0.5 * X + 0.1 * U
    with pytest.raises(ConfigError, match="ridge must be a finite number >= 0, got None"):
        fit_edmdc(X, U, Xn, Identity(1), ridge=None)
    with pytest.raises(ConfigError, match="ridge"):
        fit_edmdc(X, U, Xn, Identity(1), ridge="0.1")
    # data near 1e200: the residual covariance does not fit in float64 -> a named error, not W = inf
    big = 1e200
    with pytest.raises((NonFiniteError, lqgt.koopman.RankDeficientError), match="rescale"):
        fit_edmdc(big * X, big * U, big * Xn + 1e190 * rng.standard_normal((40, 1)), Identity(1))
    # data near 1e120 whose covariance fits: computed without overflowing the squares
    s = 1e120
    noise = 1e110 * rng.standard_normal((40, 1))
    fit = fit_edmdc(s * X, s * U, s * Xn + noise, Identity(1))
    ref = fit_edmdc(X, U, Xn + noise / s, Identity(1))
    np.testing.assert_allclose(fit.K, ref.K, rtol=1e-8)
    np.testing.assert_allclose(fit.W, ref.W * s * s, rtol=1e-5)  # noise 1e-10 of the data: cancellation
    assert np.all(np.isfinite(fit.W))
