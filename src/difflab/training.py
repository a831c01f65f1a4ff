"""Train one schedule's denoiser from the composed config (a plain dict), and load it back.

``train(cfg, schedule_name, out_dir)`` wires data, network, schedule, loss and the LightningModule
with Lightning's Trainer and callbacks (EMA, checkpoints, sample grids, non-finite-loss guard) and a
W&B logger; ``load_denoiser(out_dir / "model.pt")`` rebuilds the trained ``Denoiser`` without Lightning.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time

import torch

from difflab.io import atomic_write
from difflab.losses import DiffusionLoss, default_prediction
from difflab.nets import build_net
from difflab.parametrization import SIGMA_DATA, Denoiser
from difflab.schedules import SCHEDULES, get_schedule

log = logging.getLogger(__name__)

DEFAULTS = {
    "loss": {"time_sampling": "stratified", "weighting": "unit", "min_snr_gamma": 5.0},
    "optim": {"lr": 2e-4, "weight_decay": 0.0, "betas": [0.9, 0.999], "warmup_steps": 100, "grad_clip": 1.0},
    "ema": {"decay": 0.999, "warmup": True, "update_starting_at_step": None},
    "trainer": {
        "max_steps": 1000,
        "accelerator": "auto",
        "devices": 1,
        "num_nodes": 1,
        "strategy": "auto",
        "precision": None,  # None: bf16-mixed on GPU, 32-true on CPU
        "val_every_n_steps": 250,
        "limit_val_batches": 1.0,
        "log_every_n_steps": 50,
        "sample_every_n_epochs": 0,  # 0: only at the end of training
        "sample_solver": "ddim",
        "sample_steps": 20,
        "sample_grid": "logsnr",
        "sample_n": 64,
        "channels_last": False,
        "compile": False,
        "enable_progress_bar": False,
        "deterministic": False,
    },
    "class_cond": {"num_classes": 0, "label_dropout": 0.1},
}


def _section(cfg: dict, key: str) -> dict:
    return {**DEFAULTS.get(key, {}), **dict(cfg.get(key) or {})}


def _on_gpu(trainer_cfg: dict) -> bool:
    acc = trainer_cfg["accelerator"]
    return acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available())


def build_module(
    cfg: dict, schedule_name: str, data_shape, num_classes: int, extra_hparams: dict | None = None
):
    """The ``DiffusionModule`` for ``schedule_name`` from the config (no data, no Trainer)."""
    from difflab.module import DiffusionModule

    if schedule_name not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule_name!r}; valid schedules: {', '.join(SCHEDULES)}")
    sched_cfg = dict((cfg.get("schedule") or {}).get(schedule_name) or {})
    schedule = get_schedule(schedule_name, **dict(sched_cfg.get("params") or {}))
    prediction = sched_cfg.get("prediction") or default_prediction(schedule_name)
    loss_cfg = _section(cfg, "loss")
    loss = DiffusionLoss(loss_cfg["time_sampling"], loss_cfg["weighting"], loss_cfg["min_snr_gamma"])
    net_cfg = _plain(dict(cfg["denoiser"]))
    net = build_net(net_cfg, data_shape, num_classes)
    cc = _section(cfg, "class_cond")
    hparams = {
        "denoiser": net_cfg,
        "data_shape": [int(s) for s in data_shape],
        "num_classes": int(num_classes),
        **(extra_hparams or {}),
    }
    return DiffusionModule(
        net,
        schedule,
        loss,
        prediction=prediction,
        optim=_plain(_section(cfg, "optim")),
        num_classes=num_classes,
        label_dropout=float(cc["label_dropout"]),
        sigma_data=float(cfg.get("sigma_data", SIGMA_DATA)),
        extra_hparams=_plain(hparams),
    )


def ema_callback(ema_cfg: dict):
    """Lightning's ``EMAWeightAveraging`` (decay ``ema.decay``); with ``ema.warmup`` the decay ramps as
    ``min(decay, (1 + n) / (10 + n))`` after n updates, so short runs are not dominated by the init."""
    from lightning.pytorch.callbacks import EMAWeightAveraging

    decay = float(ema_cfg["decay"])
    if not 0.0 < decay < 1.0:
        raise ValueError(f"ema.decay={decay} must be in (0, 1)")
    cb = EMAWeightAveraging(decay=decay, update_starting_at_step=ema_cfg.get("update_starting_at_step"))
    if ema_cfg.get("warmup", True):

        def avg_fn(averaged, current, num_averaged):
            n = float(num_averaged)
            d = min(decay, (1 + n) / (10 + n))
            return averaged + (current - averaged) * (1 - d)

        cb._kwargs["avg_fn"] = avg_fn
    return cb


def train(cfg: dict, schedule_name: str, out_dir, *, callbacks: list | None = None) -> dict:
    """Train the denoiser of ``schedule_name`` on ``cfg["data"]``; write ``out_dir/model.pt`` (EMA weights
    + plain hparams), ``out_dir/train_metrics.json``, ``out_dir/{last,best}.ckpt`` and
    ``out_dir/samples/*.png``; return the metrics.

    Keys read (defaults in ``DEFAULTS``): ``seed``, ``experiment``, ``data`` (see
    ``build_datamodule``), ``denoiser`` (see ``build_net``), ``schedule.<name>.{params, prediction}``,
    ``loss.{time_sampling, weighting, min_snr_gamma}``, ``optim.{lr, weight_decay, betas, warmup_steps,
    grad_clip}``, ``ema.{decay, warmup, update_starting_at_step}``, ``class_cond.{num_classes,
    label_dropout}`` (num_classes 0 = unconditional; otherwise it must match the data's), ``trainer``
    (``max_steps, accelerator, devices, num_nodes, strategy, precision, val_every_n_steps,
    limit_val_batches, log_every_n_steps, sample_every_n_epochs, sample_solver, sample_steps,
    sample_grid, sample_n, channels_last, compile, enable_progress_bar, deterministic``),
    ``wandb.{project, entity, group}``.
    ``callbacks``: extra Lightning callbacks, run before the built-in ones.
    Resumes from ``out_dir/last.ckpt`` when it exists. Bad input raises ``ValueError``
    before anything is written; a non-finite loss raises ``NonFiniteLossError`` keeping the checkpoints.
    """
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from difflab.callbacks import NonFiniteLossGuard, SampleGrid
    from difflab.data.datamodules import build_datamodule
    from difflab.tracking import make_logger

    cfg = _plain(cfg)  # a plain deep copy (OmegaConf resolved): what is logged and saved
    out_dir = pathlib.Path(out_dir)
    seed = int(cfg.get("seed", 0))
    tcfg = _section(cfg, "trainer")
    # -- build and validate everything before writing anything ----------------------------------------
    pl.seed_everything(seed, workers=True, verbose=False)
    dm = build_datamodule(dict(cfg.get("data") or {}), seed)
    cc = _section(cfg, "class_cond")
    num_classes = int(cc["num_classes"])
    if num_classes not in (0, dm.num_classes):
        raise ValueError(
            f"class_cond.num_classes={num_classes} does not match dataset {dm.name!r} "
            f"with {dm.num_classes} classes; use 0 (unconditional) or {dm.num_classes}"
        )
    sched_params = dict(((cfg.get("schedule") or {}).get(schedule_name) or {}).get("params") or {})
    data_info = {"name": dm.name, "levels": dm.levels, "n_train": len(dm.train_levels()[0])}
    if getattr(dm, "offline_split", False):  # MNIST offline: the 10k test split, split again
        data_info["offline_split"] = True
    extra = {"data": data_info, "seed": seed, "schedule_name": schedule_name}
    module = build_module(cfg, schedule_name, dm.data_shape, num_classes, extra)
    if tcfg["channels_last"]:
        module.net.to(memory_format=torch.channels_last)
    if tcfg["compile"]:
        module.net.compile()
    ema = ema_callback(_section(cfg, "ema"))
    precision = tcfg["precision"] or ("bf16-mixed" if _on_gpu(tcfg) else "32-true")

    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out_dir  # last.ckpt and best.ckpt sit beside model.pt
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min", save_top_k=1, save_last=True
    )
    sample_every = int(tcfg["sample_every_n_epochs"])
    grids = SampleGrid(
        out_dir, sample_every or 10**9, tcfg["sample_n"], tcfg["sample_steps"], tcfg["sample_solver"]
    )
    logger = make_logger(
        {**cfg, "schedule_name": schedule_name, "schedule_params": sched_params}, schedule_name, out_dir
    )
    val_every = min(int(tcfg["val_every_n_steps"]), int(tcfg["max_steps"]))
    trainer = pl.Trainer(
        max_steps=int(tcfg["max_steps"]),
        accelerator=tcfg["accelerator"],
        devices=tcfg["devices"],
        num_nodes=int(tcfg["num_nodes"]),
        strategy=tcfg["strategy"],
        precision=precision,
        gradient_clip_val=_section(cfg, "optim")["grad_clip"] or None,
        check_val_every_n_epoch=None,
        val_check_interval=val_every,
        limit_val_batches=tcfg["limit_val_batches"],
        log_every_n_steps=int(tcfg["log_every_n_steps"]),
        callbacks=[*(callbacks or []), ema, checkpoint, grids, NonFiniteLossGuard()],
        logger=logger if logger is not None else False,
        default_root_dir=str(out_dir),
        enable_progress_bar=bool(tcfg["enable_progress_bar"]),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=bool(tcfg["deterministic"]),
    )
    last = ckpt_dir / "last.ckpt"
    ckpt_path = str(last) if last.exists() else None
    start_step = 0
    if ckpt_path:
        start_step = int(torch.load(ckpt_path, map_location="cpu", weights_only=True)["global_step"])
        log.info("resuming from %s (step %d)", ckpt_path, start_step)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    seconds = time.perf_counter() - t0
    train_loss = _metric(trainer, "train/loss")
    # after fit the EMA callback has copied the averaged weights into the module
    grids.draw(trainer, module)
    val = trainer.validate(module, datamodule=dm, verbose=False)
    steps = int(trainer.global_step)
    metrics = {
        "schedule": schedule_name,
        "train_loss": train_loss,
        "val_loss": float(val[0]["val/loss"]) if val else None,
        "steps": steps,
        "seconds": seconds,
        "images_per_second": (steps - start_step) * dm.batch_size * trainer.world_size / max(seconds, 1e-9),
        "params": sum(p.numel() for p in module.net.parameters()),
        "resumed_from_step": start_step if ckpt_path else None,
        "data": data_info,
    }
    if trainer.is_global_zero:
        payload = {
            "state_dict": {k: v.detach().cpu().clone() for k, v in module.net.state_dict().items()},
            "hparams": _plain(dict(module.hparams)),
        }
        atomic_write(out_dir / "model.pt", lambda p: torch.save(payload, p))
        atomic_write(
            out_dir / "train_metrics.json", lambda p: p.write_text(json.dumps(metrics, indent=2) + "\n")
        )
    if logger is not None and trainer.is_global_zero:
        logger.experiment.summary.update({f"final/{k}": v for k, v in metrics.items() if v is not None})
        logger.finalize("success")
        import wandb

        wandb.finish()
    return metrics


def _metric(trainer, key: str) -> float | None:
    v = trainer.callback_metrics.get(key)
    return None if v is None else float(v)


def _plain(obj):
    """Plain Python containers only (no OmegaConf, tuples -> lists), for ``weights_only=True`` loads."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(obj):
            return _plain(OmegaConf.to_container(obj, resolve=True))
    except ImportError:
        pass
    raise ValueError(f"hyper-parameter of type {type(obj).__name__} is not a plain value: {obj!r}")


def load_denoiser(path, device="cpu") -> tuple[Denoiser, dict]:
    """Rebuild the trained ``Denoiser`` (EMA weights, eval mode) and its hparams from ``model.pt``."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.exists():
        raise ValueError(f"no trained model at '{path}'")
    payload = torch.load(path, map_location=device, weights_only=True)
    hp = payload["hparams"]
    net = build_net(hp["denoiser"], hp["data_shape"], hp["num_classes"])
    net.load_state_dict(payload["state_dict"])
    sched = dict(hp["schedule"])
    schedule = get_schedule(sched.pop("name"), **sched)
    denoiser = Denoiser(net, schedule, hp["prediction"], hp["sigma_data"]).to(device).eval()
    return denoiser, hp
