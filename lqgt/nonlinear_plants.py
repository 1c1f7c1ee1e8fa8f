"""Named nonlinear example plants, sampled from continuous dynamics by RK4 (zero-order hold).

Each function returns an :class:`lqgt.plants.Example` ``(plant, Q, R)`` whose ``plant`` is a
:class:`lqgt.nonlinear.NonlinearPlant`. Every plant has an equilibrium at the origin
(``f(0, 0) = 0``; for the pendulums the origin is the upright), so the quadratic costs
``x'Qx + u'Ru`` of the simulator apply to the raw state and ``plant.linearize()`` is taken
there.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import ConfigError
from .nonlinear import BatchedMap, NonlinearPlant, rk4
from ._examples import Example

__all__ = ["NAMES", "cart_pole_nonlinear", "duffing", "get", "pendulum", "van_der_pol"]


def _example(name: str, fc: BatchedMap, *, measured: int, Wc: np.ndarray, V, dt: float, substeps: int, P0: np.ndarray,
             Q: np.ndarray, R: np.ndarray, m0=None) -> Example:
    """One scalar force/torque input, the first ``measured`` states measured, sampled by RK4."""
    def h(x: torch.Tensor) -> torch.Tensor:
        return x[:, 0:measured]

    plant = NonlinearPlant.from_continuous(fc, h, Wc=Wc, V=V, n=Wc.shape[0], m=1, p=measured, dt=dt,
                                           substeps=substeps, m0=m0, P0=P0, name=name)
    return Example(plant, Q, R)


def _with_change(name: str, fc: BatchedMap, fc_after: BatchedMap, change_at: int, *, measured: int, W: np.ndarray,
                 V, dt: float, substeps: int, P0: np.ndarray, Q: np.ndarray, R: np.ndarray) -> Example:
    """Drift scenario: dynamics ``fc`` before step ``change_at``, ``fc_after`` from then on.

    A clock state ``τ`` (steps left before the change, ``τ[0] = change_at``, ``τ ← max(τ − 1, 0)``,
    no noise) is appended to the state, so the plant stays time-invariant and the origin stays an
    equilibrium (of the changed plant). ``W`` is the per-sample process noise of the physical states
    (``Wc·dt``, as :meth:`NonlinearPlant.from_continuous`).
    """
    if isinstance(change_at, bool) or not isinstance(change_at, (int, np.integer)) or change_at < 0:
        raise ConfigError(f"change_at must be a non-negative integer step, got {change_at!r}")
    n = W.shape[0]

    def f(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        xs, tau = x[:, :n], x[:, n:n + 1]
        before = rk4(fc, xs, u, dt, substeps)
        after = rk4(fc_after, xs, u, dt, substeps)
        return torch.cat([torch.where(tau > 0.5, before, after), torch.clamp(tau - 1.0, min=0.0)], dim=-1)

    def h(x: torch.Tensor) -> torch.Tensor:
        return x[:, 0:measured]

    Wa, P0a, Qa = (np.zeros((n + 1, n + 1)) for _ in range(3))
    Wa[:n, :n], P0a[:n, :n], Qa[:n, :n] = W, P0, Q
    m0 = np.zeros(n + 1)
    m0[n] = float(change_at)
    plant = NonlinearPlant(f, h, W=Wa, V=V, n=n + 1, m=1, p=measured, dt=dt, m0=m0, P0=P0a,
                           name=f"{name} (change at step {int(change_at)})")
    return Example(plant, Qa, R)


def pendulum(dt: float = 0.05, *, mass: float = 1.0, length: float = 1.0, damping: float = 0.1,
             g: float = 9.81, substeps: int = 2, change_at: int | None = None, mass_after: float | None = None,
             length_after: float | None = None, damping_after: float | None = None) -> Example:
    """Simple pendulum driven by a torque, angle measured from the UPRIGHT (unstable) equilibrium.

    ``θ'' = (g/l) sin θ - b θ' / (m l²) + u / (m l²)``. States ``[θ (rad), θ' (rad/s)]``;
    torque input (N·m); the angle is measured (encoder, 0.02 rad noise). Random torques
    (``Wc = diag(0, 0.01)``); ``x[0] ~ N(0, 0.01 I)``. ``n=2, m=1, p=1``.

    Parameters
    ----------
    dt : float
        Sample time in seconds.
    mass : float
        Bob mass (kg).
    length : float
        Rod length (m), massless rod.
    damping : float
        Viscous friction at the pivot (N·m·s).
    g : float
        Gravity (m/s²).
    substeps : int
        RK4 steps per sample.
    change_at : int, optional
        Drift scenario: the step at which ``mass``, ``length``, ``damping`` switch to their
        ``*_after`` values (``x[t+1]`` follows the new dynamics for ``t >= change_at``). The plant
        then has a third state, a clock (steps left before the change, starting at
        ``change_at``, noise-free, decreasing to 0), so ``n=3``; ``Q`` gets a zero row/column and
        ``linearize()`` at the origin gives the changed plant (plus the clock).
    mass_after, length_after, damping_after : float, optional
        Parameters after the change (default: unchanged).

    Returns
    -------
    Example
        ``Q = diag(1, 0.1)``, ``R = [[0.1]]``.
    """
    def vector_field(mass: float, length: float, damping: float):
        a, c, d = g / length, damping / (mass * length**2), 1.0 / (mass * length**2)

        def fc(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
            th, om = x[:, 0:1], x[:, 1:2]
            return torch.cat([om, a * torch.sin(th) - c * om + d * u[:, 0:1]], dim=-1)
        return fc

    fc = vector_field(mass, length, damping)
    if change_at is not None:
        after = vector_field(mass if mass_after is None else mass_after, length if length_after is None else length_after,
                             damping if damping_after is None else damping_after)
        return _with_change("pendulum", fc, after, change_at, measured=1, W=np.diag([0.0, 0.01]) * dt,
                            V=[[4e-4]], dt=dt, substeps=substeps, P0=0.01 * np.eye(2), Q=np.diag([1.0, 0.1]),
                            R=np.array([[0.1]]))
    return _example("pendulum", fc, measured=1, Wc=np.diag([0.0, 0.01]), V=[[4e-4]], dt=dt, substeps=substeps,
                    P0=0.01 * np.eye(2), Q=np.diag([1.0, 0.1]), R=np.array([[0.1]]))


def cart_pole_nonlinear(dt: float = 0.02, *, cart_mass: float = 1.0, pole_mass: float = 0.1,
                        length: float = 0.5, g: float = 9.81, substeps: int = 2, change_at: int | None = None,
                        cart_mass_after: float | None = None, pole_mass_after: float | None = None,
                        length_after: float | None = None) -> Example:
    """Inverted pendulum on a cart (full nonlinear dynamics), upright at the origin.

    The same cart (1 kg), point mass (0.1 kg) on a massless 0.5 m rod and noise as the
    linear :func:`lqgt.plants.cart_pole`, whose continuous model is the linearisation of this
    one at the origin. With ``s = sin θ``, ``c = cos θ`` (θ from upright) and force ``F``:

    ```text
    x''  = (F + m l θ'² s - m g s c) / (M + m s²)
    θ''  = (g s - x'' c) / l
    ```

    States ``[cart position (m), angle (rad), cart velocity (m/s), angular rate (rad/s)]``;
    force on the cart (N); position and angle measured. ``n=4, m=1, p=2``.

    Parameters
    ----------
    dt : float
        Sample time in seconds.
    cart_mass : float
        Cart mass ``M`` (kg).
    pole_mass : float
        Point mass ``m`` at the tip (kg).
    length : float
        Rod length ``l`` (m).
    g : float
        Gravity (m/s²).
    substeps : int
        RK4 steps per sample.
    change_at : int, optional
        Drift scenario: the step from which the ``*_after`` parameters apply; adds a clock
        state (``n=5``), as in :func:`pendulum`.
    cart_mass_after, pole_mass_after, length_after : float, optional
        Parameters after the change (default: unchanged).

    Returns
    -------
    Example
        ``Q = diag(1, 10, 0.1, 0.1)``, ``R = [[0.1]]`` (as the linear cart-pole).
    """
    def vector_field(M: float, mp: float, l: float):
        def fc(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
            th, v, om = x[:, 1:2], x[:, 2:3], x[:, 3:4]
            s, c = torch.sin(th), torch.cos(th)
            acc = (u[:, 0:1] + mp * l * om * om * s - mp * g * s * c) / (M + mp * s * s)
            alpha = (g * s - acc * c) / l
            return torch.cat([v, om, acc, alpha], dim=-1)
        return fc

    fc = vector_field(cart_mass, pole_mass, length)
    if change_at is not None:
        after = vector_field(cart_mass if cart_mass_after is None else cart_mass_after,
                             pole_mass if pole_mass_after is None else pole_mass_after,
                             length if length_after is None else length_after)
        return _with_change("cart_pole_nonlinear", fc, after, change_at, measured=2,
                            W=np.diag([0.0, 0.0, 0.01, 0.04]) * dt, V=np.diag([1e-4, 1e-4]), dt=dt, substeps=substeps,
                            P0=1e-3 * np.eye(4), Q=np.diag([1.0, 10.0, 0.1, 0.1]), R=np.array([[0.1]]))
    return _example("cart_pole_nonlinear", fc, measured=2, Wc=np.diag([0.0, 0.0, 0.01, 0.04]), V=np.diag([1e-4, 1e-4]),
                    dt=dt, substeps=substeps, P0=1e-3 * np.eye(4), Q=np.diag([1.0, 10.0, 0.1, 0.1]), R=np.array([[0.1]]))


def van_der_pol(dt: float = 0.05, *, mu: float = 1.0, substeps: int = 2) -> Example:
    """Forced Van der Pol oscillator: ``x'' = mu (1 - x²) x' - x + u``.

    States ``[x, x']``; force input; the position is measured (noise std 0.1). For
    ``mu > 0`` the origin is an unstable focus and trajectories approach a limit cycle of
    amplitude ≈ 2; ``x[0] ~ N([2, 0], 0.25 I)`` starts near it. Random forcing
    ``Wc = diag(0, 0.05)``. ``n=2, m=1, p=1``.

    Parameters
    ----------
    dt : float
        Sample time.
    mu : float
        Nonlinearity / damping parameter.
    substeps : int
        RK4 steps per sample.

    Returns
    -------
    Example
        ``Q = I``, ``R = [[1]]`` (regulation to the unstable origin).
    """
    def fc(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        p, v = x[:, 0:1], x[:, 1:2]
        return torch.cat([v, mu * (1.0 - p * p) * v - p + u[:, 0:1]], dim=-1)

    return _example("van_der_pol", fc, measured=1, Wc=np.diag([0.0, 0.05]), V=[[0.01]], dt=dt, substeps=substeps,
                    m0=[2.0, 0.0], P0=0.25 * np.eye(2), Q=np.eye(2), R=np.eye(1))


def duffing(dt: float = 0.05, *, alpha: float = -1.0, beta: float = 1.0, delta: float = 0.3,
            substeps: int = 2) -> Example:
    """Duffing oscillator ``x'' = -delta x' - alpha x - beta x³ + u`` (double well by default).

    With ``alpha = -1, beta = 1`` the origin is an unstable saddle (the hilltop between the
    wells at ``x = ±1``); with ``alpha > 0`` it is a hardening spring with a stable origin.
    States ``[x, x']``; force input; the position is measured (noise std 0.1). Random
    forcing ``Wc = diag(0, 0.05)``; ``x[0] ~ N([1, 0], 0.1 I)`` (the right-hand well).
    ``n=2, m=1, p=1``.

    Parameters
    ----------
    dt : float
        Sample time.
    alpha : float
        Linear stiffness.
    beta : float
        Cubic stiffness.
    delta : float
        Damping.
    substeps : int
        RK4 steps per sample.

    Returns
    -------
    Example
        ``Q = I``, ``R = [[1]]`` (regulation to the origin).
    """
    def fc(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        p, v = x[:, 0:1], x[:, 1:2]
        return torch.cat([v, -delta * v - alpha * p - beta * p * p * p + u[:, 0:1]], dim=-1)

    return _example("duffing", fc, measured=1, Wc=np.diag([0.0, 0.05]), V=[[0.01]], dt=dt, substeps=substeps,
                    m0=[1.0, 0.0], P0=0.1 * np.eye(2), Q=np.eye(2), R=np.eye(1))


NAMES = ("pendulum", "cart_pole_nonlinear", "van_der_pol", "duffing")


def get(name: str) -> Example:
    """Return the nonlinear example called ``name`` (one of :data:`NAMES`), with default arguments.

    Parameters
    ----------
    name : str
        Example name.

    Returns
    -------
    Example
    """
    if name not in NAMES:
        raise ConfigError(f"unknown nonlinear example plant {name!r}; choose one of {', '.join(NAMES)}")
    return globals()[name]()
