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


@pytest.mark.parametrize("make", [
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
    other = lqgt.KalmanNet(PLANT, hidden=3)
    ck = torch.load(tmp_path / "e.pt", weights_only=True)
    if ck["class"] == "KalmanNet":
        with pytest.raises(CheckpointError):
            other.load_checkpoint_dict(ck)


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
    net = lqgt.KalmanNet(PLANT)
    with pytest.raises(lqgt.errors.ShapeError):
        net(torch.zeros(2, 5, 3, dtype=torch.float64), torch.zeros(2, 5, 1, dtype=torch.float64))
