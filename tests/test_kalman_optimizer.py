"""KalmanOptimizer (SPEC §7): exactness against closed forms, structured forms, bad input."""

import math

import pytest
import torch
from torch import nn

from lqgt.errors import ConfigError, NonFiniteError, NotPositiveDefiniteError, ShapeError
from lqgt.learn.kalman_optimizer import KalmanOptimizer

torch.set_num_threads(1)
DT = torch.float64


def _linear_data(n=40, d=5, p=1, seed=0, noise=0.1):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=DT)
    W = torch.randn(p, d, generator=g, dtype=DT)
    Y = X @ W.T + noise * torch.randn(n, p, generator=g, dtype=DT)
    return X, Y


def _mlp(seed=0, i=3, h=6, o=2):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(i, h), nn.Tanh(), nn.Linear(h, o)).to(DT)


@pytest.mark.parametrize("batch", [1, 4])
def test_full_equals_bayesian_linear_regression(batch):
    X, Y = _linear_data()
    model = nn.Linear(5, 1, bias=False).to(DT)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.3, -0.2, 0.1, 0.0, 0.5]], dtype=DT))
    m0 = model.weight.detach().reshape(-1).clone()
    r, pv = 0.01, 2.0
    opt = KalmanOptimizer(model, "full", obs_noise=r, process_noise=0.0, prior_var=pv)
    for k in range(0, len(X), batch):
        opt.step(X[k:k + batch], Y[k:k + batch])
    prec = torch.eye(5, dtype=DT) / pv + X.T @ X / r
    cov = torch.linalg.inv(prec)
    mean = cov @ (m0 / pv + X.T @ Y[:, 0] / r)
    assert torch.allclose(opt.covariance(), cov, atol=1e-10, rtol=0)
    assert torch.allclose(model.weight.detach().reshape(-1), mean, atol=1e-10, rtol=0)


def test_kalman_step_is_natural_gradient_step():
    """θ⁺ − θ = F⁻¹ J'R⁻¹ (y − f) with F = P⁻¹ + J'R⁻¹J (P⁺ = F⁻¹); J by an independent autograd."""
    model = _mlp()
    opt = KalmanOptimizer(model, "full", obs_noise=0.05, process_noise=0.0, prior_var=0.5)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):                                   # a non-trivial prior P first
        opt.step(torch.randn(2, 3, generator=g, dtype=DT), torch.randn(2, 2, generator=g, dtype=DT))
    P = opt.covariance()
    x, y = torch.randn(4, 3, generator=g, dtype=DT), torch.randn(4, 2, generator=g, dtype=DT)
    params = [p.detach().clone() for p in model.parameters()]
    theta = torch.cat([p.reshape(-1) for p in params])

    def f_of(th):
        i, ps = 0, {}
        for (n, p) in model.named_parameters():
            ps[n] = th[i:i + p.numel()].view_as(p)
            i += p.numel()
        return torch.func.functional_call(model, ps, (x,)).reshape(-1)

    J = torch.autograd.functional.jacobian(f_of, theta)
    e = y.reshape(-1) - f_of(theta).detach()
    R_inv = torch.eye(8, dtype=DT) / 0.05
    F = torch.linalg.inv(P) + J.T @ R_inv @ J
    ng = torch.linalg.solve(F, J.T @ R_inv @ e)
    opt.step(x, y)
    theta1 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert torch.allclose(theta1 - theta, ng, atol=1e-10, rtol=0)
    assert torch.allclose(opt.covariance(), torch.linalg.inv(F), atol=1e-10, rtol=0)


def test_kalman_step_tends_to_gauss_newton_as_R_to_0():
    """With no prior information left (P0 → ∞ relative to R), the step is the pure F⁻¹J'R⁻¹e, F = J'R⁻¹J."""
    X, Y = _linear_data(n=12, noise=0.0)
    model = nn.Linear(5, 1, bias=False).to(DT)
    opt = KalmanOptimizer(model, "full", obs_noise=1e-12, process_noise=0.0, prior_var=1.0)
    opt.step(X, Y)
    F = X.T @ X / 1e-12
    ng = torch.linalg.solve(F, X.T @ Y[:, 0] / 1e-12)   # noise-free data: the limit forgets the initial weights
    assert torch.allclose(model.weight.detach().reshape(-1), ng, atol=1e-10)


def test_lowrank_full_rank_equals_full():
    m1, m2 = _mlp(2), _mlp(2)
    d = sum(p.numel() for p in m1.parameters())
    a = KalmanOptimizer(m1, "full", obs_noise=0.02, process_noise=1e-4, prior_var=0.3)
    b = KalmanOptimizer(m2, "lowrank", rank=d, obs_noise=0.02, process_noise=1e-4, prior_var=0.3)
    g = torch.Generator().manual_seed(3)
    for _ in range(15):
        x, y = torch.randn(2, 3, generator=g, dtype=DT), torch.randn(2, 2, generator=g, dtype=DT)
        a.step(x, y)
        b.step(x, y)
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.allclose(p, q, atol=1e-10, rtol=0)
    assert torch.allclose(a.covariance(), b.covariance().dense(), atol=1e-9, rtol=1e-9)


def test_kronecker_single_layer_equals_full():
    X, Y = _linear_data(n=30, d=4, p=3)
    m1, m2 = nn.Linear(4, 3).to(DT), nn.Linear(4, 3).to(DT)
    m2.load_state_dict(m1.state_dict())
    a = KalmanOptimizer(m1, "full", obs_noise=0.05, process_noise=0.0, prior_var=0.7)
    b = KalmanOptimizer(m2, "kronecker", obs_noise=0.05, process_noise=0.0, prior_var=0.7)
    for k in range(0, 30, 3):
        a.step(X[k:k + 3], Y[k:k + 3])
        b.step(X[k:k + 3], Y[k:k + 3])
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.allclose(p, q, atol=1e-10, rtol=0)
    assert torch.allclose(a.covariance(), b.covariance().dense(), atol=1e-10, rtol=0)
    f1, v1 = a.predict(X[:5])
    f2, v2 = b.predict(X[:5])
    assert torch.allclose(f1, f2, atol=1e-10)
    assert torch.allclose(v1, v2, atol=1e-10)


@pytest.mark.parametrize("kind", ["diagonal", "lowrank", "kronecker"])
def test_structured_forms_stay_pd_and_learn(kind):
    model = _mlp(4, 2, 8, 1)
    teacher = _mlp(5, 2, 8, 1)
    opt = KalmanOptimizer(model, kind, rank=5, obs_noise=1e-2, process_noise=1e-6, prior_var=0.1)
    g = torch.Generator().manual_seed(0)
    Xt = torch.randn(200, 2, generator=g, dtype=DT)
    with torch.no_grad():
        Yt = teacher(Xt)
        err0 = float(((model(Xt) - Yt) ** 2).mean())
    for k in range(600):
        x = torch.randn(1, 2, generator=g, dtype=DT)
        with torch.no_grad():
            y = teacher(x) + 0.1 * torch.randn(1, 1, generator=g, dtype=DT)
        opt.step(x, y)
    C = opt.covariance()
    assert torch.linalg.eigvalsh(C.dense()).min() > 0
    assert bool((C.diag() > 0).all())
    assert torch.allclose(C.diag(), C.dense().diagonal(), rtol=1e-8, atol=1e-14)
    with torch.no_grad():
        err1 = float(((model(Xt) - Yt) ** 2).mean())
    assert err1 < 0.5 * err0


def test_diagonal_equals_full_when_decoupled():
    """One sample touching one weight each: the exact posterior is diagonal, so the forms agree."""
    m1, m2 = nn.Linear(3, 1, bias=False).to(DT), nn.Linear(3, 1, bias=False).to(DT)
    m2.load_state_dict(m1.state_dict())
    a = KalmanOptimizer(m1, "full", obs_noise=0.1, process_noise=1e-3, prior_var=1.0)
    b = KalmanOptimizer(m2, "diagonal", obs_noise=0.1, process_noise=1e-3, prior_var=1.0)
    for k in range(9):
        x = torch.zeros(1, 3, dtype=DT)
        x[0, k % 3] = 1.0 + k
        y = torch.tensor([[0.5 * k]], dtype=DT)
        a.step(x, y)
        b.step(x, y)
    assert torch.allclose(m1.weight, m2.weight, atol=1e-12)
    assert torch.allclose(a.covariance(), b.covariance().dense(), atol=1e-12)


def test_predictive_variance_calibrated():
    """Known-noise data, a well-specified linear model: 95% intervals cover 93-97% of fresh data."""
    g = torch.Generator().manual_seed(7)
    w = torch.randn(4, 1, generator=g, dtype=DT)
    sigma = 0.3
    model = nn.Linear(4, 1).to(DT)
    opt = KalmanOptimizer(model, "full", obs_noise=sigma**2, process_noise=0.0, prior_var=1.0)
    X = torch.randn(50, 4, generator=g, dtype=DT)
    opt.step(X, X @ w + sigma * torch.randn(50, 1, generator=g, dtype=DT))
    Xt = torch.randn(20000, 4, generator=g, dtype=DT)
    Yt = Xt @ w + sigma * torch.randn(20000, 1, generator=g, dtype=DT)
    m, v = opt.predict(Xt)
    cover = float(((Yt - m).abs() <= 1.959964 * v.sqrt()).double().mean())
    assert 0.93 <= cover <= 0.97


def test_adaptive_obs_noise_estimates_noise():
    g = torch.Generator().manual_seed(8)
    model = nn.Linear(2, 1).to(DT)
    opt = KalmanOptimizer(model, "full", obs_noise=1.0, process_noise=0.0, prior_var=1.0, adaptive_obs_noise=True)
    for _ in range(600):
        x = torch.randn(1, 2, generator=g, dtype=DT)
        opt.step(x, x.sum(1, keepdim=True) + 0.2 * torch.randn(1, 1, generator=g, dtype=DT))
    assert 0.02 < opt.r < 0.07                                           # true 0.04


def test_bad_inputs():
    model = _mlp()
    d = sum(p.numel() for p in model.parameters())
    with pytest.raises(ConfigError, match="rank"):
        KalmanOptimizer(model, "lowrank", rank=d + 1)
    with pytest.raises(ConfigError, match="covariance"):
        KalmanOptimizer(model, "dense")
    with pytest.raises(ConfigError, match="obs_noise"):
        KalmanOptimizer(model, "full", obs_noise=0.0)
    bad = torch.eye(d, dtype=DT)
    bad[0, 0] = -1.0
    with pytest.raises(NotPositiveDefiniteError, match="prior_var"):
        KalmanOptimizer(model, "full", prior_var=bad)
    with pytest.raises(NotPositiveDefiniteError, match="prior_var"):
        KalmanOptimizer(model, "diagonal", prior_var=-1.0)
    with pytest.raises(ShapeError, match="prior_var"):
        KalmanOptimizer(model, "full", prior_var=torch.eye(3, dtype=DT))
    with pytest.raises(ConfigError, match="nn.Linear"):
        KalmanOptimizer(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)).to(DT), "kronecker")
    for kind in ["full", "diagonal", "lowrank", "kronecker"]:
        opt = KalmanOptimizer(model, kind, rank=3)
        with pytest.raises(NonFiniteError, match="y"):
            opt.step(torch.zeros(1, 3, dtype=DT), torch.tensor([[float("nan"), 0.0]], dtype=DT))
        with pytest.raises(ShapeError, match="y"):
            opt.step(torch.zeros(1, 3, dtype=DT), torch.zeros(1, 3, dtype=DT))


class _Sqrt(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(1, 1).to(DT)

    def forward(self, x):
        return self.lin(torch.sqrt(x))


@pytest.mark.parametrize("kind", ["full", "diagonal", "lowrank", "kronecker"])
def test_nan_step_leaves_weights_unchanged(kind):
    model = _Sqrt()
    opt = KalmanOptimizer(model, kind, rank=1)
    before = [p.detach().clone() for p in model.parameters()]
    cov0 = opt.covariance()
    with pytest.warns(RuntimeWarning, match="non-finite"):
        opt.step(torch.tensor([[-1.0]], dtype=DT), torch.tensor([[1.0]], dtype=DT))
    for p, q in zip(before, model.parameters()):
        assert torch.equal(p, q.detach())
    c1 = opt.covariance()
    if kind == "full":
        assert torch.equal(cov0, c1)
    else:
        assert torch.equal(cov0.dense(), c1.dense())
    opt.step(torch.tensor([[4.0]], dtype=DT), torch.tensor([[1.0]], dtype=DT))   # a good step still works
    assert opt.steps == 1


@pytest.mark.parametrize("builder,kw,n", [
    ("pendulum", dict(mass_after=1.5, length_after=0.7, damping_after=0.2), 2),
    ("cart_pole_nonlinear", dict(pole_mass_after=0.2, length_after=0.4), 4),
])
def test_drift_plant_changes_at_given_step_in_simulate(builder, kw, n):
    """lqgt.simulate runs the closed loop across the change; x[t+1] uses the new dynamics iff t >= change_at."""
    import numpy as np

    import lqgt
    from lqgt import nonlinear_plants as nlp
    from lqgt.estimators.ekf import ExtendedKalmanFilter

    change = 12
    ex = getattr(nlp, builder)(change_at=change, **kw)
    assert ex.plant.n == n + 1 and ex.Q.shape == (n + 1, n + 1)
    base = getattr(nlp, builder)().plant
    after = getattr(nlp, builder)(**{k.replace("_after", ""): v for k, v in kw.items()}).plant
    lin = base.linearize()
    d = lqgt.lqg(lin, getattr(nlp, builder)().Q, [[0.1]])
    K = np.concatenate([d.K, np.zeros((1, 1))], 1)
    plant = ex.plant.with_initial(m0=np.r_[0.05, np.zeros(n - 1), change])
    res = lqgt.simulate(plant, K, {"ekf": ExtendedKalmanFilter(plant)}, Q=ex.Q, R=ex.R, horizon=30, batch=2,
                        seed=0, noise=False)
    x, u = res.x["ekf"], res.u["ekf"]
    assert torch.allclose(x[:, :, n], torch.clamp(change - torch.arange(30, dtype=DT), min=0).expand(2, 30))
    for t in range(29):
        xs = x[:, t, :n]
        want = (base if t < change else after).f(xs, u[:, t])
        other = (after if t < change else base).f(xs, u[:, t])
        assert torch.allclose(x[:, t + 1, :n], want, atol=1e-12)
        if t > 2:
            assert not torch.allclose(x[:, t + 1, :n], other, atol=1e-9)
    assert math.isfinite(float(res.cost["ekf"]))
    with pytest.raises(lqgt.errors.ConfigError, match="change_at"):
        getattr(nlp, builder)(change_at=-1)
