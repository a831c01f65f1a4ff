"""Any trained denoiser under any sampling schedule: ``reparametrize`` against the mixture oracle, which
gives both sides in closed form, for every ordered pair of schedules; its range checks and clamping."""

import warnings

import pytest
import torch
from torch import nn

from difflab.data.toy import small_mixture
from difflab.parametrization import Denoiser, Reparametrized, reparametrize, servable_interval
from difflab.schedules import SCHEDULES, common_log_snr_range, get_schedule

F64 = torch.float64
PAIRS = [(a, b) for a in SCHEDULES for b in SCHEDULES]


def marginal_points(gm, schedule, t, seed=0):
    """x_t = alpha x0 + sigma eps with x0 from the mixture: points where D is exercised, ``[B, d]``."""
    g = torch.Generator().manual_seed(seed)
    x0, eps = gm.sample(t.shape[0], generator=g), torch.randn(t.shape[0], gm.dim, generator=g, dtype=F64)
    return schedule.alpha(t)[:, None] * x0 + schedule.sigma(t)[:, None] * eps


@pytest.mark.parametrize("trained, target", PAIRS)
def test_exact_on_the_mixture_oracle_for_every_pair(trained, target):
    """reparametrize(D_A, A, B) = D_B wherever both schedules cover the log-SNR (float64)."""
    A, B = get_schedule(trained), get_schedule(target)
    gm = small_mixture(3)
    lam_lo, lam_hi = common_log_snr_range(A, B)
    t = B.t_from_log_snr(torch.linspace(lam_lo, lam_hi, 301, dtype=F64)).clamp(B.t_min, B.t_max)
    x = marginal_points(gm, B, t)
    D = reparametrize(gm.denoiser(A), A, B)
    assert isinstance(D, Reparametrized) and D.schedule is B and D.trained_on is A
    got, expected = D(x, t), gm.denoiser(B)(x, t)
    assert got.dtype == F64 and got.shape == x.shape
    assert (got - expected).abs().max().item() < 1e-10
    assert not D.clamped
    if trained == target:
        return
    if {trained, target} == {"vp_linear", "vp_discrete"}:
        return  # vp_linear is vp_discrete's continuous limit: unmapped they nearly agree
    # the test has power: the target's t unmapped is far off, and so is the matched t' without the
    # rescaling where alpha differs at equal log-SNR (VP vs VP and VE vs EDM share alpha(lambda))
    assert (gm.denoiser(A)(x, t.clamp(A.t_min, A.t_max)) - expected).abs().max().item() > 1e-2
    t_matched = A.t_from_log_snr(B.log_snr(t))
    if (A.alpha(t_matched) / B.alpha(t) - 1).abs().max() > 0.1:
        assert (gm.denoiser(A)(x, t_matched) - expected).abs().max().item() > 1e-2


def test_cond_passes_through_and_x_is_rescaled():
    A, B = get_schedule("vp_linear"), get_schedule("edm")
    calls = []

    def D(x, t, cond=None):
        calls.append((x, t, cond))
        return x

    labels = torch.tensor([2, 0, 1])
    t = torch.tensor([0.01, 0.1, 0.5], dtype=F64)
    x = torch.randn(3, 2, 4, dtype=F64)
    reparametrize(D, A, B)(x, t, labels)
    ((x_in, t_in, cond),) = calls
    assert cond is labels
    torch.testing.assert_close(A.log_snr(t_in), B.log_snr(t), rtol=1e-12, atol=0)
    torch.testing.assert_close(x_in, x * A.alpha(t_in)[:, None, None], rtol=1e-14, atol=0)  # alpha_edm = 1


def test_same_schedule_calls_the_denoiser_unchanged():
    """Same class and parameters: the wrapped denoiser sees x and t as they are (bitwise), intervals aside."""
    A = get_schedule("vp_cosine")
    gm = small_mixture(2)
    narrower = A.with_log_snr_range(-5.0, 5.0)
    t = torch.linspace(narrower.t_min, narrower.t_max, 17, dtype=F64)
    x = marginal_points(gm, A, t)
    assert torch.equal(reparametrize(gm.denoiser(A), A, narrower)(x, t), gm.denoiser(A)(x, t))
    with pytest.raises(ValueError, match="outside"):  # the narrower one cannot serve the wider one
        reparametrize(gm.denoiser(narrower), narrower, A)(x, torch.full_like(t, A.t_min))


def test_a_trained_denoiser_keeps_its_network_and_exposes_the_target():
    A, B = get_schedule("flow"), get_schedule("ve")
    net = nn.Linear(1, 1)
    trained = Denoiser(lambda x, lam, cond=None: x, A, "x0")
    trained.net = net
    D = reparametrize(trained, A, B)
    assert D.schedule is B and D.denoiser is trained
    assert any(p is net.weight for p in D.parameters())  # .to(device), .eval() reach the network
    with pytest.raises(ValueError, match="trained on Flow"):
        reparametrize(trained, get_schedule("vp_linear"), B)


@pytest.mark.parametrize("trained, target", [("ve", "flow"), ("vp_linear", "edm"), ("edm", "vp_cosine")])
def test_outside_the_trained_range_raises_naming_it(trained, target):
    A, B = get_schedule(trained), get_schedule(target)
    gm = small_mixture(2)
    lam_lo, lam_hi = A.log_snr_range()
    own_lo, own_hi = B.log_snr_range()
    assert own_lo < lam_lo or own_hi > lam_hi  # the target reaches beyond the trained range
    t = torch.tensor([B.t_min, 0.5, B.t_max], dtype=F64)
    D = reparametrize(gm.denoiser(A), A, B)
    with pytest.raises(ValueError, match=r"outside \[.*\], the range of .*clamp=True") as err:
        D(marginal_points(gm, B, t), t)
    assert f"{lam_lo:.6g}" in str(err.value) and f"{lam_hi:.6g}" in str(err.value)
    t_lo, t_hi = servable_interval(A, B)
    assert f"exact for t in [{t_lo:.6g}, {t_hi:.6g}]" in str(err.value)
    # the servable interval is exactly the part of the target inside the trained range
    torch.testing.assert_close(
        B.log_snr(torch.tensor([t_lo, t_hi], dtype=F64)),
        torch.tensor([min(lam_hi, own_hi), max(lam_lo, own_lo)], dtype=F64),
        rtol=1e-12,
        atol=0,
    )
    inside = torch.linspace(t_lo, t_hi, 9, dtype=F64)
    D(marginal_points(gm, B, inside), inside)  # no error at the interval's ends


def test_clamp_uses_the_nearest_end_warns_once_and_records_it():
    A, B = get_schedule("ve"), get_schedule("flow")  # flow reaches log-SNR 13.8, ve only 9.2
    gm = small_mixture(2)
    D = reparametrize(gm.denoiser(A), A, B, clamp=True)
    t_lo, t_hi = servable_interval(A, B)
    t_in = torch.tensor([0.3, 0.6], dtype=F64)
    D(marginal_points(gm, B, t_in), t_in)
    assert not D.clamped  # inside: exact, nothing clamped
    t = torch.tensor([B.t_min, 0.5, B.t_max], dtype=F64)
    x = marginal_points(gm, B, t)
    with pytest.warns(UserWarning, match="clamped to the nearest end"):
        out = D(x, t)
    assert D.clamped
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        D(x, t)
    # the ends: the trained denoiser at its own end, x rescaled by alpha_trained / alpha_target
    t_ends = torch.tensor([A.t_min, A.t_from_log_snr(B.log_snr(t[1:2])).item(), A.t_max], dtype=F64)
    expected = gm.denoiser(A)(x * (A.alpha(t_ends) / B.alpha(t))[:, None], t_ends)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[1], gm.denoiser(B)(x[1:2], t[1:2])[0], rtol=1e-10, atol=1e-10)
    assert t_lo > B.t_min and t_hi < B.t_max


def test_float32_at_the_range_ends_is_not_clamped():
    """Roundoff at the shared ends (float32 times) is no extrapolation."""
    A, B = get_schedule("vp_linear"), get_schedule("vp_cosine")
    restricted = B.with_log_snr_range(*A.log_snr_range())
    t = torch.tensor([restricted.t_min, restricted.t_max], dtype=torch.float32)
    gm = small_mixture(2)
    out = reparametrize(gm.denoiser(A), A, restricted)(torch.zeros(2, 2), t)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_common_log_snr_range_and_restriction():
    schedules = [get_schedule(name) for name in SCHEDULES]
    lam_lo, lam_hi = common_log_snr_range(*schedules)
    assert lam_lo == max(s.log_snr_range()[0] for s in schedules)
    assert lam_hi == min(s.log_snr_range()[1] for s in schedules)
    for s in schedules:
        r = s.with_log_snr_range(lam_lo, lam_hi)
        assert type(r) is type(s) and s.t_min <= r.t_min < r.t_max <= s.t_max
        torch.testing.assert_close(
            torch.tensor(r.log_snr_range(), dtype=F64),
            torch.tensor([lam_lo, lam_hi], dtype=F64),
            rtol=1e-12,
            atol=0,
        )
        assert (s.t_min, s.t_max) != (r.t_min, r.t_max) or s.log_snr_range() == (lam_lo, lam_hi)
    with pytest.raises(ValueError, match="does not overlap"):
        get_schedule("ve").with_log_snr_range(20.0, 30.0)
    narrow = get_schedule("flow").with_log_snr_range(10.0, 12.0)
    with pytest.raises(ValueError, match="no log-SNR is covered"):
        common_log_snr_range(narrow, get_schedule("flow").with_log_snr_range(-3.0, 0.0))
