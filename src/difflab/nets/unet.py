"""U-Net denoiser for images (DDPM / ADM style, compact): residual blocks with GroupNorm and a
scale-shift from the noise/class embedding, self-attention at chosen resolutions, skip connections."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from difflab.nets.embedding import Conditioning, LearnedSkip, check_dropout, check_sizes, zero_init


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with ``groups`` groups (fewer only where a layer has fewer channels than groups)."""
    g = min(groups, channels)
    if channels % g:
        raise ValueError(f"groups={groups} does not divide a layer's {channels} channels (denoiser 'unet')")
    return nn.GroupNorm(g, channels)


class ResBlock(nn.Module):
    """``x + conv(silu(GN(conv(silu(GN(x)))) * (1 + scale) + shift))`` with a 1x1 skip on a channel change."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in, groups), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.mod = nn.Linear(emb_dim, 2 * c_out)
        self.norm2, self.conv2 = _norm(c_out, groups), zero_init(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.mod(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm2(h) * (1 + scale) + shift)
        return self.skip(x) + self.conv2(self.drop(h))


class AttnBlock(nn.Module):
    """Multi-head self-attention over the H*W positions, residual, zero-initialised output."""

    def __init__(self, channels: int, groups: int, heads: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"heads={heads} does not divide an attention layer's {channels} channels")
        self.heads = heads
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(B, C, H, W))  # [B, C, H, W]


class UNet(nn.Module):
    """``UNet(x, noise_level, class_labels=None)``: x ``[B, C, H, W]``, noise_level the log-SNR ``[B]``.

    ``channels`` base width, ``ch_mult`` one multiplier per resolution (H halves between them, so H
    and W must be divisible by ``2 ** (len(ch_mult) - 1)``), ``num_res_blocks`` per resolution,
    self-attention at the resolutions listed in ``attn_resolutions`` (in pixels)."""

    def __init__(
        self,
        data_shape: tuple[int, ...],
        num_classes: int = 0,
        channels: int = 64,
        ch_mult: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: tuple[int, ...] = (7,),
        heads: int = 4,
        groups: int = 32,
        dropout: float = 0.0,
        emb_dim: int | None = None,
    ):
        super().__init__()
        check_sizes("unet", channels=channels, num_res_blocks=num_res_blocks, heads=heads, groups=groups)
        check_sizes("unet", **{f"ch_mult[{i}]": m for i, m in enumerate(ch_mult)})
        if not ch_mult:
            raise ValueError("ch_mult=[] must list at least one multiplier (denoiser 'unet')")
        if emb_dim is not None:
            check_sizes("unet", emb_dim=emb_dim)
        check_dropout("unet", dropout)
        shape = tuple(data_shape)
        if len(shape) != 3:
            raise ValueError(f"denoiser 'unet' needs image data [C, H, W]; got data shape {shape}")
        c_data, H, W = shape
        factor = 2 ** (len(ch_mult) - 1)
        if H % factor or W % factor:
            raise ValueError(
                f"denoiser 'unet' with {len(ch_mult)} resolutions needs H, W divisible by {factor}; "
                f"got data shape {shape}"
            )
        resolutions = [H // 2**i for i in range(len(ch_mult))]
        for res in attn_resolutions:
            if res not in resolutions:
                raise ValueError(
                    f"attn_resolutions holds {res!r}, not a resolution of this U-Net "
                    f"({', '.join(map(str, resolutions))})"
                )
        self.data_shape, self.num_classes = shape, num_classes
        emb_dim = emb_dim or 4 * channels
        self.cond = Conditioning(emb_dim, num_classes)
        self.inp = nn.Conv2d(c_data, channels, 3, padding=1)

        def res_attn(c_in: int, c_out: int, res: int) -> nn.ModuleList:
            """A residual block, then self-attention where ``res`` is in ``attn_resolutions``."""
            blocks = [ResBlock(c_in, c_out, emb_dim, groups, dropout)]
            if res in attn_resolutions:
                blocks.append(AttnBlock(c_out, groups, heads))
            return nn.ModuleList(blocks)

        self.down = nn.ModuleList()
        skips, c, res = [channels], channels, H
        for i, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                self.down.append(res_attn(c, channels * mult, res))
                c = channels * mult
                skips.append(c)
            if i < len(ch_mult) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1)]))
                skips.append(c)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(c, c, emb_dim, groups, dropout), AttnBlock(c, groups, heads)])
        self.mid.append(ResBlock(c, c, emb_dim, groups, dropout))
        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(res_attn(c + skips.pop(), channels * mult, res))
                c = channels * mult
            if i > 0:
                upsample = [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]
                self.up.append(nn.ModuleList(upsample))
                res *= 2
        self.out_norm = _norm(c, groups)
        self.out = zero_init(nn.Conv2d(c, c_data, 3, padding=1))
        self.skip = LearnedSkip(emb_dim, c_data)

    @staticmethod
    def _run(blocks: nn.ModuleList, h: Tensor, emb: Tensor) -> Tensor:
        for block in blocks:
            h = block(h, emb) if isinstance(block, (ResBlock, AttnBlock)) else block(h)
        return h

    def forward(self, x: Tensor, noise_level: Tensor, class_labels: Tensor | None = None) -> Tensor:
        emb = F.silu(self.cond(noise_level, class_labels, x.shape[0]))
        h = self.inp(x)
        hs = [h]
        for blocks in self.down:
            h = self._run(blocks, h, emb)
            hs.append(h)
        h = self._run(self.mid, h, emb)
        for blocks in self.up:
            if isinstance(blocks[0], ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            h = self._run(blocks, h, emb)
        return self.skip(self.out(F.silu(self.out_norm(h))), x, emb)  # [B, C, H, W]
