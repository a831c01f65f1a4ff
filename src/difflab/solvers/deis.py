"""DEIS (Zhang & Chen 2023): diffusion exponential integrator sampler, multistep Adams-Bashforth (AB)."""

from __future__ import annotations

import math

from difflab.solvers.registry import Option, register
from difflab.solvers.run import Run, _run_plan
from difflab.solvers.unipc import _phi

_LOWER_ORDER_FINAL_BELOW = 15  # diffusers: lower orders on the last two steps only for K < 15


def _lagrange(nodes: list[float], m: int) -> list[float]:
    """Power-series coefficients (ascending) of the Lagrange basis polynomial ``L_m`` on ``nodes``."""
    poly, denom = [1.0], 1.0
    for n, node in enumerate(nodes):
        if n != m:
            poly = [lo - node * hi for lo, hi in zip([0.0] + poly, poly + [0.0])]  # poly *= (tau - node)
            denom *= nodes[m] - node
    return [c / denom for c in poly]


def _deis_step(lam: list[float], a: list[float], s: list[float], j: int, q: int) -> tuple[float, list[float]]:
    """DEIS-q for ``t_j -> t_{j+1}``: ``x_{j+1} = c_x x_j + sum_m c[m] eps_{j-m}`` (lam: log(alpha/sigma)).

    ``c[m] = alpha_{j+1} int_{rho_j}^{rho_{j+1}} L_m d rho = -alpha_{j+1} sum_k l_mk I_k`` with
    ``L_m(tau) = sum_k l_mk tau^k`` the Lagrange basis in ``tau = lambda - lambda_j`` on the nodes
    ``lambda_{j-m} - lambda_j`` and ``I_k = int_0^h e^{-lambda_j - tau} tau^k d tau
    = rho_{j+1} k! h^(k+1) phi_{k+1}(h)`` (no cancellation as h -> 0)."""
    h = lam[j + 1] - lam[j]
    rho_next = s[j + 1] / a[j + 1]
    moments = [rho_next * math.factorial(k) * h ** (k + 1) * _phi(k + 1, h) for k in range(q)]  # I_k
    nodes = [lam[j - m] - lam[j] for m in range(q)]
    coefs = [-a[j + 1] * sum(l * I for l, I in zip(_lagrange(nodes, m), moments)) for m in range(q)]
    return a[j + 1] / a[j], coefs


@register(
    stochastic=False,
    order=2,
    schedule_invariant=True,
    options={
        "order": Option(
            2, kind=int, low=1, high=3, doc="q: eps polynomial through the last q evaluations (degree q-1)"
        )
    },
    summary="DEIS multistep AB with the eps polynomial in log(sigma/alpha)",
)
def sample_deis(denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options):
    """DEIS (Zhang & Chen 2023), the multistep exponential integrator with an Adams-Bashforth
    extrapolation of ``eps_hat = (x - alpha D) / sigma``; diffusers' ``DEISMultistepScheduler`` with
    ``algorithm_type="deis", solver_type="logrho", lower_order_final=True``.

    In ``y = x / alpha`` over ``rho = sigma / alpha`` the PF-ODE is ``dy/drho = eps_hat``; DEIS fits the
    last q evaluations with a polynomial in ``log rho = -lambda`` (``lambda = log(alpha/sigma)``,
    half the log-SNR) and integrates it exactly:

        x_{j+1} = alpha_{j+1} (x_j / alpha_j + sum_{m<q} c_m eps_{j-m}),
        c_m = int_{rho_j}^{rho_{j+1}} L_m(log rho) d rho

    with ``L_m`` the Lagrange basis on ``log rho_j, ..., log rho_{j-q+1}`` (q = 1 is DDIM:
    ``c_0 = rho_{j+1} - rho_j``). The paper's tAB fits the polynomial in t, which depends on the
    schedule; in log rho the sampler is schedule-invariant. Option ``order`` (the largest q) in 1..3,
    default 2 (diffusers' ``solver_order=2``); q = ``min(order, j + 1)``, and for K < 15 steps q = 1 on
    the last step and q <= 2 on the one before (diffusers' ``lower_order_final``)."""
    run = Run(sample_deis, denoiser, schedule, noise, steps, grid, cond, options)
    p, K = run.opts["order"], run.K
    lam = [lam / 2 for lam in run.lam]
    orders = [min(p, j + 1, K - j) if K < _LOWER_ORDER_FINAL_BELOW else min(p, j + 1) for j in range(K)]
    plan = [_deis_step(lam, run.a, run.s, j, q) for j, q in enumerate(orders)]
    return _run_plan(run, plan, eps=True)
