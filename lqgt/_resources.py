"""Machine resources for the torch layer: intra-op threads for small work, memory checks.

Threads: per-step tensors of a batched closed loop are small (``B × n`` with ``n`` of a
few states), and torch's intra-op thread pool costs more than it saves on them; on a busy
machine the pool's threads also wait on each other (a 2-core machine with one core taken
ran ``lqgt demo`` 6× slower with torch's default threads than with one). :func:`work_threads`
picks the thread count for such work and :func:`limit_threads` applies it for the length
of a ``with`` block, restoring torch's setting afterwards (nothing is changed for good).

Memory: :func:`check_memory` refuses, with :class:`lqgt.errors.ResourceError` and the
estimate, an allocation that cannot fit, before the allocator is asked.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from .errors import ConfigError, ResourceError

__all__ = ["SMALL_WORK", "THREADS_ENV", "work_threads", "limit_threads", "available_bytes", "check_memory",
           "fmt_bytes"]

#: Elements touched per step below which one intra-op thread is used on CPU.
SMALL_WORK = 1 << 20
#: Environment variable that overrides the automatic choice (an integer >= 1).
THREADS_ENV = "LQGT_NUM_THREADS"


def work_threads(elements: int, device: torch.device | str = "cpu") -> int | None:
    """Intra-op threads for CPU work of ``elements`` tensor elements per step.

    Parameters
    ----------
    elements : int
        Rough number of tensor elements one step touches (e.g. ``batch × width``).
    device : torch.device or str
        Only ``"cpu"`` work is limited.

    Returns
    -------
    int or None
        ``1`` for small CPU work (``elements < SMALL_WORK``), the value of the
        environment variable ``LQGT_NUM_THREADS`` where set, else ``None`` (keep torch's
        setting).

    Raises
    ------
    ConfigError
        ``LQGT_NUM_THREADS`` is set but not an integer >= 1.
    """
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(f"environment variable {THREADS_ENV} must be an integer >= 1, got {env!r}")
        return n
    if torch.device(device).type != "cpu":
        return None
    return 1 if elements < SMALL_WORK else None


@contextlib.contextmanager
def limit_threads(threads: int | None) -> Iterator[int]:
    """Run a block with at most ``threads`` intra-op threads; restore torch's setting afterwards.

    Parameters
    ----------
    threads : int or None
        Upper limit (``None``: leave the setting alone). The limit never raises torch's
        current thread count.

    Yields
    ------
    int
        The thread count in effect inside the block.
    """
    old = torch.get_num_threads()
    new = old if threads is None else max(1, min(int(threads), old))
    if new == old:
        yield old
        return
    torch.set_num_threads(new)
    try:
        yield new
    finally:
        torch.set_num_threads(old)


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Memory that may still be allocated on ``device`` (bytes), or ``None`` if unknown.

    Parameters
    ----------
    device : torch.device or str
        ``"cpu"`` (available physical memory) or a CUDA device (free device memory).

    Returns
    -------
    int or None
    """
    dev = torch.device(device)
    try:
        if dev.type == "cuda":
            return int(torch.cuda.mem_get_info(dev)[0])
        if dev.type == "cpu":
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError, RuntimeError):
        return None
    return None


def fmt_bytes(n: float) -> str:
    """``n`` bytes as a short human-readable string (``"8.0 TB"``).

    Parameters
    ----------
    n : float
        Bytes.

    Returns
    -------
    str
    """
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000.0
    return f"{n:.3g} EB"  # pragma: no cover


def check_memory(what: str, nbytes: float, device: torch.device | str = "cpu", *, hint: str = "") -> None:
    """Refuse an allocation of ``nbytes`` that cannot fit on ``device``.

    Parameters
    ----------
    what : str
        What would be allocated (named in the message, with the arguments that set its size).
    nbytes : float
        Estimated bytes.
    device : torch.device or str
        Where.
    hint : str
        What to change (appended to the message).

    Raises
    ------
    ResourceError
        ``nbytes`` exceeds the available memory (the message gives both).
    """
    avail = available_bytes(device)
    if avail is not None and nbytes > avail:
        raise ResourceError(f"{what} needs about {fmt_bytes(nbytes)} but only {fmt_bytes(avail)} is available on "
                            f"{torch.device(device)}" + (f"; {hint}" if hint else ""))
