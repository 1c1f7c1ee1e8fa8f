"""The sweep layer: mergeable statistics, seeds, results files, resume, local and Ray backends."""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest
import torch

import lqgt
from lqgt.errors import ConfigError
from lqgt.sweep import ClosedLoopTask, Grid, Moments, chunk_seed, merge_all, point_key
from lqgt.sweep import results as sweep_results
from lqgt.sweep.run import MissingDependencyError, SweepTaskError

TASK = ClosedLoopTask(horizon=60, burn_in=10)
GRID = Grid(beta=[1.0, 100.0], plant=["two_mass"])


def toy_task(point, *, trajectories, seed, device):
    """Cheap deterministic task: samples depend only on (seed, point, trajectories)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(trajectories, generator=g, dtype=torch.float64)
    return {"a": x * point["s"] + 1.0, "b": x ** 2}


def _same(t1, t2):
    assert [p for p in t1.points] == [p for p in t2.points]
    assert set(t1.metrics) == set(t2.metrics)
    for m in t1.metrics:
        for a, b in zip(t1.metrics[m], t2.metrics[m]):
            assert (a.count, a.mean, a.m2, a.min, a.max) == (b.count, b.mean, b.m2, b.min, b.max)


# --------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("seed", range(5))
def test_merged_moments_equal_single_pass(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(1000) * 3 + 1e3 * seed       # an offset tests the cancellation
    cuts = np.sort(rng.choice(np.arange(1, 1000), size=7, replace=False))
    parts = [Moments.of(p) for p in np.split(x, cuts)]
    m = merge_all(parts)
    assert m.count == x.size
    assert abs(m.mean - x.mean()) <= 1e-12 * max(1.0, abs(x.mean()))
    assert abs(m.var - x.var(ddof=1)) <= 1e-12 * x.var(ddof=1)
    assert (m.min, m.max) == (x.min(), x.max())
    lo, hi = m.ci95
    assert math.isclose(hi - lo, 2 * 1.959963984540054 * x.std(ddof=1) / math.sqrt(x.size), rel_tol=1e-10)


def test_moments_edge_cases():
    e = Moments.of([])
    assert e.count == 0 and math.isnan(e.mean)
    one = Moments.of([2.0])
    assert e.merge(one) == one and one.merge(e) == one
    assert math.isnan(one.var) and one.sem == math.inf


# --------------------------------------------------------------------------- grid and seeds
def test_grid_product_and_errors():
    g = Grid(beta=[1, 10], window=[8, 32, 64], plant="two_mass")
    pts = list(g)
    assert len(g) == len(pts) == 6
    assert pts[0] == {"beta": 1, "window": 8, "plant": "two_mass"}
    for bad, msg in [(dict(), "at least one axis"), (dict(beta=[]), "empty"), (dict(beta=[1, 1]), "repeats"),
                     (dict(beta=[float("nan")]), "finite"), (dict(beta=[[1, 2]]), "numbers, strings")]:
        with pytest.raises(ConfigError, match=msg):
            Grid(**bad)


def test_chunk_seeds_are_stable_and_distinct():
    k = point_key({"beta": 1.0})
    assert chunk_seed(0, k, 3) == chunk_seed(0, k, 3)
    seeds = {chunk_seed(s, kk, c) for s in (0, 1) for kk in (k, point_key({"beta": 2.0})) for c in range(10)}
    assert len(seeds) == 40 and all(0 <= s < 2 ** 63 for s in seeds)


# --------------------------------------------------------------------------- local backend
def test_local_run_matches_direct_simulation():
    """Oracle: simulate each chunk directly with its derived seed and pool the samples."""
    tab = lqgt.sweep.run(TASK, GRID, trajectories=50, chunk=20, seed=7, progress=False)
    for i, p in enumerate(GRID):
        samples = []
        for c, k in enumerate([20, 20, 10]):
            out = TASK(p, trajectories=k, seed=chunk_seed(7, point_key(p), c), device="cpu")
            samples.append(out["gap_tf"].numpy())
        x = np.concatenate(samples)
        m = tab.metrics["gap_tf"][i]
        assert m.count == 50
        assert abs(m.mean - x.mean()) <= 1e-12 * max(1e-3, abs(x.mean()))
        assert abs(m.var - x.var(ddof=1)) <= 1e-10 * x.var(ddof=1)
    # TF at beta = 100 is close to LQG; at beta = 1 clearly worse
    gap = tab.column("gap_tf")
    assert gap[0] > 10 * abs(gap[1])


def test_common_noise_gives_identical_kalman_costs():
    tab = lqgt.sweep.run(TASK, GRID, trajectories=20, seed=1, common_noise=True, progress=False)
    ck = tab.column("cost_kalman")
    assert ck[0] == ck[1]
    tab2 = lqgt.sweep.run(TASK, GRID, trajectories=20, seed=1, progress=False)
    assert tab2.column("cost_kalman")[0] != tab2.column("cost_kalman")[1]


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_results_file_round_trip_and_resume(tmp_path, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    grid = Grid(s=[1.0, 2.0, 3.0])
    path = tmp_path / f"sweep{suffix}"
    clean = lqgt.sweep.run(toy_task, grid, trajectories=100, chunk=30, seed=3, progress=False)

    calls = []

    def dies_after_five(point, **kw):
        if len(calls) == 5:
            raise RuntimeError("worker lost")
        calls.append(point)
        return toy_task(point, **kw)

    with pytest.raises(SweepTaskError, match="chunk"):
        lqgt.sweep.run(dies_after_five, grid, trajectories=100, chunk=30, seed=3, results=path, progress=False)
    assert len(sweep_results.read_chunks(path)) == 5          # finished chunks were kept

    resumed = lqgt.sweep.run(toy_task, grid, trajectories=100, chunk=30, seed=3, results=path, progress=False)
    assert resumed.settings["chunks_run"] == 12 - 5            # nothing recomputed
    _same(resumed, clean)
    _same(lqgt.sweep.load(path), clean)                        # the file alone gives the same table
    df = resumed.to_pandas()
    assert list(df["s"]) == [1.0, 2.0, 3.0] and np.allclose(df["a_mean"], clean.column("a"))


def test_results_of_another_run_are_refused(tmp_path):
    path = tmp_path / "s.csv"
    lqgt.sweep.run(toy_task, Grid(s=[1.0]), trajectories=10, seed=0, results=path, progress=False)
    with pytest.raises(ConfigError, match="another run"):
        lqgt.sweep.run(toy_task, Grid(s=[1.0]), trajectories=10, seed=1, results=path, progress=False)


def test_parquet_falls_back_to_csv_without_pyarrow(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_results, "_has_pyarrow", lambda: False)
    with pytest.warns(UserWarning, match="pyarrow"):
        tab = lqgt.sweep.run(toy_task, Grid(s=[1.0]), trajectories=10, seed=0, results=tmp_path / "s.parquet",
                             progress=False)
    assert tab.path == tmp_path / "s.csv" and tab.path.exists()
    _same(lqgt.sweep.load(tab.path), tab)


def test_bad_arguments():
    for kw, msg in [(dict(trajectories=0), "trajectories"), (dict(trajectories=10, chunk=2.5), "chunk"),
                    (dict(trajectories=10, backend="dask"), "backend"), (dict(trajectories=10, seed=-1), "seed")]:
        with pytest.raises(ConfigError, match=msg):
            lqgt.sweep.run(toy_task, Grid(s=[1.0]), progress=False, **kw)
    with pytest.raises(ConfigError, match="Grid"):
        lqgt.sweep.run(toy_task, [{"s": 1}], trajectories=1)
    with pytest.raises(ConfigError, match="unknown grid axes"):
        lqgt.sweep.run(TASK, Grid(gamma=[1]), trajectories=2, progress=False)
    with pytest.raises(ConfigError, match="dict"):
        lqgt.sweep.run(lambda p, **kw: 3.0, Grid(s=[1.0]), trajectories=2, progress=False)


def test_ray_missing_gives_named_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingDependencyError, match=r"lqgt\[distributed\]"):
        lqgt.sweep.run(toy_task, Grid(s=[1.0]), trajectories=2, backend="ray", progress=False)


def test_table_plot_draws_the_means():
    import matplotlib
    matplotlib.use("Agg")
    tab = lqgt.sweep.run(toy_task, Grid(s=[1.0, 10.0, 1000.0], k=["x", "y"]), trajectories=20, seed=0, progress=False)
    ax = tab.plot(x="s", y="a", by="k")
    lines = ax.get_lines()
    assert len(lines) == 2
    assert np.allclose(lines[0].get_ydata(), tab.column("a")[[0, 2, 4]])
    assert ax.get_xscale() == "log"
    with pytest.raises(ConfigError, match="metric"):
        tab.column("zzz")


# --------------------------------------------------------------------------- Ray backend
@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def dies_once(point, *, trajectories, seed, device, marker):
    """Kills its worker process the first time it runs chunk 1 of point s=2."""
    if point["s"] == 2.0 and trajectories == 30 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return toy_task(point, trajectories=trajectories, seed=seed, device=device)


class DiesOnce:
    def __init__(self, marker):
        self.marker = marker

    def __call__(self, point, **kw):
        return dies_once(point, marker=self.marker, **kw)


def test_ray_equals_local_and_survives_a_killed_worker(ray_local, tmp_path):
    grid = Grid(s=[1.0, 2.0])
    local = lqgt.sweep.run(toy_task, grid, trajectories=90, chunk=30, seed=5, progress=False)
    remote = lqgt.sweep.run(toy_task, grid, trajectories=90, chunk=30, seed=5, backend="ray", progress=False)
    _same(local, remote)
    marker = str(tmp_path / "died")
    killed = lqgt.sweep.run(DiesOnce(marker), grid, trajectories=90, chunk=30, seed=5, backend="ray",
                            results=tmp_path / "r.csv", progress=False, max_retries=2)
    assert os.path.exists(marker)                               # the worker really died once
    _same(local, killed)
    # the closed-loop task too (torch in the workers)
    _same(lqgt.sweep.run(TASK, GRID, trajectories=20, chunk=10, seed=2, progress=False),
          lqgt.sweep.run(TASK, GRID, trajectories=20, chunk=10, seed=2, backend="ray", progress=False))


# --------------------------------------------------------------------------- beta_sweep on the layer
def test_chunked_beta_sweep_equals_merged_direct_runs(tmp_path):
    plant, Q, R = lqgt.plants.two_mass()
    kw = dict(window=8, batch=30, horizon=60, burn_in=10, seed=4)
    whole = lqgt.beta_sweep(plant, Q, R, [3.0, 300.0], **kw)
    one_chunk = lqgt.beta_sweep(plant, Q, R, [3.0, 300.0], chunk=30, results=tmp_path / "b.csv", **kw)
    # one chunk: the same statistics as the direct run, on the chunk's derived seed
    direct = lqgt.beta_sweep(plant, Q, R, [3.0, 300.0], **{**kw, "seed": chunk_seed(4, point_key({"window": 8}), 0)})
    for f in ("cost", "gap", "gap_ci", "error_max", "error_mean", "bound"):
        assert np.allclose(getattr(one_chunk, f), getattr(direct, f), rtol=1e-12, atol=1e-15), f
    split = lqgt.beta_sweep(plant, Q, R, [3.0, 300.0], chunk=10, **kw)
    assert split.settings["chunk"] == 10 and np.all(split.gap_ci[:, 0] < split.gap_ci[:, 1])
    assert whole.gap[0] > 0 and split.gap[0] > 0 and abs(split.gap[0] / whole.gap[0] - 1) < 0.5


# --------------------------------------------------------------------------- lqgt compare on the layer
def _compare_cfg(run):
    from lqgt.compare import parse_config

    return parse_config({
        "plant": {"name": "two_mass"},
        "estimators": {"kalman": {"type": "kalman"}, "tf": {"type": "transformer", "beta": 30.0, "window": 8}},
        "simulation": {"batch": 40, "horizon": 60, "burn_in": 10, "seed": 3},
        "run": run})


def test_compare_run_section_chunks_and_resumes(tmp_path):
    import io
    import json

    from lqgt.compare import run_compare

    cfg = _compare_cfg({"chunk": 20, "results": "chunks.csv"})
    assert cfg.run.chunked and cfg.run.chunk == 20
    out = run_compare(cfg, tmp_path / "a", progress=False, stream=io.StringIO())
    tab = lqgt.sweep.load(tmp_path / "a" / "chunks.csv")
    rows = {r["name"]: r for r in out["estimators"]}
    assert rows["tf"]["mc_cost"] == tab.column("cost_1")[0]          # the table's costs are the merged chunks
    assert out["settings"]["chunk"] == 20 and out["settings"]["batch"] == 40
    again = run_compare(cfg, tmp_path / "a", progress=False, stream=io.StringIO())   # resumes, same numbers
    assert json.dumps(again["estimators"]) == json.dumps(out["estimators"])
    for bad, msg in [({"backend": "dask"}, "run.backend"), ({"chunk": 0}, "run.chunk"),
                     ({"results": "x.txt"}, "run.results"), ({"gpus": 1}, "gpus_per_task")]:
        with pytest.raises(ConfigError, match=msg):
            _compare_cfg(bad)


def test_compare_on_ray_equals_local_chunks(ray_local, tmp_path):
    import io

    from lqgt.compare import run_compare

    a = run_compare(_compare_cfg({"chunk": 20}), tmp_path / "a", progress=False, stream=io.StringIO())
    b = run_compare(_compare_cfg({"chunk": 20, "backend": "ray"}), tmp_path / "b", progress=False,
                    stream=io.StringIO())
    assert [r["mc_cost"] for r in a["estimators"]] == [r["mc_cost"] for r in b["estimators"]]
    assert [r["gap_to_optimum"] for r in a["estimators"]] == [r["gap_to_optimum"] for r in b["estimators"]]


def test_compare_afa_type_with_outliers(tmp_path):
    """`type = "afa"` and `simulation.outliers`: robust AFA beats the Kalman loop under outliers."""
    import io

    from lqgt.compare import parse_config, run_compare

    raw = {"plant": {"name": "two_mass"},
           "estimators": {"kalman": {"type": "kalman"},
                          "afa": {"type": "afa", "window": 8, "nu": 4.0, "attention": "matrix"}},
           "simulation": {"batch": 200, "horizon": 200, "burn_in": 50, "seed": 0, "outliers": [0.05, 10.0]}}
    out = run_compare(parse_config(raw), tmp_path / "o", progress=False, stream=io.StringIO())
    rows = {r["name"]: r for r in out["estimators"]}
    assert rows["kalman"]["exact_cost"] is None and rows["afa"]["exact_cost"] is None
    assert rows["afa"]["mc_cost"] < rows["kalman"]["mc_cost"]
    for bad, msg in [({"outliers": [0.05]}, "probability, scale"), ({"outliers": [2.0, 10.0]}, "probability")]:
        with pytest.raises(ConfigError, match=msg):
            parse_config({**raw, "simulation": bad})
    with pytest.raises(ConfigError, match="nu"):
        parse_config({**raw, "estimators": {"a": {"type": "afa", "nu": 0.0}}})
