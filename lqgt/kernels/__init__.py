"""Fused GPU kernels (Triton) for the closed loop, each with a torch reference beside it.

- :mod:`lqgt.kernels.philox`: the counter layout of the kernels' noise and a torch
  reference of Philox-4x32-10 normals (the same numbers as the kernels, on any device).
- :mod:`lqgt.kernels.linear_loop`: the fused fixed-gain linear closed loop (state and
  estimate in registers for the whole horizon, noise drawn in the kernel, per-trajectory
  cost accumulated in registers), its torch reference and the launcher ``run_linear_loop``.
- :mod:`lqgt.kernels.tf_loop`: the fused Transformer Filter closed loop (kernel form; the
  window in register tiles), launcher ``run_tf_loop``, default launch shape ``launch_shape``.

Triton is optional: :func:`triton_available` says whether the kernels can run.
"""

from __future__ import annotations

from .linear_loop import (
           LinearLoop,
           reference_linear_loop,
           run_linear_loop,
           triton_available,
)
from .philox import philox_normals
from .tf_loop import TFLoop, run_tf_loop

__all__ = ["LinearLoop", "TFLoop", "philox_normals", "reference_linear_loop", "run_linear_loop", "run_tf_loop",
           "triton_available"]
