"""Peer implementations for parity tests (test-only dependencies) and the problem the solver parity
tests share: the mixtures, noise, k-diffusion's view of our denoiser and grid, our runs."""

from __future__ import annotations

import importlib.util
import math
import sys
import types

import pytest
import torch

from difflab import solvers as S
from difflab.data.toy import GaussianMixture


def k_diffusion_sampling():
    """k-diffusion's ``sampling`` module, or skip. Loaded without the package's ``__init__``, which
    imports CLIP and through it ``pkg_resources`` (gone from setuptools >= 70); ``sampling`` itself
    needs only torch, scipy, torchdiffeq and torchsde."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("k-diffusion is not installed (a dev dependency)")
    if "k_diffusion" not in sys.modules:
        package = types.ModuleType("k_diffusion")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["k_diffusion"] = package
    import k_diffusion.sampling

    return k_diffusion.sampling


# -- the problem the solver parity tests share -------------------------------------------------------
# k-diffusion's samplers are written for alpha = 1 in its sigma: they run on ``y = x / alpha`` over
# ``s = sigma / alpha`` with the model ``D_kd(y, s) = D(alpha(t) y, t)``, ``t = t_from_log_snr(-2 log s)``,
# on sigmas ``[s_0, ..., s_K, 0]`` (our grid and the closing step that is our final denoising), from
# ``y = s_0 noise`` = ``x(t_0) / alpha(t_0)``; this covers every schedule.
STEPS = 12


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(n: int, seed: int, d: int = 3) -> torch.Tensor:
    """``[n, d]`` standard normal float64 from ``gen(seed)``."""
    return torch.randn(n, d, generator=gen(seed), dtype=torch.float64)


def mixture(std: float = 0.3) -> GaussianMixture:
    """Three components on a tilted circle in 3-D: the parity tests' data."""
    angle = torch.arange(3) * 2 * math.pi / 3
    return GaussianMixture(torch.stack([angle.cos(), angle.sin(), 0.5 * angle.sin()], dim=1), std)


def smooth_mixture() -> GaussianMixture:
    """Four components of std 0.5 in 2-D, unequal weights: smooth enough for the asymptotic order."""
    angle = torch.arange(4) * math.pi / 2
    return GaussianMixture(
        torch.stack([angle.cos(), angle.sin()], dim=1), 0.5, torch.tensor([0.4, 0.3, 0.2, 0.1])
    )


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def kd_model(schedule, D):
    """The denoiser in EDM's variables: ``D_kd(y, s) = D(alpha(t) y, t)``, ``t = t(s)``."""

    def model(y, s):
        t = schedule.t_from_log_snr(-2 * torch.log(s))
        return D(schedule.alpha(t)[:, None] * y, t)

    return model


def kd_problem(schedule, D, noise, steps: int = STEPS):
    """k-diffusion's model, sigmas ``[s_0..s_K, 0]`` on our log-SNR grid, its start ``y = s_0 noise``
    and our grid."""
    grid = S.get_grid("logsnr", schedule, steps)
    sigmas = torch.cat([schedule.sigma_over_alpha(grid), grid.new_zeros(1)])
    return kd_model(schedule, D), sigmas, sigmas[0] * noise, grid


def run_ours(solver, D, schedule, noise, steps=STEPS, grid="logsnr", seed=None, **options):
    """Our sample and our states ``x(t_1..t_K)`` (from the callback)."""
    states = []
    out = S.get_solver(solver)(
        D, schedule, noise, steps, grid=grid, generator=None if seed is None else gen(seed),
        callback=lambda c: states.append(c["x"]), **options,
    )  # fmt: skip
    return out, torch.stack(states)


def draws(noise: torch.Tensor, seed: int, n: int) -> list[torch.Tensor]:
    """The first ``n`` draws our solvers make from ``gen(seed)``: one ``randn_like`` per noise step."""
    g = gen(seed)
    return [S.randn_like(noise, g) for _ in range(n)]


def replay_sampler(noises):
    """A k-diffusion ``noise_sampler(sigma, sigma_next)`` returning ``noises`` one after the other."""
    it = iter(noises)
    return lambda sigma, sigma_next: next(it)


def record(states: list):
    """A k-diffusion callback keeping its state ``x`` at the start of each iteration."""
    return lambda info: states.append(info["x"])


def errors_as_steps_double(solver, D, schedule, noise, ref, steps=(32, 64, 128), **options) -> list[float]:
    """Mean distance of ``solver``'s samples on log-SNR grids of ``steps`` steps to ``ref`` (a tight
    rk45 solution from the same ``noise``)."""
    run = S.get_solver(solver)
    return [
        (run(D, schedule, noise, k, grid="logsnr", **options) - ref).norm(dim=1).mean().item() for k in steps
    ]
