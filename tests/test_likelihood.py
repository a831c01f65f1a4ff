"""PF-ODE likelihood against exact log-densities of Gaussian mixtures (the exact denoiser).

Two small, explainable biases separate ``pf_ode_nll`` from ``-log p_0(x0)``:
- the prior N(0, sigma(t_max)^2 I) differs from the true p_{t_max}, mostly by the mean shift
  alpha(t_max) mu, worth about |mu| |x_T| alpha/sigma^2 ~ |mu| / s(t_max) nats (VE: 1/50);
- the ODE starts at t_min, so it measures p_{t_min} (the data convolved with a little noise).
Replacing the prior by the exact p_{t_max} must leave only the ODE solver's error against
log p_{t_min}(x0); the raw NLL is within a few hundredths of a nat per dimension of log p_0.
"""

import math

import pytest
import torch
from torch import nn

from difflab.data.toy import GaussianMixture, small_mixture
from difflab.likelihood import bits_per_dim, dequantize, pf_ode_nll
from difflab.parametrization import Denoiser
from difflab.schedules import SCHEDULES, get_schedule

F64 = torch.float64


def single_gaussian():
    return GaussianMixture(torch.tensor([[0.5, -0.3, 0.8]], dtype=F64), 0.6)


PROBLEMS = {"gaussian_3d": single_gaussian, "mixture_2d": lambda: small_mixture(dim=2)}


@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("name", SCHEDULES)
def test_exact_nll_matches_exact_log_density(name, problem):
    schedule = get_schedule(name)
    gm = PROBLEMS[problem]()
    x0 = gm.sample(12, torch.Generator().manual_seed(0))
    nll, stats = pf_ode_nll(gm.denoiser(schedule), schedule, x0, return_stats=True)
    assert nll.shape == (12,) and nll.dtype == F64
    assert 0 < stats["nfe"] < 250  # dopri5 in (log sigma/alpha, x/alpha): no stiffness at either end
    # with the exact p_{t_max} in place of the prior, only the solver's error is left
    t_min, t_max = (torch.tensor(v, dtype=F64) for v in (schedule.t_min, schedule.t_max))
    log_p_T = gm.marginal_log_prob(stats["x_T"], t_max, schedule)
    corrected = nll + stats["log_prior"] - log_p_T
    torch.testing.assert_close(corrected, -gm.marginal_log_prob(x0, t_min, schedule), rtol=0, atol=1e-3)
    # the raw NLL: within 0.02 nats per dimension of the data's exact density
    assert ((nll + gm.log_prob(x0)).abs() < 0.02 * gm.dim).all()
    assert (nll + gm.log_prob(x0)).mean().abs() < 0.005 * gm.dim


def test_hutchinson_is_unbiased_for_exact():
    schedule = get_schedule("vp_cosine")
    gm = small_mixture(dim=2)
    x0 = gm.sample(48, torch.Generator().manual_seed(1))
    D = gm.denoiser(schedule)
    exact = pf_ode_nll(D, schedule, x0, rtol=1e-4, atol=1e-4)
    kw = dict(divergence="hutchinson", n_probes=2, rtol=1e-4, atol=1e-4)
    hutch = pf_ode_nll(D, schedule, x0, generator=torch.Generator().manual_seed(0), **kw)
    diff = hutch - exact
    assert diff.std() > 1e-3  # a real estimator, with noise
    assert diff.mean().abs() < 4 * diff.std() / math.sqrt(len(diff))
    again = pf_ode_nll(D, schedule, x0, generator=torch.Generator().manual_seed(0), **kw)
    other = pf_ode_nll(D, schedule, x0, generator=torch.Generator().manual_seed(1), **kw)
    torch.testing.assert_close(again, hutch, rtol=0, atol=0)
    assert not torch.allclose(other, hutch)
    # more probes, less variance (Rademacher: variance ~ 1 / n_probes)
    many = pf_ode_nll(D, schedule, x0, generator=torch.Generator().manual_seed(2), **{**kw, "n_probes": 16})
    assert (many - exact).std() < 0.6 * diff.std()


@pytest.mark.parametrize("name", SCHEDULES)
def test_hutchinson_in_16d_matches_exact_log_density(name):
    """Where the exact trace gets costly: one probe per row, unbiased against log p_0 over rows."""
    schedule = get_schedule(name)
    gm = small_mixture(dim=16)
    x0 = gm.sample(64, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    nll = pf_ode_nll(gm.denoiser(schedule), schedule, x0, divergence="hutchinson", generator=gen)
    err = nll + gm.log_prob(x0)
    assert err.mean().abs() < 4 * err.std() / math.sqrt(len(err)) + 0.005 * gm.dim


def test_any_row_shape_float32_denoiser_and_tolerance():
    schedule = get_schedule("vp_linear")
    gm = small_mixture(dim=4)
    x0 = gm.sample(6, torch.Generator().manual_seed(2))
    D = gm.denoiser(schedule)
    flat, stats = pf_ode_nll(D, schedule, x0, return_stats=True)
    img = pf_ode_nll(D, schedule, x0.reshape(6, 1, 2, 2))  # [B, C, H, W] rows
    torch.testing.assert_close(img, flat, rtol=0, atol=1e-9)

    def D32(x, t, cond=None):  # a float32 "network": likelihood still integrates in float64
        assert x.dtype == F64
        return D(x.float(), t.float()).float()

    torch.testing.assert_close(pf_ode_nll(D32, schedule, x0), flat, rtol=0, atol=1e-3)
    loose, loose_stats = pf_ode_nll(D, schedule, x0, rtol=1e-4, atol=1e-4, return_stats=True)
    assert loose_stats["nfe"] < stats["nfe"]
    torch.testing.assert_close(loose, flat, rtol=0, atol=0.01)


class TinyNet(nn.Module):
    """A random float32 MLP predicting eps from (c_in x, log_snr): a stand-in for a trained net."""

    def __init__(self, d: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d + 1, 32), nn.SiLU(), nn.Linear(32, d))
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))

    def forward(self, x, lam, cond=None):
        return self.body(torch.cat([x, lam[:, None] / 10], 1))


def test_network_denoiser_exact_trace_and_hutchinson_agree():
    """Through the Denoiser wrapper (float32 net): the exact trace is the full Jacobian's trace
    (Hutchinson with many probes converges to it), and the NLL is finite and deterministic."""
    schedule = get_schedule("vp_cosine")
    D = Denoiser(TinyNet(3), schedule, "eps")
    x0 = small_mixture(dim=3).sample(8, torch.Generator().manual_seed(3))
    kw = dict(rtol=1e-4, atol=1e-4)
    exact = pf_ode_nll(D, schedule, x0, **kw)
    assert torch.isfinite(exact).all()
    torch.testing.assert_close(pf_ode_nll(D, schedule, x0, **kw), exact, rtol=0, atol=0)
    gen = torch.Generator().manual_seed(0)
    hutch = pf_ode_nll(D, schedule, x0, divergence="hutchinson", n_probes=64, generator=gen, **kw)
    diff, se = hutch - exact, (hutch - exact).std() / math.sqrt(len(exact))
    assert diff.mean().abs() < 4 * se + 1e-3
    assert se < 0.1  # power: one dimension's trace alone integrates to nats (y's own term: ~9.8)


def test_integrates_the_solvers_pf_ode(monkeypatch):
    """One PF-ODE: every right-hand side is difflab.solvers.edm_ode_velocity (rk45's equation), and the
    end point is where rk45's own integration of that equation from x0 arrives."""
    import difflab.likelihood as likelihood
    from difflab.solvers import edm_ode_velocity

    schedule = get_schedule("vp_cosine")
    gm = small_mixture(dim=2)
    x0 = gm.sample(3, torch.Generator().manual_seed(4))
    calls = []

    def spy(*args, **kwargs):
        calls.append(args[3])
        return edm_ode_velocity(*args, **kwargs)

    monkeypatch.setattr(likelihood, "edm_ode_velocity", spy)
    _, stats = pf_ode_nll(gm.denoiser(schedule), schedule, x0, rtol=1e-4, atol=1e-4, return_stats=True)
    assert len(calls) == stats["nfe"] > 0
    # the same equation integrated without the divergence reaches the same x_T
    from torchdiffeq import odeint

    ends = torch.tensor([schedule.t_min, schedule.t_max], dtype=F64)
    a_min, a_max = schedule.alpha(ends).tolist()
    u = torch.log(schedule.sigma_over_alpha(ends))
    D = gm.denoiser(schedule)
    y_T = odeint(lambda u_, y: edm_ode_velocity(D, schedule, y, u_), x0 / a_min, u, rtol=1e-9, atol=1e-9)[-1]
    torch.testing.assert_close(stats["x_T"], a_max * y_T, rtol=1e-3, atol=1e-3)


def test_cond_reaches_the_denoiser():
    schedule = get_schedule("flow")
    gm = single_gaussian()
    seen = []

    def D(x, t, cond=None):
        seen.append(cond)
        return gm.denoiser(schedule)(x, t)

    labels = torch.tensor([1, 2])
    pf_ode_nll(D, schedule, gm.sample(2), cond=labels, rtol=1e-3, atol=1e-3)
    assert seen and all(c is labels for c in seen)


def test_runs_under_no_grad_and_inference_mode():
    """Lightning evaluates under inference_mode; the divergence still needs autograd."""
    schedule = get_schedule("ve")
    gm = small_mixture(dim=2)
    x0 = gm.sample(4, torch.Generator().manual_seed(0))
    kw = dict(rtol=1e-4, atol=1e-4)
    ref = pf_ode_nll(gm.denoiser(schedule), schedule, x0, **kw)
    with torch.no_grad():
        torch.testing.assert_close(pf_ode_nll(gm.denoiser(schedule), schedule, x0, **kw), ref)
    with torch.inference_mode():
        x_inf = x0.clone()
        torch.testing.assert_close(pf_ode_nll(gm.denoiser(schedule), schedule, x_inf, **kw), ref)


def test_bits_per_dim_is_the_formula():
    """bpd = (NLL_z - D log(2/levels)) / (D ln 2) with the same dequantization draw."""
    schedule = get_schedule("vp_linear")
    levels, shape = 16, (8, 1, 2, 2)
    gm = GaussianMixture(torch.zeros(1, 4, dtype=F64), 0.4)
    x = torch.randint(4, 12, shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    D = gm.denoiser(schedule)
    bpd = bits_per_dim(
        D, schedule, x, levels=levels, divergence="exact", generator=torch.Generator().manual_seed(7)
    )
    z = dequantize(x, levels, torch.Generator().manual_seed(7))
    assert ((z > -1) & (z < 1)).all()
    u = (z + 1) * levels / 2 - x.double()  # the dequantization noise
    assert ((u >= 0) & (u < 1)).all()
    nll_z = pf_ode_nll(D, schedule, z)
    torch.testing.assert_close(bpd, (nll_z - 4 * math.log(2 / levels)) / (4 * math.log(2)), rtol=0, atol=1e-9)
    exact = (-gm.log_prob(z.reshape(8, 4)) - 4 * math.log(2 / levels)) / (4 * math.log(2))
    torch.testing.assert_close(bpd, exact, rtol=0, atol=0.02)


def test_bits_per_dim_uniform_baseline():
    """On uniformly random levels no model beats log2(levels); the max-entropy Gaussian fit
    N(0, 1/3) to U[-1, 1] pays exactly (log(2 pi e / 3)/2 - log 2) / ln 2 ~ 0.255 bits on top."""
    schedule = get_schedule("vp_linear")
    levels, B = 256, 64
    x = torch.randint(0, levels, (B, 1, 2, 2), generator=torch.Generator().manual_seed(3))
    gm = GaussianMixture(torch.zeros(1, 4, dtype=F64), math.sqrt(1 / 3))
    bpd = bits_per_dim(
        gm.denoiser(schedule), schedule, x, divergence="exact", generator=torch.Generator().manual_seed(4)
    )
    gap = (0.5 * math.log(2 * math.pi * math.e / 3) - math.log(2)) / math.log(2)
    expected, se = math.log2(levels) + gap, bpd.std().item() / math.sqrt(B)
    assert abs(bpd.mean().item() - expected) < 4 * se + 0.01
    assert bpd.mean().item() > math.log2(levels)
    # a model concentrated where the data is beats the baseline by far: 16 levels, one bin,
    # a Gaussian of a quarter bin's std (sigma(t_min)/alpha ~ 0.01 is small against the bin, 1/8)
    levels = 16
    narrow = torch.full((B, 1, 2, 2), 5)
    centre = 2 * (5 + 0.5) / levels - 1
    fit = GaussianMixture(torch.full((1, 4), centre, dtype=F64), 0.25 * 2 / levels)
    gen = torch.Generator().manual_seed(5)
    bpd_fit = bits_per_dim(
        fit.denoiser(schedule), schedule, narrow, levels=levels, divergence="exact", generator=gen
    )
    # against the exact blurred density p_{t_min} at the same dequantized points
    z = dequantize(narrow, levels, torch.Generator().manual_seed(5)).reshape(B, 4)
    t_min = torch.tensor(schedule.t_min, dtype=F64)
    exact = (-fit.marginal_log_prob(z, t_min, schedule) - 4 * math.log(2 / levels)) / (4 * math.log(2))
    torch.testing.assert_close(bpd_fit, exact, rtol=0, atol=0.01)
    # about -log N(1/2; u, 1/4^2) in bin units: (log(2 pi / 16) / 2 + 8 / 12) / ln 2 ~ 0.29 bits
    assert bpd_fit.mean().item() < 0.5 and (bpd_fit < 0.5 * math.log2(levels)).all()


def test_bad_input():
    schedule = get_schedule("ve")
    gm = single_gaussian()
    D = gm.denoiser(schedule)
    good = gm.sample(2)
    for bad in (float("nan"), float("inf")):
        x0 = good.clone()
        x0[1, 0] = bad
        with pytest.raises(ValueError, match="non-finite"):
            pf_ode_nll(D, schedule, x0)
    with pytest.raises(ValueError, match="'laplacian'.*exact.*hutchinson"):
        pf_ode_nll(D, schedule, good, divergence="laplacian")
    with pytest.raises(ValueError, match="n_probes"):
        pf_ode_nll(D, schedule, good, divergence="hutchinson", n_probes=0)
    with pytest.raises(ValueError, match="floating"):
        pf_ode_nll(D, schedule, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="sigma/alpha"):
        pf_ode_nll(D, get_schedule("flow", t_max=1.0), good)  # alpha(1) = 0: no finite prior end
    x = torch.zeros(2, 3, dtype=torch.uint8)
    for levels in (1, 0, 2.5):
        with pytest.raises(ValueError, match="levels="):
            bits_per_dim(D, schedule, x, levels=levels)
    for values in (torch.tensor([[0, 16, 3]]), torch.tensor([[-1, 0, 3]])):
        with pytest.raises(ValueError, match=r"0\.\.15"):
            bits_per_dim(D, schedule, values, levels=16)
    with pytest.raises(ValueError, match="integer"):
        bits_per_dim(D, schedule, torch.tensor([[0.5, 1.0, 2.0]]), levels=16)
    with pytest.raises(ValueError, match="'laplacian'"):
        bits_per_dim(D, schedule, x, divergence="laplacian")
