"""Paired bootstrap differences of FID/KID: coverage of a known difference between Gaussians, width
against the unpaired interval, zero for a row against itself, index alignment, Holm."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from difflab.metrics.fid import (
    _small_linalg,
    bias_shifted_interval,
    bootstrap_draws,
    bootstrap_fid,
    fid_of_features,
)
from difflab.metrics.paired import (
    holm,
    holm_adjusted,
    paired_difference,
    paired_fid_difference,
    paired_kid_difference,
    replicate_matrix_difference,
)

D = 3
MU_REF, S_REF = np.zeros(D), np.eye(D)
REF = {"mu": MU_REF, "sigma": S_REF}
MU_A, S_A = np.full(D, 0.3), np.diag(np.linspace(0.6, 1.6, D))
MU_B, S_B = np.full(D, 0.45), np.diag(np.linspace(0.8, 1.3, D))


def _fid_gauss(mu1, s1, mu2, s2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2): the FID between two Gaussians."""
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real))


TRUE_DIFF = _fid_gauss(MU_A, S_A, MU_REF, S_REF) - _fid_gauss(MU_B, S_B, MU_REF, S_REF)


def _rows(rng, n: int, rho: float):
    """Features of two rows whose sample i shares the standard normal z1_i (correlation rho)."""
    z1, z2 = rng.standard_normal((n, D)), rng.standard_normal((n, D))
    a = MU_A + z1 @ np.sqrt(S_A)
    b = MU_B + (rho * z1 + math.sqrt(1 - rho**2) * z2) @ np.sqrt(S_B)
    return torch.from_numpy(a), torch.from_numpy(b)


def _unpaired_width(fa, fb, seed: int, n_boot: int = 200) -> float:
    """The width of the difference's interval from independent resamples of the two rows."""
    mu, s = torch.from_numpy(MU_REF), torch.from_numpy(S_REF)
    with _small_linalg(D):
        ba = bootstrap_fid(fa, mu, s, n_boot, seed=seed).numpy()
        bb = bootstrap_fid(fb, mu, s, n_boot, seed=seed + 1).numpy()
    lo, hi = bias_shifted_interval(ba - bb, fid_of_features(fa, mu, s) - fid_of_features(fb, mu, s))
    return hi - lo


def test_gaussian_fid_difference_is_covered_at_about_the_nominal_rate():
    def diag_fid(mu, s):  # against N(0, I) with a diagonal S: ||mu||^2 + sum (sqrt(s_i) - 1)^2
        return (mu**2).sum() + ((np.sqrt(np.diag(s)) - 1) ** 2).sum()

    assert TRUE_DIFF == pytest.approx(diag_fid(MU_A, S_A) - diag_fid(MU_B, S_B), abs=1e-12)
    rng = np.random.default_rng(0)
    hits = []
    for r in range(200):
        fa, fb = _rows(rng, 300, rho=0.9)
        out = paired_fid_difference(fa, fb, REF, bootstrap=200, seed=r)
        hits.append(out["diff_lo"] <= TRUE_DIFF <= out["diff_hi"])
    assert 0.90 <= np.mean(hits) <= 0.99, np.mean(hits)


def test_paired_interval_is_narrower_for_correlated_rows_and_as_wide_for_independent_ones():
    rng = np.random.default_rng(1)
    ratios = {}
    for rho in (0.95, 0.0):
        paired, unpaired = [], []
        for r in range(20):
            fa, fb = _rows(rng, 300, rho)
            out = paired_fid_difference(fa, fb, REF, bootstrap=200, seed=r)
            paired.append(out["diff_hi"] - out["diff_lo"])
            unpaired.append(_unpaired_width(fa, fb, seed=1000 + 2 * r))
        ratios[rho] = np.mean(paired) / np.mean(unpaired)
    assert ratios[0.95] < 0.5, ratios
    assert 0.85 < ratios[0.0] < 1.15, ratios


def test_a_row_against_itself_is_zero_with_a_zero_width_interval():
    fa, _ = _rows(np.random.default_rng(2), 200, 0.5)
    out = paired_fid_difference(fa, fa.clone(), REF, bootstrap=50)
    assert out["fid_diff"] == out["diff_lo"] == out["diff_hi"] == 0.0 and out["p_value"] == 1.0
    kid = paired_kid_difference(fa, fa.clone(), torch.randn(100, D, dtype=torch.float64), bootstrap=50)
    assert kid["kid_diff"] == kid["diff_lo"] == kid["diff_hi"] == 0.0


def test_same_seed_draws_the_same_indices_so_cached_replicates_pair():
    """A row's own bootstrap (one seed for every row) gives the replicates a paired difference needs."""
    fa, fb = _rows(np.random.default_rng(3), 250, 0.8)
    mu, s = torch.from_numpy(MU_REF), torch.from_numpy(S_REF)
    ba, bb = (bootstrap_fid(f, mu, s, 100, seed=5).numpy() for f in (fa, fb))
    assert np.array_equal(ba, bootstrap_fid(fa, mu, s, 100, draws=bootstrap_draws(250, 100, 5)).numpy())
    direct = paired_fid_difference(fa, fb, REF, bootstrap=100, seed=5)
    cached = paired_difference(direct["fid_a"], direct["fid_b"], ba, bb)
    for key in ("fid_diff", "diff_lo", "diff_hi", "se"):
        assert cached[key] == pytest.approx(direct[key], abs=1e-12)
    fids = np.array([direct["fid_a"], direct["fid_b"], 1.0])
    many = replicate_matrix_difference(fids, np.stack([ba, bb, np.ones(100)]), 0)
    assert many["fid_diff"][1] == pytest.approx(direct["fid_diff"])
    assert many["diff_lo"][1] == pytest.approx(direct["diff_lo"]) and many["diff_hi"][0] == 0.0


def test_fid_of_features_equals_the_textbook_formula():
    fa, _ = _rows(np.random.default_rng(4), 400, 0.0)
    mu1, s1 = fa.numpy().mean(0), np.cov(fa.numpy(), rowvar=False)
    want = _fid_gauss(mu1, s1, MU_REF, S_REF)
    assert fid_of_features(fa, torch.from_numpy(MU_REF), torch.from_numpy(S_REF)) == pytest.approx(
        want,
        rel=1e-5,  # the float32 second moment
    )


def test_rows_are_aligned_by_sample_index_and_mismatches_refused():
    fa, fb = _rows(np.random.default_rng(5), 120, 0.7)
    base = paired_fid_difference(fa, fb, REF, bootstrap=30)
    perm = np.random.default_rng(0).permutation(120)
    aligned = paired_fid_difference(fa, fb[perm], REF, bootstrap=30, indices_a=np.arange(120), indices_b=perm)
    assert aligned["fid_diff"] == pytest.approx(base["fid_diff"], abs=1e-9)
    assert aligned["diff_lo"] == pytest.approx(base["diff_lo"], abs=1e-9)
    with pytest.raises(ValueError, match="120 and 100 samples") as err:
        paired_fid_difference(fa, fb[:100], REF, bootstrap=30)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="different sample indices"):
        paired_fid_difference(
            fa, fb, REF, bootstrap=30, indices_a=np.arange(120), indices_b=np.arange(1, 121)
        )
    with pytest.raises(ValueError, match="indices_a and indices_b"):
        paired_fid_difference(fa, fb, REF, bootstrap=30, indices_a=np.arange(120))
    with pytest.raises(ValueError, match="bootstrap"):
        paired_fid_difference(fa, fb, REF, bootstrap=0)


def test_kid_difference_equals_torch_fidelity_kid_difference_on_full_sets():
    """With one subset holding every sample, torch-fidelity's KID is the full-sample MMD^2 and the
    same reference subset serves both rows, so its difference is ours."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    g = torch.Generator().manual_seed(0)
    fa = torch.randn(60, 8, generator=g, dtype=torch.float64)
    fb = fa * 1.3 + 0.2 + 0.3 * torch.randn(60, 8, generator=g, dtype=torch.float64)
    ref = torch.randn(60, 8, generator=g, dtype=torch.float64)

    def kid(f):
        out = kid_features_to_metric(f, ref, kid_subset_size=60, kid_subsets=1, rng_seed=3, verbose=False)
        return out["kernel_inception_distance_mean"]

    out = paired_kid_difference(fa, fb, ref, bootstrap=100)
    assert out["kid_diff"] == pytest.approx(kid(fa) - kid(fb), rel=1e-6)
    assert out["diff_lo"] < out["kid_diff"] < out["diff_hi"] < 0


def test_holm_known_answers():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005 <= 0.05/4, 0.01 <= 0.05/3, 0.03 > 0.05/2: stop
    assert holm(p) == [True, False, False, True]
    assert holm_adjusted(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert [a <= 0.05 for a in holm_adjusted(p)] == holm(p)
    assert holm([]) == [] and holm([0.5]) == [False] and holm([0.049]) == [True]
