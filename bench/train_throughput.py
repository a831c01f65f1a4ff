"""Training-step throughput: DiffusionModule under Lightning's Trainer vs a plain PyTorch loop.

Same network (the quick digits MLP unless --denoiser says otherwise), same batches (the digits
datamodule's loader), same AdamW + warmup schedule, gradient clipping and loss; no validation,
checkpointing or EMA in either. Rounds alternate between the two so that load on the machine hits both
alike; each round times every step (data loading included). Reported: the median step over all rounds
in wall-clock time and in process CPU time (the latter is far less sensitive to other processes on a
shared machine), and the median over rounds of the per-round throughput ratio.

    uv run python bench/train_throughput.py [--steps 60] [--rounds 10] [--threads 1] [--denoiser mlp]

On a GPU (``--gpu``): the MNIST-size U-Net (``--denoiser unet``) on 1x28x28 batches (random levels, so
no dataset is needed), bf16 autocast in both loops (``bf16-mixed`` in Lightning), channels_last, and
``--compile`` for torch.compile; times are taken after ``torch.cuda.synchronize()`` (this mode has not
been run yet: no GPU was lent to the session that wrote it):

    uv run python bench/train_throughput.py --gpu --denoiser unet --steps 50 --rounds 3 [--compile]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import lightning.pytorch as pl
import torch

from difflab.config import compose, validate
from difflab.data.datamodules import build_datamodule
from difflab.training import build_module

DEVICE = {"gpu": False, "compile": False}


def _now() -> tuple[float, float]:
    if DEVICE["gpu"]:
        torch.cuda.synchronize()
    return time.perf_counter(), time.process_time()


class Synthetic28:
    """Stand-in for the MNIST datamodule on a GPU box: random 256-level 1x28x28 images, 10 labels."""

    data_shape, num_classes, levels = (1, 28, 28), 10, 256

    def __init__(self, batch_size: int, n: int = 8192):
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (n, 1, 28, 28), generator=g).float() / 127.5 - 1
        self.dataset = torch.utils.data.TensorDataset(x, torch.randint(0, 10, (n,), generator=g))
        self.batch_size = batch_size

    def train_dataloader(self):
        return torch.utils.data.DataLoader(
            self.dataset, self.batch_size, shuffle=True, drop_last=True, pin_memory=DEVICE["gpu"]
        )


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


def training_config(denoiser: str, batch_size: int, gpu: bool) -> dict:
    """Every section ``build_module`` reads, as ``make params`` composes it: the quick experiment (digits,
    AdamW lr 1e-3 with 100 warmup steps, grad clip 1) with network ``denoiser`` (a conf/denoiser/*.yaml
    name), class conditioning on 10 classes (label dropout 0.1) and ``batch_size``; with ``gpu`` the
    data section is MNIST's (checked for its 1x28x28 shape, not loaded: ``Synthetic28`` stands in)."""
    overrides = [
        "experiment=quick",
        *(["data=mnist"] if gpu else []),
        f"denoiser={denoiser}",
        f"data.batch_size={batch_size}",
        "class_cond.num_classes=10",
        "class_cond.label_dropout=0.1",
    ]
    return validate(compose(overrides))


def make(cfg, dm):
    module = build_module(cfg, "vp_linear", dm.data_shape, dm.num_classes)
    if DEVICE["gpu"]:
        module.net.to(memory_format=torch.channels_last)
        if DEVICE["compile"]:
            module.net.compile()
    return module


def lightning_round(cfg, dm, steps):
    module = make(cfg, dm)
    timer = StepTimer()
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="gpu" if DEVICE["gpu"] else "cpu",
        devices=1,
        precision="bf16-mixed" if DEVICE["gpu"] else "32-true",
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
    device = torch.device("cuda" if DEVICE["gpu"] else "cpu")
    module.to(device)
    opt_cfg = module.configure_optimizers()
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    params = list(module.net.parameters())
    times, step = [], 0
    t = _now()
    while step < steps:
        for x0, y in dm.train_dataloader():
            x0, y = x0.to(device, non_blocking=True), y.to(device, non_blocking=True)
            y = module._labels(y, drop=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=DEVICE["gpu"]):
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
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--gpu", action="store_true", help="CUDA, bf16, channels_last, 1x28x28 synthetic data")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (with --gpu)")
    args = p.parse_args()
    DEVICE.update(gpu=args.gpu, compile=args.compile)
    torch.set_num_threads(args.threads)
    cfg = training_config(args.denoiser, args.batch_size, args.gpu)
    dm = Synthetic28(args.batch_size) if args.gpu else build_datamodule(cfg["data"], seed=0)
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
