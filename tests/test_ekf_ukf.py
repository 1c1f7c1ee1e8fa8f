"""Batched EKF / UKF: agreement with filterpy on single trajectories, batching, forms, errors."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from _helpers_nonlinear import CPU, F64, np_f, np_h, random_signals, run_estimator

import lqgt
from lqgt import nonlinear_plants as nlp
from lqgt.errors import ConfigError
from lqgt.estimators.ekf import ExtendedKalmanFilter, as_nonlinear
from lqgt.estimators.ukf import UnscentedKalmanFilter, merwe_weights
from lqgt.nonlinear import FilterDivergenceError, NonlinearPlant

filterpy = pytest.importorskip("filterpy.kalman")

T = 150


def _data(plant, T, *, batch=1, seed=0, u_std=0.5):
    """A trajectory driven by random inputs: (y (B, T, p), u (B, T, m))."""
    gen = torch.Generator().manual_seed(seed + 100)
    U = u_std * torch.randn(batch, T, plant.m, generator=gen, dtype=F64)
    tr = plant.sample(T - 1, batch=batch, u=U[:, : T - 1], seed=seed)
    return tr.y, U


def _np(plant):
    def F(x, u):  # an independent path: torch.func.jacrev of one trajectory
        ut = torch.tensor(np.atleast_1d(u))[None]
        return torch.func.jacrev(lambda z: plant.f(z[None], ut)[0])(torch.tensor(x)).numpy()

    def H(x):
        return torch.func.jacrev(lambda z: plant.h(z[None])[0])(torch.tensor(x)).numpy()

    return partial(np_f, plant), partial(np_h, plant), F, H


def filterpy_ekf(plant, y, u):
    """filterpy's EKF (its update is the Joseph form) with a nonlinear predict_x, current form."""
    f, h, F, H = _np(plant)

    class EKF(filterpy.ExtendedKalmanFilter):
        def predict_x(self, u=0):
            self.x = f(self.x, u)

    ekf = EKF(plant.n, plant.p, plant.m)
    ekf.x, ekf.P, ekf.Q, ekf.R = plant.m0.copy(), plant.P0.copy(), plant.W.copy(), plant.V.copy()
    xs, Ps = [], []
    for t in range(y.shape[0]):
        if t > 0:
            ekf.F = F(ekf.x, u[t - 1])  # Jacobian at the posterior, before predict_x moves x
            ekf.predict(u=u[t - 1])
        ekf.update(y[t], H, h)
        xs.append(ekf.x.copy())
        Ps.append(ekf.P.copy())
    return np.array(xs), np.array(Ps)


def filterpy_ukf(plant, y, u, alpha, beta, kappa):
    """filterpy's UKF with Merwe scaled sigma points, current form."""
    f, h, _, _ = _np(plant)
    pts = filterpy.MerweScaledSigmaPoints(plant.n, alpha=alpha, beta=beta, kappa=kappa)
    ukf = filterpy.UnscentedKalmanFilter(plant.n, plant.p, plant.dt, hx=h, fx=lambda x, dt, u: f(x, u), points=pts)
    ukf.x, ukf.P, ukf.Q, ukf.R = plant.m0.copy(), plant.P0.copy(), plant.W.copy(), plant.V.copy()
    ukf.sigmas_f = pts.sigma_points(ukf.x, ukf.P)  # the first update has no predict before it
    xs, Ps = [], []
    for t in range(y.shape[0]):
        if t > 0:
            ukf.predict(u=u[t - 1])
        ukf.update(y[t])
        xs.append(ukf.x.copy())
        Ps.append(ukf.P.copy())
    return np.array(xs), np.array(Ps)


@pytest.mark.parametrize("name", ["van_der_pol", "cart_pole_nonlinear", "pendulum"])
def test_ekf_matches_filterpy(name):
    plant = nlp.get(name).plant
    y, u = _data(plant, T, seed=1)
    ref_x, ref_P = filterpy_ekf(plant, y[0].numpy(), u[0].numpy())
    x, st = run_estimator(ExtendedKalmanFilter(plant), y, u)
    scale = max(1.0, np.abs(ref_x).max())
    assert np.abs(x[0].numpy() - ref_x).max() <= 1e-8 * scale
    assert np.abs(st[1][0].numpy() - ref_P[-1]).max() <= 1e-8 * max(1.0, np.abs(ref_P[-1]).max())


@pytest.mark.parametrize("name", ["van_der_pol", "cart_pole_nonlinear"])
@pytest.mark.parametrize("alpha,beta,kappa", [(1.0, 2.0, 0.0), (0.3, 2.0, 1.0), (1e-3, 2.0, 0.0)])
def test_ukf_matches_filterpy(name, alpha, beta, kappa):
    plant = nlp.get(name).plant
    y, u = _data(plant, T, seed=2)
    ref_x, ref_P = filterpy_ukf(plant, y[0].numpy(), u[0].numpy(), alpha, beta, kappa)
    x, st = run_estimator(UnscentedKalmanFilter(plant, alpha=alpha, beta=beta, kappa=kappa), y, u)
    assert np.abs(x[0].numpy() - ref_x).max() <= 1e-8 * max(1.0, np.abs(ref_x).max())
    assert np.abs(st[1][0].numpy() - ref_P[-1]).max() <= 1e-8 * max(1.0, np.abs(ref_P[-1]).max())


def test_merwe_weights_match_filterpy():
    for n, a, b, k in [(2, 1.0, 2.0, 0.0), (4, 0.1, 2.0, -1.0), (3, 1e-3, 0.0, 3.0)]:
        pts = filterpy.MerweScaledSigmaPoints(n, alpha=a, beta=b, kappa=k)
        Wm, Wc, _ = merwe_weights(n, a, b, k)
        np.testing.assert_allclose(Wm, pts.Wm, rtol=1e-15)
        np.testing.assert_allclose(Wc, pts.Wc, rtol=1e-15)
    plant = nlp.van_der_pol().plant
    ukf = UnscentedKalmanFilter(plant, alpha=0.5)
    P = np.array([[0.3, 0.1], [0.1, 0.2]])
    sig = ukf.sigma_points(torch.tensor([[1.0, -2.0]]), torch.tensor(P)[None])[0].numpy()
    ref = filterpy.MerweScaledSigmaPoints(2, alpha=0.5, beta=2.0, kappa=0.0).sigma_points(np.array([1.0, -2.0]), P)
    np.testing.assert_allclose(sig, ref, rtol=0, atol=1e-14)


@pytest.mark.parametrize("cls", [ExtendedKalmanFilter, UnscentedKalmanFilter])
def test_batch_equals_single_trajectories(cls):
    plant = nlp.duffing().plant
    y, u = _data(plant, 60, batch=3, seed=4)
    xb, _ = run_estimator(cls(plant), y, u)
    for b in range(3):
        xs, _ = run_estimator(cls(plant), y[b:b + 1], u[b:b + 1])
        torch.testing.assert_close(xb[b:b + 1], xs, rtol=0, atol=1e-12)


def test_ekf_jacobian_methods_agree():
    plant = nlp.cart_pole_nonlinear().plant
    y, u = _data(plant, 40, batch=2, seed=5)
    xa, _ = run_estimator(ExtendedKalmanFilter(plant), y, u)
    xv, _ = run_estimator(ExtendedKalmanFilter(plant, jacobian="vmap"), y, u)
    torch.testing.assert_close(xa, xv, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cls", [ExtendedKalmanFilter, UnscentedKalmanFilter])
def test_predictor_form_is_the_prediction_of_the_current_form(cls):
    """x̂[t+1|t] (predictor form, fed u[t]) = f(x̂[t|t], u[t]) for the EKF; the UKF predicts
    the sigma-point mean instead, so only closeness is asserted for it."""
    plant = nlp.van_der_pol().plant
    y, u = _data(plant, 50, batch=2, seed=6)
    cur, _ = run_estimator(cls(plant, "current"), y, u)
    pred, _ = run_estimator(cls(plant, "predictor"), y, u)
    fx = plant.f(cur.reshape(-1, 2), u.reshape(-1, 1)).reshape(cur.shape)
    tol = 1e-12 if cls is ExtendedKalmanFilter else 5e-2
    torch.testing.assert_close(pred, fx, rtol=0, atol=tol)


@pytest.mark.parametrize("cls", [ExtendedKalmanFilter, UnscentedKalmanFilter])
def test_linear_plant_gives_the_kalman_filter(cls):
    """On a linear plant both filters are the time-varying Kalman filter (UKF: exact for linear maps)."""
    plant = lqgt.plants.two_mass().plant
    y, u = random_signals(plant, 4, 80, seed=0)
    for form in ("current", "predictor"):
        ref, _ = run_estimator(lqgt.KalmanFilter(plant, form, steady=False), y, u)
        got, _ = run_estimator(cls(plant, form), y, u)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)


def test_float32_runs_close_to_float64():
    plant = nlp.van_der_pol().plant
    y, u = _data(plant, 60, batch=4, seed=7)
    for cls in (ExtendedKalmanFilter, UnscentedKalmanFilter):
        x64, _ = run_estimator(cls(plant), y, u)
        x32, _ = run_estimator(cls(plant), y.float(), u.float())
        assert x32.dtype == torch.float32
        assert float((x32.double() - x64).abs().max()) < 1e-3


def test_singular_prior_covariance_is_handled_by_the_ukf():
    plant = nlp.van_der_pol().plant.with_initial(P0=np.zeros((2, 2)))
    y, u = _data(plant, 10, seed=8)
    x, _ = run_estimator(UnscentedKalmanFilter(plant), y, u)
    assert torch.isfinite(x).all()


def _sqrt_plant():
    """A plant whose measurement has an infinite slope at the prior mean 0."""
    return NonlinearPlant(lambda x, u: 0.9 * x + u, lambda x: x.abs().sqrt(), W=[[0.1]], V=[[0.1]],
                          n=1, m=1, p=1, m0=[0.0], P0=[[1.0]])


def test_nan_covariance_raises_naming_the_step():
    plant = _sqrt_plant()
    ekf = ExtendedKalmanFilter(plant)
    st, _ = ekf.init(3, device=CPU, dtype=F64)
    with pytest.raises(FilterDivergenceError, match="at step 0 in 3 of 3 trajectories"):
        ekf.step(st, torch.ones(3, 1, dtype=F64), torch.zeros(3, 1, dtype=F64))


def test_diverging_plant_does_not_raise():
    """Non-finite measurements (the plant blew up) are the simulator's business: no error."""
    plant = nlp.van_der_pol().plant
    for cls in (ExtendedKalmanFilter, UnscentedKalmanFilter):
        est = cls(plant)
        st, _ = est.init(2, device=CPU, dtype=F64)
        y = torch.tensor([[0.5], [float("inf")]], dtype=F64)
        st, xh = est.step(st, y, torch.zeros(2, 1, dtype=F64))
        st, xh = est.step(st, y, torch.zeros(2, 1, dtype=F64))
        assert torch.isfinite(xh[0]).all() and not torch.isfinite(xh[1]).all()


def test_bad_arguments():
    plant = nlp.van_der_pol().plant
    with pytest.raises(ConfigError, match="form"):
        ExtendedKalmanFilter(plant, "smoother")
    with pytest.raises(ConfigError, match="alpha"):
        UnscentedKalmanFilter(plant, alpha=0.0)
    with pytest.raises(ConfigError, match="n \\+ lambda"):
        UnscentedKalmanFilter(plant, kappa=-2.0)
    with pytest.raises(ConfigError, match="jacobian"):
        ExtendedKalmanFilter(plant, jacobian="fd")
    with pytest.raises(ConfigError, match="NonlinearPlant or lqgt.Plant"):
        ExtendedKalmanFilter("plant")
    lin = lqgt.Plant([[1.0]], [[1.0]], [[1.0]], W=[[1.0]], V=[[1.0]], D=[[1.0]])
    with pytest.raises(lqgt.errors.ShapeError, match="D != 0"):
        as_nonlinear(lin)
    assert "UnscentedKalmanFilter" in repr(UnscentedKalmanFilter(plant))
