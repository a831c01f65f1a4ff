"""FID and KID through torch-fidelity, with content-keyed reference statistics and a bootstrap interval.

``fid_kid`` computes both with torch-fidelity's own functions on the features of its extractor
(``"classifier"``: our digits/MNIST CNN; ``"inception"``: pool3, 2048-d), so the numbers equal a
direct ``torch_fidelity.calculate_metrics`` call on the same images. Reference statistics are cached
under a key hashed from the reference *content* and the weights *file* (torch-fidelity's own cache
key is just a name: it would silently reuse statistics after the data or weights change). FID's 95%
interval is a bootstrap over the generated features against the fixed reference statistics, computed
in float64 (``bootstrap_fid``); rows of one seed draw it at the same indices (``bootstrap_draws``), so
``difflab.metrics.paired`` can compare two rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import Tensor

from difflab.io import atomic_write

# our name -> torch-fidelity's registered feature extractor; the names are the registry's keys
_TF_NAMES = {"classifier": "difflab-classifier", "inception": "inception-v3-compat"}
FEATURE_EXTRACTORS = tuple(_TF_NAMES)
KID_MIN_SAMPLES = 10
KID_MAX_SUBSET = 1000
_weights_digest_memo: dict[tuple, str] = {}


class _Images(torch.utils.data.Dataset):
    """uint8 images ``[N, C, H, W]`` as the torch Dataset torch-fidelity consumes."""

    def __init__(self, images: Tensor):
        self.images = images

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i]


def _check_images(name: str, images) -> Tensor:
    if not torch.is_tensor(images):
        raise ValueError(f"{name} must be a torch uint8 tensor [N, C, H, W], got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise ValueError(
            f"{name} must be uint8 images in 0..255 [N, C, H, W], got dtype {images.dtype} "
            "(convert model-space samples with difflab.images.to_levels + levels_to_uint8_images)"
        )
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have shape [N, C, H, W] with C = 1 or 3, got {tuple(images.shape)}")
    if images.shape[0] < 2:
        raise ValueError(f"{name} holds {images.shape[0]} image(s); FID needs at least 2")
    return images.contiguous().cpu()


def content_hash(images: Tensor) -> str:
    """sha256 of a uint8 tensor's shape and bytes."""
    h = hashlib.sha256(str(tuple(images.shape)).encode())
    h.update(images.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def weights_hash(path) -> str:
    """sha256 of a weights file (memoised on path, size and mtime)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _weights_digest_memo:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        _weights_digest_memo[key] = h.hexdigest()
    return _weights_digest_memo[key]


def resolve_weights(feature_extractor: str, extractor_path=None) -> Path:
    """The weights file for ``feature_extractor``; for Inception tries the official download first
    and otherwise raises one line telling the user to run ``make fid-weights``."""
    if feature_extractor not in FEATURE_EXTRACTORS:
        raise ValueError(
            f"unknown feature_extractor {feature_extractor!r}; valid: {', '.join(FEATURE_EXTRACTORS)}"
        )
    if feature_extractor == "classifier":
        if extractor_path is None or not Path(extractor_path).is_file():
            raise FileNotFoundError(
                f"classifier checkpoint {extractor_path!r} not found; the prepare stage trains it "
                "(difflab.metrics.classifier.train_classifier)"
            )
        return Path(extractor_path)
    from difflab.metrics import inception

    path = inception.find_weights(extractor_path)
    if path is not None:
        return path
    if extractor_path is not None:
        raise FileNotFoundError(f"Inception weights {extractor_path} not found; run `make fid-weights`")
    target = inception.default_weights_path()
    if inception.download_official(target, timeout=20):
        return target
    raise FileNotFoundError(f"{inception.MISSING_WEIGHTS_HINT} (looked for {target})")


def _extract(images: Tensor, feature_extractor: str, weights: Path, device, batch_size: int) -> Tensor:
    """Features ``[N, F]`` (float64, CPU) from torch-fidelity's extractor, in its own batching."""
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    import difflab.metrics.classifier  # noqa: F401  (registers "difflab-classifier")

    name = _TF_NAMES[feature_extractor]
    cuda = torch.device(device).type == "cuda"
    layer = "2048" if feature_extractor == "inception" else "features"
    if feature_extractor == "inception" and images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1).contiguous()  # gray -> RGB, as for files on disk
    fe = create_feature_extractor(
        name, [layer], cuda=cuda, feature_extractor_weights_path=str(weights), verbose=False
    )
    with one_thread(feature_extractor == "classifier" and not cuda):  # a tiny CNN
        feats = get_featuresdict_from_dataset(
            _Images(images), fe, batch_size, cuda, save_cpu_ram=True, verbose=False
        )
    return feats[layer].to(torch.float64)


def _stats(features: Tensor) -> dict:
    from torch_fidelity.metric_fid import fid_features_to_statistics

    return fid_features_to_statistics(features.to(torch.float32))


def reference_statistics(
    reference: Tensor, *, feature_extractor: str, weights: Path, cache_dir, device="cpu", batch_size: int = 64
) -> tuple[dict, str, bool]:
    """``({"features", "mu", "sigma"}, cache key, hit)``, cached in ``cache_dir`` under a key from
    the reference content, the extractor and the weights file's hash. The cache holds tensors only
    (``mu`` and ``sigma`` as float64 tensors, numpy again once loaded), so it loads with
    ``weights_only=True``."""
    key = hashlib.sha256(
        f"tensors|{feature_extractor}|{content_hash(reference)}|{weights_hash(weights)}".encode()
    ).hexdigest()[:32]
    path = Path(cache_dir) / f"ref-{feature_extractor}-{key}.pt"
    if path.is_file():
        stats = torch.load(path, map_location="cpu", weights_only=True)
        return {**stats, "mu": stats["mu"].numpy(), "sigma": stats["sigma"].numpy()}, key, True
    features = _extract(reference, feature_extractor, weights, device, batch_size)
    stats = {"features": features, **_stats(features), "n": reference.shape[0]}
    saved = {**stats, "mu": torch.from_numpy(stats["mu"]), "sigma": torch.from_numpy(stats["sigma"])}
    atomic_write(path, lambda tmp: torch.save(saved, tmp))
    return stats, key, False


@contextlib.contextmanager
def one_thread(on: bool = True):
    """torch on one CPU thread inside the block where ``on``: a tiny CNN or a small eigenproblem runs
    faster on one thread than on several competing ones."""
    threads = torch.get_num_threads()
    if on:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _small_linalg(d: int, device="cpu"):
    """One BLAS/OpenMP thread for small (d <= 512) CPU eigenproblems: on a loaded 2-core machine,
    BLAS threads fighting torch's spinning OpenMP threads make them 10-100x slower."""
    small = d <= 512 and torch.device(device).type == "cpu"
    with one_thread(small), threadpool_limits(1) if small else contextlib.nullcontext():
        yield


def _sym_sqrt(m: Tensor) -> Tensor:
    w, v = torch.linalg.eigh(m)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def bootstrap_draws(n: int, n_boot: int, seed: int = 0) -> list[Tensor]:
    """The ``n_boot`` resamples of ``n`` sample indices (with replacement) that ``bootstrap_fid``
    uses for ``seed``: rows with the same ``n`` and seed are resampled at the same indices, which
    is what a paired comparison needs (``difflab.metrics.paired``)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    return [torch.randint(0, n, (n,), generator=g) for _ in range(n_boot)]


def bootstrap_fid(
    features: Tensor,
    mu_ref: Tensor,
    sigma_ref: Tensor,
    n_boot: int,
    seed: int = 0,
    device="cpu",
    *,
    draws: list[Tensor] | None = None,
) -> Tensor:
    """FID of ``n_boot`` resamples (with replacement) of ``features`` ``[n, d]`` against fixed
    reference statistics (``draws``: explicit resamples, default ``bootstrap_draws(n, n_boot, seed)``).
    ``tr sqrt(S1 S2) = tr sqrt(S2^1/2 S1 S2^1/2)``: for ``n > d`` every resample is a vector of
    counts ``c`` over the rows, so with ``r = f S2^1/2`` computed once,
    ``S2^1/2 S1 S2^1/2 = (r^T diag(c) r - n mu_r mu_r^T) / (n - 1)``, batched over resamples; for
    ``n <= d`` the ``n x n`` Gram matrix of the resample is used (the covariance has rank < n)."""
    dev = torch.device(device)
    f = features.to(dev, torch.float64)
    mu2, s2 = mu_ref.to(dev, torch.float64), sigma_ref.to(dev, torch.float64)
    root2 = _sym_sqrt(s2)
    n, d = f.shape
    if draws is None:
        draws = bootstrap_draws(n, n_boot, seed)
    elif len(draws) != n_boot or any(len(i) != n for i in draws):
        raise ValueError(f"bootstrap_fid: draws must be {n_boot} index vectors of length {n}")
    out = torch.empty(n_boot, dtype=torch.float64)
    tr2 = torch.trace(s2)
    if n <= d:
        for b in range(n_boot):
            fb = f[draws[b].to(dev)]
            mu1 = fb.mean(0)
            ar = (fb - mu1) / math.sqrt(n - 1) @ root2  # [n, d]
            tr_covmean = torch.linalg.eigvalsh(ar @ ar.T).clamp_min(0).sqrt().sum()
            tr1 = ((fb - mu1) ** 2).sum() / (n - 1)
            out[b] = ((mu1 - mu2) ** 2).sum() + tr1 + tr2 - 2 * tr_covmean
        return out
    r = f @ root2  # [n, d]
    sq = (f**2).sum(1)  # [n]
    # float64 throughout: the reference covariance's eigenvalues span ~1e-14..1e2 for classifier
    # features, and a float32 moment moves FID by ~1 there. Chunks bound the [chunk, d, n] intermediate.
    chunk = max(1, min(32, 2**27 // (n * d)))
    for lo in range(0, n_boot, chunk):
        counts = [torch.bincount(i, minlength=n) for i in draws[lo : lo + chunk]]
        c = torch.stack(counts).to(dev, torch.float64)
        mu1, mu_r = c @ f / n, c @ r / n  # [b, d]
        moment = (r.T[None] * c[:, None, :]) @ r  # count-weighted second moment, [b, d, d]
        m = moment - n * mu_r[:, :, None] * mu_r[:, None, :]
        tr_covmean = torch.linalg.eigvalsh(m / (n - 1)).clamp_min(0).sqrt().sum(-1)
        tr1 = (c @ sq - n * (mu1**2).sum(1)) / (n - 1)
        out[lo : lo + len(c)] = ((mu1 - mu2) ** 2).sum(1) + tr1 + tr2 - 2 * tr_covmean
    return out


def fid_of_features(features: Tensor, mu_ref: Tensor, sigma_ref: Tensor, device="cpu") -> float:
    """FID of the features ``[n, d]`` themselves against fixed reference statistics, by the same
    arithmetic as ``bootstrap_fid`` (one "resample" holding every row once)."""
    n = features.shape[0]
    return float(bootstrap_fid(features, mu_ref, sigma_ref, 1, device=device, draws=[torch.arange(n)])[0])


def bias_shifted_interval(replicates, estimate: float, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of bootstrap ``replicates`` shifted by the bootstrap bias
    ``mean(replicates) - estimate``: resampling duplicates rows, which alone raises FID, so plain
    percentiles would sit above the estimate."""
    boots = np.asarray(replicates, np.float64)
    tail = 100 * (1 - level) / 2
    shift = boots.mean() - estimate
    lo, hi = np.percentile(boots, [tail, 100 - tail]) - shift
    return float(lo), float(hi)


def check_inputs(samples, reference, *, bootstrap: int, kid_subset_size: int | None) -> tuple:
    """``(samples, reference, kid_subset_size)`` after the checks of ``fid_kid`` (one-line
    ValueErrors); ``kid_subset_size`` None becomes ``min(1000, n_samples, n_reference)``."""
    samples = _check_images("samples", samples)
    reference = _check_images("reference", reference)
    if samples.shape[1:] != reference.shape[1:]:
        raise ValueError(
            f"samples {tuple(samples.shape[1:])} and reference {tuple(reference.shape[1:])} "
            "differ in [C, H, W]"
        )
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0:
        raise ValueError(f"bootstrap={bootstrap!r} must be an integer >= 0")
    n, n_ref = samples.shape[0], reference.shape[0]
    if min(n, n_ref) < KID_MIN_SAMPLES:
        raise ValueError(
            f"too few images for KID: {n} samples, {n_ref} reference; at least {KID_MIN_SAMPLES} on each side"
        )
    if kid_subset_size is None:
        kid_subset_size = min(KID_MAX_SUBSET, n, n_ref)
    elif not (isinstance(kid_subset_size, int) and 2 <= kid_subset_size <= min(n, n_ref)):
        raise ValueError(f"kid_subset_size={kid_subset_size!r} must be an integer in 2..{min(n, n_ref)}")
    return samples, reference, kid_subset_size


def extractor_weights(feature_extractor: str, extractor_path, image_size) -> Path:
    """The weights file of ``feature_extractor`` (``resolve_weights``); the classifier must have been
    trained on images of ``image_size`` ``(H, W)``."""
    weights = resolve_weights(feature_extractor, extractor_path)
    if feature_extractor == "classifier":
        from difflab.metrics.classifier import load_classifier

        _, hp = load_classifier(weights)
        if list(image_size) != list(hp["image_size"]):
            raise ValueError(
                f"the classifier was trained on {hp['image_size'][0]}x{hp['image_size'][1]} images; "
                f"got {image_size[0]}x{image_size[1]}"
            )
    return weights


def fid_kid_from_features(
    features: Tensor,
    reference_stats: dict,
    *,
    bootstrap: int = 200,
    seed: int = 0,
    device="cpu",
    kid_subset_size: int,
    kid_subsets: int = 100,
) -> dict:
    """FID with its 95% bootstrap interval and KID of generated ``features`` ``[n, d]`` against
    ``reference_stats`` (``reference_statistics``: ``features``, ``mu``, ``sigma``), through
    torch-fidelity's own functions. Returns ``dict(fid, fid_lo, fid_hi, kid_mean, kid_std,
    fid_bootstrap)``; ``fid_bootstrap`` holds the ``bootstrap`` replicates (``bootstrap_draws(n,
    bootstrap, seed)``, before the bias shift; empty for ``bootstrap=0``, which gives NaN bounds)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    n, d = features.shape
    if n < d:
        warnings.warn(
            f"FID from {n} samples with {d}-d features is strongly biased (rank-deficient covariance); "
            "compare only numbers with the same n_samples",
            stacklevel=3,
        )
    ref = reference_stats
    with _small_linalg(d):
        stats = _stats(features)
        fid = fid_statistics_to_metric(stats, {"mu": ref["mu"], "sigma": ref["sigma"]}, verbose=False)
        kid = kid_features_to_metric(
            features.to(torch.float32),
            ref["features"].to(torch.float32),
            kid_subset_size=kid_subset_size,
            kid_subsets=kid_subsets,
            rng_seed=seed,
            verbose=False,
        )
    fid = float(fid[KEY_METRIC_FID])
    fid_lo = fid_hi = float("nan")
    boots = np.zeros(0)
    if bootstrap > 0:
        mu, sigma = (torch.as_tensor(np.asarray(ref[k])) for k in ("mu", "sigma"))
        with _small_linalg(d, device):
            boots = bootstrap_fid(features, mu, sigma, bootstrap, seed=seed, device=device).numpy()
        lo, hi = bias_shifted_interval(boots, fid)
        fid_lo, fid_hi = max(0.0, lo), hi
    return {
        "fid": fid,
        "fid_lo": fid_lo,
        "fid_hi": fid_hi,
        "kid_mean": float(kid[KEY_METRIC_KID_MEAN]),
        "kid_std": float(kid[KEY_METRIC_KID_STD]),
        "fid_bootstrap": boots,
    }


@dataclass(frozen=True)
class FidOptions:
    """How ``fid_kid`` estimates: ``bootstrap`` resamples for FID's 95% interval (0: none, NaN bounds),
    drawn with ``seed`` (also KID's subsets); ``kid_subset_size`` (None: ``min(1000, n_samples,
    n_reference)``) and ``kid_subsets`` (torch-fidelity's default 100); the extractor's ``batch_size``."""

    bootstrap: int = 200
    seed: int = 0
    kid_subset_size: int | None = None
    kid_subsets: int = 100
    batch_size: int = 64


def fid_kid(
    samples: Tensor,
    reference: Tensor,
    *,
    cache_dir,
    feature_extractor: str = "classifier",
    extractor_path=None,
    device="cpu",
    keep_features: bool = False,
    **options,
) -> dict:
    """FID (with a 95% bootstrap interval) and KID between uint8 ``samples`` and ``reference``
    ``[N, C, H, W]`` (0..255; C = 1 or 3; same C, H, W): ``check_inputs``, ``extractor_weights``,
    ``reference_statistics``, ``_extract``, ``fid_kid_from_features``; ``options`` are
    ``FidOptions``' fields.

    Returns ``dict(fid, fid_lo, fid_hi, kid_mean, kid_std, n_samples, n_reference, kid_subset_size,
    feature_dim, feature_extractor, weights_sha256, reference_cache_hit)``, and with
    ``keep_features`` also ``features`` (float32 ``[n, d]``) and ``fid_bootstrap`` (the bootstrap
    replicates, drawn by ``bootstrap_draws(n, bootstrap, seed)``) for paired comparisons. Fewer than
    10 images on either side is an error for KID. FID with fewer samples than feature dimensions is
    strongly biased: a warning, and ``n_samples`` is reported beside every number.
    """
    opts = FidOptions(**options)
    samples, reference, kid_subset_size = check_inputs(
        samples, reference, bootstrap=opts.bootstrap, kid_subset_size=opts.kid_subset_size
    )
    weights = extractor_weights(feature_extractor, extractor_path, samples.shape[2:])
    where = {"feature_extractor": feature_extractor, "weights": weights, "device": device}
    ref, _, hit = reference_statistics(reference, cache_dir=cache_dir, batch_size=opts.batch_size, **where)
    feats = _extract(samples, feature_extractor, weights, device, opts.batch_size)
    estimation = {k: getattr(opts, k) for k in ("bootstrap", "seed", "kid_subsets")}
    scores = fid_kid_from_features(feats, ref, device=device, kid_subset_size=kid_subset_size, **estimation)
    boots = scores.pop("fid_bootstrap")
    out = {
        **scores,
        "n_samples": samples.shape[0],
        "n_reference": reference.shape[0],
        "kid_subset_size": kid_subset_size,
        "feature_dim": feats.shape[1],
        "feature_extractor": feature_extractor,
        "weights_sha256": weights_hash(weights),
        "reference_cache_hit": hit,
    }
    if keep_features:
        out.update(features=feats.to(torch.float32), fid_bootstrap=boots)
    return out
