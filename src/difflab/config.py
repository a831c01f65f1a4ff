"""The composed configuration: Hydra groups in ``conf/`` -> one plain dict (= ``params.yaml``), composed
the way DVC's Hydra integration does for ``dvc exp run -S ...`` and validated before any stage does
work. Library entry points take the plain dict and read only their own keys (see each owner's docstring).

Validation reads declared schemas (``difflab.schema``): each section's ``{key: Field}`` is written
beside the code that reads it (``training.TRAINER_FIELDS``, ``losses.LOSS_FIELDS``, ...), and names
are their registries' keys, read when validating; this module keeps no copies. A new section is one
entry in ``sections()`` and, where keys constrain each other, one function in ``cross_checks()``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from difflab.io import atomic_write
from difflab.schema import ConfigError, Field, check_built, check_section

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
CONFIG_NAME = "config"
__all__ = ["ConfigError", "compose", "dump_params", "load_params", "sections", "validate", "write_params"]
PARAMS_HEADER = (
    "# Composed from conf/ by `python pipeline/compose.py` (or `dvc exp run -S ...`): edit conf/.\n"
)


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


# -- the declared sections ----------------------------------------------------------------------
WANDB_FIELDS = {  # read by ``tracking.make_logger`` and ``tracking.wandb_group``
    "project": Field(str),
    "entity": Field(str, nullable=True),
    "group": Field(str, nullable=True, doc="null: the experiment's name"),
}


def sections() -> dict[str, Field]:
    """The top-level keys of ``params.yaml``, each a ``Field`` declared beside its reader. ``data`` and
    ``denoiser`` take the keys of the dataset and network they name (``check_data``, ``check_net``)."""
    from difflab.losses import LOSS_FIELDS
    from difflab.metrics import EVALUATE_FIELDS
    from difflab.pretrained import PRETRAINED_FIELD
    from difflab.sample_config import SAMPLE_FIELDS, SCHEDULE_NAME, SOLVER_NAME
    from difflab.schedules import SCHEDULE_FIELDS
    from difflab.training import CLASS_COND_FIELDS, EMA_FIELDS, OPTIM_FIELDS, TRAINER_FIELDS

    return {
        "experiment": Field(str),
        "seed": Field(int, doc="the data split, the feature classifier, bootstrap and KID resampling"),
        "seeds": Field(list, item=Field(int), doc="training replicates"),
        "data": Field(dict),
        "denoiser": Field(dict),
        "trainer": Field(dict, fields=TRAINER_FIELDS),
        "schedules": Field(
            list, item=SCHEDULE_NAME, may_be_empty=True, doc="the trained networks (empty: pretrained only)"
        ),
        "schedule": Field(dict, keys=SCHEDULE_NAME, values=Field(dict, fields=SCHEDULE_FIELDS)),
        "solvers": Field(list, item=SOLVER_NAME),
        "sample": Field(dict, fields=SAMPLE_FIELDS),
        "loss": Field(dict, fields=LOSS_FIELDS),
        "optim": Field(dict, fields=OPTIM_FIELDS),
        "ema": Field(dict, fields=EMA_FIELDS),
        "class_cond": Field(dict, fields=CLASS_COND_FIELDS),
        "evaluate": Field(dict, fields=EVALUATE_FIELDS),
        "wandb": Field(dict, fields=WANDB_FIELDS),
        "pretrained": PRETRAINED_FIELD,
    }


# -- checks across keys, each once -----------------------------------------------------------------
def _check_model(cfg: dict) -> None:
    """The dataset (nothing loaded), its classes against ``class_cond.num_classes``, and the network
    built on the meta device for the data's shape."""
    from difflab.data.datamodules import check_data
    from difflab.nets import check_net
    from difflab.training import check_classes

    data_shape, classes = check_data(cfg["data"])
    num_classes = cfg["class_cond"]["num_classes"]
    if classes is not None:
        check_classes(num_classes, cfg["data"]["name"], classes)
    check_net(cfg["denoiser"], data_shape, num_classes)


def _check_schedules(cfg: dict) -> None:
    """At least one network (a trained schedule or a pretrained entry); every listed schedule has a
    ``schedule.<name>`` section, and every section (listed or not) builds its schedule with its
    ``params``."""
    if not cfg["schedules"] and not cfg.get("pretrained"):
        raise ConfigError(
            "params: schedules=[] and pretrained={} name no network; list a schedule or a model"
        )
    for name in cfg["schedules"]:
        if name not in cfg["schedule"]:
            raise ConfigError(f"params: missing key 'schedule.{name}'")
    for name, entry in cfg["schedule"].items():
        build = functools.partial(_build_schedule, name)
        check_built(build, entry.get("params") or {}, f"schedule.{name}.params")


def _build_schedule(name: str, params: dict):
    from difflab.schedules import get_schedule

    return get_schedule(name, **params)


def cross_checks() -> tuple[Callable[[dict], None], ...]:
    """What no single key's ``Field`` states, each ``check(cfg)`` run once after ``sections()``."""
    from difflab.metrics import check_kid_subset
    from difflab.pretrained import check_pretrained
    from difflab.sample_config import (
        check_converged_sde,
        check_guidance,
        check_sample_schedules,
        check_solver_options,
    )

    return (
        _check_model,
        _check_schedules,
        check_solver_options,
        check_converged_sde,
        check_sample_schedules,
        check_guidance,
        check_kid_subset,
        check_pretrained,
    )


def validate(cfg: dict) -> dict:
    """Check every value a stage reads; return ``cfg`` unchanged or raise one ``ConfigError`` (one line
    naming the key, the value and what is allowed).

    The declared ``sections()`` first (unknown and missing keys, types, ranges, registered names read
    from the registries now, so a schedule or solver registered at run time validates too), then the
    ``cross_checks()``: the dataset and network, the schedules built, the solvers' options against
    their specs, the sampling schedules' common log-SNR range, guidance, KID's subset size.
    """
    check_section(sections(), cfg, "")
    for check in cross_checks():
        check(cfg)
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
