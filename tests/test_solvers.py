"""Reverse-time solvers on a Gaussian mixture with the exact denoiser: distribution, order, NFE, RNG."""

import math

import pytest
import torch

from difflab import solvers as S
from difflab.data.toy import GaussianMixture
from difflab.schedules import SCHEDULES, get_schedule

FIXED = tuple(name for name in S.SOLVERS if not S.get_spec(name).adaptive)
STOCHASTIC = tuple(name for name in S.SOLVERS if S.get_spec(name).stochastic)
ODE_FIXED = tuple(name for name in FIXED if not S.get_spec(name).stochastic)


def mixture(std=0.2) -> GaussianMixture:
    angle = torch.arange(4) * math.pi / 2
    means = torch.stack([angle.cos(), angle.sin()], dim=1)  # [4, 2] on the unit circle
    return GaussianMixture(means, std, torch.tensor([0.4, 0.3, 0.2, 0.1]))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(n: int, seed: int, d: int = 2) -> torch.Tensor:
    return torch.randn(n, d, generator=gen(seed), dtype=torch.float64)


def assert_close(actual, expected, rtol=1.3e-6, atol=1e-5):
    """torch.allclose with the worst deviation in the message (torch.testing's first call costs ~5 s)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), (actual - expected).abs().max().item()


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Energy distance 2 E|X-Y| - E|X-X'| - E|Y-Y'| (zero iff equal laws)."""
    return (2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean()).item()


# -- grids ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_grids_closed_forms(schedule_name):
    s = get_schedule(schedule_name)
    K = 12
    for grid in S.GRIDS:
        ts = S.get_grid(grid, s, K)
        assert ts.dtype == torch.float64 and ts.shape == (K + 1,)
        assert ts[0].item() == s.t_max and ts[-1].item() == s.t_min
        assert (ts[1:] < ts[:-1]).all()
    uniform = S.get_grid("uniform", s, K)
    assert_close(uniform.diff(), torch.full((K,), -(s.t_max - s.t_min) / K, dtype=torch.float64))
    lam = s.log_snr(S.get_grid("logsnr", s, K))
    assert_close(lam.diff(), lam.diff().mean().expand(K), rtol=1e-7, atol=1e-7)
    root = s.sigma_over_alpha(S.get_grid("edm", s, K)) ** (1 / 7)  # linear in i for Karras rho = 7
    assert_close(root.diff(), root.diff().mean().expand(K), rtol=1e-7, atol=1e-9)


# -- the equations -------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_drifts_equal_textbook_forms(schedule_name):
    s, gm = get_schedule(schedule_name), mixture()
    D = gm.denoiser(s)
    x = randn(16, 0)
    t = torch.linspace(0.1, 0.9, 16, dtype=torch.float64)
    a, sig = s.alpha(t)[:, None], s.sigma(t)[:, None]
    f, g2 = s.f(t)[:, None], s.g2(t)[:, None]
    score = (a * D(x, t) - x) / sig**2
    assert_close(S.pf_ode_drift(D, s, x, t), f * x - g2 / 2 * score)
    assert_close(S.reverse_sde_drift(D, s, x, t), f * x - g2 * score)


def test_flow_drift_is_finite_at_one_and_equals_x_minus_d_over_t():
    s, D = get_schedule("flow"), mixture().denoiser(get_schedule("flow"))
    x = randn(8, 1)
    for t in (0.5, 1 - 1e-9, 1.0):
        assert_close(S.pf_ode_drift(D, s, x, t), (x - D(x, torch.full((8,), t))) / t)


def test_ddim_is_euler_for_flow_and_eta_one_is_ddpm():
    """Closed forms: for alpha = 1 - t, sigma = t, DDIM's step is exactly Euler's in t; DDIM with
    eta = 1 draws from the same posterior as DDPM (same noise -> same sample)."""
    s = get_schedule("flow")
    D = mixture().denoiser(s)
    noise = randn(32, 2)
    assert_close(S.sample_ddim(D, s, noise, 7), S.sample_euler(D, s, noise, 7), rtol=1e-10, atol=1e-12)
    for name in ("vp_linear", "ve"):
        s = get_schedule(name)
        D = mixture().denoiser(s)
        a = S.sample_ddim(D, s, noise, 9, grid="logsnr", generator=gen(5), eta=1.0)
        b = S.sample_ddpm(D, s, noise, 9, grid="logsnr", generator=gen(5))
        assert_close(a, b, rtol=1e-10, atol=1e-12)


# -- samples match the mixture ----------------------------------------------------------------------
# Steps chosen for a fair pass on the log-SNR grid (Euler in t on VE needs many: its curvature shows).
# Steps that put each solver's discretization error well below the test's null threshold: the
# first-order steppers in t need many, higher orders few (by the spec's order where not listed).
STEPS = {"euler_maruyama": 200, "ddpm": 200, "pc": 100, "euler": 400, "ddim": 100, "heun": 40,
         "dpm_solver_2m": 30, "rk45": None}  # fmt: skip


def steps_for(solver: str) -> int | None:
    spec = S.get_spec(solver)
    if solver in STEPS or spec.adaptive:
        return STEPS.get(solver)
    return 200 if spec.stochastic else {1: 100, 2: 40}.get(spec.order, 20)


N_SAMPLES = 2000


@pytest.fixture(scope="module")
def null_threshold():
    """3x the largest energy distance between two true sample sets of the same size (5 draws).

    (For reference: the exact PF-ODE map of this noise lies at ~0.0024, the null draws at 0.0004-0.0013.)
    """
    gm, g = mixture(), gen(100)
    null = [energy_distance(gm.sample(N_SAMPLES, g), gm.sample(N_SAMPLES, g)) for _ in range(5)]
    return 3 * max(null)


@pytest.mark.parametrize("solver", S.SOLVERS)
@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_samples_match_mixture(schedule_name, solver, null_threshold):
    s, gm = get_schedule(schedule_name), mixture()
    out = S.get_solver(solver)(
        gm.denoiser(s), s, randn(N_SAMPLES, 2), steps_for(solver), grid="logsnr", generator=gen(3)
    )
    assert out.shape == (N_SAMPLES, 2) and out.dtype == torch.float64
    truth = gm.sample(N_SAMPLES, gen(1))
    assert energy_distance(out, truth) < null_threshold


@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_distribution_check_detects_a_coarse_solver(schedule_name, null_threshold):
    """The same check fails for 4 Euler steps: the distance above can fail."""
    s, gm = get_schedule(schedule_name), mixture()
    out = S.sample_euler(gm.denoiser(s), s, randn(N_SAMPLES, 2), 4, grid="logsnr")
    assert energy_distance(out, gm.sample(N_SAMPLES, gen(1))) > 2 * null_threshold


# -- convergence order ---------------------------------------------------------------------------
ORDER = {"euler": (1.6, 2.6), "ddim": (1.6, 2.6), "heun": (3.0, 5.5), "dpm_solver_2m": (3.0, 5.5)}


@pytest.mark.parametrize("grid", ["logsnr", "uniform"])
@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_convergence_order(schedule_name, grid):
    """Error against a tight rk45 solution from the same noise: /2 per step doubling for first-order
    solvers, /4 for second-order ones, on the asymptotic range 32 -> 64 -> 128 steps."""
    s, gm = get_schedule(schedule_name), mixture(0.3)
    D, noise = gm.denoiser(s), randn(64, 4)
    if (schedule_name, grid) == ("edm", "uniform"):
        # edm's sigma = 80 t: uniform in t, the last step alone spans sigma 80/K -> 0.002, so no step
        # count here reaches the asymptotic range (EDM samples on its rho = 7 grid)
        pytest.skip("uniform-in-t grid under edm's sigma = 80 t is not asymptotic at <= 512 steps")
    ref = S.sample_rk45(D, s, noise, None, rtol=1e-10, atol=1e-10)
    for solver, (lo, hi) in ORDER.items():
        if schedule_name == "vp_discrete" and solver == "heun":
            continue  # heun steps in t: second order is lost across vp_discrete's kinks in log alpha
        errs = [
            (S.get_solver(solver)(D, s, noise, k, grid=grid) - ref).norm(dim=1).mean().item()
            for k in (32, 64, 128)
        ]
        ratios = [errs[0] / errs[1], errs[1] / errs[2]]
        assert all(lo <= r <= hi for r in ratios), (solver, errs, ratios)


# -- rk45 on a stiff target ----------------------------------------------------------------------
@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_rk45_stiff_mixture_bounded_nfe_matches_fine_solver(schedule_name):
    s, gm = get_schedule(schedule_name), mixture(0.12)
    D = S.CountingDenoiser(gm.denoiser(s))
    noise = randn(256, 6)
    out = S.sample_rk45(D, s, noise, None)
    assert 20 < D.nfe < 400, D.nfe
    fine = S.sample_dpm_solver_2m(gm.denoiser(s), s, noise, 1000, grid="logsnr")
    assert (out - fine).norm(dim=1).max().item() < 2e-3
    assert (out - fine).norm(dim=1).mean().item() < 2e-4


def test_rk45_tolerance_controls_error():
    s, gm = get_schedule("vp_cosine"), mixture(0.12)
    D, noise = gm.denoiser(s), randn(64, 7)
    ref = S.sample_rk45(D, s, noise, None, rtol=1e-10, atol=1e-10)
    loose, tight = (
        (S.sample_rk45(D, s, noise, 10, rtol=tol, atol=tol) - ref).abs().max().item() for tol in (1e-3, 1e-6)
    )
    assert tight < 1e-4 and tight < loose / 10


# -- randomness, NFE, dtypes ---------------------------------------------------------------------
@pytest.mark.parametrize("solver", STOCHASTIC + ("ddim",))
def test_stochastic_solvers_reproducible(solver):
    s = get_schedule("vp_linear")
    D, noise = mixture().denoiser(s), randn(16, 8)
    opts = {"eta": 0.5} if solver == "ddim" else {}
    run = S.get_solver(solver)
    a = run(D, s, noise, 10, generator=gen(11), **opts)
    b = run(D, s, noise, 10, generator=gen(11), **opts)
    c = run(D, s, noise, 10, generator=gen(12), **opts)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


@pytest.mark.parametrize("solver", STOCHASTIC + ("ddim",))
def test_per_row_generators_make_rows_batch_independent(solver):
    s = get_schedule("ve")
    D, noise = mixture().denoiser(s), randn(5, 9)
    opts = {"eta": 1.0} if solver == "ddim" else {}
    run = S.get_solver(solver)
    full = run(D, s, noise, 12, generator=[gen(100 + i) for i in range(5)], **opts)
    rows = [3, 0]
    part = run(D, s, noise[rows], 12, generator=[gen(100 + i) for i in rows], **opts)
    assert_close(part, full[rows], rtol=1e-12, atol=1e-12)
    alone = run(D, s, noise[[4]], 12, generator=[gen(104)], **opts)
    assert_close(alone, full[[4]], rtol=1e-12, atol=1e-12)


def test_randn_like_one_generator_per_row():
    x = torch.empty(3, 2, 2, dtype=torch.float64)
    z = S.randn_like(x, [gen(1), gen(2), gen(3)])
    assert z.shape == x.shape and z.dtype == torch.float64
    assert_close(z[1], torch.randn(2, 2, generator=gen(2)).double(), rtol=0, atol=0)
    z = S.randn_like(torch.empty(20000, dtype=torch.float64), gen(4))
    assert abs(z.mean().item()) < 0.03 and abs(z.std().item() - 1) < 0.03
    with pytest.raises(ValueError, match="one per row"):
        S.randn_like(x, [gen(1)])


@pytest.mark.parametrize("solver", FIXED)
def test_nfe_equals_counted_evaluations(solver):
    s = get_schedule("flow")
    noise = randn(4, 10)
    for steps in (1, 2, 3, 5, 13):
        D = S.CountingDenoiser(mixture().denoiser(s))
        S.get_solver(solver)(D, s, noise, steps, generator=gen(0))
        assert D.nfe == S.nfe(solver, steps), (steps, D.nfe)
    D = S.CountingDenoiser(mixture().denoiser(s))
    if solver == "pc":
        S.sample_pc(D, s, noise, 5, generator=gen(0), n_corrector=3)
        assert D.nfe == S.nfe("pc", 5, n_corrector=3) == 5 * 4 + 1


def test_nfe_rk45_is_adaptive():
    with pytest.raises(ValueError, match="adaptive"):
        S.nfe("rk45", 10)


@pytest.mark.parametrize("solver", S.SOLVERS)
def test_float64_integration_float32_output_and_cond(solver):
    """The denoiser sees x and t [B] in the integration dtype; the sample comes back in noise's dtype."""
    s, seen = get_schedule("vp_cosine"), []
    inner = mixture().denoiser(s)

    def D(x, t, cond=None):
        seen.append((x.dtype, t.dtype, tuple(t.shape), cond))
        return inner(x, t)

    label = torch.tensor([1, 2, 3])
    out = S.get_solver(solver)(D, s, randn(3, 11).float(), 3, generator=gen(0), cond=label)
    assert out.dtype == torch.float32
    assert all(
        c is label and d == torch.float64 and td == torch.float64 and sh == (3,) for d, td, sh, c in seen
    )
    seen.clear()
    S.get_solver(solver)(D, s, randn(3, 11).float(), 3, generator=gen(0), dtype=torch.float32)
    assert all(d == torch.float32 for d, *_ in seen)


@pytest.mark.parametrize("solver", FIXED)
def test_explicit_grid_equals_named_grid_and_callback_sees_each_step(solver):
    s = get_schedule("vp_linear")
    D, noise = mixture().denoiser(s), randn(8, 12)
    ts = S.get_grid("edm", s, 6)
    calls = []
    a = S.get_solver(solver)(D, s, noise, 6, grid="edm", generator=gen(1), callback=calls.append)
    b = S.get_solver(solver)(D, s, noise, None, grid=ts, generator=gen(1))
    assert_close(a, b, rtol=0, atol=0)
    assert [c["i"] for c in calls] == list(range(6))
    assert calls[-1]["t_next"] == s.t_min and calls[-1]["x"].shape == noise.shape


def test_starts_at_sigma_t0_times_noise():
    s = get_schedule("ve")
    first = []
    D = mixture().denoiser(s)

    def spy(x, t, cond=None):
        if not first:
            first.append((x.clone(), t.clone()))
        return D(x, t)

    noise = randn(4, 13)
    S.sample_euler(spy, s, noise, 3)
    assert_close(first[0][0], 50.0 * noise)
    assert (first[0][1] == 1.0).all()


# -- bad input -----------------------------------------------------------------------------------
def test_bad_input_raises_one_clear_error():
    s = get_schedule("vp_linear")
    D, noise = mixture().denoiser(s), randn(4, 14)
    with pytest.raises(ValueError, match="valid solvers: euler_maruyama, euler, heun"):
        S.get_solver("dpm++")
    with pytest.raises(ValueError, match="valid solvers"):
        S.nfe("dpm++", 3)
    with pytest.raises(ValueError, match="unknown grid 'cosine'; valid grids: uniform, logsnr, edm"):
        S.sample_euler(D, s, noise, 5, grid="cosine")
    for steps in (0, -2, 1.5, True, "10", None):
        with pytest.raises(ValueError, match="steps="):
            S.sample_euler(D, s, noise, steps)
    with pytest.raises(ValueError, match="steps="):
        S.nfe("euler", 0)
    bad_noise = noise.clone()
    bad_noise[1, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        S.sample_ddim(D, s, bad_noise, 5)
    bad_grids = {
        "1-D": torch.ones(2, 2),
        "at least 2": torch.tensor([0.5]),
        "strictly decreasing": torch.tensor([0.2, 0.5, 0.1]),
        "finite": torch.tensor([1.0, float("nan"), 0.1]),
        "inside": torch.tensor([1.5, 0.5, 0.1]),
        "alpha = 0 or sigma = 0": torch.tensor([0.5, 0.0]),
    }
    for message, grid in bad_grids.items():
        with pytest.raises(ValueError, match=message):
            S.sample_euler(D, s, noise, None, grid=grid)
    with pytest.raises(ValueError, match="disagrees"):
        S.sample_euler(D, s, noise, 5, grid=torch.tensor([0.9, 0.5, 0.1]))
    flow = get_schedule("flow")
    with pytest.raises(ValueError, match=r"alpha = 0 .*t_max\] = \[0.001, 0.999\]"):
        S.sample_euler(mixture().denoiser(flow), flow, noise, None, grid=torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match="euler: unknown option 'eta'; allowed: callback, dtype"):
        S.sample_euler(D, s, noise, 5, eta=0.5)
    with pytest.raises(ValueError, match="rk45: unknown option 'snr'"):
        S.sample_rk45(D, s, noise, None, snr=0.1)
    with pytest.raises(ValueError, match="eta=2"):
        S.sample_ddim(D, s, noise, 5, eta=2)
    with pytest.raises(ValueError, match="n_corrector"):
        S.sample_pc(D, s, noise, 5, n_corrector=-1)
    with pytest.raises(ValueError, match="rtol"):
        S.sample_rk45(D, s, noise, None, rtol=0)
    with pytest.raises(ValueError, match="dtype"):
        S.sample_heun(D, s, noise, 5, dtype=torch.float16)


@pytest.mark.parametrize("solver", FIXED)
def test_in_place_state_survives_a_denoiser_that_returns_its_input(solver):
    """Solvers update x in place; a denoiser returning x itself (or a view) must not be corrupted."""
    s, noise = get_schedule("vp_linear"), randn(6, 15)
    same = S.get_solver(solver)(lambda x, t, cond=None: x, s, noise, 4, generator=gen(2))
    copy = S.get_solver(solver)(lambda x, t, cond=None: x.clone(), s, noise, 4, generator=gen(2))
    assert torch.equal(same, copy)
