"""Fused Transformer Filter closed loop: a generated Triton kernel (kernel form of SPEC §3).

One GPU thread owns one trajectory for the whole horizon: the plant state ``x``, the
filter's estimate ``x̃`` and the cost sit in registers as separate ``(BB,)`` vectors (the
small matrix products unrolled over their non-zero entries, as in
:mod:`lqgt.kernels.linear_loop`), and the window of whitened keys ``R z[i]`` sits in ``d``
register tiles of shape ``(BB, H')`` (``H'`` the window rounded up to a power of two), used
as a ring buffer. Per step, in the order of :func:`lqgt.simulate`'s predictor loop:

    u = −K x̃,   y = C x + D u + v,   cost += [x; u]' Qz [x; u]  (steps ≥ burn-in)
    k = R z,  z = [x̃; y] (closed-loop filter) or [x̃; y; u] (exogenous input)
    α_i ∝ exp(−β ‖k − k_i‖²) over the filled slots (the new key included: weight 1),
    x̃ ← (Σ_i α_i k_i) (M R⁻¹)',   x ← A x + B u + w

with ``w = W^{1/2} e[:n]``, ``v = V^{1/2} e[n:]`` and the standard normals ``e`` drawn by
Philox in the counter layout of :mod:`lqgt.kernels.philox` (the same numbers as the fused
linear loop of the same call: common random numbers across estimators), or read from a
tensor (debug entry ``noise=``). The window lives in a ``(d, B, H')`` tensor between
chunks of the horizon.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from .._torch import tensor
from ..closed_loop import _output_slices
from ..errors import ConfigError
from ._codegen import (
    EPILOGUE,
    HEADER,
    column,
    entries,
    hoisted_loads,
    interpreting,
    load_kernel,
    matvec,
    noise_lines,
    pattern_key,
    prologue,
    triton_module,
    unpack_pattern,
)
from .linear_loop import _quadratic_factor

__all__ = ["TFLoop", "TritonTFRunner", "launch_shape", "run_tf_loop"]

_MATS = ("at", "bt", "ct", "dt", "kt", "wh", "vh", "rt", "mr", "uq")


def _p2(k: int) -> int:
    return 1 << max(0, int(k) - 1).bit_length()


@dataclass
class TFLoop:
    """Matrices of a fused Transformer Filter loop (row-vector convention: ``x' = x A' + …``).

    Attributes
    ----------
    at, bt, ct, dt : torch.Tensor, shapes (n, n), (m, n), (n, p), (m, p)
        ``A'``, ``B'``, ``C'``, ``D'`` of the true plant.
    kt : torch.Tensor, shape (n, m)
        ``-K'`` (the loop's feedback ``u = x̃ kt``).
    wh, vh : torch.Tensor, shapes (n, n), (p, p)
        ``W^{1/2}'``, ``V^{1/2}'`` (noise ``w = e[:n] wh``).
    rt : torch.Tensor, shape (d, d)
        Key map ``R'`` (``k = z R'``, ``R'R = S``).
    mr : torch.Tensor, shape (d, n)
        Value map ``(M R⁻¹)'``.
    uq, sign : torch.Tensor, shapes (n + m, r), (r,)
        Cost factors: ``[x; u]' Qz [x; u] = Σ_j sign_j ([x; u]' uq)_j²``.
    beta : float
        Inverse temperature (capped at 1e30 in float32, as on the torch path).
    window : int
        ``H``.
    exogenous : bool
        Tokens carry ``u`` (filter built without ``K``).
    m0 : torch.Tensor, shape (n,)
        ``x̃[0]``.
    """

    at: torch.Tensor
    bt: torch.Tensor
    ct: torch.Tensor
    dt: torch.Tensor
    kt: torch.Tensor
    wh: torch.Tensor
    vh: torch.Tensor
    rt: torch.Tensor
    mr: torch.Tensor
    uq: torch.Tensor
    sign: torch.Tensor
    beta: float
    window: int
    exogenous: bool
    m0: torch.Tensor

    @classmethod
    def build(cls, tf, plant, K: np.ndarray, Wh: np.ndarray, Vh: np.ndarray, Qz: np.ndarray, device,
              dtype) -> TFLoop:
        """Collect the loop of ``plant`` under ``u = -K x̃`` with the Transformer Filter ``tf`` (kernel form).

        Parameters
        ----------
        tf : TransformerFilter
            The filter (its model, ``M``, ``S``, β and window; ``impl="kernel"``).
        plant : Plant
            The true (linear) plant.
        K : numpy.ndarray, shape (m, n)
            The loop's feedback gain.
        Wh, Vh : numpy.ndarray, shapes (n, n), (p, p)
            Square roots of the true process and measurement noise covariances.
        Qz : numpy.ndarray, shape (n + m, n + m)
            Cost weight of ``[x; u]`` (cross weight included).
        device : torch.device
            Device of the matrices.
        dtype : torch.dtype
            Their dtype.

        Returns
        -------
        TFLoop
        """
        U, sign = _quadratic_factor(Qz)
        t = lambda M: tensor(np.ascontiguousarray(M, dtype=float), device, dtype).contiguous()
        beta = min(tf.beta, 1e30) if dtype == torch.float32 else tf.beta
        return cls(at=t(plant.A.T), bt=t(plant.B.T), ct=t(plant.C.T), dt=t(plant.D.T), kt=t(-np.asarray(K).T),
                   wh=t(Wh.T), vh=t(Vh.T), rt=t(tf._S_chol.T), mr=t(tf._M_Rinv.T), uq=t(U), sign=t(sign),
                   beta=float(beta), window=int(tf.window), exogenous=not tf.closed_loop, m0=t(tf.plant.m0))

    @property
    def dims(self) -> tuple[int, int, int, int, int]:
        """``(n, m, p, d, r)``: state, input, output, token width, cost rank."""
        return self.at.shape[0], self.bt.shape[0], self.ct.shape[1], self.rt.shape[0], self.uq.shape[1]

    def pattern(self) -> tuple:
        """Non-zero patterns of the matrices (the generated kernel's key)."""
        return pattern_key([getattr(self, k) for k in _MATS])


def _source(n: int, m: int, p: int, d: int, r: int, H: int, exo: bool, store: bool, ext: bool, pattern: tuple) -> str:
    """Triton source of the fused Transformer Filter loop for one shape, window and sparsity pattern.

    The matrix entries are loaded into registers once, before the time loop.
    """
    pats = dict(zip(_MATS, pattern))
    ent = {k: entries(k, M, hoist=True) for k, M in pats.items()}
    HP, ind, Q = _p2(H), "        ", n + p
    L = HEADER + [
        "@triton.jit",
        "def kernel(x_ptr, h_ptr, keys_ptr, cost_ptr, " + ", ".join(f"{k}_ptr" for k in _MATS) + ",",
        "           sg_ptr, beta_ptr, noise_ptr, out_ptr, B, t0, c, lo, seed, BB: tl.constexpr):",
    ] + prologue("x_ptr") + [
        f"    ih = tl.arange(0, {HP})[None, :]",
        f"    kofs = rbl[:, None] * {HP} + ih",
    ]
    L += [f"    x{i} = tl.load(x_ptr + rbl * {n} + {i}, mask=bm, other=0.0)" for i in range(n)]
    L += [f"    h{i} = tl.load(h_ptr + rbl * {n} + {i}, mask=bm, other=0.0)" for i in range(n)]
    L += [f"    k{c} = tl.load(keys_ptr + {c} * B * {HP} + kofs, mask=bm[:, None], other=0.0)" for c in range(d)]
    L += [f"    s{j} = tl.load(sg_ptr + {j})" for j in range(r)]
    L.append("    beta = tl.load(beta_ptr)  # a tensor of the loop's dtype: a float argument would be float32")
    L += [line for k, M in pats.items() for line in hoisted_loads(k, M)]
    L.append("    for k in range(c):")
    L += noise_lines(Q, ext, ind)
    L += [f"{ind}u{j} = {matvec(column(ent['kt'], 'h', j))}" for j in range(m)]
    L += [f"{ind}v{j} = {matvec([(f'e{n + q}', e) for (q, jj), e in ent['vh'].items() if jj == j])}" for j in range(p)]
    L += [f"{ind}y{j} = {matvec(column(ent['ct'], 'x', j) + column(ent['dt'], 'u', j))} + v{j}" for j in range(p)]
    # cost of z = [x; u]: rows of uq for x, then for u
    for j in range(r):
        terms = [(f"x{i}" if i < n else f"u{i - n}", e) for (i, jj), e in ent["uq"].items() if jj == j]
        L.append(f"{ind}r{j} = {matvec(terms)}")
    L.append(f"{ind}acc += tl.where(k >= lo, " + " + ".join(f"s{j} * r{j} * r{j}" for j in range(r)) + ", 0.0)")
    # token z = [x̃; y] (; u), whitened key q = z R'
    z = [f"h{i}" for i in range(n)] + [f"y{j}" for j in range(p)] + ([f"u{j}" for j in range(m)] if exo else [])
    for c in range(d):
        terms = [(z[a], e) for (a, cc), e in ent["rt"].items() if cc == c]
        L.append(f"{ind}q{c} = {matvec(terms)}")
    L.append(f"{ind}t = t0 + k")
    L.append(f"{ind}slot = ih == (t % {H})")
    L += [f"{ind}k{c} = tl.where(slot, q{c}[:, None], k{c})" for c in range(d)]
    L.append(f"{ind}dist = " + " + ".join(f"(k{c} - q{c}[:, None]) * (k{c} - q{c}[:, None])" for c in range(d)))
    L.append(f"{ind}wgt = tl.where((ih <= t) & (ih < {H}), tl.exp(dist * (-beta)), 0.0)")
    L.append(f"{ind}wsum = tl.sum(wgt, axis=1)")
    L += [f"{ind}a{c} = tl.sum(wgt * k{c}, axis=1) / wsum" for c in range(d)]
    L += [f"{ind}w{i} = {matvec(column(ent['wh'], 'e', i))}" for i in range(n)]
    L += [f"{ind}xn{i} = {matvec(column(ent['at'], 'x', i) + column(ent['bt'], 'u', i))} + w{i}" for i in range(n)]
    L += [f"{ind}hn{i} = {matvec(column(ent['mr'], 'a', i))}" for i in range(n)]
    if store:
        # the stores come last in the step: placed before the attention, Triton 3.6's layout pass
        # fails on small n ("operand does not dominate this use")
        R = 2 * n + m + p
        L.append(f"{ind}orow = (k * B + rbl) * {R}")
        cols = [f"x{i}" for i in range(n)] + [f"h{i}" for i in range(n)] + [f"u{j}" for j in range(m)] + \
               [f"y{j}" for j in range(p)]
        L += [f"{ind}tl.store(out_ptr + orow + {j}, {v}, mask=bm)" for j, v in enumerate(cols)]
    L += [f"{ind}h{i} = hn{i}" for i in range(n)]
    L += [f"{ind}x{i} = xn{i}" for i in range(n)]
    L += [f"    tl.store(x_ptr + rbl * {n} + {i}, x{i}, mask=bm)" for i in range(n)]
    L += [f"    tl.store(h_ptr + rbl * {n} + {i}, h{i}, mask=bm)" for i in range(n)]
    L += [f"    tl.store(keys_ptr + {c} * B * {HP} + kofs, k{c}, mask=bm[:, None])" for c in range(d)]
    L += EPILOGUE
    return "\n".join(L)


@functools.lru_cache(maxsize=32)
def _kernel(n, m, p, d, r, H, exo, store, ext, pattern):
    return load_kernel(_source(n, m, p, d, r, H, exo, store, ext, unpack_pattern(pattern)), "tf_loop")


def launch_shape(window: int, itemsize: int) -> tuple[int, int]:
    """Default launch shape of the fused TF loop: 4 warps, each holding about 64 bytes per thread of
    every key tile (``trajectories per warp × H' × itemsize = 2048``, between 2 and 32).

    Measured on an H200 (two_mass, batch 1e6, H = 32): float32 is fastest at 16 trajectories per
    warp (8.4–8.7e9 trajectory-steps/s whether 1, 2 or 4 warps; 6.2e9 at 8 per warp), float64 at 8
    (1.47e9); more per warp spills the window out of registers (0.3–0.5e9).

    Parameters
    ----------
    window : int
        The filter's window ``H`` (steps, ≥ 1); the kernel holds ``H'``, ``H`` rounded up to a
        power of two, slots per token coordinate.
    itemsize : int
        Bytes per element of the loop's dtype (4 for float32, 8 for float64).

    Returns
    -------
    block, num_warps : int
        Trajectories per program and warps per program.

    Raises
    ------
    ConfigError
        ``window`` below 1 or ``itemsize`` not a positive integer.
    """
    if int(window) < 1 or int(itemsize) < 1:
        raise ConfigError(f"launch_shape needs window >= 1 and itemsize >= 1, got window={window}, itemsize={itemsize}")
    per_warp = min(32, max(2, 2048 // (_p2(window) * int(itemsize))))
    return 4 * per_warp, 4


def run_tf_loop(loop: TFLoop, x: torch.Tensor, h: torch.Tensor, keys: torch.Tensor, cost: torch.Tensor, *,
                t0: int, steps: int, lo: int = 0, seed: int = 0, noise: torch.Tensor | None = None,
                out: torch.Tensor | None = None, block: int | None = None, num_warps: int | None = None) -> None:
    """Launch the fused Transformer Filter loop for steps ``t0 .. t0 + steps - 1`` (in place).

    Parameters
    ----------
    loop : TFLoop
        The loop matrices (same device and dtype as ``x``).
    x, h : torch.Tensor, shape (B, n), contiguous
        Plant state and the filter's estimate ``x̃``; advanced in place.
    keys : torch.Tensor, shape (d, B, H'), contiguous
        The window of whitened keys (ring buffer by ``t mod H``; zeros at the start).
    cost : torch.Tensor, shape (B,)
        Cost accumulator (steps ``lo..steps-1``, relative, are added in place).
    t0 : int
        Absolute index of the first step (Philox counter and ring slot).
    steps : int
        Number of steps.
    lo : int
        Relative steps before ``lo`` are not costed (burn-in).
    seed : int
        Philox key, ``0 <= seed < 2**63``.
    noise : torch.Tensor of shape (steps, B, n + p), optional
        Debug entry: these standard normals instead of Philox's.
    out : torch.Tensor of shape (steps, B, 2n + m + p), optional
        Where to write ``[x; x̃; u; y]`` per step.
    block : int, optional
        Trajectories per program (default :func:`launch_shape`; 8 in Triton's interpreter).
    num_warps : int, optional
        Warps per program (default :func:`launch_shape`).

    Raises
    ------
    RuntimeError
        Triton is not available.
    """
    if triton_module() is None:
        raise RuntimeError("lqgt.kernels needs Triton (pip install triton); use backend='torch'")
    n, m, p, d, r = loop.dims
    auto_block, auto_warps = launch_shape(loop.window, x.element_size())
    if block is None:
        block = 8 if interpreting() else auto_block
    if noise is not None:
        noise = noise.to(device=x.device, dtype=x.dtype).contiguous()
    kern = _kernel(n, m, p, d, r, loop.window, loop.exogenous, out is not None, noise is not None, loop.pattern())
    grid = (math.ceil(x.shape[0] / block),)
    beta = torch.full((1,), loop.beta, device=x.device, dtype=x.dtype)
    kern[grid](x, h, keys, cost, *(getattr(loop, k) for k in _MATS), loop.sign, beta,
               noise if noise is not None else x, out if out is not None else x,
               x.shape[0], int(t0), int(steps), int(lo), int(seed), BB=block,
               num_warps=num_warps or auto_warps)


class TritonTFRunner:
    """Simulator runner of the fused Transformer Filter loop (the interface of ``lqgt.simulate``'s runners)."""

    needs_wv = False
    needs_e = False

    def __init__(self, plant, Kmat, tf, noise, Qz_np, dev, dt, store):
        self.loop = TFLoop.build(tf, plant, Kmat, noise.Wh_np, noise.Vh_np, Qz_np, dev, dt)
        self.seed = noise.kernel_seed
        B, n = noise.batch, plant.n
        self.x = noise.x0.clone().contiguous()
        self.h = self.loop.m0.expand(B, n).clone().contiguous()
        self.keys = torch.zeros(self.loop.rt.shape[0], B, _p2(self.loop.window), device=dev, dtype=dt)
        self.slices = _output_slices(n, plant.m, plant.p)
        self.store = store
        self.diverged_at = None

    def __call__(self, e, wv, lo, d=None, t0=0):
        c = e.shape[0]
        B = self.x.shape[0]
        cost = torch.zeros(B, device=self.x.device, dtype=self.x.dtype)
        out = None
        if self.store:
            out = torch.empty(c, B, self.slices["y"].stop, device=self.x.device, dtype=self.x.dtype)
        run_tf_loop(self.loop, self.x, self.h, self.keys, cost, t0=t0, steps=c, lo=lo, seed=self.seed, out=out)
        if self.diverged_at is None and not bool(torch.isfinite(self.x).all()):
            self.diverged_at = t0 + c
        traj = None if out is None else {key: out[..., s] for key, s in self.slices.items()}
        return (cost if lo < c else None), traj
