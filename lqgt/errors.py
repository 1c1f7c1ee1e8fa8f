"""Exception types raised by lqgt.

Every error that bad input can cause is a subclass of :class:`LqgtError`, which is
itself a :class:`ValueError`, so ``except ValueError`` catches all of them. The
message always names the matrix (or argument) and the condition that failed.
"""

from __future__ import annotations

__all__ = [
    "LqgtError",
    "ShapeError",
    "NonFiniteError",
    "NotRealError",
    "NotSymmetricError",
    "NotPositiveDefiniteError",
    "NotStabilizableError",
    "NotDetectableError",
    "RiccatiError",
    "ConfigError",
    "ResourceError",
    "IllConditionedError",
    "FilterDivergenceError",
    "CheckpointError",
    "NotDiagonalizableError",
]


class LqgtError(ValueError):
    """Base class of every input error raised by lqgt."""


class ShapeError(LqgtError):
    """A matrix or signal has the wrong shape."""


class NonFiniteError(LqgtError):
    """A matrix or signal contains NaN or infinity."""


class NotRealError(LqgtError):
    """A matrix or signal that must be real has complex entries."""


class NotSymmetricError(LqgtError):
    """A matrix that must be symmetric (a covariance or a weight) is not."""


class NotPositiveDefiniteError(LqgtError):
    """A matrix that must be positive (semi)definite is not."""


class NotStabilizableError(LqgtError):
    """The pair (A, B) (or (A, W^{1/2})) has an unstable mode that the input cannot reach."""


class NotDetectableError(LqgtError):
    """The pair (A, C) (or (Q^{1/2}, A)) has an unstable mode that the output cannot see."""


class RiccatiError(LqgtError):
    """A Riccati equation has no stabilizing solution, or no solver reached one."""


class ConfigError(LqgtError):
    """An option or configuration value is not one of the allowed values."""


class ResourceError(LqgtError):
    """A run would need more memory than is available; the message gives the estimate."""


class IllConditionedError(LqgtError):
    """A linear-algebra problem (e.g. the Lyapunov equation of an exact cost) is too
    ill-conditioned to solve to lqgt's accuracy; the message gives the residual."""


class FilterDivergenceError(LqgtError):
    """A filter's covariance became NaN or infinite although its inputs were finite.

    This is a numerical failure of the estimator (not a diverging plant, which the
    simulator reports as an infinite cost); the message names the step.
    """


class CheckpointError(LqgtError):
    """A checkpoint file cannot be loaded: not a checkpoint, unknown class, or another architecture."""


class NotDiagonalizableError(LqgtError):
    """A matrix that must be diagonalisable (e.g. ``A`` of the tensor-form AFA filter) is not,
    or its eigenvectors are too ill-conditioned to use (the message gives the condition number)."""
