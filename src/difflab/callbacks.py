"""Callbacks: the EMA of the weights (with a warmup), sample grids with a cheap solver, the loss curves
and a guard that stops on a non-finite loss."""

from __future__ import annotations

import logging
import math
import pathlib

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch.optim.swa_utils import get_ema_avg_fn

from difflab.module import NonFiniteLossError

log = logging.getLogger(__name__)


def check_ema(*, decay, warmup, update_starting_at_step) -> None:
    """``decay`` in (0, 1), ``warmup`` true or false, ``update_starting_at_step`` null or an integer >= 0."""
    ok = isinstance(decay, (int, float)) and not isinstance(decay, bool) and 0 < decay < 1
    if not ok:
        raise ValueError(f"decay={decay!r} must be a number in (0, 1)")
    if not isinstance(warmup, bool):
        raise ValueError(f"warmup={warmup!r} must be true or false")
    start = update_starting_at_step
    if start is not None and (isinstance(start, bool) or not isinstance(start, int) or start < 0):
        raise ValueError(f"update_starting_at_step={start!r} must be null or an integer >= 0")


def warmup_ema_avg_fn(decay: float):
    """EMA update ``avg + (current - avg) (1 - d_n)`` with ``d_n = min(decay, (1 + n) / (10 + n))`` after n
    updates, so a short run is not dominated by the initial weights."""

    def avg_fn(averaged, current, num_averaged):
        n = float(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        return averaged + (current - averaged) * (1 - d)

    return avg_fn


class EMA(WeightAveraging):
    """An exponential moving average of the weights after every optimizer step (Lightning's
    ``WeightAveraging``, which swaps the average in for validation and copies it into the module at the
    end of training). ``warmup``: the decay ramps up as in ``warmup_ema_avg_fn``; updates start at
    ``update_starting_at_step`` (None: at once)."""

    def __init__(self, decay: float = 0.999, warmup: bool = True, update_starting_at_step: int | None = None):
        check_ema(decay=decay, warmup=warmup, update_starting_at_step=update_starting_at_step)
        avg_fn = warmup_ema_avg_fn(decay) if warmup else get_ema_avg_fn(decay)
        super().__init__(avg_fn=avg_fn)
        self.decay, self.warmup, self.update_starting_at_step = decay, warmup, update_starting_at_step

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx >= (self.update_starting_at_step or 0)


class NonFiniteLossGuard(pl.Callback):
    """Raise ``NonFiniteLossError`` before the backward pass of a NaN/inf loss, so no bad update is
    applied and the last checkpoint written (``last.ckpt``) stays the last good one."""

    def on_before_backward(self, trainer, pl_module, loss):
        value = float(loss.detach())
        # every rank stops together (one rank raising alone would leave the others waiting in all-reduce)
        if trainer.strategy.reduce_boolean_decision(not math.isfinite(value), all=False):
            raise NonFiniteLossError(
                f"non-finite training loss at step {trainer.global_step} "
                f"(rank {trainer.global_rank}: {value}); stopped, the last good checkpoint is kept"
            )


class SampleGrid(pl.Callback):
    """Every ``every_n_epochs`` epochs (and at the end of training) draw ``n`` samples of the EMA weights
    with a cheap solver (``difflab.solvers`` ``solver``, ``steps`` steps on the ``grid`` time grid,
    fixed noise), save ``out_dir/samples/step_XXXXXX.png`` (``difflab.images.save_grid``) and log
    the grid to W&B as ``samples/grid``. Image data only (``[C, H, W]``); ``every_n_epochs = 0``: only
    at the end."""

    def __init__(self, out_dir, every_n_epochs: int, n: int, steps: int, solver: str, grid: str):
        self.out_dir = pathlib.Path(out_dir) / "samples"
        self.every, self.n, self.steps, self.solver, self.grid = every_n_epochs, n, steps, solver, grid
        self._last_step, self._next_epoch = -1, every_n_epochs

    def on_validation_epoch_end(self, trainer, pl_module):  # runs while EMA weights are swapped in
        # validation runs every N steps, so check "at least `every` epochs since the last grid"
        if self.every == 0 or trainer.sanity_checking or trainer.current_epoch + 1 < self._next_epoch:
            return
        self._next_epoch = trainer.current_epoch + 1 + self.every
        self.draw(trainer, pl_module)

    def draw(self, trainer, pl_module):
        from difflab.images import save_grid, tile_grid, to_levels
        from difflab.solvers import get_solver

        shape = pl_module.net.data_shape
        if not trainer.is_global_zero or trainer.global_step == self._last_step or len(shape) != 3:
            return
        self._last_step = trainer.global_step
        gen = torch.Generator().manual_seed(0)
        noise = torch.randn(self.n, *shape, generator=gen).to(pl_module.device)
        cond = None
        if pl_module.num_classes > 0:
            cond = (torch.arange(self.n) % pl_module.num_classes).to(pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            solver = get_solver(self.solver)
            x0 = solver(pl_module.denoiser, pl_module.schedule, noise, self.steps, grid=self.grid, cond=cond)
        pl_module.train(was_training)
        images = to_levels(x0.float().cpu(), 256)
        nrow = pl_module.num_classes or None
        save_grid(self.out_dir / f"step_{trainer.global_step:06d}.png", images, nrow, levels=256)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(
                    "samples/grid", [tile_grid(images, nrow, levels=256)], step=trainer.global_step
                )


class LossCurves(pl.Callback):
    """The loss curves of a run by optimizer step: the mean training loss over each window of
    ``trainer.log_every_n_steps`` steps, and the validation loss at every validation (the EMA weights
    are swapped in then). ``curves()`` is ``{"train": {"step": [T], "loss": [T]}, "val": {"step": [V],
    "loss": [V]}}``; it travels in the checkpoint, so a resumed run keeps its curve. A validation at a
    step already recorded (the final ``trainer.validate``) adds no point."""

    def __init__(self):
        self.points: dict[str, tuple[list, list]] = {"train": ([], []), "val": ([], [])}
        self._sum, self._n = 0.0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self._sum, self._n = self._sum + loss.detach(), self._n + 1  # a tensor: no device sync per step
        if trainer.global_step % max(trainer.log_every_n_steps, 1) == 0:
            self._add("train", trainer.global_step, float(self._sum) / self._n)
            self._sum, self._n = 0.0, 0

    def on_validation_end(self, trainer, pl_module):  # after the epoch's metrics are reduced
        loss = trainer.callback_metrics.get("val/loss")
        if not trainer.sanity_checking and loss is not None:
            self._add("val", trainer.global_step, float(loss))

    def _add(self, kind: str, step: int, value: float) -> None:
        steps, values = self.points[kind]
        if not steps or step > steps[-1]:
            steps.append(int(step))
            values.append(value)

    def curves(self) -> dict:
        return {kind: {"step": list(s), "loss": list(v)} for kind, (s, v) in self.points.items()}

    def state_dict(self) -> dict:
        return self.curves()

    def load_state_dict(self, state_dict: dict) -> None:
        self.points = {kind: (list(c["step"]), list(c["loss"])) for kind, c in state_dict.items()}
