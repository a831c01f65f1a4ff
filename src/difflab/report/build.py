"""Turn the evaluate and nll stages' records into ``results/``: comparison.csv, seeds.csv, paired.csv,
metrics.json, diagnostics.json (``write_tables``; ``network_diagnostics`` computes the last), plots/ and
report.html (``write_page``)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from difflab.images import load_samples
from difflab.metrics import diagnostics
from difflab.networks import network_ids
from difflab.report import page, sections, tables
from difflab.results import Row, aggregate_seeds, read_csv, sort_rows, to_csv

_EVALUATE_ONLY = ("bootstrap", "bootstrap_seed")  # keys of older evaluate records that are not row fields


def _read_rows(path: Path, solvers: Sequence[str], stage: str) -> list[Row]:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; run the evaluate stage {stage}")
    rows = [
        Row.from_dict({k: v for k, v in d.items() if k not in _EVALUATE_ONLY})
        for d in json.loads(path.read_text())
    ]
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
    return tables.with_nll(rows, nll), nll


def load_replicates(evals_dir: str | os.PathLike, rows: Sequence[Row]) -> dict[str, np.ndarray]:
    """``row.seed_key -> FID bootstrap replicates [B]`` of every per-seed row from the evaluate stage's
    ``evals_dir/<model>/seed_<seed>/features.npz``. Rows pair only where every replicate was drawn
    at the same resampled indices: one bootstrap seed and the same sample indices everywhere; a
    missing file or row, or a mismatch, is an error naming the file."""
    from difflab.metrics.paired import load_row_features

    out, seeds, indices = {}, {}, None
    for model, seed in dict.fromkeys((r.model, r.seed[0]) for r in rows):
        path = Path(evals_dir) / model / f"seed_{seed}" / "features.npz"
        kept = load_row_features(path)
        seeds[str(path)] = kept["bootstrap_seed"]
        for r in (r for r in rows if (r.model, r.seed[0]) == (model, seed)):
            if r.key not in kept["rows"]:
                raise FileNotFoundError(f"{path} has no row {r.key}; re-run evaluate for {model} seed {seed}")
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
    """``model -> solver -> grid png`` at each pair's largest step count (an adaptive solver: its
    one run), from the first seed's folder (``samples/<solver>/<grid>/<model>/seed_<k>/<stem>.png``)."""
    out: dict[str, dict[str, Path]] = {}
    for r in sorted(rows, key=lambda r: r.steps):
        png = Path(samples_dir) / r.solver / str(r.grid) / r.model / f"seed_{r.seed[0]}" / f"{r.stem}.png"
        if png.exists():
            out.setdefault(r.model, {})[r.solver] = png
    return out


def comparison(
    seed_rows: Sequence[Row], replicates: Mapping, cfg: Mapping
) -> tuple[list[Row], tables.Pairing]:
    """The rows aggregated over seeds (``results.aggregate_seeds``) in the config's order, each with its
    paired FID difference to its own network's converged solution of the same kind (``vs_converged``
    columns; ``diagnostics.converged_partners``), and their pairing."""
    rows, reps = aggregate_seeds(seed_rows, replicates)
    rows = sort_rows(rows, cfg.get("schedules", []), cfg.get("solvers", []))
    vs = diagnostics.vs_converged_columns(rows, reps, _partners(rows, cfg))
    rows = [r.replace(**c) for r, c in zip(rows, vs)]
    return rows, tables.Pairing(rows, reps)


def _partners(rows: Sequence[Row], cfg: Mapping) -> list:
    """``diagnostics.converged_partners`` of ``rows``, families from the solvers' specs at their options."""
    sample = cfg.get("sample") or {}
    sde = sample.get("converged_sde") or {}
    names = [diagnostics.CONVERGED_ODE_SOLVER, *([sde["solver"]] if sde else []), *(r.solver for r in rows)]
    solvers = tables.Solvers.of(names, sample.get("options"))
    families = {n: solvers.family(n) for n in solvers.names}
    return diagnostics.converged_partners(
        rows, families, sde_solver=sde.get("solver"), sde_steps=sde.get("steps")
    )


def context(
    rows: Sequence[Row], pairing: tables.Pairing, cfg: Mapping, extra: Mapping
) -> sections.ReportContext:
    """The sections' context: ``extra`` holds ``nll``, ``meta``, ``plots`` and ``grids`` (each optional)."""
    solvers = tables.Solvers.of(
        [*cfg.get("solvers", []), *(r.solver for r in rows)], (cfg.get("sample") or {}).get("options")
    )
    return sections.ReportContext(cfg=cfg, pairing=pairing, solvers=solvers, **extra)


def write_tables(rows: Sequence[Row], seed_rows: Sequence[Row], ctx: sections.ReportContext, out_dir) -> None:
    """comparison.csv (``rows``), seeds.csv (``seed_rows``), paired.csv (the pairs the report shows),
    metrics.json and diagnostics.json (``ctx.diagnostics`` without the curves) in ``out_dir``."""
    out_dir = Path(out_dir)
    (out_dir / "comparison.csv").write_text(to_csv(rows))
    (out_dir / "seeds.csv").write_text(to_csv(seed_rows))
    pairs = tables.paired_records(sections.budgets(rows, ctx), sections.matrix(rows, ctx))
    (out_dir / "paired.csv").write_text(tables.paired_csv(pairs))
    metrics = tables.nested_metrics(rows, ctx.nll)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if ctx.diagnostics:
        shown = {k: v for k, v in ctx.diagnostics.items() if k != "curves"}
        (out_dir / "diagnostics.json").write_text(json.dumps(shown, indent=2) + "\n")


def write_page(rows: Sequence[Row], ctx: sections.ReportContext, out_dir) -> list[sections.Section]:
    """Draw every section (figures into ``ctx.plots``), write ``out_dir/report.html`` and return the
    sections (what the W&B run logs)."""
    Path(ctx.plots).mkdir(parents=True, exist_ok=True)
    shown = sections.build_sections(rows, ctx)
    (Path(out_dir) / "report.html").write_text(page.render(shown, ctx.cfg))
    return shown


def _floor(inputs: Mapping, n: int, cfg: Mapping) -> dict | None:
    """``floor_at_n`` at ``n`` from the prepare stage's held-out and reference features (None without
    them, or where the data are too few for ``n``)."""
    folder = Path(inputs["features"])
    if not (folder / "heldout_features.npy").is_file():
        return None
    ref = json.loads((folder / "floor.json").read_text())["reference_features"]  # fid.reference_statistics
    ref = torch.load(folder / ref, weights_only=False)["features"]
    held = np.load(folder / "heldout_features.npy")
    try:
        return diagnostics.floor_at_n(ref, held, n, bootstrap=cfg["evaluate"]["bootstrap"], seed=cfg["seed"])
    except ValueError:  # n leaves too few images for a reference: no floor at this n
        return None


def _copying(inputs: Mapping, r: Row | None) -> dict | None:
    """``memorization`` of row ``r``'s samples in pixels (levels scaled to [0, 1]) against the prepared
    train and held-out splits (None without them)."""
    data, samples = Path(inputs["data"]), Path(inputs["samples"])
    npz = r and samples / r.solver / str(r.grid) / r.model / f"seed_{r.seed[0]}" / f"{r.stem}.npz"
    if not (npz and npz.is_file() and (data / "meta.json").is_file()):
        return None
    x, top = load_samples(npz), json.loads((data / "meta.json").read_text())["levels"] - 1
    train, held = (np.load(data / f"{split}_images.npy") / top for split in ("train", "heldout"))
    return diagnostics.memorization(x["images"].double() / (x["levels"] - 1), train, held)


def _training(inputs: Mapping, net) -> tuple[dict | None, dict | None]:
    """A network's loss curves (the train stage's ``train_metrics.json``) and ``loss_still_falling``'s
    verdict on them (None without curves or with fewer than 3 validations in the last fifth)."""
    path = Path(net.folder(str(inputs["models"]))) / "train_metrics.json"
    curves = json.loads(path.read_text()).get("curves") if path.is_file() else None
    try:
        return curves, curves and diagnostics.loss_still_falling(curves["val"]["step"], curves["val"]["loss"])
    except ValueError:  # too few validations to judge
        return curves, None


def network_diagnostics(
    seed_rows: Sequence[Row], rows: Sequence[Row], ctx: sections.ReportContext, inputs: Mapping
) -> dict:
    """``results/diagnostics.json`` (``networks``, ``budgets``, ``regime``) and the loss ``curves``: per
    network of ``ctx.cfg`` (``"<model>/seed_<seed>"``) its converged PF-ODE and SDE rows (the partners
    of its own-schedule rows), the floor at their sample count, memorization of its converged ODE
    samples and whether its validation loss still fell (``network_entry``); per NFE budget its best row
    against its converged solution. ``inputs``: the folders ``features``, ``data``, ``samples``,
    ``models``; a part whose files are absent is None."""
    scale = ((ctx.cfg.get("sample") or {}).get("guidance_scales") or [None])[0]
    floors, nets, curves = {}, {}, {}
    for net in network_ids(ctx.cfg):
        mine = [
            r for r in seed_rows if (r.model, r.seed[0], r.guidance_scale) == (net.model, net.seed, scale)
        ]
        partners = [p for p in _partners([r for r in mine if r.on_diagonal], ctx.cfg) if p is not None]
        ode = next((p for p in partners if p.solver == diagnostics.CONVERGED_ODE_SOLVER), None)
        sde = next((p for p in partners if p.solver != diagnostics.CONVERGED_ODE_SOLVER), None)
        n = (ode or mine[0]).n_samples
        floors[n] = floors[n] if n in floors else _floor(inputs, n, ctx.cfg)
        name = f"{net.model}/seed_{net.seed}"
        curves[name], training = _training(inputs, net)
        parts = {"floor": floors[n], "copying": _copying(inputs, ode), "training": training}
        nets[name] = diagnostics.network_entry(converged_ode=ode, converged_sde=sde, **parts)
    best = [s for s in sections.budgets(rows, ctx) if s.best is not None]
    budgets = [
        {"budget": s.budget, "row": s.best.key, **{c: getattr(s.best, c) for c in diagnostics.VS_COLUMNS}}
        for s in best
    ]
    out = {"networks": nets, "budgets": budgets}
    return {**out, "regime": diagnostics.regime_sentences(out), "curves": curves}
