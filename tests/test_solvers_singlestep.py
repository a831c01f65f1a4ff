"""Singlestep DPM-Solvers and k-diffusion's DPM family against k-diffusion and diffusers, in float64.

k-diffusion's samplers run in EDM's variables on every schedule (``peers.kd_problem``: ``y = x / alpha``
over ``s = sigma / alpha``, sigmas ``[s_0, ..., s_K, 0]``), with our noise draws fed to them as theirs.
``sample_dpm_fast`` and ``sample_dpm_adaptive`` build their own log-SNR steps between ``s_min`` and
``s_max`` and return ``y(s_min)`` (no final denoising): our sample is ``D`` at that state. They build
those steps with ``torch.linspace`` and ``torch.tensor``, which follow the default dtype, so they run
under a float64 default. diffusers' ``DPMSolverSinglestepScheduler`` writes its steps for VP schedules;
its update formulas are driven in its VP variables ``x_vp = y / sqrt(1 + s^2)`` on the same noise levels,
which covers every schedule too.
"""

import contextlib
import math

import pytest
import torch

from difflab import solvers as S
from difflab.schedules import SCHEDULES, get_schedule
from peers import (
    STEPS,
    draws,
    errors_as_steps_double,
    gen,
    k_diffusion_sampling,
    kd_problem,
    max_diff,
    mixture,
    randn,
    record,
    replay_sampler,
    run_ours,
    smooth_mixture,
)

TOL = 1e-9  # float64 on both sides


@pytest.fixture(scope="module")
def K():
    return k_diffusion_sampling()


@contextlib.contextmanager
def float64_default():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


class Counting:
    """A k-diffusion model that counts its calls."""

    def __init__(self, model):
        self.model, self.nfe = model, 0

    def __call__(self, y, s, **kwargs):
        self.nfe += 1
        return self.model(y, s)


def final_denoising(schedule, D, grid, y):
    """Our sample from k-diffusion's ``y(s_min)``: ``D(alpha(t_K) y, t_K)``."""
    return D(schedule.alpha(grid[-1]) * y, grid[-1].expand(y.shape[0]))


# -- k-diffusion's fixed-step samplers, every schedule -----------------------------------------------
KD_CASES = [
    ("dpm_solver_2s", {}, "sample_dpmpp_2s_ancestral", {"eta": 0.0}),
    *[
        ("dpm_solver_2s_ancestral", {"eta": e}, "sample_dpmpp_2s_ancestral", {"eta": e})
        for e in (0.0, 0.5, 1.0)
    ],
    ("dpm_2", {}, "sample_dpm_2", {}),
    *[("dpm_2_ancestral", {"eta": e}, "sample_dpm_2_ancestral", {"eta": e}) for e in (0.0, 0.5, 1.0)],
]


@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_matches_k_diffusion_samplers(schedule_name, K):
    """Sample and every state against k-diffusion; the ancestral ones with our draws as its noise."""
    schedule, noise = get_schedule(schedule_name), randn(16, 0)
    D = mixture().denoiser(schedule)
    model, sigmas, y0, grid = kd_problem(schedule, D, noise)
    alpha = schedule.alpha(grid)
    for ours, opts, theirs, kd_opts in KD_CASES:
        kd_states = []
        if "eta" in kd_opts:  # k-diffusion calls its noise_sampler at every step, eta = 0 too (times 0)
            kd_opts = {**kd_opts, "noise_sampler": replay_sampler(draws(noise, 5, STEPS))}
        expected = getattr(K, theirs)(
            model, y0.clone(), sigmas, disable=True, callback=record(kd_states), **kd_opts
        )
        out, states = run_ours(ours, D, schedule, noise, seed=5, **opts)
        assert max_diff(out, expected) < TOL, (ours, opts, max_diff(out, expected))
        # k-diffusion's x at iteration i is y(s_i); ours after step i - 1 is x(t_i) = alpha_i y(s_i)
        assert max_diff(states / alpha[1:, None, None], torch.stack(kd_states[1:])) < TOL, (ours, opts)


def sde_draws(noise, seed, sigmas, r):
    """What our dpm_solver_sde adds at each step, as k-diffusion's two noise_sampler calls:
    ``z_1`` and ``rho z_1 + sqrt(1 - rho^2) z'``, ``rho = sqrt((s_i - s_r)/(s_i - s_{i+1}))``."""
    g, out = gen(seed), []
    for i in range(len(sigmas) - 2):
        h = math.log(sigmas[i] / sigmas[i + 1])
        rho = math.sqrt(math.expm1(-r * h) / math.expm1(-h))
        z_1, z = S.randn_like(noise, g), S.randn_like(noise, g)
        out += [z_1, rho * z_1 + math.sqrt(1 - rho**2) * z]
    return out


@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_dpm_solver_sde_matches_k_diffusion_sample_dpmpp_sde(schedule_name, K):
    """Given the two correlated draws per step that our generator provides, k-diffusion's
    ``sample_dpmpp_sde`` (fed them instead of its Brownian tree) gives our sample and states."""
    schedule, noise = get_schedule(schedule_name), randn(16, 1)
    D = mixture().denoiser(schedule)
    model, sigmas, y0, grid = kd_problem(schedule, D, noise)
    alpha = schedule.alpha(grid)
    for eta, r in ((0.0, 0.5), (0.5, 0.5), (1.0, 0.5), (1.0, 0.3), (1.0, 1.0)):
        replay = sde_draws(noise, 7, sigmas.tolist(), r) if eta > 0 else [torch.zeros_like(noise)] * 2 * STEPS
        kd_states = []
        expected = K.sample_dpmpp_sde(
            model, y0.clone(), sigmas, disable=True, callback=record(kd_states), eta=eta, r=r,
            noise_sampler=replay_sampler(replay),
        )  # fmt: skip
        out, states = run_ours("dpm_solver_sde", D, schedule, noise, seed=7, eta=eta, r=r)
        assert max_diff(out, expected) < TOL, (eta, r, max_diff(out, expected))
        assert max_diff(states / alpha[1:, None, None], torch.stack(kd_states[1:])) < TOL, (eta, r)


def test_brownian_tree_draws_have_the_correlation_dpm_solver_sde_draws_with(K):
    """k-diffusion's default noise for ``sample_dpmpp_sde``: at step ``s_i -> s_{i+1}`` its two draws are
    Brownian increments over ``[s_r, s_i]`` and ``[s_{i+1}, s_i]``, correlation ``rho`` (our z_2's); across
    steps independent. 40000 coordinates of one tree: standard error ~0.005."""
    ns = K.BrownianTreeNoiseSampler(torch.zeros(40000, dtype=torch.float64), 0.01, 10.0, seed=0)
    s_i, s_next, s_after = 2.0, 1.0, 0.5
    for r in (0.5, 0.3):
        s_r = s_i * math.exp(-r * math.log(s_i / s_next))
        z_1, z_2, z_3 = ns(s_i, s_r), ns(s_i, s_next), ns(s_next, s_after)
        rho = math.sqrt(math.expm1(-r * math.log(s_i / s_next)) / math.expm1(-math.log(s_i / s_next)))
        corr = torch.corrcoef(torch.stack([z_1, z_2, z_3]))
        assert abs(corr[0, 1].item() - rho) < 0.02, (r, corr[0, 1].item(), rho)
        assert abs(corr[0, 2].item()) < 0.02 and abs(corr[1, 2].item()) < 0.02
        assert abs(z_1.std().item() - 1) < 0.02 and abs(z_2.std().item() - 1) < 0.02
    assert rho < 0.9  # the two draws differ: independent draws would be a different law


# -- k-diffusion's DPM-Solver-fast and adaptive, every schedule ----------------------------------------
@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_dpm_fast_matches_k_diffusion_sample_dpm_fast(schedule_name, K):
    """M steps with ``remainder`` = k-diffusion's ``n = 3 M - 3 + remainder`` on the log-SNR grid of M
    steps: the same state at s_min, n model calls there and n + 1 here (the final denoising)."""
    schedule, noise = get_schedule(schedule_name), randn(16, 2)
    D = mixture().denoiser(schedule)
    for M, remainder in ((5, 2), (5, 1), (5, 0), (1, 2), (2, 0)):
        model, sigmas, y0, grid = kd_problem(schedule, D, noise, M)
        counting = Counting(model)
        with float64_default():
            y_end = K.sample_dpm_fast(
                counting, y0.clone(), sigmas[M].item(), sigmas[0].item(), 3 * M - 3 + remainder, disable=True
            )
        ours = S.CountingDenoiser(D)
        out, states = run_ours("dpm_fast", ours, schedule, noise, M, remainder=remainder)
        assert counting.nfe == 3 * M - 3 + remainder and ours.nfe == counting.nfe + 1
        assert ours.nfe == S.nfe("dpm_fast", M, remainder=remainder)
        assert max_diff(states[-1] / schedule.alpha(grid[-1]), y_end) < TOL, (M, remainder)
        assert max_diff(out, final_denoising(schedule, D, grid, y_end)) < TOL, (M, remainder)


ADAPTIVE_CASES = [{}, {"rtol": 1e-3, "atol": 1e-4}, {"order": 2, "rtol": 0.01, "atol": 0.001}]


@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_dpm_adaptive_matches_k_diffusion_sample_dpm_adaptive(schedule_name, K):
    """The same accepted steps (the same NFE: k-diffusion's count + 1) and state at s_min, with its
    ``s_min, s_max`` our grid's ends; with eta > 0 our draws are its noise, one per accepted step."""
    schedule, noise = get_schedule(schedule_name), randn(16, 3)
    D = mixture().denoiser(schedule)
    model, sigmas, y0, grid = kd_problem(schedule, D, noise, 1)
    ends = sigmas[1].item(), sigmas[0].item()
    for opts in ADAPTIVE_CASES + [{"eta": 0.5, "rtol": 0.01, "atol": 0.001}]:
        kd_opts = dict(opts)
        if opts.get("eta"):
            kd_opts["noise_sampler"] = replay_sampler(draws(noise, 8, 500))
        with float64_default():
            y_end, info = K.sample_dpm_adaptive(
                model, y0.clone(), *ends, disable=True, return_info=True, **kd_opts
            )
        ours = S.CountingDenoiser(D)
        out = S.get_solver("dpm_adaptive")(ours, schedule, noise, None, generator=gen(8), **opts)
        assert info["n_accept"] > 3 and ours.nfe == info["nfe"] + 1, (opts, info, ours.nfe)
        assert max_diff(out, final_denoising(schedule, D, grid, y_end)) < TOL, (opts, info)


# -- diffusers' singlestep update formulas, every schedule -------------------------------------------
def diffusers_singlestep(schedule, D, grid, noise, order, second="midpoint", last="midpoint"):
    """DPM-Solver++(2S)/(3S) from diffusers' ``DPMSolverSinglestepScheduler`` update formulas in float64:
    per grid step, its sigmas are ``[s_i, s_1, (s_2,) s_{i+1}]`` (the intermediate levels at r = 1/2, or
    1/3 and 2/3, in log-SNR) and its step index selects the pair or triple it reads; the first
    intermediate state comes from ``dpm_solver_first_order_update``, the second from
    ``singlestep_dpm_solver_second_order_update`` (``solver_type=second``), the step's end from the
    second or third order update (``solver_type=last``). Returns the states ``y(s_1..s_K)``."""
    diffusers = pytest.importorskip("diffusers")

    def scheduler(solver_type):
        return diffusers.DPMSolverSinglestepScheduler(
            solver_order=order, algorithm_type="dpmsolver++", solver_type=solver_type,
            prediction_type="sample", thresholding=False,
        )  # fmt: skip

    inner, end = scheduler(second), scheduler(last)
    updates = {
        1: lambda sch, outs, x: sch.dpm_solver_first_order_update(outs[-1], sample=x),
        2: lambda sch, outs, x: sch.singlestep_dpm_solver_second_order_update(outs, sample=x),
        3: lambda sch, outs, x: sch.singlestep_dpm_solver_third_order_update(outs, sample=x),
    }
    fractions = (0.5,) if order == 2 else (1 / 3, 2 / 3)

    def model(x_vp, s):  # diffusers' x = y / sqrt(1 + s^2); D at our x = alpha(t) y
        t = schedule.t_from_log_snr(-2 * torch.log(s))
        return D(schedule.alpha(t) * x_vp * torch.sqrt(1 + s**2), t.expand(x_vp.shape[0]))

    s = schedule.sigma_over_alpha(grid)
    y, states = s[0] * noise, []
    for i in range(len(grid) - 1):
        lam, h = -torch.log(s[i]), torch.log(s[i] / s[i + 1])
        levels = torch.stack([s[i], *(torch.exp(-(lam + r * h)) for r in fractions), s[i + 1]])
        inner.sigmas = end.sigmas = levels
        x = y / torch.sqrt(1 + s[i] ** 2)
        outs = [model(x, levels[0])]
        for k in range(1, order):  # the intermediate states, order k from the step's start
            inner._step_index = k - 1
            outs.append(model(updates[k](inner, outs, x), levels[k]))
        end._step_index = order - 1
        y = updates[order](end, outs, x) * torch.sqrt(1 + s[i + 1] ** 2)
        states.append(y)
    return torch.stack(states)


@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_dpm_solver_2s_3s_match_diffusers_singlestep_updates(schedule_name):
    """dpm_solver_2s = the midpoint second-order update (= the DPM-Solver reference's "dpmsolver" type);
    dpm_solver_3s = the reference's ``singlestep_dpm_solver_third_update``: its x_2 is diffusers'
    ``solver_type="heun"`` second-order update, its x' the ``"midpoint"`` third-order update; diffusers'
    ``"midpoint"`` x_2 differs (the check can fail)."""
    schedule, noise = get_schedule(schedule_name), randn(16, 4)
    D = mixture().denoiser(schedule)
    grid = S.get_grid("logsnr", schedule, STEPS)
    alpha = schedule.alpha(grid)
    _, states = run_ours("dpm_solver_2s", D, schedule, noise)
    assert max_diff(states / alpha[1:, None, None], diffusers_singlestep(schedule, D, grid, noise, 2)) < TOL
    _, states = run_ours("dpm_solver_3s", D, schedule, noise)
    theirs = diffusers_singlestep(schedule, D, grid, noise, 3, second="heun")
    assert max_diff(states / alpha[1:, None, None], theirs) < TOL
    midpoint = diffusers_singlestep(schedule, D, grid, noise, 3)
    assert max_diff(states / alpha[1:, None, None], midpoint) > 1e-6


# -- identities, NFE, schedule invariance ---------------------------------------------------------------
def test_special_cases_and_nfe():
    """eta = 0 turns the ancestral solvers into their ODE namesakes, dpm_solver_sde (r = 1/2) into
    dpm_solver_2s; every solver makes the evaluations its nfe rule says (counted)."""
    schedule, noise = get_schedule("vp_cosine"), randn(32, 6)
    D = mixture().denoiser(schedule)

    def run(name, seed=None, **opts):
        return S.get_solver(name)(D, schedule, noise, 9, grid="edm", generator=seed and gen(seed), **opts)

    assert max_diff(run("dpm_solver_2s_ancestral", eta=0.0), run("dpm_solver_2s")) == 0
    assert max_diff(run("dpm_2_ancestral", eta=0.0), run("dpm_2")) == 0
    assert max_diff(run("dpm_solver_sde", eta=0.0), run("dpm_solver_2s")) < 1e-12
    assert max_diff(run("dpm_solver_sde", eta=0.0, r=0.3), run("dpm_solver_2s")) > 1e-4
    assert max_diff(run("dpm_2"), run("dpm_solver_2s")) > 1e-4
    for name in ("dpm_solver_2s_ancestral", "dpm_2_ancestral", "dpm_solver_sde"):
        spec = S.get_spec(name)
        assert spec.stochastic and spec.is_stochastic() and not spec.is_stochastic({"eta": 0.0})
        assert max_diff(run(name, 3), run(name, 4)) > 1e-3
    assert not S.get_spec("dpm_adaptive").is_stochastic() and S.get_spec("dpm_adaptive").is_stochastic(
        {"eta": 1.0}
    )
    cases = [
        ("dpm_solver_2s", {}, 19), ("dpm_solver_2s_ancestral", {"eta": 1.0}, 19), ("dpm_2", {}, 19),
        ("dpm_2_ancestral", {}, 19), ("dpm_solver_sde", {"r": 0.3}, 19), ("dpm_solver_3s", {}, 28),
        ("dpm_fast", {}, 27), ("dpm_fast", {"remainder": 1}, 26), ("dpm_fast", {"remainder": 0}, 25),
    ]  # fmt: skip
    for name, opts, nfe in cases:
        counting = S.CountingDenoiser(D)
        S.get_solver(name)(counting, schedule, noise, 9, grid="edm", generator=gen(1), **opts)
        assert counting.nfe == S.nfe(name, 9, **opts) == nfe, (name, opts, counting.nfe)


INVARIANT = [
    ("dpm_solver_2s", {}),
    ("dpm_solver_3s", {}),
    ("dpm_solver_2s_ancestral", {}),
    ("dpm_2", {}),
    ("dpm_2_ancestral", {"eta": 0.5}),
    ("dpm_solver_sde", {}),
    ("dpm_solver_sde", {"eta": 0.0, "r": 0.3}),
    ("dpm_fast", {}),
    ("dpm_fast", {"remainder": 0}),
    ("dpm_adaptive", {"rtol": 1e-3, "atol": 1e-4}),
    ("dpm_adaptive", {"eta": 1.0}),
]


def test_same_samples_under_every_schedule_on_one_log_snr_grid():
    """One log-SNR grid inside every schedule's range, mapped to each schedule's times; the same noise
    and generators: the samples agree to 1e-10 (heun in t does not: the check can fail)."""
    lam = torch.linspace(-7.0, 7.5, 11, dtype=torch.float64)
    noise = randn(32, 8)
    runs = {}
    for name in SCHEDULES:
        schedule = get_schedule(name)
        D, ts = mixture().denoiser(schedule), schedule.t_from_log_snr(lam).to(torch.float64)
        for solver, opts in INVARIANT + [("heun", {})]:
            runs[name, solver, str(opts)] = S.get_solver(solver)(
                D, schedule, noise, None, grid=ts, generator=gen(2), **opts
            )
    for solver, opts in INVARIANT:
        assert S.get_spec(solver).schedule_invariant
        base = runs[SCHEDULES[0], solver, str(opts)]
        for name in SCHEDULES[1:]:
            assert max_diff(runs[name, solver, str(opts)], base) < 1e-10, (solver, opts, name)
    assert max_diff(runs["ve", "heun", "{}"], runs["flow", "heun", "{}"]) > 1e-4


# -- convergence order ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smooth_problem():
    """A smooth mixture (std 0.5) under edm, its exact denoiser, noise and a tight rk45 solution."""
    schedule = get_schedule("edm")
    D, noise = smooth_mixture().denoiser(schedule), randn(64, 10, d=2)
    return schedule, D, noise, S.sample_rk45(D, schedule, noise, None, rtol=1e-10, atol=1e-10)


def mean_error(out, ref) -> float:
    return (out - ref).norm(dim=1).mean().item()


# (solver, options, steps, allowed ratios per doubling)
ORDER = [
    ("dpm_solver_2s", {}, (16, 32, 64), (3.5, 4.5)),
    ("dpm_2", {}, (16, 32, 64), (3.5, 4.5)),
    ("dpm_solver_sde", {"eta": 0.0, "r": 0.3}, (16, 32, 64), (3.5, 4.5)),
    ("dpm_solver_3s", {}, (32, 64, 128), (7.0, 9.0)),
    ("dpm_fast", {}, (32, 64, 128), (7.0, 9.0)),
]


def test_convergence_order(smooth_problem):
    """Mean error against the rk45 solution from the same noise, on log-SNR grids as steps double:
    /4 for the second-order solvers, /8 for DPM-Solver++(3S) and DPM-Solver-fast."""
    schedule, D, noise, ref = smooth_problem
    for solver, opts, steps, (lo, hi) in ORDER:
        errs = errors_as_steps_double(solver, D, schedule, noise, ref, steps, **opts)
        ratios = [errs[0] / errs[1], errs[1] / errs[2]]
        assert min(errs) > 1e-9 and all(lo <= r <= hi for r in ratios), (solver, errs, ratios)


def test_dpm_adaptive_tolerance_controls_error_and_nfe(smooth_problem):
    """Tighter tolerances: smaller error against rk45, more evaluations."""
    schedule, D, noise, ref = smooth_problem
    errs, nfes = [], []
    for tol in (1e-2, 1e-4, 1e-6):
        counting = S.CountingDenoiser(D)
        out = S.get_solver("dpm_adaptive")(counting, schedule, noise, None, rtol=tol, atol=tol)
        errs.append(mean_error(out, ref))
        nfes.append(counting.nfe)
    assert errs[0] > 10 * errs[1] > 100 * errs[2] and errs[2] < 1e-5, errs
    assert nfes[0] < nfes[1] < nfes[2], nfes


# -- options ------------------------------------------------------------------------------------------
def test_options_defaults_and_bad_values():
    assert S.get_spec("dpm_solver_sde").defaults() == {"eta": 1.0, "r": 0.5}
    assert S.get_spec("dpm_fast").defaults() == {"remainder": 2}
    assert S.get_spec("dpm_adaptive").defaults() == {
        "order": 3, "rtol": 0.05, "atol": 0.0078, "h_init": 0.05, "pcoeff": 0.0, "icoeff": 1.0,
        "dcoeff": 0.0, "accept_safety": 0.81, "eta": 0.0,
    }  # fmt: skip
    schedule = get_schedule("flow")
    D, noise = mixture().denoiser(schedule), randn(4, 12)
    for name in ("dpm_solver_2s_ancestral", "dpm_2_ancestral", "dpm_solver_sde"):
        with pytest.raises(ValueError, match=rf"{name}: option eta=1.5 is not allowed; must be"):
            S.get_solver(name)(D, schedule, noise, 5, eta=1.5)
    with pytest.raises(
        ValueError, match=r"option r=0.0 is not allowed; must be a finite number in \(0.0, 1.0\]"
    ):
        S.get_solver("dpm_solver_sde")(D, schedule, noise, 5, r=0.0)
    with pytest.raises(ValueError, match="option remainder=3 is not allowed; must be one of 0, 1, 2"):
        S.get_solver("dpm_fast")(D, schedule, noise, 5, remainder=3)
    with pytest.raises(ValueError, match="remainder=0 needs steps >= 2"):
        S.nfe("dpm_fast", 1, remainder=0)
    with pytest.raises(ValueError, match="remainder=0 needs steps >= 2"):
        S.get_solver("dpm_fast")(D, schedule, noise, 1, remainder=0)
    with pytest.raises(ValueError, match="option order=4 is not allowed; must be one of 2, 3"):
        S.get_solver("dpm_adaptive")(D, schedule, noise, None, order=4)
    with pytest.raises(ValueError, match="dpm_adaptive: option rtol=0"):
        S.get_solver("dpm_adaptive")(D, schedule, noise, None, rtol=0)
    with pytest.raises(ValueError, match="dpm_adaptive is adaptive"):
        S.nfe("dpm_adaptive", 10)
    with pytest.raises(ValueError, match="dpm_solver_3s: unknown option 'eta'"):
        S.get_solver("dpm_solver_3s")(D, schedule, noise, 5, eta=0.5)
