"""Koopman lifting: dictionaries, EDMDc against a hand least-squares oracle, exactness on a
linear plant (model, Kalman filter, LQR), the lifted filter on Van der Pol, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _helpers_nonlinear import CPU, F64, random_signals, run_estimator

import lqgt
from lqgt import nonlinear_plants as nlp
from lqgt.errors import ConfigError, NonFiniteError, NotStabilizableError, ShapeError
from lqgt.estimators.ekf import ExtendedKalmanFilter
from lqgt.koopman import (
    RBF,
    DictionaryError,
    FunctionDictionary,
    Identity,
    Koopman,
    KoopmanFilter,
    KoopmanLQR,
    Polynomial,
    RankDeficientError,
    TimeDelay,
    as_dictionary,
    fit_edmdc,
    lifted_moments,
)
from lqgt.nonlinear import FilterDivergenceError


# -- dictionaries --------------------------------------------------------------------------------
def test_polynomial_dictionary_values():
    d = Polynomial(2, 3)
    assert d.dim == math.comb(5, 3) == 10 and d.state_index == (1, 2) and d.constant_index == (0,)
    assert d.names == ("1", "x0", "x1", "x0^2", "x0*x1", "x1^2", "x0^3", "x0^2*x1", "x0*x1^2", "x1^3")
    x = torch.tensor([[2.0, -3.0]], dtype=F64)
    a, b = 2.0, -3.0
    np.testing.assert_allclose(d(x)[0].numpy(), [1, a, b, a * a, a * b, b * b, a**3, a * a * b, a * b * b, b**3])
    np.testing.assert_array_equal(d.projection() @ d(x)[0].numpy(), [a, b])
    assert Polynomial(3, 2, constant=False).dim == 9
    assert Identity(3).dim == 3 and Identity(3).constant_index == ()


def test_rbf_and_time_delay_dictionaries():
    c = np.array([[0.0, 0.0], [1.0, 1.0]])
    d = RBF(c, width=0.5, constant=True)
    x = torch.tensor([[1.0, 0.0]], dtype=F64)
    psi = d(x)[0].numpy()
    np.testing.assert_allclose(psi, [1.0, 1.0, 0.0, np.exp(-1 / 0.5), np.exp(-1 / 0.5)])
    tp = RBF(c, kernel="thin_plate")
    np.testing.assert_allclose(tp(x)[0, 2:].numpy(), [0.0, 0.0], atol=1e-300)  # r = 1: r² log r = 0
    np.testing.assert_allclose(tp(torch.tensor([[2.0, 0.0]], dtype=F64))[0, 2].item(), 4 * np.log(2))
    td = TimeDelay(Polynomial(2, 2), delays=2)
    w = torch.arange(6, dtype=F64).reshape(1, 6)
    out = td(w)[0].numpy()
    assert td.dim == 6 + 4 and td.input_dim == 6 and td.state_index == (1, 2)
    np.testing.assert_allclose(out[:6], Polynomial(2, 2)(w[:, :2])[0].numpy())
    np.testing.assert_allclose(out[6:], [2, 3, 4, 5])
    with pytest.raises(ShapeError, match=r"\(B, 6\)"):
        td(torch.zeros(1, 2, dtype=F64))


def test_function_dictionary_must_contain_x():
    d = FunctionDictionary(lambda x: torch.cat([torch.ones_like(x[:, :1]), x[:, 1:], torch.sin(x), x[:, :1]], -1), 2)
    assert d.state_index == (4, 1) and d.constant_index == (0,) and d.dim == 5
    with pytest.raises(DictionaryError, match=r"must contain the state x itself.*k in \[1\]"):
        FunctionDictionary(lambda x: torch.cat([x[:, :1], torch.sin(x)], -1), 2)
    with pytest.raises(DictionaryError, match="must map"):
        FunctionDictionary(lambda x: x[0], 2)
    with pytest.raises(DictionaryError, match="raised"):
        FunctionDictionary(lambda x: x @ torch.ones(3, 3, dtype=x.dtype), 2)
    with pytest.raises(DictionaryError, match="n=3"):
        as_dictionary(Polynomial(3, 2), 2)
    with pytest.raises(DictionaryError, match="Dictionary or a callable"):
        as_dictionary(5, 2)
    with pytest.raises(DictionaryError):
        RBF(np.zeros((2, 2)), kernel="cubic")


# -- EDMDc ----------------------------------------------------------------------------------------
def test_fit_matches_hand_least_squares(rng):
    d = Polynomial(2, 3)
    X = rng.normal(size=(300, 2))
    U = rng.normal(size=(300, 1))
    Xn = np.stack([X[:, 0] + 0.1 * X[:, 1], X[:, 1] - 0.1 * np.sin(X[:, 0]) + 0.1 * U[:, 0]], 1)
    Y = np.stack([np.sin(X[:, 0])], 1)
    res = fit_edmdc(X, U, Xn, d, Y=Y)
    Psi, Psin = d(torch.tensor(X)).numpy(), d(torch.tensor(Xn)).numpy()
    Z = np.hstack([Psi, U])
    Theta = np.linalg.lstsq(Z, Psin, rcond=None)[0]
    np.testing.assert_allclose(res.K, Theta[:10].T, atol=1e-10)
    np.testing.assert_allclose(res.B, Theta[10:].T, atol=1e-10)
    Resid = Psin - Z @ Theta
    np.testing.assert_allclose(res.W, Resid.T @ Resid / (300 - 11), atol=1e-12)
    C = np.linalg.lstsq(Psi, Y, rcond=None)[0].T
    np.testing.assert_allclose(res.C, C, atol=1e-10)
    assert res.rank == 11 and res.samples == 300
    # ridge against the normal equations
    lam = 3.0
    r2 = fit_edmdc(X, U, Xn, d, ridge=lam)
    Th2 = np.linalg.solve(Z.T @ Z + lam * np.eye(11), Z.T @ Psin)
    np.testing.assert_allclose(np.hstack([r2.K, r2.B]), Th2.T, atol=1e-9)
    # torch input is accepted
    r3 = fit_edmdc(torch.tensor(X), torch.tensor(U), torch.tensor(Xn), d)
    np.testing.assert_allclose(r3.K, res.K, atol=1e-12)


def test_rank_deficient_snapshots_report_rank_and_suggest_ridge(rng):
    dup = lambda x: torch.cat([x, 2.0 * x[:, :1]], -1)
    X, U = rng.normal(size=(50, 2)), rng.normal(size=(50, 1))
    with pytest.raises(RankDeficientError, match=r"rank 3 < 4 .*ridge="):
        fit_edmdc(X, U, X, dup)
    res = fit_edmdc(X, U, X, dup, ridge=1e-8)
    assert res.rank == 3 and np.isfinite(res.K).all()
    with pytest.raises(RankDeficientError, match="fewer snapshots than features"):
        fit_edmdc(X[:5], U[:5], X[:5], Polynomial(2, 3))
    with pytest.raises(RankDeficientError, match="inputs that do not vary"):
        fit_edmdc(X, np.zeros((50, 1)), X, Identity(2))


def test_fit_errors(rng):
    X, U = rng.normal(size=(20, 2)), rng.normal(size=(20, 1))
    with pytest.raises(ShapeError, match="same number of rows"):
        fit_edmdc(X, U[:10], X, Identity(2))
    with pytest.raises(ShapeError, match="X_next has shape"):
        fit_edmdc(X, U, X[:, :1], Identity(2))
    with pytest.raises(ShapeError, match="ridge"):
        fit_edmdc(X, U, X, Identity(2), ridge=-1.0)
    with pytest.raises(ShapeError, match="Y has 5 rows"):
        fit_edmdc(X, U, X, Identity(2), Y=np.zeros((5, 1)))
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(NonFiniteError):
        fit_edmdc(bad, U, X, Identity(2))
    with pytest.raises(NonFiniteError, match="dictionary returned NaN"):
        fit_edmdc(X, U, X, FunctionDictionary(lambda x: torch.cat([x, 1.0 / (x[:, :1] - x[:, :1])], -1), 2))
    with pytest.raises(ShapeError, match=r"X must be \(B, T\+1, n\)"):
        Koopman.from_trajectories(np.zeros((2, 5, 2)), np.zeros((2, 5, 1)), Identity(2))


# -- exactness on a linear plant -------------------------------------------------------------------
def _linear_model(plant, rng, dictionary=None):
    X = rng.normal(size=(200, plant.n))
    U = rng.normal(size=(200, plant.m))
    return Koopman.fit(X, U, X @ plant.A.T + U @ plant.B.T, dictionary or Identity(plant.n), Y=X @ plant.C.T)


def test_identity_dictionary_reproduces_a_linear_plant(rng):
    plant = lqgt.plants.two_mass().plant
    model = _linear_model(plant, rng)
    np.testing.assert_allclose(model.K, plant.A, atol=1e-12)
    np.testing.assert_allclose(model.B, plant.B, atol=1e-12)
    np.testing.assert_allclose(model.C, plant.C, atol=1e-12)
    assert np.abs(model.W).max() < 1e-20 and np.abs(model.V_fit).max() < 1e-20
    np.testing.assert_allclose(np.sort_complex(model.eigenvalues()), np.sort_complex(np.linalg.eigvals(plant.A)), atol=1e-10)
    # the constant feature is exact too: its row of K is e_0 and its column in B is 0
    m1 = _linear_model(plant, rng, Polynomial(4, 1))
    np.testing.assert_allclose(m1.K[0], np.eye(5)[0], atol=1e-12)
    np.testing.assert_allclose(m1.K[1:, 1:], plant.A, atol=1e-12)


@pytest.mark.parametrize("form", ["current", "predictor"])
def test_koopman_filter_is_the_kalman_filter_on_a_linear_plant(form, rng):
    plant = lqgt.plants.two_mass().plant
    model = _linear_model(plant, rng)
    y, u = random_signals(plant, 3, 60, seed=3)
    kf = KoopmanFilter(model, V=plant.V, W=plant.W, m0=plant.m0, P0=plant.P0, form=form)
    got, st = run_estimator(kf, y, u)
    ref, rst = run_estimator(lqgt.KalmanFilter(plant, form, steady=False), y, u)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(KoopmanFilter.lifted(st)[1], rst[1], rtol=0, atol=1e-10)
    steady = KoopmanFilter(model, V=plant.V, W=plant.W, form=form, steady=True)
    got_s, _ = run_estimator(steady, y, u)
    ref_s, _ = run_estimator(lqgt.KalmanFilter(plant, form), y, u)
    torch.testing.assert_close(got_s, ref_s, rtol=0, atol=1e-10)


def test_lifted_moments_are_exact_for_linear_features(rng):
    m0 = np.array([1.0, -2.0])
    P0 = np.array([[0.5, 0.1], [0.1, 0.3]])
    mean, cov = lifted_moments(Polynomial(2, 2), m0, P0, samples=2000)
    np.testing.assert_allclose(mean[1:3], m0, atol=1e-12)
    np.testing.assert_allclose(cov[1:3, 1:3], P0, atol=1e-12)
    assert cov[0, 0] == 0.0
    np.testing.assert_allclose(mean[3], m0[0] ** 2 + P0[0, 0], atol=1e-12)  # E[x0²] exact too (2nd moments matched)


def test_noisy_linear_data_give_the_process_noise():
    plant = lqgt.plants.oscillator().plant
    npl = ExtendedKalmanFilter(plant).plant  # the plant as a NonlinearPlant
    model = Koopman.from_plant_data(npl, Identity(2), batch=200, horizon=50, seed=1)
    np.testing.assert_allclose(model.K, plant.A, atol=0.03)
    np.testing.assert_allclose(model.W, plant.W, atol=0.01)


def test_time_delay_model_has_exact_shift_rows():
    plant = lqgt.plants.oscillator().plant
    npl = ExtendedKalmanFilter(plant).plant
    model = Koopman.from_plant_data(npl, TimeDelay(2, 2), batch=40, horizon=30, seed=2)
    K = model.K
    np.testing.assert_allclose(K[2:4], np.hstack([np.eye(2), np.zeros((2, 4))]), atol=1e-10)
    np.testing.assert_allclose(K[4:6], np.hstack([np.zeros((2, 2)), np.eye(2), np.zeros((2, 2))]), atol=1e-10)
    kf = KoopmanFilter(model)
    y = npl.sample(20, batch=2, seed=3).y
    x, _ = run_estimator(kf, y[:, :20], torch.zeros(2, 20, 2, dtype=F64))
    assert x.shape == (2, 20, 2) and torch.isfinite(x).all()
    with pytest.raises(ConfigError, match="no time delays"):
        KoopmanLQR(model, np.eye(2), np.eye(2))


# -- LQR ----------------------------------------------------------------------------------------------
def test_koopman_lqr_on_a_linear_plant_is_dlqr(rng):
    ex = lqgt.plants.two_mass()
    plant, Q, R = ex
    K_ref, _X_ref, _ = lqgt.dlqr(plant.A, plant.B, Q, R)
    for d in (Identity(4), Polynomial(4, 1)):
        model = _linear_model(plant, rng, d)
        ctl = KoopmanLQR(model, Q, R, ridge=0.0)
        np.testing.assert_allclose(ctl.gain @ d.projection().T, K_ref, atol=1e-9)
        x = torch.tensor(rng.normal(size=(5, 4)))
        torch.testing.assert_close(ctl(x), -x @ torch.tensor(K_ref).T, rtol=0, atol=1e-9)
    finite = KoopmanLQR(model, Q, R, ridge=0.0, horizon=400)
    np.testing.assert_allclose(finite.gain[:, 1:], K_ref, atol=1e-8)
    assert finite.equilibrium_residual < 1e-12


def test_koopman_lqr_reports_an_unstabilizable_lifted_model():
    """x² of an unstable scalar plant grows like a² and the input cannot reach it linearly."""
    a = 1.2
    grid = np.linspace(-1, 1, 21)
    X = np.concatenate([grid, grid])[:, None]          # symmetric data: x u is uncorrelated with u,
    U = np.repeat([1.0, -1.0], 21)[:, None]             # so the fitted B has no entry for x²
    model = Koopman.fit(X, U, a * X + U, Polynomial(1, 2, constant=False), Y=X)
    assert model.K[1, 1] > 1.0
    with pytest.raises(NotStabilizableError, match="horizon=H"):
        KoopmanLQR(model, np.eye(1), np.eye(1))
    ctl = KoopmanLQR(model, np.eye(1), np.eye(1), horizon=50)
    assert np.isfinite(ctl.gain).all()
    with pytest.raises(ConfigError, match="horizon"):
        KoopmanLQR(model, np.eye(1), np.eye(1), horizon=0)


def _closed_loop(plant, policy, est, *, batch, horizon, seed):
    """Tiny current-form closed loop (x, x̂ trajectories) for behavioural checks."""
    tr = plant.sample(horizon, batch=batch, seed=seed)  # only its x0 and noise draw are reused
    x = tr.x[:, 0]
    gen = torch.Generator().manual_seed(seed)
    Wh = torch.tensor(np.linalg.cholesky(plant.W + 1e-300 * np.eye(plant.n)) if np.all(np.linalg.eigvalsh(plant.W) > 0) else np.sqrt(np.clip(plant.W, 0, None)))
    Vh = torch.tensor(np.linalg.cholesky(plant.V))
    st, xh = est.init(batch, device=CPU, dtype=F64)
    u_prev = torch.zeros(batch, plant.m, dtype=F64)
    xs, xhs = [], []
    for t in range(horizon):
        y = plant.h(x) + torch.randn(batch, plant.p, generator=gen, dtype=F64) @ Vh.T
        st, xh = est.step(st, y, u_prev)
        u = policy(xh) if policy is not None else torch.zeros(batch, plant.m, dtype=F64)
        xs.append(x)
        xhs.append(xh)
        x = plant.f(x, u) + torch.randn(batch, plant.n, generator=gen, dtype=F64) @ Wh.T
        u_prev = u
    return torch.stack(xs, 1), torch.stack(xhs, 1)


def test_koopman_filter_beats_the_linearised_kalman_filter_on_van_der_pol():
    plant = nlp.van_der_pol().plant
    x0 = np.random.default_rng(0).uniform(-3, 3, size=(100, 2))
    model = Koopman.from_plant_data(plant, Polynomial(2, 3), x0=x0, horizon=60, u_std=0.5, seed=1)
    rmse = {}
    for name, est in (("koopman", KoopmanFilter(model)), ("linear", lqgt.KalmanFilter(plant.linearize(), steady=False)),
                      ("ekf", ExtendedKalmanFilter(plant))):
        x, xh = _closed_loop(plant, None, est, batch=40, horizon=100, seed=4)
        rmse[name] = float(((x - xh) ** 2).sum(-1).mean().sqrt())
    assert rmse["ekf"] < rmse["koopman"] < 0.6 * rmse["linear"]


def test_koopman_lqg_stabilises_the_pendulum():
    ex = nlp.pendulum()
    plant, Q, R = ex
    K, _, _ = lqgt.dlqr(*(M for M in (plant.linearize().A, plant.linearize().B)), Q, R)
    Kt = torch.tensor(K)
    x0 = np.random.default_rng(1).uniform([-1.0, -2.0], [1.0, 2.0], size=(150, 2))
    model = Koopman.from_plant_data(plant, Polynomial(2, 3), x0=x0, horizon=30, policy=lambda x: -x @ Kt.T, seed=2)
    ctl = KoopmanLQR(model, Q, R)
    assert np.max(np.abs(ctl.eigenvalues)) < 1.0
    start = plant.with_initial(m0=[0.8, 0.0])
    x, _ = _closed_loop(start, ctl, KoopmanFilter(model, m0=start.m0), batch=20, horizon=120, seed=5)
    assert float(x[:, -20:, 0].pow(2).mean().sqrt()) < 0.05 and float(x[:, 0, 0].mean()) > 0.6


# -- errors -----------------------------------------------------------------------------------------
def test_koopman_filter_errors(rng):
    plant = lqgt.plants.two_mass().plant
    X, U = rng.normal(size=(50, 4)), rng.normal(size=(50, 1))
    no_c = Koopman.fit(X, U, X @ plant.A.T + U @ plant.B.T, Identity(4))
    with pytest.raises(ConfigError, match="no output matrix C"):
        KoopmanFilter(no_c, V=plant.V)
    model = _linear_model(plant, rng)
    with pytest.raises(ConfigError, match="pass V="):
        KoopmanFilter(model)
    with pytest.raises(ShapeError, match="V has shape"):
        KoopmanFilter(model, V=np.eye(3))
    with pytest.raises(ConfigError, match="form"):
        KoopmanFilter(model, V=plant.V, form="smoother")
    with pytest.raises(ConfigError, match="Koopman"):
        KoopmanFilter("model", V=plant.V)
    with pytest.raises(ConfigError, match="NonlinearPlant"):
        Koopman.from_plant_data(plant, Identity(4))


def test_overflowing_lifted_covariance_raises_naming_the_step(rng):
    X, U = rng.normal(size=(30, 1)), rng.normal(size=(30, 1))
    model = Koopman.fit(X, U, 1e120 * X + U, Identity(1), Y=X)
    kf = KoopmanFilter(model, V=[[1.0]], W=[[1.0]])
    st, _ = kf.init(2, device=CPU, dtype=F64)
    y, u = torch.zeros(2, 1, dtype=F64), torch.zeros(2, 1, dtype=F64)
    with pytest.raises(FilterDivergenceError, match=r"KoopmanFilter: the \(shared\) error covariance became NaN/inf at step \d"):
        for _ in range(10):
            st, _ = kf.step(st, y, u)
