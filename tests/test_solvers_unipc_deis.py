"""UniPC and DEIS: parity with diffusers' schedulers, schedule invariance, convergence order, options.

Parity: the diffusers schedulers are built from our vp_linear discretised at 1000 steps
(``trained_betas``, as in test_peer_equivalence.py) and our explicit grid holds the continuous times
whose log-SNR equals the scheduler's alpha-bar at its timesteps. diffusers keeps its noise levels
``sigmas`` in float32; fed the same levels in float64 (ours, on the same log-SNR points) the two
trajectories agree to ~1e-14 (every order, 10 and 20 steps); with its own float32 levels to 3e-7
(UniPC) and 1e-6 to 4e-6 at 10 steps (DEIS, whose coefficients are differences of large float32 terms;
5e-5 for order 3 at 20 steps), so that comparison runs at 10 steps. diffusers is a dev-only dependency.
"""

import pytest
import torch

from difflab import solvers as S
from difflab.parametrization import from_x0
from difflab.schedules import get_schedule
from peers import errors_as_steps_double, mixture, randn, smooth_mixture

N_TRAIN = 1000
ORDERS = (1, 2, 3)
# diffusers' class and the flags that make it our solver (the rest at diffusers' defaults:
# UniPC disable_corrector=[], lower_order_final=True; DEIS lower_order_final=True)
PEERS = {
    "unipc": (
        "UniPCMultistepScheduler",
        dict(predict_x0=True, solver_type="bh2", final_sigmas_type="sigma_min"),
    ),
    "deis": ("DEISMultistepScheduler", dict(algorithm_type="deis", solver_type="logrho")),
}


def trajectory(solver, D, schedule, noise, grid, **options) -> torch.Tensor:
    states = []
    S.get_solver(solver)(
        D, schedule, noise, None, grid=grid, callback=lambda s: states.append(s["x"]), **options
    )
    return torch.stack(states)  # [K, B, d]


# -- parity with diffusers ------------------------------------------------------------------------
def trained_betas(schedule):
    """DDPM betas of our schedule on t_i = i / 1000: 1 - alpha(t_i)^2 / alpha(t_{i-1})^2."""
    t = torch.arange(N_TRAIN + 1, dtype=torch.float64) / N_TRAIN
    a2 = schedule.alpha(t) ** 2
    return (1 - a2[1:] / a2[:-1]).numpy()


def peer_run(solver: str, order: int, steps: int, float64: bool):
    """(ours, theirs, ours at another order): the states after each step, ``[K, B, d]``."""
    diffusers = pytest.importorskip("diffusers")
    schedule, (cls, flags) = get_schedule("vp_linear"), PEERS[solver]
    D, noise = mixture(0.3).denoiser(schedule), randn(16, 0)
    scheduler = getattr(diffusers, cls)(
        num_train_timesteps=N_TRAIN, trained_betas=trained_betas(schedule), solver_order=order,
        timestep_spacing="trailing", prediction_type="epsilon", **flags,
    )  # fmt: skip
    scheduler.set_timesteps(steps)
    # our times at its timesteps and at the final index 0 (alpha-bar -> log-SNR -> t)
    abar = scheduler.alphas_cumprod.to(torch.float64)[scheduler.timesteps.tolist() + [0]]
    grid = schedule.t_from_log_snr(torch.log(abar) - torch.log1p(-abar)).clamp(max=1.0)  # t_0: 1 + 1e-8
    ours_levels = schedule.sigma_over_alpha(grid)
    assert torch.allclose(ours_levels, scheduler.sigmas.to(torch.float64), rtol=1e-6, atol=0)
    if float64:
        scheduler.sigmas = ours_levels
    theirs, x = [], schedule.sigma(grid[:1]) * noise
    for i, step in enumerate(scheduler.timesteps):
        t = grid[i].expand(x.shape[0])
        x = scheduler.step(from_x0("eps", D(x, t), x, t, schedule), step, x).prev_sample.to(torch.float64)
        theirs.append(x)
    ours = trajectory(solver, D, schedule, noise, grid, order=order)
    other = trajectory(solver, D, schedule, noise, grid, order=order % 3 + 1)
    return ours, torch.stack(theirs), other


@pytest.mark.parametrize("steps", [10, 20])  # DEIS lowers its final orders only below 15 steps
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("solver", ["unipc", "deis"])
def test_matches_diffusers_in_float64(solver, order, steps):
    ours, theirs, other = peer_run(solver, order, steps, float64=True)
    assert ours.shape == theirs.shape == (steps, 16, 3)
    assert (ours - theirs).abs().max().item() < 1e-10  # measured ~1e-14
    assert (other - theirs).abs().max().item() > 1e-4  # another order: the comparison can fail


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("solver", ["unipc", "deis"])
def test_matches_diffusers_with_its_float32_noise_levels(solver, order):
    """diffusers' own float32 sigmas (3e-7 relative off ours) bound the agreement: measured max abs
    difference 3e-7 (UniPC), 1.1e-6 / 1.1e-6 / 4.2e-6 (DEIS orders 1-3) on states of size ~2."""
    ours, theirs, _ = peer_run(solver, order, 10, float64=False)
    assert (ours - theirs).abs().max().item() < 1e-5


# -- schedule invariance --------------------------------------------------------------------------
INVARIANT_SCHEDULES = ("vp_linear", "vp_cosine", "ve", "flow")


@pytest.mark.parametrize("solver", ["unipc", "deis"])
def test_same_samples_under_every_schedule_on_one_log_snr_grid(solver):
    schedules = [get_schedule(name) for name in INVARIANT_SCHEDULES]
    ends = [s.log_snr(torch.tensor([s.t_max, s.t_min], dtype=torch.float64)).tolist() for s in schedules]
    lam_noise, lam_data = max(lo for lo, _ in ends) + 0.1, min(hi for _, hi in ends) - 0.1
    lam = torch.linspace(lam_noise, lam_data, 13, dtype=torch.float64)  # 12 steps: DEIS lowers its last two
    noise, gm = randn(32, 1), mixture(0.3)
    for order in ORDERS:
        samples = [
            S.get_solver(solver)(gm.denoiser(s), s, noise, None, grid=s.t_from_log_snr(lam), order=order)
            for s in schedules
        ]
        for name, sample in zip(INVARIANT_SCHEDULES[1:], samples[1:]):
            assert (sample - samples[0]).abs().max().item() <= 1e-10, (order, name)
    # a stepper in t on the same grids is not invariant: the check can fail
    euler = [S.sample_euler(gm.denoiser(s), s, noise, None, grid=s.t_from_log_snr(lam)) for s in schedules]
    assert (euler[2] - euler[0]).abs().max().item() > 1e-3


# -- convergence order ----------------------------------------------------------------------------
# Error reduction per step doubling on 32 -> 64 -> 128 steps. UniPC-p is accurate to order p + 1
# (measured /4.0, /7.8-8.0, /13.0-11.8); its last step is a first-order step (lower_order_final), whose
# O(h^2) error has a small constant at high log-SNR but bounds the order at 2 as steps grow: UniPC-3
# falls to /8.4 at 128 -> 256. DEIS-q is of order q (measured /2.0, /3.9, /11.5-8.8).
RATIOS = {
    "unipc": {1: (3.0, 5.5), 2: (6.0, 11.0), 3: (6.0, 20.0)},
    "deis": {1: (1.6, 2.6), 2: (3.0, 5.5), 3: (6.0, 14.0)},
}


def test_convergence_order_as_steps_double():
    s = get_schedule("vp_linear")
    D, noise = smooth_mixture().denoiser(s), randn(64, 4, d=2)
    ref = S.sample_rk45(D, s, noise, None, grid="logsnr", rtol=1e-10, atol=1e-10)
    for solver, bounds in RATIOS.items():
        for order, (lo, hi) in bounds.items():
            errs = errors_as_steps_double(solver, D, s, noise, ref, order=order)
            ratios = [errs[0] / errs[1], errs[1] / errs[2]]
            assert min(errs) > 1e-12 and all(lo <= r <= hi for r in ratios), (solver, order, errs, ratios)


# -- spec, NFE, options ---------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["unipc", "deis"])
def test_spec_nfe_and_order_option(solver):
    spec = S.get_spec(solver)
    assert not spec.stochastic and not spec.adaptive and spec.schedule_invariant
    assert spec.defaults() == {"order": 2} and spec.order == {"unipc": 3, "deis": 2}[solver]
    s = get_schedule("ve")
    for order in ORDERS:
        for steps in (1, 2, 5):
            D = S.CountingDenoiser(mixture(0.3).denoiser(s))
            out = S.get_solver(solver)(D, s, randn(4, 2), steps, order=order)
            assert D.nfe == S.nfe(solver, steps, order=order) == steps + 1
            assert torch.isfinite(out).all()
    D, noise = mixture(0.3).denoiser(s), randn(4, 3)
    for bad in (4, 0, 1.5, True):
        message = rf"{solver}: option order={bad!r} is not allowed; must be an integer in \[1, 3\]"
        with pytest.raises(ValueError, match=message):
            S.get_solver(solver)(D, s, noise, 5, order=bad)
        with pytest.raises(ValueError, match=message):
            S.nfe(solver, 5, order=bad)
