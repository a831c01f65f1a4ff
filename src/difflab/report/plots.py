"""Figures of the comparison (matplotlib, Agg): FID vs NFE with 95% intervals per schedule and per
solver, the Pareto frontier, solver error vs NFE, bits/dim per schedule, sample grids.

Solvers are grouped by family (``analysis.solver_families``: ODE / SDE, order): a solver keeps one
colour in every figure, ODE lines are solid and SDE lines dashed, the marker says the order, and
legends list the solvers under a heading per family and order."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from difflab.report.analysis import ADAPTIVE_STEPS, pareto_frontier

MARKERS = "osD^v<>PX*"
ORDER_MARKERS = {1: "o", 2: "s", 3: "D"}  # higher orders (rk45's 5): "*"
FAMILY_LINES = {"ode": "-", "sde": "--"}


def _order_marker(order: int) -> str:
    return ORDER_MARKERS.get(order, "*")


def solver_styles(families: dict[str, dict]) -> dict[str, dict]:
    """``name -> dict(color, linestyle, marker)``: colour per solver (tab20's ten strong colours
    first, then its light ones), line style per family, marker per order."""
    cmap = plt.get_cmap("tab20")
    palette = [cmap(i) for i in range(0, 20, 2)] + [cmap(i) for i in range(1, 20, 2)]
    return {
        name: {
            "color": palette[i % len(palette)],
            "linestyle": FAMILY_LINES[f["family"]],
            "marker": _order_marker(f["order"]),
        }
        for i, (name, f) in enumerate(families.items())
    }


def _grouped_legend(families: dict[str, dict], handles: dict[str, object]):
    """Handles and labels with a heading before each family-and-order group."""
    from matplotlib.patches import Patch

    out_h, out_l, last = [], [], None
    for name, f in families.items():
        if name not in handles:
            continue
        if f["group"] != last:
            out_h.append(Patch(visible=False))
            out_l.append(f["group"])
            last = f["group"]
        out_h.append(handles[name])
        out_l.append(f"  {name}")
    return out_h, out_l


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
    return ax.errorbar(x, y, yerr=[lo, hi], capsize=2.5, lw=1.3, ms=4, **kw)


def fid_vs_nfe(rows: Sequence[dict], by: str, path, schedules: Sequence[str], families: dict[str, dict]):
    """One panel per ``by`` value (``"schedule"`` or ``"solver"``), one line per the other key, FID vs
    NFE (log x) with 95% interval bars; adaptive solvers are drawn as single markers. Solvers are
    styled and ordered by family (``solver_styles``); per-solver panels are titled with the family."""
    styles = solver_styles(families)
    sch = _ordered(rows, "schedule", schedules)
    sol = _ordered(rows, "solver", list(families))
    panels, lines = (sch, sol) if by == "schedule" else (sol, sch)
    other = "solver" if by == "schedule" else "schedule"
    fig, axes = _grid(len(panels))
    cmap = plt.get_cmap("tab10")
    handles: dict[str, object] = {}
    for ax, p in zip(axes, panels):
        for i, name in enumerate(lines):
            pts = [r for r in rows if r[by] == p and r[other] == name]
            if not pts:
                continue
            solver = name if other == "solver" else p
            style = dict(styles[solver])
            if other == "schedule":
                style.update(color=cmap(i % 10), marker=MARKERS[i % len(MARKERS)])
            if all(r["steps"] == ADAPTIVE_STEPS for r in pts):
                style["linestyle"] = "none"
            handles[name] = _errorbar(ax, pts, label=name, **style)
        ax.set_xscale("log")
        ax.set_yscale("log")  # one diverging solver should not flatten the others
        title = f"{by} = {p}" if by == "schedule" else f"{p} ({families[p]['group']})"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("NFE (denoiser evaluations)")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("FID (95% interval)")
    for ax in axes:
        _plain_log_ticks(ax, y=True)
    if other == "solver":
        h, labels = _grouped_legend(families, handles)
    else:
        labels = [n for n in lines if n in handles]
        h = [handles[n] for n in labels]
    fig.legend(
        h, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, title=other, fontsize=8
    )
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


def pareto(
    rows: Sequence[dict],
    path,
    schedules: Sequence[str],
    families: dict[str, dict],
    plausible: Sequence[dict],
):
    """Every row in the FID-NFE plane (colour = schedule, marker = the solver's order, filled = ODE,
    hollow = SDE) with the Pareto frontier, and ``plausible`` (the rows no cheaper-or-equal row
    beats by a paired interval, ``analysis.plausible_frontier``) circled."""
    fig, ax = plt.subplots(figsize=(8, 5))
    cmap = plt.get_cmap("tab10")
    sch = _ordered(rows, "schedule", schedules)
    for r in rows:
        color = cmap(sch.index(r["schedule"]) % 10)
        fam = families[r["solver"]]
        ax.errorbar(
            [r["nfe"]],
            [r["fid"]],
            yerr=[[max(r["fid"] - r["fid_lo"], 0)], [max(r["fid_hi"] - r["fid"], 0)]],
            color=color,
            marker=_order_marker(fam["order"]),
            mfc=color if fam["family"] == "ode" else "none",
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
    ax.scatter(
        [r["nfe"] for r in plausible],
        [r["fid"] for r in plausible],
        s=110,
        facecolors="none",
        edgecolors="k",
        lw=0.8,
        label="not separable from the frontier (paired 95%)",
    )
    for i, s in enumerate(sch):
        ax.plot([], [], color=cmap(i % 10), lw=4, label=s)
    for order in sorted({f["order"] for n, f in families.items() if any(r["solver"] == n for r in rows)}):
        names = [
            n for n, f in families.items() if f["order"] == order and any(r["solver"] == n for r in rows)
        ]
        ax.plot(
            [],
            [],
            color="gray",
            marker=_order_marker(order),
            linestyle="none",
            label=f"order {order}: " + ", ".join(names),
        )
    ax.plot([], [], color="gray", marker="o", linestyle="none", label="filled: ODE")
    ax.plot([], [], color="gray", marker="o", mfc="none", linestyle="none", label="hollow: SDE")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_ticks(ax, y=True)
    ax.set_xlabel("NFE (denoiser evaluations)")
    ax.set_ylabel("FID")
    ax.grid(alpha=0.3, which="both")
    ax.set_title("FID vs NFE: every schedule x solver x steps")
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    return _save(fig, path)


def solver_error_vs_nfe(rows: Sequence[dict], path, schedules: Sequence[str], families: dict[str, dict]):
    """Discretization error (distance to the rk45 reference from the same noise) vs NFE, log-log,
    one panel per schedule, solvers styled by family; stochastic solvers have none and are left out."""
    pts_all = [r for r in rows if r.get("solver_error") is not None]
    if not pts_all:
        return None
    styles = solver_styles(families)
    panels = _ordered(pts_all, "schedule", schedules)
    lines = _ordered(pts_all, "solver", list(families))
    fig, axes = _grid(len(panels))
    handles: dict[str, object] = {}
    for ax, p in zip(axes, panels):
        for name in lines:
            pts = sorted(
                (r for r in pts_all if r["schedule"] == p and r["solver"] == name), key=lambda r: r["nfe"]
            )
            if pts:
                style = dict(styles[name])
                if len(pts) == 1:
                    style["linestyle"] = "none"
                (handles[name],) = ax.plot(
                    [r["nfe"] for r in pts],
                    [max(r["solver_error"], 1e-12) for r in pts],
                    label=name,
                    ms=4,
                    **style,
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"schedule = {p}")
        _plain_log_ticks(ax)
        ax.set_xlabel("NFE")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("mean RMS distance to reference")
    h, labels = _grouped_legend(families, handles)
    fig.legend(h, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
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
