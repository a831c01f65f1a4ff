"""The "quadratic" and "kl_optimal" grids against their peers' code, closed forms and end points."""

import math

import pytest
import torch

from difflab import solvers as S
from difflab.schedules import SCHEDULES, get_schedule


def dpm_solver_time_quadratic(t_T: float, t_0: float, N: int) -> torch.Tensor:
    """Transcribed from DPM-Solver's reference code (LuChengTHU/dpm-solver, ``dpm_solver_pytorch.py``,
    ``DPM_Solver.get_time_steps``, ``skip_type == 'time_quadratic'``), in float64:

        t_order = 2
        t = torch.linspace(t_T**(1. / t_order), t_0**(1. / t_order), N + 1).pow(t_order).to(device)
    """
    t_order = 2
    return torch.linspace(t_T ** (1.0 / t_order), t_0 ** (1.0 / t_order), N + 1, dtype=torch.float64).pow(
        t_order
    )


def comfyui_kl_optimal_scheduler(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Transcribed from ComfyUI (``comfy/samplers.py``, ``kl_optimal_scheduler``, "Referenced from
    AUTOMATIC1111/stable-diffusion-webui PR 15608"), in float64 where ComfyUI uses float32:

        adj_idxs = torch.arange(n, dtype=torch.float).div_(n - 1)
        sigmas = adj_idxs.new_zeros(n + 1)
        sigmas[:-1] = (adj_idxs * math.atan(sigma_min) + (1 - adj_idxs) * math.atan(sigma_max)).tan_()
        return sigmas

    ``n`` sigmas from sigma_max to sigma_min and a closing 0 (the final denoising for difflab).
    """
    adj_idxs = torch.arange(n, dtype=torch.float64).div_(n - 1)
    sigmas = adj_idxs.new_zeros(n + 1)
    sigmas[:-1] = (adj_idxs * math.atan(sigma_min) + (1 - adj_idxs) * math.atan(sigma_max)).tan_()
    return sigmas


@pytest.mark.parametrize("schedule_name", SCHEDULES)
@pytest.mark.parametrize("K", [1, 5, 12])
def test_quadratic_is_dpm_solvers_time_quadratic(schedule_name, K):
    s = get_schedule(schedule_name)
    ours = S.get_grid("quadratic", s, K)
    theirs = dpm_solver_time_quadratic(s.t_max, s.t_min, K)
    assert torch.allclose(ours, theirs, rtol=1e-13, atol=1e-15), (ours - theirs).abs().max().item()


@pytest.mark.parametrize("schedule_name", SCHEDULES)
@pytest.mark.parametrize("K", [1, 5, 12])
def test_kl_optimal_is_comfyuis_kl_optimal_in_sigma_over_alpha(schedule_name, K):
    """ComfyUI's sigma is EDM's, ``s = sigma/alpha``; its ``n = K + 1`` sigmas are our K + 1 grid times
    (its closing step to 0 is our final denoising)."""
    s = get_schedule(schedule_name)
    ts = S.get_grid("kl_optimal", s, K)
    s_max, s_min = s.sigma_over_alpha(torch.tensor([s.t_max, s.t_min], dtype=torch.float64)).tolist()
    theirs = comfyui_kl_optimal_scheduler(K + 1, s_min, s_max)
    assert theirs[-1] == 0
    ours = s.sigma_over_alpha(ts)
    assert torch.allclose(ours, theirs[:-1], rtol=1e-9, atol=0), ((ours / theirs[:-1]) - 1).abs().max().item()


@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_new_grids_closed_forms_and_ends(schedule_name):
    """Exact end points, strict decrease; sqrt(t) (quadratic) and atan(sigma/alpha) (kl_optimal) are
    linear in the step index; both differ from the uniform and log-SNR grids (the checks can fail)."""
    s, K = get_schedule(schedule_name), 9
    for grid in ("quadratic", "kl_optimal"):
        ts = S.get_grid(grid, s, K)
        assert ts.dtype == torch.float64 and ts.shape == (K + 1,)
        assert ts[0].item() == s.t_max and ts[-1].item() == s.t_min
        assert (ts[1:] < ts[:-1]).all()
        linear = ts.sqrt() if grid == "quadratic" else torch.atan(s.sigma_over_alpha(ts))
        assert torch.allclose(linear.diff(), linear.diff().mean().expand(K), rtol=1e-9, atol=1e-12), grid
        for other in ("uniform", "logsnr"):
            assert (ts - S.get_grid(other, s, K)).abs().max() > 1e-3, (grid, other)


def test_grid_names_and_bad_name():
    assert S.GRIDS == ("uniform", "logsnr", "edm", "quadratic", "kl_optimal")
    with pytest.raises(
        ValueError, match="unknown grid 'karras'; valid grids: uniform, logsnr, edm, quadratic, kl"
    ):
        S.get_grid("karras", get_schedule("vp_linear"), 5)
