"""The estimator protocol: what the closed-loop simulator asks of a state estimator.

An estimator is any object with these members (no base class needed):

```text
form: str                      # "predictor" or "current"
n: int                         # state dimension of its estimate
init(batch, *, device, dtype) -> (state, x_hat0)
step(state, y, u)            -> (state, x_hat)
```

All tensors are batch-first: ``y`` is ``(B, p)``, ``u`` is ``(B, m)``, ``x_hat`` is
``(B, n)``. ``state`` is whatever the estimator needs (tensors, tuples, a step counter);
the simulator only passes it back. Timing, for step ``t`` of the loop:

* ``form == "predictor"``: the control ``u[t]`` is computed from the estimate returned
  by the previous call (``x̂[t|t-1]``; at ``t = 0`` the ``x_hat0`` of ``init``, normally
  the plant's ``m0``). Then ``step(state, y[t], u[t])`` returns ``x̂[t+1|t]``.
* ``form == "current"``: ``step(state, y[t], u[t-1])`` (``u[-1] = 0``) returns
  ``x̂[t|t]``, from which ``u[t]`` is computed. ``x_hat0`` of ``init`` is the prior mean.

In words: each call consumes the newest measurement and the newest input already
applied, and returns the estimate the controller uses next.

Optional member: ``linear_gain() -> (gain, model) | None``. An estimator that is a
fixed-gain linear observer of ``model`` (a :class:`lqgt.Plant`) returns its gain (the
predictor gain ``L`` in predictor form, the filter gain ``Lf`` in current form); the
simulator then runs the whole loop as one fused linear recursion (same result, faster).

Optional attribute: ``feedback_gain`` (an ``(m, n)`` array, or ``None``). An estimator
whose model includes the loop ``u = -K x̂`` (e.g. a closed-loop Transformer Filter)
exposes that ``K``; :func:`lqgt.simulate` warns with :class:`lqgt.GainMismatchWarning`
when it closes the loop with a different gain or a callable policy.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from ..closed_loop import FORMS
from ..errors import ConfigError

__all__ = ["Estimator", "check_estimator"]


@runtime_checkable
class Estimator(Protocol):
    """Structural type of a state estimator (see the module docstring for the timing)."""

    form: str
    n: int

    def init(self, batch: int, *, device: torch.device, dtype: torch.dtype) -> tuple[Any, torch.Tensor]:
        """Return the state for ``batch`` trajectories and the initial estimate ``(batch, n)``.

        Parameters
        ----------
        batch : int
            Number of trajectories.
        device : torch.device
            Device of the returned tensors.
        dtype : torch.dtype
            Floating-point type of the returned tensors.

        Returns
        -------
        state : object
            The estimator state, passed back to :meth:`step`.
        x_hat0 : torch.Tensor, shape (batch, n)
            The initial estimate.
        """
        ...

    def step(self, state: Any, y: torch.Tensor, u: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """Consume ``y`` ``(B, p)`` and ``u`` ``(B, m)``; return the new state and estimate ``(B, n)``.

        Parameters
        ----------
        state : object
            The state returned by :meth:`init` or the previous :meth:`step`.
        y : torch.Tensor, shape (batch, p)
            The newest measurement ``y[t]``.
        u : torch.Tensor, shape (batch, m)
            The newest input already applied (``u[t]`` in predictor form, ``u[t-1]`` in
            current form).

        Returns
        -------
        state : object
            The new state.
        x_hat : torch.Tensor, shape (batch, n)
            The estimate the controller uses next.
        """
        ...


def check_estimator(name: str, est: Any, n: int) -> None:
    """Raise :class:`~lqgt.errors.ConfigError` if ``est`` does not follow the protocol."""
    for attr in ("form", "n", "init", "step"):
        if not hasattr(est, attr):
            raise ConfigError(f"estimator {name!r} ({type(est).__name__}) has no attribute {attr!r}; see lqgt.estimators.base")
    if est.form not in FORMS:
        raise ConfigError(f"estimator {name!r} has form={est.form!r}; must be one of {FORMS}")
    if est.n != n:
        raise ConfigError(f"estimator {name!r} estimates n={est.n} states but the plant has n={n}")
