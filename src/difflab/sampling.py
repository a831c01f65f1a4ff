"""Sampling at scale: batched, reproducible per sample index, distributed, with NFE and timing.

Sample ``i`` draws all of its randomness (the initial noise and, for stochastic solvers, every
later noise draw) from its own ``torch.Generator`` seeded from ``(seed, i)``. Solvers accept a
list of per-row generators (``difflab.solvers.randn_like``), so the same seed gives the same
images whatever the batch size or the number of ranks. Under ``torch.distributed`` rank ``r``
generates indices ``r::world`` and the results are gathered on every rank.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from difflab import distributed

__all__ = ["Conditioning", "Draw", "SampleResult", "generate", "sample_generators"]


@dataclass
class SampleResult:
    """``x``: model-space samples ``[n, *shape]`` float32 on CPU; ``nfe``: denoiser evaluations per
    sample, counted (``CountingDenoiser``) for every solver; ``seconds_per_sample``: wall-clock time of
    the whole call divided by n (slowest rank)."""

    x: Tensor
    nfe: float
    seconds_per_sample: float
    solver: str = ""
    steps: int = 0
    seed: int = 0
    labels: Tensor | None = None


_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    """SplitMix64's finaliser (Steele et al. 2014): a bijective, well-mixed 64-bit hash."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _row_seed(seed: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` under ``seed``: SplitMix64 of SplitMix64(seed) + index."""
    return _splitmix64((_splitmix64(int(seed) & _MASK64) + int(index)) & _MASK64) >> 1


def sample_generators(seed: int, indices, device="cpu") -> list[torch.Generator]:
    """One generator per sample index, seeded from ``(seed, index)``."""
    return [torch.Generator(device=device).manual_seed(_row_seed(seed, i)) for i in indices]


@dataclass(frozen=True)
class Draw:
    """What ``generate`` draws: ``n`` samples of ``shape``, sample ``i``'s noise from
    ``sample_generators(seed, [i])``, ``batch_size`` samples per solver call, on ``device``."""

    n: int
    shape: tuple[int, ...]
    seed: int = 0
    batch_size: int = 256
    device: str = "cpu"

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(self.shape))
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n={self.n!r} must be an integer >= 1")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size!r} must be an integer >= 1")
        if not self.shape or any(not isinstance(s, int) or s < 1 for s in self.shape):
            raise ValueError(f"shape={self.shape!r} must be a non-empty tuple of positive integers")


@dataclass(frozen=True)
class Conditioning:
    """Class labels ``[n]`` and, for classifier-free guidance ``D_u + w (D_c - D_u)``, the scale ``w``
    and the model's null label (``guidance_scale=None``: plain conditional sampling)."""

    labels: Tensor
    guidance_scale: float | None = None
    null_label: int | None = None

    def __post_init__(self):
        if self.guidance_scale is not None:
            if self.null_label is None:
                raise ValueError("guidance_scale needs the model's null_label")
            if not math.isfinite(float(self.guidance_scale)):
                raise ValueError(f"guidance_scale={self.guidance_scale!r} must be a finite number")

    @classmethod
    def balanced(cls, denoiser, n: int, guidance_scale: float | None) -> Conditioning | None:
        """For ``n`` samples of a denoiser with ``.num_classes``: with a ``guidance_scale``, balanced
        labels ``i % num_classes`` and the null label ``num_classes`` (guidance needs a
        class-conditional network); without, ``None``."""
        if guidance_scale is None:
            return None
        num_classes = int(denoiser.num_classes)
        if num_classes == 0:
            raise ValueError(
                f"guidance_scale={guidance_scale} needs a class-conditional model; this one has no classes"
            )
        return cls(torch.arange(n) % num_classes, guidance_scale, num_classes)


@torch.no_grad()
def generate(
    denoiser, schedule, solver: str, steps: int, draw: Draw, *, grid="logsnr", cond=None, options=None
) -> SampleResult:
    """Draw ``draw.n`` samples with ``solver`` at ``steps`` steps on ``grid``.

    ``cond`` (a ``Conditioning``) adds class labels and classifier-free guidance. ``options`` go to
    the solver (e.g. ``{"eta": 0.0}`` for ddim, ``{"rtol": 1e-5, "atol": 1e-5}`` for rk45).
    """
    from difflab import solvers as S  # layer 1; imported late so this module loads without it
    from difflab.parametrization import guided

    if not isinstance(solver, str):
        raise ValueError(f"solver must be a solver name (str), got {solver!r}")
    labels = None if cond is None else cond.labels
    if labels is not None and (not torch.is_tensor(labels) or labels.shape != (draw.n,)):
        raise ValueError(
            f"labels must be an integer tensor of shape [{draw.n}], got {getattr(labels, 'shape', labels)}"
        )
    spec = S.get_spec(solver)  # ValueError listing the solvers for an unknown name
    D = denoiser
    if cond is not None and cond.guidance_scale is not None:
        D = guided(denoiser, float(cond.guidance_scale), int(cond.null_label))
    options = dict(options or {})

    def solve(model, noise, gens, idx):
        y = None if labels is None else labels[idx].to(noise.device)
        return spec.fn(model, schedule, noise, steps, grid=grid, generator=gens, cond=y, **options)

    indices = distributed.shard(range(draw.n))
    x, nfe_sum, elapsed = _sample_batches(solve, D, draw, indices)
    if distributed.rank_and_world()[1] > 1:
        x, nfe_sum, elapsed = _gather(draw, indices, x, nfe_sum, elapsed)
    return SampleResult(
        x=x.contiguous(),
        nfe=nfe_sum / draw.n,
        seconds_per_sample=elapsed / draw.n,
        solver=solver,
        steps=steps,
        seed=draw.seed,
        labels=None if labels is None else labels.cpu(),
    )


def _sample_batches(solve, denoiser, draw: Draw, indices: list[int]):
    """``solve(model, noise, generators, indices)`` on each batch of ``indices`` (noise from
    ``sample_generators``; ``model`` the denoiser, counted): the samples ``[len(indices), *shape]`` float32 on
    CPU, the NFE summed over samples, and the wall-clock seconds (the device synchronised at both
    ends)."""
    from difflab.solvers import CountingDenoiser

    device = torch.device(draw.device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    chunks, nfe_sum = [], 0.0
    for k in range(0, len(indices), draw.batch_size):
        idx = indices[k : k + draw.batch_size]
        gens = sample_generators(draw.seed, idx, device)
        noise = torch.stack([torch.randn(draw.shape, generator=g, device=device) for g in gens])  # [B, ...]
        model = CountingDenoiser(denoiser)
        chunks.append(solve(model, noise, gens, idx).float().cpu())
        nfe_sum += model.nfe * len(idx)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    x = torch.cat(chunks) if chunks else torch.zeros((0, *draw.shape))
    return x, nfe_sum, elapsed


def _gather(draw: Draw, indices, x_local, nfe_sum, elapsed):
    """Every rank's samples put back in index order on every rank, the NFE summed over ranks and the
    slowest rank's seconds."""
    gathered = distributed.gather((indices, x_local, nfe_sum, elapsed))
    x = torch.zeros((draw.n, *draw.shape))
    nfe_sum, elapsed = 0.0, 0.0
    for idx, xr, nfe_r, el_r in gathered:
        x[idx] = xr
        nfe_sum += nfe_r
        elapsed = max(elapsed, el_r)
    return x, nfe_sum, elapsed
