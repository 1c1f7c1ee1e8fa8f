"""Tests of the linear estimators (:class:`lqgt.KalmanFilter`, :class:`lqgt.LinearObserver`,
:class:`lqgt.OpenLoopObserver`) and their timing in the closed loop.

Oracles: filterpy's ``KalmanFilter`` (predict/update, Joseph-form update), an independent
textbook loop in numpy (standard ``P+ = (I - K C) P`` update, explicit inverse), and the
steady-state solution of :func:`lqgt.dlqe` (whose own correctness is tested against
python-control/scipy elsewhere). Float64 throughout; agreement to 1e-10.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import torch
from filterpy.kalman import KalmanFilter as FilterpyKF

import lqgt
from lqgt.errors import ConfigError, ShapeError

F64 = torch.float64
TOL = 1e-10


def _np(t):
    return t.detach().cpu().numpy()


@lru_cache(maxsize=None)
def two_mass_D():
    """The two-mass plant with feedthrough, non-zero m0 and a non-identity P0."""
    p, Q, R = lqgt.plants.two_mass()
    plant = lqgt.Plant(p.A, p.B, p.C, W=p.W, V=p.V, D=[[0.5], [-0.3]], m0=[0.2, -0.1, 0.0, 0.3],
                       P0=np.diag([0.5, 0.2, 1.0, 0.3]), dt=p.dt)
    return plant, Q, R


@lru_cache(maxsize=None)
def two_mass_m0():
    """The two-mass plant (no feedthrough) with non-zero m0 and a correlated P0."""
    p, Q, R = lqgt.plants.two_mass()
    P0 = 0.2 * np.eye(4) + 0.05 * np.ones((4, 4))
    plant = lqgt.Plant(p.A, p.B, p.C, W=p.W, V=p.V, m0=[0.2, -0.1, 0.0, 0.3], P0=P0, dt=p.dt)
    return plant, Q, R


@lru_cache(maxsize=None)
def random_plant():
    """A random 3-state, 2-input, 2-output plant (open-loop unstable) with full-rank noises."""
    rng = np.random.default_rng(1234)
    n, m, p = 3, 2, 2
    A = rng.normal(size=(n, n)) / np.sqrt(n) * 1.1
    B, C = rng.normal(size=(n, m)), rng.normal(size=(p, n))
    Wh, Vh = rng.normal(size=(n, n)) * 0.3, rng.normal(size=(p, p)) * 0.3
    plant = lqgt.Plant(A, B, C, W=Wh @ Wh.T + 0.01 * np.eye(n), V=Vh @ Vh.T + 0.05 * np.eye(p),
                       D=rng.normal(size=(p, m)) * 0.2, m0=rng.normal(size=n), P0=2.0 * np.eye(n))
    return plant, np.eye(n), np.eye(m)


PLANTS = {"two_mass_D": two_mass_D, "two_mass_m0": two_mass_m0, "random": random_plant}
#: (plant, form) pairs: the current form needs D = 0
CASES = [("two_mass_D", "predictor"), ("random", "predictor"), ("two_mass_m0", "predictor"),
         ("two_mass_m0", "current")]


def _closed_loop_data(plant_name, form, horizon=150, batch=2, seed=0):
    """Simulate the time-varying filter in the LQG loop; return plant, y, u, x_hat (numpy)."""
    plant, Q, R = PLANTS[plant_name]()
    K = lqgt.dlqr(plant.A, plant.B, Q, R)[0]
    est = lqgt.KalmanFilter(plant, form=form, steady=False)
    res = lqgt.simulate(plant, K, {"tv": est}, Q=Q, R=R, horizon=horizon, batch=batch, seed=seed)
    return plant, _np(res.y["tv"]), _np(res.u["tv"]), _np(res.x_hat["tv"])


def filterpy_refilter(plant, y, u, form):
    """Re-filter one trajectory ``y`` (T, p), ``u`` (T, m) with filterpy; return x_hat (T, n)
    in the simulator's timing (predictor: prior before y[t]; current: posterior after y[t])."""
    n, m, p = plant.n, plant.m, plant.p
    kf = FilterpyKF(dim_x=n, dim_z=p, dim_u=m)
    kf.F, kf.B, kf.H = plant.A.copy(), plant.B.copy(), plant.C.copy()
    kf.Q, kf.R = plant.W.copy(), plant.V.copy()
    kf.x, kf.P = plant.m0.reshape(n, 1).copy(), plant.P0.copy()
    out = np.empty((y.shape[0], n))
    for t in range(y.shape[0]):
        if form == "predictor":
            out[t] = kf.x[:, 0]
            kf.update((y[t] - plant.D @ u[t]).reshape(p, 1))  # filterpy has no D: subtract it
            kf.predict(u=u[t].reshape(m, 1))
        else:
            if t > 0:
                kf.predict(u=u[t - 1].reshape(m, 1))
            kf.update(y[t].reshape(p, 1))
            out[t] = kf.x[:, 0]
    return out


def textbook_refilter(plant, y, u, form):
    """The same filter written out in numpy, with the standard (non-Joseph) covariance update."""
    A, B, C, D, W, V = plant.A, plant.B, plant.C, plant.D, plant.W, plant.V
    x, P = plant.m0.copy(), plant.P0.copy()
    out = np.empty((y.shape[0], plant.n))
    for t in range(y.shape[0]):
        if form == "current" and t > 0:
            x = A @ x + B @ u[t - 1]
            P = A @ P @ A.T + W
        if form == "predictor":
            out[t] = x
        Kg = P @ C.T @ np.linalg.inv(C @ P @ C.T + V)
        x = x + Kg @ (y[t] - C @ x - D @ u[t])
        P = (np.eye(plant.n) - Kg @ C) @ P
        if form == "current":
            out[t] = x
        else:
            x = A @ x + B @ u[t]
            P = A @ P @ A.T + W
    return out


def _assert_close(a, b, what):
    scale = max(1.0, float(np.abs(b).max()))
    err = float(np.abs(a - b).max())
    assert err <= TOL * scale, f"{what}: max error {err:.3g} (scale {scale:.3g})"


# --------------------------------------------------------------------------- time-varying filter


@pytest.mark.parametrize("plant_name,form", CASES)
def test_time_varying_matches_filterpy(plant_name, form):
    plant, y, u, xh = _closed_loop_data(plant_name, form)
    for b in range(y.shape[0]):
        ref = filterpy_refilter(plant, y[b], u[b], form)
        _assert_close(xh[b], ref, f"trajectory {b} vs filterpy")
    # not vacuous: the estimate moved, and a steady filter on the same data differs early on
    assert np.abs(xh).max() > 0.05


@pytest.mark.parametrize("plant_name,form", CASES)
def test_time_varying_matches_textbook_loop(plant_name, form):
    plant, y, u, xh = _closed_loop_data(plant_name, form, horizon=80, batch=1, seed=3)
    _assert_close(xh[0], textbook_refilter(plant, y[0], u[0], form), "vs textbook loop")


def _filterpy_steady(plant, steps=600):
    """filterpy's prior covariance and filter gain after ``steps`` predict/update cycles."""
    n, m, p = plant.n, plant.m, plant.p
    kf = FilterpyKF(dim_x=n, dim_z=p, dim_u=m)
    kf.F, kf.B, kf.H, kf.Q, kf.R = plant.A, plant.B, plant.C, plant.W, plant.V
    kf.P = plant.P0.copy()
    for _ in range(steps):
        kf.update(np.zeros((p, 1)))
        kf.predict()
    return kf.P, kf.K


@pytest.mark.parametrize("plant_name", ["two_mass_m0", "random"])
def test_filterpy_converges_to_dlqe_and_kalman_attributes(plant_name):
    plant, _, _ = PLANTS[plant_name]()
    kf = lqgt.KalmanFilter(plant, form="predictor")
    P_fp, Lf_fp = _filterpy_steady(plant)
    np.testing.assert_allclose(kf.P, P_fp, rtol=1e-8, atol=1e-12 * np.abs(P_fp).max())
    np.testing.assert_allclose(kf.Lf, Lf_fp, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(kf.L, plant.A @ Lf_fp, rtol=1e-8, atol=1e-10)
    # the gains the estimator uses, by form
    assert np.array_equal(lqgt.KalmanFilter(plant, form="predictor").linear_gain()[0], kf.L)
    if not plant.has_feedthrough:
        assert np.array_equal(lqgt.KalmanFilter(plant, form="current").linear_gain()[0], kf.Lf)
    assert lqgt.KalmanFilter(plant, form="predictor", steady=False).linear_gain() is None


@pytest.mark.parametrize("form", ["predictor", "current"])
def test_time_varying_converges_to_steady(form):
    """Same noise, time-varying vs steady filter: different at first, identical later."""
    plant, Q, R = two_mass_m0()
    K = lqgt.dlqr(plant.A, plant.B, Q, R)[0]
    ests = {"tv": lqgt.KalmanFilter(plant, form=form, steady=False), "ss": lqgt.KalmanFilter(plant, form=form)}
    res = lqgt.simulate(plant, K, ests, Q=Q, R=R, horizon=600, batch=4, seed=1)
    d_hat = (res.x_hat["tv"] - res.x_hat["ss"]).abs().amax(dim=(0, 2))
    d_x = (res.x["tv"] - res.x["ss"]).abs().amax(dim=(0, 2))
    scale = float(res.x_hat["ss"].abs().max())
    assert float(d_hat[:5].max()) > 1e-2 * scale  # P0 ≠ P∞: the gains differ at first
    assert float(d_hat[-50:].max()) < 1e-9 * scale
    assert float(d_x[-50:].max()) < 1e-9 * scale


@pytest.mark.parametrize("form", ["predictor", "current"])
def test_time_varying_started_at_steady_covariance_is_steady(form):
    """With P0 = P∞ (the steady prior), the time-varying filter IS the steady one from t = 0."""
    p, Q, R = two_mass_m0()
    P_inf = lqgt.KalmanFilter(p).P
    plant = lqgt.Plant(p.A, p.B, p.C, W=p.W, V=p.V, m0=p.m0, P0=P_inf, dt=p.dt)
    K = lqgt.dlqr(plant.A, plant.B, Q, R)[0]
    ests = {"tv": lqgt.KalmanFilter(plant, form=form, steady=False), "ss": lqgt.KalmanFilter(plant, form=form)}
    res = lqgt.simulate(plant, K, ests, Q=Q, R=R, horizon=60, batch=3, seed=2)
    for key in ("x", "x_hat", "u", "y"):
        _assert_close(_np(getattr(res, key)["tv"]), _np(getattr(res, key)["ss"]), key)


# --------------------------------------------------------------------------- the step protocol directly


@pytest.mark.parametrize("steady", [True, False])
@pytest.mark.parametrize("form", ["predictor", "current"])
def test_step_protocol_by_hand(form, steady):
    """Drive ``init``/``step`` directly with arbitrary y, u (no simulator) and compare with numpy."""
    plant, _, _ = two_mass_m0()
    kf = lqgt.KalmanFilter(plant, form=form, steady=steady)
    assert isinstance(kf, lqgt.Estimator) and kf.n == plant.n and kf.form == form
    rng = np.random.default_rng(0)
    Bsz, T = 3, 12
    y = rng.normal(size=(T, Bsz, plant.p))
    u = rng.normal(size=(T, Bsz, plant.m))  # u[t]: the input applied at step t
    state, xh = kf.init(Bsz, device=torch.device("cpu"), dtype=F64)
    assert xh.shape == (Bsz, plant.n) and xh.dtype == F64
    np.testing.assert_array_equal(_np(xh), np.broadcast_to(plant.m0, (Bsz, plant.n)))
    A, B, C, W, V = plant.A, plant.B, plant.C, plant.W, plant.V
    x = np.broadcast_to(plant.m0, (Bsz, plant.n)).copy()
    P = plant.P0.copy()
    for t in range(T):
        if form == "predictor":
            state, xh = kf.step(state, torch.tensor(y[t]), torch.tensor(u[t]))
        else:
            u_prev = np.zeros((Bsz, plant.m)) if t == 0 else u[t - 1]
            state, xh = kf.step(state, torch.tensor(y[t]), torch.tensor(u_prev))
            if t > 0:
                x = x @ A.T + u_prev @ B.T
                P = A @ P @ A.T + W
        if steady:
            Lf = kf.Lf
        else:
            Lf = P @ C.T @ np.linalg.inv(C @ P @ C.T + V)
            P = (np.eye(plant.n) - Lf @ C) @ P
        x = x + (y[t] - x @ C.T) @ Lf.T
        if form == "predictor":
            x = x @ A.T + u[t] @ B.T
            P = A @ P @ A.T + W
        _assert_close(_np(xh), x, f"step {t}")


def test_float32_step_keeps_dtype():
    plant, _, _ = two_mass_m0()
    for steady in (True, False):
        kf = lqgt.KalmanFilter(plant, form="predictor", steady=steady)
        state, xh = kf.init(2, device=torch.device("cpu"), dtype=torch.float32)
        state, xh = kf.step(state, torch.ones(2, plant.p), torch.ones(2, plant.m))
        assert xh.dtype == torch.float32 and xh.shape == (2, plant.n)


def test_open_loop_observer_ignores_measurements():
    plant, _, _ = two_mass_m0()
    obs = lqgt.OpenLoopObserver(plant)
    assert obs.form == "predictor"
    s1, _ = obs.init(2, device=torch.device("cpu"), dtype=F64)
    s2, _ = obs.init(2, device=torch.device("cpu"), dtype=F64)
    u = torch.ones(2, plant.m, dtype=F64)
    for _ in range(3):
        s1, x1 = obs.step(s1, torch.zeros(2, plant.p, dtype=F64), u)
        s2, x2 = obs.step(s2, 100.0 * torch.ones(2, plant.p, dtype=F64), u)
    assert torch.equal(x1, x2)
    expect = plant.m0
    for _ in range(3):
        expect = plant.A @ expect + plant.B @ np.ones(plant.m)
    np.testing.assert_allclose(_np(x1[0]), expect, atol=1e-13)


def test_estimator_construction_errors():
    plant_D, _, _ = two_mass_D()
    plant, _, _ = two_mass_m0()
    with pytest.raises(ShapeError, match="D"):
        lqgt.KalmanFilter(plant_D, form="current")
    with pytest.raises(ShapeError, match="D"):
        lqgt.LinearObserver(plant_D, np.zeros((4, 2)), form="current")
    with pytest.raises(ShapeError, match=r"gain.*\(4, 3\)|\(4, 2\)"):
        lqgt.LinearObserver(plant, np.zeros((4, 3)))
    with pytest.raises(ConfigError, match="form"):
        lqgt.KalmanFilter(plant, form="smoother")
    with pytest.raises(ConfigError, match="form"):
        lqgt.LinearObserver(plant, np.zeros((4, 2)), form="filter")
