"""Ready-made sweep tasks: closed-loop costs of the Kalman and Transformer Filter loops."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

__all__ = ["ClosedLoopTask"]

_AXES = ("plant", "beta", "window", "form")


@dataclass(frozen=True)
class ClosedLoopTask:
    """Closed-loop cost of LQG and (when the point has ``beta``) the Transformer Filter controller.

    A sweep task (see :func:`lqgt.sweep.run`): at a grid point with axes among
    ``plant`` (a name of :mod:`lqgt.plants`, default ``"two_mass"``), ``beta``, ``window``
    (default 32) and ``form`` (Kalman form, default ``"predictor"``), it designs LQG,
    simulates ``trajectories`` closed loops with ``store=False`` on one seed (common noise
    for the estimators of the point) and returns per-trajectory samples of
    ``cost_kalman``, and with ``beta`` also ``cost_tf`` and ``gap_tf`` (paired difference
    ``cost_tf − cost_kalman``).

    Parameters
    ----------
    horizon : int
        Steps per trajectory.
    burn_in : int
        Steps excluded from the cost.
    dtype : {"float64", "float32"}
        Simulation precision.
    """

    horizon: int = 1000
    burn_in: int = 100
    dtype: str = "float64"

    def __call__(self, point: dict[str, Any], *, trajectories: int, seed: int, device: str) -> dict[str, Any]:
        """Simulate one chunk.

        Parameters
        ----------
        point : dict
            Grid point (axes among plant, beta, window, form).
        trajectories : int
            Batch size of the chunk.
        seed : int
            Noise seed of the chunk.
        device : str
            Simulation device.

        Returns
        -------
        dict of str to torch.Tensor
            Per-trajectory samples of each metric.
        """
        from .. import plants
        from ..estimators import KalmanFilter, TransformerFilter
        from ..lqg import lqg
        from ..simulate import simulate

        unknown = sorted(set(point) - set(_AXES))
        if unknown:
            raise ConfigError(f"ClosedLoopTask: unknown grid axes {unknown}; it understands {list(_AXES)}")
        plant, Q, R = plants.get(str(point.get("plant", "two_mass")))
        design = lqg(plant, Q, R)
        ests: dict[str, Any] = {"kalman": KalmanFilter(plant, str(point.get("form", "predictor")))}
        if "beta" in point:
            ests["tf"] = TransformerFilter(plant, beta=float(point["beta"]), window=int(point.get("window", 32)),
                                           K=design.K)
        res = simulate(plant, design.K, ests, Q=Q, R=R, horizon=self.horizon, batch=trajectories, seed=seed,
                       device=device, dtype=self.dtype, store=False, burn_in=self.burn_in, progress=False)
        out = {f"cost_{name}": res.cost_per_trajectory[name] for name in ests}
        if "tf" in ests:
            out["gap_tf"] = res.cost_per_trajectory["tf"] - res.cost_per_trajectory["kalman"]
        return out
