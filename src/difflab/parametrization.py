"""One denoiser contract: every network output type becomes ``D(x, t) ~ E[x0 | x_t = x]``.

With ``x = alpha x0 + sigma eps`` (t = 0 data, t = 1 noise) the prediction types are

    "x0"        x0
    "eps"       eps = (x - alpha x0) / sigma
    "v"         v = alpha eps - sigma x0                      (Salimans & Ho 2022)
    "velocity"  u = d x_t / dt = alpha' x0 + sigma' eps       (flow matching)
    "score"     grad log p_t(x) = (alpha x0 - x) / sigma^2     (Tweedie)
    "edm"       F with D = c_skip x/alpha + c_out F           (Karras et al. 2022, preconditioned x0)

``to_x0`` and ``from_x0`` convert between any of them and x0; ``Denoiser`` wraps a network
(which sees a unit-variance input and the log-SNR, never raw t) into D; ``guided`` applies
classifier-free guidance. Solvers only ever see D.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from difflab.schedules import Schedule

PREDICTIONS = ("x0", "eps", "v", "velocity", "score", "edm")
SIGMA_DATA = 0.5  # EDM's data standard deviation, for images in [-1, 1]


def _check_prediction(kind: str) -> None:
    if kind not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {kind!r}; valid: {', '.join(PREDICTIONS)}")


def _bcast(c: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample coefficient ``[B]`` to broadcast against ``x`` ``[B, ...]``."""
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim)).to(x.dtype)


def edm_coefficients(schedule: Schedule, t: Tensor, sigma_data: float = SIGMA_DATA):
    """EDM preconditioning in the scaled variable x/alpha with noise level s = sigma/alpha:
    ``c_skip = sd^2/(s^2+sd^2)``, ``c_out = s sd/sqrt(s^2+sd^2)``, ``c_in = 1/sqrt(s^2+sd^2)``."""
    s = schedule.sigma(t) / schedule.alpha(t)
    denom = s**2 + sigma_data**2
    return sigma_data**2 / denom, s * sigma_data / denom.sqrt(), denom.rsqrt()


def to_x0(
    kind: str, out: Tensor, x: Tensor, t: Tensor, schedule: Schedule, sigma_data: float = SIGMA_DATA
) -> Tensor:
    """Convert a prediction ``out`` of type ``kind`` at ``(x, t)`` into x0. Shapes: x, out [B, ...]; t [B]."""
    _check_prediction(kind)
    a, s = _bcast(schedule.alpha(t), x), _bcast(schedule.sigma(t), x)
    if kind == "x0":
        return out
    if kind == "eps":
        return (x - s * out) / a
    if kind == "v":
        return (a * x - s * out) / (a**2 + s**2)
    if kind == "velocity":
        da, ds = _bcast(schedule.d_alpha(t), x), _bcast(schedule.d_sigma(t), x)
        return (ds * x - s * out) / (a * ds - da * s)
    if kind == "score":
        return (x + s**2 * out) / a
    c_skip, c_out, _ = (_bcast(c, x) for c in edm_coefficients(schedule, t, sigma_data))
    return c_skip * x / a + c_out * out


def from_x0(
    kind: str, x0: Tensor, x: Tensor, t: Tensor, schedule: Schedule, sigma_data: float = SIGMA_DATA
) -> Tensor:
    """Inverse of ``to_x0``: the prediction of type ``kind`` implied by ``x0`` at ``(x, t)``."""
    _check_prediction(kind)
    a, s = _bcast(schedule.alpha(t), x), _bcast(schedule.sigma(t), x)
    if kind == "x0":
        return x0
    eps = (x - a * x0) / s
    if kind == "eps":
        return eps
    if kind == "v":
        return a * eps - s * x0
    if kind == "velocity":
        da, ds = _bcast(schedule.d_alpha(t), x), _bcast(schedule.d_sigma(t), x)
        return da * x0 + ds * eps
    if kind == "score":
        return -eps / s
    c_skip, c_out, _ = (_bcast(c, x) for c in edm_coefficients(schedule, t, sigma_data))
    return (x0 - c_skip * x / a) / c_out


def score_from_x0(x0: Tensor, x: Tensor, t: Tensor, schedule: Schedule) -> Tensor:
    """Tweedie: ``score = (alpha x0 - x) / sigma^2``."""
    return from_x0("score", x0, x, t, schedule)


class Denoiser(nn.Module):
    """``D(x, t, cond) = E[x0 | x_t = x]`` from a network predicting ``prediction``.

    The network is called as ``net(c_in x, log_snr(t), cond)`` with
    ``c_in = 1 / sqrt(alpha^2 sigma_data^2 + sigma^2)`` so its input has unit variance under every
    schedule (VE's sigma reaches 50) and its noise embedding is schedule-independent.
    Coefficients are computed in the dtype of ``x`` (float64 in solvers); the network runs in
    its own dtype and D is returned in the dtype of ``x``.
    """

    def __init__(
        self, net: nn.Module, schedule: Schedule, prediction: str = "eps", sigma_data: float = SIGMA_DATA
    ):
        super().__init__()
        _check_prediction(prediction)
        self.net, self.schedule, self.prediction, self.sigma_data = net, schedule, prediction, sigma_data

    def c_in(self, t: Tensor) -> Tensor:
        a, s = self.schedule.alpha(t), self.schedule.sigma(t)
        return (a**2 * self.sigma_data**2 + s**2).rsqrt()

    def raw(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """The network's own output (of type ``prediction``) at ``(x, t)``, in x's dtype."""
        param = next(self.net.parameters(), None)
        net_dtype = param.dtype if param is not None and param.is_floating_point() else x.dtype
        x_in = (_bcast(self.c_in(t), x) * x).to(net_dtype)
        lam = self.schedule.log_snr(t).to(net_dtype)
        return self.net(x_in, lam, cond).to(x.dtype)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return to_x0(self.prediction, self.raw(x, t, cond), x, t, self.schedule, self.sigma_data)


def guided(denoiser, scale: float, null_label: int):
    """Classifier-free guidance (Ho & Salimans 2022): ``D_u + w (D_c - D_u)``.

    ``denoiser`` is conditional, ``null_label`` its learned "no class" label. Both branches run
    in one batched call. ``scale = 1`` is plain conditional sampling; ``cond=None`` gives D_u.
    """

    def D(x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        null = torch.full((x.shape[0],), null_label, dtype=torch.long, device=x.device)
        if cond is None:
            return denoiser(x, t, null)
        out = denoiser(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond.long(), null]))
        d_cond, d_uncond = out.chunk(2)
        return d_uncond + scale * (d_cond - d_uncond)

    return D
