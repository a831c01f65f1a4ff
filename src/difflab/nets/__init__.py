"""Denoiser networks (torch only; they see a noise level, the log-SNR, never a schedule).

All take ``(x, noise_level, class_labels=None)`` and return a tensor shaped like ``x``.
``NETS`` is the registry (name -> class); a network's size arguments are its constructor's keyword
parameters after ``data_shape`` and ``num_classes``, with their defaults, and the constructor
rejects sizes that do not fit the data. ``build_net(cfg, data_shape, num_classes)`` builds one from
the ``denoiser`` config section; ``check_net`` builds it on the meta device (no memory, no
initialisation cost) to validate a config.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from difflab.nets.dit import DiT
from difflab.nets.embedding import Conditioning, FourierEmbedding, LabelEmbedding, LearnedSkip
from difflab.nets.mlp import MLP
from difflab.nets.unet import UNet

NETS: dict[str, type[nn.Module]] = {"mlp": MLP, "unet": UNet, "dit": DiT}

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
    "check_net",
    "net_arguments",
]


def net_arguments(name: str) -> dict:
    """The size arguments of network ``name`` with their defaults (its constructor's signature)."""
    if name not in NETS:
        raise ValueError(f"unknown denoiser {name!r}; valid denoisers: {', '.join(NETS)}")
    params = inspect.signature(NETS[name].__init__).parameters
    return {k: p.default for k, p in params.items() if k not in ("self", "data_shape", "num_classes")}


def build_net(cfg: dict, data_shape, num_classes: int = 0) -> nn.Module:
    """Build the network named ``cfg["name"]`` (a key of ``NETS``) with the other keys of ``cfg`` as
    its size arguments, for data of shape ``data_shape`` (``(d,)`` or ``(C, H, W)``) and
    ``num_classes`` classes (0 = unconditional; the null label is index ``num_classes``).

    Raises ``ValueError`` with one line for an unknown name, an unknown size argument, a bad size, or
    a data shape the network cannot take.
    """
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    allowed = net_arguments(name)
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
    """Build the network on the meta device (shapes only, no memory) to check ``cfg`` against the
    data; returns its parameter count. Same errors as ``build_net``."""
    with torch.device("meta"):
        net = build_net(cfg, data_shape, num_classes)
    return sum(p.numel() for p in net.parameters())
