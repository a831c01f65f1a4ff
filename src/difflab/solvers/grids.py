"""Time grids, separate from the solvers (k-diffusion's ``get_sigmas_*``): a grid name, a schedule and
a step count give ``steps + 1`` decreasing times; an explicit 1-D tensor of times is checked."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from difflab.schedules import Schedule
from difflab.solvers.registry import check_steps

GRIDS = ("uniform", "logsnr", "edm", "quadratic", "kl_optimal")
EDM_RHO = 7.0


def get_grid(grid: str, schedule: Schedule, steps: int, *, device=None) -> Tensor:
    """``steps + 1`` float64 times, strictly decreasing from ``schedule.t_max`` to ``schedule.t_min``.

    With ``K = steps``, ``i = 0..K`` and ``s = sigma/alpha``:

    - ``"uniform"``: uniform in t;
    - ``"logsnr"``: uniform in log-SNR;
    - ``"edm"``: Karras et al. (2022) rho = 7,
      ``s_i = (s_max^(1/rho) + i/K (s_min^(1/rho) - s_max^(1/rho)))^rho``;
    - ``"quadratic"``: uniform in sqrt(t), ``t_i = (sqrt(t_max) + i/K (sqrt(t_min) - sqrt(t_max)))^2``
      (DPM-Solver's ``skip_type="time_quadratic"``, Lu et al. 2022; DDIM's ``"quad"`` skip, Song et al.
      2021, when t_min = 0): steps shrink linearly towards the data;
    - ``"kl_optimal"``: uniform in ``atan(s)``, ``s_i = tan((1 - i/K) atan(s_max) + i/K atan(s_min))``
      (Sabour et al. 2024, "Align Your Steps"; ComfyUI's ``kl_optimal_scheduler`` with ``n = K + 1``).

    The grids in ``s`` are mapped back to t with ``schedule.t_from_log_snr`` (``lam = -2 log s``)."""
    if grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; valid grids: {', '.join(GRIDS)} or a 1-D tensor of times")
    check_steps(steps)
    f64 = dict(dtype=torch.float64, device=device)
    ends = torch.tensor([schedule.t_max, schedule.t_min], **f64)
    ramp = torch.linspace(0, 1, steps + 1, **f64)  # i / K
    if grid == "uniform":
        ts = torch.linspace(schedule.t_max, schedule.t_min, steps + 1, **f64)
    elif grid == "quadratic":
        root_max, root_min = math.sqrt(schedule.t_max), math.sqrt(schedule.t_min)
        ts = (root_max + ramp * (root_min - root_max)) ** 2
    else:
        lam_noise, lam_data = schedule.log_snr(ends).tolist()  # log-SNR at t_max (low), t_min (high)
        if grid == "logsnr":
            lam = torch.linspace(lam_noise, lam_data, steps + 1, **f64)
        elif grid == "edm":
            lo, hi = math.exp(-lam_noise / 2 / EDM_RHO), math.exp(-lam_data / 2 / EDM_RHO)  # s^(1/rho)
            lam = -2 * EDM_RHO * torch.log(lo + ramp * (hi - lo))  # s = sigma/alpha = exp(-lam/2)
        else:  # kl_optimal
            lo, hi = math.atan(math.exp(-lam_noise / 2)), math.atan(math.exp(-lam_data / 2))  # atan(s)
            lam = -2 * torch.log(torch.tan(lo + ramp * (hi - lo)))
        ts = schedule.t_from_log_snr(lam).to(torch.float64)
    ts[0], ts[-1] = ends[0], ends[1]
    if not (torch.isfinite(ts).all() and (ts[1:] < ts[:-1]).all()):
        raise ValueError(f"grid {grid!r} with {steps} steps is not strictly decreasing for {schedule!r}")
    return ts


def resolve_grid(grid, schedule: Schedule, steps, device) -> Tensor:
    if isinstance(grid, str):
        return get_grid(grid, schedule, steps, device=device)
    if not isinstance(grid, Tensor):
        raise ValueError(
            f"grid={grid!r} must be one of {', '.join(GRIDS)} or a 1-D tensor of decreasing times"
        )
    ts = grid.detach().to(device=device, dtype=torch.float64)
    if ts.ndim != 1 or ts.numel() < 2:
        raise ValueError(f"explicit grid must be 1-D with at least 2 times, got shape {tuple(ts.shape)}")
    if not torch.isfinite(ts).all() or (ts < 0).any() or (ts > 1).any():
        raise ValueError(f"explicit grid times must be finite and inside [0, 1], got {ts.tolist()}")
    if not (ts[1:] < ts[:-1]).all():
        raise ValueError(f"explicit grid must be strictly decreasing (noise to data), got {ts.tolist()}")
    if steps is not None:
        check_steps(steps)
        if steps != ts.numel() - 1:
            raise ValueError(f"steps={steps} disagrees with the explicit grid's {ts.numel() - 1} steps")
    return ts
