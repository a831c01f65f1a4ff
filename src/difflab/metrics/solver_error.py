"""A solver's discretization error: its samples' distance to a high-accuracy reference solution of the
same PF-ODE from the same noise (so the network's own error cancels)."""

from __future__ import annotations

import numpy as np


def solver_error(x: np.ndarray, x_ref: np.ndarray) -> float:
    """Mean over samples of the RMS per-coordinate distance ``||x_i - ref_i||_2 / sqrt(d)`` between a
    solver's samples and the high-accuracy reference from the same noise, in model space ([-1, 1]).
    Shapes: ``[n, ...]`` both (the first ``len(x_ref)`` rows of ``x`` are used)."""
    x, x_ref = np.asarray(x, np.float64), np.asarray(x_ref, np.float64)
    n = len(x_ref)
    if len(x) < n or x.shape[1:] != x_ref.shape[1:]:
        raise ValueError(f"solver_error: samples {x.shape} do not cover the reference {x_ref.shape}")
    diff = (x[:n] - x_ref).reshape(n, -1)
    return float(np.sqrt((diff**2).mean(axis=1)).mean())
