"""The report's sections: each is one function ``(rows, ctx) -> Section | None`` from the comparison's
rows (one per setting, over the training seeds) and the ``ReportContext`` to its title, sentences,
tables and figures; ``SECTIONS`` lists them in page order. ``page.render`` writes them as HTML and
``wandb_report.log_comparison`` logs the same tables and figures. A new view is one function here and
one line in ``SECTIONS``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from difflab.metrics.diagnostics import COVERAGE_LIMIT
from difflab.metrics.paired import Pairing
from difflab.report import axes, figures, tables, text, weights
from difflab.results import ADAPTIVE_STEPS, Row
from difflab.schedules import schedule_names
from difflab.solvers.registry import Solvers


@dataclass(frozen=True)
class Table:
    """A table: its caption, header and rows of cells (text, numbers or None); ``marks``: a CSS class
    per row (``best``, ``plaus`` or ""); ``folded``: shown collapsed under its caption."""

    caption: str
    header: tuple[str, ...]
    rows: tuple[tuple, ...]
    marks: tuple[str, ...] = ()
    folded: bool = False


@dataclass(frozen=True)
class Figure:
    name: str
    path: Path
    caption: str


@dataclass(frozen=True)
class Section:
    """What one section shows, in this order: ``paragraphs``, ``bullets`` (sentences as a list),
    ``figures``, ``tables``; ``level`` 2 for a section, 3 for a subsection; no title: no heading."""

    title: str
    paragraphs: tuple[str, ...] = ()
    bullets: tuple[str, ...] = ()
    figures: tuple[Figure, ...] = ()
    tables: tuple[Table, ...] = ()
    level: int = 2


@dataclass(frozen=True, eq=False)
class ReportContext:
    """Everything a section reads beside the rows: the resolved params ``cfg`` (schedules, solvers,
    the sample axes, the config shown), the ``pairing`` of the rows, the ``solvers`` with their specs,
    the NLL per schedule (``metrics.nll.nll_by_schedule``), the data's ``meta`` (dataset, image counts,
    ``data_floor``, ``classifier_ceiling``), the ``plots`` folder figures are drawn into, the
    sample grids ``grids[model][solver] -> png`` and ``metrics.diagnostics.network_diagnostics``' record."""

    cfg: Mapping
    pairing: Pairing
    solvers: Solvers
    nll: Mapping[str, dict] = field(default_factory=dict)
    meta: Mapping = field(default_factory=dict)
    plots: Path = Path("plots")
    grids: Mapping[str, Mapping[str, Path]] = field(default_factory=dict)
    diagnostics: Mapping = field(default_factory=dict)

    def png(self, name: str) -> Path:
        return Path(self.plots) / f"{name}.png"

    def figure(self, name: str, path: Path | None, **fmt) -> tuple[Figure, ...]:
        """The figure at ``path`` with its caption (``text.CAPTIONS[name]``); () where none was drawn."""
        return () if path is None else (Figure(name, path, text.CAPTIONS[name].format(**fmt)),)


# -- the comparison shared by several sections -----------------------------------------------------
def main_rows(rows: Sequence[Row], ctx: ReportContext) -> list[Row]:
    """The schedule x solver x steps slice (``tables.main_slice``), or every row where it is empty."""
    return tables.main_slice(rows, ctx.cfg.get("sample") or {}) or list(rows)


def _main_budgets(rows: Sequence[Row], ctx: ReportContext) -> tuple[list[Row], list[float]]:
    main = main_rows(rows, ctx)
    return main, tables.default_budgets(main, (ctx.cfg.get("sample") or {}).get("steps") or [])


def budgets(rows: Sequence[Row], ctx: ReportContext) -> list[tables.Budget]:
    return tables.budget_summary(*_main_budgets(rows, ctx), ctx.pairing)


def matrix(rows: Sequence[Row], ctx: ReportContext) -> tables.Matrix:
    main, nfe = _main_budgets(rows, ctx)
    return tables.schedule_matrix(main, ctx.pairing, tables.matrix_budget(nfe), ctx.solvers)


def _used(rows: Sequence[Row], ctx: ReportContext, keep: Callable = lambda spec: True) -> list[str]:
    return [n for n in ctx.solvers.names if keep(ctx.solvers.spec(n)) and any(r.solver == n for r in rows)]


def _steps(r: Row) -> int | str:
    return "adaptive" if r.steps == ADAPTIVE_STEPS else r.steps


def _row_cells(r: Row, columns: Sequence[str]) -> tuple:
    """A row's cells: ``steps`` "adaptive" for an adaptive solver, NFE as a whole number."""
    special = {"steps": _steps(r), "nfe": f"{r.nfe:.0f}", "seed": " ".join(map(str, r.seed)),
               "vs_converged": text.vs_converged(r)}  # fmt: skip
    return tuple(special.get(c, getattr(r, c)) for c in columns)


def _marks(shown: Sequence[Row], rows: Sequence[Row], ctx: ReportContext) -> tuple[str, ...]:
    """``best`` for a budget's best row, ``plaus`` for the plausible frontier's."""
    main = main_rows(rows, ctx)
    best = {id(s.best) for s in budgets(rows, ctx) if s.best is not None}
    plaus = {id(r) for r in tables.plausible_frontier(main, ctx.pairing)}
    return tuple("best" if id(r) in best else "plaus" if id(r) in plaus else "" for r in shown)


# -- the sections ----------------------------------------------------------------------------------
START_HEADER = f"denoiser error at the start (log-SNR; within {COVERAGE_LIMIT:g}x from)"
NETWORK_HEADER = ("network", "converged PF-ODE FID [95%]", "converged SDE FID [95%]", "floor FID [95%]", "n",
                  "memorization ratio", "copy fraction (chance)", "val loss drop, last fifth",
                  "still falling", START_HEADER)  # fmt: skip
FRONTIER_COLUMNS = ("schedule", "solver", "steps", "nfe", "fid", "fid_lo", "fid_hi", "solver_error",
                    "vs_converged", "beats_converged")  # fmt: skip
DESIGN_COLUMNS = {
    "schedule": "schedule", "parameters": "parameters", "path": "path", "alpha_sigma": "alpha(t), sigma(t)",
    "noise_range": "noise levels", "prediction": "prediction target", "time_sampling": "noise-level density",
    "weighting": "loss weighting", "network": "network", "max_steps": "training steps", "seeds": "seeds",
}  # fmt: skip
INVARIANCE_HEADER = ("solver", "grid", "family", "rows measured", "max |dx|", "worst row",
                     "rows above {tol:g}")  # fmt: skip
PROPORTIONS = ("class_accuracy", "precision", "recall")
AT_BEST = ("FID [95%]", "next-best w", "FID(next) − FID(best) [95%]", "verdict")
PROPORTION_HEADER = ("class accuracy [95%]", "precision [95%]", "recall [95%]")
BEST_CAPTION = ("Best guidance scale per training schedule: the lowest FID over every solver, step count and "
                "w of the schedule's diagonal rows, and the next-best w of that solver and step count with "
                "the paired 95% interval of the difference.")  # fmt: skip
EVERY_COLUMNS = ("schedule", "solver", "steps", "nfe", "fid", "fid_lo", "fid_hi", "kid_mean", "kid_std",
                 "nll_bpd", "solver_error", "seconds_per_sample", "n_samples", "feature_extractor",
                 "nll_bpd_se", "sample_schedule", "grid", "guidance_scale", "seed", "precision", "recall",
                 "class_accuracy", "invariance_error", "vs_converged", "beats_converged")  # fmt: skip


def _network_cells(name: str, e: Mapping) -> tuple:
    fids = [text.interval(e[f"{k}_fid"], e[f"{k}_lo"], e[f"{k}_hi"])
            for k in ("converged_ode", "converged_sde", "floor")]  # fmt: skip
    copy = None if e["copy_fraction"] is None else f"{e['copy_fraction']:.2f} ({e['copy_fraction_null']:.2f})"
    drop = None if e["val_loss_drop"] is None else f"{e['val_loss_drop']:.1%}"
    ratio, covered = e.get("start_error_ratio"), e.get("covered_from_log_snr")
    reach = "none" if covered is None else f"{covered:.2f}"
    start = None if ratio is None else f"{ratio:,.3g}x at {e['start_log_snr']:.2f}; {reach}"
    return (name, *fids, e["floor_n"], e["memorization_ratio"], copy, drop, e["loss_still_falling"], start)


def network_first(rows: Sequence[Row], ctx: ReportContext) -> Section | None:
    d = ctx.diagnostics
    if not d.get("networks"):
        return None
    table = Table("", NETWORK_HEADER, tuple(_network_cells(name, e) for name, e in d["networks"].items()))
    drawn = ctx.figure("loss_curves", figures.loss_curves(d.get("curves") or {}, ctx.png("loss_curves")))
    return Section("Network first: what this run can conclude", (), tuple(d["regime"]), drawn, (table,))


def overview(rows: Sequence[Row], ctx: ReportContext) -> Section:
    main = main_rows(rows, ctx)
    n = ", ".join(str(k) for k in sorted({r.n_samples for r in main if r.n_samples}))
    fe = ", ".join(sorted({r.feature_extractor for r in main if r.feature_extractor}))
    dataset = ctx.meta.get("dataset", (ctx.cfg.get("data") or {}).get("name"))
    size = f"{len({r.schedule for r in main})} schedules x {len({r.solver for r in main})} solvers"
    line = f"experiment {ctx.cfg.get('experiment')} · dataset {dataset} · {len(main)} rows ({size}) · "
    return Section("", paragraphs=(line + f"{n} samples per row · FID features: {fe}",))


def numbers(rows: Sequence[Row], ctx: ReportContext) -> Section:
    summary = text.summary_sentences(budgets(rows, ctx))
    return Section("What the numbers say", paragraphs=(text.NUMBERS_INTRO,), bullets=tuple(summary))


def training_seeds(rows: Sequence[Row], ctx: ReportContext) -> Section:
    survivors = tables.surviving_differences(rows, ctx.pairing, ctx.solvers)
    lines = text.survival_sentences(survivors, ctx.pairing.n_seeds)
    return Section("Training seeds", bullets=tuple(lines), level=3)


def solvers_and_floor(rows: Sequence[Row], ctx: ReportContext) -> Section:
    main = main_rows(rows, ctx)
    groups = tables.group_by(_used(main, ctx), ctx.solvers.group)
    families = "; ".join(f"{g}: {', '.join(v)}" for g, v in groups.items())
    by_family = f"Solvers by family (from their specs; the figures group them the same way): {families}."
    paragraphs = [by_family, text.invariance_sentence(main, ctx.solvers)]
    floor, meta = ctx.meta.get("data_floor") or {}, ctx.meta
    if floor.get("fid") is not None:
        fid = text.interval(floor["fid"], floor.get("fid_lo"), floor.get("fid_hi"))
        split = f"the held-out split ({meta.get('n_heldout')} images) against the reference"
        paragraphs.append(f"Real-data floor: {split} ({meta.get('n_train')} images) scores FID {fid} "
                          "with the same features.")  # fmt: skip
    return Section("Solvers and the real-data floor", paragraphs=tuple(paragraphs), level=3)


def frontier(rows: Sequence[Row], ctx: ReportContext) -> Section:
    front = tables.plausible_frontier(main_rows(rows, ctx), ctx.pairing)
    cells = tuple(_row_cells(r, FRONTIER_COLUMNS) for r in front)
    note = ("Rows that no cheaper-or-equal row beats by a paired 95% interval of the difference excluding 0 "
            "(bold green: best per budget).")  # fmt: skip
    table = Table("", FRONTIER_COLUMNS, cells, _marks(front, rows, ctx))
    return Section("Pareto frontier of FID vs NFE", paragraphs=(note,), tables=(table,))


def _budget_table(s: tables.Budget) -> Table:
    b = s.best
    cells = [(text.marked(b), f"{b.nfe:.0f}", b.fid, "best", None, None)]
    for d in s.others:
        verdict = "cannot be separated" if not d.resolved else "worse" if d.fid_diff > 0 else "better"
        cells.append((text.marked(d.a), f"{d.a.nfe:.0f}", d.a.fid, text.diff(d), f"{d.p_value:.2g}", verdict))
    tied = f"{len(s.tied)} of {len(s.others)} others cannot be separated"
    caption = f"NFE ≤ {s.budget:.0f}: best {b.key} (FID {b.fid:.4g}); {tied}"
    header = ("row", "nfe", "fid", "FID − best [95%]", "p", "verdict")
    return Table(caption, header, tuple(cells), ("best",) + ("",) * len(s.others), folded=True)


def budget_differences(rows: Sequence[Row], ctx: ReportContext) -> Section:
    note = ("FID(row) − FID(best) with its paired bootstrap 95% interval (bias-shifted like each row's own "
            "interval; p from the bootstrap standard error). Also in paired.csv.")  # fmt: skip
    shown = tuple(_budget_table(s) for s in budgets(rows, ctx) if s.best is not None)
    return Section("Paired differences to the best, per NFE budget", paragraphs=(note,), tables=shown)


def schedule_pairs(rows: Sequence[Row], ctx: ReportContext) -> Section | None:
    m = matrix(rows, ctx)
    if not m.cells:
        return None
    pairs = list(dict.fromkeys((d.a.schedule, d.b.schedule) for d in m.cells))
    cells = {(d.a.solver, d.a.schedule, d.b.schedule): d for d in m.cells}
    body = []
    for name, k, nfe in m.solvers:
        found = [cells.get((name, a, b)) for a, b in pairs]
        body.append((name, k, f"{nfe:.0f}", *(d and text.diff(d) + " *" * d.significant for d in found)))
    header = ("solver", "steps", "nfe", *(f"{a} − {b}" for a, b in pairs))
    intro = text.MATRIX_INTRO.format(n=len(m.cells), n_sig=sum(d.significant for d in m.cells))
    title = f"Schedules compared, ODE solvers at NFE ≤ {m.budget:.0f}"
    return Section(title, (intro,), tables=(Table("", header, tuple(body)),))


def fid_figures(rows: Sequence[Row], ctx: ReportContext) -> Section:
    main, k, solvers = main_rows(rows, ctx), ctx.pairing.n_seeds, ctx.solvers
    interval = "95% intervals" + (f" over {k} training seeds and the sampling bootstrap" if k > 1 else "")
    by_schedule, by_solver = "fid_vs_nfe_by_schedule", "fid_vs_nfe_by_solver"
    plausible = tables.plausible_frontier(main, ctx.pairing)
    png = figures.fid_vs_nfe(main, "schedule", ctx.png(by_schedule), solvers)
    error = figures.solver_error_vs_nfe(main, ctx.png("solver_error"), solvers)
    drawn = (ctx.figure(by_schedule, png, interval=interval)
             + ctx.figure(by_solver, figures.fid_vs_nfe(main, "solver", ctx.png(by_solver), solvers))
             + ctx.figure("pareto", figures.pareto(main, ctx.png("pareto"), solvers, plausible))
             + ctx.figure("solver_error", error))  # fmt: skip
    return Section("FID against NFE", figures=drawn)


def training_design(rows: Sequence[Row], ctx: ReportContext) -> Section:
    known = [s for s in ctx.cfg.get("schedules", []) if s in schedule_names()]
    cfg = {**ctx.cfg, "schedules": [s for s in known if s in (ctx.cfg.get("schedule") or {})]}
    body = tuple(tuple(d[k] for k in DESIGN_COLUMNS) for d in weights.training_design(cfg))
    table = Table("", tuple(DESIGN_COLUMNS.values()), body)
    name = "design_loss_weights"
    drawn = ctx.figure(name, figures.loss_weights(cfg, ctx.png(name))) if cfg["schedules"] else ()
    return Section("Training or sampling?", (text.DESIGN_INTRO,), figures=drawn, tables=(table,))


def log_snr_solvers(rows: Sequence[Row], ctx: ReportContext) -> Section:
    marks = axes.invariance_marks(rows, ctx.solvers)
    inv = _used(rows, ctx, lambda spec: spec.schedule_invariant)
    intro = text.LOG_SNR_INTRO.format(names=", ".join(inv)) if inv else "No solver here steps in log-SNR."
    header = tuple(h.format(tol=axes.INVARIANCE_TOL) for h in INVARIANCE_HEADER) + ("mark",)
    body = tuple((s.solver, s.grid, s.group, s.n_measured, s.max_error, s.worst, s.n_above, s.mark)
                 for s in axes.invariance_by_solver(marks, ctx.solvers))  # fmt: skip
    paragraphs = (intro, text.invariance_text(marks, axes.INVARIANCE_TOL))
    shown = (Table("", header, body),) if body else ()
    return Section("Solvers that step in log-SNR", paragraphs, tables=shown, level=3)


def t_solvers(rows: Sequence[Row], ctx: ReportContext) -> Section:
    title = "Solvers that step in t: training schedule x sampling schedule"
    panels = axes.cross_schedules(rows, ctx.solvers)
    if not panels:
        none = ("No network was sampled under another schedule than its own (sample.schedules null), so "
                "training and sampling schedule are not separated here.")  # fmt: skip
        return Section(title, (none,), level=3)
    steppers = ", ".join(_used(rows, ctx, lambda spec: not spec.schedule_invariant))
    intro = (f"{steppers} step in t, so the sampling schedule changes their discretisation: each trained "
             "network was sampled under every sampling schedule.")  # fmt: skip
    name = "design_cross_schedule"
    drawn = ctx.figure(name, figures.cross_heatmap(panels, ctx.png(name)))
    return Section(title, (intro,), tuple(text.cross_sentences(panels)), drawn, level=3)


def time_grid(rows: Sequence[Row], ctx: ReportContext) -> Section:
    title, panels = "What the time grid changes", axes.grid_effect(rows, ctx.solvers)
    if not panels:
        return Section(title, ("One time grid only (sample.grids): nothing to compare.",), level=3)
    drawn = ctx.figure("design_grid_effect", figures.grid_effect(panels, ctx.png("design_grid_effect")))
    return Section(title, bullets=tuple(text.grid_sentences(panels)), figures=drawn, level=3)


def _proportions(r: Row | None) -> tuple:
    """Class accuracy, precision and recall with their intervals (None where not measured)."""
    values = [(getattr(r, k), getattr(r, f"{k}_lo"), getattr(r, f"{k}_hi")) for k in PROPORTIONS] if r else []
    return tuple(None if v[0] is None else text.interval(*v) for v in values) or (None,) * 3


def _best_scales_table(guided: Sequence[axes.Guided]) -> Table:
    grid = any(g.best and g.best.best.grid for g in guided)
    body = []
    for g in guided:
        c = g.best or axes.Curve((), None, None, None)
        b, n, d = c.best, c.runner, c.diff
        setting = (b and b.guidance_scale, b and b.solver, b and _steps(b), *((b and b.grid,) * grid))
        fid = b and text.interval(b.fid, b.fid_lo, b.fid_hi, ".4g")
        verdict = d and ("separated" if d.resolved else "cannot be separated")
        at_best = (fid, n and n.guidance_scale, d and text.diff(d), verdict)
        body.append((g.schedule, *setting, *at_best, *_proportions(b)))
    header = ("schedule", "best w", "solver", "steps", *("grid",) * grid, *AT_BEST, *PROPORTION_HEADER)
    return Table(BEST_CAPTION, header, tuple(body))


def _guided_table(guided: Sequence[Row]) -> Table:
    off, grid = any(not r.on_diagonal for r in guided), any(r.grid for r in guided)
    header = ("schedule", *("sample schedule",) * off, "solver", "steps", *("grid",) * grid, "w", "nfe",
              "FID [95%]")  # fmt: skip
    body = []
    for r in guided:
        setting = (r.schedule, *(r.sample_schedule,) * off, r.solver, _steps(r), *(r.grid,) * grid)
        fid = text.interval(r.fid, r.fid_lo, r.fid_hi, ".4g")
        body.append((*setting, r.guidance_scale, f"{r.nfe:.0f}", fid, *_proportions(r)))
    return Table("Every guided row", header + PROPORTION_HEADER, tuple(body))


def guidance(rows: Sequence[Row], ctx: ReportContext) -> Section | None:
    guided = axes.guided_rows(rows)
    if not guided:
        return None
    ceiling = ctx.meta.get("classifier_ceiling")
    best = axes.best_scales(rows, ctx.pairing)
    paragraphs = [text.GUIDANCE_INTRO]
    if text.ceiling_text(ceiling):
        n = f" ({ceiling['n']} images)" if ceiling.get("n") else ""
        paragraphs.append(f"Classifier ceiling: held-out accuracy {text.ceiling_text(ceiling)}{n}, the most "
                          "class accuracy generated samples can show.")  # fmt: skip
    panels = {g.schedule: c for g in best if (c := axes.drawn_curves(g, ctx.solvers))}
    png = figures.fid_vs_accuracy(panels, ctx.png("fid_vs_accuracy"), ctx.solvers, ceiling)
    shown = ((_best_scales_table(best),) if best else ()) + (_guided_table(guided),)
    bullets = tuple(text.guidance_sentences(best, ceiling))
    return Section("Guidance", tuple(paragraphs), bullets, ctx.figure("fid_vs_accuracy", png), shown)


def likelihood(rows: Sequence[Row], ctx: ReportContext) -> Section | None:
    if not ctx.nll:
        return None
    body = tuple((s, v.get("bpd"), v.get("bpd_se"), v.get("n_seeds")) for s, v in ctx.nll.items())
    table = Table("", ("schedule", "bpd", "bpd_se", "n_seeds"), body)
    drawn = ctx.figure("nll_bpd", figures.nll_bars(ctx.nll, ctx.png("nll_bpd")))
    return Section("Negative log-likelihood (bits/dim, held-out)", figures=drawn, tables=(table,))


def every_row(rows: Sequence[Row], ctx: ReportContext) -> Section:
    note = ("steps = adaptive: an adaptive solver (its NFE is measured). solver_error: mean RMS distance to "
            "a high-accuracy rk45 solution from the same noise, in model space [-1, 1]; empty for stochastic "
            "solvers.")  # fmt: skip
    cells = tuple(_row_cells(r, EVERY_COLUMNS) for r in rows)
    return Section("Every row", (note,), tables=(Table("", EVERY_COLUMNS, cells, _marks(rows, rows, ctx)),))


def samples(rows: Sequence[Row], ctx: ReportContext) -> Section | None:
    drawn = []
    for schedule, by_solver in ctx.grids.items():
        name = f"samples_{schedule}"
        png = figures.sample_grids(by_solver, ctx.png(name), f"samples: {schedule}")
        caption = f"{schedule}: 64 samples per solver at its largest step count"
        drawn += [Figure(name, png, caption)] if png is not None else []
    return Section("Samples", figures=tuple(drawn)) if drawn else None


SECTIONS: tuple[Callable[[Sequence[Row], ReportContext], Section | None], ...] = (
    network_first, overview, numbers, training_seeds, solvers_and_floor, frontier, budget_differences,
    schedule_pairs, fid_figures, training_design, log_snr_solvers, t_solvers, time_grid, guidance,
    likelihood, every_row, samples,
)  # fmt: skip


def build_sections(rows: Sequence[Row], ctx: ReportContext) -> list[Section]:
    """Every section of ``SECTIONS`` that has something to show, in order."""
    return [s for s in (section(rows, ctx) for section in SECTIONS) if s is not None]
