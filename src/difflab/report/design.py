"""The report's "Training or sampling?" section: what each schedule changes through training, and what
it changes through sampling.

A schedule enters a comparison twice. Through training: its path ``x_t = alpha(t) x0 + sigma(t) eps``,
the network's target, the density of training times and the loss weighting (``training_design``, in
the style of Karras et al. 2022, Table 1), which together put a weight ``w(lambda)`` on each log-SNR
(``implied_weights``; Kingma & Gao 2023, "Understanding diffusion objectives as the ELBO with simple
data augmentation"). Through sampling: a solver that steps in t sees the schedule's parametrisation of
time (``cross_schedules``: every trained network under every sampling schedule), while a solver that
steps in log-SNR or in EDM's variables does not (``invariance_marks``: the measured differences). The
time grid is the third choice (``grid_effect``).

Rows are the report's (one per setting, aggregated over seeds); rows of older tables may lack
``sample_schedule`` (= ``schedule``), ``grid`` (one grid) and ``invariance_error`` (not measured).
"""

from __future__ import annotations

import html
import inspect
import math
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from difflab.losses import _TIME_DENSITIES, _WEIGHTINGS, DiffusionLoss, _keywords, target_slope2
from difflab.parametrization import SIGMA_DATA
from difflab.report.analysis import ADAPTIVE_STEPS, row_id
from difflab.schedules import Schedule, get_schedule, schedule_class
from difflab.solvers import GRIDS

# Largest max |dx| (images in [-1, 1]) that still counts as "the same samples"; see invariance_marks.
INVARIANCE_TOL = 1e-3
HISTOGRAM_SAMPLES = 2**20  # training times drawn for a density without a closed form in log-SNR


# -- how each schedule was trained ---------------------------------------------------------------
def _schedule(cfg: dict, name: str) -> Schedule:
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


def _source(cfg: dict, schedule: Schedule, key: str) -> str:
    if (cfg.get("loss") or {}).get(key) is not None:
        return "config"
    return "schedule's recipe" if key in schedule.loss_defaults else "loss default"


def _with_params(kind: str, fn, settings: dict) -> str:
    """``kind`` and the settings its function takes, e.g. ``lognormal (P_mean -1.2, P_std 1.2)``."""
    shown = [f"{k} {settings[k]:g}" for k in sorted(_keywords(fn)) if k in settings]
    return f"{kind} ({', '.join(shown)})" if shown else kind


def _path_formula(cls: type[Schedule]) -> str:
    """alpha(t) and sigma(t) as the class docstring states them: its second paragraph up to the
    derived drift (``; f = ...``), or the summary line where there is none."""
    paragraphs = [" ".join(p.split()) for p in (inspect.getdoc(cls) or "").split("\n\n") if p.strip()]
    if not paragraphs:
        return ""
    body = paragraphs[1] if len(paragraphs) > 1 else paragraphs[0]
    return body.split("; f")[0].rstrip(".; ")


def _path_kind(schedule: Schedule) -> str:
    """What alpha and sigma satisfy on ``[t_min, t_max]``, checked on 65 times."""
    t = torch.linspace(schedule.t_min, schedule.t_max, 65, dtype=torch.float64)
    a, s = schedule.alpha(t), schedule.sigma(t)
    if torch.allclose(a, torch.ones_like(a)):
        return "alpha = 1 (variance exploding)"
    if torch.allclose(a**2 + s**2, torch.ones_like(a), atol=1e-6):
        return "alpha^2 + sigma^2 = 1 (variance preserving)"
    if torch.allclose(a + s, torch.ones_like(a)):
        return "alpha + sigma = 1 (straight path)"
    return ""


def _network(cfg: dict) -> str:
    net = dict(cfg.get("denoiser") or {})
    name = net.pop("name", "?")
    return f"{name} ({', '.join(f'{k} {v}' for k, v in net.items())})" if net else str(name)


def training_design(cfg: dict) -> list[dict]:
    """One row per trained schedule (``cfg["schedules"]``), Karras et al. (2022) Table 1 style:
    ``schedule``, ``parameters``, ``path`` (what alpha and sigma satisfy), ``alpha_sigma`` (the
    class docstring's formula), ``noise_range`` (sigma/alpha and log-SNR over ``[t_min, t_max]``),
    ``prediction`` (+ ``prediction_source``), ``time_sampling`` and ``weighting`` (with their
    parameters; + ``*_source``: config, the schedule's recipe or the loss default), ``network``,
    ``max_steps``, ``seeds``. Everything is read from the schedule and
    ``DiffusionLoss.for_schedule(schedule, **cfg["loss"]).settings()``, as training builds them."""
    seeds = cfg.get("seeds") or ([cfg["seed"]] if "seed" in cfg else [])
    out = []
    for name in cfg["schedules"]:
        schedule = _schedule(cfg, name)
        settings = _loss(cfg, schedule).settings()
        prediction, prediction_source = _prediction(cfg, name)
        lam_lo, lam_hi = schedule.log_snr_range()
        params = {k: v for k, v in schedule.params().items() if k not in ("name", "t_min", "t_max")}
        out.append(
            {
                "schedule": name,
                "parameters": ", ".join(f"{k} {v:g}" for k, v in params.items()),
                "path": _path_kind(schedule),
                "alpha_sigma": _path_formula(type(schedule)),
                "noise_range": f"sigma/alpha {math.exp(-lam_hi / 2):.3g} to {math.exp(-lam_lo / 2):.3g}, "
                f"log-SNR {lam_lo:.3g} to {lam_hi:.3g} (t in [{schedule.t_min:.3g}, {schedule.t_max:.3g}])",
                "prediction": prediction,
                "prediction_source": prediction_source,
                "time_sampling": _with_params(
                    settings["time_sampling"], _TIME_DENSITIES[settings["time_sampling"]], settings
                ),
                "time_sampling_source": _source(cfg, schedule, "time_sampling"),
                "weighting": _with_params(
                    settings["weighting"], _WEIGHTINGS[settings["weighting"]], settings
                ),
                "weighting_source": _source(cfg, schedule, "weighting"),
                "network": _network(cfg),
                "max_steps": (cfg.get("trainer") or {}).get("max_steps"),
                "seeds": " ".join(map(str, seeds)),
            }
        )
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


def _histogram_density(
    schedule: Schedule, loss: DiffusionLoss, lam: torch.Tensor, bins: int = 200
) -> torch.Tensor:
    """``p(lambda)`` from ``HISTOGRAM_SAMPLES`` training times of ``loss.sample_times`` (fixed
    generator), linearly interpolated between the bin centres; times clamped onto the interval's
    ends (point masses) are left out."""
    g = torch.Generator().manual_seed(0)
    t = loss.sample_times(schedule, HISTOGRAM_SAMPLES, generator=g)
    inside = (t > np.float32(schedule.t_min)) & (t < np.float32(schedule.t_max))
    lam_s = schedule.log_snr(t[inside].double()).numpy()
    lam_lo, lam_hi = schedule.log_snr_range()
    counts, edges = np.histogram(lam_s, bins=bins, range=(lam_lo, lam_hi))
    density = counts / (HISTOGRAM_SAMPLES * np.diff(edges))
    return torch.from_numpy(np.interp(lam.numpy(), (edges[:-1] + edges[1:]) / 2, density))


def log_snr_density(schedule: Schedule, loss: DiffusionLoss, lam) -> np.ndarray:
    """``p(lambda)``: the density of ``lambda = log_snr(t)`` for t from ``loss``'s time density, by
    change of variables (``LOG_SNR_DENSITIES``) or a histogram of ``loss.sample_times``; 0 outside
    the schedule's log-SNR range. The lognormal density's tails, which training clamps onto the
    interval's ends, are point masses there and not part of it."""
    lam = torch.as_tensor(np.asarray(lam, dtype=np.float64))
    lam_lo, lam_hi = schedule.log_snr_range()
    inside = (lam >= lam_lo) & (lam <= lam_hi)
    t = schedule.t_from_log_snr(lam.clamp(lam_lo, lam_hi)).clamp(schedule.t_min, schedule.t_max)
    closed = LOG_SNR_DENSITIES.get(loss.time_sampling)
    p = closed(schedule, loss, lam, t) if closed else _histogram_density(schedule, loss, lam)
    return torch.where(inside, p, torch.zeros_like(p)).numpy()


def eps_weight(schedule: Schedule, loss: DiffusionLoss, prediction: str, lam) -> np.ndarray:
    """The loss's weight at ``lambda`` restated on the eps-MSE: ``loss.weight`` (on the target's MSE)
    times ``k^2 / snr`` (``losses.target_slope2``: the target's MSE is ``k^2`` times the x0-MSE, the
    eps-MSE ``snr`` times it)."""
    lam = torch.as_tensor(np.asarray(lam, dtype=np.float64))
    lam_lo, lam_hi = schedule.log_snr_range()
    t = schedule.t_from_log_snr(lam.clamp(lam_lo, lam_hi)).clamp(schedule.t_min, schedule.t_max)
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
        schedule = _schedule(cfg, name)
        loss = _loss(cfg, schedule)
        prediction, _ = _prediction(cfg, name)
        out[name] = log_snr_density(schedule, loss, lam) * eps_weight(schedule, loss, prediction, lam)
    return out


LOSS_WEIGHT_CAPTION = (
    "The weight w(lambda) each schedule's training loss puts on the eps-MSE at log-SNR lambda "
    "(Kingma & Gao 2023: L = integral of w(lambda) E||eps - eps_hat||^2 d lambda): the density of lambda "
    "under the training time density, times the loss weighting, times the factor turning the target's MSE "
    "into the eps-MSE. Each curve is divided by its largest value (log scale); log-SNR increases to the "
    "right (noise on the left, data on the right). The lognormal density's tails, clamped onto the "
    "interval's ends in training, are point masses there and not drawn."
)


def loss_weight_plot(cfg: dict, path) -> Path:
    """All trained schedules' ``implied_weights`` on one log-SNR axis, each divided by its maximum."""
    import matplotlib.pyplot as plt

    from difflab.report.plots import _save

    ranges = [_schedule(cfg, n).log_snr_range() for n in cfg["schedules"]]
    lam = np.linspace(min(r[0] for r in ranges), max(r[1] for r in ranges), 600)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    cmap = plt.get_cmap("tab10")
    for i, (name, w) in enumerate(implied_weights(cfg, lam).items()):
        top = w.max()
        y = np.where(w > 0, w / top, np.nan) if top > 0 else np.full_like(w, np.nan)
        ax.plot(lam, y, color=cmap(i % 10), lw=1.6, label=name)
    ax.set_yscale("log")
    ax.set_ylim(1e-4, 2)
    ax.set_xlabel("log-SNR lambda (noise  <-  ->  data)")
    ax.set_ylabel("w(lambda) / max")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, title="training schedule")
    ax.set_title("Weight of the training loss on each log-SNR (eps-MSE convention)")
    return _save(fig, path)


# -- sampling: schedule-invariant solvers --------------------------------------------------------
def _sample_schedule(r: dict) -> str:
    return r.get("sample_schedule") or r["schedule"]


def invariance_marks(rows: Sequence[dict], families: dict[str, dict], tol: float = INVARIANCE_TOL) -> dict:
    """Marks for the rows of schedule-invariant solvers: their ``invariance_error`` (the largest
    ``|dx|`` between a trained network's samples under this sampling schedule and under every other,
    same noise) is "identical within tol", "NOT identical" (above tol or not finite) or "not measured".

    ``tol = 1e-3`` for float32 networks and images in [-1, 1]. Exactly, the samples agree: a log-SNR
    matched under two schedules gives the network the same input (``c_in x`` and log-SNR), so they can
    differ only by round-off. On CPU that is float64 round-off in the solver: an untrained float32 MLP
    served as a vp_linear, flow or ve denoiser and reparametrized to the other four gives max |dx| of
    1e-15 to 1e-12 with ddim, dpm_solver_2m, heun_edm and unipc at 20 steps on the logsnr grid. On a GPU,
    cuDNN's TF32 convolutions (PyTorch's default) round the network's input to 10 mantissa bits, so a
    last-bit difference can flip a rounding; that is not measured here. 1e-3 is an eighth of one 8-bit
    level (2/255 = 7.8e-3): below it a saved pixel moves by at most one level, only at a rounding
    boundary, and FID cannot move measurably, while a real dependence on the schedule shows far above
    it (the grid uniform in t in the same test, as the ve denoiser: 0.9 to 3.4).

    Returns ``dict(tol, rows: [dict(row, id, invariance_error, mark)], by_solver: [dict(solver, grid,
    group, n_rows, n_measured, n_above, max_error, worst, mark)])``, one summary per solver and grid (a
    grid uniform in t puts its times at schedule-dependent log-SNRs: no invariance is expected there)."""
    marked = []
    for r in rows:
        fam = families.get(r["solver"])
        if not fam or not fam["schedule_invariant"]:
            continue
        err = r.get("invariance_error")
        if err is None:
            mark = "not measured"
        elif math.isfinite(err) and err <= tol:
            mark = "identical within tol"
        else:
            mark = "NOT identical"
        marked.append({"row": r, "id": row_id(r), "invariance_error": err, "mark": mark})
    by_solver = []
    keys = dict.fromkeys((m["row"]["solver"], m["row"].get("grid")) for m in marked)
    order = {g: i for i, g in enumerate(GRIDS)}
    for name, grid in sorted(keys, key=lambda k: (list(families).index(k[0]), order.get(k[1], len(order)))):
        mine = [m for m in marked if (m["row"]["solver"], m["row"].get("grid")) == (name, grid)]
        measured = [m for m in mine if m["invariance_error"] is not None]
        worst = max(measured, key=lambda m: _finite_or_inf(m["invariance_error"]), default=None)
        above = sum(m["mark"] == "NOT identical" for m in measured)
        by_solver.append(
            {
                "solver": name,
                "grid": grid,
                "group": families[name]["group"],
                "n_rows": len(mine),
                "n_measured": len(measured),
                "n_above": above,
                "max_error": None if worst is None else worst["invariance_error"],
                "worst": None if worst is None else worst["id"],
                "mark": "not measured"
                if not measured
                else "NOT identical"
                if above
                else "identical within tol",
            }
        )
    return {"tol": tol, "rows": marked, "by_solver": by_solver}


def _finite_or_inf(v: float) -> float:
    return v if math.isfinite(v) else math.inf


def invariance_text(marks: dict) -> str:
    """One sentence on the marks."""
    measured = [m for m in marks["rows"] if m["invariance_error"] is not None]
    if not marks["rows"]:
        return "No schedule-invariant solver was run."
    if not measured:
        return (
            f"The {len(marks['rows'])} rows of schedule-invariant solvers carry no invariance_error "
            "(not measured: sample.invariance_samples = 0, or a table from before it)."
        )
    bad = [m for m in measured if m["mark"] == "NOT identical"]
    top = max(_finite_or_inf(m["invariance_error"]) for m in measured)
    text = (
        f"Of {len(measured)} measured rows of schedule-invariant solvers, {len(measured) - len(bad)} give "
        f"samples identical within {marks['tol']:g} (max |dx|, images in [-1, 1]) under every sampling "
        f"schedule; the largest difference is {top:.3g}."
    )
    if bad:
        worst = max(bad, key=lambda m: _finite_or_inf(m["invariance_error"]))
        text += f" {len(bad)} are NOT identical, the worst {worst['id']} ({worst['invariance_error']:.3g})."
    return text


# -- sampling: t-stepping solvers under every sampling schedule -----------------------------------
def _guidance_slice(rows: Sequence[dict]) -> tuple[list[dict], float | None]:
    """The unguided rows, or those at the smallest guidance scale where every row is guided."""
    scales = {r.get("guidance_scale") for r in rows}
    w = None if None in scales or not scales else min(scales)
    return [r for r in rows if r.get("guidance_scale") == w], w


def _main_grid(rows: Sequence[dict]) -> str | None:
    """The grid with the most rows (ties: ``GRIDS`` order); None for rows without one."""
    grids = [r.get("grid") for r in rows]
    order = {g: i for i, g in enumerate(GRIDS)}
    return min(set(grids), key=lambda g: (-grids.count(g), order.get(g, len(order)), str(g)))


def _in_order(values, first: Sequence[str] = ()) -> list:
    values = list(dict.fromkeys(values))
    return [v for v in first if v in values] + [v for v in values if v not in first]


def cross_schedules(rows: Sequence[dict], families: dict[str, dict], nfe: float | None = None) -> list[dict]:
    """One panel per t-stepping solver (``schedule_invariant`` False, in ``families`` order: fixed-step
    ODE first) that has rows off the diagonal: the FID of every training schedule (``train``) under
    every sampling schedule (``sample``) at one step count for all cells, the one whose NFE is closest
    to ``nfe`` or, by default, the middle of the step counts the most cells hold (the lower one of
    two); on its most common grid, unguided where there are unguided rows.

    Each panel: ``dict(solver, steps, nfe, grid, guidance_scale, train, sample, fid: [n_train][n_sample]
    (nan where missing), cells: {(train, sample): row})``."""
    pool, w = _guidance_slice(rows)
    panels = []
    for name, fam in families.items():
        if fam["schedule_invariant"] or fam["adaptive"]:
            continue
        mine = [r for r in pool if r["solver"] == name and r["steps"] != ADAPTIVE_STEPS]
        if not any(_sample_schedule(r) != r["schedule"] for r in mine):
            continue
        grid = _main_grid(mine)
        mine = [r for r in mine if r.get("grid") == grid]
        train = _in_order(r["schedule"] for r in mine)
        sample = _in_order((_sample_schedule(r) for r in mine), train)
        cells_per_steps: dict[int, set] = {}
        for r in mine:
            cells_per_steps.setdefault(r["steps"], set()).add((r["schedule"], _sample_schedule(r)))
        most = max(len(c) for c in cells_per_steps.values())
        candidates = sorted(k for k, c in cells_per_steps.items() if len(c) == most)
        if nfe is None:
            steps = candidates[(len(candidates) - 1) // 2]
        else:
            nfe_of = {r["steps"]: r["nfe"] for r in mine}
            steps = min(candidates, key=lambda k: (abs(nfe_of[k] - nfe), k))
        cells = {(r["schedule"], _sample_schedule(r)): r for r in mine if r["steps"] == steps}
        fid = [[cells[(a, b)]["fid"] if (a, b) in cells else math.nan for b in sample] for a in train]
        panels.append(
            {
                "solver": name,
                "steps": steps,
                "nfe": next(iter(cells.values()))["nfe"],
                "grid": grid,
                "guidance_scale": w,
                "train": train,
                "sample": sample,
                "fid": fid,
                "cells": cells,
            }
        )
    return panels


CROSS_CAPTION = (
    "t-stepping solvers: FID of each trained network (rows) under each sampling schedule (columns; the "
    "network reparametrized to it by log-SNR matching) at one step count per panel, the same for all "
    "cells. Boxed: the network's own schedule (the diagonal); *: the lowest FID of the row."
)


def cross_heatmap(
    rows: Sequence[dict], path, families: dict[str, dict], nfe: float | None = None
) -> Path | None:
    """The ``cross_schedules`` panels as annotated heat maps (colour: log FID); None without rows off
    the diagonal."""
    panels = cross_schedules(rows, families, nfe)
    if not panels:
        return None
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    from difflab.report.plots import _save

    n = len(panels)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    width = max(1.1 * max(len(p["sample"]) for p in panels) + 2.0, 4.0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, 0.9 * width * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, p in zip(axes.flat, panels):
        fid = np.array(p["fid"], dtype=float)
        finite = fid[np.isfinite(fid) & (fid > 0)]
        norm = LogNorm(finite.min(), max(finite.max(), finite.min() * 1.01)) if finite.size else None
        im = ax.imshow(np.ma.masked_invalid(fid), cmap="viridis", norm=norm)
        for i, a in enumerate(p["train"]):
            best = np.nanargmin(fid[i]) if np.isfinite(fid[i]).any() else None
            for j, b in enumerate(p["sample"]):
                if np.isfinite(fid[i, j]):
                    dark = norm is None or norm(fid[i, j]) < 0.5
                    label = f"{fid[i, j]:.3g}{'*' if j == best else ''}"
                    ax.text(j, i, label, ha="center", va="center", fontsize=8, color="w" if dark else "k")
                if a == b:
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="k", lw=2.2))
        ax.set_xticks(range(len(p["sample"])), p["sample"], rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(p["train"])), p["train"], fontsize=8)
        ax.set_xlabel("sampling schedule")
        ax.set_ylabel("training schedule")
        grid = f", {p['grid']} grid" if p["grid"] else ""
        ax.set_title(f"{p['solver']}: {p['steps']} steps (NFE {p['nfe']:.0f}){grid}", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8, label="FID")
    fig.suptitle("Training schedule x sampling schedule, t-stepping solvers")
    fig.tight_layout()
    return _save(fig, path)


# -- what the time grid changes ------------------------------------------------------------------
def grid_effect(rows: Sequence[dict], families: dict[str, dict]) -> list[dict]:
    """One panel per solver group (``families[..]["group"]``) with a solver run on two grids or more:
    the group's best solver (lowest mean FID over its rows on the diagonal) on its best training
    schedule (the same rule), one line per grid (``lines: {grid: rows by NFE}``); unguided where there
    are unguided rows. [] with one grid."""
    pool, w = _guidance_slice([r for r in rows if _sample_schedule(r) == r["schedule"]])
    if len({r.get("grid") for r in pool}) < 2:
        return []
    panels = []
    for group in dict.fromkeys(f["group"] for f in families.values()):
        names = [n for n, f in families.items() if f["group"] == group]
        names = [n for n in names if len({r.get("grid") for r in pool if r["solver"] == n}) >= 2]
        if not names:
            continue
        solver = min(names, key=lambda n: np.mean([r["fid"] for r in pool if r["solver"] == n]))
        mine = [r for r in pool if r["solver"] == solver]
        schedule = min(
            _in_order(r["schedule"] for r in mine),
            key=lambda s: np.mean([r["fid"] for r in mine if r["schedule"] == s]),
        )
        mine = [r for r in mine if r["schedule"] == schedule]
        grids = _in_order((r.get("grid") for r in mine), GRIDS)
        lines = {g: sorted((r for r in mine if r.get("grid") == g), key=lambda r: r["nfe"]) for g in grids}
        panels.append(
            {"group": group, "solver": solver, "schedule": schedule, "guidance_scale": w, "lines": lines}
        )
    return panels


GRID_CAPTION = (
    "FID vs NFE (95% intervals) per time grid: for each solver group its best solver (lowest mean FID on "
    "the diagonal) on its best training schedule, one line per grid."
)


def grid_effect_plot(rows: Sequence[dict], path, families: dict[str, dict]) -> Path | None:
    """The ``grid_effect`` panels, FID vs NFE (log-log) with 95% bars; None with one grid."""
    panels = grid_effect(rows, families)
    if not panels:
        return None
    import matplotlib.pyplot as plt

    from difflab.report.plots import MARKERS, _errorbar, _grid, _plain_log_ticks, _save

    fig, axes = _grid(len(panels))
    cmap = plt.get_cmap("tab10")
    grids = _in_order((g for p in panels for g in p["lines"]), GRIDS)
    for ax, p in zip(axes, panels):
        for g, pts in p["lines"].items():
            k = grids.index(g)
            _errorbar(ax, pts, label=str(g), color=cmap(k % 10), marker=MARKERS[k % len(MARKERS)])
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_log_ticks(ax, y=True)
        ax.set_title(f"{p['group']}: {p['solver']} on {p['schedule']}", fontsize=9)
        ax.set_xlabel("NFE (denoiser evaluations)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, title="grid")
    axes[0].set_ylabel("FID (95% interval)")
    fig.suptitle("What the time grid changes")
    fig.tight_layout()
    return _save(fig, path)


# -- the section ---------------------------------------------------------------------------------
FIGURES = {
    "loss_weights": ("design_loss_weights.png", LOSS_WEIGHT_CAPTION),
    "cross_schedule": ("design_cross_schedule.png", CROSS_CAPTION),
    "grid_effect": ("design_grid_effect.png", GRID_CAPTION),
}


def figures(
    rows: Sequence[dict], cfg: dict, families: dict[str, dict], out_dir
) -> dict[str, tuple[Path, str]]:
    """The section's PNGs in ``out_dir``: ``name -> (path, caption)`` for those there is something to
    draw (``FIGURES``)."""
    out_dir = Path(out_dir)
    drawn = {
        "loss_weights": loss_weight_plot(cfg, out_dir / FIGURES["loss_weights"][0])
        if cfg["schedules"]
        else None,
        "cross_schedule": cross_heatmap(rows, out_dir / FIGURES["cross_schedule"][0], families),
        "grid_effect": grid_effect_plot(rows, out_dir / FIGURES["grid_effect"][0], families),
    }
    return {k: (p, FIGURES[k][1]) for k, p in drawn.items() if p is not None}


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "&ndash;"
    if isinstance(v, float):
        return f"{v:.3g}"
    return html.escape(str(v))


def _html_table(records: Sequence[dict], columns: Sequence[tuple[str, str]], text: Sequence[str] = ()) -> str:
    """``columns``: ``(key, header)``; keys in ``text`` are left-aligned."""
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in columns)
    cls = {k: " class='t'" if k in text else "" for k, _ in columns}
    body = "".join(
        "<tr>" + "".join(f"<td{cls[k]}>{_cell(r.get(k))}</td>" for k, _ in columns) + "</tr>" for r in records
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


DESIGN_COLUMNS = (
    ("schedule", "schedule"),
    ("parameters", "parameters"),
    ("path", "path"),
    ("alpha_sigma", "alpha(t), sigma(t)"),
    ("noise_range", "noise levels"),
    ("prediction", "prediction target"),
    ("time_sampling", "noise-level density"),
    ("weighting", "loss weighting"),
    ("network", "network"),
    ("max_steps", "training steps"),
    ("seeds", "seeds"),
)


def _design_table(cfg: dict) -> str:
    rows = [
        {
            **r,
            "prediction": f"{r['prediction']} ({r['prediction_source']})",
            "time_sampling": f"{r['time_sampling']} ({r['time_sampling_source']})",
            "weighting": f"{r['weighting']} ({r['weighting_source']})",
        }
        for r in training_design(cfg)
    ]
    return _html_table(rows, DESIGN_COLUMNS, text=[k for k, _ in DESIGN_COLUMNS if k != "max_steps"])


def _fid_text(r: dict) -> str:
    return f"FID {r['fid']:.3g} [{r['fid_lo']:.3g}, {r['fid_hi']:.3g}]"


def cross_sentences(panels: Sequence[dict]) -> list[str]:
    """Per t-stepping solver and training schedule: the sampling schedule with the lowest FID, against
    the network's own schedule."""
    lines = []
    for p in panels:
        parts = []
        for a in p["train"]:
            mine = {b: p["cells"][(a, b)] for b in p["sample"] if (a, b) in p["cells"]}
            if not mine:
                continue
            best = min(mine, key=lambda b: mine[b]["fid"])
            text = f"trained on {a}, the lowest FID is under {best} ({_fid_text(mine[best])})"
            if best != a and a in mine:
                text += f", against {_fid_text(mine[a])} under its own"
            elif best == a:
                text = f"trained on {a}, its own schedule scores the lowest FID ({_fid_text(mine[a])})"
            parts.append(text)
        grid = f", {p['grid']} grid" if p["grid"] else ""
        lines.append(
            f"{p['solver']} at {p['steps']} steps (NFE {p['nfe']:.0f}{grid}): " + "; ".join(parts) + "."
        )
    return lines


def grid_sentences(panels: Sequence[dict]) -> list[str]:
    """Per grid-effect panel: how often each grid scores the lowest FID over the NFEs all grids share,
    and the spread at the smallest of them."""
    lines = []
    for p in panels:
        by_nfe: dict[float, dict] = {}
        for g, pts in p["lines"].items():
            for r in pts:
                by_nfe.setdefault(r["nfe"], {})[g] = r
        shared = sorted(n for n, v in by_nfe.items() if len(v) == len(p["lines"]))
        head = f"{p['solver']} ({p['group']}) on {p['schedule']}"
        if not shared:
            lines.append(f"{head}: the grids share no NFE.")
            continue
        wins = [min(by_nfe[n], key=lambda g: by_nfe[n][g]["fid"]) for n in shared]
        counts = ", ".join(f"{g} grid at {wins.count(g)}" for g in p["lines"] if wins.count(g))
        low = by_nfe[shared[0]]
        spread = ", ".join(f"{g} {low[g]['fid']:.3g}" for g in sorted(low, key=lambda g: low[g]["fid"]))
        lines.append(
            f"{head}: the lowest FID comes from the {counts} of {len(shared)} NFEs; at NFE {shared[0]:.0f} "
            f"the grids score FID {spread}."
        )
    return lines


def _figure(png, caption: str) -> str:
    from difflab.report.html import data_uri  # html may import this module

    return (
        f"<figure><img alt='{html.escape(caption)}' src='{data_uri(png)}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def section_html(rows: Sequence[dict], cfg: dict, families: dict[str, dict], figures: dict[str, Path]) -> str:
    """The HTML fragment "Training or sampling?": the training design, the loss weights, the
    invariance marks, the cross-schedule heat maps and the grid effect, with plain sentences.
    ``figures``: name (``FIGURES``) -> png (or ``(png, caption)`` as ``figures()`` returns)."""

    def fig(name: str) -> str:
        entry = figures.get(name)
        if entry is None:
            return ""
        png, caption = entry if isinstance(entry, tuple) else (entry, FIGURES[name][1])
        return _figure(png, caption)

    inv = [n for n, f in families.items() if f["schedule_invariant"] and any(r["solver"] == n for r in rows)]
    steppers = [
        n for n, f in families.items() if not f["schedule_invariant"] and any(r["solver"] == n for r in rows)
    ]
    marks = invariance_marks(rows, families)
    panels = cross_schedules(rows, families)
    grid_panels = grid_effect(rows, families)
    parts = [
        "<h2>Training or sampling?</h2>",
        "<p>A schedule enters twice: through training (its path, the network's target, the density of noise "
        "levels and the loss weighting, which together weight each log-SNR) and through sampling (how the "
        "solver steps through time). The table gives the training side of every schedule as training builds "
        "it; the figures and tables below separate the sampling side.</p>",
        _design_table(cfg),
        fig("loss_weights"),
        "<h3>Solvers that step in log-SNR</h3>",
        "<p>"
        + html.escape(
            (
                f"{', '.join(inv)} step in log-SNR or in EDM's variables: for one trained network and a grid "
                "set in log-SNR (the logsnr and edm grids) their samples are, in exact arithmetic, the same "
                "under every sampling schedule, so for them a schedule changes the result only through "
                "training (each schedule trains its own network) and through the grid's end points (the "
                "log-SNR range the schedule's interval covers). A grid uniform in t puts its times at "
                "log-SNRs that depend on the schedule, so there they differ through the grid as well. "
            )
            if inv
            else "No solver here steps in log-SNR. "
        )
        + html.escape(invariance_text(marks))
        + "</p>",
    ]
    if marks["by_solver"]:
        parts.append(
            _html_table(
                marks["by_solver"],
                (
                    ("solver", "solver"),
                    ("grid", "grid"),
                    ("group", "family"),
                    ("n_measured", "rows measured"),
                    ("max_error", "max |dx|"),
                    ("worst", "worst row"),
                    ("n_above", f"rows above {marks['tol']:g}"),
                    ("mark", "mark"),
                ),
                text=("solver", "grid", "group", "worst", "mark"),
            )
        )
    parts.append("<h3>Solvers that step in t: training schedule x sampling schedule</h3>")
    if panels:
        parts += [
            f"<p>{html.escape(', '.join(steppers))} step in t, so the sampling schedule changes their "
            "discretisation: each trained network was sampled under every sampling schedule.</p>",
            fig("cross_schedule"),
            "<ul class='sum'>"
            + "".join(f"<li>{html.escape(s)}</li>" for s in cross_sentences(panels))
            + "</ul>",
        ]
    else:
        parts.append(
            "<p>No network was sampled under another schedule than its own (sample.schedules null), so "
            "training and sampling schedule are not separated here.</p>"
        )
    parts.append("<h3>What the time grid changes</h3>")
    if grid_panels:
        parts += [
            fig("grid_effect"),
            "<ul class='sum'>"
            + "".join(f"<li>{html.escape(s)}</li>" for s in grid_sentences(grid_panels))
            + "</ul>",
        ]
    else:
        parts.append("<p>One time grid only (sample.grids): nothing to compare.</p>")
    return "\n".join(p for p in parts if p)
