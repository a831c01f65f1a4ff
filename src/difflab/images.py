"""Samples as images: model space [-1, 1] to integer levels and back to 0..255, the samples file
(``.npz``) and the PNG grid."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from difflab.io import atomic_write


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


def from_levels(k: Tensor, levels: int) -> Tensor:
    """Integer levels ``{0..levels-1}`` -> float32 model space: ``2 k / (levels - 1) - 1``."""
    return torch.as_tensor(k).float() * (2.0 / (levels - 1)) - 1.0


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


def save_samples(path, result, *, levels: int = 256, save_x: bool = False, meta: dict | None = None):
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
    arrays.update({key: np.asarray(value) for key, value in (meta or {}).items()})

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
