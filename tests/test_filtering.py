"""lqgt.filtering: sequential and time-parallel Kalman filter / RTS smoother.

Oracles:
* an independent textbook loop in numpy (explicit inverse, ``P+ = (I - K C) P``, missing
  components dropped by indexing);
* filterpy's ``KalmanFilter`` and ``rts_smoother`` on one trajectory;
* the exact joint Gaussian of ``(x[0..T-1], y[0..T-1])`` built from the model (no Kalman
  recursion): ``scipy.stats.multivariate_normal`` of the stacked observed ``y`` for the
  log-likelihood, Gaussian conditioning for the filtered and smoothed moments;
* finite differences (``torch.autograd.gradcheck``) for the gradient of the log-likelihood.
Parallel == sequential to 1e-9 in float64 (SPEC §5); float32 budget in ``F32_TOL``.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from filterpy.kalman import KalmanFilter as FilterpyKF
from filterpy.kalman import rts_smoother as filterpy_rts

import lqgt
from lqgt.errors import (
    ConfigError,
    LqgtError,
    NonFiniteError,
    NotPositiveDefiniteError,
    NotSymmetricError,
    ShapeError,
)
from lqgt.filtering import (
    FilterResult,
    LinearGaussianModel,
    SmootherResult,
    choose_method,
    kalman_filter,
    rts_smoother,
)

F64 = torch.float64
TOL = 1e-9
PARALLEL = [("parallel", "covariance"), ("parallel", "information")]
ALL = [("sequential", "covariance")] + PARALLEL
#: float32 tolerance table (relative to the float64 sequential filter), measured on CPU
#: (stable plant, T = 1000); docs/filtering.md states the budget.
F32_TOL = {"means": 2e-5, "covariances": 2e-5, "log_likelihood": 2e-6}


# --------------------------------------------------------------------------------------
# Problems and oracles
# --------------------------------------------------------------------------------------


def _at(M, t):
    return None if M is None else (M[t] if np.ndim(M) == 3 else M)


def make_problem(gen, rng, kind: str, n=3, m=1, p=2, *, D=True):
    """A random plant (conftest's generator) with m0, P0, feedthrough, and an LQR gain that
    keeps simulated data bounded on unstable plants."""
    pr = gen.random_problem(rng, n, m, p, kind)
    Dm = 0.3 * rng.standard_normal((p, m)) if D else None
    plant = lqgt.Plant(pr["A"], pr["B"], pr["C"], W=pr["W"], V=pr["V"], D=Dm,
                       m0=rng.standard_normal(n), P0=gen.random_pd(rng, n, floor=0.5))
    K, _, _ = lqgt.dlqr(pr["A"], pr["B"], pr["Q"], pr["R"])
    return plant, K


def simulate(plant, K, T, batch, rng):
    """x[t+1] = A x + B u + w, u = -K x + excitation (bounded on unstable plants), y = C x + D u + v."""
    n, m, p = plant.n, plant.m, plant.p
    Lw = np.linalg.cholesky(plant.W + 1e-12 * np.eye(n))
    Lv = np.linalg.cholesky(plant.V)
    x = plant.m0 + rng.standard_normal((batch, n)) @ np.linalg.cholesky(plant.P0).T
    ys = np.empty((batch, T, p))
    us = np.empty((batch, T, m))
    wn = rng.standard_normal((T, batch, n)) @ Lw.T
    vn = rng.standard_normal((T, batch, p)) @ Lv.T
    en = 0.3 * rng.standard_normal((T, batch, m))
    for t in range(T):
        u = -x @ K.T + en[t]
        ys[:, t] = x @ plant.C.T + u @ plant.D.T + vn[t]
        us[:, t] = u
        x = x @ plant.A.T + u @ plant.B.T + wn[t]
    return ys, us


def np_filter(A, B, C, D, W, V, m0, P0, y, u):
    """Textbook Kalman filter in numpy (one trajectory); matrices constant or per step.

    NaN components of y[t] are dropped (rows of C, D and rows/cols of V)."""
    T = y.shape[0]
    m, P = np.array(m0, float), np.array(P0, float)
    out = dict(means=[], covs=[], pmeans=[], pcovs=[])
    ll = 0.0
    for t in range(T):
        if t > 0:
            At = _at(A, t - 1)
            m = At @ m + (_at(B, t - 1) @ u[t - 1] if u is not None else 0.0)
            P = At @ P @ At.T + _at(W, t - 1)
        out["pmeans"].append(m)
        out["pcovs"].append(P)
        o = ~np.isnan(y[t])
        if o.any():
            H = _at(C, t)[o]
            R = _at(V, t)[np.ix_(o, o)]
            d = _at(D, t)[o] @ u[t] if (D is not None and u is not None) else 0.0
            S = H @ P @ H.T + R
            K = P @ H.T @ np.linalg.inv(S)
            e = y[t][o] - H @ m - d
            ll += -0.5 * (e @ np.linalg.inv(S) @ e + np.log(np.linalg.det(S)) + o.sum() * np.log(2 * np.pi))
            m = m + K @ e
            P = P - K @ H @ P
        out["means"].append(m)
        out["covs"].append(P)
    res = {k: np.array(v) for k, v in out.items()}
    res["ll"] = ll
    return res


def joint_gaussian(A, B, C, D, W, V, m0, P0, u, T):
    """Mean and covariance of the stacked (x[0..T-1], y[0..T-1]) (no Kalman recursion)."""
    n = np.shape(m0)[0]
    p = _at(C, 0).shape[0]
    mx = [np.array(m0, float)]
    Sx = [np.array(P0, float)]
    for t in range(1, T):
        At = _at(A, t - 1)
        mx.append(At @ mx[-1] + (_at(B, t - 1) @ u[t - 1] if u is not None else 0.0))
        Sx.append(At @ Sx[-1] @ At.T + _at(W, t - 1))
    Cxx = np.zeros((T * n, T * n))
    for s in range(T):
        Phi = np.eye(n)  # Phi(t, s) = A[t-1] ... A[s]
        for t in range(s, T):
            if t > s:
                Phi = _at(A, t - 1) @ Phi
            blk = Sx[s] @ Phi.T  # Cov(x_s, x_t)
            Cxx[s * n:(s + 1) * n, t * n:(t + 1) * n] = blk
            Cxx[t * n:(t + 1) * n, s * n:(s + 1) * n] = blk.T
    Cbig = np.zeros((T * p, T * n))
    Vbig = np.zeros((T * p, T * p))
    my = np.empty(T * p)
    for t in range(T):
        Ct = _at(C, t)
        Cbig[t * p:(t + 1) * p, t * n:(t + 1) * n] = Ct
        Vbig[t * p:(t + 1) * p, t * p:(t + 1) * p] = _at(V, t)
        my[t * p:(t + 1) * p] = Ct @ mx[t] + (_at(D, t) @ u[t] if (D is not None and u is not None) else 0.0)
    return dict(mx=np.concatenate(mx), Cxx=Cxx, my=my, Cyy=Cbig @ Cxx @ Cbig.T + Vbig, Cxy=Cxx @ Cbig.T, n=n, p=p)


def conditional_moments(J, y, upto):
    """E[x_t | y[0..upto]] and Cov for every t, by Gaussian conditioning of the joint."""
    n, p = J["n"], J["p"]
    keep = np.zeros(y.size, bool)
    keep[: (upto + 1) * p] = True
    keep &= ~np.isnan(y.ravel())
    yo = y.ravel()[keep]
    Syy = J["Cyy"][np.ix_(keep, keep)]
    Sxy = J["Cxy"][:, keep]
    G = np.linalg.solve(Syy, Sxy.T).T
    mean = J["mx"] + G @ (yo - J["my"][keep])
    cov = J["Cxx"] - G @ Sxy.T
    T = J["mx"].size // n
    return mean.reshape(T, n), np.array([cov[t * n:(t + 1) * n, t * n:(t + 1) * n] for t in range(T)])


def plant_args(plant):
    return plant.A, plant.B, plant.C, plant.D, plant.W, plant.V, plant.m0, plant.P0


def filterpy_kf(plant, *, inputs=False):
    """filterpy's KalmanFilter of ``plant`` at its prior (with ``B`` when ``inputs``; no feedthrough)."""
    kf = FilterpyKF(dim_x=plant.n, dim_z=plant.p, dim_u=plant.m if inputs else 0)
    kf.F, kf.H, kf.Q, kf.R = plant.A, plant.C, plant.W, plant.V
    if inputs:
        kf.B = plant.B
    kf.x, kf.P = plant.m0.copy(), plant.P0.copy()
    return kf


def _np(t):
    return t.detach().cpu().numpy()


def assert_close(got, ref, tol=TOL, what=""):
    got, ref = np.asarray(got), np.asarray(ref)
    scale = max(np.abs(ref).max(), 1.0)
    err = np.abs(got - ref).max() / scale
    assert err <= tol, f"{what}: max relative error {err:.3g} > {tol:.1g}"


def assert_results_close(a: FilterResult, b: FilterResult, tol=TOL):
    for name in ("means", "covariances", "predicted_means", "predicted_covariances", "log_likelihood"):
        assert getattr(a, name).shape == getattr(b, name).shape, name
        assert_close(_np(getattr(a, name)), _np(getattr(b, name)), tol, name)


# --------------------------------------------------------------------------------------
# Sequential filter against independent oracles
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method,form", ALL)
@pytest.mark.parametrize("kind", ["stable", "unstable"])
def test_filter_matches_numpy_textbook(gen, rng, kind, method, form):
    plant, K = make_problem(gen, rng, kind)
    y, u = simulate(plant, K, 60, 3, rng)
    res = kalman_filter(plant, y, u, method=method, form=form)
    assert res.means.shape == (3, 60, 3) and res.covariances.shape == (60, 3, 3)
    assert res.log_likelihood.shape == (3,) and res.method == method
    for b in range(3):
        ref = np_filter(*plant_args(plant), y[b], u[b])
        assert_close(_np(res.means[b]), ref["means"], 1e-10, "means")
        assert_close(_np(res.predicted_means[b]), ref["pmeans"], 1e-10, "predicted means")
        assert_close(_np(res.log_likelihood[b]), ref["ll"], 1e-10, "log-likelihood")
    assert_close(_np(res.covariances), ref["covs"], 1e-10, "covariances")
    assert_close(_np(res.predicted_covariances), ref["pcovs"], 1e-10, "predicted covariances")


def test_filter_and_smoother_match_filterpy(gen, rng):
    """One trajectory, inputs through B (filterpy has no feedthrough; its RTS smoother takes
    no inputs, so the smoother is compared on an input-free run)."""
    plant, K = make_problem(gen, rng, "unstable", n=4, m=2, p=2, D=False)
    y, u = simulate(plant, K, 80, 1, rng)
    y, u = y[0], u[0]
    kf = filterpy_kf(plant, inputs=True)
    means, covs, ll = [], [], 0.0
    for t in range(80):
        if t > 0:
            kf.predict(u=u[t - 1])
        kf.update(y[t])
        ll += kf.log_likelihood
        means.append(kf.x.copy())
        covs.append(kf.P.copy())
    for method, form in ALL:
        res = kalman_filter(plant, y, u, method=method, form=form)
        assert res.means.shape == (80, 4) and res.log_likelihood.shape == ()
        assert_close(_np(res.means), np.array(means), 1e-10, "means")
        assert_close(_np(res.covariances), np.array(covs), 1e-10, "covariances")
        assert_close(_np(res.log_likelihood), ll, 1e-10, "log-likelihood")

    # smoother: no input
    kf = filterpy_kf(plant)
    Xs, Ps = [], []
    for t in range(80):
        if t > 0:
            kf.predict()
        kf.update(y[t])
        Xs.append(kf.x.copy())
        Ps.append(kf.P.copy())
    xs_ref, Ps_ref, _, _ = filterpy_rts(np.array(Xs), np.array(Ps), Fs=[plant.A] * 80, Qs=[plant.W] * 80)
    for method, form in ALL:
        sm = rts_smoother(plant, y, method=method, form=form)
        assert isinstance(sm, SmootherResult) and sm.method == method
        assert_close(_np(sm.means), xs_ref, 1e-10, "smoothed means")
        assert_close(_np(sm.covariances), Ps_ref, 1e-10, "smoothed covariances")


@pytest.mark.parametrize("missing", [False, True])
@pytest.mark.parametrize("method,form", ALL)
def test_against_exact_joint_gaussian(gen, rng, method, form, missing):
    """Log-likelihood = scipy's multivariate normal of the stacked observed y; filtered and
    smoothed moments = Gaussian conditioning of the joint (x, y). Inputs and feedthrough on;
    with ``missing``: a whole step and single components missing."""
    plant, K = make_problem(gen, rng, "unstable", n=3, m=1, p=2)
    T = 9
    y, u = simulate(plant, K, T, 1, rng)
    y, u = y[0], u[0]
    if missing:
        y[2] = np.nan
        y[5, 0] = np.nan
        y[8, 1] = np.nan
    J = joint_gaussian(*plant_args(plant), u, T)
    obs = ~np.isnan(y.ravel())
    ll_ref = scipy.stats.multivariate_normal(J["my"][obs], J["Cyy"][np.ix_(obs, obs)]).logpdf(y.ravel()[obs])
    sm = rts_smoother(plant, y, u, method=method, form=form)
    assert_close(_np(sm.log_likelihood), ll_ref, 1e-10, "log-likelihood")
    ms_ref, Ps_ref = conditional_moments(J, y, T - 1)
    assert_close(_np(sm.means), ms_ref, 1e-9, "smoothed means")
    assert_close(_np(sm.covariances), Ps_ref, 1e-9, "smoothed covariances")
    for t in (0, 4, T - 1):
        mf, Pf = conditional_moments(J, y, t)
        assert_close(_np(sm.filtered.means[t]), mf[t], 1e-9, f"filtered mean at {t}")
        assert_close(_np(sm.filtered.covariances[t]), Pf[t], 1e-9, f"filtered covariance at {t}")


# --------------------------------------------------------------------------------------
# Parallel == sequential
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("scan", ["odd_even", "hillis_steele"])
@pytest.mark.parametrize("form", ["covariance", "information"])
@pytest.mark.parametrize("kind", ["stable", "unstable", "marginal"])
def test_parallel_equals_sequential(gen, rng, kind, form, scan):
    plant, K = make_problem(gen, rng, kind, n=4, m=2, p=2)
    y, u = simulate(plant, K, 301, 3, rng)
    seq = rts_smoother(plant, y, u, method="sequential")
    par = rts_smoother(plant, y, u, method="parallel", form=form, scan=scan)
    assert par.method == "parallel" and par.filtered.form == form
    assert_results_close(par.filtered, seq.filtered)
    assert_close(_np(par.means), _np(seq.means), TOL, "smoothed means")
    assert_close(_np(par.covariances), _np(seq.covariances), TOL, "smoothed covariances")


@pytest.mark.parametrize("kind,T", [("unstable", 100_000), ("stable", 20_000)])
def test_parallel_equals_sequential_long(gen, rng, kind, T):
    """Long horizons, n = 2, batch 1: the filter (both forms) at T = 1e5 on an unstable
    plant and 2e4 on a stable one (runtime: the sequential filter takes ~10 s per 1e5 steps on
    a busy CPU core); the smoother on the first 1e4 steps."""
    plant, K = make_problem(gen, rng, kind, n=2, m=1, p=1)
    y, u = simulate(plant, K, T, 1, rng)
    seq = kalman_filter(plant, y, u, method="sequential")
    for form in ("covariance", "information"):
        par = kalman_filter(plant, y, u, method="parallel", form=form)
        assert_results_close(par, seq)
    Ts = 10_000
    s_seq = rts_smoother(plant, y[:, :Ts], u[:, :Ts], method="sequential")
    s_par = rts_smoother(plant, y[:, :Ts], u[:, :Ts], method="parallel")
    assert_close(_np(s_par.means), _np(s_seq.means), TOL, "smoothed means")
    assert_close(_np(s_par.covariances), _np(s_seq.covariances), TOL, "smoothed covariances")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("form", ["covariance", "information"])
def test_float32_error_budget(gen, rng, device, form):
    """float32 parallel vs float64 sequential within the stated budget (docs/filtering.md)."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA not available")
    plant, K = make_problem(gen, rng, "stable", n=4, m=1, p=2)
    y, u = simulate(plant, K, 1000, 8, rng)
    ref = kalman_filter(plant, y, u, method="sequential")
    res = kalman_filter(plant, y, u, method="parallel", form=form, dtype=torch.float32, device=device)
    assert res.means.dtype == torch.float32 and res.means.device.type == device
    assert_close(_np(res.means).astype(float), _np(ref.means), F32_TOL["means"], "means")
    assert_close(_np(res.covariances).astype(float), _np(ref.covariances), F32_TOL["covariances"], "covariances")
    assert_close(_np(res.log_likelihood).astype(float), _np(ref.log_likelihood), F32_TOL["log_likelihood"],
                 "log-likelihood")


# --------------------------------------------------------------------------------------
# Time-varying models
# --------------------------------------------------------------------------------------


def random_tv_model(rng, gen, T, n=3, m=1, p=2, *, transitions=None, torch_params=False):
    transitions = T if transitions is None else transitions
    A = np.stack([gen.with_radius(rng, n, rng.uniform(0.5, 1.3)) for _ in range(transitions)])
    B = rng.standard_normal((transitions, n, m))
    C = rng.standard_normal((T, p, n))
    D = 0.2 * rng.standard_normal((T, p, m))
    W = np.stack([gen.random_pd(rng, n, floor=0.05) for _ in range(transitions)])
    V = np.stack([gen.random_pd(rng, p, floor=0.2) for _ in range(T)])
    m0, P0 = rng.standard_normal(n), gen.random_pd(rng, n, floor=0.5)
    args = (A, B, C, D, W, V, m0, P0)
    mats = [torch.tensor(a) for a in args] if torch_params else list(args)
    model = LinearGaussianModel(mats[0], mats[1], mats[2], D=mats[3], W=mats[4], V=mats[5], m0=mats[6], P0=mats[7])
    return model, args


@pytest.mark.parametrize("method,form", ALL)
def test_time_varying_model(gen, rng, method, form):
    T = 40
    model, args = random_tv_model(rng, gen, T)
    assert model.time_varying and model.steps == T
    y = rng.standard_normal((2, T, 2))
    u = rng.standard_normal((2, T, 1))
    y[1, 7] = np.nan
    y[0, 11, 1] = np.nan
    sm = rts_smoother(model, y, u, method=method, form=form)
    assert sm.filtered.covariances.shape == (2, T, 3, 3)  # different missing patterns
    for b in range(2):
        ref = np_filter(*args, y[b], u[b])
        assert_close(_np(sm.filtered.means[b]), ref["means"], 1e-10, "means")
        assert_close(_np(sm.filtered.covariances[b]), ref["covs"], 1e-10, "covariances")
        assert_close(_np(sm.log_likelihood[b]), ref["ll"], 1e-10, "log-likelihood")
        J = joint_gaussian(*args[:6], args[6], args[7], u[b], T)
        ms, Ps = conditional_moments(J, y[b], T - 1)
        assert_close(_np(sm.means[b]), ms, 1e-9, "smoothed means")
        assert_close(_np(sm.covariances[b]), Ps, 1e-9, "smoothed covariances")


def test_time_varying_transitions_may_have_T_minus_1_steps(gen, rng):
    T = 25
    model, args = random_tv_model(rng, gen, T, transitions=T)
    short = LinearGaussianModel(args[0][:-1], args[1][:-1], args[2], D=args[3], W=args[4][:-1], V=args[5],
                                m0=args[6], P0=args[7])
    y, u = rng.standard_normal((T, 2)), rng.standard_normal((T, 1))
    for method in ("sequential", "parallel"):
        a = rts_smoother(model, y, u, method=method)
        b = rts_smoother(short, y, u, method=method)
        torch.testing.assert_close(a.means, b.means, rtol=0, atol=0)
        torch.testing.assert_close(a.log_likelihood, b.log_likelihood, rtol=0, atol=0)


def test_model_from_plant_and_tensors_agree(gen, rng):
    plant, K = make_problem(gen, rng, "stable")
    y, u = simulate(plant, K, 30, 2, rng)
    a = kalman_filter(plant, y, u, method="sequential")
    model = LinearGaussianModel(*(torch.tensor(M) for M in (plant.A, plant.B, plant.C)),
                                W=torch.tensor(plant.W), V=torch.tensor(plant.V), D=torch.tensor(plant.D),
                                m0=torch.tensor(plant.m0), P0=torch.tensor(plant.P0))
    b = kalman_filter(model, torch.tensor(y), torch.tensor(u), method="parallel")
    assert_results_close(b, a, 1e-12)
    c = kalman_filter(LinearGaussianModel.from_plant(plant), y, u, method="sequential")
    assert_results_close(c, a, 0.0)


# --------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method,form", ALL)
def test_log_likelihood_gradient_matches_finite_differences(rng, method, form):
    """d log p(y) / d(log q, log r, a) by autograd vs central finite differences (gradcheck)."""
    y = torch.tensor(rng.standard_normal((2, 25, 1)))
    u = torch.tensor(rng.standard_normal((25, 1)))

    def loglik(theta):
        log_q, log_r, a = theta[0], theta[1], theta[2]
        A = torch.stack([torch.stack([a, torch.tensor(0.1, dtype=F64)]),
                         torch.tensor([-0.2, 0.8], dtype=F64)])
        W = torch.exp(log_q) * torch.eye(2, dtype=F64) + 0.01
        V = torch.exp(log_r).reshape(1, 1)
        model = LinearGaussianModel(A, [[0.0], [1.0]], [[1.0, 0.5]], W=W, V=V, m0=[0.5, 0.0])
        return kalman_filter(model, y, u, method=method, form=form).log_likelihood

    theta = torch.tensor([-1.0, -0.5, 0.95], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(loglik, (theta,), eps=1e-6, atol=1e-6, rtol=1e-5)
    g = torch.autograd.grad(loglik(theta).sum(), theta)[0]
    assert torch.isfinite(g).all() and g.abs().max() > 0


def test_gradients_agree_between_methods(rng):
    y = torch.tensor(rng.standard_normal((40, 1)))
    grads = []
    for method, form in ALL:
        lq = torch.tensor(-1.0, dtype=F64, requires_grad=True)
        model = LinearGaussianModel([[0.9, 0.2], [0.0, 0.7]], None, [[1.0, 0.0]],
                                    W=torch.exp(lq) * torch.eye(2, dtype=F64), V=[[0.3]])
        kalman_filter(model, y, method=method, form=form).log_likelihood.backward()
        grads.append(lq.grad.item())
    assert_close(grads, [grads[0]] * 3, 1e-10, "gradients")


# --------------------------------------------------------------------------------------
# Missing data
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method,form", ALL)
def test_missing_steps_skip_the_update(gen, rng, method, form):
    """A fully NaN y[t] = no measurement update (filterpy: ``update(None)``)."""
    plant, K = make_problem(gen, rng, "stable", n=3, m=1, p=2, D=False)
    y, _ = simulate(plant, K, 50, 1, rng)
    y = y[0]
    gaps = [0, 10, 11, 12, 30, 49]
    y[gaps] = np.nan
    kf = filterpy_kf(plant)
    means, ll = [], 0.0
    for t in range(50):
        if t > 0:
            kf.predict()
        if t in gaps:
            kf.update(None)
        else:
            kf.update(y[t])
            ll += kf.log_likelihood
        means.append(kf.x.copy())
    res = kalman_filter(plant, y, method=method, form=form)
    assert_close(_np(res.means), np.array(means), 1e-10, "means")
    assert_close(_np(res.log_likelihood), ll, 1e-10, "log-likelihood")
    for t in gaps:  # no update: the filtered moments are the predicted ones
        assert_close(_np(res.means[t]), _np(res.predicted_means[t]), 1e-14, "means at a gap")
        assert_close(_np(res.covariances[t]), _np(res.predicted_covariances[t]), 1e-14, "covariances at a gap")


@pytest.mark.parametrize("method,form", ALL)
def test_partially_missing_components_are_dropped(gen, rng, method, form):
    plant, K = make_problem(gen, rng, "unstable", n=3, m=1, p=3)
    y, u = simulate(plant, K, 40, 1, rng)
    y, u = y[0], u[0]
    mask = rng.random(y.shape) < 0.3
    y[mask] = np.nan
    ref = np_filter(*plant_args(plant), y, u)
    res = kalman_filter(plant, y, u, method=method, form=form)
    assert_close(_np(res.means), ref["means"], 1e-10, "means")
    assert_close(_np(res.covariances), ref["covs"], 1e-10, "covariances")
    assert_close(_np(res.log_likelihood), ref["ll"], 1e-10, "log-likelihood")


@pytest.mark.parametrize("method,form", ALL)
def test_per_trajectory_missing_patterns(gen, rng, method, form):
    plant, K = make_problem(gen, rng, "stable")
    y, u = simulate(plant, K, 30, 3, rng)
    y[0, 5] = np.nan
    y[2, 7:9, 1] = np.nan
    sm = rts_smoother(plant, y, u, method=method, form=form)
    assert not sm.filtered.shared_covariances
    assert sm.filtered.covariances.shape == (3, 30, 3, 3) and sm.covariances.shape == (3, 30, 3, 3)
    for b in range(3):
        alone = rts_smoother(plant, y[b], u[b], method="sequential")
        assert_close(_np(sm.filtered.means[b]), _np(alone.filtered.means), TOL, "means")
        assert_close(_np(sm.filtered.covariances[b]), _np(alone.filtered.covariances), TOL, "covariances")
        assert_close(_np(sm.means[b]), _np(alone.means), TOL, "smoothed means")
        assert_close(_np(sm.log_likelihood[b]), _np(alone.log_likelihood), TOL, "log-likelihood")
    # the same pattern in every trajectory keeps the covariances shared
    y2 = np.nan_to_num(y)
    y2[:, 5] = np.nan
    y2[:, 8, 0] = np.nan
    same = kalman_filter(plant, y2, u, method=method, form=form)
    assert same.shared_covariances and same.covariances.shape == (30, 3, 3)


@pytest.mark.parametrize("method,form", ALL)
def test_all_missing_is_the_prior(gen, rng, method, form):
    plant, _ = make_problem(gen, rng, "stable", D=False)
    u = rng.standard_normal((20, 1))
    y = np.full((20, 2), np.nan)
    sm = rts_smoother(plant, y, u, method=method, form=form)
    assert float(sm.log_likelihood) == 0.0
    m, P = plant.m0, plant.P0
    for t in range(20):
        assert_close(_np(sm.means[t]), m, 1e-12, "mean")
        assert_close(_np(sm.covariances[t]), P, 1e-12, "covariance")
        m, P = plant.A @ m + plant.B @ u[t], plant.A @ P @ plant.A.T + plant.W


# --------------------------------------------------------------------------------------
# Shapes, method choice, edge cases
# --------------------------------------------------------------------------------------


def test_shapes_and_unbatched_input(gen, rng):
    plant, K = make_problem(gen, rng, "stable")
    y, u = simulate(plant, K, 12, 2, rng)
    r = kalman_filter(plant, y, u, method="parallel")
    assert r.means.shape == (2, 12, 3) and r.predicted_means.shape == (2, 12, 3)
    assert r.covariances.shape == (12, 3, 3) and r.predicted_covariances.shape == (12, 3, 3)
    assert r.log_likelihood.shape == (2,) and r.shared_covariances
    r1 = kalman_filter(plant, y[0], u[0], method="parallel")
    assert r1.means.shape == (12, 3) and r1.log_likelihood.shape == ()
    torch.testing.assert_close(r1.means, r.means[0])
    # a shared input (T, m) with a batch of y
    r2 = kalman_filter(plant, y, u[0], method="sequential")
    r3 = kalman_filter(plant, y, np.broadcast_to(u[:1], u.shape), method="sequential")
    torch.testing.assert_close(r2.means, r3.means)
    # results are immutable
    with pytest.raises(AttributeError):
        r.means = None  # type: ignore[misc]


@pytest.mark.parametrize("method,form", ALL)
def test_single_step(gen, rng, method, form):
    plant, _ = make_problem(gen, rng, "stable")
    y = rng.standard_normal((1, 2))
    u = rng.standard_normal((1, 1))
    sm = rts_smoother(plant, y, u, method=method, form=form)
    ref = np_filter(*plant_args(plant), y, u)
    assert_close(_np(sm.means), ref["means"], 1e-12, "means")
    assert_close(_np(sm.log_likelihood), ref["ll"], 1e-12, "log-likelihood")


def test_auto_rule():
    """The documented rule (docs/filtering.md): CPU parallel for T >= 64 and B n² <= 1024;
    CUDA parallel for T >= 20 unless the scan would not fit in the free memory."""
    assert choose_method(10, 4, 1, "cpu") == "sequential"
    assert choose_method(64, 4, 1, "cpu") == "parallel"
    assert choose_method(10_000, 4, 64, "cpu") == "parallel"
    assert choose_method(10_000, 20, 1, "cpu") == "parallel"
    assert choose_method(10_000, 20, 64, "cpu") == "sequential"
    assert choose_method(1000, 4, 1024, "cpu") == "sequential"
    assert choose_method(100, 4, 1024, "cuda") == "parallel"
    assert choose_method(19, 4, 1, "cuda") == "sequential"
    assert choose_method(100_000, 20, 1024, "cuda", free_memory=80e9) == "sequential"
    assert choose_method(100_000, 20, 1024, "cuda", dtype=torch.float32, free_memory=139e9) == "parallel"
    assert choose_method(100_000, 4, 1024, "cuda", free_memory=80e9) == "parallel"


def test_auto_records_the_choice(gen, rng):
    plant, K = make_problem(gen, rng, "stable")
    y, u = simulate(plant, K, 300, 1, rng)
    r = kalman_filter(plant, y, u)  # method="auto" by default
    assert r.method == choose_method(300, 3, 1, "cpu")
    r = kalman_filter(plant, y[:, :5], u[:, :5], method="auto", form="information")
    assert r.method == "sequential" and r.form is None


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


def test_errors_bad_input(gen, rng):
    plant, _ = make_problem(gen, rng, "stable")
    y = rng.standard_normal((2, 10, 2))
    u = rng.standard_normal((2, 10, 1))
    with pytest.raises(ShapeError, match=r"y has shape \(2, 10, 3\)"):
        kalman_filter(plant, rng.standard_normal((2, 10, 3)))
    with pytest.raises(ShapeError, match="y has shape"):
        kalman_filter(plant, rng.standard_normal(10))
    with pytest.raises(ShapeError, match="T = 0"):
        kalman_filter(plant, np.zeros((0, 2)))
    with pytest.raises(ShapeError, match="u has shape"):
        kalman_filter(plant, y, rng.standard_normal((2, 10, 2)))
    with pytest.raises(ShapeError, match="u has 9 time steps"):
        kalman_filter(plant, y, u[:, :9])
    with pytest.raises(ShapeError, match="batch"):
        kalman_filter(plant, y, rng.standard_normal((3, 10, 1)))
    bad = y.copy()
    bad[0, 3, 1] = np.inf
    with pytest.raises(NonFiniteError, match="y contains infinite"):
        kalman_filter(plant, bad)
    badu = u.copy()
    badu[1, 2] = np.nan
    with pytest.raises(NonFiniteError, match="u contains"):
        kalman_filter(plant, y, badu)
    with pytest.raises(ConfigError, match="method"):
        kalman_filter(plant, y, method="fast")
    with pytest.raises(ConfigError, match="form"):
        kalman_filter(plant, y, method="parallel", form="sqrt")
    with pytest.raises(ConfigError, match="method='parallel'"):
        kalman_filter(plant, y, method="sequential", form="information")
    with pytest.raises(ConfigError, match="scan"):
        kalman_filter(plant, y, scan="blelloch")
    with pytest.raises(ConfigError, match="dtype"):
        kalman_filter(plant, y, dtype=torch.int32)
    with pytest.raises(ShapeError, match="model must be"):
        kalman_filter({"A": 1}, y)
    no_input = LinearGaussianModel(plant.A, None, plant.C, W=plant.W, V=plant.V)
    with pytest.raises(ShapeError, match="no input"):
        kalman_filter(no_input, y, u)
    for exc in (ShapeError, NonFiniteError, ConfigError):
        assert issubclass(exc, LqgtError) and issubclass(exc, ValueError)


def test_errors_bad_model(rng):
    A, C = np.eye(2), np.array([[1.0, 0.0]])
    W, V = 0.1 * np.eye(2), np.array([[0.5]])
    with pytest.raises(ShapeError, match=r"C has shape \(1, 3\)"):
        LinearGaussianModel(A, None, np.ones((1, 3)), W=W, V=V)
    with pytest.raises(ShapeError, match="W has shape"):
        LinearGaussianModel(A, None, C, W=np.eye(3), V=V)
    with pytest.raises(NotPositiveDefiniteError, match="V must be positive definite"):
        LinearGaussianModel(A, None, C, W=W, V=[[0.0]])
    with pytest.raises(NotPositiveDefiniteError, match="W must be positive semidefinite at step 3"):
        Ws = np.stack([W] * 5)
        Ws[3] = -W
        LinearGaussianModel(A, None, C, W=Ws, V=V)
    with pytest.raises(NotSymmetricError, match="W must be symmetric"):
        LinearGaussianModel(A, None, C, W=[[0.1, 0.05], [0.0, 0.1]], V=V)
    with pytest.raises(NonFiniteError, match="A contains"):
        LinearGaussianModel([[np.nan, 0], [0, 1]], None, C, W=W, V=V)
    with pytest.raises(ShapeError, match="disagree"):
        LinearGaussianModel(A, None, np.stack([C] * 4), W=W, V=np.stack([V] * 5))
    with pytest.raises(ShapeError, match="T or T - 1"):
        LinearGaussianModel(np.stack([A] * 7), None, np.stack([C] * 4), W=W, V=V)
    with pytest.raises(ShapeError, match="D was given"):
        LinearGaussianModel(A, None, C, W=W, V=V, D=[[1.0]])
    model = LinearGaussianModel(A, None, np.stack([C] * 4), W=W, V=V)
    with pytest.raises(ShapeError, match="4 steps but y has T = 5"):
        kalman_filter(model, rng.standard_normal((5, 1)))
    # the information form needs W and P0 positive definite
    singular = LinearGaussianModel(A, None, C, W=np.diag([0.1, 0.0]), V=V)
    y = rng.standard_normal((6, 1))
    with pytest.raises(NotPositiveDefiniteError, match="W must be positive definite for form='information'"):
        kalman_filter(singular, y, method="parallel", form="information")
    kalman_filter(singular, y, method="parallel", form="covariance")  # fine
    # a singular predicted covariance stops the smoother with a clear error
    frozen = LinearGaussianModel(np.zeros((2, 2)), None, C, W=np.zeros((2, 2)), V=V)
    for method in ("sequential", "parallel"):
        with pytest.raises(NotPositiveDefiniteError, match="predicted covariance"):
            rts_smoother(frozen, y, method=method)
