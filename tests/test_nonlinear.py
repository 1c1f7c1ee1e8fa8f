"""NonlinearPlant: construction checks, RK4 sampling, linearisation, sampling; the library plants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _helpers_nonlinear import F64, np_f, np_h
from scipy.integrate import solve_ivp

import lqgt
from lqgt import nonlinear_plants as nlp
from lqgt.errors import (
    ConfigError,
    NonFiniteError,
    NotPositiveDefiniteError,
    ShapeError,
)
from lqgt.nonlinear import NonlinearPlant, rk4


def _fd(fn, z, eps=1e-6):
    """Central finite differences of a numpy function, column by column."""
    cols = []
    for k in range(z.size):
        e = np.zeros_like(z)
        e[k] = eps
        cols.append((fn(z + e) - fn(z - e)) / (2 * eps))
    return np.stack(cols, -1)


@pytest.mark.parametrize("name", nlp.NAMES)
def test_library_plant_has_equilibrium_at_origin(name):
    plant, Q, R = nlp.get(name)
    assert plant.is_linear is False and plant.has_feedthrough is False
    assert Q.shape == (plant.n, plant.n) and R.shape == (plant.m, plant.m)
    assert np.abs(np_f(plant, np.zeros(plant.n), np.zeros(plant.m))).max() < 1e-14
    lin = plant.linearize()
    assert isinstance(lin, lqgt.Plant) and (lin.n, lin.m, lin.p) == (plant.n, plant.m, plant.p)
    np.testing.assert_array_equal(lin.W, plant.W)
    np.testing.assert_array_equal(lin.V, plant.V)


@pytest.mark.parametrize("name", nlp.NAMES)
def test_linearize_matches_finite_differences(name, rng):
    plant = nlp.get(name).plant
    lin = plant.linearize()
    x0, u0 = np.zeros(plant.n), np.zeros(plant.m)
    np.testing.assert_allclose(lin.A, _fd(lambda z: np_f(plant, z, u0), x0), atol=1e-8)
    np.testing.assert_allclose(lin.B, _fd(lambda z: np_f(plant, x0, z), u0), atol=1e-8)
    np.testing.assert_allclose(lin.C, _fd(lambda z: np_h(plant, z), x0), atol=1e-8)
    # batched Jacobians at random points: both methods against finite differences
    X = torch.tensor(rng.normal(size=(4, plant.n)))
    U = torch.tensor(rng.normal(size=(4, plant.m)))
    fx, Fa, _ = plant.jacobian_f(X, U)
    fx2, Fv, Fu = plant.jacobian_f(X, U, method="vmap")
    _, Ha = plant.jacobian_h(X)
    _, Hv = plant.jacobian_h(X, method="vmap")
    torch.testing.assert_close(fx, fx2, rtol=0, atol=1e-14)
    torch.testing.assert_close(Fa, Fv, rtol=0, atol=1e-12)
    torch.testing.assert_close(Ha, Hv, rtol=0, atol=1e-12)
    for b in range(4):
        xb, ub = X[b].numpy(), U[b].numpy()
        np.testing.assert_allclose(Fa[b].numpy(), _fd(lambda z, ub=ub: np_f(plant, z, ub), xb), atol=1e-7)
        np.testing.assert_allclose(Fu[b].numpy(), _fd(lambda z, xb=xb: np_f(plant, xb, z), ub), atol=1e-7)
        np.testing.assert_allclose(Ha[b].numpy(), _fd(lambda z: np_h(plant, z), xb), atol=1e-7)
    assert plant.check_jacobians(X[0].numpy(), U[0].numpy()) < 1e-7


def test_cart_pole_linearisation_is_the_linear_cart_pole():
    """The nonlinear cart-pole linearised at the upright equals lqgt.plants.cart_pole (ZOH
    vs RK4: 1e-7; W = Wc dt vs Van Loan: first order in dt)."""
    nl = nlp.cart_pole_nonlinear().plant.linearize()
    lin = lqgt.plants.cart_pole().plant
    np.testing.assert_allclose(nl.A, lin.A, atol=1e-7)
    np.testing.assert_allclose(nl.B, lin.B, atol=1e-7)
    np.testing.assert_allclose(nl.C, lin.C, atol=0)
    assert np.abs(nl.W - lin.W).max() <= 0.02 * np.abs(lin.W).max()


@pytest.mark.parametrize("name", nlp.NAMES)
def test_rk4_step_matches_solve_ivp(name, rng):
    plant = nlp.get(name).plant
    x0, u = rng.normal(size=plant.n), rng.normal(size=plant.m)

    def fcn(t, x):
        return plant.fc(torch.tensor(x)[None], torch.tensor(u)[None])[0].numpy()

    ref = solve_ivp(fcn, (0.0, plant.dt), x0, method="DOP853", rtol=1e-13, atol=1e-13).y[:, -1]
    errs = []
    for s in (2, 4, 8):
        out = rk4(plant.fc, torch.tensor(x0)[None], torch.tensor(u)[None], plant.dt, s)[0].numpy()
        errs.append(np.abs(out - ref).max())
    assert errs[-1] < 1e-9
    # fourth order: halving the step divides the error by ~16
    assert 12 < errs[0] / errs[1] < 20 and 12 < errs[1] / errs[2] < 20
    np.testing.assert_allclose(np_f(plant, x0, u), rk4(plant.fc, torch.tensor(x0)[None], torch.tensor(u)[None],
                                                        plant.dt, plant.substeps)[0].numpy(), rtol=0, atol=0)


def test_linearize_in_deviation_coordinates():
    """About the hanging equilibrium (θ = π) the pendulum is stable; m0 is shifted."""
    plant = nlp.pendulum().plant
    lin = plant.linearize([np.pi, 0.0])
    assert np.max(np.abs(np.linalg.eigvals(lin.A))) < 1.0
    np.testing.assert_allclose(lin.m0, plant.m0 - [np.pi, 0.0])
    np.testing.assert_allclose(lin.C, [[1.0, 0.0]])
    with pytest.raises(ConfigError, match="not an equilibrium"):
        plant.linearize([0.5, 0.0])
    off = plant.linearize([0.5, 0.0], require_equilibrium=False)
    assert np.isfinite(off.A).all()


def test_from_continuous_noise_is_first_order():
    plant = nlp.van_der_pol(dt=0.1).plant
    np.testing.assert_allclose(plant.W, np.diag([0.0, 0.05]) * 0.1)
    assert plant.substeps == 2 and plant.fc is not None


def test_sample_shapes_and_determinism():
    plant = nlp.duffing().plant
    tr = plant.sample(20, batch=3, seed=1)
    assert tr.x.shape == (3, 21, 2) and tr.u.shape == (3, 20, 1) and tr.y.shape == (3, 21, 1)
    tr2 = plant.sample(20, batch=3, seed=1)
    torch.testing.assert_close(tr.x, tr2.x, rtol=0, atol=0)
    clean = plant.sample(5, x0=tr.x[:, 0], noise=False, u=torch.ones(3, 5, 1, dtype=F64))
    x = tr.x[:, 0]
    for t in range(5):
        x = plant.f(x, torch.ones(3, 1, dtype=F64))
        torch.testing.assert_close(clean.x[:, t + 1], x, rtol=0, atol=0)
    torch.testing.assert_close(clean.y, plant.h(clean.x.reshape(-1, 2)).reshape(3, 6, 1))
    fb = plant.sample(5, batch=2, u=lambda z: -z[:, :1], noise=False)
    torch.testing.assert_close(fb.u[:, 0], -fb.x[:, 0, :1])
    with pytest.raises(ShapeError, match="u has shape"):
        plant.sample(5, u=torch.zeros(2, 4, 1))


def test_with_initial_and_noise_copies():
    plant = nlp.pendulum().plant
    p2 = plant.with_initial(m0=[0.5, 0.0], P0=np.eye(2))
    np.testing.assert_array_equal(p2.m0, [0.5, 0.0])
    np.testing.assert_array_equal(plant.m0, [0.0, 0.0])
    p3 = plant.with_noise(V=[[1.0]])
    assert p3.V[0, 0] == 1.0 and p3.fc is plant.fc
    assert "pendulum" in repr(plant)


def _good():
    return {"W": np.eye(2) * 0.01, "V": [[0.1]], "n": 2, "m": 1, "p": 1, "dt": 0.1}


def test_construction_errors():
    f = lambda x, u: x + 0.1 * u
    h = lambda x: x[:, :1]
    NonlinearPlant(f, h, **_good())
    with pytest.raises(ShapeError, match=r"f returned shape \(3, 1\)"):
        NonlinearPlant(lambda x, u: x[:, :1], h, **_good())
    with pytest.raises(ShapeError, match="h returned shape"):
        NonlinearPlant(f, lambda x: x, **_good())
    with pytest.raises(ConfigError, match="f raised RuntimeError"):
        NonlinearPlant(lambda x, u: x @ torch.ones(3, 3, dtype=x.dtype), h, **_good())
    with pytest.raises(ShapeError, match="dtype"):
        NonlinearPlant(lambda x, u: (x + u).float(), h, **_good())
    with pytest.raises(ShapeError, match="mixes trajectories"):
        NonlinearPlant(lambda x, u: x - x.mean(0), h, **_good())
    with pytest.raises(NonFiniteError, match="h returned NaN"):
        NonlinearPlant(f, lambda x: x[:, :1] / 0.0, **_good())
    with pytest.raises(ShapeError, match="torch.Tensor"):
        NonlinearPlant(f, lambda x: x.numpy()[:, :1], **_good())
    with pytest.raises(NotPositiveDefiniteError, match="V must be positive definite"):
        NonlinearPlant(f, h, **{**_good(), "V": [[0.0]]})
    with pytest.raises(NotPositiveDefiniteError, match="W"):
        NonlinearPlant(f, h, **{**_good(), "W": -np.eye(2)})
    with pytest.raises(ShapeError, match="W has shape"):
        NonlinearPlant(f, h, **{**_good(), "W": np.eye(3)})
    with pytest.raises(ShapeError, match="n must be a positive integer"):
        NonlinearPlant(f, h, **{**_good(), "n": 0})
    with pytest.raises(ConfigError, match="dt"):  # a bad value, not a bad shape
        NonlinearPlant(f, h, **{**_good(), "dt": -1.0})
    with pytest.raises(ConfigError, match="substeps"):
        NonlinearPlant.from_continuous(f, h, Wc=np.eye(2), V=[[1.0]], n=2, m=1, p=1, dt=0.1, substeps=0)
    with pytest.raises(ConfigError, match="unknown nonlinear example"):
        nlp.get("nope")


@pytest.mark.parametrize("ctx", [torch.no_grad, torch.inference_mode])
def test_jacobians_are_right_without_grad_mode(ctx, rng):
    """Simulators run under no_grad / inference_mode: the Jacobians must not silently vanish."""
    plant = nlp.van_der_pol().plant
    X, U = torch.tensor(rng.normal(size=(3, 2))), torch.tensor(rng.normal(size=(3, 1)))
    _, ref, _ = plant.jacobian_f(X, U)
    _, Href = plant.jacobian_h(X)
    with ctx():
        Xc, Uc = X.clone(), U.clone()
        for method in ("autograd", "vmap"):
            _, F, _ = plant.jacobian_f(Xc, Uc, method=method)
            _, H = plant.jacobian_h(Xc, method=method)
            torch.testing.assert_close(F, ref, rtol=0, atol=1e-14)
            torch.testing.assert_close(H, Href, rtol=0, atol=0)
        np.testing.assert_allclose(plant.linearize().C, [[1.0, 0.0]])


# --------------------------------------------------------------------------- in lqgt.simulate


def test_simulate_nonlinear_plant_matches_independent_loop():
    """lqgt.simulate with a NonlinearPlant (generic loop) equals a hand-written current-form loop."""
    import lqgt

    base, Q, R = lqgt.plants.pendulum()
    plant = lqgt.NonlinearPlant(base.f, base.h, W=base.W, V=base.V, n=base.n, m=base.m, p=base.p, dt=base.dt,
                                m0=[0.6, -0.2], P0=base.P0)
    lin = plant.linearize(np.zeros(plant.n), np.zeros(plant.m))
    K = lqgt.lqg(lin, Q, R).K
    ekf = lqgt.ExtendedKalmanFilter(plant)
    T, B = 80, 3
    res = lqgt.simulate(plant, K, {"ekf": ekf}, Q=Q, R=R, horizon=T, batch=B, noise=False)
    Kt = torch.as_tensor(K)
    x = torch.tensor(plant.m0).expand(B, -1).clone()
    st, _ = ekf.init(B, device=torch.device("cpu"), dtype=torch.float64)
    u_prev = torch.zeros(B, plant.m, dtype=torch.float64)
    for t in range(T):
        st, xh = ekf.step(st, plant.h(x), u_prev)
        u = -xh @ Kt.T
        torch.testing.assert_close(res.x["ekf"][:, t], x, rtol=0, atol=1e-12)
        torch.testing.assert_close(res.x_hat["ekf"][:, t], xh, rtol=0, atol=1e-12)
        torch.testing.assert_close(res.u["ekf"][:, t], u, rtol=0, atol=1e-12)
        x = plant.f(x, u)
        u_prev = u
    assert float(res.x["ekf"][:, -1].abs().max()) < 0.05  # LQG on the linearisation brings it upright


def test_simulate_nonlinear_divergence_names_the_step():
    import lqgt

    base, Q, R = lqgt.plants.pendulum()
    # positive feedback on the angle: the pendulum spins up until the state overflows
    with pytest.warns(lqgt.DivergenceWarning, match=r"'ekf'.*non-finite at step \d+"):
        res = lqgt.simulate(base, lambda xh: 1e6 * xh[:, :1], {"ekf": lqgt.ExtendedKalmanFilter(base)}, Q=Q, R=R,
                            horizon=200, batch=2, seed=0)
    assert res.cost["ekf"] == float("inf")
