"""The composed configuration: Hydra groups in ``conf/`` -> one plain dict (= ``params.yaml``).

``compose(overrides)`` builds the dict the way DVC's Hydra integration does for
``dvc exp run -S ...``; ``validate(cfg)`` rejects bad values with one clear line (a
``ConfigError``, a ``ValueError``) before any stage does work; ``load_params`` reads and validates
``params.yaml``; ``write_params`` writes it atomically. Library entry points take the plain dict
and read only their own keys (see the keys below and each owner's docstring).

Keys read here: ``experiment``, ``seed``, ``schedules``, ``solvers``, ``data.name``,
``schedule.<name>.{params, prediction}``, ``sample.*``, ``evaluate.*``, ``class_cond.num_classes``,
``wandb.*``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import yaml

from difflab.io import atomic_write

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
CONFIG_NAME = "config"
PARAMS_HEADER = (
    "# Composed from conf/ by `python pipeline/compose.py` (or `dvc exp run -S ...`): edit conf/.\n"
)

# Names the pipeline accepts; the schedule and solver names come from the library (SPEC).
DATASETS = ("toy2d", "digits", "mnist", "cifar10", "imagefolder")
GRIDS = ("uniform", "logsnr", "edm")
FEATURE_EXTRACTORS = ("classifier", "inception")
DIVERGENCES = ("exact", "hutchinson")


class ConfigError(ValueError):
    """A bad configuration value: one line naming the key, the value and what is allowed."""


def compose(overrides: Sequence[str] = (), conf_dir: str | os.PathLike | None = None) -> dict:
    """Compose ``conf/config.yaml`` with Hydra overrides (``["experiment=mnist", "seed=1"]``).

    Returns a plain, resolved dict; ``wandb.group`` stays as composed (``None`` means the
    experiment name, see ``wandb_group``). Raises ``ConfigError`` for an override Hydra rejects.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    conf_dir = Path(conf_dir or CONF_DIR).resolve()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base=None):
            cfg = hydra_compose(config_name=CONFIG_NAME, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot compose conf/ with overrides {list(overrides)}: {first}") from None
    return OmegaConf.to_container(cfg, resolve=True)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _need(cfg: dict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"params: missing key {dotted!r}")
        node = node[part]
    return node


def _names(cfg: dict, key: str, allowed: Sequence[str], what: str) -> list[str]:
    names = _need(cfg, key)
    if not isinstance(names, list) or not names:
        raise ConfigError(f"params: {key} must be a non-empty list of {what}s; allowed: {', '.join(allowed)}")
    for name in names:
        if name not in allowed:
            raise ConfigError(f"params: unknown {what} {name!r} in {key}; allowed: {', '.join(allowed)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"params: {key} lists a {what} twice: {names}")
    return names


def _positive_int(cfg: dict, key: str, minimum: int = 1) -> int:
    v = _need(cfg, key)
    if not _is_int(v) or v < minimum:
        raise ConfigError(f"params: {key}={v!r} must be an integer >= {minimum}")
    return v


def _choice(cfg: dict, key: str, allowed: Sequence[str]) -> str:
    v = _need(cfg, key)
    if v not in allowed:
        raise ConfigError(f"params: {key}={v!r} is not allowed; allowed: {', '.join(allowed)}")
    return v


def validate(cfg: dict) -> dict:
    """Check every value the pipeline reads; return ``cfg`` unchanged or raise one ``ConfigError``.

    Checked: schedule names (``difflab.schedules.SCHEDULES``) and their parameters (built once),
    the prediction types, solver names (``difflab.solvers.SOLVERS``) and that each has an options
    entry, the dataset name, step counts (integers > 0), sample sizes, the grid, the feature
    extractor, NLL settings, guidance (needs ``class_cond.num_classes`` > 0).
    """
    from difflab.parametrization import PREDICTIONS
    from difflab.schedules import SCHEDULES, get_schedule
    from difflab.solvers import SOLVERS

    if not isinstance(cfg, dict):
        raise ConfigError(f"params: expected a mapping at the top level, got {type(cfg).__name__}")
    experiment = _need(cfg, "experiment")
    if not isinstance(experiment, str) or not experiment:
        raise ConfigError(f"params: experiment={experiment!r} must be a non-empty name")
    if not _is_int(_need(cfg, "seed")):
        raise ConfigError(f"params: seed={cfg['seed']!r} must be an integer")
    _choice(cfg, "data.name", DATASETS)

    for name in _names(cfg, "schedules", SCHEDULES, "schedule"):
        entry = _need(cfg, f"schedule.{name}")
        params = entry.get("params") or {} if isinstance(entry, dict) else None
        if not isinstance(params, dict):
            raise ConfigError(f"params: schedule.{name}.params must be a mapping, got {params!r}")
        try:
            get_schedule(name, **params)
        except ValueError as e:
            raise ConfigError(f"params: schedule.{name}.params: {e}") from None
        _choice(cfg, f"schedule.{name}.prediction", PREDICTIONS)

    for name in _names(cfg, "solvers", SOLVERS, "solver"):
        options = _need(cfg, f"sample.options.{name}")
        if not isinstance(options, dict):
            raise ConfigError(f"params: sample.options.{name} must be a mapping (use {{}} for none)")

    steps = _need(cfg, "sample.steps")
    if not isinstance(steps, list) or not steps:
        raise ConfigError(f"params: sample.steps={steps!r} must be a non-empty list of integers > 0")
    for s in steps:
        if not _is_int(s) or s <= 0:
            raise ConfigError(f"params: sample.steps holds {s!r}; every step count must be an integer > 0")
    if len(set(steps)) != len(steps):
        raise ConfigError(f"params: sample.steps={steps} lists a step count twice")
    _choice(cfg, "sample.grid", GRIDS)
    _positive_int(cfg, "sample.n_samples")
    _positive_int(cfg, "sample.batch_size")
    _positive_int(cfg, "sample.solver_error_samples", minimum=0)
    if not _is_int(_need(cfg, "sample.seed")):
        raise ConfigError(f"params: sample.seed={cfg['sample']['seed']!r} must be an integer")
    for key in ("rtol", "atol"):
        v = _need(cfg, f"sample.reference.{key}")
        if not _is_number(v) or v <= 0:
            raise ConfigError(f"params: sample.reference.{key}={v!r} must be a number > 0")
    guidance = _need(cfg, "sample.guidance_scale")
    if guidance is not None:
        if not _is_number(guidance):
            raise ConfigError(f"params: sample.guidance_scale={guidance!r} must be null or a number")
        if int(cfg.get("class_cond", {}).get("num_classes", 0) or 0) <= 0:
            raise ConfigError(
                "params: sample.guidance_scale needs a class-conditional model (class_cond.num_classes > 0)"
            )

    _choice(cfg, "evaluate.feature_extractor", FEATURE_EXTRACTORS)
    _positive_int(cfg, "evaluate.classifier_epochs")
    _positive_int(cfg, "evaluate.bootstrap", minimum=0)
    kid = _need(cfg, "evaluate.kid_subset_size")
    if kid is not None and (not _is_int(kid) or kid < 2 or kid > cfg["sample"]["n_samples"]):
        raise ConfigError(
            f"params: evaluate.kid_subset_size={kid!r} must be null or an integer in 2..n_samples"
        )
    _positive_int(cfg, "evaluate.nll_images", minimum=0)
    _choice(cfg, "evaluate.nll_divergence", DIVERGENCES)
    _positive_int(cfg, "evaluate.nll_probes")
    nll_t_min = _need(cfg, "evaluate.nll_t_min")
    if nll_t_min is not None and (not _is_number(nll_t_min) or not 0 <= nll_t_min < 0.5):
        raise ConfigError(f"params: evaluate.nll_t_min={nll_t_min!r} must be null or a number in [0, 0.5)")
    project = _need(cfg, "wandb.project")
    if not isinstance(project, str) or not project:
        raise ConfigError(f"params: wandb.project={project!r} must be a non-empty name")
    return cfg


def load_params(path: str | os.PathLike = "params.yaml", check: bool = True) -> dict:
    """Read ``params.yaml`` (validated unless ``check=False``)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"params: {path} not found; run `python pipeline/compose.py` to compose conf/")
    with path.open() as fh:
        cfg = yaml.safe_load(fh)
    return validate(cfg) if check else cfg


def dump_params(cfg: dict) -> str:
    """The YAML text of ``params.yaml`` (keys in composition order, header comment)."""
    return PARAMS_HEADER + yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False, width=100)


def write_params(cfg: dict, path: str | os.PathLike = "params.yaml") -> Path:
    """Write ``cfg`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    text = dump_params(cfg)
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


def wandb_group(cfg: dict) -> str:
    """The W&B group of every run of this experiment: ``wandb.group``, else the experiment name."""
    return (cfg.get("wandb") or {}).get("group") or cfg["experiment"]
