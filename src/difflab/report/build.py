"""Turn the evaluate and nll stages' records into ``results/``: the tables (``write_tables``;
``metrics.diagnostics.network_diagnostics`` computes diagnostics.json), plots/ and report.html."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from difflab.metrics import diagnostics
from difflab.metrics.nll import with_nll
from difflab.metrics.paired import Pairing, read_replicates
from difflab.networks import network_ids
from difflab.report import page, sections, tables
from difflab.results import Row, aggregate_seeds, nested_metrics, read_csv, records_csv, sort_rows, to_csv
from difflab.solvers.registry import Solvers

_EVALUATE_ONLY = ("bootstrap", "bootstrap_seed")  # keys of older evaluate records that are not row fields


def _read_rows(path: Path, solvers: Sequence[str], stage: str) -> list[Row]:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; run the evaluate stage {stage}")
    records = json.loads(path.read_text())
    rows = [Row.from_dict({k: v for k, v in d.items() if k not in _EVALUATE_ONLY}) for d in records]
    rows = [r for r in rows if r.solver in solvers]
    missing = [v for v in solvers if not any(r.solver == v for r in rows)]
    if missing:
        raise FileNotFoundError(f"{path} has no rows for solvers {missing}; re-run {stage}")
    return rows


def collect(evals_dir: str | os.PathLike, cfg: Mapping) -> tuple[list[Row], dict[str, dict[int, dict]]]:
    """The per-seed rows of every network of ``cfg`` (``difflab.networks.network_ids``: the trained
    ones, then the pretrained entries; ``evals_dir/<model>/seed_<seed>/fid.json``) and its solvers,
    with their NLL joined (``nll.json`` beside them), and the NLL records ``{model: {seed: record}}``.
    A missing file or solver is an error naming it."""
    rows, nll = [], {}
    sde = (cfg.get("sample") or {}).get("converged_sde")  # its rows: each network's converged SDE
    solvers = list(dict.fromkeys([*cfg["solvers"], *([sde["solver"]] if sde else [])]))
    for net in network_ids(cfg):
        folder = Path(net.folder(str(evals_dir)))
        rows += _read_rows(folder / "fid.json", solvers, net.stage("evaluate"))
        if not (folder / "nll.json").exists():
            raise FileNotFoundError(f"{folder / 'nll.json'} not found; run the nll stage {net.stage('nll')}")
        nll.setdefault(net.model, {})[net.seed] = json.loads((folder / "nll.json").read_text())
    return with_nll(rows, nll), nll


def load_replicates(evals_dir: str | os.PathLike, rows: Sequence[Row]) -> dict[str, np.ndarray]:
    """``row.seed_key -> FID bootstrap replicates [B]`` of every per-seed row from the evaluate stage's
    ``evals_dir/<model>/seed_<seed>/features.npz`` (``metrics.paired.read_replicates``: they must pair)."""
    files = tables.group_by(rows, lambda r: Path(evals_dir) / r.model / f"seed_{r.seed[0]}" / "features.npz")
    return read_replicates(files)


def read_seed_rows(results_dir: str | os.PathLike) -> list[Row]:
    """The per-seed rows of an earlier report (``results_dir/seeds.csv``)."""
    path = Path(results_dir) / "seeds.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; run `make repro` first")
    return read_csv(path)


def grid_sources(samples_dir: str | os.PathLike, rows: Sequence[Row]) -> dict[str, dict[str, Path]]:
    """``model -> solver -> grid png`` at each pair's largest step count (an adaptive solver: its
    one run), from the first seed's folder (``samples/<solver>/<grid>/<model>/seed_<k>/<stem>.png``)."""
    out: dict[str, dict[str, Path]] = {}
    for r in sorted(rows, key=lambda r: r.steps):
        png = Path(samples_dir) / r.solver / str(r.grid) / r.model / f"seed_{r.seed[0]}" / f"{r.stem}.png"
        if png.exists():
            out.setdefault(r.model, {})[r.solver] = png
    return out


def comparison(seed_rows: Sequence[Row], replicates: Mapping, cfg: Mapping) -> tuple[list[Row], Pairing]:
    """The rows aggregated over seeds (``results.aggregate_seeds``) in the config's order, each with its
    paired FID difference to its own network's converged solution of the same kind (``vs_converged``
    columns; ``diagnostics.converged_partners``), and their pairing."""
    rows, reps = aggregate_seeds(seed_rows, replicates)
    rows = sort_rows(rows, cfg.get("schedules", []), cfg.get("solvers", []))
    vs = diagnostics.vs_converged_columns(rows, reps, diagnostics.config_partners(rows, cfg))
    rows = [r.replace(**c) for r, c in zip(rows, vs)]
    return rows, Pairing(rows, reps)


def context(rows: Sequence[Row], pairing: Pairing, cfg: Mapping, extra: Mapping) -> sections.ReportContext:
    """The sections' context: ``extra`` holds ``nll``, ``meta``, ``plots`` and ``grids`` (each optional)."""
    names = [*cfg.get("solvers", []), *(r.solver for r in rows)]
    solvers = Solvers.of(names, (cfg.get("sample") or {}).get("options"))
    return sections.ReportContext(cfg=cfg, pairing=pairing, solvers=solvers, **extra)


def write_tables(rows: Sequence[Row], seed_rows: Sequence[Row], ctx: sections.ReportContext, out_dir) -> None:
    """comparison.csv (``rows``), seeds.csv (``seed_rows``), paired.csv (the pairs the report shows),
    metrics.json and diagnostics.json (``ctx.diagnostics`` without the curves) in ``out_dir``."""
    out_dir = Path(out_dir)
    (out_dir / "comparison.csv").write_text(to_csv(rows))
    (out_dir / "seeds.csv").write_text(to_csv(seed_rows))
    pairs = tables.paired_records(sections.budgets(rows, ctx), sections.matrix(rows, ctx))
    (out_dir / "paired.csv").write_text(records_csv(tables.PAIRED_COLUMNS, pairs))
    metrics = nested_metrics(rows, ctx.nll)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if ctx.diagnostics:
        shown = {k: v for k, v in ctx.diagnostics.items() if k != "curves"}
        (out_dir / "diagnostics.json").write_text(json.dumps(shown, indent=2) + "\n")


def write_page(rows: Sequence[Row], ctx: sections.ReportContext, out_dir) -> list[sections.Section]:
    """Draw every section (figures into ``ctx.plots``), write ``out_dir/report.html``, return the sections."""
    Path(ctx.plots).mkdir(parents=True, exist_ok=True)
    shown = sections.build_sections(rows, ctx)
    (Path(out_dir) / "report.html").write_text(page.render(shown, ctx.cfg))
    return shown
