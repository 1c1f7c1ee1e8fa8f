"""Small torch helpers shared by the simulation layer: device/dtype resolution, conversion."""

from __future__ import annotations

import numpy as np
import torch

from .errors import ConfigError

__all__ = ["resolve_device", "resolve_dtype", "tensor"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Return a :class:`torch.device`; ``"cuda"`` without CUDA raises a clear error."""
    dev = torch.device("cpu" if device is None else device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' was requested but torch.cuda.is_available() is False")
    return dev


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """Return a floating torch dtype; float64 by default."""
    if dtype is None:
        return torch.float64
    if isinstance(dtype, str):
        table = {"float64": torch.float64, "double": torch.float64, "float32": torch.float32, "float": torch.float32}
        if dtype not in table:
            raise ConfigError(f"dtype must be one of {sorted(table)}, got {dtype!r}")
        return table[dtype]
    if dtype not in (torch.float32, torch.float64):
        raise ConfigError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    return dtype


def tensor(M, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Convert a numpy array (or tensor) to a tensor on ``device`` with ``dtype``."""
    if isinstance(M, torch.Tensor):
        return M.to(device=device, dtype=dtype)
    return torch.tensor(np.array(M, dtype=np.float64), device=device, dtype=dtype)
