"""W&B: the comparison run (offline by default, in the W&B group of the training runs) and a W&B
Report of it (``wandb-workspaces``)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from difflab.report import sections, tables, text
from difflab.report.page import cell_text
from difflab.results import ADAPTIVE_STEPS, CSV_COLUMNS, Row
from difflab.tracking import shut_down, start_run, why_offline

TABLE_KEY = "comparison/table"
PAIRED_KEY = "comparison/paired"


def _fid_key(kind: str, name: str) -> str:
    return f"comparison/fid_vs_nfe_by_{kind}/{name}"


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_") or "overview"


def _line_plots(rows: Sequence[Row]) -> dict:
    """FID vs NFE line plots, one per schedule (a line per solver) and per solver (a line per schedule)."""
    import wandb

    out = {}
    for kind, other in (("schedule", "solver"), ("solver", "schedule")):
        for name in dict.fromkeys(getattr(r, kind) for r in rows):
            series: dict[str, tuple[list, list]] = {}
            for r in sorted((r for r in rows if getattr(r, kind) == name), key=lambda r: r.nfe):
                xs, ys = series.setdefault(getattr(r, other), ([], []))
                xs.append(r.nfe)
                ys.append(r.fid)
            out[_fid_key(kind, name)] = wandb.plot.line_series(
                xs=[v[0] for v in series.values()], ys=[v[1] for v in series.values()], keys=list(series),
                title=f"FID vs NFE ({kind} = {name})", xname="NFE")  # fmt: skip
    return out


def _section_media(shown: Sequence[sections.Section]) -> dict:
    """Every section's tables (cells as the page writes them) and figures."""
    import wandb

    out = {}
    for s in shown:
        for k, t in enumerate(s.tables):
            data = [[c if isinstance(c, str) else cell_text(c) for c in row] for row in t.rows]
            out[f"report/{_slug(s.title)}/{k}"] = wandb.Table(columns=list(t.header), data=data)
        for f in s.figures:
            prefix = "samples" if f.name.startswith("samples_") else "figures"
            out[f"{prefix}/{f.name}"] = wandb.Image(str(f.path), caption=f.caption)
    return out


def log_comparison(
    rows: Sequence[Row], shown: Sequence[sections.Section], ctx: sections.ReportContext, out_dir, group: str
) -> Path:
    """Write the comparison run under ``out_dir`` (mode from ``WANDB_MODE``, default offline) in W&B
    group ``group`` and return its run folder: every row, the pairs, the line plots, bits/dim, and
    the tables and figures of the sections ``shown``; the best row per budget in the run summary."""
    import wandb

    run = start_run(ctx.cfg, Path(out_dir), group, job_type="comparison", name=f"{group}-comparison")
    try:
        summary = sections.budgets(rows, ctx)
        pairs = tables.paired_records(summary, sections.matrix(rows, ctx))
        every = [[" ".join(map(str, r.seed)) if c == "seed" else getattr(r, c) for c in CSV_COLUMNS]
                 for r in rows]  # fmt: skip
        paired = wandb.Table(columns=list(tables.PAIRED_COLUMNS), data=[list(p.values()) for p in pairs])
        log = {TABLE_KEY: wandb.Table(columns=list(CSV_COLUMNS), data=every), PAIRED_KEY: paired,
               **_line_plots(rows), **_section_media(shown)}  # fmt: skip
        nll = [[s, v["bpd"], v.get("bpd_se")] for s, v in ctx.nll.items() if v.get("bpd") is not None]
        if nll:
            t = wandb.Table(columns=["schedule", "bpd", "bpd_se"], data=nll)
            log["comparison/nll_bpd"] = wandb.plot.bar(t, "schedule", "bpd", title="bits/dim per schedule")
        run.log(log)
        for s in (s for s in summary if s.best is not None):
            best = f"{s.best.schedule} x {s.best.solver} FID {s.best.fid:.4g}"
            run.summary[f"best/nfe<={s.budget:.0f}"] = best
        run.summary.update({f"nll_bpd/{schedule}": bpd for schedule, bpd, _ in nll})
        return Path(run.dir).parent
    finally:
        run.finish()
        shut_down()


def report_blocks(rows: Sequence[Row], summary: Sequence[tables.Budget], where: Mapping[str, str]) -> list:
    """The blocks of the W&B Report (built offline; ``where``: ``entity``, ``project``, ``group``): the
    conclusions per NFE budget (paired test), the table, the paired differences, and FID-vs-NFE
    panels for every schedule and solver from the comparison run of the group."""
    import wandb_workspaces.reports.v2 as wr

    group = where["group"]
    runset = wr.Runset(entity=where.get("entity") or "", project=where["project"],
                       query=f"{group}-comparison")  # fmt: skip

    def grid(panels):
        return wr.PanelGrid(runsets=[runset], panels=panels)

    def media(title, keys):
        return wr.MediaBrowser(title=title, media_keys=keys)

    schedules, solvers = (list(dict.fromkeys(getattr(r, k) for r in rows)) for k in ("schedule", "solver"))
    steps = sorted({r.steps for r in rows if r.steps != ADAPTIVE_STEPS})
    blocks = [
        wr.H1(text=f"difflab: {len(schedules)} schedules x {len(solvers)} solvers ({group})"),
        wr.P(text=f"Schedules: {', '.join(schedules)}. Solvers: {', '.join(solvers)}. Steps: {steps}."),
        wr.H2(text="What the numbers say (paired 95% intervals of the differences)"),
        wr.MarkdownBlock(text="\n".join(f"- {s}" for s in text.summary_sentences(summary))),
        wr.H2(text="Every row"),
        grid([wr.WeavePanelSummaryTable(table_name=TABLE_KEY)]),
        wr.H2(text="Paired differences (to the best per budget; schedules per ODE solver, Holm)"),
        grid([wr.WeavePanelSummaryTable(table_name=PAIRED_KEY)]),
        wr.H2(text="FID vs NFE per schedule"),
    ]
    for s in schedules:
        blocks += [wr.H3(text=f"schedule {s}"), grid([media(s, [_fid_key("schedule", s)])])]
    samples = [f"samples/samples_{s}" for s in schedules]
    return blocks + [
        wr.H2(text="FID vs NFE per solver"),
        grid([media(s, [_fid_key("solver", s)]) for s in solvers]),
        wr.H2(text="Bits/dim per schedule and samples"),
        grid([media("NLL", ["comparison/nll_bpd"]), media("samples", samples)]),
    ]


def publish_report(rows: Sequence[Row], summary: Sequence[tables.Budget], where: Mapping[str, str]) -> str:
    """Save the Report to W&B and return its URL; ``RuntimeError`` with the reason when offline."""
    reason = why_offline()
    if reason:
        raise RuntimeError(f"W&B Report not published: {reason}")
    import wandb
    import wandb_workspaces.reports.v2 as wr

    where = {**where, "entity": where.get("entity") or wandb.Api().default_entity}
    about = "Noise schedules x reverse solvers: FID/KID with 95% intervals, NLL, solver error."
    title, blocks = f"difflab comparison: {where['group']}", report_blocks(rows, summary, where)
    report = wr.Report(project=where["project"], entity=where["entity"], title=title, description=about,
                       blocks=blocks)  # fmt: skip
    report.save()
    return report.url
