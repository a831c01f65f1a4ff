"""Peer implementations for parity tests (test-only dependencies)."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest


def k_diffusion_sampling():
    """k-diffusion's ``sampling`` module, or skip. Loaded without the package's ``__init__``, which
    imports CLIP and through it ``pkg_resources`` (gone from setuptools >= 70); ``sampling`` itself
    needs only torch, scipy, torchdiffeq and torchsde."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("k-diffusion is not installed (a dev dependency)")
    if "k_diffusion" not in sys.modules:
        package = types.ModuleType("k_diffusion")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["k_diffusion"] = package
    import k_diffusion.sampling

    return k_diffusion.sampling
