"""Discrete-time LTI plants with Gaussian noise models (SPEC §1).

    x[t+1] = A x[t] + B u[t] + w[t],   w ~ N(0, W)
    y[t]   = C x[t] + D u[t] + v[t],   v ~ N(0, V)
    x[0]   ~ N(m0, P0)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import scipy.linalg

from ._linalg import as_matrix, as_square, as_vector, check_psd, symmetrize
from .errors import ConfigError, ShapeError

__all__ = ["Plant", "van_loan"]


def _sample_time(dt) -> float:
    """``float(dt)``, refusing anything but a positive finite number (by name)."""
    try:
        val = float(dt)
    except (TypeError, ValueError):
        val = float("nan")
    if not (np.isfinite(val) and val > 0):
        raise ConfigError(f"dt must be a positive finite sample time, got {dt!r}")
    return val


def van_loan(Ac, Bc, Wc, dt: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact discretisation of ``dx = (Ac x + Bc u) dt + dw`` over one sample.

    Parameters
    ----------
    Ac : array_like, shape (n, n)
        Continuous state matrix.
    Bc : array_like, shape (n, m)
        Continuous input matrix (input held constant over the sample: zero-order hold).
    Wc : array_like, shape (n, n)
        Spectral density of the continuous process noise ``dw``.
    dt : float
        Sample time in seconds (> 0).

    Returns
    -------
    A : numpy.ndarray, shape (n, n)
        ``exp(Ac dt)``.
    B : numpy.ndarray, shape (n, m)
        ``∫_0^dt exp(Ac s) ds Bc``.
    W : numpy.ndarray, shape (n, n)
        ``∫_0^dt exp(Ac s) Wc exp(Ac' s) ds`` (Van Loan, 1978).
    """
    Ac = as_square("Ac", Ac)
    n = Ac.shape[0]
    Bc = as_matrix("Bc", Bc, (n, None))
    Wc = check_psd("Wc", as_matrix("Wc", Wc, (n, n)), strict=False)
    dt = _sample_time(dt)
    m = Bc.shape[1]
    # ZOH: expm([[Ac, Bc], [0, 0]] dt) = [[A, B], [0, I]]
    Z = np.zeros((n + m, n + m))
    Z[:n, :n] = Ac
    Z[:n, n:] = Bc
    E = scipy.linalg.expm(Z * dt)
    A, B = E[:n, :n], E[:n, n:]
    # Van Loan: expm([[-Ac, Wc], [0, Ac']] dt) = [[., A^{-1} W], [0, A']]
    M = np.zeros((2 * n, 2 * n))
    M[:n, :n] = -Ac
    M[:n, n:] = Wc
    M[n:, n:] = Ac.T
    F = scipy.linalg.expm(M * dt)
    Ad = F[n:, n:].T
    W = Ad @ F[:n, n:]
    return A, B, symmetrize(W)


@dataclass(frozen=True, eq=False)
class Plant:
    """A discrete-time linear plant with Gaussian process and measurement noise.

    ``x[t+1] = A x[t] + B u[t] + w[t]``, ``y[t] = C x[t] + D u[t] + v[t]``,
    ``w ~ N(0, W)``, ``v ~ N(0, V)``, ``x[0] ~ N(m0, P0)``, all independent.

    Parameters
    ----------
    A : array_like, shape (n, n)
        State matrix.
    B : array_like, shape (n, m)
        Input matrix.
    C : array_like, shape (p, n)
        Output matrix.
    W : array_like, shape (n, n)
        Process-noise covariance per sample (symmetric positive semidefinite).
    V : array_like, shape (p, p)
        Measurement-noise covariance (symmetric positive definite).
    D : array_like, shape (p, m), optional
        Feedthrough; zero by default.
    m0 : array_like, shape (n,), optional
        Mean of the initial state; zero by default.
    P0 : array_like, shape (n, n), optional
        Covariance of the initial state (symmetric PSD); identity by default.
    dt : float, optional
        Sample time in seconds (used for time axes and conversions); 1.0 by default.

    Raises
    ------
    ShapeError
        A matrix has the wrong shape (the message names it and both shapes).
    NonFiniteError
        A matrix has NaN or infinite entries.
    NotSymmetricError, NotPositiveDefiniteError
        ``W``/``P0`` not symmetric PSD, or ``V`` not symmetric positive definite.

    Examples
    --------
    >>> import numpy as np, lqgt
    >>> plant = lqgt.Plant([[1.0, 0.1], [0.0, 1.0]], [[0.005], [0.1]], [[1.0, 0.0]],
    ...                    W=0.01 * np.eye(2), V=[[0.1]], dt=0.1)
    >>> plant.n, plant.m, plant.p
    (2, 1, 1)
    """

    A: np.ndarray
    B: np.ndarray
    C: np.ndarray
    W: np.ndarray = field(kw_only=True)
    V: np.ndarray = field(kw_only=True)
    D: np.ndarray | None = field(default=None, kw_only=True)
    m0: np.ndarray | None = field(default=None, kw_only=True)
    P0: np.ndarray | None = field(default=None, kw_only=True)
    dt: float = field(default=1.0, kw_only=True)

    def __post_init__(self) -> None:
        A = as_square("A", self.A)
        n = A.shape[0]
        B = as_matrix("B", self.B, (n, None))
        m = B.shape[1]
        C = as_matrix("C", self.C, (None, n))
        p = C.shape[0]
        D = np.zeros((p, m)) if self.D is None else as_matrix("D", self.D, (p, m))
        W = check_psd("W", as_matrix("W", self.W, (n, n)), strict=False)
        V = check_psd("V", as_matrix("V", self.V, (p, p)), strict=True)
        m0 = np.zeros(n) if self.m0 is None else as_vector("m0", self.m0, n)
        P0 = np.eye(n) if self.P0 is None else check_psd("P0", as_matrix("P0", self.P0, (n, n)), strict=False)
        dt = _sample_time(self.dt)
        for name, val in dict(A=A, B=B, C=C, D=D, W=W, V=V, m0=m0, P0=P0, dt=dt).items():
            if isinstance(val, np.ndarray):
                val.setflags(write=False)
            object.__setattr__(self, name, val)

    @property
    def n(self) -> int:
        """Number of states."""
        return self.A.shape[0]

    @property
    def m(self) -> int:
        """Number of inputs."""
        return self.B.shape[1]

    @property
    def p(self) -> int:
        """Number of outputs."""
        return self.C.shape[0]

    @property
    def has_feedthrough(self) -> bool:
        """``True`` when ``D`` is not zero."""
        return bool(np.any(self.D != 0))

    def __repr__(self) -> str:
        return f"Plant(n={self.n}, m={self.m}, p={self.p}, dt={self.dt})"

    @classmethod
    def from_continuous(
        cls, Ac, Bc, C, *, Wc, V, dt: float, D=None, m0=None, P0=None
    ) -> "Plant":
        """Sample a continuous plant exactly: ZOH for (A, B), Van Loan for W (SPEC §1).

        Parameters
        ----------
        Ac : array_like, shape (n, n)
            Continuous state matrix.
        Bc : array_like, shape (n, m)
            Continuous input matrix.
        C : array_like, shape (p, n)
            Output matrix.
        Wc : array_like, shape (n, n)
            Spectral density of the process noise (units of state² per second).
        V : array_like, shape (p, p)
            Covariance of the sampled measurement noise (discrete form).
        dt : float
            Sample time in seconds.
        D : array_like, shape (p, m), optional
            Feedthrough.
        m0 : array_like, shape (n,), optional
            Initial-state mean.
        P0 : array_like, shape (n, n), optional
            Initial-state covariance.

        Returns
        -------
        Plant
            The sampled plant, ``W = ∫_0^dt e^{Ac s} Wc e^{Ac' s} ds``.
        """
        A, B, W = van_loan(Ac, Bc, Wc, dt)
        return cls(A, B, C, W=W, V=V, D=D, m0=m0, P0=P0, dt=dt)

    @classmethod
    def from_statespace(cls, sys, *, W, V, dt: float | None = None, m0=None, P0=None) -> "Plant":
        """Build a plant from a :class:`control.StateSpace`.

        Parameters
        ----------
        sys : control.StateSpace
            Discrete system (``sys.dt`` > 0 or ``True``), or continuous (``sys.dt == 0``).
        W : array_like, shape (n, n)
            Process-noise covariance for a discrete ``sys``; for a continuous ``sys`` the
            spectral density ``Wc``, sampled by Van Loan.
        V : array_like, shape (p, p)
            Measurement-noise covariance (discrete).
        dt : float, optional
            Sample time; required for a continuous ``sys``, and must equal ``sys.dt`` for a
            discrete one when given.
        m0 : array_like, shape (n,), optional
            Initial-state mean.
        P0 : array_like, shape (n, n), optional
            Initial-state covariance.

        Returns
        -------
        Plant
        """
        try:
            A, B, C, D = (np.asarray(M, dtype=float) for M in (sys.A, sys.B, sys.C, sys.D))
        except AttributeError:
            raise ShapeError(f"sys must be a control.StateSpace, got {type(sys).__name__}") from None
        sys_dt = sys.dt
        if sys_dt is None or sys_dt == 0:
            if sys_dt is None and dt is None:
                raise ShapeError("sys has unspecified timebase (dt=None); pass dt=")
            if dt is None:
                raise ShapeError("sys is continuous-time: pass dt= to sample it (ZOH + Van Loan)")
            return cls.from_continuous(A, B, C, Wc=W, V=V, dt=dt, D=D, m0=m0, P0=P0)
        sample = 1.0 if sys_dt is True else float(sys_dt)
        if dt is not None and not np.isclose(dt, sample):
            raise ShapeError(f"dt={dt} differs from the discrete system's sample time {sample}")
        return cls(A, B, C, W=W, V=V, D=D, m0=m0, P0=P0, dt=sample)

    def to_statespace(self):
        """Return the deterministic part as a discrete :class:`control.StateSpace` (sample time ``dt``)."""
        import control

        return control.ss(self.A, self.B, self.C, self.D, self.dt)

    def with_noise(self, *, W=None, V=None) -> "Plant":
        """Return a copy with a different process and/or measurement noise covariance.

        Parameters
        ----------
        W : array_like, shape (n, n), optional
            New process-noise covariance; the current one when omitted.
        V : array_like, shape (p, p), optional
            New measurement-noise covariance; the current one when omitted.

        Returns
        -------
        Plant
        """
        return replace(self, W=self.W if W is None else W, V=self.V if V is None else V)
