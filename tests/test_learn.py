"""Tests of the learning layer (lqgt.learn) and the TransformerEstimator.

Each test runs in seconds on one CPU thread. They are built to fail if training were
broken: gradients are checked against finite differences, a short training must reach the
Kalman filter's MSE from far above it, and a resumed run must equal an uninterrupted one.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lqgt
from lqgt.errors import CheckpointError, ConfigError, NonFiniteError, ShapeError
from lqgt.estimators.learned import LearnedEstimator, load_estimator, register
from lqgt.plot import training_curve
from lqgt.learn import Rollouts, closed_loop_cost, evaluate, fit, output_prediction, rollouts, state_mse

F64 = torch.float64


def _tiny(form="current", n=2, m=1, p=1, **kw):
    cfg = dict(window=3, layers=1, heads=2, width=4, seed=0)
    cfg.update(kw)
    est = lqgt.TransformerEstimator(n, m, p, form=form, **cfg)
    with torch.no_grad():  # leave the zero initialisations so every parameter matters
        g = torch.Generator().manual_seed(1)
        for q in est.parameters():
            q.add_(0.3 * torch.randn(q.shape, generator=g, dtype=q.dtype))
    return est


def _stream(est, y, u):
    """Run the protocol init/step over sequences, with the timing of lqgt.simulate."""
    B, T, _ = y.shape
    st, _ = est.init(B, device=y.device, dtype=y.dtype)
    out = []
    for t in range(T):
        if est.form == "predictor":
            uu = u[:, t]
        else:
            uu = u[:, t - 1] if t else torch.zeros_like(u[:, 0])
        st, xh = est.step(st, y[:, t], uu)
        out.append(xh)
    return torch.stack(out, 1)


# ---------------------------------------------------------------- sequence mode == step mode
@pytest.mark.parametrize("form", ["current", "predictor"])
@pytest.mark.parametrize("T", [1, 5, 23])
def test_forward_equals_step_mode(form, T):
    est = _tiny(form, n=3, m=2, p=2, window=4, layers=2, width=8)
    g = torch.Generator().manual_seed(T)
    y = torch.randn(3, T, 2, generator=g, dtype=F64)
    u = torch.randn(3, T, 2, generator=g, dtype=F64)
    seq = est(y, u)
    with torch.no_grad():
        torch.testing.assert_close(_stream(est, y, u), seq, rtol=0, atol=1e-10)
    with torch.enable_grad():  # the out-of-place path used by the closed-loop loss
        torch.testing.assert_close(_stream(est, y, u).detach(), seq.detach(), rtol=0, atol=1e-10)


def test_forward_is_causal():
    est = _tiny("current", window=4, layers=2)
    y = torch.randn(2, 12, 1, dtype=F64)
    u = torch.randn(2, 12, 1, dtype=F64)
    a = est(y, u)
    y2, u2 = y.clone(), u.clone()
    y2[:, 7:] += 5.0
    u2[:, 6:] += 5.0  # u[t-1] enters the token of step t
    b = est(y2, u2)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=0)
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-3


def test_receptive_field_is_layers_times_window():
    # with the skip off, layer l sees l*(window-1) steps back: a change older than that has no effect
    est = _tiny("current", window=3, layers=2, skip=False)
    y = torch.randn(1, 12, 1, dtype=F64)
    u = torch.zeros(1, 12, 1, dtype=F64)
    a = est(y, u)
    y2 = y.clone()
    y2[:, 2] += 1.0
    b = est(y2, u)
    assert (a[:, 6] - b[:, 6]).abs().max() > 1e-6      # 6 - 2 = 4 = 2 * (3 - 1): still seen
    torch.testing.assert_close(a[:, 7:], b[:, 7:], rtol=0, atol=0)


# ---------------------------------------------------------------- gradients vs finite differences
def _gradcheck_params(est, fn, names):
    params = {k: v.detach().clone().requires_grad_(True) for k, v in est.named_parameters() if k in names}
    assert params, names
    keys = list(params)

    def f(*vals):
        full = {k: v for k, v in est.named_parameters()}
        full.update(dict(zip(keys, vals)))
        return fn(full)

    assert torch.autograd.gradcheck(f, tuple(params[k] for k in keys), eps=1e-6, atol=1e-6, rtol=1e-5)


def _swap(est, params):
    """Put the tensors ``params`` (name -> tensor) in place of the estimator's parameters."""
    for k, v in params.items():
        mod = est
        *path, leaf = k.split(".")
        for part in path:
            mod = getattr(mod, part)
        mod._parameters[leaf] = v


def _with(est, P, fn):
    saved = dict(est.named_parameters())
    try:
        _swap(est, P)
        return fn()
    finally:
        _swap(est, saved)


@pytest.mark.parametrize("form", ["current", "predictor"])
@pytest.mark.parametrize("loss", [state_mse, output_prediction])
def test_gradients_of_data_losses_match_finite_differences(form, loss):
    ex = lqgt.plants.scalar_unstable()
    data = rollouts(ex, lqgt.lqg(*ex).K, horizon=7, batch=3, seed=2)
    est = _tiny(form, n=1, m=1, p=1)
    names = [k for k, _ in est.named_parameters()]  # every parameter
    _gradcheck_params(est, lambda P: _with(est, P, lambda: loss(est, data)), names)


@pytest.mark.parametrize("form", ["current", "predictor"])
def test_gradient_of_closed_loop_cost_matches_finite_differences(form):
    ex = lqgt.plants.scalar_unstable()
    K = lqgt.lqg(*ex).K
    est = _tiny(form, n=1, m=1, p=1, window=2)
    names = ["embed.weight", "head.weight", "head.bias", "fir", "blocks.0.rel", "blocks.0.qkv.weight", "gain_u"]

    def fn(P):
        return _with(est, P, lambda: closed_loop_cost(est, ex.plant, K, ex.Q, ex.R, horizon=5, batch=3, seed=4, tbptt=None))

    _gradcheck_params(est, fn, names)


@register
class _GainFilter(LearnedEstimator):
    """A Kalman-type filter whose gain is a parameter (a test estimator of the protocol)."""

    def __init__(self, A, B, C, gain, form="current"):
        super().__init__(len(A), len(B[0]), len(C), form=form)
        self.register_buffer("A", torch.tensor(A, dtype=F64))
        self.register_buffer("B", torch.tensor(B, dtype=F64))
        self.register_buffer("C", torch.tensor(C, dtype=F64))
        self.gain = torch.nn.Parameter(torch.tensor(gain, dtype=F64))

    def config(self):
        return dict(A=self.A.tolist(), B=self.B.tolist(), C=self.C.tolist(), gain=self.gain.tolist(), form=self.form)

    def init(self, batch, *, device, dtype):
        self._place(device, dtype)
        x = torch.zeros(batch, self.n, device=device, dtype=dtype)
        return (x, False), x

    def step(self, state, y, u):
        x, started = state
        if started:
            x = x @ self.A.T + u @ self.B.T
        x = x + (y - x @ self.C.T) @ self.gain.T
        return (x, True), x


def test_closed_loop_cost_agrees_with_exact_cost_and_its_gradient_descends():
    ex = lqgt.plants.scalar_unstable()
    plant, Q, R = ex
    d = lqgt.lqg(plant, Q, R)
    gain = 0.5 * d.Lf  # a sub-optimal filter gain
    est = _GainFilter(plant.A.tolist(), plant.B.tolist(), plant.C.tolist(), gain.tolist())
    # Monte Carlo of the torch loop vs the exact average cost of this (K, Lf) pair
    with torch.no_grad():
        mc = float(closed_loop_cost(est, plant, d.K, Q, R, horizon=400, batch=400, seed=0, burn_in=50))
    exact = lqgt.lqg_cost(plant, Q, R, d.K, gain, form="current")
    assert abs(mc / exact - 1) < 0.03, (mc, exact)
    # the gradient points uphill: a small step against it lowers the cost on the same noise
    c0 = closed_loop_cost(est, plant, d.K, Q, R, horizon=200, batch=200, seed=1, tbptt=None)
    c0.backward()
    g = est.gain.grad.clone()
    assert float(g.squeeze()) < 0  # raising the gain towards Lf lowers the cost
    with torch.no_grad():
        est.gain -= 0.05 * g / g.abs().max()
        c1 = closed_loop_cost(est, plant, d.K, Q, R, horizon=200, batch=200, seed=1, tbptt=None)
    assert float(c1) < float(c0.detach())


# ---------------------------------------------------------------- training reaches the Kalman filter
def test_short_training_on_scalar_plant_reaches_kalman_filter():
    ex = lqgt.plants.scalar_unstable()
    K = lqgt.lqg(*ex).K
    data = rollouts(ex, K, horizon=48, batch=512, seed=0)
    est = lqgt.TransformerEstimator(1, 1, 1, window=8, layers=1, heads=1, width=8, seed=0)
    before = evaluate(est, ex.plant, K, ex.Q, ex.R, horizon=48, batch=1000, seed=99)
    log = fit(est, data, steps=250, lr=1e-2, batch=64, progress=False, seed=0)
    after = evaluate(est, ex.plant, K, ex.Q, ex.R, horizon=48, batch=2000, seed=100)  # held-out noise
    assert before.mse_db["learned"] > 3.0           # it starts far from the Kalman filter
    assert log.loss[-20:].mean() < 0.5 * log.loss[:5].mean()   # the loss moved
    assert after.mse_db["learned"] < 0.5, after.table()
    assert after.cost_gap["learned"] < 0.05


def test_in_context_training_on_random_systems_runs_and_learns():
    systems = lqgt.plants.random_systems(2, 1, 1, 4, spectral_radius=0.9, seed=3)
    data = rollouts(systems, None, horizon=24, batch=64, seed=0)
    assert data.batch == 256 and len(data.plants) == 4
    assert torch.equal(torch.bincount(data.system), torch.full((4,), 64))
    est = lqgt.TransformerEstimator(2, 1, 1, window=8, layers=1, heads=2, width=8, seed=0)
    log = fit(est, data, steps=60, lr=1e-2, batch=32, progress=False)
    assert log.settings["systems"] == 4
    assert log.loss[-10:].mean() < log.loss[:5].mean()


# ---------------------------------------------------------------- persistence and resumption
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_save_load_round_trip_is_bit_exact(tmp_path, dtype):
    est = _tiny("predictor", n=2, m=1, p=2, window=5, layers=2, width=8).to(dtype)
    path = tmp_path / "est.pt"
    est.save(path)
    est2 = load_estimator(path)
    assert type(est2) is type(est) and est2.config() == est.config()
    sd1, sd2 = est.state_dict(), est2.state_dict()
    assert list(sd1) == list(sd2)
    for k in sd1:
        assert sd1[k].dtype == sd2[k].dtype == dtype and torch.equal(sd1[k], sd2[k]), k
    y, u = torch.randn(2, 9, 2, dtype=dtype), torch.randn(2, 9, 1, dtype=dtype)
    assert torch.equal(est(y, u), est2(y, u))
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temporary file


def test_save_load_custom_registered_class(tmp_path):
    est = _GainFilter([[0.9]], [[1.0]], [[1.0]], [[0.3]])
    est.save(tmp_path / "g.pt")
    back = lqgt.load_estimator(tmp_path / "g.pt")
    assert isinstance(back, _GainFilter) and torch.equal(back.gain, est.gain)


def _train(path=None, steps=12, stop=None, loss="state_mse"):
    ex = lqgt.plants.scalar_unstable()
    data = rollouts(ex, lqgt.lqg(*ex).K, horizon=16, batch=64, seed=0)
    est = lqgt.TransformerEstimator(1, 1, 1, window=4, layers=1, heads=1, width=4, seed=0)

    def cb(step, value):
        if stop is not None and step == stop:
            raise KeyboardInterrupt

    kw = dict(K=lqgt.lqg(*ex).K, Q=ex.Q, R=ex.R, horizon=6) if loss == "closed_loop_cost" else {}
    log = fit(est, data, loss=loss, steps=steps, lr=3e-3, batch=8, progress=False, checkpoint=path,
              checkpoint_every=5, seed=7, schedule="cosine", callback=cb, **kw)
    return est, log


@pytest.mark.parametrize("loss", ["state_mse", "closed_loop_cost"])
def test_resumed_training_equals_uninterrupted(tmp_path, loss):
    ref, ref_log = _train(loss=loss)
    path = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        _train(path, stop=8, loss=loss)  # checkpoint of step 5 is on disk
    est, log = _train(path, loss=loss)
    assert log.settings["resumed_from"] == 5
    for (k, a), (_, b) in zip(ref.state_dict().items(), est.state_dict().items()):
        assert torch.equal(a, b), k
    np.testing.assert_array_equal(log.loss, ref_log.loss)
    np.testing.assert_array_equal(log.steps, np.arange(1, 13))
    # fixed seeds: a second fresh run is identical
    again, _ = _train(loss=loss)
    for (k, a), (_, b) in zip(ref.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    # the training checkpoint loads as an estimator too
    assert torch.equal(load_estimator(path).fir, est.fir)


# ---------------------------------------------------------------- named errors
def test_bad_data_gives_named_errors():
    y = torch.zeros(2, 5, 1, dtype=F64)
    u = torch.zeros(2, 5, 1, dtype=F64)
    with pytest.raises(ShapeError, match="x must have shape"):
        Rollouts(y=y, u=u, x=torch.zeros(2, 4, 1, dtype=F64))
    with pytest.raises(ShapeError, match="y must be a tensor of shape"):
        Rollouts(y=torch.zeros(2, 5), u=u)
    with pytest.raises(ShapeError, match="plants\\[0\\] has m=1"):
        Rollouts(y=y, u=torch.zeros(2, 5, 2, dtype=F64), plants=(lqgt.plants.scalar_unstable().plant,))
    bad = y.clone()
    bad[1, 3, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="y contains NaN"):
        Rollouts(y=bad, u=u)
    est = _tiny(n=1)
    with pytest.raises(ShapeError, match="y must be a tensor of shape \\(B, T, p=1\\)"):
        est(torch.zeros(2, 5, 3, dtype=F64), u)
    with pytest.raises(ShapeError, match="u must be a tensor"):
        est(y, torch.zeros(2, 4, 1, dtype=F64))
    data = Rollouts(y=y, u=u)  # measured data: no states
    with pytest.raises(ConfigError, match="no state labels"):
        fit(est, data, steps=1, progress=False)
    two = rollouts(lqgt.plants.two_mass(), None, horizon=5, batch=2)
    with pytest.raises(ConfigError, match="p=2"):
        fit(est, two, steps=1, progress=False)
    with pytest.raises(ConfigError, match="loss must be one of"):
        fit(est, Rollouts(y=y, u=u, x=torch.zeros(2, 5, 1, dtype=F64)), loss="mse", steps=1, progress=False)


def test_checkpoint_of_another_architecture_gives_named_error(tmp_path):
    ex = lqgt.plants.scalar_unstable()
    data = rollouts(ex, None, horizon=8, batch=8)
    path = tmp_path / "a.pt"
    fit(lqgt.TransformerEstimator(1, 1, 1, window=4, layers=1, heads=1, width=4), data, steps=2, batch=4,
        progress=False, checkpoint=path)
    other = lqgt.TransformerEstimator(1, 1, 1, window=4, layers=2, heads=1, width=4)
    with pytest.raises(CheckpointError, match="another configuration.*layers"):
        fit(other, data, steps=3, batch=4, progress=False, checkpoint=path)
    # another initialisation seed is the same architecture: it resumes
    log = fit(lqgt.TransformerEstimator(1, 1, 1, window=4, layers=1, heads=1, width=4, seed=9), data, steps=3, batch=4,
              progress=False, checkpoint=path)
    assert log.settings["resumed_from"] == 2 and len(log.loss) == 3
    saved = tmp_path / "saved.pt"
    other.save(saved)
    with pytest.raises(CheckpointError, match="holds a saved estimator"):
        fit(other, data, steps=3, batch=4, progress=False, checkpoint=saved)
    with pytest.raises(CheckpointError, match="class 'TransformerEstimator', not '_GainFilter'"):
        _GainFilter([[1.0]], [[1.0]], [[1.0]], [[0.5]]).load_checkpoint_dict(torch.load(path)["estimator"])
    # weights that do not fit the config they claim
    ck = lqgt.TransformerEstimator(1, 1, 1, window=4, layers=1, heads=1, width=4).checkpoint_dict()
    ck["config"]["width"] = 8
    torch.save(ck, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_estimator(tmp_path / "b.pt")
    ck["class"] = "NoSuchEstimator"
    torch.save(ck, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="not registered"):
        load_estimator(tmp_path / "c.pt")
    torch.save({"weights": 1}, tmp_path / "d.pt")
    with pytest.raises(CheckpointError, match="not an lqgt estimator checkpoint"):
        load_estimator(tmp_path / "d.pt")
    (tmp_path / "e.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_estimator(tmp_path / "e.pt")


# ---------------------------------------------------------------- data and evaluation vs direct computations
def test_rollouts_kalman_estimates_equal_the_time_varying_filter_in_the_loop():
    plant, Q, R = lqgt.plants.two_mass()
    K = lqgt.lqg(plant, Q, R).K
    kf = lqgt.KalmanFilter(plant, "current", steady=False)
    data = rollouts(plant, K, horizon=30, batch=16, seed=5, estimator=kf)
    res = lqgt.simulate(plant, K, {"kf": kf}, Q=Q, R=R, horizon=30, batch=16, seed=5, store=True)
    torch.testing.assert_close(data.x, res.x["kf"], rtol=0, atol=0)
    torch.testing.assert_close(data.x_hat_kf, res.x_hat["kf"], rtol=0, atol=1e-10)
    pred = data.kalman("predictor")  # x̂[t+1|t] = A x̂[t|t] + B u[t]
    kfp = lqgt.KalmanFilter(plant, "predictor", steady=False)
    resp = lqgt.simulate(plant, K, {"kf": kfp}, Q=Q, R=R, horizon=30, batch=16, seed=5, store=True)
    # the predictor loop has other inputs; compare through a filter run on the predictor loop's data
    d2 = rollouts(plant, K, horizon=30, batch=16, seed=5, estimator=kfp)
    torch.testing.assert_close(d2.kalman("predictor"), resp.x_hat["kf"][:, 1:], rtol=0, atol=1e-10)
    assert pred.shape == (16, 29, 4) and data.targets("predictor").shape == (16, 29, 4)
    a, b = data.split(0.75)
    assert (a.batch, b.batch) == (12, 4) and torch.equal(torch.cat([a.y, b.y]), data.y)
    assert data[3].batch == 1 and data.steps(5, 10).horizon == 5


def test_evaluate_matches_direct_computation():
    plant, Q, R = lqgt.plants.scalar_unstable()
    d = lqgt.lqg(plant, Q, R)
    est = _GainFilter(plant.A.tolist(), plant.B.tolist(), plant.C.tolist(), (0.7 * d.Lf).tolist())
    ev = evaluate(est, plant, d.K, Q, R, horizon=40, batch=300, seed=11, burn_in=5)
    kf = lqgt.KalmanFilter(plant, "current", steady=False)
    res = lqgt.simulate(plant, d.K, {"a": est, "b": kf}, Q=Q, R=R, horizon=40, batch=300, seed=11, store=True,
                        burn_in=5)
    ea = (res.x_hat["a"] - res.x["a"]).square().sum(-1)
    eb = (res.x_hat["b"] - res.x["b"]).square().sum(-1)
    assert math.isclose(ev.mse["learned"], float(ea[:, 5:].mean()), rel_tol=1e-12)
    assert math.isclose(ev.mse["kalman"], float(eb[:, 5:].mean()), rel_tol=1e-12)
    assert math.isclose(ev.mse_db["learned"], 10 * math.log10(float(ea[:, 5:].mean() / eb[:, 5:].mean())), rel_tol=1e-12)
    np.testing.assert_allclose(ev.mse_curve["learned"], ea.mean(0).numpy(), rtol=1e-12)
    assert math.isclose(ev.cost["learned"], res.cost["a"], rel_tol=1e-12)
    assert math.isclose(ev.lqg_cost, d.cost, rel_tol=1e-12)
    assert math.isclose(ev.cost_gap["kalman"], res.cost["b"] / d.cost - 1, rel_tol=1e-9)
    lo, hi = ev.mse_db_ci["learned"]
    assert lo < ev.mse_db["learned"] < hi and ev.mse_db["learned"] > 0.1  # a worse gain is worse
    assert "learned" in ev.table() and "exact LQG optimum" in ev.table()


def test_random_systems():
    a = lqgt.plants.random_systems(4, 1, 2, 6, spectral_radius=0.8, seed=0)
    b = lqgt.plants.random_systems(4, 1, 2, 6, spectral_radius=0.8, seed=0)
    c = lqgt.plants.random_systems(4, 1, 2, 6, spectral_radius=0.8, seed=1)
    assert len(a) == 6
    for (pa, Qa, Ra), (pb, _, _) in zip(a, b):
        assert np.array_equal(pa.A, pb.A) and (pa.n, pa.m, pa.p) == (4, 1, 2)
        assert np.abs(np.linalg.eigvals(pa.A)).max() <= 0.8 + 1e-12
        np.testing.assert_allclose(pa.P0, pa.A @ pa.P0 @ pa.A.T + pa.W, atol=1e-10)  # stationary start
    assert not np.array_equal(a[0].plant.A, c[0].plant.A)
    with pytest.raises(ConfigError, match="spectral_radius"):
        lqgt.plants.random_systems(2, 1, 1, 1, spectral_radius=1.0)


def test_training_curve_plots_the_log():
    ex = lqgt.plants.scalar_unstable()
    data = rollouts(ex, None, horizon=8, batch=16)
    est = lqgt.TransformerEstimator(1, 1, 1, window=2, layers=1, heads=1, width=4, seed=0)
    val = rollouts(ex, None, horizon=8, batch=8, seed=1)
    log = fit(est, data, steps=10, batch=4, lr=1e-2, progress=False, val=val, val_every=5)
    ax = training_curve(log, smooth=1, reference=0.5)
    line = ax.lines[0]
    np.testing.assert_array_equal(line.get_xdata(), log.steps)
    np.testing.assert_array_equal(line.get_ydata(), log.loss)
    np.testing.assert_array_equal(ax.lines[1].get_ydata(), log.val_loss)
    assert ax.get_yscale() == "log"
    assert len(log.val_loss) == 2
    ax2 = training_curve(log, smooth=4)
    np.testing.assert_allclose(ax2.lines[1].get_ydata(), np.convolve(log.loss, np.ones(4) / 4, "valid"))


def test_learned_estimator_runs_in_simulate_like_its_sequence_mode():
    plant, Q, R = lqgt.plants.two_mass()
    K = lqgt.lqg(plant, Q, R).K
    est = _tiny("predictor", n=4, m=1, p=2, window=4, layers=2, width=8)
    res = lqgt.simulate(plant, K, {"net": est, "kf": lqgt.KalmanFilter(plant)}, Q=Q, R=R, horizon=12, batch=5,
                        seed=0, store=True)
    # replay the loop's measurements and inputs in sequence mode: x_hat[t] (used at t) = x̂[t|t-1]
    seq = est(res.y["net"], res.u["net"])
    torch.testing.assert_close(res.x_hat["net"][:, 1:], seq[:, :-1], rtol=0, atol=1e-10)


def test_training_with_closed_loop_cost_moves_the_gain_to_the_kalman_gain():
    plant, Q, R = lqgt.plants.scalar_unstable()
    d = lqgt.lqg(plant, Q, R)
    est = _GainFilter(plant.A.tolist(), plant.B.tolist(), plant.C.tolist(), (0.4 * d.Lf).tolist())
    J0 = lqgt.lqg_cost(plant, Q, R, d.K, 0.4 * d.Lf, form="current")
    log = fit(est, plant, loss="closed_loop_cost", K=d.K, Q=Q, R=R, horizon=60, tbptt=20, steps=40, lr=0.05,
              batch=64, progress=False)
    g = est.gain.detach().numpy()
    J1 = lqgt.lqg_cost(plant, Q, R, d.K, g, form="current")
    assert abs(g.item() - d.Lf.item()) < 0.5 * abs(0.6 * d.Lf.item())  # more than halfway to the Kalman gain
    assert J1 < J0 and J1 < 1.02 * d.cost
    assert log.settings["loss"] == "closed_loop_cost"


def test_output_prediction_training_reaches_the_kalman_predictor():
    ex = lqgt.plants.scalar_unstable()
    K = lqgt.lqg(*ex).K
    data = rollouts(ex, K, horizon=48, batch=512, seed=0)
    test = rollouts(ex, K, horizon=48, batch=1000, seed=7)  # held-out noise
    est = lqgt.TransformerEstimator(1, 1, 1, window=8, layers=1, heads=1, width=8, seed=0)
    with torch.no_grad():
        before = float(output_prediction(est, test))
    fit(est, data, loss="output_prediction", steps=250, lr=1e-2, batch=64, progress=False)
    with torch.no_grad():
        learned = float(output_prediction(est, test))
    C = torch.tensor(ex.plant.C)
    kf = float((test.kalman("predictor") @ C.T - test.y[:, 1:]).square().sum(-1).mean())
    assert 10 * math.log10(before / kf) > 1.0
    assert 10 * math.log10(learned / kf) < 0.3, (before, learned, kf)


def test_rollouts_dither_is_the_applied_input():
    """With dither, the returned u is what entered the plant (x[t+1] = A x + B u exactly when W = 0)."""
    import numpy as np

    A = np.array([[0.9, 0.2], [0.0, 0.8]])
    plant = lqgt.Plant(A, [[0.0], [1.0]], [[1.0, 0.0]], W=np.zeros((2, 2)), V=[[0.1]])
    K = np.array([[0.3, 0.4]])
    data = lqgt.learn.rollouts(plant, K, horizon=30, batch=8, seed=0, dither=0.5, kalman=False)
    x, u = data.x.numpy(), data.u.numpy()
    assert np.allclose(x[:, 1:], x[:, :-1] @ A.T + u[:, :-1] @ np.array([[0.0, 1.0]]), atol=1e-12)
    plain = lqgt.learn.rollouts(plant, K, horizon=30, batch=8, seed=0, kalman=False)
    assert 0.3 < float((data.u - plain.u)[:, 0].std()) < 0.7          # the dither is there, at its scale
    with pytest.raises(lqgt.errors.ConfigError, match="dither"):
        lqgt.learn.rollouts(plant, K, horizon=5, batch=2, dither=-1.0)


def _rotation_mismatch():
    """benchmarks/learned_experiments.py's ``rotation10``: true dynamics rotated 10° past the nominal."""
    def osc(theta):
        c, s = math.cos(theta), math.sin(theta)
        return lqgt.Plant(0.995 * np.array([[c, -s], [s, c]]), np.eye(2), [[1.0, 0.0]], W=1e-3 * np.eye(2), V=[[1.0]])

    nominal, true = osc(0.3), osc(0.3 + math.radians(10.0))
    return true, nominal, lqgt.lqg(nominal, np.eye(2), 100.0 * np.eye(2)).K


@pytest.mark.parametrize("dither", [0.0, 0.3])
def test_mismatch_training_data_needs_exploration_to_close_the_loop(dither):
    """Regression (rotation10 diverged at +130 dB): trained on nominal-KF loops without dither, the
    network reads the state off ``u[t-1] = -K x̂_KF[t-1]`` and its own loop goes unstable; with
    dithered inputs it learns the input's effect, stays stable and beats the nominal KF."""
    torch.set_num_threads(1)
    true, nominal, K = _rotation_mismatch()
    data = rollouts(true, K, horizon=100, batch=256, seed=0, estimator=lqgt.KalmanFilter(nominal), kalman=False,
                    dither=dither)
    est = lqgt.TransformerEstimator(2, 2, 1, window=8, layers=1, heads=2, width=16, seed=0)
    fit(est, data, loss="state_mse", steps=300, lr=3e-3, batch=32, progress=False, seed=0, schedule="cosine",
        warmup=30)
    ev = evaluate(est, true, K, np.eye(2), 100.0 * np.eye(2), horizon=100, batch=200, seed=1_000_000,
                  kalman=lqgt.KalmanFilter(true, steady=False),
                  baselines={"nominal_kf": lqgt.KalmanFilter(nominal, steady=False)})
    gain = ev.mse_db["learned"] - ev.mse_db["nominal_kf"]
    if dither:
        assert gain < -0.3, (ev.mse_db, ev.cost)   # stable, and better than the wrong model
        assert ev.cost["learned"] < 1.1 * ev.cost["nominal_kf"], (ev.mse_db, ev.cost)
    else:
        assert not gain < 20.0, (ev.mse_db, ev.cost)   # the shortcut: unstable in its own loop


@pytest.mark.gpu
def test_compiled_step_equals_forward_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    est = _tiny("current", layers=2).to("cuda").eval()
    est.compile = True
    g = torch.Generator().manual_seed(3)
    y, u = torch.randn(4, 9, 1, generator=g, dtype=F64).cuda(), torch.randn(4, 9, 1, generator=g, dtype=F64).cuda()
    with torch.no_grad():
        ref = est(y, u)
        out = _stream(est, y, u)
    assert torch.allclose(out, ref, atol=1e-10, rtol=0)
