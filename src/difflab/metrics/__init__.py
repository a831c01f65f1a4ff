"""Evaluation metrics (layer 3): FID/KID through torch-fidelity (``fid``), the digits/MNIST classifier
feature extractor (``classifier``), offline Inception weights (``inception``; ``make fid-weights``),
batched bits/dim (``nll``) and what a run can conclude (``diagnostics``). Submodules are imported on
demand (torch-fidelity loads only when a metric is used).
"""

from difflab.schema import ConfigError, Field, registry

EVALUATE_FIELDS = {  # the ``evaluate`` section, read by the evaluate and nll stages
    "feature_extractor": Field(str, choices=registry("difflab.metrics.fid", "FEATURE_EXTRACTORS")),
    "classifier_epochs": Field(int, low=1, doc="the digits/MNIST feature classifier's"),
    "bootstrap": Field(int, low=0, doc="FID's bootstrap replicates"),
    "kid_subset_size": Field(int, low=2, nullable=True, doc="at most sample.n_samples (check_kid_subset)"),
    "kid_subsets": Field(int, low=1),
    "precision_recall": Field(bool),
    "nll_images": Field(int, low=0),
    "nll_divergence": Field(str, choices=registry("difflab.likelihood", "DIVERGENCES")),
    "nll_probes": Field(int, low=1),
    "nll_t_min": Field(
        float, low=0, high=0.5, high_open=True, nullable=True, doc="null: the schedule's t_min"
    ),
}


def check_kid_subset(cfg: dict) -> None:
    """KID's subsets are drawn from a row's samples: ``evaluate.kid_subset_size <= sample.n_samples``."""
    kid, n = cfg["evaluate"]["kid_subset_size"], cfg["sample"]["n_samples"]
    if kid is not None and kid > n:
        raise ConfigError(
            f"params: evaluate.kid_subset_size={kid!r} is not allowed; must be null or an integer in "
            f"2..sample.n_samples ({n})"
        )
