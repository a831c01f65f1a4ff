"""Denoising losses: time density x weighting x MSE on the target of the chosen prediction type.

For ``x_t = alpha(t) x0 + sigma(t) eps`` (t = 0 data, t = 1 noise) and a network output ``F`` of type
``prediction``, the loss is

    L = E_{t ~ p(t), x0, eps} [ w(t) * mean((F(x_t, t) - target(x0, x_t, t))^2) ]

with ``target = parametrization.from_x0(prediction, x0, x_t, t)``. ``p(t)`` is uniform on
``[t_min, t_max]`` drawn low-discrepancy (stratified: ``u_i = (u_0 + i / B) mod 1``, Kingma et al. 2021)
or uniform in log-SNR; ``w`` is 1 ("unit": the customary loss of each target: eps-MSE for VP,
velocity-MSE for flow, EDM's preconditioned-x0 MSE for VE) or min-SNR-gamma (Hang et al. 2023).
"""

from __future__ import annotations

import torch
from torch import Tensor

from difflab.parametrization import from_x0

DEFAULT_PREDICTION = {"vp_linear": "eps", "vp_cosine": "eps", "ve": "edm", "flow": "velocity"}
TIME_SAMPLING = ("stratified", "uniform", "logsnr")
WEIGHTING = ("unit", "min_snr")


def default_prediction(schedule_name: str) -> str:
    """Each schedule's customary target: VP -> eps, VE -> edm (preconditioned x0), flow -> velocity."""
    if schedule_name not in DEFAULT_PREDICTION:
        raise ValueError(f"unknown schedule {schedule_name!r}; valid: {', '.join(DEFAULT_PREDICTION)}")
    return DEFAULT_PREDICTION[schedule_name]


def sample_times(
    schedule, n: int, *, kind: str = "stratified", generator: torch.Generator | None = None, device=None
) -> Tensor:
    """``n`` training times in ``[t_min, t_max]``, ``[n]`` float32.

    ``stratified``: one uniform offset shifted by i/n (low discrepancy, unbiased for the uniform density);
    ``uniform``: i.i.d. uniform; ``logsnr``: stratified uniform in log-SNR, mapped back to t.
    """
    if kind not in TIME_SAMPLING:
        raise ValueError(f"unknown time sampling {kind!r}; valid: {', '.join(TIME_SAMPLING)}")
    if kind == "uniform":
        u = torch.rand(n, generator=generator, device=device)
    else:
        u0 = torch.rand(1, generator=generator, device=device)
        u = (u0 + torch.arange(n, device=device) / n) % 1.0
    t_min, t_max = schedule.t_min, schedule.t_max
    if kind == "logsnr":
        ends = schedule.log_snr(torch.tensor([t_min, t_max], dtype=torch.float64))
        lam = ends[0] + u.double() * (ends[1] - ends[0])
        return schedule.t_from_log_snr(lam).clamp(t_min, t_max).float()
    return t_min + (t_max - t_min) * u


class DiffusionLoss:
    """``loss(denoiser, x0, cond=None, generator=None) -> Tensor[B]`` per-sample losses.

    ``denoiser`` is a ``parametrization.Denoiser``: its schedule, prediction type and sigma_data define
    the target, and ``denoiser.raw`` gives the network output (the network sees c_in * x_t and log-SNR).
    """

    def __init__(
        self, time_sampling: str = "stratified", weighting: str = "unit", min_snr_gamma: float = 5.0
    ):
        if time_sampling not in TIME_SAMPLING:
            raise ValueError(f"unknown time sampling {time_sampling!r}; valid: {', '.join(TIME_SAMPLING)}")
        if weighting not in WEIGHTING:
            raise ValueError(f"unknown loss weighting {weighting!r}; valid: {', '.join(WEIGHTING)}")
        self.time_sampling, self.weighting, self.min_snr_gamma = (
            time_sampling,
            weighting,
            float(min_snr_gamma),
        )

    def weight(self, denoiser, t: Tensor) -> Tensor:
        """``w(t)``, ``[B]``. min-SNR-gamma is stated for eps (min(snr, g)/snr); other targets are
        rescaled by their MSE's ratio to the x0-MSE (x0: 1, v: snr + 1, eps: snr)."""
        if self.weighting == "unit":
            return torch.ones_like(t)
        snr = denoiser.schedule.log_snr(t).exp()
        clipped = snr.clamp(max=self.min_snr_gamma)
        per_target = {"x0": torch.ones_like(snr), "eps": snr, "v": snr + 1}
        if denoiser.prediction not in per_target:
            raise ValueError(f"weighting 'min_snr' is defined for x0, eps, v; not {denoiser.prediction!r}")
        return clipped / per_target[denoiser.prediction]

    def __call__(
        self, denoiser, x0: Tensor, cond: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        schedule = denoiser.schedule
        t = sample_times(
            schedule, x0.shape[0], kind=self.time_sampling, generator=generator, device=x0.device
        )
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        shape = (-1,) + (1,) * (x0.ndim - 1)
        x_t = schedule.alpha(t).reshape(shape) * x0 + schedule.sigma(t).reshape(shape) * eps
        target = from_x0(denoiser.prediction, x0, x_t, t, schedule, denoiser.sigma_data)
        out = denoiser.raw(x_t, t, cond)
        mse = (out.float() - target.float()).square().flatten(1).mean(1)  # [B]
        return self.weight(denoiser, t) * mse
