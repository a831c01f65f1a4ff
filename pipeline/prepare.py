"""Stage `prepare`: the dataset as one versioned array file, the FID reference and its features.

Writes OUT/ (default data/prepared), byte-identical for the same data params:
  {train,heldout}_{images,labels}.npy   uint8 levels of the train split (the FID reference) and of
                                        the held-out split (bits/dim), with their labels
  meta.json        dataset name, shape, levels, classes, split sizes
and FEATURES/ (default data/features):
  classifier.pt    the dataset classifier: FID features (evaluate.feature_extractor: classifier) and,
                   for a class-conditional model, the judge of class accuracy
  fid_cache/       reference features for the feature extractor
  heldout_features.npy  the held-out split's features [m, d] (float32), for the report's floor at the
                   rows' sample count
  floor.json       FID/KID of the held-out split against the reference: the real-data floor, the
                   reference features' file in fid_cache/ (``reference_features``); for a
                   class-conditional model also the classifier's held-out accuracy (the ceiling)
"""

from _common import atomic_dir, load_cfg, parser, resolve_device, run, write_json


def main(args):
    cfg = load_cfg(args)
    from difflab.data.datamodules import build_datamodule

    dm = build_datamodule(cfg["data"], seed=cfg["seed"])
    if dm.levels is None:
        raise ValueError(f"data.name={cfg['data']['name']!r} is continuous; the pipeline compares images")
    train, held = dm.train_levels(), dm.heldout_levels()
    with atomic_dir(args.out) as out:
        meta = _write_splits(out, cfg["data"]["name"], dm, train, held)
    with atomic_dir(args.features) as out:
        _write_features(out, cfg, dm.levels, train, held, args.device)
    print(f"prepared {meta['dataset']}: {meta['n_train']} reference + {meta['n_heldout']} held-out images")


def _write_splits(out, dataset: str, dm, train, held) -> dict:
    """The splits as .npy (not .npz: no timestamps, the same bytes every run) and meta.json."""
    import numpy as np

    for split, (images, labels) in {"train": train, "heldout": held}.items():
        np.save(out / f"{split}_images.npy", images.numpy())
        np.save(out / f"{split}_labels.npy", labels.numpy())
    meta = {
        "dataset": dataset,
        "shape": list(dm.data_shape),
        "levels": int(dm.levels),
        "num_classes": int(dm.num_classes),
        "n_train": len(train[0]),
        "n_heldout": len(held[0]),
    }
    write_json(out / "meta.json", meta)
    return meta


def _write_features(out, cfg, levels: int, train, held, device) -> None:
    """The classifier (where FID features or class accuracy need it), the reference features, the
    held-out split's features and floor.json."""
    import numpy as np

    from difflab.images import levels_to_uint8_images
    from difflab.metrics.fid import fid_kid

    ev = cfg["evaluate"]
    info, extractor_path = {"feature_extractor": ev["feature_extractor"]}, None
    conditional = cfg["class_cond"]["num_classes"] > 0
    if ev["feature_extractor"] == "classifier" or conditional:
        from difflab.metrics.classifier import train_classifier

        classifier = out / "classifier.pt"  # FID features, and the judge of class accuracy
        info["classifier"] = train_classifier(
            *train, levels, classifier, seed=cfg["seed"], epochs=ev["classifier_epochs"]
        )
        extractor_path = classifier if ev["feature_extractor"] == "classifier" else None
        if conditional:
            info["classifier_ceiling"] = _ceiling(classifier, *held, levels, device)
    # The held-out split against the reference: the FID a perfect model would reach at this size.
    floor = fid_kid(
        levels_to_uint8_images(held[0], levels),
        levels_to_uint8_images(train[0], levels),
        feature_extractor=ev["feature_extractor"],
        extractor_path=extractor_path,
        cache_dir=out / "fid_cache",
        bootstrap=ev["bootstrap"],
        seed=cfg["seed"],
        device=resolve_device(device),
        keep_features=True,
    )
    np.save(out / "heldout_features.npy", floor["features"].numpy())
    (reference,) = (out / "fid_cache").glob(f"ref-{ev['feature_extractor']}-*.pt")
    info["reference_features"] = str(reference.relative_to(out))  # its "features" [N, d], mu, sigma
    info["data_floor"] = {k: v for k, v in floor.items() if isinstance(v, (int, float, str))}
    write_json(out / "floor.json", info)


def _ceiling(classifier, images, labels, levels, device) -> dict:
    """The classifier's accuracy on the held-out split (95% Wilson interval): the class accuracy a
    perfect class-conditional model would reach."""
    from difflab.images import levels_to_uint8_images
    from difflab.metrics.classifier import classifier_logits
    from difflab.metrics.conditional import classifier_ceiling

    logits = classifier_logits(
        classifier, levels_to_uint8_images(images, levels), device=resolve_device(device)
    )
    return classifier_ceiling(logits, labels)


if __name__ == "__main__":
    p = parser(__doc__, device=True)
    p.add_argument("--out", default="data/prepared", help="dataset folder (default: %(default)s)")
    p.add_argument("--features", default="data/features", help="feature folder (default: %(default)s)")
    run(main, p.parse_args())
