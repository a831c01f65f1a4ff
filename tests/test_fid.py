"""FID/KID through torch-fidelity: known answers, peer equivalence, caching, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from difflab.images import levels_to_uint8_images
from difflab.metrics import classifier as C
from difflab.metrics import fid as F


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    levels = torch.from_numpy(d.images).to(torch.uint8).reshape(-1, 1, 8, 8)  # 0..16
    return levels, torch.from_numpy(d.target)


@pytest.fixture(scope="module")
def ckpt(digits, tmp_path_factory):
    levels, labels = digits
    path = tmp_path_factory.mktemp("clf") / "classifier.pt"
    info = C.train_classifier(levels[:1400], labels[:1400], 17, path, seed=0)
    return path, info


@pytest.fixture(scope="module")
def halves(digits):
    u8 = levels_to_uint8_images(digits[0], 17)
    u8 = u8[torch.randperm(len(u8), generator=torch.Generator().manual_seed(0))]
    return u8[:900], u8[900:]  # reference, "samples" (another draw from the same distribution)


def _noisy(images: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=g) * std
    return (images.float() + noise).round().clamp(0, 255).to(torch.uint8)


def test_classifier_trains_fast_and_accurately(ckpt):
    path, info = ckpt
    assert info["acc"] > 0.9 and info["seconds"] < 30
    saved = torch.load(path, weights_only=True)
    assert saved["hparams"]["image_size"] == [8, 8] and saved["hparams"]["levels"] == 17


def test_fid_of_a_set_with_itself_is_zero(ckpt, halves, tmp_path):
    ref, _ = halves
    out = F.fid_kid(ref, ref, extractor_path=ckpt[0], cache_dir=tmp_path, bootstrap=0, kid_subsets=5)
    assert abs(out["fid"]) < 1e-3 * out["feature_dim"]
    assert out["feature_extractor"] == "classifier" and out["n_samples"] == 900


def test_fid_grows_monotonically_with_noise(ckpt, halves, tmp_path):
    ref, other = halves
    fids = [
        F.fid_kid(
            _noisy(ref, std), ref, extractor_path=ckpt[0], cache_dir=tmp_path, bootstrap=0, kid_subsets=5
        )["fid"]
        for std in (0.0, 10.0, 30.0, 60.0, 120.0)
    ]
    assert abs(fids[0]) < 1e-3 and all(a < b for a, b in zip(fids, fids[1:])), fids


def test_equals_direct_torch_fidelity_and_torchmetrics(ckpt, halves, tmp_path):
    import torch_fidelity
    from torchmetrics.image.fid import FrechetInceptionDistance

    ref, other = halves
    samples = _noisy(other, 30.0)
    ours = F.fid_kid(
        samples, ref, extractor_path=ckpt[0], cache_dir=tmp_path, bootstrap=0, seed=7, kid_subsets=20
    )
    with F._small_linalg(128):  # the peers' small eigenproblems, on one thread like ours
        direct = torch_fidelity.calculate_metrics(
            input1=F._Images(samples),
            input2=F._Images(ref),
            fid=True,
            kid=True,
            feature_extractor="difflab-classifier",
            feature_extractor_weights_path=str(ckpt[0]),
            kid_subset_size=ours["kid_subset_size"],
            rng_seed=7,
            kid_subsets=20,
            cuda=False,
            cache=False,
            save_cpu_ram=True,
            verbose=False,
        )
    assert ours["fid"] == pytest.approx(direct["frechet_inception_distance"], abs=1e-3)
    assert ours["kid_mean"] == pytest.approx(direct["kernel_inception_distance_mean"], abs=1e-6)
    assert ours["kid_std"] == pytest.approx(direct["kernel_inception_distance_std"], abs=1e-6)

    class Features(torch.nn.Module):  # torchmetrics' custom-feature path: uint8 in, [B, F] out
        def __init__(self):
            super().__init__()
            self.fe = C.FeatureExtractorClassifier("difflab-classifier", ["features"], str(ckpt[0]))

        def forward(self, x):
            return self.fe(x.to(torch.uint8))[0]

    tm = FrechetInceptionDistance(feature=Features(), input_img_size=(1, 8, 8))
    tm.update(ref, real=True)
    tm.update(samples, real=False)
    with F._small_linalg(128):
        tm_fid = float(tm.compute())
    assert tm_fid == pytest.approx(ours["fid"], abs=1e-3)
    assert ours["fid"] > 1.0  # a non-trivial distance, so the agreement means something


def test_reference_cache_is_keyed_by_content_and_weights(ckpt, halves, digits, tmp_path):
    ref, other = halves
    first = F.fid_kid(other, ref, extractor_path=ckpt[0], cache_dir=tmp_path, bootstrap=0, kid_subsets=5)
    again = F.fid_kid(other, ref, extractor_path=ckpt[0], cache_dir=tmp_path, bootstrap=0, kid_subsets=5)
    assert not first["reference_cache_hit"] and again["reference_cache_hit"]
    assert again["fid"] == first["fid"]
    (cached,) = tmp_path.glob("ref-classifier-*.pt")  # tensors only: it loads as weights
    assert set(torch.load(cached, weights_only=True)) == {"features", "mu", "sigma", "n"}
    changed = ref.clone()
    changed[0, 0, 0, 0] ^= 1  # one pixel, one bit
    moved = F.fid_kid(other, changed, extractor_path=ckpt[0], cache_dir=tmp_path, bootstrap=0, kid_subsets=5)
    assert not moved["reference_cache_hit"]
    retrained = tmp_path / "other-classifier.pt"
    C.train_classifier(digits[0][:300], digits[1][:300], 17, retrained, seed=1, epochs=1)
    new_weights = F.fid_kid(
        other, ref, extractor_path=retrained, cache_dir=tmp_path, bootstrap=0, kid_subsets=5
    )
    assert not new_weights["reference_cache_hit"]
    assert len(list(tmp_path.glob("ref-classifier-*.pt"))) == 3


def test_bootstrap_interval_contains_the_estimate(ckpt, halves, tmp_path):
    ref, other = halves
    out = F.fid_kid(_noisy(other[:300], 30.0), ref, extractor_path=ckpt[0], cache_dir=tmp_path, bootstrap=100)
    assert out["fid_lo"] < out["fid"] < out["fid_hi"]
    assert out["fid_hi"] - out["fid_lo"] < out["fid"]  # 300 samples pin FID to well within a factor 2


def test_bootstrap_gram_trick_matches_torch_fidelity():
    """The bootstrap FID of a resample equals torch-fidelity's FID of that resample (n < d and n > d)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    g = torch.Generator().manual_seed(0)
    for n in (20, 60):
        f1 = torch.randn(n, 32, generator=g, dtype=torch.float64) * 1.5 + 0.3
        f2 = torch.randn(80, 32, generator=g, dtype=torch.float64)
        s1, s2 = fid_features_to_statistics(f1), fid_features_to_statistics(f2)
        want = fid_statistics_to_metric(s1, s2, verbose=False)["frechet_inception_distance"]
        gen = torch.Generator().manual_seed(123)
        idx = torch.randint(0, n, (n,), generator=gen)
        got = F.bootstrap_fid(f1, torch.tensor(s2["mu"]), torch.tensor(s2["sigma"]), 1, seed=123)
        resampled = fid_statistics_to_metric(fid_features_to_statistics(f1[idx]), s2, verbose=False)
        assert float(got[0]) == pytest.approx(resampled["frechet_inception_distance"], rel=1e-6)
        assert want > 0


def test_too_few_for_kid_and_small_n_warning(ckpt, halves, tmp_path):
    ref, other = halves
    with pytest.raises(ValueError, match="too few images for KID: 5 samples"):
        F.fid_kid(other[:5], ref, extractor_path=ckpt[0], cache_dir=tmp_path)
    with pytest.warns(UserWarning, match="strongly biased"):
        out = F.fid_kid(other[:50], ref, extractor_path=ckpt[0], cache_dir=tmp_path, bootstrap=10)
    assert out["n_samples"] == 50 and out["kid_subset_size"] == 50
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        F.fid_kid(other[:200], ref, extractor_path=ckpt[0], cache_dir=tmp_path, bootstrap=0, kid_subsets=5)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda x: x.float() / 255, "uint8"),
        (lambda x: x.numpy(), "torch uint8 tensor"),
        (lambda x: torch.nn.functional.pad(x, (1, 1, 1, 1)), "trained on 8x8"),
        (lambda x: x[:, 0], r"\[N, C, H, W\]"),
        (lambda x: x.expand(-1, 2, -1, -1), "C = 1 or 3"),
    ],
)
def test_bad_images_are_rejected_without_output(ckpt, halves, tmp_path, mutate, match):
    ref, other = halves
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=match):
        F.fid_kid(
            mutate(other[:20]),
            mutate(ref[:20]) if "8x8" in match else ref,
            extractor_path=ckpt[0],
            cache_dir=cache,
        )
    assert not cache.exists()


def test_bad_extractor_and_missing_weights(ckpt, halves, tmp_path, monkeypatch):
    ref, other = halves
    with pytest.raises(ValueError, match="classifier, inception"):
        F.fid_kid(other[:20], ref[:20], feature_extractor="vgg", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="classifier checkpoint"):
        F.fid_kid(other[:20], ref[:20], extractor_path=tmp_path / "nope.pt", cache_dir=tmp_path)
    from difflab.metrics import inception

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(inception, "download_official", lambda *a, **k: False)
    with pytest.raises(FileNotFoundError, match="make fid-weights") as err:
        F.fid_kid(other[:20], ref[:20], feature_extractor="inception", cache_dir=tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="samples .* and reference .* differ"):
        F.fid_kid(other[:20, :, :4], ref[:20], extractor_path=ckpt[0], cache_dir=tmp_path)


def test_fid_of_features_equals_torch_fidelity_on_ill_conditioned_features():
    """Classifier features have reference covariance eigenvalues from ~6e-14 to ~112: with float64
    statistics, ``fid_of_features`` and its bootstrap equal torch-fidelity's Frechet distance to ~1e-6
    (measured 1e-6; a float32 second moment is 14% low here)."""
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    d, g = 128, torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    eig = torch.logspace(np.log10(6e-14), np.log10(112), d, dtype=torch.float64)

    def features(n, scale):
        return (torch.randn(n, d, generator=g, dtype=torch.float64) * (scale * eig).sqrt()) @ q.T

    ref, gen = features(2000, 1.0), features(400, 1.2)
    s_gen, s_ref = ({"mu": f.mean(0).numpy(), "sigma": np.cov(f.numpy(), rowvar=False)} for f in (gen, ref))
    assert np.linalg.eigvalsh(s_ref["sigma"])[0] < 1e-13
    want = fid_statistics_to_metric(s_gen, s_ref, verbose=False)["frechet_inception_distance"]
    mu, sigma = torch.from_numpy(s_ref["mu"]), torch.from_numpy(s_ref["sigma"])
    assert F.fid_of_features(gen, mu, sigma) == pytest.approx(want, rel=3e-6)
    one = F.bootstrap_fid(gen, mu, sigma, 1, draws=[torch.arange(400).flip(0)])  # every row once
    assert float(one[0]) == pytest.approx(want, rel=3e-6)


def test_batched_bootstrap_equals_naive_resampled_fid():
    """Each bootstrap replicate equals the textbook FID (scipy sqrtm) of the same resample of rows."""
    import scipy.linalg

    from difflab.metrics.fid import bootstrap_fid

    g = torch.Generator().manual_seed(0)
    f = torch.randn(300, 16, generator=g, dtype=torch.float64).relu()
    ref = torch.randn(2000, 16, generator=g, dtype=torch.float64).relu() * 1.2
    mu2, s2 = ref.mean(0), torch.cov(ref.T)
    fast = bootstrap_fid(f, mu2, s2, n_boot=5, seed=7)
    draws = torch.Generator().manual_seed(7)
    for b in range(5):
        fb = f[torch.randint(0, 300, (300,), generator=draws)].numpy()
        mu1, s1 = fb.mean(0), np.cov(fb, rowvar=False)
        covmean = scipy.linalg.sqrtm(s1 @ s2.numpy()).real
        naive = ((mu1 - mu2.numpy()) ** 2).sum() + np.trace(s1 + s2.numpy() - 2 * covmean)
        assert float(fast[b]) == pytest.approx(naive, rel=1e-5)


def test_keep_features_returns_what_a_paired_comparison_needs(ckpt, halves, tmp_path):
    from difflab.metrics.paired import paired_difference

    ref, other = halves
    kw = dict(extractor_path=ckpt[0], cache_dir=tmp_path, bootstrap=50, seed=3, kid_subsets=5)
    plain = F.fid_kid(_noisy(other[:300], 30.0), ref, **kw)
    a = F.fid_kid(_noisy(other[:300], 30.0), ref, keep_features=True, **kw)
    b = F.fid_kid(_noisy(other[:300], 60.0), ref, keep_features=True, **kw)
    assert "features" not in plain and plain["fid"] == a["fid"] and plain["fid_lo"] == a["fid_lo"]
    assert a["features"].dtype == torch.float32 and a["features"].shape == (300, a["feature_dim"])
    assert len(a["fid_bootstrap"]) == 50
    assert F.bias_shifted_interval(a["fid_bootstrap"], a["fid"]) == pytest.approx((a["fid_lo"], a["fid_hi"]))
    diff = paired_difference(a["fid"], b["fid"], a["fid_bootstrap"], b["fid_bootstrap"])
    assert diff["diff_hi"] < 0  # more noise, higher FID, resolved by the pairing
    assert diff["diff_hi"] - diff["diff_lo"] < (a["fid_hi"] - a["fid_lo"]) + (b["fid_hi"] - b["fid_lo"])
