"""The Transformer Filter's attention block as a trainable layer (SPEC §3).

:class:`TransformerFilterAttention` is an ordinary causal softmax self-attention
``nn.Module`` on the quadratic embedding :func:`quadratic_embedding`; with the weights of
:meth:`TransformerFilterAttention.from_construction` it computes the Transformer Filter's
Gaussian-kernel smoother exactly. The estimator that runs it in a closed loop is
:class:`lqgt.TransformerFilter` (``impl="attention"``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

__all__ = ["TransformerFilterAttention", "quadratic_embedding", "scaled_logits"]


def scaled_logits(shifted: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale · shifted`` for max-subtracted logits (``≤ 0``), keeping ``-inf`` as ``-inf``.

    ``-inf · 0`` would be NaN (β = 0); an overflow of a huge scale gives ``-inf``, i.e.
    zero weight, which is the limit.

    Parameters
    ----------
    shifted : torch.Tensor
        Logits minus their maximum (``-inf`` on masked keys).
    scale : float
        Logit scale (>= 0).

    Returns
    -------
    torch.Tensor
        Same shape as ``shifted``.
    """
    if scale == 1.0:
        return shifted
    return torch.where(torch.isinf(shifted), shifted, shifted * scale)


def quadratic_embedding(z: torch.Tensor) -> torch.Tensor:
    """The feature map ``φ(z) = [1; z; vec(z z')]``.

    Parameters
    ----------
    z : torch.Tensor, shape (..., d)
        Tokens.

    Returns
    -------
    torch.Tensor, shape (..., 1 + d + d²)
        Embedded tokens (``vec`` is row-major).
    """
    one = torch.ones(z.shape[:-1] + (1,), dtype=z.dtype, device=z.device)
    quad = (z.unsqueeze(-1) * z.unsqueeze(-2)).flatten(-2)
    return torch.cat([one, z, quad], dim=-1)


class TransformerFilterAttention(nn.Module):
    """One causally-masked softmax self-attention block on the quadratic embedding.

    The logits are ``scale · q[t]·k[i]`` (``scale`` plays the part of the usual
    ``1/sqrt(d)`` factor; it multiplies the logits after the maximum is subtracted, so a
    huge ``scale`` gives a hard maximum instead of overflow). With the construction of
    :meth:`from_construction`, ``q[t]·k[i] = 2 z[t]'S z[i] - z[i]'S z[i]``, ``scale = β``
    and ``v[i] = M z[i]``, so the logits are ``β (2 z[t]'S z[i] - z[i]'S z[i])`` (SPEC §3)
    and the block equals the Gaussian-kernel smoother of the Transformer Filter. The
    weights are ordinary ``nn.Linear`` layers (no bias) and can be trained.

    Parameters
    ----------
    d : int
        Token dimension.
    n : int
        Output (state) dimension.
    window : int
        Attention window ``H`` (each query sees the last ``H`` tokens, itself included).
    scale : float
        Logit scale (>= 0, finite): the inverse temperature β of the construction.
    """

    def __init__(self, d: int, n: int, window: int, scale: float = 1.0) -> None:
        super().__init__()
        self.d, self.n, self.window = int(d), int(n), int(window)
        self.scale = float(scale)
        if not (math.isfinite(self.scale) and self.scale >= 0):
            raise ValueError(f"scale must be a finite number >= 0, got {scale!r}")
        e = 1 + self.d + self.d * self.d
        self.W_q = nn.Linear(e, 1 + self.d, bias=False)
        self.W_k = nn.Linear(e, 1 + self.d, bias=False)
        self.W_v = nn.Linear(e, self.n, bias=False)

    @classmethod
    def from_construction(cls, M: np.ndarray, S: np.ndarray, beta: float, window: int, *, dtype=torch.float64) -> "TransformerFilterAttention":
        """Build the block whose attention equals the kernel smoother (SPEC §3).

        Parameters
        ----------
        M : numpy.ndarray, shape (n, d)
            Value map, ``v[i] = M z[i]``.
        S : numpy.ndarray, shape (d, d)
            Distance weight (symmetric positive definite).
        beta : float
            Inverse temperature β ≥ 0 (finite), the block's logit ``scale``.
        window : int
            Attention window ``H``.
        dtype : torch.dtype
            Parameter dtype.

        Returns
        -------
        TransformerFilterAttention
        """
        n, d = M.shape
        blk = cls(d, n, window, scale=beta).to(dtype)
        e = 1 + d + d * d
        Wq = np.zeros((1 + d, e))
        Wq[0, 0] = -1.0                      # q = [-1; 2 S z]; β is the logit scale
        Wq[1:, 1:1 + d] = 2.0 * S
        Wk = np.zeros((1 + d, e))
        Wk[0, 1 + d:] = S.reshape(-1)        # k = [z'Sz; z]  (vec(S)·vec(zz') = z'Sz)
        Wk[1:, 1:1 + d] = np.eye(d)
        Wv = np.zeros((n, e))
        Wv[:, 1:1 + d] = M                   # v = M z
        with torch.no_grad():
            for lin, W in ((blk.W_q, Wq), (blk.W_k, Wk), (blk.W_v, Wv)):
                lin.weight.copy_(torch.as_tensor(W, dtype=dtype))
        return blk

    def project(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values of tokens ``z`` ``(..., d)``: shapes ``(..., 1+d)``, ``(..., 1+d)``, ``(..., n)``.

        Parameters
        ----------
        z : torch.Tensor, shape (..., d)
            Tokens ``[x̃; y]``.

        Returns
        -------
        q, k, v : torch.Tensor
            Queries, keys and values.
        """
        phi = quadratic_embedding(z)
        return self.W_q(phi), self.W_k(phi), self.W_v(phi)

    @staticmethod
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
               scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax attention with max-subtraction: ``softmax(scale · q k')`` over the allowed keys.

        Parameters
        ----------
        q : torch.Tensor, shape (B, Tq, e)
            Queries.
        k : torch.Tensor, shape (B, Tk, e)
            Keys.
        v : torch.Tensor, shape (B, Tk, n)
            Values.
        mask : torch.Tensor of bool, shape (Tq, Tk) or (B, Tq, Tk), optional
            ``True`` where a key may be attended to.
        scale : float
            Logit scale (>= 0), applied after the maximum is subtracted.

        Returns
        -------
        out : torch.Tensor, shape (B, Tq, n)
        weights : torch.Tensor, shape (B, Tq, Tk)
        """
        logits = q @ k.transpose(-1, -2)
        if mask is not None:
            logits = logits.masked_fill(~mask, -math.inf)
        logits = scaled_logits(logits - logits.amax(dim=-1, keepdim=True), scale)
        w = torch.exp(logits)
        w = w / w.sum(dim=-1, keepdim=True)
        return w @ v, w

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal windowed self-attention over a token sequence.

        Parameters
        ----------
        z : torch.Tensor, shape (B, T, d)
            Tokens ``z[0] … z[T-1]``.

        Returns
        -------
        out : torch.Tensor, shape (B, T, n)
            ``out[:, t] = Σ_i α[t, i] v[i]`` over ``i = max(0, t-H+1) … t`` (the next estimate).
        weights : torch.Tensor, shape (B, T, T)
            The attention weights ``α[t, i]`` (zero outside the window).
        """
        q, k, v = self.project(z)
        T = z.shape[-2]
        idx = torch.arange(T, device=z.device)
        lag = idx[:, None] - idx[None, :]
        mask = (lag >= 0) & (lag < self.window)
        return self.attend(q, k, v, mask, self.scale)
