"""Sampling speed at equal NFE against each solver's peer loop, on the same network (CPU or GPU).

Every difflab solver that has a peer implementation is timed against it side by side in one run
(all samplers interleaved round-robin in every repeat, medians):

* k-diffusion (``sampling.py``, run in EDM's variables ``y = x/alpha`` over ``s = sigma/alpha``):
  heun_edm / ``sample_heun``, edm_stochastic / ``sample_heun`` with churn, euler_ancestral /
  ``sample_euler_ancestral``, dpm_solver_2m_sde / ``sample_dpmpp_2m_sde``, dpm_solver_3m_sde /
  ``sample_dpmpp_3m_sde``, dpm_solver_2s_ancestral / ``sample_dpmpp_2s_ancestral``, dpm_2 /
  ``sample_dpm_2``, dpm_2_ancestral / ``sample_dpm_2_ancestral``, dpm_solver_sde / ``sample_dpmpp_sde``
  (its Brownian-tree noise), lms / ``sample_lms``, dpm_fast / ``sample_dpm_fast``, dpm_adaptive /
  ``sample_dpm_adaptive`` (same tolerances; adaptive, so the NFE column gives both counts).
* diff-sampler's ``ipndm_sampler`` / ``ipndm_v_sampler`` as transcribed in
  ``tests/test_solvers_multistep.py`` (ComfyUI's ``sample_ipndm``/``sample_ipndm_v`` are the same code):
  ipndm, ipndm_v.
* diffusers' scheduler loops (vp_linear discretised at 1000 steps, float32): ddim / DDIMScheduler,
  dpm_solver_2m and dpm_solver_3m / DPMSolverMultistepScheduler, unipc / UniPCMultistepScheduler,
  deis / DEISMultistepScheduler, dpm_solver_2s and dpm_solver_3s / DPMSolverSinglestepScheduler,
  pndm / PNDMScheduler (PLMS), sa_solver / SASolverScheduler (orders 3 and 4, as ours).

The network is an untrained ~1M-parameter MLP on 1x8x8 inputs (eps prediction under vp_linear; speed
does not depend on the weights); both sides call the same ``Denoiser``. Our solvers run through
``difflab.sampling.generate`` (per-sample generators, counted NFE, ``logsnr`` grid) in ``--dtype``;
the peers in float32 with one global generator. diffusers' loops make ``steps`` evaluations and ours
``steps + 1`` (the final denoising), so ours get one step fewer; k-diffusion's grids end at sigma = 0
as ours do, so both take the same steps. Every solver takes the most steps whose NFE is at most
``--nfe``; the NFE column counts both sides' calls in the run.

    uv run python bench/peer_speed.py [--nfe 21] [--n 500] [--repeats 5] [--dtype float32]
        [--threads 1] [--device cpu] [--out bench/RESULTS-peers.md]
"""

from __future__ import annotations

import argparse
import sys

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tests"))

from difflab import sampling
from difflab import solvers as S
from difflab.nets.mlp import MLP
from difflab.parametrization import Denoiser
from difflab.schedules import get_schedule
from eval_speed import machine, timed_round_robin
from peers import k_diffusion_sampling

SHAPE = (1, 8, 8)


def k_model(D, schedule):
    """k-diffusion's model in EDM's variables: ``D_kd(y, s) = D(alpha y, t(s))``, ``log_snr = -2 log s``."""

    def model(y, s):
        t = schedule.t_from_log_snr(-2 * torch.log(s))
        a = schedule.alpha(t).reshape(-1, *([1] * (y.ndim - 1)))
        return D(a * y, t)

    return model


def k_sigmas(schedule, steps: int, device) -> torch.Tensor:
    """sigma/alpha on our logsnr grid of ``steps`` steps, then 0 (k-diffusion's last step)."""
    s = schedule.sigma_over_alpha(S.get_grid("logsnr", schedule, steps, device=device))
    return torch.cat([s, s.new_zeros(1)]).float()


def diffusers_loop(D, schedule, scheduler, steps: int, n: int, device, seed: int = 0):
    """diffusers' loop: ``set_timesteps``, then ``step(eps, k, x)`` with eps from the same Denoiser."""
    scheduler.set_timesteps(steps, device=device)
    abar = scheduler.alphas_cumprod.to(device=device, dtype=torch.float64)
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn((n, *SHAPE), generator=g, device=device)
    for k in scheduler.timesteps:
        lam = torch.log(abar[k] / (1 - abar[k]))
        t = schedule.t_from_log_snr(lam).float().expand(n)
        a, s = abar[k].sqrt().float(), (1 - abar[k]).sqrt().float()
        eps = (x - a * D(x, t)) / s
        x = scheduler.step(eps, k, x).prev_sample
    return x


def our_steps(name: str, nfe: int) -> int:
    """The most steps of solver ``name`` whose NFE is at most ``nfe`` (0 for an adaptive solver)."""
    spec = S.get_spec(name)
    if spec.adaptive:
        return 0
    return max(k for k in range(1, nfe + 1) if spec.nfe(k) <= nfe)


def k_diffusion_peers(K, D, schedule, y0, dev) -> dict:
    """Our solver -> (peer name, ``make(steps)`` -> the peer's sampler for our step count)."""

    def k_run(fn, **kw):
        def make(steps):
            sig = k_sigmas(schedule, steps, dev)
            return lambda: fn(k_model(D, schedule), y0 * sig[0], sig, disable=True, **kw)

        return make

    def k_range(fn, **kw):  # DPM-Solver-fast/adaptive: their own steps between s_min and s_max
        def make(steps):
            s_max, s_min = k_sigmas(schedule, 1, dev)[:2].tolist()
            args = (3 * steps - 1,) if fn is K.sample_dpm_fast else ()  # n = 3M - 3 + remainder 2
            return lambda: fn(k_model(D, schedule), y0 * s_max, s_min, s_max, *args, disable=True, **kw)

        return make

    churn = dict(s_churn=40.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003)
    return {
        "heun_edm": ("k-diffusion sample_heun", k_run(K.sample_heun)),
        "edm_stochastic": ("k-diffusion sample_heun (s_churn=40)", k_run(K.sample_heun, **churn)),
        "euler_ancestral": ("k-diffusion sample_euler_ancestral", k_run(K.sample_euler_ancestral)),
        "dpm_solver_2m_sde": ("k-diffusion sample_dpmpp_2m_sde", k_run(K.sample_dpmpp_2m_sde)),
        "dpm_solver_3m_sde": ("k-diffusion sample_dpmpp_3m_sde", k_run(K.sample_dpmpp_3m_sde)),
        "dpm_solver_2s_ancestral": (
            "k-diffusion sample_dpmpp_2s_ancestral",
            k_run(K.sample_dpmpp_2s_ancestral),
        ),
        "dpm_2": ("k-diffusion sample_dpm_2", k_run(K.sample_dpm_2)),
        "dpm_2_ancestral": ("k-diffusion sample_dpm_2_ancestral", k_run(K.sample_dpm_2_ancestral)),
        "dpm_solver_sde": ("k-diffusion sample_dpmpp_sde (Brownian tree)", k_run(K.sample_dpmpp_sde)),
        "lms": ("k-diffusion sample_lms", k_run(K.sample_lms)),
        "dpm_fast": ("k-diffusion sample_dpm_fast", k_range(K.sample_dpm_fast)),
        "dpm_adaptive": ("k-diffusion sample_dpm_adaptive", k_range(K.sample_dpm_adaptive)),
    }


def ipndm_peers(D, schedule, y0, dev) -> dict:
    """ipndm and ipndm_v against diff-sampler's published samplers (transcribed in the tests)."""
    from test_solvers_multistep import diff_sampler_ipndm

    model = k_model(D, schedule)

    def net(y, s):  # diff-sampler passes a 0-d sigma
        return model(y, s.expand(y.shape[0]))

    def make(variable):
        def build(steps):
            s = schedule.sigma_over_alpha(S.get_grid("logsnr", schedule, steps, device=dev)).float()
            return lambda: diff_sampler_ipndm(net, y0, s, 4, variable)

        return build

    return {
        "ipndm": ("diff-sampler ipndm_sampler (order 4)", make(False)),
        "ipndm_v": ("diff-sampler ipndm_v_sampler (order 4)", make(True)),
    }


def diffusers_peers(D, schedule, n: int, dev) -> dict:
    """diffusers' scheduler loops; each makes one evaluation per timestep (PNDM with
    ``skip_prk_steps``: one more, its first step twice), so it gets our NFE in timesteps."""
    import diffusers

    betas = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    schedulers = {
        "ddim": diffusers.DDIMScheduler(**betas),
        "dpm_solver_2m": diffusers.DPMSolverMultistepScheduler(**betas, solver_order=2),
        "dpm_solver_3m": diffusers.DPMSolverMultistepScheduler(**betas, solver_order=3),
        "unipc": diffusers.UniPCMultistepScheduler(**betas, solver_order=2),
        "deis": diffusers.DEISMultistepScheduler(**betas, solver_order=2),
        "dpm_solver_2s": diffusers.DPMSolverSinglestepScheduler(**betas, solver_order=2),
        "dpm_solver_3s": diffusers.DPMSolverSinglestepScheduler(**betas, solver_order=3),
        "pndm": diffusers.PNDMScheduler(**betas, skip_prk_steps=True),
        "sa_solver": diffusers.SASolverScheduler(**betas, predictor_order=3, corrector_order=4),
    }

    def make(name, sched):
        def build(steps):
            timesteps = S.nfe(name, steps) - (name == "pndm")
            return lambda: diffusers_loop(D, schedule, sched, timesteps, n, dev)

        return build

    return {
        name: (f"diffusers {type(sched).__name__}", make(name, sched)) for name, sched in schedulers.items()
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nfe", type=int, default=21, help="evaluations per sample (odd: Heun-type solvers)")
    p.add_argument("--n", type=int, default=500, help="samples per run (one batch)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--solvers", nargs="*", default=None, help="only these of our solvers (default: all)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev, n, nfe = args.device, args.n, args.nfe
    schedule = get_schedule("vp_linear")
    net = MLP(SHAPE, width=512, depth=4).to(dev).eval().requires_grad_(False)
    D = Denoiser(net, schedule, "eps")
    peer_D = S.CountingDenoiser(D)  # the peers' calls, counted once after the timing
    n_params = sum(q.numel() for q in net.parameters())
    y0 = torch.randn((n, *SHAPE), generator=torch.Generator(device=dev).manual_seed(0), device=dev)
    peers = {
        **k_diffusion_peers(k_diffusion_sampling(), peer_D, schedule, y0, dev),
        **ipndm_peers(peer_D, schedule, y0, dev),
        **diffusers_peers(peer_D, schedule, n, dev),
    }
    peers = {name: peers[name] for name in S.SOLVERS if name in peers and name in (args.solvers or peers)}
    steps = {name: our_steps(name, nfe) for name in peers}
    opts = {"dtype": getattr(torch, args.dtype)}
    fns, ours_nfe = {}, {}
    for name, (_, make) in peers.items():
        fns[f"peer:{name}"] = make(steps[name])
        fns[name] = lambda name=name: sampling.generate(
            D, schedule, name, steps[name], sampling.Draw(n, SHAPE, 0, n, dev), options=opts
        )
    with torch.inference_mode():
        sec = timed_round_robin(fns, args.repeats, dev)
        peer_nfe = {}
        for name in peers:
            peer_D.reset()
            fns[f"peer:{name}"]()
            peer_nfe[name] = peer_D.nfe
            ours_nfe[name] = fns[name]().nfe
    lines = [
        "# Sampling vs the peers' loops at equal NFE (bench/peer_speed.py)",
        "",
        f"Command: `uv run python bench/peer_speed.py {' '.join(sys.argv[1:] if argv is None else argv)}`  ",
        f"Machine: {machine(dev)}  ",
        f"Network: MLP {n_params / 1e6:.2f}M parameters on 1x8x8, batch {n}; our solvers in {args.dtype}. "
        f"Medians over {args.repeats} interleaved repeats.",
        "",
        "| solver | peer | NFE (ours / peer) | ours images/s | peer images/s | peer time / ours |",
        "|---|---|---|---|---|---|",
    ]
    for name, (peer_name, _) in peers.items():
        ours, theirs = sec[name], sec[f"peer:{name}"]
        lines.append(
            f"| {name} | {peer_name} | {ours_nfe[name]:.0f} / {peer_nfe[name]} | {n / ours:,.0f} "
            f"| {n / theirs:,.0f} | {theirs / ours:.2f}x |"
        )
    lines += ["", "Target: >= 1.00x (ours at least as fast at equal NFE).", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
