"""Plant construction and conversions: ZOH + Van Loan against python-control and quadrature."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg

import control
import lqgt


def _continuous_cases():
    rng = np.random.default_rng(2024)
    cases = []
    # double integrator (nilpotent Ac, singular: no Ac^-1 tricks possible)
    cases.append(("double_integrator", np.array([[0.0, 1.0], [0.0, 0.0]]), np.array([[0.0], [1.0]]),
                  np.array([[1.0, 0.0]]), np.diag([0.0, 0.3]), 0.1))
    # lightly damped oscillator
    w0, z = 3.0, 0.05
    cases.append(("oscillator", np.array([[0.0, 1.0], [-w0 ** 2, -2 * z * w0]]), np.array([[0.0], [1.0]]),
                  np.array([[1.0, 0.0]]), np.diag([0.01, 0.2]), 0.05))
    # random: stable, unstable, mixed, with several inputs / outputs and a full Wc
    for i, (n, m, p, shift, dt) in enumerate([(1, 1, 1, 0.5, 0.2), (3, 2, 1, -1.0, 0.1), (4, 1, 2, 0.3, 0.05),
                                               (6, 3, 2, 0.0, 0.5), (8, 2, 3, -0.5, 0.02)]):
        Ac = rng.standard_normal((n, n)) + shift * np.eye(n)
        Bc = rng.standard_normal((n, m))
        C = rng.standard_normal((p, n))
        F = rng.standard_normal((n, n))
        cases.append((f"random{i}", Ac, Bc, C, F @ F.T / n, dt))
    return cases


CONT = _continuous_cases()


@pytest.mark.parametrize("name,Ac,Bc,C,Wc,dt", CONT, ids=[c[0] for c in CONT])
def test_from_continuous_matches_control_sample_system(name, Ac, Bc, C, Wc, dt):
    p = C.shape[0]
    plant = lqgt.Plant.from_continuous(Ac, Bc, C, Wc=Wc, V=np.eye(p), dt=dt)
    sysd = control.sample_system(control.ss(Ac, Bc, C, np.zeros((p, Bc.shape[1]))), dt, "zoh")
    scale = max(1.0, np.abs(sysd.A).max())
    np.testing.assert_allclose(plant.A, sysd.A, rtol=1e-12, atol=1e-13 * scale)
    np.testing.assert_allclose(plant.B, sysd.B, rtol=1e-12, atol=1e-13 * max(1.0, np.abs(sysd.B).max()))
    np.testing.assert_array_equal(plant.C, C)
    assert plant.dt == dt


@pytest.mark.parametrize("name,Ac,Bc,C,Wc,dt", CONT, ids=[c[0] for c in CONT])
def test_from_continuous_noise_matches_quadrature(name, Ac, Bc, C, Wc, dt):
    plant = lqgt.Plant.from_continuous(Ac, Bc, C, Wc=Wc, V=np.eye(C.shape[0]), dt=dt)

    def integrand(s):
        E = scipy.linalg.expm(Ac * s)
        return E @ Wc @ E.T

    # adaptive Gauss-Kronrod quadrature of the matrix integrand
    Wq, _ = scipy.integrate.quad_vec(integrand, 0.0, dt, epsabs=0.0, epsrel=1e-12, norm="max")
    scale = max(np.abs(Wq).max(), 1e-300)
    assert np.abs(plant.W - Wq).max() <= 1e-10 * scale
    # composite Simpson with expm at 401 nodes: a second, fixed-step quadrature
    s = np.linspace(0.0, dt, 401)
    Ws = scipy.integrate.simpson(np.stack([integrand(si) for si in s]), x=s, axis=0)
    assert np.abs(plant.W - Ws).max() <= 1e-8 * scale
    # the continuous Lyapunov identity  Ac W + W Ac' = e^{Ac dt} Wc e^{Ac' dt} - Wc
    Ad = scipy.linalg.expm(Ac * dt)
    lhs = Ac @ plant.W + plant.W @ Ac.T
    rhs = Ad @ Wc @ Ad.T - Wc
    assert np.abs(lhs - rhs).max() <= 1e-10 * max(1.0, np.abs(rhs).max())
    # W is symmetric PSD
    np.testing.assert_array_equal(plant.W, plant.W.T)
    assert np.linalg.eigvalsh(plant.W).min() >= -1e-14 * scale


def test_double_integrator_closed_form():
    dt, q = 0.1, 0.3
    plant = lqgt.Plant.from_continuous([[0.0, 1.0], [0.0, 0.0]], [[0.0], [1.0]], [[1.0, 0.0]],
                                       Wc=np.diag([0.0, q]), V=[[0.01]], dt=dt)
    np.testing.assert_allclose(plant.A, [[1.0, dt], [0.0, 1.0]], rtol=0, atol=1e-15)
    np.testing.assert_allclose(plant.B, [[dt * dt / 2], [dt]], rtol=1e-14, atol=0)
    np.testing.assert_allclose(plant.W, q * np.array([[dt ** 3 / 3, dt ** 2 / 2], [dt ** 2 / 2, dt]]),
                               rtol=1e-12, atol=0)


def test_from_continuous_passes_options():
    P0 = np.diag([2.0, 3.0])
    plant = lqgt.Plant.from_continuous([[0.0, 1.0], [-1.0, -0.1]], [[0.0], [1.0]], [[1.0, 0.0]],
                                       Wc=np.eye(2), V=[[0.1]], dt=0.2, D=[[0.5]], m0=[1.0, -1.0], P0=P0)
    np.testing.assert_array_equal(plant.D, [[0.5]])
    np.testing.assert_array_equal(plant.m0, [1.0, -1.0])
    np.testing.assert_array_equal(plant.P0, P0)
    np.testing.assert_array_equal(plant.V, [[0.1]])


# ----------------------------------------------------------------------------- from/to StateSpace


def _random_discrete(rng, n=3, m=2, p=2):
    A = rng.standard_normal((n, n)) * 0.4
    B = rng.standard_normal((n, m))
    C = rng.standard_normal((p, n))
    D = rng.standard_normal((p, m))
    return A, B, C, D


def test_from_statespace_discrete():
    rng = np.random.default_rng(0)
    A, B, C, D = _random_discrete(rng)
    W, V = np.eye(3) * 0.1, np.eye(2) * 0.2
    sys = control.ss(A, B, C, D, 0.05)
    plant = lqgt.Plant.from_statespace(sys, W=W, V=V)
    for got, want in ((plant.A, A), (plant.B, B), (plant.C, C), (plant.D, D), (plant.W, W), (plant.V, V)):
        np.testing.assert_array_equal(got, want)
    assert plant.dt == 0.05
    # dt given and equal is fine; a different dt is refused
    assert lqgt.Plant.from_statespace(sys, W=W, V=V, dt=0.05).dt == 0.05
    with pytest.raises(lqgt.LqgtError, match=r"dt"):
        lqgt.Plant.from_statespace(sys, W=W, V=V, dt=0.1)
    # dt=True (unspecified discrete sample time) means one step
    plant1 = lqgt.Plant.from_statespace(control.ss(A, B, C, D, True), W=W, V=V)
    assert plant1.dt == 1.0


def test_from_statespace_continuous_equals_from_continuous():
    Ac = np.array([[0.0, 1.0], [-2.0, -0.3]])
    Bc = np.array([[0.0], [1.0]])
    C = np.array([[1.0, 0.0]])
    Wc = np.diag([0.0, 0.5])
    sys = control.ss(Ac, Bc, C, 0)
    plant = lqgt.Plant.from_statespace(sys, W=Wc, V=[[0.1]], dt=0.1)
    ref = lqgt.Plant.from_continuous(Ac, Bc, C, Wc=Wc, V=[[0.1]], dt=0.1)
    for k in ("A", "B", "C", "D", "W", "V"):
        np.testing.assert_allclose(getattr(plant, k), getattr(ref, k), rtol=1e-14, atol=1e-16)
    assert plant.dt == 0.1
    with pytest.raises(lqgt.LqgtError, match=r"continuous.*dt="):
        lqgt.Plant.from_statespace(sys, W=Wc, V=[[0.1]])


def test_from_statespace_rejects_non_statespace():
    with pytest.raises(lqgt.LqgtError, match=r"StateSpace"):
        lqgt.Plant.from_statespace(np.eye(2), W=np.eye(2), V=np.eye(1))
    with pytest.raises(lqgt.LqgtError, match=r"StateSpace"):
        lqgt.Plant.from_statespace(control.tf([1], [1, 2, 1]), W=np.eye(2), V=np.eye(1))


def test_to_statespace_round_trip():
    rng = np.random.default_rng(1)
    A, B, C, D = _random_discrete(rng, 4, 1, 2)
    W, V = np.eye(4), 0.5 * np.eye(2)
    plant = lqgt.Plant(A, B, C, W=W, V=V, D=D, dt=0.25)
    sys = plant.to_statespace()
    assert isinstance(sys, control.StateSpace)
    assert sys.dt == 0.25
    for got, want in ((sys.A, A), (sys.B, B), (sys.C, C), (sys.D, D)):
        np.testing.assert_array_equal(np.asarray(got), want)
    back = lqgt.Plant.from_statespace(sys, W=W, V=V)
    for k in ("A", "B", "C", "D", "W", "V"):
        np.testing.assert_array_equal(getattr(back, k), getattr(plant, k))
    assert back.dt == plant.dt
    # the state-space object really is the deterministic plant: compare a step response
    T = 30
    u = np.ones((1, T))
    resp = control.forced_response(sys, T=np.arange(T) * 0.25, U=u)
    x = np.zeros(4)
    ys = []
    for t in range(T):
        ys.append(C @ x + D @ u[:, t])
        x = A @ x + B @ u[:, t]
    np.testing.assert_allclose(np.asarray(resp.outputs).reshape(2, T), np.array(ys).T, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- the Plant object


def test_plant_defaults_and_dims():
    plant = lqgt.Plant([[1.0, 0.1], [0.0, 1.0]], [[0.0], [0.1]], [[1.0, 0.0]], W=0.01 * np.eye(2), V=[[0.1]])
    assert (plant.n, plant.m, plant.p) == (2, 1, 1)
    np.testing.assert_array_equal(plant.D, np.zeros((1, 1)))
    np.testing.assert_array_equal(plant.m0, np.zeros(2))
    np.testing.assert_array_equal(plant.P0, np.eye(2))
    assert plant.dt == 1.0
    assert not plant.has_feedthrough
    for k in ("A", "B", "C", "D", "W", "V", "m0", "P0"):
        assert getattr(plant, k).dtype == np.float64
    assert "n=2" in repr(plant)


def test_plant_scalars_and_vectors():
    plant = lqgt.Plant(0.9, 1.0, 2.0, W=0.5, V=0.1, m0=3.0)
    assert (plant.n, plant.m, plant.p) == (1, 1, 1)
    assert plant.A.shape == (1, 1) and plant.C[0, 0] == 2.0
    np.testing.assert_array_equal(plant.m0, [3.0])
    # m0 as a column is accepted and flattened
    p2 = lqgt.Plant(np.eye(2), np.eye(2), np.eye(2), W=np.eye(2), V=np.eye(2), m0=[[1.0], [2.0]])
    np.testing.assert_array_equal(p2.m0, [1.0, 2.0])


def test_plant_is_immutable_and_does_not_alias_inputs():
    A = np.array([[0.5, 0.1], [0.0, 0.7]])
    W = np.eye(2)
    plant = lqgt.Plant(A, np.eye(2), np.eye(2), W=W, V=np.eye(2))
    A[0, 0] = 100.0
    W[1, 1] = -5.0
    assert plant.A[0, 0] == 0.5 and plant.W[1, 1] == 1.0
    with pytest.raises(ValueError):
        plant.A[0, 0] = 2.0  # read-only array
    with pytest.raises(dataclasses.FrozenInstanceError):
        plant.A = np.eye(2)


def test_plant_symmetrizes_tiny_asymmetry():
    W = np.array([[1.0, 0.2], [0.2 + 1e-13, 1.0]])
    plant = lqgt.Plant(np.eye(2) * 0.5, np.eye(2), np.eye(2), W=W, V=np.eye(2))
    np.testing.assert_array_equal(plant.W, plant.W.T)


def test_plant_feedthrough_and_with_noise():
    plant = lqgt.Plant(0.5 * np.eye(2), np.ones((2, 1)), np.eye(2), W=np.eye(2), V=np.eye(2), D=[[1.0], [0.0]],
                       m0=[1.0, 2.0], P0=2 * np.eye(2), dt=0.3)
    assert plant.has_feedthrough
    p2 = plant.with_noise(W=3 * np.eye(2))
    np.testing.assert_array_equal(p2.W, 3 * np.eye(2))
    np.testing.assert_array_equal(p2.V, plant.V)
    for k in ("A", "B", "C", "D", "m0", "P0"):
        np.testing.assert_array_equal(getattr(p2, k), getattr(plant, k))
    assert p2.dt == 0.3
    p3 = plant.with_noise(V=5 * np.eye(2))
    np.testing.assert_array_equal(p3.V, 5 * np.eye(2))
    np.testing.assert_array_equal(p3.W, plant.W)
    with pytest.raises(lqgt.errors.NotPositiveDefiniteError, match="V"):
        plant.with_noise(V=np.zeros((2, 2)))
