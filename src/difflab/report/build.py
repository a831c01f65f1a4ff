"""Turn the evaluate/nll records into ``results/``: comparison.csv, paired.csv, metrics.json, plots/,
report.html (and the W&B comparison run). Everything is built in ``out_dir`` (a temporary folder in
the pipeline) so nothing partial is ever left at the final paths."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from difflab.report import analysis, html


def collect(evals_dir: str | os.PathLike, schedules: Sequence[str], solvers: Sequence[str]):
    """The evaluate records (``evals_dir/<schedule>/fid.json``) of every schedule x solver and the
    NLL record (``nll.json``) of every schedule. A missing file or solver is an error naming it."""
    evals_dir = Path(evals_dir)
    records, nll = [], {}
    for schedule in schedules:
        path = evals_dir / schedule / "fid.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found; run the evaluate stage for {schedule}")
        recs = [r for r in json.loads(path.read_text()) if r["solver"] in solvers]
        missing = [v for v in solvers if not any(r["solver"] == v for r in recs)]
        if missing:
            raise FileNotFoundError(f"{path} has no rows for solvers {missing}; re-run evaluate@{schedule}")
        records += recs
        path = evals_dir / schedule / "nll.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found; run the nll stage for {schedule}")
        nll[schedule] = json.loads(path.read_text())
    return records, nll


def load_replicates(evals_dir: str | os.PathLike, rows: Sequence[dict]) -> dict[str, np.ndarray]:
    """``row_id -> FID bootstrap replicates`` of every row from the evaluate stage's
    ``evals_dir/<schedule>/features.npz``. Rows can be paired only when every replicate was drawn at
    the same resampled indices: one bootstrap seed and the same sample indices everywhere; a missing
    file or row, or a mismatch, is an error naming the file."""
    from difflab.metrics.paired import load_row_features, row_key

    out, seeds, indices = {}, {}, None
    for schedule in dict.fromkeys(r["schedule"] for r in rows):
        path = Path(evals_dir) / schedule / "features.npz"
        kept = load_row_features(path)
        seeds[str(path)] = kept["bootstrap_seed"]
        for r in (r for r in rows if r["schedule"] == schedule):
            key = row_key(r["solver"], r["steps"])
            if key not in kept["rows"]:
                raise FileNotFoundError(f"{path} has no row {key}; re-run evaluate@{schedule}")
            row = kept["rows"][key]
            if indices is None:
                indices = row["indices"]
            elif not np.array_equal(row["indices"], indices):
                raise ValueError(
                    f"{path}: row {key} holds other sample indices than the first row; re-run sample"
                )
            out[analysis.row_id(r)] = row["fid_bootstrap"]
    if len(set(seeds.values())) > 1:
        raise ValueError(f"rows were bootstrapped with different seeds ({seeds}); re-run evaluate")
    return out


def nll_from_rows(rows: Sequence[dict]) -> dict[str, dict]:
    """The per-schedule NLL recorded in a comparison table (its nll_bpd, nll_bpd_se columns)."""
    out = {}
    for r in rows:
        if r.get("nll_bpd") is not None:
            out[r["schedule"]] = {"bpd": r["nll_bpd"], "bpd_se": r.get("nll_bpd_se")}
    return out


def grid_sources(samples_dir: str | os.PathLike, rows: Sequence[dict]) -> dict[str, dict[str, Path]]:
    """``schedule -> solver -> grid png`` at each pair's largest step count (rk45: its one run)."""
    out: dict[str, dict[str, Path]] = {}
    for r in sorted(rows, key=lambda r: r["steps"]):
        png = Path(samples_dir) / r["solver"] / r["schedule"] / f"grid_{r['steps']:03d}.png"
        if png.exists():
            out.setdefault(r["schedule"], {})[r["solver"]] = png
    return out


def write_results(
    rows: list[dict],
    nll: dict[str, dict],
    cfg: dict,
    out_dir: str | os.PathLike,
    *,
    replicates: dict[str, np.ndarray],
    data_meta: dict | None = None,
    grids: dict[str, dict[str, Path]] | None = None,
    tables: bool = True,
) -> dict:
    """Write comparison.csv, paired.csv and metrics.json (when ``tables``), plots/*.png and
    report.html into ``out_dir``; return what the W&B run logs (rows, summary, pairs, matrix, tie
    counts, figure and grid paths). ``replicates``: every row's FID bootstrap replicates by
    ``analysis.row_id`` (``load_replicates``), from which rows are compared in pairs. ``cfg`` is read
    for ``schedules``, ``solvers``, ``sample.steps`` and ``sample.options``."""
    from difflab.report import plots  # matplotlib's Agg backend only where figures are written

    out_dir = Path(out_dir)
    schedules, solvers = cfg.get("schedules", []), cfg.get("solvers", [])
    rows = analysis.sort_rows(rows, schedules, solvers)
    pairing = analysis.Pairing(rows, replicates)
    families = analysis.solver_families(
        [*solvers, *(r["solver"] for r in rows)], cfg.get("sample", {}).get("options")
    )
    budgets = analysis.default_budgets(rows, cfg.get("sample", {}).get("steps", []))
    summary = analysis.budget_summary(rows, budgets, pairing)
    matrix = analysis.schedule_matrix(rows, pairing, analysis.matrix_budget(budgets), families, schedules)
    pairs = analysis.paired_rows(summary, matrix)
    ties = analysis.tie_counts(rows, budgets, pairing)
    if tables:
        (out_dir / "comparison.csv").write_text(analysis.to_csv(rows))
        (out_dir / "paired.csv").write_text(analysis.paired_to_csv(pairs))
        (out_dir / "metrics.json").write_text(json.dumps(analysis.nested_metrics(rows, nll), indent=2) + "\n")
    pdir = out_dir / "plots"
    pdir.mkdir(parents=True, exist_ok=True)
    frontier = analysis.plausible_frontier(rows, pairing)
    figures = {
        "fid_vs_nfe_by_schedule": (
            plots.fid_vs_nfe(rows, "schedule", pdir / "fid_vs_nfe_by_schedule.png", schedules, families),
            "FID vs NFE per schedule (colour: solver; solid: ODE, dashed: SDE; marker: order; legend grouped "
            "by family and order; bars: 95% bootstrap intervals; adaptive solvers are single points)",
        ),
        "fid_vs_nfe_by_solver": (
            plots.fid_vs_nfe(rows, "solver", pdir / "fid_vs_nfe_by_solver.png", schedules, families),
            "FID vs NFE per solver, panels ordered by family and order (one line per schedule)",
        ),
        "pareto": (
            plots.pareto(rows, pdir / "pareto.png", schedules, families, frontier),
            "Every row in the FID-NFE plane with the Pareto frontier (colour: schedule; marker: order; "
            "filled: ODE, hollow: SDE); circled: rows no cheaper-or-equal row beats by a paired 95% interval",
        ),
        "solver_error": (
            plots.solver_error_vs_nfe(rows, pdir / "solver_error.png", schedules, families),
            "Discretization error of each ODE solver: mean RMS distance to an adaptive "
            "high-accuracy solution from the same noise",
        ),
        "nll": (
            plots.nll_bars(nll, pdir / "nll_bpd.png", schedules),
            "Bits/dim on held-out images per schedule",
        ),
    }
    grid_figs = {}
    for schedule, by_solver in (grids or {}).items():
        png = plots.sample_grids(
            {schedule: by_solver}, pdir / f"samples_{schedule}.png", f"samples: {schedule}"
        )
        if png is not None:
            grid_figs[f"{schedule}: 64 samples per solver at its largest step count"] = png
    text = html.render(
        rows,
        summary,
        figures,
        cfg=cfg,
        nll=nll,
        data_meta=data_meta,
        grids=grid_figs,
        frontier=frontier,
        matrix=matrix,
        ties=ties,
        invariance=analysis.invariance_sentence(rows, families),
        families=families,
    )
    (out_dir / "report.html").write_text(text)
    return {
        "rows": rows,
        "summary": summary,
        "pairs": pairs,
        "matrix": matrix,
        "ties": ties,
        "figures": {k: v[0] for k, v in figures.items()},
        "grids": {Path(p).stem: p for p in grid_figs.values()},
    }
