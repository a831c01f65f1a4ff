"""Training-step throughput: DiffusionModule under Lightning's Trainer vs a plain PyTorch loop.

Same network (the quick digits MLP unless --denoiser says otherwise), same batches (the digits
datamodule's loader), same AdamW + warmup schedule, gradient clipping and loss; no validation,
checkpointing or EMA in either. Rounds alternate between the two so that load on the machine hits both
alike; each round times every step (data loading included). Reported: the median step over all rounds
in wall-clock time and in process CPU time (the latter is far less sensitive to other processes on a
shared machine), and the median over rounds of the per-round throughput ratio.

    uv run python bench/train_throughput.py [--steps 60] [--rounds 10] [--threads 1] [--denoiser mlp]
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


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


class StepTimer(pl.Callback):
    def __init__(self):
        self.times, self._t = [], None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._t is None:
            self._t = _now()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = _now()
        self.times.append((now[0] - self._t[0], now[1] - self._t[1]))
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
    t = _now()
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
            now = _now()
            times.append((now[0] - t[0], now[1] - t[1]))
            t, step = now, step + 1
            if step == steps:
                break
    return times[5:]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=10)
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
    plain, light, ratios = [], [], []
    for r in range(args.rounds):
        pl.seed_everything(r, verbose=False)
        p_round = plain_round(cfg, dm, args.steps)
        pl.seed_everything(r, verbose=False)
        l_round = lightning_round(cfg, dm, args.steps)
        plain, light = plain + p_round, light + l_round
        ratios.append(statistics.median(t for t, _ in p_round) / statistics.median(t for t, _ in l_round))
    bs = dm.batch_size
    n_params = sum(p.numel() for p in make(cfg, dm).net.parameters())
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )
    print(f"model: {args.denoiser} ({n_params:,} params), batch {bs}, {len(plain)} timed steps each")
    print(f"{'loop':<10} {'wall ms/step':>13} {'images/s':>9} {'CPU ms/step':>12}")
    for name, times in (("plain", plain), ("lightning", light)):
        wall, cpu = statistics.median(t for t, _ in times), statistics.median(c for _, c in times)
        print(f"{name:<10} {1000 * wall:>13.2f} {bs / wall:>9.0f} {1000 * cpu:>12.2f}")
    wall_ratio = statistics.median(t for t, _ in plain) / statistics.median(t for t, _ in light)
    cpu_ratio = statistics.median(c for _, c in plain) / statistics.median(c for _, c in light)
    print(f"lightning / plain throughput: wall {wall_ratio:.3f}x, CPU time {cpu_ratio:.3f}x, ", end="")
    print(f"median of per-round wall ratios {statistics.median(ratios):.3f}x ({args.rounds} rounds)")


if __name__ == "__main__":
    main()
