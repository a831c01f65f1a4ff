"""Properties of the schedules: closed forms vs autograd vs finite differences, inverses,
monotonicity, the forward SDE against its transition kernel, SPEC defaults and bad input."""

import math

import pytest
import torch

from difflab import schedules as schedules_module
from difflab.schedules import (
    SCHEDULES,
    Schedule,
    get_schedule,
    register_schedule,
    schedule_class,
    unregister_schedule,
)

F64 = torch.float64


def grid(schedule: Schedule, n: int = 201) -> torch.Tensor:
    return torch.linspace(schedule.t_min, schedule.t_max, n, dtype=F64)


def bare(schedule: Schedule) -> Schedule:
    """The same schedule with only alpha and sigma defined: everything else from the base class."""

    class Bare(Schedule):
        t_min, t_max = schedule.t_min, schedule.t_max

        def alpha(self, t):
            return schedule.alpha(t)

        def sigma(self, t):
            return schedule.sigma(t)

    return Bare()


def central_difference(fn, t: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    return (fn(t + h) - fn(t - h)) / (2 * h)


@pytest.fixture(params=SCHEDULES)
def schedule(request):
    return get_schedule(request.param)


def test_closed_forms_match_base_class_autograd_and_finite_differences(schedule):
    t = grid(schedule)
    generic = bare(schedule)
    a, s = schedule.alpha(t), schedule.sigma(t)
    fd_alpha = central_difference(schedule.alpha, t)
    fd_sigma = central_difference(schedule.sigma, t)
    fd_f = central_difference(lambda u: torch.log(schedule.alpha(u)), t)
    fd_g2 = central_difference(lambda u: schedule.sigma(u) ** 2, t) - 2 * s**2 * fd_f
    expected = {"d_alpha": fd_alpha, "d_sigma": fd_sigma, "f": fd_f, "g2": fd_g2}
    for name, fd in expected.items():
        closed = getattr(schedule, name)(t)
        via_base = getattr(Schedule, name)(schedule, t)  # base-class formula on the closed forms
        via_autograd = getattr(generic, name)(t)  # pure autograd of alpha and sigma
        scale = fd.abs().max().clamp_min(1.0)
        torch.testing.assert_close(closed, via_base, rtol=1e-10, atol=1e-10 * scale, msg=name)
        torch.testing.assert_close(closed, via_autograd, rtol=1e-10, atol=1e-10 * scale, msg=name)
        torch.testing.assert_close(closed, fd, rtol=1e-5, atol=1e-6 * scale, msg=name)
    torch.testing.assert_close(schedule.log_snr(t), torch.log(a**2 / s**2), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(schedule.log_snr(t), Schedule.log_snr(schedule, t), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(schedule.sigma_over_alpha(t), s / a, rtol=1e-10, atol=0)


def test_t_from_log_snr_inverts_log_snr_and_matches_bisection(schedule):
    t = grid(schedule)
    lam = schedule.log_snr(t)
    torch.testing.assert_close(schedule.t_from_log_snr(lam), t, rtol=0, atol=1e-9)
    torch.testing.assert_close(Schedule.t_from_log_snr(schedule, lam), t, rtol=0, atol=1e-9)
    # and the other way round, on log-SNR values spanning the interval
    lams = torch.linspace(lam.min().item(), lam.max().item(), 50, dtype=F64)
    torch.testing.assert_close(schedule.log_snr(schedule.t_from_log_snr(lams)), lams, rtol=1e-9, atol=1e-8)


def test_log_snr_round_trips_to_machine_precision(schedule):
    """Both directions to ~1e-15 relative over the whole interval: reparametrize matches log-SNRs
    across schedules, and vp_cosine near t = 0 needs sigma^2 without 1 - alpha^2 cancellation."""
    lam_lo, lam_hi = schedule.log_snr_range()
    lam = torch.linspace(lam_lo, lam_hi, 1001, dtype=F64)
    lam_err = (schedule.log_snr(schedule.t_from_log_snr(lam)) - lam).abs() / (1 + lam.abs())
    assert lam_err.max() < 1e-13
    t = grid(schedule, 1001)[1:]
    t_err = (schedule.t_from_log_snr(schedule.log_snr(t)) - t).abs() / t
    assert t_err.max() < 1e-13
    assert [lam_lo, lam_hi] == schedule.log_snr(grid(schedule)[[-1, 0]]).tolist()


def test_log_snr_strictly_decreasing_and_f_g2_finite(schedule):
    t = grid(schedule, 2001)
    assert (schedule.log_snr(t).diff() < 0).all()
    f, g2 = schedule.f(t), schedule.g2(t)
    assert torch.isfinite(f).all() and torch.isfinite(g2).all()
    assert (g2 >= 0).all()
    assert (schedule.sigma(t) > 0).all() and (schedule.alpha(t) > 0).all()


@pytest.mark.parametrize("name", ["vp_linear", "vp_cosine"])
def test_vp_schedules_preserve_variance(name):
    schedule = get_schedule(name)
    t = grid(schedule)
    torch.testing.assert_close(schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2, torch.ones_like(t))
    torch.testing.assert_close(schedule.g2(t), -2 * schedule.f(t))  # VP: g^2 = beta = -2 f


def test_defaults_are_specs():
    vp = get_schedule("vp_linear")
    assert (vp.beta_min, vp.beta_max) == (0.1, 20.0)
    assert get_schedule("vp_cosine").s == 0.008
    ve = get_schedule("ve")
    assert (ve.sigma_min, ve.sigma_max) == (0.01, 50.0)
    t = torch.linspace(0.0, 0.99, 12, dtype=F64)
    # vp_linear: alpha = exp(-(beta_min t + (beta_max - beta_min) t^2 / 2) / 2)
    torch.testing.assert_close(vp.alpha(t), torch.exp(-0.5 * (0.1 * t + 9.95 * t**2)))
    # DDPM's discrete 1e-4..0.02 over 1000 steps: alpha_bar_T = prod(1 - beta_i) ~ alpha(1)^2
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=F64)
    assert torch.prod(1 - betas).item() == pytest.approx(
        vp.alpha(torch.tensor(1.0, dtype=F64)).item() ** 2, rel=0.1
    )
    # vp_cosine: alpha_bar = cos^2(pi/2 (t + s)/(1 + s)) / cos^2(pi/2 s/(1 + s))
    c = get_schedule("vp_cosine")
    theta = lambda u: math.pi / 2 * (u + 0.008) / 1.008  # noqa: E731
    torch.testing.assert_close(c.alpha(t) ** 2, torch.cos(theta(t)) ** 2 / math.cos(theta(0.0)) ** 2)
    torch.testing.assert_close(ve.sigma(t), 0.01 * (50 / 0.01) ** t)
    torch.testing.assert_close(ve.alpha(t), torch.ones_like(t))
    flow = get_schedule("flow")
    torch.testing.assert_close(flow.alpha(t), 1 - t)
    torch.testing.assert_close(flow.sigma(t), t)
    # edm: sigma = sigma_max t on [sigma_min / sigma_max, 1], alpha = 1 (Karras et al. 2022)
    edm = get_schedule("edm")
    assert (edm.sigma_min, edm.sigma_max, edm.t_min, edm.t_max) == (0.002, 80.0, 0.002 / 80.0, 1.0)
    torch.testing.assert_close(edm.sigma(t), 80.0 * t)
    torch.testing.assert_close(edm.alpha(t), torch.ones_like(t))
    ends = torch.tensor([edm.t_min, edm.t_max], dtype=F64)
    torch.testing.assert_close(edm.sigma(ends), torch.tensor([0.002, 80.0], dtype=F64))
    assert get_schedule("edm", sigma_min=0.01, sigma_max=50.0).t_min == pytest.approx(0.01 / 50)
    assert get_schedule("edm", t_min=0.1).t_min == 0.1
    for name in SCHEDULES:
        s = get_schedule(name)
        rebuilt = get_schedule(**s.params())
        assert rebuilt.params() == s.params()
        assert 0 <= s.t_min < s.t_max <= 1


def test_user_subclass_with_only_alpha_and_sigma():
    class Quadratic(Schedule):
        """alpha = 1 - t^2, sigma = sqrt(1 - alpha^2) (variance preserving)."""

        t_min, t_max = 1e-3, 0.99

        def alpha(self, t):
            return 1 - t**2

        def sigma(self, t):
            return torch.sqrt(1 - self.alpha(t) ** 2)

    sch = Quadratic()
    t = grid(sch)
    a2, s2 = (1 - t**2) ** 2, 2 * t**2 - t**4
    f = -2 * t / (1 - t**2)
    torch.testing.assert_close(sch.f(t), f)
    torch.testing.assert_close(sch.g2(t), (4 * t - 4 * t**3) - 2 * s2 * f)
    torch.testing.assert_close(sch.g2(t), -2 * f)  # VP
    torch.testing.assert_close(sch.log_snr(t), torch.log(a2 / s2))
    lam = torch.linspace(-6.0, 12.0, 40, dtype=F64)
    # VP: alpha^2 = sigmoid(lambda), so t = sqrt(1 - sqrt(sigmoid(lambda)))
    torch.testing.assert_close(sch.t_from_log_snr(lam), torch.sqrt(1 - torch.sqrt(torch.sigmoid(lam))))


def test_subclass_with_constant_alpha_gets_zero_drift():
    class Exploding(Schedule):
        t_min, t_max = 0.0, 1.0

        def alpha(self, t):
            return torch.ones_like(t)

        def sigma(self, t):
            return 0.1 + t

    t = torch.linspace(0, 1, 5, dtype=F64)
    torch.testing.assert_close(Exploding().f(t), torch.zeros_like(t))
    torch.testing.assert_close(Exploding().g2(t), 2 * (0.1 + t))


def test_euler_maruyama_forward_sde_matches_transition_kernel(schedule):
    """dx = f x dt + g dW from x_s reproduces the kernel's mean (alpha_t/alpha_s) x_s and
    variance sigma_t^2 - (alpha_t/alpha_s)^2 sigma_s^2 (square on the ratio) within Monte-Carlo error."""
    gen = torch.Generator().manual_seed(0)
    n_paths, n_steps, x_s = 20_000, 250, 1.5
    s, t = torch.tensor(0.3, dtype=F64), torch.tensor(0.5, dtype=F64)
    times = torch.linspace(s.item(), t.item(), n_steps + 1, dtype=F64)
    x = torch.full((n_paths,), x_s, dtype=F64)
    for t0, t1 in zip(times[:-1], times[1:]):
        dt = t1 - t0
        x = (
            x
            + schedule.f(t0) * x * dt
            + torch.sqrt(schedule.g2(t0) * dt) * torch.randn(n_paths, generator=gen, dtype=F64)
        )
    ratio = schedule.alpha(t) / schedule.alpha(s)
    mean = ratio * x_s
    var = schedule.sigma(t) ** 2 - ratio**2 * schedule.sigma(s) ** 2
    mean_se, var_se = math.sqrt(var / n_paths), var * math.sqrt(2 / n_paths)
    assert abs(x.mean() - mean) < 5 * mean_se + 2e-3 * abs(mean)
    assert abs(x.var() - var) < 5 * var_se + 3e-3 * var
    if abs(ratio - 1) > 0.1:  # the test has power: the ratio unsquared is rejected (alpha varies)
        wrong = schedule.sigma(t) ** 2 - ratio * schedule.sigma(s) ** 2
        assert abs(x.var() - wrong) > 5 * var_se + 3e-3 * var


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        get_schedule("vp_quadratic")
    assert "vp_quadratic" in str(err.value)
    assert all(name in str(err.value) for name in SCHEDULES)


@pytest.mark.parametrize(
    "name, params, named",
    [
        ("vp_linear", {"beta": 1.0}, "beta"),
        ("ve", {"s": 0.1}, "'s'"),
        ("flow", {"sigma_max": 2.0}, "sigma_max"),
        ("vp_linear", {"beta_min": float("nan")}, "beta_min"),
        ("vp_linear", {"beta_max": float("inf")}, "beta_max"),
        ("vp_linear", {"beta_min": -0.1}, "beta_min"),
        ("vp_linear", {"beta_min": 30.0}, "beta_min"),  # above beta_max: inverted
        ("vp_cosine", {"s": -0.5}, "s="),
        ("ve", {"sigma_min": 0.0}, "sigma_min"),
        ("ve", {"sigma_min": 80.0}, "sigma_min"),  # above sigma_max: inverted
        ("ve", {"sigma_max": "big"}, "sigma_max"),
        ("vp_linear", {"t_min": 0.5, "t_max": 0.4}, "t_min"),
        ("flow", {"t_max": 1.5}, "t_max"),
        ("ve", {"t_min": -0.1}, "t_min"),
        ("vp_cosine", {"t_min": float("nan")}, "t_min"),
        ("edm", {"sigma_min": -1.0}, "sigma_min"),
        ("edm", {"sigma_max": 0.001}, "sigma_min"),  # below sigma_min: inverted
        ("edm", {"t_min": 0.0}, "t_min"),  # sigma(0) = 0
        ("edm", {"beta_min": 0.1}, "beta_min"),
    ],
)
def test_bad_params_raise_value_error_naming_them(name, params, named):
    with pytest.raises(ValueError, match=named):
        get_schedule(name, **params)


def test_customary_prediction_targets_and_recipes():
    expected = {
        "vp_linear": "eps",
        "vp_cosine": "eps",
        "ve": "edm",
        "flow": "velocity",
        "edm": "edm",
        "vp_discrete": "eps",
    }
    assert {name: schedule_class(name).prediction for name in SCHEDULES} == expected
    assert {name: get_schedule(name).prediction for name in SCHEDULES} == expected
    assert Schedule.prediction == "eps" and Schedule.loss_defaults == {}
    assert get_schedule("edm").loss_defaults == {"time_sampling": "lognormal", "weighting": "edm"}
    assert all(get_schedule(name).loss_defaults == {} for name in SCHEDULES if name != "edm")


def test_register_a_schedule_at_run_time():
    @register_schedule
    class Sqrt(Schedule):
        """alpha = 1, sigma = sqrt(t) + 0.01: a VE schedule defined by alpha and sigma only."""

        name, prediction = "test_sqrt", "x0"
        t_min, t_max = 1e-3, 1.0

        def alpha(self, t):
            return torch.ones_like(t)

        def sigma(self, t):
            return torch.sqrt(t) + 0.01

    try:
        assert schedules_module.SCHEDULES[-1] == "test_sqrt" and "test_sqrt" not in SCHEDULES
        s = get_schedule("test_sqrt", t_max=0.5)
        assert isinstance(s, Sqrt) and s.t_max == 0.5 and s.prediction == "x0"
        assert register_schedule(Sqrt) is Sqrt  # the same class again: no-op
        with pytest.raises(ValueError, match="'test_sqrt' is taken by Sqrt"):
            register_schedule(type("Other", (Sqrt,), {}))
        with pytest.raises(ValueError, match="unknown parameter 'sigma_max'"):
            get_schedule("test_sqrt", sigma_max=2.0)
        t = torch.linspace(0.01, 0.5, 5, dtype=F64)
        torch.testing.assert_close(s.g2(t), 2 * (torch.sqrt(t) + 0.01) * 0.5 / torch.sqrt(t))
    finally:
        unregister_schedule("test_sqrt")
    assert "test_sqrt" not in schedules_module.SCHEDULES
    with pytest.raises(ValueError, match="unknown schedule 'test_sqrt'"):
        get_schedule("test_sqrt")


@pytest.mark.parametrize(
    "cls, message",
    [
        (int, "not a Schedule subclass"),
        (type("Nameless", (Schedule,), {}), "own class attribute `name`"),
        (type("BadTarget", (Schedule,), {"name": "bad_target", "prediction": None}), "prediction"),
        (type("Taken", (Schedule,), {"name": "ve"}), "'ve' is taken by VE"),
    ],
)
def test_register_schedule_rejects_bad_classes(cls, message):
    with pytest.raises(ValueError, match=message):
        register_schedule(cls)
    assert SCHEDULES == schedules_module.SCHEDULES
