"""The trainable Transformer Filter and KalmanNet: construction, modes, gradients, training, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lqgt
from lqgt.errors import CheckpointError, ConfigError

PLANT, Q, R = lqgt.plants.two_mass()
DESIGN = lqgt.lqg(PLANT, Q, R)


def _steps(est, y, u):
    """Run the protocol (init/step) over sequences, with the timing of est.form."""
    B, T, _ = y.shape
    state, _ = est.init(B, device=y.device, dtype=y.dtype)
    out = []
    for t in range(T):
        if est.form == "current":
            ut = u[:, t - 1] if t > 0 else torch.zeros_like(u[:, 0])
        else:
            ut = u[:, t]
        state, xh = est.step(state, y[:, t], ut)
        out.append(xh)
    return torch.stack(out, 1)


def _data(T=40, B=6, seed=0):
    res = lqgt.simulate(PLANT, DESIGN.K, {"kf": lqgt.KalmanFilter(PLANT)}, Q=Q, R=R, horizon=T, batch=B, seed=seed,
                        progress=False)
    return res.y["kf"], res.u["kf"]


# --------------------------------------------------------------------------- trainable Transformer Filter
@pytest.mark.parametrize("closed", [True, False])
def test_constructed_trainable_tf_equals_the_transformer_filter(closed):
    K = DESIGN.K if closed else None
    tf = lqgt.TransformerFilter(PLANT, beta=30.0, window=8, K=K)
    tt = lqgt.TrainableTransformerFilter.from_construction(PLANT, beta=30.0, window=8, K=K)
    res = lqgt.simulate(PLANT, DESIGN.K, {"tf": tf, "tt": tt}, Q=Q, R=R, horizon=80, batch=5, seed=1, progress=False)
    assert torch.allclose(res.x_hat["tt"], res.x_hat["tf"], rtol=0, atol=1e-12)
    assert abs(res.cost["tt"] - res.cost["tf"]) <= 1e-12 * res.cost["tf"]
    # open loop, through the constructed filter's own run()
    y, u = _data()
    ref, _ = lqgt.TransformerFilter(PLANT, beta=30.0, window=8, K=K).run(y, u)
    mine = tt(y, u)
    assert torch.allclose(mine, ref[:, 1:], rtol=0, atol=1e-12)


@pytest.mark.parametrize("make", [
    lambda: lqgt.TrainableTransformerFilter(PLANT, window=5, beta=2.0, init="random", seed=3),
    lambda: lqgt.TrainableTransformerFilter.from_construction(PLANT, beta=10.0, window=5, K=DESIGN.K),
    lambda: _perturbed_net("current"),
    lambda: _perturbed_net("predictor"),
])
def test_sequence_mode_equals_step_mode(make):
    est = make()
    y, u = _data(T=30)
    with torch.no_grad():
        assert torch.allclose(est(y, u), _steps(est, y, u), rtol=0, atol=1e-10)


# --------------------------------------------------------------------------- KalmanNet
def _perturbed_net(form, seed=0, scale=0.3):
    net = lqgt.KalmanNet(PLANT, hidden=6, form=form, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        net.head.weight.copy_(scale * torch.randn(net.head.weight.shape, generator=g, dtype=torch.float64))
    return net


@pytest.mark.parametrize("form", ["current", "predictor"])
def test_untrained_kalmannet_is_the_steady_kalman_filter(form):
    net = lqgt.KalmanNet(PLANT, hidden=8, form=form, seed=1)
    res = lqgt.simulate(PLANT, DESIGN.K, {"kf": lqgt.KalmanFilter(PLANT, form), "net": net}, Q=Q, R=R, horizon=60,
                        batch=4, seed=2, progress=False)
    assert torch.allclose(res.x_hat["net"], res.x_hat["kf"], rtol=0, atol=1e-12)
    # and a perturbed one is not
    res2 = lqgt.simulate(PLANT, DESIGN.K, {"kf": lqgt.KalmanFilter(PLANT, form), "net": _perturbed_net(form)}, Q=Q,
                         R=R, horizon=60, batch=4, seed=2, progress=False)
    assert (res2.x_hat["net"] - res2.x_hat["kf"]).abs().max() > 1e-3


def test_untrained_time_varying_kalmannet_is_the_time_varying_kalman_filter():
    """steady=False: the base gains are the Kalman filter's from P0 (evaluate's reference)."""
    for form in ("current", "predictor"):
        net = lqgt.KalmanNet(PLANT, hidden=4, form=form, seed=0, steady=False)
        assert net.L_sched.shape[0] > 5                     # a real transient, then the steady gain
        kf = lqgt.KalmanFilter(PLANT, form, steady=False)
        res = lqgt.simulate(PLANT, DESIGN.K, {"kf": kf, "net": net}, Q=Q, R=R, horizon=120, batch=4, seed=3,
                            progress=False)
        scale = res.x_hat["kf"].abs().max()
        assert torch.allclose(res.x_hat["net"], res.x_hat["kf"], rtol=0, atol=1e-12 * scale)
        steady = lqgt.simulate(PLANT, DESIGN.K, {"kf": kf, "net": lqgt.KalmanNet(PLANT, hidden=4, form=form)}, Q=Q,
                               R=R, horizon=120, batch=4, seed=3, progress=False)
        assert (steady.x_hat["net"] - steady.x_hat["kf"]).abs().max() > 1e-6 * scale   # the schedule matters


def test_feedthrough_plant():
    """D != 0: the construction folds D into M, KalmanNet subtracts D u[t]; both still exact."""
    pd = lqgt.Plant(PLANT.A, PLANT.B, PLANT.C, W=PLANT.W, V=PLANT.V, D=np.full((PLANT.p, PLANT.m), 0.3),
                    m0=PLANT.m0, P0=PLANT.P0, dt=PLANT.dt)
    K = lqgt.lqg(pd, Q, R).K
    ests = {"kf": lqgt.KalmanFilter(pd, "predictor"), "net": lqgt.KalmanNet(pd, hidden=3, form="predictor"),
            "tf": lqgt.TransformerFilter(pd, beta=20.0, window=6),
            "tt": lqgt.TrainableTransformerFilter.from_construction(pd, beta=20.0, window=6)}
    res = lqgt.simulate(pd, K, ests, Q=Q, R=R, horizon=60, batch=3, seed=4, progress=False)
    assert torch.allclose(res.x_hat["net"], res.x_hat["kf"], rtol=0, atol=1e-12)
    assert torch.allclose(res.x_hat["tt"], res.x_hat["tf"], rtol=0, atol=1e-12)
    y, u = res.y["kf"], res.u["kf"]
    net = lqgt.KalmanNet(pd, hidden=3, form="predictor", seed=1)
    with torch.no_grad():
        net.head.weight.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(1))
        assert torch.allclose(net(y, u), _steps(net, y, u), rtol=0, atol=1e-10)
    with pytest.raises(ConfigError, match="D = 0"):
        lqgt.KalmanNet(pd, form="current")


class _Predict(torch.nn.Module):
    """``est.predict_output`` as a module's forward (for torch.func.functional_call)."""

    def __init__(self, est):
        super().__init__()
        self.est = est

    def forward(self, y, u):
        return self.est.predict_output(y, u)


def test_gradients_match_finite_differences():
    """gradcheck of the state loss w.r.t. a few parameters of each estimator (float64)."""
    y, u = _data(T=8, B=2)
    x = torch.randn(2, 8, PLANT.n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for est, prm in ((_perturbed_net("current"), "head.weight"),
                     (lqgt.TrainableTransformerFilter(PLANT, window=3, beta=1.0, init="random", seed=1),
                      "attn.W_v.weight")):
        p = dict(est.named_parameters())[prm]

        def loss(w, est=est, prm=prm):
            out = torch.func.functional_call(est, {prm: w}, (y, u))
            return ((out - x) ** 2).mean()

        assert torch.autograd.gradcheck(loss, (p.detach().clone().requires_grad_(True),), eps=1e-6, atol=1e-6)

        def pred_loss(w, est=est, prm=prm):                  # the "output_prediction" path
            out = torch.func.functional_call(_Predict(est), {f"est.{prm}": w}, (y[:, :-1], u[:, :-1]))
            return ((out - y[:, 1:]) ** 2).mean()

        assert torch.autograd.gradcheck(pred_loss, (p.detach().clone().requires_grad_(True),), eps=1e-6, atol=1e-6)


def test_short_training_brings_a_perturbed_kalmannet_back_to_the_kalman_filter():
    plant, Qs, Rs = lqgt.plants.scalar_unstable()
    K = lqgt.lqg(plant, Qs, Rs).K
    data = lqgt.learn.rollouts(plant, K, horizon=40, batch=256, seed=0)
    net = lqgt.KalmanNet(plant, hidden=4, seed=0, gain_scale=1.0)
    with torch.no_grad():
        net.head.bias.fill_(0.6)               # a gain far from the Kalman gain
    before = lqgt.learn.evaluate(net, plant, K, Q=Qs, R=Rs, horizon=100, batch=400, seed=5)
    lqgt.learn.fit(net, data, loss="state_mse", steps=150, lr=3e-2, batch=64, progress=False, seed=0)
    after = lqgt.learn.evaluate(net, plant, K, Q=Qs, R=Rs, horizon=100, batch=400, seed=5)
    assert before.mse_db["learned"] > 1.0                    # the perturbation was real
    assert after.mse_db["learned"] < 0.5                     # within 0.5 dB of the Kalman filter


def test_short_training_repairs_a_perturbed_trainable_tf():
    """W_v (= M) halved: 4 dB off the Kalman filter in the closed loop; 60 steps bring it within 0.5 dB.

    Exogenous-input tokens (K=None) and dithered data: without the dither, u[t] = -K x̂_kf[t]
    would hand the Kalman estimate to the filter (a shortcut that is unstable in its own loop).
    """
    plant, Qs, Rs = lqgt.plants.scalar_unstable()
    K = lqgt.lqg(plant, Qs, Rs).K
    data = lqgt.learn.rollouts(plant, K, horizon=30, batch=128, seed=0, dither=1.0)
    tt = lqgt.TrainableTransformerFilter.from_construction(plant, beta=20.0, window=4)
    with torch.no_grad():
        tt.attn.W_v.weight.mul_(0.5)
    before = lqgt.learn.evaluate(tt, plant, K, Q=Qs, R=Rs, horizon=60, batch=400, seed=5)
    lqgt.learn.fit(tt, data, loss="state_mse", steps=60, lr=1e-2, batch=64, progress=False, seed=0)
    after = lqgt.learn.evaluate(tt, plant, K, Q=Qs, R=Rs, horizon=60, batch=400, seed=5)
    assert before.mse_db["learned"] > 2.0
    assert after.mse_db["learned"] < 0.5


@pytest.mark.parametrize("make", [
    lambda: lqgt.KalmanNet(PLANT, hidden=3, form="current", seed=4, steady=False),
    lambda: _perturbed_net("predictor"),
    lambda: lqgt.TrainableTransformerFilter(PLANT, window=4, beta=3.0, K=DESIGN.K, init="random", seed=2),
])
def test_save_load_round_trip(tmp_path, make):
    est = make()
    est.save(tmp_path / "e.pt")
    back = lqgt.load_estimator(tmp_path / "e.pt")
    assert type(back) is type(est) and back.form == est.form
    for (k, a), (_, b) in zip(est.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k
    y, u = _data(T=12, B=3)
    with torch.no_grad():
        assert torch.equal(est(y, u), back(y, u))
    # a checkpoint of another architecture
    other = lqgt.KalmanNet(PLANT, hidden=5)
    ck = torch.load(tmp_path / "e.pt", weights_only=True)
    if ck["class"] == "KalmanNet":
        with pytest.raises(CheckpointError):
            other.load_checkpoint_dict(ck)
    # weights of another architecture under this config
    ck["state_dict"] = {k: v for k, v in other.state_dict().items()}
    torch.save(ck, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError):
        lqgt.load_estimator(tmp_path / "bad.pt")


def test_bad_arguments():
    with pytest.raises(ConfigError, match="plant"):
        lqgt.KalmanNet(np.eye(2))
    with pytest.raises(ConfigError, match="hidden"):
        lqgt.KalmanNet(PLANT, hidden=0)
    with pytest.raises(ConfigError, match="gain_scale"):
        lqgt.KalmanNet(PLANT, gain_scale=-1.0)
    with pytest.raises(ConfigError, match="predictor"):
        lqgt.TrainableTransformerFilter(PLANT, form="current")
    with pytest.raises(ConfigError, match="init"):
        lqgt.TrainableTransformerFilter(PLANT, init="zeros")
    with pytest.raises(ConfigError, match="window"):
        lqgt.TrainableTransformerFilter(PLANT, window=0)
    with pytest.raises(ConfigError, match="beta"):
        lqgt.TrainableTransformerFilter(PLANT, beta=-1.0)
    with pytest.raises(ConfigError, match="plant"):
        lqgt.TrainableTransformerFilter.from_construction("two_mass")
    with pytest.raises(ConfigError, match="steady"):
        lqgt.KalmanNet(PLANT, steady="no")
    with pytest.raises(lqgt.errors.ShapeError, match="K"):
        lqgt.TrainableTransformerFilter(PLANT, K=np.ones((3, 3)))
    net = lqgt.KalmanNet(PLANT)
    with pytest.raises(lqgt.errors.ShapeError):
        net(torch.zeros(2, 5, 3, dtype=torch.float64), torch.zeros(2, 5, 1, dtype=torch.float64))


# --------------------------------------------------------------------------- every loss, every parameter
def _scalar_estimators(form):
    """Tiny versions of both estimators on the scalar plant (all parameters in play)."""
    plant = lqgt.plants.scalar_unstable()[0]
    net = lqgt.KalmanNet(plant, hidden=2, form=form, seed=0, gain_scale=1.0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():                                  # a non-zero head, so the GRU's gradient is not zero
        net.head.weight.copy_(0.3 * torch.randn(net.head.weight.shape, generator=g, dtype=torch.float64))
    out = [net]
    if form == "predictor":
        out.append(lqgt.TrainableTransformerFilter(plant, window=2, beta=1.5, init="random", seed=4))
        K = lqgt.lqg(*lqgt.plants.scalar_unstable()).K
        out.append(lqgt.TrainableTransformerFilter(plant, window=2, beta=1.5, K=K, init="random", seed=5,
                                                   inputs="value"))     # B_u is a parameter too
    return out


@pytest.mark.parametrize("form", ["current", "predictor"])
@pytest.mark.parametrize("loss", ["state_mse", "output_prediction", "closed_loop_cost"])
def test_gradients_of_every_loss_match_finite_differences(form, loss):
    ex = lqgt.plants.scalar_unstable()
    K = lqgt.lqg(*ex).K
    data = lqgt.learn.rollouts(ex, K, horizon=6, batch=2, seed=3)
    for est in _scalar_estimators(form):
        names = [k for k, _ in est.named_parameters()]

        def fn(*vals, est=est, names=names):
            params = dict(zip(names, vals))
            if loss == "closed_loop_cost":
                def run():
                    return lqgt.learn.closed_loop_cost(est, ex.plant, K, ex.Q, ex.R, horizon=5, batch=2, seed=4,
                                                       tbptt=None)
            else:
                def run():
                    return getattr(lqgt.learn, loss)(est, data)
            return _call_with(est, params, run)

        vals = tuple(dict(est.named_parameters())[k].detach().clone().requires_grad_(True) for k in names)
        assert torch.autograd.gradcheck(fn, vals, eps=1e-6, atol=1e-6, rtol=1e-5), (type(est).__name__, loss)


def _call_with(est, params, run):
    """Run ``run()`` with the tensors ``params`` in place of the estimator's parameters."""
    saved = dict(est.named_parameters())

    def put(ps):
        for k, v in ps.items():
            mod = est
            *path, leaf = k.split(".")
            for part in path:
                mod = getattr(mod, part)
            mod._parameters[leaf] = v

    try:
        put(params)
        return run()
    finally:
        put(saved)


def test_inputs_as_values_equals_the_construction_in_its_own_loop():
    """K given, inputs="value": v = [A-LC, L] z + B_u u equals M z with u = -K x̃ (to rounding)."""
    tf = lqgt.TransformerFilter(PLANT, beta=30.0, window=8, K=DESIGN.K)
    tv = lqgt.TrainableTransformerFilter.from_construction(PLANT, beta=30.0, window=8, K=DESIGN.K, inputs="value")
    res = lqgt.simulate(PLANT, DESIGN.K, {"tf": tf, "tv": tv}, Q=Q, R=R, horizon=80, batch=5, seed=1, progress=False)
    assert torch.allclose(res.x_hat["tv"], res.x_hat["tf"], rtol=0, atol=1e-12)
    # on data of another loop it uses the inputs that were applied (the construction assumes -K x̃)
    y, u = _data()
    ta = lqgt.TrainableTransformerFilter.from_construction(PLANT, beta=30.0, window=8, K=DESIGN.K)
    with torch.no_grad():
        assert (tv(y, u) - ta(y, u)).abs().max() > 1e-6
        assert torch.allclose(tv(y, u), _steps(tv, y, u), rtol=0, atol=1e-10)


def test_training_repairs_a_perturbed_closed_loop_tf_on_kalman_loop_data():
    """K given, inputs="value", M scaled by 0.6 (about 5 dB off), trained on undithered Kalman-loop rollouts."""
    plant, Qs, Rs = lqgt.plants.scalar_unstable()
    K = lqgt.lqg(plant, Qs, Rs).K
    data = lqgt.learn.rollouts(plant, K, horizon=40, batch=256, seed=0)
    tf = lqgt.TrainableTransformerFilter.from_construction(plant, beta=10.0, window=4, K=K, inputs="value")
    with torch.no_grad():
        tf.attn.W_v.weight.mul_(0.6)
    before = lqgt.learn.evaluate(tf, plant, K, Q=Qs, R=Rs, horizon=100, batch=400, seed=5)
    lqgt.learn.fit(tf, data, loss="state_mse", steps=100, lr=1e-2, batch=64, progress=False, seed=0)
    after = lqgt.learn.evaluate(tf, plant, K, Q=Qs, R=Rs, horizon=100, batch=400, seed=5)
    assert before.mse_db["learned"] > 4.0
    assert after.mse_db["learned"] < 1.5


def test_feedback_gain_mode_warns_under_another_gain():
    tt = lqgt.TrainableTransformerFilter.from_construction(PLANT, beta=10.0, window=4, K=DESIGN.K)
    assert np.array_equal(tt.feedback_gain, DESIGN.K)
    from lqgt.simulate import GainMismatchWarning

    with pytest.warns(GainMismatchWarning):
        lqgt.simulate(PLANT, 0.5 * DESIGN.K, {"tt": tt}, Q=Q, R=R, horizon=5, batch=2, seed=0, progress=False)
    assert lqgt.TrainableTransformerFilter.from_construction(PLANT, beta=10.0, window=4).feedback_gain is None


def test_checkpoints_of_another_architecture_are_refused(tmp_path):
    lqgt.KalmanNet(PLANT, hidden=4).save(tmp_path / "net.pt")
    lqgt.TrainableTransformerFilter(PLANT, window=4, beta=1.0, init="random", seed=0).save(tmp_path / "tf.pt")
    ck_net = torch.load(tmp_path / "net.pt", weights_only=True)
    ck_tf = torch.load(tmp_path / "tf.pt", weights_only=True)
    with pytest.raises(CheckpointError, match="hidden"):
        lqgt.KalmanNet(PLANT, hidden=5).load_checkpoint_dict(ck_net)
    with pytest.raises(CheckpointError, match="class"):
        lqgt.KalmanNet(PLANT, hidden=4).load_checkpoint_dict(ck_tf)
    with pytest.raises(CheckpointError, match="window"):
        lqgt.TrainableTransformerFilter(PLANT, window=5, beta=1.0, init="random").load_checkpoint_dict(ck_tf)
    ck_net["state_dict"]["head.weight"] = torch.zeros(3, 3, dtype=torch.float64)     # weights of another shape
    torch.save(ck_net, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="weights"):
        lqgt.load_estimator(tmp_path / "bad.pt")


def test_bad_plants_and_forms():
    cfg = lqgt.KalmanNet(PLANT).config()["plant"]
    cfg["C"] = [[1.0, 0.0, 0.0]]                            # C of the wrong width
    with pytest.raises(lqgt.errors.ShapeError):
        lqgt.KalmanNet(cfg)
    with pytest.raises(ConfigError, match="current"):
        lqgt.TrainableTransformerFilter.from_construction(PLANT, beta=1.0, window=4, form="current")
    with pytest.raises(ConfigError, match="form"):
        lqgt.KalmanNet(PLANT, form="smoother")
    fed = lqgt.Plant(PLANT.A, PLANT.B, PLANT.C, W=PLANT.W, V=PLANT.V, D=np.ones((PLANT.p, PLANT.m)))
    with pytest.raises(ConfigError, match="D = 0"):
        lqgt.KalmanNet(fed, form="current")
    with pytest.raises(lqgt.errors.ShapeError):
        lqgt.TrainableTransformerFilter.from_construction(PLANT, beta=1.0, window=4, K=np.ones((3, 3)))
