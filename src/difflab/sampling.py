"""Sampling at scale: batched, reproducible per sample index, distributed, with NFE and timing.

Sample ``i`` draws all of its randomness (the initial noise and, for stochastic solvers, every
later noise draw) from its own ``torch.Generator`` seeded from ``(seed, i)``. Solvers accept a
list of per-row generators (``difflab.solvers.randn_like``), so the same seed gives the same
images whatever the batch size or the number of ranks. Under ``torch.distributed`` rank ``r``
generates indices ``r::world`` and the results are gathered on every rank.

Images: model space is [-1, 1]; ``to_levels`` maps it to integers ``{0..levels-1}`` (rounded,
clamped), ``levels_to_uint8_images`` spreads levels over 0..255 for feature extractors.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from difflab import distributed
from difflab.io import atomic_write

__all__ = [
    "SampleResult",
    "conditioning",
    "generate",
    "sampling_schedules",
    "invariance_schedules",
    "row_stem",
    "sample_generators",
    "to_levels",
    "levels_to_uint8_images",
    "save_samples",
    "load_samples",
    "save_grid",
    "tile_grid",
]


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
    extra: dict = field(default_factory=dict)


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


def _check_generate_args(solver, n, shape, batch_size, labels, guidance_scale, null_label):
    if not isinstance(solver, str):
        raise ValueError(f"solver must be a solver name (str), got {solver!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} must be an integer >= 1")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1")
    if not shape or any(not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"shape={shape!r} must be a non-empty tuple of positive integers")
    if labels is not None and (not torch.is_tensor(labels) or labels.shape != (n,)):
        raise ValueError(
            f"labels must be an integer tensor of shape [{n}], got {getattr(labels, 'shape', labels)}"
        )
    if guidance_scale is not None:
        if labels is None or null_label is None:
            raise ValueError("guidance_scale needs class labels and the model's null_label")
        if not math.isfinite(float(guidance_scale)):
            raise ValueError(f"guidance_scale={guidance_scale!r} must be a finite number")


def conditioning(denoiser, n: int, guidance_scale: float | None) -> dict:
    """``generate``'s conditioning arguments for ``n`` samples of a trained denoiser: with a
    ``guidance_scale``, balanced class labels ``i % num_classes`` and the null label ``num_classes``
    (the network's ``num_classes``; guidance needs a class-conditional network); without, none."""
    num_classes = int(denoiser.net.num_classes)
    if guidance_scale is None:
        return {"labels": None, "guidance_scale": None, "null_label": None}
    if num_classes == 0:
        raise ValueError(
            f"guidance_scale={guidance_scale} needs a class-conditional model; this one has no classes"
        )
    return {
        "labels": torch.arange(n) % num_classes,
        "guidance_scale": guidance_scale,
        "null_label": num_classes,
    }


def _restricted(cfg: dict, trained: str, names) -> dict:
    """``{name: schedule}`` for ``names``, each restricted to the log-SNR range that they and the
    ``trained`` schedule all cover (``schedules.common_log_snr_range``; ``ValueError`` if none)."""
    from difflab.schedules import common_log_snr_range, schedule_from_config

    names = list(dict.fromkeys(names))
    built = {name: schedule_from_config(cfg, name) for name in names}
    lo, hi = common_log_snr_range(schedule_from_config(cfg, trained), *built.values())
    return {name: s.with_log_snr_range(lo, hi) for name, s in built.items()}


def sampling_schedules(cfg: dict, trained: str) -> dict:
    """The sampling-time schedules of the network trained on ``trained`` (config ``sample.schedules``),
    ``{name: Schedule}``: null gives the training schedule alone, over its own interval; a list gives
    every listed schedule restricted to the one log-SNR range that all of them and ``trained`` cover,
    so that the rows under them integrate the same noise levels and can be compared."""
    from difflab.schedules import schedule_from_config

    names = cfg["sample"]["schedules"]
    if names is None:
        return {trained: schedule_from_config(cfg, trained)}
    return _restricted(cfg, trained, names)


def invariance_schedules(cfg: dict, trained: str) -> dict:
    """The schedules a schedule-invariant solver's rows are redrawn under to check the invariance on a
    trained network: the training schedule first, then every other trained and sampling schedule of
    the config, all restricted to their common log-SNR range (``{name: Schedule}``)."""
    names = [trained, *cfg["schedules"], *(cfg["sample"]["schedules"] or ())]
    return _restricted(cfg, trained, names)


def row_stem(sample_schedule: str, guidance_scale: float | None, steps: int) -> str:
    """The file stem of one row's samples in a model's sample folder (``<stem>.npz``, ``<stem>.png``):
    ``"<sample_schedule>_<uncond|w<w>>_<steps:03d>"``."""
    guidance = "uncond" if guidance_scale is None else f"w{float(guidance_scale):g}"
    return f"{sample_schedule}_{guidance}_{int(steps):03d}"


@torch.no_grad()
def generate(
    denoiser,
    schedule,
    solver: str,
    steps: int,
    n: int,
    shape: tuple,
    *,
    grid="logsnr",
    seed: int = 0,
    batch_size: int = 256,
    device="cpu",
    labels: Tensor | None = None,
    guidance_scale: float | None = None,
    null_label: int | None = None,
    options: dict | None = None,
    progress: bool = False,
) -> SampleResult:
    """Draw ``n`` samples of ``shape`` with ``solver`` at ``steps`` steps on ``grid``.

    ``labels`` ``[n]`` (class conditioning) and ``guidance_scale`` (classifier-free guidance
    ``D_u + w (D_c - D_u)`` with the model's ``null_label``) are optional. ``options`` go to the
    solver (e.g. ``{"eta": 0.0}`` for ddim, ``{"rtol": 1e-5, "atol": 1e-5}`` for rk45).
    Noise for sample i comes from ``sample_generators(seed, [i])``: results do not depend on
    ``batch_size`` or on the number of ranks.
    """
    from difflab import solvers as S  # layer 1; imported late so this module loads without it
    from difflab.parametrization import guided

    shape = tuple(shape)
    _check_generate_args(solver, n, shape, batch_size, labels, guidance_scale, null_label)
    spec = S.get_spec(solver)  # ValueError listing the solvers for an unknown name
    D = guided(denoiser, float(guidance_scale), int(null_label)) if guidance_scale is not None else denoiser
    rank, world = distributed.rank_and_world()
    indices = distributed.shard(range(n))
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    if progress and rank == 0:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"{solver} x{steps}", unit="batch")
    x_local, nfe_sum, elapsed = _sample_batches(
        spec,
        D,
        schedule,
        steps,
        shape,
        batches,
        grid=grid,
        seed=seed,
        device=torch.device(device),
        labels=labels,
        options=dict(options or {}),
    )
    if world > 1:
        x, nfe_sum, elapsed = _gather(n, shape, indices, x_local, nfe_sum, elapsed)
    else:
        x = x_local
    return SampleResult(
        x=x.contiguous(),
        nfe=nfe_sum / n,
        seconds_per_sample=elapsed / n,
        solver=solver,
        steps=steps,
        seed=seed,
        labels=labels.cpu() if labels is not None else None,
    )


def _sample_batches(spec, D, schedule, steps, shape, batches, *, grid, seed, device, labels, options):
    """Run ``spec``'s solver on each batch of sample indices (noise from ``sample_generators``):
    the samples ``[len(indices), *shape]`` float32 on CPU, the NFE summed over samples, and the
    wall-clock seconds (the device synchronised at both ends)."""
    from difflab.solvers import CountingDenoiser

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    chunks, nfe_sum = [], 0.0
    for idx in batches:
        gens = sample_generators(seed, idx, device)
        noise = torch.stack([torch.randn(shape, generator=g, device=device) for g in gens])  # [B, *shape]
        cond = labels[idx].to(device) if labels is not None else None
        model = CountingDenoiser(D)
        x = spec.fn(model, schedule, noise, steps, grid=grid, generator=gens, cond=cond, **options)
        nfe_sum += model.nfe * len(idx)
        chunks.append(x.float().cpu())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    x_local = torch.cat(chunks) if chunks else torch.zeros((0, *shape))
    return x_local, nfe_sum, elapsed


def _gather(n, shape, indices, x_local, nfe_sum, elapsed):
    """Every rank's samples put back in index order on every rank, the NFE summed over ranks and the
    slowest rank's seconds."""
    gathered = distributed.gather((indices, x_local, nfe_sum, elapsed))
    x = torch.zeros((n, *shape))
    nfe_sum, elapsed = 0.0, 0.0
    for idx, xr, nfe_r, el_r in gathered:
        x[idx] = xr
        nfe_sum += nfe_r
        elapsed = max(elapsed, el_r)
    return x, nfe_sum, elapsed


def to_levels(x: Tensor, levels: int = 256) -> Tensor:
    """Model space [-1, 1] -> integers ``round((x + 1) / 2 * (levels - 1))`` clamped to
    ``{0..levels-1}``, as uint8. ``levels`` in 2..256."""
    if isinstance(levels, bool) or not isinstance(levels, int) or not 2 <= levels <= 256:
        raise ValueError(f"levels={levels!r} must be an integer in 2..256")
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise ValueError(
            f"to_levels expects a float tensor in model space [-1, 1], got {getattr(x, 'dtype', x)}"
        )
    if not torch.isfinite(x).all():
        raise ValueError("to_levels: samples hold nan or inf")
    k = ((x.float() + 1) / 2 * (levels - 1)).round().clamp(0, levels - 1)
    return k.to(torch.uint8)


def levels_to_uint8_images(images: Tensor, levels: int = 256) -> Tensor:
    """Integer levels ``{0..levels-1}`` ``[N, C, H, W]`` -> uint8 0..255 (``round(k * 255 / (levels-1))``),
    what torch-fidelity's feature extractors consume. Rejects values outside the levels."""
    if isinstance(levels, bool) or not isinstance(levels, int) or not 2 <= levels <= 256:
        raise ValueError(f"levels={levels!r} must be an integer in 2..256")
    if not torch.is_tensor(images) or images.is_floating_point() or images.dtype == torch.bool:
        raise ValueError(
            f"images must be an integer tensor of levels, got {getattr(images, 'dtype', images)}"
        )
    if images.ndim != 4:
        raise ValueError(f"images must have shape [N, C, H, W], got {tuple(images.shape)}")
    if images.numel() and (int(images.min()) < 0 or int(images.max()) > levels - 1):
        raise ValueError(
            f"images hold values in [{int(images.min())}, {int(images.max())}]; allowed 0..{levels - 1}"
        )
    if levels == 256:
        return images.to(torch.uint8)
    return (images.to(torch.float64) * 255 / (levels - 1)).round().to(torch.uint8)


def save_samples(
    path, result: SampleResult, *, levels: int = 256, save_x: bool = False, meta: dict | None = None
):
    """Atomic ``.npz`` with uint8 ``images`` (levels, ``[n, *shape]``), ``levels``, ``nfe``,
    ``seconds_per_sample``, ``solver``, ``steps``, ``seed``, ``labels`` if any, float ``x`` if
    ``save_x``, and any scalar ``meta``. Returns the uint8 images."""
    images = to_levels(result.x, levels)
    arrays = {
        "images": images.numpy(),
        "levels": np.asarray(levels),
        "nfe": np.asarray(float(result.nfe)),
        "seconds_per_sample": np.asarray(float(result.seconds_per_sample)),
        "solver": np.asarray(result.solver),
        "steps": np.asarray(result.steps),
        "seed": np.asarray(result.seed),
    }
    if result.labels is not None:
        arrays["labels"] = result.labels.numpy()
    if save_x:
        arrays["x"] = result.x.numpy()
    for key, value in (meta or {}).items():
        arrays[key] = np.asarray(value)

    def write(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    atomic_write(path, write)
    return images


def load_samples(path) -> dict:
    """The arrays of a ``save_samples`` file as a dict (``images`` a uint8 tensor, scalars as Python)."""
    with np.load(path) as z:
        out = {k: z[k] for k in z.files}
    out["images"] = torch.from_numpy(out["images"])
    for key, value in out.items():
        if isinstance(value, np.ndarray) and value.ndim == 0:
            out[key] = value.item()
    return out


def tile_grid(images: Tensor, nrow: int | None = None, *, levels: int = 256, padding: int = 2) -> np.ndarray:
    """Images ``[N, C, H, W]`` (C = 1 or 3) of levels ``{0..levels-1}`` -> one uint8 RGB grid
    ``[H', W', 3]``, ``nrow`` images per row (default: about square), ``padding`` black pixels between."""
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"a grid needs images [N, 1 or 3, H, W], got {tuple(getattr(images, 'shape', ()))}")
    u8 = levels_to_uint8_images(images, levels).numpy()
    if u8.shape[1] == 1:
        u8 = np.repeat(u8, 3, axis=1)
    n, _, h, w = u8.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    ncol = math.ceil(n / nrow)
    grid = np.zeros((ncol * (h + padding) + padding, nrow * (w + padding) + padding, 3), np.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + q * (w + padding)
        grid[y : y + h, x : x + w] = u8[i].transpose(1, 2, 0)
    return grid


def save_grid(
    path_png,
    images: Tensor,
    nrow: int | None = None,
    *,
    levels: int = 256,
    padding: int = 2,
    min_side: int = 0,
) -> None:
    """PNG grid (atomic) of images ``[N, C, H, W]`` (C = 1 or 3) holding levels ``{0..levels-1}``
    (``tile_grid``), enlarged by the integer factor (nearest neighbour) that brings its longer side
    closest to ``min_side`` from below (0: as is). The one sample-grid writer of the library."""
    from PIL import Image

    grid = tile_grid(images, nrow, levels=levels, padding=padding)
    scale = max(1, min_side // max(grid.shape[:2]))
    image = Image.fromarray(grid)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    atomic_write(path_png, lambda tmp: image.save(tmp, format="PNG"))
