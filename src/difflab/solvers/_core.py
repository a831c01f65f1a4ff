"""The solvers' shared machinery: the registry of specs, noise, the equations, time grids, set-up.

The contract every solver keeps (signature, start, grid, float64, final denoising) is stated once, in
``difflab.solvers``' docstring. Here: the PF-ODE drift in the form that stays finite where f and g2
diverge (flow at t = 1: (x - D)/t), the reverse-SDE drift, EDM's variables, the grids, and ``_Run``,
which checks a call and computes the per-grid-time coefficients once, in float64, as Python floats;
solvers update their state in place (no allocation per step), so a step costs a few passes over x on
top of its denoiser calls (bench/solver_overhead.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from difflab.schedules import Schedule

GRIDS = ("uniform", "logsnr", "edm")
EDM_RHO = 7.0

# Options every solver accepts from a direct caller (never from the config): the integration dtype
# and, for fixed-step solvers, a per-step callback that receives
# {"i", "t", "t_next", "x" (a copy of the state at t_next), "x0_hat" (D at the step's start)}.
_COMMON_OPTIONS = {"dtype": torch.float64, "callback": None}


# -- the registry: one spec per solver -----------------------------------------------------------
@dataclass(frozen=True)
class Option:
    """A solver option: its default and what is allowed (``kind`` ``float``, ``int`` or ``bool``;
    bounds ``low``/``high``, open where ``low_open``/``high_open``; or a tuple of ``choices``)."""

    default: Any
    kind: type = float
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None
    doc: str = ""

    def allowed(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        what = {float: "a finite number", int: "an integer", bool: "true or false"}[self.kind]
        if self.low is not None and self.high is not None:
            lo, hi = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{what} in {lo}{self.low}, {self.high}{hi}"
        if self.low is not None:
            return f"{what} {'>' if self.low_open else '>='} {self.low}"
        if self.high is not None:
            return f"{what} {'<' if self.high_open else '<='} {self.high}"
        return what

    def check(self, solver: str, key: str, value):
        """``value`` if allowed (ints accepted as floats), else ``ValueError`` naming it."""
        if self.choices is not None:
            ok = value in self.choices
        elif self.kind is bool:
            ok = isinstance(value, bool)
        elif self.kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok and self.low is not None:
            ok = value > self.low if self.low_open else value >= self.low
        if ok and self.high is not None:
            ok = value < self.high if self.high_open else value <= self.high
        if not ok:
            raise ValueError(f"{solver}: option {key}={value!r} is not allowed; must be {self.allowed()}")
        return float(value) if self.kind is float else value


def _one_per_step(steps: int, options: dict) -> int:
    return steps + 1


@dataclass(frozen=True)
class SolverSpec:
    """What a solver is, for its callers: ``fn`` (the ``sample_*`` function), ``stochastic`` (draws
    noise after the start with its default options; ``stochastic_if(options)`` decides where an
    option switches it), ``adaptive`` (``steps`` ignored, NFE measured), ``order`` (of the
    deterministic update, or strong order for SDE steppers), ``options`` (name -> ``Option``),
    ``nfe_rule(steps, options)`` (evaluations, the final denoising included), ``schedule_invariant``
    (steps in log-SNR or EDM's variables, so the samples do not depend on the schedule for the same
    exact denoiser and log-SNR grid), and a one-line ``summary``."""

    name: str
    fn: Callable
    stochastic: bool
    order: int
    adaptive: bool = False
    options: Mapping[str, Option] = field(default_factory=dict)
    nfe_rule: Callable[[int, dict], int] | None = _one_per_step
    schedule_invariant: bool = False
    stochastic_if: Callable[[dict], bool] | None = None
    summary: str = ""

    @property
    def family(self) -> str:
        """``"sde"`` for solvers that draw noise along the way, else ``"ode"``."""
        return "sde" if self.stochastic else "ode"

    def defaults(self) -> dict:
        return {key: opt.default for key, opt in self.options.items()}

    def check_options(self, options: Mapping | None = None, also_allowed: Sequence[str] = ()) -> dict:
        """The solver's options with defaults filled in; an unknown key or a bad value -> ValueError
        (``also_allowed``: further names the caller handles, listed in the message)."""
        options = dict(options or {})
        for key in options:
            if key not in self.options:
                allowed = ", ".join(sorted({*self.options, *also_allowed})) or "none"
                raise ValueError(f"{self.name}: unknown option {key!r}; allowed: {allowed}")
        return {
            key: opt.check(self.name, key, options.get(key, opt.default)) for key, opt in self.options.items()
        }

    def is_stochastic(self, options: Mapping | None = None) -> bool:
        """Whether the solver draws noise after the start with these options."""
        if self.stochastic_if is None:
            return self.stochastic
        return bool(self.stochastic_if(self.check_options(options)))

    def nfe(self, steps: int, options: Mapping | None = None) -> int:
        """Denoiser evaluations for ``steps`` steps (ValueError for an adaptive solver)."""
        if self.adaptive or self.nfe_rule is None:
            raise ValueError(
                f"{self.name} is adaptive: its NFE is not a function of steps; measure the actual "
                "count with CountingDenoiser"
            )
        _check_steps(steps)
        return int(self.nfe_rule(steps, self.check_options(options)))


_REGISTRY: dict[str, SolverSpec] = {}


def register(name: str, **spec) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as solver ``name`` with the ``SolverSpec`` fields in ``spec``.

    ``@register("euler", stochastic=False, order=1)`` above ``def sample_euler(...)`` is all a new
    solver needs; validation, sampling, the pipeline and the report read the spec.
    """

    def add(fn: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"solver {name!r} is already registered")
        _REGISTRY[name] = SolverSpec(name=name, fn=fn, **spec)
        return fn

    return add


def unregister(name: str) -> None:
    """Remove a solver registered at run time (tests, notebooks)."""
    _REGISTRY.pop(name, None)


def solver_names() -> tuple[str, ...]:
    """The registered solver names, in registration order (= ``difflab.solvers.SOLVERS``)."""
    return tuple(_REGISTRY)


def get_spec(name: str) -> SolverSpec:
    """The spec of solver ``name``; unknown name -> ValueError listing the valid ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown solver {name!r}; valid solvers: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def get_solver(name: str) -> Callable:
    """The solver function called ``name`` (one of ``SOLVERS``)."""
    return get_spec(name).fn


def nfe(name: str, steps: int, **options) -> int:
    """Denoiser evaluations a fixed-step solver makes for ``steps`` steps, the final denoising included
    (the spec's rule, e.g. K + 1 for ddim, 2K + 1 for heun). rk45 is adaptive: it raises."""
    return get_spec(name).nfe(steps, options)


# -- randomness, counting ------------------------------------------------------------------------
def randn_like(x: Tensor, generator: torch.Generator | Sequence[torch.Generator] | None = None) -> Tensor:
    """Standard normal noise shaped like ``x`` ``[B, ...]``.

    ``generator`` is ``None`` (global RNG), one ``torch.Generator``, or a sequence of ``B``
    generators, one per batch row (EDM's ``StackedRandomGenerator``): then row ``b``'s noise depends
    only on ``generator[b]``, so a sample's noise path is independent of the batch it sits in.
    Float64 noise is drawn in float32 and cast: torch's float64 normal sampler is ~10x slower on CPU
    and a float32 normal is exact enough for sampling.
    """
    return _draw(x, generator).to(x.dtype)


def _draw_dtype(x: Tensor) -> torch.dtype:
    return torch.float32 if x.dtype == torch.float64 else x.dtype


def _draw(x: Tensor, generator, out: Tensor | None = None) -> Tensor:
    """``randn_like`` before the cast: float32 for float64 ``x`` (added to x in place, no extra pass)."""
    if out is None:
        out = torch.empty(x.shape, dtype=_draw_dtype(x), device=x.device)
    if generator is None or isinstance(generator, torch.Generator):
        return out.normal_(generator=generator)
    if len(generator) != x.shape[0]:
        raise ValueError(
            f"got {len(generator)} generators for a batch of {x.shape[0]} rows; need one per row"
        )
    for row, g in zip(out, generator):
        row.normal_(generator=g)
    return out


class CountingDenoiser:
    """Wraps a denoiser and counts its calls in ``.nfe`` (one per call, whatever the batch size).

    Usable with every solver; the pipeline uses it to record the actual NFE of the adaptive rk45.
    """

    def __init__(self, denoiser: Callable):
        self.denoiser, self.nfe = denoiser, 0

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        self.nfe += 1
        return self.denoiser(x, t) if cond is None else self.denoiser(x, t, cond)

    def reset(self) -> None:
        self.nfe = 0


# -- the equations -------------------------------------------------------------------------------
def _pf_coefficients(schedule: Schedule, t: Tensor) -> tuple[Tensor, Tensor]:
    """PF-ODE drift ``c_x x + c_D D`` with ``c_x = sigma'/sigma``, ``c_D = alpha' - sigma' alpha / sigma``.

    Equal to ``f x - g2/2 score``; both terms of ``c_D`` share a sign, so no precision is lost
    where f and g2 are large.
    """
    a, s = schedule.alpha(t), schedule.sigma(t)
    ds = schedule.d_sigma(t)
    return ds / s, schedule.d_alpha(t) - ds * a / s


def _sde_coefficients(schedule: Schedule, t: Tensor) -> tuple[Tensor, Tensor]:
    """Reverse-SDE drift ``f x - g2 score = (2 c_x - f) x + 2 c_D D`` (= 2 PF-ODE drift - f x)."""
    c_x, c_D = _pf_coefficients(schedule, t)
    return 2 * c_x - schedule.f(t), 2 * c_D


def _bcast(c: Tensor, x: Tensor) -> Tensor:
    c = torch.as_tensor(c, dtype=x.dtype, device=x.device)
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


def _batch_t(t, x: Tensor) -> Tensor:
    """``t`` (a number or a tensor broadcastable to ``[B]``) as a ``[B]`` tensor of x's dtype."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.expand(x.shape[0]).contiguous() if t.numel() == 1 else t.reshape(x.shape[0])


def _call(denoiser, x: Tensor, t: Tensor, cond) -> Tensor:
    return (denoiser(x, t) if cond is None else denoiser(x, t, cond)).to(x.dtype)


def pf_ode_drift(denoiser, schedule: Schedule, x: Tensor, t, cond=None) -> Tensor:
    """PF-ODE drift ``dx/dt = f x - g2/2 score`` at ``x`` ``[B, ...]``, ``t`` scalar or ``[B]``."""
    tb = _batch_t(t, x)
    c_x, c_D = _pf_coefficients(schedule, tb)
    return _bcast(c_x, x) * x + _bcast(c_D, x) * _call(denoiser, x, tb, cond)


def reverse_sde_drift(denoiser, schedule: Schedule, x: Tensor, t, cond=None) -> Tensor:
    """Reverse-SDE drift ``f x - g2 score`` (time running backwards: ``dx = drift dt + g dW_bar``)."""
    tb = _batch_t(t, x)
    c_x, c_D = _sde_coefficients(schedule, tb)
    return _bcast(c_x, x) * x + _bcast(c_D, x) * _call(denoiser, x, tb, cond)


def edm_ode_velocity(denoiser, schedule: Schedule, y: Tensor, u: Tensor, cond=None) -> Tensor:
    """The PF-ODE in EDM's well-conditioned variables (Karras et al. 2022, eq. 4 with s = e^u):
    ``y = x / alpha`` over ``u = log(sigma / alpha) = -log_snr / 2``,

        dy/du = y - D(alpha y, t(u)),      t(u) = schedule.t_from_log_snr(-2 u),

    for ``y`` ``[B, ...]`` and a 0-d ``u``. Finite wherever D is: no f or g2, which diverge at the ends
    of VP-cosine and flow. rk45 and the likelihood integrate this one equation.
    """
    t = schedule.t_from_log_snr(-2 * u.to(torch.float64))
    a = schedule.alpha(t).to(y.dtype)  # 0-d tensor: no device sync
    return y - _call(denoiser, a * y, t.to(y.dtype).expand(y.shape[0]).contiguous(), cond)


# -- time grids ----------------------------------------------------------------------------------
def get_grid(grid: str, schedule: Schedule, steps: int, *, device=None) -> Tensor:
    """``steps + 1`` float64 times, strictly decreasing from ``schedule.t_max`` to ``schedule.t_min``.

    ``"uniform"``: uniform in t; ``"logsnr"``: uniform in log-SNR; ``"edm"``: Karras et al. (2022)
    rho = 7 spacing of ``sigma/alpha``, ``s_i = (s_max^(1/rho) + i/K (s_min^(1/rho) - s_max^(1/rho)))^rho``.
    Non-uniform grids are mapped back to t with ``schedule.t_from_log_snr``.
    """
    if grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; valid grids: {', '.join(GRIDS)} or a 1-D tensor of times")
    _check_steps(steps)
    f64 = dict(dtype=torch.float64, device=device)
    ends = torch.tensor([schedule.t_max, schedule.t_min], **f64)
    if grid == "uniform":
        ts = torch.linspace(schedule.t_max, schedule.t_min, steps + 1, **f64)
    else:
        lam_noise, lam_data = schedule.log_snr(ends).tolist()  # log-SNR at t_max (low), t_min (high)
        if grid == "logsnr":
            lam = torch.linspace(lam_noise, lam_data, steps + 1, **f64)
        else:
            ramp = torch.linspace(0, 1, steps + 1, **f64)
            lo, hi = math.exp(-lam_noise / 2 / EDM_RHO), math.exp(-lam_data / 2 / EDM_RHO)  # s^(1/rho)
            lam = -2 * EDM_RHO * torch.log(lo + ramp * (hi - lo))  # s = sigma/alpha = exp(-lam/2)
        ts = schedule.t_from_log_snr(lam).to(torch.float64)
        ts[0], ts[-1] = ends[0], ends[1]
    if not (torch.isfinite(ts).all() and (ts[1:] < ts[:-1]).all()):
        raise ValueError(f"grid {grid!r} with {steps} steps is not strictly decreasing for {schedule!r}")
    return ts


def _check_steps(steps) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be a positive int")


def _resolve_grid(grid, schedule: Schedule, steps, device) -> Tensor:
    if isinstance(grid, str):
        return get_grid(grid, schedule, steps, device=device)
    if not isinstance(grid, Tensor):
        raise ValueError(
            f"grid={grid!r} must be one of {', '.join(GRIDS)} or a 1-D tensor of decreasing times"
        )
    ts = grid.detach().to(device=device, dtype=torch.float64)
    if ts.ndim != 1 or ts.numel() < 2:
        raise ValueError(f"explicit grid must be 1-D with at least 2 times, got shape {tuple(ts.shape)}")
    if not torch.isfinite(ts).all() or (ts < 0).any() or (ts > 1).any():
        raise ValueError(f"explicit grid times must be finite and inside [0, 1], got {ts.tolist()}")
    if not (ts[1:] < ts[:-1]).all():
        raise ValueError(f"explicit grid must be strictly decreasing (noise to data), got {ts.tolist()}")
    if steps is not None:
        _check_steps(steps)
        if steps != ts.numel() - 1:
            raise ValueError(f"steps={steps} disagrees with the explicit grid's {ts.numel() - 1} steps")
    return ts


# -- shared set-up -------------------------------------------------------------------------------
class _Run:
    """What every solver needs: checked options, the grid, the state, per-grid-time coefficients
    (``t``, ``a`` = alpha, ``s`` = sigma, ``lam`` = log-SNR as Python floats), D by grid index."""

    def __init__(self, name, denoiser, schedule, noise, steps, grid, cond, options):
        spec = get_spec(name)
        common = (
            {k: options.pop(k, v) for k, v in _COMMON_OPTIONS.items()} if options else dict(_COMMON_OPTIONS)
        )
        self.opts = {**common, **spec.check_options(options, also_allowed=tuple(_COMMON_OPTIONS))}
        dtype = self.opts["dtype"]
        if dtype not in (torch.float64, torch.float32):
            raise ValueError(f"dtype={dtype!r} must be torch.float64 or torch.float32")
        if not isinstance(noise, Tensor) or not noise.is_floating_point() or noise.ndim < 1:
            raise ValueError("noise must be a floating-point tensor of shape [B, ...]")
        if not torch.isfinite(noise).all():
            raise ValueError("noise contains non-finite values")
        if spec.adaptive:  # steps are ignored (0, None or any int): only the grid's end points matter
            if self.opts["callback"] is not None:
                raise ValueError(f"{name}: option 'callback' needs fixed steps; {name} is adaptive")
            if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
                raise ValueError(f"steps={steps!r} must be None or an int >= 0 ({name} ignores it)")
            steps = 1 if isinstance(grid, str) else None
        self.ts = _resolve_grid(grid, schedule, steps, noise.device)
        self.K = self.ts.numel() - 1
        self.t = self.ts.tolist()
        self.schedule, self.denoiser, self.cond, self.out_dtype = schedule, denoiser, cond, noise.dtype
        self.callback = self.opts["callback"]
        self.a = self._floats(schedule.alpha, "alpha")
        self.s = self._floats(schedule.sigma, "sigma")
        if min(self.s) <= 0 or min(self.a) <= 0:
            raise ValueError(
                f"grid {self.ts.tolist()} reaches alpha = 0 or sigma = 0 under {schedule!r}; "
                f"keep it inside [t_min, t_max] = [{schedule.t_min}, {schedule.t_max}]"
            )
        self.lam = self._floats(schedule.log_snr, "log_snr")
        self.x = self.s[0] * noise.to(dtype)
        B = noise.shape[0]
        self.t_batch = [t.to(dtype).expand(B).contiguous() for t in self.ts]  # [B] per grid time
        self._z = None  # noise buffer

    def _floats(self, fn, what: str) -> list[float]:
        values = fn(self.ts)
        if not torch.isfinite(values).all():
            raise ValueError(
                f"{what} is not finite on grid {self.ts.tolist()} under {self.schedule!r}; "
                f"keep the grid inside [t_min, t_max] = [{self.schedule.t_min}, {self.schedule.t_max}]"
            )
        return values.tolist()

    def D(self, x: Tensor, i: int) -> Tensor:
        """The denoiser at grid time ``t_i`` (never sharing memory with ``x``, which is updated in place)."""
        out = _call(self.denoiser, x, self.t_batch[i], self.cond)
        return out.clone() if out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() else out

    def add_noise_(self, x: Tensor, std: float, generator) -> Tensor:
        """``x <- x + std z`` in place, z ~ N(0, I) from ``generator`` (drawn into a reused buffer)."""
        if self._z is None:
            self._z = torch.empty(x.shape, dtype=_draw_dtype(x), device=x.device)
        return x.add_(_draw(x, generator, out=self._z), alpha=std)

    def report(self, i: int, x: Tensor, x0_hat: Tensor) -> None:
        if self.callback is not None:
            self.callback({"i": i, "t": self.t[i], "t_next": self.t[i + 1], "x": x.clone(), "x0_hat": x0_hat})

    def finish(self, x: Tensor) -> Tensor:
        """The final denoising ``D(x(t_K), t_K)``, in the dtype of the noise."""
        return self.D(x, self.K).to(self.out_dtype)


def _axpby_(x: Tensor, a: float, b: float, y: Tensor) -> Tensor:
    """``x <- a x + b y`` in place, two passes. Solvers update their state in place: a fresh
    allocation per step costs more than the arithmetic for large batches on CPU."""
    return x.mul_(a).add_(y, alpha=b)


def _kernel_ratio(run: _Run, i: int) -> float:
    """``1 - exp(lam_t - lam_s)`` in (0, 1) for the step t = t_i -> s = t_{i+1}; equals
    ``(sigma_t^2 - (alpha_t/alpha_s)^2 sigma_s^2) / sigma_t^2``, the kernel's variance over sigma_t^2."""
    return -math.expm1(run.lam[i] - run.lam[i + 1])
