"""Shared fixtures: generators of random test problems for the design layer.

The generators are exposed through the ``gen`` fixture (a namespace of plain functions),
so that parametrised tests can build their problem from a case id and a seed.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import scipy.linalg
import torch

# The suite runs many small tensor operations; on a 2-core machine torch's intra-op thread
# pool only adds synchronisation (and stalls badly when the cores are busy). One thread
# makes the suite's runtime predictable; benchmarks choose their own thread counts.
torch.set_num_threads(1)

# Without CUDA, Triton kernels can only run in Triton's interpreter; the switch must be set
# before any test (or torch itself) imports triton, so it is set here, for the whole session.
if not torch.cuda.is_available():
    import os

    os.environ.setdefault("TRITON_INTERPRET", "1")


def random_psd(rng: np.random.Generator, n: int, *, rank: int | None = None, floor: float = 0.0) -> np.ndarray:
    """Random symmetric PSD matrix of the given rank (full by default) plus ``floor * I``."""
    r = n if rank is None else rank
    F = rng.standard_normal((n, r))
    return F @ F.T / max(r, 1) + floor * np.eye(n)


def random_pd(rng: np.random.Generator, n: int, floor: float = 0.3) -> np.ndarray:
    """Random symmetric positive definite matrix with smallest eigenvalue >= ``floor``."""
    return random_psd(rng, n, floor=floor)


def rotation(theta: float) -> np.ndarray:
    """2x2 rotation (eigenvalues exp(+-i theta), on the unit circle)."""
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s], [s, c]])


def with_radius(rng: np.random.Generator, n: int, rho: float) -> np.ndarray:
    """Random dense ``n x n`` matrix scaled to spectral radius ``rho``."""
    A = rng.standard_normal((n, n))
    return A * (rho / np.max(np.abs(np.linalg.eigvals(A))))


def marginal_A(rng: np.random.Generator, n: int) -> np.ndarray:
    """A dense matrix with ALL eigenvalues on the unit circle, distinct apart from one
    Jordan block (a double integrator), hidden by a random well-conditioned similarity.

    Blocks: one double integrator ``[[1, 1], [0, 1]]``, rotations with distinct angles and
    (for odd sizes) the eigenvalue -1. A single input or output reaches every mode.
    """
    blocks = []
    if n >= 2:
        blocks.append(np.array([[1.0, 1.0], [0.0, 1.0]]))
    angles = iter(rng.permutation(np.linspace(0.2, 2.9, 40)))
    while sum(b.shape[0] for b in blocks) < n:
        if n - sum(b.shape[0] for b in blocks) >= 2:
            blocks.append(rotation(next(angles)))
        else:
            blocks.append(np.array([[-1.0]]))
    J = scipy.linalg.block_diag(*blocks)
    # a similarity with condition number <= 4: the modes stay on the unit circle without
    # making the problem nearly uncontrollable (that is what "illcond" is for)
    U = np.linalg.qr(rng.standard_normal((n, n)))[0]
    Vt = np.linalg.qr(rng.standard_normal((n, n)))[0]
    T = U @ np.diag(rng.uniform(0.5, 2.0, n)) @ Vt
    return T @ J @ np.linalg.inv(T)


KINDS = ("stable", "unstable", "marginal", "illcond", "uncontrollable", "cross")


def random_problem(rng: np.random.Generator, n: int, m: int, p: int, kind: str) -> dict:
    """A random LQG problem ``dict(A, B, C, Q, R, N, W, V)`` with (A, B) stabilizable and
    (A, C) detectable.

    kind:
      * ``stable``   spectral radius 0.3 .. 0.95;
      * ``unstable`` spectral radius 1.05 .. 1.4 (unstable open loop);
      * ``marginal`` every eigenvalue on the unit circle (double integrator + rotations);
      * ``illcond``  unstable, then a diagonal state similarity with condition number 1e4
        (badly scaled states), weights not rescaled;
      * ``uncontrollable`` a stable mode that B cannot reach and C cannot see (stabilizable
        and detectable but neither controllable nor observable), unstable elsewhere;
      * ``cross``    unstable, with a cross weight N such that [[Q, N], [N', R]] >= 0.
    """
    N = None
    if kind == "stable":
        A = with_radius(rng, n, rng.uniform(0.3, 0.95))
    elif kind in ("unstable", "illcond", "cross"):
        A = with_radius(rng, n, rng.uniform(1.05, 1.4))
    elif kind == "marginal":
        A = marginal_A(rng, n)
    elif kind == "uncontrollable":
        if n < 2:
            raise ValueError("uncontrollable needs n >= 2")
        k = n // 2
        A11 = with_radius(rng, n - k, 1.2)
        A22 = with_radius(rng, k, 0.7)
        A = np.block([[A11, rng.standard_normal((n - k, k))], [np.zeros((k, n - k)), A22]])
    else:
        raise ValueError(kind)
    B = rng.standard_normal((n, m))
    C = rng.standard_normal((p, n))
    if kind == "uncontrollable":
        k = n // 2
        B[n - k:] = 0.0  # the stable A22 block is unreachable (C still sees everything)
    Q = random_psd(rng, n, rank=max(1, n - 1), floor=0.0) + 0.05 * np.eye(n)
    R = random_pd(rng, m)
    W = random_psd(rng, n, rank=max(1, n - 1)) + 0.05 * np.eye(n)
    V = random_pd(rng, p)
    if kind == "cross":
        N = 0.5 * rng.standard_normal((n, m))
        Qs = Q - N @ np.linalg.solve(R, N.T)
        lam = np.linalg.eigvalsh(0.5 * (Qs + Qs.T)).min()
        if lam < 0.01:
            Q = Q + (0.01 - lam) * np.eye(n)
    if kind == "illcond":
        d = np.logspace(-2, 2, n) if n > 1 else np.ones(1)
        A = (A * d[:, None]) / d[None, :]
        B = B * d[:, None]
        C = C / d[None, :]
    return dict(A=A, B=B, C=C, Q=0.5 * (Q + Q.T), R=R, N=N, W=0.5 * (W + W.T), V=V)


def unobservable_problem(rng: np.random.Generator, n: int, p: int) -> tuple[np.ndarray, np.ndarray]:
    """(A, C) detectable but not observable: a stable mode C cannot see (dual of
    ``uncontrollable``), hidden by an orthogonal similarity."""
    k = n // 2
    A11 = with_radius(rng, n - k, 1.2)
    A22 = with_radius(rng, k, 0.7)
    A = np.block([[A11, np.zeros((n - k, k))], [rng.standard_normal((k, n - k)), A22]])
    C = np.hstack([rng.standard_normal((p, n - k)), np.zeros((p, k))])
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return U @ A @ U.T, C @ U.T


def rel_err(a, b) -> float:
    """Frobenius-norm relative error of ``a`` against reference ``b``."""
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), np.finfo(float).tiny))


def match_eigs(e1, e2) -> float:
    """Largest distance between two eigenvalue sets after optimal one-to-one matching."""
    from scipy.optimize import linear_sum_assignment

    e1, e2 = np.asarray(e1).ravel(), np.asarray(e2).ravel()
    assert e1.shape == e2.shape, (e1.shape, e2.shape)
    D = np.abs(e1[:, None] - e2[None, :])
    r, c = linear_sum_assignment(D)
    return float(D[r, c].max()) if D.size else 0.0


@pytest.fixture(scope="session")
def gen():
    """Namespace of the problem generators and comparison helpers above."""
    return types.SimpleNamespace(
        random_psd=random_psd,
        random_pd=random_pd,
        rotation=rotation,
        with_radius=with_radius,
        marginal_A=marginal_A,
        random_problem=random_problem,
        unobservable_problem=unobservable_problem,
        rel_err=rel_err,
        match_eigs=match_eigs,
        KINDS=KINDS,
    )


@pytest.fixture
def rng(request):
    """A generator seeded from the test's node id, so every test is reproducible."""
    import zlib

    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
