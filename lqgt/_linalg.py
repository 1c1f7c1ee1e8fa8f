"""Numerics hygiene in one place: input checks, symmetrisation, PSD square roots.

Every public entry point of lqgt converts its matrices through :func:`as_matrix` and
checks covariances and weights through :func:`check_psd`, so that bad input fails early
with an error naming the matrix, never deep inside scipy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg

from .errors import (
    NonFiniteError,
    NotDetectableError,
    NotPositiveDefiniteError,
    NotRealError,
    NotStabilizableError,
    NotSymmetricError,
    ShapeError,
)

#: Relative tolerance used for symmetry and definiteness checks.
SYM_RTOL = 1e-8
#: A mode with ``|lambda| >= 1 - STAB_TOL`` counts as not asymptotically stable.
STAB_TOL = 1e-9


def _detach(M: Any) -> Any:
    """A torch tensor (``requires_grad`` or on a GPU) as a numpy array; anything else unchanged.

    The design layer is numpy: gradients do not flow through it, so a tensor that
    requires grad is detached (its values are used) rather than refused.
    """
    if type(M).__module__.split(".")[0] == "torch" and hasattr(M, "detach"):
        return M.detach().cpu().numpy()
    return M


def _real_array(name: str, M: Any, what: str) -> np.ndarray:
    """``np.array(M, float64)``, refusing non-numeric input and complex entries by name."""
    try:
        raw = np.asarray(_detach(M))
        if np.iscomplexobj(raw):
            if np.any(raw.imag != 0):
                raise NotRealError(f"{name} must be a real {what}, got complex entries")
            raw = raw.real
        return np.array(raw, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, NotRealError):
            raise
        raise ShapeError(f"{name} must be a numeric {what}: {exc}") from None


def as_matrix(name: str, M: Any, shape: tuple[int | None, int | None] | None = None) -> np.ndarray:
    """Convert ``M`` to a finite float64 2-D array, checking its shape.

    Parameters
    ----------
    name : str
        Name of the matrix, used in error messages.
    M : array_like
        The matrix. A scalar becomes ``(1, 1)``; a 1-D array is refused unless
        ``shape`` says one of its dimensions is 1, in which case it is reshaped.
    shape : tuple of (int or None), optional
        Expected shape; ``None`` entries are free.

    Returns
    -------
    numpy.ndarray
        The matrix, float64, C-contiguous copy.

    Raises
    ------
    ShapeError
        If the shape is wrong (the message names both shapes).
    NonFiniteError
        If ``M`` has NaN or infinite entries.
    """
    arr = _real_array(name, M, "matrix")
    if arr.ndim == 0:
        arr = arr.reshape(1, 1)
    elif arr.ndim == 1:
        if shape is not None and shape[0] == 1:
            arr = arr.reshape(1, -1)
        elif shape is not None and shape[1] == 1:
            arr = arr.reshape(-1, 1)
        else:
            raise ShapeError(
                f"{name} must be a 2-D matrix, got a 1-D array of shape {arr.shape}; "
                f"reshape it explicitly (e.g. {name}.reshape(-1, 1) for a column)"
            )
    elif arr.ndim > 2:
        raise ShapeError(f"{name} must be a 2-D matrix, got shape {arr.shape}")
    if shape is not None:
        for k, want in enumerate(shape):
            if want is not None and arr.shape[k] != want:
                expected = "(" + ", ".join("·" if s is None else str(s) for s in shape) + ")"
                raise ShapeError(f"{name} has shape {arr.shape}, expected {expected}")
    if 0 in arr.shape:
        raise ShapeError(f"{name} is empty (shape {arr.shape}); lqgt needs at least one state, input and output")
    if not np.all(np.isfinite(arr)):
        raise NonFiniteError(f"{name} contains NaN or infinite entries")
    return np.ascontiguousarray(arr)


def as_square(name: str, M: Any) -> np.ndarray:
    """:func:`as_matrix` for a square matrix of any size (the size is read from ``M``)."""
    A = as_matrix(name, M)
    return as_matrix(name, A, (A.shape[0], A.shape[0]))


def as_vector(name: str, v: Any, n: int) -> np.ndarray:
    """Convert ``v`` to a finite float64 vector of length ``n`` (``(n,)`` or ``(n, 1)`` accepted)."""
    arr = _real_array(name, v, "vector")
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim == 0 and n == 1:
        arr = arr.reshape(1)
    if arr.shape != (n,):
        raise ShapeError(f"{name} has shape {arr.shape}, expected ({n},)")
    if not np.all(np.isfinite(arr)):
        raise NonFiniteError(f"{name} contains NaN or infinite entries")
    return arr


def symmetrize(M: np.ndarray) -> np.ndarray:
    """Return ``(M + M') / 2``."""
    return 0.5 * (M + M.T)


def _equilibrated_eigs(M: np.ndarray) -> np.ndarray:
    """Eigenvalues of ``S M S`` with the diagonal (Jacobi) scaling ``S`` that makes the diagonal 1.

    ``S M S`` is congruent to ``M`` (same inertia, Sylvester), and it does not change when
    a variable is rescaled, so definiteness tests on it are scale-free: they do not
    depend on the units of the states or inputs, nor on the overall size of ``M``.
    Diagonal entries that are zero or negative are scaled by the norm of ``M`` instead
    (a negative one then shows up as a negative eigenvalue relative to the norm).
    """
    norm = float(np.abs(M).max())
    if norm == 0.0:
        return np.zeros(M.shape[0])
    d = np.diag(M)
    s = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 1.0 / np.sqrt(norm))
    return np.linalg.eigvalsh(symmetrize(M * s[:, None] * s[None, :]))


#: Smallest eigenvalue (after equilibration) that counts as positive definite.
PD_RTOL = 1e-12


def check_psd(name: str, M: np.ndarray, *, strict: bool, needed_by: str = "") -> np.ndarray:
    """Check that a square matrix is symmetric and positive (semi)definite, scale-free.

    Symmetry is tested relative to the largest entry; definiteness on the equilibrated
    matrix ``S M S`` (``S`` diagonal, unit diagonal after scaling; see
    :func:`_equilibrated_eigs`): semidefinite means its smallest eigenvalue is at least
    ``-SYM_RTOL``, definite that it exceeds ``PD_RTOL``. So ``[[1e-12]]`` is a valid
    (if small) definite weight and ``[[-5e-13]]`` is not semidefinite.

    Parameters
    ----------
    name : str
        Name used in error messages.
    M : numpy.ndarray, shape (k, k)
        The matrix (already converted by :func:`as_matrix`).
    strict : bool
        ``True`` requires positive definite (``V``, ``R``), ``False`` positive
        semidefinite (``W``, ``Q``).
    needed_by : str
        What needs the condition, appended to the message (e.g. ``"dlqr needs a
        nonnegative cost"``).

    Returns
    -------
    numpy.ndarray
        The symmetrised matrix.

    Raises
    ------
    ShapeError, NotSymmetricError, NotPositiveDefiniteError
    """
    why = f"; {needed_by}" if needed_by else ""
    if M.shape[0] != M.shape[1]:
        raise ShapeError(f"{name} must be square, got shape {M.shape}")
    scale = float(np.abs(M).max()) if M.size else 0.0
    asym = float(np.abs(M - M.T).max()) if M.size else 0.0
    if asym > SYM_RTOL * scale:
        raise NotSymmetricError(f"{name} must be symmetric (max |{name} - {name}'| = {asym:.3g})")
    M = symmetrize(M)
    if not M.size:
        return M
    lam_eq = float(_equilibrated_eigs(M).min())
    if strict and lam_eq <= PD_RTOL:
        lam_min = float(np.linalg.eigvalsh(M).min())
        raise NotPositiveDefiniteError(
            f"{name} must be positive definite (smallest eigenvalue {lam_min:.3g}; "
            f"{lam_eq:.3g} relative to its diagonal){why}"
        )
    if not strict and lam_eq < -SYM_RTOL:
        lam_min = float(np.linalg.eigvalsh(M).min())
        raise NotPositiveDefiniteError(
            f"{name} must be positive semidefinite (smallest eigenvalue {lam_min:.3g}; "
            f"{lam_eq:.3g} relative to its diagonal){why}"
        )
    return M


def check_joint_psd(Q: np.ndarray, R: np.ndarray, N: np.ndarray, names: tuple[str, str, str] = ("Q", "R", "N"),
                    *, needed_by: str = "") -> np.ndarray:
    """Check that the joint weight ``[[Q, N], [N', R]]`` is positive semidefinite (scale-free).

    Parameters
    ----------
    Q : numpy.ndarray, shape (n, n)
        State weight (already checked by :func:`check_psd`).
    R : numpy.ndarray, shape (m, m)
        Input weight.
    N : numpy.ndarray, shape (n, m)
        Cross weight.
    names : tuple of str
        Names of ``(Q, R, N)`` for the message.
    needed_by : str
        Function that needs the condition, named in the message.

    Returns
    -------
    numpy.ndarray, shape (n + m, n + m)
        The joint weight.

    Raises
    ------
    NotPositiveDefiniteError
    """
    nQ, nR, nN = names
    Qz = symmetrize(np.block([[Q, N], [N.T, R]]))
    lam_eq = float(_equilibrated_eigs(Qz).min())
    if lam_eq < -SYM_RTOL:
        by = f" ({needed_by})" if needed_by else ""
        raise NotPositiveDefiniteError(
            f"[[{nQ}, {nN}], [{nN}', {nR}]] must be positive semidefinite{by}: its smallest eigenvalue "
            f"relative to its diagonal is {lam_eq:.3g} ({nQ} - {nN} {nR}^-1 {nN}' is indefinite)"
        )
    return Qz


def psd_sqrt(M: np.ndarray) -> np.ndarray:
    """Return a factor ``F`` with ``F F' = M`` for a symmetric PSD matrix (eigen-decomposition).

    Works for singular ``M`` (where a Cholesky factor would fail).
    """
    lam, U = np.linalg.eigh(symmetrize(M))
    return U * np.sqrt(np.clip(lam, 0.0, None))


def spectral_radius(A: np.ndarray) -> float:
    """Largest eigenvalue modulus of ``A``."""
    return float(np.max(np.abs(np.linalg.eigvals(A)))) if A.size else 0.0


def _uncontrollable_unstable_modes(A: np.ndarray, B: np.ndarray) -> list[complex]:
    """Eigenvalues ``lam`` of ``A`` with ``|lam| >= 1`` for which ``[A - lam I, B]`` loses rank (PBH)."""
    n = A.shape[0]
    bad: list[complex] = []
    if n > 1:
        # Diagonal balancing (exact: powers of 2) makes the rank test independent of how the
        # states are scaled; without it a badly scaled but stabilizable pair is refused.
        A, (sc, _) = scipy.linalg.matrix_balance(A, permute=False, separate=True)
        B = B / sc[:, None]
    eigs = np.linalg.eigvals(A)
    unstable = eigs[np.abs(eigs) >= 1.0 - STAB_TOL]
    if unstable.size == 0:
        return bad
    scale = max(1.0, float(np.abs(A).max()), float(np.abs(B).max()) if B.size else 0.0)
    for lam in unstable:
        pbh = np.hstack([A - lam * np.eye(n), B])
        sv = np.linalg.svd(pbh, compute_uv=False)
        if sv[n - 1] <= 1e-9 * scale:
            bad.append(complex(lam))
    return bad


def check_stabilizable(A: np.ndarray, B: np.ndarray, names: tuple[str, str] = ("A", "B")) -> None:
    """Raise :class:`NotStabilizableError` if ``(A, B)`` is not stabilizable (PBH test, discrete time)."""
    bad = _uncontrollable_unstable_modes(A, B)
    if bad:
        modes = ", ".join(f"{z:.4g}" for z in bad)
        raise NotStabilizableError(
            f"({names[0]}, {names[1]}) is not stabilizable: the mode(s) {modes} with "
            f"|lambda| >= 1 cannot be reached through {names[1]}"
        )


def check_detectable(A: np.ndarray, C: np.ndarray, names: tuple[str, str] = ("A", "C")) -> None:
    """Raise :class:`NotDetectableError` if ``(A, C)`` is not detectable (PBH test, discrete time)."""
    bad = _uncontrollable_unstable_modes(A.T, C.T)
    if bad:
        modes = ", ".join(f"{z:.4g}" for z in bad)
        raise NotDetectableError(
            f"({names[0]}, {names[1]}) is not detectable: the mode(s) {modes} with "
            f"|lambda| >= 1 are not seen through {names[1]}"
        )
