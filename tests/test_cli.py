"""Tests of the ``lqgt`` command line (``lqgt demo``) and of the atomic file writers it uses."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import lqgt
from lqgt import cli
from lqgt._io import atomic_open, atomic_savefig, atomic_write_bytes, atomic_write_text

SMALL = ["--batch", "200", "--horizon", "300", "--burn-in", "100", "--no-progress"]
FILES = {"attention.png", "beta_sweep.png", "table.md", "table.csv", "results.json", "trajectories.png", "cost.png"}
LIN_ROWS = ["kalman (current)", "kalman (predictor)", "open-loop observer (no feedback)"]
TF_ROWS = ["transformer filter (β=10, H=32)", "transformer filter (β=100, H=32)"]
ROWS = LIN_ROWS + TF_ROWS


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"  # does not exist yet: the demo creates it
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli.main(["demo", "--out", str(out), *SMALL])
    assert rc == 0
    return out, buf.getvalue()


def _csv_rows(out):
    with open(out / "table.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_demo_writes_all_files_and_no_temporaries(demo_out):
    out, _ = demo_out
    assert {p.name for p in out.iterdir()} == FILES  # nothing else: no leftover temporary files
    for name in FILES:
        assert (out / name).stat().st_size > 0


def test_demo_table_has_every_row_and_no_nan(demo_out):
    out, stdout = demo_out
    rows = _csv_rows(out)
    assert [r["estimator"] for r in rows] == ROWS
    for r in rows:
        cols = ("mc_cost", "ci_low", "ci_high", "gap_to_optimum", "lqg_optimum")
        if r["estimator"] in LIN_ROWS:
            cols = cols + ("exact_cost",)
        else:
            assert r["exact_cost"] == "" and r["gap_source"] == "mc"
        for col in cols:
            v = float(r[col])
            assert math.isfinite(v), (r["estimator"], col, r[col])
        assert float(r["ci_low"]) <= float(r["mc_cost"]) <= float(r["ci_high"])
    md = (out / "table.md").read_text()
    assert "nan" not in md.lower()
    for name in ROWS:
        assert name in md and name in stdout
    assert "| estimator" in stdout and "95% CI" in stdout and "gap to LQG optimum" in stdout
    assert "wrote" in stdout


def test_demo_costs_agree_with_exact_and_lqg_is_best(demo_out):
    out, _ = demo_out
    rows = {r["estimator"]: r for r in _csv_rows(out)}
    plant, Q, R = lqgt.plants.default()
    design = lqgt.lqg(plant, Q, R)
    kc, kp, ol = (rows[n] for n in LIN_ROWS)
    # exact costs are the closed forms of lqgt.lqg_cost with the right form and gain
    assert float(kc["exact_cost"]) == pytest.approx(design.cost, rel=1e-10)
    assert float(kp["exact_cost"]) == pytest.approx(design.cost_predictor, rel=1e-10)
    assert float(ol["exact_cost"]) == pytest.approx(
        lqgt.lqg_cost(plant, Q, R, design.K, np.zeros((plant.n, plant.p)), form="predictor"), rel=1e-10)
    assert float(kc["lqg_optimum"]) == pytest.approx(design.cost, rel=1e-10)
    assert float(kc["gap_to_optimum"]) == pytest.approx(0.0, abs=1e-9)
    for r in (kc, kp, ol):
        mc, lo, hi, ex = (float(r[k]) for k in ("mc_cost", "ci_low", "ci_high", "exact_cost"))
        half = (hi - lo) / 2
        # loose: within two CI half-widths (the CI is 95%, and 200 x 200 steps is a small sample)
        assert abs(mc - ex) <= 2 * half, (r["estimator"], mc, ex, lo, hi)
        assert float(r["gap_to_optimum"]) == pytest.approx(ex / design.cost - 1, rel=1e-9)
    assert float(kc["exact_cost"]) < float(kp["exact_cost"]) < float(ol["exact_cost"])
    # Transformer Filter rows: gap from the common-noise difference to the LQG row; β=10 is worse than β=100,
    # and β=100 is close to the Kalman predictor loop it approximates
    tf10, tf100 = (rows[n] for n in TF_ROWS)
    for r in (tf10, tf100):
        want = (design.cost + float(r["mc_cost"]) - float(kc["mc_cost"])) / design.cost - 1
        assert float(r["gap_to_optimum"]) == pytest.approx(want, rel=1e-9)
    assert float(tf10["mc_cost"]) > float(tf100["mc_cost"]) > float(kc["mc_cost"])
    assert abs(float(tf100["mc_cost"]) - float(kp["mc_cost"])) < 0.02 * float(kp["mc_cost"])


def test_demo_results_json(demo_out):
    out, _ = demo_out
    res = json.loads((out / "results.json").read_text())
    assert [e["name"] for e in res["estimators"]] == ROWS
    assert res["settings"]["batch"] == 200 and res["settings"]["horizon"] == 300 and res["settings"]["burn_in"] == 100
    assert res["plant"] == {"name": "two_mass", "n": 4, "m": 1, "p": 2, "dt": 0.1}
    assert np.array(res["design"]["K"]).shape == (1, 4)
    assert set(res["files"]) == FILES
    rows = {r["estimator"]: r for r in _csv_rows(out)}
    for e in res["estimators"]:
        assert e["mc_cost"] == float(rows[e["name"]]["mc_cost"])
        assert e["gap_source"] == ("exact" if e["name"] in LIN_ROWS else "mc")
    sw = res["beta_sweep"]
    assert len(sw["betas"]) == len(sw["gap"]) == len(sw["error_max"]) == len(sw["bound"]) >= 5
    assert all(e <= b for e, b in zip(sw["error_max"], sw["bound"]))  # the certificate holds
    assert sw["error_max"][-1] < 1e-3 * sw["error_max"][0]  # and the error falls with β


def test_demo_pngs_are_valid_images(demo_out):
    import matplotlib.image

    out, _ = demo_out
    for name in ("trajectories.png", "cost.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        img = matplotlib.image.imread(out / name)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 500
        assert img[..., :3].std() > 0.05  # not a blank canvas


def test_demo_rows_are_extensible(tmp_path, monkeypatch, capsys):
    """A row with an estimator that has no linear gain gets no exact cost and an MC gap."""

    class Wrapped:  # follows the protocol but hides linear_gain: runs the generic step loop
        def __init__(self, est):
            self.est, self.form, self.n = est, est.form, est.n

        def init(self, batch, *, device, dtype):
            return self.est.init(batch, device=device, dtype=dtype)

        def step(self, state, y, u):
            return self.est.step(state, y, u)

    original = cli.demo_estimators

    def extended(plant, Q, R, design):
        rows = original(plant, Q, R, design)
        rows["wrapped kalman"] = (Wrapped(lqgt.KalmanFilter(plant, "current")), None)
        return rows

    monkeypatch.setattr(cli, "demo_estimators", extended)
    assert cli.main(["demo", "--out", str(tmp_path), "--batch", "50", "--horizon", "60", "--burn-in", "10",
                     "--no-progress"]) == 0
    rows = {r["estimator"]: r for r in _csv_rows(tmp_path)}
    w = rows["wrapped kalman"]
    assert w["exact_cost"] == "" and w["gap_source"] == "mc"
    # common random numbers: the same filter through the generic loop gives the same cost
    assert float(w["mc_cost"]) == pytest.approx(float(rows["kalman (current)"]["mc_cost"]), rel=1e-9)
    assert "(MC)" in (tmp_path / "table.md").read_text()
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["estimators"][-1]["exact_cost"] is None and res["estimators"][-1]["exact_in_ci"] is None


def test_exact_cost_helper():
    plant, Q, R = lqgt.plants.default()
    d = lqgt.lqg(plant, Q, R)
    assert cli.exact_cost(plant, Q, R, d.K, lqgt.KalmanFilter(plant, "current")) == pytest.approx(d.cost)
    assert cli.exact_cost(plant, Q, R, d.K, lqgt.KalmanFilter(plant, "predictor")) == pytest.approx(d.cost_predictor)
    assert cli.exact_cost(plant, Q, R, d.K, lqgt.KalmanFilter(plant, steady=False)) is None
    rows = cli.demo_estimators(plant, Q, R, d)
    assert list(rows) == ROWS


# ---------------------------------------------------------------- bad arguments

@pytest.mark.parametrize("argv,msg", [
    (["demo", "--batch", "0"], "--batch: must be an integer >= 1, got 0"),
    (["demo", "--batch", "many"], "--batch: must be an integer, got 'many'"),
    (["demo", "--horizon", "1"], "--horizon: must be an integer >= 2, got 1"),
    (["demo", "--burn-in", "-1"], "--burn-in: must be an integer >= 0, got -1"),
    (["demo", "--horizon", "300", "--burn-in", "300"], "--burn-in (300) must be smaller than --horizon (300)"),
    (["demo", "--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    (["demo", "--bogus"], "unrecognized arguments: --bogus"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "the following arguments are required: COMMAND"),
])
def test_bad_arguments_exit_2_with_a_clear_message(argv, msg, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert msg in err
    assert err.startswith("usage: lqgt")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_a_clear_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--device", "cuda", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--device cuda: CUDA is not available" in err and "--device cpu" in err
    assert not (tmp_path / "o").exists()


def test_out_is_a_file_fails_with_status_2(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SystemExit) as exc:  # a bad argument, like a bad configuration: status 2
        cli.main(["demo", "--out", str(f), *SMALL])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "lqgt demo: error:" in err and "not a directory" in err


def test_console_entry_point_exit_status():
    """The real process: ``python -m lqgt.cli`` exits 2 on bad input, with the message on stderr."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    bad = subprocess.run([sys.executable, "-m", "lqgt.cli", "demo", "--batch", "-3"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert bad.returncode == 2
    assert "--batch: must be an integer >= 1, got -3" in bad.stderr


def test_help_lists_every_option_with_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--out", "--device", "--batch", "--horizon", "--burn-in", "--seed", "--no-progress"):
        assert opt in out
    assert "(default: 2000)" in out and "(default: lqgt-demo)" in out and "(default: 1000)" in out
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"lqgt {lqgt.__version__}"


# ---------------------------------------------------------------- atomic writes

def test_atomic_write_text_and_bytes_replace_whole_files(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write_text(p, "old")
    assert p.read_text() == "old"
    atomic_write_text(p, "new ✓")
    assert p.read_text(encoding="utf-8") == "new ✓"
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["a.txt", "b.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert (p.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_atomic_open_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "keep.txt"
    p.write_text("intact")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(p) as f:
            f.write("half written")
            raise RuntimeError("boom")
    assert p.read_text() == "intact"
    assert [q.name for q in tmp_path.iterdir()] == ["keep.txt"]
    with pytest.raises(ValueError, match="mode must be"):
        with atomic_open(p, "a"):
            pass


def test_atomic_savefig(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    atomic_savefig(fig, tmp_path / "f.png")
    atomic_savefig(fig, tmp_path / "f.svg")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert b"<svg" in (tmp_path / "f.svg").read_bytes()[:400]
    assert sorted(q.name for q in tmp_path.iterdir()) == ["f.png", "f.svg"]


# ---------------------------------------------------------------- README, example and docs

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
DEMO_COMMAND = "pip install torch==2.13.0 && pip install . && lqgt demo"
TEST_COMMAND = 'pip install torch==2.13.0 && pip install ".[test]" && python -m pytest -q'


def _code_blocks(text: str, lang: str) -> list[str]:
    import re

    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_readme_commands_and_ci_agree():
    readme = (ROOT / "README.md").read_text()
    bash = [b.strip() for b in _code_blocks(readme, "bash")]
    assert DEMO_COMMAND in bash and TEST_COMMAND in bash
    ci = (ROOT / ".ci" / "run").read_text()
    assert TEST_COMMAND in ci.splitlines()  # .ci/run runs the README's test command verbatim
    assert "set -euo pipefail" in ci and "venv" in ci


def test_readme_example_is_examples_quickstart():
    readme = (ROOT / "README.md").read_text()
    (block,) = [b for b in _code_blocks(readme, "python") if "lqgt.simulate" in b]
    assert block.strip() == (ROOT / "examples" / "quickstart.py").read_text().strip()


def test_quickstart_runs(tmp_path, monkeypatch, capsys):
    import runpy

    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(ROOT / "examples" / "quickstart.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "LQG optimum" in out and "kalman (current)" in out and "open-loop" in out
    assert (tmp_path / "p1.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "cost.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("page", ["conventions.md", "estimators.md", "simulation.md"])
def test_docs_code_runs(page, tmp_path, monkeypatch, capsys):
    """Every ```python block of a docs page runs, in order, in one namespace."""
    monkeypatch.chdir(tmp_path)
    blocks = _code_blocks((ROOT / "docs" / page).read_text(), "python")
    ns: dict = {}
    if page == "conventions.md":  # its snippet continues from a design in context
        exec("import lqgt\nplant, Q, R = lqgt.plants.two_mass()", ns)
    for block in blocks:
        if "res = lqgt.simulate(plant, K, {" in block:  # the signature sketch, not runnable
            continue
        exec(compile(block, f"docs/{page}", "exec"), ns)
    if page == "estimators.md":
        res = ns["res"]
        # the custom estimator is much worse than the Kalman filter, on the same noise
        assert res.cost["finite difference"] > 3 * res.cost["kalman"]
        text = (ROOT / "docs" / page).read_text()
        for name in res.names:  # the printed output shown on the page is what the code prints
            lo, hi = res.cost_ci[name]
            assert f"{name:18s} {res.cost[name]:.4f}  [{lo:.4f}, {hi:.4f}]" in text
    if page == "simulation.md":
        assert ns["exact"] == pytest.approx(ns["design"].cost_predictor)
        assert (tmp_path / "u.png").exists() and (tmp_path / "cost.png").exists()
