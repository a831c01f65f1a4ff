"""W&B tracking through Lightning's ``WandbLogger``: offline unless the user says otherwise.

``WANDB_MODE`` is respected (``offline`` when unset; ``disabled`` turns tracking off); W&B's
directories (``WANDB_DIR``, ``WANDB_CACHE_DIR``, ``WANDB_DATA_DIR``, ``WANDB_CONFIG_DIR``) default to
folders inside the run's output folder (``use_wandb_folders``). Every run of an experiment is in one
group (``wandb_group``) and named by schedule.
"""

from __future__ import annotations

import os
import pathlib

WANDB_DIR_VARS = {
    "WANDB_DIR": "",
    "WANDB_CACHE_DIR": "cache",
    "WANDB_DATA_DIR": "data",
    "WANDB_CONFIG_DIR": "config",
}


def check_wandb(*, project, entity, group) -> None:
    """The ``wandb`` section: ``project`` a non-empty name, ``entity`` and ``group`` null or a name
    (group null: the experiment's name)."""
    if not isinstance(project, str) or not project:
        raise ValueError(f"project={project!r} must be a non-empty name")
    for key, value in (("entity", entity), ("group", group)):
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"{key}={value!r} must be null or a non-empty name")


def wandb_mode() -> str:
    """``WANDB_MODE`` or ``offline``: nothing waits for a network unless the user asks for it."""
    return os.environ.get("WANDB_MODE") or "offline"


def wandb_group(cfg: dict) -> str:
    """The W&B group of every run of this experiment: ``wandb.group``, else the experiment name."""
    return cfg["wandb"]["group"] or cfg["experiment"]


def use_wandb_folders(root) -> pathlib.Path:
    """Point the W&B directory variables that are unset at folders under ``root``; return
    ``WANDB_DIR`` (created)."""
    root = pathlib.Path(root)
    for var, sub in WANDB_DIR_VARS.items():
        if not os.environ.get(var):
            os.environ[var] = str(root / sub)
    save_dir = pathlib.Path(os.environ["WANDB_DIR"])
    save_dir.mkdir(parents=True, exist_ok=True)
    return save_dir


def make_logger(cfg: dict, name: str, out_dir, job_type: str = "train"):
    """A ``WandbLogger`` for run ``name`` (e.g. the schedule) in project ``cfg["wandb"]["project"]``,
    group ``wandb_group(cfg)``, with ``cfg`` logged as the run config. Returns ``None`` when
    ``WANDB_MODE=disabled``. W&B's folders default to ``out_dir/wandb`` (``use_wandb_folders``)."""
    mode = wandb_mode()
    if mode == "disabled":
        return None
    from lightning.pytorch.loggers import WandbLogger

    save_dir = use_wandb_folders(pathlib.Path(out_dir) / "wandb")
    return WandbLogger(
        name=name,
        project=cfg["wandb"]["project"],
        entity=cfg["wandb"]["entity"],
        group=wandb_group(cfg),
        job_type=job_type,
        save_dir=str(save_dir),
        mode=mode,
        config=cfg,
        log_model=False,
    )


def finish_run(logger, summary: dict) -> None:
    """Write ``summary`` into the run's summary and close the run."""
    import wandb

    logger.experiment.summary.update(summary)
    logger.finalize("success")
    wandb.finish()
