"""Denoising losses: time density x weighting x MSE on the target of the chosen prediction type.

For ``x_t = alpha(t) x0 + sigma(t) eps`` (t = 0 data, t = 1 noise) and a network output ``F`` of type
``prediction``, the loss is

    L = E_{t ~ p(t), x0, eps} [ w(t) * mean((F(x_t, t) - target(x0, x_t, t))^2) ]

with ``target = parametrization.from_x0(prediction, x0, x_t, t)``. The target is affine in x0 with
slope ``k(t)``, so the target-MSE is ``k^2`` times the x0-MSE; a weighting stated on the x0-MSE,
``lambda(t) |D - x0|^2``, is ``w = lambda / k^2`` on the target's.

Time densities ``p(t)`` (``TIME_SAMPLINGS``, the keys of ``_TIME_DENSITIES``), on ``[t_min, t_max]``:
    "stratified"  uniform, low discrepancy: ``u_i = (u_0 + i / B) mod 1``      (Kingma et al. 2021)
    "uniform"     uniform, i.i.d.
    "logsnr"      uniform in log-SNR (stratified), mapped back to t
    "lognormal"   ``ln(sigma/alpha) ~ N(P_mean, P_std^2)``, mapped to t         (Karras et al. 2022)
Weightings ``w`` (``WEIGHTINGS``, the keys of ``_WEIGHTINGS``):
    "unit"        w = 1: each target's customary MSE (eps for VP, velocity for flow, EDM's F for VE)
    "min_snr"     lambda = min(snr, gamma) on the x0-MSE                        (Hang et al. 2023)
    "edm"         lambda = (s^2 + sd^2) / (s sd)^2, s = sigma/alpha, sd = sigma_data (Karras et al. 2022)
With the "edm" target, ``k = 1 / c_out`` and EDM's weighting gives ``w = lambda c_out^2 = 1`` (EDM eq. 8).
A schedule's own recipe is ``DiffusionLoss.for_schedule(schedule)`` (``Schedule.loss_defaults``).
Together they put the weight ``implied_weight`` on each log-SNR of the eps-MSE (Kingma & Gao 2023):
the density of the training log-SNRs (``log_snr_density``) times the weighting restated on eps.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types

import torch
from torch import Tensor

from difflab.parametrization import SIGMA_DATA, from_x0
from difflab.schedules import Schedule, _time_derivative, schedule_class, schedule_names
from difflab.schema import Field

P_MEAN, P_STD = -1.2, 1.2  # EDM's log-normal noise levels, ln sigma ~ N(P_mean, P_std^2) (Karras et al. 2022)
P_UNIFORM = 0.0  # the log-normal's share of draws uniform in log-SNR instead (0: EDM's density as it is)
MIN_SNR_GAMMA = 5.0  # Hang et al. (2023)


def default_prediction(schedule_name: str) -> str:
    """Each schedule's customary target, ``Schedule.prediction``: VP -> eps, VE and EDM -> edm
    (preconditioned x0), flow -> velocity. Unknown name -> ``ValueError`` listing the valid ones."""
    return schedule_class(schedule_name).prediction


def __getattr__(name: str):
    if name == "DEFAULT_PREDICTION":  # read from the schedule registry when asked
        return {n: schedule_class(n).prediction for n in schedule_names()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- time densities: fn(schedule, n, *, generator, device, **params) -> t [n] float32 ---------------
def _uniform_offsets(n: int, generator, device) -> Tensor:
    u0 = torch.rand(1, generator=generator, device=device)
    return (u0 + torch.arange(n, device=device) / n) % 1.0


def _stratified(schedule: Schedule, n: int, *, generator=None, device=None) -> Tensor:
    return schedule.t_min + (schedule.t_max - schedule.t_min) * _uniform_offsets(n, generator, device)


def _uniform(schedule: Schedule, n: int, *, generator=None, device=None) -> Tensor:
    u = torch.rand(n, generator=generator, device=device)
    return schedule.t_min + (schedule.t_max - schedule.t_min) * u


def _logsnr(schedule: Schedule, n: int, *, generator=None, device=None) -> Tensor:
    u = _uniform_offsets(n, generator, device)
    ends = schedule.log_snr(
        torch.tensor([schedule.t_min, schedule.t_max], dtype=torch.float64, device=device)
    )
    lam = ends[0] + u.double() * (ends[1] - ends[0])
    return schedule.t_from_log_snr(lam).clamp(schedule.t_min, schedule.t_max).float()


def _lognormal(
    schedule: Schedule,
    n: int,
    *,
    generator=None,
    device=None,
    P_mean: float = P_MEAN,
    P_std: float = P_STD,
    P_uniform: float = P_UNIFORM,
) -> Tensor:
    """EDM's noise levels: ``ln(sigma/alpha) = P_mean + P_std z``, z ~ N(0, 1) i.i.d., so
    ``log_snr = -2 ln(sigma/alpha)``, mapped to t by ``t_from_log_snr`` (any schedule) and clamped to
    [t_min, t_max]: the tails beyond the schedule's noise levels land on its ends. With ``P_uniform``
    > 0 that share of the draws is uniform in log-SNR over the schedule's range instead, so the
    noisiest levels, where sampling starts and the normal puts next to no mass (log-SNR -10 is 5.2
    standard deviations out), are trained too (``metrics.diagnostics.denoiser_coverage`` measures it)."""
    z = torch.randn(n, generator=generator, device=device, dtype=torch.float64)
    lam = -2 * (P_mean + P_std * z)
    if P_uniform > 0:
        lo, hi = schedule.log_snr_range()
        u, v = torch.rand(2, n, generator=generator, device=device, dtype=torch.float64)
        lam = torch.where(u < P_uniform, lo + (hi - lo) * v, lam)
    return schedule.t_from_log_snr(lam).clamp(schedule.t_min, schedule.t_max).float()


_TIME_DENSITIES = {"stratified": _stratified, "uniform": _uniform, "logsnr": _logsnr, "lognormal": _lognormal}
TIME_SAMPLINGS = tuple(_TIME_DENSITIES)
TIME_SAMPLING = TIME_SAMPLINGS  # the name used before the registry


# -- weightings: fn(lam, k2, **params) -> w on the target-MSE (lam = log-SNR, k2 = target slope^2) ----
def _unit(lam: Tensor, k2: Tensor) -> Tensor:
    return torch.ones_like(lam)


def _min_snr(lam: Tensor, k2: Tensor, *, min_snr_gamma: float = MIN_SNR_GAMMA) -> Tensor:
    return lam.exp().clamp(max=min_snr_gamma) / k2


def _edm(lam: Tensor, k2: Tensor, *, sigma_data: float = SIGMA_DATA) -> Tensor:
    """EDM's ``lambda(s) = (s^2 + sd^2) / (s sd)^2`` on the x0-MSE, noise level ``s^2 = exp(-lam)``."""
    s2, sd2 = torch.exp(-lam), sigma_data**2
    return (s2 + sd2) / (s2 * sd2) / k2


_WEIGHTINGS = {"unit": _unit, "min_snr": _min_snr, "edm": _edm}
WEIGHTINGS = tuple(_WEIGHTINGS)
WEIGHTING = WEIGHTINGS  # the name used before the registry


def _keywords(fn) -> set[str]:
    return {p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY}


def _choose(registry: dict, kind: str, what: str):
    if kind not in registry:
        raise ValueError(f"unknown {what} {kind!r}; valid: {', '.join(registry)}")
    return registry[kind]


def sample_times(
    schedule: Schedule,
    n: int,
    *,
    kind: str = "stratified",
    generator: torch.Generator | None = None,
    device=None,
    **params,
) -> Tensor:
    """``n`` training times in ``[t_min, t_max]`` from the density ``kind`` (one of ``TIME_SAMPLINGS``),
    ``[n]`` float32. ``params`` are the density's own (``lognormal``: ``P_mean``, ``P_std``)."""
    density = _choose(_TIME_DENSITIES, kind, "time sampling")
    allowed = _keywords(density) - {"generator", "device"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        takes = ", ".join(sorted(allowed)) or "none"
        raise ValueError(f"time sampling {kind!r} takes no parameter {unknown[0]!r}; it takes: {takes}")
    return density(schedule, n, generator=generator, device=device, **params)


def target_slope2(prediction: str, schedule: Schedule, t: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    """``k(t)^2``: the target of ``prediction`` is ``k x0 + (a term in x_t)``, so its MSE is ``k^2``
    times the x0-MSE (eps: snr; x0: 1; edm: 1 / c_out^2). ``[B]`` float64."""
    t64 = t.detach().to(torch.float64).reshape(-1)
    one = torch.ones(t64.shape[0], 1, dtype=torch.float64, device=t.device)  # x0 = 1, x_t = 0: [B, 1]
    zero = torch.zeros_like(one)
    k = from_x0(prediction, one, zero, t64, schedule, sigma_data) - from_x0(
        prediction, zero, zero, t64, schedule, sigma_data
    )
    return k[:, 0].square().reshape(t.shape)


# the ``loss`` config section: ``DiffusionLoss.for_schedule(schedule, **loss)``, null = the schedule's own
LOSS_FIELDS = {
    "time_sampling": Field(str, choices=TIME_SAMPLINGS, nullable=True),
    "weighting": Field(str, choices=WEIGHTINGS, nullable=True),
    "min_snr_gamma": Field(float, low=0, low_open=True, nullable=True),
    "P_mean": Field(float, nullable=True),
    "P_std": Field(float, low=0, low_open=True, nullable=True),
    "P_uniform": Field(float, low=0, high=1, high_open=True, nullable=True),
}


class DiffusionLoss:
    """``loss(denoiser, x0, cond=None, generator=None) -> Tensor[B]`` per-sample losses.

    ``denoiser`` is a ``parametrization.Denoiser``: its schedule, prediction type and sigma_data define
    the target, and ``denoiser.raw`` gives the network output (the network sees c_in * x_t and log-SNR).
    """

    def __init__(
        self,
        time_sampling: str = "stratified",
        weighting: str = "unit",
        min_snr_gamma: float = MIN_SNR_GAMMA,
        *,
        P_mean: float = P_MEAN,
        P_std: float = P_STD,
        P_uniform: float = P_UNIFORM,
    ):
        _choose(_TIME_DENSITIES, time_sampling, "time sampling")
        _choose(_WEIGHTINGS, weighting, "loss weighting")
        numbers = {"min_snr_gamma": min_snr_gamma, "P_mean": P_mean, "P_std": P_std, "P_uniform": P_uniform}
        for key, value in numbers.items():
            field = dataclasses.replace(LOSS_FIELDS[key], nullable=False)  # null is for_schedule's
            if not field.accepts(value):
                raise ValueError(f"loss: {key}={value!r} must be {field.allowed()}")
        self.time_sampling, self.weighting = time_sampling, weighting
        self.min_snr_gamma, self.P_mean, self.P_std = float(min_snr_gamma), float(P_mean), float(P_std)
        self.P_uniform = float(P_uniform)

    @classmethod
    def for_schedule(cls, schedule: Schedule, **settings) -> DiffusionLoss:
        """The schedule's training recipe (``schedule.loss_defaults``), with ``settings`` overriding it
        (a ``None`` setting keeps the schedule's own, e.g. edm's lognormal density and EDM weighting)."""
        return cls(**{**schedule.loss_defaults, **{k: v for k, v in settings.items() if v is not None}})

    def settings(self) -> dict:
        """The ``loss`` section's keys and values: ``DiffusionLoss(**loss.settings())`` rebuilds it."""
        return {key: getattr(self, key) for key in LOSS_FIELDS}

    def __repr__(self) -> str:
        return f"DiffusionLoss({', '.join(f'{k}={v!r}' for k, v in self.settings().items())})"

    def parameters(self, key: str) -> dict:
        """The settings that this loss's time density (``key="time_sampling"``) or weighting
        (``key="weighting"``) takes, e.g. lognormal's ``P_mean`` and ``P_std``."""
        fn = (_TIME_DENSITIES if key == "time_sampling" else _WEIGHTINGS)[getattr(self, key)]
        return {k: v for k, v in self.settings().items() if k in _keywords(fn)}

    def sample_times(self, schedule: Schedule, n: int, generator=None, device=None) -> Tensor:
        """``n`` times from this loss's density, ``[n]`` float32."""
        params = self.parameters("time_sampling")
        return sample_times(
            schedule, n, kind=self.time_sampling, generator=generator, device=device, **params
        )

    def weight(self, denoiser, t: Tensor) -> Tensor:
        """``w(t)`` on the target-MSE of ``denoiser.prediction``, ``[B]`` in t's dtype."""
        fn = _WEIGHTINGS[self.weighting]
        schedule, sigma_data = denoiser.schedule, denoiser.sigma_data
        lam = schedule.log_snr(t.detach().to(torch.float64))
        k2 = target_slope2(denoiser.prediction, schedule, t, sigma_data)
        available = {"min_snr_gamma": self.min_snr_gamma, "sigma_data": sigma_data}
        w = fn(lam, k2, **{k: v for k, v in available.items() if k in _keywords(fn)})
        return w.to(t.dtype if t.is_floating_point() else torch.get_default_dtype())

    def __call__(
        self, denoiser, x0: Tensor, cond: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        schedule = denoiser.schedule
        t = self.sample_times(schedule, x0.shape[0], generator=generator, device=x0.device)  # [B]
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        shape = (-1,) + (1,) * (x0.ndim - 1)
        x_t = schedule.alpha(t).reshape(shape) * x0 + schedule.sigma(t).reshape(shape) * eps
        target = from_x0(denoiser.prediction, x0, x_t, t, schedule, denoiser.sigma_data)
        out = denoiser.raw(x_t, t, cond)
        mse = (out.float() - target.float()).square().flatten(1).mean(1)  # [B]
        return self.weight(denoiser, t) * mse


# -- the weight a loss puts on each log-SNR (Kingma & Gao 2023) -----------------------------------
HISTOGRAM_SAMPLES = 2**20  # training times drawn for a density without a closed form in log-SNR


def _uniform_t(schedule: Schedule, loss: DiffusionLoss, lam: Tensor, t: Tensor) -> Tensor:
    """t uniform on [t_min, t_max]: ``p(lambda) = |dt / d lambda| / (t_max - t_min)`` (autograd)."""
    return 1 / _time_derivative(schedule.log_snr, t).abs() / (schedule.t_max - schedule.t_min)


def _uniform_lam(schedule: Schedule, loss: DiffusionLoss, lam: Tensor, t: Tensor) -> Tensor:
    """lambda uniform between the interval's ends: ``1 / (lam_hi - lam_lo)``."""
    lam_lo, lam_hi = schedule.log_snr_range()
    return torch.full_like(lam, 1 / (lam_hi - lam_lo))


def _normal_lam(schedule: Schedule, loss: DiffusionLoss, lam: Tensor, t: Tensor) -> Tensor:
    """``ln(sigma/alpha) ~ N(P_mean, P_std^2)``, so ``lambda ~ N(-2 P_mean, (2 P_std)^2)``; with
    ``P_uniform`` that share uniform in lambda: ``(1 - P_uniform) N + P_uniform / (lam_hi - lam_lo)``."""
    mean, sd = -2 * loss.P_mean, 2 * loss.P_std
    normal = torch.exp(-0.5 * ((lam - mean) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
    return (1 - loss.P_uniform) * normal + loss.P_uniform * _uniform_lam(schedule, loss, lam, t)


# p(lambda) in closed form per time density (the keys of ``_TIME_DENSITIES``); any other: a histogram
LOG_SNR_DENSITIES = {"stratified": _uniform_t, "uniform": _uniform_t, "logsnr": _uniform_lam,
                     "lognormal": _normal_lam}  # fmt: skip


def _histogram_density(schedule: Schedule, loss: DiffusionLoss, lam: Tensor) -> Tensor:
    """``p(lambda)`` from ``HISTOGRAM_SAMPLES`` times of ``loss.sample_times`` (fixed generator) in 200
    bins, linear between the bin centres (constant beyond them); times clamped onto the interval's ends
    (point masses) are left out."""
    t = loss.sample_times(schedule, HISTOGRAM_SAMPLES, generator=torch.Generator().manual_seed(0))
    inside = (t > torch.tensor(schedule.t_min).float()) & (t < torch.tensor(schedule.t_max).float())
    (lam_lo, lam_hi), bins = schedule.log_snr_range(), 200
    counts = torch.histc(schedule.log_snr(t[inside].double()), bins, lam_lo, lam_hi)
    width = (lam_hi - lam_lo) / bins
    density = counts / (HISTOGRAM_SAMPLES * width)  # [bins]
    u = ((lam - lam_lo) / width - 0.5).clamp(0, bins - 1)  # position in units of bins from the 1st centre
    i = u.floor().long().clamp(max=bins - 2)
    return torch.lerp(density[i], density[i + 1], u - i)


def log_snr_density(schedule: Schedule, loss: DiffusionLoss, lam) -> Tensor:
    """``p(lambda)``, float64 of ``lam``'s shape: the density of ``lambda = log_snr(t)`` for t drawn
    from ``loss``'s time density, by change of variables (``LOG_SNR_DENSITIES``) or a histogram of
    ``loss.sample_times``; 0 outside the schedule's log-SNR range. The lognormal's tails, which
    training clamps onto the interval's ends, are point masses there and not part of it."""
    lam = torch.as_tensor(lam, dtype=torch.float64)
    lam_lo, lam_hi = schedule.log_snr_range()
    t = schedule.t_from_log_snr(lam.clamp(lam_lo, lam_hi)).clamp(schedule.t_min, schedule.t_max)
    closed = LOG_SNR_DENSITIES.get(loss.time_sampling)
    p = closed(schedule, loss, lam, t) if closed else _histogram_density(schedule, loss, lam)
    return torch.where((lam >= lam_lo) & (lam <= lam_hi), p, torch.zeros_like(p))


def implied_weight(schedule: Schedule, loss: DiffusionLoss, prediction: str, lam) -> Tensor:
    """``w(lambda)``, float64 of ``lam``'s shape, with the loss of a network of type ``prediction``
    trained under ``schedule`` equal to

        L = int w(lambda) E_{x0, eps} ||eps - eps_hat(x_lambda)||^2 d lambda      (Kingma & Gao 2023)

    ``w = p(lambda) * loss.weight * k^2 / snr``: the density of the training log-SNRs
    (``log_snr_density``) times the weight on the target's MSE restated on the eps-MSE (the target's
    MSE is ``k^2`` times the x0-MSE, ``target_slope2``; the eps-MSE ``snr`` times it). 0 outside the
    schedule's log-SNR range; not normalised."""
    lam = torch.as_tensor(lam, dtype=torch.float64)
    t = schedule.t_from_log_snr(lam.clamp(*schedule.log_snr_range())).clamp(schedule.t_min, schedule.t_max)
    denoiser = types.SimpleNamespace(schedule=schedule, prediction=prediction, sigma_data=SIGMA_DATA)
    k2_over_snr = target_slope2(prediction, schedule, t) / schedule.log_snr(t).exp()
    return log_snr_density(schedule, loss, lam) * loss.weight(denoiser, t) * k2_over_snr
