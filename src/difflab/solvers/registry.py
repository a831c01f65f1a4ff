"""The solver registry: one ``SolverSpec`` per solver, its options (``Option``) and its NFE rule.
Validation, sampling, the pipeline and the report read a solver's spec, never a copy of it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from difflab.schema import Field


# -- the registry: one spec per solver -----------------------------------------------------------
@dataclass(frozen=True)
class Option:
    """A solver option: its default and what is allowed (``kind`` ``float``, ``int``, ``bool`` or
    ``str``; bounds ``low``/``high``, open where ``low_open``/``high_open``; or a tuple of ``choices``),
    checked as the ``schema.Field`` it amounts to."""

    default: Any
    kind: type = float
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None
    doc: str = ""

    @property
    def field(self) -> Field:
        return Field(self.kind, self.low, self.high, self.low_open, self.high_open, choices=self.choices)

    def allowed(self) -> str:
        return self.field.allowed()

    def check(self, solver: str, key: str, value):
        """``value`` if allowed (ints accepted as floats), else ``ValueError`` naming it."""
        if not self.field.accepts(value):
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
        check_steps(steps)
        return int(self.nfe_rule(steps, self.check_options(options)))


_REGISTRY: dict[str, SolverSpec] = {}


def register(name: str | None = None, /, **spec) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` with the ``SolverSpec`` fields in ``spec``, under ``name`` or, by
    default, its function name less ``sample_`` (``@register(stochastic=False, order=1)`` above
    ``def sample_euler(...)`` registers ``"euler"``); ``fn.spec`` is the spec, which its ``Run`` reads."""

    def add(fn: Callable) -> Callable:
        key = name or fn.__name__.removeprefix("sample_")
        if key in _REGISTRY and _REGISTRY[key].fn is not fn:
            raise ValueError(f"solver {key!r} is already registered")
        _REGISTRY[key] = SolverSpec(name=key, fn=fn, **spec)
        fn.spec = _REGISTRY[key]
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


def check_steps(steps) -> None:
    """``steps`` must be a positive int (ValueError otherwise)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be a positive int")


@dataclass(frozen=True)
class Solvers:
    """The solvers of one comparison: each one's spec with the options it sampled with
    (``SolverSpec.is_stochastic(options)`` decides ODE or SDE), ODE before SDE, by order, adaptive
    last, then as named."""

    specs: tuple[SolverSpec, ...]
    options: Mapping[str, Mapping] = field(default_factory=dict)

    @classmethod
    def of(cls, names: Sequence[str], options: Mapping | None = None) -> Solvers:
        names, options = list(dict.fromkeys(names)), dict(options or {})
        specs = sorted(
            map(get_spec, names),
            key=lambda s: (s.is_stochastic(options.get(s.name)), s.adaptive, s.order, names.index(s.name)),
        )
        return cls(tuple(specs), options)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def spec(self, name: str) -> SolverSpec:
        return next(s for s in self.specs if s.name == name)

    def stochastic(self, name: str) -> bool:
        return self.spec(name).is_stochastic(self.options.get(name))

    def family(self, name: str) -> str:
        """``"ode"`` or ``"sde"`` with the options the solver ran with."""
        return "sde" if self.stochastic(name) else "ode"

    def group(self, name: str) -> str:
        """The legend heading, e.g. ``"ODE, order 2"`` or ``"ODE, adaptive (order 5)"``."""
        spec = self.spec(name)
        order = f"adaptive (order {spec.order})" if spec.adaptive else f"order {spec.order}"
        return f"{self.family(name).upper()}, {order}"

    def fixed_step_ode(self, name: str) -> bool:
        return name in self.names and not self.stochastic(name) and not self.spec(name).adaptive
