"""Evaluation speed: FID feature extraction, sampling vs diffusers' scheduler loop, NLL cost.

Measured side by side in one run, medians over repeats:

1. Feature extraction images/s through torch-fidelity: the digits classifier (8x8) and, when the
   weights are present, Inception (pool3, any input resized to 299).
2. Sampling images/s at equal NFE on the same network (an MLP on digits, eps prediction,
   vp_linear): ``difflab.sampling.generate`` (per-sample generators, ``logsnr`` grid) against
   diffusers' ``DDIMScheduler`` / ``DPMSolverMultistepScheduler`` loop calling that network; the
   other solvers at the same NFE for reference. diffusers makes ``steps`` evaluations, ours
   ``steps + 1`` (the final denoising), so ours runs one step fewer.
3. NLL: bits/dim (Hutchinson, 1 probe) and NFE per image on held-out digits.

    uv run python bench/eval_speed.py [--nfe 20] [--n 500] [--repeats 5] [--device cpu]
        [--n-inception 32] [--train-steps 600] [--out bench/RESULTS-eval.md]
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import tempfile
import time

import torch

from difflab import sampling
from difflab import solvers as S
from difflab.metrics import classifier as C
from difflab.metrics import fid as F
from difflab.metrics import inception
from difflab.metrics.nll import evaluate_bpd
from difflab.nets.mlp import MLP
from difflab.parametrization import Denoiser
from difflab.schedules import get_schedule

LEVELS = 17


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, device) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed_round_robin(fns: dict, repeats: int, device) -> dict:
    """Median seconds of each ``fns[name]()``, interleaved: every repeat runs each once in turn,
    so a change in machine load hits all of them alike."""
    for fn in fns.values():
        fn()  # warm-up
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.from_numpy(d.images).to(torch.uint8).reshape(-1, 1, 8, 8), torch.from_numpy(d.target)


def train_mlp(levels, steps: int, device):
    """A small eps-prediction MLP on digits (vp_linear), fitted for ``steps`` Adam steps."""
    torch.manual_seed(0)
    x_train = (levels.float() * (2 / (LEVELS - 1)) - 1).to(device)
    schedule = get_schedule("vp_linear")
    net = MLP((1, 8, 8), width=256, depth=3).to(device)
    D = Denoiser(net, schedule, "eps")
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(steps):
        x0 = x_train[torch.randint(0, len(x_train), (128,), device=device)]
        t = torch.rand(128, device=device) * (schedule.t_max - schedule.t_min) + schedule.t_min
        eps = torch.randn_like(x0)
        a, s = schedule.alpha(t)[:, None, None, None], schedule.sigma(t)[:, None, None, None]
        loss = ((D.raw(a * x0 + s * eps, t) - eps) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval().requires_grad_(False), D, schedule


def diffusers_loop(net, scheduler_cls, steps: int, n: int, device, seed: int = 0):
    """diffusers' scheduler loop around the same network (eps prediction, DDPM linear betas =
    vp_linear discretised at 1000 steps); the network sees the same input scaling as ``Denoiser``."""
    sched = scheduler_cls(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    sched.set_timesteps(steps, device=device)
    ac = sched.alphas_cumprod.to(device=device, dtype=torch.float32)
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn((n, 1, 8, 8), generator=g, device=device)
    for k in sched.timesteps:
        a2 = ac[k]
        lam = torch.log(a2 / (1 - a2)).expand(n)
        c_in = (a2 * 0.25 + (1 - a2)).rsqrt()
        with torch.no_grad():
            eps = net(c_in * x, lam, None)
        x = sched.step(eps, k, x).prev_sample
    return x


def machine(device) -> str:
    cpu = platform.processor() or platform.machine()
    parts = [f"{platform.system()} {platform.machine()}, {torch.get_num_threads()} torch threads ({cpu})"]
    if torch.device(device).type == "cuda":
        parts.append(torch.cuda.get_device_name())
    parts.append(f"torch {torch.__version__}, python {platform.python_version()}")
    return "; ".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nfe", type=int, default=20)
    p.add_argument("--n", type=int, default=500, help="samples per sampling run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n-inception", type=int, default=32, help="images for Inception (10000 on a GPU)")
    p.add_argument("--nll-images", type=int, default=32)
    p.add_argument("--train-steps", type=int, default=600)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: tiny nets on a shared CPU)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="our solvers' dtype")
    p.add_argument("--out", default=None, help="write the markdown report here")
    args = p.parse_args(argv)
    dev = args.device
    torch.set_num_threads(args.threads)
    opts = {"dtype": getattr(torch, args.dtype)}
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    levels, labels = digits()
    u8 = sampling.levels_to_uint8_images(levels, LEVELS)
    lines = [
        "# Evaluation speed (bench/eval_speed.py)",
        "",
        f"Command: `uv run python bench/eval_speed.py {' '.join(sys.argv[1:] if argv is None else argv)}`  ",
        f"Machine: {machine(dev)}  ",
        f"Medians over {args.repeats} repeats after one warm-up, measured side by side in one run "
        "(sampling: all samplers interleaved round-robin in every repeat).",
        "",
    ]

    # 1. feature extraction
    rows = ["| extractor | images | input | images/s |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        info = C.train_classifier(levels[:1600], labels[:1600], LEVELS, f"{tmp}/clf.pt", seed=0)
        clf = f"{tmp}/clf.pt"
        sec = timed(lambda: F._extract(u8, "classifier", clf, dev, 256), args.repeats, dev)
        rows.append(
            f"| classifier (acc {info['acc']:.3f}, trained in {info['seconds']:.1f} s) | {len(u8)} "
            f"| 1x8x8 | {len(u8) / sec:,.0f} |"
        )
        weights = inception.find_weights()
        if weights is not None:
            imgs = u8.repeat(math.ceil(args.n_inception / len(u8)), 1, 1, 1)[: args.n_inception]
            reps = max(1, min(args.repeats, 3))
            sec = timed(lambda: F._extract(imgs, "inception", weights, dev, 200), reps, dev)
            rows.append(f"| inception pool3 | {len(imgs)} | 1x8x8 -> 3x299x299 | {len(imgs) / sec:,.1f} |")
        else:
            rows.append("| inception | - | - | weights absent (`make fid-weights`) |")
    lines += ["## FID feature extraction (torch-fidelity)", "", *rows, ""]

    # 2. sampling at equal NFE
    net, D, schedule = train_mlp(levels[:1600], args.train_steps, dev)
    K = args.nfe
    rows = ["| sampler | steps | NFE | images/s | vs diffusers |", "|---|---|---|---|---|"]
    peers = {"ddim": DDIMScheduler, "dpm_solver_2m": DPMSolverMultistepScheduler}
    ours_steps = {"ddim": K - 1, "dpm_solver_2m": K - 1, "euler": K - 1, "euler_maruyama": K - 1}
    ours_steps |= {"ddpm": K - 1, "heun": (K - 1) // 2, "pc": (K - 1) // 2}
    fns = {
        f"peer:{name}": (lambda cls=cls: diffusers_loop(net, cls, K, args.n, dev))
        for name, cls in peers.items()
    }
    for name, steps in ours_steps.items():
        fns[name] = lambda name=name, steps=steps: sampling.generate(
            D, schedule, name, steps, sampling.Draw(args.n, (1, 8, 8), 0, args.n, dev), options=opts
        )
    sec = timed_round_robin(fns, args.repeats, dev)
    for name, steps in ours_steps.items():
        if name in peers:
            peer = sec[f"peer:{name}"]
            rows.append(f"| diffusers {peers[name].__name__} | {K} | {K} | {args.n / peer:,.0f} | 1.00x |")
            versus = f"{peer / sec[name]:.2f}x"
        else:
            versus = f"{sec['peer:ddim'] / sec[name]:.2f}x (vs DDIMScheduler)"
        rows.append(
            f"| difflab {name} | {steps} | {S.nfe(name, steps)} | {args.n / sec[name]:,.0f} | {versus} |"
        )
    res = sampling.generate(
        D, schedule, "rk45", 1, sampling.Draw(args.n, (1, 8, 8), 0, args.n, dev), options=opts
    )
    rate = 1 / res.seconds_per_sample
    rows.append(f"| difflab rk45 (rtol=atol=1e-5) | adaptive | {res.nfe:.0f} | {rate:,.0f} | - |")
    lines += [
        f"## Sampling at equal NFE ({args.n} digits samples, batch {args.n}, MLP eps-prediction, vp_linear)",
        "",
        *rows,
        "",
        "`vs diffusers` is the diffusers loop's time over ours (target >= 1.0x). Our time includes "
        "drawing every sample's noise from its own generator (stochastic solvers: every step); "
        f"our solvers run in {args.dtype} here (``options={{'dtype': ...}}``), diffusers in float32.",
        "",
    ]

    # 3. NLL
    held = levels[1600 : 1600 + args.nll_images]
    out = evaluate_bpd(D, schedule, held, LEVELS, n_probes=1, batch_size=64, device=dev)
    lines += [
        "## NLL (PF-ODE, Hutchinson 1 probe, dopri5 rtol=atol=1e-5)",
        "",
        "| images | bits/dim | baseline log2(17) | NFE per image | seconds per image |",
        "|---|---|---|---|---|",
        f"| {out['n_images']} | {out['bpd']:.3f} ± {out['bpd_se']:.3f} | {out['baseline_bpd']:.3f} | "
        f"{out['nfe_per_image']:.0f} | {out['seconds_per_image']:.3f} |",
        "",
        f"(model: the MLP above after {args.train_steps} training steps; a quick fit, not a good model.)",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
