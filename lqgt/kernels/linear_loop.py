"""Fused fixed-gain linear closed loop: a Triton kernel and its torch reference.

The loop is the simulator's closed-loop form (:mod:`lqgt.closed_loop`), with the noise
factors folded in: for standard normals ``e[t]`` (``n + p`` of them),

    ξ[t+1] = ξ[t] Fᵀ + e[t] Gd,      r[t] = ξ[t] Hq + e[t] Jq,      cost += Σ_k sign_k r_k[t]²

(steps ``t >= burn_in`` only), and with stored trajectories ``[x; x̂; u; y][t] = ξ[t] Hᵀ +
e[t] Je``. One kernel program owns a block of trajectories and keeps ``ξ`` and its cost in
registers for the whole run; the small matrix products are broadcasts and ``tl.sum`` over
padded power-of-two tiles (any ``n, m, p``; registers grow as ``(2n)²``, comfortable up to
``n = 16``). The noise is drawn in the kernel with Philox (counter layout in
:mod:`lqgt.kernels.philox`) or, for debugging, read from a tensor (``noise=``).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from .._torch import tensor
from ..closed_loop import closed_loop

__all__ = ["LinearLoop", "reference_linear_loop", "run_linear_loop", "triton_available"]


@functools.lru_cache(maxsize=1)
def _triton():
    """The compiled kernel, or ``None`` without Triton."""
    global triton, tl, philox, pair_uniform_to_normal, uint_to_uniform_float, _mat, _vm  # the JIT resolves module globals
    try:
        import triton
        import triton.language as tl
        from triton.language.random import pair_uniform_to_normal, philox, uint_to_uniform_float
    except Exception:  # noqa: BLE001 - any import failure means: no Triton
        return None

    @triton.jit
    def _mat(ptr, rows, cols, NR: tl.constexpr, NC: tl.constexpr):
        return tl.load(ptr + rows[:, None] * NC + cols[None, :], mask=(rows[:, None] < NR) & (cols[None, :] < NC),
                       other=0.0)

    @triton.jit
    def _vm(v, M):
        """Row-vector block times matrix: ``(BB, I) x (I, J) -> (BB, J)`` by broadcast and sum."""
        return tl.sum(v[:, :, None] * M[None, :, :], axis=1)

    @triton.jit
    def kernel(xi_ptr, cost_ptr, ft_ptr, gd_ptr, hq_ptr, jq_ptr, sg_ptr, ht_ptr, je_ptr, noise_ptr, out_ptr,
               B, t0, c, lo, seed,
               W: tl.constexpr, Q: tl.constexpr, K: tl.constexpr, R: tl.constexpr,
               WP: tl.constexpr, GP: tl.constexpr, KP: tl.constexpr, RP: tl.constexpr,
               BB: tl.constexpr, STORE: tl.constexpr, EXT: tl.constexpr):
        # the noise e (n + p per step) is handled as four (BB, GP) tiles e_k[:, g] = e[:, 4g + k]
        # (one Philox call gives the four), and every matrix acting on e as four row-subsets
        dt = xi_ptr.dtype.element_ty
        pid = tl.program_id(0)
        rb = pid * BB + tl.arange(0, BB)
        bm = rb < B
        iw = tl.arange(0, WP)
        ig = tl.arange(0, GP)
        ik = tl.arange(0, KP)
        ir = tl.arange(0, RP)
        FT = _mat(ft_ptr, iw, iw, W, W)
        G0 = _mat(gd_ptr, 4 * ig + 0, iw, Q, W)
        G1 = _mat(gd_ptr, 4 * ig + 1, iw, Q, W)
        G2 = _mat(gd_ptr, 4 * ig + 2, iw, Q, W)
        G3 = _mat(gd_ptr, 4 * ig + 3, iw, Q, W)
        HQ = _mat(hq_ptr, iw, ik, W, K)
        J0 = _mat(jq_ptr, 4 * ig + 0, ik, Q, K)
        J1 = _mat(jq_ptr, 4 * ig + 1, ik, Q, K)
        J2 = _mat(jq_ptr, 4 * ig + 2, ik, Q, K)
        J3 = _mat(jq_ptr, 4 * ig + 3, ik, Q, K)
        SG = tl.load(sg_ptr + ik, mask=ik < K, other=0.0)
        if STORE:
            HT = _mat(ht_ptr, iw, ir, W, R)
            E0 = _mat(je_ptr, 4 * ig + 0, ir, Q, R)
            E1 = _mat(je_ptr, 4 * ig + 1, ir, Q, R)
            E2 = _mat(je_ptr, 4 * ig + 2, ir, Q, R)
            E3 = _mat(je_ptr, 4 * ig + 3, ir, Q, R)
        xi = tl.load(xi_ptr + rb[:, None] * W + iw[None, :], mask=bm[:, None] & (iw[None, :] < W), other=0.0)
        acc = tl.zeros((BB,), dtype=dt)
        c0 = rb[:, None] + ig[None, :] * 0
        c2 = c0 * 0 + ig[None, :]
        zero = c0 * 0
        for k in range(c):
            if EXT:
                base = noise_ptr + (k * B + rb[:, None]) * Q + 4 * ig[None, :]
                e0 = tl.load(base + 0, mask=bm[:, None] & (4 * ig[None, :] + 0 < Q), other=0.0)
                e1 = tl.load(base + 1, mask=bm[:, None] & (4 * ig[None, :] + 1 < Q), other=0.0)
                e2 = tl.load(base + 2, mask=bm[:, None] & (4 * ig[None, :] + 2 < Q), other=0.0)
                e3 = tl.load(base + 3, mask=bm[:, None] & (4 * ig[None, :] + 3 < Q), other=0.0)
            else:
                r0, r1, r2, r3 = philox(seed, c0, zero + (t0 + k), c2, zero)
                n0, n1 = pair_uniform_to_normal(uint_to_uniform_float(r0), uint_to_uniform_float(r1))
                n2, n3 = pair_uniform_to_normal(uint_to_uniform_float(r2), uint_to_uniform_float(r3))
                e0, e1, e2, e3 = n0.to(dt), n1.to(dt), n2.to(dt), n3.to(dt)
            r = _vm(xi, HQ) + _vm(e0, J0) + _vm(e1, J1) + _vm(e2, J2) + _vm(e3, J3)
            s = tl.sum(r * r * SG[None, :], axis=1)
            acc += tl.where(k >= lo, s, 0.0)
            if STORE:
                o = _vm(xi, HT) + _vm(e0, E0) + _vm(e1, E1) + _vm(e2, E2) + _vm(e3, E3)
                tl.store(out_ptr + (k * B + rb[:, None]) * R + ir[None, :], o, mask=bm[:, None] & (ir[None, :] < R))
            xi = _vm(xi, FT) + _vm(e0, G0) + _vm(e1, G1) + _vm(e2, G2) + _vm(e3, G3)
        tl.store(xi_ptr + rb[:, None] * W + iw[None, :], xi, mask=bm[:, None] & (iw[None, :] < W))
        old = tl.load(cost_ptr + rb, mask=bm, other=0.0)
        tl.store(cost_ptr + rb, old + acc, mask=bm)

    return kernel


def triton_available() -> bool:
    """Whether the Triton kernels can run (Triton importable)."""
    return _triton() is not None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _p2(k: int) -> int:
    return 1 << max(0, int(k) - 1).bit_length()


def _quadratic_factor(Qz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(U, sign)`` with ``z'Qz z = Σ_i sign_i (z'U)_i²`` (eigen-decomposition; zero eigenvalues dropped)."""
    lam, V = np.linalg.eigh(0.5 * (Qz + Qz.T))
    keep = np.abs(lam) > 1e-15 * max(float(np.abs(lam).max()), 1e-300)
    if not keep.any():
        keep[-1] = True
    lam, V = lam[keep], V[:, keep]
    return V * np.sqrt(np.abs(lam)), np.sign(lam) + (lam == 0)


@dataclass
class LinearLoop:
    """Matrices of a fused fixed-gain closed loop (row-vector convention, see module docstring).

    Attributes
    ----------
    FT : torch.Tensor, shape (2n, 2n)
        Transposed closed-loop transition.
    Gd : torch.Tensor, shape (n + p, 2n)
        Drive from standard normals (``G blockdiag(W^{1/2}, V^{1/2})``, transposed).
    Hq, Jq : torch.Tensor, shapes (2n, k), (n + p, k)
        Cost factors: the step cost is ``Σ sign_k (ξ Hq + e Jq)_k²``.
    sign : torch.Tensor, shape (k,)
        Signs of the cost factors (all +1 for a positive semidefinite weight).
    HT, Je : torch.Tensor, shapes (2n, 2n + m + p), (n + p, 2n + m + p)
        Output maps to ``[x; x̂; u; y]``.
    m0 : torch.Tensor, shape (n,)
        Initial estimate.
    slices : dict
        Column slices of the outputs (``x``, ``x_hat``, ``u``, ``y``).
    """

    FT: torch.Tensor
    Gd: torch.Tensor
    Hq: torch.Tensor
    Jq: torch.Tensor
    sign: torch.Tensor
    HT: torch.Tensor
    Je: torch.Tensor
    m0: torch.Tensor
    slices: dict

    @classmethod
    def build(cls, plant, K, gain, form: str, model, Wh: np.ndarray, Vh: np.ndarray, Qz: np.ndarray,
              device, dtype) -> "LinearLoop":
        """Fold the loop of ``plant`` under ``u = -K x̂`` and a fixed-gain observer with the noise factors.

        Parameters
        ----------
        plant : Plant
            True plant.
        K : numpy.ndarray, shape (m, n)
            Feedback gain.
        gain : numpy.ndarray
            Observer gain (as returned by ``linear_gain()``).
        form : str
            ``"predictor"`` or ``"current"``.
        model : Plant
            The observer's model.
        Wh, Vh : numpy.ndarray, shapes (n, n), (p, p)
            Square roots of the process and measurement noise covariances.
        Qz : numpy.ndarray, shape (n + m, n + m)
            Cost weight of ``z = [x; u]``.
        device : torch.device
            Device of the matrices.
        dtype : torch.dtype
            Their dtype.

        Returns
        -------
        LinearLoop
        """
        cl = closed_loop(plant, K, gain, form, model=model)
        n, p = plant.n, plant.p
        S = np.zeros((n + p, n + p))
        S[:n, :n], S[n:, n:] = Wh, Vh
        Sv = np.vstack([np.zeros((n, p)), Vh.T])
        sl = cl.slices()
        rows = np.r_[np.arange(sl["x"].start, sl["x"].stop), np.arange(sl["u"].start, sl["u"].stop)]
        U, sign = _quadratic_factor(Qz)
        t = lambda M: tensor(np.ascontiguousarray(M), device, dtype).contiguous()  # noqa: E731
        return cls(FT=t(cl.F.T), Gd=t((cl.G @ S).T), Hq=t(cl.H[rows].T @ U), Jq=t(Sv @ cl.J[rows].T @ U),
                   sign=t(sign), HT=t(cl.H.T), Je=t(Sv @ cl.J.T), m0=t(model.m0), slices=sl)

    @property
    def dims(self) -> tuple[int, int, int, int]:
        """``(W, Q, K, R)``: state width ``2n``, noise width ``n + p``, cost rank, output width."""
        return self.FT.shape[0], self.Gd.shape[0], self.Hq.shape[1], self.HT.shape[1]


def reference_linear_loop(loop: LinearLoop, xi: torch.Tensor, e: torch.Tensor, lo: int = 0,
                          store: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Torch reference of the fused kernel: the same recursion, step by step, on any device.

    Parameters
    ----------
    loop : LinearLoop
        The loop matrices.
    xi : torch.Tensor, shape (B, 2n)
        State ``[x; x̂]`` at the first step.
    e : torch.Tensor, shape (c, B, n + p)
        Standard normals of the ``c`` steps.
    lo : int
        Steps before ``lo`` are not costed.
    store : bool
        Also return the outputs.

    Returns
    -------
    cost : torch.Tensor, shape (B,)
        Cost summed over steps ``lo..c-1``.
    out : torch.Tensor of shape (c, B, 2n + m + p), or None
        ``[x; x̂; u; y]`` per step.
    xi : torch.Tensor, shape (B, 2n)
        State after the last step.
    """
    c = e.shape[0]
    e = e.to(xi.dtype)
    cost = torch.zeros(xi.shape[0], device=xi.device, dtype=xi.dtype)
    out = torch.empty(c, xi.shape[0], loop.HT.shape[1], device=xi.device, dtype=xi.dtype) if store else None
    for k in range(c):
        if k >= lo:
            r = xi @ loop.Hq + e[k] @ loop.Jq
            cost += (r * r * loop.sign).sum(-1)
        if store:
            out[k] = xi @ loop.HT + e[k] @ loop.Je
        xi = xi @ loop.FT + e[k] @ loop.Gd
    return cost, out, xi


def run_linear_loop(loop: LinearLoop, xi: torch.Tensor, cost: torch.Tensor, *, t0: int, steps: int, lo: int = 0,
                    seed: int = 0, noise: torch.Tensor | None = None, out: torch.Tensor | None = None,
                    block: int | None = None) -> None:
    """Launch the fused kernel for steps ``t0 .. t0 + steps - 1`` (in place).

    Parameters
    ----------
    loop : LinearLoop
        The loop matrices (same device and dtype as ``xi``).
    xi : torch.Tensor, shape (B, 2n), contiguous
        State; advanced in place by ``steps`` steps.
    cost : torch.Tensor, shape (B,)
        Cost accumulator; the cost of steps ``lo..steps-1`` (relative) is added in place.
    t0 : int
        Absolute index of the first step (the Philox counter).
    steps : int
        Number of steps.
    lo : int
        Relative steps before ``lo`` are not costed (burn-in).
    seed : int
        Philox key, ``0 <= seed < 2**63``.
    noise : torch.Tensor of shape (steps, B, n + p), optional
        Debug entry: read these standard normals instead of drawing them.
    out : torch.Tensor of shape (steps, B, 2n + m + p), optional
        Where to write ``[x; x̂; u; y]``; ``None``: nothing is stored.
    block : int, optional
        Trajectories per program (power of two).

    Raises
    ------
    RuntimeError
        Triton is not available.
    """
    kern = _triton()
    if kern is None:
        raise RuntimeError("lqgt.kernels needs Triton (pip install triton); use backend='torch'")
    B = xi.shape[0]
    W, Q, K, R = loop.dims
    if block is None:
        block = 16 if _interpreting() else (64 if W > 8 or xi.dtype == torch.float64 else 128)
    if noise is not None:
        noise = noise.to(device=xi.device, dtype=xi.dtype).contiguous()
    grid = (math.ceil(B / block),)
    warps = 4 if _interpreting() else min(16, max(4, block * _p2(W) * max(_p2(W), _p2(R) if out is not None else 1) // 2048))
    kern[grid](xi, cost, loop.FT, loop.Gd, loop.Hq, loop.Jq, loop.sign, loop.HT, loop.Je,
               noise if noise is not None else xi, out if out is not None else xi,
               B, int(t0), int(steps), int(lo), int(seed),
               W=W, Q=Q, K=K, R=R, WP=_p2(W), GP=_p2(-(-Q // 4)), KP=_p2(K), RP=_p2(R),
               BB=block, STORE=out is not None, EXT=noise is not None, num_warps=warps)


class TritonRunner:
    """Simulator runner for the fused kernel (same interface as ``lqgt.simulate``'s runners).

    Draws its own noise (``needs_e = False``): the simulator then draws none.
    """

    needs_wv = False
    needs_e = False

    def __init__(self, plant, Kmat, form, lin, noise, Qz_np, dev, dt, store):
        gain, model = lin
        self.loop = LinearLoop.build(plant, Kmat, gain, form, model, noise.Wh_np, noise.Vh_np, Qz_np, dev, dt)
        self.seed = int(noise.gen.initial_seed()) & ((1 << 63) - 1)
        B = noise.batch
        self.xi = torch.empty(B, 2 * plant.n, device=dev, dtype=dt)
        self.xi[:, :plant.n] = noise.x0
        self.xi[:, plant.n:] = self.loop.m0
        self.store = store
        self.diverged_at = None

    def __call__(self, e, wv, lo, d=None, t0=0):
        c = e.shape[0]
        cost = torch.zeros(self.xi.shape[0], device=self.xi.device, dtype=self.xi.dtype)
        out = None
        if self.store:
            out = torch.empty(c, self.xi.shape[0], self.loop.HT.shape[1], device=self.xi.device, dtype=self.xi.dtype)
        run_linear_loop(self.loop, self.xi, cost, t0=t0, steps=c, lo=lo, seed=self.seed, out=out)
        traj = None if out is None else {key: out[..., s] for key, s in self.loop.slices.items()}
        return (cost if lo < c else None), traj
