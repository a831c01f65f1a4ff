"""The ``sample`` config section, declared (``SAMPLE_FIELDS``), and its checks across keys. Solver and
grid names are the registries' keys and each solver's options are its spec's (``SolverSpec.options``),
read when validating.
"""

from __future__ import annotations

from difflab.schema import ConfigError, Field, check_section, registry

SOLVER_NAME = Field(str, choices=registry("difflab.solvers", "SOLVERS"), noun="solver")
GRID_NAME = Field(str, choices=registry("difflab.solvers", "GRIDS"))
SCHEDULE_NAME = Field(str, choices=registry("difflab.schedules", "SCHEDULES"), noun="schedule")
SAMPLE_FIELDS = {
    "options": Field(
        dict,
        keys=SOLVER_NAME,
        values=Field(dict),
        doc="each solver's options, checked against its spec (check_solver_options)",
    ),
    "steps": Field(list, item=Field(int, low=0, low_open=True)),
    "grids": Field(list, item=GRID_NAME, doc="one sample stage per solver x grid"),
    "fitted_grids": Field(
        list,
        item=Field(str, choices=registry("difflab.solvers", "FIT_METHODS")),
        may_be_empty=True,
        doc="grids fitted to each network and solver (stages fit_grid, sample-fitted); []: none",
    ),
    "schedules": Field(
        list,
        item=SCHEDULE_NAME,
        nullable=True,
        doc="sampling-time schedules; null: each network under its training schedule",
    ),
    "guidance_scales": Field(list, item=Field(float, low=0, nullable=True), doc="null: unconditional"),
    "n_samples": Field(int, low=1),
    "batch_size": Field(int, low=1),
    "seed": Field(int),
    "invariance_samples": Field(int, low=0, doc="0: no invariance check"),
    "solver_error_samples": Field(int, low=0),
    "reference": Field(dict, doc="options of the reference solver rk45"),
    "converged_sde": Field(
        dict,
        fields={"solver": SOLVER_NAME, "steps": Field(int, low=1)},
        doc="the converged reverse-SDE solve of every network (a stochastic solver at many steps, its "
        "options from sample.options), the partner of its SDE rows (stage converged)",
    ),
}


def check_options(spec, options, where: str) -> None:
    """``options`` (the section ``where``) hold only options ``spec`` declares, each allowed by its
    ``Option`` (absent ones take the spec's default); the message says what the ``Option`` allows."""
    check_section(
        {key: Field(nullable=True, optional=True) for key in spec.options}, options, where, "option"
    )
    for key, value in options.items():
        try:
            spec.options[key].check(spec.name, key, value)
        except ValueError:
            allowed = spec.options[key].allowed()
            raise ConfigError(f"params: {where}.{key}={value!r} is not allowed; must be {allowed}") from None


def check_solver_options(cfg: dict) -> None:
    """Every listed solver has a ``sample.options.<name>`` section; every such section (listed or not)
    and ``sample.reference`` (rk45's) hold options their solver's spec declares."""
    from difflab.solvers import get_spec

    options = cfg["sample"]["options"]
    for name in cfg["solvers"]:
        if name not in options:
            raise ConfigError(f"params: missing key 'sample.options.{name}' (use {{}} for the defaults)")
    for name, section in options.items():
        check_options(get_spec(name), section, f"sample.options.{name}")
    check_options(get_spec("rk45"), cfg["sample"]["reference"], "sample.reference")


def check_converged_sde(cfg: dict) -> None:
    """``sample.converged_sde.solver`` solves the reverse SDE (stochastic at its configured options),
    with fixed steps."""
    from difflab.solvers import get_spec

    section = cfg["sample"]["converged_sde"]
    spec = get_spec(section["solver"])
    if spec.adaptive or not spec.is_stochastic(cfg["sample"]["options"].get(spec.name, {})):
        raise ConfigError(
            f"params: sample.converged_sde.solver={spec.name!r} does not solve the reverse SDE at its "
            "sample.options; allowed: a stochastic fixed-step solver (euler_maruyama, ddpm, "
            "euler_ancestral, dpm_solver_2m_sde, ...)"
        )


def check_sample_schedules(cfg: dict) -> None:
    """``sample.schedules``: null, or schedules with a ``schedule.<name>`` section whose log-SNR range
    overlaps every trained schedule's (``sweep.sampling_schedules``)."""
    from difflab.sweep import sampling_schedules

    names = cfg["sample"]["schedules"]
    if names is None:
        return
    for name in names:
        if name not in cfg["schedule"]:
            raise ConfigError(f"params: missing key 'schedule.{name}' (a schedule in sample.schedules)")
    for trained in cfg["schedules"]:
        try:
            sampling_schedules(cfg, trained)
        except ValueError as e:
            raise ConfigError(
                f"params: sample.schedules={names} under training schedule {trained!r}: {e}"
            ) from None


def check_guidance(cfg: dict) -> None:
    """A guidance scale (not null) needs a class-conditional model."""
    scales = cfg["sample"]["guidance_scales"]
    if any(w is not None for w in scales) and cfg["class_cond"]["num_classes"] == 0:
        raise ConfigError(
            f"params: sample.guidance_scales={scales} needs a class-conditional model "
            "(class_cond.num_classes > 0); allowed with an unconditional one: [null]"
        )
