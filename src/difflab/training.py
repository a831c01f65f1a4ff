"""Train one schedule's denoiser from the composed config (a plain dict), and load it back.

``train(cfg, schedule_name, out_dir)`` builds the data, the ``DiffusionModule`` (network, schedule,
loss) and the Trainer (EMA, checkpoints, sample grids, non-finite-loss guard, W&B logger), fits or
resumes, and saves; ``load_denoiser(out_dir)`` rebuilds the trained ``Denoiser`` without Lightning.
Every value comes from the config (conf/ holds the defaults; the ``*_FIELDS`` declare what is allowed).
"""

from __future__ import annotations

import json
import logging
import pathlib
import time
import typing

import torch

from difflab.io import atomic_write
from difflab.losses import DiffusionLoss
from difflab.nets import build_net
from difflab.parametrization import Denoiser
from difflab.schedules import get_schedule, schedule_class, schedule_from_config
from difflab.schema import ConfigError, Field, check_section, registry

log = logging.getLogger(__name__)


# -- what the config may say ---------------------------------------------------------------------
def lightning_choices() -> dict[str, tuple]:
    """The precisions, accelerators and strategies Lightning knows (its Trainer's ``precision``
    type and its accelerator and strategy registries), each with ``"auto"`` where Lightning takes it."""
    import lightning.pytorch as pl
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    def literals(annotation) -> list:
        if typing.get_origin(annotation) is typing.Literal:
            return list(typing.get_args(annotation))
        return [v for arg in typing.get_args(annotation) for v in literals(arg)]

    precision = typing.get_type_hints(pl.Trainer.__init__)["precision"]
    return {
        "precision": tuple(literals(precision)),
        "accelerator": ("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())),
        "strategy": ("auto", *StrategyRegistry.available_strategies()),
    }


_STEPS = Field(int, low=1)
_FLAG = Field(bool)
TRAINER_FIELDS = {  # the ``trainer`` section, read by ``build_trainer``
    "max_steps": _STEPS,
    "accelerator": Field(choices=lambda: lightning_choices()["accelerator"]),
    "devices": Field(
        any_of=(Field(int, low=1), Field(choices=(-1, "auto")), Field(list, item=Field(int, low=0))),
        doc="-1: all; a list: device indices",
    ),
    "num_nodes": _STEPS,
    "strategy": Field(choices=lambda: lightning_choices()["strategy"]),
    "precision": Field(choices=lambda: lightning_choices()["precision"]),
    "val_every_n_steps": _STEPS,
    "limit_val_batches": Field(
        any_of=(Field(float, low=0, high=1, low_open=True), Field(int, low=1)),
        doc="a fraction of the validation set or a batch count",
    ),
    "log_every_n_steps": _STEPS,
    "sample_every_n_epochs": Field(int, low=0, doc="0: sample grids only at the end"),
    "sample_solver": Field(str, choices=registry("difflab.solvers", "SOLVERS")),
    "sample_steps": _STEPS,
    "sample_grid": Field(str, choices=registry("difflab.solvers", "GRIDS")),
    "sample_n": _STEPS,
    "channels_last": _FLAG,
    "compile": _FLAG,
    "enable_progress_bar": _FLAG,
    "deterministic": _FLAG,
}
OPTIM_FIELDS = {  # the ``optim`` section: AdamW's settings (``DiffusionModule``) and the Trainer's clip
    "lr": Field(float, low=0, low_open=True),
    "betas": Field(list, item=Field(float, low=0, high=1, high_open=True), length=2),
    "weight_decay": Field(float, low=0),
    "warmup_steps": Field(int, low=0, doc="linear warmup of the lr"),
    "grad_clip": Field(float, low=0, low_open=True, nullable=True, doc="gradient-norm clip; null: none"),
}
EMA_FIELDS = {  # the ``ema`` section: ``callbacks.EMA(**cfg["ema"])``
    "decay": Field(float, low=0, high=1, low_open=True, high_open=True),
    "warmup": _FLAG,
    "update_starting_at_step": Field(int, low=0, nullable=True, doc="null: from the first step"),
}
CLASS_COND_FIELDS = {  # the ``class_cond`` section: ``DiffusionModule``'s conditioning
    "num_classes": Field(int, low=0, doc="0: unconditional; else the dataset's classes (check_classes)"),
    "label_dropout": Field(float, low=0, high=1, doc="probability of the null label (guidance)"),
}


def check_classes(num_classes: int, dataset: str, classes: int) -> None:
    """``class_cond.num_classes`` is 0 (unconditional) or the dataset's ``classes``: checked by
    ``config.validate`` where the dataset knows them before loading, and by ``train`` once loaded."""
    if num_classes not in (0, classes):
        raise ConfigError(
            f"params: class_cond.num_classes={num_classes} does not match dataset {dataset!r} "
            f"with {classes} classes; allowed: 0 (unconditional) or {classes}"
        )


# -- building ------------------------------------------------------------------------------------
def prediction_of(schedule_name: str, schedule_cfg: dict) -> str:
    """The network's target: ``schedule.<name>.prediction`` where the config sets it, else the
    schedule's customary one (``Schedule.prediction``)."""
    return schedule_cfg.get("prediction") or schedule_class(schedule_name).prediction


def build_module(
    cfg: dict, schedule_name: str, data_shape, num_classes: int, extra_hparams: dict | None = None
):
    """The ``DiffusionModule`` for ``schedule_name`` from the config (no data, no Trainer)."""
    from difflab.module import DiffusionModule

    schedule_class(schedule_name)  # ValueError listing the schedules for an unknown name
    schedule = schedule_from_config(cfg, schedule_name)
    loss = DiffusionLoss.for_schedule(schedule, **cfg["loss"])
    net_cfg = _plain(dict(cfg["denoiser"]))
    net = build_net(net_cfg, data_shape, num_classes)
    hparams = {
        "denoiser": net_cfg,
        "data_shape": [int(s) for s in data_shape],
        "num_classes": int(num_classes),
        **(extra_hparams or {}),
    }
    optimizer = {k: v for k, v in cfg["optim"].items() if k != "grad_clip"}  # grad_clip: the Trainer's
    return DiffusionModule(
        net,
        schedule,
        loss,
        prediction=prediction_of(schedule_name, dict(cfg["schedule"][schedule_name])),
        **optimizer,
        num_classes=num_classes,
        label_dropout=cfg["class_cond"]["label_dropout"],
        extra_hparams=_plain(hparams),
    )


def build_trainer(
    cfg: dict, schedule_name: str, out_dir: pathlib.Path, callbacks: list, seed: int | None = None
):
    """The Lightning ``Trainer`` of ``cfg["trainer"]`` with the EMA, checkpoint (``last.ckpt`` and
    ``best.ckpt`` beside ``model.pt``), sample-grid and non-finite-loss callbacks after ``callbacks``,
    and the W&B logger (run ``<schedule>-seed<seed>``; None when ``WANDB_MODE=disabled``). Returns
    ``(trainer, sample_grid, logger)``."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from difflab.callbacks import EMA, NonFiniteLossGuard, SampleGrid
    from difflab.tracking import make_logger

    t = check_section(TRAINER_FIELDS, cfg["trainer"], "trainer")
    checkpoint = ModelCheckpoint(
        dirpath=out_dir, filename="best", monitor="val/loss", mode="min", save_top_k=1, save_last=True
    )
    grids = SampleGrid(
        out_dir,
        t["sample_every_n_epochs"],
        t["sample_n"],
        t["sample_steps"],
        t["sample_solver"],
        t["sample_grid"],
    )
    sched_params = dict(cfg["schedule"][schedule_name].get("params") or {})
    seed = cfg["seed"] if seed is None else seed
    logger = make_logger(
        {**cfg, "schedule_name": schedule_name, "schedule_params": sched_params, "train_seed": seed},
        f"{schedule_name}-seed{seed}",
        out_dir,
    )
    trainer = pl.Trainer(
        max_steps=t["max_steps"],
        accelerator=t["accelerator"],
        devices=t["devices"],
        num_nodes=t["num_nodes"],
        strategy=t["strategy"],
        precision=t["precision"],
        gradient_clip_val=cfg["optim"]["grad_clip"],
        check_val_every_n_epoch=None,
        val_check_interval=min(t["val_every_n_steps"], t["max_steps"]),
        limit_val_batches=t["limit_val_batches"],
        log_every_n_steps=t["log_every_n_steps"],
        callbacks=[*callbacks, EMA(**cfg["ema"]), checkpoint, grids, NonFiniteLossGuard()],
        logger=logger if logger is not None else False,
        default_root_dir=str(out_dir),
        enable_progress_bar=t["enable_progress_bar"],
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=t["deterministic"],
    )
    return trainer, grids, logger


def fit_or_resume(trainer, module, dm, out_dir: pathlib.Path) -> tuple[int | None, float]:
    """``trainer.fit``, resuming from ``out_dir/last.ckpt`` when it exists. Returns the step resumed
    from (None for a fresh run) and the seconds fit took."""
    last = out_dir / "last.ckpt"
    start_step = None
    if last.exists():
        start_step = int(torch.load(last, map_location="cpu", weights_only=True)["global_step"])
        log.info("resuming from %s (step %d)", last, start_step)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if start_step is not None else None)
    return start_step, time.perf_counter() - t0


def save_model(out_dir: pathlib.Path, module, metrics: dict) -> None:
    """``out_dir/model.pt`` (the network's weights, EMA after fit, and plain hparams) and
    ``out_dir/train_metrics.json``, each written atomically."""
    payload = {
        "state_dict": {k: v.detach().cpu().clone() for k, v in module.net.state_dict().items()},
        "hparams": _plain(dict(module.hparams)),
    }
    atomic_write(out_dir / "model.pt", lambda p: torch.save(payload, p))
    atomic_write(out_dir / "train_metrics.json", lambda p: p.write_text(json.dumps(metrics, indent=2) + "\n"))


def _datamodule(cfg: dict, seed: int):
    """The datamodule of ``cfg["data"]`` (split by ``cfg["seed"]``) with its classes checked against
    ``class_cond.num_classes``, and its record saved with the model; seeds everything with the
    training ``seed``."""
    import lightning.pytorch as pl

    from difflab.data.datamodules import build_datamodule

    dm = build_datamodule(cfg["data"], cfg["seed"])
    pl.seed_everything(seed, workers=True, verbose=False)
    check_classes(cfg["class_cond"]["num_classes"], dm.name, dm.num_classes)
    info = {"name": dm.name, "levels": dm.levels, "n_train": len(dm.train_levels()[0])}
    if getattr(dm, "offline_split", False):  # MNIST offline: the 10k test split, split again
        info["offline_split"] = True
    return dm, info


def _fit_record(trainer, module, dm, run: dict) -> dict:
    """``train_metrics.json``: ``run`` (schedule, seed, data, ``resumed_from_step``, ``seconds``,
    ``curves``) with the last logged training loss, the validation loss of the final (EMA) weights,
    the steps, the throughput and the parameter count."""
    train_loss = trainer.callback_metrics.get("train/loss")
    val = trainer.validate(module, datamodule=dm, verbose=False)
    steps = int(trainer.global_step)
    images = (steps - (run["resumed_from_step"] or 0)) * dm.batch_size * trainer.world_size
    return {
        "schedule": run["schedule"],
        "seed": run["seed"],
        "train_loss": None if train_loss is None else float(train_loss),
        "val_loss": float(val[0]["val/loss"]) if val else None,
        "steps": steps,
        "seconds": run["seconds"],
        "images_per_second": images / max(run["seconds"], 1e-9),
        "params": sum(p.numel() for p in module.net.parameters()),
        "resumed_from_step": run["resumed_from_step"],
        "data": run["data"],
        "curves": run["curves"].curves(),
    }


def train(
    cfg: dict, schedule_name: str, out_dir, *, seed: int | None = None, callbacks: list | None = None
) -> dict:
    """Train the denoiser of ``schedule_name`` on ``cfg["data"]``; write ``out_dir/model.pt`` (EMA weights
    + plain hparams), ``out_dir/train_metrics.json`` (with the loss curves, ``callbacks.LossCurves``),
    ``out_dir/{last,best}.ckpt`` and ``out_dir/samples/*.png``; return the metrics.

    Keys read: ``seed``, ``experiment``, ``data`` (``build_datamodule``), ``denoiser`` (``build_net``),
    ``schedule.<name>.{params, prediction}``, ``loss`` (``DiffusionLoss``), ``optim``
    (``OPTIM_FIELDS``), ``ema`` (``callbacks.EMA``), ``class_cond.{num_classes, label_dropout}``
    (``check_classes``), ``trainer`` (``TRAINER_FIELDS``), ``wandb.{project, entity, group}``; every
    section in full, as composed from conf/. ``seed``: the training seed (the network's
    initialisation, the batches' order and the diffusion noise; one replicate of the ``seeds`` axis);
    default ``cfg["seed"]``, which always draws the data split, so replicates differ in training only.
    ``callbacks``: extra Lightning callbacks, run before the built-in ones.
    Resumes from ``out_dir/last.ckpt`` when it exists. Bad input raises ``ValueError``
    before anything is written; a non-finite loss raises ``NonFiniteLossError`` keeping the checkpoints.
    """
    from difflab.callbacks import LossCurves
    from difflab.tracking import finish_run

    cfg = _plain(cfg)  # a plain deep copy (OmegaConf resolved): what is logged and saved
    out_dir = pathlib.Path(out_dir)
    seed = cfg["seed"] if seed is None else int(seed)
    dm, data_info = _datamodule(cfg, seed)
    extra = {"data": data_info, "seed": seed, "schedule_name": schedule_name}  # seed: the training seed
    module = build_module(cfg, schedule_name, dm.data_shape, cfg["class_cond"]["num_classes"], extra)
    if cfg["trainer"]["channels_last"]:
        module.net.to(memory_format=torch.channels_last)
    if cfg["trainer"]["compile"]:
        module.net.compile()
    curves = LossCurves()
    trainer, grids, logger = build_trainer(cfg, schedule_name, out_dir, [*(callbacks or []), curves], seed)

    out_dir.mkdir(parents=True, exist_ok=True)
    start_step, seconds = fit_or_resume(trainer, module, dm, out_dir)
    grids.draw(trainer, module)  # after fit the EMA callback has copied the averaged weights in
    run = {"schedule": schedule_name, "seed": seed, "data": data_info, "curves": curves}
    metrics = _fit_record(trainer, module, dm, {**run, "resumed_from_step": start_step, "seconds": seconds})
    if trainer.is_global_zero:
        save_model(out_dir, module, metrics)
        final = {f"final/{k}": v for k, v in metrics.items() if v is not None and k != "curves"}
        if logger is not None:
            finish_run(logger, final)
    return metrics


def _plain(obj):
    """Plain Python containers only (no OmegaConf, tuples -> lists), for ``weights_only=True`` loads."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(obj):
        return _plain(OmegaConf.to_container(obj, resolve=True))
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise ValueError(f"hyper-parameter of type {type(obj).__name__} is not a plain value: {obj!r}")


def load_denoiser(path, device="cpu") -> Denoiser:
    """The trained ``Denoiser`` (EMA weights, eval mode, on ``device``) of ``path`` (a ``model.pt`` or the
    train stage's folder holding one). It knows its ``num_classes`` and ``null_label``
    (``parametrization.Denoiser``); ``.hparams`` holds the saved hyper-parameters."""
    path = pathlib.Path(path)
    if path.is_dir() or path.suffix != ".pt":
        path = path / "model.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; run the train stage first")
    payload = torch.load(path, map_location=device, weights_only=True)
    hp = payload["hparams"]
    net = build_net(hp["denoiser"], hp["data_shape"], hp["num_classes"])
    net.load_state_dict(payload["state_dict"])
    sched = dict(hp["schedule"])
    schedule = get_schedule(sched.pop("name"), **sched)
    denoiser = Denoiser(net, schedule, hp["prediction"], hp["sigma_data"]).to(device).eval()
    denoiser.hparams = hp
    return denoiser
