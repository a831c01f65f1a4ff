"""The report's figures (matplotlib, Agg), each drawn from what ``tables`` and ``axes`` computed and
saved as a PNG. A solver keeps one colour in every figure, ODE lines are solid and SDE lines dashed, the
marker says the order, and legends list the solvers under a heading per family and order
(``Solvers.group``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter
from PIL import Image

from difflab.metrics.diagnostics import ema
from difflab.report import text, weights
from difflab.report.tables import pareto_frontier
from difflab.results import ADAPTIVE_STEPS, Row
from difflab.schedules import schedule_from_config
from difflab.solvers.registry import Solvers

MARKERS = "osD^v<>PX*"
ORDER_MARKERS = {1: "o", 2: "s", 3: "D"}  # higher orders (rk45's 5): "*"
FAMILY_LINES = {"ode": "-", "sde": "--"}
_POINTS = {"textcoords": "offset points"}
RING = {"s": 90, "facecolors": "none", "edgecolors": "red", "lw": 1.2, "zorder": 5}  # beats_converged


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _finish(fig, legend: tuple | None, title: str | None, path) -> Path:
    """The legend ``(handles, labels, title)`` right of the panels and the title (where given); saved."""
    if legend:
        h, labels, heading = legend
        where = {"loc": "center left", "bbox_to_anchor": (1.0, 0.5), "frameon": False}
        fig.legend(h, labels, title=heading, fontsize=8, **where)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def solver_styles(solvers: Solvers) -> dict[str, dict]:
    """``name -> dict(color, linestyle, marker)``: a colour per solver (tab20's strong colours
    first), the line style per family, the marker per order."""
    cmap = plt.get_cmap("tab20")
    palette = [cmap(i) for i in range(0, 20, 2)] + [cmap(i) for i in range(1, 20, 2)]
    return {
        name: {"color": palette[i % len(palette)], "linestyle": FAMILY_LINES[solvers.family(name)],
               "marker": ORDER_MARKERS.get(solvers.spec(name).order, "*")}
        for i, name in enumerate(solvers.names)
    }  # fmt: skip


def _grouped_legend(solvers: Solvers, handles: Mapping[str, object]) -> tuple[list, list]:
    """Handles and labels with a heading before each family-and-order group."""
    out_h, out_l, last = [], [], None
    for name in (n for n in solvers.names if n in handles):
        if solvers.group(name) != last:
            last = solvers.group(name)
            out_h.append(Patch(visible=False))
            out_l.append(last)
        out_h.append(handles[name])
        out_l.append(f"  {name}")
    return out_h, out_l


def _panels(n: int, width: float = 4.0, height: float = 3.2, sharey: bool = True, most: int = 4):
    """``n`` panels of ``width x height`` inches, up to ``most`` per row; the spare ones hidden."""
    ncols = min(n, most)
    nrows = math.ceil(n / ncols)
    size = (width * ncols, height * nrows)
    fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False, sharey=sharey)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _xy(rows: Sequence[Row]) -> tuple[list, list]:
    return [r.nfe for r in rows], [r.fid for r in rows]


def _errorbar(ax, pts: Sequence[Row], style: dict):
    pts = sorted(pts, key=lambda r: r.nfe)
    return ax.errorbar(*_xy(pts), yerr=_bars(pts, "fid"), capsize=2.5, lw=1.3, ms=4, **style)


def _plain_ticks(axis):
    """A log axis labelled with plain numbers (10, 20, 50, ...) instead of crowded powers."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ScalarFormatter())
    axis.set_minor_formatter(NullFormatter())


def _log_axes(ax, xlabel: str = "NFE (denoiser evaluations)", y: bool = True):
    """Log-log axes (a diverging solver must not flatten the rest), plain ticks on x (and y), grid, xlabel."""
    ax.set(xscale="log", yscale="log", xlabel=xlabel)
    for axis in [ax.xaxis, ax.yaxis] if y else [ax.xaxis]:
        _plain_ticks(axis)
    ax.grid(alpha=0.3, which="both")


def fid_vs_nfe(rows: Sequence[Row], by: str, path, solvers: Solvers) -> Path:
    """One panel per ``by`` value (``"schedule"`` or ``"solver"``), one line per the other, FID vs
    NFE (log-log) with 95% bars; adaptive solvers are single markers; rows that beat their network's
    converged solution (``beats_converged``) ringed in red."""
    styles, cmap = solver_styles(solvers), plt.get_cmap("tab10")
    schedules = list(dict.fromkeys(r.schedule for r in rows))
    used = [n for n in solvers.names if any(r.solver == n for r in rows)]
    panels, lines = (schedules, used) if by == "schedule" else (used, schedules)
    other = "solver" if by == "schedule" else "schedule"
    fig, axes = _panels(len(panels))
    handles: dict[str, object] = {}
    for ax, p in zip(axes, panels):
        for i, name in enumerate(lines):
            pts = [r for r in rows if getattr(r, by) == p and getattr(r, other) == name]
            if not pts:
                continue
            style = dict(styles[name if other == "solver" else p], label=name)
            if other == "schedule":
                style.update(color=cmap(i % 10), marker=MARKERS[i % len(MARKERS)])
            if all(r.steps == ADAPTIVE_STEPS for r in pts):
                style["linestyle"] = "none"
            handles[name] = _errorbar(ax, pts, style)
        ax.scatter(*_xy([r for r in rows if getattr(r, by) == p and r.beats_converged]), **RING)
        _log_axes(ax)
        ax.set_title(f"schedule = {p}" if by == "schedule" else f"{p} ({solvers.group(p)})", fontsize=10)
    axes[0].set_ylabel("FID (95% interval)")
    labels = [n for n in lines if n in handles]
    h = [handles[n] for n in labels]
    if other == "solver":
        h, labels = _grouped_legend(solvers, handles)
    if any(r.beats_converged for r in rows):
        h, labels = [*h, ax.scatter([], [], **RING)], [*labels, "beats its converged solution"]
    return _finish(fig, (h, labels, other), f"FID vs NFE, one panel per {by}", path)


def pareto(rows: Sequence[Row], path, solvers: Solvers, plausible: Sequence[Row]) -> Path:
    """Every row in the FID-NFE plane (colour: schedule, marker: order, filled: ODE, hollow: SDE) with
    the Pareto frontier, and ``plausible`` (``tables.plausible_frontier``) circled."""
    fig, ax = plt.subplots(figsize=(8, 5))
    cmap = plt.get_cmap("tab10")
    schedules = list(dict.fromkeys(r.schedule for r in rows))
    for r in rows:
        color = cmap(schedules.index(r.schedule) % 10)
        fill = color if solvers.family(r.solver) == "ode" else "none"
        marker = ORDER_MARKERS.get(solvers.spec(r.solver).order, "*")
        style = {"color": color, "marker": marker, "mfc": fill, "ms": 5, "alpha": 0.75, "lw": 0.8}
        ax.errorbar([r.nfe], [r.fid], yerr=_bars([r], "fid"), capsize=1.5, **style)
    ax.step(*_xy(pareto_frontier(rows)), where="post", color="k", lw=1.5, label="Pareto frontier")
    circled = "not separable from the frontier (paired 95%)"
    ax.scatter(*_xy(plausible), s=110, facecolors="none", edgecolors="k", lw=0.8, label=circled)
    for i, s in enumerate(schedules):
        ax.plot([], [], color=cmap(i % 10), lw=4, label=s)
    used = [n for n in solvers.names if any(r.solver == n for r in rows)]
    for order in sorted({solvers.spec(n).order for n in used}):
        names = ", ".join(n for n in used if solvers.spec(n).order == order)
        marker = ORDER_MARKERS.get(order, "*")
        ax.plot([], [], color="gray", marker=marker, ls="none", label=f"order {order}: {names}")
    ax.plot([], [], color="gray", marker="o", linestyle="none", label="filled: ODE")
    ax.plot([], [], color="gray", marker="o", mfc="none", linestyle="none", label="hollow: SDE")
    _log_axes(ax)
    ax.set(ylabel="FID", title="FID vs NFE: every schedule x solver x steps")
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    return _save(fig, path)


def solver_error_vs_nfe(rows: Sequence[Row], path, solvers: Solvers) -> Path | None:
    """Distance to the adaptive reference from the same noise vs NFE, log-log, one panel per
    schedule; stochastic solvers have none. None without any."""
    pts_all = [r for r in rows if r.solver_error is not None]
    if not pts_all:
        return None
    styles = solver_styles(solvers)
    schedules = list(dict.fromkeys(r.schedule for r in pts_all))
    fig, axes = _panels(len(schedules))
    handles: dict[str, object] = {}
    for ax, schedule in zip(axes, schedules):
        for name in solvers.names:
            pts = [r for r in pts_all if (r.schedule, r.solver) == (schedule, name)]
            pts = sorted(pts, key=lambda r: r.nfe)
            if pts:
                style = dict(styles[name], linestyle="none") if len(pts) == 1 else styles[name]
                y = [max(r.solver_error, 1e-12) for r in pts]
                (handles[name],) = ax.plot([r.nfe for r in pts], y, label=name, ms=4, **style)
        _log_axes(ax, "NFE", y=False)
        ax.set_title(f"schedule = {schedule}")
    axes[0].set_ylabel("mean RMS distance to reference")
    title = "Solver error apart from network error (same noise, adaptive reference)"
    return _finish(fig, (*_grouped_legend(solvers, handles), None), title, path)


def nll_bars(nll: Mapping[str, dict], path) -> Path | None:
    """Bits/dim per schedule with +-1.96 standard errors; None without any."""
    names = [s for s in nll if nll[s].get("bpd") is not None]
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 3.2))
    vals = [nll[s]["bpd"] for s in names]
    err = [1.96 * (nll[s].get("bpd_se") or 0) for s in names]
    ax.bar(names, vals, yerr=err, capsize=4, color=[plt.get_cmap("tab10")(i) for i in range(len(names))])
    for i, v in enumerate(vals):
        ax.annotate(f"{v:.3f}", (i, v), ha="center", va="bottom", fontsize=8, xytext=(0, 3), **_POINTS)
    ax.set(ylabel="bits/dim (held-out, 95% interval)", title="Negative log-likelihood per schedule (PF-ODE)")
    return _save(fig, path)


def sample_grids(by_solver: Mapping[str, Path], path, title: str) -> Path | None:
    """One row of sample-grid images, one per solver (``solver -> png``)."""
    if not by_solver:
        return None
    fig, axes = plt.subplots(1, len(by_solver), figsize=(1.9 * len(by_solver), 2.1), squeeze=False)
    for ax, (solver, png) in zip(axes[0], by_solver.items()):
        ax.set(xticks=[], yticks=[])
        ax.imshow(Image.open(png).convert("RGB"), interpolation="nearest")
        ax.set_title(solver, fontsize=9)
    fig.suptitle(title, y=1.0)
    return _save(fig, path)


def loss_weights(cfg: Mapping, path) -> Path:
    """Each trained schedule's ``weights.implied_weights`` on one log-SNR axis, over its maximum (log y)."""
    ranges = [schedule_from_config(cfg, n).log_snr_range() for n in cfg["schedules"]]
    lam = np.linspace(min(r[0] for r in ranges), max(r[1] for r in ranges), 600)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    cmap = plt.get_cmap("tab10")
    for i, (name, w) in enumerate(weights.implied_weights(cfg, lam).items()):
        top = w.max()
        y = np.where(w > 0, w / top, np.nan) if top > 0 else np.full_like(w, np.nan)
        ax.plot(lam, y, color=cmap(i % 10), lw=1.6, label=name)
    ax.set(yscale="log", ylim=(1e-4, 2), ylabel="w(lambda) / max")
    ax.set_xlabel("log-SNR lambda (noise  <-  ->  data)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, title="training schedule")
    ax.set_title("Weight of the training loss on each log-SNR (eps-MSE convention)")
    return _save(fig, path)


def _heatmap(ax, p: dict):
    """One ``axes.cross_schedules`` panel: annotated cells (``*``: the row's lowest), the diagonal
    boxed; colour: log FID."""
    fid = np.array(p.fid, dtype=float)
    finite = fid[np.isfinite(fid) & (fid > 0)]
    norm = LogNorm(finite.min(), max(finite.max(), finite.min() * 1.01)) if finite.size else None
    im = ax.imshow(np.ma.masked_invalid(fid), cmap="viridis", norm=norm)
    for i, a in enumerate(p.train):
        best = np.nanargmin(fid[i]) if np.isfinite(fid[i]).any() else None
        for j, b in enumerate(p.sample):
            if np.isfinite(fid[i, j]):
                dark = norm is None or norm(fid[i, j]) < 0.5
                text = f"{fid[i, j]:.3g}{'*' if j == best else ''}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="w" if dark else "k")
            if a == b:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="k", lw=2.2))
    ax.set_xticks(range(len(p.sample)), p.sample, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(p.train)), p.train, fontsize=8)
    ax.set(xlabel="sampling schedule", ylabel="training schedule")
    grid = f", {p.grid} grid" if p.grid else ""
    ax.set_title(f"{p.solver}: {p.steps} steps (NFE {p.nfe:.0f}){grid}", fontsize=9)
    return im


def cross_heatmap(panels: Sequence[dict], path) -> Path | None:
    """The ``axes.cross_schedules`` panels as heat maps; None without panels."""
    if not panels:
        return None
    width = max(1.1 * max(len(p.sample) for p in panels) + 2.0, 4.0)
    fig, axes = _panels(len(panels), width, 0.9 * width, sharey=False, most=3)
    for ax, p in zip(axes, panels):
        fig.colorbar(_heatmap(ax, p), ax=ax, shrink=0.8, label="FID")
    return _finish(fig, None, "Training schedule x sampling schedule, t-stepping solvers", path)


def grid_effect(panels: Sequence[dict], path) -> Path | None:
    """The ``axes.grid_effect`` panels: FID vs NFE (log-log, 95% bars), a line per grid; None without any."""
    if not panels:
        return None
    fig, axes = _panels(len(panels))
    cmap = plt.get_cmap("tab10")
    grids = list(dict.fromkeys(g for p in panels for g in p.lines))
    for ax, p in zip(axes, panels):
        for g, pts in p.lines.items():
            k = grids.index(g)
            _errorbar(ax, pts, {"label": str(g), "color": cmap(k % 10), "marker": MARKERS[k % len(MARKERS)]})
        _log_axes(ax)
        ax.set_title(f"{p.group}: {p.solver} on {p.schedule}", fontsize=9)
        ax.legend(fontsize=8, title="grid")
    axes[0].set_ylabel("FID (95% interval)")
    return _finish(fig, None, "What the time grid changes", path)


def _bars(pts: Sequence[Row], name: str) -> list[list[float]]:
    """Asymmetric error bars ``[below, above]`` from ``<name>_lo``/``<name>_hi`` (missing: none)."""
    v = [getattr(r, name) for r in pts]
    lo, hi = [getattr(r, f"{name}_lo") for r in pts], [getattr(r, f"{name}_hi") for r in pts]
    below = [0 if b is None else max(a - b, 0) for a, b in zip(v, lo)]
    return [below, [0 if b is None else max(b - a, 0) for a, b in zip(v, hi)]]


def _accuracy_panel(ax, curves: Mapping[str, list[Row]], styles: dict, ceiling: Mapping | None) -> dict:
    """One schedule's curves (x: class accuracy, y: FID) annotated with w, and the ceiling."""
    handles = {}
    for name, pts in curves.items():
        x, y = [r.class_accuracy for r in pts], [r.fid for r in pts]
        style = styles.get(name, {"color": "0.4", "linestyle": "-", "marker": "o"})
        style = {**style, "capsize": 2, "lw": 1.2, "ms": 4}
        h = ax.errorbar(x, y, xerr=_bars(pts, "class_accuracy"), yerr=_bars(pts, "fid"), **style)
        handles[name] = (h, f"{name} ({text.steps(pts[0])})")
        for r, xy in zip(pts, zip(x, y)):
            ax.annotate(f"{r.guidance_scale:g}", xy, xytext=(3, 3), fontsize=7, **_POINTS)
    if ceiling and ceiling.get("accuracy") is not None:
        ax.axvline(ceiling["accuracy"], color="k", linestyle=":", lw=1)
        if ceiling.get("accuracy_lo") is not None and ceiling.get("accuracy_hi") is not None:
            ax.axvspan(ceiling["accuracy_lo"], ceiling["accuracy_hi"], color="k", alpha=0.08, lw=0)
    if all(r.fid > 0 for pts in curves.values() for r in pts):
        ax.set_yscale("log")  # a solver that breaks at high w should not flatten the others
        _plain_ticks(ax.yaxis)
    ax.set_xlabel("class accuracy (95% Wilson)")
    ax.grid(alpha=0.3, which="both")
    return handles


def fid_vs_accuracy(
    panels: Mapping[str, Mapping[str, list[Row]]], path, solvers: Solvers, ceiling: Mapping | None
) -> Path | None:
    """One panel per training schedule (``axes.drawn_curves``): FID (log) vs class accuracy through the
    guidance scales, 95% bars both ways, the classifier ceiling dotted over its interval; None without any."""
    if not panels:
        return None
    styles = solver_styles(solvers)
    fig, axes = _panels(len(panels))
    handles: dict[str, tuple] = {}
    for ax, (schedule, curves) in zip(axes, panels.items()):
        for name, h in _accuracy_panel(ax, curves, styles, ceiling).items():
            handles.setdefault(name, h)
        ax.set_title(f"schedule = {schedule}", fontsize=10)
    axes[0].set_ylabel("FID (95% interval)")
    h, labels = _grouped_legend(solvers, {n: h for n, (h, _) in handles.items()})
    labels = [f"  {handles[s.strip()][1]}" if s.strip() in handles else s for s in labels]
    if ceiling and ceiling.get("accuracy") is not None:
        (line,) = axes[0].plot([], [], color="k", linestyle=":", lw=1)
        lo, hi = ceiling.get("accuracy_lo"), ceiling.get("accuracy_hi")
        band = f" [{lo:.3g}, {hi:.3g}]" if lo is not None and hi is not None else ""
        h, labels = h + [line], labels + [f"classifier ceiling {ceiling['accuracy']:.3g}{band}"]
    title = "FID vs class accuracy as the guidance scale w grows (labels: w)"
    return _finish(fig, (h, labels, None), title, path)


def loss_curves(curves: Mapping[str, Mapping | None], path) -> Path | None:
    """One panel per network: its training and validation loss against the step (``curves[name]``:
    ``{"train"|"val": {"step", "loss"}}``, the train stage's ``LossCurves``), smoothed by ``diagnostics.ema``
    over about a twentieth of the points, each validation a dot, the last fifth of training shaded."""
    drawn = {name: c for name, c in curves.items() if c and c["val"]["step"]}
    if not drawn:
        return None
    fig, axes = _panels(len(drawn), sharey=False)  # each network's loss on its own scale
    for ax, (name, c) in zip(axes, drawn.items()):
        for kind, color in (("train", "tab:blue"), ("val", "tab:orange")):
            loss = c[kind]["loss"]  # an EMA spanning about a twentieth of the run, so it hardly lags
            ax.plot(c[kind]["step"], ema(loss, max(0.0, 1 - 20 / max(len(loss), 1))), color=color, label=kind)
        ax.plot(c["val"]["step"], c["val"]["loss"], ".", color="tab:orange", ms=4)
        end = max(c["train"]["step"] + c["val"]["step"])
        ax.axvspan(0.8 * end, end, color="gray", alpha=0.15)
        ax.set(title=name, xlabel="step")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("loss")
    axes[0].legend(fontsize=8)
    return _finish(fig, None, None, path)
