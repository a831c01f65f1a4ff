"""Stage `report`: results/comparison.csv (one row per setting, averaged over the training seeds),
results/seeds.csv (one row per setting and seed), results/paired.csv, results/metrics.json,
results/plots/, results/report.html and the W&B comparison run (results/wandb, offline unless
WANDB_MODE=online).

  python pipeline/report.py                 # the DVC stage: from evals/ and samples/
  python pipeline/report.py --from-csv      # `make report`: rebuild plots and report.html from
                                            # results/seeds.csv (no W&B run)
  python pipeline/report.py --ties          # per NFE budget, the rows tied with the best under the
                                            # old overlap rule vs the paired test (prints only)

Rows are compared in pairs from the bootstrap replicates the evaluate stage keeps
(evals/SCHEDULE/seed_SEED/features.npz), with --from-csv too.
"""

import os
import shutil
from pathlib import Path

from _common import load_cfg, parser, read_json, run, scratch_dir, self_contained


def _place(src: Path, dst: Path) -> None:
    if dst.is_dir():
        shutil.rmtree(dst)
    elif dst.exists():
        dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)


def main(args):
    cfg = load_cfg(args)
    from difflab.report import analysis
    from difflab.report.build import (
        collect,
        grid_sources,
        load_replicates,
        nll_by_schedule,
        nll_from_rows,
        write_results,
    )
    from difflab.report.seeds import SeedPairing, aggregate_seeds

    results = Path(args.out)
    meta_path = Path(args.data) / "meta.json"
    meta = read_json(meta_path) if meta_path.exists() else None
    floor_path = Path(args.features) / "floor.json"
    if meta is not None and floor_path.exists():
        floor = read_json(floor_path)
        meta["data_floor"] = floor.get("data_floor")
        meta["classifier_ceiling"] = floor.get("classifier_ceiling")
    if args.from_csv or args.ties:
        csv_path = results / "seeds.csv"
        if not csv_path.exists():
            raise FileNotFoundError(f"{csv_path} not found; run `make repro` first")
        seed_rows = [{**r, "seed": int(r["seed"])} for r in analysis.read_csv(csv_path)]
        nll = None
    else:
        records, by_seed = collect(args.evals, cfg["schedules"], cfg["seeds"], cfg["solvers"])
        seed_rows = analysis.build_table(records, by_seed)
        nll = nll_by_schedule(by_seed)
    rows, replicates = aggregate_seeds(seed_rows, load_replicates(args.evals, seed_rows))
    nll = nll if nll is not None else nll_from_rows(rows)
    if args.ties:
        pairing = SeedPairing(rows, replicates)
        main_rows = analysis.main_slice(rows, cfg)
        budgets = analysis.default_budgets(main_rows, cfg["sample"]["steps"])
        for line in analysis.tie_count_lines(analysis.tie_counts(main_rows, budgets, pairing)):
            print(line)
        return
    grids = grid_sources(args.samples, rows)
    with scratch_dir(results) as tmp:
        built = write_results(
            rows,
            nll,
            cfg,
            tmp,
            replicates=replicates,
            seed_rows=seed_rows,
            data_meta=meta,
            grids=grids,
            tables=not args.from_csv,
        )
        if not args.from_csv and not args.no_wandb:
            from difflab.report.wandb_report import log_comparison
            from difflab.tracking import wandb_group

            log_comparison(
                built["rows"],
                nll,
                cfg,
                out_dir=tmp / "wandb",
                group=wandb_group(cfg),
                figures=built["figures"],
                grids=built["grids"],
                summary=built["summary"],
                pairs=built["pairs"],
                ties=built["ties"],
            )
            self_contained(tmp / "wandb")
        names = ("comparison.csv", "seeds.csv", "paired.csv", "metrics.json", "plots", "wandb", "report.html")
        for name in names:
            if (tmp / name).exists():
                _place(tmp / name, results / name)
    for line in analysis.summary_sentences(built["summary"]) + analysis.tie_count_lines(built["ties"]):
        print(line)
    print(f"wrote {results}/report.html ({len(rows)} rows)")


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--evals", default="evals", help="the evaluate/nll stages' folder (default: %(default)s)")
    p.add_argument(
        "--samples", default="samples", help="the sample stages' folder, for grids (default: %(default)s)"
    )
    p.add_argument(
        "--data", default="data/prepared", help="the prepare stage's folder (default: %(default)s)"
    )
    p.add_argument("--features", default="data/features", help="the prepare stage's feature folder")
    p.add_argument("--out", default="results", help="output folder (default: %(default)s)")
    p.add_argument("--from-csv", action="store_true", help="rebuild plots and report.html from OUT/seeds.csv")
    p.add_argument("--no-wandb", action="store_true", help="skip the W&B comparison run")
    p.add_argument(
        "--ties",
        action="store_true",
        help="print, per NFE budget, the rows tied with the best (overlap rule vs paired test) and exit",
    )
    run(main, p.parse_args())
