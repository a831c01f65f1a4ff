"""Toy data with an exact denoiser: the oracle that separates solver error from network error."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from difflab.schedules import Schedule


class GaussianMixture:
    """Isotropic Gaussian mixture ``sum_k w_k N(mu_k, s_k^2 I)`` in d dimensions.

    Under ``x_t = alpha x0 + sigma eps`` each component stays Gaussian,
    ``x_t | k ~ N(alpha mu_k, (alpha^2 s_k^2 + sigma^2) I)``, so the denoiser is exact:
    ``E[x0 | x_t] = sum_k r_k(x_t) [mu_k + alpha s_k^2 / (alpha^2 s_k^2 + sigma^2) (x_t - alpha mu_k)]``
    with posterior responsibilities ``r_k``. Computed in float64.
    """

    def __init__(self, means: Tensor, stds: Tensor | float, weights: Tensor | None = None):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must have shape [K, d], got {tuple(means.shape)}")
        K = means.shape[0]
        stds = torch.as_tensor(stds, dtype=torch.float64).expand(K).clone()
        weights = (
            torch.full((K,), 1.0 / K, dtype=torch.float64)
            if weights is None
            else torch.as_tensor(weights, dtype=torch.float64)
        )
        if not torch.isfinite(means).all() or not torch.isfinite(stds).all():
            raise ValueError("GaussianMixture: means and stds must be finite")
        if (stds <= 0).any():
            raise ValueError(f"GaussianMixture: stds must be > 0, got {stds.tolist()}")
        if weights.shape != (K,) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(
                f"GaussianMixture: weights must be {K} non-negative numbers, got {weights.tolist()}"
            )
        self.means, self.stds, self.weights = means, stds, weights / weights.sum()
        self.dim = means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples, ``[n, d]`` float64."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        return self.means[k] + self.stds[k, None] * z

    def _component_log_prob(self, x: Tensor, scale: Tensor, var: Tensor) -> Tensor:
        """log w_k + log N(x; scale mu_k, var_k I) for every row and component, ``[n, K]``."""
        x = x.to(torch.float64).reshape(x.shape[0], -1)
        sq = torch.cdist(x, scale * self.means) ** 2  # [n, K]
        return torch.log(self.weights) - 0.5 * sq / var - 0.5 * self.dim * torch.log(2 * math.pi * var)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density of the mixture at each row of ``x``, ``[n]``."""
        one = torch.ones((), dtype=torch.float64)
        return torch.logsumexp(self._component_log_prob(x, one, self.stds**2), dim=1)

    def marginal_log_prob(self, x: Tensor, t: Tensor, schedule: Schedule) -> Tensor:
        """Exact log p_t(x) under ``schedule`` at one time ``t`` (scalar tensor), ``[n]``."""
        t = torch.as_tensor(t, dtype=torch.float64)
        a, s = schedule.alpha(t), schedule.sigma(t)
        return torch.logsumexp(self._component_log_prob(x, a, a**2 * self.stds**2 + s**2), dim=1)

    def denoiser(self, schedule: Schedule):
        """The exact ``D(x, t, cond=None) = E[x0 | x_t = x]`` under ``schedule``."""

        def D(x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
            shape, dtype = x.shape, x.dtype
            x64 = x.to(torch.float64).reshape(shape[0], -1)  # [B, d]
            t64 = t.to(torch.float64).reshape(-1, 1)  # [B, 1]
            a, s = schedule.alpha(t64), schedule.sigma(t64)  # [B, 1]
            var = a**2 * self.stds**2 + s**2  # [B, K]
            sq = ((x64[:, None, :] - a[:, :, None] * self.means[None]) ** 2).sum(-1)  # [B, K]
            logits = torch.log(self.weights) - 0.5 * sq / var - 0.5 * self.dim * torch.log(var)
            r = torch.softmax(logits, dim=1)  # [B, K]
            gain = a * self.stds**2 / var  # [B, K]
            # E[x0 | x_t, k] = mu_k + gain_k (x_t - alpha mu_k)
            post = self.means[None] + gain[:, :, None] * (x64[:, None, :] - a[:, :, None] * self.means[None])
            return (r[:, :, None] * post).sum(1).reshape(shape).to(dtype)

        return D
