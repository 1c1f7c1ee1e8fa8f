"""Fused fixed-gain linear closed loop: a Triton kernel and its torch reference.

The loop is the simulator's closed-loop form (:mod:`lqgt.closed_loop`), with the noise
factors folded in: for standard normals ``e[t]`` (``n + p`` of them),

    ξ[t+1] = ξ[t] Fᵀ + e[t] Gd,      r[t] = ξ[t] Hq + e[t] Jq,      cost += Σ_k sign_k r_k[t]²

(steps ``t >= burn_in`` only), and with stored trajectories ``[x; x̂; u; y][t] = ξ[t] Hᵀ +
e[t] Je``. The kernel is generated for each shape and non-zero pattern of the loop's
matrices (:func:`_source`) and compiled once per process: one thread owns one trajectory
and keeps ``ξ``, its noise and its cost in registers for the whole run, every small matrix
product is unrolled into fused multiply-adds over the non-zero entries only (read through
pointers, so one compiled kernel serves every gain, β or plant of that shape and pattern),
and the noise is drawn in the kernel with Philox (counter layout in
:mod:`lqgt.kernels.philox`) or, for debugging, read from a tensor (``noise=``). Generated
sources go to ``$LQGT_CACHE`` (default ``~/.cache/lqgt``), where Triton reads them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from .._torch import tensor
from ..closed_loop import closed_loop
from ._codegen import (
    EPILOGUE,
    HEADER,
    column,
    hoisted_loads,
    load_kernel,
    noise_lines,
    pattern_key,
    prologue,
    unpack_pattern,
)
from ._codegen import entries as _entries
from ._codegen import interpreting as _interpreting
from ._codegen import matvec as _matvec
from ._codegen import triton_module as _triton

__all__ = ["LinearLoop", "reference_linear_loop", "run_linear_loop", "triton_available"]


def _source(W: int, Q: int, K: int, R: int, store: bool, ext: bool, pattern: tuple, hoist: bool) -> str:
    """Triton source of the fused loop for one shape and sparsity pattern.

    One program thread owns one trajectory: ``ξ`` (``W`` scalars), the step's noise (``Q``)
    and the cost live in registers as separate ``(BB,)`` vectors, every small matrix product
    is unrolled into fused multiply-adds over the matrices' non-zero entries (read by
    pointer, so one compiled kernel serves every loop of the same shape and pattern), and
    the noise is drawn with Philox in the counter layout of :mod:`lqgt.kernels.philox`.
    """
    FT, Gd, Hq, Jq, HT, Je = pattern
    mats = {"ft": FT, "gd": Gd, "hq": Hq, "jq": Jq}
    if store:
        mats.update(ht=HT, je=Je)
    ent = {k: _entries(k, M, hoist) for k, M in mats.items()}
    ind = "        "
    L = HEADER + [
         "@triton.jit",
         "def kernel(xi_ptr, cost_ptr, ft_ptr, gd_ptr, hq_ptr, jq_ptr, sg_ptr, ht_ptr, je_ptr, noise_ptr, out_ptr,",
         "           B, t0, c, lo, seed, BB: tl.constexpr):",
    ] + prologue("xi_ptr")
    L += [f"    x{i} = tl.load(xi_ptr + rb * {W} + {i}, mask=bm, other=0.0)" for i in range(W)]
    L += [f"    s{j} = tl.load(sg_ptr + {j})" for j in range(K)]
    if hoist:
        L += [line for k, M in mats.items() for line in hoisted_loads(k, M)]
    L.append("    for k in range(c):")
    L += noise_lines(Q, ext, ind)

    def col(a: str, b: str, j: int) -> str:
        return _matvec(column(ent[a], "x", j) + column(ent[b], "e", j))

    L += [f"{ind}r{j} = {col('hq', 'jq', j)}" for j in range(K)]
    L.append(f"{ind}acc += tl.where(k >= lo, " + " + ".join(f"s{j} * r{j} * r{j}" for j in range(K)) + ", 0.0)")
    if store:
        L.append(f"{ind}row = k * B + rbl")
        L += [f"{ind}tl.store(out_ptr + row * {R} + {j}, {col('ht', 'je', j)}, mask=bm)" for j in range(R)]
    L += [f"{ind}y{j} = {col('ft', 'gd', j)}" for j in range(W)]
    L += [f"{ind}x{j} = y{j}" for j in range(W)]
    L += [f"    tl.store(xi_ptr + rb * {W} + {i}, x{i}, mask=bm)" for i in range(W)]
    L += EPILOGUE
    return "\n".join(L)


@functools.lru_cache(maxsize=64)
def _kernel(W: int, Q: int, K: int, R: int, store: bool, ext: bool, pattern: tuple, hoist: bool):
    """Compile (once per process and key) the generated kernel; Triton reads its source from a file."""
    pat = unpack_pattern(pattern)
    return load_kernel(_source(W, Q, K, R, store, ext, pat, hoist), "linear_loop")


def triton_available() -> bool:
    """Whether the Triton kernels can run (Triton importable)."""
    return _triton() is not None


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
              device, dtype) -> LinearLoop:
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
        t = lambda M: tensor(np.ascontiguousarray(M), device, dtype).contiguous()
        return cls(FT=t(cl.F.T), Gd=t((cl.G @ S).T), Hq=t(cl.H[rows].T @ U), Jq=t(Sv @ cl.J[rows].T @ U),
                   sign=t(sign), HT=t(cl.H.T), Je=t(Sv @ cl.J.T), m0=t(model.m0), slices=sl)

    def pattern(self, store: bool) -> tuple:
        """Non-zero patterns of ``FT, Gd, Hq, Jq`` (and ``HT, Je`` when storing), hashable: the kernel's key."""
        key = "_pattern_store" if store else "_pattern"
        if getattr(self, key, None) is None:
            pat = pattern_key([self.FT, self.Gd, self.Hq, self.Jq] + ([self.HT, self.Je] if store else []))
            pat += ((b"", (0, 0)),) * (6 - len(pat))
            setattr(self, key, pat)
        return getattr(self, key)

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
                    block: int | None = None, hoist: bool | None = None) -> None:
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
        Trajectories per program (power of two; one per thread; default 128).
    hoist : bool, optional
        Load the matrix entries into registers once, before the time loop (default: when
        they are few), instead of reading them (cached) every step.

    Raises
    ------
    RuntimeError
        Triton is not available.
    """
    if _triton() is None:
        raise RuntimeError("lqgt.kernels needs Triton (pip install triton); use backend='torch'")
    B = xi.shape[0]
    W, Q, K, R = loop.dims
    store = out is not None
    pattern = loop.pattern(store)
    if hoist is None:
        nnz = sum(int(np.frombuffer(p, dtype=bool).sum()) for p, _ in pattern if p)
        hoist = nnz * (2 if xi.dtype == torch.float64 else 1) <= 128
    if block is None:
        block = 16 if _interpreting() else 128
    if noise is not None:
        noise = noise.to(device=xi.device, dtype=xi.dtype).contiguous()
    kern = _kernel(W, Q, K, R, store, noise is not None, pattern, bool(hoist))
    grid = (math.ceil(B / block),)
    kern[grid](xi, cost, loop.FT, loop.Gd, loop.Hq, loop.Jq, loop.sign, loop.HT, loop.Je,
               noise if noise is not None else xi, out if store else xi,
               B, int(t0), int(steps), int(lo), int(seed), BB=block, num_warps=max(1, min(8, block // 32)))


class TritonRunner:
    """Simulator runner for the fused kernel (same interface as ``lqgt.simulate``'s runners).

    Draws its own noise (``needs_e = False``): the simulator then draws none.
    """

    needs_wv = False
    needs_e = False

    def __init__(self, plant, Kmat, form, lin, noise, Qz_np, dev, dt, store):
        gain, model = lin
        self.loop = LinearLoop.build(plant, Kmat, gain, form, model, noise.Wh_np, noise.Vh_np, Qz_np, dev, dt)
        self.seed = noise.kernel_seed
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
