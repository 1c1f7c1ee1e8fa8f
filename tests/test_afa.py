"""Adaptive Filter Attention: the layer, the estimator, contaminated noise (SPEC §6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lqgt
from lqgt.errors import (
    ConfigError,
    NonFiniteError,
    NotDetectableError,
    NotDiagonalizableError,
    ShapeError,
)
from lqgt.estimators.afa import AFAFilter, state_token_maps
from lqgt.layers.afa import AdaptiveFilterAttention, lyapunov_variance

F64 = torch.float64


# ----------------------------------------------------------------------------- helpers
def _identity_layer(d_model=4, heads=1, **kw) -> AdaptiveFilterAttention:
    layer = AdaptiveFilterAttention(d_model, heads, dtype=F64, **kw)
    with torch.no_grad():
        for lin in (layer.W_q, layer.W_k, layer.W_v, layer.W_o):
            lin.weight.copy_(torch.eye(d_model))
    return layer


def _complex(z: torch.Tensor) -> torch.Tensor:
    """(B, N, d) real → (B, N, d/2) complex pairs."""
    return torch.view_as_complex(z.reshape(*z.shape[:-1], -1, 2).contiguous())


def _rot_plant(W=0.0, V=0.5, rho=0.97, theta=0.3, P0=1.0) -> lqgt.Plant:
    """A 2-D rotating, decaying system observed fully (normal A: isotropic == tensor)."""
    c, s = math.cos(theta), math.sin(theta)
    A = rho * np.array([[c, -s], [s, c]])
    return lqgt.Plant(A, np.array([[0.0], [1.0]]), np.eye(2), W=W * np.eye(2), V=V * np.eye(2), P0=P0 * np.eye(2))


def _sequence(plant: lqgt.Plant, T: int, seed: int = 0, B: int = 2):
    """Open-loop trajectories with random inputs: x (B, T, n), y (B, T, p), u (B, T, m)."""
    rng = np.random.default_rng(seed)
    n, m, p = plant.n, plant.m, plant.p
    Wh, Vh = np.linalg.cholesky(plant.W + 1e-300 * np.eye(n)) if plant.W.any() else np.zeros((n, n)), np.linalg.cholesky(plant.V)
    x = np.zeros((B, T, n))
    u = rng.standard_normal((B, T, m))
    xt = rng.standard_normal((B, n))
    y = np.zeros((B, T, p))
    for t in range(T):
        x[:, t] = xt
        y[:, t] = xt @ plant.C.T + u[:, t] @ plant.D.T + rng.standard_normal((B, p)) @ Vh.T
        xt = xt @ plant.A.T + u[:, t] @ plant.B.T + rng.standard_normal((B, n)) @ Wh.T
    return x, y, u


# ----------------------------------------------------------------------------- layer
def test_lyapunov_variance_limit_and_closed_form():
    d = [0.0, 0.5, 3.0]
    for mu in (0.0, 1e-12, 1e-7, 0.3):
        v = lyapunov_variance(torch.tensor(mu, dtype=F64), torch.tensor(0.7, dtype=F64), torch.tensor(0.2, dtype=F64),
                              torch.tensor(d, dtype=F64))
        ref = [0.7 * dd + 0.2 if mu == 0 else 0.7 * -math.expm1(-2 * mu * dd) / (2 * mu) + math.exp(-2 * mu * dd) * 0.2
               for dd in d]
        assert torch.allclose(v, torch.tensor(ref, dtype=F64), rtol=1e-12, atol=0)
    # gradient at mu = 0 is finite and equals d/dmu of the series (-q Δ² + ... - 2Δ r)
    mu = torch.tensor(0.0, dtype=F64, requires_grad=True)
    lyapunov_variance(mu, torch.tensor(0.7, dtype=F64), torch.tensor(0.2, dtype=F64), torch.tensor(2.0, dtype=F64)).backward()
    assert math.isfinite(mu.grad.item()) and abs(mu.grad.item() - (-0.7 * 4.0 - 2 * 2.0 * 0.2)) < 1e-9


@pytest.mark.parametrize("form", ["isotropic", "tensor"])
def test_layer_gls_limit(form):
    """q = 0, ν → ∞: the output is the GLS estimate of the value trajectory at t_i (direct solve)."""
    layer = _identity_layer(4, 1, form=form, robust=False, nu=math.inf, dt=0.5)
    mu = [0.2, 0.2] if form == "isotropic" else [0.2, 0.05]
    layer.set_dynamics(mu=mu if form == "tensor" else 0.2, q=0.0, r=[0.3, 1.7] if form == "tensor" else 0.3,
                       omega=[0.9, -2.1])
    x = torch.randn(2, 7, 4, dtype=F64)
    out = layer(x)
    v, oc = _complex(x).numpy(), _complex(out).detach().numpy()
    lam = -np.asarray(mu if form == "tensor" else [0.2, 0.2]) + 1j * np.array([0.9, -2.1])
    for b in range(2):
        for i in range(7):
            for k in range(2):
                delta = (i - np.arange(i + 1)) * 0.5
                a = np.exp(-lam[k] * delta)  # v_j = e^{-λΔ} x_i + noise of variance r_k
                sol, *_ = np.linalg.lstsq(a[:, None], v[b, : i + 1, k], rcond=None)
                assert abs(sol[0] - oc[b, i, k]) < 1e-10


@pytest.mark.parametrize("form", ["isotropic", "tensor"])
def test_layer_rotary_limit(form):
    """μ = 0, q = 0: the squared residual is per-token norms minus a rotary complex dot product."""
    layer = AdaptiveFilterAttention(8, 2, form=form, robust=True, nu=3.0, tau=0.7, dt=0.25, dtype=F64)
    layer.set_dynamics(mu=0.0, q=0.0, r=0.4, nu=3.0)
    x = torch.randn(3, 9, 8, dtype=F64)
    logits = layer.logits(x)
    N, h, dh = 9, 2, 4
    t = torch.arange(N, dtype=F64) * 0.25
    q = _complex(layer.W_q(x)).view(3, N, h, 2).transpose(1, 2)  # (B, h, N, c)
    k = _complex(layer.W_k(x)).view(3, N, h, 2).transpose(1, 2)
    rot = torch.exp(-1j * layer.omega[:, None, :].detach() * t[None, :, None])  # (h, N, c)
    qr, kr = q * rot, k * rot                                     # RoPE-style rotated queries and keys
    dot = (qr.conj() @ kr.transpose(-1, -2)).real                 # Re(q̃_i^H k̃_j), a complex matmul
    s = (q.abs() ** 2).sum(-1)[..., :, None] + (k.abs() ** 2).sum(-1)[..., None, :] - 2 * dot
    V, r = 0.4, 0.4  # V = r for μ = q = 0; the residual adds the query noise r
    expect = 0.7 * (-math.log(V) - torch.log1p(s / (3.0 * dh * (V + r))))
    mask = torch.ones(N, N, dtype=torch.bool).tril()
    got = logits if form == "isotropic" else logits[:, :, 0]
    assert torch.allclose(got[..., mask], expect[..., mask], rtol=0, atol=1e-10)
    assert torch.isinf(got[..., ~mask]).all()
    # and inverting the robust map gives back exactly "rotary dot product + per-token terms"
    s_back = 3.0 * dh * (V + r) * torch.expm1(-got / 0.7 - math.log(V))
    assert torch.allclose(s_back[..., mask], s[..., mask], atol=1e-9)


def test_layer_window_one_returns_own_value():
    layer = AdaptiveFilterAttention(8, 2, form="tensor", window=1, dtype=F64)
    x = torch.randn(2, 6, 8, dtype=F64)
    assert torch.allclose(layer(x), layer.W_o(layer.W_v(x)), atol=1e-12)


def test_layer_isotropic_equals_tensor_when_shared():
    torch.manual_seed(1)
    iso = AdaptiveFilterAttention(8, 2, form="isotropic", robust=True, nu=2.5, dt=0.3, dtype=F64)
    ten = AdaptiveFilterAttention(8, 2, form="tensor", robust=True, nu=2.5, dt=0.3, dtype=F64)
    ten.load_state_dict({k: v for k, v in iso.state_dict().items() if k not in ("mu_raw", "q_raw", "r_raw")}, strict=False)
    iso.set_dynamics(mu=[0.1, 0.4], q=[0.2, 0.05], r=[0.5, 1.5])
    ten.set_dynamics(mu=[[0.1], [0.4]], q=[[0.2], [0.05]], r=[[0.5], [1.5]])
    x = torch.randn(2, 11, 8, dtype=F64)
    o1, w1 = iso(x, return_weights=True)
    o2, w2 = ten(x, return_weights=True)
    assert torch.allclose(o1, o2, atol=1e-12)
    assert torch.allclose(w2, w1[:, :, None].expand_as(w2), atol=1e-12)


@pytest.mark.parametrize("form", ["isotropic", "tensor"])
def test_layer_trains_and_is_causal(form):
    layer = AdaptiveFilterAttention(8, 2, form=form, dtype=F64)
    layer.set_dynamics(mu=1e-9)  # near the μ → 0 limit the gradients must be finite (expm1 path)
    x = torch.randn(2, 10, 8, dtype=F64)
    out = layer(x)
    out.square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert layer.mu_raw.grad.abs().sum() > 0 and layer.nu_raw.grad.abs().sum() > 0
    x2 = x.clone()
    x2[:, 6:] += 5.0  # the future does not change the past
    assert torch.allclose(layer(x2)[:, :6], out[:, :6].detach(), atol=1e-12)


def test_layer_bad_input():
    with pytest.raises(ConfigError, match="nu"):
        AdaptiveFilterAttention(8, 2, nu=0.0)
    with pytest.raises(ConfigError, match="nu"):
        AdaptiveFilterAttention(8, 2, nu=-1.0)
    with pytest.raises(ConfigError, match="q"):
        AdaptiveFilterAttention(8, 2, q=-0.1)
    with pytest.raises(ConfigError, match="r"):
        AdaptiveFilterAttention(8, 2, r=0.0)
    with pytest.raises(ConfigError, match="even"):
        AdaptiveFilterAttention(6, 2)
    with pytest.raises(ConfigError, match="form"):
        AdaptiveFilterAttention(8, 2, form="diagonal")
    layer = AdaptiveFilterAttention(8, 2, dtype=F64)
    with pytest.raises(ConfigError, match="q"):
        layer.set_dynamics(q=-1.0)
    with pytest.raises(NonFiniteError):
        layer.set_dynamics(nu=float("nan"))
    x = torch.randn(1, 4, 8, dtype=F64)
    x[0, 2, 3] = float("nan")
    with pytest.raises(NonFiniteError, match="x"):
        layer(x)
    with pytest.raises(ShapeError, match="d_model"):
        layer(torch.randn(1, 4, 6, dtype=F64))


# ----------------------------------------------------------------------------- estimator
def _direct_gls(plant, y, u, t, H, R):
    """GLS estimate of x[t] from z_j = C⁺ y_j (C = I here), j in the window, by one stacked lstsq."""
    A, B = plant.A, plant.B
    rows, rhs = [], []
    for j in range(max(0, t - H + 1), t + 1):
        d = t - j
        Ad = np.linalg.matrix_power(A, d)
        Uj = sum((np.linalg.matrix_power(A, t - 1 - k) @ B @ u[k] for k in range(j, t)), np.zeros(plant.n))
        Cov = Ad @ R @ Ad.T                      # A^Δ y_j + U_j = x_t + A^Δ v_j
        Li = np.linalg.inv(np.linalg.cholesky(Cov))
        rows.append(Li)
        rhs.append(Li @ (Ad @ y[j] + Uj))
    sol, *_ = np.linalg.lstsq(np.vstack(rows), np.concatenate(rhs), rcond=None)
    return sol


@pytest.mark.parametrize("form", ["tensor", "isotropic", "matrix"])
def test_filter_gls_limit(form):
    """W = 0 and ν → ∞ (robust=False): x̄[t] is the GLS estimate from the window (direct solve)."""
    plant = _rot_plant(W=0.0, V=0.5)
    H = 5
    _, y, u = _sequence(plant, 12, seed=3, B=1)
    est = AFAFilter(plant, window=H, form=form, robust=False)
    xs = est.run(y[0], u[0]).numpy()
    for t in range(12):
        assert np.abs(xs[t] - _direct_gls(plant, y[0], u[0], t, H, plant.V)).max() < 1e-10


def test_filter_matrix_gls_limit_nonnormal():
    """The matrix form is the GLS estimate for any A and full token covariance."""
    A = np.array([[0.9, 0.4], [-0.1, 0.8]])
    V = np.array([[0.5, 0.2], [0.2, 0.3]])
    plant = lqgt.Plant(A, np.array([[1.0], [0.5]]), np.eye(2), W=np.zeros((2, 2)), V=V)
    _, y, u = _sequence(plant, 10, seed=4, B=1)
    xs = AFAFilter(plant, window=4, form="matrix", robust=False).run(y[0], u[0]).numpy()
    for t in range(10):
        assert np.abs(xs[t] - _direct_gls(plant, y[0], u[0], t, 4, V)).max() < 1e-10


@pytest.mark.parametrize("timing", ["current", "predictor"])
@pytest.mark.parametrize("form", ["tensor", "isotropic", "matrix"])
def test_filter_window_one_returns_pulled_forward_token(form, timing):
    plant = _rot_plant(W=0.01, V=0.5)
    _, y, u = _sequence(plant, 6, seed=5, B=2)
    xs = AFAFilter(plant, window=1, form=form, timing=timing).run(y, u).numpy()
    z = y  # C = I: the token is the measurement
    expect = z if timing == "current" else z @ plant.A.T + u @ plant.B.T
    assert np.abs(xs - expect).max() < 1e-12


@pytest.mark.parametrize("mahalanobis", ["full", "diagonal"])
def test_filter_isotropic_equals_tensor_when_shared(mahalanobis):
    plant = _rot_plant(W=0.02, V=0.5)  # normal A, scalar W and R: every component shares μ, q, r
    _, y, u = _sequence(plant, 30, seed=6, B=2)
    y[:, 17] += 8.0  # an outlier, so that the robust factors matter
    a = AFAFilter(plant, window=8, form="isotropic", mahalanobis=mahalanobis).run(y, u)
    b = AFAFilter(plant, window=8, form="tensor", mahalanobis=mahalanobis).run(y, u)
    assert torch.allclose(a, b, atol=1e-10)


def test_filter_newest_outlier_is_downweighted():
    """An outlier in the newest token must be down-weighted (residual reference = previous estimate)."""
    plant = _rot_plant(W=0.01, V=0.05)
    _, y, u = _sequence(plant, 30, seed=7, B=1)
    y_bad = y.copy()
    y_bad[0, -1] += np.array([5.0, -4.0])  # ~25 noise standard deviations
    for form in ("tensor", "isotropic", "matrix"):
        rob = AFAFilter(plant, window=16, nu=4.0, form=form)
        gau = AFAFilter(plant, window=16, form=form, robust=False)
        xr, ar = rob.run(y_bad, u, weights=True)
        xg, ag = gau.run(y_bad, u, weights=True)
        xc = rob.run(y, u)
        a_new_r = ar[0, -1, -1].mean() if ar.ndim == 4 else ar[0, -1, -1]
        a_new_g = ag[0, -1, -1].mean() if ag.ndim == 4 else ag[0, -1, -1]
        assert a_new_r < 0.05 * a_new_g, form
        err_r = float((xr[0, -1] - xc[0, -1]).norm())
        err_g = float((xg[0, -1] - gau.run(y, u)[0, -1]).norm())
        assert err_r < 0.1 * err_g, form


def test_state_token_maps_reconstruct_and_covariance():
    plant = lqgt.plants.two_mass()[0]  # n = 4, p = 2: two measurements per token
    est = AFAFilter(plant, window=4, form="matrix")
    assert est.L == 2
    maps = state_token_maps(plant, 2)
    rng = np.random.default_rng(0)
    M = 40000
    n, p, m = 4, 2, 1
    Wh, Vh, P0h = (np.linalg.cholesky(S) for S in (plant.W, plant.V, plant.P0))
    x0 = plant.m0 + rng.standard_normal((M, n)) @ P0h.T
    u = rng.standard_normal((M, 2, m))
    y0 = x0 @ plant.C.T + rng.standard_normal((M, p)) @ Vh.T
    x1 = x0 @ plant.A.T + u[:, 0] @ plant.B.T + rng.standard_normal((M, n)) @ Wh.T
    y1 = x1 @ plant.C.T + rng.standard_normal((M, p)) @ Vh.T
    Y = np.concatenate([y0, y1], axis=1)
    for cls, (yw, xt) in ((0, (np.concatenate([np.zeros((M, p)), y0], 1), x0)), (1, (Y, x1))):
        g = maps[cls]
        z = yw @ g["Gy"].T + u.reshape(M, -1) @ g["Gu"].T + g["const"]
        e = z - xt
        assert np.abs(e.mean(0)).max() < 5 * np.sqrt(np.diag(g["R"]).max() / M)
        emp = e.T @ e / M
        assert np.linalg.norm(emp - g["R"]) < 0.05 * np.linalg.norm(g["R"]), cls
    # noise-free: the steady token reconstructs the state exactly
    g = maps[1]
    xa = rng.standard_normal((5, n))
    ua = rng.standard_normal((5, 2, m))
    xb = xa @ plant.A.T + ua[:, 0] @ plant.B.T
    z = np.concatenate([xa @ plant.C.T, xb @ plant.C.T], 1) @ g["Gy"].T + ua.reshape(5, -1) @ g["Gu"].T
    assert np.abs(z - xb).max() < 1e-10


@pytest.mark.parametrize("timing", ["current", "predictor"])
def test_filter_stream_tokens_reconstruct_noise_free_state(timing):
    """p < n with inputs: on a noise-free trajectory the streamed tokens are the states exactly."""
    plant = lqgt.plants.two_mass()[0]
    rng = np.random.default_rng(3)
    T, B = 15, 2
    u = rng.standard_normal((B, T, 1))
    x = np.zeros((B, T + 1, 4))
    x[:, 0] = rng.standard_normal((B, 4))
    for t in range(T):
        x[:, t + 1] = x[:, t] @ plant.A.T + u[:, t] @ plant.B.T
    y = x[:, :T] @ plant.C.T
    for form in ("tensor", "isotropic", "matrix"):
        xs = AFAFilter(plant, window=1, form=form, timing=timing).run(y, u).numpy()
        target = x[:, :T] if timing == "current" else x[:, 1:]
        assert np.abs(xs[:, 1:] - target[:, 1:]).max() < 1e-9, form

def test_filter_bad_input():
    plant = _rot_plant(W=0.01)
    for nu in (0.0, -2.0):
        with pytest.raises(ConfigError, match="nu"):
            AFAFilter(plant, nu=nu)
    with pytest.raises(NonFiniteError, match="nu"):
        AFAFilter(plant, nu=float("nan"))
    with pytest.raises(ConfigError, match="window"):
        AFAFilter(plant, window=0)
    with pytest.raises(lqgt.errors.NotPositiveDefiniteError, match="P_ref"):
        AFAFilter(plant, P_ref=-np.eye(2))
    with pytest.raises(ConfigError, match="form"):
        AFAFilter(plant, form="predictor")
    with pytest.raises(ConfigError, match="timing"):
        AFAFilter(plant, timing="tensor")
    jordan = lqgt.Plant([[0.9, 1.0], [0.0, 0.9]], [[0.0], [1.0]], np.eye(2), W=0.01 * np.eye(2), V=np.eye(2))
    with pytest.raises(NotDiagonalizableError, match="condition number"):
        AFAFilter(jordan, form="tensor")
    AFAFilter(jordan, form="isotropic")  # the isotropic and matrix forms need no eigenbasis
    unobs = lqgt.Plant(np.diag([0.9, 0.8]), np.ones((2, 1)), [[1.0, 0.0]], W=0.01 * np.eye(2), V=[[1.0]])
    with pytest.raises(NotDetectableError, match="observable"):
        AFAFilter(unobs)
    est = AFAFilter(plant)
    with pytest.raises(NonFiniteError, match="y"):
        est.run(np.full((5, 2), np.nan))
    with pytest.raises(ShapeError, match="y"):
        est.run(np.zeros((5, 3)))
    with pytest.raises(ConfigError, match="component"):
        est.attention_weights(np.zeros((5, 2)), component=7)


def test_filter_in_simulate_step_equals_run():
    plant, Q, R = lqgt.plants.two_mass()
    K, _, _ = lqgt.dlqr(plant.A, plant.B, Q, R)
    ests = {"kf": lqgt.KalmanFilter(plant)}
    for form in ("tensor", "isotropic", "matrix"):
        for timing in ("current", "predictor"):
            ests[f"{form}-{timing}"] = AFAFilter(plant, window=8, form=form, timing=timing)
    res = lqgt.simulate(plant, K, ests, Q=Q, R=R, horizon=60, batch=16, seed=2, outliers=(0.05, 10.0))
    for name, est in ests.items():
        assert math.isfinite(res.cost[name])
        if name == "kf":
            continue
        # replay the closed-loop measurements through run(): the same estimates
        xs = est.run(res.y[name], res.u[name])
        sim = res.x_hat[name]
        if est.form == "current":
            assert torch.allclose(xs, sim, atol=1e-10)
        else:
            assert torch.allclose(xs[:, :-1], sim[:, 1:], atol=1e-10)


def test_attention_weights_for_heatmap():
    import matplotlib

    matplotlib.use("Agg")
    from lqgt import plot
    plant = _rot_plant(W=0.01)
    _, y, u = _sequence(plant, 20, seed=8, B=1)
    for form in ("tensor", "isotropic"):
        est = AFAFilter(plant, window=6, form=form)
        a = est.attention_weights(y[0], u[0])
        assert a.shape == (20, 20)
        assert torch.allclose(a.sum(-1), torch.ones(20, dtype=F64), atol=1e-12)
        assert (a.triu(1) == 0).all() and (a.tril(-6) == 0).all()
        ax = plot.attention_heatmap(a, window=6)
        assert ax is not None
    a0 = AFAFilter(plant, window=6, form="tensor").attention_weights(y, u, component=0)
    assert a0.shape == (1, 20, 20)


# ----------------------------------------------------------------------------- contaminated noise
def test_outlier_noise_rate_scale_and_common_numbers():
    plant, Q, R = lqgt.plants.two_mass()
    K, _, _ = lqgt.dlqr(plant.A, plant.B, Q, R)
    ests = {"kf": lqgt.KalmanFilter(plant), "afa": AFAFilter(plant, window=4, form="isotropic")}
    kw = dict(Q=Q, R=R, horizon=200, batch=64, seed=11)
    clean = lqgt.simulate(plant, K, ests, **kw)
    dirty = lqgt.simulate(plant, K, ests, outliers=(0.1, 7.0), **kw)
    assert dirty.settings["outliers"] == (0.1, 7.0)
    C = torch.tensor(plant.C)
    v = {name: dirty.y[name] - dirty.x[name] @ C.T for name in ests}
    v0 = clean.y["kf"] - clean.x["kf"] @ C.T
    assert torch.equal(v["kf"], v["afa"]) or torch.allclose(v["kf"], v["afa"], atol=1e-12)  # same noise for all
    ratio = v["kf"] / v0  # the Gaussian stream is the same: each v[t] is 1x or 7x its clean value
    hit = (ratio - 7.0).abs() < 1e-9
    assert (((ratio - 1.0).abs() < 1e-9) | hit).all()
    assert (hit[..., 0] == hit[..., 1]).all()  # the whole measurement vector is scaled
    rate = hit[..., 0].double().mean().item()
    N = hit[..., 0].numel()
    assert abs(rate - 0.1) < 5 * math.sqrt(0.1 * 0.9 / N)
    # second-moment check: E[v v'] = V (1 - prob + prob scale²)
    cov = torch.einsum("btp,btq->pq", v["kf"], v["kf"]) / N
    target = plant.V * (0.9 + 0.1 * 49.0)
    assert np.abs(cov.numpy() - target).max() < 0.15 * target.max()
    with pytest.raises(ConfigError, match="prob"):
        lqgt.simulate(plant, K, ests, outliers=(1.5, 10.0), **kw)
    with pytest.raises(ConfigError, match="scale"):
        lqgt.simulate(plant, K, ests, outliers=(0.1, -1.0), **kw)


# ----------------------------------------------------------------------------- trainable estimator
@pytest.mark.parametrize("attention", ["isotropic", "tensor"])
@pytest.mark.parametrize("form", ["predictor", "current"])
def test_afa_estimator_protocol_equals_sequence_and_checkpoint(form, attention, tmp_path):
    from lqgt.estimators.afa import AFAEstimator

    torch.manual_seed(0)
    est = AFAEstimator(4, 1, 2, form=form, attention=attention, heads=2, window=5, dt=0.1)
    y, u = torch.randn(3, 12, 2, dtype=F64), torch.randn(3, 12, 1, dtype=F64)
    with torch.no_grad():
        seq = est(y, u)
        st, _ = est.init(3, device=torch.device("cpu"), dtype=F64)
        steps = []
        for t in range(12):
            uu = u[:, t] if form == "predictor" else (u[:, t - 1] if t else torch.zeros_like(u[:, 0]))
            st, x = est.step(st, y[:, t], uu)
            steps.append(x)
    assert torch.allclose(torch.stack(steps, 1), seq, atol=1e-10)
    assert est.predict_output(y, u).shape == (3, 12, 2)
    path = tmp_path / "afa.pt"
    est.save(path)
    back = lqgt.load_estimator(path)
    assert type(back) is AFAEstimator and back.config() == est.config()
    with torch.no_grad():
        assert torch.equal(back(y, u), seq)


def test_afa_estimator_trains_with_fit():
    from lqgt.estimators.afa import AFAEstimator
    from lqgt.learn.fit import fit

    plant = _rot_plant(W=0.01, V=0.1)
    data = lqgt.learn.rollouts(plant, None, horizon=16, batch=16, seed=0, kalman=False)
    est = AFAEstimator(2, 1, 2, window=8, mu=0.5, omega=0.1, learn_projections=False)
    mu0, om0 = float(est.layer.mu.detach()), float(est.layer.omega[0, 0].detach())
    log = fit(est, data, loss="output_prediction", steps=5, lr=0.05, batch=8, progress=False)
    assert np.isfinite(log.loss).all()
    assert float(est.layer.mu.detach()) != mu0 and float(est.layer.omega[0, 0].detach()) != om0
    assert torch.equal(est.layer.W_q.weight, torch.eye(2, dtype=F64))  # fixed projections stay fixed
    with pytest.raises(ConfigError, match="learn_projections"):
        AFAEstimator(4, 1, 2, learn_projections=False)

# ----------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_matches_cpu():
    """AFAFilter (all forms, float64) and the layer give the CPU numbers on CUDA."""
    plant = lqgt.plants.two_mass()[0]
    _, y, u = _sequence(plant, 40, seed=9, B=3)
    y[:, 20] += 3.0
    for form in ("tensor", "isotropic", "matrix"):
        est = AFAFilter(plant, window=8, form=form)
        cpu = est.run(torch.tensor(y), torch.tensor(u))
        gpu = est.run(torch.tensor(y, device="cuda"), torch.tensor(u, device="cuda")).cpu()
        assert torch.allclose(cpu, gpu, atol=1e-10), form
    layer = AdaptiveFilterAttention(16, 4, form="isotropic", dtype=F64)
    x = torch.randn(2, 33, 16, dtype=F64)
    assert torch.allclose(layer(x), layer.to("cuda")(x.to("cuda")).cpu(), atol=1e-10)


def test_layer_default_dtype_parameters():
    layer = AdaptiveFilterAttention(16, 2)  # no dtype: torch's default (float32)
    assert {p.dtype for p in layer.parameters()} == {torch.get_default_dtype()}
    x = torch.randn(1, 7, 16)
    assert layer(x, lead=1).dtype == torch.get_default_dtype()
