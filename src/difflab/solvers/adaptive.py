"""Adaptive PF-ODE solvers (``steps`` ignored; only the grid's end points count)."""

from __future__ import annotations

import torch

from difflab.solvers.equations import edm_ode_velocity
from difflab.solvers.registry import Option, register
from difflab.solvers.run import Run

_TOLERANCE = dict(kind=float, low=0.0, low_open=True)


@register(
    stochastic=False,
    adaptive=True,
    order=5,
    nfe_rule=None,
    schedule_invariant=True,
    options={
        "rtol": Option(1e-5, **_TOLERANCE, doc="dopri5's relative tolerance"),
        "atol": Option(1e-5, **_TOLERANCE, doc="dopri5's absolute tolerance"),
    },
    summary="dopri5 on the PF-ODE in EDM's variables (torchdiffeq), adaptive steps",
)
def sample_rk45(
    denoiser, schedule, noise, steps=None, *, grid="uniform", generator=None, cond=None, **options
):
    """Adaptive PF-ODE with torchdiffeq's dopri5 on ``edm_ode_velocity`` (``steps``: 0, None or any
    int, ignored). In plain t the VP-cosine ODE is stiff near t_max; in ``y = x / alpha`` over
    ``u = log(sigma/alpha)`` it is not. Wrap the denoiser in ``CountingDenoiser`` to read the NFE.
    """
    from torchdiffeq import odeint

    run = Run(sample_rk45, denoiser, schedule, noise, steps, grid, cond, options)
    x = run.x
    u = torch.tensor([-run.lam[0] / 2, -run.lam[-1] / 2], dtype=x.dtype, device=x.device)  # decreasing

    def rhs(u_now, y):
        return edm_ode_velocity(denoiser, schedule, y, u_now, cond)

    # step_t at the end: the last step lands on it instead of stepping past it and interpolating back,
    # so the denoiser is never asked beyond the schedule's t_min (a reparametrized one would refuse)
    y = odeint(
        rhs,
        x / run.a[0],
        u,
        rtol=run.opts["rtol"],
        atol=run.opts["atol"],
        method="dopri5",
        options={"step_t": u[-1:]},
    )[-1]
    return run.finish(run.a[-1] * y)
