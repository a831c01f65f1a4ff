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


def collect(
    evals_dir: str | os.PathLike, schedules: Sequence[str], seeds: Sequence[int], solvers: Sequence[str]
):
    """The evaluate records (``evals_dir/<schedule>/seed_<seed>/fid.json``) of every trained network
    and solver, and the NLL records (``nll.json`` beside them) as ``{schedule: {seed: record}}``. A
    missing file or solver is an error naming it."""
    evals_dir = Path(evals_dir)
    records, nll = [], {}
    for schedule in schedules:
        for seed in seeds:
            folder = evals_dir / schedule / f"seed_{seed}"
            path = folder / "fid.json"
            stage = f"{schedule}-{seed}"
            if not path.exists():
                raise FileNotFoundError(f"{path} not found; run the evaluate stage evaluate@{stage}")
            recs = [r for r in json.loads(path.read_text()) if r["solver"] in solvers]
            missing = [v for v in solvers if not any(r["solver"] == v for r in recs)]
            if missing:
                raise FileNotFoundError(f"{path} has no rows for solvers {missing}; re-run evaluate@{stage}")
            records += recs
            path = folder / "nll.json"
            if not path.exists():
                raise FileNotFoundError(f"{path} not found; run the nll stage nll@{stage}")
            nll.setdefault(schedule, {})[seed] = json.loads(path.read_text())
    return records, nll


def load_replicates(evals_dir: str | os.PathLike, rows: Sequence[dict]) -> dict[str, np.ndarray]:
    """``seeds.seed_row_id -> FID bootstrap replicates`` of every per-seed row from the evaluate stage's
    ``evals_dir/<schedule>/seed_<seed>/features.npz``. Rows can be paired only when every replicate
    was drawn at the same resampled indices: one bootstrap seed and the same sample indices
    everywhere; a missing file or row, or a mismatch, is an error naming the file."""
    from difflab.metrics.paired import load_row_features
    from difflab.report.seeds import seed_row_id

    out, seeds, indices = {}, {}, None
    for schedule, seed in dict.fromkeys((r["schedule"], r["seed"]) for r in rows):
        path = Path(evals_dir) / schedule / f"seed_{seed}" / "features.npz"
        kept = load_row_features(path)
        seeds[str(path)] = kept["bootstrap_seed"]
        for r in (r for r in rows if (r["schedule"], r["seed"]) == (schedule, seed)):
            key = analysis.row_id(r)
            if key not in kept["rows"]:
                raise FileNotFoundError(f"{path} has no row {key}; re-run evaluate@{schedule}-{seed}")
            row = kept["rows"][key]
            if indices is None:
                indices = row["indices"]
            elif not np.array_equal(row["indices"], indices):
                raise ValueError(
                    f"{path}: row {key} holds other sample indices than the first row; re-run sample"
                )
            out[seed_row_id(r)] = row["fid_bootstrap"]
    if len(set(seeds.values())) > 1:
        raise ValueError(f"rows were bootstrapped with different seeds ({seeds}); re-run evaluate")
    return out


def nll_by_schedule(nll: dict[str, dict]) -> dict[str, dict]:
    """``{schedule: {bpd, bpd_se, n_seeds}}`` from the per-network records ``{schedule: {seed:
    record}}``: the mean over seeds, its standard error the larger of the seeds' spread and the
    mean of their own standard errors over sqrt(K) (``metrics.paired.seed_combined``'s rule)."""
    out = {}
    for schedule, by_seed in nll.items():
        recs = [r for r in by_seed.values() if r.get("bpd") is not None]
        if not recs:
            out[schedule] = {"bpd": None, "bpd_se": None, "n_seeds": len(by_seed)}
            continue
        bpd = np.array([r["bpd"] for r in recs], np.float64)
        se2 = np.mean([(r.get("bpd_se") or 0.0) ** 2 for r in recs])
        spread = bpd.var(ddof=1) if len(bpd) > 1 else 0.0
        out[schedule] = {
            "bpd": float(bpd.mean()),
            "bpd_se": float(np.sqrt(max(spread, se2) / len(bpd))),
            "n_seeds": len(bpd),
        }
    return out


def nll_from_rows(rows: Sequence[dict]) -> dict[str, dict]:
    """The per-schedule NLL recorded in a comparison table (its nll_bpd, nll_bpd_se columns)."""
    out = {}
    for r in rows:
        if r.get("nll_bpd") is not None:
            out[r["schedule"]] = {"bpd": r["nll_bpd"], "bpd_se": r.get("nll_bpd_se")}
    return out


def grid_sources(samples_dir: str | os.PathLike, rows: Sequence[dict]) -> dict[str, dict[str, Path]]:
    """``schedule -> solver -> grid png`` at each pair's largest step count (rk45: its one run), from
    the first seed's folder (``samples/<solver>/<grid>/<schedule>/seed_<seed>/<row_stem>.png``)."""
    from difflab.sampling import row_stem

    out: dict[str, dict[str, Path]] = {}
    for r in sorted(rows, key=lambda r: r["steps"]):
        seed = str(r.get("seed", "0")).split()[0]
        stem = row_stem(r.get("sample_schedule") or r["schedule"], r.get("guidance_scale"), r["steps"])
        png = (
            Path(samples_dir)
            / r["solver"]
            / str(r.get("grid"))
            / r["schedule"]
            / f"seed_{seed}"
            / f"{stem}.png"
        )
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
    seed_rows: Sequence[dict] | None = None,
    data_meta: dict | None = None,
    grids: dict[str, dict[str, Path]] | None = None,
    tables: bool = True,
) -> dict:
    """Write comparison.csv, seeds.csv (the per-seed rows), paired.csv and metrics.json (when
    ``tables``), plots/*.png and report.html into ``out_dir``; return what the W&B run logs (rows,
    summary, pairs, matrix, tie counts, figure and grid paths).

    ``rows``: the rows aggregated over seeds (``seeds.aggregate_seeds``), every axis; ``replicates``:
    each row's FID bootstrap replicates ``[K, B]`` per seed by ``analysis.row_id``, from which rows
    are compared in pairs (``seeds.SeedPairing``). The budgets, frontier and schedule matrix read the
    main slice (``analysis.main_slice``: the diagonal, first grid, first guidance scale); the
    sampling-schedule, grid and guidance axes have their own sections (``design``, ``guidance``).
    ``cfg`` is read for ``schedules``, ``seeds``, ``solvers`` and the ``sample`` axes."""
    from difflab.report import design, guidance, plots  # matplotlib's Agg backend only where drawn
    from difflab.report.seeds import SeedPairing, survival_sentences, surviving_differences

    out_dir = Path(out_dir)
    schedules, solvers = cfg.get("schedules", []), cfg.get("solvers", [])
    every = analysis.sort_rows(rows, schedules, solvers)
    pairing = SeedPairing(every, replicates)
    rows = analysis.main_slice(every, cfg) or every
    families = analysis.solver_families(
        [*solvers, *(r["solver"] for r in rows)], cfg.get("sample", {}).get("options")
    )
    budgets = analysis.default_budgets(rows, cfg.get("sample", {}).get("steps", []))
    summary = analysis.budget_summary(rows, budgets, pairing)
    matrix = analysis.schedule_matrix(rows, pairing, analysis.matrix_budget(budgets), families, schedules)
    pairs = analysis.paired_rows(summary, matrix)
    ties = analysis.tie_counts(rows, budgets, pairing)
    n_seeds = max((r.get("n_seeds") or 1 for r in every), default=1)
    seed_text = survival_sentences(surviving_differences(every, pairing, families), n_seeds)
    if tables:
        (out_dir / "comparison.csv").write_text(analysis.to_csv(every))
        if seed_rows is not None:
            (out_dir / "seeds.csv").write_text(analysis.to_csv(seed_rows))
        (out_dir / "paired.csv").write_text(analysis.paired_to_csv(pairs))
        metrics = analysis.nested_metrics(every, nll)
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    pdir = out_dir / "plots"
    pdir.mkdir(parents=True, exist_ok=True)
    frontier = analysis.plausible_frontier(rows, pairing)
    interval = "95% intervals" + (
        f" over {n_seeds} training seeds and the sampling bootstrap" if n_seeds > 1 else ""
    )
    figures = {
        "fid_vs_nfe_by_schedule": (
            plots.fid_vs_nfe(rows, "schedule", pdir / "fid_vs_nfe_by_schedule.png", schedules, families),
            "FID vs NFE per schedule (colour: solver; solid: ODE, dashed: SDE; marker: order; legend grouped "
            f"by family and order; bars: {interval}; adaptive solvers are single points)",
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
    ceiling = (data_meta or {}).get("classifier_ceiling")
    # the training design needs each schedule's section (a table read back from CSV may lack them)
    from difflab.schedules import schedule_names

    trained = [s for s in schedules if s in schedule_names() and s in (cfg.get("schedule") or {})]
    design_cfg = {**cfg, "schedules": trained}
    design_figs = design.figures(every, design_cfg, families, pdir)
    guidance_figs = guidance.figures(every, families, pdir, ceiling)
    sections = [
        design.section_html(every, design_cfg, families, {k: v[0] for k, v in design_figs.items()}),
        guidance.section_html(every, guidance.best_scales(every, pairing), guidance_figs, ceiling),
    ]
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
        seeds=seed_text,
        sections=[s for s in sections if s],
        every_row=every,
    )
    (out_dir / "report.html").write_text(text)
    all_figures = {k: v[0] for k, v in {**figures, **design_figs, **guidance_figs}.items()}
    return {
        "rows": every,
        "summary": summary,
        "pairs": pairs,
        "matrix": matrix,
        "ties": ties,
        "figures": all_figures,
        "grids": {Path(p).stem: p for p in grid_figs.values()},
    }
