"""Samplers in EDM's variables (Karras et al. 2022): ``y = x / alpha`` over ``s = sigma / alpha``, in which
the PF-ODE is ``dy/ds = (y - D(alpha y, t(s))) / s`` with ``t(s) = schedule.t_from_log_snr(-2 log s)``
for every schedule."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from difflab.solvers.registry import Option, register
from difflab.solvers.run import Run, _axpby_, _kernel_ratio

_TWO_PER_STEP = dict(order=2, nfe_rule=lambda steps, options: 2 * steps + 1, schedule_invariant=True)


class _NoiseLevel(Option):
    """A noise level ``s = sigma / alpha >= 0`` that may also be ``float('inf')`` (no bound)."""

    def allowed(self) -> str:
        return f"a number >= {self.low} or inf"

    def check(self, solver: str, key: str, value):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == math.inf:
            return math.inf
        return super().check(solver, key, value)


def _heun_step_(run: Run, i: int, x: Tensor, D: Tensor, a: float, s: float, x_pred: Tensor) -> Tensor:
    """One Heun step in y over s from ``(alpha, s) = (a, s)`` (``x = a y``, ``D`` there) to grid time
    ``t_{i+1}``, in place; ``x_pred`` is a buffer. With ``h = s' - s``, ``r = alpha'/a``:

        x_pred = (sigma'/(a s)) x + alpha' (1 - s'/s) D                    (Euler = DDIM in x)
        x'     = (r/2) x + (1 - s/(2 s')) x_pred - alpha' h/(2 s') D(x_pred, t_{i+1}),

    i.e. ``y' = y + h/2 (d + d')``, ``d = (y - D)/s``, ``d' = (y_pred - D')/s'``."""
    a_next, s_next = run.a[i + 1], run.s[i + 1] / run.a[i + 1]
    h = s_next - s
    torch.mul(x, (a_next / a) * (s_next / s), out=x_pred).add_(D, alpha=a_next * (1 - s_next / s))
    D_pred = run.D(x_pred, i + 1)
    return (
        x.mul_(a_next / (2 * a))
        .add_(x_pred, alpha=1 - s / (2 * s_next))
        .add_(D_pred, alpha=-a_next * h / (2 * s_next))
    )


def _edm_sampler(run: Run, generator) -> Tensor:
    """EDM's Alg. 2 with ``sample_edm_stochastic``'s options (none: no churn, Alg. 1)."""
    o = run.opts
    gamma = min(o.get("s_churn", 0.0) / (run.K + 1), math.sqrt(2) - 1)
    s = [sig / a for sig, a in zip(run.s, run.a)]
    churn = [i for i in range(run.K) if gamma > 0 and o["s_tmin"] <= s[i] <= o["s_tmax"]]
    x = run.x
    hat = {}  # step -> (t_hat [B], alpha_hat, s_hat)
    if churn:
        s_hat = torch.tensor([s[i] * (1 + gamma) for i in churn], dtype=torch.float64, device=x.device)
        t_hat = run.schedule.t_from_log_snr(-2 * torch.log(s_hat)).to(torch.float64)
        a_hat = run.schedule.alpha(t_hat)
        if not (torch.isfinite(t_hat).all() and torch.isfinite(a_hat).all() and (a_hat > 0).all()):
            raise ValueError(
                f"edm_stochastic: churned noise levels {s_hat.tolist()} are outside {run.schedule!r}; "
                "lower s_tmax or s_churn"
            )
        for i, t, a, sh in zip(churn, t_hat, a_hat.tolist(), s_hat.tolist()):
            hat[i] = (t.to(x.dtype).expand(x.shape[0]).contiguous(), a, sh)
    x_pred = torch.empty_like(x)
    for i in range(run.K):
        if i in hat:
            t_b, a, s_from = hat[i]
            x.mul_(a / run.a[i])
            run.add_noise_(x, a * s[i] * math.sqrt((1 + gamma) ** 2 - 1) * o["s_noise"], generator)
            D = run.denoise(x, t_b)
        else:
            a, s_from = run.a[i], s[i]
            D = run.D(x, i)
        _heun_step_(run, i, x, D, a, s_from, x_pred)
        run.report(i, x, D)
    return run.finish(x)


@register(
    stochastic=False,
    **_TWO_PER_STEP,
    summary="EDM's Heun sampler (Alg. 1) in y = x/alpha over s = sigma/alpha",
)
def sample_heun_edm(
    denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options
):
    """EDM's deterministic sampler (Karras et al. 2022, Alg. 1): Heun on ``dy/ds = (y - D)/s``, an Euler
    predictor and a trapezoid corrector per grid step (``_heun_step_``). The final denoising is EDM's
    closing Euler step to ``s = 0`` (``y + (0 - s_K)(y - D)/s_K = D``), so the sample equals k-diffusion's
    ``sample_heun``."""
    run = Run(sample_heun_edm, denoiser, schedule, noise, steps, grid, cond, options)
    return _edm_sampler(run, generator)


@register(
    stochastic=True,
    **_TWO_PER_STEP,
    stochastic_if=lambda o: o["s_churn"] > 0 and o["s_noise"] > 0 and o["s_tmin"] <= o["s_tmax"],
    options={
        "s_churn": Option(80.0, low=0.0, doc="total churn; gamma = min(s_churn / (K + 1), sqrt(2) - 1)"),
        "s_tmin": Option(0.05, low=0.0, doc="churn only where s = sigma/alpha >= s_tmin"),
        "s_tmax": _NoiseLevel(1.0, low=0.0, doc="churn only where s <= s_tmax (inf: no upper bound)"),
        "s_noise": Option(1.007, low=0.0, doc="scale of the added noise (> 1 offsets the denoiser's bias)"),
    },
    summary="EDM's stochastic sampler (Alg. 2): churn then Heun, in y = x/alpha over s = sigma/alpha",
)
def sample_edm_stochastic(
    denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options
):
    """EDM's stochastic sampler (Karras et al. 2022, Alg. 2): at each grid step, where
    ``s_tmin <= s_i <= s_tmax``, raise the noise level to ``s_hat = (1 + gamma) s_i`` with
    ``gamma = min(s_churn / (K + 1), sqrt(2) - 1)`` by adding fresh noise,
    ``y_hat = y + sqrt(s_hat^2 - s_i^2) s_noise z`` (in x: ``x_hat = (alpha_hat/alpha_i) x + alpha_hat
    sqrt(s_hat^2 - s_i^2) s_noise z`` at ``t_hat = t(s_hat)``), then take the Heun step from ``s_hat`` to
    ``s_{i+1}`` (``heun_edm``'s). EDM's N counts the closing step to s = 0, so N = K + 1 here.

    Defaults: EDM's Table 5 values for CIFAR-10 VE, ``s_churn = 80, s_tmin = 0.05, s_tmax = 1,
    s_noise = 1.007`` (VP: 30, 0.01, 1, 1.007; ImageNet-64: 40 or 80, 0.05, 50, 1.003), so the sampler
    churns by default, on ``0.05 <= s <= 1`` only: inside every schedule's range and above every
    default grid's last ``s_K`` (<= 0.0105). k-diffusion's and EDM's code default to no churn
    (0, 0, inf, 1), here ``s_churn=0`` (= ``heun_edm``). ``s_tmax`` may be ``float('inf')`` (no upper
    bound); churning above ``s(t_max)`` asks the denoiser above t_max, as EDM asks above sigma_max.
    The final denoising ``D(x(t_K), t_K)`` is never churned (EDM's settings never churn at its
    s_min = 0.002 < s_tmin either), so where ``s_K`` lies outside ``[s_tmin, s_tmax]`` the sample equals
    k-diffusion's ``sample_heun`` on sigmas ``[s_0, ..., s_K, 0]`` given the same noise."""
    run = Run(sample_edm_stochastic, denoiser, schedule, noise, steps, grid, cond, options)
    return _edm_sampler(run, generator)


@register(
    stochastic=True,
    order=1,
    schedule_invariant=True,
    stochastic_if=lambda o: o["eta"] > 0,
    options={"eta": Option(1.0, low=0.0, high=1.0, doc="0: Euler in y over s (= DDIM); 1: ancestral")},
    summary="Euler ancestral (k-diffusion) in y = x/alpha over s = sigma/alpha",
)
def sample_euler_ancestral(
    denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options
):
    """k-diffusion's ``sample_euler_ancestral`` (Crowson): split ``s -> s'`` into
    ``s_up = eta s' sqrt(1 - s'^2/s^2)``, ``s_down = sqrt(s'^2 - s_up^2)``; Euler to ``s_down``, then
    noise: ``y' = (s_down/s) y + (1 - s_down/s) D + s_up z``. In x (``1 - s'^2/s^2 = 1 - exp(lam - lam')``):

        x' = c x + (alpha' - c alpha) D + sigma' eta sqrt(1 - exp(lam - lam')) z,
        c = (sigma'/sigma) sqrt(1 - eta^2 (1 - exp(lam - lam'))),

    which is DDIM with the same eta (eta = 1: ddpm's posterior). Equals k-diffusion's given the same noise."""
    run = Run(sample_euler_ancestral, denoiser, schedule, noise, steps, grid, cond, options)
    eta = run.opts["eta"]
    x = run.x
    for i in range(run.K):
        D = run.D(x, i)
        em = _kernel_ratio(run, i)  # (s_up / (eta s'))^2
        c = run.s[i + 1] / run.s[i] * math.sqrt(1 - eta**2 * em)  # (alpha'/alpha) s_down / s
        _axpby_(x, c, run.a[i + 1] - c * run.a[i], D)
        if eta > 0:
            run.add_noise_(x, run.s[i + 1] * eta * math.sqrt(em), generator)
        run.report(i, x, D)
    return run.finish(x)
