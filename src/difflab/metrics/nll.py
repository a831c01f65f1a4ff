"""Batched bits/dim of held-out images through the PF-ODE (``difflab.likelihood.bits_per_dim``).

Uniform dequantization with the dataset's number of levels, the Hutchinson trace estimator with
``n_probes`` Rademacher probes (or the exact divergence for low-dimensional data), dopri5 in
float64. Batch ``b`` draws its dequantization noise and probes from a generator seeded with
``(seed, b)``; the adaptive step size is shared by a batch, so results depend (within the ODE
tolerance) on ``batch_size``. The uniform-noise baseline is ``log2(levels)`` bits/dim.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from difflab.likelihood import DIVERGENCES, bits_per_dim


def evaluate_bpd(
    denoiser,
    schedule,
    levels_images: Tensor,
    levels: int,
    *,
    divergence: str = "hutchinson",
    n_probes: int = 1,
    batch_size: int = 64,
    seed: int = 0,
    device="cpu",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    labels: Tensor | None = None,
) -> dict:
    """Bits/dim of ``levels_images`` ``[N, ...]`` (integers ``0..levels-1``) under the PF-ODE of
    ``denoiser``. ``labels`` ``[N]`` condition a class-conditional denoiser (None: unconditional).

    Returns ``dict(bpd, bpd_se, nfe_per_image, seconds_per_image, n_images, divergence, n_probes,
    levels, baseline_bpd, bpd_per_image)``: the mean over images, its standard error
    (dequantization, probe and data noise together), denoiser evaluations per image (each ODE
    right-hand side evaluates the whole batch once), wall-clock seconds per image, and the
    per-image values (float64 ``[N]``).
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; valid: {', '.join(DIVERGENCES)}")
    if not torch.is_tensor(levels_images) or levels_images.ndim < 2 or levels_images.shape[0] < 1:
        raise ValueError("levels_images must be an integer tensor [N, ...] with N >= 1")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1")
    if labels is not None and (not torch.is_tensor(labels) or labels.shape != levels_images.shape[:1]):
        raise ValueError(f"labels must be a tensor of shape [{levels_images.shape[0]}]")
    device = torch.device(device)
    n = levels_images.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    from difflab.distributed import gather, shard

    batches = shard(list(enumerate(range(0, n, batch_size))))  # several ranks: every world-th batch
    done = []
    for b, lo in batches:
        x = levels_images[lo : lo + batch_size].to(device)
        cond = labels[lo : lo + batch_size].to(device) if labels is not None else None
        g = torch.Generator(device=device).manual_seed(int(seed) * 1_000_003 + b)
        bpd, stats = bits_per_dim(
            denoiser,
            schedule,
            x,
            levels=levels,
            divergence=divergence,
            generator=g,
            rtol=rtol,
            atol=atol,
            n_probes=n_probes,
            cond=cond,
            return_stats=True,
        )
        done.append((b, bpd.detach().double().cpu(), int(stats["nfe"]) * x.shape[0]))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = max(gather(time.perf_counter() - start))  # the slowest rank
    done = sorted((item for part in gather(done) for item in part), key=lambda item: item[0])
    per_image, nfe_images = [bpd for _, bpd, _ in done], sum(nfe for _, _, nfe in done)
    bpds = torch.cat(per_image)
    if not torch.isfinite(bpds).all():
        raise FloatingPointError(f"bits/dim is not finite for {int((~torch.isfinite(bpds)).sum())} image(s)")
    se = float(bpds.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return {
        "bpd": float(bpds.mean()),
        "bpd_se": se,
        "nfe_per_image": nfe_images / n,
        "seconds_per_image": elapsed / n,
        "n_images": n,
        "divergence": divergence,
        "n_probes": n_probes if divergence == "hutchinson" else 0,
        "levels": levels,
        "baseline_bpd": math.log2(levels),
        "bpd_per_image": bpds,
    }
