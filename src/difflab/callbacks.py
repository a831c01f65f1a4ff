"""Callbacks: sample grids with a cheap solver, and a guard that stops on a non-finite loss."""

from __future__ import annotations

import logging
import math
import pathlib

import lightning.pytorch as pl
import torch

from difflab.module import NonFiniteLossError

log = logging.getLogger(__name__)


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


def image_grid(x: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """``[N, C, H, W]`` in [-1, 1] -> ``[H', W', C]`` uint8 grid (1-pixel gaps)."""
    N, C, H, W = x.shape
    nrow = nrow or math.ceil(math.sqrt(N))
    ncol = math.ceil(N / nrow)
    grid = torch.full((C, ncol * (H + 1) + 1, nrow * (W + 1) + 1), -1.0)
    for i in range(N):
        r, c = divmod(i, nrow)
        grid[:, 1 + r * (H + 1) : 1 + r * (H + 1) + H, 1 + c * (W + 1) : 1 + c * (W + 1) + W] = x[i]
    return ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0)


class SampleGrid(pl.Callback):
    """Every ``every_n_epochs`` epochs (and at the end of training) draw ``n`` samples of the EMA weights
    with a cheap solver (``difflab.solvers`` ``solver``, default DDIM, ``steps`` steps on the ``grid``
    time grid, fixed noise), save
    ``out_dir/samples/step_XXXXXX.png`` and log the grid to W&B as ``samples/grid``. Image data only."""

    def __init__(
        self,
        out_dir,
        every_n_epochs: int = 10,
        n: int = 64,
        steps: int = 20,
        solver: str = "ddim",
        grid: str = "logsnr",
    ):
        self.out_dir = pathlib.Path(out_dir) / "samples"
        self.every, self.n, self.steps, self.solver = max(1, int(every_n_epochs)), int(n), int(steps), solver
        self.grid = grid
        self._last_step, self._next_epoch = -1, self.every

    def on_validation_epoch_end(self, trainer, pl_module):  # runs while EMA weights are swapped in
        # validation runs every N steps, so check "at least `every` epochs since the last grid"
        if trainer.sanity_checking or trainer.current_epoch + 1 < self._next_epoch:
            return
        self._next_epoch = trainer.current_epoch + 1 + self.every
        self.draw(trainer, pl_module)

    def draw(self, trainer, pl_module):
        if not trainer.is_global_zero or trainer.global_step == self._last_step:
            return
        shape = getattr(pl_module.net, "data_shape", None)
        if shape is None or len(shape) != 3:
            return
        try:
            from difflab.solvers import get_solver
        except ImportError as e:  # solvers land in a parallel change; grids are a convenience
            log.warning("sample grid skipped: %s", e)
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
        grid = image_grid(x0.float().cpu(), nrow=pl_module.num_classes or None)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"step_{trainer.global_step:06d}.png"
        _save_png(grid, path)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image("samples/grid", [grid.numpy()], step=trainer.global_step)


def _save_png(grid: torch.Tensor, path: pathlib.Path) -> None:
    from PIL import Image

    arr = grid.numpy()
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(tmp)
    tmp.replace(path)
