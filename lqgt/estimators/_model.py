"""The plant model of a model-based learned estimator, as constructor argument and as config.

A model-based learned estimator (:class:`~lqgt.estimators.kalmannet.KalmanNet`,
:class:`~lqgt.estimators.trainable_tf.TrainableTransformerFilter`) takes an
:class:`lqgt.Plant`; its checkpoint config stores the plant's matrices as nested lists, and
the constructor accepts that dict too, so :func:`lqgt.load_estimator` can rebuild it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..plant import Plant

__all__ = ["as_model", "model_config", "predicted_outputs"]

_FIELDS = ("A", "B", "C", "D", "W", "V", "m0", "P0")


def model_config(plant: Plant) -> dict[str, Any]:
    """The plant as a JSON-serialisable dict (matrices as nested lists, ``dt`` a float)."""
    out = {k: np.asarray(getattr(plant, k), dtype=float).tolist() for k in _FIELDS}
    out["dt"] = float(plant.dt)
    return out


def as_model(plant: Any, who: str) -> Plant:
    """``plant`` itself, a plant rebuilt from :func:`model_config`, or a named error."""
    if isinstance(plant, Plant):
        return plant
    if isinstance(plant, tuple) and plant and isinstance(plant[0], Plant):     # an example (plant, Q, R)
        return plant[0]
    if isinstance(plant, dict) and set(_FIELDS) <= set(plant):
        return Plant(plant["A"], plant["B"], plant["C"], W=plant["W"], V=plant["V"], D=plant["D"],
                     m0=plant["m0"], P0=plant["P0"], dt=plant.get("dt", 1.0))
    raise ConfigError(f"{who}: plant must be an lqgt.Plant (the estimator's model), got {type(plant).__name__}")


def predicted_outputs(x_next: torch.Tensor, u: torch.Tensor, C: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """``ŷ[t+1] = C x̂[t+1|t] + D u[t+1]`` for sequences ``(B, T, ·)`` (``u[T]`` taken as zero)."""
    u_next = torch.cat([u[:, 1:], torch.zeros_like(u[:, :1])], dim=1)
    return x_next @ C.T + u_next @ D.T
