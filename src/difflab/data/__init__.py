"""Datasets: toy data with exact denoisers, and Lightning datamodules (``build_datamodule``)."""

from difflab.data.toy import GaussianMixture

__all__ = ["DATASETS", "GaussianMixture", "build_datamodule"]


def __getattr__(name):  # datamodules import Lightning (layer 3): load them only when asked for
    if name in ("build_datamodule", "DATASETS"):
        from difflab.data import datamodules

        return getattr(datamodules, name)
    raise AttributeError(name)
