"""The :class:`Example` record shared by the example-plant registries (:mod:`lqgt.plants`).

Kept apart so that :mod:`lqgt.plants` (linear examples, and the one registry of all
example plants) and :mod:`lqgt.nonlinear_plants` (nonlinear builders) import it without
importing each other in a loop.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = ["Example"]


class Example(NamedTuple):
    """An example problem: a plant and LQ cost weights.

    Attributes
    ----------
    plant : Plant or NonlinearPlant
        The plant with its noise model.
    Q : numpy.ndarray, shape (n, n)
        State weight.
    R : numpy.ndarray, shape (m, m)
        Input weight.
    """

    plant: Any
    Q: np.ndarray
    R: np.ndarray
