"""Metrics of class-conditional sampling: accuracy on the requested class (``class_accuracy``), and
improved precision and recall (``precision_recall``), each with a 95% Wilson interval.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

Z_95 = 1.959963984540054  # the 97.5% quantile of the standard normal


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval ``(lo, hi)`` for a binomial proportion ``successes / n`` (Wilson 1927;
    95% with the default ``z``): with ``p = successes / n``,

        (p + z^2 / 2n  +-  z sqrt(p (1 - p) / n + z^2 / 4n^2)) / (1 + z^2 / n),

    which stays inside [0, 1] and keeps its coverage near 0 and 1, where the Wald interval collapses."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"wilson_interval: n={n!r} must be an integer >= 1")
    if isinstance(successes, bool) or not isinstance(successes, int) or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: successes={successes!r} must be an integer in 0..{n}")
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # at 0 and n the bounds are exactly 0 and 1 (centre -+ half cancels there, up to rounding)
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def _proportion(name: str, successes: int, n: int, value: float | None = None) -> dict:
    """``{name, name_lo, name_hi, name_count}``: ``value`` (default ``successes / n``) and its interval."""
    lo, hi = wilson_interval(successes, n)
    value = successes / n if value is None else float(value)
    return {name: value, f"{name}_lo": lo, f"{name}_hi": hi, f"{name}_count": successes}


def _check_integers(name: str, values) -> Tensor:
    if not torch.is_tensor(values):
        raise ValueError(f"{name} must be a torch tensor, got {type(values).__name__}")
    if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class indices, got dtype {values.dtype}")
    return values.to(torch.long).cpu()


def class_accuracy(logits_or_predictions: Tensor, labels: Tensor, *, num_classes: int | None = None) -> dict:
    """Accuracy of a classifier on the requested (or true) ``labels`` ``[n]``, with its 95% Wilson interval.

    ``logits_or_predictions``: classifier logits ``[n, C]`` (the prediction is their argmax; ``C``
    classes) or predicted classes ``[n]`` (integers; ``num_classes``, when given, bounds them and the
    labels). Labels must lie in ``0..C-1``: a null ("unconditional") label is no class to hit.

    Returns ``dict(accuracy, accuracy_lo, accuracy_hi, accuracy_count, n)`` (``accuracy_count``: the
    number of correct predictions)."""
    if not torch.is_tensor(logits_or_predictions):
        raise ValueError(
            f"class_accuracy: logits_or_predictions must be a tensor [n, C] or [n], "
            f"got {type(logits_or_predictions).__name__}"
        )
    labels = _check_integers("class_accuracy: labels", labels)
    scores = logits_or_predictions.detach().cpu()
    if labels.ndim != 1 or scores.ndim not in (1, 2) or scores.shape[0] != labels.shape[0]:
        raise ValueError(
            f"class_accuracy: logits [n, C] or predictions [n] and labels [n] must agree in n, got "
            f"{tuple(scores.shape)} and {tuple(labels.shape)}"
        )
    n = labels.shape[0]
    if n == 0:
        raise ValueError("class_accuracy: no samples (empty labels)")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)):
        raise ValueError(f"class_accuracy: num_classes={num_classes!r} must be an integer >= 1")
    if scores.ndim == 2:
        C = scores.shape[1]
        if C < 1 or (num_classes is not None and num_classes != C):
            raise ValueError(f"class_accuracy: logits have {C} classes, expected num_classes={num_classes}")
        if not scores.is_floating_point() or not torch.isfinite(scores).all():
            raise ValueError("class_accuracy: logits must be finite floating-point numbers")
        predictions = scores.argmax(1)
    else:
        C = num_classes
        predictions = _check_integers("class_accuracy: predictions", scores)
    if C is not None and C < 1:
        raise ValueError(f"class_accuracy: num_classes={C} must be >= 1")
    for what, v in (("labels", labels), ("predictions", predictions)):
        outside = (v < 0) if C is None else (v < 0) | (v >= C)
        if outside.any():
            allowed = "integers >= 0" if C is None else f"0..{C - 1}"
            raise ValueError(f"class_accuracy: {what} hold {v[outside][0].item()}; allowed {allowed}")
    return {**_proportion("accuracy", int((predictions == labels).sum()), n), "n": n}


def classifier_ceiling(logits: Tensor, true_labels: Tensor) -> dict:
    """The classifier's own accuracy on held-out data ``logits`` ``[n, C]`` with their ``true_labels``
    ``[n]``: what ``class_accuracy`` of generated samples can at best reach. Same output as
    ``class_accuracy``."""
    return class_accuracy(logits, true_labels)


def _check_features(name: str, features, k: int) -> Tensor:
    if not torch.is_tensor(features) or features.ndim != 2 or not features.is_floating_point():
        raise ValueError(
            f"precision_recall: {name} must be a floating-point tensor [n, F], "
            f"got {getattr(features, 'shape', type(features).__name__)}"
        )
    if features.shape[0] < k + 1:
        raise ValueError(
            f"precision_recall: {name} holds {features.shape[0]} rows; the k={k} nearest-neighbour "
            f"radius needs at least {k + 1}"
        )
    if not torch.isfinite(features).all():
        raise ValueError(f"precision_recall: {name} must be finite")
    return features.detach().to("cpu", torch.float32).contiguous()


def precision_recall(
    features_generated: Tensor,
    features_reference: Tensor,
    *,
    k: int = 3,
    batch_size: int = 10000,
    save_cpu_ram: bool = False,
) -> dict:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of generated features ``[n_g, F]``
    against reference features ``[n_r, F]``, with 95% Wilson intervals.

    A set's manifold is the union of balls around its points with radius the distance to each
    point's ``k``-th nearest neighbour in the same set. Precision: the fraction of generated samples
    inside the reference manifold; recall: the fraction of reference samples inside the generated
    manifold. Both come from torch-fidelity's ``prc_features_to_metric`` (options ``prc_neighborhood
    = k``, ``prc_batch_size``, ``save_cpu_ram``) on float32 features, as torch-fidelity's extractors
    give them, so they equal ``calculate_metrics(prc=True, prc_neighborhood=k)`` on the same features.

    Intervals: precision's is the Wilson interval of a binomial proportion of ``n_g`` independent
    samples given the reference manifold, treated as fixed; recall's likewise treats the generated
    manifold as fixed and counts the ``n_r`` reference samples inside it. Neither includes the
    variability of the manifold itself (its radii depend on the same samples), so both are
    somewhat narrow.

    Returns ``dict(precision, precision_lo, precision_hi, precision_count, recall, recall_lo,
    recall_hi, recall_count, f_score, n_generated, n_reference, k)``."""
    from torch_fidelity.metric_prc import (
        KEY_METRIC_F_SCORE,
        KEY_METRIC_PRECISION,
        KEY_METRIC_RECALL,
        prc_features_to_metric,
    )

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"precision_recall: k={k!r} must be an integer >= 1")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"precision_recall: batch_size={batch_size!r} must be an integer >= 1")
    gen = _check_features("features_generated", features_generated, k)
    ref = _check_features("features_reference", features_reference, k)
    if gen.shape[1] != ref.shape[1]:
        raise ValueError(
            f"precision_recall: features_generated {tuple(gen.shape)} and features_reference "
            f"{tuple(ref.shape)} differ in feature dimension"
        )
    out = prc_features_to_metric(
        gen, ref, prc_neighborhood=k, prc_batch_size=batch_size, save_cpu_ram=save_cpu_ram, verbose=False
    )
    n_g, n_r = gen.shape[0], ref.shape[0]
    # torch-fidelity returns the float32 mean of 0/1 indicators: rounding recovers the exact counts
    p, r = out[KEY_METRIC_PRECISION], out[KEY_METRIC_RECALL]
    return {
        **_proportion("precision", round(p * n_g), n_g, p),
        **_proportion("recall", round(r * n_r), n_r, r),
        "f_score": float(out[KEY_METRIC_F_SCORE]),
        "n_generated": n_g,
        "n_reference": n_r,
        "k": k,
    }
