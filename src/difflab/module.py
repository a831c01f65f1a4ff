"""One LightningModule for every schedule: it receives the network, schedule and loss already built."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from difflab.parametrization import SIGMA_DATA, Denoiser
from difflab.schedules import Schedule


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_optimizer(*, lr, betas, weight_decay, warmup_steps) -> None:
    """AdamW's settings: ``lr`` > 0, ``betas`` two numbers in [0, 1), ``weight_decay`` >= 0,
    ``warmup_steps`` an integer >= 0. ``ValueError`` naming the bad one."""
    if not _number(lr) or lr <= 0:
        raise ValueError(f"lr={lr!r} must be a number > 0")
    if (
        not isinstance(betas, (list, tuple))
        or len(betas) != 2
        or not all(_number(b) and 0 <= b < 1 for b in betas)
    ):
        raise ValueError(f"betas={betas!r} must be two numbers in [0, 1)")
    if not _number(weight_decay) or weight_decay < 0:
        raise ValueError(f"weight_decay={weight_decay!r} must be a number >= 0")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps={warmup_steps!r} must be an integer >= 0")


def check_conditioning(*, num_classes, label_dropout) -> None:
    """``num_classes`` an integer >= 0 (0 = unconditional), ``label_dropout`` in [0, 1]."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes={num_classes!r} must be an integer >= 0 (0 = unconditional)")
    if not _number(label_dropout) or not 0 <= label_dropout <= 1:
        raise ValueError(f"label_dropout={label_dropout!r} must be a number in [0, 1]")


class DiffusionModule(pl.LightningModule):
    """Trains ``net`` as the denoiser of ``schedule`` with ``loss`` (lightning-hydra-template style).

    AdamW with ``lr``, ``betas``, ``weight_decay`` and a linear warmup of the lr over ``warmup_steps``
    (gradient clipping is the Trainer's). ``num_classes`` > 0 enables class conditioning: labels are
    replaced by the null label ``num_classes`` with probability ``label_dropout`` (classifier-free
    guidance). ``hparams`` are plain dicts (``torch.load(weights_only=True)`` reads the checkpoints);
    ``extra_hparams`` adds more (the net config, the data shape) for loading without the config.
    The defaults here are conf/'s (``conf/config.yaml``).
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: Schedule,
        loss,
        *,
        prediction: str,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        num_classes: int = 0,
        label_dropout: float = 0.1,
        sigma_data: float = SIGMA_DATA,
        extra_hparams: dict | None = None,
    ):
        super().__init__()
        check_optimizer(lr=lr, betas=betas, weight_decay=weight_decay, warmup_steps=warmup_steps)
        check_conditioning(num_classes=num_classes, label_dropout=label_dropout)
        self.net, self.schedule, self.loss = net, schedule, loss
        self.prediction, self.sigma_data = prediction, float(sigma_data)
        self.num_classes, self.label_dropout = int(num_classes), float(label_dropout)
        self.optim = {
            "lr": lr,
            "betas": list(betas),
            "weight_decay": weight_decay,
            "warmup_steps": warmup_steps,
        }
        self.save_hyperparameters(
            {
                "schedule": schedule.params(),
                "prediction": prediction,
                "optim": dict(self.optim),
                "num_classes": self.num_classes,
                "label_dropout": self.label_dropout,
                "sigma_data": self.sigma_data,
                **(extra_hparams or {}),
            }
        )

    @property
    def denoiser(self) -> Denoiser:
        """``D(x, t, cond) ~ E[x0 | x_t = x]`` wrapping the current network weights."""
        view = self.__dict__.get("_denoiser_view")  # kept outside nn.Module's registry: no duplicate weights
        if view is None or view.net is not self.net:
            view = Denoiser(self.net, self.schedule, self.prediction, self.sigma_data)
            self.__dict__["_denoiser_view"] = view
        return view

    def _labels(self, y: Tensor | None, drop: bool) -> Tensor | None:
        """Class labels for the net: ``None`` when unconditional; null label with prob ``label_dropout``."""
        if self.num_classes == 0 or y is None:
            return None
        if drop and self.label_dropout > 0:
            y = torch.where(torch.rand(y.shape, device=y.device) < self.label_dropout, self.num_classes, y)
        return y

    def training_step(self, batch, batch_idx):
        x0, y = batch
        loss = self.loss(self.denoiser, x0, self._labels(y, drop=True)).mean()
        if (self.global_step + 1) % max(self.trainer.log_every_n_steps, 1) == 0:  # the steps loggers record
            self.log("train/loss", loss)
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def validation_step(self, batch, batch_idx):
        x0, y = batch
        gen = torch.Generator(x0.device).manual_seed(1000 + batch_idx)  # same times and noise every epoch
        loss = self.loss(self.denoiser, x0, self._labels(y, drop=False), generator=gen).mean()
        self.log("val/loss", loss, batch_size=x0.shape[0], sync_dist=True)
        return loss

    def configure_optimizers(self):
        o = self.optim
        opt = torch.optim.AdamW(
            self.net.parameters(),
            lr=o["lr"],
            betas=tuple(o["betas"]),
            weight_decay=o["weight_decay"],
            foreach=True,  # one multi-tensor update (the CPU default is a Python loop over parameters)
        )
        warmup = o["warmup_steps"]
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / (warmup + 1)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
