"""Small torch helpers shared by the simulation layer: device/dtype resolution, conversion."""

from __future__ import annotations

import os

import numpy as np
import torch

from .errors import ConfigError, ResourceError

__all__ = ["resolve_device", "resolve_dtype", "resolve_seed", "check_memory", "tensor"]

_DEVICE_TYPES = ("cpu", "cuda")
#: Largest seed torch's generators take (unsigned 64-bit).
_MAX_SEED = 2**64 - 1


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Return a :class:`torch.device` for ``"cpu"``, ``"cuda"`` or ``"cuda:<index>"`` (``None``: CPU).

    Anything else raises :class:`~lqgt.errors.ConfigError` naming the value and the
    allowed ones (``"gpu"`` suggests ``"cuda"``, ``"CPU"`` its lower case); ``"cuda"``
    without CUDA, or a CUDA index beyond the devices present, is refused too.
    """
    allowed = "'cpu', 'cuda' or 'cuda:<index>' (or a torch.device)"
    if device is None:
        return torch.device("cpu")
    if isinstance(device, bool) or not isinstance(device, (str, torch.device)):
        hint = f" (for GPU {device} write 'cuda:{device}')" if isinstance(device, int) and not isinstance(device, bool) else ""
        raise ConfigError(f"device must be {allowed}, got {device!r} of type {type(device).__name__}{hint}")
    if isinstance(device, str):
        name = device.strip()
        hint = ""
        if name.lower() in ("gpu", "nvidia") or name.lower().startswith("gpu:"):
            hint = " (did you mean 'cuda'?)"
        elif name != name.lower() and name.lower().split(":")[0] in _DEVICE_TYPES:
            hint = f" (did you mean {name.lower()!r}?)"
        try:
            dev = torch.device(name) if name and not hint else None
        except (RuntimeError, ValueError):
            dev = None
        if dev is None:
            raise ConfigError(f"device must be {allowed}, got {device!r}{hint}")
    else:
        dev = device
    if dev.type not in _DEVICE_TYPES:
        raise ConfigError(f"device must be {allowed}, got {device!r} (device type {dev.type!r} is not supported)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} was requested but torch.cuda.is_available() is False")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={device!r} was requested but only {torch.cuda.device_count()} CUDA device(s) are present"
            )
    return dev


def resolve_seed(seed) -> int:
    """Return the integer seed of a noise generator.

    Parameters
    ----------
    seed : int, None or numpy.random.Generator
        An integer ``0 <= seed < 2**64`` (an integral float such as ``3.0`` is accepted);
        ``None`` draws a fresh seed from the operating system's entropy (the run is then not
        reproducible unless the drawn seed, recorded in ``result.settings["seed"]``, is
        reused); a :class:`numpy.random.Generator` gives the seed ``gen.integers(2**63)``
        (drawing advances it, so successive calls get different seeds).

    Returns
    -------
    int

    Raises
    ------
    ConfigError
        Any other value (a string, NaN, a bool, a negative or too large integer).
    """
    if seed is None:
        return int(np.random.SeedSequence().entropy % (_MAX_SEED + 1))
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(2**63))
    if isinstance(seed, np.random.RandomState):
        return int(seed.randint(2**31))
    ok = not isinstance(seed, (bool, np.bool_, str, bytes))
    try:
        val = int(seed)
        ok = ok and val == seed
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ConfigError(
            f"seed must be an integer in [0, 2**64), None (a fresh random seed) or a numpy Generator, got {seed!r}"
        )
    if not 0 <= val <= _MAX_SEED:
        raise ConfigError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    return val


def available_memory(device: torch.device) -> int | None:
    """Bytes of memory free for tensors on ``device`` (``None`` when it cannot be read)."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError, RuntimeError):
        return None


def check_memory(nbytes: float, device: torch.device, what: str, *, fraction: float = 0.9) -> None:
    """Refuse (:class:`~lqgt.errors.ResourceError`) a run whose estimated memory exceeds what is free.

    Parameters
    ----------
    nbytes : float
        Estimated bytes the run allocates on ``device``.
    device : torch.device
        Where the memory is allocated.
    what : str
        What the estimate is for (named in the message, with the arguments that set it).
    fraction : float
        Fraction of the free memory a run may use.

    Raises
    ------
    ResourceError
        ``nbytes`` is larger than ``fraction`` of the free memory (or than 2**62 bytes when
        the free memory cannot be read).
    """
    free = available_memory(device)
    limit = fraction * free if free is not None else float(2**62)
    if nbytes > limit:
        have = f"{_fmt_bytes(free)} free on {device}" if free is not None else "more than can be addressed"
        raise ResourceError(f"{what} would need about {_fmt_bytes(nbytes)} of memory, {have}; "
                            "reduce it (or pass store=False / a smaller chunk where offered)")


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1024 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1024.0
    return f"{n:.3g} PB"  # pragma: no cover


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
