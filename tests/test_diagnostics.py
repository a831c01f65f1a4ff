"""What a run can conclude (difflab.metrics.diagnostics), on synthetic rows and features with known
answers: a row built to beat its converged solution by a known margin, each row's converged partner,
samples that copy training images, a loss curve still falling, and the real-data FID floor against
FID's closed-form 1/n bias on Gaussians."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from difflab.metrics.diagnostics import (
    converged_partners,
    ema,
    fid_bias_coefficient,
    fid_infinity,
    floor_at_n,
    loss_still_falling,
    memorization,
    network_entry,
    regime_sentences,
    vs_converged,
    vs_converged_columns,
)
from difflab.metrics.fid import bias_shifted_interval, bootstrap_fid, fid_of_features
from difflab.results import Row

D = 8
EXACT = {"mu": np.zeros(D), "sigma": np.eye(D)}
C_IDENTITY = D + D * (D + 1) / 4  # FID's 1/n coefficient for N(0, I_d) against exact statistics


def _gauss(n: int, seed: int, d: int = D, scale=None) -> torch.Tensor:
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x if scale is None else x * torch.as_tensor(scale)


# -- error cancellation ------------------------------------------------------------------------------


def _replicates(fid: float, noise: np.ndarray, own: np.ndarray, bias: float = 0.05) -> np.ndarray:
    """A row's bootstrap replicates: its FID, the shared resampling noise of the paired draws, its own
    noise and the bootstrap's upward bias."""
    return fid + bias + noise + own


def test_row_beating_its_converged_solution_by_a_known_margin():
    rng = np.random.default_rng(0)
    shared, b = rng.normal(0, 0.3, 200), 200
    fid_conv, margin = 2.0, -0.4
    boots_conv = _replicates(fid_conv, shared, rng.normal(0, 0.02, b))
    boots_row = _replicates(fid_conv + margin, shared, rng.normal(0, 0.02, b))
    out = vs_converged(fid_conv + margin, fid_conv, boots_row, boots_conv)
    assert out["vs_converged"] == pytest.approx(margin, abs=1e-12)
    assert out["vs_converged_lo"] < margin < out["vs_converged_hi"] < 0
    assert out["vs_converged_hi"] - out["vs_converged_lo"] < 0.15  # the shared noise cancels
    assert out["beats_converged"] is True


def test_row_within_or_above_its_converged_solution_does_not_beat_it():
    rng = np.random.default_rng(1)
    shared, b = rng.normal(0, 0.3, 200), 200
    boots_conv = _replicates(2.0, shared, rng.normal(0, 0.1, b))
    near = vs_converged(1.98, 2.0, _replicates(1.98, shared, rng.normal(0, 0.1, b)), boots_conv)
    assert near["vs_converged_lo"] < 0 < near["vs_converged_hi"] and near["beats_converged"] is False
    worse = vs_converged(2.3, 2.0, _replicates(2.3, shared, rng.normal(0, 0.02, b)), boots_conv)
    assert worse["vs_converged_lo"] > 0 and worse["beats_converged"] is False


def test_training_seeds_spread_can_undo_a_beat():
    """Three seeds, the same mean margin -0.4: consistent across seeds it beats; spread between seeds
    (one seed's row is worse than its converged solution) it does not."""
    rng = np.random.default_rng(2)
    k, b = 3, 200
    shared = rng.normal(0, 0.3, (k, b))
    fid_conv = np.array([2.0, 2.2, 1.9])
    boots_conv = fid_conv[:, None] + shared + rng.normal(0, 0.02, (k, b))
    for margins, beats in (([-0.38, -0.42, -0.40], True), ([0.5, -1.4, -0.3], False)):
        fid_row = fid_conv + np.array(margins)
        boots_row = fid_row[:, None] + shared + rng.normal(0, 0.02, (k, b))
        out = vs_converged(fid_row, fid_conv, boots_row, boots_conv)
        assert out["vs_converged"] == pytest.approx(-0.4, abs=1e-12)
        assert out["beats_converged"] is beats


def _row(schedule, solver, steps, grid="logsnr", seed=0, sample_schedule=None, w=None, fid=1.0):
    return Row(schedule, solver, steps, sample_schedule or schedule, grid, w, (seed,), fid=fid)


FAMILIES = {"rk45": "ode", "euler": "ode", "ddim": "ode", "ddpm": "sde", "euler_maruyama": "sde"}


def test_converged_partner_is_the_same_networks_solve_of_the_same_kind():
    rk_vp = _row("vp_linear", "rk45", 0)
    rk_vp_edm = _row("vp_linear", "rk45", 0, grid="edm")
    rk_vp_seed1 = _row("vp_linear", "rk45", 0, seed=1)
    rk_ve = _row("ve", "rk45", 0)
    em_vp = _row("vp_linear", "euler_maruyama", 1000)
    em_vp_coarse = _row("vp_linear", "euler_maruyama", 10)
    rk_guided = _row("vp_linear", "rk45", 0, w=2.0)
    rows = [
        rk_vp,
        rk_vp_edm,
        rk_vp_seed1,
        rk_ve,
        em_vp,
        em_vp_coarse,
        rk_guided,
        euler := _row("vp_linear", "euler", 10),
        euler_edm := _row("vp_linear", "euler", 10, grid="edm"),
        euler_uniform := _row("vp_linear", "euler", 10, grid="uniform"),  # no rk45 on it: grid-free
        euler_seed1 := _row("vp_linear", "euler", 10, seed=1),
        ddim_ve := _row("ve", "ddim", 10),
        ddpm := _row("vp_linear", "ddpm", 10),
        ddpm_ve := _row("ve", "ddpm", 10),  # ve has no fine-step SDE row
        cross := _row("vp_linear", "ddim", 10, sample_schedule="ve"),  # no converged cross row
        guided := _row("vp_linear", "ddim", 10, w=2.0),
    ]
    got = converged_partners(rows, FAMILIES, sde_solver="euler_maruyama", sde_steps=1000)
    want = {
        id(euler): rk_vp,
        id(euler_edm): rk_vp_edm,
        id(euler_uniform): rk_vp,
        id(euler_seed1): rk_vp_seed1,
        id(ddim_ve): rk_ve,
        id(ddpm): em_vp,
        id(em_vp_coarse): em_vp,
        id(ddpm_ve): None,
        id(cross): None,
        id(guided): rk_guided,
        id(rk_vp_edm): rk_vp_edm,
    }
    for r, p in zip(rows, got):
        if id(r) in want:
            assert p is want[id(r)], r.key
    no_sde = converged_partners(rows, FAMILIES)  # no fine-step SDE configured
    assert no_sde[rows.index(ddpm)] is None and no_sde[rows.index(euler)] is rk_vp
    by_registry = converged_partners(rows, None, sde_solver="euler_maruyama", sde_steps=1000)
    assert [id(p) for p in by_registry] == [id(p) for p in got]
    with pytest.raises(ValueError, match="ode_solver='ddpm'"):
        converged_partners(rows, FAMILIES, ode_solver="ddpm")
    with pytest.raises(ValueError, match="'heun' is not in families"):
        converged_partners([_row("vp_linear", "heun", 10)], FAMILIES)


def test_vs_converged_columns_from_keyed_replicates():
    rng = np.random.default_rng(3)
    shared = rng.normal(0, 0.3, 100)
    conv = _row("vp_linear", "rk45", 0, fid=2.0)
    good = _row("vp_linear", "euler", 20, fid=1.5)
    orphan = _row("ve", "euler", 20, fid=3.0)
    reps = {r.key: r.fid + shared + rng.normal(0, 0.01, 100) for r in (conv, good, orphan)}
    rows = [conv, good, orphan]
    cols = vs_converged_columns(rows, reps, converged_partners(rows, FAMILIES))
    assert cols[0]["vs_converged"] == 0 and cols[0]["beats_converged"] is False
    assert cols[1]["vs_converged"] == pytest.approx(-0.5) and cols[1]["beats_converged"] is True
    assert cols[2] == dict.fromkeys(cols[2])  # no partner: every column None
    with pytest.raises(ValueError, match="no bootstrap replicates"):
        vs_converged_columns(rows, {}, converged_partners(rows, FAMILIES))


# -- memorization ------------------------------------------------------------------------------------


def test_samples_copying_training_images():
    train, held = _gauss(400, 0, 16), _gauss(400, 1, 16)
    copies = train[torch.randint(0, 400, (300,), generator=torch.Generator().manual_seed(2))]
    out = memorization(copies + 1e-3 * _gauss(300, 3, 16), train, held)
    assert out["memorization_ratio"] < 0.01
    assert out["copy_fraction"] == 1.0 and out["copy_p_value"] < 1e-50


def test_fresh_samples_are_as_far_as_held_out_images():
    train, held = _gauss(500, 0, 16), _gauss(500, 1, 16)
    out = memorization(_gauss(600, 2, 16).reshape(600, 1, 4, 4), train, held)  # images are flattened
    assert 0.9 < out["memorization_ratio"] < 1.1
    assert out["copy_fraction_null"] == 0.5 and abs(out["copy_fraction"] - 0.5) < 0.07
    assert out["copy_p_value"] > 0.01
    uneven = memorization(_gauss(600, 2, 16), _gauss(900, 4, 16), held[:300])  # chance is N / (N + m)
    assert uneven["copy_fraction_null"] == 0.75 and abs(uneven["copy_fraction"] - 0.75) < 0.06


# -- training convergence ----------------------------------------------------------------------------


def test_still_falling_loss_is_flagged_with_its_drop():
    steps = np.arange(100, 5001, 100)
    clean = 1.0 + 0.5 * np.exp(-steps / 3000)
    noisy = clean + np.random.default_rng(0).normal(0, 0.005, len(steps))
    out = loss_still_falling(steps, noisy)
    true_drop = (clean[steps >= 4000][0] - clean[-1]) / clean[steps >= 4000][0]  # 3.6%
    assert out["loss_still_falling"] is True
    assert out["relative_drop"] == pytest.approx(true_drop, rel=0.2)
    assert out["n_tail"] == 11 and out["suggested_max_steps"] == 10000


def test_flat_or_levelled_loss_is_not_flagged():
    steps = np.arange(100, 5001, 100)
    levelled = 1.0 + 0.5 * np.exp(-steps / 300)  # fell early, flat over the last fifth
    assert loss_still_falling(steps, levelled)["loss_still_falling"] is False
    flags = [
        loss_still_falling(steps, 1.0 + np.random.default_rng(s).normal(0, 0.02, len(steps)))[
            "loss_still_falling"
        ]
        for s in range(40)
    ]
    assert sum(flags) <= 4  # the one-sided 95% slope test: ~5% by chance, 1% drop or more
    with pytest.raises(ValueError, match="at least 3"):
        loss_still_falling([500, 1000], [1.0, 0.9])


def test_ema_is_debiased_and_tracks_a_constant():
    assert np.allclose(ema(np.full(20, 3.0), 0.9), 3.0)
    v = np.array([1.0, 0.0])
    assert ema(v, 0.5)[1] == pytest.approx((0.5 * 0.5 * 1.0) / (1 - 0.25))


# -- the real-data floor -----------------------------------------------------------------------------


def test_bias_coefficient_matches_the_gaussian_closed_form_and_fid():
    lam = np.linspace(0.1, 3, D) ** 2
    c_true = 1.25 * lam.sum() + (np.outer(lam, lam) / (2 * (lam[:, None] + lam[None, :]))).sum()
    assert fid_bias_coefficient(_gauss(20000, 0, scale=np.sqrt(lam))) == pytest.approx(c_true, rel=0.03)
    assert fid_bias_coefficient(_gauss(20000, 1)) == pytest.approx(C_IDENTITY, rel=0.03)


def test_floor_falls_as_one_over_n():
    held = _gauss(2000, 0)
    small, large = (floor_at_n(EXACT, held, n, repeats=6, bootstrap=50) for n in (250, 1000))
    assert small["method"] == large["method"] == "subsample"
    assert small["floor_fid"] * 250 == pytest.approx(C_IDENTITY, rel=0.25)
    assert large["floor_fid"] * 1000 == pytest.approx(C_IDENTITY, rel=0.25)
    assert 3 < small["floor_fid"] / large["floor_fid"] < 5
    assert small["floor_lo"] < small["floor_fid"] < small["floor_hi"]


def test_floor_at_the_held_out_size_is_the_whole_splits_fid_and_interval():
    held = _gauss(300, 1)
    mu, sigma = torch.zeros(D, dtype=torch.float64), torch.eye(D, dtype=torch.float64)
    out = floor_at_n(EXACT, held, 300, bootstrap=50, seed=7)
    fid = fid_of_features(held, mu, sigma)
    lo, hi = bias_shifted_interval(bootstrap_fid(held, mu, sigma, 50, seed=7).numpy(), fid)
    assert out["repeats"] == 1 and out["floor_fid"] == pytest.approx(fid, abs=1e-12)
    assert (out["floor_lo"], out["floor_hi"]) == pytest.approx((max(0.0, lo), hi), abs=1e-12)


def test_floor_beyond_the_held_out_split_from_reference_splits():
    ref, held = _gauss(4000, 2), _gauss(300, 3)
    out = floor_at_n(ref, held, 1000, repeats=20, bootstrap=20)
    assert out["method"] == "reference_split" and out["n_reference"] == 4000
    assert out["bias_correction"] == pytest.approx(C_IDENTITY * (1 / 3000 - 1 / 4000), rel=0.05)
    assert out["floor_fid"] == pytest.approx(C_IDENTITY * (1 / 1000 + 1 / 4000), rel=0.2)
    with pytest.raises(ValueError, match="reference features"):
        floor_at_n(EXACT, held, 1000)


def test_fid_infinity_of_exact_gaussians_is_near_zero():
    out = fid_infinity(_gauss(4000, 4), EXACT, [250, 300, 400, 500, 700, 1000, 2000], repeats=4, seed=4)
    assert abs(out["fid_infinity"]) < 0.015
    assert out["fid_infinity_lo"] < 0 < out["fid_infinity_hi"]
    assert out["slope"] == pytest.approx(C_IDENTITY, rel=0.3)
    with pytest.warns(UserWarning, match="not above the feature dimension"):
        fid_infinity(_gauss(100, 5), EXACT, [4, 8, 16], seed=0)


# -- results/diagnostics.json and the sentences ------------------------------------------------------


def test_regime_sentences_state_cancellation_copying_and_training():
    floor = {"floor_fid": 0.5, "floor_lo": 0.4, "floor_hi": 0.6, "method": "subsample", "n": 400}
    conv = replace(_row("vp_linear", "rk45", 0), fid=2.0, fid_lo=1.8, fid_hi=2.2)
    copying = {
        "memorization_ratio": 0.2,
        "copy_fraction": 0.95,
        "copy_fraction_null": 0.5,
        "copy_p_value": 1e-9,
    }
    falling = {"loss_still_falling": True, "relative_drop": 0.04, "suggested_max_steps": 2000}
    entry = network_entry(converged_ode=conv, floor=floor, copying=copying, training=falling)
    assert entry["converged_ode_row"] == "vp_linear/rk45/adaptive/logsnr" and entry["ode_floor_ratio"] == 4.0
    assert entry["converged_sde_fid"] is None and "converged_sde_fid" in entry
    beat = {
        "budget": 11,
        "row": "vp_linear/euler/10/logsnr",
        "vs_converged": -0.3,
        "vs_converged_lo": -0.5,
        "vs_converged_hi": -0.1,
        "beats_converged": True,
    }
    text = " ".join(regime_sentences({"networks": {"vp_linear": entry}, "budgets": [beat]}))
    assert "4x the floor" in text and "Error cancellation" in text and "vp_linear/euler/10/logsnr" in text
    assert "vp_linear copies" in text and "trainer.max_steps=2000" in text
    clean = network_entry(
        converged_ode=conv,
        floor=floor,
        copying={**copying, "memorization_ratio": 1.0, "copy_p_value": 0.4},
        training={**falling, "loss_still_falling": False},
    )
    calm = " ".join(
        regime_sentences({"networks": {"vp_linear": clean}, "budgets": [{**beat, "beats_converged": False}]})
    )
    assert "At none of 1 NFE budgets" in calm and "No network copies" in calm and "levelled off" in calm


# -- coverage: the denoiser where sampling starts ---------------------------------------------------


def _gaussian_denoiser(schedule, s2: float, broken_below: float | None = None):
    """The exact denoiser of x0 ~ N(0, s2 I): ``alpha s2 / (alpha^2 s2 + sigma^2) x``; with
    ``broken_below`` it returns ``x / alpha`` (the noise scaled up) at log-SNRs below that."""

    def D(x, t):
        a, sg = schedule.alpha(t).view(-1, 1), schedule.sigma(t).view(-1, 1)
        exact = a * s2 / (a**2 * s2 + sg**2) * x
        if broken_below is None:
            return exact
        return torch.where(schedule.log_snr(t).view(-1, 1) < broken_below, x / a, exact)

    return D


def test_denoiser_coverage_of_the_exact_denoiser_is_the_closed_form_mmse():
    """For x0 ~ N(0, s2 I) the exact denoiser's error over the data mean's is 1 / (1 + s2 e^lam) at
    every level, so it is covered from where sampling starts."""
    from difflab.metrics.diagnostics import COVERAGE_STEP, denoiser_coverage
    from difflab.schedules import get_schedule

    schedule, s2 = get_schedule("vp_linear"), 0.25
    x0 = _gauss(4000, 3, d=16) * s2**0.5
    out = denoiser_coverage(_gaussian_denoiser(schedule, s2), schedule, x0.float(), seed=1)
    lo = schedule.log_snr_range()[0]
    assert out["start_log_snr"] == pytest.approx(lo) and out["covered_from_log_snr"] == pytest.approx(lo)
    assert len(out["profile"]) == math.ceil(-lo / COVERAGE_STEP) + 1
    for lam, ratio in out["profile"].items():
        assert ratio == pytest.approx(1 / (1 + s2 * math.exp(lam)), rel=0.03)


def test_denoiser_coverage_finds_where_an_untrained_denoiser_stops_erring():
    """A denoiser that returns the noise scaled up below log-SNR -6 errs far above the data mean there
    (ratio ~ 1 / (s2 snr)); the profile is within the limit only from the first level at or above -6."""
    from difflab.metrics.diagnostics import COVERAGE_LIMIT, denoiser_coverage, network_entry, regime_sentences
    from difflab.schedules import get_schedule

    schedule, s2 = get_schedule("vp_linear"), 0.25
    x0 = (_gauss(2000, 4, d=16) * s2**0.5).float()
    out = denoiser_coverage(_gaussian_denoiser(schedule, s2, broken_below=-6.0), schedule, x0, seed=1)
    assert out["start_error_ratio"] > 1e3 * COVERAGE_LIMIT
    first_good = min(lam for lam in out["profile"] if lam >= -6.0)
    assert out["covered_from_log_snr"] == pytest.approx(first_good, abs=1e-3)
    entry = network_entry(coverage=out)
    text = " ".join(regime_sentences({"networks": {"vp_linear/seed_0": entry}}))
    assert "vp_linear/seed_0 is untrained where sampling starts: at log-SNR -10.05" in text
    assert f"only from log-SNR {first_good:.2f}" in text
    t_max = float(schedule.t_from_log_snr(torch.tensor(first_good).double()))
    assert out["covered_from_t"] == pytest.approx(t_max, abs=1e-4)  # the profile keys are rounded
    assert f"schedule.vp_linear.params.t_max={out['covered_from_t']:.4g}" in text
    exact = denoiser_coverage(_gaussian_denoiser(schedule, s2), schedule, x0, seed=1)
    assert "untrained" not in " ".join(regime_sentences({"networks": {"n": network_entry(coverage=exact)}}))
