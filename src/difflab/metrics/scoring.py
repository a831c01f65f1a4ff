"""Score the rows of one network: FID and KID with a 95% bootstrap interval, precision and recall
(torch-fidelity's ``prc`` on the same features) and, for guided rows, the class accuracy of the
prepared dataset classifier, each against the prepared reference with the prepared feature extractor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from difflab.results import Row


@dataclass(frozen=True)
class Scoring:
    """How rows are scored (config section ``evaluate``, and the top-level ``seed`` for the bootstrap
    and KID's subsets)."""

    feature_extractor: str
    bootstrap: int
    kid_subset_size: int | None
    kid_subsets: int
    precision_recall: bool
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: dict) -> Scoring:
        ev = cfg["evaluate"]
        keys = ("feature_extractor", "bootstrap", "kid_subset_size", "kid_subsets", "precision_recall")
        return cls(**{k: ev[k] for k in keys}, seed=cfg["seed"])


class RowScorer:
    """What every row of a network is scored with: the reference images ``[N, C, H, W]`` (uint8) and
    their features, the feature extractor's weights and, where the prepare stage trained one
    (``features_dir/classifier.pt``), the dataset classifier."""

    def __init__(self, reference: Tensor, features_dir: str | Path, scoring: Scoring, device="cpu"):
        from difflab.metrics.fid import extractor_weights, reference_statistics

        self.reference, self.scoring, self.device = reference, scoring, device
        self.features_dir = Path(features_dir)
        classifier = self.features_dir / "classifier.pt"
        self.classifier = classifier if classifier.is_file() else None
        self.extractor = self.classifier if scoring.feature_extractor == "classifier" else None
        weights = extractor_weights(scoring.feature_extractor, self.extractor, reference.shape[2:])
        stats, _, _ = reference_statistics(
            reference,
            feature_extractor=scoring.feature_extractor,
            weights=weights,
            cache_dir=self.features_dir / "fid_cache",
            device=device,
        )
        self.reference_features = stats["features"].to("cpu").float()

    def score(self, row: Row, images: Tensor, labels=None) -> tuple[Row, dict]:
        """``row`` with its scores, from its uint8 ``images`` (0..255) and requested ``labels`` (guided
        rows), and what pairing needs: its ``features``, FID bootstrap replicates and sample indices."""
        from difflab.metrics.conditional import precision_recall
        from difflab.metrics.fid import fid_kid

        sc = self.scoring
        scores = fid_kid(
            images,
            self.reference,
            feature_extractor=sc.feature_extractor,
            extractor_path=self.extractor,
            cache_dir=self.features_dir / "fid_cache",
            bootstrap=sc.bootstrap,
            kid_subset_size=sc.kid_subset_size,
            kid_subsets=sc.kid_subsets,
            seed=sc.seed,
            device=self.device,
            keep_features=True,
        )
        pr = precision_recall(scores["features"], self.reference_features) if sc.precision_recall else {}
        keys = ("precision", "precision_lo", "precision_hi", "recall", "recall_lo", "recall_hi")
        scored = row.replace(
            **{k: float(scores[k]) for k in ("fid", "fid_lo", "fid_hi", "kid_mean", "kid_std")},
            **{k: float(pr[k]) if k in pr else None for k in keys},
            **self._class_accuracy(images, labels),
            n_samples=int(scores["n_samples"]),
            feature_extractor=scores["feature_extractor"],
        )
        kept = {
            "features": scores["features"].numpy(),
            "fid_bootstrap": scores["fid_bootstrap"],
            "indices": np.arange(len(images)),  # generate() holds sample i at row i
        }
        return scored, kept

    def _class_accuracy(self, images: Tensor, labels) -> dict:
        """The dataset classifier's agreement with the requested labels (Wilson 95% interval); nulls for
        an unconditional row."""
        keys = ("class_accuracy", "class_accuracy_lo", "class_accuracy_hi")
        if labels is None:
            return dict.fromkeys(keys)
        if self.classifier is None:
            raise FileNotFoundError(f"{self.features_dir}/classifier.pt not found; re-run prepare")
        from difflab.metrics.classifier import classifier_logits
        from difflab.metrics.conditional import class_accuracy

        logits = classifier_logits(self.classifier, images, device=self.device)
        acc = class_accuracy(logits, torch.as_tensor(labels))
        return dict(zip(keys, (acc["accuracy"], acc["accuracy_lo"], acc["accuracy_hi"])))
