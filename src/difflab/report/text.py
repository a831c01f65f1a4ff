"""The report's sentences, written from what ``tables`` and ``axes`` computed (plain text; the page
escapes it)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from difflab.metrics.paired import Difference
from difflab.report.axes import BREAK_FACTOR, NOT_IDENTICAL, NOT_MEASURED, Curve, Guided
from difflab.report.tables import Budget, group_by
from difflab.results import ADAPTIVE_STEPS, Row
from difflab.solvers.registry import Solvers


def num(v, fmt: str = ".3g") -> str:
    return "n/a" if v is None else format(float(v), fmt)


def interval(v, lo, hi, fmt: str = ".3g") -> str:
    """``"v [lo, hi]"`` (``v`` alone without bounds, ``n/a`` without ``v``)."""
    if v is None or lo is None or hi is None:
        return num(v, fmt)
    return f"{num(v, fmt)} [{num(lo, fmt)}, {num(hi, fmt)}]"


def diff(d: Difference) -> str:
    return f"{d.fid_diff:+.3g} [{d.diff_lo:+.3g}, {d.diff_hi:+.3g}]"


def steps(r: Row) -> str:
    return "adaptive" if r.steps == ADAPTIVE_STEPS else f"{r.steps} steps"


def label(r: Row) -> str:
    return f"{r.schedule} x {r.solver} ({steps(r)}, NFE {r.nfe:.0f})"


def vs_converged(r: Row) -> str | None:
    """FID(row) - FID(its network's converged solution) with its interval; None without a partner."""
    if r.vs_converged is not None:
        return interval(r.vs_converged, r.vs_converged_lo, r.vs_converged_hi, "+.3g")


def marked(r: Row) -> str:
    """The row's key, marked where it beats its own network's converged solution."""
    return r.key + (" (beats converged)" if r.beats_converged else "")


def _beats_clause(s: Budget) -> str:
    """Where a budget's best row beats its own converged solution: so, and the best row that does not."""
    b = s.best
    if not b.beats_converged:
        return ""
    honest = next((d.a for d in s.others if not d.a.beats_converged), None)
    other = f"{label(honest)}, FID {interval(honest.fid, honest.fid_lo, honest.fid_hi)}" if honest else "none"
    return (f" It beats its own network's converged solution (FID difference {vs_converged(b)}): error "
            f"cancellation, not accuracy; the best row in the budget that does not: {other}.")  # fmt: skip


def _names(items: Sequence[str], limit: int = 6) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


def summary_sentences(summary: Sequence[Budget]) -> list[str]:
    """One sentence per budget: the best pair, its interval, the rows whose paired difference to it is
    not resolved and, where the best row beats its own converged solution, the best row that does not."""
    lines = []
    for s in summary:
        if s.best is None:
            lines.append(f"NFE <= {s.budget:.0f}: no row fits this budget.")
            continue
        b = s.best
        text = f"NFE <= {s.budget:.0f}: best {label(b)}, FID {interval(b.fid, b.fid_lo, b.fid_hi)}"
        tied = [d for d in s.others if not d.resolved]
        if tied:
            names = _names([f"{label(d.a)} {d.a.fid:.3g} (difference {diff(d)})" for d in tied])
            tied_of = f"{len(tied)} of {len(s.others)} others"
            text += f"; the paired 95% intervals cannot separate it from {tied_of} ({names})."
        else:
            text += f"; separated from all {len(s.others)} others within the budget."
        lines.append(text + _beats_clause(s))
    return lines


def _setting(r: Row) -> str:
    text = f"{r.solver} {r.steps} steps" + (f", {r.grid} grid" if r.grid else "")
    return text + (f", w={r.guidance_scale:g}" if r.guidance_scale is not None else "")


def _pair_sentence(pair: tuple[str, str], items: list[Difference]) -> str:
    kept = [d for d in items if d.resolved]
    head = f"{pair[0]} - {pair[1]}: "
    if not kept:
        return head + f"within the noise in all {len(items)} settings."
    lower = {pair[0] if d.fid_diff < 0 else pair[1] for d in kept}
    side = f"lower FID for {lower.pop()}" if len(lower) == 1 else "in both directions"
    shown = _names([f"{_setting(d.a)} {diff(d)}" for d in kept])
    return head + f"survives in {len(kept)} of {len(items)} settings ({side}: {shown})."


def survival_sentences(survivors: Sequence[Difference], n_seeds: int) -> list[str]:
    """What the intervals count, then per pair of training schedules the settings where their
    difference survives (``tables.surviving_differences``), then the totals with Holm."""
    lines = [ONE_SEED if n_seeds <= 1 else MANY_SEEDS.format(k=n_seeds, dof=n_seeds - 1)]
    if not survivors:
        return lines + ["No two training schedules share a fixed-step ODE setting to compare."]
    pairs = group_by(survivors, lambda d: (d.a.schedule, d.b.schedule))
    lines += [_pair_sentence(pair, items) for pair, items in pairs.items()]
    n_kept, n_holm = sum(d.resolved for d in survivors), sum(d.significant for d in survivors)
    n = len(survivors)
    return lines + [f"{n_kept} of {n} schedule differences survive at 95% each; {n_holm} with Holm's "
                    f"correction over all {n}."]  # fmt: skip


def invariance_sentence(rows: Sequence[Row], solvers: Solvers) -> str:
    """Which rows are identical by schedule invariance (``axes`` says why) and which step in t."""
    used = [n for n in solvers.names if any(r.solver == n for r in rows)]
    inv = [n for n in used if solvers.spec(n).schedule_invariant]
    other = [n for n in used if not solvers.spec(n).schedule_invariant]
    if not inv:
        return "No solver here is schedule-invariant: every row's schedule enters through the solver too."
    text = (f"Identical by schedule invariance: {', '.join(inv)} step in log-SNR or in EDM's variables, so "
            "for the same exact denoiser, log-SNR range and a grid set in log-SNR (logsnr, edm; not uniform, "
            "which is uniform in t) their rows at the same steps hold the same samples under every schedule "
            "(the same noise); across schedules those rows differ only through training (each schedule "
            "trains its own network) and the range's end points. invariance_error measures it on the trained "
            "networks.")  # fmt: skip
    if other:
        text += f" {', '.join(other)} step in t: their rows differ through the schedule's discretization too."
    return text


def invariance_text(marks: Sequence[tuple[Row, str]], tol: float) -> str:
    """One sentence on ``axes.invariance_marks``."""
    measured = [(r, m) for r, m in marks if m != NOT_MEASURED]
    if not marks:
        return "No schedule-invariant solver was run."
    if not measured:
        return (f"The {len(marks)} rows of schedule-invariant solvers carry no invariance_error "
                "(not measured: sample.invariance_samples = 0, or a table from before it).")  # fmt: skip
    bad = [r for r, m in measured if m == NOT_IDENTICAL]
    top = max(e if math.isfinite(e) else math.inf for e in (r.invariance_error for r, _ in measured))
    text = (f"Of {len(measured)} measured rows of schedule-invariant solvers, {len(measured) - len(bad)} "
            f"give samples identical within {tol:g} (max |dx|, images in [-1, 1]) under every sampling "
            f"schedule; the largest difference is {top:.3g}.")  # fmt: skip
    if bad:
        worst = max(bad, key=lambda r: r.invariance_error if math.isfinite(r.invariance_error) else math.inf)
        text += f" {len(bad)} are NOT identical, the worst {worst.key} ({worst.invariance_error:.3g})."
    return text


def _fid(r: Row) -> str:
    return f"FID {interval(r.fid, r.fid_lo, r.fid_hi)}"


def cross_sentences(panels: Sequence[dict]) -> list[str]:
    """Per t-stepping solver and training schedule: the sampling schedule of lowest FID, against its own."""
    lines = []
    for p in panels:
        parts = []
        for a in p.train:
            mine = {b: p.cells[(a, b)] for b in p.sample if (a, b) in p.cells}
            if not mine:
                continue
            best = min(mine, key=lambda b: mine[b].fid)
            if best == a:
                parts.append(f"trained on {a}, its own schedule scores the lowest FID ({_fid(mine[a])})")
                continue
            own = f", against {_fid(mine[a])} under its own" if a in mine else ""
            parts.append(f"trained on {a}, the lowest FID is under {best} ({_fid(mine[best])}){own}")
        grid = f", {p.grid} grid" if p.grid else ""
        lines.append(f"{p.solver} at {p.steps} steps (NFE {p.nfe:.0f}{grid}): " + "; ".join(parts) + ".")
    return lines


def grid_sentences(panels: Sequence[dict]) -> list[str]:
    """Per grid-effect panel: how often each grid scores the lowest FID over the NFEs all grids
    share, and the spread at the smallest of them."""
    lines = []
    for p in panels:
        by_nfe: dict[float, dict] = {}
        for g, pts in p.lines.items():
            for r in pts:
                by_nfe.setdefault(r.nfe, {})[g] = r
        shared = sorted(n for n, v in by_nfe.items() if len(v) == len(p.lines))
        head = f"{p.solver} ({p.group}) on {p.schedule}"
        if not shared:
            lines.append(f"{head}: the grids share no NFE.")
            continue
        wins = [min(by_nfe[n], key=lambda g: by_nfe[n][g].fid) for n in shared]
        counts = ", ".join(f"{g} grid at {wins.count(g)}" for g in p.lines if wins.count(g))
        low = by_nfe[shared[0]]
        spread = ", ".join(f"{g} {low[g].fid:.3g}" for g in sorted(low, key=lambda g: low[g].fid))
        lines.append(f"{head}: the lowest FID comes from the {counts} of {len(shared)} NFEs; at NFE "
                     f"{shared[0]:.0f} the grids score FID {spread}.")  # fmt: skip
    return lines


def ceiling_text(ceiling: Mapping | None) -> str:
    if not ceiling or ceiling.get("accuracy") is None:
        return ""
    return interval(ceiling["accuracy"], ceiling.get("accuracy_lo"), ceiling.get("accuracy_hi"))


def _accuracy_clause(curve: Curve, ceiling: Mapping | None) -> str:
    pts = [r for r in curve.rows if r.class_accuracy is not None and math.isfinite(r.class_accuracy)]
    if not pts:
        return ""
    (a0, w0), (a1, w1) = ((r.class_accuracy, r.guidance_scale) for r in (pts[0], pts[-1]))
    if len(pts) == 1:
        text = f"accuracy {a0:.3g} at w = {w0:g}"
    else:
        verb = "rises" if a1 > a0 else "falls" if a1 < a0 else "stays"
        text = f"accuracy {verb} from {a0:.3g} at w = {w0:g} to {a1:.3g} at w = {w1:g}"
    ceil = ceiling_text(ceiling)
    return text + (f" (classifier ceiling {ceil})" if ceil else "")


def _next_clause(c: Curve) -> str:
    if c.runner is None:
        return ""
    verdict = "separated" if c.diff.resolved else "cannot be separated"
    return (f"the next best, w = {c.runner.guidance_scale:g}, scores {c.runner.fid:.3g} "
            f"(paired difference {diff(c.diff)}), {verdict}")  # fmt: skip


def _break_sentence(c: Curve) -> str:
    r0, top = c.rows[0], c.rows[-1]
    head = f"{r0.schedule}: {r0.solver} ({steps(r0)}{', ' + r0.grid if r0.grid else ''})"
    if c.best is None:
        return f"{head} gives no finite FID at any w."
    lowest = f"its lowest {c.best.fid:.3g} at w = {c.best.guidance_scale:g}"
    if not math.isfinite(top.fid):
        return f"{head} breaks at high w: FID is not finite at w = {top.guidance_scale:g} ({lowest})."
    return (f"{head} breaks at high w: FID {top.fid:.3g} at w = {top.guidance_scale:g}, more than "
            f"{BREAK_FACTOR:g} times {lowest}.")  # fmt: skip


def guidance_sentences(guided: Sequence[Guided], ceiling: Mapping | None = None) -> list[str]:
    """Per schedule the w of lowest FID with its setting and interval, the next-best w and whether
    the paired test separates them, precision and recall there, how class accuracy moves from the
    smallest to the largest w (with the classifier ceiling); then every curve that breaks at high w."""
    lines = []
    for g in guided:
        c = g.best
        if c is None:
            lines.append(f"{g.schedule}: no guided row has a finite FID.")
        else:
            b = c.best
            setting = f"{b.solver}, {steps(b)}" + (f", {b.grid} grid" if b.grid else "")
            lowest = f"{g.schedule}: FID is lowest at w = {b.guidance_scale:g} ({setting}, {_fid(b)})"
            pr = f"precision {num(b.precision)} and recall {num(b.recall)} at w = {b.guidance_scale:g}"
            measured = b.precision is not None or b.recall is not None
            clauses = [lowest, _next_clause(c), pr if measured else "", _accuracy_clause(c, ceiling)]
            lines.append("; ".join(x for x in clauses if x) + ".")
        lines += [_break_sentence(k) for k in g.curves if k.breaks]
    return lines


# -- the fixed text of the page --------------------------------------------------------------------
ONE_SEED = ("One training seed: training variance is not included, so a difference that survives here "
            "exceeds the sampling noise of one network per schedule only and may not survive "
            "retraining.")  # fmt: skip
MANY_SEEDS = ("Over {k} training seeds: each paired 95% interval counts the spread between trainings and the "
              "sampling noise (normal quantile; the seed spread has {dof} degrees of freedom, so the "
              "intervals are optimistic).")  # fmt: skip
NUMBERS_INTRO = ("Per NFE budget (denoiser evaluations per sample, the final denoising included), the lowest "
                 "FID among the pairs that fit, and the rows it cannot be separated from. Every row draws "
                 "sample i from the same noise, so two rows are compared by a paired bootstrap of their FID "
                 "difference (the same resampled sample indices for both, against the fixed reference "
                 "statistics): a row cannot be separated from the best when the 95% interval of the "
                 "difference contains 0. Each row's own FID interval is a bootstrap 95% interval over "
                 "samples.")  # fmt: skip
MATRIX_INTRO = ("For each fixed-step ODE solver at its largest step count within the budget, the paired FID "
                "difference between every two schedules (same noise per sample, so the shared noise cancels) "
                "with its 95% interval. *: significant at a family-wise 5% with Holm's correction over the "
                "{n} pairs shown ({n_sig} significant); p-values from the paired bootstrap's standard error "
                "(normal approximation). Negative: the first schedule scores the lower FID.")  # fmt: skip
DESIGN_INTRO = ("A schedule enters twice: through training (its path, the network's target, the density of "
                "noise levels and the loss weighting, which together weight each log-SNR) and through "
                "sampling (how the solver steps through time). The table gives the training side of every "
                "schedule as training builds it; the figures and tables below separate the sampling "
                "side.")  # fmt: skip
LOG_SNR_INTRO = ("{names} step in log-SNR or in EDM's variables: for one trained network and a grid set in "
                 "log-SNR (the logsnr and edm grids) their samples are, in exact arithmetic, the same under "
                 "every sampling schedule, so for them a schedule changes the result only through training "
                 "(each schedule trains its own network) and through the grid's end points (the log-SNR "
                 "range the schedule's interval covers). A grid uniform in t puts its times at log-SNRs that "
                 "depend on the schedule, so there they differ through the grid as well.")  # fmt: skip
GUIDANCE_INTRO = ("Classifier-free guidance denoises with D_u + w (D_c - D_u), D_c the conditional and D_u "
                  "the unconditional denoiser of the same network: w = 0 is the unconditional network (the "
                  "null label), w = 1 the plain conditional one, larger w pushes samples towards their "
                  "class. Every guided row draws an equal number of samples per class. Class accuracy is the "
                  "fraction of samples the dataset classifier assigns to the requested label; its ceiling is "
                  "the classifier's own accuracy on held-out images with their true labels. Precision and "
                  "recall are torch-fidelity's improved precision and recall (prc, k = 3 nearest neighbours) "
                  "on the FID features. 95% intervals: FID from the seed spread and the sampling bootstrap; "
                  "Wilson score intervals for class accuracy, precision and recall. The best w per training "
                  "schedule (diagonal rows only: sampled with the schedule the network was trained with) is "
                  "compared with the next-best w of the same solver and steps by the paired bootstrap of "
                  "their FID difference (the same noise per sample).")  # fmt: skip
CAPTIONS = {
    "loss_curves": "Training and validation loss of each network (lines: EMA over a twentieth of the run; "
    "dots: each validation; shaded: the last fifth of training, where a still falling validation loss flags "
    "the network)",
    "fid_vs_nfe_by_schedule": "FID vs NFE per schedule (colour: solver; solid: ODE, dashed: SDE; marker: "
    "order; legend grouped by family and order; bars: {interval}; adaptive solvers are single points)",
    "fid_vs_nfe_by_solver": "FID vs NFE per solver, panels ordered by family and order (one line per "
    "schedule)",
    "pareto": "Every row in the FID-NFE plane with the Pareto frontier (colour: schedule; marker: order; "
    "filled: ODE, hollow: SDE); circled: rows no cheaper-or-equal row beats by a paired 95% interval",
    "solver_error": "Discretization error of each ODE solver: mean RMS distance to an adaptive high-accuracy "
    "solution from the same noise",
    "nll_bpd": "Bits/dim on held-out images per schedule",
    "design_loss_weights": "The weight w(lambda) each schedule's training loss puts on the eps-MSE at "
    "log-SNR lambda (Kingma & Gao 2023: L = integral of w(lambda) E||eps - eps_hat||^2 d lambda): the "
    "density of lambda under the training time density, times the loss weighting, times the factor turning "
    "the target's MSE into the eps-MSE. Each curve is divided by its largest value (log scale); log-SNR "
    "increases to the right (noise on the left, data on the right). The lognormal density's tails, clamped "
    "onto the interval's ends in training, are point masses there and not drawn.",
    "design_cross_schedule": "t-stepping solvers: FID of each trained network (rows) under each sampling "
    "schedule (columns; the network reparametrized to it by log-SNR matching) at one step count per panel, "
    "the same for all cells. Boxed: the network's own schedule (the diagonal); *: the lowest FID of the row.",
    "design_grid_effect": "FID vs NFE (95% intervals) per time grid: for each solver group its best solver "
    "(lowest mean FID on the diagonal) on its best training schedule, one line per grid.",
    "fid_vs_accuracy": "FID vs class accuracy as the guidance scale w grows (points labelled with w), one "
    "panel per training schedule, one line per solver at its largest fixed step count (rk45: adaptive); "
    "bars: 95% intervals in both directions; dotted line and band: the classifier ceiling",
}
