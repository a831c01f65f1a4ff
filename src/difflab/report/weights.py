"""How each trained schedule was trained (``training_design``, in the style of Karras et al. 2022,
Table 1) and the weight its loss puts on each log-SNR (``implied_weights``; the equation is
``losses.implied_weight``, Kingma & Gao 2023)."""

from __future__ import annotations

import inspect
import math

import numpy as np
import torch

from difflab.losses import DiffusionLoss, implied_weight
from difflab.schedules import Schedule, schedule_class, schedule_from_config


def _prediction(cfg: dict, name: str) -> tuple[str, str]:
    """``(target, source)``: ``schedule.<name>.prediction`` where the config sets it, else the
    schedule's own (``Schedule.prediction``), as ``training.build_module`` chooses it."""
    own = (cfg["schedule"][name] or {}).get("prediction")
    return (own, "config") if own else (schedule_class(name).prediction, "schedule's own")


def _loss(cfg: dict, schedule: Schedule) -> DiffusionLoss:
    """The training loss of ``schedule``: its recipe with the config's ``loss`` section over it."""
    return DiffusionLoss.for_schedule(schedule, **(cfg.get("loss") or {}))


def _setting(cfg: dict, schedule: Schedule, key: str) -> str:
    """The loss's time density or weighting with the settings it takes and where it comes from, e.g.
    ``lognormal (P_mean -1.2, P_std 1.2, P_uniform 0) (schedule's recipe)``."""
    loss = _loss(cfg, schedule)
    shown = ", ".join(f"{k} {v:g}" for k, v in sorted(loss.parameters(key).items()))
    source = "schedule's recipe" if key in schedule.loss_defaults else "loss default"
    source = "config" if (cfg.get("loss") or {}).get(key) is not None else source
    return getattr(loss, key) + (f" ({shown})" if shown else "") + f" ({source})"


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
    """One row per trained schedule (``cfg["schedules"]``): ``schedule``, ``parameters``, ``path``
    (what alpha and sigma satisfy), ``alpha_sigma`` (the class docstring's formula), ``noise_range``,
    ``prediction``, ``time_sampling`` and ``weighting`` (each with where it comes from: config, the
    schedule's own or recipe, the loss default), ``network``, ``max_steps``, ``seeds``; read from the
    schedule and ``DiffusionLoss.for_schedule`` as training builds them."""
    net = dict(cfg.get("denoiser") or {})
    name = net.pop("name", "?")
    network = f"{name} ({', '.join(f'{k} {v}' for k, v in net.items())})" if net else str(name)
    common = {"network": network, "max_steps": (cfg.get("trainer") or {}).get("max_steps"),
              "seeds": " ".join(map(str, cfg.get("seeds") or [cfg.get("seed", "")]))}  # fmt: skip
    out = []
    for name in cfg["schedules"]:
        s = schedule_from_config(cfg, name)
        params = {k: v for k, v in s.params().items() if k not in ("name", "t_min", "t_max")}
        shown = (f"{k} {v:g}" if isinstance(v, float | int) else f"{k} {v}" for k, v in params.items())
        row = {"schedule": name, "parameters": ", ".join(shown)}
        row.update(path=_path_kind(s), alpha_sigma=_path_formula(type(s)), noise_range=_noise_range(s))
        row.update(prediction="{} ({})".format(*_prediction(cfg, name)), **common)
        out.append(row | {k: _setting(cfg, s, k) for k in ("time_sampling", "weighting")})
    return out


def implied_weights(cfg: dict, lam) -> dict[str, np.ndarray]:
    """For each trained schedule, ``losses.implied_weight`` of its training loss and target at the
    log-SNRs ``lam`` (any shape; 0 outside the schedule's range)."""
    out = {}
    for name in cfg["schedules"]:
        schedule = schedule_from_config(cfg, name)
        weight = implied_weight(schedule, _loss(cfg, schedule), _prediction(cfg, name)[0], lam)
        out[name] = weight.numpy()
    return out
