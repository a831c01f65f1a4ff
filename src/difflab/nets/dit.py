"""Diffusion Transformer (Peebles & Xie 2023, DiT): patchify, adaLN-Zero blocks, unpatchify."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from difflab.nets.embedding import Conditioning, LearnedSkip, check_sizes, zero_init


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


def _sincos_2d(dim: int, grid: int) -> Tensor:
    """Fixed 2-D sine-cosine position embedding, ``[grid * grid, dim]`` (MAE / DiT)."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    pos = torch.arange(grid, dtype=torch.float64)
    ys, xs = torch.meshgrid(pos, pos, indexing="ij")
    emb = torch.cat([f(p.reshape(-1, 1) * omega) for p in (ys, xs) for f in (torch.sin, torch.cos)], dim=1)
    return F.pad(emb, (0, dim - emb.shape[1])).float()


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero: the embedding regresses shift, scale and a zero-initialised gate
    for both the attention and the MLP branch."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        inner = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, inner), nn.GELU(approximate="tanh"), nn.Linear(inner, hidden)
        )
        self.ada = nn.Sequential(nn.SiLU(), zero_init(nn.Linear(hidden, 6 * hidden)))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)
        h = _modulate(self.norm1(x), shift1, scale1)
        x = x + gate1[:, None] * self.attn(h, h, h, need_weights=False)[0]
        return x + gate2[:, None] * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    """``DiT(x, noise_level, class_labels=None)``: x ``[B, C, H, W]`` with H = W divisible by
    ``patch_size``, noise_level the log-SNR ``[B]``. Tokens: (H/p)^2 patches of width ``hidden``."""

    def __init__(
        self,
        data_shape: tuple[int, ...],
        num_classes: int = 0,
        patch_size: int = 2,
        hidden: int = 256,
        depth: int = 6,
        heads: int = 4,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        check_sizes("dit", patch_size=patch_size, hidden=hidden, depth=depth, heads=heads)
        if hidden % heads:
            raise ValueError(f"heads={heads} does not divide hidden={hidden} (denoiser 'dit')")
        ok = isinstance(mlp_ratio, (int, float)) and not isinstance(mlp_ratio, bool) and mlp_ratio > 0
        if not ok or int(hidden * mlp_ratio) < 1:
            raise ValueError(f"mlp_ratio={mlp_ratio!r} must be a number > 0 (denoiser 'dit')")
        if len(data_shape) != 3:
            raise ValueError(f"denoiser 'dit' needs image data [C, H, W]; got data shape {tuple(data_shape)}")
        c_data, H, W = data_shape
        if H != W or H % patch_size:
            raise ValueError(
                f"denoiser 'dit' needs square images with H divisible by patch_size={patch_size}; "
                f"got data shape {tuple(data_shape)}"
            )
        self.data_shape, self.num_classes, self.patch = tuple(data_shape), num_classes, patch_size
        self.grid = H // patch_size
        self.cond = Conditioning(hidden, num_classes)
        self.embed = nn.Conv2d(c_data, hidden, patch_size, stride=patch_size)
        self.register_buffer("pos", _sincos_2d(hidden, self.grid)[None], persistent=False)
        self.blocks = nn.ModuleList(DiTBlock(hidden, heads, mlp_ratio) for _ in range(depth))
        self.final_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), zero_init(nn.Linear(hidden, 2 * hidden)))
        self.final = zero_init(nn.Linear(hidden, patch_size * patch_size * c_data))
        self.skip = LearnedSkip(hidden, c_data)

    def forward(self, x: Tensor, noise_level: Tensor, class_labels: Tensor | None = None) -> Tensor:
        B, C, H, W = x.shape
        c = self.cond(noise_level, class_labels, B)  # [B, hidden]
        h = self.embed(x).flatten(2).transpose(1, 2) + self.pos  # [B, N, hidden]
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_ada(c).chunk(2, dim=1)
        h = self.final(_modulate(self.final_norm(h), shift, scale))  # [B, N, p*p*C]
        p, g = self.patch, self.grid
        h = h.reshape(B, g, g, p, p, C).permute(0, 5, 1, 3, 2, 4)
        return self.skip(h.reshape(B, C, H, W), x, c)
