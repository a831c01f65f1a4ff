"""Time grids fitted to a model or to a schedule, explicit grids for ``solver(..., grid=ts)``: GITS
(Chen et al. 2024; from the denoiser's trajectories) and DMN (Xue et al. 2024; from alpha(t) and
sigma(t) alone). A pipeline's ``grid.json`` (``write_fitted``, ``load_fitted``)::

    {"method": "gits", "solver": "euler_ancestral", "fitted_for": "ddim",
     "steps": {"5": [t_0, ..., t_5], ...}, "log_snr": {"5": [lam_0, ..., lam_5], ...}}

with times decreasing (noise to data) under the fitting schedule and their log-SNRs."""

from __future__ import annotations

import functools
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from difflab.io import atomic_write
from difflab.schedules import Schedule
from difflab.solvers.grids import GRIDS, get_grid, resolve_grid
from difflab.solvers.registry import Option, check_steps, get_solver, get_spec, solver_names

FIT_METHODS = ("gits", "dmn")
FALLBACK_STUDENT = "ddim"  # the solver a stochastic solver's grid is fitted for (``grid_student``)

_OPTIONS = {
    "gits": {
        "candidates": Option(
            61, kind=int, low=3, doc="candidate times, ends included (the paper's num_steps_tea = 61)"
        ),
        "candidate_grid": Option(
            "edm", kind=str, choices=GRIDS, doc="the candidates' spacing (the paper: EDM rho = 7)"
        ),
        "teacher": Option(
            "heun_edm", kind=str, doc="deterministic fixed-step solver of the teacher trajectory"
        ),
        "teacher_refine": Option(2, kind=int, low=1, doc="teacher steps per candidate interval"),
        "coeff": Option(
            1.15, low=0.0, low_open=True, doc="weight of the rest of the path per step (paper: 1.15)"
        ),
        "polish": Option(
            3, kind=int, low=0, doc="coordinate-descent sweeps on the whole run's error (0: the paper's GITS)"
        ),
    },
    "dmn": {
        "power": Option(1.0, low=0.0, low_open=True, doc="D's error bound at lambda: sigma^power / alpha"),
        "init": Option("logsnr", kind=str, choices=GRIDS, doc="the grid the optimisation starts from"),
        "maxiter": Option(500, kind=int, low=1, doc="SLSQP iterations"),
    },
}


@dataclass(frozen=True)
class GridFit:
    """A fit ``method`` (``FIT_METHODS``) with its ``options`` (``_OPTIONS[method]``; those not given take
    their defaults), checked when built: an unknown method or option, or a value out of its range, is a
    ValueError naming it."""

    method: str
    options: Mapping = field(default_factory=dict)

    def __post_init__(self):
        if self.method not in FIT_METHODS:
            raise ValueError(f"unknown fit method {self.method!r}; valid methods: {', '.join(FIT_METHODS)}")
        object.__setattr__(self, "options", _check_options(self.method, dict(self.options)))


def fit_grid(
    method: str, denoiser, schedule: Schedule, solver: str, steps: int, noise: Tensor, *, cond=None, **options
) -> Tensor:
    """A time grid fitted for ``solver`` with ``steps`` steps: ``[steps + 1]`` float64 times, strictly
    decreasing from ``schedule.t_max`` to ``schedule.t_min``, by ``"gits"`` (``_fit_gits``) or ``"dmn"``
    (``_fit_dmn``; denoiser, noise and cond unused) with the method's ``options`` (``_OPTIONS``).
    ``solver``: deterministic and fixed-step with its default options; ``noise`` ``[B, ...]`` (standard
    normal, as a solver takes it) and ``cond`` feed GITS's teacher. Same inputs -> same grid."""
    return fit_grids(GridFit(method, options), denoiser, schedule, solver, [steps], noise, cond=cond)[steps]


def fit_grids(
    fit: GridFit | str,
    denoiser,
    schedule: Schedule,
    solver: str,
    steps: Sequence[int],
    noise: Tensor,
    *,
    cond=None,
    solver_options: Mapping | None = None,
) -> dict[int, Tensor]:
    """``fit_grid`` for every step count of ``steps`` (``{K: [K + 1] times}``) by ``fit`` (a method name
    alone: its default options), with ``solver`` run with ``solver_options`` (deterministic with them).
    GITS's teacher and step costs are computed once for all K."""
    fit = GridFit(fit) if isinstance(fit, str) else fit
    for k in steps:
        check_steps(k)
    _check_deterministic(solver, "solver", solver_options)
    opts = dict(fit.options)
    if fit.method == "gits":
        grids = _fit_gits(denoiser, schedule, solver, steps, noise, cond, dict(solver_options or {}), opts)
    else:
        grids = {k: _fit_dmn(schedule, solver, k, **opts) for k in steps}
    for ts in grids.values():
        if not (torch.isfinite(ts).all() and (ts[1:] < ts[:-1]).all()):
            raise ValueError(
                f"fit_grid({fit.method!r}) gave a grid that is not strictly decreasing: {ts.tolist()}"
            )
    return grids


def _check_deterministic(solver: str, what: str, options: Mapping | None = None) -> None:
    spec = get_spec(solver)  # unknown name -> ValueError listing the solvers
    if spec.adaptive or spec.is_stochastic(options):
        deterministic = [
            n for n in solver_names() if not get_spec(n).adaptive and not get_spec(n).is_stochastic()
        ]
        raise ValueError(
            f"fit_grid: {what} {solver!r} is {'adaptive' if spec.adaptive else 'stochastic'}; "
            f"allowed: a deterministic fixed-step solver ({', '.join(deterministic)})"
        )


def _check_options(method: str, options: dict) -> dict:
    declared = _OPTIONS[method]
    for key in options:
        if key not in declared:
            raise ValueError(f"fit_grid({method!r}): unknown option {key!r}; allowed: {', '.join(declared)}")
    out = {}
    for key, opt in declared.items():
        value = options.get(key, opt.default)
        if opt.kind is str and opt.choices is None:  # a solver name, checked where it is used
            if not isinstance(value, str):
                raise ValueError(f"fit_grid({method!r}): option {key}={value!r} must be a solver name")
            out[key] = value
        else:
            out[key] = opt.check(f"fit_grid({method!r})", key, value)
    return out


# -- for a pipeline: any solver, grid.json ------------------------------------------------------------
def grid_student(solver: str, options: Mapping | None = None) -> str | None:
    """The solver a fitted grid for ``solver`` run with ``options`` is fitted for: ``solver`` itself when
    it is deterministic with fixed steps; ``FALLBACK_STUDENT`` (ddim, the step GITS's paper scores every
    solver's grid with) when it draws noise, whose single-step and multistep error models do not apply;
    None when it is adaptive (it reads only a grid's two ends)."""
    spec = get_spec(solver)
    if spec.adaptive:
        return None
    return FALLBACK_STUDENT if spec.is_stochastic(options) else solver


def fit_for_sampling(
    fit: GridFit | str,
    denoiser,
    schedule: Schedule,
    solver: str,
    steps: Sequence[int],
    noise: Tensor | None,
    *,
    cond=None,
    solver_options: Mapping | None = None,
) -> dict[int, Tensor]:
    """One network's grids ``{K: [K + 1] times}`` for a sample stage running ``solver`` with
    ``solver_options``: ``fit_grids`` for ``grid_student(solver, solver_options)``, or, for an adaptive
    solver, ``[t_max, t_min]`` under every key of ``steps`` (its rows' steps, e.g. 0)."""
    student = grid_student(solver, solver_options)
    if student is None:
        return {k: get_grid("logsnr", schedule, 1) for k in steps}
    own = solver_options if student == solver else None
    return fit_grids(fit, denoiser, schedule, student, steps, noise, cond=cond, solver_options=own)


def write_fitted(
    path: str | os.PathLike,
    method: str,
    solver: str,
    grids: Mapping,
    schedule: Schedule,
    *,
    solver_options: Mapping | None = None,
) -> None:
    """Write ``grids`` (``fit_for_sampling``'s, fitted under ``schedule``) as ``grid.json``, atomically."""
    if method not in FIT_METHODS:
        raise ValueError(f"unknown fit method {method!r}; valid methods: {', '.join(FIT_METHODS)}")
    ordered = sorted(grids.items())
    record = {
        "method": method,
        "solver": solver,
        "fitted_for": grid_student(solver, solver_options),
        "steps": {str(k): ts.tolist() for k, ts in ordered},
        "log_snr": {str(k): schedule.log_snr(ts.to(torch.float64)).tolist() for k, ts in ordered},
    }
    text = json.dumps(record, indent=1) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def load_fitted(path: str | os.PathLike, schedule: Schedule | None = None) -> dict[int, Tensor]:
    """The grids of a ``grid.json``, ``{K: [K + 1] float64 times}``: as fitted, or, with a (sampling)
    ``schedule``, the fitted log-SNRs mapped affinely onto its range ``[lam(t_max), lam(t_min)]`` and back
    to its times (the identity in log-SNR where the ranges agree, so a schedule-invariant solver then
    gives the same samples under every schedule)."""
    record = json.loads(Path(path).read_text())
    if not isinstance(record, dict) or record.get("method") not in FIT_METHODS:
        raise ValueError(
            f"{path}: not a fitted grid file (its 'method' must be one of {', '.join(FIT_METHODS)})"
        )
    times, lams = record.get("steps"), record.get("log_snr")
    if not isinstance(times, dict) or not isinstance(lams, dict) or set(times) != set(lams):
        raise ValueError(f"{path}: 'steps' and 'log_snr' must map the same step counts to lists of numbers")
    out = {}
    for key in times:
        try:
            ts = resolve_grid(torch.tensor(times[key], dtype=torch.float64), None, None, "cpu")
            lam = torch.tensor(lams[key], dtype=torch.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: steps {key!r}: {e}") from None
        if not key.isdigit() or lam.shape != ts.shape or int(key) not in (0, ts.numel() - 1):
            raise ValueError(f"{path}: step count {key!r} does not match its {ts.numel()} times")
        out[int(key)] = ts if schedule is None else _on_schedule(lam, schedule)
    return dict(sorted(out.items()))


def _on_schedule(lam: Tensor, schedule: Schedule) -> Tensor:
    """Times of ``schedule`` at the log-SNRs ``lam`` (increasing) mapped affinely onto its range."""
    ends = torch.tensor([schedule.t_max, schedule.t_min], dtype=torch.float64)
    lo, hi = schedule.log_snr(ends).tolist()
    lam = lam.to(torch.float64)
    mapped = lo + (lam - lam[0]) * (hi - lo) / (lam[-1] - lam[0])
    ts = schedule.t_from_log_snr(mapped).to(torch.float64)
    ts[0], ts[-1] = ends
    return resolve_grid(ts, schedule, None, "cpu")


# -- GITS -----------------------------------------------------------------------------------------
class _StepDone(Exception):
    """Raised from a solver's callback once its single step is taken (skips its final denoising)."""


@torch.no_grad()
def _fit_gits(denoiser, schedule, solver, steps, noise, cond, solver_options, opts) -> dict[int, Tensor]:
    """GITS (Chen et al., ICML 2024, "On the Trajectory Regularity of ODE-based Diffusion Sampling";
    zju-pi/diff-sampler ``gits-main/gits_utils.py``) for each K of ``steps``; ``opts``: ``_OPTIONS["gits"]``.

    1. Candidates ``tau_0 = t_max > ... > tau_{N-1} = t_min``: ``candidates`` = N times of
       ``candidate_grid`` (the paper: 61 times of EDM's rho = 7 grid).
    2. The teacher (``teacher`` on the candidate grid refined ``teacher_refine`` times; the paper: iPNDM on
       the 61 times) from ``noise`` (the paper: 256 noises): states ``X_i ~ x(tau_i)`` ``[N, B, ...]``.
    3. Costs ``c[i, j] = mean_b |solver_step(X_i, tau_i -> tau_j) - X_j|_2`` for i < j (the paper's
       ``metric="l2"``; its default ``"dev"`` is not implemented). The paper scores every student with an
       Euler step in EDM's variables (``ddim``'s step); here it is the student's own first step, which
       for a multistep solver has no history (ddim's step for DPM-Solver++): an approximation.
    4. Dynamic programming (``_gits_path``, the paper's ``dp``): the path ``0 = p_0 < ... < p_K = N - 1``
       minimising ``sum_k coeff^k c[p_k, p_{k+1}]``.
    5. Not in the paper (``polish=0`` skips it): coordinate descent (``_gits_polish``, at most ``polish``
       sweeps) on the whole K-step run's distance to the teacher's end state,
       ``mean_b |solver(X_0; tau_p)(tau_{N-1}) - X_{N-1}|_2``. The one-step costs do not see a multistep
       solver's history, and their path can be worse than the log-SNR grid (dpm_solver_2m at 5 steps on
       the exact mixture: 0.233 against 0.173); polished, 0.071 (tests/test_fit_grid.py has the table).

    Cost: the teacher's NFE plus ``N (N - 1) / 2`` single steps of ``solver`` (1830 for N = 61), once for
    every K, plus about 100-250 K-step runs per K to polish (exact mixture, 3 sweeps); no autograd graph
    (a network's parameters require grad)."""
    if opts["candidates"] - 1 < max(steps):
        raise ValueError(
            f"fit_grid('gits'): candidates={opts['candidates']} allows at most {opts['candidates'] - 1} "
            f"steps, not {max(steps)}"
        )
    _check_deterministic(opts["teacher"], "teacher")
    if not isinstance(noise, Tensor) or not noise.is_floating_point() or noise.ndim < 1:
        raise ValueError("fit_grid('gits'): noise must be a floating-point tensor of shape [B, ...]")
    tau, X = _gits_teacher(denoiser, schedule, noise, cond, opts)
    step = functools.partial(get_solver(solver), **solver_options)
    cost = _gits_costs(step, denoiser, schedule, tau, X, cond)

    def run_error(path: list[int]) -> float:
        x = _run_to_end(step, denoiser, schedule, noise.to(torch.float64), tau[path], cond)
        return (x - X[-1]).flatten(1).norm(dim=1).mean().item()

    paths = {k: _gits_path(cost, k, opts["coeff"]) for k in steps}
    return {k: tau[_gits_polish(path, run_error, opts["polish"])] for k, path in paths.items()}


def _gits_teacher(denoiser, schedule, noise, cond, opts) -> tuple[Tensor, Tensor]:
    """The candidates ``tau`` ``[N]`` and the teacher's states at them ``X`` ``[N, B, ...]`` (float64)."""
    N, refine = opts["candidates"], opts["teacher_refine"]
    fine = get_grid(opts["candidate_grid"], schedule, (N - 1) * refine, device=noise.device)
    states = [schedule.sigma(fine[:1]).item() * noise.to(torch.float64)]
    get_solver(opts["teacher"])(
        denoiser, schedule, noise, None, grid=fine, cond=cond, callback=lambda info: states.append(info["x"])
    )
    return fine[::refine], torch.stack(states[::refine])


def _gits_costs(step, denoiser, schedule, tau: Tensor, X: Tensor, cond) -> Tensor:
    """``c[i, j] = mean_b |step(X_i, tau_i -> tau_j) - X_j|_2`` for i < j, inf elsewhere, ``[N, N]``."""
    N = len(tau)
    sigma = schedule.sigma(tau).tolist()
    cost = torch.full((N, N), math.inf, dtype=torch.float64)
    for i in range(N - 1):
        for j in range(i + 1, N):
            x_j = _run_to_end(step, denoiser, schedule, X[i] / sigma[i], tau[[i, j]], cond)
            cost[i, j] = (x_j - X[j]).flatten(1).norm(dim=1).mean().item()
    return cost


def _run_to_end(step, denoiser, schedule, noise, grid, cond) -> Tensor:
    """The state at ``grid[-1]`` of solver ``step`` run over ``grid`` from ``x(grid[0]) = sigma noise``
    (before the final denoising, which is skipped)."""
    out = []

    def take(info):
        if info["i"] == len(grid) - 2:
            out.append(info["x"])
            raise _StepDone

    try:
        step(denoiser, schedule, noise, None, grid=grid, cond=cond, callback=take)
    except _StepDone:
        pass
    return out[0]


def _gits_polish(path: list[int], run_error, sweeps: int) -> list[int]:
    """``path`` (candidate indices, ends fixed) after at most ``sweeps`` sweeps of coordinate descent on
    ``run_error(path)``: each inner index in turn moves to the index strictly between its neighbours with
    the least error, when that is lower than the current one (ties keep the current). Stops early after a
    sweep that moves nothing."""
    path, best = list(path), run_error(path) if sweeps else None
    for _ in range(sweeps):
        moved = False
        for k in range(1, len(path) - 1):
            for c in range(path[k - 1] + 1, path[k + 1]):
                if c != path[k] and (e := run_error([*path[:k], c, *path[k + 1 :]])) < best:
                    best, path[k], moved = e, c, True
        if not moved:
            break
    return path


def _gits_path(cost: Tensor, steps: int, coeff: float) -> list[int]:
    """Indices ``0 = p_0 < ... < p_K = N - 1`` (K = ``steps``) minimising ``sum_k coeff^k cost[p_k, p_{k+1}]``
    with ``V[k, i]`` the least cost from candidate i to N - 1 in exactly k steps, ``V[0] = [inf, ..., 0]``,
    ``V[k, i] = min_{j > i} cost[i, j] + coeff V[k - 1, j]``; ties go to the smallest j (as the paper's
    backtracking). ``cost`` ``[N, N]`` is read above the diagonal only."""
    N = cost.shape[0]
    upper = torch.ones(N, N, dtype=torch.bool).triu(1)
    c = torch.where(upper, cost.to(torch.float64), torch.full_like(cost, math.inf, dtype=torch.float64))
    V = torch.full((steps + 1, N), math.inf, dtype=torch.float64)
    V[0, N - 1] = 0.0
    choice = torch.zeros((steps + 1, N), dtype=torch.long)
    for k in range(1, steps + 1):
        V[k], choice[k] = (c + coeff * V[k - 1][None, :]).min(dim=1)
    path = [0]
    for k in range(steps, 0, -1):
        path.append(int(choice[k, path[-1]]))
    return path


# -- DMN ------------------------------------------------------------------------------------------
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(24)


def _dmn_weights(lam: np.ndarray, p: int) -> np.ndarray:
    """``J[n, m]``, ``[K, p]``: the weight of ``D(lambda_{n-m})`` in step n of a multistep exponential
    integrator of order p in data prediction (orders 1, 2, ... on the first steps),
    ``J[n, m] = int_{lambda_n}^{lambda_{n+1}} e^{lambda - lambda_K} l_{n,m}(lambda) d lambda`` with
    ``l_{n,m}`` the Lagrange basis on ``lambda_n, ..., lambda_{n-q+1}``, ``q = min(p, n + 1)``
    (24-point Gauss-Legendre: exact to rounding for the step sizes of a grid). Zero for m >= q."""
    K = len(lam) - 1
    n = np.arange(K)
    q = np.minimum(p, n + 1)
    a, b = lam[:-1, None], lam[1:, None]
    u = a + (b - a) * (_GL_NODES + 1) / 2  # [K, 24]
    kernel = _GL_WEIGHTS * (b - a) / 2 * np.exp(u - lam[-1])
    J = np.zeros((K, p))
    for m in range(p):
        basis = np.ones_like(u)
        for l in range(p):
            if l == m:
                continue
            used = (l < q) & (m < q)  # nodes n - l and n - m take part in step n
            node_m, node_l = lam[np.maximum(n - m, 0)], lam[np.maximum(n - l, 0)]
            factor = (u - node_l[:, None]) / np.where(used, node_m - node_l, 1.0)[:, None]
            basis = np.where(used[:, None], basis * factor, basis)
        J[:, m] = np.where(m < q, (kernel * basis).sum(axis=1), 0.0)
    return J


def _dmn_objective(lam: np.ndarray, p: int, power: float) -> float:
    """``sum_n sum_m |J[n, m]| eps(lambda_{n-m})``, ``eps = sigma^power / alpha`` (``_fit_dmn``) with
    ``alpha^2 + sigma^2 = 1`` at ``lambda = log(alpha/sigma)``."""
    sigma, alpha = 1 / np.sqrt(1 + np.exp(2 * lam)), 1 / np.sqrt(1 + np.exp(-2 * lam))
    eps = sigma**power / alpha
    J = _dmn_weights(lam, p)
    n = np.arange(len(lam) - 1)
    return float(sum(np.abs(J[:, m]) @ eps[np.maximum(n - m, 0)] for m in range(p)))


def _fit_dmn(schedule, solver, steps, *, power, init, maxiter):
    """DMN (Xue et al., CVPR 2024, "Accelerating Diffusion Sampling with Optimized Time Steps";
    scxue/DM-NonUniform ``StepOptim``): the interior ``lambda = log(alpha/sigma)`` that minimise a bound
    on the discretisation error of a DPM-Solver-type multistep solver, from alpha and sigma alone.

    The exact step is ``x_{n+1}/sigma_{n+1} = x_n/sigma_n + int e^lambda D dlambda``; a multistep solver
    of order p replaces D by its Lagrange interpolant through the last q = min(p, n + 1) values
    (``_dmn_weights``). The interpolation weights reproduce constants, so with D at lambda_m within
    ``eps_m = sigma_m^power / alpha_m`` of the sample (the paper's model-free bound; its code takes power 2
    for latent and 1 for pixel-space models), the error is at most ``sum_n sum_m |J[n, m]| eps_{n-m}``,
    minimised over ``lambda_1 < ... < lambda_{K-1}`` between the schedule's ends with SLSQP (the
    paper: trust-constr), from the ``init`` grid, every gap at least 1e-3 of the mean step.

    p = min(order, 3) from ``solver``'s spec. Simplifications: D's errors bound each step by the triangle
    inequality, whereas the paper's code sums the weights of each node over the steps before taking
    absolute values, treats the first step separately and, for K <= 7, the first three steps as root sums
    of squares; on the exact mixture that sum let SLSQP drive node weights to cancel and gave worse grids.
    The model is exact for ddim (p = 1) and dpm_solver_3m with ``third_order``; dpm_solver_2m weights its
    difference as a midpoint rule (the same to leading order) and default dpm_solver_3m halves its d2
    weight. With power = 1 and p = 1 the objective is ``sum_n expm1(lambda_{n+1} - lambda_n)``,
    minimised by the log-SNR grid."""
    from scipy.optimize import LinearConstraint, minimize

    p = min(get_spec(solver).order, 3)
    t_init = get_grid(init, schedule, steps)
    lam_init = (schedule.log_snr(t_init) / 2).numpy()
    lam_noise, lam_data = float(lam_init[0]), float(lam_init[-1])
    if steps == 1:
        return t_init
    gap = 1e-3 * (lam_data - lam_noise) / steps
    # gaps lambda_1 - lambda_noise, lambda_{i+1} - lambda_i, lambda_data - lambda_{K-1}, each >= gap
    A = np.zeros((steps, steps - 1))
    A[np.arange(steps - 1), np.arange(steps - 1)] = 1.0
    A[np.arange(1, steps), np.arange(steps - 1)] = -1.0
    lower = np.full(steps, gap)
    lower[0], lower[-1] = lam_noise + gap, gap - lam_data

    def full(inner):
        return np.concatenate([[lam_noise], inner, [lam_data]])

    scale = _dmn_objective(lam_init, p, power)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = minimize(
            lambda inner: _dmn_objective(full(inner), p, power) / scale,
            lam_init[1:-1],
            method="SLSQP",
            constraints=[LinearConstraint(A, lower, np.inf)],
            options={"maxiter": maxiter},
        )
    lam = full(np.sort(result.x))
    ts = schedule.t_from_log_snr(torch.as_tensor(2 * lam, dtype=torch.float64)).to(torch.float64)
    ts[0], ts[-1] = t_init[0], t_init[-1]
    return ts
