"""Atomic file writing: a reader sees the old file or the complete new one, never half of one.

Each helper writes to a temporary file in the destination's own directory (so that the
final :func:`os.replace` is a rename within one file system, which POSIX and Windows make
atomic), flushes and fsyncs it, then renames it over the destination. On any error the
temporary file is removed and the destination is left untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

__all__ = ["atomic_open", "atomic_write_text", "atomic_write_bytes", "atomic_savefig"]


def _default_mode() -> int:
    """Permission bits a plain ``open(path, "w")`` would give a new file (0o666 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *, encoding: str | None = "utf-8",
                newline: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on a clean exit, move it onto ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        The destination. Its directory must exist.
    mode : {"w", "wb"}
        Text or binary writing.
    encoding : str, optional
        Text encoding (ignored in binary mode).
    newline : str, optional
        Passed to :func:`open` in text mode (``""`` for the :mod:`csv` module).

    Yields
    ------
    file object
        The open temporary file. Write to it; do not close it.

    Raises
    ------
    ValueError
        If ``mode`` is not ``"w"`` or ``"wb"``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode == "wb":
            f = os.fdopen(fd, "wb")
        else:
            f = os.fdopen(fd, "w", encoding=encoding, newline=newline)
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically.

    Parameters
    ----------
    path : str or os.PathLike
        The destination.
    text : str
        The whole content.
    encoding : str
        Text encoding.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    with atomic_open(path, "w", encoding=encoding, newline="") as f:
        f.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically.

    Parameters
    ----------
    path : str or os.PathLike
        The destination.
    data : bytes
        The whole content.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_savefig(fig, path: str | os.PathLike, **savefig_kw) -> Path:
    """Save a matplotlib figure to ``path`` atomically (format from the file suffix).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure.
    path : str or os.PathLike
        The destination, e.g. ``"out/cost.png"``.
    **savefig_kw
        Passed to :meth:`matplotlib.figure.Figure.savefig` (``dpi``, ``bbox_inches``, ...).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    fmt = savefig_kw.pop("format", None) or (path.suffix.lstrip(".").lower() or "png")
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format=fmt, **savefig_kw)
    return path
