"""GPU tests of the simulator (skipped without CUDA; marked ``gpu``).

What is checked, and the tolerances (measured on an NVIDIA H200, torch 2.11+cu130):

* Monte Carlo cost on CUDA, float32 and float64, against the exact float64 CPU cost
  (:func:`lqgt.lqg_cost`): within ``Z_TOL = 3.5`` standard errors plus a float32 allowance
  of ``COST_RTOL_F32 = 1e-4`` relative. Measured: every run within 0.7 standard errors
  (the standard error at batch 2^16 is about 5e-4 relative); float32 adds no visible bias.
* Float32 vs float64 trajectories on CUDA with the *same* noise. With one seed,
  ``torch.randn`` on CUDA draws unrelated streams for float32 and float64, so the test
  draws the noise in float64 and rounds it to float32 (it wraps ``torch.randn`` for the
  duration of the test); the difference is then the float32 arithmetic alone. Error
  budget, relative to the largest magnitude of each signal over the run:
  ``TRAJ_RTOL_F32 = 1e-5`` for ``x, x_hat, u, y`` (measured at most 8.2e-7 over 2000
  steps of the two-mass LQG loop, spectral radius 0.945, for the fused, the generic and
  the time-varying Kalman loops), and ``COST_RTOL_F32 = 1e-4`` for the mean costs
  (measured at most 3.2e-7).
* Float64 on CUDA: fused vs generic path to 1e-10, the time-varying Kalman filter against
  filterpy to 1e-10 (skipped if filterpy is missing), common random numbers, and a batch
  of 10^6 trajectories with ``store=False`` whose float32 cost matches the exact cost.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lqgt

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.is_available() is False)"),
]

Z_TOL = 3.5
Z95 = 1.959963984540054
COST_RTOL_F32 = 1e-4
TRAJ_RTOL_F32 = 1e-5
TOL64 = 1e-10


class Generic:
    """Delegates the estimator protocol but hides ``linear_gain``: forces the generic loop."""

    def __init__(self, est):
        self._est, self.form, self.n = est, est.form, est.n

    def init(self, batch, *, device, dtype):
        return self._est.init(batch, device=device, dtype=dtype)

    def step(self, state, y, u):
        return self._est.step(state, y, u)


def _np(t):
    return t.detach().cpu().double().numpy()


def _setup():
    plant, Q, R = lqgt.plants.two_mass()
    return plant, Q, R, lqgt.lqg(plant, Q, R)


def _burn_in(plant, K, gain, form):
    from lqgt.closed_loop import closed_loop

    rho = float(max(abs(np.linalg.eigvals(closed_loop(plant, K, gain, form).F))))
    return int(math.ceil(math.log(1e-8) / (2 * math.log(rho))))


def _check_cost(res, name, exact, extra_rtol=0.0):
    mc = res.cost[name]
    lo, hi = res.cost_ci[name]
    se = (hi - lo) / (2 * Z95)
    assert (hi - lo) / 2 < 0.01 * exact, "interval too wide to test anything"
    print(f"{name} {res.settings['dtype']}: MC {mc:.7g} vs exact {exact:.7g}: {(mc - exact) / se:+.2f} se, "
          f"relative {(mc - exact) / exact:+.2e}")
    assert abs(mc - exact) <= Z_TOL * se + extra_rtol * exact, (
        f"{name}: MC {mc:.7g} ± {se:.2g} vs exact {exact:.7g} ({(mc - exact) / se:+.2f} se)")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("form", ["current", "predictor"])
def test_gpu_cost_matches_exact(form, dtype):
    plant, Q, R, d = _setup()
    gain, exact = (d.Lf, d.cost) if form == "current" else (d.L, d.cost_predictor)
    burn = _burn_in(plant, d.K, gain, form)
    res = lqgt.simulate(plant, d.K, {"kf": lqgt.KalmanFilter(plant, form=form)}, Q=Q, R=R, horizon=burn + 1000,
                        batch=1 << 16, seed=0, burn_in=burn, device="cuda", dtype=dtype, store=False)
    assert res.cost_per_trajectory["kf"].device.type == "cuda"
    assert res.cost_per_trajectory["kf"].dtype == dtype
    _check_cost(res, "kf", exact, COST_RTOL_F32 if dtype == torch.float32 else 0.0)


def test_gpu_million_trajectories_without_storing():
    plant, Q, R, d = _setup()
    burn = _burn_in(plant, d.K, d.Lf, "current")
    res = lqgt.simulate(plant, d.K, {"kf": lqgt.KalmanFilter(plant, form="current")}, Q=Q, R=R,
                        horizon=burn + 200, batch=1_000_000, seed=1, burn_in=burn, device="cuda",
                        dtype=torch.float32, store=False)
    assert res.x is None
    _check_cost(res, "kf", d.cost, COST_RTOL_F32)


@pytest.fixture
def float64_noise(monkeypatch):
    """Make ``torch.randn`` draw in float64 and round to the requested dtype, so float32 and
    float64 runs with one seed see the same noise (up to float32 rounding)."""
    orig = torch.randn

    def randn(*size, dtype=None, **kw):
        return orig(*size, dtype=torch.float64, **kw).to(dtype or torch.get_default_dtype())

    monkeypatch.setattr(torch, "randn", randn)


def test_gpu_float32_vs_float64_same_noise(float64_noise):
    plant, Q, R, d = _setup()

    def run(dtype):
        ests = {"kf": lqgt.KalmanFilter(plant, form="current"),
                "gen": Generic(lqgt.KalmanFilter(plant, form="predictor")),
                "tv": lqgt.KalmanFilter(plant, form="current", steady=False)}
        return lqgt.simulate(plant, d.K, ests, Q=Q, R=R, horizon=2000, batch=256, seed=3, burn_in=200,
                             device="cuda", dtype=dtype)

    r32, r64 = run(torch.float32), run(torch.float64)
    assert r32.x["kf"].dtype == torch.float32 and r64.x["kf"].dtype == torch.float64
    # the noise really is shared: x0 agrees to float32 rounding
    np.testing.assert_allclose(_np(r32.x["kf"][:, 0]), _np(r64.x["kf"][:, 0]), rtol=1e-6, atol=1e-7)
    worst = {}
    for name in ("kf", "gen", "tv"):
        for key in ("x", "x_hat", "u", "y"):
            a, b = _np(getattr(r32, key)[name]), _np(getattr(r64, key)[name])
            rel = float(np.abs(a - b).max() / np.abs(b).max())
            worst[name, key] = rel
            assert rel <= TRAJ_RTOL_F32, f"{name}.{key}: float32 relative error {rel:.3g}"
        worst[name, "cost"] = abs(r32.cost[name] - r64.cost[name]) / r64.cost[name]
        assert r32.cost[name] == pytest.approx(r64.cost[name], rel=COST_RTOL_F32)
    print("float32 vs float64 relative errors:", {f"{k[0]}.{k[1]}": f"{v:.2e}" for k, v in worst.items()})


def test_gpu_float64_fused_equals_generic_and_crn():
    plant, Q, R, d = _setup()
    for form in ("current", "predictor"):
        ests = {"fused": lqgt.KalmanFilter(plant, form=form), "generic": Generic(lqgt.KalmanFilter(plant, form=form)),
                "twin": lqgt.KalmanFilter(plant, form=form), "open": lqgt.OpenLoopObserver(plant)}
        res = lqgt.simulate(plant, d.K, ests, Q=Q, R=R, horizon=300, batch=128, seed=4, device="cuda")
        for key in ("x", "x_hat", "u", "y"):
            a, b = getattr(res, key)["fused"], getattr(res, key)["generic"]
            assert a.device.type == "cuda"
            assert float((a - b).abs().max()) <= TOL64 * max(1.0, float(a.abs().max())), key
            assert torch.equal(a, getattr(res, key)["twin"]), key
        assert torch.equal(res.x["open"][:, 0], res.x["fused"][:, 0])
        x, u = _np(res.x["open"]), _np(res.u["open"])
        xf, uf = _np(res.x["fused"]), _np(res.u["fused"])
        w_open = x[:, 1:] - x[:, :-1] @ plant.A.T - u[:, :-1] @ plant.B.T
        w_kf = xf[:, 1:] - xf[:, :-1] @ plant.A.T - uf[:, :-1] @ plant.B.T
        np.testing.assert_allclose(w_open, w_kf, atol=1e-12)


@pytest.mark.parametrize("form", ["current", "predictor"])
def test_gpu_time_varying_kalman_matches_filterpy(form):
    filterpy = pytest.importorskip("filterpy.kalman")
    p, Q, R = lqgt.plants.two_mass()
    plant = lqgt.Plant(p.A, p.B, p.C, W=p.W, V=p.V, m0=[0.2, -0.1, 0.0, 0.3], P0=0.5 * np.eye(4), dt=p.dt)
    K = lqgt.dlqr(plant.A, plant.B, Q, R)[0]
    res = lqgt.simulate(plant, K, {"tv": lqgt.KalmanFilter(plant, form=form, steady=False)}, Q=Q, R=R,
                        horizon=150, batch=1, seed=5, device="cuda")
    y, u, xh = (_np(getattr(res, k)["tv"])[0] for k in ("y", "u", "x_hat"))
    kf = filterpy.KalmanFilter(dim_x=4, dim_z=2, dim_u=1)
    kf.F, kf.B, kf.H, kf.Q, kf.R = plant.A, plant.B, plant.C, plant.W, plant.V
    kf.x, kf.P = plant.m0.reshape(4, 1).copy(), plant.P0.copy()
    ref = np.empty_like(xh)
    for t in range(y.shape[0]):
        if form == "predictor":
            ref[t] = kf.x[:, 0]
            kf.update(y[t].reshape(2, 1))
            kf.predict(u=u[t].reshape(1, 1))
        else:
            if t > 0:
                kf.predict(u=u[t - 1].reshape(1, 1))
            kf.update(y[t].reshape(2, 1))
            ref[t] = kf.x[:, 0]
    assert np.abs(xh - ref).max() <= TOL64 * max(1.0, np.abs(ref).max())
