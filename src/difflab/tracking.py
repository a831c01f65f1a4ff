"""W&B tracking through Lightning's ``WandbLogger``: offline unless the user says otherwise.

``WANDB_MODE`` is respected (``offline`` when unset; ``disabled`` turns tracking off); W&B's
directories (``WANDB_DIR``, ``WANDB_CACHE_DIR``, ``WANDB_DATA_DIR``, ``WANDB_CONFIG_DIR``) default to
folders inside the run's output folder. Runs are grouped by experiment and named by schedule.
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


def wandb_mode() -> str:
    """``WANDB_MODE`` or ``offline``: nothing waits for a network unless the user asks for it."""
    return os.environ.get("WANDB_MODE") or "offline"


def make_logger(cfg: dict, name: str, out_dir, job_type: str = "train"):
    """A ``WandbLogger`` for run ``name`` (e.g. the schedule) in project ``cfg["wandb"]["project"]``,
    group ``cfg["wandb"]["group"]`` or ``cfg["experiment"]``, with ``cfg`` logged as the run config.
    Returns ``None`` when ``WANDB_MODE=disabled``. Sets the W&B directory variables that are unset to
    folders under ``out_dir/wandb``."""
    mode = wandb_mode()
    if mode == "disabled":
        return None
    from lightning.pytorch.loggers import WandbLogger

    root = pathlib.Path(out_dir) / "wandb"
    for var, sub in WANDB_DIR_VARS.items():
        if not os.environ.get(var):
            os.environ[var] = str(root / sub)
    save_dir = pathlib.Path(os.environ["WANDB_DIR"])
    save_dir.mkdir(parents=True, exist_ok=True)
    w = dict(cfg.get("wandb") or {})
    return WandbLogger(
        name=name,
        project=w.get("project") or "difflab",
        entity=w.get("entity"),
        group=w.get("group") or cfg.get("experiment"),
        job_type=job_type,
        save_dir=str(save_dir),
        mode=mode,
        config=cfg,
        log_model=False,
    )
