"""W&B: the comparison run (offline by default) and a W&B Report of it (``wandb-workspaces``).

The comparison run holds ``comparison/table`` (a ``wandb.Table`` with every row),
``comparison/paired`` (the paired differences the report shows, as in ``results/paired.csv``),
FID-vs-NFE line plots per schedule and per solver, bits/dim per schedule, the report's figures and
sample grids; it shares the W&B group of the training runs (the caller passes ``group``).
``report_blocks`` builds the Report's blocks without any network; ``publish_report`` saves them
to W&B only when online with a key and says why not otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from difflab.report.analysis import (
    ADAPTIVE_STEPS,
    COLUMNS,
    EXTRA_COLUMNS,
    PAIRED_COLUMNS,
    PAIRED_EXTRA_COLUMNS,
    summary_sentences,
    tie_count_lines,
)

TABLE_KEY = "comparison/table"
PAIRED_KEY = "comparison/paired"


def _fid_key(kind: str, name: str) -> str:
    return f"comparison/fid_vs_nfe_by_{kind}/{name}"


def log_comparison(
    rows: Sequence[dict],
    nll: dict[str, dict],
    cfg: dict,
    *,
    out_dir: str | os.PathLike,
    group: str,
    figures: dict[str, str | Path] | None = None,
    grids: dict[str, str | Path] | None = None,
    summary: Sequence[dict] = (),
    pairs: Sequence[dict] = (),
    ties: Sequence[dict] = (),
) -> Path:
    """Write the comparison run under ``out_dir`` (mode from ``WANDB_MODE``, default offline) in W&B
    group ``group`` and return its run folder. ``pairs``: ``analysis.paired_rows``; ``ties``:
    ``analysis.tie_counts`` (run summary)."""
    import wandb

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    folders = {"WANDB_CACHE_DIR": "cache", "WANDB_DATA_DIR": "data", "WANDB_CONFIG_DIR": "config"}
    for var, sub in folders.items():
        if not os.environ.get(var):  # W&B's own folders stay inside the output, not in $HOME
            os.environ[var] = str(out_dir / sub)
    wb = cfg.get("wandb") or {}
    run = wandb.init(
        project=wb.get("project", "difflab"),
        entity=wb.get("entity"),
        group=group,
        job_type="comparison",
        name=f"{group}-comparison",
        config=cfg,
        dir=str(out_dir),
        mode=os.environ.get("WANDB_MODE", "offline"),
        settings=wandb.Settings(silent=True, console="off"),
    )
    try:
        cols = list(COLUMNS + EXTRA_COLUMNS)
        table = wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])
        log = {TABLE_KEY: table}
        pcols = list(PAIRED_COLUMNS + PAIRED_EXTRA_COLUMNS)
        log[PAIRED_KEY] = wandb.Table(columns=pcols, data=[[p.get(c) for c in pcols] for p in pairs])
        for kind, other in (("schedule", "solver"), ("solver", "schedule")):
            for name in dict.fromkeys(r[kind] for r in rows):
                series = {}
                for r in sorted((r for r in rows if r[kind] == name), key=lambda r: r["nfe"]):
                    series.setdefault(r[other], ([], []))
                    series[r[other]][0].append(r["nfe"])
                    series[r[other]][1].append(r["fid"])
                log[_fid_key(kind, name)] = wandb.plot.line_series(
                    xs=[v[0] for v in series.values()],
                    ys=[v[1] for v in series.values()],
                    keys=list(series),
                    title=f"FID vs NFE ({kind} = {name})",
                    xname="NFE",
                )
        nll_rows = [[s, v["bpd"], v.get("bpd_se")] for s, v in nll.items() if v.get("bpd") is not None]
        if nll_rows:
            t = wandb.Table(columns=["schedule", "bpd", "bpd_se"], data=nll_rows)
            log["comparison/nll_bpd"] = wandb.plot.bar(t, "schedule", "bpd", title="bits/dim per schedule")
        for name, png in (figures or {}).items():
            if png is not None:
                log[f"figures/{name}"] = wandb.Image(str(png))
        for name, png in (grids or {}).items():
            log[f"samples/{name}"] = wandb.Image(str(png), caption=name)
        run.log(log)
        for s in summary:
            if s["best"] is not None:
                b = s["best"]
                run.summary[f"best/nfe<={s['budget']:.0f}"] = (
                    f"{b['schedule']} x {b['solver']} FID {b['fid']:.4g}"
                )
        for t in ties:
            run.summary[f"ties/nfe<={t['budget']:.0f}/overlap"] = t["tied_overlap"]
            run.summary[f"ties/nfe<={t['budget']:.0f}/paired"] = t["tied_paired"]
        for schedule, v in nll.items():
            if v.get("bpd") is not None:
                run.summary[f"nll_bpd/{schedule}"] = v["bpd"]
        run_dir = Path(run.dir).parent
    finally:
        run.finish()
    return run_dir


def report_blocks(
    rows: Sequence[dict],
    summary: Sequence[dict],
    *,
    entity: str,
    project: str,
    group: str,
    ties: Sequence[dict] = (),
) -> list:
    """The blocks of the W&B Report (built offline): the conclusions per NFE budget (paired test),
    the table, the paired differences, and FID-vs-NFE panels for every schedule and solver from the
    comparison run of ``group``."""
    import wandb_workspaces.reports.v2 as wr

    runset = wr.Runset(
        entity=entity or "", project=project, name=f"{group} comparison", query=f"{group}-comparison"
    )
    schedules = list(dict.fromkeys(r["schedule"] for r in rows))
    solvers = list(dict.fromkeys(r["solver"] for r in rows))
    steps = sorted({r["steps"] for r in rows if r["steps"] != ADAPTIVE_STEPS})
    blocks = [
        wr.H1(text=f"difflab: {len(schedules)} schedules x {len(solvers)} solvers ({group})"),
        wr.P(
            text=f"Schedules: {', '.join(schedules)}. Solvers: {', '.join(solvers)}. "
            f"Steps: {steps} (rk45 adaptive)."
        ),
        wr.H2(text="What the numbers say (paired 95% intervals of the differences)"),
        wr.MarkdownBlock(
            text="\n".join(f"- {s}" for s in [*summary_sentences(summary), *tie_count_lines(ties)])
        ),
        wr.H2(text="Every row"),
        wr.PanelGrid(runsets=[runset], panels=[wr.WeavePanelSummaryTable(table_name=TABLE_KEY)]),
        wr.H2(text="Paired differences (to the best per budget; schedules per ODE solver, Holm)"),
        wr.PanelGrid(runsets=[runset], panels=[wr.WeavePanelSummaryTable(table_name=PAIRED_KEY)]),
        wr.H2(text="FID vs NFE per schedule"),
    ]
    for schedule in schedules:
        blocks += [
            wr.H3(text=f"schedule {schedule}"),
            wr.PanelGrid(
                runsets=[runset],
                panels=[wr.MediaBrowser(title=schedule, media_keys=[_fid_key("schedule", schedule)])],
            ),
        ]
    blocks.append(wr.H2(text="FID vs NFE per solver"))
    blocks.append(
        wr.PanelGrid(
            runsets=[runset],
            panels=[wr.MediaBrowser(title=s, media_keys=[_fid_key("solver", s)]) for s in solvers],
        )
    )
    blocks += [
        wr.H2(text="Bits/dim per schedule and samples"),
        wr.PanelGrid(
            runsets=[runset],
            panels=[
                wr.MediaBrowser(title="NLL", media_keys=["comparison/nll_bpd"]),
                wr.MediaBrowser(title="samples", media_keys=[f"samples/{s}" for s in schedules]),
            ],
        ),
    ]
    return blocks


def why_offline() -> str | None:
    """Why a Report cannot be published now (a sentence), or ``None`` when it can be tried."""
    if os.environ.get("WANDB_MODE", "offline") in ("offline", "disabled", "dryrun"):
        return "WANDB_MODE is offline (set WANDB_MODE=online to publish)"
    if not os.environ.get("WANDB_API_KEY"):
        try:
            import wandb

            if not wandb.Api().api_key:
                return "no W&B API key (run `wandb login` or set WANDB_API_KEY)"
        except Exception as e:
            return f"W&B is not reachable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return None


def publish_report(
    rows, summary, *, entity: str | None, project: str, group: str, ties: Sequence[dict] = ()
) -> str:
    """Save the Report to W&B and return its URL; ``RuntimeError`` with the reason when offline."""
    reason = why_offline()
    if reason:
        raise RuntimeError(f"W&B Report not published: {reason}")
    import wandb
    import wandb_workspaces.reports.v2 as wr

    entity = entity or wandb.Api().default_entity
    report = wr.Report(
        project=project,
        entity=entity,
        title=f"difflab comparison: {group}",
        description="Noise schedules x reverse solvers: FID/KID with 95% intervals, NLL, solver error.",
        blocks=report_blocks(rows, summary, entity=entity, project=project, group=group, ties=ties),
    )
    report.save()
    return report.url
