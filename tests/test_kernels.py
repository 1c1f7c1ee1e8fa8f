"""Tests of the fused kernels :mod:`lqgt.kernels`.

Oracles: the simulator's torch path (estimator ``step`` calls, :func:`lqgt.simulate` with
``backend="torch"``) given the same noise; the exact stationary cost :func:`lqgt.lqg_cost`;
sample moments of the noise (Philox stream) against the identity covariance.

CPU: the kernel runs through Triton's interpreter (``TRITON_INTERPRET=1``, set before
Triton is imported; skipped without Triton) and the torch reference of the same algorithm
runs everywhere. GPU tests are marked ``gpu``.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

import lqgt
from lqgt.kernels import philox_normals, reference_linear_loop
from lqgt.kernels.linear_loop import LinearLoop
from lqgt.simulate import _Noise
from lqgt._linalg import psd_sqrt

CUDA = torch.cuda.is_available()
gpu = pytest.mark.gpu


def _plant(name):
    if name == "rand16":  # n = 16, m = 3, p = 16 (the largest tiles)
        ex = lqgt.plants.random_systems(16, 3, 16, 1, seed=4)[0]
        p = ex.plant
        p = lqgt.Plant(p.A, p.B, p.C, W=p.W, V=p.V, D=0.1 * np.ones((16, 3)), m0=p.m0, P0=p.P0, dt=p.dt)
        return p, ex.Q, ex.R, None
    if name == "osc":
        ex = lqgt.plants.oscillator()
        plant = lqgt.Plant(ex.plant.A, ex.plant.B, ex.plant.C, W=ex.plant.W, V=ex.plant.V, m0=[1.0, -0.5],
                           P0=[[0.5, 0.1], [0.1, 0.3]], dt=ex.plant.dt)
        return plant, ex.Q, ex.R, None
    ex = lqgt.plants.two_mass()
    p = ex.plant
    if name == "two_mass_D":
        p = lqgt.Plant(p.A, p.B, p.C, W=p.W, V=p.V, D=[[0.5], [-0.3]], m0=[0.2, -0.1, 0.0, 0.3], P0=p.P0, dt=p.dt)
    N = np.array([[0.05], [-0.02], [0.01], [0.0]]) if name == "two_mass_N" else None
    return p, ex.Q, ex.R, N


CASES = [("osc", "predictor"), ("osc", "current"), ("two_mass_D", "predictor"), ("two_mass_N", "current")]


def _setup(name, form, dev, dt, batch, seed=3):
    plant, Q, R, N = _plant(name)
    d = lqgt.lqg(plant, Q, R, N)
    est = lqgt.KalmanFilter(plant, form=form) if form == "current" else lqgt.LinearObserver(plant, d.L, form=form)
    from lqgt.lqg import _cost_weights

    Qz = _cost_weights(plant, Q, R, N)[3]
    gain, model = est.linear_gain()
    loop = LinearLoop.build(plant, d.K, gain, form, model, psd_sqrt(plant.W), psd_sqrt(plant.V), Qz, dev, dt)
    return plant, Q, R, N, d, est, loop


def _torch_path(name, form, dt, batch, horizon, burn_in, seed=3):
    """simulate's torch path (generic step loop) and the noise it used."""
    plant, Q, R, N, d, est, loop = _setup(name, form, torch.device("cpu"), dt, batch)

    class Generic:  # hides linear_gain: estimator step calls
        def __init__(self, e):
            self._e, self.form, self.n = e, e.form, e.n

        def init(self, b, *, device, dtype):
            return self._e.init(b, device=device, dtype=dtype)

        def step(self, s, y, u):
            return self._e.step(s, y, u)

    res = lqgt.simulate(plant, d.K, {"g": Generic(est)}, Q=Q, R=R, N=N, horizon=horizon, batch=batch, seed=seed,
                        dtype=dt, burn_in=burn_in, chunk=horizon, backend="torch", progress=False)
    noise = _Noise(plant, batch, seed, torch.device("cpu"), dt)
    e = noise.draw(horizon)
    xi0 = torch.cat([noise.x0, loop.m0.expand(batch, -1)], dim=1).contiguous()
    return res, loop, e, xi0


def _check_equal(res, loop, cost, out, horizon, burn_in, dt):
    rtol, atol = (1e-12, 1e-12) if dt == torch.float64 else (1e-5, 1e-5)
    per = cost / (horizon - burn_in)
    ref = res.cost_per_trajectory["g"]
    assert torch.allclose(per, ref, rtol=rtol, atol=atol * float(ref.abs().max())), float((per - ref).abs().max())
    for key in ("x", "x_hat", "u", "y"):
        got = out[..., loop.slices[key]].transpose(0, 1)
        want = getattr(res, key)["g"]
        assert torch.allclose(got, want, rtol=rtol, atol=atol * max(1.0, float(want.abs().max()))), key


@pytest.mark.parametrize("name,form", CASES)
def test_reference_equals_torch_path(name, form):
    """The torch reference of the kernel algorithm equals simulate's step loop on the same noise."""
    horizon, burn_in, batch = 40, 7, 16
    res, loop, e, xi0 = _torch_path(name, form, torch.float64, batch, horizon, burn_in)
    cost, out, _ = reference_linear_loop(loop, xi0, e, lo=burn_in, store=True)
    _check_equal(res, loop, cost, out, horizon, burn_in, torch.float64)


def test_philox_reference_statistics():
    """The counter-based normals: mean 0, identity covariance, no correlation across steps/trajectories."""
    e = philox_normals(11, 2000, 0, 50, 6).double()  # (T, B, q)
    x = e.reshape(-1, 6)
    assert abs(float(x.mean())) < 4 / np.sqrt(x.numel())
    C = (x.T @ x) / x.shape[0]
    assert torch.allclose(C, torch.eye(6, dtype=C.dtype), atol=4 / np.sqrt(x.shape[0]))
    lag_t = (e[1:] * e[:-1]).mean()
    lag_b = (e[:, 1:] * e[:, :-1]).mean()
    assert abs(float(lag_t)) < 5 / np.sqrt(e[1:].numel()) and abs(float(lag_b)) < 5 / np.sqrt(e[:, 1:].numel())
    # chunking does not change the numbers; other seeds differ
    assert torch.equal(philox_normals(11, 10, 20, 5, 6), e[20:25, :10].float())
    assert torch.equal(philox_normals(11, 10, 0, 5, 6, b0=100), e[:5, 100:110].float())
    assert not torch.equal(philox_normals(12, 10, 0, 5, 6), e[:5, :10].float())


def test_backend_argument_and_fallback():
    plant, Q, R, N, d, est, loop = _setup("osc", "predictor", torch.device("cpu"), torch.float64, 8)
    with pytest.raises(lqgt.errors.ConfigError, match="backend"):
        lqgt.simulate(plant, d.K, {"k": est}, Q=Q, R=R, horizon=5, batch=4, backend="cuda-magic", progress=False)
    with pytest.warns(RuntimeWarning, match="torch path"):
        r1 = lqgt.simulate(plant, d.K, {"k": est}, Q=Q, R=R, horizon=5, batch=4, backend="triton", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r2 = lqgt.simulate(plant, d.K, {"k": est}, Q=Q, R=R, horizon=5, batch=4, backend="auto", progress=False)
    assert r1.cost == r2.cost


# ------------------------------------------------------------------ Triton interpreter (CPU)

def _interp_triton():
    if CUDA:
        pytest.skip("interpreter tests run on CPU only")
    os.environ["TRITON_INTERPRET"] = "1"
    triton = pytest.importorskip("triton")
    import lqgt.kernels.linear_loop as ll

    if ll._triton() is None:
        pytest.skip(f"triton {triton.__version__} kernels unavailable")
    return ll


@pytest.mark.parametrize("name,form", CASES)
@pytest.mark.parametrize("dt", [torch.float64, torch.float32])
def test_interpreter_kernel_equals_torch_path(name, form, dt):
    """The kernel (Triton interpreter) fed the torch path's noise equals the torch path."""
    ll = _interp_triton()
    horizon, burn_in, batch = 12, 3, 20
    res, loop, e, xi0 = _torch_path(name, form, dt, batch, horizon, burn_in)
    cost = torch.zeros(batch, dtype=dt)
    out = torch.empty(horizon, batch, loop.HT.shape[1], dtype=dt)
    xi = xi0.clone()
    ll.run_linear_loop(loop, xi, cost, t0=0, steps=5, lo=burn_in, noise=e[:5], out=out[:5], block=16)
    ll.run_linear_loop(loop, xi, cost, t0=5, steps=horizon - 5, lo=0, noise=e[5:], out=out[5:], block=16)
    _check_equal(res, loop, cost, out, horizon, burn_in, dt)


def test_interpreter_kernel_philox_equals_reference():
    """With its own noise the kernel draws exactly philox_normals (counter layout)."""
    ll = _interp_triton()
    plant, Q, R, N, d, est, loop = _setup("two_mass_D", "predictor", torch.device("cpu"), torch.float64, 8)
    batch, T, seed = 20, 6, 987654321
    xi0 = torch.randn(batch, loop.dims[0], dtype=torch.float64)
    cost, out, xi = torch.zeros(batch, dtype=torch.float64), torch.empty(T, batch, loop.dims[3], dtype=torch.float64), xi0.clone()
    ll.run_linear_loop(loop, xi, cost, t0=4, steps=T, lo=2, seed=seed, out=out, block=16)
    e = philox_normals(seed, batch, 4, T, loop.dims[1]).double()
    c_ref, o_ref, xi_ref = reference_linear_loop(loop, xi0, e, lo=2, store=True)
    assert torch.allclose(cost, c_ref, rtol=1e-5) and torch.allclose(out, o_ref, rtol=1e-5, atol=1e-5)
    assert torch.allclose(xi, xi_ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ GPU

@gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("name,form", CASES + [("rand16", "predictor")])
@pytest.mark.parametrize("dt", [torch.float64, torch.float32])
def test_gpu_kernel_equals_torch_path(name, form, dt):
    import lqgt.kernels.linear_loop as ll

    horizon, burn_in, batch = 60, 9, 300
    res, loop, e, xi0 = _torch_path(name, form, dt, batch, horizon, burn_in)
    dev = torch.device("cuda")
    loop_c = LinearLoop(**{k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in vars(loop).items()})
    cost = torch.zeros(batch, dtype=dt, device=dev)
    out = torch.empty(horizon, batch, loop.HT.shape[1], dtype=dt, device=dev)
    xi = xi0.to(dev).clone()
    ll.run_linear_loop(loop_c, xi, cost, t0=0, steps=horizon, lo=burn_in, noise=e.to(dev), out=out)
    _check_equal(res, loop, cost.cpu(), out.cpu(), horizon, burn_in, dt)


@gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("name,form", CASES)
@pytest.mark.parametrize("batch", [4096, 65536])
def test_gpu_mc_cost_matches_exact(name, form, batch):
    plant, Q, R, N, d, est, loop = _setup(name, form, torch.device("cpu"), torch.float64, batch)
    exact = lqgt.lqg_cost(plant, Q, R, d.K, est.gain, form=form, N=N)
    horizon, burn_in = 400, 200
    res = lqgt.simulate(plant, d.K, {"k": est}, Q=Q, R=R, N=N, horizon=horizon, batch=batch, seed=5,
                        device="cuda", store=False, burn_in=burn_in, progress=False, backend="triton")
    per = res.cost_per_trajectory["k"].double()
    z = (float(per.mean()) - exact) / (float(per.std()) / np.sqrt(batch))
    assert abs(z) < 3, (z, float(per.mean()), exact)


@gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_gpu_noise_statistics_and_crn():
    """Stored trajectories recover W, V and P0; estimators of one call share the noise; seeds reproduce."""
    plant, Q, R, N, d, est, loop = _setup("two_mass_D", "predictor", torch.device("cpu"), torch.float64, 1)
    batch, T = 20000, 30
    kw = dict(Q=Q, R=R, horizon=T, batch=batch, seed=9, device="cuda", progress=False, backend="triton")
    ests = {"a": est, "b": lqgt.LinearObserver(plant, d.L, form="predictor")}
    res = lqgt.simulate(plant, d.K, ests, **kw)
    assert torch.equal(res.x["a"], res.x["b"])
    res2 = lqgt.simulate(plant, d.K, {"a": est}, **kw)
    assert torch.equal(res.x["a"], res2.x["a"])
    x, u, y = (getattr(res, k)["a"].cpu().numpy() for k in ("x", "u", "y"))
    A, B, C, D = plant.A, plant.B, plant.C, plant.D
    w = x[:, 1:] - x[:, :-1] @ A.T - u[:, :-1] @ B.T
    v = y - x @ C.T - u @ D.T
    x0 = x[:, 0] - plant.m0
    for s, M in ((w.reshape(-1, plant.n), plant.W), (v.reshape(-1, plant.p), plant.V), (x0, plant.P0)):
        S = s.T @ s / s.shape[0]
        se = np.sqrt((np.diag(M)[:, None] * np.diag(M)[None, :] + M ** 2) / s.shape[0])
        assert np.all(np.abs(S - M) < 5 * se + 1e-12)
    # no correlation between consecutive steps or neighbouring trajectories
    ws = w / np.sqrt(np.diag(plant.W))
    for a, b in ((ws[:, 1:], ws[:, :-1]), (ws[1:], ws[:-1])):
        r = (a * b).mean(axis=(0, 1))
        assert np.all(np.abs(r) < 5 / np.sqrt(a.shape[0] * a.shape[1]))
