"""Adaptive solvers (``steps`` ignored; only the grid's end points count): rk45 (dopri5 on the PF-ODE)
and dpm_adaptive (DPM-Solver-12/23 with a PID step-size controller)."""

from __future__ import annotations

import math

import torch

from difflab.solvers.equations import edm_ode_velocity
from difflab.solvers.registry import Option, register
from difflab.solvers.run import Run
from difflab.solvers.singlestep import _MID_FRACTIONS, _dpm_solver_step, _grid_level, _levels

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
    ``u = log(sigma/alpha)`` it is not. Wrap the denoiser in ``CountingDenoiser`` to read the NFE."""
    from torchdiffeq import odeint

    run = Run(sample_rk45, denoiser, schedule, noise, steps, grid, cond, options)
    x = run.x
    u = torch.tensor([-run.lam[0] / 2, -run.lam[-1] / 2], dtype=x.dtype, device=x.device)  # decreasing

    def rhs(u_now, y):
        return edm_ode_velocity(denoiser, schedule, y, u_now, cond)

    # step_t at the end: the last step lands on it instead of stepping past it and interpolating back,
    # so the denoiser is never asked beyond the schedule's t_min (a reparametrized one would refuse)
    tol = {"rtol": run.opts["rtol"], "atol": run.opts["atol"]}
    y = odeint(rhs, x / run.a[0], u, method="dopri5", options={"step_t": u[-1:]}, **tol)[-1]
    return run.finish(run.a[-1] * y)


class _PIDStepSize:
    """k-diffusion's ``PIDStepSizeController`` (after Söderlind 2003): with ``e_k = 1/(error_k + 1e-8)``
    of this and the last two accepted steps, ``factor = 1 + atan(e_0^b1 e_1^b2 e_2^b3 - 1)``,
    ``b1 = (p + i + d)/order``, ``b2 = -(p + 2 d)/order``, ``b3 = d/order``; ``h <- h factor`` after every
    attempt, which is accepted where ``factor >= accept_safety``."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order, accept_safety, eps=1e-8):
        self.h, self.accept_safety, self.eps = h, accept_safety, eps
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.errs: list[float] = []

    def propose_step(self, error: float) -> bool:
        inv_error = 1 / (error + self.eps)
        if not self.errs:
            self.errs = [inv_error] * 3
        self.errs[0] = inv_error
        factor = 1 + math.atan(
            self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3 - 1
        )
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


@register(
    stochastic=False,
    adaptive=True,
    order=3,
    nfe_rule=None,
    schedule_invariant=True,
    stochastic_if=lambda o: o["eta"] > 0,
    options={
        "order": Option(3, kind=int, choices=(2, 3), doc="3: DPM-Solver-23; 2: DPM-Solver-12"),
        "rtol": Option(0.05, **_TOLERANCE, doc="relative tolerance on y = x/alpha"),
        "atol": Option(0.0078, **_TOLERANCE, doc="absolute tolerance on y = x/alpha"),
        "h_init": Option(0.05, **_TOLERANCE, doc="first step in lam = log(alpha/sigma)"),
        "pcoeff": Option(0.0, doc="PID controller: proportional coefficient"),
        "icoeff": Option(1.0, doc="PID controller: integral coefficient"),
        "dcoeff": Option(0.0, doc="PID controller: derivative coefficient"),
        "accept_safety": Option(0.81, low=0.0, high=1.0, doc="accept a step where the factor >= this"),
        "eta": Option(0.0, low=0.0, high=1.0, doc="ancestral noise per accepted step (0: the ODE)"),
    },
    summary="DPM-Solver-12/23 with adaptive steps in log-SNR (k-diffusion's sample_dpm_adaptive)",
)
def sample_dpm_adaptive(
    denoiser, schedule, noise, steps=None, *, grid="uniform", generator=None, cond=None, **options
):
    """DPM-Solver-23 (or -12) with adaptive step size (Lu et al. 2022, Sec. 3.4 and App. C;
    k-diffusion's ``sample_dpm_adaptive``), noise prediction, in ``lam = log(alpha/sigma)`` from the
    grid's first time to its last (``steps``: 0, None or any int, ignored). Each attempt from ``lam`` to
    ``lam' = min(lam_end, lam + h)`` takes DPM-Solver-3 (r = 1/3, 2/3) and, from the same 3 evaluations,
    DPM-Solver-2 (r = 1/3) (order 2: DPM-Solver-2 and -1, 2 evaluations; ``_dpm_solver_step``), with
    the error in y = x/alpha over the whole batch (the batch shares its steps),

        error = || (y_low - y_high) / max(atol, rtol max(|y_low|, |y_prev|)) ||_2 / sqrt(numel),

    ``y_prev`` the last accepted ``y_low``; ``_PIDStepSize`` accepts or rejects and rescales h. Every
    attempt re-evaluates D at its start, as k-diffusion does, so the NFE is ``order`` per attempt plus
    the final denoising; the loop stops within 1e-5 of ``lam_end``. The defaults are k-diffusion's
    (rtol 0.05, atol 0.0078 for images in [-1, 1]: loose; tighten them for accuracy). With eta > 0 each
    step goes to ``s_down`` and adds ``s_up`` noise in y (k-diffusion's ancestral split of ``s -> s'``,
    ``s_down`` clamped to the end) and the controller uses order 1.5. Wrap the denoiser in
    ``CountingDenoiser`` to read the NFE."""
    run = Run(sample_dpm_adaptive, denoiser, schedule, noise, steps, grid, cond, options)
    o = run.opts
    eta, order = o["eta"], o["order"]
    fractions = _MID_FRACTIONS[order]
    pid = _PIDStepSize(
        o["h_init"], o["pcoeff"], o["icoeff"], o["dcoeff"], 1.5 if eta > 0 else order, o["accept_safety"]
    )
    start, last = _grid_level(run, 0), _grid_level(run, run.K)
    x = run.x
    y_prev = x / start.a
    while start.lam < last.lam - 1e-5:
        lam_next = min(last.lam, start.lam + pid.h)
        lam_down, s_up = lam_next, 0.0
        if eta > 0:  # s_down = s' sqrt(1 - eta^2 m), m = 1 - s'^2/s^2, clamped at the end
            m = -math.expm1(2 * (start.lam - lam_next))
            lam_down = min(last.lam, lam_next - 0.5 * math.log1p(-(eta**2) * m))
            s_up = math.exp(-lam_next) * math.sqrt(-math.expm1(2 * (lam_next - lam_down)))
        h = lam_down - start.lam
        at = [lam_down] if lam_down < last.lam else []
        if lam_next != lam_down:
            at.append(lam_next)
        levels = _levels(run, [start.lam + r * h for r in fractions] + at)
        mids = levels[: len(fractions)]
        end = levels[len(fractions)] if lam_down < last.lam else last
        D = run.denoise(x, start.t)
        x_high, x_low = _dpm_solver_step(run, x, D, start, end, mids, embedded=True)
        y_low = x_low.div_(end.a)
        delta = torch.maximum(y_low.abs(), y_prev.abs()).mul_(o["rtol"]).clamp_(min=o["atol"])
        error = (x_high / end.a).sub_(y_low).div_(delta).norm().item() / math.sqrt(x.numel())
        if not math.isfinite(error):
            raise ValueError(f"dpm_adaptive: the error estimate is {error} at log-SNR {2 * start.lam:.6g}")
        if pid.propose_step(error):
            y_prev, x, start = y_low, x_high, end
            if eta > 0:
                start = levels[-1] if lam_next < last.lam else last
                run.add_noise_(x.mul_(start.a / end.a), start.a * s_up, generator)
    return run.finish(x)
