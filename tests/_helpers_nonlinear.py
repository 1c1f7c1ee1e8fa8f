"""Helpers shared by the nonlinear-plant, EKF/UKF and Koopman tests."""

from __future__ import annotations

import numpy as np
import torch

F64 = torch.float64
CPU = torch.device("cpu")


def run_estimator(est, y, u):
    """Run an lqgt estimator in its form's timing; return estimates (B, T, n) and the last state."""
    B, T, _ = y.shape
    st, _ = est.init(B, device=CPU, dtype=y.dtype)
    out = []
    for t in range(T):
        u_in = (u[:, t - 1] if t > 0 else torch.zeros_like(u[:, 0])) if est.form == "current" else u[:, t]
        st, xh = est.step(st, y[:, t], u_in)
        out.append(xh)
    return torch.stack(out, 1), st


def random_signals(plant, batch, T, seed):
    """Standard normal measurements (batch, T, p) and inputs (batch, T, m), in that order."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randn(batch, T, plant.p, generator=gen, dtype=F64)
    u = torch.randn(batch, T, plant.m, generator=gen, dtype=F64)
    return y, u


def np_f(plant, x, u):
    """``plant.f`` of one numpy state and input."""
    with torch.no_grad():
        return plant.f(torch.tensor(x, dtype=F64)[None], torch.tensor(np.atleast_1d(u), dtype=F64)[None])[0].numpy()


def np_h(plant, x):
    """``plant.h`` of one numpy state."""
    with torch.no_grad():
        return plant.h(torch.tensor(x, dtype=F64)[None])[0].numpy()
