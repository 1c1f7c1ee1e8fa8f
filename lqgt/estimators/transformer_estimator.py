"""A causal transformer over the measurement history: the in-context estimator of Du et al.

``TransformerEstimator`` is the model of "Can transformers learn optimal filtering for
unknown systems?" (Du, Balim, Oymak, Ozay 2023): a causal, multi-layer, multi-head
transformer whose tokens are ``z[t] = [y[t]; u[t-1]]`` (``u[-1] = 0``), read out by a
state head (``x̂``) and an output head (``ŷ[t+1]``). It knows nothing about the plant: it
learns the filter from data, and trained across many systems (in context) it adapts to
each from its tokens alone.

Architecture (pre-norm blocks, sliding-window attention):

* ``h0[t] = E z̃[t]`` with ``z̃ = [y / y_scale; u / u_scale]`` (per-channel scales, buffers set
  from the training data by :meth:`TransformerEstimator.fit_scales`);
* per layer ``h <- h + Attn(LN(h))``, ``h <- h + MLP(LN(h))``. Attention at step ``t`` sees the
  previous layer's outputs at steps ``t - window + 1 … t`` (a causal band: each layer keeps a
  ring buffer of its last ``window`` keys and values in streaming mode), with a learned
  bias per head and relative offset ``t - i`` (shift-invariant, so sequence and streaming
  modes agree exactly);
* state ``x̂[t] = x_scale ⊙ (H_x LN(h[t]) + Σ_k F_k z̃[t-k])`` — the second term is a linear
  skip over the same window of tokens (a learned FIR filter, ``skip=True``): the steady
  Kalman filter is nearly such a filter, so the attention only has to learn the rest;
* predictor form adds ``G_x u[t]`` (the input applied after ``y[t]``; ``x[t+1]`` is linear in
  it); the output head is the same with ``y_scale``, ``H_y``, ``G_y``.

Sequence mode (``forward``) computes the band attention blockwise (queries in blocks of
``window``, each against ``2 window`` keys) in ``O(T · window)``; ``init``/``step`` keep the
per-layer key/value ring buffers and a ring buffer of the last ``window`` tokens, and do
``O(window)`` work per step. Both give the same numbers (float64: to ~1e-15).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError
from .learned import LearnedEstimator, register

__all__ = ["TransformerEstimator"]


class _Block(nn.Module):
    """One pre-norm transformer block with sliding-window multi-head attention."""

    def __init__(self, width: int, heads: int, window: int, mlp: int) -> None:
        super().__init__()
        self.heads, self.dh, self.window = heads, width // heads, window
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, mlp)
        self.fc2 = nn.Linear(mlp, width)
        # learned bias per head and relative offset 0 .. window-1 (offset = t - i)
        self.rel = nn.Parameter(torch.zeros(heads, window))

    def _mlp(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(F.gelu(self.fc1(self.ln2(h))))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Sequence mode: ``h`` ``(B, T, width)`` -> ``(B, T, width)``."""
        B, T, width = h.shape
        H, dh, W = self.heads, self.dh, self.window
        q, k, v = self.qkv(self.ln1(h)).view(B, T, 3, H, dh).permute(2, 0, 3, 1, 4)  # (B, H, T, dh) each
        nb = -(-T // W)
        Tp = nb * W
        pad_end = Tp - T
        q = F.pad(q, (0, 0, 0, pad_end))
        k = F.pad(k, (0, 0, W, pad_end))  # W leading zeros: key block j covers steps jW-W .. jW+W-1
        v = F.pad(v, (0, 0, W, pad_end))
        qb = q.view(B, H, nb, W, dh)
        kb = k.unfold(2, 2 * W, W).transpose(-1, -2)  # (B, H, nb, 2W, dh)
        vb = v.unfold(2, 2 * W, W).transpose(-1, -2)
        s = qb @ kb.transpose(-1, -2) / math.sqrt(dh)  # (B, H, nb, W, 2W)
        a = torch.arange(W, device=h.device)
        c = torch.arange(2 * W, device=h.device)
        off = a[:, None] + W - c[None, :]  # t - s for query a, key c of a block
        band = (off >= 0) & (off < W)
        first = band.clone()
        first[:, :W] = False  # block 0: keys before step 0 are padding
        bias = self.rel[:, off.clamp(0, W - 1)]  # (H, W, 2W)
        mask = torch.stack([first] + [band] * (nb - 1)) if nb > 1 else first[None]  # (nb, W, 2W)
        s = (s + bias[:, None]).masked_fill(~mask, float("-inf"))
        att = torch.softmax(s, dim=-1)
        o = (att @ vb).reshape(B, H, Tp, dh)[:, :, :T]
        h = h + self.proj(o.transpose(1, 2).reshape(B, T, width))
        return self._mlp(h)

    def step(self, h: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor], t: int, off: torch.Tensor
             ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Streaming mode: ``h`` ``(B, width)`` of step ``t`` -> new ``h`` and the updated ring buffers.

        ``off[s] = (t - s) mod window`` is the offset of the step held in ring slot ``s``.

        Without autograd the rings are updated in place; with it, copies are updated (an
        in-place write would invalidate the graph of earlier steps).
        """
        B, width = h.shape
        H, dh, W = self.heads, self.dh, self.window
        Kc, Vc = cache  # (B, H, W, dh)
        q, k, v = self.qkv(self.ln1(h)).view(B, 3, H, dh).unbind(1)
        slot = t % W
        if torch.is_grad_enabled():
            Kc, Vc = Kc.clone(), Vc.clone()
        Kc[:, :, slot] = k
        Vc[:, :, slot] = v
        s = torch.einsum("bhd,bhwd->bhw", q, Kc) / math.sqrt(dh) + self.rel[:, off]
        if t < W - 1:
            s = s.masked_fill(off > t, float("-inf"))
        att = torch.softmax(s, dim=-1)
        o = torch.einsum("bhw,bhwd->bhd", att, Vc).reshape(B, width)
        h = h + self.proj(o)
        return self._mlp(h), (Kc, Vc)

    def fast_step(self, h: torch.Tensor, Kc: torch.Tensor, Vc: torch.Tensor, slot: torch.Tensor,
                  off: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Streaming mode without autograd: updates the rings ``Kc``, ``Vc`` in place.

        ``slot``: the ring slot of this step, an int (eager) or a one-element index tensor
        (compiled: one graph serves every step); ``valid`` ``(window,)`` marks the filled
        slots (``None``: all are).
        """
        B, width = h.shape
        H, dh = self.heads, self.dh
        q, k, v = self.qkv(self.ln1(h)).view(B, 3, H, dh).unbind(1)
        if isinstance(slot, int):  # eager: a plain strided write
            Kc[:, :, slot] = k
            Vc[:, :, slot] = v
        else:  # compiled: an index tensor keeps one graph for every slot
            Kc.index_copy_(2, slot, k.unsqueeze(2))
            Vc.index_copy_(2, slot, v.unsqueeze(2))
        s = (q.unsqueeze(2) @ Kc.transpose(-1, -2)).squeeze(2) / math.sqrt(dh) + self.rel[:, off]
        if valid is not None:
            s = s.masked_fill(~valid, float("-inf"))
        att = torch.softmax(s, dim=-1)
        o = (att.unsqueeze(2) @ Vc).reshape(B, width)
        return self._mlp(h + self.proj(o))


@register
class TransformerEstimator(LearnedEstimator):
    """Causal transformer over the tokens ``[y[t]; u[t-1]]`` (Du, Balim, Oymak, Ozay 2023).

    A model-free, trainable estimator: train it with :func:`lqgt.learn.fit` and run it in
    :func:`lqgt.simulate` like any other estimator. See the module docstring for the
    architecture.

    Parameters
    ----------
    n : int
        State dimension of the estimate.
    m : int
        Input dimension.
    p : int
        Measurement dimension.
    window : int
        Attention window (steps) of every layer, and the length of the linear skip.
    layers : int
        Number of transformer blocks.
    heads : int
        Attention heads per block (``width`` must be divisible by it).
    width : int
        Model width (embedding dimension).
    form : {"current", "predictor"}
        ``"current"``: ``x̂[t|t]`` from ``y[0..t]``, ``u[0..t-1]``; ``"predictor"``:
        ``x̂[t+1|t]`` from ``y[0..t]``, ``u[0..t]``.
    mlp_ratio : int
        Hidden width of each block's MLP, in multiples of ``width``.
    skip : bool
        Add the linear skip (a learned FIR filter over the window of tokens).
    seed : int, optional
        Seed of the parameter initialisation (default: torch's global generator).
    compile : bool
        Run the per-step core of :meth:`step` (without autograd) through
        :func:`torch.compile`: one fused graph for every step, worth it on a GPU at large
        batch; the first step compiles (tens of seconds). Not saved in checkpoints.

    Raises
    ------
    ConfigError
        If a size is not a positive integer, ``width % heads != 0`` or ``form`` is unknown.

    Examples
    --------
    ```python
    est = lqgt.TransformerEstimator(plant.n, plant.m, plant.p, window=32, layers=2, heads=4, width=64)
    log = lqgt.learn.fit(est, data, loss="state_mse", steps=2000)
    ```
    """

    def __init__(self, n: int, m: int, p: int, window: int = 32, layers: int = 2, heads: int = 4, width: int = 64,
                 form: str = "current", *, mlp_ratio: int = 2, skip: bool = True, seed: int | None = None,
                 compile: bool = False) -> None:
        super().__init__(n, m, p, form=form)
        for name, v in (("window", window), ("layers", layers), ("heads", heads), ("width", width),
                        ("mlp_ratio", mlp_ratio)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"TransformerEstimator: {name} must be a positive integer, got {v!r}")
        if width % heads:
            raise ConfigError(f"TransformerEstimator: width={width} must be divisible by heads={heads}")
        self.window, self.layers, self.heads, self.width = window, layers, heads, width
        self.mlp_ratio, self.skip, self.seed = mlp_ratio, bool(skip), seed
        self.compile = bool(compile)
        self._core = None  # the torch.compile'd fast step core, built on first use
        d = p + m
        gen_state = None
        if seed is not None:
            gen_state = torch.random.get_rng_state()
            torch.manual_seed(int(seed))
        try:
            self.embed = nn.Linear(d, width)
            self.blocks = nn.ModuleList(_Block(width, heads, window, mlp_ratio * width) for _ in range(layers))
            self.ln_f = nn.LayerNorm(width)
            self.head = nn.Linear(width, n + p)  # [state; next output]
            self.fir = nn.Parameter(torch.zeros(n + p, d, window)) if self.skip else None
            self.gain_u = nn.Parameter(torch.zeros(n + p, m))  # G_x (predictor form) and G_y on u[t]
        finally:
            if gen_state is not None:
                torch.random.set_rng_state(gen_state)
        self.register_buffer("y_scale", torch.ones(p))
        self.register_buffer("u_scale", torch.ones(m))
        self.register_buffer("x_scale", torch.ones(n))
        self.register_buffer("x_init", torch.zeros(n))
        self.to(torch.float64)

    # ---- persistence ---------------------------------------------------------------------
    def config(self) -> dict:
        """Return the constructor keyword arguments (JSON-serialisable).

        Returns
        -------
        dict
        """
        return dict(n=self.n, m=self.m, p=self.p, window=self.window, layers=self.layers, heads=self.heads,
                    width=self.width, form=self.form, mlp_ratio=self.mlp_ratio, skip=self.skip, seed=self.seed)

    def extra_repr(self) -> str:
        return (f"n={self.n}, m={self.m}, p={self.p}, window={self.window}, layers={self.layers}, "
                f"heads={self.heads}, width={self.width}, form={self.form!r}")

    @torch.no_grad()
    def fit_scales(self, data: Any) -> None:
        """Set the input/output scales and the initial estimate from training data.

        Called by :func:`lqgt.learn.fit` before training (the scales are buffers, saved
        with the weights). Each scale is the channel's RMS over the data (1 where it is 0).

        Parameters
        ----------
        data : lqgt.learn.Rollouts
            Training data (``x`` may be ``None``; then the state scale stays 1).
        """
        def rms(v: torch.Tensor) -> torch.Tensor:
            r = v.reshape(-1, v.shape[-1]).square().mean(0).sqrt()
            return torch.where(r > 0, r, torch.ones_like(r))

        self.y_scale.copy_(rms(data.y))
        if self.m:
            self.u_scale.copy_(rms(data.u))
        if data.x is not None:
            self.x_scale.copy_(rms(data.x))
            self.x_init.copy_(data.x[:, 0].mean(0))

    # ---- sequence mode -------------------------------------------------------------------
    def _tokens(self, y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``z̃[t] = [y[t] / y_scale; u[t-1] / u_scale]`` ``(B, T, p + m)``."""
        u_prev = F.pad(u[:, :-1], (0, 0, 1, 0))
        return torch.cat([y / self.y_scale, u_prev / self.u_scale], dim=-1)

    def _features(self, y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Normalised ``[state; output]`` readout ``(B, T, n + p)`` before the input terms."""
        y, u = self.check_sequences(y, u)
        z = self._tokens(y, u)
        h = self.embed(z)
        for blk in self.blocks:
            h = blk(h)
        out = self.head(self.ln_f(h))
        if self.fir is not None:
            zp = F.pad(z.transpose(1, 2), (self.window - 1, 0))  # (B, d, W-1+T)
            out = out + F.conv1d(zp, self.fir).transpose(1, 2)
        return out

    def forward(self, y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Estimate the states of whole sequences (causal).

        Parameters
        ----------
        y : torch.Tensor, shape (B, T, p)
            Measurements.
        u : torch.Tensor, shape (B, T, m)
            Inputs, ``u[:, t]`` applied at step ``t``.

        Returns
        -------
        torch.Tensor, shape (B, T, n)
            ``x̂[t|t]`` (current form) or ``x̂[t+1|t]`` (predictor form).

        Raises
        ------
        ShapeError
            If ``y`` or ``u`` has the wrong shape.
        """
        out = self._features(y, u)[..., : self.n]
        if self.form == "predictor":
            out = out + (u / self.u_scale) @ self.gain_u[: self.n].T
        return out * self.x_scale

    def predict_output(self, y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Predict ``y[t+1]`` from ``y[0..t]``, ``u[0..t]`` for every ``t``.

        Parameters
        ----------
        y : torch.Tensor, shape (B, T, p)
            Measurements.
        u : torch.Tensor, shape (B, T, m)
            Inputs, ``u[:, t]`` applied at step ``t``.

        Returns
        -------
        torch.Tensor, shape (B, T, p)

        Raises
        ------
        ShapeError
            If ``y`` or ``u`` has the wrong shape.
        """
        out = self._features(y, u)[..., self.n:] + (u / self.u_scale) @ self.gain_u[self.n:].T
        return out * self.y_scale

    # ---- protocol mode -------------------------------------------------------------------
    def init(self, batch: int, *, device: torch.device, dtype: torch.dtype) -> tuple[Any, torch.Tensor]:
        """Empty ring buffers for ``batch`` trajectories and the initial estimate.

        Parameters
        ----------
        batch : int
            Number of trajectories.
        device : torch.device
            Device of the simulation (the parameters are moved there).
        dtype : torch.dtype
            Floating-point type of the simulation (the parameters are cast to it).

        Returns
        -------
        state : dict
            Step counter, previous input, token ring ``(B, window, p + m)``, per-layer
            key/value rings ``(B, heads, window, width / heads)``, the table of slot
            offsets ``(window, window)`` and the tables of slot indices and filled slots.
        x_hat0 : torch.Tensor, shape (batch, n)
            ``x_init`` (the mean initial state of the training data).
        """
        self._place(device, dtype)
        W, H, dh = self.window, self.heads, self.width // self.heads
        z = dict(device=device, dtype=dtype)
        caches = [(torch.zeros(batch, H, W, dh, **z), torch.zeros(batch, H, W, dh, **z)) for _ in self.blocks]
        r = torch.arange(W, device=device)
        offsets = (r[:, None] - r[None, :]) % W
        state = {"t": 0, "u_prev": torch.zeros(batch, self.m, **z),
                 "tokens": torch.zeros(batch, W, self.p + self.m, **z), "caches": caches,
                 "offsets": offsets, "slots": r, "valid": offsets <= r[:, None]}
        return state, self.x_init.to(**z).expand(batch, -1).clone()

    def step(self, state: dict, y: torch.Tensor, u: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """Consume ``y[t]`` and the newest input; return the new state and estimate.

        Parameters
        ----------
        state : dict
            From :meth:`init` or the previous :meth:`step` (its buffers are updated in place).
        y : torch.Tensor, shape (B, p)
            The newest measurement ``y[t]``.
        u : torch.Tensor, shape (B, m)
            ``u[t]`` in predictor form, ``u[t-1]`` in current form.

        Returns
        -------
        state : dict
            The new state.
        x_hat : torch.Tensor, shape (B, n)
            ``x̂[t|t]`` (current) or ``x̂[t+1|t]`` (predictor).
        """
        t = state["t"]
        u_prev = u if self.form == "current" else state["u_prev"]
        z = torch.cat([y / self.y_scale, u_prev / self.u_scale], dim=-1)
        W = self.window
        if not torch.is_grad_enabled() and "slots" in state:
            return self._fast_step(state, z, u)
        ring = state["tokens"]
        if torch.is_grad_enabled():
            ring = ring.clone()
        ring[:, t % W] = z
        off = state["offsets"][t % W]  # offset (t - s) mod W of the step held in each slot s
        h = self.embed(z)
        caches = []
        for blk, cache in zip(self.blocks, state["caches"]):
            h, cache = blk.step(h, cache, t, off)
            caches.append(cache)
        out = self.ln_f(h) @ self.head.weight[: self.n].T + self.head.bias[: self.n]
        if self.fir is not None:
            # slot s holds the token of offset (t - s) mod W; the FIR tap for offset k is fir[..., W-1-k]
            taps = self.fir[: self.n][:, :, W - 1 - off]  # (n, d, W); empty slots hold zeros
            out = out + torch.einsum("bwd,ndw->bn", ring, taps)
        if self.form == "predictor":
            out = out + (u / self.u_scale) @ self.gain_u[: self.n].T
        state = dict(state, t=t + 1, u_prev=u if self.form == "predictor" else state["u_prev"], tokens=ring,
                     caches=caches)
        return state, out * self.x_scale

    def _fast_step(self, state: dict, z: torch.Tensor, u: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """:meth:`step` without autograd: every ring updated in place, one graph for all steps."""
        t, W = state["t"], self.window
        i = t % W
        if self.compile:
            if self._core is None:
                self._core = torch.compile(self._fast_core, dynamic=False)
            out = self._core(z, state["tokens"], state["caches"], state["slots"][i:i + 1], state["offsets"][i],
                             state["valid"][min(t, W - 1)])
        else:
            out = self._fast_core(z, state["tokens"], state["caches"], i, state["offsets"][i],
                                  state["valid"][t] if t < W - 1 else None)
        if self.form == "predictor":
            out = out + (u / self.u_scale) @ self.gain_u[: self.n].T
        state["t"] = t + 1
        if self.form == "predictor":
            state["u_prev"] = u
        return state, out * self.x_scale

    def _fast_core(self, z: torch.Tensor, ring: torch.Tensor, caches: list, slot: Any, off: torch.Tensor,
                   valid: torch.Tensor | None) -> torch.Tensor:
        """Normalised state readout of one step; writes ``z`` and the keys/values into the rings."""
        W = self.window
        if isinstance(slot, int):
            ring[:, slot] = z
        else:
            ring.index_copy_(1, slot, z.unsqueeze(1))
        h = self.embed(z)
        for blk, (Kc, Vc) in zip(self.blocks, caches):
            h = blk.fast_step(h, Kc, Vc, slot, off, valid)
        out = self.ln_f(h) @ self.head.weight[: self.n].T + self.head.bias[: self.n]
        if self.fir is not None:
            taps = self.fir[: self.n][:, :, W - 1 - off]  # (n, d, W)
            out = out + ring.flatten(1) @ taps.permute(2, 1, 0).reshape(-1, self.n)
        return out
