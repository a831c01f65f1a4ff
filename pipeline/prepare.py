"""Stage `prepare`: the dataset as one versioned array file, the FID reference and its features.

Writes OUT/ (default data/prepared), byte-identical for the same data params:
  {train,heldout}_{images,labels}.npy   uint8 levels of the train split (the FID reference) and of
                                        the held-out split (bits/dim), with their labels
  meta.json        dataset name, shape, levels, classes, split sizes
and FEATURES/ (default data/features):
  classifier.pt    the dataset classifier: FID features (evaluate.feature_extractor: classifier) and,
                   for a class-conditional model, the judge of class accuracy
  fid_cache/       reference features for the feature extractor
  floor.json       FID/KID of the held-out split against the reference: the real-data floor; for a
                   class-conditional model also the classifier's held-out accuracy (the ceiling)
"""

from _common import add_device, atomic_dir, load_cfg, parser, resolve_device, run, write_json


def main(args):
    cfg = load_cfg(args)
    import numpy as np

    from difflab.data.datamodules import build_datamodule
    from difflab.images import levels_to_uint8_images

    dm = build_datamodule(cfg["data"], seed=cfg["seed"])
    train_x, train_y = dm.train_levels()
    held_x, held_y = dm.heldout_levels()
    if dm.levels is None:
        raise ValueError(f"data.name={cfg['data']['name']!r} is continuous; the pipeline compares images")
    ev = cfg["evaluate"]
    with atomic_dir(args.out) as out:
        arrays = {
            "train_images": train_x,
            "train_labels": train_y,
            "heldout_images": held_x,
            "heldout_labels": held_y,
        }
        for name, a in arrays.items():
            np.save(out / f"{name}.npy", a.numpy())  # .npy, not .npz: no timestamps, same bytes every run
        meta = {
            "dataset": cfg["data"]["name"],
            "shape": list(dm.data_shape),
            "levels": int(dm.levels),
            "num_classes": int(dm.num_classes),
            "n_train": len(train_x),
            "n_heldout": len(held_x),
        }
        write_json(out / "meta.json", meta)
    with atomic_dir(args.features) as out:
        info = {"feature_extractor": ev["feature_extractor"]}
        extractor_path = None
        conditional = cfg["class_cond"]["num_classes"] > 0
        if ev["feature_extractor"] == "classifier" or conditional:
            from difflab.metrics.classifier import train_classifier

            classifier = out / "classifier.pt"  # FID features, and the judge of class accuracy
            info["classifier"] = train_classifier(
                train_x, train_y, dm.levels, classifier, seed=cfg["seed"], epochs=ev["classifier_epochs"]
            )
            if ev["feature_extractor"] == "classifier":
                extractor_path = classifier
            if conditional:
                info["classifier_ceiling"] = _ceiling(classifier, held_x, held_y, dm.levels, args.device)
        from difflab.metrics.fid import fid_kid

        # The held-out split against the reference: the FID a perfect model would reach at this size.
        floor = fid_kid(
            levels_to_uint8_images(held_x, dm.levels),
            levels_to_uint8_images(train_x, dm.levels),
            feature_extractor=ev["feature_extractor"],
            extractor_path=extractor_path,
            cache_dir=out / "fid_cache",
            bootstrap=ev["bootstrap"],
            seed=cfg["seed"],
            device=resolve_device(args.device),
        )
        info["data_floor"] = {k: v for k, v in floor.items() if isinstance(v, (int, float, str))}
        write_json(out / "floor.json", info)
    print(f"prepared {meta['dataset']}: {meta['n_train']} reference + {meta['n_heldout']} held-out images")


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
    p = parser(__doc__)
    p.add_argument("--out", default="data/prepared", help="dataset folder (default: %(default)s)")
    p.add_argument("--features", default="data/features", help="feature folder (default: %(default)s)")
    add_device(p)
    run(main, p.parse_args())
