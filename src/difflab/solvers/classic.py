"""The classic solvers: SDE and PF-ODE steppers in t (euler_maruyama, euler, heun, pc), whose samples
depend on the schedule, and the Gaussian-posterior samplers in log-SNR (ddpm, ddim), which use only
alpha, sigma and log-SNR at the grid times and do not."""

from __future__ import annotations

import math

import torch

from difflab.solvers.equations import _pf_coefficients, _sde_coefficients
from difflab.solvers.registry import Option, register
from difflab.solvers.run import Run, _axpby_, _kernel_ratio


@register(stochastic=True, order=1, summary="Euler-Maruyama on the reverse SDE in t")
def sample_euler_maruyama(
    denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options
):
    """Euler-Maruyama on the reverse SDE in t: ``x' = x - h [f x - g2 score] + sqrt(g2 h) z``, h = t - t'."""
    run = Run(sample_euler_maruyama, denoiser, schedule, noise, steps, grid, cond, options)
    c_x, c_D = (c.tolist() for c in _sde_coefficients(schedule, run.ts))
    g2 = schedule.g2(run.ts).tolist()
    x = run.x
    for i in range(run.K):
        h = run.t[i] - run.t[i + 1]
        D = run.D(x, i)
        run.add_noise_(_axpby_(x, 1 - h * c_x[i], -h * c_D[i], D), math.sqrt(g2[i] * h), generator)
        run.report(i, x, D)
    return run.finish(x)


@register(stochastic=False, order=1, summary="Euler on the PF-ODE in t")
def sample_euler(denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options):
    """Euler on the PF-ODE in t: ``x' = x + (t' - t) (c_x x + c_D D)``."""
    run = Run(sample_euler, denoiser, schedule, noise, steps, grid, cond, options)
    c_x, c_D = (c.tolist() for c in _pf_coefficients(schedule, run.ts))
    x = run.x
    for i in range(run.K):
        h = run.t[i + 1] - run.t[i]
        D = run.D(x, i)
        _axpby_(x, 1 + h * c_x[i], h * c_D[i], D)
        run.report(i, x, D)
    return run.finish(x)


@register(
    stochastic=False,
    order=2,
    nfe_rule=lambda steps, options: 2 * steps + 1,
    summary="Heun on the PF-ODE in t",
)
def sample_heun(denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options):
    """Heun on the PF-ODE in t (Karras et al. 2022, Alg. 1): Euler predictor, trapezoid corrector; every
    step is corrected (the last one ends at t_min > 0, not at sigma = 0)."""
    run = Run(sample_heun, denoiser, schedule, noise, steps, grid, cond, options)
    c_x, c_D = (c.tolist() for c in _pf_coefficients(schedule, run.ts))
    x = run.x
    d, x_pred = torch.empty_like(x), torch.empty_like(x)
    for i in range(run.K):
        h = run.t[i + 1] - run.t[i]
        D = run.D(x, i)
        torch.mul(x, c_x[i], out=d).add_(D, alpha=c_D[i])  # d = drift(x, t_i)
        torch.add(x, d, alpha=h, out=x_pred)
        D_pred = run.D(x_pred, i + 1)
        d.add_(x_pred, alpha=c_x[i + 1]).add_(D_pred, alpha=c_D[i + 1])  # d + drift(x_pred, t_{i+1})
        x.add_(d, alpha=h / 2)
        run.report(i, x, D)
    return run.finish(x)


@register(
    stochastic=True,
    order=1,
    schedule_invariant=True,
    summary="ancestral sampling from the Gaussian posterior (any schedule)",
)
def sample_ddpm(denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options):
    """Ancestral sampling from the Gaussian posterior ``q(x_s | x_t, x0 = D)`` of the transition kernel:
    with ``r = exp(lam_t - lam_s) = (alpha_t/alpha_s)^2 sigma_s^2 / sigma_t^2``, variance
    ``sigma_s^2 (1 - r)`` and mean ``alpha_s (1 - r) D + (alpha_t sigma_s^2 / (alpha_s sigma_t^2)) x_t``."""
    run = Run(sample_ddpm, denoiser, schedule, noise, steps, grid, cond, options)
    x = run.x
    for i in range(run.K):
        D = run.D(x, i)
        a_t, s_t, a_s, s_s = run.a[i], run.s[i], run.a[i + 1], run.s[i + 1]
        em = _kernel_ratio(run, i)
        _axpby_(x, a_t * s_s**2 / (a_s * s_t**2), a_s * em, D)  # the posterior mean
        run.add_noise_(x, s_s * math.sqrt(em), generator)
        run.report(i, x, D)
    return run.finish(x)


@register(
    stochastic=False,
    order=1,
    schedule_invariant=True,
    stochastic_if=lambda options: options["eta"] > 0,
    options={"eta": Option(0.0, low=0.0, high=1.0, doc="0: deterministic DDIM; 1: the DDPM posterior")},
    summary="DDIM (eta = 0: first-order exponential integrator in log-SNR)",
)
def sample_ddim(denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options):
    """Generalised DDIM (Song, Meng & Ermon 2021): ``x_s = a_s D + sqrt(s_s^2 - c^2) eps_hat + c z``,
    ``c = eta s_s sqrt(1 - exp(lam_t - lam_s))``; eta = 1 is the posterior ``q(x_s | x_t, D)`` (ddpm's)."""
    run = Run(sample_ddim, denoiser, schedule, noise, steps, grid, cond, options)
    eta = run.opts["eta"]
    x = run.x
    for i in range(run.K):
        D = run.D(x, i)
        a_t, s_t, a_s, s_s = run.a[i], run.s[i], run.a[i + 1], run.s[i + 1]
        em = _kernel_ratio(run, i)
        k_eps = s_s * math.sqrt(1 - eta**2 * em) / s_t  # coefficient of eps_hat = (x - a_t D) / s_t
        _axpby_(x, k_eps, a_s - k_eps * a_t, D)
        if eta > 0:
            run.add_noise_(x, eta * s_s * math.sqrt(em), generator)
        run.report(i, x, D)
    return run.finish(x)


@register(
    stochastic=True,
    order=1,
    nfe_rule=lambda steps, options: steps * (1 + options["n_corrector"]) + 1,
    options={
        "snr": Option(0.16, low=0.0, doc="Langevin signal-to-noise ratio (Song et al. 2021)"),
        "n_corrector": Option(1, kind=int, low=0, doc="Langevin steps per predictor step"),
    },
    summary="reverse-diffusion predictor + Langevin corrector (Song et al. 2021)",
)
def sample_pc(denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options):
    """Predictor-corrector (Song et al. 2021): at each t_i, ``n_corrector`` Langevin steps then a
    reverse-diffusion predictor step to t_{i+1}.

    Corrector: ``x += e score + sqrt(2 e) z`` with Song's step
    ``e = 2 (alpha_t/alpha_s)^2 (snr |z| / |score|)^2`` taken in its high-dimensional limit
    ``|z| = sqrt(d)``, ``|score| = sqrt(d) / sigma_t``, i.e. ``e = 2 (alpha_t/alpha_s)^2 (snr sigma_t)^2``:
    batch-averaged norms would make a sample depend on its batch, and per-row norms blow up in low
    dimension where a row's score can vanish. Predictor, from the exact kernel
    ``x_t = r x_s + sqrt(v) z``, ``r = alpha_t/alpha_s``, ``v = sigma_t^2 (1 - exp(lam_t - lam_s))``:
    ``x_s = (2 - r) x_t + v score(x_t, t) + sqrt(v) z``
    (for VP: Song's ``(2 - sqrt(1 - beta)) x + beta score``)."""
    run = Run(sample_pc, denoiser, schedule, noise, steps, grid, cond, options)
    snr, n_corrector = run.opts["snr"], run.opts["n_corrector"]
    x = run.x
    for i in range(run.K):
        a_t, s_t = run.a[i], run.s[i]
        r = a_t / run.a[i + 1]
        e = 2 * (r * snr * s_t) ** 2  # Langevin step size
        for _ in range(n_corrector):
            # x + e score + sqrt(2 e) z with e score = (e / s_t^2) (a_t D - x)
            D = run.D(x, i)
            run.add_noise_(_axpby_(x, 1 - e / s_t**2, e * a_t / s_t**2, D), math.sqrt(2 * e), generator)
        D = run.D(x, i)
        em = _kernel_ratio(run, i)
        # (2 - r) x + v score with v score = em (a_t D - x)
        run.add_noise_(_axpby_(x, 2 - r - em, em * a_t, D), s_t * math.sqrt(em), generator)
        run.report(i, x, D)
    return run.finish(x)
