"""Residual MLP denoiser for vectors (2-D toys) and, flattened, for small images (the CPU default)."""

from __future__ import annotations

import math

from torch import Tensor, nn

from difflab.nets.embedding import Conditioning, LearnedSkip, check_dropout, check_sizes, zero_init


class _Block(nn.Module):
    """Pre-norm residual block: ``h + W2 silu(W1 LN(h) * (1 + scale) + shift)``, scale/shift from emb."""

    def __init__(self, width: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.mod = nn.Linear(emb_dim, 2 * width)
        self.fc2 = zero_init(nn.Linear(width, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.mod(emb).chunk(2, dim=1)
        z = nn.functional.silu(self.fc1(self.norm(h)) * (1 + scale) + shift)
        return h + self.fc2(self.drop(z))


class MLP(nn.Module):
    """``MLP(x, noise_level, class_labels=None)``: x ``[B, d]`` or ``[B, C, H, W]`` (flattened inside and
    reshaped back), noise_level the log-SNR ``[B]``, class_labels ``[B]`` ints (``num_classes`` = null)."""

    def __init__(
        self,
        data_shape: tuple[int, ...],
        num_classes: int = 0,
        width: int = 256,
        depth: int = 4,
        emb_dim: int = 128,
        dropout: float = 0.0,
    ):
        super().__init__()
        check_sizes("mlp", width=width, depth=depth, emb_dim=emb_dim)
        check_dropout("mlp", dropout)
        self.data_shape, self.num_classes = tuple(data_shape), num_classes
        dim = math.prod(self.data_shape)
        if not self.data_shape or dim <= 0:
            raise ValueError(f"denoiser 'mlp': empty data shape {self.data_shape}")
        self.cond = Conditioning(emb_dim, num_classes)
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(_Block(width, emb_dim, dropout) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width)
        self.out = zero_init(nn.Linear(width, dim))
        self.skip = LearnedSkip(emb_dim, dim)

    def forward(self, x: Tensor, noise_level: Tensor, class_labels: Tensor | None = None) -> Tensor:
        B = x.shape[0]
        emb = nn.functional.silu(self.cond(noise_level, class_labels, B))
        flat = x.reshape(B, -1)  # [B, d]
        h = self.inp(flat)  # [B, width]
        for block in self.blocks:
            h = block(h, emb)
        return self.skip(self.out(nn.functional.silu(self.out_norm(h))), flat, emb).reshape(x.shape)
