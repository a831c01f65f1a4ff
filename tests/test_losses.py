"""Losses: the stratified time sampler, each schedule's customary target, and the expected loss of the
exact denoiser of Gaussian data against its closed form (irreducible error x target scale^2)."""

from __future__ import annotations

import pytest
import torch

from difflab.losses import DEFAULT_PREDICTION, DiffusionLoss, default_prediction, sample_times
from difflab.parametrization import SIGMA_DATA, from_x0
from difflab.schedules import SCHEDULES, get_schedule


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


def test_customary_targets():
    assert DEFAULT_PREDICTION == {"vp_linear": "eps", "vp_cosine": "eps", "ve": "edm", "flow": "velocity"}
    assert default_prediction("flow") == "velocity"
    with pytest.raises(ValueError, match="unknown schedule 'vee'"):
        default_prediction("vee")
    with pytest.raises(ValueError, match="unknown time sampling 'sobol'; valid: stratified, uniform, logsnr"):
        DiffusionLoss(time_sampling="sobol")
    with pytest.raises(ValueError, match="unknown loss weighting 'p2'"):
        DiffusionLoss(weighting="p2")


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
    with pytest.raises(ValueError, match="min_snr"):
        loss.weight(GaussianOracle(s, "velocity", 1.0), t)
