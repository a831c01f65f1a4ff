"""Denoiser networks (torch only; they see a noise level, the log-SNR, never a schedule).

All take ``(x, noise_level, class_labels=None)`` and return a tensor shaped like ``x``.
``build_net(cfg, data_shape, num_classes)`` builds one from the ``denoiser`` config section.
"""

from __future__ import annotations

import inspect
import math

from torch import nn

from difflab.nets.dit import DiT
from difflab.nets.embedding import Conditioning, FourierEmbedding, LabelEmbedding, LearnedSkip
from difflab.nets.mlp import MLP
from difflab.nets.unet import UNet

NETS = {"mlp": MLP, "unet": UNet, "dit": DiT}

__all__ = [
    "DiT",
    "MLP",
    "NETS",
    "Conditioning",
    "FourierEmbedding",
    "LabelEmbedding",
    "LearnedSkip",
    "UNet",
    "build_net",
]


def build_net(cfg: dict, data_shape, num_classes: int = 0) -> nn.Module:
    """Build the network named ``cfg["name"]`` (``mlp`` | ``unet`` | ``dit``) with the other keys of
    ``cfg`` as its size arguments, for data of shape ``data_shape`` (``(d,)`` or ``(C, H, W)``) and
    ``num_classes`` classes (0 = unconditional; the null label is index ``num_classes``).

    Raises ``ValueError`` with one line for an unknown name, an unknown size argument, or a data shape
    the network cannot take.
    """
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in NETS:
        raise ValueError(f"unknown denoiser {name!r}; valid denoisers: {', '.join(NETS)}")
    cls = NETS[name]
    allowed = [
        p
        for p in inspect.signature(cls.__init__).parameters
        if p not in ("self", "data_shape", "num_classes")
    ]
    for key in cfg:
        if key not in allowed:
            raise ValueError(f"unknown argument {key!r} for denoiser {name!r}; allowed: {', '.join(allowed)}")
    data_shape = tuple(int(s) for s in data_shape)
    if num_classes < 0:
        raise ValueError(f"num_classes={num_classes} must be >= 0")
    for key in ("ch_mult", "attn_resolutions"):
        if key in cfg:
            cfg[key] = tuple(cfg[key])
    if name in ("unet", "dit"):
        if len(data_shape) != 3:
            raise ValueError(f"denoiser {name!r} needs image data [C, H, W]; got data shape {data_shape}")
        C, H, W = data_shape
        if name == "unet":
            levels = len(cfg.get("ch_mult", (1, 2, 2)))
            factor = 2 ** (levels - 1)
            if H % factor or W % factor:
                raise ValueError(
                    f"denoiser 'unet' with {levels} resolutions needs H, W divisible by {factor}; "
                    f"got data shape {data_shape}"
                )
        else:
            p = int(cfg.get("patch_size", 2))
            if H != W or H % p:
                raise ValueError(
                    f"denoiser 'dit' needs square images with H divisible by patch_size={p}; "
                    f"got data shape {data_shape}"
                )
    elif math.prod(data_shape) <= 0:
        raise ValueError(f"denoiser 'mlp': empty data shape {data_shape}")
    return cls(data_shape, num_classes, **cfg)
