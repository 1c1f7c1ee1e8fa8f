"""Frequency-domain analysis of LQG loops and of any estimator in the loop.

Sign convention (used everywhere in this module): the controller is written as a
*negative-feedback compensator* ``Kc(z)``,

    u = -Kc(z) y,

so that, with the plant ``P(z)`` (``y = P (u + d)``, ``d`` a disturbance added at the plant
input), the loop transfers

    L_i(z) = Kc(z) P(z)     (loop broken at the plant input,  m x m)
    L_o(z) = P(z) Kc(z)     (loop broken at the plant output, p x p)

close with unity *negative* feedback: the closed loop is ``control.feedback(L, I)``, the
Nyquist critical point is ``-1`` and ``control.stability_margins``/``control.disk_margins``
apply as they are documented. Frequencies are in rad/s; the discrete systems carry
``dt = plant.dt``, so ``L(e^{j ω dt})`` is evaluated for ``0 < ω < π/dt`` (the Nyquist
frequency).

* :func:`controller`, :func:`loop_transfer`, :func:`lqr_loop_transfer`: the LTI pieces as
  :class:`control.StateSpace`.
* :func:`loop_margins`: gain, phase and disk margins of a discrete SISO loop, computed from
  the Nyquist curve with refined crossings and valid for open-loop unstable plants.
* :func:`lqr_guaranteed_margins`: what the discrete-time return-difference identity
  guarantees for an LQR loop (the discrete analogue of the 60° / [1/2, ∞) result).
* :func:`frequency_response`: an empirical describing function of ANY estimator in the
  loop, from a batched sine sweep on :func:`lqgt.simulate`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.optimize
import torch

from ._linalg import as_matrix, spectral_radius
from ._torch import check_memory, resolve_device, resolve_dtype, tensor
from .closed_loop import check_form, closed_loop
from .errors import ConfigError, ShapeError
from .plant import Plant
from .riccati import dlqe

__all__ = [
    "FrequencyResponse",
    "LoopMargins",
    "LqrMarginBound",
    "controller",
    "frequency_response",
    "loop_margins",
    "loop_transfer",
    "lqr_guaranteed_margins",
    "lqr_loop_transfer",
]

AT = ("input", "output")


# ----------------------------------------------------------------------------- LTI pieces

def _check_plant(plant) -> Plant:
    if not isinstance(plant, Plant):
        raise ConfigError(f"plant must be an lqgt.Plant, got {type(plant).__name__}")
    return plant


def _design_attrs(design, *names: str) -> tuple:
    """The named attributes of an :class:`lqgt.LQGDesign`; a ConfigError for anything else."""
    try:
        return tuple(getattr(design, name) for name in names)
    except AttributeError:
        raise ConfigError(
            f"design must be an lqgt.LQGDesign (from lqgt.lqg), got {type(design).__name__}"
        ) from None


def _gains(plant: Plant, design) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(K, L, Lf)`` of an :class:`lqgt.LQGDesign`, checked against the plant's dimensions."""
    K, L, Lf = _design_attrs(design, "K", "L", "Lf")
    n, m, p = plant.n, plant.m, plant.p
    return (as_matrix("design.K", K, (m, n)), as_matrix("design.L", L, (n, p)),
            as_matrix("design.Lf", Lf, (n, p)))


def controller(plant: Plant, design, form: str = "current"):
    """The LQG controller as a negative-feedback compensator ``u = -Kc(z) y``.

    Parameters
    ----------
    plant : Plant
        The plant the controller was designed for (gives ``A, B, C, D`` and ``dt``).
    design : LQGDesign
        From :func:`lqgt.lqg`: the LQR gain ``K``, the predictor gain ``L`` and the filter
        gain ``Lf``.
    form : {"current", "predictor"}
        ``"predictor"``: ``x̂[t+1] = (A - BK - LC + LDK) x̂[t] + L y[t]``, ``u[t] = -K x̂[t]``
        (strictly proper; the form the Transformer Filter copies).
        ``"current"``: ``u[t] = -K x̂[t|t]`` with ``x̂[t|t] = x̄ + Lf (y[t] - C x̄)`` and
        ``x̄[t+1] = A x̂[t|t] + B u[t]``; in the state ``x̄``,
        ``x̄[t+1] = (A - BK)(I - Lf C) x̄ + (A - BK) Lf y``,
        ``Kc = K (I - Lf C) (zI - ...)^{-1} ... + K Lf`` (direct feedthrough ``K Lf``).
        Default ``"current"``: the optimal LQG controller (cost :attr:`LQGDesign.cost`).

    Returns
    -------
    control.StateSpace
        Discrete (``dt = plant.dt``), ``p`` inputs (``y``) and ``m`` outputs: the
        compensator ``Kc(z)`` with ``u = -Kc(z) y``. Its state is the estimate
        ``x̂[t|t-1]`` in both forms.

    Raises
    ------
    ConfigError
        Unknown ``form``, or ``design`` is not an :class:`~lqgt.LQGDesign`.
    ShapeError
        Gains of the wrong shape, or ``form="current"`` with ``D != 0`` (algebraic loop).
    """
    import control

    _check_plant(plant)
    check_form(form)
    K, L, Lf = _gains(plant, design)
    A, B, C, D = plant.A, plant.B, plant.C, plant.D
    if form == "predictor":
        # x̂+ = A x̂ + B u + L (y - C x̂ - D u),  u = -K x̂
        return control.ss(A - B @ K - L @ C + L @ D @ K, L, K, np.zeros((plant.m, plant.p)), plant.dt)
    if plant.has_feedthrough:
        raise ShapeError("form='current' with a feedthrough D != 0 is an algebraic loop (y[t] depends on u[t], "
                         "which depends on y[t]); use form='predictor'")
    I = np.eye(plant.n)
    ABK = A - B @ K
    return control.ss(ABK @ (I - Lf @ C), ABK @ Lf, K @ (I - Lf @ C), K @ Lf, plant.dt)


def loop_transfer(plant: Plant, design, at: str = "input", form: str = "current"):
    """The LQG loop transfer, broken at the plant input or output.

    Parameters
    ----------
    plant : Plant
        The plant.
    design : LQGDesign
        From :func:`lqgt.lqg`.
    at : {"input", "output"}
        ``"input"``: ``L_i = Kc(z) P(z)`` (``m x m``; from a signal injected at the plant
        input back to the controller output, with the sign flipped); ``"output"``:
        ``L_o = P(z) Kc(z)`` (``p x p``).
    form : {"current", "predictor"}
        Controller form, see :func:`controller`.

    Returns
    -------
    control.StateSpace
        Discrete (``dt = plant.dt``) with ``2n`` states (plant, then controller). The closed
        loop is ``control.feedback(L, I)`` (negative feedback) and its poles are
        ``eig(A - BK) ∪ eig(A - LC)`` (in both forms, since ``L = A Lf``).

    Raises
    ------
    ConfigError
        Unknown ``at`` or ``form``.
    ShapeError
        As :func:`controller`.

    Examples
    --------
    >>> import control, lqgt
    >>> plant, Q, R = lqgt.plants.double_integrator()
    >>> Li = lqgt.loop_transfer(plant, lqgt.lqg(plant, Q, R), at="input")
    >>> Li.dt == plant.dt, Li.ninputs, Li.noutputs
    (True, 1, 1)
    """
    if at not in AT:
        raise ConfigError(f"at must be one of {AT}, got {at!r}")
    Kc = controller(plant, design, form)
    P = plant.to_statespace()
    return Kc * P if at == "input" else P * Kc


def _lqr_gain(plant: Plant, design, K) -> np.ndarray:
    """The state-feedback gain from ``design`` (an LQGDesign, or for backwards compatibility a gain) or ``K=``."""
    if design is not None and K is not None:
        raise ConfigError("pass either design (an lqgt.LQGDesign) or K= (a gain), not both")
    if design is None and K is None:
        raise ConfigError("lqr_loop_transfer needs design (an lqgt.LQGDesign from lqgt.lqg) or K= (the gain, "
                          "shape (m, n))")
    if K is None:
        if hasattr(design, "K") and not isinstance(design, (np.ndarray, torch.Tensor)):
            return as_matrix("design.K", design.K, (plant.m, plant.n))
        K = design  # the pre-0.x positional gain lqr_loop_transfer(plant, K)
    if isinstance(K, torch.Tensor):
        K = K.detach().cpu().numpy()
    return as_matrix("K", K, (plant.m, plant.n))


def lqr_loop_transfer(plant: Plant, design=None, *, K=None):
    """The state-feedback (LQR) loop broken at the plant input: ``K (zI - A)^{-1} B``.

    Like every function of this module it takes ``(plant, design)``; explicit gains go by
    keyword (``K=``). A gain array as the second positional argument is still accepted.

    Parameters
    ----------
    plant : Plant
        The plant (gives ``A``, ``B`` and ``dt``; ``C`` and ``D`` are not used: all states
        are fed back).
    design : LQGDesign or array_like, optional
        From :func:`lqgt.lqg` (its ``K`` is used); an ``(m, n)`` gain array here is read as
        ``K`` (backwards compatible).
    K : array_like, shape (m, n), optional
        State-feedback gain, ``u = -K x`` (instead of ``design``).

    Returns
    -------
    control.StateSpace
        Discrete, ``m x m``; the closed loop ``control.feedback(L, I)`` has the poles
        ``eig(A - BK)``.

    Raises
    ------
    ConfigError
        Neither or both of ``design`` and ``K``.
    ShapeError
        A gain of the wrong shape.
    """
    import control

    _check_plant(plant)
    K = _lqr_gain(plant, design, K)
    return control.ss(plant.A, plant.B, K, np.zeros((plant.m, plant.m)), plant.dt)


# ----------------------------------------------------------------------------- margins

@dataclass(frozen=True)
class LoopMargins:
    """Stability margins of a SISO discrete loop ``L`` closed with negative unity feedback.

    Attributes
    ----------
    stable : bool
        Whether the nominal closed loop ``feedback(L, 1)`` is stable. When it is not, all
        margins below are 0 (there is no margin to lose).
    gain_margin : float
        Upper gain margin ``k_hi ≥ 1``: the loop ``k L`` stays stable for
        ``gain_margin_lower < k < gain_margin`` (``inf`` if it never destabilises).
    gain_margin_lower : float
        Lower gain margin ``k_lo ≤ 1`` (``0`` if reducing the gain never destabilises).
    gain_margin_db : float
        ``min(20 log10 k_hi, -20 log10 k_lo)``: the smaller of the two, in dB.
    phase_margin : float
        Smallest phase change (deg, either sign) that destabilises: ``min(180° - |∠L|)``
        over the gain crossovers ``|L| = 1`` (``inf`` if there are none).
    omega_gain_crossover : float
        Frequency (rad/s) of the crossover that sets ``phase_margin`` (``nan`` if none).
    omega_phase_crossover : float
        Frequency (rad/s) of the real-axis crossing that sets ``gain_margin_db``
        (``nan`` if none; ``0`` and ``π/dt`` are included).
    stability_margin : float
        ``min_ω |1 + L(e^{jω dt})|``: the distance of the Nyquist curve from -1 (the
        radius of the ``skew = 1`` disk margin).
    disk_margin : float
        Balanced (``skew = 0``) disk margin ``α = 1 / max_ω |S - 1/2|``,
        ``S = 1/(1 + L)``, as :func:`control.disk_margins` with ``skew=0``.
    disk_gain_margin_db : float
        Gain margin of that disk, ``20 log10((1 + α/2)/(1 - α/2))`` (``inf`` for ``α ≥ 2``).
    disk_phase_margin : float
        Phase margin of that disk, ``2 arctan(α/2)`` in deg.
    dt : float
        Sample time of ``L`` (s).
    """

    stable: bool
    gain_margin: float
    gain_margin_lower: float
    gain_margin_db: float
    phase_margin: float
    omega_gain_crossover: float
    omega_phase_crossover: float
    stability_margin: float
    disk_margin: float
    disk_gain_margin_db: float
    disk_phase_margin: float
    dt: float


def _siso_discrete(L) -> tuple[Any, float]:
    import control

    if not isinstance(L, (control.StateSpace, control.TransferFunction)):
        raise ConfigError(f"L must be a control.StateSpace or control.TransferFunction, got {type(L).__name__}")
    if not L.issiso():
        raise ShapeError(f"L must be SISO (1 x 1), got {L.noutputs} x {L.ninputs}; pick one loop, e.g. L[0, 0], "
                         "or use lqgt.disk_margins for MIMO loops (no slycot needed)")
    dt = L.dt
    if dt is None or dt is False or dt == 0:
        raise ConfigError(f"L must be discrete-time with a sample time (dt > 0), got dt={dt!r}")
    dt = 1.0 if dt is True else float(dt)
    return control.ss(L), dt


class _Evaluator:
    """``L(e^{jθ})`` of a SISO state-space system, vectorised over ``θ``."""

    def __init__(self, sys) -> None:
        self.A = np.asarray(sys.A, dtype=float)
        self.B = np.asarray(sys.B, dtype=float)[:, 0]
        self.C = np.asarray(sys.C, dtype=float)[0]
        self.D = float(np.asarray(sys.D, dtype=float)[0, 0])

    def __call__(self, theta) -> np.ndarray:
        th = np.atleast_1d(np.asarray(theta, dtype=float))
        n = self.A.shape[0]
        if n == 0:
            return np.full(th.shape, self.D, dtype=complex)
        z = np.exp(1j * th)
        M = z[:, None, None] * np.eye(n) - self.A
        with np.errstate(all="ignore"):
            try:
                x = np.linalg.solve(M, np.broadcast_to(self.B.astype(complex), (th.size, n))[..., None])[..., 0]
                out = x @ self.C + self.D
            except np.linalg.LinAlgError:
                out = np.array([self._one(M[i]) for i in range(th.size)])
        return out

    def _one(self, M) -> complex:
        try:
            return complex(self.C @ np.linalg.solve(M, self.B) + self.D)
        except np.linalg.LinAlgError:
            return complex(np.inf)


def _theta_grid(points: int) -> np.ndarray:
    """Normalised frequencies in ``[0, π]``: logarithmic near 0, linear across the band."""
    log = np.pi * np.logspace(-6, 0, points)
    lin = np.linspace(0.0, np.pi, points)
    return np.unique(np.concatenate([lin, log]))


def _roots(f, grid: np.ndarray, vals: np.ndarray) -> list[float]:
    """Roots of the real function ``f`` on ``[grid[0], grid[-1]]``: sign changes of ``vals`` refined by brentq."""
    out = []
    ok = np.isfinite(vals)
    for i in range(grid.size - 1):
        a, b, fa, fb = grid[i], grid[i + 1], vals[i], vals[i + 1]
        if not (ok[i] and ok[i + 1]):
            continue
        if fa == 0.0:
            out.append(float(a))
        elif fa * fb < 0:
            out.append(float(scipy.optimize.brentq(f, a, b, xtol=1e-15, rtol=4 * np.finfo(float).eps)))
    if ok[-1] and vals[-1] == 0.0:
        out.append(float(grid[-1]))
    return out


def loop_margins(L, *, points: int = 4000) -> LoopMargins:
    """Gain, phase, stability and disk margins of a discrete SISO loop, from its Nyquist curve.

    Unlike :func:`control.stability_margins`, this reports both ends of the stable gain
    interval, signs the phase margin as a (positive) distance, and is correct for
    open-loop unstable loops such as LQG loops of unstable plants: the nominal closed loop
    is checked by its poles, and the gains ``k`` at which ``k L`` loses stability are
    exactly ``-1 / L`` at the crossings of the negative real axis (a root-locus argument:
    the closed-loop poles cross the unit circle only there).

    Parameters
    ----------
    L : control.StateSpace or control.TransferFunction
        SISO discrete loop transfer (``dt > 0``), closed as ``feedback(L, 1)``.
    points : int
        Grid points (linear and logarithmic each) on ``0 ≤ ω dt ≤ π`` used to bracket the
        crossings, which are then refined to machine precision (brentq); the disk margin
        is maximised over the grid and refined locally.

    Returns
    -------
    LoopMargins

    Raises
    ------
    ConfigError
        ``L`` is not a discrete LTI system.
    ShapeError
        ``L`` is not SISO.
    """
    import control

    sys, dt = _siso_discrete(L)
    if isinstance(points, bool) or not isinstance(points, (int, np.integer)) or points < 16:
        raise ConfigError(f"points must be an integer >= 16, got {points!r}")
    ev = _Evaluator(sys)
    grid = _theta_grid(int(points))
    vals = ev(grid)
    finite = np.isfinite(vals)

    cl = control.feedback(sys, 1)
    stable = bool(cl.nstates == 0 or spectral_radius(np.asarray(cl.A)) < 1.0)

    def one(th: float) -> complex:
        return complex(ev(th)[0])

    # real-axis crossings (Im L = 0, plus the ends ω = 0 and π/dt where L is real)
    ths = _roots(lambda t: one(t).imag, grid, vals.imag)
    ths = [t for t in ths if 0.0 < t < np.pi] + [t for t in (0.0, np.pi) if np.isfinite(one(t))]
    k_hi, k_lo, w_hi, w_lo = math.inf, 0.0, math.nan, math.nan
    for t in ths:
        re = one(t).real
        if re < 0:
            k = -1.0 / re
            if k > 1.0 and k < k_hi:
                k_hi, w_hi = k, t / dt
            elif k <= 1.0 and k > k_lo:
                k_lo, w_lo = k, t / dt
    up_db = 20 * math.log10(k_hi) if math.isfinite(k_hi) else math.inf
    lo_db = -20 * math.log10(k_lo) if k_lo > 0 else math.inf
    gm_db, w_pc = (up_db, w_hi) if up_db <= lo_db else (lo_db, w_lo)

    # gain crossovers |L| = 1
    pm, w_gc = math.inf, math.nan
    for t in _roots(lambda t: abs(one(t)) - 1.0, grid, np.abs(vals) - 1.0):
        ph = 180.0 - abs(math.degrees(np.angle(one(t))))
        if ph < pm:
            pm, w_gc = ph, t / dt

    # distance to -1 and balanced disk margin: maximise |S - 1/2| = |1 - L| / (2 |1 + L|)
    with np.errstate(all="ignore"):
        dist = np.where(finite, np.abs(1.0 + vals), np.inf)
    i = int(np.argmin(dist))
    lo_b, hi_b = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    sm = float(dist[i])
    if hi_b > lo_b:
        r = scipy.optimize.minimize_scalar(lambda t: abs(1.0 + one(t)), bounds=(lo_b, hi_b), method="bounded",
                                           options={"xatol": 1e-13})
        sm = min(sm, float(r.fun))
    with np.errstate(all="ignore"):
        st = np.where(finite, np.abs(1.0 - vals) / (2.0 * np.abs(1.0 + vals)), 0.5)
    i = int(np.argmax(st))
    peak = float(st[i])
    lo_b, hi_b = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    if hi_b > lo_b and np.isfinite(peak):
        r = scipy.optimize.minimize_scalar(lambda t: -abs(1.0 - one(t)) / (2.0 * abs(1.0 + one(t))),
                                           bounds=(lo_b, hi_b), method="bounded", options={"xatol": 1e-13})
        peak = max(peak, -float(r.fun))
    alpha = 1.0 / peak if peak > 0 else math.inf
    dgm = 20 * math.log10((1 + alpha / 2) / (1 - alpha / 2)) if alpha < 2 else math.inf
    dpm = math.degrees(2 * math.atan(alpha / 2)) if math.isfinite(alpha) else 180.0

    if not stable:
        return LoopMargins(False, 1.0, 1.0, 0.0, 0.0, math.nan, math.nan, sm, 0.0, 0.0, 0.0, dt)
    return LoopMargins(True, k_hi, k_lo, gm_db, pm, w_gc, w_pc, sm, alpha, dgm, dpm, dt)


@dataclass(frozen=True)
class LqrMarginBound:
    """What the discrete return-difference identity guarantees for an LQR loop.

    Attributes
    ----------
    rho : float
        Lower bound on ``σ_min(I + L(e^{jω dt}))`` at every frequency,
        ``ρ = sqrt(λ_min(R) / λ_max(R + B'XB))`` (for one input: ``sqrt(R / (R + B'XB))``).
    gain_margin_lower : float
        ``1 / (1 + ρ)``: the loop stays stable for input gains above this ...
    gain_margin : float
        ... and below ``1 / (1 - ρ)`` (``inf`` when ``ρ ≥ 1``).
    phase_margin : float
        ``2 arcsin(ρ / 2)`` in degrees (60° when ``ρ = 1``, the continuous-time value).
    """

    rho: float
    gain_margin_lower: float
    gain_margin: float
    phase_margin: float


def lqr_guaranteed_margins(plant: Plant, design) -> LqrMarginBound:
    """Guaranteed margins of the discrete LQR loop ``K (zI - A)^{-1} B``.

    The discrete-time return-difference identity (Kalman; e.g. Anderson & Moore, *Optimal
    Control*, §6), with ``G(z) = (zI - A)^{-1} B``, ``L = K G`` and ``X`` the control DARE
    solution, on the unit circle ``z = e^{jω dt}``:

        (I + L)^H (R + B'XB) (I + L) = R + G^H Q G  ≥  R,

    so ``σ_min(I + L) ≥ ρ = sqrt(λ_min(R) / λ_max(R + B'XB))``. The loop therefore stays
    stable under any input perturbation ``u_plant = (I + Δ)^{-1} u`` with stable ``Δ``,
    ``‖Δ‖_∞ < ρ``: for one input, gains in ``(1/(1+ρ), 1/(1-ρ))`` and phase changes below
    ``2 arcsin(ρ/2)``. Unlike continuous LQR (``ρ = 1``: ``[1/2, ∞)`` and 60°), ``ρ < 1`` in
    discrete time; ``B'XB = O(dt)`` for a sampled plant with per-step weights, so the
    continuous guarantees are recovered as ``dt → 0``.

    Parameters
    ----------
    plant : Plant
        The plant (``B``).
    design : LQGDesign
        From :func:`lqgt.lqg` (``X``, ``R``; the cross weight ``N`` must be zero).

    Returns
    -------
    LqrMarginBound

    Raises
    ------
    ConfigError
        ``design`` has a non-zero cross weight ``N`` (the identity then has no ``≥ R``
        lower bound), or is not an :class:`~lqgt.LQGDesign`.
    """
    _check_plant(plant)
    X, R, N = _design_attrs(design, "X", "R", "N")
    X = as_matrix("design.X", X, (plant.n, plant.n))
    R = as_matrix("design.R", R, (plant.m, plant.m))
    if N is not None and np.any(np.asarray(N) != 0):
        raise ConfigError("lqr_guaranteed_margins needs a design without cross weight (N = 0): with N != 0 the "
                          "return-difference identity gives no lower bound R")
    M = R + plant.B.T @ X @ plant.B
    rho = math.sqrt(max(float(np.linalg.eigvalsh(0.5 * (R + R.T)).min()), 0.0)
                    / float(np.linalg.eigvalsh(0.5 * (M + M.T)).max()))
    rho = min(rho, 1.0)
    gm = math.inf if rho >= 1.0 else 1.0 / (1.0 - rho)
    return LqrMarginBound(rho=rho, gain_margin_lower=1.0 / (1.0 + rho), gain_margin=gm,
                          phase_margin=math.degrees(2.0 * math.asin(rho / 2.0)))


# ----------------------------------------------------------------------------- sine sweep

@dataclass(frozen=True, eq=False)
class FrequencyResponse:
    """Result of :func:`frequency_response`: an empirical loop transfer at the plant input.

    ``k`` frequencies, ``a`` amplitudes, ``m`` plant inputs. Phasors use
    ``s[t] ≈ Re(S e^{jθt})``, ``θ = ω dt``: the injected ``d_j[t] = a sin(θt)`` has phasor
    ``-j a``.

    Attributes
    ----------
    omega : numpy.ndarray, shape (k,)
        Frequencies used (rad/s): the requested ones moved so that each fit window holds a
        whole number of periods (by a relative amount below ``2 / max(window)``, typically
        far less; see ``omega_requested``).
    omega_requested : numpy.ndarray, shape (k,)
        The frequencies asked for.
    amplitude : numpy.ndarray, shape (a,)
        Disturbance amplitudes (plant-input units).
    gain : numpy.ndarray of complex, shape (k, a, m, m)
        The describing function of the loop broken at the plant input, ``L = -U E^{-1}``;
        for a linear controller it equals ``loop_transfer(..., at="input")`` evaluated at
        ``e^{jω dt}``. Column ``j`` comes from the run that excites input ``j``.
    sensitivity : numpy.ndarray of complex, shape (k, a, m, m)
        Input sensitivity ``E D^{-1}`` (``(I + L)^{-1}`` for a linear loop).
    u, e : numpy.ndarray of complex, shape (k, a, m, m)
        First-harmonic phasors of the controller output ``u`` and of the plant input
        ``e = u + d`` (row: signal component, column: excited input).
    distortion : numpy.ndarray, shape (k, a, m)
        Per excited input, ``max_i ‖u_i - mean - first harmonic‖ / ‖d‖`` over the fit window
        (the same for ``e = u + d``): what the describing function leaves unexplained,
        relative to the injected signal. Residual transient, higher harmonics, or a
        self-sustained oscillation; about 0 (rounding) for a linear loop.
    periods : numpy.ndarray of int, shape (k,)
        Whole periods in each fit window.
    window : numpy.ndarray of int, shape (k,)
        Samples in each fit window (the last ``window[i]`` steps of the run).
    settle : int
        Minimum steps discarded before every fit window.
    horizon : int
        Steps simulated.
    dt : float
        Sample time (s).
    settings : dict
        The arguments used (device, dtype, batch, ...).
    """

    omega: np.ndarray
    omega_requested: np.ndarray
    amplitude: np.ndarray
    gain: np.ndarray
    sensitivity: np.ndarray
    u: np.ndarray
    e: np.ndarray
    distortion: np.ndarray
    periods: np.ndarray
    window: np.ndarray
    settle: int
    horizon: int
    dt: float
    settings: dict[str, Any] = field(default_factory=dict)

    def response(self, amplitude: int = 0, output: int = 0, input: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """One curve of the describing function, ready for :func:`lqgt.plot.bode`.

        Parameters
        ----------
        amplitude : int
            Index into :attr:`amplitude`.
        output : int
            Row of the loop transfer (plant input whose controller signal is read).
        input : int
            Column (plant input that is excited).

        Returns
        -------
        omega : numpy.ndarray, shape (k,)
            Frequencies (rad/s).
        gain : numpy.ndarray of complex, shape (k,)
            ``gain[:, amplitude, output, input]``.
        """
        return self.omega.copy(), self.gain[:, amplitude, output, input].copy()


def _windows(theta: np.ndarray, periods: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whole-period fit windows: ``θ' = 2π p / N`` close to each ``θ``, with ``p ≥ periods``.

    ``N_max = 2 ceil(2π periods / θ_min)`` bounds every window (twice the lowest frequency's
    need). For each ``θ`` every ``N`` from ``ceil(2π periods / θ)`` to ``N_max`` is tried with
    ``p = round(θ N / 2π)``, and the ``N`` with the smallest ``|θ' - θ|`` is kept (the
    shortest on ties).
    """
    nmax = 2 * int(math.ceil(2 * math.pi * periods / float(theta.min())))
    p_out, n_out = [], []
    for th in theta:
        x = float(th) / (2 * math.pi)
        n = np.arange(max(int(math.ceil(periods / x)), 2), nmax + 1)
        p = np.rint(n * x)
        ok = (p >= periods) & (2 * p < n)
        if not np.any(ok):
            raise ConfigError(f"frequency {th:.6g} rad/sample is too close to the Nyquist frequency π to fit a "
                              "sinusoid over whole periods; use ω < π/dt by a margin")
        n, p = n[ok], p[ok]
        i = int(np.argmin(np.abs(p / n - x)))
        p_out.append(int(p[i]))
        n_out.append(int(n[i]))
    p_arr, n_arr = np.array(p_out), np.array(n_out)
    return 2 * math.pi * p_arr / n_arr, p_arr, n_arr


def _default_settle(plant: Plant, K: np.ndarray, tol: float = 1e-11) -> int:
    """Steps for the LQG (Kalman predictor) closed loop's transient to fall by ``tol``."""
    L, _, _ = dlqe(plant.A, plant.C, plant.W, plant.V)
    rho = spectral_radius(closed_loop(plant, K, L, "predictor").F)
    if not rho < 1.0:
        raise ConfigError(f"the loop u = -K x̂ with the Kalman predictor is not stable (spectral radius {rho:.6g}); "
                          "pass settle= explicitly if the estimator under test stabilises it")
    if rho == 0.0:
        return 1
    return int(math.ceil(math.log(tol) / math.log(rho)))


def _run_loop(plant: Plant, K, estimator, d: torch.Tensor, device, dtype) -> torch.Tensor:
    """Noise-free closed loop with the input disturbance ``d`` ``(B, T, m)``; the controller output ``(B, T, m)``.

    :func:`lqgt.simulate` with ``noise=False`` (``x[0] = m0``, ``w = v = 0``) and
    ``disturbance=d`` (the plant receives ``u + d``; the estimator and ``res.u`` the
    controller output ``u``).
    """
    from .simulate import simulate

    B, T, m = d.shape
    res = simulate(plant, K, {"loop": estimator}, Q=np.zeros((plant.n, plant.n)), R=np.eye(m), horizon=T, batch=B,
                   device=device, dtype=dtype, noise=False, disturbance=d, store=True)
    return res.u["loop"]


def frequency_response(plant: Plant, K, estimator, omegas: Sequence[float], amplitudes: Sequence[float] = (1.0,), *,
                       periods: int = 8, settle: int | None = None, inputs: Sequence[int] | None = None,
                       device: str | torch.device | None = "cpu", dtype: torch.dtype | str | None = None
                       ) -> FrequencyResponse:
    """Empirical frequency response (describing function) of ``u = -K x̂`` with any estimator.

    A batched sine sweep on the noise-free simulator: batch row ``(ω, a, j)`` injects
    ``d_j[t] = a sin(ω dt t)`` at plant input ``j`` (added to the controller output before
    the plant; the estimator sees the controller output ``u``), and the first harmonics of
    ``u`` and of the plant input ``e = u + d`` are fitted over the last whole number of
    periods, after at least ``settle`` steps. The loop broken at the plant input is then,
    with :mod:`lqgt.frequency`'s sign convention (``e = d - L e``, ``u = -L e``),

        L(e^{jω dt}) = -U E^{-1}          (one input: L = -U / (U + D)).

    For a linear estimator this is the LQG loop transfer to rounding (the steady state of
    a linear loop driven by a sinusoid is a sinusoid); for a nonlinear one (the
    Transformer Filter) it is the describing function, which depends on the amplitude.

    Parameters
    ----------
    plant : Plant
        The plant; ``m0`` is the initial state (noise is off: ``w = v = 0``, ``x[0] = m0``).
    K : LQGDesign, array_like of shape (m, n), or callable
        Feedback ``u = -K x̂``: an :class:`~lqgt.LQGDesign` (its ``K``), a gain, or a policy
        (as in :func:`lqgt.simulate`; then pass ``settle``).
    estimator : estimator
        Any estimator following :mod:`lqgt.estimators.base`.
    omegas : sequence of float
        Frequencies in rad/s, ``0 < ω < π/dt``.
    amplitudes : sequence of float
        Disturbance amplitudes (> 0), one batch row each per frequency and input.
    periods : int
        Minimum whole periods in each fit window (≥ 1). The lowest frequency sets the
        horizon: ``settle + ceil(2π periods / (ω_min dt))`` steps.
    settle : int, optional
        Steps discarded before the fit windows. Default: the steps for the transient of
        the LQG loop (``K`` with the Kalman predictor of ``plant``) to decay by ``1e-11``.
        A slower estimator (a Transformer Filter at small β) may need more; check
        :attr:`FrequencyResponse.distortion`.
    inputs : sequence of int, optional
        Plant inputs to excite (default: all; ``gain`` then has every column). Columns of
        inputs not excited are ``nan``; ``gain`` needs all of them (it inverts ``E``).
    device : str or torch.device
        Simulation device (``"cuda"`` runs the whole sweep as one batch on the GPU).
    dtype : torch.dtype or str, optional
        ``torch.float64`` (default) or ``torch.float32``.

    Returns
    -------
    FrequencyResponse

    Raises
    ------
    ConfigError, ShapeError
        Bad arguments (the message names the argument).
    ResourceError
        The sweep (``len(omegas) x len(amplitudes) x len(inputs)`` runs of ``settle`` plus
        the fit window steps) would need more memory than is free; the message gives the
        estimate.

    Notes
    -----
    Each frequency is moved slightly so that its fit window holds exactly ``p ≥ periods``
    periods (see :attr:`FrequencyResponse.omega`): then the sine and cosine are orthogonal
    to each other, to the mean and to every harmonic ``k θ`` not aliased onto ``±θ``, and
    the least-squares fit is the projection ``(2/N) Σ s[t] e^{-jθt}``. Discrete-time
    harmonics alias: the ``k``-th harmonic lands on ``±θ`` when ``(k ∓ 1) θ`` is a multiple
    of ``2π`` (e.g. the 3rd harmonic at ``θ = π/2``).
    """
    from .simulate import _policy

    _check_plant(plant)
    m = plant.m
    if hasattr(K, "K") and not callable(K) and not isinstance(K, (np.ndarray, torch.Tensor)):
        K = K.K   # an LQGDesign: its LQR gain (the (plant, design) convention of this module)
    Kmat, policy = _policy(K, plant)
    if policy is not None and settle is None:
        raise ConfigError("settle= is required when K is a policy (callable): the default is computed from "
                          "a static gain")
    try:
        w = np.atleast_1d(np.asarray(omegas, dtype=float))
    except (TypeError, ValueError):
        raise ConfigError(f"omegas must be a 1-D sequence of frequencies (rad/s), got {omegas!r}") from None
    if w.ndim != 1 or w.size == 0:
        raise ShapeError(f"omegas must be a non-empty 1-D sequence of frequencies (rad/s), got shape {w.shape}")
    nyq = math.pi / plant.dt
    if not (np.all(np.isfinite(w)) and np.all(w > 0) and np.all(w < nyq)):
        raise ConfigError(f"omegas must satisfy 0 < ω < π/dt = {nyq:.6g} rad/s (the Nyquist frequency), "
                          f"got {w.tolist()}")
    try:
        amps = np.atleast_1d(np.asarray(amplitudes, dtype=float))
    except (TypeError, ValueError):
        raise ConfigError(f"amplitudes must be a sequence of positive numbers, got {amplitudes!r}") from None
    if amps.ndim != 1 or amps.size == 0 or not (np.all(np.isfinite(amps)) and np.all(amps > 0)):
        raise ConfigError(f"amplitudes must be a non-empty sequence of positive numbers, got {amplitudes!r}")
    if isinstance(periods, bool) or not isinstance(periods, (int, np.integer)) or periods < 1:
        raise ConfigError(f"periods must be an integer >= 1, got {periods!r}")
    chans = list(range(m)) if inputs is None else [int(j) for j in inputs]
    if not chans or len(set(chans)) != len(chans) or not all(0 <= j < m for j in chans):
        raise ConfigError(f"inputs must be distinct plant-input indices in 0..{m - 1}, got {inputs!r}")
    if settle is None:
        settle = _default_settle(plant, Kmat)  # K is a static gain here (checked above)
    if isinstance(settle, bool) or not isinstance(settle, (int, np.integer)) or settle < 0:
        raise ConfigError(f"settle must be an integer >= 0, got {settle!r}")
    dev, dt = resolve_device(device), resolve_dtype(dtype)

    theta, p_k, n_k = _windows(w * plant.dt, int(periods))
    horizon = int(settle) + int(n_k.max())
    nk, na, nc = w.size, amps.size, len(chans)
    # up-front size check: d, u, the estimator's and the plant's trajectories, phases, masks (8-byte words)
    words = float(nk * na * nc) * horizon * (4 * m + 2 * plant.n + plant.p + 8)
    check_memory(words * 8.0, dev, f"frequency_response ({nk * na * nc} runs x horizon {horizon} = settle {settle} "
                 f"+ window {int(n_k.max())} steps)")
    # batch rows in (frequency, amplitude, excited input) order
    th_row = np.repeat(theta, na * nc)
    a_row = np.tile(np.repeat(amps, nc), nk)
    j_row = np.tile(np.array(chans), nk * na)
    n_row = np.repeat(n_k, na * nc)
    B = th_row.size
    p_row = np.repeat(p_k, na * nc)
    t_int = torch.arange(horizon, device=dev, dtype=torch.int64)
    t = t_int.to(dt)
    # θ t = 2π (p t mod N) / N exactly (integer arithmetic), so float32 loses nothing to large t
    cyc = (torch.as_tensor(p_row, device=dev)[:, None] * t_int[None, :]) % torch.as_tensor(n_row, device=dev)[:, None]
    phase = (2 * math.pi) * cyc.to(torch.float64) / torch.as_tensor(n_row, device=dev, dtype=torch.float64)[:, None]
    s_t, c_t = torch.sin(phase).to(dt), torch.cos(phase).to(dt)   # (B, T)
    d = torch.zeros(B, horizon, m, device=dev, dtype=dt)
    d[torch.arange(B, device=dev), :, torch.as_tensor(j_row, device=dev)] = tensor(a_row, dev, dt)[:, None] * s_t

    u = _run_loop(plant, Kmat if policy is None else policy, estimator, d, dev, dt)
    if tuple(u.shape) != (B, horizon, m):
        raise ShapeError(f"the simulator returned u of shape {tuple(u.shape)}, expected {(B, horizon, m)}")

    mask = (t[None, :] >= (horizon - torch.as_tensor(n_row, device=dev))[:, None]).to(dt)   # (B, T)
    Nf = tensor(n_row, dev, dt)[:, None]                                                     # (B, 1)

    def fit(s: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Phasor ``(2/N) Σ s e^{-jθt}`` over the window, and the norm of what it leaves unexplained."""
        sm = s * mask[..., None]
        cc = 2.0 * torch.einsum("btm,bt->bm", sm, c_t) / Nf
        ss = 2.0 * torch.einsum("btm,bt->bm", sm, s_t) / Nf
        mean = sm.sum(1) / Nf
        resid = (s - mean[:, None] - cc[:, None] * c_t[..., None] - ss[:, None] * s_t[..., None]) * mask[..., None]
        to = lambda x: x.detach().cpu().to(torch.float64).numpy()
        return to(cc) - 1j * to(ss), to(torch.linalg.vector_norm(resid, dim=1))     # (B, m), (B, m)

    U_rows, ru = fit(u)
    E_rows = U_rows.copy()                 # e = u + d, and d's phasor is exactly -j a (whole periods)
    E_rows[np.arange(B), j_row] += -1j * a_row
    d_norm = a_row * np.sqrt(0.5 * n_row)  # ‖d‖ over the window
    dist_rows = ru.max(-1) / d_norm        # (B,)
    # (B, m) -> (k, a, c, m) -> (k, a, m_signal, m_excited)
    shape = (nk, na, nc, m)
    U_c = U_rows.reshape(shape).transpose(0, 1, 3, 2)
    E_c = E_rows.reshape(shape).transpose(0, 1, 3, 2)
    dist_c = dist_rows.reshape(nk, na, nc)
    Uf = np.full((nk, na, m, m), np.nan + 0j)
    Ef = np.full((nk, na, m, m), np.nan + 0j)
    dist = np.full((nk, na, m), np.nan)
    Uf[..., chans] = U_c
    Ef[..., chans] = E_c
    dist[..., chans] = dist_c
    Dph = -1j * amps[None, :, None, None]                      # phasor of a sin(θt)
    sens = Ef / Dph
    if nc == m:
        gain = -Uf @ np.linalg.inv(Ef)
    else:
        gain = np.full((nk, na, m, m), np.nan + 0j)
    return FrequencyResponse(
        omega=theta / plant.dt, omega_requested=w, amplitude=amps, gain=gain, sensitivity=sens, u=Uf, e=Ef,
        distortion=dist, periods=p_k, window=n_k, settle=int(settle), horizon=horizon, dt=plant.dt,
        settings=dict(device=str(dev), dtype=str(dt).replace("torch.", ""), batch=B, inputs=chans,
                      periods=int(periods)),
    )
