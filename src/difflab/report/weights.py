"""How each trained schedule was trained, and the weight its loss puts on each log-SNR.

A schedule enters training through its path ``x_t = alpha(t) x0 + sigma(t) eps``, the network's
target, the density of training times and the loss weighting (``training_design``, in the style of
Karras et al. 2022, Table 1), which together put a weight ``w(lambda)`` on each log-SNR
(``implied_weights``; Kingma & Gao 2023, "Understanding diffusion objectives as the ELBO with simple
data augmentation").
"""

from __future__ import annotations

import inspect
import math
from types import SimpleNamespace

import numpy as np
import torch

from difflab.losses import _TIME_DENSITIES, _WEIGHTINGS, DiffusionLoss, _keywords, target_slope2
from difflab.parametrization import SIGMA_DATA
from difflab.schedules import Schedule, get_schedule, schedule_class

HISTOGRAM_SAMPLES = 2**20  # training times drawn for a density without a closed form in log-SNR


# -- how each schedule was trained ---------------------------------------------------------------
def trained_schedule(cfg: dict, name: str) -> Schedule:
    """The schedule ``name`` with the config's ``schedule.<name>.params`` (as training builds it)."""
    section = (cfg.get("schedule") or {}).get(name) or {}
    return get_schedule(name, **dict(section.get("params") or {}))


def _prediction(cfg: dict, name: str) -> tuple[str, str]:
    """``(target, source)``: ``schedule.<name>.prediction`` where the config sets it, else the
    schedule's own (``Schedule.prediction``), as ``training.build_module`` chooses it."""
    own = ((cfg.get("schedule") or {}).get(name) or {}).get("prediction")
    return (own, "config") if own else (schedule_class(name).prediction, "schedule's own")


def _loss(cfg: dict, schedule: Schedule) -> DiffusionLoss:
    """The training loss of ``schedule``: its recipe with the config's ``loss`` section over it."""
    return DiffusionLoss.for_schedule(schedule, **(cfg.get("loss") or {}))


def _setting(cfg: dict, schedule: Schedule, key: str) -> str:
    """The loss's time density or weighting with the settings its function takes and where it comes
    from, e.g. ``lognormal (P_mean -1.2, P_std 1.2) (schedule's recipe)``."""
    settings = _loss(cfg, schedule).settings()
    fn = (_TIME_DENSITIES if key == "time_sampling" else _WEIGHTINGS)[settings[key]]
    shown = ", ".join(f"{k} {settings[k]:g}" for k in sorted(_keywords(fn)) if k in settings)
    source = "schedule's recipe" if key in schedule.loss_defaults else "loss default"
    source = "config" if (cfg.get("loss") or {}).get(key) is not None else source
    return settings[key] + (f" ({shown})" if shown else "") + f" ({source})"


def _path_formula(cls: type[Schedule]) -> str:
    """alpha(t) and sigma(t) as the class docstring states them: its second paragraph up to the
    derived drift (``; f = ...``), or the summary line where there is none."""
    paragraphs = [" ".join(p.split()) for p in (inspect.getdoc(cls) or "").split("\n\n") if p.strip()]
    return paragraphs[min(1, len(paragraphs) - 1)].split("; f")[0].rstrip(".; ") if paragraphs else ""


def _path_kind(schedule: Schedule) -> str:
    """What alpha and sigma satisfy on ``[t_min, t_max]``, checked on 65 times."""
    t = torch.linspace(schedule.t_min, schedule.t_max, 65, dtype=torch.float64)
    a, s = schedule.alpha(t), schedule.sigma(t)
    one = torch.ones_like(a)
    if torch.allclose(a, one):
        return "alpha = 1 (variance exploding)"
    if torch.allclose(a**2 + s**2, one, atol=1e-6):
        return "alpha^2 + sigma^2 = 1 (variance preserving)"
    return "alpha + sigma = 1 (straight path)" if torch.allclose(a + s, one) else ""


def _noise_range(s: Schedule) -> str:
    lo, hi = s.log_snr_range()
    return (f"sigma/alpha {math.exp(-hi / 2):.3g} to {math.exp(-lo / 2):.3g}, log-SNR {lo:.3g} to {hi:.3g} "
            f"(t in [{s.t_min:.3g}, {s.t_max:.3g}])")  # fmt: skip


def training_design(cfg: dict) -> list[dict]:
    """One row per trained schedule (``cfg["schedules"]``), Karras et al. (2022) Table 1 style:
    ``schedule``, ``parameters``, ``path`` (what alpha and sigma satisfy), ``alpha_sigma`` (the
    class docstring's formula), ``noise_range``, ``prediction``, ``time_sampling`` and ``weighting``
    (each with where it comes from: config, the schedule's own or recipe, the loss default),
    ``network``, ``max_steps``, ``seeds``; read from the schedule and ``DiffusionLoss.for_schedule``
    as training builds them."""
    net = dict(cfg.get("denoiser") or {})
    name = net.pop("name", "?")
    network = f"{name} ({', '.join(f'{k} {v}' for k, v in net.items())})" if net else str(name)
    common = {"network": network, "max_steps": (cfg.get("trainer") or {}).get("max_steps"),
              "seeds": " ".join(map(str, cfg.get("seeds") or [cfg.get("seed", "")]))}  # fmt: skip
    out = []
    for name in cfg["schedules"]:
        s = trained_schedule(cfg, name)
        params = {k: v for k, v in s.params().items() if k not in ("name", "t_min", "t_max")}
        row = {"schedule": name, "parameters": ", ".join(f"{k} {v:g}" for k, v in params.items())}
        row.update(path=_path_kind(s), alpha_sigma=_path_formula(type(s)), noise_range=_noise_range(s))
        row.update(prediction="{} ({})".format(*_prediction(cfg, name)), **common)
        out.append(row | {k: _setting(cfg, s, k) for k in ("time_sampling", "weighting")})
    return out


# -- the weight the loss puts on each log-SNR ----------------------------------------------------
def _dt_dlam(schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    """``dt / d lambda`` at ``t`` (float64), by autograd through ``log_snr``."""
    with torch.enable_grad():
        tt = t.detach().clone().requires_grad_(True)
        (dlam,) = torch.autograd.grad(schedule.log_snr(tt).sum(), tt)
    return 1 / dlam


def _uniform_t(schedule, loss, lam, t):
    """t uniform on [t_min, t_max]: ``p(lambda) = |dt / d lambda| / (t_max - t_min)``."""
    return _dt_dlam(schedule, t).abs() / (schedule.t_max - schedule.t_min)


def _uniform_lam(schedule, loss, lam, t):
    """lambda uniform between the interval's ends: ``1 / (lam_hi - lam_lo)``."""
    lam_lo, lam_hi = schedule.log_snr_range()
    return torch.full_like(lam, 1 / (lam_hi - lam_lo))


def _normal_lam(schedule, loss, lam, t):
    """``ln(sigma/alpha) ~ N(P_mean, P_std^2)``, so ``lambda ~ N(-2 P_mean, (2 P_std)^2)``."""
    mean, sd = -2 * loss.P_mean, 2 * loss.P_std
    return torch.exp(-0.5 * ((lam - mean) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))


# Closed forms of the log-SNR density for ``losses.TIME_SAMPLINGS``; any other density is histogrammed.
LOG_SNR_DENSITIES = {
    "stratified": _uniform_t,
    "uniform": _uniform_t,
    "logsnr": _uniform_lam,
    "lognormal": _normal_lam,
}


def _histogram_density(schedule: Schedule, loss: DiffusionLoss, lam: torch.Tensor) -> torch.Tensor:
    """``p(lambda)`` from ``HISTOGRAM_SAMPLES`` training times of ``loss.sample_times`` (fixed
    generator), linearly interpolated between the bin centres; times clamped onto the interval's
    ends (point masses) are left out."""
    g = torch.Generator().manual_seed(0)
    t = loss.sample_times(schedule, HISTOGRAM_SAMPLES, generator=g)
    inside = (t > np.float32(schedule.t_min)) & (t < np.float32(schedule.t_max))
    lam_s = schedule.log_snr(t[inside].double()).numpy()
    lam_lo, lam_hi = schedule.log_snr_range()
    counts, edges = np.histogram(lam_s, bins=200, range=(lam_lo, lam_hi))
    density = counts / (HISTOGRAM_SAMPLES * np.diff(edges))
    return torch.from_numpy(np.interp(lam.numpy(), (edges[:-1] + edges[1:]) / 2, density))


def _at(schedule: Schedule, lam) -> tuple[torch.Tensor, torch.Tensor]:
    """``lam`` as float64 and the times of it clamped into the schedule's range."""
    lam = torch.as_tensor(np.asarray(lam, dtype=np.float64))
    t = schedule.t_from_log_snr(lam.clamp(*schedule.log_snr_range()))
    return lam, t.clamp(schedule.t_min, schedule.t_max)


def log_snr_density(schedule: Schedule, loss: DiffusionLoss, lam) -> np.ndarray:
    """``p(lambda)``: the density of ``lambda = log_snr(t)`` for t from ``loss``'s time density, by
    change of variables (``LOG_SNR_DENSITIES``) or a histogram of ``loss.sample_times``; 0 outside
    the schedule's log-SNR range. The lognormal density's tails, which training clamps onto the
    interval's ends, are point masses there and not part of it."""
    lam, t = _at(schedule, lam)
    lam_lo, lam_hi = schedule.log_snr_range()
    inside = (lam >= lam_lo) & (lam <= lam_hi)
    closed = LOG_SNR_DENSITIES.get(loss.time_sampling)
    p = closed(schedule, loss, lam, t) if closed else _histogram_density(schedule, loss, lam)
    return torch.where(inside, p, torch.zeros_like(p)).numpy()


def eps_weight(schedule: Schedule, loss: DiffusionLoss, prediction: str, lam) -> np.ndarray:
    """The loss's weight at ``lambda`` restated on the eps-MSE: ``loss.weight`` (on the target's MSE)
    times ``k^2 / snr`` (``losses.target_slope2``: the target's MSE is ``k^2`` times the x0-MSE, the
    eps-MSE ``snr`` times it)."""
    _, t = _at(schedule, lam)
    denoiser = SimpleNamespace(schedule=schedule, prediction=prediction, sigma_data=SIGMA_DATA)
    w = loss.weight(denoiser, t) * target_slope2(prediction, schedule, t) / schedule.log_snr(t).exp()
    return w.numpy()


def implied_weights(cfg: dict, lam) -> dict[str, np.ndarray]:
    """For each trained schedule, ``w(lambda)`` with its training loss equal to

        L = int w(lambda) E_{x0, eps} ||eps - eps_hat(x_lambda)||^2 d lambda      (Kingma & Gao 2023)

    ``w = p(lambda) * loss weight * k^2 / snr`` (``log_snr_density`` times ``eps_weight``), at the
    log-SNRs ``lam`` (any shape; 0 outside the schedule's range). Not normalised."""
    out = {}
    for name in cfg["schedules"]:
        schedule = trained_schedule(cfg, name)
        loss, (prediction, _) = _loss(cfg, schedule), _prediction(cfg, name)
        out[name] = log_snr_density(schedule, loss, lam) * eps_weight(schedule, loss, prediction, lam)
    return out
