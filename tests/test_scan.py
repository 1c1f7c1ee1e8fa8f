"""lqgt.scan: parallel associative scans against plain numpy cumulative reductions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lqgt.errors import ConfigError, LqgtError, ShapeError
from lqgt.scan import SCAN_METHODS, associative_scan, sequential_scan

LENGTHS = [1, 2, 3, 5, 7, 8, 16, 31, 33, 100, 257]


def np_cumprod(M: np.ndarray, reverse: bool) -> np.ndarray:
    """out[k] = M[0] @ ... @ M[k] (reverse: M[k] @ ... @ M[T-1]), by a loop, per batch."""
    out = np.empty_like(M)
    T = M.shape[1]
    for b in range(M.shape[0]):
        acc = np.eye(M.shape[-1])
        for k in (range(T - 1, -1, -1) if reverse else range(T)):
            acc = M[b, k] @ acc if reverse else acc @ M[b, k]
            out[b, k] = acc
    return out


def affine_op(a, b):
    """Composition of affine maps x -> M x + c: first a, then b (``b ∘ a``)."""
    Ma, ca = a
    Mb, cb = b
    return Mb @ Ma, (Mb @ ca.unsqueeze(-1)).squeeze(-1) + cb


@pytest.mark.parametrize("method", SCAN_METHODS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("T", LENGTHS)
def test_matrix_products_match_numpy(rng, T, reverse, method):
    M = rng.standard_normal((2, T, 3, 3)) / 1.5
    got = associative_scan(lambda a, b: a @ b, torch.tensor(M), reverse=reverse, method=method)
    np.testing.assert_allclose(got.numpy(), np_cumprod(M, reverse), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", SCAN_METHODS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("T", [1, 6, 13, 64, 1001])
def test_affine_maps_broadcast_batch(rng, T, reverse, method):
    """A tuple element whose matrix part is shared (batch 1) and vector part batched (B = 4)."""
    M = rng.standard_normal((1, T, 2, 2)) * 0.7
    c = rng.standard_normal((4, T, 2))
    Mc, cc = associative_scan(affine_op, (torch.tensor(M), torch.tensor(c)), reverse=reverse, method=method)
    # reference: apply the maps one after the other (forward: e0 first; reverse: suffix e[k..T-1])
    ref_M = np.empty((T, 2, 2))
    ref_c = np.empty((4, T, 2))
    order = range(T) if not reverse else range(T - 1, -1, -1)
    accM, accc = None, None
    for k in order:
        if accM is None:
            accM, accc = M[0, k], c[:, k]
        elif not reverse:  # acc ⊗ e_k = e_k ∘ acc
            accM, accc = M[0, k] @ accM, accc @ M[0, k].T + c[:, k]
        else:  # e_k ⊗ acc = acc ∘ e_k
            accM, accc = accM @ M[0, k], c[:, k] @ accM.T + accc
        ref_M[k], ref_c[:, k] = accM, accc
    assert Mc.shape[0] == 1 and cc.shape == (4, T, 2)
    np.testing.assert_allclose(Mc[0].numpy(), ref_M, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cc.numpy(), ref_c, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reverse", [False, True])
def test_sequential_scan_matches(rng, reverse):
    M = torch.tensor(rng.standard_normal((3, 37, 2, 2)))
    c = torch.tensor(rng.standard_normal((3, 37, 2)))
    a = associative_scan(affine_op, (M, c), reverse=reverse)
    s = sequential_scan(affine_op, (M, c), reverse=reverse)
    for x, y in zip(a, s):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def test_cumulative_sum_and_max(rng):
    """Commutative sanity cases: prefix sums (vs numpy.cumsum) and running maxima."""
    x = torch.tensor(rng.standard_normal((2, 1000)))
    for method in SCAN_METHODS:
        s = associative_scan(lambda a, b: a + b, x, method=method)
        np.testing.assert_allclose(s.numpy(), np.cumsum(x.numpy(), axis=1), rtol=1e-9, atol=1e-9)
        mx = associative_scan(torch.maximum, x, method=method, reverse=True)
        np.testing.assert_array_equal(mx.numpy(), np.maximum.accumulate(x.numpy()[:, ::-1], axis=1)[:, ::-1])


def test_gradients_flow(rng):
    M = torch.tensor(rng.standard_normal((1, 9, 2, 2)) * 0.5, requires_grad=True)
    torch.autograd.gradcheck(lambda X: associative_scan(lambda a, b: a @ b, X)[:, -1].sum(), (M,))
    torch.autograd.gradcheck(lambda X: associative_scan(lambda a, b: a @ b, X, reverse=True, method="hillis_steele"),
                             (M,))


def test_empty_sequence_and_single_tensor_structure():
    x = torch.zeros(2, 0, 3)
    assert associative_scan(lambda a, b: a + b, x).shape == (2, 0, 3)
    out = associative_scan(lambda a, b: (a[0] + b[0],), (torch.ones(1, 4),))
    assert isinstance(out, tuple) and out[0].tolist() == [[1.0, 2.0, 3.0, 4.0]]


def test_errors():
    x = torch.ones(2, 5)
    with pytest.raises(ConfigError, match="method"):
        associative_scan(lambda a, b: a + b, x, method="blelloch2")
    with pytest.raises(ShapeError, match="at least 2 dimensions"):
        associative_scan(lambda a, b: a + b, torch.ones(5))
    with pytest.raises(ShapeError, match="length 4 along dim 1"):
        associative_scan(lambda a, b: a, (torch.ones(1, 5), torch.ones(1, 4)))
    with pytest.raises(ShapeError, match="do not broadcast"):
        associative_scan(lambda a, b: a, (torch.ones(2, 5), torch.ones(3, 5)))
    with pytest.raises(ShapeError, match="tuple of 2"):
        associative_scan(lambda a, b: a[0], (torch.ones(1, 5), torch.ones(1, 5)))
    with pytest.raises(LqgtError):
        associative_scan(lambda a, b: a, ("x", torch.ones(1, 5)))
    assert issubclass(ShapeError, ValueError)
