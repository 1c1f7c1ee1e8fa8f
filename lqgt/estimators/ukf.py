"""The unscented Kalman filter of a nonlinear plant, batched over trajectories in torch.

Scaled sigma points of van der Merwe (as :class:`filterpy.kalman.MerweScaledSigmaPoints`):
with ``λ = α²(n + κ) − n`` and ``L L' = (n + λ) P`` (Cholesky, lower),

    χ₀ = x,  χᵢ = x + L[:, i−1],  χₙ₊ᵢ = x − L[:, i−1]                  (i = 1 … n)
    Wm₀ = λ / (n + λ),  Wc₀ = Wm₀ + 1 − α² + β,  Wmᵢ = Wcᵢ = 1 / (2(n + λ))

Each step (additive noise, sigma points redrawn after the prediction, as filterpy does):

```text
predict:  χ = σ(x̂, P),  x̄ = Σ Wm f(χ, u),  P̄ = Σ Wc (f(χ) − x̄)(f(χ) − x̄)' + W
update:   χ = σ(x̄, P̄),  ŷ = Σ Wm h(χ),   S = Σ Wc (h(χ) − ŷ)(h(χ) − ŷ)' + V
          Pxy = Σ Wc (χ − x̄)(h(χ) − ŷ)',  K = Pxy S⁻¹
          x̂ = x̄ + K (y − ŷ),  P = P̄ − K S K'  (symmetrised)
```
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ._gaussian import correct, sym
from .ekf import _GaussianFilter

__all__ = ["UnscentedKalmanFilter", "merwe_weights"]


def merwe_weights(n: int, alpha: float, beta: float, kappa: float) -> tuple[list[float], list[float], float]:
    """Return ``(Wm, Wc, n + λ)`` of the scaled unscented transform (``2n + 1`` weights each).

    Parameters
    ----------
    n : int
        State dimension.
    alpha : float
        Spread of the sigma points (``0 < alpha``).
    beta : float
        Prior knowledge of the distribution (2 is optimal for Gaussians).
    kappa : float
        Secondary scaling.

    Returns
    -------
    Wm : list of float
        Mean weights.
    Wc : list of float
        Covariance weights.
    c : float
        ``n + λ`` (the square root of ``c P`` spreads the points).
    """
    lam = alpha**2 * (n + kappa) - n
    c = n + lam
    if not c > 0:
        raise ConfigError(f"n + lambda = alpha^2 (n + kappa) must be > 0, got {c:.3g} (n={n}, kappa={kappa})")
    Wm = [lam / c] + [0.5 / c] * (2 * n)
    Wc = [lam / c + (1.0 - alpha**2 + beta)] + [0.5 / c] * (2 * n)
    return Wm, Wc, c


class UnscentedKalmanFilter(_GaussianFilter):
    """Unscented Kalman filter (Merwe scaled sigma points) of a nonlinear plant, batched.

    Parameters
    ----------
    plant : NonlinearPlant or Plant
        The filter's model: ``f``, ``h``, ``W``, ``V``, and the prior ``m0``, ``P0``.
    form : {"current", "predictor"}
        ``"current"`` (default) returns ``x̂[t|t]``; ``"predictor"`` returns ``x̂[t+1|t]``.
    alpha : float
        Sigma-point spread, ``> 0``. Default 1.0: with ``kappa = 0`` then ``λ = 0`` and every
        covariance weight is non-negative, so the predicted covariance is PSD by
        construction. ``alpha = 1e-3`` is the original Wan–van der Merwe choice (points
        very close to the mean: close to the EKF, with large cancelling weights).
    beta : float
        2 (optimal for a Gaussian prior) by default.
    kappa : float
        0 by default; ``3 - n`` is Julier's choice.

    Notes
    -----
    Conventions and defaults of the equations are those of filterpy's
    ``UnscentedKalmanFilter`` with ``MerweScaledSigmaPoints`` (same ordering, weights,
    Cholesky square root, redraw after the prediction, ``P − K S K'`` update), with which
    it agrees to rounding (see the tests). A covariance that loses numerical positive
    definiteness is square-rooted through its eigen-decomposition (negative eigenvalues
    clipped) instead of failing; NaN/inf raises
    :class:`~lqgt.nonlinear.FilterDivergenceError` naming the step.
    """

    label = "UnscentedKalmanFilter"

    def __init__(self, plant, form: str = "current", *, alpha: float = 1.0, beta: float = 2.0, kappa: float = 0.0) -> None:
        super().__init__(plant, form)
        alpha, beta, kappa = float(alpha), float(beta), float(kappa)
        if not alpha > 0:
            raise ConfigError(f"alpha must be > 0, got {alpha}")
        self.alpha, self.beta, self.kappa = alpha, beta, kappa
        self.Wm, self.Wc, self.c = merwe_weights(self.n, alpha, beta, kappa)

    def __repr__(self) -> str:
        return f"UnscentedKalmanFilter(form={self.form!r}, n={self.n}, alpha={self.alpha}, beta={self.beta}, kappa={self.kappa})"

    def _consts(self, device, dtype) -> dict:
        c = super()._consts(device, dtype)
        c["Wm"] = torch.tensor(self.Wm, device=device, dtype=dtype)
        c["Wc"] = torch.tensor(self.Wc, device=device, dtype=dtype)
        return c

    def sigma_points(self, x: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
        """Merwe scaled sigma points of a batch of Gaussians.

        Parameters
        ----------
        x : torch.Tensor, shape (B, n)
            Means.
        P : torch.Tensor, shape (B, n, n)
            Covariances (symmetric PSD; a Cholesky failure falls back to an eigen square root).

        Returns
        -------
        torch.Tensor, shape (B, 2n + 1, n)
            ``[x, x + L[:, 0], …, x + L[:, n-1], x − L[:, 0], …]`` with ``L L' = (n + λ) P``.
        """
        M = self.c * P
        L, info = torch.linalg.cholesky_ex(M)
        bad = info != 0
        if bool(bad.any()):  # PSD but singular (or slightly indefinite by rounding): eigen square root
            lam, U = torch.linalg.eigh(sym(M[bad]))
            L = L.clone()
            L[bad] = U * lam.clamp_min(0.0).sqrt().unsqueeze(-2)
        D = L.transpose(-1, -2)                     # rows = columns of L
        x1 = x.unsqueeze(-2)
        return torch.cat([x1, x1 + D, x1 - D], dim=-2)

    @staticmethod
    def _through(fn, sig: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        """``fn`` of every sigma point ``(B, k, n)``, with per-trajectory ``args`` ``(B, ·)``: ``(B, k, ·)``."""
        B, k, n = sig.shape
        rep = (a.unsqueeze(-2).expand(B, k, a.shape[-1]).reshape(B * k, -1) for a in args)
        return fn(sig.reshape(B * k, n), *rep).reshape(B, k, -1)

    def _transform(self, sig: torch.Tensor, noise: torch.Tensor, c) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean = torch.einsum("k,bki->bi", c["Wm"], sig)
        dev = sig - mean.unsqueeze(-2)
        cov = torch.einsum("k,bki,bkj->bij", c["Wc"], dev, dev) + noise
        return mean, sym(cov), dev

    def _predict(self, x, P, u, c):
        fs = self._through(self.plant.f, self.sigma_points(x, P), u)
        mean, cov, _ = self._transform(fs, c["W"], c)
        return mean, cov

    def _update(self, x, P, y, c):
        sig = self.sigma_points(x, P)
        yhat, S, dy = self._transform(self._through(self.plant.h, sig), c["V"], c)
        dx = sig - x.unsqueeze(-2)
        Pxy = torch.einsum("k,bki,bkj->bij", c["Wc"], dx, dy)
        x, K = correct(x, Pxy, S, y - yhat)                 # K = Pxy S^{-1}
        return x, sym(P - K @ S @ K.mT)
