"""Figures of the comparison (matplotlib, Agg): FID vs NFE with 95% intervals per schedule and per
solver, the Pareto frontier, solver error vs NFE, bits/dim per schedule, sample grids."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from difflab.report.analysis import ADAPTIVE_STEPS, pareto_frontier, plausible_frontier

MARKERS = "osD^v<>PX*"


def _ordered(rows, key, order=()):
    seen = [v for v in order if any(r[key] == v for r in rows)]
    return seen + sorted({r[key] for r in rows} - set(seen))


def _grid(n: int, width: float = 4.0, height: float = 3.2):
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, sharey=True
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _errorbar(ax, pts, **kw):
    pts = sorted(pts, key=lambda r: r["nfe"])
    x = [r["nfe"] for r in pts]
    y = [r["fid"] for r in pts]
    lo = [max(r["fid"] - r["fid_lo"], 0) for r in pts]
    hi = [max(r["fid_hi"] - r["fid"], 0) for r in pts]
    ax.errorbar(x, y, yerr=[lo, hi], capsize=2.5, lw=1.3, ms=4, **kw)


def fid_vs_nfe(
    rows: Sequence[dict], by: str, path, order: Sequence[str] = (), line_order: Sequence[str] = ()
):
    """One panel per ``by`` value (``"schedule"`` or ``"solver"``), one line per the other key, FID vs
    NFE (log x) with 95% interval bars; rk45 (adaptive) is drawn as a single marker."""
    other = "solver" if by == "schedule" else "schedule"
    panels = _ordered(rows, by, order)
    lines = _ordered(rows, other, line_order)
    fig, axes = _grid(len(panels))
    cmap = plt.get_cmap("tab10")
    for ax, p in zip(axes, panels):
        for i, name in enumerate(lines):
            pts = [r for r in rows if r[by] == p and r[other] == name]
            if not pts:
                continue
            adaptive = all(r["steps"] == ADAPTIVE_STEPS for r in pts)
            _errorbar(
                ax,
                pts,
                color=cmap(i % 10),
                marker=MARKERS[i % len(MARKERS)],
                label=name,
                linestyle="none" if adaptive else "-",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")  # one diverging solver should not flatten the others
        ax.set_title(f"{by} = {p}")
        ax.set_xlabel("NFE (denoiser evaluations)")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("FID (95% interval)")
    handles, labels = [], []
    for ax in axes:
        _plain_log_ticks(ax, y=True)
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, title=other)
    fig.suptitle(f"FID vs NFE, one panel per {by}")
    fig.tight_layout()
    return _save(fig, path)


def _plain_log_ticks(ax, y: bool = False):
    """Log axes labelled with plain numbers (10, 20, 50, ...) instead of crowded powers."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    axes = [ax.xaxis, ax.yaxis] if y else [ax.xaxis]
    for axis in axes:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(NullFormatter())


def pareto(rows: Sequence[dict], path, schedules: Sequence[str] = (), solvers: Sequence[str] = ()):
    """Every row in the FID-NFE plane (colour = schedule, marker = solver) with the Pareto frontier
    and the interval-aware frontier."""
    fig, ax = plt.subplots(figsize=(8, 5))
    cmap = plt.get_cmap("tab10")
    sch = _ordered(rows, "schedule", schedules)
    sol = _ordered(rows, "solver", solvers)
    for r in rows:
        i, j = sch.index(r["schedule"]), sol.index(r["solver"])
        ax.errorbar(
            [r["nfe"]],
            [r["fid"]],
            yerr=[[max(r["fid"] - r["fid_lo"], 0)], [max(r["fid_hi"] - r["fid"], 0)]],
            color=cmap(i % 10),
            marker=MARKERS[j % len(MARKERS)],
            ms=5,
            alpha=0.75,
            capsize=1.5,
            lw=0.8,
        )
    front = pareto_frontier(rows)
    ax.step(
        [r["nfe"] for r in front],
        [r["fid"] for r in front],
        where="post",
        color="k",
        lw=1.5,
        label="Pareto frontier",
    )
    plaus = plausible_frontier(rows)
    ax.scatter(
        [r["nfe"] for r in plaus],
        [r["fid"] for r in plaus],
        s=110,
        facecolors="none",
        edgecolors="k",
        lw=0.8,
        label="not separable from the frontier (95%)",
    )
    for i, s in enumerate(sch):
        ax.plot([], [], color=cmap(i % 10), lw=4, label=s)
    for j, s in enumerate(sol):
        ax.plot([], [], color="gray", marker=MARKERS[j % len(MARKERS)], linestyle="none", label=s)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_ticks(ax, y=True)
    ax.set_xlabel("NFE (denoiser evaluations)")
    ax.set_ylabel("FID")
    ax.grid(alpha=0.3, which="both")
    ax.set_title("FID vs NFE: every schedule x solver x steps")
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    return _save(fig, path)


def solver_error_vs_nfe(
    rows: Sequence[dict], path, order: Sequence[str] = (), line_order: Sequence[str] = ()
):
    """Discretization error (distance to the rk45 reference from the same noise) vs NFE, log-log,
    one panel per schedule; stochastic solvers have none and are left out."""
    pts_all = [r for r in rows if r.get("solver_error") is not None]
    if not pts_all:
        return None
    panels = _ordered(pts_all, "schedule", order)
    lines = _ordered(pts_all, "solver", line_order)
    fig, axes = _grid(len(panels))
    cmap = plt.get_cmap("tab10")
    for ax, p in zip(axes, panels):
        for i, name in enumerate(lines):
            pts = sorted(
                (r for r in pts_all if r["schedule"] == p and r["solver"] == name), key=lambda r: r["nfe"]
            )
            if pts:
                ax.plot(
                    [r["nfe"] for r in pts],
                    [max(r["solver_error"], 1e-12) for r in pts],
                    marker=MARKERS[i % 10],
                    color=cmap(i % 10),
                    label=name,
                    linestyle="none" if len(pts) == 1 else "-",
                    ms=4,
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"schedule = {p}")
        _plain_log_ticks(ax)
        ax.set_xlabel("NFE")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("mean RMS distance to reference")
    axes[0].legend(fontsize=7)
    fig.suptitle("Solver error apart from network error (same noise, adaptive reference)")
    fig.tight_layout()
    return _save(fig, path)


def nll_bars(nll: dict[str, dict], path, order: Sequence[str] = ()):
    """Bits/dim per schedule with +-1.96 standard errors."""
    names = [s for s in order if s in nll and nll[s].get("bpd") is not None]
    names += sorted(s for s in nll if s not in names and nll[s].get("bpd") is not None)
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 3.2))
    vals = [nll[s]["bpd"] for s in names]
    err = [1.96 * (nll[s].get("bpd_se") or 0) for s in names]
    ax.bar(names, vals, yerr=err, capsize=4, color=[plt.get_cmap("tab10")(i) for i in range(len(names))])
    for i, v in enumerate(vals):
        ax.annotate(
            f"{v:.3f}",
            (i, v),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 3),
            textcoords="offset points",
        )
    ax.set_ylabel("bits/dim (held-out, 95% interval)")
    ax.set_title("Negative log-likelihood per schedule (PF-ODE)")
    return _save(fig, path)


def sample_grids(grids: dict[str, dict[str, Path]], path, title: str):
    """One figure: a row of grid images per schedule (``grids[schedule][solver] -> png``)."""
    from PIL import Image

    schedules = list(grids)
    solvers = sorted(
        {v for g in grids.values() for v in g},
        key=lambda v: list(next(iter(grids.values()))).index(v) if v in next(iter(grids.values())) else 99,
    )
    if not schedules or not solvers:
        return None
    fig, axes = plt.subplots(
        len(schedules), len(solvers), figsize=(1.9 * len(solvers), 2.1 * len(schedules)), squeeze=False
    )
    for i, s in enumerate(schedules):
        for j, v in enumerate(solvers):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if v in grids[s]:
                ax.imshow(Image.open(grids[s][v]).convert("RGB"), interpolation="nearest")
            if i == 0:
                ax.set_title(v, fontsize=9)
            if j == 0:
                ax.set_ylabel(s, fontsize=9)
    fig.suptitle(title, y=1.0)
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
