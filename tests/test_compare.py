"""Tests of ``lqgt compare``: configuration checks (one message per kind of mistake) and a run."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import lqgt
from lqgt import cli
from lqgt.compare import load_config, parse_config, run_compare
from lqgt.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "compare.toml"
FILES = {"table.md", "table.csv", "results.json", "trajectories.png", "cost.png"}

# half the Kalman predictor gain of two_mass (as in examples/compare.toml)
SLOW_GAIN = [[0.206, 0.027], [0.027, 0.233], [0.306, 0.111], [0.111, 0.418]]

CONFIG = f"""
title = "test run"

[plant]
name = "two_mass"

[estimators."kalman (current)"]
type = "kalman"

[estimators.predictor]
type = "kalman"
form = "predictor"

[estimators."slow observer"]
type = "observer"
gain = {SLOW_GAIN}

[estimators.open]
type = "open_loop"

[estimators.tf]
type = "transformer"
beta = 100.0
window = 8

[simulation]
batch = 64
horizon = 150
burn_in = 50
seed = 3

[plot]
state = 1
state_label = "p2 (m)"
"""

# a plant given by its matrices: a sampled double integrator
MATRICES = {
    "A": [[1.0, 0.1], [0.0, 1.0]], "B": [[0.005], [0.1]], "C": [[1.0, 0.0]],
    "W": [[1e-4, 0.0], [0.0, 1e-2]], "V": [[0.01]], "dt": 0.1,
}
COST = {"Q": [[1.0, 0.0], [0.0, 0.1]], "R": [[0.1]]}


def _run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def compare_out(tmp_path_factory):
    d = tmp_path_factory.mktemp("compare")
    cfg = d / "config.toml"
    cfg.write_text(CONFIG)
    out = d / "out"  # does not exist yet: compare creates it
    rc, stdout, stderr = _run_cli(["compare", str(cfg), "--out", str(out), "--no-progress"])
    assert rc == 0, stderr
    return out, stdout


def test_compare_writes_exactly_its_files(compare_out):
    out, stdout = compare_out
    assert {p.name for p in out.iterdir()} == FILES  # no temporaries left behind
    for name in FILES:
        assert (out / name).stat().st_size > 0
    assert "wrote" in stdout and "| estimator" in stdout


def test_compare_table_rows_exact_costs_and_gaps(compare_out):
    out, _ = compare_out
    with open(out / "table.csv", newline="") as f:
        rows = {r["estimator"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["kalman (current)", "predictor", "slow observer", "open", "tf"]
    plant, Q, R = lqgt.plants.two_mass()
    design = lqgt.lqg(plant, Q, R)
    want = {
        "kalman (current)": design.cost,
        "predictor": design.cost_predictor,
        "slow observer": lqgt.lqg_cost(plant, Q, R, design.K, SLOW_GAIN, form="predictor"),
        "open": lqgt.lqg_cost(plant, Q, R, design.K, np.zeros((4, 2)), form="predictor"),
    }
    for name, j in want.items():
        assert float(rows[name]["exact_cost"]) == pytest.approx(j, rel=1e-12)
        assert float(rows[name]["gap_to_optimum"]) == pytest.approx(j / design.cost - 1, rel=1e-9, abs=1e-12)
        assert rows[name]["gap_source"] == "exact"
    assert float(rows["kalman (current)"]["lqg_optimum"]) == pytest.approx(design.cost, rel=1e-12)
    tf = rows["tf"]
    assert tf["exact_cost"] == "" and tf["gap_source"] == "mc"
    # the MC gap is J* + (MC_tf - MC_lqg) on the same noise
    mc_tf, mc_lqg = float(tf["mc_cost"]), float(rows["kalman (current)"]["mc_cost"])
    assert float(tf["gap_to_optimum"]) == pytest.approx((design.cost + mc_tf - mc_lqg) / design.cost - 1, rel=1e-9)
    md = (out / "table.md").read_text()
    assert md.startswith("# test run\n") and "nan" not in md.lower() and "(MC)" in md


def test_compare_results_json(compare_out):
    out, _ = compare_out
    res = json.loads((out / "results.json").read_text())
    assert res["settings"]["batch"] == 64 and res["settings"]["horizon"] == 150 and res["settings"]["burn_in"] == 50
    assert res["settings"]["seed"] == 3
    assert res["plant"]["name"] == "two_mass" and res["reference"] == "kalman (current)"
    assert res["files"] == sorted(FILES)
    by = {e["name"]: e for e in res["estimators"]}
    assert [e["type"] for e in res["estimators"]] == ["kalman", "kalman", "observer", "open_loop", "transformer"]
    lo, hi = by["tf"]["gap_ci"]
    assert lo <= by["tf"]["gap_to_optimum"] <= hi
    assert by["predictor"]["gap_ci"] is None and by["predictor"]["exact_in_ci"] in (True, False)
    assert res["config_data"]["estimators"]["tf"]["beta"] == 100.0


def test_example_config_is_valid_and_runs_small(tmp_path):
    cfg = load_config(EXAMPLE)
    assert list(cfg.estimators) == ["kalman (current)", "kalman (predictor)", "slow observer", "open loop",
                                    "transformer filter (β=100)"]
    small = dataclasses.replace(cfg, simulation=dataclasses.replace(cfg.simulation, batch=16, horizon=60, burn_in=20))
    res = run_compare(small, tmp_path / "out", progress=False, stream=io.StringIO())
    assert {e["name"] for e in res["estimators"]} == set(cfg.estimators)
    assert {p.name for p in (tmp_path / "out").iterdir()} == FILES


def test_matrix_plant_without_lqg_row_gets_a_reference_row(tmp_path):
    cfg = parse_config({
        "plant": MATRICES, "cost": COST,
        "estimators": {"tf": {"type": "transformer", "beta": 30, "window": 4, "S": "whiten"},
                       "kf": {"type": "kalman", "form": "predictor", "steady": False}},
        "simulation": {"batch": 32, "horizon": 80},
    })
    assert cfg.simulation.burn_in == 24  # default: 30% of the horizon
    buf = io.StringIO()
    res = run_compare(cfg, tmp_path, progress=False, stream=buf)
    names = [e["name"] for e in res["estimators"]]
    assert names == ["tf", "kf", "LQG reference (kalman, current)"]
    assert res["reference"] == "LQG reference (kalman, current)"
    by = {e["name"]: e for e in res["estimators"]}
    assert by["kf"]["exact_cost"] is None and by["kf"]["gap_source"] == "mc"  # time-varying: no exact cost
    plant = lqgt.Plant(MATRICES["A"], MATRICES["B"], MATRICES["C"], W=MATRICES["W"], V=MATRICES["V"], dt=0.1)
    assert res["lqg_optimum"] == pytest.approx(lqgt.lqg(plant, COST["Q"], COST["R"]).cost, rel=1e-12)
    assert "LQG reference" in buf.getvalue()


def test_feedthrough_plant_scores_against_the_predictor_optimum(tmp_path):
    plant = dict(MATRICES, D=[[0.5]])
    cfg = parse_config({"plant": plant, "cost": COST, "estimators": {"tf": {"type": "transformer", "window": 4}},
                        "simulation": {"batch": 16, "horizon": 40}})
    res = run_compare(cfg, tmp_path, progress=False, stream=io.StringIO())
    assert res["lqg_optimum_form"] == "predictor" and res["reference"] == "LQG reference (kalman, predictor)"
    assert math.isfinite(res["lqg_optimum"]) and res["lqg_optimum"] == res["lqg_optimum_predictor"]


# --------------------------------------------------------------------------- invalid configurations
def _base(**kw):
    return {"plant": {"name": "two_mass"}, "estimators": {"kf": {"type": "kalman"}}, **kw}


def _mat(**kw):
    return {"plant": dict(MATRICES, **kw), "cost": COST, "estimators": {"kf": {"type": "kalman"}}}


INVALID = {
    "unknown top-level key": ({**_base(), "simulaton": {}},
                              ["'simulaton'", "did you mean 'simulation'", "allowed keys: title, plant"]),
    "unknown simulation key": (_base(simulation={"bacth": 10}),
                               ["'simulation.bacth'", "did you mean 'batch'", "batch, horizon, burn_in"]),
    "batch is a string": (_base(simulation={"batch": "10"}), ["simulation.batch", "integer >= 1", "'10' (string)"]),
    "batch is a boolean": (_base(simulation={"batch": True}), ["simulation.batch", "integer"]),
    "batch is zero": (_base(simulation={"batch": 0}), ["simulation.batch must be an integer >= 1, got 0"]),
    "horizon is a float": (_base(simulation={"horizon": 100.0}), ["simulation.horizon", "integer >= 2"]),
    "burn-in too long": (_base(simulation={"horizon": 10, "burn_in": 10}),
                         ["simulation.burn_in (10)", "smaller than simulation.horizon (10)"]),
    "unknown device": (_base(simulation={"device": "tpu"}), ["simulation.device", "'cpu', 'cuda' or 'cuda:N'"]),
    "unknown dtype": (_base(simulation={"dtype": "half"}), ["simulation.dtype", "'float64', 'float32'"]),
    "unknown plant name": ({"plant": {"name": "two_mas"}, "estimators": {}},
                           ["plant.name", "'two_mas'", "two_mass, double_integrator"]),
    "plant name and matrices": ({"plant": {"name": "two_mass", "A": [[1.0]]}, "estimators": {}},
                                ["name = 'two_mass' and A", "either"]),
    "library plant parameter unknown": ({"plant": {"name": "scalar_unstable", "dt": 0.1}, "estimators": {}},
                                        ["'plant.dt'", "name = 'scalar_unstable'", "allowed keys: name, a"]),
    "plant without matrices": ({"plant": {"A": [[1.0]]}, "estimators": {}}, ["missing B, C, W, V"]),
    "no plant": ({"estimators": {}}, ["no [plant] section"]),
    "plant is not a table": ({"plant": "two_mass", "estimators": {}}, ["plant must be a table"]),
    "A not square": (_mat(A=[[1.0, 0.1]]), ["plant.A has shape (1, 2), expected (1, 1)", "square"]),
    "B wrong rows": (_mat(B=[[0.0], [1.0], [2.0]]), ["plant.B has shape (3, 1), expected (2, ·)"]),
    "C wrong columns": (_mat(C=[[1.0, 0.0, 0.0]]), ["plant.C has shape (1, 3), expected (·, 2)"]),
    "V wrong shape": (_mat(V=[[1.0, 0.0], [0.0, 1.0]]), ["plant.V has shape (2, 2), expected (1, 1)"]),
    "m0 wrong length": (_mat(m0=[0.0]), ["plant.m0 has length 1, expected 2"]),
    "ragged matrix": (_mat(A=[[1.0, 0.1], [0.0]]), ["plant.A", "list of rows", "lengths [2, 1]"]),
    "flat matrix": (_mat(A=[1.0, 0.1]), ["plant.A", "list of rows"]),
    "non-numeric entry": (_mat(A=[[1.0, "x"], [0.0, 1.0]]), ["plant.A must contain only numbers", "'x'"]),
    "V not positive definite": (_mat(V=[[0.0]]), ["[plant]", "V", "positive definite"]),
    "dt not positive": (_mat(dt=0.0), ["plant.dt", "positive"]),
    "cost missing for matrices": ({"plant": MATRICES, "estimators": {"kf": {"type": "kalman"}}},
                                  ["[cost] needs Q and R"]),
    "Q wrong shape": ({"plant": MATRICES, "cost": {"Q": [[1.0]], "R": [[1.0]]}, "estimators": {}},
                      ["cost.Q has shape (1, 1), expected (2, 2)"]),
    "unknown cost key": (_base(cost={"N": [[0.0]]}), ["'cost.N'", "allowed keys: Q, R"]),
    "no estimators": ({"plant": {"name": "two_mass"}}, ["no [estimators] section"]),
    "empty estimators": (_base(estimators={}), ["[estimators] is empty", "kalman, open_loop, observer, transformer"]),
    "estimator not a table": (_base(estimators={"kf": "kalman"}), ["estimators.kf must be a table"]),
    "estimator without type": (_base(estimators={"kf": {"form": "current"}}),
                               ["estimators.kf has no type", "kalman, open_loop, observer, transformer"]),
    "unknown estimator type": (_base(estimators={"kf": {"type": "kalmann"}}),
                               ["estimators.kf.type", "'kalmann'", "did you mean 'kalman'",
                                "kalman, open_loop, observer, transformer"]),
    "unknown estimator option": (_base(estimators={"my tf": {"type": "transformer", "bta": 3}}),
                                 ["'estimators.\"my tf\".bta'", "(type 'transformer')", "did you mean 'beta'",
                                  "allowed keys: type, beta, window, S, impl"]),
    "option of another type": (_base(estimators={"o": {"type": "open_loop", "form": "current"}}),
                               ["'estimators.o.form'", "(type 'open_loop')", "allowed keys: type"]),
    "unknown form": (_base(estimators={"kf": {"type": "kalman", "form": "filter"}}),
                     ["estimators.kf.form", "'current', 'predictor'", "'filter'"]),
    "steady not boolean": (_base(estimators={"kf": {"type": "kalman", "steady": 1}}),
                           ["estimators.kf.steady", "true or false"]),
    "observer without gain": (_base(estimators={"o": {"type": "observer"}}),
                              ["estimators.o.gain is required", "(4, 2)"]),
    "observer gain wrong shape": (_base(estimators={"o": {"type": "observer", "gain": [[1.0, 2.0]]}}),
                                  ["estimators.o.gain has shape (1, 2), expected (4, 2)"]),
    "negative beta": (_base(estimators={"tf": {"type": "transformer", "beta": -1}}),
                      ["estimators.tf.beta", ">= 0"]),
    "window zero": (_base(estimators={"tf": {"type": "transformer", "window": 0}}),
                    ["estimators.tf.window must be an integer >= 1, got 0"]),
    "unknown impl": (_base(estimators={"tf": {"type": "transformer", "impl": "flash"}}),
                     ["estimators.tf.impl", "'kernel', 'attention'"]),
    "S wrong shape": (_base(estimators={"tf": {"type": "transformer", "S": [[1.0]]}}),
                      ["estimators.tf.S has shape (1, 1), expected (6, 6)"]),
    "S unknown string": (_base(estimators={"tf": {"type": "transformer", "S": "white"}}),
                         ["estimators.tf.S", "\"whiten\""]),
    "plot index out of range": (_base(plot={"state": 4}), ["plot.state = 4", "4 states"]),
    "unknown plot key": (_base(plot={"colour": "red"}), ["'plot.colour'", "allowed keys: state, input"]),
    "title not a string": (_base(title=3), ["title must be a string"]),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_config_message_names_the_key(case):
    data, parts = INVALID[case]
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    msg = str(exc.value)
    for part in parts:
        assert part in msg, f"{case}: {part!r} not in {msg!r}"


def test_estimator_refusing_its_options_is_a_config_error(tmp_path):
    # current form with a feedthrough D is an algebraic loop: refused when the estimator is built
    cfg = parse_config({"plant": dict(MATRICES, D=[[0.5]]), "cost": COST,
                        "estimators": {"kf": {"type": "kalman", "form": "current"}}})
    with pytest.raises(ConfigError, match=r"estimators\.kf \(type 'kalman'\).*D = 0"):
        run_compare(cfg, tmp_path, progress=False, stream=io.StringIO())
    # S symmetric but not positive definite
    cfg = parse_config(_base(estimators={"tf": {"type": "transformer", "S": (-np.eye(6)).tolist()}}))
    with pytest.raises(ConfigError, match=r"estimators\.tf \(type 'transformer'\)"):
        run_compare(cfg, tmp_path, progress=False, stream=io.StringIO())
    assert not any(tmp_path.iterdir())  # nothing written


def test_no_lqg_design_is_a_config_error(tmp_path):
    # B = 0 with an unstable A: not stabilizable
    cfg = parse_config({"plant": {"A": [[1.5]], "B": [[0.0]], "C": [[1.0]], "W": [[1.0]], "V": [[1.0]]},
                        "cost": {"Q": [[1.0]], "R": [[1.0]]}, "estimators": {"kf": {"type": "kalman"}}})
    with pytest.raises(ConfigError, match=r"\[plant\]/\[cost\]: no LQG design"):
        run_compare(cfg, tmp_path, progress=False, stream=io.StringIO())


# --------------------------------------------------------------------------- the command line
def test_cli_invalid_config_exits_2_naming_the_key(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[plant]\nname = "two_mass"\n[estimators.tf]\ntype = "transformer"\nbeta = "big"\n')
    rc, _, err = _run_cli(["compare", str(cfg), "--out", str(tmp_path / "out")])
    assert rc == 2
    assert err.startswith("lqgt compare: error: ") and "estimators.tf.beta" in err and "'big' (string)" in err
    assert not (tmp_path / "out").exists()


def test_cli_toml_syntax_error_and_missing_file_exit_2(tmp_path):
    cfg = tmp_path / "broken.toml"
    cfg.write_text('[plant]\nname = "two_mass\n')
    rc, _, err = _run_cli(["compare", str(cfg)])
    assert rc == 2 and "is not valid TOML" in err and "line 2" in err
    rc, _, err = _run_cli(["compare", str(tmp_path / "missing.toml")])
    assert rc == 2 and "cannot read the configuration" in err


def test_cli_device_override_is_checked(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[plant]\nname = "scalar_unstable"\n[estimators.kf]\ntype = "kalman"\n')
    rc, _, err = _run_cli(["compare", str(cfg), "--device", "gpu"])
    assert rc == 2 and "--device must be 'cpu', 'cuda' or 'cuda:N'" in err
    if not torch.cuda.is_available():
        rc, _, err = _run_cli(["compare", str(cfg), "--device", "cuda"])
        assert rc == 2 and "CUDA is not available" in err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compare_on_cuda_matches_exact_costs(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG.replace("batch = 64", "batch = 2000").replace("horizon = 150", "horizon = 600")
                   .replace("burn_in = 50", "burn_in = 200"))
    rc, _, err = _run_cli(["compare", str(cfg), "--out", str(tmp_path / "out"), "--device", "cuda", "--no-progress"])
    assert rc == 0, err
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["settings"]["device"].startswith("cuda")
    for e in res["estimators"]:
        if e["exact_cost"] is not None:  # Monte Carlo within 4 half-widths of its 95% interval
            assert abs(e["mc_cost"] - e["exact_cost"]) <= 2.0 * (e["ci_high"] - e["ci_low"]), e
