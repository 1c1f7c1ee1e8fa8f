"""lqgt: LQG control and learned estimators in one batched torch closed loop."""

from . import errors, koopman, nonlinear_plants, plants
from .errors import LqgtError
from .estimators.ekf import ExtendedKalmanFilter
from .estimators.ukf import UnscentedKalmanFilter
from .estimators.learned import LearnedEstimator, load_estimator
from .estimators.transformer_estimator import TransformerEstimator
from .estimators.kalmannet import KalmanNet
from .estimators.trainable_tf import TrainableTransformerFilter
from . import learn
from .koopman import KoopmanFilter, KoopmanLQR, fit_edmdc
from .nonlinear import NonlinearPlant
from .estimators import Estimator, KalmanFilter, LinearObserver, OpenLoopObserver, TransformerFilter
from .layers import TransformerFilterAttention
from .layers import AdaptiveFilterAttention
from .estimators.afa import AFAEstimator, AFAFilter
from .filtering import FilterResult, LinearGaussianModel, SmootherResult, kalman_filter, rts_smoother
from .frequency import (
    FrequencyResponse,
    LoopMargins,
    LqrMarginBound,
    controller,
    frequency_response,
    loop_margins,
    loop_transfer,
    lqr_guaranteed_margins,
    lqr_loop_transfer,
)
from .margins import DiskMargins, disk_margins
from .lqg import LQGDesign, lqg, lqg_cost
from .plant import Plant
from .riccati import dare, dlqe, dlqr
from . import sweep
from .sweep import BetaSweep, beta_sweep
from .simulate import DivergenceWarning, GainMismatchWarning, SimulationResult, simulate

__version__ = "0.1.0"

__all__ = [
    "Plant",
    "dare",
    "dlqr",
    "dlqe",
    "lqg",
    "lqg_cost",
    "LQGDesign",
    "KalmanFilter",
    "LinearObserver",
    "OpenLoopObserver",
    "TransformerFilter",
    "TransformerFilterAttention",
    "AdaptiveFilterAttention",
    "AFAFilter",
    "AFAEstimator",
    "beta_sweep",
    "BetaSweep",
    "Estimator",
    "simulate",
    "SimulationResult",
    "DivergenceWarning",
    "GainMismatchWarning",
    "LqgtError",
    "NonlinearPlant",
    "ExtendedKalmanFilter",
    "UnscentedKalmanFilter",
    "KoopmanFilter",
    "KoopmanLQR",
    "fit_edmdc",
    "koopman",
    "kalman_filter",
    "rts_smoother",
    "FilterResult",
    "SmootherResult",
    "LinearGaussianModel",
    "controller",
    "loop_transfer",
    "lqr_loop_transfer",
    "loop_margins",
    "LoopMargins",
    "lqr_guaranteed_margins",
    "LqrMarginBound",
    "frequency_response",
    "FrequencyResponse",
    "disk_margins",
    "DiskMargins",
    "errors",
    "plants",
    "sweep",
    "learn",
    "load_estimator",
    "LearnedEstimator",
    "TransformerEstimator",
    "KalmanNet",
    "TrainableTransformerFilter",
]
