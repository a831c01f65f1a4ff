"""Reference equivalence: our DDIM / DPM-Solver++(2M) against diffusers' schedulers, step by step.

Both sides run the same exact mixture denoiser over the same times. The diffusers schedulers are
built from our vp_linear discretised at 1000 steps (``trained_betas``); our explicit grid holds the
continuous times whose log-SNR equals the scheduler's own ``alphas_cumprod`` at its timesteps, so
the two trajectories agree up to diffusers' float32 coefficients. diffusers is a dev-only dependency.
"""

import math

import numpy as np
import pytest
import torch

from difflab import solvers as S
from difflab.data.toy import GaussianMixture
from difflab.parametrization import from_x0
from difflab.schedules import get_schedule

diffusers = pytest.importorskip("diffusers")

N_TRAIN = 1000
K = 10
TIMESTEPS = list(range(999, 0, -N_TRAIN // K))  # 999, 899, ..., 99; the last step goes to index 0


def trained_betas(schedule) -> np.ndarray:
    """DDPM betas of our schedule on t_i = i / 1000: 1 - alpha(t_i)^2 / alpha(t_{i-1})^2."""
    t = torch.arange(N_TRAIN + 1, dtype=torch.float64) / N_TRAIN
    a2 = schedule.alpha(t) ** 2
    return (1 - a2[1:] / a2[:-1]).numpy()


def grid_from_alphas_cumprod(schedule, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Our times at the scheduler's discrete alpha-bar: lambda = log(abar / (1 - abar)), t = t(lambda)."""
    abar = alphas_cumprod.to(torch.float64)[TIMESTEPS + [0]]
    # float32 alpha-bar puts t_0 a few 1e-8 above 1
    return schedule.t_from_log_snr(torch.log(abar) - torch.log1p(-abar)).clamp(max=1.0)


def setup():
    schedule = get_schedule("vp_linear")
    angle = torch.arange(3) * 2 * math.pi / 3
    gm = GaussianMixture(torch.stack([angle.cos(), angle.sin(), 0.5 * angle.sin()], dim=1), 0.3)
    noise = torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return schedule, gm.denoiser(schedule), noise


def run_ours(solver, D, schedule, noise, grid, **options):
    states = []
    S.get_solver(solver)(
        D, schedule, noise, None, grid=grid, callback=lambda s: states.append(s["x"]), **options
    )
    return torch.stack(states)  # [K, B, d]


def run_diffusers(scheduler, timesteps, D, schedule, grid, x, noises=None):
    """The diffusers loop; the model returns the eps implied by our denoiser at our grid time."""
    states = []
    for i, step in enumerate(timesteps):
        t = grid[i].expand(x.shape[0])
        eps = from_x0("eps", D(x, t), x, t, schedule)
        kwargs = {} if noises is None else {"eta": 1.0, "variance_noise": noises[i]}
        x = scheduler.step(eps, step, x, **kwargs).prev_sample.to(torch.float64)
        states.append(x)
    return torch.stack(states)


def assert_trajectories_close(ours, theirs, tol=1e-5):
    assert ours.shape == theirs.shape
    worst = (ours - theirs).abs().max().item()
    assert worst < tol * max(1.0, theirs.abs().max().item()), worst


def test_ddim_matches_diffusers_ddim_scheduler():
    schedule, D, noise = setup()
    scheduler = diffusers.DDIMScheduler(
        num_train_timesteps=N_TRAIN,
        trained_betas=trained_betas(schedule),
        clip_sample=False,
        set_alpha_to_one=False,
        timestep_spacing="trailing",
        prediction_type="epsilon",
    )
    scheduler.set_timesteps(K)
    assert scheduler.timesteps.tolist() == TIMESTEPS
    grid = grid_from_alphas_cumprod(schedule, scheduler.alphas_cumprod)
    x_T = schedule.sigma(grid[:1]) * noise
    ours = run_ours("ddim", D, schedule, noise, grid)
    theirs = run_diffusers(scheduler, scheduler.timesteps, D, schedule, grid, x_T)
    assert_trajectories_close(ours, theirs)
    # an off-by-one time mapping would show: shifting the inner times by one training step breaks it
    shifted = grid.clone()
    shifted[1:-1] -= 1 / N_TRAIN
    assert (run_ours("ddim", D, schedule, noise, shifted) - theirs).abs().max() > 1e-4


def test_ddim_eta_one_matches_diffusers_with_the_same_noise():
    schedule, D, noise = setup()
    scheduler = diffusers.DDIMScheduler(
        num_train_timesteps=N_TRAIN,
        trained_betas=trained_betas(schedule),
        clip_sample=False,
        set_alpha_to_one=False,
        timestep_spacing="trailing",
    )
    scheduler.set_timesteps(K)
    grid = grid_from_alphas_cumprod(schedule, scheduler.alphas_cumprod)
    replay = torch.Generator().manual_seed(7)  # our solver draws one [B, d] normal per step
    noises = [S.randn_like(noise, replay) for _ in range(K)]
    states = []
    S.sample_ddim(
        D, schedule, noise, None, grid=grid, eta=1.0, generator=torch.Generator().manual_seed(7),
        callback=lambda s: states.append(s["x"]),
    )  # fmt: skip
    ours = torch.stack(states)
    theirs = run_diffusers(
        scheduler, scheduler.timesteps, D, schedule, grid, schedule.sigma(grid[:1]) * noise, noises
    )
    assert_trajectories_close(ours, theirs)
    # and ddpm, our ancestral sampler, is the same chain
    states.clear()
    S.sample_ddpm(
        D, schedule, noise, None, grid=grid, generator=torch.Generator().manual_seed(7),
        callback=lambda s: states.append(s["x"]),
    )  # fmt: skip
    assert_trajectories_close(torch.stack(states), theirs)


def test_dpm_solver_2m_matches_diffusers_multistep_scheduler():
    schedule, D, noise = setup()
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=N_TRAIN,
        trained_betas=trained_betas(schedule),
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        lower_order_final=False,
        euler_at_final=False,
        final_sigmas_type="sigma_min",
        prediction_type="epsilon",
        thresholding=False,
    )
    scheduler.set_timesteps(timesteps=TIMESTEPS)
    # diffusers' own sigma (float32) at each step, the last being sigma_min (index 0)
    sigmas = scheduler.sigmas.to(torch.float64)
    grid = schedule.t_from_log_snr(-2 * torch.log(sigmas)).clamp(max=1.0)
    assert torch.allclose(
        grid, grid_from_alphas_cumprod(schedule, scheduler.alphas_cumprod), rtol=1e-5, atol=0
    )
    x_T = schedule.sigma(grid[:1]) * noise
    ours = run_ours("dpm_solver_2m", D, schedule, noise, grid)
    theirs = run_diffusers(scheduler, scheduler.timesteps, D, schedule, grid, x_T)
    assert_trajectories_close(ours, theirs)
    # first-order DDIM differs from the second-order multistep: the comparison can fail
    assert (run_ours("ddim", D, schedule, noise, grid) - theirs).abs().max() > 1e-3
