"""Losses: the stratified time sampler, each schedule's customary target, and the expected loss of the
exact denoiser of Gaussian data against its closed form (irreducible error x target scale^2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from difflab import losses
from difflab.losses import (
    DEFAULT_PREDICTION,
    P_MEAN,
    P_STD,
    TIME_SAMPLINGS,
    WEIGHTINGS,
    DiffusionLoss,
    default_prediction,
    implied_weight,
    log_snr_density,
    sample_times,
    target_slope2,
)
from difflab.parametrization import PREDICTIONS, SIGMA_DATA, edm_coefficients, from_x0
from difflab.schedules import SCHEDULES, get_schedule

F64 = torch.float64


def test_stratified_times_have_one_point_per_stratum():
    s = get_schedule("vp_cosine")
    for seed in range(5):
        t = sample_times(s, 64, generator=torch.Generator().manual_seed(seed))
        u = ((t - s.t_min) / (s.t_max - s.t_min)).sort().values
        strata = torch.floor(u * 64).long()
        assert torch.equal(strata, torch.arange(64)), strata  # exactly one time in each 1/64-th
        assert s.t_min <= t.min() and t.max() <= s.t_max


def test_logsnr_sampling_is_uniform_in_log_snr():
    s = get_schedule("vp_linear")
    t = sample_times(s, 1000, kind="logsnr", generator=torch.Generator().manual_seed(0))
    lam = s.log_snr(t.double()).sort(descending=True).values
    lo, hi = s.log_snr(torch.tensor([s.t_max, s.t_min], dtype=torch.float64))
    expected = hi + (lo - hi) * (torch.arange(1000, dtype=torch.float64) + 0.5) / 1000
    assert (lam - expected).abs().max() < (hi - lo) / 1000 + 1e-3


def test_iid_uniform_times_mean():
    s = get_schedule("flow")
    t = sample_times(s, 20000, kind="uniform", generator=torch.Generator().manual_seed(0))
    assert t.mean().item() == pytest.approx(0.5, abs=0.01)


def test_customary_targets_and_registries():
    assert DEFAULT_PREDICTION == {
        "vp_linear": "eps",
        "vp_cosine": "eps",
        "ve": "edm",
        "flow": "velocity",
        "edm": "edm",
        "vp_discrete": "eps",
    }
    assert default_prediction("flow") == "velocity" and default_prediction("edm") == "edm"
    with pytest.raises(ValueError, match="unknown schedule 'vee'"):
        default_prediction("vee")
    assert TIME_SAMPLINGS == tuple(losses._TIME_DENSITIES) == ("stratified", "uniform", "logsnr", "lognormal")
    assert WEIGHTINGS == tuple(losses._WEIGHTINGS) == ("unit", "min_snr", "edm")
    assert losses.TIME_SAMPLING == TIME_SAMPLINGS and losses.WEIGHTING == WEIGHTINGS
    with pytest.raises(
        ValueError, match="unknown time sampling 'sobol'; valid: stratified, uniform, logsnr, lognormal"
    ):
        DiffusionLoss(time_sampling="sobol")
    with pytest.raises(ValueError, match="unknown loss weighting 'p2'; valid: unit, min_snr, edm"):
        DiffusionLoss(weighting="p2")


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"min_snr_gamma": 0.0}, "min_snr_gamma=0.0"),
        ({"min_snr_gamma": float("nan")}, "min_snr_gamma"),
        ({"P_std": -1.0}, "P_std=-1.0"),
        ({"P_std": True}, "P_std"),
        ({"P_mean": float("inf")}, "P_mean"),
        ({"P_mean": "low"}, "P_mean"),
    ],
)
def test_bad_loss_settings_raise_naming_them(kwargs, named):
    with pytest.raises(ValueError, match=named):
        DiffusionLoss(**kwargs)


def test_sample_times_rejects_parameters_of_other_densities():
    s = get_schedule("edm")
    with pytest.raises(ValueError, match="'stratified' takes no parameter 'P_mean'; it takes: none"):
        sample_times(s, 4, P_mean=0.0)
    with pytest.raises(ValueError, match="'lognormal' takes no parameter 'gamma'; it takes: P_mean, P_std"):
        sample_times(s, 4, kind="lognormal", gamma=1.0)


def test_lognormal_noise_levels_have_edms_mean_and_std():
    """ln(sigma/alpha) of the sampled times is N(P_mean, P_std^2) (Karras et al. 2022): under edm
    (sigma in [0.002, 80]) all but ~1e-5 of the mass is inside the interval, so no clamping shows."""
    n = 200_000
    for P_mean, P_std in ((P_MEAN, P_STD), (0.5, 0.3)):
        loss = DiffusionLoss("lognormal", P_mean=P_mean, P_std=P_std)
        s = get_schedule("edm")
        t = loss.sample_times(s, n, generator=torch.Generator().manual_seed(0))
        assert t.dtype == torch.float32 and t.shape == (n,)
        log_s = torch.log(s.sigma_over_alpha(t.double()))
        # 5 standard errors: the mean's is P_std / sqrt(n), the std's P_std / sqrt(2 n)
        assert abs(log_s.mean().item() - P_mean) < 5 * P_std / math.sqrt(n)
        assert abs(log_s.std().item() - P_std) < 5 * P_std / math.sqrt(2 * n)
        z = (log_s - P_mean) / P_std  # and the shape: the normal's quartiles
        for q, expected in ((0.25, -0.6745), (0.5, 0.0), (0.75, 0.6745)):
            assert abs(z.quantile(q).item() - expected) < 0.02


@pytest.mark.parametrize("name", SCHEDULES)
def test_lognormal_works_for_every_schedule_and_clamps_the_tails_to_its_ends(name):
    """Mapped through t_from_log_snr: inside the interval ln(sigma/alpha) = P_mean + P_std z exactly; the
    normal's tails beyond the schedule's noise levels land on t_min and t_max in the right proportions."""
    s, n = get_schedule(name), 100_000
    t32 = sample_times(s, n, kind="lognormal", generator=torch.Generator().manual_seed(1))
    ends32 = torch.tensor([s.t_min, s.t_max], dtype=torch.float32)  # the float32 ends
    assert ends32[0] <= t32.min() and t32.max() <= ends32[1]
    t = t32.double()
    ends = s.sigma_over_alpha(torch.tensor([s.t_min, s.t_max], dtype=F64)).log()
    normal = torch.distributions.Normal(P_MEAN, P_STD)
    p_low, p_high = normal.cdf(ends[0]).item(), 1 - normal.cdf(ends[1]).item()
    at_low = (t <= s.t_min * (1 + 1e-6)).double().mean().item()
    at_high = (t >= s.t_max * (1 - 1e-6)).double().mean().item()
    for observed, p in ((at_low, p_low), (at_high, p_high)):
        assert abs(observed - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-4, (observed, p)
    inside = torch.log(s.sigma_over_alpha(t[(t > s.t_min * 1.001) & (t < s.t_max * 0.999)]))
    # the truncated normal's mean (inside the ends) matches the sample's
    a, b = ((ends - P_MEAN) / P_STD).tolist()
    phi = lambda u: math.exp(-u * u / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    Phi = lambda u: 0.5 * (1 + math.erf(u / math.sqrt(2)))  # noqa: E731
    truncated_mean = P_MEAN + P_STD * (phi(a) - phi(b)) / (Phi(b) - Phi(a))
    assert abs(inside.mean().item() - truncated_mean) < 5 * P_STD / math.sqrt(inside.numel()) + 2e-3


class GaussianOracle:
    """Exact denoiser of x0 ~ N(0, s^2 I): ``E[x0 | x_t] = alpha s^2 / (alpha^2 s^2 + sigma^2) x_t``,
    presented as a network output of type ``prediction`` (the interface DiffusionLoss uses)."""

    def __init__(self, schedule, prediction, s):
        self.schedule, self.prediction, self.sigma_data, self.s = schedule, prediction, SIGMA_DATA, s

    def x0_hat(self, x, t):
        a, sig = self.schedule.alpha(t)[:, None], self.schedule.sigma(t)[:, None]
        return a * self.s**2 / (a**2 * self.s**2 + sig**2) * x

    def raw(self, x, t, cond=None):
        return from_x0(self.prediction, self.x0_hat(x, t), x, t, self.schedule, self.sigma_data)


def expected_loss(schedule, prediction, s, n=20001):
    """``mean over uniform t of k(t)^2 * Var[x0 | x_t]`` where the target is affine in x0 with slope k."""
    t = torch.linspace(schedule.t_min, schedule.t_max, n, dtype=torch.float64)
    a, sig = schedule.alpha(t), schedule.sigma(t)
    post_var = s**2 * sig**2 / (a**2 * s**2 + sig**2)
    one, zero = torch.ones(n, 1, dtype=torch.float64), torch.zeros(n, 1, dtype=torch.float64)
    k = from_x0(prediction, one, zero, t, schedule) - from_x0(prediction, zero, zero, t, schedule)
    f = k[:, 0] ** 2 * post_var
    return torch.trapezoid(f, t).item() / (schedule.t_max - schedule.t_min)


@pytest.mark.parametrize("name", SCHEDULES)
def test_loss_of_the_exact_denoiser_matches_the_closed_form(name):
    schedule, prediction, s = get_schedule(name), default_prediction(name), 0.7
    g = torch.Generator().manual_seed(0)
    x0 = s * torch.randn(20000, 4, generator=g, dtype=torch.float64)
    losses = DiffusionLoss()(GaussianOracle(schedule, prediction, s), x0, generator=g)
    assert losses.shape == (20000,)
    assert losses.mean().item() == pytest.approx(expected_loss(schedule, prediction, s), rel=0.03)


def test_edm_loss_is_one_when_data_std_equals_sigma_data():
    """EDM's preconditioning makes the optimal loss exactly 1 at every noise level when std = sigma_data."""
    ve = get_schedule("ve")
    assert expected_loss(ve, "edm", SIGMA_DATA) == pytest.approx(1.0, rel=1e-6)


def test_min_snr_weighting():
    loss = DiffusionLoss(weighting="min_snr", min_snr_gamma=5.0)
    s = get_schedule("vp_linear")
    t = torch.tensor([s.t_from_log_snr(torch.tensor(4.0)).item(), s.t_from_log_snr(torch.tensor(0.0)).item()])
    w = loss.weight(GaussianOracle(s, "eps", 1.0), t)  # snr = e^4 > 5 -> 5 / e^4; snr = 1 < 5 -> 1
    assert w.tolist() == pytest.approx([5.0 / torch.e**4, 1.0], rel=1e-4)
    w_v = loss.weight(GaussianOracle(s, "v", 1.0), t)  # VP, v-target: min(snr, gamma) / (snr + 1)
    assert w_v.tolist() == pytest.approx([5.0 / (torch.e**4 + 1), 1.0 / 2], rel=1e-4)
    w_x0 = loss.weight(GaussianOracle(s, "x0", 1.0), t)  # x0-target: min(snr, gamma)
    assert w_x0.tolist() == pytest.approx([5.0, 1.0], rel=1e-4)


@pytest.mark.parametrize("name", SCHEDULES)
def test_target_slopes_are_the_known_ones(name):
    s = get_schedule(name)
    t = torch.linspace(s.t_min, s.t_max, 9, dtype=F64)
    a, sig = s.alpha(t), s.sigma(t)
    da, ds = s.d_alpha(t), s.d_sigma(t)
    c_out = edm_coefficients(s, t)[1]
    expected = {
        "x0": torch.ones_like(t),
        "eps": a**2 / sig**2,
        "v": (a**2 + sig**2) ** 2 / sig**2,
        "velocity": (da - ds * a / sig) ** 2,
        "score": a**2 / sig**4,
        "edm": 1 / c_out**2,
    }
    assert set(expected) == set(PREDICTIONS)
    for kind, k2 in expected.items():
        torch.testing.assert_close(target_slope2(kind, s, t), k2, rtol=1e-12, atol=0, msg=kind)


@pytest.mark.parametrize("name", SCHEDULES)
def test_edm_weighting_times_edm_target_scaling_is_one(name):
    """Karras et al. 2022 eq. 8: lambda(sigma) c_out(sigma)^2 = 1, so with the "edm" target EDM's loss is the
    unweighted MSE of F; on the x0-MSE the weight is lambda itself."""
    s = get_schedule(name)
    t = torch.linspace(s.t_min, s.t_max, 33, dtype=F64)
    level = s.sigma(t) / s.alpha(t)
    lam_edm = (level**2 + SIGMA_DATA**2) / (level * SIGMA_DATA) ** 2  # EDM's lambda(sigma), Table 1
    c_out = level * SIGMA_DATA / torch.sqrt(level**2 + SIGMA_DATA**2)
    torch.testing.assert_close(lam_edm * c_out**2, torch.ones_like(t), rtol=1e-12, atol=0)
    loss = DiffusionLoss(weighting="edm")
    torch.testing.assert_close(loss.weight(GaussianOracle(s, "edm", 1.0), t), torch.ones_like(t))
    torch.testing.assert_close(loss.weight(GaussianOracle(s, "x0", 1.0), t), lam_edm)
    eps_weight = loss.weight(GaussianOracle(s, "eps", 1.0), t)  # lambda / snr = lambda level^2
    torch.testing.assert_close(eps_weight, lam_edm * level**2)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_edm_recipe_loss_of_the_exact_denoiser_is_one(name, prediction):
    """With data std = sigma_data the optimal x0-MSE is s^2 sd^2 / (s^2 + sd^2) at noise level s, and
    EDM's weight is its inverse: the expected loss is exactly 1 for every target, schedule and time."""
    s = get_schedule(name)
    g = torch.Generator().manual_seed(0)
    x0 = SIGMA_DATA * torch.randn(20000, 4, generator=g, dtype=F64)
    loss = DiffusionLoss("lognormal", "edm")
    per_sample = loss(GaussianOracle(s, prediction, SIGMA_DATA), x0, generator=g)
    # per sample: chi^2_4 / 4 (mean 1, variance 1/2)
    assert abs(per_sample.mean().item() - 1) < 5 * math.sqrt(0.5 / 20000)


def test_schedule_recipes():
    edm = DiffusionLoss.for_schedule(get_schedule("edm"))
    assert (edm.time_sampling, edm.weighting, edm.P_mean, edm.P_std) == ("lognormal", "edm", -1.2, 1.2)
    assert DiffusionLoss.for_schedule(get_schedule("edm"), weighting="unit").weighting == "unit"
    for name in ("vp_linear", "vp_cosine", "ve", "flow"):
        assert DiffusionLoss.for_schedule(get_schedule(name)).settings() == DiffusionLoss().settings()
    assert DiffusionLoss(**edm.settings()).settings() == edm.settings()
    assert "lognormal" in repr(edm)


# -- the weight on each log-SNR (Kingma & Gao 2023), schedules at SPEC's defaults ----------------------
def _histogram(schedule, loss, weight=None, n=2**20, bins=40):
    """Density (or weighted density) of the training log-SNRs per bin, its binomial sd, and the bin
    edges; times clamped onto the interval's ends are left out."""
    t = loss.sample_times(schedule, n, generator=torch.Generator().manual_seed(1))
    t = t[(t > np.float32(schedule.t_min)) & (t < np.float32(schedule.t_max))].double()
    lam = schedule.log_snr(t).numpy()
    w = None if weight is None else weight(t)
    counts, edges = np.histogram(lam, bins=bins, range=schedule.log_snr_range(), weights=w)
    sq, _ = np.histogram(lam, bins=bins, range=schedule.log_snr_range(), weights=None if w is None else w**2)
    width = np.diff(edges)
    return counts / (n * width), np.sqrt(sq) / (n * width), edges


def _bin_means(fn, edges, sub=64):
    """Mean of ``fn`` over each bin (``sub`` midpoints per bin)."""
    u = (np.arange(sub) + 0.5) / sub
    pts = edges[:-1, None] + np.diff(edges)[:, None] * u[None, :]
    return np.asarray(fn(pts.reshape(-1))).reshape(pts.shape).mean(1)


@pytest.mark.parametrize(
    ("name", "time_sampling"),
    [("vp_linear", "stratified"), ("vp_cosine", "uniform"), ("flow", "logsnr"), ("ve", "lognormal")],
)
def test_log_snr_density_closed_form_matches_histogram_of_training_times(name, time_sampling):
    schedule = get_schedule(name)
    loss = DiffusionLoss(time_sampling=time_sampling)
    hist, sd, edges = _histogram(schedule, loss)
    closed = _bin_means(lambda lam: log_snr_density(schedule, loss, lam), edges)
    assert np.all(np.abs(hist - closed) <= 5 * sd + 2e-3 * closed.max())
    # and it is a density: the mass inside the interval (lognormal: less its clamped tails) is ~1
    assert np.sum(closed * np.diff(edges)) == pytest.approx(1.0, abs=0.01)


def test_lognormal_with_a_uniform_share_trains_the_noisiest_levels():
    """P_uniform of the draws uniform in log-SNR over the schedule's range: the closed-form density
    (the mixture) matches the histogram, and the share of draws below log-SNR -8 on vp_linear (range
    -10.05..9.12; 4.3 standard deviations out on the normal) is P_uniform's share of the range."""
    schedule = get_schedule("vp_linear")
    loss = DiffusionLoss(time_sampling="lognormal", P_uniform=0.2)
    hist, sd, edges = _histogram(schedule, loss)
    closed = _bin_means(lambda lam: log_snr_density(schedule, loss, lam), edges)
    assert np.all(np.abs(hist - closed) <= 5 * sd + 2e-3 * closed.max())
    assert np.sum(closed * np.diff(edges)) == pytest.approx(1.0, abs=0.01)
    n, (lo, hi) = 200_000, schedule.log_snr_range()
    t = loss.sample_times(schedule, n, generator=torch.Generator().manual_seed(2))
    lam = schedule.log_snr(t.double())
    expected = 0.2 * (-8 - lo) / (hi - lo)  # the normal's own share there is ~1e-5
    assert (lam < -8).double().mean().item() == pytest.approx(expected, abs=5 * math.sqrt(expected / n))
    plain = DiffusionLoss(time_sampling="lognormal")
    assert (schedule.log_snr(plain.sample_times(schedule, n).double()) < -8).double().mean() < 1e-4
    with pytest.raises(ValueError, match="P_uniform=1.0"):
        DiffusionLoss(time_sampling="lognormal", P_uniform=1.0)


def test_histogram_fallback_matches_the_closed_form(monkeypatch):
    schedule = get_schedule("vp_linear")
    loss = DiffusionLoss(time_sampling="uniform")
    lam = np.linspace(-9, 8, 50)
    closed = log_snr_density(schedule, loss, lam)
    monkeypatch.delitem(losses.LOG_SNR_DENSITIES, "uniform")
    hist = log_snr_density(schedule, loss, lam)
    assert np.allclose(hist, closed, rtol=0.05, atol=0.01 * closed.max().item())


def _vp_linear_closed(lam):
    """Uniform t, eps, unit weighting: ``p(lambda) = |dt/dlambda| / (t_max - t_min)`` with
    ``d lambda / dt = -beta(t) / sigma^2`` (VP: ``sigma^2 = sigmoid(-lambda)``)."""
    s = get_schedule("vp_linear")
    t = s.t_from_log_snr(torch.as_tensor(lam, dtype=torch.float64)).numpy()
    beta = s.beta_min + t * (s.beta_max - s.beta_min)
    return 1 / (1 + np.exp(lam)) / beta / (s.t_max - s.t_min)


def _flow_closed(lam):
    """Uniform t, velocity target: ``w = e^(-lambda/2) / (2 (t_max - t_min))`` (Kingma & Gao's
    rectified-flow weighting)."""
    s = get_schedule("flow")
    return np.exp(-lam / 2) / (2 * (s.t_max - s.t_min))


def _edm_closed(lam):
    """EDM: ``w = N(lambda; 2.4, 2.4^2) (e^-lambda + sd^2) / sd^2`` (Kingma & Gao 2023)."""
    sd2 = SIGMA_DATA**2
    return (
        np.exp(-0.5 * ((lam - 2.4) / 2.4) ** 2) / (2.4 * math.sqrt(2 * math.pi)) * (np.exp(-lam) + sd2) / sd2
    )


def _ve_closed(lam):
    """VE, uniform t (lambda linear in t), the edm target, unit weighting: ``(e^-lambda + sd^2) / sd^2
    / (lam_hi - lam_lo)``."""
    lo, hi = get_schedule("ve").log_snr_range()
    return (np.exp(-lam) + SIGMA_DATA**2) / SIGMA_DATA**2 / (hi - lo)


@pytest.mark.parametrize(
    ("name", "closed"),
    [("vp_linear", _vp_linear_closed), ("flow", _flow_closed), ("edm", _edm_closed), ("ve", _ve_closed)],
)
def test_implied_weight_closed_forms(name, closed):
    schedule = get_schedule(name)
    loss, lo, hi = DiffusionLoss.for_schedule(schedule), *schedule.log_snr_range()
    lam = np.linspace(lo + 1e-6, hi - 1e-6, 101)
    assert np.allclose(implied_weight(schedule, loss, schedule.prediction, lam), closed(lam), rtol=1e-6)
    outside = implied_weight(schedule, loss, schedule.prediction, [lo - 1.0, hi + 1.0])
    assert torch.all(outside == 0)


@pytest.mark.parametrize("name", ["flow", "edm"])
def test_implied_weight_matches_the_training_loss_estimated_from_its_own_times(name):
    """Monte Carlo of the loss's integrand weight: the histogram of the training log-SNRs weighted by
    ``loss.weight * k^2 / snr`` per bin is the bin mean of ``implied_weight``."""
    schedule = get_schedule(name)
    loss, prediction = DiffusionLoss.for_schedule(schedule), schedule.prediction
    D = type("D", (), {"schedule": schedule, "prediction": prediction, "sigma_data": SIGMA_DATA})()

    def weight(t):
        k2 = target_slope2(prediction, schedule, t)
        return (loss.weight(D, t) * k2 / schedule.log_snr(t).exp()).numpy()

    hist, sd, edges = _histogram(schedule, loss, weight)
    expected = _bin_means(lambda lam: implied_weight(schedule, loss, prediction, lam), edges)
    assert np.all(np.abs(hist - expected) <= 5 * sd + 2e-3 * expected.max())


def test_eps_prediction_under_unit_weighting_weights_each_log_snr_by_its_density():
    flow, lam = get_schedule("flow"), np.linspace(-5, 5, 11)
    loss = DiffusionLoss()
    assert torch.allclose(implied_weight(flow, loss, "eps", lam), log_snr_density(flow, loss, lam))
