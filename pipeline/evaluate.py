"""Stage `evaluate`: FID and KID (95% bootstrap interval) of every row of one schedule (every
solver x step count) against the prepared reference, with the prepared feature extractor.

One process per schedule, not per solver: starting the feature extractor (torch-fidelity imports
torchvision) costs seconds, which 32 processes would pay 32 times.

Writes OUT (default evals/SCHEDULE/fid.json): one record per solver x step count with schedule,
solver, steps, nfe, fid, fid_lo, fid_hi, kid_mean, kid_std, solver_error, seconds_per_sample,
n_samples, feature_extractor, bootstrap, bootstrap_seed; and ROW_FEATURES (default features.npz
beside OUT): every row's features (float32), FID bootstrap replicates and sample indices, keyed
"<solver>/<steps>" (difflab.metrics.paired.save_row_features), from which the report pairs rows.
"""

import json
from pathlib import Path

from _common import (
    add_device,
    add_schedule_args,
    atomic_file,
    check_schedule,
    load_cfg,
    parser,
    read_json,
    resolve_device,
    run,
)


def main(args):
    cfg = load_cfg(args)
    check_schedule(cfg, args.schedule)
    import numpy as np
    import torch

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
    extractor = f"{args.features}/classifier.pt" if ev["feature_extractor"] == "classifier" else None
    from difflab.distributed import gather, is_main, shard

    jobs = [(solver, row) for solver in cfg["solvers"] for row in _rows(args, solver)]
    mine = shard(list(enumerate(jobs)))  # several ranks: each scores every world-th row
    done = [
        (k, *_evaluate(args, cfg, solver, row, reference, extractor, levels)) for k, (solver, row) in mine
    ]
    done = sorted((item for part in gather(done) for item in part), key=lambda item: item[0])
    records = [record for _, record, _ in done]
    kept = {key: value for _, _, (key, value) in done}
    out = Path(args.out or f"evals/{args.schedule}/fid.json")
    if is_main():
        save_row_features(args.row_features or out.parent / "features.npz", kept, bootstrap_seed=cfg["seed"])
    atomic_file(out, json.dumps(records, indent=2) + "\n")


def _rows(args, solver) -> list[dict]:
    return read_json(f"{args.samples}/{solver}/{args.schedule}/rows.json")


def _evaluate(args, cfg, solver, row, reference, extractor, levels) -> tuple[dict, tuple[str, dict]]:
    """One row's record, and its features and bootstrap replicates keyed for pairing."""
    import numpy as np

    from difflab.metrics.fid import fid_kid
    from difflab.metrics.paired import row_key
    from difflab.sampling import levels_to_uint8_images, load_samples

    ev = cfg["evaluate"]
    folder = f"{args.samples}/{solver}/{args.schedule}"
    images = levels_to_uint8_images(load_samples(f"{folder}/{row['file']}")["images"], levels)
    scores = fid_kid(
        images,
        reference,
        feature_extractor=ev["feature_extractor"],
        extractor_path=extractor,
        cache_dir=f"{args.features}/fid_cache",
        bootstrap=ev["bootstrap"],
        kid_subset_size=ev["kid_subset_size"],
        kid_subsets=ev["kid_subsets"],
        seed=cfg["seed"],
        device=resolve_device(args.device),
        keep_features=True,
    )
    kept = {
        "features": scores["features"].numpy(),
        "fid_bootstrap": scores["fid_bootstrap"],
        "indices": np.arange(len(images)),  # generate() holds sample i at row i
    }
    record = {"schedule": args.schedule, "solver": solver, **{k: row[k] for k in ("steps", "nfe")}}
    for key in ("fid", "fid_lo", "fid_hi", "kid_mean", "kid_std"):
        record[key] = float(scores[key])
    record.update(
        solver_error=row["solver_error"],
        seconds_per_sample=row["seconds_per_sample"],
        n_samples=int(scores.get("n_samples", row["n_samples"])),
        feature_extractor=scores.get("feature_extractor", ev["feature_extractor"]),
        bootstrap=ev["bootstrap"],
        bootstrap_seed=cfg["seed"],
    )
    print(
        f"{args.schedule} {solver} steps={row['steps']}: "
        f"FID {record['fid']:.3f} [{record['fid_lo']:.3f}, {record['fid_hi']:.3f}]"
    )
    return record, (row_key(solver, row["steps"]), kept)


if __name__ == "__main__":
    p = parser(__doc__)
    add_schedule_args(p, model=False)
    p.add_argument("--samples", default="samples", help="the sample stages' folder (default: %(default)s)")
    p.add_argument("--features", default="data/features", help="the prepare stage's feature folder")
    p.add_argument("--out", default=None, help="output file (default: evals/SCHEDULE/fid.json)")
    p.add_argument(
        "--row-features", default=None, help="every row's features (default: features.npz beside OUT)"
    )
    add_device(p)
    run(main, p.parse_args(), imports=("torch", "difflab.metrics.fid"), ranks=True)
