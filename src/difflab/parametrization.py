"""One denoiser contract: every network output type becomes ``D(x, t) ~ E[x0 | x_t = x]``.

With ``x = alpha x0 + sigma eps`` (t = 0 data, t = 1 noise) the prediction types are

    "x0"        x0
    "eps"       eps = (x - alpha x0) / sigma
    "v"         v = alpha eps - sigma x0                      (Salimans & Ho 2022)
    "velocity"  u = d x_t / dt = alpha' x0 + sigma' eps       (flow matching)
    "score"     grad log p_t(x) = (alpha x0 - x) / sigma^2     (Tweedie)
    "edm"       F with D = c_skip x/alpha + c_out F           (Karras et al. 2022, preconditioned x0)

``Denoiser`` wraps a network into D; solvers only ever see D.
"""

from __future__ import annotations

import warnings

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

    @property
    def num_classes(self) -> int:
        """The network's classes (0: unconditional; when conditional, label ``num_classes`` is the null
        label of classifier-free guidance)."""
        return int(getattr(self.net, "num_classes", 0))

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


def reparametrize(denoiser, trained_on: Schedule, target: Schedule, *, clamp: bool = False) -> Reparametrized:
    """A denoiser of schedule ``trained_on`` serving schedule ``target`` exactly, by log-SNR matching:

        D_target(x, t) = D(x * alpha_trained(t') / alpha_target(t), t')
        with log_snr_trained(t') = log_snr_target(t)

    (under ``target``, ``x = alpha_T x0 + sigma_T eps``; rescaled it is ``alpha_tr(t') x0 + sigma_tr(t') eps``
    because ``sigma/alpha`` agree at equal log-SNR: the trained schedule's x at t'; Kingma et al. 2021,
    sec. 4; Karras et al. 2022, eq. 4). A target log-SNR outside the trained ``[log_snr(t_max),
    log_snr(t_min)]`` raises ``ValueError`` naming the range, or with ``clamp=True`` uses the nearest
    end, warns once and sets ``.clamped``. ``servable_interval(trained_on, target)`` gives the target
    times that stay exact.
    """
    return Reparametrized(denoiser, trained_on, target, clamp=clamp)


def servable_interval(trained_on: Schedule, target: Schedule) -> tuple[float, float]:
    """``(t_lo, t_hi)``: the part of ``target``'s ``[t_min, t_max]`` whose log-SNR ``trained_on`` covers
    (``ValueError`` when none); ``target.with_log_snr_range(*trained_on.log_snr_range())`` is the
    target restricted to it."""
    restricted = target.with_log_snr_range(*trained_on.log_snr_range())
    return restricted.t_min, restricted.t_max


def _same_path(a: Schedule, b: Schedule) -> bool:
    """Same class and parameters (intervals aside): alpha and sigma are the same functions of t."""
    interval = ("t_min", "t_max")
    strip = lambda s: {k: v for k, v in s.params().items() if k not in interval}  # noqa: E731
    return type(a) is type(b) and strip(a) == strip(b)


class Reparametrized(nn.Module):
    """``D_target(x, t, cond)`` from a denoiser of ``trained_on`` (see ``reparametrize``).

    Attributes: ``denoiser`` (the wrapped one), ``trained_on``, ``schedule`` (the target, as on
    ``Denoiser``), ``clamp`` and ``clamped`` (whether a call has been clamped). Where the two schedules
    trace the same path (same class and parameters) the wrapped denoiser is called unchanged.
    """

    def __init__(self, denoiser, trained_on: Schedule, target: Schedule, *, clamp: bool = False):
        super().__init__()
        own = getattr(denoiser, "schedule", None)
        if isinstance(own, Schedule) and own.params() != trained_on.params():
            raise ValueError(f"reparametrize: the denoiser was trained on {own!r}, not {trained_on!r}")
        self.denoiser, self.trained_on, self.schedule = denoiser, trained_on, target
        self.clamp, self.clamped = bool(clamp), False
        self.lam_lo, self.lam_hi = trained_on.log_snr_range()
        self._identity = _same_path(trained_on, target)
        # the same path over a sub-interval: every call is the wrapped denoiser's own, nothing to check
        self._passthrough = (
            self._identity and trained_on.t_min <= target.t_min and target.t_max <= trained_on.t_max
        )

    def extra_repr(self) -> str:
        return f"trained_on={self.trained_on!r}, schedule={self.schedule!r}, clamp={self.clamp}"

    def trained_time(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(t', alpha_trained(t') / alpha_target(t))`` for target times ``t`` (any shape, t's dtype)."""
        lam = self.schedule.log_snr(t)
        self._check_range(t, lam)
        if self._identity:
            return t, torch.ones_like(t)
        lam = lam.clamp(self.lam_lo, self.lam_hi)
        t_trained = self.trained_on.t_from_log_snr(lam).clamp(self.trained_on.t_min, self.trained_on.t_max)
        return t_trained, self.trained_on.alpha(t_trained) / self.schedule.alpha(t)

    def _check_range(self, t: Tensor, lam: Tensor) -> None:
        # roundoff of log_snr and its inverse (a log-SNR 1e-9 beyond the range is no extrapolation)
        tol = max(1e-9, 100 * torch.finfo(lam.dtype).eps) * (1 + lam.abs())
        outside = (lam < self.lam_lo - tol) | (lam > self.lam_hi + tol)
        if lam.isnan().any():
            raise ValueError(f"reparametrize: log-SNR is NaN under {self.schedule!r} at t={t.tolist()}")
        if not outside.any():
            return
        bad = t[outside]
        where = (
            f"reparametrize: {self.schedule!r} at t in [{bad.min().item():.6g}, {bad.max().item():.6g}] "
            f"needs log-SNR outside [{self.lam_lo:.6g}, {self.lam_hi:.6g}], the range of {self.trained_on!r}"
        )
        if not self.clamp:
            try:
                t_lo, t_hi = servable_interval(self.trained_on, self.schedule)
                hint = f"exact for t in [{t_lo:.6g}, {t_hi:.6g}]"
            except ValueError:
                hint = "no time of the target is inside it"
            raise ValueError(f"{where} ({hint}); pass clamp=True to use the nearest end instead")
        if not self.clamped:
            warnings.warn(f"{where}: clamped to the nearest end (not exact there)", stacklevel=4)
        self.clamped = True

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        if self._passthrough:
            return self.denoiser(x, t, cond)
        t_trained, scale = self.trained_time(t)
        if self._identity:
            return self.denoiser(x, t, cond)
        return self.denoiser(x * _bcast(scale, x), t_trained, cond)
