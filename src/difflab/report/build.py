"""Turn the evaluate and nll stages' records into ``results/``: comparison.csv, seeds.csv, paired.csv,
metrics.json (``write_tables``), plots/ and report.html (``write_page``)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from difflab.report import page, sections, tables
from difflab.results import Row, aggregate_seeds, read_csv, sort_rows, to_csv

_EVALUATE_ONLY = ("bootstrap", "bootstrap_seed")  # keys of older evaluate records that are not row fields


def _read_rows(path: Path, solvers: Sequence[str], stage: str) -> list[Row]:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; run the evaluate stage evaluate@{stage}")
    rows = [
        Row.from_dict({k: v for k, v in d.items() if k not in _EVALUATE_ONLY})
        for d in json.loads(path.read_text())
    ]
    rows = [r for r in rows if r.solver in solvers]
    missing = [v for v in solvers if not any(r.solver == v for r in rows)]
    if missing:
        raise FileNotFoundError(f"{path} has no rows for solvers {missing}; re-run evaluate@{stage}")
    return rows


def collect(evals_dir: str | os.PathLike, cfg: Mapping) -> tuple[list[Row], dict[str, dict[int, dict]]]:
    """The per-seed rows of every trained network (``evals_dir/<schedule>/seed_<seed>/fid.json``) of
    ``cfg``'s schedules, seeds and solvers with their NLL joined (``nll.json`` beside them), and the
    NLL records ``{schedule: {seed: record}}``. A missing file or solver is an error naming it."""
    rows, nll = [], {}
    for schedule in cfg["schedules"]:
        for seed in cfg["seeds"]:
            folder = Path(evals_dir) / schedule / f"seed_{seed}"
            rows += _read_rows(folder / "fid.json", cfg["solvers"], f"{schedule}-{seed}")
            if not (folder / "nll.json").exists():
                raise FileNotFoundError(
                    f"{folder / 'nll.json'} not found; run the nll stage nll@{schedule}-{seed}"
                )
            nll.setdefault(schedule, {})[seed] = json.loads((folder / "nll.json").read_text())
    return tables.with_nll(rows, nll), nll


def load_replicates(evals_dir: str | os.PathLike, rows: Sequence[Row]) -> dict[str, np.ndarray]:
    """``row.seed_key -> FID bootstrap replicates [B]`` of every per-seed row from the evaluate stage's
    ``evals_dir/<schedule>/seed_<seed>/features.npz``. Rows pair only where every replicate was drawn
    at the same resampled indices: one bootstrap seed and the same sample indices everywhere; a
    missing file or row, or a mismatch, is an error naming the file."""
    from difflab.metrics.paired import load_row_features

    out, seeds, indices = {}, {}, None
    for schedule, seed in dict.fromkeys((r.schedule, r.seed[0]) for r in rows):
        path = Path(evals_dir) / schedule / f"seed_{seed}" / "features.npz"
        kept = load_row_features(path)
        seeds[str(path)] = kept["bootstrap_seed"]
        for r in (r for r in rows if (r.schedule, r.seed[0]) == (schedule, seed)):
            if r.key not in kept["rows"]:
                raise FileNotFoundError(f"{path} has no row {r.key}; re-run evaluate@{schedule}-{seed}")
            found = kept["rows"][r.key]
            indices = found["indices"] if indices is None else indices
            if not np.array_equal(found["indices"], indices):
                raise ValueError(
                    f"{path}: row {r.key} holds other sample indices than the first row; re-run sample"
                )
            out[r.seed_key] = found["fid_bootstrap"]
    if len(set(seeds.values())) > 1:
        raise ValueError(f"rows were bootstrapped with different seeds ({seeds}); re-run evaluate")
    return out


def read_seed_rows(results_dir: str | os.PathLike) -> list[Row]:
    """The per-seed rows of an earlier report (``results_dir/seeds.csv``)."""
    path = Path(results_dir) / "seeds.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; run `make repro` first")
    return read_csv(path)


def grid_sources(samples_dir: str | os.PathLike, rows: Sequence[Row]) -> dict[str, dict[str, Path]]:
    """``schedule -> solver -> grid png`` at each pair's largest step count (an adaptive solver: its
    one run), from the first seed's folder (``samples/<solver>/<grid>/<schedule>/seed_<k>/<stem>.png``)."""
    out: dict[str, dict[str, Path]] = {}
    for r in sorted(rows, key=lambda r: r.steps):
        png = Path(samples_dir) / r.solver / str(r.grid) / r.schedule / f"seed_{r.seed[0]}" / f"{r.stem}.png"
        if png.exists():
            out.setdefault(r.schedule, {})[r.solver] = png
    return out


def comparison(
    seed_rows: Sequence[Row], replicates: Mapping, cfg: Mapping
) -> tuple[list[Row], tables.Pairing]:
    """The rows aggregated over seeds (``results.aggregate_seeds``) in the config's order, and their
    pairing."""
    rows, reps = aggregate_seeds(seed_rows, replicates)
    rows = sort_rows(rows, cfg.get("schedules", []), cfg.get("solvers", []))
    return rows, tables.Pairing(rows, reps)


def context(
    rows: Sequence[Row], pairing: tables.Pairing, cfg: Mapping, extra: Mapping
) -> sections.ReportContext:
    """The sections' context: ``extra`` holds ``nll``, ``meta``, ``plots`` and ``grids`` (each optional)."""
    solvers = tables.Solvers.of(
        [*cfg.get("solvers", []), *(r.solver for r in rows)], (cfg.get("sample") or {}).get("options")
    )
    return sections.ReportContext(cfg=cfg, pairing=pairing, solvers=solvers, **extra)


def write_tables(rows: Sequence[Row], seed_rows: Sequence[Row], ctx: sections.ReportContext, out_dir) -> None:
    """comparison.csv (``rows``), seeds.csv (``seed_rows``), paired.csv (the pairs the report shows)
    and metrics.json in ``out_dir``."""
    out_dir = Path(out_dir)
    (out_dir / "comparison.csv").write_text(to_csv(rows))
    (out_dir / "seeds.csv").write_text(to_csv(seed_rows))
    pairs = tables.paired_records(sections.budgets(rows, ctx), sections.matrix(rows, ctx))
    (out_dir / "paired.csv").write_text(tables.paired_csv(pairs))
    metrics = tables.nested_metrics(rows, ctx.nll)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def write_page(rows: Sequence[Row], ctx: sections.ReportContext, out_dir) -> list[sections.Section]:
    """Draw every section (figures into ``ctx.plots``), write ``out_dir/report.html`` and return the
    sections (what the W&B run logs)."""
    Path(ctx.plots).mkdir(parents=True, exist_ok=True)
    shown = sections.build_sections(rows, ctx)
    (Path(out_dir) / "report.html").write_text(page.render(shown, ctx.cfg))
    return shown
