"""Sample grids as PNG with numpy and Pillow only (cheap to import in a stage script)."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np


def tile(images: np.ndarray, levels: int, nrow: int | None = None, padding: int = 1) -> np.ndarray:
    """Images ``[N, C, H, W]`` of integer levels ``{0..levels-1}`` -> one uint8 grid ``[H', W', 3]``
    (gray images repeated to RGB), ``nrow`` images per row (default: about square)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"tile expects [N, 1 or 3, H, W] images, got shape {images.shape}")
    n, c, h, w = images.shape
    u8 = np.round(images.astype(np.float64) * 255.0 / (levels - 1)).clip(0, 255).astype(np.uint8)
    if c == 1:
        u8 = np.repeat(u8, 3, axis=1)
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    ncol = math.ceil(n / nrow)
    grid = np.zeros((ncol * (h + padding) + padding, nrow * (w + padding) + padding, 3), np.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + q * (w + padding)
        grid[y : y + h, x : x + w] = u8[i].transpose(1, 2, 0)
    return grid


def png_bytes(grid: np.ndarray, scale: int = 1) -> bytes:
    """PNG bytes of an ``[H, W, 3]`` uint8 array, enlarged ``scale`` times (nearest neighbour)."""
    from PIL import Image

    img = Image.fromarray(grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def save_grid_png(path: str | os.PathLike, images: np.ndarray, levels: int, nrow: int | None = None) -> Path:
    """Write the grid of ``images`` (levels) to ``path`` as PNG; small images are enlarged to ~256 px."""
    grid = tile(images, levels, nrow)
    scale = max(1, 256 // max(grid.shape[:2]))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(grid, scale))
    return path
