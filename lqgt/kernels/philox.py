"""Counter layout of the fused kernels' noise, and a torch reference of it.

Standard normal ``e[b, t, j]`` (trajectory ``b``, step ``t``, component ``j``) is the
``j % 4``-th output of Box-Muller applied to Philox-4x32-10 with key ``seed`` (64 bits, split
into two 32-bit words) and counter ``(b, t, j // 4, 0)``: outputs 0, 1 come from the
uniforms of words 0, 1 (cos, sin), outputs 2, 3 from words 2, 3. The numbers depend only
on ``(seed, b, t, j)``, so every estimator of one call (same seed) sees the same noise, any
chunking of the horizon gives the same numbers, and trajectories and steps use disjoint
counters (independent streams).
"""

from __future__ import annotations

import math

import torch

__all__ = ["philox4x32", "philox_normals"]

_M32 = 0xFFFFFFFF
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hi, lo)`` 32-bit words of ``a * b`` for a 32-bit constant ``a`` and int64 words ``b``."""
    lo_part = b * (a & 0xFFFF)          # < 2^48
    hi_part = b * (a >> 16)             # < 2^48
    s = lo_part + ((hi_part & 0xFFFF) << 16)
    return (hi_part >> 16) + (s >> 32), s & _M32


def philox4x32(seed: int, c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor,
               rounds: int = 10) -> tuple[torch.Tensor, ...]:
    """Philox-4x32 (as ``triton.language.philox``) on int64 tensors holding 32-bit words.

    Parameters
    ----------
    seed : int
        Key, ``0 <= seed < 2**63``.
    c0, c1, c2, c3 : torch.Tensor
        Counter words (int64, values in ``[0, 2**32)``), broadcastable.
    rounds : int
        Number of rounds.

    Returns
    -------
    tuple of torch.Tensor
        The four output words (int64 in ``[0, 2**32)``).
    """
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    c0, c1, c2, c3 = torch.broadcast_tensors(c0, c1, c2, c3)
    for _ in range(rounds):
        hi_b, lo_b = _mulhilo(_ROUND_B, c2)
        hi_a, lo_a = _mulhilo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _M32, (k1 + _KEY_B) & _M32
    return c0, c1, c2, c3


def _uniform(x: torch.Tensor) -> torch.Tensor:
    """``triton.language.random.uint_to_uniform_float`` for 32-bit words (float32 in [0, 1))."""
    s = torch.where(x >= 2 ** 31, x - 2 ** 32, x)  # as int32
    s = torch.where(s < 0, -s - 1, s)  # ~x
    return s.to(torch.float32) * 4.6566127342e-10


def _box_muller(u1: torch.Tensor, u2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    u1 = torch.clamp(u1, min=1.0e-7)
    th = 6.283185307179586 * u2
    r = torch.sqrt(-2.0 * torch.log(u1))
    return r * torch.cos(th), r * torch.sin(th)


def philox_normals(seed: int, batch: int, t0: int, steps: int, width: int, device=None,
                   b0: int = 0) -> torch.Tensor:
    """The kernels' standard normals ``e[b, t, j]`` for ``b0 <= b < b0 + batch``, ``t0 <= t < t0 + steps``.

    Parameters
    ----------
    seed : int
        Key of the generator, ``0 <= seed < 2**63``.
    batch : int
        Number of trajectories.
    t0 : int
        First step.
    steps : int
        Number of steps.
    width : int
        Components per step (``n + p``).
    device : torch.device, optional
        Device of the result.
    b0 : int
        First trajectory.

    Returns
    -------
    torch.Tensor, shape (steps, batch, width), float32
        Time-major, as the simulator's noise chunks.
    """
    dev = torch.device("cpu") if device is None else torch.device(device)
    b = torch.arange(b0, b0 + batch, device=dev, dtype=torch.int64).view(1, batch, 1)
    t = torch.arange(t0, t0 + steps, device=dev, dtype=torch.int64).view(steps, 1, 1)
    g = torch.arange(math.ceil(width / 4), device=dev, dtype=torch.int64).view(1, 1, -1)
    r0, r1, r2, r3 = philox4x32(int(seed), b, t, g, torch.zeros_like(g))
    n0, n1 = _box_muller(_uniform(r0), _uniform(r1))
    n2, n3 = _box_muller(_uniform(r2), _uniform(r3))
    e = torch.stack([n0, n1, n2, n3], dim=-1).reshape(steps, batch, -1)
    return e[..., :width].contiguous()
