"""EDM's samplers, Euler ancestral and DPM-Solver++(3M) / (2M, 3M) SDE against k-diffusion and diffusers.

k-diffusion's samplers are written for alpha = 1 in its sigma: they run here on ``y = x / alpha`` over
``s = sigma / alpha`` with the model ``D_kd(y, s) = D(alpha(t) y, t)``, ``t = t_from_log_snr(-2 log s)``,
on sigmas ``[s_0, ..., s_K, 0]`` (our grid and the closing step that is our final denoising), from
``y = s_0 noise`` = ``x(t_0) / alpha(t_0)``; this covers every schedule. diffusers'
``DPMSolverMultistepScheduler`` expresses VP schedules only (``trained_betas``): it runs on vp_linear and
vp_cosine. Stochastic solvers get the same draws on both sides: ours come from a generator, and the
peer receives the same sequence (a ``noise_sampler``, ``variance_noise`` or a patched
``torch.randn_like``); noise ``z`` added to y with std ``c`` is ``alpha c z`` added to x.
"""

import math

import numpy as np
import pytest
import torch

from difflab import solvers as S
from difflab.schedules import SCHEDULES, get_schedule
from difflab.solvers.dpm import _multistep_coefficients
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

TOL = 1e-9  # float64 on both sides: the measured differences are ~1e-15


@pytest.fixture(scope="module")
def K():
    return k_diffusion_sampling()


# -- k-diffusion, every schedule ----------------------------------------------------------------
# (ours, its options, k-diffusion's sampler, its options, noise steps through a noise_sampler)
KD_CASES = [
    ("heun_edm", {}, "sample_heun", {}),
    ("dpm_solver_3m", {}, "sample_dpmpp_3m_sde", {"eta": 0.0}),
    *[("dpm_solver_2m_sde", {"eta": e}, "sample_dpmpp_2m_sde", {"eta": e}) for e in (0.0, 0.5, 1.0)],
    *[("dpm_solver_3m_sde", {"eta": e}, "sample_dpmpp_3m_sde", {"eta": e}) for e in (0.0, 0.5, 1.0)],
    *[("euler_ancestral", {"eta": e}, "sample_euler_ancestral", {"eta": e}) for e in (0.0, 0.5, 1.0)],
]


@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_matches_k_diffusion_samplers(schedule_name, K):
    """Sample and every state, in float64, against k-diffusion in EDM's variables."""
    schedule, noise = get_schedule(schedule_name), randn(16, 0)
    D = mixture().denoiser(schedule)
    model, sigmas, y0, grid = kd_problem(schedule, D, noise)
    alpha = schedule.alpha(grid)
    for ours, opts, theirs, kd_opts in KD_CASES:
        kd_states = []
        if theirs != "sample_heun":  # the others take a noise_sampler: our draws, in order
            kd_opts = {**kd_opts, "noise_sampler": replay_sampler(draws(noise, 5, STEPS))}
        expected = getattr(K, theirs)(
            model, y0.clone(), sigmas, disable=True, callback=record(kd_states), **kd_opts
        )
        out, states = run_ours(ours, D, schedule, noise, seed=5, **opts)
        assert max_diff(out, expected) < TOL, (ours, opts, max_diff(out, expected))
        # k-diffusion's x at iteration i is y(s_i); ours after step i - 1 is x(t_i) = alpha_i y(s_i)
        assert max_diff(states / alpha[1:, None, None], torch.stack(kd_states[1:])) < TOL, (ours, opts)


def churn_draws(noise, seed, sigmas, o):
    """What k-diffusion's ``sample_heun`` takes from ``torch.randn_like`` at each of its K + 1 iterations:
    our next draw where we churn (steps 0..K-1 with ``s_tmin <= s_i <= s_tmax``), zeros elsewhere."""
    g, out = gen(seed), []
    for i in range(len(sigmas) - 1):
        churn = i < len(sigmas) - 2 and o["s_churn"] > 0 and o["s_tmin"] <= sigmas[i].item() <= o["s_tmax"]
        out.append(S.randn_like(noise, g) if churn else torch.zeros_like(noise))
    return out


@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_edm_stochastic_matches_k_diffusion_sample_heun_with_churn(schedule_name, K, monkeypatch):
    """EDM's Alg. 2 with the same noise; s_tmin stays above every grid's s_K, where k-diffusion would
    churn its closing step and we keep the contract's final D(x(t_K), t_K)."""
    schedule, noise = get_schedule(schedule_name), randn(16, 1)
    D = mixture().denoiser(schedule)
    model, sigmas, y0, _ = kd_problem(schedule, D, noise)
    assert sigmas[STEPS] < 0.05
    spec = S.get_spec("edm_stochastic")
    for opts in (
        {},  # the defaults: EDM's CIFAR-10 VE settings (80, 0.05, 1, 1.007)
        {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003},  # EDM's ImageNet-64
        {"s_churn": 5.0, "s_tmin": 0.1, "s_tmax": math.inf, "s_noise": 1.0},  # churns at s_0 too
    ):
        o = spec.check_options(opts)
        replay = iter(churn_draws(noise, 9, sigmas, o))
        monkeypatch.setattr(torch, "randn_like", lambda x, replay=replay: next(replay))
        expected = K.sample_heun(model, y0.clone(), sigmas, disable=True, **o)
        monkeypatch.undo()
        assert next(replay, None) is None  # k-diffusion drew once per iteration
        out = S.get_solver("edm_stochastic")(
            D, schedule, noise, STEPS, grid="logsnr", generator=gen(9), **opts
        )
        assert max_diff(out, expected) < TOL, (opts, max_diff(out, expected))
        assert max_diff(out, S.get_solver("heun_edm")(D, schedule, noise, STEPS, grid="logsnr")) > 1e-3


# -- diffusers, the VP schedules ------------------------------------------------------------------
N_TRAIN = 1000


def diffusers_scheduler(schedule, first: int, **config):
    """``DPMSolverMultistepScheduler`` on our VP schedule discretised at 1000 steps (``trained_betas``),
    10 steps from training index ``first`` down to index 0 (``sigma_min``), x0 prediction; and our grid:
    the times whose log-SNR is the scheduler's own (float32) sigma at each of its steps."""
    diffusers = pytest.importorskip("diffusers")
    t = torch.arange(N_TRAIN + 1, dtype=torch.float64) / N_TRAIN
    a2 = schedule.alpha(t) ** 2
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=N_TRAIN, trained_betas=(1 - a2[1:] / a2[:-1]).numpy(), lower_order_final=False,
        euler_at_final=False, final_sigmas_type="sigma_min", prediction_type="sample", thresholding=False,
        **config,
    )  # fmt: skip
    scheduler.set_timesteps(timesteps=list(range(first, 0, -100)))
    grid = schedule.t_from_log_snr(-2 * torch.log(scheduler.sigmas.to(torch.float64)))
    assert schedule.t_min <= grid[-1] and grid[0] <= schedule.t_max
    return scheduler, grid


def diffusers_steps(scheduler, D, grid, x, noises=None):
    """diffusers' own ``step`` loop (it computes in float32 inside)."""
    states = []
    for i, step in enumerate(scheduler.timesteps):
        out = scheduler.step(D(x, grid[i].expand(x.shape[0])), step, x, variance_noise=noises and noises[i])
        x = out.prev_sample.to(torch.float64)
        states.append(x)
    return torch.stack(states)


def diffusers_updates(scheduler, D, grid, x, order, noises=None):
    """diffusers' update formulas in float64 (float64 sigmas, our float64 state), in the order its
    ``step`` picks them with ``lower_order_final=False``: order ``min(i + 1, solver_order)`` at step i."""
    scheduler.sigmas = scheduler.sigmas.to(torch.float64)
    updates = (
        scheduler.dpm_solver_first_order_update,
        scheduler.multistep_dpm_solver_second_order_update,
        scheduler.multistep_dpm_solver_third_order_update,
    )
    outputs, states = [], []
    for i in range(len(grid) - 1):
        outputs.append(D(x, grid[i].expand(x.shape[0])))
        scheduler._step_index = i  # the index its update methods read
        k = min(i + 1, order)
        first = outputs[-1] if k == 1 else outputs[-k:]
        x = updates[k - 1](first, sample=x, noise=None if noises is None else noises[i])
        states.append(x)
    return torch.stack(states)


VP = ("vp_linear", "vp_cosine")
# The first training index: 999 is t = 1, where vp_cosine's alpha is 0 (t_max = 0.9946) and where
# float32 alpha-bar puts vp_linear's time a few 1e-8 above 1.
FIRST = 990


@pytest.mark.parametrize("schedule_name", VP)
def test_dpm_solver_3m_and_2m_sde_match_diffusers(schedule_name):
    """dpm_solver_3m = order 3 ``dpmsolver++`` with ``solver_type="heun"`` (its second step is
    k-diffusion's); dpm_solver_2m_sde = order 2 ``sde-dpmsolver++`` (midpoint), eta = 1: state by state,
    to 1e-9 through diffusers' update formulas in float64, and to its float32 precision through ``step``."""
    schedule, noise = get_schedule(schedule_name), randn(16, 2)
    D = mixture().denoiser(schedule)
    for ours, order, config in (
        ("dpm_solver_3m", 3, {"algorithm_type": "dpmsolver++", "solver_type": "heun"}),
        ("dpm_solver_2m_sde", 2, {"algorithm_type": "sde-dpmsolver++", "solver_type": "midpoint"}),
    ):
        scheduler, grid = diffusers_scheduler(schedule, FIRST, solver_order=order, **config)
        noises = draws(noise, 3, 10) if "sde" in config["algorithm_type"] else None
        _, states = run_ours(ours, D, schedule, noise, None, grid=grid, seed=3)
        x_T = schedule.sigma(grid[:1]) * noise
        stepped = diffusers_steps(scheduler, D, grid, x_T, noises)
        assert max_diff(states, stepped) < 1e-6 * max(1.0, stepped.abs().max().item()), ours
        assert max_diff(states, diffusers_updates(scheduler, D, grid, x_T, order, noises)) < TOL, ours
    # diffusers' default midpoint second step differs from k-diffusion's (and ours): the check can fail
    scheduler, grid = diffusers_scheduler(
        schedule, FIRST, solver_order=3, algorithm_type="dpmsolver++", solver_type="midpoint"
    )
    _, states = run_ours("dpm_solver_3m", D, schedule, noise, None, grid=grid)
    assert max_diff(states, diffusers_updates(scheduler, D, grid, schedule.sigma(grid[:1]) * noise, 3)) > 1e-6


@pytest.mark.parametrize("schedule_name", VP)
def test_dpm_solver_3m_sde_matches_diffusers_up_to_its_third_order_weight(schedule_name):
    """Order 3 ``sde-dpmsolver++`` agrees for the first two steps; its third-order step weights d2 by
    ``(1 - e^-H - H)/H^2 - 1/2`` where k-diffusion (and we) use ``-phi_3 = (1 - e^-H - H)/H^2 + 1/2``:
    at step 3 the two differ by exactly ``-alpha_s d2``."""
    schedule, noise = get_schedule(schedule_name), randn(16, 4)
    D = mixture().denoiser(schedule)
    scheduler, grid = diffusers_scheduler(
        schedule, FIRST, solver_order=3, algorithm_type="sde-dpmsolver++", solver_type="heun"
    )
    _, states = run_ours("dpm_solver_3m_sde", D, schedule, noise, None, grid=grid, seed=6)
    x_T = schedule.sigma(grid[:1]) * noise
    theirs = diffusers_updates(scheduler, D, grid, x_T, 3, draws(noise, 6, 10))
    assert max_diff(states[:2], theirs[:2]) < TOL
    lam = schedule.log_snr(grid[:4]).tolist()
    h, h_1, h_2 = ((lam[i + 1] - lam[i]) / 2 for i in (2, 1, 0))
    Ds = [D(x, t.expand(16)) for x, t in zip([x_T, states[0], states[1]], grid[:3])]
    d1_0, d1_1 = (Ds[2] - Ds[1]) * h / h_1, (Ds[1] - Ds[0]) * h / h_2
    d2 = (d1_0 - d1_1) / ((h_1 + h_2) / h)
    assert max_diff(theirs[2] - states[2], -schedule.alpha(grid[3]) * d2) < TOL


# -- the multistep weights ----------------------------------------------------------------------
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_multistep_weights_against_quadrature(eta):
    """``_multistep_coefficients`` applied to a polynomial p through D at lambda_t, lambda_t - h_1,
    lambda_t - h_1 - h_2 vs ``int_0^h (1+eta) e^{-(1+eta)(h-u)} p(u) du`` (Gauss-Legendre): exact for
    constants and lines; the u^2 term gets half its integral, as in Lu et al.'s multistep third-order
    code, diffusers and k-diffusion, so DPM-Solver++(3M) converges at second order (measured below)."""
    nodes, weights = np.polynomial.legendre.leggauss(30)
    for h, h_1, h_2 in ((0.3, 0.3, 0.3), (0.05, 0.04, 0.07), (1.2, 0.8, 0.5)):
        u = (nodes + 1) * h / 2
        kernel = weights * h / 2 * (1 + eta) * np.exp(-(1 + eta) * (h - u))
        for power, share in ((0, 1.0), (1, 1.0), (2, 0.5)):
            exact = float(np.sum(kernel * u**power))
            w = _multistep_coefficients(h, eta, h_1, h_2)
            ours = w[0] * 0.0**power + w[1] * (-h_1) ** power + w[2] * (-h_1 - h_2) ** power
            assert ours == pytest.approx(share * exact, rel=1e-9, abs=1e-15), (h, power)
        w = _multistep_coefficients(h, eta, h_1, None)  # the second step: exact for lines
        assert w[0] + w[1] == pytest.approx(float(np.sum(kernel)), rel=1e-9)
        assert w[1] * (-h_1) == pytest.approx(float(np.sum(kernel * u)), rel=1e-9)
        assert _multistep_coefficients(h, eta, None, None)[0] == pytest.approx(float(np.sum(kernel)))


# -- identities between solvers -------------------------------------------------------------------
def test_special_cases_equal_other_solvers():
    """euler_ancestral is DDIM with the same eta (eta = 1: ddpm); the SDE solvers with eta = 0 are the
    ODE ones; edm_stochastic without churn is heun_edm."""
    schedule, noise = get_schedule("vp_cosine"), randn(32, 7)
    D = mixture().denoiser(schedule)

    def run(name, seed=None, **opts):
        return S.get_solver(name)(D, schedule, noise, 9, grid="edm", generator=seed and gen(seed), **opts)

    for eta in (0.0, 0.3, 1.0):
        assert max_diff(run("euler_ancestral", 4, eta=eta), run("ddim", 4, eta=eta)) < 1e-12
    assert max_diff(run("euler_ancestral", 4), run("ddpm", 4)) < 1e-12
    assert max_diff(run("dpm_solver_2m_sde", eta=0.0), run("dpm_solver_2m")) < 1e-12
    assert max_diff(run("dpm_solver_3m_sde", eta=0.0), run("dpm_solver_3m")) == 0
    assert max_diff(run("edm_stochastic", 4, s_churn=0.0), run("heun_edm")) == 0
    assert max_diff(run("dpm_solver_3m"), run("dpm_solver_2m")) > 1e-4  # the checks can fail


# -- schedule invariance --------------------------------------------------------------------------
INVARIANT = [
    ("heun_edm", {}),
    ("dpm_solver_3m", {}),
    ("dpm_solver_2m_sde", {"eta": 0.0}),
    ("dpm_solver_2m_sde", {}),
    ("dpm_solver_3m_sde", {"eta": 0.0}),
    ("dpm_solver_3m_sde", {"eta": 0.5}),
    ("euler_ancestral", {}),
    ("edm_stochastic", {}),
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
        assert schedule.t_min <= ts[-1] and ts[0] <= schedule.t_max, name
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


# -- convergence order ----------------------------------------------------------------------------
# (solver, options, allowed ratios per doubling on 32 -> 64 -> 128 log-SNR steps)
ORDER = [
    ("heun_edm", {}, (3.5, 5.5)),
    ("dpm_solver_2m_sde", {"eta": 0.0}, (3.5, 5.5)),
    ("euler_ancestral", {"eta": 0.0}, (1.7, 2.5)),
    # nominally third order; the d2 weight (see the quadrature test) leaves an h^3 local error
    ("dpm_solver_3m", {}, (3.5, 5.5)),
    ("dpm_solver_3m_sde", {"eta": 0.0}, (3.5, 5.5)),
]


@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_convergence_order(schedule_name):
    """Mean error against a tight rk45 solution from the same noise on a smooth mixture (std 0.5)."""
    schedule, noise = get_schedule(schedule_name), randn(64, 10, d=2)
    D = smooth_mixture().denoiser(schedule)
    ref = S.sample_rk45(D, schedule, noise, None, rtol=1e-10, atol=1e-10)
    for solver, opts, (lo, hi) in ORDER:
        errs = errors_as_steps_double(solver, D, schedule, noise, ref, **opts)
        ratios = [errs[0] / errs[1], errs[1] / errs[2]]
        assert min(errs) > 1e-9 and all(lo <= r <= hi for r in ratios), (solver, errs, ratios)


# -- randomness, options ------------------------------------------------------------------------
SDE = [("edm_stochastic", {}), ("euler_ancestral", {}), ("dpm_solver_2m_sde", {}), ("dpm_solver_3m_sde", {})]


@pytest.mark.parametrize("solver, opts", SDE)
def test_stochastic_solvers_reproducible_and_rows_batch_independent(solver, opts):
    schedule = get_schedule("ve")
    D, noise = mixture().denoiser(schedule), randn(5, 11)
    run = S.get_solver(solver)
    spec = S.get_spec(solver)
    assert (
        spec.stochastic
        and spec.is_stochastic()
        and not spec.is_stochastic({"eta": 0.0} if "eta" in spec.options else {"s_churn": 0.0})
    )
    a = run(D, schedule, noise, 10, grid="logsnr", generator=gen(11), **opts)
    assert torch.equal(a, run(D, schedule, noise, 10, grid="logsnr", generator=gen(11), **opts))
    assert max_diff(a, run(D, schedule, noise, 10, grid="logsnr", generator=gen(12), **opts)) > 1e-3
    full = run(D, schedule, noise, 10, grid="logsnr", generator=[gen(100 + i) for i in range(5)], **opts)
    part = run(D, schedule, noise[[3, 0]], 10, grid="logsnr", generator=[gen(103), gen(100)], **opts)
    assert max_diff(part, full[[3, 0]]) < 1e-12


def test_options_defaults_and_bad_values():
    edm = S.get_spec("edm_stochastic")
    assert edm.defaults() == {"s_churn": 80.0, "s_tmin": 0.05, "s_tmax": 1.0, "s_noise": 1.007}
    assert edm.check_options({"s_tmax": math.inf})["s_tmax"] == math.inf
    for name in ("euler_ancestral", "dpm_solver_2m_sde", "dpm_solver_3m_sde"):
        assert S.get_spec(name).defaults() == {"eta": 1.0}
    assert S.get_spec("dpm_solver_3m").defaults() == {"third_order": False}
    names = ("heun_edm", "edm_stochastic", "euler_ancestral", "dpm_solver_3m")
    assert [S.nfe(name, 7) for name in names] == [15, 15, 8, 8]
    schedule = get_schedule("flow")
    D, noise = mixture().denoiser(schedule), randn(4, 12)
    with pytest.raises(ValueError, match=r"s_tmax=-1.0 is not allowed; must be a number >= 0.0 or inf"):
        S.get_solver("edm_stochastic")(D, schedule, noise, 5, s_tmax=-1.0)
    with pytest.raises(ValueError, match="s_churn=nan"):
        S.get_solver("edm_stochastic")(D, schedule, noise, 5, s_churn=float("nan"))
    for name in ("euler_ancestral", "dpm_solver_2m_sde", "dpm_solver_3m_sde"):
        with pytest.raises(ValueError, match=rf"{name}: option eta=1.5 is not allowed"):
            S.get_solver(name)(D, schedule, noise, 5, eta=1.5)
    with pytest.raises(ValueError, match="dpm_solver_3m: unknown option 'eta'"):
        S.get_solver("dpm_solver_3m")(D, schedule, noise, 5, eta=0.5)
