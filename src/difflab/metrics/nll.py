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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from difflab.likelihood import DIVERGENCES, bits_per_dim
from difflab.results import Row


@dataclass(frozen=True)
class NllOptions:
    """How ``evaluate_bpd`` estimates: the ``divergence`` (``likelihood.DIVERGENCES``) with
    ``n_probes`` Rademacher probes for Hutchinson's, ``batch_size`` images per ODE solve, the ``seed``
    of batch ``b``'s generator (``(seed, b)``), and dopri5's ``rtol`` and ``atol``."""

    divergence: str = "hutchinson"
    n_probes: int = 1
    batch_size: int = 64
    seed: int = 0
    rtol: float = 1e-5
    atol: float = 1e-5

    def __post_init__(self):
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"unknown divergence {self.divergence!r}; valid: {', '.join(DIVERGENCES)}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size!r} must be an integer >= 1")


def evaluate_bpd(
    denoiser,
    schedule,
    levels_images: Tensor,
    levels: int,
    *,
    labels: Tensor | None = None,
    device="cpu",
    **options,
) -> dict:
    """Bits/dim of ``levels_images`` ``[N, ...]`` (integers ``0..levels-1``) under the PF-ODE of
    ``denoiser``; ``options`` are ``NllOptions``' fields. ``labels`` ``[N]`` condition a
    class-conditional denoiser (None: unconditional).

    Returns ``dict(bpd, bpd_se, nfe_per_image, seconds_per_image, n_images, divergence, n_probes,
    levels, baseline_bpd, bpd_per_image)``: the mean over images, its standard error
    (dequantization, probe and data noise together), denoiser evaluations per image (each ODE
    right-hand side evaluates the whole batch once), wall-clock seconds per image, and the
    per-image values (float64 ``[N]``).
    """
    opts = NllOptions(**options)
    if not torch.is_tensor(levels_images) or levels_images.ndim < 2 or levels_images.shape[0] < 1:
        raise ValueError("levels_images must be an integer tensor [N, ...] with N >= 1")
    if labels is not None and (not torch.is_tensor(labels) or labels.shape != levels_images.shape[:1]):
        raise ValueError(f"labels must be a tensor of shape [{levels_images.shape[0]}]")
    device, n = torch.device(device), levels_images.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    bpds, nfe = _batches(denoiser, schedule, (levels_images, labels, levels), opts, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    from difflab.distributed import gather

    elapsed = max(gather(time.perf_counter() - start))  # the slowest rank
    if not torch.isfinite(bpds).all():
        raise FloatingPointError(f"bits/dim is not finite for {int((~torch.isfinite(bpds)).sum())} image(s)")
    return {
        "bpd": float(bpds.mean()),
        "bpd_se": float(bpds.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan"),
        "nfe_per_image": nfe / n,
        "seconds_per_image": elapsed / n,
        "n_images": n,
        "divergence": opts.divergence,
        "n_probes": opts.n_probes if opts.divergence == "hutchinson" else 0,
        "levels": levels,
        "baseline_bpd": math.log2(levels),
        "bpd_per_image": bpds,
    }


def _batches(denoiser, schedule, data: tuple, opts: NllOptions, device) -> tuple[Tensor, int]:
    """Bits/dim of every image (float64 ``[N]``, in order) and the denoiser evaluations times the
    images they evaluated, from ``data = (levels_images, labels, levels)`` in batches of
    ``opts.batch_size``; with several ranks each runs every world-th batch and they are gathered."""
    from difflab.distributed import gather, shard

    images, labels, levels = data
    done = []
    for b, lo in shard(list(enumerate(range(0, images.shape[0], opts.batch_size)))):
        x = images[lo : lo + opts.batch_size].to(device)
        cond = labels[lo : lo + opts.batch_size].to(device) if labels is not None else None
        g = torch.Generator(device=device).manual_seed(int(opts.seed) * 1_000_003 + b)
        estimator = {k: getattr(opts, k) for k in ("divergence", "n_probes", "rtol", "atol")}
        bpd, stats = bits_per_dim(
            denoiser, schedule, x, levels=levels, generator=g, cond=cond, return_stats=True, **estimator
        )
        done.append((b, bpd.detach().double().cpu(), int(stats["nfe"]) * x.shape[0]))
    done = sorted((item for part in gather(done) for item in part), key=lambda item: item[0])
    return torch.cat([bpd for _, bpd, _ in done]), sum(nfe for _, _, nfe in done)


# -- the NLL of the report's rows ---------------------------------------------------------------------
def with_nll(rows: Iterable[Row], nll: Mapping[str, Mapping[int, dict]]) -> list[Row]:
    """Per-seed rows with their network's NLL record (``nll[model][seed]``: ``bpd``, ``bpd_se``);
    a network without one is an error."""
    out = []
    for r in rows:
        rec = nll.get(r.model, {}).get(r.seed[0])
        if rec is None:
            raise ValueError(f"no NLL record for network {r.model!r} seed {r.seed[0]!r}; run the nll stage")
        out.append(r.replace(nll_bpd=rec.get("bpd"), nll_bpd_se=rec.get("bpd_se")))
    return out


def nll_by_schedule(nll: Mapping[str, Mapping[int, dict]]) -> dict[str, dict]:
    """``{schedule: {bpd, bpd_se, n_seeds}}`` from ``{schedule: {seed: record}}``: the mean over
    seeds, its standard error the larger of the seeds' spread and the mean of their own standard
    errors over sqrt(K) (``metrics.paired.seed_combined``'s rule)."""
    out = {}
    for schedule, by_seed in nll.items():
        recs = [r for r in by_seed.values() if r.get("bpd") is not None]
        if not recs:
            out[schedule] = {"bpd": None, "bpd_se": None, "n_seeds": len(by_seed)}
            continue
        bpd = np.array([r["bpd"] for r in recs], np.float64)
        se2 = np.mean([(r.get("bpd_se") or 0.0) ** 2 for r in recs])
        spread = bpd.var(ddof=1) if len(bpd) > 1 else 0.0
        se = float(np.sqrt(max(spread, se2) / len(bpd)))
        out[schedule] = {"bpd": float(bpd.mean()), "bpd_se": se, "n_seeds": len(bpd)}
    return out


def nll_from_rows(rows: Iterable[Row]) -> dict[str, dict]:
    """The per-schedule NLL a comparison table records (its nll_bpd, nll_bpd_se columns)."""
    return {r.schedule: {"bpd": r.nll_bpd, "bpd_se": r.nll_bpd_se} for r in rows if r.nll_bpd is not None}
