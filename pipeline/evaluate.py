"""Stage `evaluate`: FID and KID (95% bootstrap interval), precision and recall (torch-fidelity's
`prc` on the same features; `evaluate.precision_recall`) and, for guided rows, the class accuracy of
every row of one trained network (schedule x seed: every solver x grid x sampling schedule x
guidance scale x step count) against the prepared reference, with the prepared feature extractor.

One process per network, not per solver: starting the feature extractor (torch-fidelity imports
torchvision) costs seconds, which one process per row would pay again and again.

Writes OUT (default evals/SCHEDULE/seed_SEED/fid.json): one record per row with schedule, seed,
sample_schedule, grid, guidance_scale, solver, steps, nfe, fid, fid_lo, fid_hi, kid_mean, kid_std,
precision(_lo, _hi), recall(_lo, _hi), class_accuracy(_lo, _hi) (guided rows; else null),
solver_error, invariance_error, seconds_per_sample, n_samples, feature_extractor, bootstrap,
bootstrap_seed; and ROW_FEATURES (default features.npz beside OUT): every row's features (float32),
FID bootstrap replicates and sample indices, keyed by the row's ``metrics.paired.row_key``
(difflab.metrics.paired.save_row_features), from which the report pairs rows.
"""

import json
from pathlib import Path

from _common import (
    add_device,
    add_schedule_args,
    atomic_file,
    check_schedule,
    check_seed,
    load_cfg,
    model_dir,
    parser,
    read_json,
    resolve_device,
    run,
)


def main(args):
    cfg = load_cfg(args)
    check_schedule(cfg, args.schedule)
    check_seed(cfg, args.seed)
    import numpy as np
    import torch

    from difflab.distributed import gather, is_main, shard
    from difflab.metrics.paired import save_row_features
    from difflab.sampling import levels_to_uint8_images

    ev = cfg["evaluate"]
    meta = read_json(f"{args.data}/meta.json")
    prepared = read_json(f"{args.features}/floor.json")["feature_extractor"]
    if prepared != ev["feature_extractor"]:
        raise ValueError(
            f"{args.features} holds {prepared!r} features, not {ev['feature_extractor']!r}; run prepare"
        )
    levels = meta["levels"]
    reference = levels_to_uint8_images(torch.from_numpy(np.load(f"{args.data}/train_images.npy")), levels)
    ctx = _Context(args, cfg, reference, levels)
    jobs = [
        (solver, grid, row)
        for solver in cfg["solvers"]
        for grid in cfg["sample"]["grids"]
        for row in read_json(f"{_folder(args, solver, grid)}/rows.json")
    ]
    mine = shard(list(enumerate(jobs)))  # several ranks: each scores every world-th row
    done = [(k, *_evaluate(ctx, solver, grid, row)) for k, (solver, grid, row) in mine]
    done = sorted((item for part in gather(done) for item in part), key=lambda item: item[0])
    records = [record for _, record, _ in done]
    kept = {key: value for _, _, (key, value) in done}
    out = Path(args.out or f"{model_dir(args.schedule, args.seed, 'evals')}/fid.json")
    if is_main():
        save_row_features(args.row_features or out.parent / "features.npz", kept, bootstrap_seed=cfg["seed"])
    atomic_file(out, json.dumps(records, indent=2) + "\n")


def _folder(args, solver: str, grid: str) -> str:
    return model_dir(args.schedule, args.seed, f"{args.samples}/{solver}/{grid}")


class _Context:
    """What every row of the stage is scored with: the reference images and their features, the
    feature extractor's weights and, where the prepare stage trained one, the dataset classifier."""

    def __init__(self, args, cfg, reference, levels):
        from difflab.metrics.fid import extractor_weights, reference_statistics

        ev = cfg["evaluate"]
        self.args, self.cfg, self.reference, self.levels = args, cfg, reference, levels
        self.device = resolve_device(args.device)
        classifier = Path(f"{args.features}/classifier.pt")
        self.classifier = classifier if classifier.is_file() else None
        self.extractor = self.classifier if ev["feature_extractor"] == "classifier" else None
        weights = extractor_weights(ev["feature_extractor"], self.extractor, reference.shape[2:])
        stats, _, _ = reference_statistics(
            reference,
            feature_extractor=ev["feature_extractor"],
            weights=weights,
            cache_dir=f"{args.features}/fid_cache",
            device=self.device,
        )
        self.reference_features = stats["features"].to("cpu").float()


def _evaluate(ctx: _Context, solver, grid, row) -> tuple[dict, tuple[str, dict]]:
    """One row's record, and its features and bootstrap replicates keyed for pairing."""
    import numpy as np

    from difflab.metrics.conditional import precision_recall
    from difflab.metrics.fid import fid_kid
    from difflab.metrics.paired import row_key
    from difflab.sampling import levels_to_uint8_images, load_samples

    args, cfg, ev = ctx.args, ctx.cfg, ctx.cfg["evaluate"]
    loaded = load_samples(f"{_folder(args, solver, grid)}/{row['file']}")
    images = levels_to_uint8_images(loaded["images"], ctx.levels)
    scores = fid_kid(
        images,
        ctx.reference,
        feature_extractor=ev["feature_extractor"],
        extractor_path=ctx.extractor,
        cache_dir=f"{args.features}/fid_cache",
        bootstrap=ev["bootstrap"],
        kid_subset_size=ev["kid_subset_size"],
        kid_subsets=ev["kid_subsets"],
        seed=cfg["seed"],
        device=ctx.device,
        keep_features=True,
    )
    record = {key: row[key] for key in ("schedule", "seed", "sample_schedule", "grid", "guidance_scale")}
    record.update(solver=solver, steps=row["steps"], nfe=row["nfe"])
    for key in ("fid", "fid_lo", "fid_hi", "kid_mean", "kid_std"):
        record[key] = float(scores[key])
    pr = precision_recall(scores["features"], ctx.reference_features) if ev["precision_recall"] else {}
    for key in ("precision", "precision_lo", "precision_hi", "recall", "recall_lo", "recall_hi"):
        record[key] = float(pr[key]) if key in pr else None
    record.update(_class_accuracy(ctx, images, loaded.get("labels")))
    record.update(
        solver_error=row["solver_error"],
        invariance_error=row.get("invariance_error"),
        seconds_per_sample=row["seconds_per_sample"],
        n_samples=int(scores.get("n_samples", row["n_samples"])),
        feature_extractor=scores.get("feature_extractor", ev["feature_extractor"]),
        bootstrap=ev["bootstrap"],
        bootstrap_seed=cfg["seed"],
    )
    kept = {
        "features": scores["features"].numpy(),
        "fid_bootstrap": scores["fid_bootstrap"],
        "indices": np.arange(len(images)),  # generate() holds sample i at row i
    }
    print(
        f"{row_key(record)} seed {args.seed}: FID {record['fid']:.3f} "
        f"[{record['fid_lo']:.3f}, {record['fid_hi']:.3f}]"
        + ("" if record["class_accuracy"] is None else f", class accuracy {record['class_accuracy']:.3f}")
    )
    return record, (row_key(record), kept)


def _class_accuracy(ctx: _Context, images, labels) -> dict:
    """The dataset classifier's agreement with the requested labels (Wilson 95% interval); nulls for
    an unconditional row."""
    keys = ("class_accuracy", "class_accuracy_lo", "class_accuracy_hi")
    if labels is None:
        return dict.fromkeys(keys)
    if ctx.classifier is None:
        raise FileNotFoundError(f"{ctx.args.features}/classifier.pt not found; re-run prepare")
    import torch

    from difflab.metrics.classifier import classifier_logits
    from difflab.metrics.conditional import class_accuracy

    logits = classifier_logits(ctx.classifier, images, device=ctx.device)
    acc = class_accuracy(logits, torch.as_tensor(labels))
    return dict(zip(keys, (acc["accuracy"], acc["accuracy_lo"], acc["accuracy_hi"])))


if __name__ == "__main__":
    p = parser(__doc__)
    add_schedule_args(p, model=False)
    p.add_argument("--samples", default="samples", help="the sample stages' folder (default: %(default)s)")
    p.add_argument("--features", default="data/features", help="the prepare stage's feature folder")
    p.add_argument("--out", default=None, help="output file (default: evals/SCHEDULE/seed_SEED/fid.json)")
    p.add_argument(
        "--row-features", default=None, help="every row's features (default: features.npz beside OUT)"
    )
    add_device(p)
    run(main, p.parse_args(), imports=("torch", "difflab.metrics.fid"), ranks=True)
