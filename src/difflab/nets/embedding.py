"""Shared conditioning layers: a Fourier embedding of the noise level and a class embedding.

The networks are conditioned on the log-SNR ``lambda = log(alpha^2 / sigma^2)`` rather than raw t, so
one architecture serves every schedule (VP, VE and flow all cover roughly lambda in [-15, 15])."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def check_sizes(net: str, **sizes) -> None:
    """Each size argument must be an integer >= 1 (``dropout``-like ones are checked by their owner)."""
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}={value!r} must be an integer >= 1 (denoiser {net!r})")


def check_dropout(net: str, dropout) -> None:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout={dropout!r} must be a number in [0, 1) (denoiser {net!r})")


def zero_init(layer: nn.Linear | nn.Conv2d) -> nn.Linear | nn.Conv2d:
    """``layer`` with weight and bias set to 0: a residual branch or output that starts at zero."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class FourierEmbedding(nn.Module):
    """Sinusoidal features of the log-SNR at fixed geometric frequencies, then a 2-layer MLP.

    ``phi(lambda) = [cos(2 pi f_i lambda), sin(2 pi f_i lambda)]`` with periods from ``max_period`` down
    to ``min_period`` (in log-SNR units), so both coarse and fine changes of noise level are visible.
    ``[B] -> [B, dim]``."""

    def __init__(self, dim: int, num_freqs: int = 32, min_period: float = 0.5, max_period: float = 64.0):
        super().__init__()
        freqs = torch.exp(torch.linspace(math.log(1 / max_period), math.log(1 / min_period), num_freqs))
        self.register_buffer("freqs", 2 * math.pi * freqs, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * num_freqs, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, noise_level: Tensor) -> Tensor:
        arg = noise_level.float()[:, None] * self.freqs[None]  # [B, F]
        return self.mlp(torch.cat([arg.cos(), arg.sin()], dim=1).to(self.mlp[0].weight.dtype))


class LabelEmbedding(nn.Module):
    """Class embedding with a learned null label at index ``num_classes`` (classifier-free guidance);
    ``class_labels=None`` means "no class" for the whole batch. ``[B] -> [B, dim]``."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes + 1, dim)

    def forward(self, class_labels: Tensor | None, batch: int, device: torch.device) -> Tensor:
        if class_labels is None:
            class_labels = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        labels = class_labels.long()
        checkable = labels.numel() and labels.device.type != "meta"  # meta: shapes only, no values
        if checkable and (labels.min() < 0 or labels.max() > self.num_classes):
            raise ValueError(
                f"class label out of range: got {labels.min().item()}..{labels.max().item()}, "
                f"allowed 0..{self.num_classes} ({self.num_classes} = the null label)"
            )
        return self.embed(labels)


class Conditioning(nn.Module):
    """``emb = FourierEmbedding(lambda) + LabelEmbedding(y)`` (the label part only when num_classes > 0):
    an unconditional network (``num_classes = 0``) ignores any labels it is given."""

    def __init__(self, dim: int, num_classes: int = 0):
        super().__init__()
        self.noise = FourierEmbedding(dim)
        self.label = LabelEmbedding(num_classes, dim) if num_classes > 0 else None

    def forward(self, noise_level: Tensor, class_labels: Tensor | None, batch: int) -> Tensor:
        noise_level = noise_level.reshape(-1).expand(batch) if noise_level.numel() == 1 else noise_level
        emb = self.noise(noise_level)
        if self.label is not None:
            emb = emb + self.label(class_labels, batch, emb.device)
        return emb


class LearnedSkip(nn.Module):
    """``out + g(emb) * x``: a per-channel gain on the network's own input, regressed from the embedding
    and zero-initialised. Targets that are nearly linear in the input at some noise levels (eps at low
    SNR is ~ the input itself) are then easy to represent exactly; cf. EDM's c_skip, but learned."""

    def __init__(self, emb_dim: int, channels: int):
        super().__init__()
        self.gain = zero_init(nn.Linear(emb_dim, channels))

    def forward(self, out: Tensor, x: Tensor, emb: Tensor) -> Tensor:
        g = self.gain(emb)  # [B, channels]
        return out + g.reshape(g.shape + (1,) * (x.ndim - 2)).to(x.dtype) * x
