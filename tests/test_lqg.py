"""lqg / lqg_cost against closed forms and an independent brute-force covariance computation.

Closed forms (derived by completing the square; valid with a cross weight N): for any
policy with a stationary distribution, with X the control DARE solution and
K = (R + B'XB)^-1 (B'XA + N'),

    x'Qx + u'Ru + 2x'Nu + E[x+' X x+ | x, u] - x'Xx = (u + Kx)'(R + B'XB)(u + Kx) + tr(XW),

so the average cost is J = tr(XW) + E[(u + Kx)'(R + B'XB)(u + Kx)]. With u = -K x̂,
u + Kx = K(x - x̂), whose covariance is Pf = P - PC'(CPC'+V)^-1 CP for the filter
("current") estimate and P for the predictor estimate:

    J_current   = tr(XW) + tr((R + B'XB) K Pf K')
    J_predictor = tr(XW) + tr((R + B'XB) K P  K')

The brute force transcribes the loop equations into a step function, extracts its linear
maps by evaluating it on unit vectors (no hand-built block matrices) and sums the
covariance series by doubling (Σ = Σ_k F^k GNG' F'^k, 2^60 terms): nothing shared with
lqgt.closed_loop or scipy's Lyapunov solver.
"""

from __future__ import annotations

import numpy as np
import pytest

import lqgt
from lqgt import plants as named_plants

# ----------------------------------------------------------------------------- helpers


def _closed_form(plant, Q, R, design):
    A, B, C, W, V = plant.A, plant.B, plant.C, plant.W, plant.V
    X, P, K = design.X, design.P, design.K
    Pf = P - P @ C.T @ np.linalg.solve(C @ P @ C.T + V, C @ P)
    G = R + B.T @ X @ B
    base = np.trace(X @ W)
    return base + np.trace(G @ K @ Pf @ K.T), base + np.trace(G @ K @ P @ K.T)


def _step_predictor(plant, model, K, L):
    A, B, C, D = plant.A, plant.B, plant.C, plant.D
    Ae, Be, Ce, De = model.A, model.B, model.C, model.D
    n = plant.n

    def step(s, w, v):
        x, xh = s[:n], s[n:]
        u = -K @ xh  # u[t] from x̂[t|t-1]
        y = C @ x + D @ u + v
        x_next = A @ x + B @ u + w
        xh_next = Ae @ xh + Be @ u + L @ (y - Ce @ xh - De @ u)
        return np.concatenate([x_next, xh_next]), np.concatenate([x, u])

    return step


def _step_current(plant, model, K, Lf):
    A, B, C = plant.A, plant.B, plant.C
    Ae, Be, Ce = model.A, model.B, model.C
    n = plant.n

    def step(s, w, v):
        x, xbar = s[:n], s[n:]  # xbar = x̂[t|t-1]
        y = C @ x + v
        xh = xbar + Lf @ (y - Ce @ xbar)  # x̂[t|t]
        u = -K @ xh
        x_next = A @ x + B @ u + w
        xbar_next = Ae @ xh + Be @ u
        return np.concatenate([x_next, xbar_next]), np.concatenate([x, u])

    return step


def brute_force_cost(plant, Q, R, K, gain, form, N=None, model=None, iters=60):
    """Stationary average cost by series summation of the augmented covariance."""
    model = plant if model is None else model
    n, m, p = plant.n, plant.m, plant.p
    step = (_step_predictor if form == "predictor" else _step_current)(plant, model, K, gain)
    ns = 2 * n
    F = np.zeros((ns, ns)); H = np.zeros((n + m, ns))
    Gw = np.zeros((ns, n)); Gv = np.zeros((ns, p)); Jv = np.zeros((n + m, p))
    zs, zw, zv = np.zeros(ns), np.zeros(n), np.zeros(p)
    for i in range(ns):
        e = np.zeros(ns); e[i] = 1.0
        F[:, i], H[:, i] = step(e, zw, zv)
    for j in range(n):
        e = np.zeros(n); e[j] = 1.0
        Gw[:, j], hz = step(zs, e, zv)
        assert not hz.any()  # w[t] does not act on x[t], u[t]
    for j in range(p):
        e = np.zeros(p); e[j] = 1.0
        Gv[:, j], Jv[:, j] = step(zs, zw, e)
    S = Gw @ plant.W @ Gw.T + Gv @ plant.V @ Gv.T
    Fk = F
    with np.errstate(over="ignore", invalid="ignore"):
        return _sum_series(S, Fk, H, Jv, plant, Q, R, N, iters)


def _sum_series(S, Fk, H, Jv, plant, Q, R, N, iters):
    n, m = plant.n, plant.m
    for _ in range(iters):
        S = S + Fk @ S @ Fk.T
        Fk = Fk @ Fk
        if not np.all(np.isfinite(S)) or np.abs(S).max() > 1e200:
            return np.inf
        if np.abs(Fk).max() < 1e-300:
            break
    if np.abs(Fk).max() > 1e-8:  # the series has not converged: unstable loop
        return np.inf
    N = np.zeros((n, m)) if N is None else N
    Qz = np.block([[Q, N], [N.T, R]])
    covz = H @ S @ H.T + Jv @ plant.V @ Jv.T
    return float(np.sum(Qz * covz))


def _random_plant(gen, rng, n, m, p, kind="unstable"):
    pr = gen.random_problem(rng, n, m, p, kind)
    plant = lqgt.Plant(pr["A"], pr["B"], pr["C"], W=pr["W"], V=pr["V"])
    return plant, pr["Q"], pr["R"], pr["N"]


def _examples(gen):
    """(name, plant, Q, R, N): named plants plus random ones, some with a cross weight."""
    out = []
    for name in ("two_mass", "double_integrator", "cart_pole", "scalar_unstable", "oscillator"):
        ex = named_plants.get(name)
        out.append((name, ex.plant, ex.Q, ex.R, None))
    rng = np.random.default_rng(123)
    for i, (n, m, p, kind) in enumerate([(3, 1, 1, "unstable"), (5, 2, 2, "marginal"), (4, 2, 1, "stable"),
                                          (6, 2, 3, "cross"), (3, 1, 2, "cross"), (8, 3, 2, "unstable")]):
        plant, Q, R, N = _random_plant(gen, rng, n, m, p, kind)
        out.append((f"random{i}-{kind}", plant, Q, R, N))
    return out


EXAMPLE_IDS = ["two_mass", "double_integrator", "cart_pole", "scalar_unstable", "oscillator",
               "random0-unstable", "random1-marginal", "random2-stable", "random3-cross",
               "random4-cross", "random5-unstable"]


_EXAMPLES_CACHE: list = []


@pytest.fixture(params=range(len(EXAMPLE_IDS)), ids=EXAMPLE_IDS)
def example(request, gen):
    if not _EXAMPLES_CACHE:
        _EXAMPLES_CACHE.extend(_examples(gen))
    assert [e[0] for e in _EXAMPLES_CACHE] == EXAMPLE_IDS
    return _EXAMPLES_CACHE[request.param]


def _rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


# ----------------------------------------------------------------------------- design


def test_design_fields(example, gen):
    name, plant, Q, R, N = example
    d = lqgt.lqg(plant, Q, R, N)
    K, X, _ = lqgt.dlqr(plant.A, plant.B, Q, R, N)
    L, P, _ = lqgt.dlqe(plant.A, plant.C, plant.W, plant.V)
    assert np.allclose(d.K, K, rtol=1e-12, atol=0) and np.allclose(d.X, X, rtol=1e-12, atol=0)
    assert np.allclose(d.L, L, rtol=1e-12, atol=0) and np.allclose(d.P, P, rtol=1e-12, atol=0)
    C, V = plant.C, plant.V
    Lf = P @ C.T @ np.linalg.inv(C @ P @ C.T + V)
    assert gen.rel_err(d.Lf, Lf) <= 1e-12
    assert gen.rel_err(d.L, plant.A @ d.Lf) <= 1e-10  # predictor gain = A × filter gain
    assert d.K.shape == (plant.m, plant.n) and d.L.shape == (plant.n, plant.p)
    assert d.Lf.shape == (plant.n, plant.p)
    assert np.array_equal(d.Q, Q) and np.array_equal(d.R, R)
    assert np.array_equal(d.N, np.zeros((plant.n, plant.m)) if N is None else N)
    assert isinstance(d.cost, float) and isinstance(d.cost_predictor, float)


def test_design_cost_closed_form(example):
    name, plant, Q, R, N = example
    d = lqgt.lqg(plant, Q, R, N)
    Jc, Jp = _closed_form(plant, Q, R, d)
    assert _rel(d.cost, Jc) <= 1e-9
    assert _rel(d.cost_predictor, Jp) <= 1e-9
    # using the current estimate is never worse than the one-step-old one
    assert d.cost <= d.cost_predictor * (1 + 1e-12)
    assert d.cost > 0


def test_design_cost_brute_force(example):
    name, plant, Q, R, N = example
    d = lqgt.lqg(plant, Q, R, N)
    assert _rel(d.cost, brute_force_cost(plant, Q, R, d.K, d.Lf, "current", N)) <= 1e-9
    assert _rel(d.cost_predictor, brute_force_cost(plant, Q, R, d.K, d.L, "predictor", N)) <= 1e-9
    assert _rel(lqgt.lqg_cost(plant, Q, R, d.K, d.Lf, form="current", N=N), d.cost) <= 1e-12
    assert _rel(lqgt.lqg_cost(plant, Q, R, d.K, d.L, form="predictor", N=N), d.cost_predictor) <= 1e-12


def test_scalar_by_hand():
    """x+ = a x + u + w, y = x + v, W = V = q = r = 1, a = 1.2: everything in closed form."""
    a = 1.2
    ex = named_plants.scalar_unstable(a)
    d = lqgt.lqg(ex.plant, ex.Q, ex.R)
    # X = a²X - a²X²/(1 + X) + 1  <=>  X² - a² X - 1 = 0 (the filter DARE is the same)
    X = (a * a + np.sqrt(a ** 4 + 4)) / 2
    k = a * X / (1 + X)
    Pf = X - X * X / (X + 1)
    assert d.X[0, 0] == pytest.approx(X, rel=1e-13)
    assert d.P[0, 0] == pytest.approx(X, rel=1e-13)
    assert d.K[0, 0] == pytest.approx(k, rel=1e-13)
    assert d.Lf[0, 0] == pytest.approx(X / (X + 1), rel=1e-13)
    assert d.L[0, 0] == pytest.approx(a * X / (X + 1), rel=1e-13)
    assert d.cost == pytest.approx(X + (1 + X) * k * k * Pf, rel=1e-12)
    assert d.cost_predictor == pytest.approx(X + (1 + X) * k * k * X, rel=1e-12)


# ----------------------------------------------------------------------------- optimality


def _perturbation_check(f, J0, x0, rng, n_dirs=12, steps=(1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)):
    """f(x) >= J0 along random directions at many step sizes, and zero first derivative."""
    scale = max(np.linalg.norm(x0), 1e-3)
    for _ in range(n_dirs):
        D = rng.standard_normal(x0.shape)
        D *= scale / np.linalg.norm(D)
        for s in steps:
            for sign in (1.0, -1.0):
                J = f(x0 + sign * s * D)
                assert J >= J0 * (1 - 1e-11), (s, sign, J, J0)
        # first-order optimality: f(h) - f(-h) is O(h^3), f(h) + f(-h) - 2 f(0) is O(h^2)
        # (a nonzero gradient would make |f(h) - f(-h)| / curvature grow like 1/h)
        h = 1e-4
        jp, jm = f(x0 + h * D), f(x0 - h * D)
        curv = jp + jm - 2 * J0
        assert curv >= -1e-11 * J0
        assert abs(jp - jm) <= 0.05 * curv + 1e-10 * J0, (jp, jm, J0)


@pytest.mark.parametrize("form", ["current", "predictor"])
def test_design_is_minimum(example, form, rng):
    name, plant, Q, R, N = example
    d = lqgt.lqg(plant, Q, R, N)
    gain = d.Lf if form == "current" else d.L
    J0 = d.cost if form == "current" else d.cost_predictor

    def cost(K, G):
        return lqgt.lqg_cost(plant, Q, R, K, G, form=form, N=N)

    assert cost(d.K, gain) == pytest.approx(J0, rel=1e-12)
    _perturbation_check(lambda K: cost(K, gain), J0, d.K, rng)
    _perturbation_check(lambda G: cost(d.K, G), J0, gain, rng)
    nK = d.K.size
    both = np.concatenate([d.K.ravel(), gain.ravel()])
    _perturbation_check(lambda z: cost(z[:nK].reshape(d.K.shape), z[nK:].reshape(gain.shape)), J0, both, rng,
                        n_dirs=6)


def test_other_designs_cost_more(example):
    """Gains designed for wrong weights or wrong noise are feasible and cost more."""
    name, plant, Q, R, N = example
    d = lqgt.lqg(plant, Q, R, N)
    n, m, p = plant.n, plant.m, plant.p
    for q_scale, w_scale in [(10.0, 1.0), (1.0, 10.0), (0.1, 0.1)]:
        K2, _, _ = lqgt.dlqr(plant.A, plant.B, q_scale * Q + 1e-3 * np.eye(n), R)
        L2, P2, _ = lqgt.dlqe(plant.A, plant.C, w_scale * plant.W + 1e-3 * np.eye(n), plant.V)
        Lf2 = P2 @ plant.C.T @ np.linalg.inv(plant.C @ P2 @ plant.C.T + plant.V)
        assert lqgt.lqg_cost(plant, Q, R, K2, Lf2, form="current", N=N) >= d.cost * (1 - 1e-12)
        assert lqgt.lqg_cost(plant, Q, R, K2, L2, form="predictor", N=N) >= d.cost_predictor * (1 - 1e-12)


# ----------------------------------------------------------------------------- lqg_cost in general


@pytest.mark.parametrize("form", ["current", "predictor"])
def test_lqg_cost_matches_brute_force_for_nonoptimal_gains(example, form, rng):
    name, plant, Q, R, N = example
    d = lqgt.lqg(plant, Q, R, N)
    gain0 = d.Lf if form == "current" else d.L
    checked = 0
    for trial in range(30):
        amp = 0.3 if trial % 2 else 0.1
        K = d.K * (1 + amp * rng.standard_normal(d.K.shape))
        G = gain0 * (1 + amp * rng.standard_normal(gain0.shape))
        J = lqgt.lqg_cost(plant, Q, R, K, G, form=form, N=N)
        Jb = brute_force_cost(plant, Q, R, K, G, form, N)
        if np.isinf(Jb):
            assert np.isinf(J)
            continue
        assert np.isfinite(J)
        assert _rel(J, Jb) <= 1e-8, (J, Jb)
        checked += 1
    assert checked >= 10


def test_lqg_cost_model_mismatch_and_feedthrough(gen):
    """The observer's model differs from the plant; the predictor form with D != 0."""
    rng = np.random.default_rng(77)
    plant, Q, R, N = _random_plant(gen, rng, 4, 2, 2, "unstable")
    model = lqgt.Plant(plant.A + 0.02 * rng.standard_normal((4, 4)), plant.B * 1.1, plant.C,
                       W=plant.W, V=plant.V)
    d = lqgt.lqg(plant, Q, R)
    for form, G in (("current", d.Lf), ("predictor", d.L)):
        J = lqgt.lqg_cost(plant, Q, R, d.K, G, form=form, model=model)
        Jb = brute_force_cost(plant, Q, R, d.K, G, form, model=model)
        assert np.isfinite(J) and _rel(J, Jb) <= 1e-9
        assert J >= lqgt.lqg_cost(plant, Q, R, d.K, G, form=form) * (1 - 1e-12)
    # feedthrough, known to the observer
    Dm = 0.3 * rng.standard_normal((2, 2))
    plantD = lqgt.Plant(plant.A, plant.B, plant.C, W=plant.W, V=plant.V, D=Dm)
    J = lqgt.lqg_cost(plantD, Q, R, d.K, d.L, form="predictor")
    assert _rel(J, brute_force_cost(plantD, Q, R, d.K, d.L, "predictor")) <= 1e-9
    # a known feedthrough is subtracted by the observer: same cost as without it
    assert _rel(J, d.cost_predictor) <= 1e-9


def test_lqg_cost_inf_when_unstable(gen):
    ex = named_plants.scalar_unstable(1.2)
    plant, Q, R = ex
    d = lqgt.lqg(plant, Q, R)
    # no feedback on an unstable plant
    for form, G in (("current", d.Lf), ("predictor", d.L)):
        assert lqgt.lqg_cost(plant, Q, R, np.zeros((1, 1)), G, form=form) == np.inf
        # observer that ignores the measurement: estimation error grows like 1.2^t
        assert lqgt.lqg_cost(plant, Q, R, d.K, np.zeros((1, 1)), form=form) == np.inf
        # feedback with the wrong sign
        assert lqgt.lqg_cost(plant, Q, R, -d.K, G, form=form) == np.inf
    # a larger random unstable plant with K = 0
    rng = np.random.default_rng(4)
    plant, Q, R, N = _random_plant(gen, rng, 6, 2, 2, "unstable")
    d = lqgt.lqg(plant, Q, R)
    assert lqgt.lqg_cost(plant, Q, R, np.zeros((2, 6)), d.L, form="predictor") == np.inf
    assert brute_force_cost(plant, Q, R, np.zeros((2, 6)), d.L, "predictor") == np.inf
    # a marginally stable loop (|lambda| = 1 exactly) has no finite average cost either
    plant = lqgt.Plant([[1.0]], [[1.0]], [[1.0]], W=[[1.0]], V=[[1.0]])
    assert lqgt.lqg_cost(plant, [[1.0]], [[1.0]], [[0.0]], [[0.5]], form="predictor") == np.inf


def test_lqg_cost_accepts_lists_and_default_form():
    ex = named_plants.oscillator()
    d = lqgt.lqg(ex.plant, ex.Q, ex.R)
    J = lqgt.lqg_cost(ex.plant, ex.Q.tolist(), ex.R.tolist(), d.K.tolist(), d.L.tolist())
    assert J == pytest.approx(d.cost_predictor, rel=1e-12)  # default form is "predictor"


def test_design_cost_with_feedthrough_equals_cost_without_it():
    plant, Q, R = lqgt.plants.two_mass()
    with_d = lqgt.Plant(plant.A, plant.B, plant.C, D=[[0.3], [-0.1]], W=plant.W, V=plant.V, dt=plant.dt)
    d0, d1 = lqgt.lqg(plant, Q, R), lqgt.lqg(with_d, Q, R)
    assert np.isfinite(d1.cost) and d1.cost == pytest.approx(d0.cost, rel=1e-12)
    # the predictor form handles D directly: same cost as without D (the known D u is subtracted)
    assert d1.cost_predictor == pytest.approx(d0.cost_predictor, rel=1e-10)
