"""Training replicates: the seed-combined FID and paired difference reduce to the one-seed functions,
match the random-effects formula by hand, cover the true mean in simulation (and are optimistic
where the seed spread dominates, as documented); per-seed rows fold into one row per setting
(``results.aggregate_seeds``); the pairing with one seed is the plain paired difference; which
schedule differences survive."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest

from difflab.metrics.fid import bias_shifted_interval
from difflab.metrics.paired import (
    Pairing,
    paired_difference,
    replicate_matrix_difference,
    seed_combined,
    seed_combined_difference,
    seed_matrix_difference,
)
from difflab.report.tables import budget_summary, plausible_frontier, surviving_differences
from difflab.report.text import survival_sentences
from difflab.results import Row, aggregate_seeds
from difflab.solvers.registry import Solvers

Z = NormalDist().inv_cdf(0.975)
SOLVERS = Solvers.of(["ddim", "rk45", "ddpm"])


def _orthogonal(k: int, b: int) -> np.ndarray:
    """``k`` centred, mutually orthogonal rows ``[k, b]`` of unit variance (ddof=1): QR of the
    constant beside ``k`` random columns."""
    q, _ = np.linalg.qr(np.column_stack([np.ones(b), np.random.default_rng(1).standard_normal((b, k))]))
    h = q[:, 1:].T  # orthogonal to the constant and to each other
    return h / h.std(1, ddof=1, keepdims=True)


# --- the combination itself -------------------------------------------------------------------


def test_one_seed_is_the_rows_own_interval():
    rng = np.random.default_rng(0)
    boots = 5.3 + rng.gamma(2.0, 0.4, 300)
    c = seed_combined([5.0], boots[None])
    assert (c["fid_lo"], c["fid_hi"]) == bias_shifted_interval(boots, 5.0)
    assert c["fid"] == 5.0 and c["seed_sd"] is None and c["n_seeds"] == 1
    assert c["se"] == pytest.approx(boots.std(ddof=1), rel=1e-15)
    assert seed_combined(5.0, boots) == c  # [B] is one seed


def test_one_seed_difference_is_paired_difference():
    rng = np.random.default_rng(1)
    ba, bb = 7 + rng.standard_normal(200), 6 + rng.standard_normal(200)
    assert seed_combined_difference([7.1], [6.2], ba[None], bb[None]) == paired_difference(7.1, 6.2, ba, bb)


def test_one_seed_matrix_is_replicate_matrix_difference():
    rng = np.random.default_rng(2)
    fid, boots = rng.uniform(3, 9, 6), rng.uniform(3, 9, (6, 150))
    got = seed_matrix_difference(fid[:, None], boots[:, None], 2)
    want = replicate_matrix_difference(fid, boots, 2)
    for k in ("fid_diff", "diff_lo", "diff_hi"):
        np.testing.assert_array_equal(got[k], want[k])


@pytest.mark.parametrize("fids", [[10.0, 12.0, 9.0, 11.5], [10.0, 10.1, 9.95, 10.05]])
def test_uncorrelated_seeds_match_the_formula_by_hand(fids):
    """Replicates uncorrelated across seeds (exactly: orthogonal): mean +/- z sqrt(max(s2, v) / K);
    the second set is spread less than its sampling noise (s2 < v, sigma_seed^2 truncated at 0)."""
    k, sd = len(fids), np.array([0.3, 0.5, 0.4, 0.6])
    boots = np.array(fids)[:, None] + 3 + sd[:, None] * _orthogonal(k, 240)
    s2, v = np.var(fids, ddof=1), np.mean(sd**2)
    half = Z * np.sqrt(max(s2, v) / k)
    c = seed_combined(fids, boots)
    assert c["fid"] == pytest.approx(np.mean(fids), rel=1e-14)
    assert c["fid_lo"] == pytest.approx(np.mean(fids) - half, rel=1e-12)
    assert c["fid_hi"] == pytest.approx(np.mean(fids) + half, rel=1e-12)
    assert c["seed_sd"] == pytest.approx(np.sqrt(s2), rel=1e-14) and c["n_seeds"] == k


def test_shared_sampling_noise_is_not_averaged_away():
    """Every seed's replicates the same noise (the seeds sample from the same noise): the sampling
    variance v stays whole, Var(mean) = s2 / K + v, wider than max(s2, v) / K."""
    fids, k = np.array([10.0, 10.4, 9.8]), 3
    noise = 0.5 * _orthogonal(1, 240)[0]
    c = seed_combined(fids, fids[:, None] + noise)
    half = Z * np.sqrt(fids.var(ddof=1) / k + 0.25)
    assert c["fid_hi"] - c["fid"] == pytest.approx(half, rel=1e-12)
    assert half > Z * np.sqrt(max(fids.var(ddof=1), 0.25) / k) * 1.5


def test_difference_is_the_formula_on_per_seed_differences():
    """K >= 2: the method of moments on d_k = fid_a,k - fid_b,k with replicates boots_a - boots_b."""
    rng = np.random.default_rng(3)
    shared = rng.standard_normal(200)
    fa, fb = np.array([8.0, 8.6, 7.7]), np.array([7.1, 7.5, 7.3])
    ba = fa[:, None] + 0.3 + shared + 0.2 * _orthogonal(3, 200)
    bb = fb[:, None] + 0.3 + shared
    d = seed_combined_difference(fa, fb, ba, bb)
    by_hand = seed_combined(fa - fb, ba - bb)
    assert d["fid_diff"] == pytest.approx(by_hand["fid"], rel=1e-14)
    assert (d["diff_lo"], d["diff_hi"]) == pytest.approx((by_hand["fid_lo"], by_hand["fid_hi"]), rel=1e-13)
    half = Z * np.sqrt(max((fa - fb).var(ddof=1), 0.04) / 3)  # the shared noise cancels in the pair
    assert d["diff_hi"] - d["fid_diff"] == pytest.approx(half, rel=1e-12)
    assert 0 < d["p_value"] < 0.05 and d["se"] == pytest.approx(half / Z, rel=1e-12)


def test_difference_needs_the_same_seeds():
    boots = np.zeros((3, 10)) + np.arange(10)
    with pytest.raises(ValueError, match="replicates"):
        seed_combined_difference([1, 2, 3], [1, 2], boots, boots[:2])


def test_matrix_equals_the_scalar_difference():
    rng = np.random.default_rng(4)
    fids = rng.uniform(3, 9, (5, 4))
    boots = fids[:, :, None] + rng.standard_normal(120) + 0.5 * rng.standard_normal((5, 4, 120))
    for i in range(5):
        m = seed_matrix_difference(fids, boots, i)
        for j in range(5):
            d = seed_combined_difference(fids[i], fids[j], boots[i], boots[j])
            for k in ("fid_diff", "diff_lo", "diff_hi"):
                assert m[k][j] == pytest.approx(d[k], rel=1e-12, abs=1e-12)


def _coverage(sigma2_seed, v, rho, *, n=2000, k=5, b=200, by_hand=False) -> float:
    """Share of ``n`` simulated experiments whose interval covers the true mean 10: seed offsets of
    variance ``sigma2_seed``, sampling errors of variance ``v`` correlated ``rho`` across seeds, the
    bootstrap replicates drawn from the sampling distribution around each estimate."""
    rng = np.random.default_rng(5)
    chol = np.linalg.cholesky(v * ((1 - rho) * np.eye(k) + rho * np.ones((k, k))))
    hits = 0
    for _ in range(n):
        fids = 10 + rng.normal(0, np.sqrt(sigma2_seed), k) + chol @ rng.standard_normal(k)
        boots = fids[:, None] + chol @ rng.standard_normal((k, b))
        if by_hand:  # the formula that assumes uncorrelated seeds
            half = Z * np.sqrt(max(fids.var(ddof=1), boots.var(1, ddof=1).mean()) / k)
            hits += abs(fids.mean() - 10) <= half
        else:
            c = seed_combined(fids, boots)
            hits += c["fid_lo"] <= 10 <= c["fid_hi"]
    return hits / n


def test_coverage_with_uncorrelated_sampling_noise():
    assert 0.92 <= _coverage(0.25, 1.0, 0.0) <= 0.975


def test_coverage_with_shared_sampling_noise():
    """Seeds sampling from the same noise (rho 0.9): still about 95%; max(s2, v) / K would cover
    only about 60%."""
    assert 0.92 <= _coverage(0.25, 1.0, 0.9) <= 0.975
    assert _coverage(0.25, 1.0, 0.9, by_hand=True) < 0.75


def test_optimistic_when_the_seed_spread_dominates():
    """The documented optimism: with the seed variance alone (4 degrees of freedom) the normal
    interval covers about P(|t_4| < 1.96) = 0.878."""
    assert 0.85 <= _coverage(10.0, 0.01, 0.0) <= 0.91


# --- per-seed rows -> one row per setting ------------------------------------------------------


def _row(schedule, solver, steps, seed, fid, sample_schedule=None, **extra):
    return Row(
        schedule=schedule, sample_schedule=sample_schedule or schedule, grid="logsnr", seed=(seed,),
        solver=solver, steps=steps, nfe=float(steps + 1), fid=fid, fid_lo=fid - 1, fid_hi=fid + 1,
        kid_mean=fid / 100, n_samples=1000, feature_extractor="classifier", **extra,
    )  # fmt: skip


def _per_seed(fid_by_seed: dict[tuple, list[float]], seeds=(0, 1, 2), b=100, rng_seed=0):
    """Per-seed rows and replicates: the same sampling noise for every row and seed plus a small
    own term."""
    rng = np.random.default_rng(rng_seed)
    shared = rng.standard_normal(b)
    rows, reps = [], {}
    for (schedule, solver, steps), fids in fid_by_seed.items():
        for seed, fid in zip(seeds, fids):
            r = _row(schedule, solver, steps, seed, fid)
            rows.append(r)
            reps[r.seed_key] = fid + 0.2 + 0.5 * shared + 0.1 * rng.standard_normal(b)
    return rows, reps


def test_aggregate_groups_and_averages():
    rows, reps = _per_seed({("vp_cosine", "ddim", 10): [5.0, 6.0, 5.5], ("ve", "ddim", 10): [7.0, 7.5, 8.0]})
    for k, (err, nll) in enumerate([(0.1, 3.0), (0.3, 3.2), (0.2, 3.4)]):
        rows[k] = rows[k].replace(invariance_error=err, nll_bpd=nll)
    rows[3] = rows[3].replace(nfe=13.0)  # an adaptive solver's count may differ per seed
    agg, agg_reps = aggregate_seeds(rows[::-1], reps)  # any input order
    assert [r.key for r in agg] == ["ve/ddim/10/logsnr", "vp_cosine/ddim/10/logsnr"]
    ve, cos = agg
    assert cos.seed == (0, 1, 2) and cos.n_seeds == 3 and cos.fid_by_seed == (5.0, 6.0, 5.5)
    boots = np.stack([reps[r.seed_key] for r in rows[:3]])
    np.testing.assert_array_equal(agg_reps["vp_cosine/ddim/10/logsnr"], boots)
    c = seed_combined([5.0, 6.0, 5.5], boots)
    assert (cos.fid, cos.fid_lo, cos.fid_hi, cos.fid_seed_sd) == (
        c["fid"],
        c["fid_lo"],
        c["fid_hi"],
        c["seed_sd"],
    )
    assert cos.invariance_error == 0.3 and cos.nll_bpd == pytest.approx(3.2)
    assert ve.nfe == pytest.approx(35 / 3) and ve.invariance_error is None and ve.nll_bpd is None
    assert cos.steps == 10 and isinstance(cos.steps, int) and cos.kid_mean == pytest.approx(0.055)
    assert cos.n_samples == 1000 and cos.feature_extractor == "classifier"


def test_aggregate_errors():
    rows, reps = _per_seed({("vp_cosine", "ddim", 10): [5.0, 6.0, 5.5], ("ve", "ddim", 10): [7.0, 7.5, 8.0]})
    with pytest.raises(ValueError, match=r"ve/ddim/10/logsnr: trained on seeds \[0, 1\]"):
        aggregate_seeds(rows[:5], reps)
    with pytest.raises(ValueError, match="seed repeated"):
        aggregate_seeds([*rows, rows[0]], reps)
    with pytest.raises(ValueError, match="no bootstrap replicates for vp_cosine/ddim/10/logsnr/seed=1"):
        aggregate_seeds(
            rows, {k: v for k, v in reps.items() if not k.endswith("cosine/ddim/10/logsnr/seed=1")}
        )
    rows[4] = rows[4].replace(n_samples=500)
    with pytest.raises(ValueError, match="ve/ddim/10/logsnr: the seeds' n_samples differ"):
        aggregate_seeds(rows, reps)


# --- pairing over seeds ------------------------------------------------------------------------

SETTINGS = [("vp_linear", "ddim", 5), ("vp_cosine", "ddim", 5), ("ve", "ddim", 5), ("vp_linear", "ddim", 10)]


def test_one_seed_pairing_is_the_plain_paired_difference():
    """One seed: ``diff`` is ``paired_difference`` of the rows' FIDs and replicates, ``against`` is
    ``replicate_matrix_difference``, whether the replicates are held as ``[1, B]`` or ``[B]``."""
    rng = np.random.default_rng(6)
    rows, reps = _per_seed({s: [float(rng.uniform(4, 9))] for s in SETTINGS}, seeds=(0,))
    agg, agg_reps = aggregate_seeds(rows, reps)
    flat = {k: v[0] for k, v in agg_reps.items()}
    fid, boots = np.array([r.fid for r in agg]), np.stack([flat[r.key] for r in agg])
    kept = []
    for pairing in (Pairing(agg, agg_reps), Pairing(agg, flat)):
        assert pairing.n_seeds == 1
        for i, a in enumerate(agg):
            want = replicate_matrix_difference(fid, boots, i)
            for k in ("fid_diff", "diff_lo", "diff_hi"):
                np.testing.assert_array_equal(pairing.against(a)[k], want[k])
            for b in agg:
                d = pairing.diff(a, b)
                plain = paired_difference(a.fid, b.fid, flat[a.key], flat[b.key])
                assert (d.a, d.b) == (a, b) and {k: getattr(d, k) for k in plain} == plain
        kept.append((plausible_frontier(agg, pairing), budget_summary(agg, [6, 11], pairing)))
    assert kept[0] == kept[1]


def test_seed_pairing_is_seed_combined():
    rng = np.random.default_rng(7)
    rows, reps = _per_seed({s: list(rng.uniform(4, 9, 3)) for s in SETTINGS})
    agg, agg_reps = aggregate_seeds(rows, reps)
    pairing = Pairing(agg, agg_reps)
    a, b = agg[0], agg[2]
    want = seed_combined_difference(a.fid_by_seed, b.fid_by_seed, agg_reps[a.key], agg_reps[b.key])
    assert {k: getattr(pairing.diff(a, b), k) for k in want} == want
    assert pairing.against(a)["diff_lo"][pairing.index[b.key]] == pytest.approx(want["diff_lo"])
    assert pairing.n_seeds == 3
    with pytest.raises(ValueError, match="fid_by_seed"):
        Pairing([r.replace(fid_by_seed=None) for r in agg], agg_reps)


# --- which schedule differences survive --------------------------------------------------------


def _survival_table():
    """vp_cosine is 2 FID below vp_linear in every seed; ve differs from vp_linear by training noise
    alone (seed offsets +/-1 of mean 0); sde, adaptive and off-diagonal rows are not compared."""
    fids = {
        ("vp_linear", "ddim", 10): [8.0, 8.0, 8.0],
        ("vp_cosine", "ddim", 10): [6.0, 6.1, 5.9],
        ("ve", "ddim", 10): [9.0, 7.0, 8.0],
        ("vp_linear", "ddpm", 10): [8.0, 8.5, 8.2],
        ("ve", "ddpm", 10): [3.0, 3.1, 3.0],
        ("vp_linear", "rk45", 0): [8.0, 8.5, 8.2],
        ("ve", "rk45", 0): [3.0, 3.1, 3.0],
    }
    rows, reps = _per_seed(fids)
    off = [_row("vp_linear", "ddim", 10, seed, 1.0, sample_schedule="ve") for seed in (0, 1, 2)]
    reps.update({r.seed_key: 1.0 + 0.1 * np.arange(100) / 100 for r in off})
    return aggregate_seeds(rows + off, reps)


def test_surviving_differences():
    agg, reps = _survival_table()
    out = surviving_differences(agg, Pairing(agg, reps), SOLVERS)
    pairs = {(d.a.schedule, d.b.schedule): d for d in out}
    assert sorted(pairs) == [("vp_cosine", "ve"), ("vp_linear", "ve"), ("vp_linear", "vp_cosine")]
    assert {(d.a.solver, d.a.steps, d.a.grid) for d in out} == {("ddim", 10, "logsnr")}
    assert all(d.a.on_diagonal and d.b.on_diagonal and d.p_holm >= d.p_value for d in out)
    assert pairs[("vp_linear", "vp_cosine")].resolved and pairs[("vp_linear", "vp_cosine")].fid_diff > 0
    assert not pairs[("vp_linear", "ve")].resolved  # training noise alone (seed 0 alone: 8 vs 9)
    lines = survival_sentences(out, 3)
    assert "3 training seeds" in lines[0] and "2 degrees of freedom" in lines[0]
    assert any(s.startswith("vp_linear - vp_cosine: survives in 1 of 1") and "lower FID for vp_cosine" in s
               for s in lines)  # fmt: skip
    assert "vp_linear - ve: within the noise in all 1 settings." in lines
    assert lines[-1].startswith("2 of 3 schedule differences survive")


def test_one_seed_survival_is_sampling_noise_only():
    """With seed 0 alone vp_linear - ve (8 vs 9) survives: the shared sampling noise cancels and the
    training noise is not counted; the sentences say so."""
    rows, reps = _per_seed({("vp_linear", "ddim", 10): [8.0], ("ve", "ddim", 10): [9.0]}, seeds=(0,))
    agg, agg_reps = aggregate_seeds(rows, reps)
    out = surviving_differences(agg, Pairing(agg, agg_reps), SOLVERS)
    assert len(out) == 1 and out[0].resolved
    lines = survival_sentences(out, 1)
    assert "training variance is not included" in lines[0] and "sampling noise" in lines[0]
    assert survival_sentences([], 1)[-1].startswith("No two training schedules")
