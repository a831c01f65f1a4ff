"""Noise schedules: the forward marginal ``x_t = alpha(t) x0 + sigma(t) eps``.

Time runs over [0, 1] with ``t = 0`` data and ``t = 1`` noise (the prior). A schedule is a
small value object: a subclass defines ``alpha`` and ``sigma`` only, and everything else follows
(Kingma et al. 2021, "Variational Diffusion Models"; Song et al. 2021, "Score-Based Generative
Modeling through SDEs"):

    f(t)      = d log alpha / dt                          drift of the linear SDE dx = f x dt + g dW
    g2(t)     = d sigma^2 / dt - 2 sigma^2 f(t)           squared diffusion coefficient
    log_snr(t) = log(alpha^2 / sigma^2)                   strictly decreasing in t

Closed forms override the autograd defaults where they exist; tests compare the two.
``t_min`` and ``t_max`` bound the interval solvers integrate over: every quantity above is
finite on it. ``SCHEDULES`` is the registry's keys, read when asked, so a schedule registered at
run time with ``@register_schedule`` joins every list.
"""

from __future__ import annotations

import copy
import inspect
import math

import torch
from torch import Tensor

from difflab.schema import Field, registry

_REGISTRY: dict[str, type[Schedule]] = {}


def _time_derivative(fn, t: Tensor) -> Tensor:
    """Elementwise d fn(t) / dt by autograd (fn acts elementwise, so the gradient of the sum is it)."""
    with torch.enable_grad():
        tt = t.detach().clone().requires_grad_(True)
        y = fn(tt)
        if not y.requires_grad:  # fn does not depend on t (e.g. VE's alpha = ones_like(t))
            return torch.zeros_like(t)
        (dy,) = torch.autograd.grad(y.sum(), tt, allow_unused=True)
    return torch.zeros_like(t) if dy is None else dy


def register_schedule(cls: type[Schedule]) -> type[Schedule]:
    """Class decorator: register a ``Schedule`` subclass under ``cls.name`` for ``get_schedule`` and
    ``SCHEDULES``. A name taken by another class raises ``ValueError`` (``unregister_schedule`` frees
    it); registering the same class twice is a no-op."""
    if not (isinstance(cls, type) and issubclass(cls, Schedule)):
        raise ValueError(f"register_schedule: {cls!r} is not a Schedule subclass")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name or name == Schedule.name:
        raise ValueError(f"register_schedule: {cls.__name__} needs its own class attribute `name`")
    if not isinstance(cls.prediction, str) or not isinstance(cls.loss_defaults, dict):
        raise ValueError(f"register_schedule: {name}: `prediction` must be a name, `loss_defaults` a dict")
    if _REGISTRY.get(name, cls) is not cls:
        raise ValueError(f"register_schedule: the name {name!r} is taken by {_REGISTRY[name].__name__}")
    _REGISTRY[name] = cls
    return cls


def unregister_schedule(name: str) -> None:
    """Remove ``name`` from the registry (a schedule registered at run time, e.g. in a test)."""
    schedule_class(name)  # ValueError listing the valid names
    del _REGISTRY[name]


def schedule_names() -> tuple[str, ...]:
    """The registered names in registration order (``SCHEDULES``)."""
    return tuple(_REGISTRY)


def schedule_class(name: str) -> type[Schedule]:
    """The class registered as ``name`` (for its ``prediction`` and ``loss_defaults``)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown schedule {name!r}; valid schedules: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def __getattr__(name: str):
    if name == "SCHEDULES":  # the registry's keys, read when asked (schedules registered at run time too)
        return schedule_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Schedule:
    """Base class: subclasses define ``alpha(t)`` and ``sigma(t)`` (elementwise on a float tensor of
    any shape). ``prediction`` is the customary network target: "eps" unless a subclass says otherwise
    (DDPM's target, Ho et al. 2020, defined under every schedule); ``loss_defaults`` the loss settings
    of the schedule's training recipe (empty: ``DiffusionLoss``'s own defaults).
    """

    name = "custom"
    prediction: str = "eps"
    loss_defaults: dict = {}
    t_min: float = 1e-3
    t_max: float = 1.0
    param_names: tuple[str, ...] = ()  # the attributes ``params`` adds: the subclass's own parameters

    def __init__(self, t_min: float | None = None, t_max: float | None = None):
        if t_min is not None:
            self.t_min = float(t_min)
        if t_max is not None:
            self.t_max = float(t_max)
        _check_interval(self.t_min, self.t_max)

    # -- the two defining functions -------------------------------------------------------------
    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    # -- derived quantities (autograd defaults; closed forms override) --------------------------
    def d_alpha(self, t: Tensor) -> Tensor:
        """d alpha / dt."""
        return _time_derivative(self.alpha, t)

    def d_sigma(self, t: Tensor) -> Tensor:
        """d sigma / dt."""
        return _time_derivative(self.sigma, t)

    def f(self, t: Tensor) -> Tensor:
        """Drift coefficient ``f(t) = d log alpha / dt``."""
        return self.d_alpha(t) / self.alpha(t)

    def g2(self, t: Tensor) -> Tensor:
        """Squared diffusion coefficient ``g(t)^2 = d sigma^2/dt - 2 sigma^2 f(t)``."""
        sigma = self.sigma(t)
        return 2 * sigma * self.d_sigma(t) - 2 * sigma**2 * self.f(t)

    def log_snr(self, t: Tensor) -> Tensor:
        """``lambda(t) = log(alpha^2 / sigma^2)``, strictly decreasing in t."""
        return 2 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        """Inverse of ``log_snr`` (generic: bisection on [0, 1] in float64, 64 halvings)."""
        lam64 = lam.detach().to(torch.float64)
        lo = torch.zeros_like(lam64)
        hi = torch.ones_like(lam64)
        for _ in range(64):
            mid = (lo + hi) / 2
            too_early = self.log_snr(mid) > lam64  # log_snr decreases: the root lies later
            lo = torch.where(too_early, mid, lo)
            hi = torch.where(too_early, hi, mid)
        return ((lo + hi) / 2).to(lam.dtype if lam.is_floating_point() else torch.get_default_dtype())

    # -- conveniences ---------------------------------------------------------------------------
    def log_snr_range(self) -> tuple[float, float]:
        """``(lam_lo, lam_hi) = (log_snr(t_max), log_snr(t_min))``: the log-SNRs the interval covers."""
        ends = self.log_snr(torch.tensor([self.t_max, self.t_min], dtype=torch.float64))
        return float(ends[0]), float(ends[1])

    def with_log_snr_range(self, lam_lo: float, lam_hi: float) -> Schedule:
        """A copy whose ``[t_min, t_max]`` is the part of this interval with log-SNR in ``[lam_lo, lam_hi]``
        (``ValueError`` when they do not overlap). Cross-schedule comparisons share one such range."""
        own_lo, own_hi = self.log_snr_range()
        lo, hi = max(lam_lo, own_lo), min(lam_hi, own_hi)
        if not lo < hi:
            raise ValueError(
                f"{self!r} covers log-SNR [{own_lo:.6g}, {own_hi:.6g}], which does not overlap "
                f"[{lam_lo:.6g}, {lam_hi:.6g}]"
            )
        ts = self.t_from_log_snr(torch.tensor([hi, lo], dtype=torch.float64))
        out = copy.copy(self)
        out.t_min = self.t_min if hi == own_hi else max(self.t_min, float(ts[0]))
        out.t_max = self.t_max if lo == own_lo else min(self.t_max, float(ts[1]))
        _check_interval(out.t_min, out.t_max)
        return out

    def sigma_over_alpha(self, t: Tensor) -> Tensor:
        """The EDM/VE noise level ``sigma / alpha = exp(-log_snr / 2)``."""
        return torch.exp(-self.log_snr(t) / 2)

    def params(self) -> dict:
        """Plain-dict description: ``get_schedule(**s.params())`` rebuilds the schedule."""
        own = {key: getattr(self, key) for key in self.param_names}
        return {"name": self.name, "t_min": self.t_min, "t_max": self.t_max, **own}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items() if k != "name")
        return f"{type(self).__name__}({args})"


@register_schedule
class VPLinear(Schedule):
    """Variance-preserving SDE with linear beta (DDPM's 1e-4..0.02 over 1000 steps, continuous).

    beta(t) = beta_min + t (beta_max - beta_min),  B(t) = int_0^t beta = -2 log alpha(t),
    alpha = exp(-B/2), sigma = sqrt(1 - alpha^2); f = -beta/2, g2 = beta. t = 0 data, t = 1 noise.
    t_min = 1e-3 as in Song et al. (2021).
    """

    name = "vp_linear"
    param_names = ("beta_min", "beta_max")

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, **interval):
        self.beta_min, self.beta_max = _check_pair("vp_linear", beta_min=beta_min, beta_max=beta_max)
        super().__init__(**interval)

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _B(self, t: Tensor) -> Tensor:
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def alpha(self, t):
        return torch.exp(-0.5 * self._B(t))

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(-self._B(t)))

    def d_alpha(self, t):
        return -0.5 * self.beta(t) * self.alpha(t)

    def d_sigma(self, t):
        return 0.5 * self.beta(t) * torch.exp(-self._B(t)) / self.sigma(t)

    def f(self, t):
        return -0.5 * self.beta(t)

    def g2(self, t):
        return self.beta(t)

    def log_snr(self, t):
        return -torch.log(torch.expm1(self._B(t)))

    def t_from_log_snr(self, lam):
        B = torch.nn.functional.softplus(-lam)  # B = log(1 + e^-lam)
        d = self.beta_max - self.beta_min
        return 2 * B / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * d * B))


@register_schedule
class VPCosine(Schedule):
    """Variance-preserving cosine schedule (Nichol & Dhariwal 2021, iDDPM).

    alpha(t) = cos(theta(t)) / cos(theta(0)),  theta(t) = pi/2 (t + s) / (1 + s),
    sigma = sqrt(1 - alpha^2); f = -pi/(2(1+s)) tan(theta), g2 = -2 f. t = 0 data, t = 1 noise.
    alpha reaches 0 at t = 1 (iDDPM clips beta at 0.999); t_max = 0.9946 as in DPM-Solver keeps
    log alpha, f and g2 finite.
    """

    name = "vp_cosine"
    param_names = ("s",)
    t_max = 0.9946

    def __init__(self, s: float = 0.008, **interval):
        if not (math.isfinite(s) and s >= 0):
            raise ValueError(f"vp_cosine: s={s} must be a finite number >= 0")
        self.s = float(s)
        self._theta0 = math.pi / 2 * self.s / (1 + self.s)
        super().__init__(**interval)

    def _theta(self, t):
        return math.pi / 2 * (t + self.s) / (1 + self.s)

    def alpha(self, t):
        return torch.cos(self._theta(t)) / math.cos(self._theta0)

    def _sigma2_cos2theta0(self, t):
        """``sigma^2 cos^2 theta0 = cos^2 theta0 - cos^2 theta = sin(theta - theta0) sin(theta + theta0)``,
        accurate where alpha is near 1 (small t), unlike 1 - alpha^2."""
        theta = self._theta(t)
        return torch.sin(theta - self._theta0) * torch.sin(theta + self._theta0)

    def sigma(self, t):
        return torch.sqrt(self._sigma2_cos2theta0(t)) / math.cos(self._theta0)

    def d_alpha(self, t):
        return -math.pi / (2 * (1 + self.s)) * torch.sin(self._theta(t)) / math.cos(self._theta0)

    def d_sigma(self, t):
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def f(self, t):
        return -math.pi / (2 * (1 + self.s)) * torch.tan(self._theta(t))

    def g2(self, t):
        return -2 * self.f(t)

    def log_snr(self, t):
        return 2 * torch.log(torch.cos(self._theta(t))) - torch.log(self._sigma2_cos2theta0(t))

    def t_from_log_snr(self, lam):
        # VP: alpha^2 = sigmoid(lambda), so cos^2 theta = sigmoid(lambda) cos^2 theta0 and
        # sin^2 theta = sigmoid(-lambda) cos^2 theta0 + sin^2 theta0; atan2 keeps small theta accurate
        c2, s2 = math.cos(self._theta0) ** 2, math.sin(self._theta0) ** 2
        theta = torch.atan2(torch.sqrt(torch.sigmoid(-lam) * c2 + s2), torch.sqrt(torch.sigmoid(lam) * c2))
        return theta * 2 * (1 + self.s) / math.pi - self.s


class _AlphaOne(Schedule):
    """alpha = 1, so f = 0; sigma runs from ``sigma_min`` to ``sigma_max`` (VE, EDM)."""

    param_names = ("sigma_min", "sigma_max")

    def alpha(self, t):
        return torch.ones_like(t)

    def d_alpha(self, t):
        return torch.zeros_like(t)

    def f(self, t):
        return torch.zeros_like(t)


@register_schedule
class VE(_AlphaOne):
    """Variance-exploding schedule (Song & Ermon 2019; Song et al. 2021).

    alpha = 1, sigma(t) = sigma_min (sigma_max / sigma_min)^t (geometric); f = 0,
    g2 = 2 sigma^2 log(sigma_max / sigma_min). t = 0 data, t = 1 noise; sigma(0) = sigma_min > 0.
    """

    name = "ve"
    prediction = "edm"  # EDM's preconditioned x0: eps-prediction is ill-conditioned at sigma = 50
    t_min = 0.0

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, **interval):
        self.sigma_min, self.sigma_max = _check_pair("ve", sigma_min=sigma_min, sigma_max=sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)
        super().__init__(**interval)

    def sigma(self, t):
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def d_sigma(self, t):
        return self.sigma(t) * self._log_ratio

    def g2(self, t):
        return 2 * self.sigma(t) ** 2 * self._log_ratio

    def log_snr(self, t):
        return -2 * (math.log(self.sigma_min) + t * self._log_ratio)

    def t_from_log_snr(self, lam):
        return (-lam / 2 - math.log(self.sigma_min)) / self._log_ratio


@register_schedule
class Flow(Schedule):
    """Flow matching / rectified flow seen as a diffusion (Liu et al. 2022; Lipman et al. 2022).

    alpha = 1 - t, sigma = t; f = -1/(1 - t), g2 = 2t / (1 - t). t = 0 data, t = 1 noise
    (flow_matching and torchcfm run time the other way). f and g2 diverge at t = 1, so
    t_max = 1 - 1e-3; the PF-ODE drift (x - D)/t itself stays finite there.
    """

    name = "flow"
    prediction = "velocity"
    t_max = 1.0 - 1e-3

    def alpha(self, t):
        return 1 - t

    def sigma(self, t):
        return t.clone() if isinstance(t, Tensor) else t

    def d_alpha(self, t):
        return -torch.ones_like(t)

    def d_sigma(self, t):
        return torch.ones_like(t)

    def f(self, t):
        return -1 / (1 - t)

    def g2(self, t):
        return 2 * t / (1 - t)

    def log_snr(self, t):
        return 2 * (torch.log1p(-t) - torch.log(t))

    def t_from_log_snr(self, lam):
        return torch.sigmoid(-lam / 2)


@register_schedule
class EDM(_AlphaOne):
    """EDM's schedule (Karras et al. 2022, Table 1): alpha = 1, sigma = EDM's t, rescaled to t in [0, 1].

    sigma(t) = sigma_max t on [sigma_min / sigma_max, 1]; f = 0, g2 = d sigma^2/dt = 2 sigma_max^2 t,
    log_snr = -2 log(sigma_max t), t = exp(-lambda/2) / sigma_max. t = 0 data, t = 1 noise.
    sigma_min = 0.002, sigma_max = 80 as in EDM; t_min = sigma_min / sigma_max unless given (> 0:
    sigma(0) = 0). Its training recipe: the "edm" target (preconditioning with sigma_data = 0.5), noise
    levels ln(sigma) ~ N(P_mean, P_std^2) ("lognormal") and EDM's loss weight ("edm").
    """

    name = "edm"
    prediction = "edm"
    loss_defaults = {"time_sampling": "lognormal", "weighting": "edm"}

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, **interval):
        self.sigma_min, self.sigma_max = _check_pair("edm", sigma_min=sigma_min, sigma_max=sigma_max)
        if interval.get("t_min") is None:
            interval["t_min"] = self.sigma_min / self.sigma_max
        if not interval["t_min"] > 0:
            raise ValueError(f"edm: t_min={interval['t_min']} must be > 0 (sigma(0) = 0: no finite log-SNR)")
        super().__init__(**interval)

    def sigma(self, t):
        return self.sigma_max * t

    def d_sigma(self, t):
        return torch.full_like(t, self.sigma_max)

    def g2(self, t):
        return 2 * self.sigma_max**2 * t

    def log_snr(self, t):
        return -2 * torch.log(self.sigma_max * t)

    def t_from_log_snr(self, lam):
        return torch.exp(-lam / 2) / self.sigma_max


BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def _softplus(y: Tensor) -> Tensor:
    """``log(1 + e^y)`` to rounding everywhere (torch's softplus returns y itself above y = 20)."""
    return y.clamp_min(0) + torch.log1p(torch.exp(-y.abs()))


def ddpm_betas(num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str) -> Tensor:
    """DDPM's betas ``[N]`` in float64, by diffusers' ``DDPMScheduler`` recipe (which rounds them to float32).

    "linear": ``linspace(beta_start, beta_end, N)`` (Ho et al. 2020); "scaled_linear":
    ``linspace(sqrt(beta_start), sqrt(beta_end), N)^2`` (latent diffusion); "squaredcos_cap_v2":
    ``beta_n = min(1 - abar((n+1)/N) / abar(n/N), 0.999)``, ``abar(u) = cos^2(pi/2 (u + 0.008)/1.008)``
    (Nichol & Dhariwal 2021; beta_start and beta_end unused).
    """
    f64 = dict(dtype=torch.float64)
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, **f64)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, **f64) ** 2

    def abar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    N = num_train_timesteps
    return torch.tensor([min(1 - abar((n + 1) / N) / abar(n / N), 0.999) for n in range(N)], **f64)


@register_schedule
class VPDiscrete(Schedule):
    """DDPM's discrete schedule made continuous (Ho et al. 2020), DPM-Solver's convention for it
    (``NoiseScheduleVP("discrete")``, Lu et al. 2022).

    Training timestep n = 0..N-1, with ``abar_n = prod_{i<=n} (1 - beta_i)`` (``ddpm_betas``), sits at
    ``t_n = (n + 1) / N``; log alpha is piecewise linear in t through the knots ``(t_n, log(abar_n) / 2)``
    and continues its end segments outside ``[t_0, t_{N-1}]`` (held at alpha = 1 once that line reaches
    it, below t_0); sigma = sqrt(1 - alpha^2) (VP). So ``log_snr(t_n) = log(abar_n / (1 - abar_n))`` at
    every training timestep; on a segment ``f = d log alpha / dt = N (log alpha_{n+1} - log alpha_n)``
    (piecewise constant) and ``g2 = -2 f``. A network trained on it is fed the fractional timestep
    ``timestep(t) = N t - 1`` (n at t_n). t = 0 data, t = 1 noise; ``[t_min, t_max] = [1/N, 1]``, the
    first and last training timesteps. Parameters as diffusers names them (its defaults: DDPM's).
    """

    name = "vp_discrete"
    param_names = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        **interval,
    ):
        N = num_train_timesteps
        if isinstance(N, bool) or not isinstance(N, int) or N < 2:
            raise ValueError(f"vp_discrete: num_train_timesteps={N!r} must be an integer >= 2")
        if beta_schedule not in BETA_SCHEDULES:
            raise ValueError(
                f"vp_discrete: beta_schedule={beta_schedule!r} is not one of {', '.join(BETA_SCHEDULES)}"
            )
        for key, value in (("beta_start", beta_start), ("beta_end", beta_end)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ValueError(f"vp_discrete: {key}={value!r} must be a number in (0, 1)")
        if not beta_start <= beta_end:
            raise ValueError(f"vp_discrete: beta_start={beta_start} must not exceed beta_end={beta_end}")
        self.num_train_timesteps, self.beta_schedule = N, beta_schedule
        self.beta_start, self.beta_end = float(beta_start), float(beta_end)
        self.betas = ddpm_betas(N, self.beta_start, self.beta_end, beta_schedule)  # [N] float64
        log_abar = torch.cumsum(torch.log1p(-self.betas), 0)
        self.alphas_cumprod = torch.exp(log_abar)  # [N]
        t_n = torch.arange(1, N + 1, dtype=torch.float64) / N
        slope = torch.diff(log_abar / 2) * N
        # device -> (t_n, log alpha_n, slope of the segment from t_n on; the last one continued), each [N]
        self._knots = {"cpu": (t_n, log_abar / 2, torch.cat([slope, slope[-1:]]))}
        if interval.get("t_min") is None:
            interval["t_min"] = 1.0 / N
        super().__init__(**interval)

    def _on(self, device) -> tuple[Tensor, Tensor, Tensor]:
        key = str(device)
        if key not in self._knots:
            self._knots[key] = tuple(k.to(device) for k in self._knots["cpu"])
        return self._knots[key]

    def _segment(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(t64, j, log alpha, slope)``: t in float64, its segment j (the knot at or below it, clamped to
        0..N-1, so a knot is its own segment's start) and log alpha and d log alpha/dt there."""
        t64 = torch.as_tensor(t).to(torch.float64)
        t_n, log_alpha_n, slope_n = self._on(t64.device)
        j = torch.searchsorted(t_n, t64.detach().contiguous(), right=True) - 1
        j = j.clamp(0, self.num_train_timesteps - 1)
        slope = slope_n[j]
        log_alpha = log_alpha_n[j] + (t64 - t_n[j]) * slope
        held = log_alpha > 0  # below t_0, where the first segment's line passes alpha = 1
        return t64, j, log_alpha.masked_fill(held, 0.0), slope.masked_fill(held, 0.0)

    def _out(self, value: Tensor, t) -> Tensor:
        dtype = t.dtype if isinstance(t, Tensor) and t.is_floating_point() else torch.get_default_dtype()
        return value.to(dtype)

    def timestep(self, t: Tensor) -> Tensor:
        """The fractional diffusers timestep ``N t - 1`` a network trained on it is fed (n exactly at t_n)."""
        t64, j, _, _ = self._segment(t)
        t_n, _, _ = self._on(t64.device)
        return self._out(j + (t64 - t_n[j]) * self.num_train_timesteps, t)

    def t_from_timestep(self, n) -> Tensor:
        """``t_n = (n + 1) / N``, float64 (inverse of ``timestep``)."""
        return (torch.as_tensor(n, dtype=torch.float64) + 1) / self.num_train_timesteps

    @staticmethod
    def _sigma2(log_alpha: Tensor) -> Tensor:
        """``sigma^2 = 1 - alpha^2 = -expm1(2 log alpha)``, accurate near alpha = 1 (+0 at alpha = 1)."""
        return 0.0 - torch.expm1(2 * log_alpha)

    def alpha(self, t):
        return self._out(torch.exp(self._segment(t)[2]), t)

    def sigma(self, t):
        return self._out(torch.sqrt(self._sigma2(self._segment(t)[2])), t)

    def d_alpha(self, t):
        _, _, log_alpha, slope = self._segment(t)
        return self._out(slope * torch.exp(log_alpha), t)

    def d_sigma(self, t):
        _, _, log_alpha, slope = self._segment(t)  # d sigma = -alpha d_alpha / sigma = -alpha^2 f / sigma
        return self._out(-slope * torch.exp(2 * log_alpha) / torch.sqrt(self._sigma2(log_alpha)), t)

    def f(self, t):
        return self._out(self._segment(t)[3], t)

    def g2(self, t):
        return self._out(-2 * self._segment(t)[3], t)

    def log_snr(self, t):
        log_alpha = self._segment(t)[2]
        return self._out(2 * log_alpha - torch.log(self._sigma2(log_alpha)), t)

    def t_from_log_snr(self, lam):
        # VP: alpha^2 = sigmoid(lambda), so log alpha = -softplus(-lambda) / 2; then invert the segment
        lam64 = torch.as_tensor(lam).to(torch.float64)
        log_alpha = -_softplus(-lam64) / 2
        t_n, log_alpha_n, slope_n = self._on(lam64.device)
        # log alpha_n decreases in n: search its negation, which increases
        j = torch.searchsorted(-log_alpha_n, -log_alpha.detach().contiguous(), right=True) - 1
        j = j.clamp(0, self.num_train_timesteps - 1)
        return self._out(t_n[j] + (log_alpha - log_alpha_n[j]) / slope_n[j], lam)


def common_log_snr_range(*schedules: Schedule) -> tuple[float, float]:
    """``(lam_lo, lam_hi)``: the log-SNRs every one of ``schedules`` covers (``ValueError`` if none)."""
    ranges = [s.log_snr_range() for s in schedules]
    lo, hi = max(r[0] for r in ranges), min(r[1] for r in ranges)
    if not lo < hi:
        raise ValueError(f"no log-SNR is covered by all of {', '.join(map(repr, schedules))}")
    return lo, hi


_PREDICTIONS = registry("difflab.parametrization", "PREDICTIONS")
# ``schedule.<name>`` of the config: what ``schedule_from_config`` and training (its ``prediction``)
# read; ``params`` are the schedule's own, checked by building it (``config._check_schedules``)
SCHEDULE_FIELDS = {
    "params": Field(dict, nullable=True, optional=True),
    "prediction": Field(
        str, choices=_PREDICTIONS, nullable=True, optional=True, doc="null: the schedule's own"
    ),
}


def schedule_from_config(cfg: dict, name: str) -> Schedule:
    """The schedule ``name`` built with the composed config's ``schedule.<name>.params``."""
    return get_schedule(name, **dict((cfg["schedule"][name] or {}).get("params") or {}))


def get_schedule(name: str, **params) -> Schedule:
    """Build a schedule by name: one of ``SCHEDULES``. Unknown names/parameters raise ``ValueError``."""
    cls = schedule_class(name)
    own = _init_params(cls)
    allowed = {"t_min", "t_max"} | {p.name for p in own}
    named = {p.name for p in own if isinstance(p.default, str)}  # the rest take numbers
    for key, value in params.items():
        if key not in allowed:
            raise ValueError(
                f"unknown parameter {key!r} for schedule {name!r}; allowed: {', '.join(sorted(allowed))}"
            )
        if key in named:  # a choice by name (vp_discrete's beta_schedule): the class checks which
            if not isinstance(value, str):
                raise ValueError(f"schedule {name!r}: parameter {key}={value!r} must be a name (a string)")
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"schedule {name!r}: parameter {key}={value!r} must be a finite number")
    return cls(**params)


def _init_params(cls: type[Schedule]) -> list[inspect.Parameter]:
    """The named parameters of every ``__init__`` along ``cls``'s MRO (``self`` and ``**interval`` aside)."""
    return [
        p
        for klass in cls.__mro__
        if "__init__" in vars(klass)
        for p in inspect.signature(klass.__init__).parameters.values()
        if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD
    ]


def _check_positive(**values):
    for key, value in values.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{key}={value!r} must be a finite number > 0")


def _check_pair(schedule: str, **pair) -> tuple[float, float]:
    """``(lo, hi)`` of ``pair`` (``lo_name=lo, hi_name=hi``) as floats: both > 0 and ``lo < hi``."""
    _check_positive(**pair)
    (lo_name, lo), (hi_name, hi) = pair.items()
    if not lo < hi:
        raise ValueError(f"{schedule}: {lo_name}={lo} must be below {hi_name}={hi}")
    return float(lo), float(hi)


def _check_interval(t_min: float, t_max: float):
    if not (math.isfinite(t_min) and math.isfinite(t_max) and 0.0 <= t_min < t_max <= 1.0):
        raise ValueError(f"t_min={t_min}, t_max={t_max}: need 0 <= t_min < t_max <= 1")
