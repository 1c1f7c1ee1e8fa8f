"""Named example plants with sensible cost weights.

Each function returns an :class:`Example` ``(plant, Q, R)``, so
``plant, Q, R = lqgt.plants.two_mass()`` works. :func:`default` is the plant that
``lqgt demo`` uses.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .plant import Plant

__all__ = ["Example", "two_mass", "double_integrator", "cart_pole", "scalar_unstable", "oscillator", "default", "NAMES", "get"]


class Example(NamedTuple):
    """An example problem: a plant and LQ cost weights.

    Attributes
    ----------
    plant : Plant
        The plant with its noise model.
    Q : numpy.ndarray, shape (n, n)
        State weight.
    R : numpy.ndarray, shape (m, m)
        Input weight.
    """

    plant: Plant
    Q: np.ndarray
    R: np.ndarray


def _mechanical(stiffness, damping) -> np.ndarray:
    """``Ac`` of a system with states ``[q; q̇]`` and ``q̈ = stiffness q + damping q̇``."""
    k = len(stiffness)
    return np.block([[np.zeros((k, k)), np.eye(k)], [np.asarray(stiffness, float), np.asarray(damping, float)]])


def _sampled(Ac, Bc, C, *, Wc, V, dt: float, P0, Q, R) -> Example:
    """Sample a continuous plant (:meth:`Plant.from_continuous`) and pair it with its weights."""
    plant = Plant.from_continuous(Ac, Bc, C, Wc=Wc, V=V, dt=dt, P0=P0)
    return Example(plant, np.asarray(Q, float), np.asarray(R, float))


def two_mass(dt: float = 0.1) -> Example:
    """Two carts (1 kg each) on springs (1 N/m to the wall and between them), light damping.

    Force on cart 1 (N), both positions measured (m); random forces on both carts.
    States ``[p1, p2, v1, v2]`` (m, m, m/s, m/s); ``n=4, m=1, p=2``; open-loop stable,
    lightly damped (slowest mode: ζ ≈ 0.16, 0.62 rad/s). The default plant of ``lqgt demo``.

    Parameters
    ----------
    dt : float
        Sample time in seconds.

    Returns
    -------
    Example
    """
    k0, k, c0, c = 1.0, 1.0, 0.4, 0.4
    Ac = _mechanical([[-(k0 + k), k], [k, -k]], [[-(c0 + c), c], [c, -c]])
    return _sampled(Ac, [[0.0], [0.0], [1.0], [0.0]], np.eye(2, 4), Wc=np.diag([0.0, 0.0, 0.2, 0.2]),
                    V=0.01 * np.eye(2), dt=dt, P0=0.1 * np.eye(4), Q=np.diag([1.0, 1.0, 0.1, 0.1]), R=[[0.1]])


def double_integrator(dt: float = 0.1) -> Example:
    """A unit mass on a frictionless track: position measured, force input (marginally stable).

    Parameters
    ----------
    dt : float
        Sample time in seconds.

    Returns
    -------
    Example
    """
    return _sampled(_mechanical([[0.0]], [[0.0]]), [[0.0], [1.0]], [[1.0, 0.0]], Wc=np.diag([0.0, 0.1]),
                    V=[[0.01]], dt=dt, P0=0.1 * np.eye(2), Q=np.diag([1.0, 0.1]), R=[[0.1]])


def cart_pole(dt: float = 0.02) -> Example:
    """Inverted pendulum on a cart, linearised about the upright (open-loop unstable).

    Cart 1 kg, point mass 0.1 kg on a 0.5 m massless rod, g = 9.81 m/s². States
    ``[cart position (m), angle (rad), cart velocity (m/s), angular rate (rad/s)]``; force
    on the cart (N); cart position and angle measured.

    Parameters
    ----------
    dt : float
        Sample time in seconds.

    Returns
    -------
    Example
    """
    M, mp, l, g = 1.0, 0.1, 0.5, 9.81
    Ac = _mechanical([[0.0, -mp * g / M], [0.0, (M + mp) * g / (M * l)]], np.zeros((2, 2)))
    return _sampled(Ac, [[0.0], [0.0], [1.0 / M], [-1.0 / (M * l)]], np.eye(2, 4), Wc=np.diag([0.0, 0.0, 0.01, 0.04]),
                    V=np.diag([1e-4, 1e-4]), dt=dt, P0=1e-3 * np.eye(4), Q=np.diag([1.0, 10.0, 0.1, 0.1]), R=[[0.1]])


def scalar_unstable(a: float = 1.2) -> Example:
    """Scalar plant ``x+ = a x + u + w``, ``y = x + v`` (unstable for ``|a| > 1``), ``W = V = 1``.

    Parameters
    ----------
    a : float
        The pole.

    Returns
    -------
    Example
    """
    plant = Plant([[a]], [[1.0]], [[1.0]], W=[[1.0]], V=[[1.0]])
    return Example(plant, np.eye(1), np.eye(1))


def oscillator(theta: float = 0.3, rho: float = 0.98) -> Example:
    """Damped rotation ``A = rho R(theta)`` in the plane, one position sensor, force on both axes.

    A two-state example of the kind used by Goel & Bartlett for the Transformer Filter.

    Parameters
    ----------
    theta : float
        Rotation per step (rad).
    rho : float
        Contraction per step.

    Returns
    -------
    Example
    """
    c, s = np.cos(theta), np.sin(theta)
    A = rho * np.array([[c, -s], [s, c]])
    plant = Plant(A, np.eye(2), [[1.0, 0.0]], W=0.1 * np.eye(2), V=[[0.1]])
    return Example(plant, np.eye(2), np.eye(2))


def default() -> Example:
    """The plant ``lqgt demo`` uses: :func:`two_mass`."""
    return two_mass()


NAMES = ("two_mass", "double_integrator", "cart_pole", "scalar_unstable", "oscillator")


#: Nonlinear example plants (:mod:`lqgt.nonlinear_plants`), reachable as ``lqgt.plants.<name>``.
NONLINEAR_NAMES = ("pendulum", "cart_pole_nonlinear", "van_der_pol", "duffing")


def __getattr__(name: str):
    """Lazy access to the nonlinear example plants (``lqgt.plants.pendulum()`` etc.)."""
    if name in NONLINEAR_NAMES:
        from . import nonlinear_plants

        return getattr(nonlinear_plants, name)
    raise AttributeError(f"module 'lqgt.plants' has no attribute {name!r}")


def get(name: str) -> Example:
    """Return the example called ``name`` (one of :data:`NAMES`), with default arguments.

    Parameters
    ----------
    name : str
        Example name.

    Returns
    -------
    Example
    """
    from .errors import ConfigError

    if name not in NAMES:
        raise ConfigError(f"unknown example plant {name!r}; choose one of {', '.join(NAMES)}")
    return globals()[name]()
