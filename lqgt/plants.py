"""Named example plants with sensible cost weights.

Each function returns an :class:`Example` ``(plant, Q, R)``, so
``plant, Q, R = lqgt.plants.two_mass()`` works. :func:`default` is the plant that
``lqgt demo`` uses.

This is the one registry of example plants: the nonlinear examples of
:mod:`lqgt.nonlinear_plants` are reachable here too (``lqgt.plants.pendulum()``,
``lqgt.plants.get("van_der_pol")``; :data:`ALL_NAMES` lists both kinds). The
dependency runs one way: :mod:`lqgt.nonlinear_plants` does not import this module.
"""

from __future__ import annotations

import numpy as np

from ._examples import Example
from .plant import Plant

__all__ = ["Example", "two_mass", "double_integrator", "cart_pole", "scalar_unstable", "oscillator", "default", "NAMES",
           "NONLINEAR_NAMES", "ALL_NAMES", "get"]
__all__ += ["random_systems"]


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


def random_systems(n: int, m: int, p: int, count: int, spectral_radius: float = 0.95, seed: int = 0, *,
                   min_radius: float = 0.0) -> list[Example]:
    """Random stable plants for training across systems (in-context learning).

    Each system has ``A = ρ A0 / r(A0)`` with ``A0`` standard normal and ``ρ`` uniform in
    ``[min_radius, spectral_radius]`` (so its spectral radius is exactly ``ρ``); ``B``,
    ``C`` standard normal over ``sqrt(n)``; ``W = G G'/n + 0.1 I`` and ``V = H H'/p + 0.1 I``
    with ``G``, ``H`` standard normal; ``x[0]`` drawn from the stationary distribution
    (``P0`` solves ``P0 = A P0 A' + W``); weights ``Q = I``, ``R = I``. Generic draws are
    controllable and observable; a draw that is not (numerically) is redrawn.

    Parameters
    ----------
    n : int
        State dimension.
    m : int
        Input dimension.
    p : int
        Measurement dimension.
    count : int
        Number of systems.
    spectral_radius : float
        Largest spectral radius, ``0 < spectral_radius < 1``.
    seed : int
        Seed (``numpy.random.default_rng``); different seeds give held-out systems.
    min_radius : float
        Smallest spectral radius, ``0 <= min_radius <= spectral_radius``.

    Returns
    -------
    list of Example
        ``count`` examples ``(plant, Q, R)``.

    Raises
    ------
    ConfigError
        If a dimension or ``count`` is not a positive integer or a radius is out of range.
    """
    from scipy.linalg import solve_discrete_lyapunov

    from .errors import ConfigError

    for name, v in (("n", n), ("m", m), ("p", p), ("count", count)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ConfigError(f"random_systems: {name} must be a positive integer, got {v!r}")
    if not (0.0 < spectral_radius < 1.0 and 0.0 <= min_radius <= spectral_radius):
        raise ConfigError(f"random_systems: need 0 <= min_radius <= spectral_radius < 1, got "
                          f"min_radius={min_radius}, spectral_radius={spectral_radius}")
    rng = np.random.default_rng(seed)
    out: list[Example] = []
    while len(out) < count:
        A0 = rng.standard_normal((n, n))
        rho = rng.uniform(min_radius, spectral_radius)
        A = rho * A0 / max(np.abs(np.linalg.eigvals(A0)).max(), 1e-12)
        B = rng.standard_normal((n, m)) / np.sqrt(n)
        C = rng.standard_normal((p, n)) / np.sqrt(n)
        G, H = rng.standard_normal((n, n)), rng.standard_normal((p, p))
        W = G @ G.T / n + 0.1 * np.eye(n)
        V = H @ H.T / p + 0.1 * np.eye(p)
        ctrb = np.hstack([np.linalg.matrix_power(A, k) @ B for k in range(n)])
        obsv = np.vstack([C @ np.linalg.matrix_power(A, k) for k in range(n)])
        if min(np.linalg.svd(ctrb, compute_uv=False)[-1], np.linalg.svd(obsv, compute_uv=False)[-1]) < 1e-6:
            continue
        P0 = solve_discrete_lyapunov(A, W)
        plant = Plant(A, B, C, W=W, V=V, P0=0.5 * (P0 + P0.T))
        out.append(Example(plant, np.eye(n), np.eye(m)))
    return out


def default() -> Example:
    """The plant ``lqgt demo`` uses: :func:`two_mass`."""
    return two_mass()


NAMES = ("two_mass", "double_integrator", "cart_pole", "scalar_unstable", "oscillator")


#: Nonlinear example plants (:mod:`lqgt.nonlinear_plants`), reachable as ``lqgt.plants.<name>``.
NONLINEAR_NAMES = ("pendulum", "cart_pole_nonlinear", "van_der_pol", "duffing")


#: Every example plant, linear then nonlinear.
ALL_NAMES = NAMES + NONLINEAR_NAMES


def __getattr__(name: str):
    """Lazy access to the nonlinear example plants (``lqgt.plants.pendulum()`` etc.)."""
    if name in NONLINEAR_NAMES:
        from . import nonlinear_plants

        return getattr(nonlinear_plants, name)
    raise AttributeError(f"module 'lqgt.plants' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names, the nonlinear examples included."""
    return sorted(set(globals()) | set(NONLINEAR_NAMES))


def get(name: str, *, kind: str = "linear") -> Example:
    """Return the example called ``name``, with default arguments.

    Parameters
    ----------
    name : str
        Example name: one of :data:`NAMES` (linear) or, with ``kind="any"`` or
        ``kind="nonlinear"``, of :data:`NONLINEAR_NAMES`.
    kind : {"linear", "nonlinear", "any"}
        Which registry to look in. ``"linear"`` (default) keeps the contract that the
        result's plant is an :class:`lqgt.Plant`.

    Returns
    -------
    Example

    Raises
    ------
    ConfigError
        Unknown ``name`` (the message lists the choices) or ``kind``.
    """
    from .errors import ConfigError

    kinds = {"linear": NAMES, "nonlinear": NONLINEAR_NAMES, "any": ALL_NAMES}
    if kind not in kinds:
        raise ConfigError(f"kind must be one of {sorted(kinds)}, got {kind!r}")
    if name not in kinds[kind]:
        hint = "" if kind != "linear" or name not in NONLINEAR_NAMES else \
            f" ({name!r} is a nonlinear example: pass kind='nonlinear')"
        raise ConfigError(f"unknown example plant {name!r}{hint}; choose one of {', '.join(kinds[kind])}")
    if name in NONLINEAR_NAMES:
        from . import nonlinear_plants

        return getattr(nonlinear_plants, name)()
    return globals()[name]()
