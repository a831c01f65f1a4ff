"""Training-step throughput: DiffusionModule under Lightning's Trainer vs a plain PyTorch loop.

Same network (the quick digits MLP unless --denoiser says otherwise), same batches (the digits
datamodule's loader), same AdamW + warmup schedule, gradient clipping and loss; no validation,
checkpointing or EMA in either. Rounds alternate between the two so that load on the machine hits both
alike; each round times every step (data loading included) and the medians are compared.

    uv run python bench/train_throughput.py [--steps 200] [--rounds 5] [--threads 1] [--denoiser mlp]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import lightning.pytorch as pl
import torch
import yaml

from difflab.data.datamodules import build_datamodule
from difflab.training import build_module


class StepTimer(pl.Callback):
    def __init__(self):
        self.times, self._t = [], None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._t is None:
            self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.perf_counter()
        self.times.append(now - self._t)
        self._t = now


def make(cfg, dm):
    return build_module(cfg, "vp_linear", dm.data_shape, dm.num_classes)


def lightning_round(cfg, dm, steps):
    module = make(cfg, dm)
    timer = StepTimer()
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        gradient_clip_val=cfg["optim"]["grad_clip"],
        callbacks=[timer],
    )
    trainer.fit(module, train_dataloaders=dm.train_dataloader())
    return timer.times[5:]


def plain_round(cfg, dm, steps):
    module = make(cfg, dm)
    opt_cfg = module.configure_optimizers()
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    params = list(module.net.parameters())
    times, step = [], 0
    t = time.perf_counter()
    while step < steps:
        for x0, y in dm.train_dataloader():
            y = module._labels(y, drop=True)
            loss = module.loss(module.denoiser, x0, y).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg["optim"]["grad_clip"])
            opt.step()
            sched.step()
            loss.item()  # Lightning reads the loss each step too
            now = time.perf_counter()
            times.append(now - t)
            t, step = now, step + 1
            if step == steps:
                break
    return times[5:]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--denoiser", default="mlp", help="a conf/denoiser/*.yaml name")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = {
        "denoiser": yaml.safe_load(open(f"conf/denoiser/{args.denoiser}.yaml")),
        "optim": {"lr": 1e-3, "warmup_steps": 100, "grad_clip": 1.0},
        "class_cond": {"num_classes": 10, "label_dropout": 0.1},
    }
    dm = build_datamodule({"name": "digits", "batch_size": 128}, seed=0)
    plain, light = [], []
    for r in range(args.rounds):
        pl.seed_everything(r, verbose=False)
        plain += plain_round(cfg, dm, args.steps)
        pl.seed_everything(r, verbose=False)
        light += lightning_round(cfg, dm, args.steps)
    mp, ml = statistics.median(plain), statistics.median(light)
    bs = dm.batch_size
    n_params = sum(p.numel() for p in make(cfg, dm).net.parameters())
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )
    print(f"model: {args.denoiser} ({n_params:,} params), batch {bs}, {len(plain)} timed steps each")
    print(f"{'loop':<10} {'median ms/step':>15} {'images/s':>10}")
    print(f"{'plain':<10} {1000 * mp:>15.2f} {bs / mp:>10.0f}")
    print(f"{'lightning':<10} {1000 * ml:>15.2f} {bs / ml:>10.0f}")
    print(f"lightning / plain throughput: {mp / ml:.3f}x")


if __name__ == "__main__":
    main()
