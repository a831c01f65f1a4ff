"""DPM-Solver++ (Lu et al. 2022): exponential integrators in log-SNR with data prediction."""

from __future__ import annotations

import math

from difflab.solvers._core import _axpby_, _Run, register


@register(
    "dpm_solver_2m",
    stochastic=False,
    order=2,
    schedule_invariant=True,
    summary="DPM-Solver++(2M), data prediction, multistep",
)
def sample_dpm_solver_2m(
    denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options
):
    """DPM-Solver++(2M) (Lu et al. 2022), data prediction, multistep; k-diffusion's ``sample_dpmpp_2m``
    with alpha: ``lambda = log(alpha/sigma)``, ``h = lambda_s - lambda_t``,
    ``x_s = (sigma_s/sigma_t) x_t - alpha_s expm1(-h) D'`` with ``D' = (1 + 1/(2r)) D_t - 1/(2r) D_prev``,
    ``r = h_prev / h`` (first step: ``D' = D_t``)."""
    run = _Run("dpm_solver_2m", denoiser, schedule, noise, steps, grid, cond, options)
    half = [lam / 2 for lam in run.lam]  # lambda = log(alpha / sigma)
    x, D_prev = run.x, None
    for i in range(run.K):
        D = run.D(x, i)
        h = half[i + 1] - half[i]
        c_x, c_D = run.s[i + 1] / run.s[i], -run.a[i + 1] * math.expm1(-h)
        if D_prev is None:
            _axpby_(x, c_x, c_D, D)
        else:  # c_x x + c_D ((1 + 1/(2r)) D - 1/(2r) D_prev), three passes
            r = (half[i] - half[i - 1]) / h
            _axpby_(x, c_x, c_D * (1 + 1 / (2 * r)), D).add_(D_prev, alpha=-c_D / (2 * r))
        D_prev = D  # as k-diffusion: the denoiser returns a fresh tensor per call
        run.report(i, x, D)
    return run.finish(x)
