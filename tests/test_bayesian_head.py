"""BayesianHead (SPEC §7, seed 002): exact init, moment propagation vs Monte Carlo, calibration."""

import math

import pytest
import torch
from torch import nn

from lqgt.errors import ConfigError, NonFiniteError, ShapeError
from lqgt.learn.bayesian_head import BayesianHead, relu_moments, softmax_moments

torch.set_num_threads(1)
DT = torch.float64


def test_reproduces_pretrained_single_linear_with_uncertain_weights():
    torch.manual_seed(0)
    lin = nn.Linear(6, 3).to(DT)
    head = BayesianHead.from_linear_layers(lin, prior_var=0.5)
    x = torch.randn(50, 6, dtype=DT)
    mean, var = head(x)
    assert torch.allclose(mean, lin(x).detach(), atol=1e-12, rtol=0)
    assert bool((var > 0).all())


@pytest.mark.parametrize("softmax", [False, True])
def test_reproduces_pretrained_mlp_head(softmax):
    torch.manual_seed(1)
    mods = [nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 4)] + ([nn.Softmax(dim=-1)] if softmax else [])
    det = nn.Sequential(*mods).to(DT)
    head = BayesianHead.from_linear_layers(det, prior_var=0.1)
    assert head.softmax is softmax
    x = torch.randn(40, 5, dtype=DT)
    mean, _ = head(x)
    assert torch.allclose(mean, det(x).detach(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("mu,var", [(0.3, 1.0), (-1.2, 0.25), (2.0, 4.0), (0.0, 0.01)])
def test_relu_moments_match_monte_carlo(mu, var):
    g = torch.Generator().manual_seed(2)
    n = 1_000_000
    h = mu + math.sqrt(var) * torch.randn(n, generator=g, dtype=DT)
    r = torch.clamp(h, min=0)
    m, v, c = relu_moments(torch.tensor(mu, dtype=DT), torch.tensor(var, dtype=DT))
    se_m = float(r.std()) / math.sqrt(n)
    dev = r - r.mean()
    se_v = float(((dev**2 - dev.var()) ** 2).mean().sqrt()) / math.sqrt(n)
    assert abs(float(m) - float(r.mean())) < 3 * se_m
    assert abs(float(v) - float(r.var())) < 3 * se_v
    cov = ((h - h.mean()) * dev).mean()
    se_c = float(((h - h.mean()) * dev - cov).std()) / math.sqrt(n)
    assert abs(float(c) - float(cov)) < 3 * se_c


def test_softmax_taylor_error_grows_with_variance():
    """First-order Taylor: accurate at small variance, error grows ~ linearly in the variance."""
    g = torch.Generator().manual_seed(3)
    mu = torch.tensor([0.5, -0.3, 1.0, 0.0], dtype=DT)
    errs = []
    for scale in [1e-4, 1e-3, 1e-2, 1e-1]:
        var = scale * torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=DT)
        z = mu + var.sqrt() * torch.randn(400_000, 4, generator=g, dtype=DT)
        s = torch.softmax(z, -1)
        m, v = softmax_moments(mu, var)
        errs.append((float((m - s.mean(0)).abs().max()), float(((v - s.var(0)).abs() / s.var(0)).max())))
    assert errs[0][0] < 1e-4 and errs[0][1] < 0.02
    assert errs[-1][0] > 3 * errs[1][0]                        # the mean error grows with the variance
    assert errs[-1][0] < 0.05


def test_update_learns_and_is_calibrated():
    """Known noise (σ = 0.2) on a linear target: 95% predictive intervals cover 93–97%."""
    g = torch.Generator().manual_seed(4)
    w = torch.randn(1, 3, generator=g, dtype=DT)
    lin = nn.Linear(3, 1).to(DT)
    head = BayesianHead.from_linear_layers(lin, prior_var=0.5, obs_noise=0.04)
    Xt = torch.randn(5000, 3, generator=g, dtype=DT)
    Yt = Xt @ w.T + 0.2 * torch.randn(5000, 1, generator=g, dtype=DT)
    err0 = float(((head(Xt)[0] - Xt @ w.T) ** 2).mean())
    for _ in range(400):
        x = torch.randn(1, 3, generator=g, dtype=DT)
        head.update(x, x @ w.T + 0.2 * torch.randn(1, 1, generator=g, dtype=DT))
    m, v = head.predictive(Xt)
    err1 = float(((m - Xt @ w.T) ** 2).mean())
    assert err1 < 0.05 * err0
    cover = float(((Yt - m).abs() <= 1.959964 * v.sqrt()).double().mean())
    assert 0.93 <= cover <= 0.97
    for S in (head.S1, head.S2):
        assert torch.linalg.eigvalsh(S).min() > 0


def test_update_linear_output_layer_is_exact_kalman():
    """With layer-1 variance 0 the head is Bayesian linear regression on the hidden features."""
    torch.manual_seed(5)
    det = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)).to(DT)
    head = BayesianHead.from_linear_layers(det, prior_var=0.3, obs_noise=0.1)
    X = torch.randn(20, 3, dtype=DT)
    Y = torch.randn(20, 1, dtype=DT)
    Phi = torch.cat([torch.relu(det[0](X)), torch.ones(20, 1, dtype=DT)], 1).detach()
    m0 = head.m2[0].clone()
    head.update(X, Y)
    prec = torch.eye(5, dtype=DT) / 0.3 + Phi.T @ Phi / 0.1
    cov = torch.linalg.inv(prec)
    assert torch.allclose(head.S2[0], cov, atol=1e-10)
    assert torch.allclose(head.m2[0], cov @ (m0 / 0.3 + Phi.T @ Y[:, 0] / 0.1), atol=1e-10)


def test_softmax_head_update_moves_toward_target():
    torch.manual_seed(6)
    det = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3), nn.Softmax(-1)).to(DT)
    head = BayesianHead.from_linear_layers(det, prior_var=1.0, hidden_var=0.1, obs_noise=0.05)
    x = torch.randn(1, 4, dtype=DT)
    t = torch.tensor([[0.0, 0.0, 1.0]], dtype=DT)
    p0 = head(x)[0][0, 2]
    for _ in range(20):
        head.update(x, t)
    assert head(x)[0][0, 2] > p0 + 0.2


def test_bad_inputs():
    lin = nn.Linear(3, 2).to(DT)
    head = BayesianHead.from_linear_layers(lin)
    with pytest.raises(ShapeError, match="features"):
        head(torch.zeros(2, 4, dtype=DT))
    with pytest.raises(ShapeError, match="target"):
        head.update(torch.zeros(1, 3, dtype=DT), torch.zeros(1, 3, dtype=DT))
    with pytest.raises(NonFiniteError):
        head.update(torch.zeros(1, 3, dtype=DT), torch.tensor([[float("nan"), 0.0]], dtype=DT))
    with pytest.raises(ConfigError):
        BayesianHead.from_linear_layers(nn.Tanh())
    with pytest.raises(ConfigError, match="obs_noise"):
        BayesianHead.from_linear_layers(lin, obs_noise=0.0)
