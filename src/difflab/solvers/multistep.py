"""Linear multistep solvers: iPNDM, iPNDM-v, LMS and PNDM step the PF-ODE in EDM's variables with
Adams-Bashforth weights; SA-Solver is a stochastic Adams method in log-SNR with data prediction.

In ``y = x / alpha`` over ``s = sigma / alpha`` the PF-ODE is ``dy/ds = (y - D) / s`` for every schedule
(Karras et al. 2022, eq. 4), and ``(y - D) / s = (x - alpha D) / sigma = eps_hat``, the noise estimate.
A multistep step ``y_{i+1} = y_i + sum_m c_m eps_{i-m}`` is, with ``eps_j = (x_j - alpha_j D_j) / sigma_j``,

    x_{i+1} = (alpha_{i+1} / alpha_i) x_i + alpha_{i+1} sum_m c_m eps_{i-m}.

The weights depend only on the grid's s (or log-SNR), so all five solvers are schedule-invariant."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from difflab.solvers.deis import _lagrange
from difflab.solvers.edm import _heun_step_
from difflab.solvers.registry import Option, register
from difflab.solvers.run import Run, _run_plan
from difflab.solvers.unipc import _phi

# Adams-Bashforth weights for uniform steps, newest first (AB1 = Euler ... AB4)
_AB = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))

_ORDER = Option(4, kind=int, low=1, high=4, doc="Adams-Bashforth order (lower on the first steps)")
_ADAMS = dict(stochastic=False, schedule_invariant=True, options={"order": _ORDER})


def _run_adams(run: Run, weights, order: int, first_step=None) -> Tensor:
    """The module docstring's step with ``c = weights(s, i, min(order, i + 1))``, ``s = sigma/alpha`` at
    the grid times (k-diffusion's sigma); ``first_step`` as in ``_run_plan``."""
    s = [sig / a for sig, a in zip(run.s, run.a)]
    plan = []
    for i in range(run.K):
        c = weights(s, i, min(order, i + 1))
        plan.append((run.a[i + 1] / run.a[i], [run.a[i + 1] * w for w in c]))
    return _run_plan(run, plan, eps=True, first_step=first_step)


def _ab_weights(s: list[float], i: int, k: int) -> list[float]:
    """ABk's fixed weights (``_AB``) times the step ``s_{i+1} - s_i``."""
    return [(s[i + 1] - s[i]) * b for b in _AB[k - 1]]


# -- iPNDM ----------------------------------------------------------------------------------------
@register(
    order=4,
    **_ADAMS,
    summary="iPNDM: Adams-Bashforth with fixed weights in y = x/alpha over s = sigma/alpha",
)
def sample_ipndm(denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options):
    """Improved PNDM (Zhang & Chen 2023, DEIS paper; zju-pi/diff-sampler ``ipndm_sampler``, ComfyUI
    ``sample_ipndm``): Adams-Bashforth on ``dy/ds = eps_hat`` with the fixed weights of uniform steps,

        y_{i+1} = y_i + (s_{i+1} - s_i) sum_m b^k_m eps_{i-m},   b^1 = [1], b^2 = [3, -1]/2,
        b^3 = [23, -16, 5]/12, b^4 = [55, -59, 37, -9]/24,

    ``k = min(order, i + 1)`` (Euler first, no extra evaluation). The final denoising is diff-sampler's
    ``denoise_to_zero`` (ComfyUI's last step to sigma = 0), so the sample equals theirs on sigmas
    ``[s_0, ..., s_K]``. The fixed weights are exact for polynomials of degree < k on equal steps only
    (``order`` is that of AB4): where consecutive steps in s differ by a ratio r, the weight of the first
    difference is off by O(r - 1), so on every named grid the error falls as 1/K^2 (measured /4.0-4.6 per
    doubling from 16 steps on the log-SNR and EDM grids); with few steps it still beats ``lms`` (errors
    at 8 steps in the convergence test: 5.2e-2 against 1.7e-1)."""
    run = Run(sample_ipndm, denoiser, schedule, noise, steps, grid, cond, options)
    return _run_adams(run, _ab_weights, run.opts["order"])


# -- iPNDM-v --------------------------------------------------------------------------------------
def _ipndm_v_weights(s: list[float], i: int, k: int) -> list[float]:
    """diff-sampler's ``ipndm_v_sampler`` weights ``[c_0..c_{k-1}]`` (of eps_i, eps_{i-1}, ...; step h
    included) for ``s_i -> s_{i+1}``, with ``h = s_{i+1} - s_i``, ``h_m = s_{i-m+1} - s_{i-m}``:

        k = 2: [1 + r/2, -r/2],  r = h / h_1                      (exact variable-step AB2)
        k = 3: adds t_1 ([1, 0, 0] - [0, 1 + h_1/h_2, -h_1/h_2]),  t_1 = (1 - h^2 / (3 h_1 (h_1 + h_2))) / 2
        k = 4: adds t_2 ([1, 0, 0, 0] - [0, 1 + h_1/h_2 + q, -(h_1/h_2 + q (1 + h_2/h_3)), q h_1/h_2]),
               q = h_1 (h_1 + h_2) / (h_2 (h_2 + h_3)),
               t_2 = ((1 - h/(3 (h + h_1))) / 2 + (1 - h/(2 (h + h_1))) h / (6 (h + h_1 + h_2)))
                     * h (h + h_1)(h + h_1 + h_2) / (h_1 (h_1 + h_2)(h_1 + h_2 + h_3)),

    transcribed as published. For equal steps they give AB2, AB3 and, for k = 4, 11/24 of the third
    backward difference where AB4 has 3/8; the k = 4 weights sum to ``1 + t_2 q (h_2/h_3 - h_1/h_2)``, so
    they are consistent only where consecutive step ratios in s agree (geometric s: the ``logsnr``
    grid). ``lms`` is the exact variable-step Adams-Bashforth."""
    h = s[i + 1] - s[i]
    if k == 1:
        return [h]
    h1 = s[i] - s[i - 1]
    w = [1 + h / h1 / 2, -h / h1 / 2]
    if k >= 3:
        h2 = s[i - 1] - s[i - 2]
        t1 = (1 - h / (3 * (h + h1)) * (h * (h + h1)) / (h1 * (h1 + h2))) / 2
        w = [w[0] + t1, w[1] - (1 + h1 / h2) * t1, t1 * h1 / h2]
    if k == 4:
        h3 = s[i - 2] - s[i - 3]
        t2 = (
            ((1 - h / (3 * (h + h1))) / 2 + (1 - h / (2 * (h + h1))) * h / (6 * (h + h1 + h2)))
            * (h * (h + h1) * (h + h1 + h2))
            / (h1 * (h1 + h2) * (h1 + h2 + h3))
        )
        q = h1 * (h1 + h2) / (h2 * (h2 + h3))
        w = [
            w[0] + t2,
            w[1] - (1 + h1 / h2 + q) * t2,
            w[2] + (h1 / h2 + q * (1 + h2 / h3)) * t2,
            -t2 * q * h1 / h2,
        ]
    return [h * c for c in w]


@register(
    order=3,
    **_ADAMS,
    summary="iPNDM-v: diff-sampler's variable-step Adams-Bashforth in y = x/alpha over s = sigma/alpha",
)
def sample_ipndm_v(denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options):
    """Variable-step iPNDM (zju-pi/diff-sampler ``ipndm_v_sampler``, ComfyUI ``sample_ipndm_v``): the
    step-ratio-dependent weights of ``_ipndm_v_weights`` at order ``min(order, i + 1)``; the final
    denoising is diff-sampler's ``denoise_to_zero``. As published, its order-3 weights are exact for
    quadratics only on equal steps, and its order-4 weights are consistent only on grids geometric in s
    (``grid="logsnr"``): there it measures third order; elsewhere use ``order=3``, or ``lms``."""
    run = Run(sample_ipndm_v, denoiser, schedule, noise, steps, grid, cond, options)
    return _run_adams(run, _ipndm_v_weights, run.opts["order"])


# -- LMS ------------------------------------------------------------------------------------------
def _lms_weights(s: list[float], i: int, k: int) -> list[float]:
    """``c_m = int_{s_i}^{s_{i+1}} L_m(tau) d tau`` with ``L_m`` the Lagrange basis on
    ``s_i, s_{i-1}, ..., s_{i-k+1}``, in closed form: with ``v = (tau - s_i) / h``, ``h = s_{i+1} - s_i``,
    nodes ``r_j = (s_{i-j} - s_i) / h`` and ``L_m = sum_n l_mn v^n``, ``c_m = h sum_n l_mn / (n + 1)``
    (k-diffusion's ``linear_multistep_coeff`` integrates the same cubic with ``scipy.integrate.quad``)."""
    h = s[i + 1] - s[i]
    nodes = [(s[i - j] - s[i]) / h for j in range(k)]
    return [h * sum(l / (n + 1) for n, l in enumerate(_lagrange(nodes, m))) for m in range(k)]


@register(
    order=4,
    **_ADAMS,
    summary="LMS (k-diffusion): variable-step Adams-Bashforth in y = x/alpha over s = sigma/alpha",
)
def sample_lms(denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options):
    """Linear multistep (Crowson; k-diffusion's ``sample_lms``): the variable-step Adams-Bashforth method
    on ``dy/ds = eps_hat``, ``y_{i+1} = y_i + sum_m c_m eps_{i-m}`` with ``c_m`` the integral over
    ``[s_i, s_{i+1}]`` of the Lagrange basis through the last ``k = min(order, i + 1)`` noise levels
    (``_lms_weights``, closed form). k-diffusion's last step ``s_K -> 0`` extrapolates the same
    polynomial to s = 0; here it is the final denoising ``D(x(t_K), t_K)``: the states ``x(t_1..t_K)``
    equal k-diffusion's on sigmas ``[s_0, ..., s_K, 0]``, and the sample is its ``denoised`` at ``s_K``."""
    run = Run(sample_lms, denoiser, schedule, noise, steps, grid, cond, options)
    return _run_adams(run, _lms_weights, run.opts["order"])


# -- PNDM -----------------------------------------------------------------------------------------
@register(
    stochastic=False,
    order=4,
    nfe_rule=lambda steps, options: steps + 2,
    schedule_invariant=True,
    summary="PNDM/PLMS: DDIM's update with a 4-step Adams-Bashforth eps, Heun's first step",
)
def sample_pndm(denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options):
    """Pseudo numerical methods (Liu et al. 2022), the PLMS variant: diffusers' ``PNDMScheduler`` with
    ``skip_prk_steps=True`` (= CompVis' ``PLMSSampler``). The transfer function is DDIM's update
    ``x' = alpha' (x - sigma e) / alpha + sigma' e``, i.e. ``y' = y + (s' - s) e`` in EDM's variables, fed
    with a combined noise estimate:

        step 0      e = (eps_0 + eps_1^pred) / 2, eps_1^pred at the Euler (DDIM) prediction: Heun's step
        step i >= 1 e = sum_m b^k_m eps_{i-m}, k = min(4, i + 1), the Adams-Bashforth weights (``_AB``)

    with ``eps_0`` at x_0 in the history. So PLMS is ``ipndm`` with a Heun first step, and with one step
    it is ``heun_edm``. The fixed weights assume equal steps (diffusers' timesteps are equally spaced):
    on the named grids it converges at second order, as ``ipndm`` does.
    NFE: K + 1 for the steps (step 0 evaluates twice), + 1 final denoising = K + 2."""
    run = Run(sample_pndm, denoiser, schedule, noise, steps, grid, cond, options)
    x_pred = torch.empty_like(run.x)
    return _run_adams(
        run, _ab_weights, 4, lambda x, D: _heun_step_(run, 0, x, D, run.a[0], run.s[0] / run.a[0], x_pred)
    )


# -- SA-Solver ------------------------------------------------------------------------------------
def _sa_weights(lam: list[float], a_end: float, start: int, nodes: list[int], tau: float) -> list[float]:
    """Weights ``c_m`` of ``D_{nodes[m]}`` in SA-Solver's step over ``[lam_start, lam_start+1]``
    (``lam`` = log(alpha/sigma)): with ``h = lam_{start+1} - lam_start``, ``H = (1 + tau^2) h`` and ``L_m``
    the Lagrange basis on the nodes' lam in ``v = (lam - lam_start) / h``, ``L_m = sum_n l_mn v^n``,

        c_m = (1 + tau^2) alpha_end int_{lam_start}^{lam_end} e^{(1 + tau^2)(lam - lam_end)} L_m d lam
            = (1 + tau^2) alpha_end h sum_n l_mn n! phi_{n+1}(-H),

    (``int_0^1 v^n e^{-H (1 - v)} dv = n! phi_{n+1}(-H)``). For two nodes, diffusers replaces
    ``phi_2(-H)`` by its h -> 0 limit 1/2 in the weight of the difference (as UniPC's rho = 1/2)."""
    h = lam[start + 1] - lam[start]
    H = (1 + tau**2) * h
    scale = (1 + tau**2) * a_end * h
    moments = [math.factorial(n) * _phi(n + 1, -H) for n in range(len(nodes))]
    v = [(lam[j] - lam[start]) / h for j in nodes]
    weights = [scale * sum(l * I for l, I in zip(_lagrange(v, m), moments)) for m in range(len(nodes))]
    if len(nodes) == 2:  # D_a + (D_b - D_a) v / (v_b - v_a): weight of (D_b - D_a) becomes scale / 2 / dv
        delta = scale * (0.5 - _phi(2, -H)) / (v[0] - v[1])
        weights[0] += delta
        weights[1] -= delta
    return weights


def _sa_plan(run: Run, p: int, c: int, tau: float) -> tuple[list[tuple[float, list[float]]], list]:
    """Per step j: ``(c_x, coefs)`` and ``std`` (None: no draw) with ``x_{j+1} = c_x x_j + sum_m coefs[m]
    D_{j-m} + std z_j``, where ``x_j`` is the predicted state and its correction (j > 0) is folded into
    ``coefs``."""
    lam = [lam / 2 for lam in run.lam]  # log(alpha / sigma)
    K = run.K

    def predictor(j: int) -> list[float]:
        k = min(p, j + 1, K - j)
        return _sa_weights(lam, run.a[j + 1], j, [j - m for m in range(k)], tau)

    def corrector(j: int) -> list[float]:  # x_j from x_{j-1}, with D_j
        k = min(c, j + 1, K - j + 2)
        return _sa_weights(lam, run.a[j], j - 1, [j - m for m in range(k)], tau) if k > 0 else []

    plan, stds = [], []
    for j in range(K):
        h = lam[j + 1] - lam[j]
        c_x = run.s[j + 1] / run.s[j] * math.exp(-(tau**2) * h)
        coefs = predictor(j) + [0.0] * (max(p, c) + 1)
        if j > 0 and c > 0:  # x_j^c - x_j^p = sum corrector D_{j-m} - sum predictor(j - 1) D_{j-1-m}
            for m, w in enumerate(corrector(j)):
                coefs[m] += c_x * w
            for m, w in enumerate(predictor(j - 1)):
                coefs[m + 1] -= c_x * w
        while coefs and coefs[-1] == 0.0:
            coefs.pop()
        plan.append((c_x, coefs))
        std = run.s[j + 1] * math.sqrt(-math.expm1(-2 * tau**2 * h))
        stds.append(std if std > 0 else None)
    return plan, stds


@register(
    stochastic=True,
    order=4,
    schedule_invariant=True,
    stochastic_if=lambda o: o["tau"] > 0,
    options={
        "predictor_order": Option(3, kind=int, low=1, high=4, doc="SA-Predictor: D through the last p steps"),
        "corrector_order": Option(4, kind=int, low=0, high=4, doc="SA-Corrector order; 0: no corrector"),
        "tau": Option(1.0, low=0.0, doc="stochasticity: 0 the PF-ODE, 1 the reverse SDE"),
    },
    summary="SA-Solver: stochastic Adams predictor-corrector in log-SNR (order of the tau = 0 update)",
)
def sample_sa_solver(
    denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options
):
    """SA-Solver (Xue et al. 2023), data prediction; diffusers' ``SASolverScheduler`` with
    ``algorithm_type="data_prediction"``, ``lower_order_final=True`` and a constant ``tau_func``. With
    ``lambda = log(alpha/sigma)``, ``h = lambda_{j+1} - lambda_j``:

        SA-Predictor  x_{j+1} = e^{-tau^2 h} (sigma_{j+1}/sigma_j) x_j + sum_m c_m D_{j-m}
                                + sigma_{j+1} sqrt(1 - e^{-2 tau^2 h}) z_j
        SA-Corrector  the same step from x_j with the same z_j, the weights through D_{j+1},
                      D_{j+1} = D(x_{j+1}^pred, t_{j+1}) (no extra evaluation: the next step reuses it)

    (``c_m``: ``_sa_weights``; the orders: ``_sa_plan``, warm-up and diffusers' ``lower_order_final``). Every
    state but ``x_K`` is corrected, so NFE = K + 1. tau = 1 with orders 1 is ``ddpm``'s posterior step;
    tau = 0 is the PF-ODE (a UniPC-like predictor-corrector). diffusers' default ``tau_func`` (tau = 1 for
    timesteps 200..800, else 0) and ComfyUI's (eta on 20-80% of the sigma range) vary tau along the grid; here
    tau is one constant. With tau = 0 and the default orders (3, 4) the error falls /13.5, /12.3 per doubling
    from 32 log-SNR steps; the first-order last step bounds it at second order as steps grow (/8.6 at
    128 -> 256), as for ``unipc``."""
    run = Run(sample_sa_solver, denoiser, schedule, noise, steps, grid, cond, options)
    o = run.opts
    plan, stds = _sa_plan(run, o["predictor_order"], o["corrector_order"], o["tau"])
    return _run_plan(run, plan, stds=stds, generator=generator)
