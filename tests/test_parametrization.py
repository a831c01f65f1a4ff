"""The denoiser contract: conversions between prediction types, the Denoiser wrapper, guidance."""

import pytest
import torch
from torch import nn

from difflab.parametrization import (
    PREDICTIONS,
    SIGMA_DATA,
    Denoiser,
    edm_coefficients,
    from_x0,
    guided,
    to_x0,
)
from difflab.schedules import SCHEDULES, get_schedule

F64 = torch.float64


def bcast(c, x):
    return c.reshape(-1, *([1] * (x.ndim - 1)))


def noisy_batch(schedule, B=16, shape=(3, 4, 4), seed=0):
    """x0 ~ N(0, sigma_data^2), eps ~ N(0, 1), t spread over [t_min, t_max] (ends included)."""
    gen = torch.Generator().manual_seed(seed)
    x0 = SIGMA_DATA * torch.randn(B, *shape, generator=gen, dtype=F64)
    eps = torch.randn(B, *shape, generator=gen, dtype=F64)
    t = torch.linspace(schedule.t_min, schedule.t_max, B, dtype=F64)
    x = bcast(schedule.alpha(t), x0) * x0 + bcast(schedule.sigma(t), x0) * eps
    return x0, eps, x, t


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("kind", PREDICTIONS)
def test_round_trip(name, kind):
    schedule = get_schedule(name)
    x0, _, x, t = noisy_batch(schedule)
    out = from_x0(kind, x0, x, t, schedule)
    torch.testing.assert_close(to_x0(kind, out, x, t, schedule), x0, rtol=1e-7, atol=1e-7)
    # and the other way: a random prediction survives to_x0 -> from_x0
    pred = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    back = from_x0(kind, to_x0(kind, pred, x, t, schedule), x, t, schedule)
    torch.testing.assert_close(back, pred, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", SCHEDULES)
def test_known_answers(name):
    schedule = get_schedule(name)
    x0, eps, x, t = noisy_batch(schedule)
    a, s = bcast(schedule.alpha(t), x), bcast(schedule.sigma(t), x)
    torch.testing.assert_close(from_x0("eps", x0, x, t, schedule), eps)
    torch.testing.assert_close(from_x0("v", x0, x, t, schedule), a * eps - s * x0)
    torch.testing.assert_close(from_x0("score", x0, x, t, schedule), -eps / s)
    torch.testing.assert_close(from_x0("score", x0, x, t, schedule), (a * x0 - x) / s**2)  # Tweedie
    da, ds = bcast(schedule.d_alpha(t), x), bcast(schedule.d_sigma(t), x)
    velocity = from_x0("velocity", x0, x, t, schedule)
    torch.testing.assert_close(velocity, da * x0 + ds * eps)
    # the velocity is d x_t / dt along the fixed (x0, eps) path: finite differences in t (not across
    # vp_discrete's knots, where alpha's derivative jumps; test_vp_discrete checks it between them)
    h = 1e-6
    x_next = bcast(schedule.alpha(t + h), x) * x0 + bcast(schedule.sigma(t + h), x) * eps
    x_prev = bcast(schedule.alpha(t - h), x) * x0 + bcast(schedule.sigma(t - h), x) * eps
    if name != "vp_discrete":
        torch.testing.assert_close(velocity, (x_next - x_prev) / (2 * h), rtol=1e-5, atol=1e-5)
    # EDM: D = c_skip x/alpha + c_out F with Karras et al.'s coefficients in noise level s/alpha
    level = s / a
    c_skip = SIGMA_DATA**2 / (level**2 + SIGMA_DATA**2)
    c_out = level * SIGMA_DATA / torch.sqrt(level**2 + SIGMA_DATA**2)
    F = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    torch.testing.assert_close(to_x0("edm", F, x, t, schedule), c_skip * x / a + c_out * F)
    c_in = edm_coefficients(schedule, t)[2]
    torch.testing.assert_close(bcast(c_in, x), 1 / torch.sqrt(level**2 + SIGMA_DATA**2))


def test_flow_velocity_is_eps_minus_x0():
    schedule = get_schedule("flow")
    x0, eps, x, t = noisy_batch(schedule)
    torch.testing.assert_close(from_x0("velocity", x0, x, t, schedule), eps - x0)
    torch.testing.assert_close(to_x0("velocity", eps - x0, x, t, schedule), x0)


def test_v_relation_on_vp():
    """On VP (alpha^2 + sigma^2 = 1): x0 = alpha x - sigma v and eps = sigma x + alpha v."""
    schedule = get_schedule("vp_cosine")
    x0, eps, x, t = noisy_batch(schedule)
    v = from_x0("v", x0, x, t, schedule)
    a, s = bcast(schedule.alpha(t), x), bcast(schedule.sigma(t), x)
    torch.testing.assert_close(a * x - s * v, x0)
    torch.testing.assert_close(s * x + a * v, eps)


def test_unknown_prediction_type():
    schedule = get_schedule("ve")
    x0, _, x, t = noisy_batch(schedule, B=2)
    with pytest.raises(ValueError, match="'noise'.*eps"):
        to_x0("noise", x0, x, t, schedule)
    with pytest.raises(ValueError, match="'noise'"):
        from_x0("noise", x0, x, t, schedule)
    with pytest.raises(ValueError, match="'noise'"):
        Denoiser(nn.Identity(), schedule, "noise")


class Recorder(nn.Module):
    """A float32 'network' that returns a fixed linear function of its input and records its inputs."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.5))
        self.calls = []

    def forward(self, x_in, lam, cond=None):
        self.calls.append((x_in, lam, cond))
        return self.w * x_in


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "velocity", "edm"])
def test_denoiser_wrapper_unit_variance_input_log_snr_and_dtype(name, prediction):
    schedule = get_schedule(name)
    net = Recorder()
    D = Denoiser(net, schedule, prediction)
    B = 8
    gen = torch.Generator().manual_seed(3)
    t = torch.linspace(schedule.t_min, schedule.t_max, B, dtype=F64)
    x0 = SIGMA_DATA * torch.randn(B, 4096, generator=gen, dtype=F64)
    x = bcast(schedule.alpha(t), x0) * x0 + bcast(schedule.sigma(t), x0) * torch.randn(
        B, 4096, generator=gen, dtype=F64
    )
    out = D(x, t)
    assert out.dtype == F64 and out.shape == x.shape
    ((x_in, lam, cond),) = net.calls
    assert x_in.dtype == torch.float32 and cond is None
    torch.testing.assert_close(lam, schedule.log_snr(t).float())
    # unit variance per sample at every noise level (VE's sigma reaches 50)
    torch.testing.assert_close(x_in.double().var(dim=1), torch.ones(B, dtype=F64), rtol=0.1, atol=0)
    expected = to_x0(prediction, (0.5 * x_in).double(), x, t, schedule)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_denoiser_passes_cond_through():
    net = Recorder()
    D = Denoiser(net, get_schedule("vp_linear"), "x0")
    labels = torch.tensor([3, 1])
    D(torch.randn(2, 5), torch.tensor([0.2, 0.7]), labels)
    assert net.calls[0][2] is labels


def make_conditional():
    """D(x, t, c) = x (1 + c) / (1 + t); records each call's batch size."""
    calls = []

    def D(x, t, cond=None):
        calls.append(x.shape[0])
        return x * (1 + cond.to(x.dtype))[:, None] / (1 + t)[:, None]

    return D, calls


def test_guided_scales():
    D, calls = make_conditional()
    null = 0
    x, t = torch.randn(4, 3, dtype=F64), torch.rand(4, dtype=F64)
    cond = torch.tensor([1, 2, 3, 4])
    cond_out, uncond_out = D(x, t, cond), D(x, t, torch.full((4,), null))
    calls.clear()
    torch.testing.assert_close(guided(D, 1.0, null)(x, t, cond), cond_out)
    assert calls == [8]  # both branches in one batched call
    torch.testing.assert_close(guided(D, 0.0, null)(x, t, cond), uncond_out)
    torch.testing.assert_close(guided(D, 5.0, null)(x, t, None), uncond_out)  # no cond: unconditional
    g = {w: guided(D, w, null)(x, t, cond) for w in (0.0, 1.0, 3.5, -2.0)}
    for w in (3.5, -2.0):  # linear in the scale
        torch.testing.assert_close(g[w], g[0.0] + w * (g[1.0] - g[0.0]))
    torch.testing.assert_close(g[3.5], uncond_out + 3.5 * (cond_out - uncond_out))
