"""Denoiser networks (torch only; they see a noise level, the log-SNR, never a schedule).

All take ``(x, noise_level, class_labels=None)`` and return a tensor shaped like ``x``. ``NETS`` is the
registry (name -> class); each constructor rejects sizes that do not fit the data."""

from __future__ import annotations

import torch
from torch import nn

from difflab.nets.dit import DiT
from difflab.nets.embedding import Conditioning, FourierEmbedding, LabelEmbedding, LearnedSkip
from difflab.nets.mlp import MLP
from difflab.nets.unet import UNet
from difflab.schema import Field, check_built, check_section

NETS: dict[str, type[nn.Module]] = {"mlp": MLP, "unet": UNet, "dit": DiT}

__all__ = ["DiT", "MLP", "NETS", "Conditioning", "FourierEmbedding", "LabelEmbedding", "LearnedSkip", "UNet",
           "build_net", "check_net"]  # fmt: skip


_SIZE = Field(int, low=1, optional=True)
_DROPOUT = Field(float, low=0, high=1, high_open=True, optional=True)
# each network's size arguments: the ``denoiser`` section's keys besides ``name``, the constructor's
# keyword parameters after ``data_shape`` and ``num_classes`` (absent: the constructor's default)
NET_FIELDS: dict[str, dict[str, Field]] = {
    "mlp": {"width": _SIZE, "depth": _SIZE, "emb_dim": _SIZE, "dropout": _DROPOUT},
    "unet": {
        "channels": _SIZE,
        "ch_mult": Field(list, optional=True, doc="channel multiplier per resolution"),
        "num_res_blocks": _SIZE,
        "attn_resolutions": Field(list, optional=True, doc="resolutions with self-attention"),
        "heads": _SIZE,
        "groups": _SIZE,
        "dropout": _DROPOUT,
        "emb_dim": Field(int, low=1, nullable=True, optional=True, doc="null: 4 x channels"),
    },
    "dit": {
        "patch_size": _SIZE,
        "hidden": _SIZE,
        "depth": _SIZE,
        "heads": _SIZE,
        "mlp_ratio": Field(float, low=0, low_open=True, optional=True),
    },
}
NET_NAME = Field(str, choices=lambda: tuple(NETS))


def build_net(cfg: dict, data_shape, num_classes: int = 0) -> nn.Module:
    """Build the network named ``cfg["name"]`` (a key of ``NETS``) with the other keys of ``cfg`` as
    its size arguments, for data of shape ``data_shape`` (``(d,)`` or ``(C, H, W)``) and
    ``num_classes`` classes (0 = unconditional; the null label is index ``num_classes``).

    Raises ``ValueError`` with one line for an unknown name, an unknown size argument, a bad size, or
    a data shape the network cannot take."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in NETS:
        raise ValueError(f"unknown denoiser {name!r}; valid denoisers: {', '.join(NETS)}")
    allowed = NET_FIELDS[name]
    for key in cfg:
        if key not in allowed:
            raise ValueError(f"unknown argument {key!r} for denoiser {name!r}; allowed: {', '.join(allowed)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes={num_classes!r} must be an integer >= 0")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
    try:
        return NETS[name](tuple(int(s) for s in data_shape), num_classes, **kwargs)
    except TypeError as e:  # a size of the wrong type (a string for an int): a config error
        raise ValueError(f"denoiser {name!r}: {str(e).splitlines()[0]}") from None


def check_net(cfg: dict, data_shape, num_classes: int = 0) -> int:
    """Check the ``denoiser`` section: a registered name, the sizes ``NET_FIELDS`` declares, then the
    network built on the meta device (shapes only, no memory) for the data; returns its parameter
    count. ``ConfigError`` naming the key."""
    check_section({"name": NET_NAME}, {"name": cfg.get("name")}, "denoiser")
    check_section({"name": NET_NAME, **NET_FIELDS[cfg["name"]]}, cfg, "denoiser")

    def build_on_meta(section: dict) -> nn.Module:
        with torch.device("meta"):
            return build_net(section, data_shape, num_classes)

    net = check_built(build_on_meta, cfg, "denoiser", f" for data of shape {tuple(data_shape)}")
    return sum(p.numel() for p in net.parameters())
