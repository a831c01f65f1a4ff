"""Classifier-free guidance as a comparison axis: FID against class accuracy as the guidance scale
grows, the best scale per training schedule with its paired difference to the next-best one, plain
sentences and the report's section.

Guided sampling denoises with ``D_w = D_u + w (D_c - D_u)`` (Ho & Salimans 2022, classifier-free
guidance): ``w = 0`` is the unconditional network (the null label), ``w = 1`` the plain conditional
one, ``w > 1`` pushes samples towards their class. A row is guided when its ``guidance_scale`` is not
None; a table without guided rows gives an empty list, ``None``, ``{}`` or ``""`` everywhere here.
Only diagonal rows (``sample_schedule`` equal to ``schedule`` or missing) enter the curves and the
best scales. Rows of older tables may lack the optional keys (class accuracy, precision, recall,
their intervals, grid, sample_schedule); what needs a missing key leaves the row out of it.

matplotlib is imported inside the drawing function only (``difflab.report.plots``, Agg).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path

from difflab.report.analysis import ADAPTIVE_STEPS, Pairing, separable
from difflab.report.html import _table, data_uri

FEW_SOLVERS = 4  # up to this many solvers per panel each gets a line; more: the best of each family group
BREAK_FACTOR = 2.0  # a curve breaks at high w where FID at its largest w exceeds this times its lowest
PROPORTIONS = ("class_accuracy", "precision", "recall")

EXPLANATION = (
    "<p>Classifier-free guidance denoises with D<sub>u</sub> + w (D<sub>c</sub> &minus; D<sub>u</sub>), "
    "D<sub>c</sub> the conditional and D<sub>u</sub> the unconditional denoiser of the same network: "
    "w = 0 is the unconditional network (the null label), w = 1 the plain conditional one, larger w "
    "pushes samples towards their class. Every guided row draws an equal number of samples per class. "
    "Class accuracy is the fraction of samples the dataset classifier assigns to the requested label; "
    "its ceiling is the classifier's own accuracy on held-out images with their true labels. Precision "
    "and recall are torch-fidelity's improved precision and recall (prc, k = 3 nearest neighbours) on "
    "the FID features. 95% intervals: FID from the seed spread and the sampling bootstrap; Wilson score "
    "intervals for class accuracy, precision and recall. The best w per training schedule (diagonal "
    "rows only: sampled with the schedule the network was trained with) is compared with the next-best "
    "w of the same solver and steps by the paired bootstrap of their FID difference (the same noise "
    "per sample).</p>"
)
FIGURE_CAPTION = (
    "FID vs class accuracy as the guidance scale w grows (points labelled with w), one panel per "
    "training schedule, one line per solver at its largest fixed step count (rk45: adaptive); bars: "
    "95% intervals in both directions; dotted line and band: the classifier ceiling"
)


def guided_rows(rows: Sequence[dict]) -> list[dict]:
    """The rows with a guidance scale (``guidance_scale`` not None)."""
    return [r for r in rows if r.get("guidance_scale") is not None]


def _diagonal(rows: Sequence[dict]) -> list[dict]:
    return [r for r in guided_rows(rows) if (r.get("sample_schedule") or r["schedule"]) == r["schedule"]]


def _finite(v) -> bool:
    return v is not None and math.isfinite(float(v))


def _w(r: dict) -> float:
    return float(r["guidance_scale"])


def _curves(rows: Sequence[dict]) -> dict[tuple, list[dict]]:
    """Diagonal guided rows by ``(schedule, solver, steps, grid)``, each by increasing w."""
    out: dict[tuple, list[dict]] = {}
    for r in _diagonal(rows):
        out.setdefault((r["schedule"], r["solver"], r["steps"], r.get("grid")), []).append(r)
    return {k: sorted(v, key=_w) for k, v in out.items()}


def _ranked(curve: Sequence[dict]) -> list[dict]:
    """The rows with a finite FID, lowest first (ties: the smaller w)."""
    return sorted((r for r in curve if _finite(r["fid"])), key=lambda r: (r["fid"], _w(r)))


def _at(r: dict | None) -> dict:
    """The FID, its interval and the proportions (with intervals) of row ``r`` (None: all None)."""
    keys = ("fid", "fid_lo", "fid_hi", "nfe") + tuple(
        f"{p}{s}" for p in PROPORTIONS for s in ("", "_lo", "_hi")
    )
    return {k: None if r is None else r.get(k) for k in keys}


def _curve_summary(key: tuple, curve: list[dict], pairing: Pairing | None) -> dict:
    schedule, solver, steps, grid = key
    ranked = _ranked(curve)
    best = ranked[0] if ranked else None
    runner = ranked[1] if len(ranked) > 1 else None
    diff, separated = None, None
    if runner is not None and pairing is not None:
        diff = pairing.diff(runner, best)  # FID(next) - FID(best) >= 0
        separated = diff["diff_lo"] > 0 or diff["diff_hi"] < 0
    elif runner is not None and all(_finite(r.get(k)) for r in (runner, best) for k in ("fid_lo", "fid_hi")):
        separated = separable(runner, best, None)
    top = curve[-1]
    breaks = best is None or (
        top is not best and (not _finite(top["fid"]) or top["fid"] > BREAK_FACTOR * best["fid"])
    )
    return {
        "schedule": schedule,
        "solver": solver,
        "steps": steps,
        "grid": grid,
        "w": None if best is None else _w(best),
        **_at(best),
        "row": best,
        "next_w": None if runner is None else _w(runner),
        "next_fid": None if runner is None else runner["fid"],
        "next_row": runner,
        "diff": diff,
        "separated": separated,
        "test": "paired" if pairing is not None else "overlap",
        "top_w": _w(top),
        "top_fid": top["fid"],
        "breaks": breaks,
        "curve": curve,
    }


def best_scales(rows: Sequence[dict], pairing: Pairing | None) -> list[dict]:
    """Per training schedule (in the order the rows name them) the guidance scale with the lowest FID.

    Every ``(solver, steps, grid)`` of the schedule's diagonal guided rows is a curve over w; its
    summary holds ``w`` (lowest FID), ``fid``, ``fid_lo``, ``fid_hi``, ``nfe``, ``class_accuracy``,
    ``precision``, ``recall`` (each with ``_lo``/``_hi``) at that w and its ``row``; ``next_w``,
    ``next_fid``, ``next_row``: the next-best w; ``diff``: ``pairing.diff(next_row, row)`` (``FID(next)
    - FID(best)``, ``fid_diff, diff_lo, diff_hi, se, p_value``; None without a pairing or a second w);
    ``separated``: the paired 95% interval excludes 0 (``pairing=None``: disjoint separate intervals;
    None where nothing to compare); ``top_w``, ``top_fid``: the largest w and its FID; ``breaks``: FID
    at the largest w above ``BREAK_FACTOR`` times the lowest, or not finite; ``curve``: the rows by w.

    Returns one dict per schedule: the summary of its best curve (the lowest FID over its curves,
    ties: fewer NFE) with ``curves``, every curve's summary. A schedule whose FIDs are all non-finite
    keeps its ``curves`` and None for the best's fields. ``pairing``: ``analysis.Pairing`` over these
    rows."""
    by_schedule: dict[str, list[dict]] = {}
    for key, curve in _curves(rows).items():
        by_schedule.setdefault(key[0], []).append(_curve_summary(key, curve, pairing))
    out = []
    for schedule, curves in by_schedule.items():
        finite = [c for c in curves if c["row"] is not None]
        if finite:
            top = min(finite, key=lambda c: (c["fid"], c["nfe"] if _finite(c["nfe"]) else math.inf))
            out.append({**top, "curves": curves})
        else:
            none = {k: None for k in curves[0]}  # no finite FID: no best curve
            out.append({**none, "schedule": schedule, "breaks": True, "curve": [], "curves": curves})
    return out


def _steps_text(steps) -> str:
    return "adaptive" if steps == ADAPTIVE_STEPS else f"{steps} steps"


def _setting(c: dict) -> str:
    grid = f", {c['grid']} grid" if c.get("grid") else ""
    return f"{c['solver']}, {_steps_text(c['steps'])}{grid}"


def _num(v, fmt: str = ".3g") -> str:
    return "n/a" if v is None else format(float(v), fmt)


def _interval(v, lo, hi, fmt: str = ".3g") -> str:
    if v is None:
        return "n/a"
    if lo is None or hi is None:
        return _num(v, fmt)
    return f"{_num(v, fmt)} [{_num(lo, fmt)}, {_num(hi, fmt)}]"


def _ceiling_text(ceiling: dict | None) -> str:
    if not ceiling or ceiling.get("accuracy") is None:
        return ""
    return _interval(ceiling["accuracy"], ceiling.get("accuracy_lo"), ceiling.get("accuracy_hi"))


def _accuracy_clause(curve: Sequence[dict], ceiling: dict | None) -> str:
    pts = [r for r in curve if _finite(r.get("class_accuracy"))]
    if not pts:
        return ""
    first, last = pts[0], pts[-1]
    a0, a1 = first["class_accuracy"], last["class_accuracy"]
    if len(pts) == 1:
        text = f"accuracy {a0:.3g} at w = {_w(first):g}"
    else:
        verb = "rises" if a1 > a0 else "falls" if a1 < a0 else "stays"
        text = f"accuracy {verb} from {a0:.3g} at w = {_w(first):g} to {a1:.3g} at w = {_w(last):g}"
    ceil = _ceiling_text(ceiling)
    return text + (f" (classifier ceiling {ceil})" if ceil else "")


def _next_clause(b: dict) -> str:
    if b["next_row"] is None:
        return ""
    text = f"the next best, w = {b['next_w']:g}, scores {b['next_fid']:.3g}"
    d = b["diff"]
    if d is not None:
        text += f" (paired difference {d['fid_diff']:+.3g} [{d['diff_lo']:+.3g}, {d['diff_hi']:+.3g}])"
    if b["separated"] is not None:
        how = "separated" if b["separated"] else "cannot be separated"
        text += f", {how}" + (" by overlapping intervals" if b["test"] == "overlap" else "")
    return text


def _break_sentence(schedule: str, c: dict) -> str:
    head = f"{schedule}: {c['solver']} ({_steps_text(c['steps'])}{', ' + c['grid'] if c.get('grid') else ''})"
    if c["row"] is None:
        return f"{head} gives no finite FID at any w."
    lowest = f"its lowest {c['fid']:.3g} at w = {c['w']:g}"
    if not _finite(c["top_fid"]):
        return f"{head} breaks at high w: FID is not finite at w = {c['top_w']:g} ({lowest})."
    return (
        f"{head} breaks at high w: FID {c['top_fid']:.3g} at w = {c['top_w']:g}, more than "
        f"{BREAK_FACTOR:g} times {lowest}."
    )


def guidance_sentences(best: Sequence[dict], ceiling: dict | None = None) -> list[str]:
    """Plain sentences from ``best_scales``: per schedule the w of lowest FID with its setting and
    interval, the next-best w and whether the paired test separates them, precision and recall at
    that w, how class accuracy moves from the smallest to the largest w (with the classifier
    ceiling, ``metrics.conditional.classifier_ceiling``'s dict, when given); then every curve that
    breaks at high w."""
    lines = []
    for b in best:
        s = b["schedule"]
        if b["row"] is None:
            lines.append(f"{s}: no guided row has a finite FID.")
        else:
            clauses = [
                f"{s}: FID is lowest at w = {b['w']:g} ({_setting(b)}, FID "
                f"{_interval(b['fid'], b['fid_lo'], b['fid_hi'])})",
                _next_clause(b),
            ]
            if b["precision"] is not None or b["recall"] is not None:
                clauses.append(
                    f"precision {_num(b['precision'])} and recall {_num(b['recall'])} at w = {b['w']:g}"
                )
            clauses.append(_accuracy_clause(b["curve"], ceiling))
            lines.append("; ".join(c for c in clauses if c) + ".")
        lines += [_break_sentence(s, c) for c in b["curves"] if c["breaks"]]
    return lines


def _best_table(best: Sequence[dict]) -> str:
    show_grid = any(b.get("grid") for b in best)
    table = []
    for b in best:
        d = b["diff"]
        verdict = None if b["separated"] is None else "separated" if b["separated"] else "cannot be separated"
        cells = {
            "schedule": b["schedule"],
            "best w": b["w"],
            "solver": b["solver"],
            "steps": b["steps"],
            **({"grid": b.get("grid")} if show_grid else {}),
            "FID [95%]": None if b["row"] is None else _interval(b["fid"], b["fid_lo"], b["fid_hi"], ".4g"),
            "next-best w": b["next_w"],
            "FID(next) − FID(best) [95%]": None
            if d is None
            else f"{d['fid_diff']:+.3g} [{d['diff_lo']:+.3g}, {d['diff_hi']:+.3g}]",
            "verdict": verdict,
            "class accuracy [95%]": _proportion_cell(b, "class_accuracy"),
            "precision [95%]": _proportion_cell(b, "precision"),
            "recall [95%]": _proportion_cell(b, "recall"),
        }
        table.append(cells)
    return _table(table, list(table[0])) if table else ""


def _proportion_cell(r: dict, name: str) -> str | None:
    if r.get(name) is None:
        return None
    return _interval(r[name], r.get(f"{name}_lo"), r.get(f"{name}_hi"))


def _rows_table(rows: Sequence[dict]) -> str:
    guided = guided_rows(rows)
    off_diagonal = any((r.get("sample_schedule") or r["schedule"]) != r["schedule"] for r in guided)
    show_grid = any(r.get("grid") for r in guided)
    table = []
    for r in guided:
        cells = {"schedule": r["schedule"]}
        if off_diagonal:
            cells["sample schedule"] = r.get("sample_schedule") or r["schedule"]
        cells.update(solver=r["solver"], steps=r["steps"])
        if show_grid:
            cells["grid"] = r.get("grid")
        cells.update(
            {
                "w": _w(r),
                "nfe": r.get("nfe"),
                "FID [95%]": _interval(r.get("fid"), r.get("fid_lo"), r.get("fid_hi"), ".4g"),
                "class accuracy [95%]": _proportion_cell(r, "class_accuracy"),
                "precision [95%]": _proportion_cell(r, "precision"),
                "recall [95%]": _proportion_cell(r, "recall"),
            }
        )
        table.append(cells)
    return _table(table, list(table[0]))


def section_html(
    rows: Sequence[dict],
    best: Sequence[dict],
    figures: dict[str, tuple[str | Path | None, str]] | None = None,
    ceiling: dict | None = None,
) -> str:
    """The report's guidance section: the explanation, the classifier ceiling, the sentences, the
    best w per schedule (``best_scales``), ``figures`` (name -> (png, caption), as ``figures``
    returns; embedded as data URIs) and every guided row. ``""`` without guided rows."""
    if not guided_rows(rows):
        return ""
    parts = ["<h2>Guidance</h2>", EXPLANATION]
    ceil = _ceiling_text(ceiling)
    if ceil:
        n = f" ({ceiling['n']} images)" if ceiling.get("n") else ""
        parts.append(
            f"<p>Classifier ceiling: held-out accuracy {html.escape(ceil)}{n}, the most class accuracy "
            "generated samples can show.</p>"
        )
    sentences = guidance_sentences(best, ceiling)
    if sentences:
        parts.append("<ul class='sum'>" + "".join(f"<li>{html.escape(s)}</li>" for s in sentences) + "</ul>")
    if best:
        parts += [
            "<h3>Best guidance scale per training schedule</h3>",
            "<p>The lowest FID over every solver, step count and w of the schedule's diagonal rows, and "
            "the next-best w of that solver and step count with the paired 95% interval of the "
            "difference.</p>",
            _best_table(best),
        ]
    for key, (png, caption) in (figures or {}).items():
        if png is None:
            continue
        parts.append(
            f"<figure id='{html.escape(key)}'><img alt='{html.escape(caption)}' src='{data_uri(png)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    parts += ["<h3>Every guided row</h3>", _rows_table(rows)]
    return "\n".join(parts)


def _drawn_curves(rows: Sequence[dict], schedule: str, families: dict[str, dict]) -> dict[str, list[dict]]:
    """The curves one panel draws, solver -> rows by w (finite FID and class accuracy only): each
    solver at its largest fixed step count (adaptive solvers: their one), at the grid with the lowest
    FID; with more than ``FEW_SOLVERS`` solvers only the lowest-FID solver of each family group."""
    by_solver: dict[str, list[tuple]] = {}
    for key, curve in _curves(rows).items():
        pts = [r for r in curve if _finite(r["fid"]) and _finite(r.get("class_accuracy"))]
        if key[0] == schedule and pts:
            by_solver.setdefault(key[1], []).append((key, pts))
    chosen = {}
    for solver, cands in by_solver.items():
        fixed = [k[2] for k, _ in cands if k[2] != ADAPTIVE_STEPS]
        steps = max(fixed) if fixed else ADAPTIVE_STEPS
        at_steps = [pts for k, pts in cands if k[2] == steps]
        chosen[solver] = min(at_steps, key=lambda pts: min(r["fid"] for r in pts))
    order = [n for n in families if n in chosen] + sorted(set(chosen) - set(families))
    chosen = {n: chosen[n] for n in order}
    if len(chosen) <= FEW_SOLVERS:
        return chosen
    best_of_group: dict[str, str] = {}
    for name, pts in chosen.items():
        group = families.get(name, {}).get("group", "other")
        held = best_of_group.get(group)
        if held is None or min(r["fid"] for r in pts) < min(r["fid"] for r in chosen[held]):
            best_of_group[group] = name
    keep = set(best_of_group.values())
    return {n: pts for n, pts in chosen.items() if n in keep}


def _bars(pts: Sequence[dict], name: str) -> list[list[float]]:
    """Asymmetric error bars ``[below, above]`` from ``name_lo``/``name_hi`` (missing: none)."""
    below = [max(r[name] - r[f"{name}_lo"], 0) if _finite(r.get(f"{name}_lo")) else 0 for r in pts]
    above = [max(r[f"{name}_hi"] - r[name], 0) if _finite(r.get(f"{name}_hi")) else 0 for r in pts]
    return [below, above]


def fid_vs_accuracy_plot(
    rows: Sequence[dict], path, families: dict[str, dict], ceiling: dict | None = None
) -> Path | None:
    """One panel per training schedule (diagonal guided rows): x = class accuracy, y = FID (log), one
    line per solver through the guidance scales by increasing w (``_drawn_curves``), points
    annotated with w, 95% bars in both directions, and the classifier ceiling (``ceiling``:
    ``accuracy`` with ``accuracy_lo``/``accuracy_hi``) as a dotted line over its interval. None
    where no guided row has a finite FID and a class accuracy."""
    schedules = list(dict.fromkeys(r["schedule"] for r in _diagonal(rows)))
    panels = {s: _drawn_curves(rows, s, families) for s in schedules}
    panels = {s: c for s, c in panels.items() if c}
    if not panels:
        return None
    from matplotlib.patches import Patch
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    from difflab.report import plots  # matplotlib (Agg) only where the figure is drawn

    styles = plots.solver_styles(families)
    fallback = {"color": "0.4", "linestyle": "-", "marker": "o"}
    fig, axes = plots._grid(len(panels))
    handles: dict[str, tuple] = {}
    for ax, (schedule, curves) in zip(axes, panels.items()):
        for name, pts in curves.items():
            x = [r["class_accuracy"] for r in pts]
            y = [r["fid"] for r in pts]
            h = ax.errorbar(
                x,
                y,
                xerr=_bars(pts, "class_accuracy"),
                yerr=_bars(pts, "fid"),
                capsize=2,
                lw=1.2,
                ms=4,
                **styles.get(name, fallback),
            )
            handles.setdefault(name, (h, f"{name} ({_steps_text(pts[0]['steps'])})"))
            for r in pts:
                ax.annotate(
                    f"{_w(r):g}",
                    (r["class_accuracy"], r["fid"]),
                    xytext=(3, 3),
                    textcoords="offset points",
                    fontsize=7,
                )
        if ceiling and _finite(ceiling.get("accuracy")):
            ax.axvline(ceiling["accuracy"], color="k", linestyle=":", lw=1)
            if _finite(ceiling.get("accuracy_lo")) and _finite(ceiling.get("accuracy_hi")):
                ax.axvspan(ceiling["accuracy_lo"], ceiling["accuracy_hi"], color="k", alpha=0.08, lw=0)
        if all(r["fid"] > 0 for pts in curves.values() for r in pts):
            ax.set_yscale("log")  # a solver that breaks at high w should not flatten the others
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"schedule = {schedule}", fontsize=10)
        ax.set_xlabel("class accuracy (95% Wilson)")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("FID (95% interval)")
    legend_h, legend_l, last = [], [], None
    for name in [n for n in families if n in handles] + sorted(set(handles) - set(families)):
        group = families.get(name, {}).get("group", "other")
        if group != last:
            legend_h.append(Patch(visible=False))
            legend_l.append(group)
            last = group
        legend_h.append(handles[name][0])
        legend_l.append(f"  {handles[name][1]}")
    if ceiling and _finite(ceiling.get("accuracy")):
        (line,) = axes[0].plot([], [], color="k", linestyle=":", lw=1)
        legend_h.append(line)
        legend_l.append(f"classifier ceiling {_ceiling_text(ceiling)}")
    fig.legend(legend_h, legend_l, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
    fig.suptitle("FID vs class accuracy as the guidance scale w grows (labels: w)")
    fig.tight_layout()
    return plots._save(fig, path)


def figures(
    rows: Sequence[dict], families: dict[str, dict], out_dir, ceiling: dict | None = None
) -> dict[str, tuple[Path, str]]:
    """The guidance figures, name -> (png, caption), written into ``out_dir``: ``{}`` without guided
    rows with a class accuracy."""
    png = fid_vs_accuracy_plot(rows, Path(out_dir) / "fid_vs_accuracy.png", families, ceiling)
    return {} if png is None else {"fid_vs_accuracy": (png, FIGURE_CAPTION)}
