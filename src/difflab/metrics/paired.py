"""Paired comparisons of two rows whose samples share their noise: the difference itself, with a
95% interval from a paired bootstrap over sample indices.

Every row of the comparison draws sample ``i`` from the same noise (``sample_generators(seed,
[i])``), so two rows' FIDs are strongly correlated. Resampling the *same* sample indices for both
rows, against fixed reference statistics, measures ``FID(a) - FID(b)`` with the shared noise
cancelling; two separate intervals' overlap ignores that and is conservative even for independent
rows. The pairs ``(a_i, b_i)`` need only be independent across ``i``: the paired bootstrap is valid
for correlated and independent rows alike (for independent rows it is about as wide as the
unpaired one). The p-value of ``FID(a) = FID(b)`` is the normal approximation ``2 Phi(-|diff| / se)``
with ``se`` the replicates' standard deviation (200 replicates cannot resolve percentile p-values
below 1/200, which a multiple-comparison correction needs).

The replicates come from the evaluate stage (``fid.bootstrap_fid`` with one bootstrap seed, so every
row is resampled at the same indices); the arithmetic here is numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from difflab.results import Row

LEVEL = 0.95
ALPHA = 0.05  # family-wise error of the Holm-corrected families (``with_holm``)


def _p_value(diff: float, se: float) -> float:
    if se <= 0 or not math.isfinite(se):
        return 1.0 if diff == 0 else 0.0
    return math.erfc(abs(diff) / se / math.sqrt(2))


def _seed_moments(est: np.ndarray, reps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-way random-effects method of moments over the last seed axis: ``est`` ``[..., K]``,
    ``reps`` ``[..., K, B]`` -> ``(mean, var_of_mean)`` ``[...]``.

    Model: ``est_k = mu + u_k + e_k`` with ``u_k`` the training replicate's offset (variance
    ``sigma_seed^2``) and ``e`` the sampling errors with covariance ``Sigma`` ``[K, K]``, estimated by
    the covariance of the replicates across seeds. ``E[s2] = sigma_seed^2 + w`` with
    ``w = tr(Sigma (I - J/K)) / (K - 1)``, so ``sigma_seed^2 = max(0, s2 - w)`` and
    ``Var(mean) = sigma_seed^2 / K + 1' Sigma 1 / K^2``. With uncorrelated seeds (``Sigma`` diagonal,
    ``v`` its mean) ``w = v`` and ``Var(mean) = max(s2, v) / K``."""
    k = est.shape[-1]
    s2 = est.var(-1, ddof=1)
    v_mean = reps.mean(-2).var(-1, ddof=1)  # 1' Sigma 1 / K^2: sampling variance of the seed mean
    trace = reps.var(-1, ddof=1).sum(-1)  # tr Sigma
    w = (trace - k * v_mean) / (k - 1)  # tr(Sigma (I - J/K)) / (K - 1) >= 0
    return est.mean(-1), np.maximum(0.0, s2 - w) / k + v_mean


def _seed_arrays(fids, boots, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``fids`` as ``[K]`` and ``boots`` as ``[K, B]`` (``[B]`` is one seed), checked."""
    f = np.atleast_1d(np.asarray(fids, np.float64))
    b = np.atleast_2d(np.asarray(boots, np.float64))
    if f.ndim != 1 or b.ndim != 2 or b.shape[0] != len(f) or b.shape[1] < 2:
        raise ValueError(f"{name}: estimates {f.shape} need replicates [K, B] (B >= 2), got {b.shape}")
    return f, b


def _combined(f: np.ndarray, b: np.ndarray, level: float) -> tuple[float, float, float, float]:
    """``(estimate, lo, hi, se)`` from per-seed estimates ``f`` ``[K]`` and their replicates ``b``
    ``[K, B]``: K = 1, the bias-shifted percentile interval (``fid.bias_shifted_interval``) and the
    replicates' standard deviation; K >= 2, the seed mean ``+/- z se`` (``_seed_moments``)."""
    if len(f) == 1:
        from difflab.metrics.fid import bias_shifted_interval

        lo, hi = bias_shifted_interval(b[0], f[0], level)
        return float(f[0]), lo, hi, float(b[0].std(ddof=1))
    mean, var = _seed_moments(f, b)
    se = math.sqrt(var)
    half = NormalDist().inv_cdf(0.5 + level / 2) * se
    return float(mean), float(mean - half), float(mean + half), se


def _difference(diff: float, lo: float, hi: float, se: float) -> dict[str, float]:
    return {"fid_diff": diff, "diff_lo": lo, "diff_hi": hi, "se": se, "p_value": _p_value(diff, se)}


def paired_difference(
    fid_a: float, fid_b: float, boots_a, boots_b, *, level: float = LEVEL
) -> dict[str, float]:
    """``FID(a) - FID(b)`` with its paired bootstrap interval, from the two rows' estimates and
    their bootstrap replicates ``[B]`` drawn at the same resampled indices (``fid.bootstrap_draws``
    with one seed and the same ``n``). Returns ``dict(fid_diff, diff_lo, diff_hi, se, p_value)``."""
    ba, bb = np.asarray(boots_a, np.float64), np.asarray(boots_b, np.float64)
    if ba.shape != bb.shape or ba.ndim != 1 or len(ba) < 2:
        raise ValueError(
            f"paired_difference: replicates {ba.shape} and {bb.shape} must be equal 1-D (B >= 2)"
        )
    return _difference(*_combined(np.array([float(fid_a) - float(fid_b)]), (ba - bb)[None], level))


def replicate_matrix_difference(
    fid: np.ndarray, boots: np.ndarray, i: int, *, level: float = LEVEL
) -> dict[str, np.ndarray]:
    """``paired_difference`` of row ``i`` against every row at once: ``fid`` ``[R]``, ``boots``
    ``[R, B]`` (one seed, same ``n``); arrays ``[R]`` of ``fid_diff = fid[i] - fid[j]`` and its
    bounds."""
    fid, boots = np.asarray(fid, np.float64), np.asarray(boots, np.float64)
    d = boots[i][None, :] - boots  # [R, B]
    diff = fid[i] - fid
    tail = 100 * (1 - level) / 2
    q = np.percentile(d, [tail, 100 - tail], axis=1)  # [2, R]
    shift = d.mean(1) - diff
    return {"fid_diff": diff, "diff_lo": q[0] - shift, "diff_hi": q[1] - shift}


def seed_combined(fids, boots, *, level: float = LEVEL) -> dict:
    """One row's FID over K training seeds: ``fids`` ``[K]`` the per-seed estimates, ``boots``
    ``[K, B]`` their bootstrap replicates (drawn at the same resampled indices for every seed).
    Returns ``dict(fid, fid_lo, fid_hi, se, seed_sd, n_seeds)`` (``_combined``; ``seed_sd``: the
    seeds' sample standard deviation ``sqrt(s2)``, None for K = 1). Every seed samples from the same
    noise, so their sampling errors may be correlated; the part they share (the replicates'
    covariance across seeds) does not show in ``s2`` and does not shrink with K, and
    ``_seed_moments`` counts it as such.

    ``z`` is the normal quantile. The seed variance is estimated with K - 1 degrees of freedom, so
    with few seeds and the seed spread dominating the interval is optimistic (nominal 95% covers
    about 88% at K = 5); a t quantile with K - 1 degrees of freedom would widen it by
    ``t / z`` = 6.5 (K = 2), 2.2 (K = 3), 1.42 (K = 5), 1.15 (K = 10)."""
    f, b = _seed_arrays(fids, boots, "seed_combined")
    fid, lo, hi, se = _combined(f, b, level)
    seed_sd = float(f.std(ddof=1)) if len(f) > 1 else None
    return {"fid": fid, "fid_lo": lo, "fid_hi": hi, "se": se, "seed_sd": seed_sd, "n_seeds": len(f)}


def seed_combined_difference(fids_a, fids_b, boots_a, boots_b, *, level: float = LEVEL) -> dict:
    """``FID(a) - FID(b)`` over K training seeds, seed ``k`` of ``a`` matched with seed ``k`` of ``b``
    (the same sampling noise, different trainings): ``fids_*`` ``[K]``, ``boots_*`` ``[K, B]`` at the
    same resampled indices. Returns ``dict(fid_diff, diff_lo, diff_hi, se, p_value)``: ``seed_combined``
    of the per-seed paired differences ``d_k = fid_a,k - fid_b,k`` with the replicates
    ``boots_a,k - boots_b,k`` (K = 1: exactly ``paired_difference``)."""
    fa, ba = _seed_arrays(fids_a, boots_a, "seed_combined_difference")
    fb, bb = _seed_arrays(fids_b, boots_b, "seed_combined_difference")
    if ba.shape != bb.shape:
        raise ValueError(f"seed_combined_difference: rows hold replicates {ba.shape} and {bb.shape}")
    return _difference(*_combined(fa - fb, ba - bb, level))


def seed_matrix_difference(fids, boots, i: int, *, level: float = LEVEL) -> dict[str, np.ndarray]:
    """``seed_combined_difference`` of row ``i`` against every row at once: ``fids`` ``[R, K]``,
    ``boots`` ``[R, K, B]``; arrays ``[R]`` of ``fid_diff`` and its bounds (K = 1:
    ``replicate_matrix_difference``)."""
    fids, boots = np.asarray(fids, np.float64), np.asarray(boots, np.float64)
    if fids.ndim != 2 or boots.shape[:2] != fids.shape or boots.ndim != 3:
        raise ValueError(f"seed_matrix_difference: fids {fids.shape} need boots [R, K, B], got {boots.shape}")
    if fids.shape[1] == 1:
        return replicate_matrix_difference(fids[:, 0], boots[:, 0], i, level=level)
    diff, var = _seed_moments(fids[i][None] - fids, boots[i][None] - boots)  # [R]
    half = NormalDist().inv_cdf(0.5 + level / 2) * np.sqrt(var)
    return {"fid_diff": diff, "diff_lo": diff - half, "diff_hi": diff + half}


def holm(p_values: Sequence[float], alpha: float = 1 - LEVEL) -> list[bool]:
    """Holm's step-down test over a family: which hypotheses are rejected at family-wise error
    ``alpha`` (the k-th smallest p is compared with ``alpha / (m - k)``; testing stops at the first
    that is not below)."""
    p = np.asarray(p_values, np.float64)
    m = len(p)
    out = [False] * m
    for k, i in enumerate(np.argsort(p, kind="stable")):
        if p[i] > alpha / (m - k):
            break
        out[i] = True
    return out


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (``p_adj <= alpha`` iff ``holm`` rejects at ``alpha``)."""
    p = np.asarray(p_values, np.float64)
    m = len(p)
    adj = np.empty(m)
    running = 0.0
    for k, i in enumerate(np.argsort(p, kind="stable")):
        running = max(running, min(1.0, (m - k) * p[i]))
        adj[i] = running
    return adj.tolist()


@dataclass(frozen=True)
class Difference:
    """``FID(a) - FID(b)`` with its paired 95% interval, the bootstrap standard error and p-value,
    and, where it is one of a Holm family, the adjusted p-value and Holm's verdict."""

    a: Row
    b: Row
    fid_diff: float
    diff_lo: float
    diff_hi: float
    se: float
    p_value: float
    p_holm: float | None = None
    holm_rejects: bool | None = None

    @property
    def resolved(self) -> bool:
        """The 95% interval excludes 0."""
        return self.diff_lo > 0 or self.diff_hi < 0

    @property
    def significant(self) -> bool:
        """Holm's verdict in a family, else ``resolved``."""
        return self.resolved if self.holm_rejects is None else self.holm_rejects


class Pairing:
    """Paired comparisons between the rows of one comparison: ``replicates[row.key]`` holds each
    row's FID bootstrap replicates ``[K, B]`` (``[B]``: one seed), every row at the same resampled
    sample indices; ``row.fid_by_seed`` (else ``(row.fid,)``) its per-seed FIDs. ``diff(a, b)`` is
    ``seed_combined_difference`` (seed k of a against seed k of b; one seed: the plain paired
    difference), ``against(a)`` the same against every row at once."""

    def __init__(self, rows: Sequence[Row], replicates: Mapping):
        keys = [r.key for r in rows]
        missing = [k for k in keys if k not in replicates]
        if missing:
            raise ValueError(f"no bootstrap replicates for {len(missing)} rows, e.g. {missing[0]}")
        boots = [np.atleast_2d(np.asarray(replicates[k], np.float64)) for k in keys]
        shapes = {b.shape for b in boots}
        if len(shapes) > 1 or min((s[1] for s in shapes), default=2) < 2:
            raise ValueError(f"rows hold replicates of shapes {sorted(shapes)}, not one [K, B] with B >= 2")
        fids = [r.fid_by_seed or (r.fid,) for r in rows]
        bad = [k for k, f, b in zip(keys, fids, boots) if len(f) != b.shape[0]]
        if bad:
            raise ValueError(f"{bad[0]}: per-seed FIDs (fid_by_seed) do not match its replicates' seeds")
        self.index = {k: i for i, k in enumerate(keys)}
        self.fids = np.array(fids, np.float64).reshape(len(rows), -1)  # [R, K]
        self.boots = np.stack(boots) if rows else np.zeros((0, 1, 2))  # [R, K, B]
        self.n_seeds = self.boots.shape[1]

    def diff(self, a: Row, b: Row) -> Difference:
        i, j = self.index[a.key], self.index[b.key]
        d = seed_combined_difference(self.fids[i], self.fids[j], self.boots[i], self.boots[j])
        return Difference(a, b, **d)

    def against(self, a: Row) -> dict[str, np.ndarray]:
        """``FID(a) - FID(row)`` and its interval bounds for every row at once, arrays ``[R]``."""
        return seed_matrix_difference(self.fids, self.boots, self.index[a.key])


def with_holm(diffs: Sequence[Difference], alpha: float = ALPHA) -> list[Difference]:
    """The differences with Holm's adjusted p-values and verdicts over the family."""
    p = [d.p_value for d in diffs]
    return [replace(d, p_holm=q, holm_rejects=r) for d, q, r in zip(diffs, holm_adjusted(p), holm(p, alpha))]


def save_row_features(path, rows: dict[str, dict], *, bootstrap_seed: int) -> None:
    """One schedule's rows for paired comparisons, as an atomic ``.npz``: per ``Row.key`` the
    generated ``features`` (float32 ``[n, d]``), the FID bootstrap replicates ``fid_bootstrap``
    (``[B]``, drawn by ``fid.bootstrap_draws(n, B, bootstrap_seed)``) and the sample ``indices``
    (``[n]``), as ``"<key>/features"`` etc., plus the scalar ``bootstrap_seed``."""
    from difflab.io import atomic_write

    arrays = {"bootstrap_seed": np.asarray(int(bootstrap_seed))}
    for key, row in rows.items():
        arrays[f"{key}/features"] = np.asarray(row["features"], np.float32)
        arrays[f"{key}/fid_bootstrap"] = np.asarray(row["fid_bootstrap"], np.float64)
        arrays[f"{key}/indices"] = np.asarray(row["indices"], np.int64)

    def write(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    atomic_write(path, write)


def load_row_features(path, *, features: bool = False) -> dict:
    """``{"bootstrap_seed": int, "rows": {key: {"fid_bootstrap", "indices"[, "features"]}}}`` of a
    ``save_row_features`` file (``features=False`` leaves the large feature arrays unread)."""
    from pathlib import Path

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} not found; run the evaluate stage")
    parts = ("fid_bootstrap", "indices", "features") if features else ("fid_bootstrap", "indices")
    rows: dict[str, dict] = {}
    with np.load(path) as z:
        for name in z.files:
            key, _, part = name.rpartition("/")
            if key and part in parts:
                rows.setdefault(key, {})[part] = z[name]
        seed = int(z["bootstrap_seed"])
    return {"bootstrap_seed": seed, "rows": rows}


def read_replicates(files: Mapping) -> dict[str, np.ndarray]:
    """``row.seed_key -> FID bootstrap replicates [B]`` from ``save_row_features`` files, ``files``:
    path -> the per-seed rows (``difflab.results.Row``, one network and seed) it holds. Rows pair only
    where every replicate was drawn at the same resampled indices: one bootstrap seed and the same
    sample indices everywhere; a missing file or row, or a mismatch, is an error naming the file."""
    out, seeds, indices = {}, {}, None
    for path, rows in files.items():
        kept = load_row_features(path)
        seeds[str(path)] = kept["bootstrap_seed"]
        for r in rows:
            if r.key not in kept["rows"]:
                where = f"{r.model} seed {r.seed[0]}"
                raise FileNotFoundError(f"{path} has no row {r.key}; re-run evaluate for {where}")
            found = kept["rows"][r.key]
            indices = found["indices"] if indices is None else indices
            if not np.array_equal(found["indices"], indices):
                raise ValueError(
                    f"{path}: row {r.key} holds other sample indices than the first row; re-run sample"
                )
            out[r.seed_key] = found["fid_bootstrap"]
    if len(set(seeds.values())) > 1:
        raise ValueError(f"rows were bootstrapped with different seeds ({seeds}); re-run evaluate")
    return out
