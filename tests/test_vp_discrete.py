"""vp_discrete: DDPM's discrete betas made continuous (DPM-Solver's convention, t_n = (n + 1) / N, log alpha
piecewise linear in t). Its knots against diffusers' DDPMScheduler, its log-SNR through every training
timestep, the interpolation against numpy's, closed forms off the knots against autograd and finite
differences, exact inverses, defaults and bad parameters."""

import math

import numpy as np
import pytest
import torch

from difflab.schedules import Schedule, get_schedule

F64 = torch.float64
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
CASES = [  # (num_train_timesteps, beta_start, beta_end, beta_schedule)
    *[(1000, 1e-4, 0.02, b) for b in BETA_SCHEDULES],
    (50, 2e-4, 0.3, "linear"),
    (64, 8.5e-4, 0.012, "scaled_linear"),  # latent diffusion's betas
    (20, 1e-4, 0.02, "squaredcos_cap_v2"),
]


def build(case) -> Schedule:
    n, start, end, kind = case
    return get_schedule(
        "vp_discrete", num_train_timesteps=n, beta_start=start, beta_end=end, beta_schedule=kind
    )


@pytest.fixture(params=CASES, ids=lambda c: f"{c[3]}-{c[0]}")
def case(request):
    return request.param


def off_knots(schedule, n: int = 400, seed: int = 0) -> torch.Tensor:
    """Times in [t_min, t_max] at least 1e-4 / N from every knot t_k = (k + 1) / N (f jumps at knots)."""
    N = schedule.num_train_timesteps
    gen = torch.Generator().manual_seed(seed)
    k = torch.randint(0, N - 1, (n,), generator=gen)
    frac = 1e-4 + (1 - 2e-4) * torch.rand(n, generator=gen, dtype=F64)
    return (k + 1 + frac) / N


def test_knots_are_diffusers_ddpm_alphas_cumprod(case):
    diffusers = pytest.importorskip("diffusers")
    n, start, end, kind = case
    peer = diffusers.DDPMScheduler(num_train_timesteps=n, beta_start=start, beta_end=end, beta_schedule=kind)
    s = build(case)
    # diffusers builds its betas in float32 (squaredcos_cap_v2: in float64, then rounded) and
    # multiplies them in float32: agreement to a few float32 ulps per beta and ~N ulps in the product
    # (the capped beta 0.999 leaves 1 - beta = 1e-3 with a relative rounding of 6e-5)
    torch.testing.assert_close(s.betas, peer.betas.double(), rtol=5e-7, atol=0)
    torch.testing.assert_close(s.alphas_cumprod, peer.alphas_cumprod.double(), rtol=2e-5, atol=0)
    if kind == "squaredcos_cap_v2":  # computed in float64 by both: equal once rounded
        assert torch.equal(s.betas.float(), peer.betas)


def test_log_snr_passes_through_every_training_timestep(case):
    s = build(case)
    N = s.num_train_timesteps
    n = torch.arange(N)
    t_n = s.t_from_timestep(n)
    torch.testing.assert_close(t_n, (n + 1).double() / N, rtol=0, atol=0)
    acp = s.alphas_cumprod
    # log(abar / (1 - abar)) to float64 rounding (log and log1p of abar near 1 lose ~1e-12 absolute)
    torch.testing.assert_close(s.log_snr(t_n), torch.log(acp) - torch.log1p(-acp), rtol=1e-14, atol=1e-11)
    torch.testing.assert_close(s.alpha(t_n) ** 2, acp, rtol=1e-14, atol=0)
    # an independent product of the betas, in float64
    start, end = case[1], case[2]
    if case[3] == "linear":
        betas = torch.linspace(start, end, N, dtype=F64)
        abar = torch.cumprod(1 - betas, 0)
        torch.testing.assert_close(s.log_snr(t_n), torch.log(abar / (1 - abar)), rtol=1e-12, atol=1e-10)
    # the network is fed timestep n exactly at t_n; t increases with n and the log-SNR falls
    assert torch.equal(s.timestep(t_n), n.double())
    assert (s.log_snr(t_n).diff() < 0).all()
    assert (s.t_min, s.t_max) == (1 / N, 1.0)
    assert s.t_min == t_n[0].item() and s.t_max == t_n[-1].item()
    assert list(s.log_snr_range()) == s.log_snr(t_n[[-1, 0]]).tolist()


def test_between_knots_log_alpha_and_timestep_are_linear_in_t(case):
    """DPM-Solver's NoiseScheduleVP('discrete'): log alpha = interp(t, t_n, log(abar_n) / 2), and the
    network's timestep interp(t, t_n, n) = N t - 1 (numpy's interpolation as the reference)."""
    s = build(case)
    N = s.num_train_timesteps
    t = torch.cat([off_knots(s), torch.linspace(s.t_min, s.t_max, 257, dtype=F64)])
    t_n = np.arange(1, N + 1) / N
    log_alpha = np.interp(t.numpy(), t_n, np.log(s.alphas_cumprod.numpy()) / 2)
    torch.testing.assert_close(torch.log(s.alpha(t)), torch.from_numpy(log_alpha), rtol=1e-12, atol=1e-15)
    timestep = np.interp(t.numpy(), t_n, np.arange(N, dtype=np.float64))
    torch.testing.assert_close(s.timestep(t), torch.from_numpy(timestep), rtol=0, atol=1e-9)
    torch.testing.assert_close(s.timestep(t), N * t - 1, rtol=0, atol=1e-9)
    # variance preserving
    torch.testing.assert_close(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones_like(t), rtol=0, atol=1e-15)


def test_closed_forms_match_autograd_and_finite_differences_off_the_knots(case):
    s = build(case)
    t = off_knots(s)

    class Bare(Schedule):  # only alpha and sigma: the base class derives the rest by autograd
        t_min, t_max = s.t_min, s.t_max

        def alpha(self, u):
            return s.alpha(u)

        def sigma(self, u):
            return s.sigma(u)

    h = 1e-5 / s.num_train_timesteps / 2  # inside the segment of every t above
    fd = lambda fn: (fn(t + h) - fn(t - h)) / (2 * h)  # noqa: E731
    fd_f = fd(lambda u: torch.log(s.alpha(u)))
    expected = {
        "d_alpha": fd(s.alpha),
        "d_sigma": fd(s.sigma),
        "f": fd_f,
        "g2": fd(lambda u: s.sigma(u) ** 2) - 2 * s.sigma(t) ** 2 * fd_f,
    }
    for name, by_fd in expected.items():
        closed = getattr(s, name)(t)
        scale = by_fd.abs().max().clamp_min(1.0)
        torch.testing.assert_close(closed, getattr(Bare(), name)(t), rtol=1e-10, atol=1e-10 * scale, msg=name)
        torch.testing.assert_close(closed, by_fd, rtol=1e-5, atol=1e-6 * scale, msg=name)
    # on segment k: f = N (log alpha_{k+1} - log alpha_k) = N log(1 - beta_{k+1}) / 2, and g2 = -2 f
    k = torch.floor(t * s.num_train_timesteps).long() - 1
    f = s.num_train_timesteps * torch.log1p(-s.betas[k + 1]) / 2
    torch.testing.assert_close(s.f(t), f, rtol=1e-12, atol=0)
    torch.testing.assert_close(s.g2(t), -2 * f, rtol=1e-12, atol=0)


def test_t_from_log_snr_is_the_exact_inverse(case):
    s = build(case)
    t = torch.cat([off_knots(s, 500), torch.linspace(s.t_min, s.t_max, 1001, dtype=F64)])
    t_err = (s.t_from_log_snr(s.log_snr(t)) - t).abs() / t
    assert t_err.max() < 1e-13
    lam_lo, lam_hi = s.log_snr_range()
    lam = torch.linspace(lam_lo, lam_hi, 1001, dtype=F64)
    lam_err = (s.log_snr(s.t_from_log_snr(lam)) - lam).abs() / (1 + lam.abs())
    assert lam_err.max() < 1e-13
    # against the base class's bisection
    torch.testing.assert_close(Schedule.t_from_log_snr(s, lam), s.t_from_log_snr(lam), rtol=0, atol=1e-12)
    # float32 in, float32 out
    assert s.t_from_log_snr(lam.float()).dtype == torch.float32 and s.alpha(t.float()).dtype == torch.float32


def test_below_t_min_alpha_is_held_at_one():
    """Below t_0 the first segment's line passes alpha = 1: alpha is held at 1 (sigma = +0, log-SNR inf)."""
    s = get_schedule("vp_discrete")
    t = torch.tensor([0.0, 1e-5, 5e-4, s.t_min], dtype=F64)
    alpha, sigma = s.alpha(t), s.sigma(t)
    assert alpha[0].item() == 1.0 and sigma[0].item() == 0.0 and math.copysign(1.0, sigma[0].item()) == 1.0
    assert s.log_snr(t)[0].item() == math.inf
    assert torch.isfinite(s.f(t)).all() and (alpha <= 1).all() and (sigma >= 0).all()
    assert (s.log_snr(t[1:]).diff() < 0).all()


def test_defaults_params_and_registry():
    s = get_schedule("vp_discrete")
    assert (s.num_train_timesteps, s.beta_start, s.beta_end, s.beta_schedule) == (1000, 1e-4, 0.02, "linear")
    assert s.prediction == "eps"
    rebuilt = get_schedule(**s.params())
    assert rebuilt.params() == s.params()
    small = get_schedule("vp_discrete", num_train_timesteps=50, beta_schedule="squaredcos_cap_v2")
    assert small.t_min == 1 / 50 and get_schedule(**small.params()).params() == small.params()
    assert get_schedule("vp_discrete", t_min=0.01).t_min == 0.01
    # the continuous limit: vp_linear's defaults are DDPM's 1e-4..0.02 over 1000 steps
    lin = get_schedule("vp_linear")
    t = torch.linspace(0.05, 1.0, 20, dtype=F64)
    torch.testing.assert_close(s.log_snr(t), lin.log_snr(t), rtol=0.02, atol=0.02)


@pytest.mark.parametrize(
    "params, named",
    [
        ({"num_train_timesteps": 1}, "num_train_timesteps"),
        ({"num_train_timesteps": 100.5}, "num_train_timesteps"),
        ({"num_train_timesteps": True}, "num_train_timesteps"),
        ({"beta_schedule": "cosine"}, "beta_schedule='cosine'"),
        ({"beta_schedule": 2}, "beta_schedule=2"),
        ({"beta_start": 0.0}, "beta_start"),
        ({"beta_end": 1.5}, "beta_end"),
        ({"beta_start": float("nan")}, "beta_start"),
        ({"beta_start": 0.05, "beta_end": 0.01}, "beta_start"),
        ({"beta_min": 0.1}, "beta_min"),
        ({"t_min": 0.5, "t_max": 0.4}, "t_min"),
    ],
)
def test_bad_params_raise_value_error_naming_them(params, named):
    with pytest.raises(ValueError, match=named):
        get_schedule("vp_discrete", **params)
