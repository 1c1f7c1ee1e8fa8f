"""Helpers shared by the benchmark scripts: argument parsing, synchronised timing, OOM handling.

The scripts run as ``python benchmarks/<name>.py``, so this module is imported as ``_common``.
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any, Callable

import torch


def ints(text: str) -> list[int]:
    """Parse a comma-separated list such as ``"100,1e3,10000"`` into integers."""
    return [int(float(v)) for v in text.split(",") if v.strip()]


def sync(device: str | torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: str | torch.device, repeats: int, *, best: bool = False) -> tuple[float, Any]:
    """Seconds of ``fn()`` over ``repeats`` runs, synchronised before and after each (median, or the
    fastest with ``best=True``), and the last run's result. No warm-up: call ``fn`` once first."""
    times, out = [], None
    for _ in range(max(1, repeats)):
        out = None  # free the previous result before the next run
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return (min(times) if best else statistics.median(times)), out


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` reports an out-of-memory condition (host or CUDA)."""
    if isinstance(exc, MemoryError):
        return True
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        s in msg for s in ("out of memory", "can't allocate memory", "not enough memory"))


def free(device: str | torch.device) -> None:
    """Collect garbage and return cached CUDA memory, between configurations."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def measure_device(dtype: torch.dtype) -> tuple[float, float]:
    """Measured memory bandwidth (bytes/s, a 4 GiB device copy) and matmul peak (flop/s) on CUDA."""
    a = torch.empty(1 << 29, device="cuda", dtype=torch.float64)  # 4 GiB
    b = torch.empty_like(a)
    el, _ = timed(lambda: b.copy_(a), "cuda", 3)
    bw = 2 * a.numel() * 8 / el
    del a, b
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    x = torch.randn(8192, 8192, device="cuda", dtype=dtype)
    el, _ = timed(lambda: x @ x, "cuda", 3)
    torch.backends.cuda.matmul.allow_tf32 = prev
    return bw, 2 * 8192 ** 3 / el
