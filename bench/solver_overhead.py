"""What each fixed-step solver adds on top of its denoiser calls (CPU).

A ~1M-parameter network wrapped with ``Denoiser`` (eps prediction, vp_linear), batch 256: either a
1.1M-parameter MLP on 784-dim inputs (``--net mlp``, the cheapest network of that size, so the
hardest case for the target) or difflab's U-Net at ~1M parameters on 1x28x28 images (``--net unet``).
Two measurements per solver and integration dtype, interleaved in one run, medians over
repeats:

* side by side: ``steps`` solver steps against the same number of bare denoiser calls
  (``nfe(name, steps)``, same input dtype); overhead = (solver - bare) / bare. On a shared machine
  this difference of two large, noisy numbers has an uncertainty of several percent.
* direct: the same solver run with a free denoiser (it returns a stored tensor), i.e. only the
  solver's own arithmetic, noise draws and bookkeeping, per denoiser call, divided by the median
  time of one network call. This is the overhead in % of a step, measured without differencing.

    uv run python bench/solver_overhead.py [--net mlp|unet] [--steps 20] [--repeats 15] [--batch 256]
        [--threads 1] [--direct-only]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch import nn

from difflab import solvers as S
from difflab.parametrization import Denoiser
from difflab.schedules import get_schedule


class MLP(nn.Module):
    """x [B, 784] and log-SNR [B] -> eps [B, 784]; the noise level enters as 32 Fourier features."""

    def __init__(self, dim: int = 784, hidden: int = 512, n_freq: int = 16):
        super().__init__()
        self.register_buffer("freq", torch.logspace(-2, 1, n_freq))
        self.net = nn.Sequential(
            nn.Linear(dim + 2 * n_freq, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, dim),
        )

    def forward(self, x, log_snr, cond=None):
        angle = log_snr[:, None] * self.freq  # [B, n_freq]
        return self.net(torch.cat([x, angle.sin(), angle.cos()], dim=1))


def bench(D, schedule, name: str, steps: int, repeats: int, noise: torch.Tensor, dtype: torch.dtype):
    solver, calls = S.get_solver(name), S.nfe(name, steps)
    x = noise.to(dtype)
    ts = [torch.full((x.shape[0],), t, dtype=dtype) for t in torch.linspace(1.0, 1e-3, calls).tolist()]
    x0 = D(x, ts[0])

    def free(x, t, cond=None):  # a denoiser that costs nothing: what is left is the solver
        return x0

    def bare():
        for t in ts:
            D(x, t)

    def run():
        solver(D, schedule, noise, steps, generator=torch.Generator().manual_seed(0), dtype=dtype)

    def run_free():
        solver(free, schedule, noise, steps, generator=torch.Generator().manual_seed(0), dtype=dtype)

    fns = {"bare": bare, "run": run, "free": run_free}
    times = {key: [] for key in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(repeats):  # interleaved, so slow phases of a shared machine hit all three
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    b, r, f = (statistics.median(times[key]) for key in fns)
    return {"nfe": calls, "bare": b, "run": r, "free": f, "side": 100 * (r - b) / b, "direct": 100 * f / b}


def direct_only(D, schedule, noise, steps: int, repeats: int) -> None:
    """The direct measurement alone, for networks whose calls take seconds on a CPU: the median time
    of one network call (measured once), and each solver run with a free denoiser (float64)."""
    x = noise.to(torch.float64)
    t = torch.full((x.shape[0],), 0.5, dtype=torch.float64)
    call = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        D(x, t)
        call.append(time.perf_counter() - t0)
    t_call = statistics.median(call[1:])
    x0 = D(x, t)
    print(f"one network call (float64 input, batch {x.shape[0]}): {1e3 * t_call:.0f} ms (median)\n")
    print("| solver | NFE | solver alone (ms) | overhead, direct (% of a step) |")
    print("|---|---|---|---|")
    for name in S.SOLVERS:
        if S.get_spec(name).adaptive:
            continue
        solver, calls = S.get_solver(name), S.nfe(name, steps)
        free_times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            solver(
                lambda x, t, cond=None: x0, schedule, noise, steps, generator=torch.Generator().manual_seed(0)
            )
            free_times.append(time.perf_counter() - t0)
        free = statistics.median(free_times[1:])
        print(f"| {name} | {calls} | {1e3 * free:.2f} | {100 * free / (calls * t_call):.3f} |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--net", choices=("mlp", "unet"), default="mlp")
    p.add_argument(
        "--direct-only", action="store_true", help="only the direct measurement (one call timed once)"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    schedule = get_schedule("vp_linear")
    if args.net == "mlp":
        net, shape = MLP().eval(), (784,)
    else:
        from difflab.nets import build_net

        shape = (1, 28, 28)
        unet = {
            "name": "unet",
            "channels": 32,
            "ch_mult": [1, 2, 2],
            "num_res_blocks": 1,
            "attn_resolutions": [7],
        }
        net = build_net(unet, shape, 0).eval()
    D = Denoiser(net, schedule, "eps")
    n_params = sum(q.numel() for q in net.parameters())
    noise = torch.randn(args.batch, *shape)
    print(
        f"# solver overhead: {args.net} {n_params / 1e6:.2f}M params, batch {args.batch}, "
        f"{args.steps} steps, "
        f"{args.repeats} repeats, {args.threads} threads, {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}\n"
    )
    if args.direct_only:
        with torch.inference_mode():
            direct_only(D, schedule, noise, args.steps, args.repeats)
        return
    print(
        "| solver | integration dtype | NFE | bare calls (ms) | solver (ms) | side by side (%) "
        "| solver alone (ms) | overhead, direct (% of a step) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with torch.inference_mode():
        for dtype in (torch.float64, torch.float32):
            for name in S.SOLVERS:
                if S.get_spec(name).adaptive:
                    continue
                m = bench(D, schedule, name, args.steps, args.repeats, noise, dtype)
                dt = str(dtype).removeprefix("torch.")
                print(
                    f"| {name} | {dt} | {m['nfe']} | {1e3 * m['bare']:.1f} | {1e3 * m['run']:.1f} "
                    f"| {m['side']:+.1f} | {1e3 * m['free']:.2f} | {m['direct']:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
