"""Pluggable state estimators (see :mod:`lqgt.estimators.base` for the protocol)."""

from .base import Estimator, check_estimator
from .kalman import KalmanFilter, LinearObserver, OpenLoopObserver
from .transformer import TransformerFilter
from .afa import AFAEstimator, AFAFilter
from .kalmannet import KalmanNet
from .trainable_tf import TrainableTransformerFilter
from .transformer_estimator import TransformerEstimator

__all__ = ["Estimator", "check_estimator", "KalmanFilter", "LinearObserver", "OpenLoopObserver",
           "TransformerFilter", "AFAFilter", "AFAEstimator", "KalmanNet", "TrainableTransformerFilter",
           "TransformerEstimator"]
