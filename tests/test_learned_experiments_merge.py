"""``benchmarks/learned_experiments.py --merge``: runs split over processes pool into one table.

Oracle: the medians and spreads of hand-made runs, computed independently with
``statistics``; a later file's run of the same seed replaces an earlier one.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "learned_experiments.py"


@pytest.fixture(scope="module")
def le():
    spec = importlib.util.spec_from_file_location("learned_experiments", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _matched_run(seed: int, db: float) -> dict:
    return dict(seed=seed, train_s=1.0, steps=10, final_loss=0.1, db_T=db, db_T_ci=[db - 0.01, db + 0.01],
                db_10T=db / 2, db_10T_ci=[0, 1], gap_10T=db / 100, gap_10T_ci=[-0.01, 0.01], kf_gap_10T=0.0,
                kf_gap_10T_ci=[-0.01, 0.01], lqg_cost=1.0, cost_10T=1.0, cost_10T_ci=[0.9, 1.1], eval_s=1.0)


def _mismatch_run(seed: int, db: float) -> dict:
    return dict(seed=seed, train_s=1.0, db_vs_true=db + 4, db_vs_nominal=db, nominal_vs_true=4.0, cost=0.3,
                cost_ci=[0.2, 0.4], cost_nominal=0.45, cost_nominal_ci=[0.4, 0.5], cost_true_kf=0.22,
                cost_true_kf_ci=[0.2, 0.24], lqg_cost_true=0.2)


def _write(path: Path, device: str, horizon: int, matched=(), mismatch=()) -> Path:
    results = {}
    if matched:
        results["matched"] = {"rows": [dict(plant="two_mass", estimator="TransformerEstimator", runs=list(matched))]}
    if mismatch:
        results["mismatch"] = {"rows": [dict(scenario="rotation10", estimator="KalmanNet", runs=list(mismatch))]}
    path.write_text(json.dumps({"device": device, "settings": {"horizon": horizon, "dtype": "float32"},
                                "results": results}))
    return path


def test_merge_pools_seeds_and_replaces_repeats(le, tmp_path):
    a = _write(tmp_path / "a.json", "gpu", 200, matched=[_matched_run(0, 0.10), _matched_run(1, 0.30)],
               mismatch=[_mismatch_run(0, -4.0)])
    b = _write(tmp_path / "b.json", "cpu", 200, matched=[_matched_run(2, 0.05), _matched_run(1, 0.20)],
               mismatch=[_mismatch_run(1, -3.0), _mismatch_run(2, -5.0)])
    le.main(["--merge", str(a), str(b), "--out", str(tmp_path / "out"), "--name", "pooled"])
    got = json.loads((tmp_path / "out" / "pooled.json").read_text())["results"]
    row = got["matched"]["rows"][0]
    assert [r["seed"] for r in row["runs"]] == [0, 1, 2]
    dbs = [0.10, 0.20, 0.05]  # seed 1 from the later file
    assert row["db_T"]["median"] == pytest.approx(statistics.median(dbs))
    assert (row["db_T"]["min"], row["db_T"]["max"]) == (min(dbs), max(dbs))
    assert row["within_01"] == sum(d <= 0.1 for d in dbs)
    assert {r["device"] for r in row["runs"]} == {"gpu (float32)", "cpu (float32)"}
    mm = got["mismatch"]["rows"][0]
    assert mm["db_vs_nominal"]["median"] == pytest.approx(-4.0) and mm["db_vs_nominal"]["n"] == 3
    md = (tmp_path / "out" / "pooled.md").read_text()
    assert "of 3)" in md and "| two_mass | TransformerEstimator | +0.100 [+0.050, +0.200]" in md


def test_merge_refuses_different_horizons(le, tmp_path):
    a = _write(tmp_path / "a.json", "gpu", 200, matched=[_matched_run(0, 0.1)])
    b = _write(tmp_path / "b.json", "gpu", 100, matched=[_matched_run(1, 0.1)])
    with pytest.raises(SystemExit, match="horizons"):
        le.main(["--merge", str(a), str(b), "--out", str(tmp_path / "out")])
