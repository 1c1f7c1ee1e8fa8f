"""Disk margins of SISO and MIMO loops from the frequency response (numpy/scipy only, no slycot).

Conventions of Seiler, Packard & Gahinet, *An introduction to disk margins*, IEEE Control
Systems Magazine 40(5), 2020, and of :func:`control.disk_margins`. The loop ``L`` is closed
with unity negative feedback, ``S = (I + L)^{-1}``. The loop stays stable under every
multiplicative perturbation ``f_i`` of each channel (applied in all channels at once) taken
from the disk

    D(α, σ) = { (1 + α (1 - σ)/2 δ) / (1 - α (1 + σ)/2 δ) :  |δ| ≤ 1 }

(``σ`` the *skew*: ``0`` balanced, ``1`` the disk ``|f - 1| ≤ α`` built from ``S``, ``-1`` from
``T = I - S``) as long as ``α`` is below the disk margin

    α_max = 1 / max_ω μ_Δ(S(jω) + (σ - 1)/2 I),

with ``Δ`` the diagonal complex uncertainty structure (one complex scalar per channel). For
one loop ``μ`` is the modulus; for several it is bounded above by
``min_D σ̄(D M D^{-1})`` over positive diagonal ``D``, so the MIMO margin reported here is a
lower bound of the true one (guaranteed, usually tight: the bound is exact for up to
three channels with this structure).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.optimize

from .errors import ConfigError, NonFiniteError, ShapeError

__all__ = ["DiskMargins", "disk_margins", "disk_gain_phase", "mu_upper_bound"]

KINDS = ("multi", "loop-at-a-time")
AT = ("input", "output")


@dataclass(frozen=True, eq=False)
class DiskMargins:
    """Result of :func:`disk_margins` (immutable; arrays are read-only).

    ``k`` frequencies, ``m`` loops (channels).

    Attributes
    ----------
    alpha : float
        Disk margin ``α``: the smallest over frequency of :attr:`curve` (for
        ``kind="loop-at-a-time"``, also over the loops). ``0`` when the nominal closed loop is
        unstable; ``inf`` when no frequency limits it. For ``kind="multi"`` with ``m > 1`` a
        guaranteed lower bound of the true margin (``μ`` is bounded above).
    gain_margin : tuple of (float, float)
        ``(g_lo, g_hi)``: simultaneous gain changes in ``(g_lo, g_hi)`` (in every channel
        at once for ``"multi"``) keep the loop stable. ``g_lo = max(0, (1 - α(1-σ)/2) /
        (1 + α(1+σ)/2))``, ``g_hi = (1 + α(1-σ)/2) / (1 - α(1+σ)/2)`` (``inf`` when
        ``α(1+σ)/2 ≥ 1``).
    gain_margin_db : float
        ``20 log10 min(1/g_lo, g_hi)`` (dB), as :func:`control.disk_margins` reports it.
    phase_margin : float
        Phase changes (deg, either sign, in every channel at once for ``"multi"``) below
        this keep the loop stable: the angle where the disk ``D(α, σ)`` meets the unit
        circle, ``arccos((1 + g_lo g_hi)/(g_lo + g_hi))`` with the disk's unclipped
        real-axis ends, as :func:`control.disk_margins`; ``inf`` when the disk holds the
        whole unit circle, ``0`` when ``α = 0``. When ``α(1+σ)/2 = 1`` exactly the disk is
        the half-plane ``Re f ≥ g_lo`` and this is ``arccos(g_lo)`` (the limit of the
        formula; python-control returns 90° there, which agrees only for ``σ = 0``).
    omega_worst : float
        Frequency (rad/s) where :attr:`alpha` is attained (refined between grid points
        when ``L`` is an LTI system; ``inf`` when the supremum is only approached as
        ``ω → ∞``, e.g. ``L = k/(s + a)``; ``nan`` if ``alpha`` is ``0`` for instability or
        ``inf``).
    loop_worst : int or None
        For ``"loop-at-a-time"``: the loop (channel index) that sets :attr:`alpha`.
    skew : float
        The skew ``σ``.
    kind : str
        ``"multi"`` or ``"loop-at-a-time"``.
    at : str
        ``"input"`` or ``"output"``: where the loop is broken (as given, or as formed from
        ``(plant, design)``).
    omega : numpy.ndarray, shape (k,)
        Frequencies of :attr:`curve` (rad/s).
    curve : numpy.ndarray, shape (k,) or (k, m)
        Disk margin at each frequency, ``1 / μ(S + (σ - 1)/2 I)`` (``"multi"``, shape
        ``(k,)``), or per loop ``1 / |S_ii + (σ - 1)/2|`` (``"loop-at-a-time"``, ``(k, m)``).
    loop_alpha : numpy.ndarray, shape (m,)
        Per-loop disk margins (``"loop-at-a-time"``); for ``"multi"`` the single entry
        ``[alpha]``.
    loop_omega : numpy.ndarray, shape (m,)
        Frequencies (rad/s) of :attr:`loop_alpha`.
    stable : bool or None
        Nominal closed-loop stability (``None`` when ``L`` was given as frequency-response
        data, or as a MIMO ``TransferFunction`` that python-control cannot realise without
        slycot: stability is then assumed, pass a ``StateSpace`` to have it checked).
    dt : float or None
        Sample time of ``L`` (s), ``None`` for continuous time.
    """

    alpha: float
    gain_margin: tuple[float, float]
    gain_margin_db: float
    phase_margin: float
    omega_worst: float
    loop_worst: int | None
    skew: float
    kind: str
    at: str
    omega: np.ndarray
    curve: np.ndarray
    loop_alpha: np.ndarray
    loop_omega: np.ndarray
    stable: bool | None
    dt: float | None

    @property
    def gain_margin_interval(self) -> tuple[float, float]:
        """Alias of :attr:`gain_margin`: the interval ``(g_lo, g_hi)``."""
        return self.gain_margin


def disk_gain_phase(alpha: float, skew: float = 0.0) -> tuple[tuple[float, float], float, float]:
    """Gain interval, gain margin (dB) and phase margin (deg) implied by a disk ``D(α, σ)``.

    Parameters
    ----------
    alpha : float
        Disk margin ``α ≥ 0``.
    skew : float
        Skew ``σ`` (real).

    Returns
    -------
    gain_margin : tuple of (float, float)
        ``(g_lo, g_hi)``, see :attr:`DiskMargins.gain_margin`.
    gain_margin_db : float
        ``20 log10 min(1/g_lo, g_hi)``.
    phase_margin : float
        Degrees, see :attr:`DiskMargins.phase_margin`.
    """
    a = 0.5 * alpha * (1.0 - skew)
    b = 0.5 * alpha * (1.0 + skew)
    if math.isinf(alpha):
        return (0.0, math.inf), math.inf, math.inf
    if alpha <= 0.0:
        return (1.0, 1.0), 0.0, 0.0
    g_lo = (1.0 - a) / (1.0 + b)
    g_hi = (1.0 + a) / (1.0 - b) if b < 1.0 else math.inf
    lo = max(g_lo, 0.0)
    with np.errstate(divide="ignore"):
        gm_db = float(20.0 * np.log10(min(1.0 / lo if lo > 0 else math.inf, g_hi)))
    if b == 1.0:
        pm = math.degrees(math.acos(min(max(g_lo, -1.0), 1.0)))   # half-plane Re f >= g_lo
    else:
        gh = (1.0 + a) / (1.0 - b)   # the disk's other real-axis point (negative when b > 1)
        c = (1.0 + g_lo * gh) / (g_lo + gh) if g_lo + gh != 0 else -math.inf
        pm = math.degrees(math.acos(c)) if abs(c) < 1.0 else (0.0 if c >= 1.0 else math.inf)
    return (float(lo), float(g_hi)), gm_db, float(pm)


# ----------------------------------------------------------------------------- structured singular value

def _sv_top(N: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    U, s, Vh = np.linalg.svd(N)
    return s[..., 0], U[..., :, 0], Vh[..., 0, :].conj()


def mu_upper_bound(M: np.ndarray, iters: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Upper bound of the structured singular value for a diagonal complex uncertainty.

    ``μ(M) ≤ min_D σ̄(D M D^{-1})`` over positive diagonal ``D = diag(e^x)``; the problem is
    convex in ``x``. Osborne (Frobenius-norm) balancing gives the start; then a descent on
    ``x`` with the gradient ``σ̄ (|u|² - |v|²)`` (``u``, ``v`` the top singular vectors) and
    step halving, vectorised over the leading batch axis. Any ``D`` gives a valid bound.

    Parameters
    ----------
    M : numpy.ndarray of complex, shape (k, m, m)
        Matrices, one per frequency.
    iters : int
        Descent iterations (each one SVD per matrix).

    Returns
    -------
    bound : numpy.ndarray, shape (k,)
        ``σ̄(D M D^{-1})`` at the ``D`` found (``≥ μ(M)``; ``= |M|`` for ``m = 1``).
    d : numpy.ndarray, shape (k, m)
        The scalings ``D`` (normalised to ``d[:, 0] = 1``).
    """
    M = np.asarray(M, dtype=complex)
    k, m, _ = M.shape
    if m == 1:
        return np.abs(M[:, 0, 0]), np.ones((k, 1))
    x = np.zeros((k, m))
    A = np.abs(M) ** 2
    off = ~np.eye(m, dtype=bool)
    for _ in range(20):   # Osborne balancing of |M|^2 (off-diagonal parts)
        for i in range(m):
            e = np.exp(2 * (x[:, :, None] - x[:, None, :]))   # |D M D^-1|_ij^2 / |M_ij|^2
            W = A * e * off
            r, c = W[:, i, :].sum(-1), W[:, :, i].sum(-1)
            ok = (r > 0) & (c > 0)
            x[ok, i] += 0.25 * np.log(c[ok] / r[ok])
    x -= x[:, :1]

    def scaled(x):
        return M * np.exp(x[:, :, None] - x[:, None, :])

    s, u, v = _sv_top(scaled(x))
    best = s.copy()
    step = np.ones(k)
    for _ in range(int(iters)):
        g = np.abs(u) ** 2 - np.abs(v) ** 2
        if np.max(np.abs(g)) < 1e-12:
            break
        xn = x - step[:, None] * g
        sn, un, vn = _sv_top(scaled(xn))
        better = sn < best
        x = np.where(better[:, None], xn, x)
        u = np.where(better[:, None], un, u)
        v = np.where(better[:, None], vn, v)
        best = np.where(better, sn, best)
        step = np.where(better, step * 1.5, step * 0.5)
    x -= x[:, :1]
    return best, np.exp(x)


# ----------------------------------------------------------------------------- loop data

def _lti_data(L) -> tuple[Any, float | None, int]:
    import control

    sys = L
    dt = sys.dt
    if dt is None or dt is False or dt == 0:
        dt_out = None
    else:
        dt_out = 1.0 if dt is True else float(dt)
    if sys.ninputs != sys.noutputs:
        raise ShapeError(f"L must be square (the loop is closed as feedback(L, I)), got {sys.noutputs} outputs x "
                         f"{sys.ninputs} inputs")
    return sys, dt_out, sys.ninputs


def _default_grid(sys, dt: float | None, points: int) -> np.ndarray:
    """Log grid over the poles' and zeros' decades (continuous) or up to the Nyquist frequency."""
    if dt is not None:
        nyq = math.pi / dt
        w = np.concatenate([nyq * np.logspace(-6, 0, points), np.linspace(0.0, nyq, points)])
        return np.unique(w)
    try:
        roots = np.concatenate([np.atleast_1d(sys.poles()), np.atleast_1d(sys.zeros())])
    except Exception:  # zeros of a MIMO system may need slycot
        roots = np.atleast_1d(sys.poles())
    mags = np.abs(roots[np.isfinite(roots)])
    mags = mags[mags > 0]
    lo = math.floor(math.log10(mags.min())) - 2 if mags.size else -2
    hi = math.ceil(math.log10(mags.max())) + 2 if mags.size else 2
    w = np.logspace(lo, hi, points)
    return np.unique(np.concatenate([[0.0], w]))


def _at_infinity(sys) -> np.ndarray | None:
    """``L(∞)`` of a continuous proper system, shape (1, m, m) (``None`` if improper)."""
    import control

    if isinstance(sys, control.StateSpace):
        return np.asarray(sys.D, dtype=complex)[None]
    m = sys.ninputs
    out = np.zeros((1, sys.noutputs, m), dtype=complex)
    for i in range(sys.noutputs):
        for j in range(m):
            num = np.trim_zeros(np.atleast_1d(np.asarray(sys.num[i][j], dtype=float)), "f")
            den = np.trim_zeros(np.atleast_1d(np.asarray(sys.den[i][j], dtype=float)), "f")
            if num.size > den.size:
                return None
            out[0, i, j] = num[0] / den[0] if num.size == den.size and num.size else 0.0
    return out


def _eval_lti(sys, dt: float | None, w: np.ndarray) -> np.ndarray:
    z = np.exp(1j * w * dt) if dt is not None else 1j * w
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)            # poles on the grid give inf; dropped later
        r = np.asarray(sys(z, squeeze=False), dtype=complex)       # (p, m, k)
    return np.moveaxis(r, -1, 0)


def _closed_loop_stable(sys, dt: float | None) -> bool | None:
    import control

    m = sys.ninputs
    try:
        cl = control.feedback(control.ss(sys), np.eye(m))
    except control.ControlMIMONotImplemented:   # a MIMO TransferFunction without slycot
        return None
    if cl.nstates == 0:
        return True
    p = np.linalg.eigvals(np.asarray(cl.A, dtype=float))
    return bool(np.all(np.abs(p) < 1.0)) if dt is not None else bool(np.all(p.real < 0.0))


def _sens_matrix(Lw: np.ndarray, skew: float) -> np.ndarray:
    """``S + (σ - 1)/2 I`` per frequency; rows where ``I + L`` is singular become ``inf``."""
    k, m, _ = Lw.shape
    I = np.eye(m)
    out = np.empty_like(Lw)
    with np.errstate(all="ignore"):
        for i in range(k):
            try:
                out[i] = np.linalg.inv(I + Lw[i]) + 0.5 * (skew - 1.0) * I
            except np.linalg.LinAlgError:
                out[i] = np.inf
    return out


def _margin_curve(Lw: np.ndarray, skew: float, kind: str) -> np.ndarray:
    """Disk margin per frequency: ``(k,)`` for "multi", ``(k, m)`` per loop."""
    Ms = _sens_matrix(Lw, skew)
    fin = np.all(np.isfinite(Ms), axis=(1, 2))
    k, m, _ = Ms.shape
    if kind == "loop-at-a-time":
        mag = np.abs(np.diagonal(Ms, axis1=1, axis2=2)).copy()      # (k, m)
        mag[~fin] = np.inf
    else:
        mag = np.full(k, np.inf)
        if np.any(fin):
            mag[fin] = mu_upper_bound(Ms[fin])[0]
    with np.errstate(divide="ignore"):
        return 1.0 / mag


def _check_skew(skew) -> float:
    if isinstance(skew, bool) or not isinstance(skew, (int, float, np.integer, np.floating)) \
            or np.ndim(skew) != 0:
        raise ConfigError(f"skew must be a real number (0 balanced, 1 for S, -1 for T), got {skew!r}")
    s = float(skew)
    if not math.isfinite(s):
        raise NonFiniteError(f"skew must be finite, got {skew!r}")
    return s


def _check_omega(omega, dt: float | None) -> np.ndarray:
    try:
        w = np.asarray(omega, dtype=float)
    except (TypeError, ValueError):
        raise ConfigError(f"omega must be a 1-D sequence of frequencies (rad/s), got {omega!r}") from None
    if w.ndim != 1 or w.size == 0:
        raise ShapeError(f"omega must be a non-empty 1-D sequence of frequencies (rad/s), got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise NonFiniteError("omega contains NaN or infinity")
    if np.any(w < 0):
        raise ConfigError(f"omega must be >= 0 rad/s, got min {w.min():.6g}")
    if dt is not None and np.any(w > math.pi / dt * (1 + 1e-12)):
        raise ConfigError(f"omega must be <= π/dt = {math.pi / dt:.6g} rad/s (the Nyquist frequency) for a "
                          f"discrete L, got max {w.max():.6g}")
    return w


def _check_response(R, k: int, name: str) -> np.ndarray:
    try:
        r = np.asarray(R, dtype=complex)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an array of complex frequency responses, got {type(R).__name__}") from None
    if r.ndim == 1:
        r = r[:, None, None]
    if r.ndim != 3 or r.shape[0] != k:
        raise ShapeError(f"{name} must have shape (k,) or (k, m, m) with k = len(omega) = {k}, got {r.shape}")
    if r.shape[1] != r.shape[2]:
        raise ShapeError(f"{name} must be square (k, m, m): the loop is closed as feedback(L, I); got {r.shape}")
    if not np.all(np.isfinite(r)):
        raise NonFiniteError(f"{name} contains NaN or infinity (at {int(np.sum(~np.isfinite(r)))} entries)")
    return r


def disk_margins(L, omega=None, *, skew: float = 0.0, kind: str = "multi", at: str = "input",
                 points: int = 2000) -> DiskMargins:
    """Disk margins of a SISO or MIMO loop, balanced or skewed, multi-loop or loop-at-a-time.

    Computed from the frequency response with numpy/scipy alone (no slycot), with the
    conventions of Seiler, Packard & Gahinet (2020) and :func:`control.disk_margins`. For
    ``m`` loops closed with unity negative feedback, ``S = (I + L)^{-1}``:

    * ``kind="multi"``: ``α = 1 / max_ω μ(S + (σ - 1)/2 I)`` for independent complex
      perturbations in all channels at once. ``μ`` is bounded above by
      ``min_D σ̄(D M D^{-1})`` (positive diagonal ``D``, :func:`mu_upper_bound`), so for
      ``m > 1`` the reported margin is a **lower bound** of the true margin (conservative;
      usually tight, and exact for ``m ≤ 3``). For ``m = 1`` it is exact.
    * ``kind="loop-at-a-time"``: each channel is broken in turn with the others closed; its
      SISO disk margin is ``1 / max_ω |S_ii + (σ - 1)/2|``. ``alpha`` is the smallest.

    The maximum is taken over a frequency grid, so it can miss a peak narrower than the
    grid spacing. On the default grid of an LTI ``L`` it is refined to machine precision
    between the neighbours of the worst grid point (and the limit ``ω → ∞`` of a
    continuous ``L`` is included); a given ``omega`` is used as is, as
    :func:`control.disk_margins` does.

    Parameters
    ----------
    L : control.StateSpace, control.TransferFunction, (Plant, LQGDesign), callable or array_like
        The loop transfer, square ``m x m``, continuous or discrete (e.g. from
        :func:`lqgt.loop_transfer` or :func:`lqgt.lqr_loop_transfer`). A pair
        ``(plant, design)`` forms ``lqgt.loop_transfer(plant, design, at=at)``. A callable
        ``L(omega) -> (k, m, m)`` (or ``(k,)`` for one loop) or an array of that shape
        gives the frequency response directly; ``omega`` is then required.
    omega : array_like, shape (k,), optional
        Frequencies (rad/s, ``≥ 0``; at most ``π/dt`` for a discrete ``L``). Default for
        an LTI ``L``: ``points`` log-spaced frequencies two decades beyond its poles and
        zeros (continuous), or log- and linearly spaced up to ``π/dt`` (discrete).
    skew : float
        ``σ``: ``0`` balanced (gain increase and decrease alike), ``1`` for ``S`` (more
        gain increase), ``-1`` for ``T`` (more decrease); any real.
    kind : {"multi", "loop-at-a-time"}
        Simultaneous perturbations of all channels, or one channel at a time.
    at : {"input", "output"}
        Where the loop is broken; used to form ``L`` from ``(plant, design)`` and recorded
        in the result (an LTI or data ``L`` is taken as given).
    points : int
        Grid size of the default ``omega`` (≥ 16).

    Returns
    -------
    DiskMargins
        Margin ``alpha``, gain interval and phase margin, worst frequency and the curve.

    Raises
    ------
    ShapeError
        ``L`` is not square, or data of the wrong shape.
    NonFiniteError
        NaN/inf in the data, ``omega`` or ``skew``.
    ConfigError
        Unknown ``kind``/``at``, non-real ``skew``, missing ``omega`` for data, or an
        unsupported ``L``.

    Examples
    --------
    >>> import control, lqgt
    >>> r = lqgt.disk_margins(control.tf([1], [1, 0]))        # L = 1/s
    >>> round(r.alpha, 6), round(r.phase_margin, 3)
    (2.0, 90.0)
    """
    import control

    sk = _check_skew(skew)
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {KINDS}, got {kind!r}")
    if at not in AT:
        raise ConfigError(f"at must be one of {AT}, got {at!r}")
    if isinstance(points, bool) or not isinstance(points, (int, np.integer)) or points < 16:
        raise ConfigError(f"points must be an integer >= 16, got {points!r}")

    if isinstance(L, tuple) and len(L) == 2:
        from .frequency import loop_transfer
        L = loop_transfer(L[0], L[1], at=at)

    sys = None
    dt = None
    stable: bool | None = None
    if isinstance(L, (control.StateSpace, control.TransferFunction)):
        sys, dt, m = _lti_data(L)
        w = _default_grid(sys, dt, int(points)) if omega is None else _check_omega(omega, dt)
        Lw = _eval_lti(sys, dt, w)
        keep = np.all(np.isfinite(Lw), axis=(1, 2))      # drop frequencies on poles of L
        if not np.any(keep):
            raise NonFiniteError("L is infinite at every frequency of omega (poles on the grid)")
        w, Lw = w[keep], Lw[keep]
        stable = _closed_loop_stable(sys, dt)
    elif callable(L):
        if omega is None:
            raise ConfigError("L must be paired with omega when it is a callable frequency response L(omega)")
        w = _check_omega(omega, None)
        Lw = _check_response(L(w), w.size, "L(omega)")
    elif isinstance(L, (np.ndarray, list, tuple)):
        if omega is None:
            raise ConfigError("L must be paired with omega when it is an array of frequency responses "
                          "(shape (k, m, m) or (k,))")
        w = _check_omega(omega, None)
        Lw = _check_response(L, w.size, "L")
    else:
        raise ConfigError("L must be a control.StateSpace/TransferFunction, a (plant, design) pair, a callable "
                          f"L(omega) or an array of frequency responses, got {type(L).__name__}")
    m = Lw.shape[1]

    curve = _margin_curve(Lw, sk, kind)
    cols = curve[:, None] if curve.ndim == 1 else curve
    # a continuous loop's supremum may be approached only as ω -> ∞ (L(∞) = D): include that limit
    inf_cols = None
    if sys is not None and dt is None and omega is None:
        Linf = _at_infinity(sys)
        if Linf is not None:
            v = _margin_curve(Linf, sk, kind)
            inf_cols = v[:, None] if v.ndim == 1 else v
    loop_alpha = np.empty(cols.shape[1])
    loop_omega = np.empty(cols.shape[1])
    for j in range(cols.shape[1]):
        i = int(np.argmin(cols[:, j]))
        a, wj = float(cols[i, j]), float(w[i])
        if sys is not None and omega is None and np.isfinite(a) and a > 0 and w.size > 2:
            lo, hi = w[max(i - 1, 0)], w[min(i + 1, w.size - 1)]

            def f(om, j=j):
                v = _margin_curve(_eval_lti(sys, dt, np.array([om])), sk, kind)
                v = v[0] if v.ndim == 1 else v[0, j]
                return float(v) if np.isfinite(v) else 1e300

            if hi > lo:
                r = scipy.optimize.minimize_scalar(f, bounds=(lo, hi), method="bounded",
                                                   options={"xatol": 1e-12 * max(hi, 1e-300)})
                if r.fun < a:
                    a, wj = float(r.fun), float(r.x)
        if inf_cols is not None and inf_cols[0, j] < a:
            a, wj = float(inf_cols[0, j]), math.inf
        loop_alpha[j], loop_omega[j] = a, wj
    jw = int(np.argmin(loop_alpha))
    alpha, w_worst = float(loop_alpha[jw]), float(loop_omega[jw])
    if stable is False:
        alpha, w_worst = 0.0, math.nan
    if not np.isfinite(alpha):
        w_worst = math.nan
    gm, gm_db, pm = disk_gain_phase(alpha, sk)
    arrs = [np.array(a, dtype=float) for a in (w, curve, loop_alpha, loop_omega)]
    for a in arrs:
        a.setflags(write=False)
    return DiskMargins(alpha=alpha, gain_margin=gm, gain_margin_db=gm_db, phase_margin=pm, omega_worst=w_worst,
                       loop_worst=jw if kind == "loop-at-a-time" else None, skew=sk, kind=kind, at=at,
                       omega=arrs[0], curve=arrs[1], loop_alpha=arrs[2], loop_omega=arrs[3], stable=stable, dt=dt)
