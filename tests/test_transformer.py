"""Tests of the Transformer Filter (SPEC §3; issue 4).

Everything the filter claims is checked against code written here, independently of
``lqgt.estimators.transformer``:

* the predictor gain ``L`` and the value map ``M`` from scipy's DARE (not ``lqgt.dlqe``);
* a literal numpy loop of SPEC §3 (window ``max(0, t-H+1) … t``, ``x̃[0] = m0``,
  ``α = softmax(-β‖z_t - z_i‖²_S)``, ``x̃[t+1] = Σ α M z_i``) and a numpy
  Nadaraya–Watson smoother for random token windows;
* the certificate ``ε(β)`` from its formula;
* the Kalman predictor (the library's, and a numpy recursion for open-loop data).

The tests would fail for the usual construction mistakes: the filter gain ``Lf`` in ``M``,
a wrong sign in the logits, ``M`` without ``-BK`` in closed loop, an off-by-one window, or
a wrong start-up (``x̃[0]`` or the first ``H`` windows).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

import lqgt
from lqgt import errors, plants
from lqgt.estimators.transformer import TransformerFilterAttention, quadratic_embedding

F64 = torch.float64


# ---------------------------------------------------------------------------------------
# independent helpers
# ---------------------------------------------------------------------------------------


def predictor_gain(plant: lqgt.Plant) -> tuple[np.ndarray, np.ndarray]:
    """``L = A P C'(CPC' + V)^{-1}`` and ``P`` from scipy's filter DARE (not lqgt.dlqe)."""
    A, C = plant.A, plant.C
    P = scipy.linalg.solve_discrete_are(A.T, C.T, np.array(plant.W), np.array(plant.V))
    P = 0.5 * (P + P.T)
    L = A @ P @ C.T @ np.linalg.inv(C @ P @ C.T + plant.V)
    return L, P


def value_map(plant: lqgt.Plant, L: np.ndarray, K: np.ndarray | None) -> np.ndarray:
    """SPEC §3: ``[A - LC, L, B - LD]`` (exogenous u) or ``[A - BK - LC + LDK, L]`` (u = -K x̃).

    ``D`` is folded in so that ``M z`` is exactly the Kalman predictor step
    ``A x + B u + L (y - C x - D u)`` (``D = 0`` gives the SPEC's formulas).
    """
    A, B, C, D = plant.A, plant.B, plant.C, plant.D
    if K is None:
        return np.hstack([A - L @ C, L, B - L @ D])
    return np.hstack([A - B @ K - L @ C + L @ D @ K, L])


def whitening(plant: lqgt.Plant, P: np.ndarray, d: int) -> np.ndarray:
    """``S = diag(P^{-1}, (CPC' + V)^{-1}, I)``."""
    Sy = plant.C @ P @ plant.C.T + plant.V
    blocks = [np.linalg.inv(P), np.linalg.inv(Sy)]
    if d > plant.n + plant.p:
        blocks.append(np.eye(d - plant.n - plant.p))
    return scipy.linalg.block_diag(*blocks)


def random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    G = rng.standard_normal((d, d))
    return G @ G.T / d + 0.3 * np.eye(d)


def reference_tf(y, u, M, S, beta, H, m0):
    """SPEC §3 literally, as a loop over time (batched over trajectories).

    Parameters: ``y`` (B, T, p); ``u`` (B, T, m) for an exogenous-input filter, ``None``
    in closed loop (tokens ``[x̃; y]``). Returns ``x̃`` (B, T+1, n) and ``α`` (B, T, T).
    """
    y = np.asarray(y, dtype=float)
    B, T, _ = y.shape
    n, d = M.shape
    xs = np.empty((B, T + 1, n))
    xs[:, 0] = m0
    Z = np.empty((B, T, d))
    alpha = np.zeros((B, T, T))
    for t in range(T):
        parts = [xs[:, t], y[:, t]] + ([] if u is None else [np.asarray(u, dtype=float)[:, t]])
        Z[:, t] = np.concatenate(parts, axis=-1)
        lo = max(0, t - H + 1)
        win = Z[:, lo:t + 1]                                  # tokens i = lo … t
        diff = Z[:, t:t + 1] - win
        d2 = np.einsum("bkd,de,bke->bk", diff, S, diff)     # ‖z_t - z_i‖²_S
        logits = -beta * d2
        logits = logits - logits.max(axis=1, keepdims=True)
        a = np.exp(logits)
        a /= a.sum(axis=1, keepdims=True)
        alpha[:, t, lo:t + 1] = a
        xs[:, t + 1] = np.einsum("bk,bkd,nd->bn", a, win, M)  # Σ_i α M z_i
    return xs, alpha


def numpy_nadaraya_watson(Z, M, S, beta, H):
    """Causal windowed Gaussian-kernel smoother of given tokens ``Z`` (B, T, d)."""
    B, T, d = Z.shape
    out = np.zeros((B, T, M.shape[0]))
    W = np.zeros((B, T, T))
    for b in range(B):
        for t in range(T):
            idx = [i for i in range(T) if 0 <= t - i < H]
            k = np.array([math.exp(-beta * float((Z[b, t] - Z[b, i]) @ S @ (Z[b, t] - Z[b, i]))) for i in idx])
            k /= k.sum()
            W[b, t, idx] = k
            out[b, t] = sum(k[j] * (M @ Z[b, i]) for j, i in enumerate(idx))
    return out, W


def sum_of_powers(F: np.ndarray, block: slice | None = None) -> float:
    """``Σ_k ‖F^k‖₂`` (of a diagonal block of ``F^k`` when ``block`` is given)."""
    assert max(abs(np.linalg.eigvals(F))) < 1.0
    total, Fk, k = 0.0, np.eye(F.shape[0]), 0
    while True:
        total += np.linalg.norm(Fk if block is None else Fk[block, block], 2)
        if np.linalg.norm(Fk, 2) < 1e-18 * total or k > 10**6:
            return total
        Fk, k = F @ Fk, k + 1


def inv_sqrt(S: np.ndarray) -> np.ndarray:
    lam, U = np.linalg.eigh(S)
    return U @ np.diag(lam ** -0.5) @ U.T


def certificate(plant, L, K, M, S, H, beta) -> float:
    """``(Σ_k‖F^k‖)(H-1)‖M S^{-1/2}‖/sqrt(2eβ)``; closed loop: F is the augmented
    ``[[A, -BK], [LC, A-BK-LC]]`` and the norms are of the estimate block of its powers."""
    A, B, C, n = plant.A, plant.B, plant.C, plant.n
    if K is None:
        s = sum_of_powers(A - L @ C)
    else:
        F = np.block([[A, -B @ K], [L @ C, A - B @ K - L @ C]])
        s = sum_of_powers(F, slice(n, 2 * n))
    return s * (H - 1) * np.linalg.norm(M @ inv_sqrt(S), 2) / math.sqrt(2 * math.e * beta)


def with_m0(plant: lqgt.Plant, m0) -> lqgt.Plant:
    return lqgt.Plant(plant.A, plant.B, plant.C, W=plant.W, V=plant.V, D=plant.D,
                      m0=m0, P0=plant.P0, dt=plant.dt)


class ExogenousInput:
    """A policy for :func:`lqgt.simulate` that ignores the estimate and plays ``u_seq[t]``.

    It counts its calls, so it needs ``chunk=horizon`` (each estimator's loop then runs the
    whole horizon in one go); tests check afterwards that every loop received ``u_seq``.
    """

    def __init__(self, u_seq: torch.Tensor) -> None:
        self.u_seq, self.calls = u_seq, 0  # (T, B, m)

    def __call__(self, x_hat: torch.Tensor) -> torch.Tensor:
        u = self.u_seq[self.calls % self.u_seq.shape[0]].clone()
        self.calls += 1
        return u


def simulate_exogenous(plant, ests, Q, R, *, horizon, batch, seed, scale=0.5):
    """Simulate with the same exogenous input sequence for every estimator."""
    g = torch.Generator().manual_seed(seed + 1000)
    u_seq = scale * torch.randn(horizon, batch, plant.m, generator=g, dtype=F64)
    res = lqgt.simulate(plant, ExogenousInput(u_seq), ests, Q=Q, R=R, horizon=horizon, batch=batch,
                        seed=seed, chunk=horizon)
    for name in ests:
        assert torch.equal(res.u[name], u_seq.transpose(0, 1)), f"loop {name!r} did not get the exogenous input"
    return res


def open_loop_data(plant, *, horizon, batch, seed, excitation=0.5):
    """Plant data under a stabilising STATE feedback plus excitation (exogenous to any filter).

    Returns ``y`` (B, T, p) and ``u`` (B, T, m) as numpy arrays.
    """
    rng = np.random.default_rng(seed)
    Kx, _, _ = lqgt.dlqr(plant.A, plant.B, np.eye(plant.n), np.eye(plant.m))
    Wh, Vh, P0h = (psd_factor(X) for X in (plant.W, plant.V, plant.P0))
    x = plant.m0 + rng.standard_normal((batch, plant.n)) @ P0h.T
    ys, us = np.empty((batch, horizon, plant.p)), np.empty((batch, horizon, plant.m))
    for t in range(horizon):
        u = -x @ Kx.T + excitation * rng.standard_normal((batch, plant.m))
        y = x @ plant.C.T + u @ plant.D.T + rng.standard_normal((batch, plant.p)) @ Vh.T
        ys[:, t], us[:, t] = y, u
        x = x @ plant.A.T + u @ plant.B.T + rng.standard_normal((batch, plant.n)) @ Wh.T
    return ys, us


def psd_factor(X: np.ndarray) -> np.ndarray:
    """``F`` with ``F F' = X`` for a symmetric PSD ``X``."""
    lam, U = np.linalg.eigh(0.5 * (X + X.T))
    return U * np.sqrt(np.clip(lam, 0.0, None))


def kalman_predictor_numpy(plant, L, y, u):
    """``x̂[t+1] = A x̂ + B u + L (y - C x̂ - D u)`` from ``m0``; returns (B, T+1, n)."""
    B, T, _ = y.shape
    xs = np.empty((B, T + 1, plant.n))
    xs[:, 0] = plant.m0
    for t in range(T):
        x = xs[:, t]
        innov = y[:, t] - x @ plant.C.T - u[:, t] @ plant.D.T
        xs[:, t + 1] = x @ plant.A.T + u[:, t] @ plant.B.T + innov @ L.T
    return xs


def sup_err(a, b) -> np.ndarray:
    """``sup_t ‖a_t - b_t‖`` per trajectory (arrays or tensors (B, T, n))."""
    return np.asarray(torch.as_tensor(a - b).norm(dim=-1).amax(dim=-1))


def oscillator_m0():
    plant, Q, R = plants.oscillator()
    return with_m0(plant, [1.5, -0.8]), Q, R


def two_mass_m0():
    plant, Q, R = plants.two_mass()
    return with_m0(plant, [0.5, -0.3, 0.2, 0.1]), Q, R


def feedthrough_plant():
    """The oscillator with a feedthrough ``D`` (tests the ``B - LD`` / ``+LDK`` terms)."""
    plant, Q, R = plants.oscillator()
    p = lqgt.Plant(plant.A, plant.B, plant.C, W=plant.W, V=plant.V, D=[[0.5, -0.3]], m0=[0.4, 0.2])
    return p, Q, R


def make_S(kind, plant, d, rng):
    if kind is None or kind == "whiten":
        return kind
    return random_spd(rng, d)


def expected_S(kind, S_arg, plant, P, d):
    if kind is None:
        return np.eye(d)
    if kind == "whiten":
        return whitening(plant, P, d)
    return S_arg


# ---------------------------------------------------------------------------------------
# the construction: gain, value map, embedding, attention block
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", plants.NAMES + ("feedthrough",))
def test_gain_and_value_map_are_the_predictor_ones(name):
    plant, Q, R = feedthrough_plant() if name == "feedthrough" else plants.get(name)
    L, P = predictor_gain(plant)
    Lf = P @ plant.C.T @ np.linalg.inv(plant.C @ P @ plant.C.T + plant.V)
    K = lqgt.dlqr(plant.A, plant.B, Q, R)[0]
    tf_open = lqgt.TransformerFilter(plant, beta=1.0, window=4)
    tf_closed = lqgt.TransformerFilter(plant, beta=1.0, window=4, K=K)
    scale = max(1.0, np.abs(L).max())
    np.testing.assert_allclose(tf_open.L, L, rtol=0, atol=1e-8 * scale)
    np.testing.assert_allclose(tf_open.M, value_map(plant, L, None), rtol=0, atol=1e-8 * scale)
    np.testing.assert_allclose(tf_closed.M, value_map(plant, L, K), rtol=0, atol=1e-8 * scale)
    assert tf_open.M.shape == (plant.n, plant.n + plant.p + plant.m)
    assert tf_closed.M.shape == (plant.n, plant.n + plant.p)
    assert tf_open.form == "predictor" and tf_open.n == plant.n
    # the tolerance separates the predictor gain from the filter gain
    assert np.abs(L - Lf).max() > 1e-3 * scale


def test_whitening_S():
    plant, Q, R = plants.two_mass()
    L, P = predictor_gain(plant)
    K = lqgt.dlqr(plant.A, plant.B, Q, R)[0]
    for Kg, d in ((None, plant.n + plant.p + plant.m), (K, plant.n + plant.p)):
        tf = lqgt.TransformerFilter(plant, beta=1.0, window=4, K=Kg, S="whiten")
        S = whitening(plant, P, d)
        np.testing.assert_allclose(tf.S, S, rtol=1e-6, atol=1e-8 * np.abs(S).max())


def test_quadratic_embedding(rng):
    d = 5
    z = torch.as_tensor(rng.standard_normal((3, 4, d)))
    phi = quadratic_embedding(z)
    assert phi.shape == (3, 4, 1 + d + d * d)
    zn = z.numpy()
    expect = np.concatenate([np.ones((3, 4, 1)), zn, np.einsum("abi,abj->abij", zn, zn).reshape(3, 4, d * d)], axis=-1)
    np.testing.assert_allclose(phi.numpy(), expect, rtol=0, atol=1e-15)
    S = random_spd(rng, d)
    np.testing.assert_allclose(phi[..., 1 + d:].numpy() @ S.reshape(-1), np.einsum("abi,ij,abj->ab", zn, S, zn), rtol=1e-13)


def test_attention_module_is_a_trainable_torch_block(rng):
    n, d, H = 3, 5, 4
    M, S = rng.standard_normal((n, d)), random_spd(rng, d)
    blk = TransformerFilterAttention.from_construction(M, S, 2.0, H)
    assert isinstance(blk, nn.Module)
    e = 1 + d + d * d
    for lin, rows in ((blk.W_q, None), (blk.W_k, None), (blk.W_v, n)):
        assert isinstance(lin, nn.Linear)
        assert lin.in_features == e
        if rows is not None:
            assert lin.out_features == rows
        assert lin.weight.requires_grad and lin.weight.dtype == F64
    names = {name for name, _ in blk.named_parameters()}
    assert {"W_q.weight", "W_k.weight", "W_v.weight"} <= names
    z = torch.as_tensor(rng.standard_normal((2, 7, d)))
    out, w = blk(z)
    loss = out.square().sum()
    loss.backward()
    for lin in (blk.W_q, blk.W_k, blk.W_v):
        g = lin.weight.grad
        assert g is not None and g.shape == lin.weight.shape
        assert torch.isfinite(g).all() and g.abs().max() > 0
    # an optimiser step changes the parameters (it can be trained)
    before = blk.W_q.weight.detach().clone()
    torch.optim.SGD(blk.parameters(), lr=1e-3).step()
    assert not torch.equal(before, blk.W_q.weight.detach())
    # a freshly initialised block works too
    fresh = TransformerFilterAttention(d, n, H).to(F64)
    out2, _ = fresh(z)
    assert out2.shape == (2, 7, n) and torch.isfinite(out2).all()


def test_attention_construction_logits_and_values(rng):
    """Logits ``scale·q_t·k_i = β(2 z_t'S z_i - z_i'S z_i)`` (the sign that makes near tokens win), ``v_i = M z_i``."""
    n, d, beta = 2, 4, 3.7
    M, S = rng.standard_normal((n, d)), random_spd(rng, d)
    blk = TransformerFilterAttention.from_construction(M, S, beta, 5)
    z = torch.as_tensor(rng.standard_normal((6, d)))
    q, k, v = blk.project(z)
    zn = z.numpy()
    expect = beta * (2 * zn @ S @ zn.T - np.einsum("id,de,ie->i", zn, S, zn)[None, :])
    assert blk.scale == beta  # β is the logit scale, applied after the max is subtracted
    np.testing.assert_allclose(blk.scale * (q @ k.T).detach().numpy(), expect, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(v.detach().numpy(), zn @ M.T, rtol=1e-13, atol=1e-13)
    # up to the constant -β z_t'S z_t, the logits are -β‖z_t - z_i‖²_S
    dist = np.array([[(a - b) @ S @ (a - b) for b in zn] for a in zn])
    shifted = expect - beta * np.einsum("id,de,ie->i", zn, S, zn)[:, None]
    np.testing.assert_allclose(shifted, -beta * dist, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("H", [1, 3, 8, 20])
@pytest.mark.parametrize("beta", [0.0, 0.4, 5.0])
def test_attention_forward_equals_numpy_nadaraya_watson(H, beta, rng):
    n, d, B, T = 3, 5, 2, 12
    M, S = rng.standard_normal((n, d)), random_spd(rng, d)
    Z = rng.standard_normal((B, T, d))
    blk = TransformerFilterAttention.from_construction(M, S, beta, H)
    with torch.no_grad():
        out, w = blk(torch.as_tensor(Z))
    ref_out, ref_w = numpy_nadaraya_watson(Z, M, S, beta, H)
    np.testing.assert_allclose(w.numpy(), ref_w, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out.numpy(), ref_out, rtol=0, atol=1e-12)
    # the weights are non-trivial (not all on the self-token) unless H = 1
    if H > 1 and beta < 1:
        assert (ref_w * (1 - np.eye(T))).max() > 1e-3


# ---------------------------------------------------------------------------------------
# trajectories: reference loop, the two implementations, start-up
# ---------------------------------------------------------------------------------------

MODES = ("closed", "exogenous", "static")  # TF with K; TF with K=None and exogenous u; TF with K=None in a u = -Kx̃ loop


def _run_pair(plant, Q, R, mode, S_arg, *, beta, H, T, B, seed=3):
    """Both implementations in one simulate call; returns (res, tf_kernel, tf_attention, K)."""
    design = lqgt.lqg(plant, Q, R)
    Ktf = design.K if mode == "closed" else None
    tfk = lqgt.TransformerFilter(plant, beta=beta, window=H, K=Ktf, S=S_arg, impl="kernel")
    tfa = lqgt.TransformerFilter(plant, beta=beta, window=H, K=Ktf, S=S_arg, impl="attention")
    ests = {"kernel": tfk, "attention": tfa}
    if mode == "exogenous":
        res = simulate_exogenous(plant, ests, Q, R, horizon=T, batch=B, seed=seed)
    else:
        res = lqgt.simulate(plant, design.K, ests, Q=Q, R=R, horizon=T, batch=B, seed=seed)
    return res, tfk, tfa, Ktf


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("S_kind", [None, "whiten", "random"])
@pytest.mark.parametrize("example", [oscillator_m0, two_mass_m0])
def test_trajectories_match_reference_and_implementations_agree(mode, S_kind, example, rng):
    plant, Q, R = example()
    H, T, B, beta = 5, 30, 4, 1.5
    d = plant.n + plant.p + (0 if mode == "closed" else plant.m)
    S_arg = make_S(S_kind, plant, d, rng)
    res, tfk, tfa, Ktf = _run_pair(plant, Q, R, mode, S_arg, beta=beta, H=H, T=T, B=B)
    xk, xa = res.x_hat["kernel"], res.x_hat["attention"]
    # the two implementations agree (same noise, same loop)
    assert float((xk - xa).abs().max()) <= 1e-12
    # x̃[0] = m0 exactly
    np.testing.assert_array_equal(xk[:, 0].numpy(), np.broadcast_to(plant.m0, (B, plant.n)))
    np.testing.assert_array_equal(xa[:, 0].numpy(), np.broadcast_to(plant.m0, (B, plant.n)))
    # independent reference, from the measurements (and inputs) the loop produced
    L, P = predictor_gain(plant)
    M = value_map(plant, L, Ktf)
    S = expected_S(S_kind, S_arg, plant, P, d)
    y = res.y["kernel"].numpy()
    u = None if mode == "closed" else res.u["kernel"].numpy()
    x_ref, alpha = reference_tf(y, u, M, S, beta, H, plant.m0)
    err = np.abs(xk.numpy() - x_ref[:, :T])
    assert err[:, : H + 1].max() <= 1e-10, "start-up (first H steps) differs from the reference"
    assert err.max() <= 1e-10
    assert float((xa - torch.as_tensor(x_ref[:, :T])).abs().max()) <= 1e-10
    # the test is not vacuous: the weights spread over the window (β is moderate)
    off = alpha * (1 - np.eye(T))
    assert off.max() > 1e-2
    # and the filter is NOT the Kalman predictor here
    xkf = kalman_predictor_numpy(plant, L, y, res.u["kernel"].numpy())
    assert np.abs(xkf[:, :T] - x_ref[:, :T]).max() > 1e-3


def test_reference_distinguishes_wrong_constructions():
    """Sanity of the reference test: the usual mistakes move the trajectory by far more than 1e-10."""
    plant, Q, R = two_mass_m0()
    design = lqgt.lqg(plant, Q, R)
    res, tfk, _, _ = _run_pair(plant, Q, R, "closed", None, beta=1.5, H=5, T=30, B=2)
    y, x = res.y["kernel"].numpy(), res.x_hat["kernel"].numpy()
    L, P = predictor_gain(plant)
    Lf = P @ plant.C.T @ np.linalg.inv(plant.C @ P @ plant.C.T + plant.V)
    d = plant.n + plant.p
    good = reference_tf(y, None, value_map(plant, L, design.K), np.eye(d), 1.5, 5, plant.m0)[0][:, :30]
    bad = {
        "filter gain": reference_tf(y, None, value_map(plant, Lf, design.K), np.eye(d), 1.5, 5, plant.m0)[0],
        "no -BK": reference_tf(y, None, value_map(plant, L, None)[:, :d], np.eye(d), 1.5, 5, plant.m0)[0],
        "logit sign": reference_tf(y, None, value_map(plant, L, design.K), np.eye(d), -1.5, 5, plant.m0)[0],
        "window H-1": reference_tf(y, None, value_map(plant, L, design.K), np.eye(d), 1.5, 4, plant.m0)[0],
        "window H+1": reference_tf(y, None, value_map(plant, L, design.K), np.eye(d), 1.5, 6, plant.m0)[0],
        "x0 = 0": reference_tf(y, None, value_map(plant, L, design.K), np.eye(d), 1.5, 5, np.zeros(plant.n))[0],
    }
    assert np.abs(x - good).max() <= 1e-10
    for what, xb in bad.items():
        assert np.abs(x - xb[:, :30]).max() > 1e-4, what


@pytest.mark.parametrize("mode", MODES)
def test_beta_zero_is_the_window_mean(mode):
    plant, Q, R = oscillator_m0()
    H, T, B = 4, 15, 3
    res, tfk, tfa, Ktf = _run_pair(plant, Q, R, mode, None, beta=0.0, H=H, T=T, B=B)
    assert float((res.x_hat["kernel"] - res.x_hat["attention"]).abs().max()) <= 1e-12
    L, _ = predictor_gain(plant)
    M = value_map(plant, L, Ktf)
    x = res.x_hat["kernel"].numpy()
    y, u = res.y["kernel"].numpy(), res.u["kernel"].numpy()
    Z = np.concatenate([x, y] if mode == "closed" else [x, y, u], axis=-1)  # the filter's own tokens
    for t in range(T - 1):
        lo = max(0, t - H + 1)
        mean = Z[:, lo:t + 1].mean(axis=1) @ M.T
        np.testing.assert_allclose(x[:, t + 1], mean, rtol=0, atol=1e-12)
    x_ref, alpha = reference_tf(y, None if mode == "closed" else u, M, np.eye(Z.shape[-1]), 0.0, H, plant.m0)
    np.testing.assert_allclose(x, x_ref[:, :T], rtol=0, atol=1e-12)
    _, w = tfk.run(res.y["kernel"], None if mode == "closed" else res.u["kernel"])
    for t in range(T):
        k = min(t + 1, H)
        np.testing.assert_allclose(w[:, t, t - k + 1:t + 1].numpy(), 1.0 / k, rtol=1e-14)
        assert float(w[:, t].sum(-1).sub(1).abs().max()) < 1e-14


# ---------------------------------------------------------------------------------------
# β → ∞ and H = 1: the Kalman predictor
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("S_kind", [None, "whiten"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("example", [two_mass_m0, oscillator_m0, feedthrough_plant])
def test_large_beta_is_the_kalman_predictor(example, mode, S_kind, rng):
    plant, Q, R = example()
    design = lqgt.lqg(plant, Q, R)
    Ktf = design.K if mode == "closed" else None
    ests = {"kalman": lqgt.KalmanFilter(plant, form="predictor")}
    for impl in lqgt.estimators.transformer.IMPLS:
        ests[impl] = lqgt.TransformerFilter(plant, beta=1e8, window=16, K=Ktf, S=S_kind, impl=impl)
    # a moderate β on the same noise is visibly different (the comparison is not vacuous)
    ests["moderate"] = lqgt.TransformerFilter(plant, beta=1.0, window=16, K=Ktf, S=S_kind)
    T, B = 80, 8
    if mode == "exogenous":
        res = simulate_exogenous(plant, ests, Q, R, horizon=T, batch=B, seed=5)
    else:
        res = lqgt.simulate(plant, design.K, ests, Q=Q, R=R, horizon=T, batch=B, seed=5)
    xk = res.x_hat["kalman"]
    for impl in lqgt.estimators.transformer.IMPLS:
        assert float((res.x_hat[impl] - xk).abs().max()) <= 1e-8, impl
        assert float((res.x[impl] - res.x["kalman"]).abs().max()) <= 1e-8, impl
    assert float((res.x_hat["moderate"] - xk).abs().max()) > 1e-2


@pytest.mark.parametrize("beta", [0.0, 0.5, 30.0, 1e4])
@pytest.mark.parametrize("mode", ["closed", "exogenous"])
def test_window_one_is_the_kalman_predictor_for_any_beta(beta, mode):
    plant, Q, R = two_mass_m0()
    design = lqgt.lqg(plant, Q, R)
    Ktf = design.K if mode == "closed" else None
    ests = {"kalman": lqgt.KalmanFilter(plant, form="predictor")}
    for impl in lqgt.estimators.transformer.IMPLS:
        ests[impl] = lqgt.TransformerFilter(plant, beta=beta, window=1, K=Ktf, impl=impl)
        assert ests[impl].error_bound() == 0.0
    T, B = 60, 4
    if mode == "exogenous":
        res = simulate_exogenous(plant, ests, Q, R, horizon=T, batch=B, seed=7)
    else:
        res = lqgt.simulate(plant, design.K, ests, Q=Q, R=R, horizon=T, batch=B, seed=7)
    for impl in lqgt.estimators.transformer.IMPLS:
        assert float((res.x_hat[impl] - res.x_hat["kalman"]).abs().max()) <= 1e-10, impl


# ---------------------------------------------------------------------------------------
# the certificate ε(β)
# ---------------------------------------------------------------------------------------

BETAS = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5]
CERT_PLANTS = ("two_mass", "double_integrator", "cart_pole", "scalar_unstable", "oscillator")


@pytest.mark.parametrize("S_kind", [None, "whiten", "random"])
@pytest.mark.parametrize("closed", [False, True])
@pytest.mark.parametrize("name", ["two_mass", "cart_pole", "oscillator"])
def test_error_bound_formula(name, closed, S_kind, rng):
    plant, Q, R = plants.get(name)
    K = lqgt.dlqr(plant.A, plant.B, Q, R)[0] if closed else None
    d = plant.n + plant.p + (0 if closed else plant.m)
    S_arg = make_S(S_kind, plant, d, rng)
    L, P = predictor_gain(plant)
    S = expected_S(S_kind, S_arg, plant, P, d)
    M = value_map(plant, L, K)
    for H in (2, 16):
        for beta in (0.3, 50.0, 1e6):
            tf = lqgt.TransformerFilter(plant, beta=beta, window=H, K=K, S=S_arg)
            expect = certificate(plant, L, K, M, S, H, beta)
            assert tf.error_bound() == pytest.approx(expect, rel=1e-7)
    tf = lqgt.TransformerFilter(plant, beta=4.0, window=8, K=K, S=S_arg)
    tf4 = lqgt.TransformerFilter(plant, beta=16.0, window=8, K=K, S=S_arg)
    assert tf4.error_bound() == pytest.approx(tf.error_bound() / 2, rel=1e-12)  # ∝ β^{-1/2}
    assert lqgt.TransformerFilter(plant, beta=0.0, window=8, K=K, S=S_arg).error_bound() == math.inf
    assert lqgt.TransformerFilter(plant, beta=0.0, window=1, K=K, S=S_arg).error_bound() == 0.0


@pytest.mark.parametrize("name", CERT_PLANTS)
def test_certificate_holds_closed_loop(name):
    """Both loops under u = -K·estimate on the same noise: sup_t ‖x̃ - x̂‖ ≤ ε(β)."""
    plant, Q, R = plants.get(name)
    design = lqgt.lqg(plant, Q, R)
    H = 8
    ests = {"kalman": lqgt.KalmanFilter(plant, form="predictor")}
    tfs = {}
    for b in BETAS:
        tfs[f"tf{b:g}"] = ests[f"tf{b:g}"] = lqgt.TransformerFilter(plant, beta=b, window=H, K=design.K)
    with warnings.catch_warnings():
        warnings.simplefilter("error", lqgt.DivergenceWarning)
        res = lqgt.simulate(plant, design.K, ests, Q=Q, R=R, horizon=120, batch=16, seed=11)
    measured = []
    for key, tf in tfs.items():
        e = float(sup_err(res.x_hat[key], res.x_hat["kalman"]).max())
        bound = tf.error_bound()
        assert math.isfinite(bound) and e <= bound, (key, e, bound)
        measured.append(e)
    assert measured[0] > 1e-3  # the smallest β is far from Kalman: the comparison has teeth


@pytest.mark.parametrize("name", CERT_PLANTS)
def test_certificate_holds_open_loop(name):
    """Exogenous input (the same for both filters): the error obeys e+ = (A - LC) e + δ."""
    plant, Q, R = plants.get(name)
    plant = with_m0(plant, np.full(plant.n, 0.3))
    y, u = open_loop_data(plant, horizon=120, batch=12, seed=13)
    L, _ = predictor_gain(plant)
    xkf = kalman_predictor_numpy(plant, L, y, u)
    measured = []
    for b in BETAS:
        tf = lqgt.TransformerFilter(plant, beta=b, window=8)
        x, _ = tf.run(y, u)
        e = float(sup_err(x.numpy(), xkf).max())
        assert e <= tf.error_bound(), (b, e, tf.error_bound())
        measured.append(e)
    assert measured[0] > 1e-3


@pytest.mark.parametrize("name,closed", [("two_mass", True), ("scalar_unstable", True), ("oscillator", False),
                                         ("double_integrator", False)])
def test_beta_for_certifies_eps(name, closed):
    plant, Q, R = plants.get(name)
    design = lqgt.lqg(plant, Q, R)
    K = design.K if closed else None
    H, eps = 8, 0.05
    beta = lqgt.TransformerFilter.beta_for(plant, eps, window=H, K=K)
    L, _ = predictor_gain(plant)
    c = certificate(plant, L, K, value_map(plant, L, K), np.eye(plant.n + plant.p + (0 if closed else plant.m)), H, 1.0)
    assert beta == pytest.approx((c / eps) ** 2, rel=1e-7)  # ε(β) = c/sqrt(β) solved for β
    tf = lqgt.TransformerFilter(plant, beta=beta, window=H, K=K)
    assert tf.error_bound() == pytest.approx(eps, rel=1e-12)
    if closed:
        res = lqgt.simulate(plant, design.K, {"kalman": lqgt.KalmanFilter(plant, form="predictor"), "tf": tf},
                            Q=Q, R=R, horizon=120, batch=16, seed=17)
        e = float(sup_err(res.x_hat["tf"], res.x_hat["kalman"]).max())
    else:
        y, u = open_loop_data(plant, horizon=120, batch=16, seed=17)
        e = float(sup_err(tf.run(y, u)[0].numpy(), kalman_predictor_numpy(plant, L, y, u)).max())
    assert e <= eps
    # a halved eps needs four times the β
    assert lqgt.TransformerFilter.beta_for(plant, eps / 2, window=H, K=K) == pytest.approx(4 * beta, rel=1e-12)
    assert lqgt.TransformerFilter.beta_for(plant, eps, window=1, K=K) == 0.0


# ---------------------------------------------------------------------------------------
# closed-loop cost: J_TF(β) - J_LQG(predictor) → 0
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,betas", [("two_mass", [3.0, 10.0, 30.0, 100.0, 1e4, 1e7]),
                                        ("oscillator", [0.3, 1.0, 3.0, 10.0, 1e4, 1e7])])
def test_cost_gap_vanishes_as_beta_grows(name, betas):
    plant, Q, R = plants.get(name)
    sw = lqgt.beta_sweep(plant, Q, R, betas, window=16, batch=128, horizon=200, burn_in=40, seed=19)
    assert np.all(np.isfinite(sw.gap)) and np.all(np.isfinite(sw.gap_ci))
    assert np.all(sw.gap_ci[:, 0] <= sw.gap) and np.all(sw.gap <= sw.gap_ci[:, 1])
    lo, hi = sw.gap_ci[:, 0], sw.gap_ci[:, 1]
    # the small βs are significantly worse than LQG (the sweep has something to show)
    assert lo[0] > 0 and (lo > 0).sum() >= 3
    # decreasing wherever the gap is significant
    for i in range(len(betas) - 1):
        if lo[i] > 0:
            assert sw.gap[i + 1] < sw.gap[i], (betas[i], betas[i + 1], sw.gap)
    # the largest β: no significant gap, and tiny relative to the cost
    assert lo[-1] <= 0 <= hi[-1] or abs(sw.gap[-1]) <= 1e-9 * sw.cost_lqg
    assert abs(sw.gap[-1]) <= 1e-6 * sw.cost_lqg
    # the same run's estimation error respects the certificate, and the costs match the exact LQG cost roughly
    assert np.all(sw.error_max <= sw.bound)
    assert sw.cost_lqg == pytest.approx(sw.cost_lqg_exact, rel=0.2)


# ---------------------------------------------------------------------------------------
# attention weights and replay
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["kernel", "attention"])
@pytest.mark.parametrize("mode", MODES)
def test_attention_weights_and_replay(mode, impl):
    plant, Q, R = two_mass_m0()
    H, T, B, beta = 6, 25, 3, 2.0
    res, tfk, tfa, Ktf = _run_pair(plant, Q, R, mode, None, beta=beta, H=H, T=T, B=B)
    tf = tfk if impl == "kernel" else tfa
    y, u = res.y[impl], res.u[impl]
    x, w = tf.run(y, None if mode == "closed" else u)
    assert x.shape == (B, T + 1, plant.n) and w.shape == (B, T, T)
    # replaying the simulation's measurements (and inputs) reproduces its estimates
    assert float((x[:, :T] - res.x_hat[impl]).abs().max()) <= 1e-12
    # rows sum to one, weights are non-negative and vanish outside the causal window
    assert float((w.sum(-1) - 1).abs().max()) <= 1e-13
    assert float(w.min()) >= 0
    t_idx = torch.arange(T)
    lag = t_idx[:, None] - t_idx[None, :]
    outside = (lag < 0) | (lag >= H)
    assert float(w[:, outside].abs().max()) == 0.0
    assert float(w[:, ~outside].min()) > 0  # every token in the window gets some weight at this β
    # the weights are the reference's α
    L, _ = predictor_gain(plant)
    d = plant.n + plant.p + (0 if mode == "closed" else plant.m)
    _, alpha = reference_tf(y.numpy(), None if mode == "closed" else u.numpy(), value_map(plant, L, Ktf),
                            np.eye(d), beta, H, plant.m0)
    np.testing.assert_allclose(w.numpy(), alpha, rtol=0, atol=1e-11)
    # single-trajectory input gives unbatched outputs
    x1, w1 = tf.run(y[1], None if mode == "closed" else u[1])
    assert x1.shape == (T + 1, plant.n) and w1.shape == (T, T)
    assert float((x1 - x[1]).abs().max()) <= 1e-13


def test_closed_loop_run_ignores_u():
    plant, Q, R = oscillator_m0()
    design = lqgt.lqg(plant, Q, R)
    tf = lqgt.TransformerFilter(plant, beta=2.0, window=4, K=design.K)
    y = np.random.default_rng(0).standard_normal((10, plant.p))
    x0, _ = tf.run(y)
    x1, _ = tf.run(y, np.ones((10, plant.m)))
    assert torch.equal(x0, x1)


# ---------------------------------------------------------------------------------------
# large β: no overflow
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [1e6, 1e12, 1e30, 1e300])
@pytest.mark.parametrize("impl", ["kernel", "attention"])
def test_huge_beta_is_finite(beta, impl):
    plant, Q, R = two_mass_m0()
    design = lqgt.lqg(plant, Q, R)
    ests = {"kalman": lqgt.KalmanFilter(plant, form="predictor"),
            "tf": lqgt.TransformerFilter(plant, beta=beta, window=8, K=design.K, impl=impl),
            "tf_open": lqgt.TransformerFilter(plant, beta=beta, window=8, impl=impl)}
    with warnings.catch_warnings():
        warnings.simplefilter("error", lqgt.DivergenceWarning)
        warnings.simplefilter("error", RuntimeWarning)
        res = lqgt.simulate(plant, design.K, ests, Q=Q, R=R, horizon=40, batch=8, seed=23)
    for key in ("tf", "tf_open"):
        assert torch.isfinite(res.x_hat[key]).all() and math.isfinite(res.cost[key])
        assert float((res.x_hat[key] - res.x_hat["kalman"]).abs().max()) <= 1e-8
    # far-apart tokens: every logit but the self-token's underflows, still no NaN
    y = 1e3 * np.random.default_rng(1).standard_normal((20, plant.p))
    x, w = ests["tf"].run(y)
    assert torch.isfinite(x).all() and torch.isfinite(w).all()
    # float32 too (β above float32's largest number, 3.4e38, is not representable there)
    if beta > 1e38:
        return
    res32 = lqgt.simulate(plant, design.K, {"tf": ests["tf"]}, Q=Q, R=R, horizon=20, batch=4, seed=23,
                          dtype=torch.float32)
    assert torch.isfinite(res32.x_hat["tf"]).all()


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------


def _raises(exc, match, fn, *args, **kwargs):
    with pytest.raises(exc, match=match) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, ValueError) and isinstance(info.value, errors.LqgtError)
    return info.value


@pytest.mark.parametrize("beta", [-1.0, -1e-12, float("nan"), float("inf"), -float("inf"), "abc", None, 1j])
def test_bad_beta(beta):
    plant = plants.oscillator().plant
    _raises(errors.ConfigError, "beta", lqgt.TransformerFilter, plant, beta=beta)


@pytest.mark.parametrize("window", [0, -3, 2.5, 3.0, "4", True, None])
def test_bad_window(window):
    plant = plants.oscillator().plant
    _raises(errors.ConfigError, "window", lqgt.TransformerFilter, plant, beta=1.0, window=window)


def test_window_accepts_numpy_int():
    plant = plants.oscillator().plant
    assert lqgt.TransformerFilter(plant, window=np.int64(5)).window == 5


def test_bad_impl():
    plant = plants.oscillator().plant
    _raises(errors.ConfigError, "impl", lqgt.TransformerFilter, plant, impl="fast")


def test_bad_plant():
    _raises(errors.ConfigError, "plant", lqgt.TransformerFilter, "not a plant")


def test_bad_S():
    plant, Q, R = plants.oscillator()
    d = plant.n + plant.p + plant.m  # exogenous input: 5
    not_pd = np.diag([1.0, 1.0, 1.0, 1.0, -0.5])
    _raises(errors.NotPositiveDefiniteError, "S", lqgt.TransformerFilter, plant, S=not_pd)
    _raises(errors.NotPositiveDefiniteError, "S", lqgt.TransformerFilter, plant, S=np.diag([1.0, 1.0, 0.0, 1.0, 1.0]))
    nonsym = np.eye(d)
    nonsym[0, 1] = 0.5
    _raises(errors.NotSymmetricError, "S", lqgt.TransformerFilter, plant, S=nonsym)
    _raises(errors.ShapeError, "S", lqgt.TransformerFilter, plant, S=np.eye(d - 1))
    K = lqgt.dlqr(plant.A, plant.B, Q, R)[0]
    _raises(errors.ShapeError, "S", lqgt.TransformerFilter, plant, K=K, S=np.eye(d))  # closed loop: d = n + p
    nan = np.eye(d)
    nan[1, 1] = np.nan
    _raises(errors.NonFiniteError, "S", lqgt.TransformerFilter, plant, S=nan)
    _raises(errors.ConfigError, "S", lqgt.TransformerFilter, plant, S="whitened")


def test_bad_K():
    plant, Q, R = plants.two_mass()
    _raises(errors.ShapeError, "K", lqgt.TransformerFilter, plant, K=np.ones((plant.n, plant.m)))
    _raises(errors.ShapeError, "K", lqgt.TransformerFilter, plant, K=np.ones((plant.m, plant.n + 1)))
    _raises(errors.NonFiniteError, "K", lqgt.TransformerFilter, plant, K=np.full((plant.m, plant.n), np.nan))


def test_bad_run_input():
    plant, Q, R = plants.two_mass()
    K = lqgt.dlqr(plant.A, plant.B, Q, R)[0]
    tf_c = lqgt.TransformerFilter(plant, beta=1.0, window=4, K=K)
    tf_o = lqgt.TransformerFilter(plant, beta=1.0, window=4)
    y = np.zeros((10, plant.p))
    y_nan = y.copy()
    y_nan[3, 1] = np.nan
    _raises(errors.NonFiniteError, "y", tf_c.run, y_nan)
    y_inf = y.copy()
    y_inf[0, 0] = np.inf
    _raises(errors.NonFiniteError, "y", tf_c.run, y_inf)
    _raises(errors.ShapeError, "y", tf_c.run, np.zeros((10, plant.p + 1)))
    _raises(errors.ShapeError, "y", tf_c.run, np.zeros(10))
    _raises(errors.ShapeError, "u", tf_o.run, y)  # exogenous-input filter needs u
    _raises(errors.ShapeError, "u", tf_o.run, y, np.zeros((9, plant.m)))


@pytest.mark.parametrize("eps", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_eps(eps):
    plant = plants.oscillator().plant
    _raises(errors.ConfigError, "eps", lqgt.TransformerFilter.beta_for, plant, eps)


def test_repr_mentions_mode():
    plant, Q, R = plants.oscillator()
    K = lqgt.dlqr(plant.A, plant.B, Q, R)[0]
    assert "closed-loop" in repr(lqgt.TransformerFilter(plant, K=K))
    assert "exogenous" in repr(lqgt.TransformerFilter(plant))
