"""W&B tracking through Lightning's ``WandbLogger``: offline unless the user says otherwise
(``WANDB_MODE``; ``disabled`` turns tracking off), W&B's folders inside the run's output folder."""

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
    where = {"project": cfg["wandb"]["project"], "entity": cfg["wandb"]["entity"], "group": wandb_group(cfg)}
    run = {"name": name, "job_type": job_type, "save_dir": str(save_dir), "mode": mode}
    return WandbLogger(**where, **run, config=cfg, log_model=False)


def finish_run(logger, summary: dict) -> None:
    """Write ``summary`` into the run's summary and close the run (``shut_down``)."""
    logger.experiment.summary.update(summary)
    logger.finalize("success")
    shut_down()


def shut_down() -> None:
    """Finish the current run and stop W&B's service process, waiting for its last writes. W&B does
    this at interpreter exit, but a stage forked by the warm-start server ends with ``os._exit``,
    which skips it: the service would go on writing into the stage's outputs after DVC hashed them."""
    import wandb

    wandb.finish()
    wandb.teardown()


def start_run(cfg: dict, out_dir, group: str, *, job_type: str, name: str):
    """A W&B run outside Lightning (the report's comparison run) in ``out_dir``, in the project and
    entity of ``cfg["wandb"]`` (project ``difflab`` without one) and group ``group``, with ``cfg``
    logged as its config; mode ``wandb_mode()``, W&B's folders under ``out_dir``."""
    import wandb

    wb = cfg.get("wandb") or {}
    use_wandb_folders(out_dir)
    settings = wandb.Settings(silent=True, console="off")
    where = {"project": wb.get("project", "difflab"), "entity": wb.get("entity"), "group": group}
    run = {"job_type": job_type, "name": name, "dir": str(out_dir), "mode": wandb_mode()}
    return wandb.init(**where, **run, config=dict(cfg), settings=settings)


def why_offline() -> str | None:
    """Why nothing can be published to W&B now (a sentence), or ``None`` when it can be tried."""
    if wandb_mode() in ("offline", "disabled", "dryrun"):
        return "WANDB_MODE is offline (set WANDB_MODE=online to publish)"
    if not os.environ.get("WANDB_API_KEY"):
        try:
            import wandb

            if not wandb.Api().api_key:
                return "no W&B API key (run `wandb login` or set WANDB_API_KEY)"
        except Exception as e:  # no config, no network: say which
            return f"W&B is not reachable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return None
