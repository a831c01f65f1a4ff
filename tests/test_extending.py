"""Extending difflab at run time, as README's "Extending difflab" shows: a user schedule (alpha and
sigma only) and a user solver (one function and its spec) join the registries, pass
``config.validate`` with a composed config, and sample through ``sampling.generate``."""

from __future__ import annotations

import math

import pytest
import torch

from difflab import schedules as sched_mod
from difflab import solvers as S
from difflab.config import ConfigError, compose, validate
from difflab.data.toy import small_mixture
from difflab.likelihood import pf_ode_nll
from difflab.sampling import Draw, generate

F64 = torch.float64


class QuadraticVP(sched_mod.Schedule):
    """VP with ``alpha = 1 - t^2``, ``sigma = sqrt(1 - alpha^2)``; alpha(1) = 0, so t_max < 1."""

    name = "quadratic_vp"
    t_max = 0.99

    def alpha(self, t):
        return 1 - t**2

    def sigma(self, t):
        return torch.sqrt(1 - (1 - t**2) ** 2)


def sample_my_euler(
    denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options
):
    """Euler on the PF-ODE in t written with the public pieces only (``get_grid``, ``pf_ode_drift``):
    the same update as the built-in ``euler``; ``final_denoise=False`` returns ``x(t_K)`` itself."""
    opts = S.get_spec("my_euler").check_options(options)
    ts = S.get_grid(grid, schedule, steps, device=noise.device) if isinstance(grid, str) else grid.to(F64)
    x = schedule.sigma(ts[0]) * noise.to(F64)
    for t, t_next in zip(ts[:-1], ts[1:]):
        x = x + (t_next - t) * S.pf_ode_drift(denoiser, schedule, x, t, cond)
    if opts["final_denoise"]:
        t_K = ts[-1].expand(x.shape[0])
        x = denoiser(x, t_K) if cond is None else denoiser(x, t_K, cond)
    return x.to(noise.dtype)


@pytest.fixture
def extended():
    """The new schedule and solver registered for one test, and removed after it."""
    sched_mod.register_schedule(QuadraticVP)
    S.register(
        "my_euler",
        stochastic=False,
        order=1,
        options={"final_denoise": S.Option(True, kind=bool, doc="return D(x(t_K)) rather than x(t_K)")},
        nfe_rule=lambda steps, options: steps + int(options["final_denoise"]),
        summary="Euler on the PF-ODE in t (a user's copy)",
    )(sample_my_euler)
    yield
    S.unregister("my_euler")
    sched_mod.unregister_schedule("quadratic_vp")


def _config_using_them() -> dict:
    cfg = compose(["experiment=smoke"])
    cfg["schedules"].append("quadratic_vp")
    cfg["schedule"]["quadratic_vp"] = {"params": {}}
    cfg["solvers"].append("my_euler")
    cfg["sample"]["options"]["my_euler"] = {"final_denoise": True}
    return cfg


def test_validate_knows_only_registered_names():
    for edit, match in (
        (lambda c: c["schedules"].append("quadratic_vp"), "unknown schedule 'quadratic_vp'"),
        (lambda c: c["solvers"].append("my_euler"), "unknown solver 'my_euler'"),
    ):
        cfg = compose(["experiment=smoke"])
        edit(cfg)
        with pytest.raises(ConfigError, match=match):
            validate(cfg)


def test_registered_schedule_and_solver_join_every_list(extended):
    assert "quadratic_vp" in sched_mod.SCHEDULES and "my_euler" in S.SOLVERS
    cfg = _config_using_them()
    assert validate(cfg) is cfg
    spec = S.get_spec("my_euler")
    assert spec.family == "ode" and spec.defaults() == {"final_denoise": True}
    assert S.nfe("my_euler", 8) == 9 and S.nfe("my_euler", 8, final_denoise=False) == 8
    # the derived quantities of a schedule defined by alpha and sigma alone: the generic inverse
    t = torch.tensor([0.01, 0.3, 0.9], dtype=F64)
    s = sched_mod.get_schedule("quadratic_vp")
    torch.testing.assert_close(s.t_from_log_snr(s.log_snr(t)), t, rtol=0, atol=1e-12)
    torch.testing.assert_close(s.d_alpha(t), -2 * t, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "key, value, match",
    [
        (
            "final_denoise",
            2,
            r"sample\.options\.my_euler\.final_denoise=2 is not allowed; must be true or false",
        ),
        ("final_denoising", True, r"unknown option 'final_denoising'; allowed: final_denoise"),
    ],
)
def test_a_bad_option_of_the_new_solver_is_one_line(extended, key, value, match):
    cfg = _config_using_them()
    cfg["sample"]["options"]["my_euler"] = {key: value}
    with pytest.raises(ConfigError, match=match) as err:
        validate(cfg)
    assert "\n" not in str(err.value) and "my_euler" in str(err.value)


def test_new_solver_samples_as_euler_on_the_new_schedule(extended):
    schedule = sched_mod.get_schedule("quadratic_vp")
    gm = small_mixture(dim=2)
    D = gm.denoiser(schedule)
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    for grid in ("uniform", "logsnr", "edm"):
        mine = S.get_solver("my_euler")(D, schedule, noise, 12, grid=grid)
        torch.testing.assert_close(
            mine, S.sample_euler(D, schedule, noise, 12, grid=grid), rtol=0, atol=1e-12
        )
    # through generate: the same images as euler, NFE counted = the spec's rule
    draw = Draw(32, (2,), seed=3, batch_size=10)
    ours = generate(D, schedule, "my_euler", 12, draw, grid="logsnr")
    ref = generate(D, schedule, "euler", 12, draw, grid="logsnr")
    torch.testing.assert_close(ours.x, ref.x, rtol=0, atol=1e-6)
    assert ours.nfe == S.nfe("my_euler", 12) == 13
    raw = generate(D, schedule, "my_euler", 12, draw, grid="logsnr", options={"final_denoise": False})
    assert raw.nfe == 12 and not torch.allclose(raw.x, ours.x)
    # and the samples are the mixture's: the first two moments within sampling error
    many = generate(D, schedule, "my_euler", 40, Draw(2000, (2,), batch_size=2000), grid="logsnr")
    truth = gm.sample(200_000, torch.Generator().manual_seed(1))
    assert (many.x.double().mean(0) - truth.mean(0)).abs().max() < 4 * truth.std(0).max() / math.sqrt(2000)
    assert (many.x.double().std(0) / truth.std(0) - 1).abs().max() < 0.08


def test_likelihood_under_the_new_schedule(extended):
    """pf_ode_nll on a schedule it has never seen: the ODE's error against log p_{t_min} is small."""
    schedule = sched_mod.get_schedule("quadratic_vp")
    gm = small_mixture(dim=2)
    x0 = gm.sample(6, torch.Generator().manual_seed(2))
    nll, stats = pf_ode_nll(gm.denoiser(schedule), schedule, x0, return_stats=True)
    t_min, t_max = (torch.tensor(v, dtype=F64) for v in (schedule.t_min, schedule.t_max))
    corrected = nll + stats["log_prior"] - gm.marginal_log_prob(stats["x_T"], t_max, schedule)
    torch.testing.assert_close(corrected, -gm.marginal_log_prob(x0, t_min, schedule), rtol=0, atol=1e-3)
