"""Fitted grids: GITS (dynamic programming over a teacher's trajectories) and DMN (model-free optimised
log-SNR steps), on the exact Gaussian mixture of tests/test_solvers.py.

Measured with the default options (fit on 256 noises, error = mean distance to rk45 at
1e-10 from 2000 other noises; dmn with power 1, where ddim's grid is the log-SNR one; "gits, DP only" is
``polish=0``, the paper's GITS):

    schedule   solver          K   logsnr  edm     gits, DP only  gits    dmn
    vp_linear  ddim            5   0.283   0.316   0.165          0.133   0.283
    vp_linear  ddim            10  0.150   0.176   0.088          0.079   0.150
    vp_linear  dpm_solver_2m   5   0.173   0.211   0.233          0.071   0.134
    vp_linear  dpm_solver_2m   10  0.060   0.150   0.024          0.015   0.048
    vp_cosine  dpm_solver_2m   5   0.168   0.148   0.190          0.051
    edm        dpm_solver_2m   5   0.125   0.235   0.329          0.087   0.226
    edm        dpm_solver_2m   10  0.078   0.171   0.026          0.020   0.059
    vp_linear  ipndm           5   0.179   0.298   0.057          0.042

GITS's one-step cost does not see a multistep solver's history: at 5 steps the DP's grid for dpm_solver_2m
is worse than the log-SNR grid on every schedule tried; polishing the path on the whole run's error (the
default) takes it below both.
"""

import itertools
import math

import pytest
import torch

from difflab import solvers as S
from difflab.data.toy import GaussianMixture
from difflab.schedules import SCHEDULES, get_schedule
from difflab.solvers.fitted import FIT_METHODS, _dmn_weights, _gits_path, _gits_polish, fit_grid


def mixture() -> GaussianMixture:
    """tests/test_solvers.py's mixture: four components on the unit circle, std 0.2."""
    angle = torch.arange(4) * math.pi / 2
    means = torch.stack([angle.cos(), angle.sin()], dim=1)
    return GaussianMixture(means, 0.2, torch.tensor([0.4, 0.3, 0.2, 0.1]))


def randn(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def error(solver, D, schedule, noise, ref, grid, steps=None) -> float:
    return (S.get_solver(solver)(D, schedule, noise, steps, grid=grid) - ref).norm(dim=1).mean().item()


# -- GITS -----------------------------------------------------------------------------------------
def test_gits_path_is_the_brute_force_optimum():
    """Against every path of exactly K steps from candidate 0 to N - 1 on a random cost matrix."""
    g = torch.Generator().manual_seed(0)
    N = 9
    cost = torch.rand(N, N, generator=g, dtype=torch.float64)
    for steps, coeff in itertools.product((1, 2, 4, 8), (1.0, 1.15, 0.8)):
        best = min(
            (sum(coeff**k * cost[a, b].item() for k, (a, b) in enumerate(zip(p, p[1:]))), p)
            for mid in itertools.combinations(range(1, N - 1), steps - 1)
            for p in [(0, *mid, N - 1)]
        )
        path = _gits_path(cost, steps, coeff)
        value = sum(coeff**k * cost[a, b].item() for k, (a, b) in enumerate(zip(path, path[1:])))
        assert value == pytest.approx(best[0], rel=1e-12) and len(path) == steps + 1, (steps, coeff)


def test_gits_polish_descends_to_the_coordinatewise_optimum():
    """On a separable error with its minimum at a known path, the polish reaches that path from the
    DP's and never raises the error; ``polish=0`` returns the path unchanged without evaluating it."""
    target = [0, 7, 8, 15, 20]
    calls = []

    def run_error(path):
        calls.append(path)
        return float(sum((a - b) ** 2 for a, b in zip(path, target)))

    assert _gits_polish([0, 2, 10, 12, 20], run_error, 0) == [0, 2, 10, 12, 20] and not calls
    assert _gits_polish([0, 2, 10, 12, 20], run_error, 3) == target
    # each sweep moves each inner point once, strictly between its neighbours: from a crowded start the
    # optimum takes one sweep per point that has to wait for its right neighbour to move away
    crowded = [0, 1, 2, 3, 20]
    assert _gits_polish(crowded, run_error, 1) == [0, 1, 2, 15, 20]
    assert _gits_polish(crowded, run_error, 2) == [0, 1, 8, 15, 20]
    assert _gits_polish(crowded, run_error, 3) == target


def test_gits_beats_logsnr_and_edm_grids_on_new_noise():
    """Fit on one noise batch, evaluate on another from the same law: GITS's grid (31 candidates here, to
    keep the test fast) has a lower error than both the log-SNR and EDM grids for ddim and dpm_solver_2m
    at 5 and 10 steps (the module docstring's table)."""
    schedule = get_schedule("vp_linear")
    D = mixture().denoiser(schedule)
    fit_noise, noise = randn(64, 1), randn(500, 2)
    ref = S.sample_rk45(D, schedule, noise, None, rtol=1e-8, atol=1e-8)
    for solver, steps in (("ddim", 5), ("ddim", 10), ("dpm_solver_2m", 5), ("dpm_solver_2m", 10)):
        ts = fit_grid("gits", D, schedule, solver, steps, fit_noise, candidates=31)
        ours = error(solver, D, schedule, noise, ref, ts)
        baselines = [error(solver, D, schedule, noise, ref, g, steps) for g in ("logsnr", "edm")]
        assert ours < 0.8 * min(baselines), (solver, steps, ours, baselines)


@pytest.mark.slow
@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_gits_with_default_options_beats_logsnr_and_edm_on_every_schedule(schedule_name):
    schedule = get_schedule(schedule_name)
    D = mixture().denoiser(schedule)
    fit_noise, noise = randn(128, 1), randn(1000, 2)
    ref = S.sample_rk45(D, schedule, noise, None, rtol=1e-9, atol=1e-9)
    for solver, steps in (("ddim", 5), ("ddim", 10), ("dpm_solver_2m", 5), ("dpm_solver_2m", 10)):
        ours = error(solver, D, schedule, noise, ref, fit_grid("gits", D, schedule, solver, steps, fit_noise))
        baselines = [error(solver, D, schedule, noise, ref, g, steps) for g in ("logsnr", "edm")]
        assert ours < 0.8 * min(baselines), (solver, steps, ours, baselines)


# -- DMN ------------------------------------------------------------------------------------------
def test_dmn_weights_integrate_polynomials_exactly():
    """``sum_m J[n, m] D(lambda_{n-m})`` equals ``int e^{lambda - lambda_K} D`` over each step for D of
    degree < q (the step's order), by the closed form of ``int e^u u^k``."""
    lam = torch.tensor([-4.0, -2.5, -0.7, 0.1, 1.9, 3.0], dtype=torch.float64).numpy()
    for p in (1, 2, 3):
        J = _dmn_weights(lam, p)
        for n in range(len(lam) - 1):
            q = min(p, n + 1)
            a, b = lam[n], lam[n + 1]
            for k in range(q):
                # int_a^b e^{u - lam_K} u^k du by the antiderivative e^u sum_i (-1)^i k!/(k-i)! u^(k-i)
                F = [sum((-1) ** i * math.perm(k, i) * x ** (k - i) for i in range(k + 1)) for x in (a, b)]
                exact = math.exp(b - lam[-1]) * F[1] - math.exp(a - lam[-1]) * F[0]
                ours = sum(J[n, m] * lam[n - m] ** k for m in range(q))
                assert ours == pytest.approx(exact, rel=1e-11, abs=1e-13), (p, n, k)


@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_dmn_first_order_with_power_one_is_the_logsnr_grid(schedule_name):
    """For p = 1 and eps = sigma/alpha = e^-lambda the bound is sum_n expm1(h_n) with sum_n h_n fixed:
    convex, least at equal steps, the log-SNR grid."""
    schedule = get_schedule(schedule_name)
    ts = fit_grid("dmn", None, schedule, "ddim", 10, None, power=1.0)
    assert torch.allclose(ts, S.get_grid("logsnr", schedule, 10), rtol=1e-5, atol=1e-7)


def test_dmn_beats_logsnr_and_edm_for_dpm_solver_2m_at_10_steps_and_power_two_helps_ddim():
    """Measured on vp_linear: dpm_solver_2m at 10 steps 0.048 (log-SNR 0.060, EDM 0.151); ddim with
    power = 2 (the paper's latent-space bound) 0.273 / 0.131 at 5 / 10 steps (log-SNR 0.282 / 0.151)."""
    schedule = get_schedule("vp_linear")
    D = mixture().denoiser(schedule)
    noise = randn(1000, 2)
    ref = S.sample_rk45(D, schedule, noise, None, rtol=1e-9, atol=1e-9)
    ours = error(
        "dpm_solver_2m", D, schedule, noise, ref, fit_grid("dmn", D, schedule, "dpm_solver_2m", 10, noise)
    )
    baselines = [error("dpm_solver_2m", D, schedule, noise, ref, g, 10) for g in ("logsnr", "edm")]
    assert ours < 0.9 * min(baselines), (ours, baselines)
    for steps in (5, 10):
        ours = error(
            "ddim", D, schedule, noise, ref, fit_grid("dmn", D, schedule, "ddim", steps, noise, power=2.0)
        )
        assert ours < 0.98 * error("ddim", D, schedule, noise, ref, "logsnr", steps), steps


# -- contract -------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_shape_ends_strict_decrease_and_determinism(schedule_name):
    schedule = get_schedule(schedule_name)
    D = mixture().denoiser(schedule)
    noise = randn(16, 3)
    for method, solver, steps, opts in (
        ("gits", "dpm_solver_2m", 4, {"candidates": 11}),
        ("gits", "ddim", 1, {"candidates": 5, "teacher": "dpm_solver_3m", "candidate_grid": "logsnr"}),
        ("dmn", "dpm_solver_3m", 7, {}),
        ("dmn", "heun_edm", 1, {}),
    ):
        ts = fit_grid(method, D, schedule, solver, steps, noise, **opts)
        assert ts.dtype == torch.float64 and ts.shape == (steps + 1,), (method, ts.shape)
        assert ts[0].item() == schedule.t_max and ts[-1].item() == schedule.t_min
        assert (ts[1:] < ts[:-1]).all(), (method, ts.tolist())
        assert torch.equal(ts, fit_grid(method, D, schedule, solver, steps, noise, **opts))
    # GITS picks its times among the candidates
    candidates = S.get_grid("edm", schedule, 10)
    ts = fit_grid("gits", D, schedule, "ddim", 3, noise, candidates=11, teacher_refine=1)
    assert all((candidates == t).any() for t in ts)


def test_bad_inputs():
    schedule = get_schedule("vp_cosine")
    D, noise = mixture().denoiser(schedule), randn(8, 0)
    with pytest.raises(ValueError, match="unknown fit method 'ays'; valid methods: gits, dmn"):
        fit_grid("ays", D, schedule, "ddim", 5, noise)
    assert FIT_METHODS == ("gits", "dmn")
    for steps in (0, 2.5, True):
        with pytest.raises(ValueError, match=f"steps={steps!r} must be a positive int"):
            fit_grid("dmn", D, schedule, "ddim", steps, noise)
    with pytest.raises(ValueError, match="unknown solver 'nope'"):
        fit_grid("gits", D, schedule, "nope", 5, noise)
    with pytest.raises(ValueError, match="solver 'ddpm' is stochastic; allowed: a deterministic fixed-step"):
        fit_grid("gits", D, schedule, "ddpm", 5, noise)
    with pytest.raises(ValueError, match="solver 'rk45' is adaptive"):
        fit_grid("dmn", D, schedule, "rk45", 5, noise)
    with pytest.raises(ValueError, match="teacher 'euler_maruyama' is stochastic"):
        fit_grid("gits", D, schedule, "ddim", 5, noise, teacher="euler_maruyama")
    with pytest.raises(ValueError, match="candidates=5 allows at most 4 steps, not 5"):
        fit_grid("gits", D, schedule, "ddim", 5, noise, candidates=5)
    with pytest.raises(
        ValueError, match=r"fit_grid\('dmn'\): unknown option 'candidates'; allowed: power, init"
    ):
        fit_grid("dmn", D, schedule, "ddim", 5, noise, candidates=5)
    with pytest.raises(ValueError, match=r"option coeff=0 is not allowed; must be a finite number > 0.0"):
        fit_grid("gits", D, schedule, "ddim", 5, noise, coeff=0)
    with pytest.raises(ValueError, match=r"option candidate_grid='karras' is not allowed; must be one of"):
        fit_grid("gits", D, schedule, "ddim", 5, noise, candidate_grid="karras")
