"""Parallel associative scans over dim 1 of batch-first tensors.

A scan (prefix reduction) of elements ``e[0], ..., e[T-1]`` under an associative operator
``⊗`` returns, for every ``k``,

    forward (inclusive):  out[k] = e[0] ⊗ e[1] ⊗ ... ⊗ e[k]
    reverse (inclusive):  out[k] = e[k] ⊗ e[k+1] ⊗ ... ⊗ e[T-1]

An *element* is a tuple of tensors (or a single tensor) whose dim 1 is the scan axis (length
``T``) and whose dim 0 is a batch axis. The batch axis may differ between the tensors of a
tuple as long as it broadcasts (size 1 or ``B``): a Kalman filter element keeps its
data-independent matrices with batch 1 and its data-dependent vectors with batch ``B``.
``fn(a, b)`` combines two elements slice-wise over ``(batch, k)``, with ``a`` the EARLIER one
in index order, in both directions. (``jax.lax.associative_scan(..., reverse=True)`` passes
the later element first; here the order of the arguments never depends on ``reverse``.)

Two algorithms, both ``O(log T)`` depth:

``"odd_even"`` (default)
    The recursive odd/even scheme of ``jax.lax.associative_scan`` (Blelloch's work-efficient
    scan written as a recursion): combine neighbouring pairs, scan the half-length sequence
    recursively, then fill in the even positions. About ``2 T`` calls of ``fn`` on slices in
    ``2 ⌈log2 T⌉`` rounds: ``O(T)`` work.
``"hillis_steele"``
    ``out[i] ← out[i - d] ⊗ out[i]`` for ``d = 1, 2, 4, ...``: ``⌈log2 T⌉`` rounds of one
    call each, ``O(T log T)`` work. Fewer rounds (fewer kernel launches) at the price of
    more arithmetic; competitive only when the per-element work is tiny.

:func:`sequential_scan` is the plain loop with the same semantics (a reference).

The scans only slice, concatenate and call ``fn``, so they are differentiable by autograd
whenever ``fn`` is, and run on any device. torch has no stable general
``associative_scan`` on every supported version; this module is lqgt's own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .errors import ConfigError, ShapeError

__all__ = ["SCAN_METHODS", "associative_scan", "sequential_scan"]

Elem = tuple[torch.Tensor, ...]
Combine = Callable[..., object]

#: Accepted values of ``method`` in :func:`associative_scan`.
SCAN_METHODS = ("odd_even", "hillis_steele")


def _slice(elems: Elem, start: int | None, stop: int | None, step: int | None = None) -> Elem:
    return tuple(e[:, start:stop:step] for e in elems)


def _expand0(*ts: torch.Tensor) -> list[torch.Tensor]:
    """Broadcast the batch dim 0 of tensors (size 1 or a common ``B``)."""
    n0 = max(t.shape[0] for t in ts)
    return [t if t.shape[0] == n0 else t.expand(n0, *t.shape[1:]) for t in ts]


def _cat(*ts: torch.Tensor) -> torch.Tensor:
    """Concatenate along dim 1, broadcasting the batch dim 0."""
    return torch.cat(_expand0(*ts), dim=1)


def _interleave(even: torch.Tensor, odd: torch.Tensor) -> torch.Tensor:
    """``out[:, 0::2] = even``, ``out[:, 1::2] = odd`` (``len(even) - len(odd)`` is 0 or 1)."""
    even, odd = _expand0(even, odd)
    ne, no = even.shape[1], odd.shape[1]
    pairs = torch.stack([even[:, :no], odd], dim=2).flatten(1, 2)
    if ne > no:
        pairs = torch.cat([pairs, even[:, no:]], dim=1)
    return pairs


def _scan_odd_even(fn: Callable[[Elem, Elem], Elem], elems: Elem) -> Elem:
    T = elems[0].shape[1]
    if T < 2:
        return elems
    # pairs (e0⊗e1, e2⊗e3, ...): the prefixes at the odd positions, once scanned
    reduced = fn(_slice(elems, 0, -1, 2), _slice(elems, 1, None, 2))
    odd = _scan_odd_even(fn, tuple(reduced))
    # even positions 2, 4, ...: (prefix at the odd position before) ⊗ e[2k]
    if T % 2 == 0:
        even = fn(_slice(odd, 0, -1), _slice(elems, 2, None, 2))
    else:
        even = fn(odd, _slice(elems, 2, None, 2))
    even = tuple(_cat(e[:, :1], r) for e, r in zip(elems, even))
    return tuple(_interleave(e, o) for e, o in zip(even, odd))


def _scan_hillis_steele(fn: Callable[[Elem, Elem], Elem], elems: Elem) -> Elem:
    T = elems[0].shape[1]
    out = elems
    d = 1
    while d < T:
        combined = fn(_slice(out, 0, T - d), _slice(out, d, None))
        out = tuple(_cat(o[:, :d], c) for o, c in zip(out, combined))
        d *= 2
    return out


def _normalise(fn: Combine, elems) -> tuple[Callable[[Elem, Elem], Elem], Elem, bool]:
    single = isinstance(elems, torch.Tensor)
    if single:
        tup: Elem = (elems,)

        def call(a: Elem, b: Elem) -> Elem:
            return (fn(a[0], b[0]),)
    else:
        if not isinstance(elems, Sequence) or len(elems) == 0:
            raise ShapeError("elems must be a tensor or a non-empty tuple of tensors")
        tup = tuple(elems)

        def call(a: Elem, b: Elem) -> Elem:
            out = fn(a, b)
            if not isinstance(out, (tuple, list)) or len(out) != len(a):
                raise ShapeError(
                    f"fn must return a tuple of {len(a)} tensors (the structure of elems), "
                    f"got {type(out).__name__}"
                )
            return tuple(out)

    for k, e in enumerate(tup):
        if not isinstance(e, torch.Tensor):
            raise ShapeError(f"elems[{k}] must be a torch.Tensor, got {type(e).__name__}")
        if e.ndim < 2:
            raise ShapeError(
                f"elems[{k}] has shape {tuple(e.shape)}; scans run over dim 1 of batch-first "
                "tensors (batch, T, ...), so every tensor needs at least 2 dimensions"
            )
    T = tup[0].shape[1]
    for k, e in enumerate(tup):
        if e.shape[1] != T:
            raise ShapeError(f"elems[{k}] has length {e.shape[1]} along dim 1, elems[0] has {T}")
    b0 = {e.shape[0] for e in tup} - {1}
    if len(b0) > 1:
        raise ShapeError(f"the batch sizes (dim 0) of elems do not broadcast: {sorted(b0)}")
    return call, tup, single


def associative_scan(
    fn: Combine,
    elems: torch.Tensor | Sequence[torch.Tensor],
    *,
    reverse: bool = False,
    method: str = "odd_even",
):
    """Inclusive parallel scan of ``elems`` along dim 1 under the associative ``fn``.

    Parameters
    ----------
    fn : callable
        ``fn(a, b) -> c``: combines two elements, ``a`` earlier in index order than ``b``
        (also when ``reverse=True``). ``a`` and ``b`` have the structure of ``elems`` (a
        tuple of tensors, or one tensor) with shapes ``(batch, k, ...)``; the result must
        have the same structure and shapes (batch dims may broadcast). ``fn`` must be
        associative: ``fn(fn(a, b), c) == fn(a, fn(b, c))`` up to rounding.
    elems : torch.Tensor or sequence of torch.Tensor
        The elements, each tensor of shape ``(batch, T, ...)``; ``batch`` is 1 or a common
        ``B`` across the tuple.
    reverse : bool, optional
        ``False``: ``out[k] = e[0] ⊗ ... ⊗ e[k]``; ``True``: ``out[k] = e[k] ⊗ ... ⊗ e[T-1]``.
    method : {"odd_even", "hillis_steele"}, optional
        The algorithm (see the module docstring). ``"odd_even"`` by default.

    Returns
    -------
    torch.Tensor or tuple of torch.Tensor
        The prefixes (suffixes when ``reverse``), same structure as ``elems``, shapes
        ``(batch', T, ...)`` with ``batch'`` the broadcast batch size of what ``fn`` returns.

    Raises
    ------
    ConfigError
        ``method`` is not one of :data:`SCAN_METHODS`.
    ShapeError
        ``elems`` are not tensors of at least 2 dimensions with a common length along dim 1
        and broadcastable batch sizes, or ``fn`` returns the wrong structure.

    Examples
    --------
    Cumulative matrix products ``M[0] @ M[1] @ ... @ M[k]`` in ``O(log T)`` depth:

    >>> import torch
    >>> from lqgt.scan import associative_scan
    >>> M = torch.randn(1, 100, 3, 3, dtype=torch.float64) / 2
    >>> P = associative_scan(lambda a, b: a @ b, M)
    >>> bool(torch.allclose(P[0, 2], M[0, 0] @ M[0, 1] @ M[0, 2]))
    True
    """
    if method not in SCAN_METHODS:
        raise ConfigError(f"method must be one of {SCAN_METHODS}, got {method!r}")
    call, tup, single = _normalise(fn, elems)
    impl = _scan_odd_even if method == "odd_even" else _scan_hillis_steele
    if tup[0].shape[1] == 0:
        out = tup
    elif reverse:
        flipped = tuple(torch.flip(e, dims=(1,)) for e in tup)
        out = impl(lambda a, b: call(b, a), flipped)
        out = tuple(torch.flip(e, dims=(1,)) for e in out)
    else:
        out = impl(call, tup)
    return out[0] if single else out


def sequential_scan(
    fn: Combine,
    elems: torch.Tensor | Sequence[torch.Tensor],
    *,
    reverse: bool = False,
):
    """Reference scan: the same result as :func:`associative_scan`, by a plain loop.

    Parameters
    ----------
    fn : callable
        ``fn(a, b)``, ``a`` earlier in index order (see :func:`associative_scan`).
    elems : torch.Tensor or sequence of torch.Tensor
        Elements of shape ``(batch, T, ...)``.
    reverse : bool, optional
        Suffix scan instead of prefix scan.

    Returns
    -------
    torch.Tensor or tuple of torch.Tensor
        Same structure and shapes as :func:`associative_scan` returns.
    """
    call, tup, single = _normalise(fn, elems)
    T = tup[0].shape[1]
    if T == 0:
        return tup[0] if single else tup
    order = range(T - 1, -1, -1) if reverse else range(T)
    acc: Elem | None = None
    outs: list[Elem] = []
    for k in order:
        e = _slice(tup, k, k + 1)
        if acc is None:
            acc = e
        else:
            acc = call(e, acc) if reverse else call(acc, e)
        outs.append(acc)
    if reverse:
        outs.reverse()
    res = tuple(_cat(*parts) for parts in zip(*outs))
    return res[0] if single else res
