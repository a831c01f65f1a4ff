"""Stage `report`: results/comparison.csv (one row per setting, averaged over the training seeds),
results/seeds.csv (one row per setting and seed), results/paired.csv, results/metrics.json,
results/diagnostics.json (per network: converged FIDs, the floor, memorization, training convergence),
results/plots/, results/report.html and the W&B comparison run (results/wandb, offline unless
WANDB_MODE=online).

  python pipeline/report.py                 # the DVC stage: from evals/ and samples/
  python pipeline/report.py --from-csv      # `make report`: rebuild plots and report.html from
                                            # results/seeds.csv (no W&B run)

Rows are compared in pairs from the bootstrap replicates the evaluate stage keeps
(evals/SCHEDULE/seed_SEED/features.npz), with --from-csv too.
"""

from dataclasses import replace
from pathlib import Path

from _common import load_cfg, parser, publish, read_json, run, scratch_dir

OUTPUTS = ("comparison.csv", "seeds.csv", "paired.csv", "metrics.json", "diagnostics.json", "plots", "wandb",
           "report.html")  # fmt: skip


def _data_meta(args) -> dict:
    """The prepared data's meta.json with the real-data floor and the classifier ceiling."""
    path, floor = Path(args.data) / "meta.json", Path(args.features) / "floor.json"
    meta = read_json(path) if path.exists() else {}
    if meta and floor.exists():
        meta.update({k: read_json(floor).get(k) for k in ("data_floor", "classifier_ceiling")})
    return meta


def main(args):
    cfg = load_cfg(args)
    from difflab.metrics.diagnostics import network_diagnostics
    from difflab.metrics.nll import nll_by_schedule, nll_from_rows
    from difflab.report import build, text
    from difflab.report.sections import budgets

    if args.from_csv:
        seed_rows, by_seed = build.read_seed_rows(args.out), None
    else:
        seed_rows, by_seed = build.collect(args.evals, cfg)
    rows, pairing = build.comparison(seed_rows, build.load_replicates(args.evals, seed_rows), cfg)
    nll = nll_by_schedule(by_seed) if by_seed else nll_from_rows(rows)
    results = Path(args.out)
    with scratch_dir(results) as tmp:
        extra = {
            "nll": nll,
            "meta": _data_meta(args),
            "plots": tmp / "plots",
            "grids": build.grid_sources(args.samples, rows),
        }
        ctx = build.context(rows, pairing, cfg, extra)
        inputs = {k: getattr(args, k) for k in ("features", "data", "samples", "models")}
        ctx = replace(ctx, diagnostics=network_diagnostics(seed_rows, cfg, inputs, budgets(rows, ctx)))
        shown = build.write_page(rows, ctx, tmp)
        if not args.from_csv:
            build.write_tables(rows, seed_rows, ctx, tmp)
        if not args.from_csv and not args.no_wandb:
            from difflab.report.wandb_report import log_comparison
            from difflab.tracking import wandb_group

            log_comparison(rows, shown, ctx, tmp / "wandb", wandb_group(cfg))
        for name in OUTPUTS:
            if (tmp / name).exists():
                publish(tmp / name, results / name)  # W&B's run folder links into its cache
    for line in text.summary_sentences(budgets(rows, ctx)):
        print(line)
    print(f"wrote {results}/report.html ({len(rows)} rows)")


if __name__ == "__main__":
    p = parser(__doc__, data=True)
    p.add_argument("--evals", default="evals", help="the evaluate/nll stages' folder (default: %(default)s)")
    p.add_argument(
        "--samples", default="samples", help="the sample stages' folder, for grids (default: %(default)s)"
    )
    p.add_argument("--features", default="data/features", help="the prepare stage's feature folder")
    p.add_argument("--models", default="models", help="the train stages' folder, for the loss curves")
    p.add_argument("--out", default="results", help="output folder (default: %(default)s)")
    p.add_argument("--from-csv", action="store_true", help="rebuild plots and report.html from OUT/seeds.csv")
    p.add_argument("--no-wandb", action="store_true", help="skip the W&B comparison run")
    run(main, p.parse_args())
