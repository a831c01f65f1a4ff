"""Paired bootstrap differences of FID from each row's own replicates (``fid.bootstrap_fid`` with one
bootstrap seed, as the evaluate stage keeps them, then ``paired.paired_difference``): coverage of a
known difference between Gaussians, width against the unpaired interval, zero for a row against
itself, every row against one at once, Holm."""

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
from difflab.metrics.paired import holm, holm_adjusted, paired_difference, replicate_matrix_difference

D = 3
MU_REF, S_REF = np.zeros(D), np.eye(D)
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


def _paired(fa, fb, seed: int = 0, n_boot: int = 200) -> dict:
    """``FID(a) - FID(b)`` as the report pairs two rows: each row's replicates from one bootstrap seed
    (the same resampled indices), then ``paired_difference``; plus both FIDs and replicates."""
    mu, s = torch.from_numpy(MU_REF), torch.from_numpy(S_REF)
    with _small_linalg(D):
        ba, bb = (bootstrap_fid(f, mu, s, n_boot, seed=seed).numpy() for f in (fa, fb))
        fid_a, fid_b = fid_of_features(fa, mu, s), fid_of_features(fb, mu, s)
    return {**paired_difference(fid_a, fid_b, ba, bb), "fid_a": fid_a, "fid_b": fid_b, "boots": (ba, bb)}


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
        out = _paired(fa, fb, seed=r)
        hits.append(out["diff_lo"] <= TRUE_DIFF <= out["diff_hi"])
    assert 0.90 <= np.mean(hits) <= 0.99, np.mean(hits)


def test_paired_interval_is_narrower_for_correlated_rows_and_as_wide_for_independent_ones():
    rng = np.random.default_rng(1)
    ratios = {}
    for rho in (0.95, 0.0):
        paired, unpaired = [], []
        for r in range(20):
            fa, fb = _rows(rng, 300, rho)
            out = _paired(fa, fb, seed=r)
            paired.append(out["diff_hi"] - out["diff_lo"])
            unpaired.append(_unpaired_width(fa, fb, seed=1000 + 2 * r))
        ratios[rho] = np.mean(paired) / np.mean(unpaired)
    assert ratios[0.95] < 0.5, ratios
    assert 0.85 < ratios[0.0] < 1.15, ratios


def test_a_row_against_itself_is_zero_with_a_zero_width_interval():
    fa, _ = _rows(np.random.default_rng(2), 200, 0.5)
    out = _paired(fa, fa.clone(), n_boot=50)
    assert out["fid_diff"] == out["diff_lo"] == out["diff_hi"] == 0.0 and out["p_value"] == 1.0


def test_same_seed_draws_the_same_indices_and_the_matrix_equals_the_pairs():
    """A row's own bootstrap (one seed for every row) is the resampling ``bootstrap_draws`` names, and
    every row against one at once (``replicate_matrix_difference``) equals the pairs one by one."""
    fa, fb = _rows(np.random.default_rng(3), 250, 0.8)
    mu, s = torch.from_numpy(MU_REF), torch.from_numpy(S_REF)
    out = _paired(fa, fb, seed=5, n_boot=100)
    ba, bb = out["boots"]
    assert np.array_equal(ba, bootstrap_fid(fa, mu, s, 100, draws=bootstrap_draws(250, 100, 5)).numpy())
    assert (out["diff_lo"], out["diff_hi"]) == bias_shifted_interval(ba - bb, out["fid_a"] - out["fid_b"])
    assert out["se"] == pytest.approx((ba - bb).std(ddof=1), rel=1e-12)
    assert out["p_value"] == pytest.approx(math.erfc(abs(out["fid_diff"]) / out["se"] / math.sqrt(2)))
    fids = np.array([out["fid_a"], out["fid_b"], 1.0])
    many = replicate_matrix_difference(fids, np.stack([ba, bb, np.ones(100)]), 0)
    assert many["fid_diff"][1] == pytest.approx(out["fid_diff"])
    assert many["diff_lo"][1] == pytest.approx(out["diff_lo"]) and many["diff_hi"][1] == pytest.approx(
        out["diff_hi"]
    )
    assert many["diff_hi"][0] == 0.0


def test_fid_of_features_equals_the_textbook_formula():
    fa, _ = _rows(np.random.default_rng(4), 400, 0.0)
    mu1, s1 = fa.numpy().mean(0), np.cov(fa.numpy(), rowvar=False)
    want = _fid_gauss(mu1, s1, MU_REF, S_REF)
    assert fid_of_features(fa, torch.from_numpy(MU_REF), torch.from_numpy(S_REF)) == pytest.approx(
        want,
        rel=1e-5,  # the float32 second moment
    )


def test_holm_known_answers():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005 <= 0.05/4, 0.01 <= 0.05/3, 0.03 > 0.05/2: stop
    assert holm(p) == [True, False, False, True]
    assert holm_adjusted(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert [a <= 0.05 for a in holm_adjusted(p)] == holm(p)
    assert holm([]) == [] and holm([0.5]) == [False] and holm([0.049]) == [True]
