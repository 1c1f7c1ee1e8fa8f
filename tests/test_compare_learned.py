"""``lqgt compare`` with ``type = "learned"``: a saved estimator loaded from its checkpoint."""

from __future__ import annotations

import io

import pytest
import torch

import lqgt
from lqgt.compare import build, parse_config, run_compare
from lqgt.errors import ConfigError


def _config(path, plant="scalar_unstable"):
    return {
        "plant": {"name": plant},
        "estimators": {"kalman": {"type": "kalman"}, "net": {"type": "learned", "checkpoint": str(path)}},
        "simulation": {"batch": 40, "horizon": 30, "seed": 3},
    }


@pytest.fixture
def saved(tmp_path):
    est = lqgt.TransformerEstimator(1, 1, 1, window=4, layers=1, heads=1, width=4, seed=0)
    path = tmp_path / "net.pt"
    est.save(path)
    return est, path


def test_learned_entry_builds_the_saved_estimator(saved):
    est, path = saved
    cfg = parse_config(_config(path))
    _, ests = build(cfg)
    got = ests["net"]
    assert isinstance(got, lqgt.TransformerEstimator)
    for (k, a), (_, b) in zip(est.state_dict().items(), got.state_dict().items()):
        assert torch.equal(a, b), k
    # it runs in the comparison beside the Kalman filter, on the same noise
    res = run_compare(cfg, path.parent / "out", progress=False, stream=io.StringIO())
    assert "net" in str(res)


def test_learned_entry_errors(saved, tmp_path):
    _, path = saved
    bad = _config(path)
    del bad["estimators"]["net"]["checkpoint"]
    with pytest.raises(ConfigError, match=r"estimators\.net\.checkpoint is required"):
        parse_config(bad)
    with pytest.raises(ConfigError, match="no such checkpoint"):
        build(parse_config(_config(tmp_path / "missing.pt")))
    with pytest.raises(ConfigError, match=r"\(n, m, p\)"):  # a scalar-plant estimator on two_mass
        build(parse_config(_config(path, plant="two_mass")))
    bad = _config(path)
    bad["estimators"]["net"]["beta"] = 3.0
    with pytest.raises(ConfigError, match="beta"):
        parse_config(bad)
