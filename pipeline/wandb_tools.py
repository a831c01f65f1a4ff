"""W&B outside the pipeline: upload the offline runs, or publish a W&B Report of the comparison.

  python pipeline/wandb_tools.py sync      # `make wandb-sync`: `wandb sync` every offline run
  python pipeline/wandb_tools.py report    # `make wandb-report`: a W&B Report (wandb-workspaces)

Both need network and a W&B API key (`wandb login` or WANDB_API_KEY); without them they say why
and exit 1 without touching anything.
"""

import subprocess
import sys
from pathlib import Path

from _common import ROOT, load_cfg, parser, run


def offline_runs(roots=("models", "results", "outputs")) -> list[Path]:
    return [r for root in roots for r in sorted((ROOT / root).glob("**/offline-run-*")) if r.is_dir()]


def has_key() -> bool:
    import os

    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import wandb

        return bool(wandb.Api().api_key)
    except Exception:  # no key, no config, no network: all mean "cannot upload"
        return False


def main(args):
    if args.action == "sync":
        runs = offline_runs()
        if not runs:
            raise ValueError(
                "no offline W&B runs under models/, results/ or outputs/; run `make repro` first"
            )
        if not has_key():
            print(
                f"wandb-sync: {len(runs)} offline runs kept; no W&B API key (run `wandb login`)",
                file=sys.stderr,
            )
            sys.exit(1)
        for r in runs:
            subprocess.run(["wandb", "sync", "--include-offline", str(r)], check=True)
        return
    cfg = load_cfg(args)
    from difflab.report import build
    from difflab.report.sections import budgets
    from difflab.report.wandb_report import publish_report, why_offline
    from difflab.tracking import wandb_group

    reason = why_offline()
    if reason:
        print(f"wandb-report: not published: {reason}", file=sys.stderr)
        sys.exit(1)
    seed_rows = build.read_seed_rows(args.results)
    rows, pairing = build.comparison(seed_rows, build.load_replicates(args.evals, seed_rows), cfg)
    summary = budgets(rows, build.context(rows, pairing, cfg, {}))
    where = {"entity": cfg["wandb"]["entity"], "project": cfg["wandb"]["project"], "group": wandb_group(cfg)}
    url = publish_report(rows, summary, where)
    print(f"W&B Report: {url}")


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("action", choices=("sync", "report"))
    p.add_argument("--results", default="results", help="the report stage's folder (default: %(default)s)")
    p.add_argument("--evals", default="evals", help="the evaluate stage's folder (default: %(default)s)")
    run(main, p.parse_args())
