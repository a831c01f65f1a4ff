"""Stage `evaluate`: FID and KID (95% bootstrap interval), precision and recall (torch-fidelity's
`prc` on the same features; `evaluate.precision_recall`) and, for guided rows, the class accuracy of
every row of one network (a trained one, schedule x seed, or a pretrained entry: every solver x grid x
sampling schedule x guidance scale x step count, and its converged reverse-SDE solve) against the
prepared reference, with the prepared feature extractor (``difflab.metrics.scoring``).

One process per network, not per solver: starting the feature extractor (torch-fidelity imports
torchvision) costs seconds, which one process per row would pay again and again.

Writes OUT (default evals/NETWORK/seed_SEED/fid.json): the scored rows (``Row.to_dict``); and
ROW_FEATURES (default features.npz beside OUT): every row's features (float32), FID bootstrap
replicates and sample indices, keyed by ``Row.key`` (``metrics.paired.save_row_features``), from which
the report pairs rows.
"""

from pathlib import Path

from _common import add_network_args, load_network_cfg, parser, read_json, resolve_device, run, write_json


def main(args):
    cfg, net = load_network_cfg(args)
    from difflab.distributed import gather, is_main, shard
    from difflab.metrics.paired import save_row_features
    from difflab.results import Row

    scorer, levels = _scorer(args, cfg)
    jobs = [(Row.from_dict(d), f) for f in _folders(args, cfg, net) for d in read_json(f / "rows.json")]
    mine = shard(list(enumerate(jobs)))  # several ranks: each scores every world-th row
    done = [(k, *_score(scorer, levels, row, folder)) for k, (row, folder) in mine]
    done = sorted((item for part in gather(done) for item in part), key=lambda item: item[0])
    out = Path(args.out or f"{net.folder('evals')}/fid.json")
    if is_main():
        kept = {row.key: features for _, row, features in done}
        save_row_features(args.row_features or out.parent / "features.npz", kept, bootstrap_seed=cfg["seed"])
    write_json(out, [row.to_dict() for _, row, _ in done])


def _scorer(args, cfg):
    import numpy as np
    import torch

    from difflab.images import levels_to_uint8_images
    from difflab.metrics.scoring import RowScorer, Scoring

    scoring = Scoring.from_config(cfg)
    prepared = read_json(f"{args.features}/floor.json")["feature_extractor"]
    if prepared != scoring.feature_extractor:
        raise ValueError(
            f"{args.features} holds {prepared!r} features, not {scoring.feature_extractor!r}; run prepare"
        )
    levels = read_json(f"{args.data}/meta.json")["levels"]
    reference = levels_to_uint8_images(torch.from_numpy(np.load(f"{args.data}/train_images.npy")), levels)
    return RowScorer(reference, args.features, scoring, resolve_device(args.device)), levels


def _folders(args, cfg, net) -> list[Path]:
    """The network's rows: every solver x grid, and its converged reverse-SDE solve."""
    from difflab.sweep import CONVERGED_SDE

    grids = [*cfg["sample"]["grids"], *cfg["sample"]["fitted_grids"]]
    folders = [Path(net.folder(f"{args.samples}/{v}/{g}")) for v in cfg["solvers"] for g in grids]
    return [*folders, Path(net.folder(f"{args.samples}/{CONVERGED_SDE}"))]


def _score(scorer, levels: int, row, folder: Path):
    from difflab.images import levels_to_uint8_images, load_samples

    loaded = load_samples(folder / f"{row.stem}.npz")
    scored, kept = scorer.score(row, levels_to_uint8_images(loaded["images"], levels), loaded.get("labels"))
    accuracy = "" if scored.class_accuracy is None else f", class accuracy {scored.class_accuracy:.3f}"
    print(f"{scored.seed_key}: FID {scored.fid:.3f} [{scored.fid_lo:.3f}, {scored.fid_hi:.3f}]{accuracy}")
    return scored, kept


if __name__ == "__main__":
    p = parser(__doc__, data=True, device=True)
    add_network_args(p, model=False)
    p.add_argument("--samples", default="samples", help="the sample stages' folder (default: %(default)s)")
    p.add_argument("--features", default="data/features", help="the prepare stage's feature folder")
    p.add_argument("--out", default=None, help="output file (default: evals/NETWORK/seed_SEED/fid.json)")
    p.add_argument(
        "--row-features", default=None, help="every row's features (default: features.npz beside OUT)"
    )
    run(main, p.parse_args(), imports=("torch", "difflab.metrics.fid"), ranks=True)
