"""Training estimators: data from the simulator, losses, fit, evaluate (see ``docs/learning.md``).

How estimators are trained lives here; what they are lives in :mod:`lqgt.estimators`.
"""

from . import losses
from .data import Rollouts, rollouts
from .evaluate import EvaluationResult, evaluate
from .fit import TrainingLog, fit
from .losses import closed_loop_cost, output_prediction, state_mse
from .kalman_optimizer import KalmanOptimizer, StructuredCovariance
from .bayesian_head import BayesianHead, relu_moments, softmax_moments

__all__ = [
    "Rollouts",
    "rollouts",
    "fit",
    "TrainingLog",
    "evaluate",
    "EvaluationResult",
    "losses",
    "state_mse",
    "output_prediction",
    "closed_loop_cost",
    "KalmanOptimizer",
    "StructuredCovariance",
    "BayesianHead",
    "relu_moments",
    "softmax_moments",
]
