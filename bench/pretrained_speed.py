"""Sampling speed of a loaded diffusers model: difflab's ddim and dpm_solver_2m against diffusers' own loops.

The network is a ``UNet2DModel`` of google/ddpm-cifar10-32's configuration (3x32x32, block_out_channels
(128, 256, 256, 256), 2 layers per block, attention at 16x16; ~35.7M parameters) with random weights
(speed does not depend on them), saved as a DDPMPipeline folder (DDPMScheduler: linear betas 1e-4..0.02
over 1000 steps, epsilon prediction, clip_sample off) and loaded with ``difflab.pretrained.load_pretrained``.
Side by side in one process, on the same UNet and noise, interleaved round-robin, medians:

* difflab's ``ddim`` / ``dpm_solver_2m`` on the grid of diffusers' timesteps (``t_n = (n + 1)/N``),
  ``--dtype`` integration (the UNet runs in float32 either way);
* diffusers' loops: ``DDIMScheduler`` (eta = 0, set_alpha_to_one, use_clipped_model_output) and
  ``DPMSolverMultistepScheduler`` (DPM-Solver++(2M)), ``unet(x, t)`` then ``scheduler.step`` per timestep,
  under ``torch.no_grad`` as DDIMPipeline runs it.

Equal NFE: diffusers makes one UNet call per timestep, difflab K - 1 steps plus the final denoising.

    uv run python bench/pretrained_speed.py [--nfe 10] [--batch 4] [--repeats 3] [--threads 1]
        [--dtype float32] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

CIFAR10_UNET = dict(  # google/ddpm-cifar10-32's unet/config.json
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 256, 256),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None,
    norm_num_groups=32,
    norm_eps=1e-6,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    resnet_time_scale_shift="default",
)


def diffusers_loop(unet, scheduler, noise, steps: int, **step_options):
    scheduler.set_timesteps(steps)
    x = noise.clone()
    with torch.no_grad():
        for timestep in scheduler.timesteps:
            x = scheduler.step(
                unet(x, timestep, return_dict=False)[0], timestep, x, **step_options
            ).prev_sample
    return x


def difflab_run(D, solver: str, noise, timesteps, dtype):
    from difflab.solvers import get_solver

    grid = D.schedule.t_from_timestep(timesteps.double())
    start = noise.double() / D.schedule.sigma(grid[:1])
    with torch.no_grad():
        return get_solver(solver)(D, D.schedule, start.to(dtype), None, grid=grid, dtype=dtype)


def timed_round_robin(fns: dict, repeats: int) -> tuple[dict, dict, dict]:
    """``(wall, cpu, outputs)``: median wall-clock and process CPU seconds of each ``fns[name]()``, every
    repeat running each once in turn, and the outputs of a first, untimed warm-up call. On a shared CPU
    with one torch thread the CPU time is the work done, whatever else the machine runs."""
    outputs = {name: fn() for name, fn in fns.items()}
    wall, cpu = ({name: [] for name in fns} for _ in range(2))
    for _ in range(repeats):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            cpu[name].append(time.process_time() - start_cpu)
            wall[name].append(time.perf_counter() - start)
    median = lambda times: {name: statistics.median(ts) for name, ts in times.items()}  # noqa: E731
    return median(wall), median(cpu), outputs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nfe", type=int, default=10)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="difflab's integration")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import diffusers

    from difflab.pretrained import load_pretrained

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**CIFAR10_UNET)
    params = sum(p.numel() for p in unet.parameters())
    with tempfile.TemporaryDirectory() as folder:
        # clip_sample off: diffusers' DPM-Solver scheduler has no x0 clamp (the outputs are compared below)
        scheduler = diffusers.DDPMScheduler(clip_sample=False)
        diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
        D = load_pretrained(folder, device=args.device)
    net, dtype = D.net, getattr(torch, args.dtype)
    ddim = diffusers.DDIMScheduler.from_config(scheduler.config, set_alpha_to_one=True)
    dpm = diffusers.DPMSolverMultistepScheduler.from_config(scheduler.config)
    noise = torch.randn(args.batch, *D.sample_shape, generator=torch.Generator().manual_seed(1))
    noise = noise.to(args.device)
    K = args.nfe
    ddim.set_timesteps(K)
    dpm.set_timesteps(K)
    ddim_steps, dpm_steps = ddim.timesteps.clone(), dpm.timesteps.clone()
    fns = {
        ("ddim", "difflab"): lambda: difflab_run(D, "ddim", noise, ddim_steps, dtype),
        ("ddim", "diffusers DDIMScheduler"): lambda: diffusers_loop(
            net, ddim, noise, K, eta=0.0, use_clipped_model_output=True
        ),
        ("dpm_solver_2m", "difflab"): lambda: difflab_run(D, "dpm_solver_2m", noise, dpm_steps, dtype),
        ("dpm_solver_2m", "diffusers DPMSolverMultistepScheduler"): lambda: diffusers_loop(
            net, dpm, noise, K
        ),
    }
    wall, cpu, outputs = timed_round_robin(fns, args.repeats)
    print(
        f"UNet2DModel (google/ddpm-cifar10-32 config), {params / 1e6:.2f}M parameters, batch {args.batch}, "
        f"{K} NFE, device {args.device}, {torch.get_num_threads()} torch thread(s), difflab dtype "
        f"{args.dtype}, median of {args.repeats} (torch {torch.__version__}, "
        f"diffusers {diffusers.__version__})"
    )
    print(
        "| solver | sampler | max abs diff to difflab | wall s | images/s (wall) | CPU s | images/s (CPU) |"
    )
    print("|---|---|---|---|---|---|---|")
    for (solver, who), s in wall.items():
        ours = outputs[(solver, "difflab")].float()
        diff = (outputs[(solver, who)].float() - ours).abs().max().item()
        print(
            f"| {solver} | {who} | {diff:.1e} | {s:.2f} | {args.batch / s:.3f} | {cpu[(solver, who)]:.2f} "
            f"| {args.batch / cpu[(solver, who)]:.3f} |"
        )
    for solver in ("ddim", "dpm_solver_2m"):
        (peer,) = [who for name, who in wall if name == solver and who != "difflab"]
        ratio_wall = wall[(solver, peer)] / wall[(solver, "difflab")]
        ratio_cpu = cpu[(solver, peer)] / cpu[(solver, "difflab")]
        print(f"{solver}: difflab / diffusers images/s = {ratio_wall:.3f} (wall), {ratio_cpu:.3f} (CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
