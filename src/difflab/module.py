"""One LightningModule for every schedule: it receives the network, schedule and loss already built."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from difflab.parametrization import SIGMA_DATA, Denoiser
from difflab.schedules import Schedule


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def _check(settings, fields: dict) -> None:
    """Each of the dataclass ``settings``' values against its declared config ``Field`` (the ``optim``
    and ``class_cond`` sections, ``training``): ``ValueError`` naming the bad one."""
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        field = fields[f.name]
        if not field.accepts(list(value) if isinstance(value, tuple) else value):
            raise ValueError(f"{f.name}={value!r} must be {field.allowed()}")


@dataclass(frozen=True)
class AdamW:
    """AdamW's ``lr``, ``betas``, ``weight_decay`` and a linear warmup of the lr over ``warmup_steps``
    (the ``optim`` section but the Trainer's ``grad_clip``; defaults: ``conf/config.yaml``'s)."""

    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 100

    def __post_init__(self):
        from difflab.training import OPTIM_FIELDS

        _check(self, OPTIM_FIELDS)


@dataclass(frozen=True)
class ClassConditioning:
    """``num_classes`` > 0 conditions on labels, replaced by the null label ``num_classes`` with
    probability ``label_dropout`` in training (classifier-free guidance); 0: unconditional."""

    num_classes: int = 0
    label_dropout: float = 0.1

    def __post_init__(self):
        from difflab.training import CLASS_COND_FIELDS

        _check(self, CLASS_COND_FIELDS)


class DiffusionModule(pl.LightningModule):
    """Trains ``net`` as the denoiser of ``schedule`` with ``loss`` (lightning-hydra-template style).

    ``settings`` are the fields of ``AdamW`` (gradient clipping is the Trainer's) and of
    ``ClassConditioning``. ``hparams`` are plain dicts (``torch.load(weights_only=True)`` reads the
    checkpoints); ``extra_hparams`` adds more (the net config, the data shape) for loading without the
    config.
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: Schedule,
        loss,
        *,
        prediction: str,
        sigma_data: float = SIGMA_DATA,
        extra_hparams: dict | None = None,
        **settings,
    ):
        super().__init__()
        adamw = {f.name for f in dataclasses.fields(AdamW)}
        optim = AdamW(**{k: v for k, v in settings.items() if k in adamw})
        cond = ClassConditioning(**{k: v for k, v in settings.items() if k not in adamw})
        self.net, self.schedule, self.loss = net, schedule, loss
        self.prediction, self.sigma_data = prediction, float(sigma_data)
        self.num_classes, self.label_dropout = int(cond.num_classes), float(cond.label_dropout)
        self.optim = {**dataclasses.asdict(optim), "betas": list(optim.betas)}
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
