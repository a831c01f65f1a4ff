"""The equations every solver shares, the noise they draw and ``CountingDenoiser``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from difflab.schedules import Schedule


# -- randomness, counting ------------------------------------------------------------------------
def randn_like(x: Tensor, generator: torch.Generator | Sequence[torch.Generator] | None = None) -> Tensor:
    """Standard normal noise shaped like ``x`` ``[B, ...]``. ``generator`` is ``None`` (global RNG), one
    ``torch.Generator``, or a sequence of ``B`` generators, one per batch row (EDM's
    ``StackedRandomGenerator``): then row ``b``'s noise depends only on ``generator[b]``, so a sample's
    noise path is independent of the batch it sits in. Float64 noise is drawn in float32 and cast:
    torch's float64 normal sampler is ~10x slower on CPU and a float32 normal is exact enough for sampling."""
    return _draw(x, generator).to(x.dtype)


def _draw_dtype(x: Tensor) -> torch.dtype:
    return torch.float32 if x.dtype == torch.float64 else x.dtype


def _draw(x: Tensor, generator, out: Tensor | None = None) -> Tensor:
    """``randn_like`` before the cast: float32 for float64 ``x`` (added to x in place, no extra pass)."""
    if out is None:
        out = torch.empty(x.shape, dtype=_draw_dtype(x), device=x.device)
    if generator is None or isinstance(generator, torch.Generator):
        return out.normal_(generator=generator)
    if len(generator) != x.shape[0]:
        raise ValueError(
            f"got {len(generator)} generators for a batch of {x.shape[0]} rows; need one per row"
        )
    for row, g in zip(out, generator):
        row.normal_(generator=g)
    return out


class CountingDenoiser:
    """Wraps a denoiser and counts its calls in ``.nfe`` (one per call, whatever the batch size); the
    pipeline records the actual NFE of the adaptive rk45 with it."""

    def __init__(self, denoiser: Callable):
        self.denoiser, self.nfe = denoiser, 0

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        self.nfe += 1
        return self.denoiser(x, t) if cond is None else self.denoiser(x, t, cond)

    def reset(self) -> None:
        self.nfe = 0


# -- the equations -------------------------------------------------------------------------------
def _pf_coefficients(schedule: Schedule, t: Tensor) -> tuple[Tensor, Tensor]:
    """PF-ODE drift ``c_x x + c_D D`` with ``c_x = sigma'/sigma``, ``c_D = alpha' - sigma' alpha / sigma``
    (= ``f x - g2/2 score``): both terms of ``c_D`` share a sign, so no precision is lost where f and g2
    are large (flow at t = 1: ``(x - D)/t``)."""
    a, s = schedule.alpha(t), schedule.sigma(t)
    ds = schedule.d_sigma(t)
    return ds / s, schedule.d_alpha(t) - ds * a / s


def _sde_coefficients(schedule: Schedule, t: Tensor) -> tuple[Tensor, Tensor]:
    """Reverse-SDE drift ``f x - g2 score = (2 c_x - f) x + 2 c_D D`` (= 2 PF-ODE drift - f x)."""
    c_x, c_D = _pf_coefficients(schedule, t)
    return 2 * c_x - schedule.f(t), 2 * c_D


def _bcast(c: Tensor, x: Tensor) -> Tensor:
    c = torch.as_tensor(c, dtype=x.dtype, device=x.device)
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


def _batch_t(t, x: Tensor) -> Tensor:
    """``t`` (a number or a tensor broadcastable to ``[B]``) as a ``[B]`` tensor of x's dtype."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.expand(x.shape[0]).contiguous() if t.numel() == 1 else t.reshape(x.shape[0])


def _call(denoiser, x: Tensor, t: Tensor, cond) -> Tensor:
    return (denoiser(x, t) if cond is None else denoiser(x, t, cond)).to(x.dtype)


def pf_ode_drift(denoiser, schedule: Schedule, x: Tensor, t, cond=None) -> Tensor:
    """PF-ODE drift ``dx/dt = f x - g2/2 score`` at ``x`` ``[B, ...]``, ``t`` scalar or ``[B]``."""
    tb = _batch_t(t, x)
    c_x, c_D = _pf_coefficients(schedule, tb)
    return _bcast(c_x, x) * x + _bcast(c_D, x) * _call(denoiser, x, tb, cond)


def reverse_sde_drift(denoiser, schedule: Schedule, x: Tensor, t, cond=None) -> Tensor:
    """Reverse-SDE drift ``f x - g2 score`` (time running backwards: ``dx = drift dt + g dW_bar``)."""
    tb = _batch_t(t, x)
    c_x, c_D = _sde_coefficients(schedule, tb)
    return _bcast(c_x, x) * x + _bcast(c_D, x) * _call(denoiser, x, tb, cond)


def edm_ode_velocity(denoiser, schedule: Schedule, y: Tensor, u: Tensor, cond=None) -> Tensor:
    """The PF-ODE in EDM's well-conditioned variables (Karras et al. 2022, eq. 4 with s = e^u):
    ``y = x / alpha`` over ``u = log(sigma / alpha) = -log_snr / 2``,

        dy/du = y - D(alpha y, t(u)),      t(u) = schedule.t_from_log_snr(-2 u),

    for ``y`` ``[B, ...]`` and a 0-d ``u``. Finite wherever D is: no f or g2, which diverge at the ends
    of VP-cosine and flow. rk45 and the likelihood integrate this one equation."""
    t = schedule.t_from_log_snr(-2 * u.to(torch.float64))
    a = schedule.alpha(t).to(y.dtype)  # 0-d tensor: no device sync
    return y - _call(denoiser, a * y, t.to(y.dtype).expand(y.shape[0]).contiguous(), cond)
