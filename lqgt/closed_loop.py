"""The closed loop of a plant, a fixed-gain observer and a static feedback, as one linear system.

With the augmented state ``ξ = [x; x̂]`` (predictor form, ``x̂ = x̂[t|t-1]``) or
``ξ = [x; x̄]`` (current form, ``x̄ = x̂[t|t-1]`` the prior, the control uses
``x̂[t|t] = x̄ + Lf (y - C x̄)``), the loop is

    ξ[t+1] = F ξ[t] + G [w[t]; v[t]]
    [x; x̂; u; y][t] = H ξ[t] + J v[t]

This single construction serves both the exact cost (:func:`lqgt.lqg_cost`, a discrete
Lyapunov equation) and the simulator's fused fast path, so the two cannot disagree on
conventions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import ConfigError, ShapeError

if TYPE_CHECKING:
    from .plant import Plant

__all__ = ["ClosedLoop", "closed_loop", "FORMS"]

FORMS = ("predictor", "current")


def check_form(form: str) -> str:
    """Validate an estimator form name."""
    if form not in FORMS:
        raise ConfigError(f"form must be one of {FORMS}, got {form!r}")
    return form


@dataclass(frozen=True)
class ClosedLoop:
    """Matrices of a linear estimator-feedback loop (see module docstring).

    Attributes
    ----------
    F : numpy.ndarray, shape (2n, 2n)
        Transition of ``ξ``.
    G : numpy.ndarray, shape (2n, n + p)
        Noise input, ``[w; v]``.
    H : numpy.ndarray, shape (2n + m + p, 2n)
        Output map to ``[x; x̂; u; y]``.
    J : numpy.ndarray, shape (2n + m + p, p)
        Direct measurement-noise term of the outputs.
    n, m, p : int
        Plant dimensions.
    """

    F: np.ndarray
    G: np.ndarray
    H: np.ndarray
    J: np.ndarray
    n: int
    m: int
    p: int

    def slices(self) -> dict[str, slice]:
        """Row slices of ``H``/``J`` for ``x``, ``x_hat``, ``u``, ``y``."""
        return _output_slices(self.n, self.m, self.p)


def _output_slices(n: int, m: int, p: int) -> dict[str, slice]:
    """Slices of ``x``, ``x_hat``, ``u``, ``y`` in the stacked output ``[x; x̂; u; y]`` (length 2n + m + p)."""
    return {
        "x": slice(0, n),
        "x_hat": slice(n, 2 * n),
        "u": slice(2 * n, 2 * n + m),
        "y": slice(2 * n + m, 2 * n + m + p),
    }


def closed_loop(plant: "Plant", K: np.ndarray, gain: np.ndarray, form: str, model: "Plant | None" = None) -> ClosedLoop:
    """Build the closed loop of ``plant`` under ``u = -K x̂`` with a fixed-gain observer.

    Parameters
    ----------
    plant : Plant
        The true plant.
    K : numpy.ndarray, shape (m, n)
        Feedback gain.
    gain : numpy.ndarray, shape (n, p)
        Observer gain: predictor gain ``L`` for ``form="predictor"``, filter gain ``Lf`` for
        ``form="current"``.
    form : {"predictor", "current"}
        Which estimate the control uses.
    model : Plant, optional
        The observer's model of the plant (defaults to ``plant``).

    Returns
    -------
    ClosedLoop
    """
    check_form(form)
    model = plant if model is None else model
    n, m, p = plant.n, plant.m, plant.p
    if (model.n, model.m, model.p) != (n, m, p):
        raise ShapeError(
            f"model dimensions (n, m, p) = {(model.n, model.m, model.p)} differ from the plant's {(n, m, p)}"
        )
    K = np.asarray(K, dtype=float)
    gain = np.asarray(gain, dtype=float)
    if K.shape != (m, n):
        raise ShapeError(f"K has shape {K.shape}, expected ({m}, {n})")
    if gain.shape != (n, p):
        raise ShapeError(f"observer gain has shape {gain.shape}, expected ({n}, {p})")
    A, B, C, D = plant.A, plant.B, plant.C, plant.D
    Ae, Be, Ce, De = model.A, model.B, model.C, model.D
    I, Z = np.eye(n), np.zeros((n, n))
    H = np.zeros((2 * n + m + p, 2 * n))
    J = np.zeros((2 * n + m + p, p))
    if form == "predictor":
        H[:n, :n] = I
        H[n:2 * n, n:] = I
        H[2 * n:2 * n + m, n:] = -K
        H[2 * n + m:, :n] = C
        H[2 * n + m:, n:] = -D @ K
        J[2 * n + m:] = np.eye(p)
        # x̂' = Ae x̂ + Be u + L (y - Ce x̂ - De u)
        Gam_hat = np.hstack([Z, Ae - gain @ Ce, Be - gain @ De, gain])
    else:
        if plant.has_feedthrough or model.has_feedthrough:
            raise ShapeError(
                "form='current' with a feedthrough D != 0 is an algebraic loop (y[t] depends on "
                "u[t], which depends on y[t]); use form='predictor'"
            )
        Lf = gain
        Hhat = np.hstack([Lf @ C, I - Lf @ Ce])
        H[:n, :n] = I
        H[n:2 * n] = Hhat
        H[2 * n:2 * n + m] = -K @ Hhat
        H[2 * n + m:, :n] = C
        J[n:2 * n] = Lf
        J[2 * n:2 * n + m] = -K @ Lf
        J[2 * n + m:] = np.eye(p)
        # x̄' = Ae x̂ + Be u
        Gam_hat = np.hstack([Z, Ae, Be, np.zeros((n, p))])
    Gam_x = np.hstack([A, Z, B, np.zeros((n, p))])
    Gam = np.vstack([Gam_x, Gam_hat])
    F = Gam @ H
    G = np.zeros((2 * n, n + p))
    G[:n, :n] = I
    G[:, n:] = Gam @ J
    return ClosedLoop(F=F, G=G, H=H, J=J, n=n, m=m, p=p)
