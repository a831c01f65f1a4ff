"""UniPC (Zhao et al. 2023): unified predictor-corrector in log-SNR with data prediction."""

from __future__ import annotations

import math

from difflab.solvers.registry import Option, register
from difflab.solvers.run import Run, _run_plan


def _phi(k: int, z: float) -> float:
    """``phi_k(z) = sum_{m >= 0} z^m / (m + k)!`` (``phi_0 = e^z``, ``phi_{k+1} = (phi_k - 1/k!) / z``).

    The power series where ``|z| < 1`` (the recursion there cancels: ``phi_3`` loses ``log10(1/|z|^2)``
    digits), the recursion elsewhere (it is well conditioned for ``|z| >= 1``)."""
    if abs(z) < 1:
        term = total = 1 / math.factorial(k)
        m = 0
        while abs(term) > 1e-17 * abs(total):
            m += 1
            term *= z / (m + k)
            total += term
        return total
    value = math.exp(z)
    for j in range(k):
        value = (value - 1 / math.factorial(j)) / z
    return value


def _solve(A: list[list[float]], b: list[float]) -> list[float]:
    """``A^-1 b`` for a small dense system (Gaussian elimination with partial pivoting)."""
    n = len(b)
    M = [list(row) + [rhs] for row, rhs in zip(A, b)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(M[r][c]))
        M[c], M[p] = M[p], M[c]
        for r in range(c + 1, n):
            f = M[r][c] / M[c][c]
            M[r] = [v - f * w for v, w in zip(M[r], M[c])]
    x = [0.0] * n
    for r in reversed(range(n)):
        x[r] = (M[r][n] - sum(M[r][k] * x[k] for k in range(r + 1, n))) / M[r][r]
    return x


def _unipc_step(lam: list[float], s: list[float], a: list[float], j: int, p: int):
    """UniP-p for ``t_j -> t_{j+1}`` and the UniC-p correction of its result, bh2, data prediction.

    Returns ``(c_x, pred, corr)``: the predictor ``x_{j+1} = c_x x_j + sum_m pred[m] D_{j-m}`` and the
    corrector's change ``x_{j+1}^c - x_{j+1} = sum_m corr[m] D_{j+1-m}`` (both start from the same
    ``(sigma_{j+1}/sigma_j) x_j - alpha_{j+1} B(h) D_j``, so the change holds D terms only).
    ``lam`` is ``log(alpha/sigma)`` (half the log-SNR)."""
    h = lam[j + 1] - lam[j]
    hh = -h  # data prediction integrates e^{-h}
    B = math.expm1(hh)  # bh2: B(h) = e^{-h} - 1
    r = [(lam[j - k] - lam[j]) / h for k in range(1, p)]  # r_k < 0: the earlier nodes
    nodes = r + [1.0]
    R = [[node ** (i - 1) for node in nodes] for i in range(1, p + 1)]
    phi_1 = _phi(1, hh)
    b = [math.factorial(i) * _phi(i + 1, hh) / phi_1 for i in range(1, p + 1)]
    # diffusers: the 2nd-order predictor and the 1st-order corrector use rho = 1/2 (b_1 -> 1/2 as h -> 0)
    rho_p = [] if p == 1 else [0.5] if p == 2 else _solve([row[:-1] for row in R[:-1]], b[:-1])
    rho_c = [0.5] if p == 1 else _solve(R, b)
    c_x = s[j + 1] / s[j]
    scale = -a[j + 1] * B
    pred = [scale] + [0.0] * (p - 1)  # on D_j, D_{j-1}, ..., D_{j-p+1}
    corr = [scale * rho_c[-1], -scale * rho_c[-1]] + [0.0] * (p - 1)  # on D_{j+1}, D_j, ..., D_{j-p+1}
    for k in range(1, p):  # D1_k = (D_{j-k} - D_j) / r_k
        w_p, w_c = scale * rho_p[k - 1] / r[k - 1], scale * (rho_c[k - 1] - rho_p[k - 1]) / r[k - 1]
        pred[k] += w_p
        pred[0] -= w_p
        corr[k + 1] += w_c
        corr[1] -= w_c
    return c_x, pred, corr


def _plan(lam: list[float], s: list[float], a: list[float], p: int) -> list[tuple[float, list[float]]]:
    """Per step i: ``(c_x, coefs)`` with ``x_{i+1} = c_x x_i + sum_m coefs[m] D_{i-m}``, where ``x_i`` is
    the predicted state and the corrector's change to it (i > 0) is folded into ``coefs``."""
    K = len(lam) - 1
    steps = [_unipc_step(lam, s, a, j, min(p, j + 1, K - j)) for j in range(K)]
    plan = []
    for i, (c_x, pred, _) in enumerate(steps):
        corr = steps[i - 1][2] if i > 0 else []
        n = max(len(pred), len(corr))
        pred, corr = pred + [0.0] * (n - len(pred)), corr + [0.0] * (n - len(corr))
        plan.append((c_x, [c_x * c + w for c, w in zip(corr, pred)]))
    return plan


@register(
    stochastic=False,
    order=3,
    schedule_invariant=True,
    options={
        "order": Option(
            2, kind=int, low=1, high=3, doc="UniPC's p: UniP-p predictor and UniC-p corrector (accuracy p+1)"
        )
    },
    summary="UniPC-bh2 (UniP-p predictor + UniC-p corrector), data prediction, multistep",
)
def sample_unipc(denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options):
    """UniPC-p, variant bh2, data prediction (Zhao et al. 2023); diffusers' ``UniPCMultistepScheduler``
    with ``predict_x0=True, solver_type="bh2", disable_corrector=[], lower_order_final=True``.

    With ``lambda = log(alpha/sigma)``, ``h = lambda_{j+1} - lambda_j``, ``B(h) = e^{-h} - 1``,
    ``r_k = (lambda_{j-k} - lambda_j) / h`` and ``D1_k = (D_{j-k} - D_j) / r_k``:

        UniP-p   x_{j+1} = (sigma_{j+1}/sigma_j) x_j - alpha_{j+1} B(h) (D_j + sum_{k<p} rho^p_k D1_k)
        UniC-p   x^c_{j+1} = (sigma_{j+1}/sigma_j) x_j
                             - alpha_{j+1} B(h) (D_j + sum_{k<p} rho^c_k D1_k + rho^c_p (D_{j+1} - D_j))

    where ``D_{j+1} = D(x_{j+1}, t_{j+1})`` is the next step's evaluation (so NFE = K + 1), the weights
    solve ``R rho = b`` with ``R_ik = r_k^(i-1)`` (``r_p = 1``), ``b_i = i! phi_{i+1}(-h) / phi_1(-h)``
    (``rho^p``: the first p - 1 rows and columns; p = 2 uses ``rho^p = 1/2``, the p = 1 corrector
    ``rho^c = 1/2``, as diffusers does). The step from the corrected ``x^c_{j+1}`` reuses ``D_{j+1}``.
    Every state but the last (``x_K``) is corrected; the order of step j is ``min(p, j + 1, K - j)``
    (warm-up, and diffusers' ``lower_order_final``). Option ``order`` = p in 1..3, default 2
    (diffusers' ``solver_order=2``)."""
    run = Run(sample_unipc, denoiser, schedule, noise, steps, grid, cond, options)
    lam = [lam / 2 for lam in run.lam]  # log(alpha / sigma)
    return _run_plan(run, _plan(lam, run.s, run.a, run.opts["order"]))
