"""The composed configuration: Hydra groups in ``conf/`` -> one plain dict (= ``params.yaml``).

``compose(overrides)`` builds the dict the way DVC's Hydra integration does for
``dvc exp run -S ...``; ``validate(cfg)`` rejects bad values with one clear line (a
``ConfigError``, a ``ValueError``) before any stage does work; ``load_params`` reads and validates
``params.yaml``; ``write_params`` writes it atomically. Library entry points take the plain dict
and read only their own keys (see each owner's docstring).

Validation asks the owners: names are their registries' keys (schedules, solvers, grids, datasets,
networks, predictions, feature extractors, divergences), read when validating, so a schedule or a
solver registered at run time validates too; this module keeps no copies.
"""

from __future__ import annotations

import inspect
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import yaml

from difflab.io import atomic_write

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
CONFIG_NAME = "config"
PARAMS_HEADER = (
    "# Composed from conf/ by `python pipeline/compose.py` (or `dvc exp run -S ...`): edit conf/.\n"
)


class ConfigError(ValueError):
    """A bad configuration value: one line naming the key, the value and what is allowed."""


def compose(overrides: Sequence[str] = (), conf_dir: str | os.PathLike | None = None) -> dict:
    """Compose ``conf/config.yaml`` with Hydra overrides (``["experiment=mnist", "seed=1"]``).

    Returns a plain, resolved dict; ``wandb.group`` stays as composed (``None`` means the
    experiment name, see ``difflab.tracking.wandb_group``). Raises ``ConfigError`` for an override
    Hydra rejects.
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


# -- small checks --------------------------------------------------------------------------------
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


def _mapping(cfg: dict, dotted: str) -> dict:
    node = _need(cfg, dotted)
    if not isinstance(node, dict):
        raise ConfigError(f"params: {dotted} must be a mapping, got {node!r}")
    return node


def _known_keys(node: dict, where: str, allowed: Iterable[str]) -> None:
    """Every key of ``node`` (the section ``where``) is one of ``allowed``."""
    allowed = list(allowed)
    for key in node:
        if key not in allowed:
            prefix = f"{where}." if where else ""
            raise ConfigError(f"params: unknown key {prefix}{key}; allowed: {', '.join(allowed)}")


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


def _owner_error(where: str, e: Exception, keys: Iterable[str] = ()) -> ConfigError:
    """The owning module's one-line ``ValueError`` as a ``ConfigError`` naming the section: a message
    starting ``key=value`` becomes ``where.key=value ...``, any other ``where: message``."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    msg = re.sub(r"^\w+: (?=(option )?\w+=)", "", msg)  # owners that name their section or solver
    leaf = where.rsplit(".", 1)[-1]
    if msg.startswith(f"{leaf}: "):
        msg = msg[len(leaf) + 2 :]
    match = re.match(r"(?:option )?(\w+)=", msg)
    if match and match.group(1) in keys:
        return ConfigError(f"params: {where}.{msg.removeprefix('option ')}")
    return ConfigError(f"params: {where}: {msg}")


def _ask(cfg: dict, section: str, checker: Callable) -> dict:
    """Check section ``section`` with its owner's ``checker`` (a function or a class), whose keyword
    parameters are the section's keys (those without a default are required): unknown or missing
    keys, then the values."""
    values = _mapping(cfg, section)
    params = {
        k: p
        for k, p in inspect.signature(checker).parameters.items()
        if k != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }
    _known_keys(values, section, params)
    for key, p in params.items():
        if key not in values and p.default is p.empty:
            raise ConfigError(f"params: missing key {section}.{key}")
    try:
        checker(**values)
    except ValueError as e:
        raise _owner_error(section, e, params) from None
    return values


# -- one checker per section ---------------------------------------------------------------------
SECTIONS = (
    "experiment",
    "seed",
    "seeds",
    "data",
    "denoiser",
    "trainer",
    "schedules",
    "schedule",
    "solvers",
    "sample",
    "loss",
    "optim",
    "ema",
    "class_cond",
    "evaluate",
    "wandb",
)


def _check_run(cfg: dict) -> None:
    experiment = _need(cfg, "experiment")
    if not isinstance(experiment, str) or not experiment:
        raise ConfigError(f"params: experiment={experiment!r} must be a non-empty name")
    if not _is_int(_need(cfg, "seed")):
        raise ConfigError(f"params: seed={cfg['seed']!r} must be an integer")
    _distinct_list(cfg, "seeds", _is_int, "integers (training seeds)")


def _distinct_list(cfg: dict, key: str, ok: Callable, what: str) -> list:
    """``key`` is a non-empty list of distinct values, each passing ``ok``."""
    values = _need(cfg, key)
    if not isinstance(values, list) or not values:
        raise ConfigError(f"params: {key}={values!r} must be a non-empty list of {what}")
    for v in values:
        if not ok(v):
            raise ConfigError(f"params: {key} holds {v!r}; allowed: {what}")
    if len(set(map(repr, values))) != len(values):
        raise ConfigError(f"params: {key}={values} lists a value twice")
    return values


def _check_data(cfg: dict) -> tuple[tuple[int, ...], int | None]:
    """The dataset (``data.datamodules.check_data``, nothing loaded): its shape and classes."""
    from difflab.data.datamodules import check_data

    data = _mapping(cfg, "data")
    try:
        return check_data(data)
    except ValueError as e:
        raise _owner_error("data", e, data) from None


def _check_training(cfg: dict, data_shape: tuple[int, ...], data_classes: int | None) -> None:
    """Class conditioning, the network (built on the meta device for the data's shape), the loss,
    the optimiser, the EMA and the trainer, each asked of the module that reads it."""
    from difflab.callbacks import check_ema
    from difflab.module import check_conditioning
    from difflab.nets import check_net
    from difflab.training import check_optim, check_trainer

    num_classes = _ask(cfg, "class_cond", check_conditioning)["num_classes"]
    if data_classes is not None and num_classes not in (0, data_classes):
        raise ConfigError(
            f"params: class_cond.num_classes={num_classes} does not match dataset {cfg['data']['name']!r} "
            f"with {data_classes} classes; allowed: 0 (unconditional) or {data_classes}"
        )
    denoiser = _mapping(cfg, "denoiser")
    try:
        check_net(denoiser, data_shape, num_classes)
    except ValueError as e:
        raise _owner_error("denoiser", e, denoiser) from None
    _ask(cfg, "loss", _loss_checker(cfg))
    _ask(cfg, "optim", check_optim)
    _ask(cfg, "ema", check_ema)
    _ask(cfg, "trainer", check_trainer)


def _loss_checker(cfg: dict) -> Callable:
    """``DiffusionLoss.for_schedule`` for every listed schedule (a null name: the schedule's own)."""
    from difflab.losses import DiffusionLoss
    from difflab.schedules import schedule_class

    def check(**settings):
        for name in cfg.get("schedules") or ():
            DiffusionLoss.for_schedule(schedule_class(name), **settings)

    check.__signature__ = inspect.signature(DiffusionLoss)  # the section's keys, for _ask
    return check


SCHEDULE_KEYS = ("params", "prediction")  # what training reads of schedule.<name> (``training.build_module``)


def _check_schedules(cfg: dict) -> None:
    """Every ``schedule.<name>`` section, listed in ``schedules`` or not: a registered schedule built
    with its ``params``, and an optional ``prediction`` (default: the schedule's own)."""
    from difflab.parametrization import PREDICTIONS
    from difflab.schedules import get_schedule, schedule_names

    registered = schedule_names()
    sections = _mapping(cfg, "schedule")
    for name in _names(cfg, "schedules", registered, "schedule"):
        _need(cfg, f"schedule.{name}")
    for name in sections:
        if name not in registered:
            raise ConfigError(
                f"params: schedule.{name}: unknown schedule {name!r}; allowed: {', '.join(registered)}"
            )
        entry = _mapping(cfg, f"schedule.{name}")
        _known_keys(entry, f"schedule.{name}", SCHEDULE_KEYS)
        params = entry.get("params") or {}
        if not isinstance(params, dict):
            raise ConfigError(f"params: schedule.{name}.params must be a mapping, got {params!r}")
        try:
            get_schedule(name, **params)
        except ValueError as e:
            raise _owner_error(f"schedule.{name}.params", e, params) from None
        if entry.get("prediction") is not None:
            _choice(cfg, f"schedule.{name}.prediction", PREDICTIONS)


def _check_solvers(cfg: dict) -> None:
    """``solvers`` are registered and each has an options section; every ``sample.options.<name>``
    section, listed or not, is a registered solver's and its spec accepts it."""
    from difflab.solvers import SOLVERS, get_spec

    options = _mapping(cfg, "sample.options")
    for name in _names(cfg, "solvers", SOLVERS, "solver"):
        if name not in options:
            raise ConfigError(f"params: missing key 'sample.options.{name}' (use {{}} for the defaults)")
    for name, section in options.items():
        if name not in SOLVERS:
            raise ConfigError(
                f"params: sample.options.{name}: unknown solver {name!r}; allowed: {', '.join(SOLVERS)}"
            )
        if not isinstance(section, dict):
            raise ConfigError(f"params: sample.options.{name} must be a mapping (use {{}} for the defaults)")
        spec = get_spec(name)
        try:
            spec.check_options(section)
        except ValueError as e:
            raise _owner_error(f"sample.options.{name}", e, spec.options) from None


SAMPLE_KEYS = (
    "options",
    "steps",
    "grids",
    "schedules",
    "guidance_scales",
    "n_samples",
    "batch_size",
    "seed",
    "invariance_samples",
    "solver_error_samples",
    "reference",
)


def _check_sample(cfg: dict) -> None:
    """The sample stages' settings; ``sample.reference`` holds options of the reference solver rk45."""
    from difflab.solvers import GRIDS, get_spec

    _known_keys(_mapping(cfg, "sample"), "sample", SAMPLE_KEYS)
    steps = _need(cfg, "sample.steps")
    if not isinstance(steps, list) or not steps:
        raise ConfigError(f"params: sample.steps={steps!r} must be a non-empty list of integers > 0")
    for s in steps:
        if not _is_int(s) or s <= 0:
            raise ConfigError(f"params: sample.steps holds {s!r}; every step count must be an integer > 0")
    if len(set(steps)) != len(steps):
        raise ConfigError(f"params: sample.steps={steps} lists a step count twice")
    _distinct_list(cfg, "sample.grids", lambda g: g in GRIDS, f"grids {', '.join(GRIDS)}")
    _check_sample_schedules(cfg)
    _check_guidance(cfg)
    _positive_int(cfg, "sample.n_samples")
    _positive_int(cfg, "sample.batch_size")
    _positive_int(cfg, "sample.solver_error_samples", minimum=0)
    _positive_int(cfg, "sample.invariance_samples", minimum=0)
    if not _is_int(_need(cfg, "sample.seed")):
        raise ConfigError(f"params: sample.seed={cfg['sample']['seed']!r} must be an integer")
    reference = _mapping(cfg, "sample.reference")
    try:
        get_spec("rk45").check_options(reference)
    except ValueError as e:
        raise _owner_error("sample.reference", e, reference) from None


def _check_sample_schedules(cfg: dict) -> None:
    """``sample.schedules``: null, or distinct registered schedules with a ``schedule.<name>`` section
    whose log-SNR range overlaps every trained schedule's (``sweep.sampling_schedules``)."""
    from difflab.schedules import schedule_names
    from difflab.sweep import sampling_schedules

    names = _need(cfg, "sample.schedules")
    if names is None:
        return
    registered = schedule_names()
    _names(cfg, "sample.schedules", registered, "schedule")
    for name in names:
        _need(cfg, f"schedule.{name}")
    for trained in cfg["schedules"]:
        try:
            sampling_schedules(cfg, trained)
        except ValueError as e:
            raise ConfigError(
                f"params: sample.schedules={names} under training schedule {trained!r}: {e}"
            ) from None


def _check_guidance(cfg: dict) -> None:
    """``sample.guidance_scales``: distinct values, each null (unconditional) or a finite number >= 0;
    a number needs a class-conditional model."""
    scales = _distinct_list(
        cfg,
        "sample.guidance_scales",
        lambda w: w is None or (_is_number(w) and math.isfinite(w) and w >= 0),
        "null (unconditional) or finite numbers >= 0",
    )
    guided = [w for w in scales if w is not None]
    if guided and cfg["class_cond"]["num_classes"] == 0:
        raise ConfigError(
            f"params: sample.guidance_scales={scales} needs a class-conditional model "
            "(class_cond.num_classes > 0); allowed with an unconditional one: [null]"
        )


EVALUATE_KEYS = (
    "feature_extractor",
    "classifier_epochs",
    "bootstrap",
    "kid_subset_size",
    "kid_subsets",
    "precision_recall",
    "nll_images",
    "nll_divergence",
    "nll_probes",
    "nll_t_min",
)


def _check_evaluate(cfg: dict) -> None:
    from difflab.likelihood import DIVERGENCES
    from difflab.metrics.fid import FEATURE_EXTRACTORS

    _known_keys(_mapping(cfg, "evaluate"), "evaluate", EVALUATE_KEYS)
    _choice(cfg, "evaluate.feature_extractor", FEATURE_EXTRACTORS)
    _positive_int(cfg, "evaluate.classifier_epochs")
    _positive_int(cfg, "evaluate.bootstrap", minimum=0)
    kid = _need(cfg, "evaluate.kid_subset_size")
    if kid is not None and (not _is_int(kid) or kid < 2 or kid > cfg["sample"]["n_samples"]):
        raise ConfigError(
            f"params: evaluate.kid_subset_size={kid!r} must be null or an integer in 2..n_samples"
        )
    _positive_int(cfg, "evaluate.kid_subsets")
    if not isinstance(_need(cfg, "evaluate.precision_recall"), bool):
        raise ConfigError(
            f"params: evaluate.precision_recall={cfg['evaluate']['precision_recall']!r} must be true or false"
        )
    _positive_int(cfg, "evaluate.nll_images", minimum=0)
    _choice(cfg, "evaluate.nll_divergence", DIVERGENCES)
    _positive_int(cfg, "evaluate.nll_probes")
    nll_t_min = _need(cfg, "evaluate.nll_t_min")
    if nll_t_min is not None and (not _is_number(nll_t_min) or not 0 <= nll_t_min < 0.5):
        raise ConfigError(f"params: evaluate.nll_t_min={nll_t_min!r} must be null or a number in [0, 0.5)")


def validate(cfg: dict) -> dict:
    """Check every value a stage reads; return ``cfg`` unchanged or raise one ``ConfigError`` (one line
    naming the key, the value and what is allowed).

    Each section is asked of the module that reads it: the dataset (``check_data``), the network
    (built on the meta device for the data's shape), the loss, optimiser, EMA and trainer
    (``losses.DiffusionLoss``, ``training.check_optim``, ``callbacks.check_ema``,
    ``training.check_trainer``), every schedule section (``get_schedule``), every solver options
    section (the solver's spec), W&B (``tracking.check_wandb``); the pipeline's own ``sample`` and
    ``evaluate`` keys are checked here. Unknown keys are errors listing the allowed ones.
    """
    from difflab.tracking import check_wandb

    if not isinstance(cfg, dict):
        raise ConfigError(f"params: expected a mapping at the top level, got {type(cfg).__name__}")
    _known_keys(cfg, "", SECTIONS)
    for key in SECTIONS:
        _need(cfg, key)
    _check_run(cfg)
    data_shape, data_classes = _check_data(cfg)
    _check_training(cfg, data_shape, data_classes)
    _check_schedules(cfg)
    _check_solvers(cfg)
    _check_sample(cfg)
    _check_evaluate(cfg)
    _ask(cfg, "wandb", check_wandb)
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
