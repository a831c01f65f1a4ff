"""Singlestep DPM-Solvers (Lu et al. 2022) and k-diffusion's DPM family: each grid step also evaluates the
denoiser at noise levels off the grid, placed in log-SNR. With ``lam = log(alpha/sigma)`` (half the
log-SNR) and EDM's ``y = x/alpha``, ``s = sigma/alpha = e^-lam``, every step is a formula in y over lam,
the same for every schedule, taken on x through ``x = alpha y``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from difflab.solvers.edm import _TWO_PER_STEP
from difflab.solvers.equations import _draw, _draw_dtype
from difflab.solvers.registry import Option, register
from difflab.solvers.run import Run, _axpby_, _kernel_ratio


# -- noise levels off the grid -------------------------------------------------------------------
@dataclass(frozen=True)
class _Level:
    """A noise level: its time ``t`` ``[B]`` (the integration dtype) and, as Python floats,
    ``a`` = alpha(t), ``sigma`` = sigma(t) and ``lam`` = log(alpha/sigma)."""

    t: Tensor
    a: float
    sigma: float
    lam: float


def _grid_level(run: Run, i: int) -> _Level:
    return _Level(run.t_batch[i], run.a[i], run.s[i], run.lam[i] / 2)


def _levels(run: Run, lam: list[float]) -> list[_Level]:
    """The levels at ``lam`` = log(alpha/sigma): ``t = t_from_log_snr(2 lam)`` (one call for all),
    ``alpha(t)`` and ``sigma = alpha e^-lam``, so that sigma/alpha is e^-lam exactly."""
    x = run.x
    t = run.schedule.t_from_log_snr(2 * torch.tensor(lam, dtype=torch.float64, device=x.device))
    t = t.to(torch.float64)
    a = run.schedule.alpha(t)
    if not (torch.isfinite(t).all() and torch.isfinite(a).all() and (a > 0).all()):
        raise ValueError(f"log-SNRs {[2 * v for v in lam]} have no finite time under {run.schedule!r}")
    B = x.shape[0]
    return [
        _Level(tb.to(x.dtype).expand(B).contiguous(), ab, ab * math.exp(-lb), lb)
        for tb, ab, lb in zip(t, a.tolist(), lam)
    ]


def _ancestral_split(run: Run, i: int, eta: float) -> tuple[float, float]:
    """k-diffusion's ``get_ancestral_step(s_i, s_{i+1}, eta)`` for grid step i, as the level ``lam_down``
    of ``s_down = s' sqrt(1 - eta^2 m)`` and the noise std ``s_up = eta s' sqrt(m)`` in y, with
    ``m = 1 - s'^2/s_i^2`` (eta = 0: ``lam_down = lam_{i+1}``, ``s_up = 0``)."""
    m = _kernel_ratio(run, i)
    s_next = run.s[i + 1] / run.a[i + 1]
    return run.lam[i + 1] / 2 - 0.5 * math.log1p(-(eta**2) * m), eta * s_next * math.sqrt(m)


_ETA = Option(1.0, low=0.0, high=1.0, doc="0: the ODE solver; 1: ancestral sampling (full noise)")
_ANCESTRAL = dict(stochastic=True, stochastic_if=lambda o: o["eta"] > 0, options={"eta": _ETA})


# -- DPM-Solver++(2S) and DPM-Solver-2, with k-diffusion's ancestral noise -------------------------
def _midpoint_solver(run: Run, generator, kind: str) -> Tensor:
    """One grid step ``s_i -> s_{i+1}``: k-diffusion's split into ``s_down``, ``s_up`` (``_ancestral_split``),
    an Euler step in y (= DDIM) to the midpoint ``s_mid = sqrt(s_i s_down)`` (``h = lam_down - lam_i``),

        y_mid = e^{-h/2} y - expm1(-h/2) D,           D_mid = D(alpha_mid y_mid, t_mid),

    then, ``kind="dpmpp"`` (DPM-Solver++(2S), r = 1/2): ``y_down = e^-h y - expm1(-h) D_mid``;
    ``kind="dpm2"`` (DPM-Solver-2 as k-diffusion writes it, the slope at the midpoint):
    ``y_down = y + (s_down - s_i) (y_mid - D_mid) / s_mid``; and ``y' = y_down + s_up z``."""
    eta = run.opts.get("eta", 0.0)
    down, s_up = zip(*(_ancestral_split(run, i, eta) for i in range(run.K)))
    mids = _levels(run, [(run.lam[i] / 2 + down[i]) / 2 for i in range(run.K)])
    x = run.x
    x_mid = torch.empty_like(x)
    for i, mid in enumerate(mids):
        a, a_next = run.a[i], run.a[i + 1]
        h = down[i] - run.lam[i] / 2
        D = run.D(x, i)
        torch.mul(x, mid.sigma / run.s[i], out=x_mid).add_(D, alpha=-mid.a * math.expm1(-h / 2))
        D_mid = run.denoise(x_mid, mid.t)
        if kind == "dpmpp":
            _axpby_(x, a_next / a * math.exp(-h), -a_next * math.expm1(-h), D_mid)
        else:  # (s_down - s_i) / s_mid = expm1(-h) e^{h/2}
            c = a_next * math.expm1(-h) * math.exp(h / 2)
            x.mul_(a_next / a).add_(x_mid, alpha=c / mid.a).add_(D_mid, alpha=-c)
        if eta > 0:
            run.add_noise_(x, a_next * s_up[i], generator)
        run.report(i, x, D)
    return run.finish(x)


@register(
    stochastic=False,
    **_TWO_PER_STEP,
    summary="DPM-Solver++(2S), data prediction, singlestep with the midpoint in log-SNR (r = 1/2)",
)
def sample_dpm_solver_2s(
    denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options
):
    """DPM-Solver++(2S) (Lu et al. 2022, Alg. 1 with r = 1/2): with ``h = lam_{i+1} - lam_i`` and the
    midpoint level ``lam_mid = lam_i + h/2``,

        x_mid = (sigma_mid/sigma_i) x - alpha_mid expm1(-h/2) D(x, t_i)
        x'    = (sigma_{i+1}/sigma_i) x - alpha_{i+1} expm1(-h) D(x_mid, t_mid),

    (Alg. 1's ``(1 - 1/(2r)) D_i + 1/(2r) D_mid`` is ``D_mid`` at r = 1/2). Equals k-diffusion's
    ``sample_dpmpp_2s_ancestral`` with eta = 0, and the DPM-Solver reference's
    ``singlestep_dpm_solver_second_update`` (``solver_type="dpmsolver"``) = diffusers'
    ``DPMSolverSinglestepScheduler(solver_order=2, algorithm_type="dpmsolver++")`` on a grid that holds
    each step's midpoint as its own timestep."""
    run = Run(sample_dpm_solver_2s, denoiser, schedule, noise, steps, grid, cond, options)
    return _midpoint_solver(run, generator, "dpmpp")


@register(
    **_TWO_PER_STEP,
    **_ANCESTRAL,
    summary="DPM-Solver++(2S) ancestral (k-diffusion); eta = 0 is dpm_solver_2s",
)
def sample_dpm_solver_2s_ancestral(
    denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options
):
    """k-diffusion's ``sample_dpmpp_2s_ancestral``: each grid step is a DPM-Solver++(2S) step to ``s_down``
    plus noise ``s_up`` in y (``_midpoint_solver``). eta = 1 draws ``y'`` with the variance of the kernel
    q(x' | x0) (ddpm's); eta = 0 is ``dpm_solver_2s``. Order: of the eta = 0 update (strong order 1 with
    noise)."""
    run = Run(sample_dpm_solver_2s_ancestral, denoiser, schedule, noise, steps, grid, cond, options)
    return _midpoint_solver(run, generator, "dpmpp")


@register(
    stochastic=False,
    **_TWO_PER_STEP,
    summary="DPM-Solver-2 (k-diffusion's sample_dpm_2): midpoint in log sigma, in y = x/alpha over s",
)
def sample_dpm_2(denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options):
    """k-diffusion's ``sample_dpm_2`` (Crowson, after DPM-Solver-2 and Karras et al. 2022 Alg. 2, no
    churn): the midpoint method on ``dy/ds = (y - D)/s`` with the midpoint at ``s_mid = sqrt(s_i s_{i+1})``:

        y_mid = y + (s_mid - s_i) (y - D)/s_i,        y' = y + (s_{i+1} - s_i) (y_mid - D(y_mid))/s_mid,

    with ``D(y) = D(alpha y, t(s))``."""
    run = Run(sample_dpm_2, denoiser, schedule, noise, steps, grid, cond, options)
    return _midpoint_solver(run, generator, "dpm2")


@register(
    **_TWO_PER_STEP,
    **_ANCESTRAL,
    summary="DPM-Solver-2 ancestral (k-diffusion's sample_dpm_2_ancestral); eta = 0 is dpm_2",
)
def sample_dpm_2_ancestral(
    denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options
):
    """k-diffusion's ``sample_dpm_2_ancestral``: ``dpm_2``'s midpoint step to ``s_down`` (midpoint
    ``sqrt(s_i s_down)``), then noise ``s_up`` in y (``_ancestral_split``); eta = 0 is ``dpm_2``. Order: of
    the eta = 0 update."""
    run = Run(sample_dpm_2_ancestral, denoiser, schedule, noise, steps, grid, cond, options)
    return _midpoint_solver(run, generator, "dpm2")


# -- DPM-Solver++(3S) ----------------------------------------------------------------------------
R1, R2 = 1 / 3, 2 / 3  # DPM-Solver-3's intermediate levels (Lu et al. 2022, Thm. 3.2's choice)


@register(
    stochastic=False,
    order=3,
    nfe_rule=lambda steps, options: 3 * steps + 1,
    schedule_invariant=True,
    summary="DPM-Solver++(3S), data prediction, singlestep (r1 = 1/3, r2 = 2/3 in log-SNR)",
)
def sample_dpm_solver_3s(
    denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options
):
    """DPM-Solver++(3S) (Lu et al. 2022), data prediction, as the DPM-Solver reference's
    ``singlestep_dpm_solver_third_update`` (``algorithm_type="dpmsolver++"``, ``solver_type="dpmsolver"``):
    with ``h = lam_{i+1} - lam_i``, levels ``lam_i + r1 h``, ``lam_i + r2 h``, ``phi_1 = expm1(-h)``,
    ``phi_2 = phi_1/h + 1``, ``phi_22 = expm1(-r2 h)/(r2 h) + 1``,

        x_1 = (sigma_1/sigma_i) x - alpha_1 expm1(-r1 h) D
        x_2 = (sigma_2/sigma_i) x - alpha_2 expm1(-r2 h) D + (r2/r1) alpha_2 phi_22 (D_1 - D)
        x'  = (sigma'/sigma_i) x - alpha' phi_1 D + (1/r2) alpha' phi_2 (D_2 - D),

    ``D = D(x, t_i)``, ``D_k = D(x_k, t_k)``. diffusers'
    ``DPMSolverSinglestepScheduler(solver_order=3, algorithm_type="dpmsolver++")`` computes x' this way
    with ``solver_type="midpoint"`` and x_2 this way with ``solver_type="heun"``, neither both."""
    run = Run(sample_dpm_solver_3s, denoiser, schedule, noise, steps, grid, cond, options)
    half = [lam / 2 for lam in run.lam]
    h = [half[i + 1] - half[i] for i in range(run.K)]
    levels = _levels(run, [half[i] + r * h[i] for i in range(run.K) for r in (R1, R2)])
    x = run.x
    buf = torch.empty_like(x)
    for i in range(run.K):
        one, two = levels[2 * i], levels[2 * i + 1]
        a_next = run.a[i + 1]
        phi_1, phi_12 = math.expm1(-h[i]), math.expm1(-R2 * h[i])
        phi_2, phi_22 = phi_1 / h[i] + 1, phi_12 / (R2 * h[i]) + 1
        D = run.D(x, i)
        torch.mul(x, one.sigma / run.s[i], out=buf).add_(D, alpha=-one.a * math.expm1(-R1 * h[i]))
        D_1 = run.denoise(buf, one.t)
        w = R2 / R1 * two.a * phi_22
        torch.mul(x, two.sigma / run.s[i], out=buf).add_(D, alpha=-two.a * phi_12 - w).add_(D_1, alpha=w)
        D_2 = run.denoise(buf, two.t)
        w = a_next * phi_2 / R2
        x.mul_(run.s[i + 1] / run.s[i]).add_(D, alpha=-a_next * phi_1 - w).add_(D_2, alpha=w)
        run.report(i, x, D)
    return run.finish(x)


# -- DPM-Solver++ SDE (k-diffusion) ---------------------------------------------------------------
@register(
    **_TWO_PER_STEP,
    stochastic=True,
    stochastic_if=lambda o: o["eta"] > 0,
    options={
        "eta": _ETA,
        "r": Option(0.5, low=0.0, high=1.0, low_open=True, doc="the intermediate level lam_i + r h"),
    },
    summary="DPM-Solver++ SDE (k-diffusion's sample_dpmpp_sde), two ancestral substeps per step",
)
def sample_dpm_solver_sde(
    denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options
):
    """k-diffusion's ``sample_dpmpp_sde`` (Crowson; DPM-Solver++(2S) with ancestral noise): with
    ``h = lam_{i+1} - lam_i``, the level ``lam_r = lam_i + r h`` (``s_r = e^-lam_r``) and
    ``split(s -> s')`` = (``s_down``, ``s_up``) as in ``dpm_solver_2s_ancestral``, in y:

        y_r = (d_1/s_i) y + (1 - d_1/s_i) D + u_1 z_1,                (d_1, u_1) = split(s_i -> s_r)
        y'  = (d_2/s_i) y + (1 - d_2/s_i) ((1 - 1/(2r)) D + 1/(2r) D(y_r)) + u_2 z_2,
                                                                  (d_2, u_2) = split(s_i -> s_{i+1})

    (``D(y) = D(alpha y, t(s))``). k-diffusion draws ``z_1, z_2`` from a Brownian
    tree in s: the normalized increments over ``[s_r, s_i]`` and ``[s_{i+1}, s_i]``. Here they are per-row
    draws from ``generator`` with that law: ``z_2 = rho z_1 + sqrt(1 - rho^2) z'``,
    ``rho = sqrt((s_i - s_r)/(s_i - s_{i+1}))``, independent across steps (disjoint intervals). So the
    samples have the law of k-diffusion's, not its values; a step count change does not refine one
    Brownian path. eta = 0 with r = 1/2 is ``dpm_solver_2s``; order: of the eta = 0 update."""
    run = Run(sample_dpm_solver_sde, denoiser, schedule, noise, steps, grid, cond, options)
    eta, r = run.opts["eta"], run.opts["r"]
    fac = 1 / (2 * r)
    half = [lam / 2 for lam in run.lam]
    h = [half[i + 1] - half[i] for i in range(run.K)]
    mids = _levels(run, [half[i] + r * h[i] for i in range(run.K)])
    x = run.x
    x_mid = torch.empty_like(x)
    z_1 = torch.empty(x.shape, dtype=_draw_dtype(x), device=x.device) if eta > 0 else None
    for i, mid in enumerate(mids):
        a, a_next = run.a[i], run.a[i + 1]
        # log(d/s_i) and u/s for the two splits: s_down = s sqrt(1 - eta^2 m), s_up = eta s sqrt(m)
        m_1, m_2 = -math.expm1(-2 * r * h[i]), -math.expm1(-2 * h[i])
        log_d1 = -r * h[i] + 0.5 * math.log1p(-(eta**2) * m_1)
        log_d2 = -h[i] + 0.5 * math.log1p(-(eta**2) * m_2)
        D = run.D(x, i)
        torch.mul(x, mid.a / a * math.exp(log_d1), out=x_mid).add_(D, alpha=-mid.a * math.expm1(log_d1))
        if eta > 0:
            x_mid.add_(_draw(x, generator, out=z_1), alpha=mid.sigma * eta * math.sqrt(m_1))
        D_r = run.denoise(x_mid, mid.t)
        c = -a_next * math.expm1(log_d2)
        x.mul_(a_next / a * math.exp(log_d2)).add_(D, alpha=c * (1 - fac)).add_(D_r, alpha=c * fac)
        if eta > 0:
            u = run.s[i + 1] * eta * math.sqrt(m_2)  # alpha' s_up
            rho = math.sqrt(math.expm1(-r * h[i]) / math.expm1(-h[i]))
            run.add_noise_(x.add_(z_1, alpha=u * rho), u * math.sqrt(1 - rho**2), generator)
        run.report(i, x, D)
    return run.finish(x)


# -- DPM-Solver-fast (noise prediction) -----------------------------------------------------------
def _dpm_solver_step(
    run: Run, x: Tensor, D: Tensor, start: _Level, end: _Level, mids: list[_Level], embedded: bool = False
) -> tuple[Tensor, Tensor | None]:
    """DPM-Solver-k (Lu et al. 2022, noise prediction, ``solver_type="dpmsolver"``; k = 1 + len(mids))
    from ``start`` (state ``x``, ``D = D(x)`` there) to ``end`` through ``mids`` at ``lam + r_j h``,
    ``h = lam_end - lam``, with ``eps = (x - alpha D)/sigma``, ``phi(r) = expm1(r h)``:

        k = 1   x' = (alpha'/alpha) x - sigma' phi(1) eps
        k = 2   x_1 = (alpha_1/alpha) x - sigma_1 phi(r1) eps
                x'  = (alpha'/alpha) x - sigma' phi(1) eps - sigma'/(2 r1) phi(1) (eps_1 - eps)
        k = 3   x_2 = (alpha_2/alpha) x - sigma_2 phi(r2) eps
                      - sigma_2 (r2/r1) (phi(r2)/(r2 h) - 1) (eps_1 - eps)
                x'  = (alpha'/alpha) x - sigma' phi(1) eps - (sigma'/r2) (phi(1)/h - 1) (eps_2 - eps)

    (k-diffusion's ``DPMSolver.dpm_solver_k_step``). Returns x' (a new tensor) and, where
    ``embedded``, the order k - 1 estimate from the same evaluations (k = 3: DPM-Solver-2 with the same
    r1; k = 2: DPM-Solver-1), which ``dpm_adaptive`` compares it with. k - 1 evaluations."""
    h = end.lam - start.lam
    eps = torch.sub(x, D, alpha=start.a).div_(start.sigma)

    def first_order(level: _Level, r: float) -> Tensor:
        return torch.mul(x, level.a / start.a).add_(eps, alpha=-level.sigma * math.expm1(r * h))

    x_next = first_order(end, 1.0)
    if not mids:
        return x_next, None
    one = mids[0]
    r1 = (one.lam - start.lam) / h
    x_1 = first_order(one, r1)
    d_1 = x_1.sub_(run.denoise(x_1, one.t), alpha=one.a).div_(one.sigma).sub_(eps)  # eps_1 - eps
    if len(mids) == 1:
        low = x_next.clone() if embedded else None
        return x_next.add_(d_1, alpha=-end.sigma / (2 * r1) * math.expm1(h)), low
    two = mids[1]
    r2 = (two.lam - start.lam) / h
    low = x_next.add(d_1, alpha=-end.sigma / (2 * r1) * math.expm1(h)) if embedded else None
    x_2 = first_order(two, r2).add_(d_1, alpha=-two.sigma * r2 / r1 * (math.expm1(r2 * h) / (r2 * h) - 1))
    d_2 = x_2.sub_(run.denoise(x_2, two.t), alpha=two.a).div_(two.sigma).sub_(eps)  # eps_2 - eps
    return x_next.add_(d_2, alpha=-end.sigma / r2 * (math.expm1(h) / h - 1)), low


_MID_FRACTIONS = {1: (), 2: (0.5,), 3: (R1, R2)}  # DPM-Solver-k's intermediate levels r, as k-diffusion's


def _fast_orders(steps: int, remainder: int) -> list[int]:
    """DPM-Solver-fast's orders (Lu et al. 2022, Sec. 3.4) for ``steps`` steps and the budget
    ``N = 3 steps - 3 + remainder``: 3, ..., 3 then 2 (remainder 2), 1 (remainder 1) or 2, 1 (remainder 0)."""
    if remainder == 0:
        if steps < 2:
            raise ValueError("dpm_fast: remainder=0 needs steps >= 2 (its last two steps are orders 2, 1)")
        return [3] * (steps - 2) + [2, 1]
    return [3] * (steps - 1) + [remainder]


@register(
    stochastic=False,
    order=3,
    nfe_rule=lambda steps, options: sum(_fast_orders(steps, options["remainder"])) + 1,
    schedule_invariant=True,
    options={
        "remainder": Option(
            2,
            kind=int,
            choices=(0, 1, 2),
            doc="N mod 3 for Lu et al.'s budget N = 3 steps - 3 + remainder: 2 -> orders 3..3,2; "
            "1 -> 3..3,1; 0 -> 3..3,2,1",
        )
    },
    summary="DPM-Solver-fast (k-diffusion's sample_dpm_fast): DPM-Solver-3 steps, lower orders last",
)
def sample_dpm_fast(
    denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options
):
    """DPM-Solver-fast (Lu et al. 2022, Sec. 3.4; k-diffusion's ``sample_dpm_fast``), noise prediction:
    for an NFE budget N, M = floor(N/3) + 1 steps uniform in log-SNR, DPM-Solver-3 on each but the last
    one or two, whose orders use the rest of N (``_fast_orders``). Here ``steps`` is M (any grid; Lu et
    al.'s is ``"logsnr"``) and ``remainder`` is N mod 3; the NFE is N + 1 with the final denoising.
    k-diffusion's ``sample_dpm_fast(model, x, s_min, s_max, N)`` returns ``y(s_min)``, our state
    ``x(t_K)/alpha`` on the log-SNR grid of M steps between those ends. Its eta (ancestral noise) is not
    offered."""
    run = Run(sample_dpm_fast, denoiser, schedule, noise, steps, grid, cond, options)
    orders = _fast_orders(run.K, run.opts["remainder"])
    half = [lam / 2 for lam in run.lam]
    mids = [[half[i] + r * (half[i + 1] - half[i]) for r in _MID_FRACTIONS[k]] for i, k in enumerate(orders)]
    flat = iter(_levels(run, [lam for step in mids for lam in step]))
    x = run.x
    for i in range(run.K):
        D = run.D(x, i)
        levels = [next(flat) for _ in mids[i]]
        x, _ = _dpm_solver_step(run, x, D, _grid_level(run, i), _grid_level(run, i + 1), levels)
        run.report(i, x, D)
    return run.finish(x)
