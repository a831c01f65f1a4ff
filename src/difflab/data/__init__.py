"""Datasets: toy data with exact denoisers, and Lightning datamodules (``build_datamodule``)."""

from difflab.data.toy import GaussianMixture

__all__ = ["DATAMODULES", "DATASETS", "GaussianMixture", "build_datamodule", "check_data"]


def __getattr__(name):  # datamodules import Lightning (layer 3): load them only when asked for
    if name in ("build_datamodule", "check_data", "DATASETS", "DATAMODULES"):
        from difflab.data import datamodules

        return getattr(datamodules, name)
    raise AttributeError(name)
