"""What a run can conclude: the real-data FID floor at the rows' own sample count, error cancellation
(each row against its own network's converged solution), memorization, training convergence and the
denoiser's coverage where sampling starts; ``network_diagnostics`` gathers them from the pipeline's
stage folders into ``results/diagnostics.json``. Rows are the comparison's ``difflab.results.Row``s.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from difflab.metrics.paired import LEVEL, seed_combined_difference
from difflab.results import Row

VS_COLUMNS = ("vs_converged", "vs_converged_lo", "vs_converged_hi", "beats_converged")
CONVERGED_ODE_SOLVER = "rk45"  # the converged PF-ODE: the adaptive solve every network is sampled with


# -- The real-data floor at n samples --------------------------------------------------------------


def _features(name: str, x) -> torch.Tensor:
    f = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).to(torch.float64).cpu()
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"{name} must be features [n, d] with n >= 2, got shape {tuple(f.shape)}")
    return f


def _reference_stats(reference) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mu [d], sigma [d, d])`` float64 of reference features ``[N, d]`` or of a mapping with ``mu``
    and ``sigma``. From features, the arithmetic of torch-fidelity's ``fid_features_to_statistics`` on
    float32 features (``fid.reference_statistics``), without importing torch-fidelity (seconds)."""
    if isinstance(reference, Mapping):
        mu, sigma = reference["mu"], reference["sigma"]
    else:
        f32 = _features("reference features", reference).to(torch.float32).numpy()
        mu, sigma = f32.mean(0), np.cov(f32, rowvar=False)
    mu, sigma = (torch.as_tensor(np.asarray(v), dtype=torch.float64) for v in (mu, sigma))
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ValueError(
            f"reference statistics must be mu [d], sigma [d, d], got {tuple(mu.shape)}, {tuple(sigma.shape)}"
        )
    return mu, sigma


def _subsample_fids(features, mu, sigma, n: int, repeats: int, g: torch.Generator) -> np.ndarray:
    """FIDs ``[repeats]`` of ``repeats`` subsamples of ``n`` rows drawn without replacement."""
    from difflab.metrics.fid import _small_linalg, fid_of_features

    m = features.shape[0]
    with _small_linalg(features.shape[1]):
        return np.array(
            [fid_of_features(features[torch.randperm(m, generator=g)[:n]], mu, sigma) for _ in range(repeats)]
        )


def _check_count(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name}={value!r} must be an integer >= {lo}")
    return int(value)


def _line_fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Least squares ``y = a + b x`` over ``P >= 3`` points: ``(coef [a, b], cov [2, 2], dof)``."""
    design = np.stack([np.ones(len(x)), x], 1)  # [P, 2]
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    dof = len(x) - 2
    resid = y - design @ coef
    return coef, float(resid @ resid) / dof * np.linalg.inv(design.T @ design), dof


def _t_quantile(level: float, dof: int) -> float:
    """The two-sided t quantile of ``level``."""
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, dof))


def fid_infinity(
    features, reference, ns: Sequence[int], *, repeats: int = 1, seed: int = 0, level: float = LEVEL
) -> dict:
    """FID extrapolated to infinitely many samples (Chong & Forsyth 2020, "Effectively Unbiased FID").

    FID of ``n`` samples is biased upward by a term linear in ``1/n``: for ``n >> d``,
    ``E[FID_n] = FID_inf + c / n`` (``c = fid_bias_coefficient``; ``d + d (d + 1) / 4`` for
    ``N(mu, I_d)`` against exact statistics). ``repeats`` subsamples of ``features`` ``[m, d]`` at each
    ``n`` in ``ns`` (``n <= m``) are scored against ``reference`` (features ``[N, d]`` or ``mu``,
    ``sigma``), and ``FID = a + b / n`` is fitted by least squares over every point; ``FID_inf = a``.

    Returns ``dict(fid_infinity, fid_infinity_lo, fid_infinity_hi, slope, ns, fids, cov, dof)``:
    ``fids`` the mean FID at each ``n``, the interval the fit's t interval of the intercept (the
    points' scatter, not the held-out set's own finite size), ``cov`` the covariance of ``[a, b]``.
    The 1/n law needs ``n`` well above ``d`` (below, the covariance is rank deficient): a warning."""
    f = _features("features", features)
    mu, sigma = _reference_stats(reference)
    ns = np.array(sorted({int(n) for n in ns}))
    repeats = _check_count("repeats", repeats, 1)
    if len(ns) < 3 or ns[0] < 2 or ns[-1] > f.shape[0]:
        raise ValueError(f"ns={ns.tolist()} must hold at least 3 distinct sizes in 2..{f.shape[0]}")
    if ns[0] <= f.shape[1]:
        warnings.warn(
            f"fid_infinity: the smallest n = {ns[0]} is not above the feature dimension d = {f.shape[1]}; "
            "FID is not linear in 1/n there and the extrapolation is biased",
            stacklevel=2,
        )
    g = torch.Generator().manual_seed(seed)
    per_n = np.stack([_subsample_fids(f, mu, sigma, int(n), repeats, g) for n in ns])  # [P, repeats]
    coef, cov, dof = _line_fit(1.0 / np.repeat(ns, repeats).astype(np.float64), per_n.reshape(-1))
    half = _t_quantile(level, dof) * math.sqrt(max(cov[0, 0], 0.0))
    return {
        "fid_infinity": float(coef[0]),
        "fid_infinity_lo": float(coef[0] - half),
        "fid_infinity_hi": float(coef[0] + half),
        "slope": float(coef[1]),
        "ns": ns.tolist(),
        "fids": per_n.mean(1).tolist(),
        "cov": cov.tolist(),
        "dof": dof,
    }


def fid_bias_coefficient(features) -> float:
    """The coefficient ``c`` of FID's sampling bias: two independent samples of sizes ``n`` and ``N``
    from one distribution score ``E[FID] ~ c (1/n + 1/N)`` (second order in the estimation errors, so
    for ``n, N >> d``). With ``lam_i`` and ``z`` the eigenvalues of the covariance and the centred
    features ``[N, d]`` in its eigenbasis,
    ``c = sum_i lam_i + sum_ij Var(z_i z_j) / (2 (lam_i + lam_j))``: the mean term ``tr S / n`` plus the
    Bures-Wasserstein metric ``sum_ij E_ij^2 / (2 (lam_i + lam_j))`` of the covariance error ``E`` (its
    second-order expansion; Bhatia, Jain & Lim 2019), with ``Var(E_ij) = Var(z_i z_j) / n``. For
    ``N(mu, I_d)``: ``c = d + d (d + 1) / 4``."""
    f = _features("features", features)
    z = f - f.mean(0)
    lam, v = torch.linalg.eigh(z.T @ z / (len(z) - 1))
    lam = lam.clamp_min(float(lam.max()) * 1e-12)
    q = (z @ v) ** 2  # [N, d]: z_i^2
    var = q.T @ q / len(z) - torch.diag(lam**2)  # Var(z_i z_j) = E[z_i^2 z_j^2] - (E z_i z_j)^2
    return float(lam.sum() + (var / (2 * (lam[:, None] + lam[None, :]))).sum())


FLOOR_METHODS = ("auto", "subsample", "reference_split", "fid_infinity_fit")


@dataclass(frozen=True)
class _FloorDraws:
    """How ``floor_at_n`` draws: ``repeats`` subsamples or splits, ``bootstrap`` resamples per interval,
    the ``seed`` of each interval's bootstrap (``seed + k`` for the k-th draw), the ``level`` and the
    generator ``g`` of the subsets."""

    repeats: int
    bootstrap: int
    seed: int
    level: float
    g: torch.Generator


def _fid_and_offsets(features, mu, sigma, draws: _FloorDraws, k: int) -> tuple[float, float, float]:
    """``(fid, lo - fid, hi - fid)`` of ``features`` with the rows' own interval
    (``fid.bias_shifted_interval`` of ``fid.bootstrap_fid``), the k-th draw's."""
    from difflab.metrics.fid import _small_linalg, bias_shifted_interval, bootstrap_fid, fid_of_features

    with _small_linalg(features.shape[1]):
        boots = bootstrap_fid(features, mu, sigma, draws.bootstrap, seed=draws.seed + k).numpy()
        fid = fid_of_features(features, mu, sigma)
    lo, hi = bias_shifted_interval(boots, fid, draws.level)
    return fid, lo - fid, hi - fid


def _floor_subsample(held, mu, sigma, n: int, draws: _FloorDraws) -> tuple[list, dict]:
    """``"subsample"`` (``n <= m``): ``repeats`` subsamples of ``n`` of the ``m`` held-out images (one
    when ``n = m``: the whole split, the number the prepare stage's ``data_floor`` holds). Returns each
    draw's ``(fid, lo - fid, hi - fid)`` and the record's extra keys."""
    m = held.shape[0]
    if n > m:
        raise ValueError(f"n={n} exceeds the held-out split ({m} images); use reference_split")
    reps = 1 if n == m else draws.repeats
    subsets = [held] if n == m else [held[torch.randperm(m, generator=draws.g)[:n]] for _ in range(reps)]
    return [_fid_and_offsets(sub, mu, sigma, draws, k) for k, sub in enumerate(subsets)], {"repeats": reps}


def _floor_reference_split(reference_features, n: int, d: int, draws: _FloorDraws) -> tuple[list, dict]:
    """``"reference_split"`` (``n > m``): ``repeats`` random splits of the training split's ``N``
    features into ``n`` "samples" and a reference of the other ``N - n``, each draw's
    ``(fid, lo - fid, hi - fid)``, and the larger bias of the smaller reference
    ``c (1/(N - n) - 1/N)`` (``fid_bias_coefficient``) for the caller to subtract. The images are real
    and unseen by their reference, at the rows' own ``n``; only the small correction leans on the
    second-order formula. Needs ``N - n > d`` and the reference features (not their statistics)."""
    if isinstance(reference_features, Mapping):
        raise ValueError("reference_split needs the reference features [N, d], not their statistics")
    ref = _features("reference_features", reference_features)
    big_n = ref.shape[0]
    if big_n - n <= d:
        raise ValueError(f"n={n} leaves {big_n - n} of {big_n} reference images; reference_split needs > {d}")
    parts = []
    for k in range(draws.repeats):
        perm = torch.randperm(big_n, generator=draws.g)
        mu_k, sigma_k = _reference_stats(ref[perm[n:]])
        parts.append(_fid_and_offsets(ref[perm[:n]], mu_k, sigma_k, draws, k))
    correction = fid_bias_coefficient(ref) * (1 / (big_n - n) - 1 / big_n)
    return parts, {"repeats": draws.repeats, "n_reference": big_n, "bias_correction": correction}


def _floor_fit(held, mu, sigma, n: int, ns, draws: _FloorDraws) -> dict:
    """``"fid_infinity_fit"``: ``fid_infinity``'s line ``a + b / n`` fitted to held-out subsamples at
    ``ns`` (default 8 sizes evenly spaced in 1/n from ``m/2`` to ``m``) and evaluated at ``n`` (Chong &
    Forsyth 2020). Subsamples of one held-out split estimate the slope poorly: measured on Gaussians
    (d = 8, m = 500, n = 2000, 30 splits) its ``n * floor`` scattered with a standard deviation of 90%
    of its true value (26), biased low, against 20% for ``m * FID_m`` itself; it is kept for comparison,
    not used by ``"auto"``. The interval: the bootstrap offsets at the largest size scaled by
    ``sqrt(n_max / n)`` (FID's spread shrinks between ``1/sqrt(n)`` and ``1/n``; the slower rate is the
    wider), widened in quadrature by the fit's prediction half-width."""
    m = held.shape[0]
    if ns is None:
        if m < 8:
            raise ValueError(f"the held-out split holds {m} images; the fit needs at least 8")
        ns = sorted({int(round(1.0 / u)) for u in np.linspace(1.0 / m, 2.0 / m, 8)})
    ref = {"mu": mu, "sigma": sigma}
    fit = fid_infinity(held, ref, ns, repeats=draws.repeats, seed=draws.seed, level=draws.level)
    x = np.array([1.0, 1.0 / n])
    floor = fit["fid_infinity"] + fit["slope"] / n
    var = float(x @ np.array(fit["cov"]) @ x)
    pred_half = _t_quantile(draws.level, fit["dof"]) * math.sqrt(max(var, 0.0))
    n_max = fit["ns"][-1]
    subset = held[torch.randperm(m, generator=draws.g)[:n_max]]
    _, lo, hi = _fid_and_offsets(subset, mu, sigma, draws, 0)
    scale = math.sqrt(n_max / n)
    return {
        "floor_fid": floor,
        "floor_lo": max(0.0, floor - math.hypot(scale * lo, pred_half)),
        "floor_hi": floor + math.hypot(scale * hi, pred_half),
        "repeats": draws.repeats,
        "fit": fit,
    }


def floor_at_n(
    reference_features,
    heldout_features,
    n: int,
    *,
    method: str = "auto",
    repeats: int = 10,
    seed: int = 0,
    bootstrap: int = 100,
    ns: Sequence[int] | None = None,
) -> dict:
    """The real-data FID floor at ``n`` samples: the FID that ``n`` real images never trained on score
    against the reference (the training split's features ``[N, d]``; ``subsample`` and
    ``fid_infinity_fit`` also take its ``mu``/``sigma``), by every row's FID (``fid.fid_of_features``,
    within ~1e-5 of torch-fidelity's). FID is biased upward by ~``c / n`` (``fid_bias_coefficient``),
    so only a floor at the rows' own ``n`` compares with them.

    ``method``: ``"subsample"``, ``"reference_split"``, ``"fid_infinity_fit"`` (``_floor_subsample``,
    ``_floor_reference_split``, ``_floor_fit``) or ``"auto"``: ``subsample`` where the held-out split
    holds ``m >= n`` images, else ``reference_split``. ``floor_lo``/``floor_hi``: the 95% interval a
    row of ``n`` real samples would carry, each draw's bias-shifted bootstrap offsets averaged over the
    ``repeats`` draws.

    Returns ``dict(floor_fid, floor_lo, floor_hi, method, n, n_heldout, n_reference, repeats,
    bias_correction, fit)`` (None where the method has no reference split, correction or fit)."""
    if method not in FLOOR_METHODS:
        raise ValueError(f"method={method!r}; allowed: {', '.join(FLOOR_METHODS)}")
    held = _features("heldout_features", heldout_features)
    mu, sigma = _reference_stats(reference_features)
    if held.shape[1] != len(mu):
        raise ValueError(f"held-out features are {held.shape[1]}-d but the reference is {len(mu)}-d")
    n = _check_count("n", n, 2)
    draws = _FloorDraws(
        _check_count("repeats", repeats, 1), _check_count("bootstrap", bootstrap, 2), seed, LEVEL,
        torch.Generator().manual_seed(seed),
    )  # fmt: skip
    m, d = held.shape
    if method == "auto":
        method = "subsample" if n <= m else "reference_split"
    out = dict(method=method, n=n, n_heldout=m, n_reference=None, bias_correction=None, fit=None)
    if method == "fid_infinity_fit":
        return {**out, **_floor_fit(held, mu, sigma, n, ns, draws)}
    if method == "subsample":
        parts, extra = _floor_subsample(held, mu, sigma, n, draws)
    else:
        parts, extra = _floor_reference_split(reference_features, n, d, draws)
    out.update(extra)
    # parts: [repeats, 3] rows of (fid, lo - fid, hi - fid)
    floor, lo_off, hi_off = np.mean(np.array(parts), 0).tolist()
    floor -= out["bias_correction"] or 0.0
    return {**out, "floor_fid": floor, "floor_lo": max(0.0, floor + lo_off), "floor_hi": floor + hi_off}


# -- Error cancellation: each row against its own network's converged solution ---------------------


def vs_converged(fid_row, fid_converged, boots_row, boots_converged, *, level: float = LEVEL) -> dict:
    """``FID(row) - FID(converged)`` of a row and its own network's converged solution of the same kind,
    with its paired 95% interval: ``fid_*`` the estimates (a float, or ``[K]`` per training seed) and
    ``boots_*`` their bootstrap replicates (``[B]``, or ``[K, B]``) drawn at the same resampled indices
    (``metrics.paired.seed_combined_difference``; ``paired_difference`` for one seed).

    Returns ``dict(vs_converged, vs_converged_lo, vs_converged_hi, beats_converged)``;
    ``beats_converged``: the interval lies entirely below 0, i.e. the row scores a lower FID than the
    exact solution of the equation it discretizes."""
    d = seed_combined_difference(fid_row, fid_converged, boots_row, boots_converged, level=level)
    return dict(zip(VS_COLUMNS, (d["fid_diff"], d["diff_lo"], d["diff_hi"], bool(d["diff_hi"] < 0))))


def _identity(r: Row) -> tuple:
    """What a converged partner shares with its row: the network (model, default its training schedule;
    training schedule; training seeds), the sampling schedule and the guidance scale."""
    return (r.model or r.schedule, r.schedule, r.seed, r.sample_schedule, r.guidance_scale)


def _family_of(families: Mapping | None) -> Callable[[str], str]:
    """``solver -> "ode" | "sde"``: from ``families`` (``difflab.solvers.registry.Solvers``' mapping, or
    ``name -> "ode"/"sde"``), else from the solver registry's spec."""
    if families is None:
        from difflab.solvers import get_spec

        return lambda name: "sde" if get_spec(name).stochastic else "ode"

    def family(name: str) -> str:
        if name not in families:
            raise ValueError(f"solver {name!r} is not in families (known: {', '.join(families)})")
        fam = families[name]
        return fam if isinstance(fam, str) else fam["family"]

    return family


def converged_partners(
    rows: Sequence,
    families: Mapping | None = None,
    *,
    ode_solver: str = CONVERGED_ODE_SOLVER,
    sde_solver: str | None = None,
    sde_steps: int | None = None,
) -> list:
    """Each row's converged partner: the row of the same network (model, training schedule and seed),
    sampling schedule and guidance scale that solves the same equation to convergence. An ODE row's
    partner is the network's ``ode_solver`` row (adaptive: steps 0); an SDE row's the ``sde_solver``
    row at ``sde_steps`` (the fine-step reverse-SDE solve the config sizes; None: SDE rows get no
    partner). A converged solution does not depend on the time grid, so the partner on the row's own
    grid is taken where there is one, else the first in ``rows``. A converged row is its own partner
    (difference 0). ``families``: ``solver -> "ode"/"sde"`` (or ``difflab.solvers.registry.Solvers``'
    mapping); None asks the solver registry. Returns a list parallel to ``rows``: the partner or None."""
    family = _family_of(families)
    if family(ode_solver) != "ode":
        raise ValueError(f"ode_solver={ode_solver!r} is stochastic; the converged PF-ODE needs an ODE solver")
    if sde_solver is not None:
        if family(sde_solver) != "sde":
            raise ValueError(
                f"sde_solver={sde_solver!r} is deterministic; the converged SDE needs an SDE solver"
            )
        _check_count("sde_steps", sde_steps, 1)
    pools: dict[tuple, list] = {}
    for r in rows:
        if r.solver == ode_solver or (r.solver, r.steps) == (sde_solver, sde_steps):
            pools.setdefault((family(r.solver), *_identity(r)), []).append(r)
    out = []
    for r in rows:
        pool = pools.get((family(r.solver), *_identity(r)), [])
        same_grid = [p for p in pool if p.grid == r.grid]
        out.append((same_grid or pool or [None])[0])
    return out


def vs_converged_columns(
    rows: Sequence,
    replicates: Mapping[str, np.ndarray],
    partners: Sequence,
    *,
    level: float = LEVEL,
) -> list[dict]:
    """``vs_converged`` of every row against its partner (``converged_partners``), as the comparison's
    columns ``dict(vs_converged, vs_converged_lo, vs_converged_hi, beats_converged)`` (all None where a
    row has no partner). ``replicates[row.key]``: the row's bootstrap replicates ``[B]`` or ``[K, B]``
    (``report.build.load_replicates``, ``results.aggregate_seeds``); the per-seed FIDs are the
    row's ``fid_by_seed`` where it has them, else its ``fid``."""
    if len(partners) != len(rows):
        raise ValueError(f"{len(partners)} partners for {len(rows)} rows; pass converged_partners(rows)")

    def inputs(r):
        if r.key not in replicates:
            raise ValueError(f"no bootstrap replicates for {r.key}")
        return list(r.fid_by_seed or [r.fid]), replicates[r.key]

    out = []
    for r, p in zip(rows, partners):
        if p is None:
            out.append(dict.fromkeys(VS_COLUMNS))
            continue
        (fa, ba), (fb, bb) = inputs(r), inputs(p)
        out.append(vs_converged(fa, fb, ba, bb, level=level))
    return out


# -- Memorization ----------------------------------------------------------------------------------


def _nn_distance(a: torch.Tensor, b: torch.Tensor, chunk_elements: int = 1 << 24) -> torch.Tensor:
    """Euclidean distance ``[n]`` from each row of ``a`` ``[n, D]`` to its nearest row of ``b`` ``[N, D]``
    (float64, chunked over ``a`` so a chunk's distance matrix holds ``chunk_elements`` entries)."""
    b_sq = (b**2).sum(1)  # [N]
    rows = max(1, chunk_elements // max(1, b.shape[0]))
    out = torch.empty(a.shape[0], dtype=torch.float64)
    for lo in range(0, a.shape[0], rows):
        x = a[lo : lo + rows]
        d2 = (x**2).sum(1, keepdim=True) + b_sq[None] - 2 * x @ b.T  # [chunk, N]
        out[lo : lo + rows] = d2.min(1).values.clamp_min(0).sqrt()
    return out


def memorization(sample_features, train_features, heldout_features) -> dict:
    """Nearest-neighbour test of copying (after Carlini et al. 2023 and Somepalli et al. 2023): are the
    samples closer to the training images than fresh images from the same distribution are?

    With ``d(x, S) = min_y ||x - y||`` over the rows of ``S``, samples ``X`` ``[n, D]``, train ``T``
    ``[N, D]`` and held-out ``H`` ``[m, D]`` (images ``[n, C, H, W]`` are flattened):
    ``memorization_ratio = median_x d(x, T) / median_h d(h, T)`` (about 1 for a model that generalizes,
    towards 0 for one that copies) and ``copy_fraction`` the fraction of samples with
    ``d(x, T) < d(x, H)``. A sample from the data distribution, independent of both splits, is nearer
    a training image with probability ``N / (N + m)`` (``copy_fraction_null``; 1/2 for equal splits);
    ``copy_p_value`` is the one-sided binomial p-value of the observed excess over it.

    The distance is taken in the space passed; the pipeline passes pixels (the same scale for all
    three): copying means a near-identical image, which pixel distance measures directly on 8x8 or
    28x28 digits, while the FID classifier's features put two images of one digit close and would
    confuse copying with typicality. Feature space suits large natural images, whose pixel distance
    irrelevant shifts dominate.

    Returns ``dict(memorization_ratio, copy_fraction, copy_fraction_null, copy_p_value,
    median_sample_train, median_heldout_train, n_samples, n_train, n_heldout)``."""
    from scipy.stats import binom

    def flat(name, x):
        t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).to(torch.float64).cpu()
        if t.ndim < 2 or t.shape[0] < 1:
            raise ValueError(f"{name} must be [n, ...] with n >= 1, got shape {tuple(t.shape)}")
        return t.reshape(t.shape[0], -1)

    named = (("samples", sample_features), ("train", train_features), ("held-out", heldout_features))
    x, t, h = (flat(name, v) for name, v in named)
    if not x.shape[1] == t.shape[1] == h.shape[1]:
        raise ValueError(
            f"samples, train and held-out differ in size: {x.shape[1]}, {t.shape[1]}, {h.shape[1]}"
        )
    d_xt, d_xh, d_ht = _nn_distance(x, t), _nn_distance(x, h), _nn_distance(h, t)
    med_x, med_h = float(d_xt.median()), float(d_ht.median())
    if med_h == 0:
        raise ValueError("half the held-out images also appear in the training split; the ratio is undefined")
    n, big_n, m = x.shape[0], t.shape[0], h.shape[0]
    closer = int((d_xt < d_xh).sum())
    null = big_n / (big_n + m)
    return {
        "memorization_ratio": med_x / med_h,
        "copy_fraction": closer / n,
        "copy_fraction_null": null,
        "copy_p_value": float(binom.sf(closer - 1, n, null)),
        "median_sample_train": med_x,
        "median_heldout_train": med_h,
        "n_samples": n,
        "n_train": big_n,
        "n_heldout": m,
    }


# -- Training convergence --------------------------------------------------------------------------


def ema(values, decay: float = 0.9) -> np.ndarray:
    """Exponential moving average of a curve with the start-up bias removed (as Adam's moments):
    ``s_t = decay s_{t-1} + (1 - decay) v_t``, ``s_0 = 0``, returned as ``s_t / (1 - decay^t)``, ``[T]``.
    For plotting noisy loss curves; the EMA of the *weights* is ``callbacks.EMA``."""
    v = np.asarray(values, np.float64).reshape(-1)
    if not 0 <= decay < 1:
        raise ValueError(f"decay={decay!r} must lie in [0, 1)")
    out, s = np.empty_like(v), 0.0
    for i, x in enumerate(v):
        s = decay * s + (1 - decay) * x
        out[i] = s / (1 - decay ** (i + 1))
    return out


def loss_still_falling(
    steps, val_loss, *, fraction: float = 0.01, tail: float = 0.2, level: float = LEVEL
) -> dict:
    """Whether the validation loss still fell over the last ``tail`` of training (steps from
    ``(1 - tail) s_T`` to ``s_T``, ``s_T`` the last step; training starts at step 0).

    A least-squares line ``L(s) = c + k s`` through the tail's points ``(steps, val_loss)`` averages
    out the noise of each evaluation; ``relative_drop = (L(s_0) - L(s_T)) / L(s_0)`` over the window
    ``[s_0, s_T]``. The network is flagged (``loss_still_falling``) when that drop exceeds ``fraction``
    and the slope is negative at one-sided ``level`` (its t bound, ``relative_drop_lo > 0``), so a flat
    noisy curve is not flagged by chance. ``suggested_max_steps``: twice the steps trained
    (``trainer.max_steps``), the setting that would train it longer. The tail needs at least 3
    evaluations (``trainer.val_every_n_steps`` at most ``tail * max_steps / 3``).

    Returns ``dict(loss_still_falling, relative_drop, relative_drop_lo, n_tail, tail_start,
    suggested_max_steps)``."""
    s = np.asarray(steps, np.float64).reshape(-1)
    y = np.asarray(val_loss, np.float64).reshape(-1)
    if s.shape != y.shape or not np.all(np.isfinite(y)) or np.any(np.diff(s) <= 0):
        raise ValueError(
            f"steps {s.shape} and val_loss {y.shape} must be equal-length, finite, steps increasing"
        )
    if not 0 < tail <= 1:
        raise ValueError(f"tail={tail!r} must lie in (0, 1]")
    if fraction < 0:
        raise ValueError(f"fraction={fraction!r} must be >= 0")
    s_end = float(s[-1])
    s0 = (1 - tail) * s_end
    keep = s >= s0
    if keep.sum() < 3:
        raise ValueError(
            f"{int(keep.sum())} validation losses in the last {tail:g} of training (from step {s0:g}); "
            "at least 3 are needed (evaluate more often)"
        )
    coef, cov, dof = _line_fit(s[keep] - s0, y[keep])
    from scipy.stats import t

    k_hi = coef[1] + float(t.ppf(level, dof)) * math.sqrt(cov[1, 1])  # the slope's one-sided bound
    start = coef[0]  # L(s_0)
    span = s_end - s0
    drop = float(-coef[1] * span / start)
    drop_lo = float(-k_hi * span / start)
    return {
        "loss_still_falling": bool(drop > fraction and drop_lo > 0),
        "relative_drop": drop,
        "relative_drop_lo": drop_lo,
        "n_tail": int(keep.sum()),
        "tail_start": s0,
        "suggested_max_steps": int(2 * round(s_end)),
    }


# -- Coverage: the denoiser where sampling starts --------------------------------------------------

COVERAGE_LIMIT = 2.0  # a denoiser erring more than twice a constant predictor's error is untrained there
COVERAGE_STEP = 0.5  # the log-SNR spacing of the coverage profile


@torch.no_grad()
def denoiser_coverage(denoiser, schedule, x0, *, seed: int = 0, limit: float = COVERAGE_LIMIT) -> dict:
    """How well ``denoiser`` (``D(x, t)``) denoises the images ``x0`` (model space, ``[n, ...]``) over the
    noisy half of ``schedule``'s log-SNR range, where sampling starts: at log-SNR ``lam`` the ratio

        E ||D(alpha x0 + sigma eps, t) - x0||^2 / E ||x0 - mean(x0)||^2

    of its error to the constant predictor's (the data mean's, which the ideal denoiser approaches from
    below as ``lam -> -inf``), one ``eps`` for every level. Levels ``lo, lo + COVERAGE_STEP, ...`` up to
    ``min(0, hi)``. A network trained on noise levels that never reach ``lo`` (EDM's log-normal density
    on a schedule that starts at log-SNR -10, say) extrapolates there, and a sampler's first step takes
    that error in whole. Returns ``start_log_snr`` (``lo``), ``start_error_ratio`` (the ratio there),
    ``covered_from_log_snr`` (the noisiest level from which every level of the profile is within
    ``limit``; None where none is), ``covered_from_t`` (its time: the ``t_max`` that would start
    sampling there) and ``profile`` (``{lam: ratio}``)."""
    x0 = torch.as_tensor(x0, dtype=torch.float32)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    baseline = (x0 - x0.mean(0)).square().flatten(1).sum(1).mean()
    lo, hi = schedule.log_snr_range()
    levels = np.append(np.arange(lo, min(0.0, hi), COVERAGE_STEP), min(0.0, hi))
    profile = {}
    for lam in levels:
        t = schedule.t_from_log_snr(torch.full((len(x0),), float(lam), dtype=torch.float64))
        t = t.clamp(schedule.t_min, schedule.t_max).float()
        shape = (-1,) + (1,) * (x0.dim() - 1)
        x = schedule.alpha(t).view(shape) * x0 + schedule.sigma(t).view(shape) * eps
        err = (denoiser(x, t) - x0).square().flatten(1).sum(1).mean()
        profile[round(float(lam), 3)] = float(err / baseline)
    ratios = list(profile.values())
    inside = [i for i in range(len(ratios)) if all(r <= limit for r in ratios[i:])]
    covered = float(levels[inside[0]]) if inside else None
    t_covered = None if covered is None else schedule.t_from_log_snr(torch.tensor(covered).double())
    return {
        "start_log_snr": float(lo),
        "start_error_ratio": ratios[0],
        "covered_from_log_snr": covered,
        "covered_from_t": None if t_covered is None else float(t_covered),
        "profile": profile,
    }


# -- results/diagnostics.json and the regime in words ----------------------------------------------


def network_entry(
    *,
    converged_ode=None,
    converged_sde=None,
    floor: Mapping | None = None,
    copying: Mapping | None = None,
    training: Mapping | None = None,
    coverage: Mapping | None = None,
) -> dict:
    """One network's record in ``results/diagnostics.json`` (under ``networks``): from its converged
    PF-ODE and reverse-SDE rows (with ``fid``, ``fid_lo``, ``fid_hi``), ``floor_at_n``'s,
    ``memorization``'s, ``loss_still_falling``'s and ``denoiser_coverage``'s records; every key is
    present, None where a part is missing; ``{ode,sde}_floor_ratio``: converged FID over the floor."""
    out: dict = {}

    def take(part: Mapping | None, keys: tuple) -> None:
        renamed = {"floor_method": "method", "floor_n": "n", "val_loss_drop": "relative_drop"}
        out.update({k: (part or {}).get(renamed.get(k, k)) for k in keys})

    for kind, row in (("ode", converged_ode), ("sde", converged_sde)):
        out[f"converged_{kind}_fid"] = None if row is None else row.fid
        out[f"converged_{kind}_lo"] = None if row is None else row.fid_lo
        out[f"converged_{kind}_hi"] = None if row is None else row.fid_hi
        out[f"converged_{kind}_row"] = None if row is None else row.key
    take(floor, ("floor_fid", "floor_lo", "floor_hi", "floor_method", "floor_n"))
    for kind in ("ode", "sde"):
        fid, fl = out[f"converged_{kind}_fid"], out["floor_fid"]
        out[f"{kind}_floor_ratio"] = fid / fl if fid is not None and fl else None
    take(copying, ("memorization_ratio", "copy_fraction", "copy_fraction_null", "copy_p_value"))
    take(training, ("loss_still_falling", "val_loss_drop", "suggested_max_steps"))
    take(coverage, ("start_log_snr", "start_error_ratio", "covered_from_log_snr", "covered_from_t"))
    return out


def _num(v) -> str:
    return f"{v:.3g}"


def _converged_text(name: str, e: Mapping) -> str:
    """A network's converged FIDs against the floor ("within the floor's interval": ``lo <= floor_hi``)."""
    parts = []
    for kind, label in (("ode", "PF-ODE"), ("sde", "reverse-SDE")):
        fid, lo, hi = (e.get(f"converged_{kind}_{k}") for k in ("fid", "lo", "hi"))
        if fid is None:
            continue
        text = f"converged {label} FID {_num(fid)}" + ("" if lo is None else f" [{_num(lo)}, {_num(hi)}]")
        ratio = e.get(f"{kind}_floor_ratio")
        if ratio is not None:
            near = lo is not None and lo <= (e.get("floor_hi") or e["floor_fid"])
            text += " (within the floor's interval)" if near else f" ({ratio:.2g}x the floor)"
        parts.append(text)
    return f"{name}: " + ("; ".join(parts) if parts else "no converged solution measured") + "."


def _floor_sentence(nets: Mapping[str, Mapping]) -> list[str]:
    """The real-data floor (one sentence, from the first network that has one)."""
    floors = [e for e in nets.values() if e.get("floor_fid") is not None]
    if not floors:
        return []
    e = floors[0]
    how = {
        "subsample": "held-out images subsampled to that size",
        "reference_split": "training images split off from the reference, corrected for its smaller size",
        "fid_infinity_fit": "extrapolated from held-out subsamples by the 1/n fit (Chong & Forsyth 2020)",
    }.get(e.get("floor_method"), "held-out images")
    return [
        f"Real-data floor at n = {e.get('floor_n')} samples: FID {_num(e['floor_fid'])} "
        f"[{_num(e['floor_lo'])}, {_num(e['floor_hi'])}] ({how}); no network can score below it "
        "except by chance or by copying."
    ]


def _network_error_sentence(nets: Mapping[str, Mapping]) -> list[str]:
    """Network error dominates where every converged FID exceeds twice the floor."""
    ratios = [
        e[f"{k}_floor_ratio"] for e in nets.values() for k in ("ode", "sde") if e.get(f"{k}_floor_ratio")
    ]
    if not ratios or min(ratios) <= 2:
        return []
    return [
        f"Every converged solution is at least {min(ratios):.2g}x the floor: network error dominates, "
        "so solver rankings say how each solver's error combines with the network's, not how close "
        "a network comes to the data."
    ]


def _copying_sentences(nets: Mapping[str, Mapping], alpha: float) -> list[str]:
    """Each network that copies (``copy_p_value < alpha``), else one sentence that none does."""
    copying = [n for n, e in nets.items() if e.get("copy_p_value") is not None and e["copy_p_value"] < alpha]
    measured = [n for n, e in nets.items() if e.get("copy_fraction") is not None]
    lines = [
        f"{name} copies: {nets[name]['copy_fraction']:.0%} of its samples lie nearer a training image than "
        f"any held-out one (chance: {nets[name]['copy_fraction_null']:.0%}), memorization ratio "
        f"{_num(nets[name]['memorization_ratio'])}; its FID near the floor may reflect copying."
        for name in copying
    ]
    if measured and not copying:
        span = sorted({_num(nets[n]["memorization_ratio"]) for n in measured}, key=float)
        ratio = span[0] if len(span) == 1 else f"{span[0]}-{span[-1]}"
        lines.append(
            f"No network copies its training images: no more of its samples lie nearer a training image "
            f"than a held-out one than chance predicts (memorization ratio {ratio}: the samples' median "
            "distance to the training images over the held-out images'; near 0 for copying)."
        )
    return lines


def _training_sentences(nets: Mapping[str, Mapping]) -> list[str]:
    """Each network still training, with the setting that would train it longer; else that none is."""
    falling = [n for n, e in nets.items() if e.get("loss_still_falling")]
    lines = [
        f"{name} is still training: its validation loss fell {nets[name]['val_loss_drop']:.1%} over the "
        f"last fifth; trainer.max_steps={nets[name]['suggested_max_steps']} would train it longer."
        for name in falling
    ]
    if not falling and any(e.get("loss_still_falling") is not None for e in nets.values()):
        lines.append("Every network's validation loss had levelled off over the last fifth of training.")
    return lines


def _coverage_sentences(nets: Mapping[str, Mapping]) -> list[str]:
    """Each network untrained where its sampling starts (``start_error_ratio > COVERAGE_LIMIT``)."""
    lines = []
    for name, e in nets.items():
        if (e.get("start_error_ratio") or 0) <= COVERAGE_LIMIT:
            continue
        covered, schedule = e.get("covered_from_log_snr"), name.split("/")[0]  # a trained network's
        where, later = "nowhere", ""
        if covered is not None:
            where = f"within {COVERAGE_LIMIT:g}x only from log-SNR {covered:.2f}"
            setting = f"schedule.{schedule}.params.t_max={e['covered_from_t']:.4g}"
            later = f", or start sampling there ({setting})"
        ratio = e["start_error_ratio"]
        ratio = f"{ratio:,.0f}" if ratio >= 100 else _num(ratio)
        lines.append(
            f"{name} is untrained where sampling starts: at log-SNR {e['start_log_snr']:.2f} its held-out "
            f"denoising error is {ratio}x the data mean's ({where}). Every row's first step starts there, "
            "and a few-step row's FID measures that extrapolation as much as its solver. To remove it, "
            f"precondition the network (schedule.{schedule}.prediction=edm: an eps network's x0 error is "
            f"its eps error times sigma/alpha), train those noise levels (loss.P_uniform){later}."
        )
    return lines


def _budget_sentences(budgets: Sequence[Mapping]) -> list[str]:
    """Whether a budget's best row beats its own converged solution, and what that does to rankings."""
    budgets = [b for b in budgets if b.get("beats_converged") is not None]
    beating = [b for b in budgets if b["beats_converged"]]
    if beating:
        shown = "; ".join(
            f"NFE <= {b['budget']:g}: {b['row']} {b['vs_converged']:+.3g} "
            f"[{b['vs_converged_lo']:+.3g}, {b['vs_converged_hi']:+.3g}]"
            for b in beating
        )
        return [
            f"At {len(beating)} of {len(budgets)} NFE budgets the best row beats its own network's converged "
            f"solution ({shown}). Error cancellation: such a row is rewarded for how its solver's error "
            "offsets the network's, not for solving the equation accurately, and a more accurate solver "
            "ranks below it."
        ]
    if budgets:
        return [
            f"At none of {len(budgets)} NFE budgets does the best row beat its own network's converged "
            "solution: the top of each ranking is not carried by error cancellation."
        ]
    return []


def regime_sentences(diagnostics: Mapping, *, alpha: float = 1 - LEVEL) -> list[str]:
    """Plain sentences stating the regime of a run, in the order of the parts below, from
    ``diagnostics`` = ``dict(networks={name: network_entry(...)}, budgets=[...])``, ``budgets`` one
    entry per NFE budget with its best row: ``dict(budget, row (its id), vs_converged, vs_converged_lo,
    vs_converged_hi, beats_converged)`` (``report.tables.budget_summary``'s ``best``); a network
    copies where ``copy_p_value < alpha``."""
    nets: Mapping[str, Mapping] = diagnostics.get("networks") or {}
    return [
        *_floor_sentence(nets),
        *(_converged_text(name, e) for name, e in nets.items()),
        *_network_error_sentence(nets),
        *_copying_sentences(nets, alpha),
        *_training_sentences(nets),
        *_coverage_sentences(nets),
        *_budget_sentences(diagnostics.get("budgets") or []),
    ]


# -- The pipeline's record: results/diagnostics.json from the stages' folders ----------------------


def config_partners(rows: Sequence, cfg: Mapping) -> list:
    """``converged_partners`` of ``rows`` under the config ``cfg``: families from the solvers' specs at
    ``sample.options``, the converged SDE from ``sample.converged_sde``."""
    from difflab.solvers.registry import Solvers

    sample = cfg.get("sample") or {}
    sde = sample.get("converged_sde") or {}
    names = [CONVERGED_ODE_SOLVER, *([sde["solver"]] if sde else []), *(r.solver for r in rows)]
    solvers = Solvers.of(names, sample.get("options"))
    families = {n: solvers.family(n) for n in solvers.names}
    return converged_partners(rows, families, sde_solver=sde.get("solver"), sde_steps=sde.get("steps"))


def _stage_floor(inputs: Mapping, n: int, cfg: Mapping) -> dict | None:
    """``floor_at_n`` at ``n`` from the prepare stage's held-out and reference features (None without
    them, or where the data are too few for ``n``)."""
    folder = Path(inputs["features"])
    if not (folder / "heldout_features.npy").is_file():
        return None
    ref = json.loads((folder / "floor.json").read_text())["reference_features"]  # fid.reference_statistics
    ref = torch.load(folder / ref, weights_only=True)["features"]
    held = np.load(folder / "heldout_features.npy")
    try:
        return floor_at_n(ref, held, n, bootstrap=cfg["evaluate"]["bootstrap"], seed=cfg["seed"])
    except ValueError:  # n leaves too few images for a reference: no floor at this n
        return None


def _stage_copying(inputs: Mapping, r) -> dict | None:
    """``memorization`` of row ``r``'s samples in pixels (levels scaled to [0, 1]) against the prepared
    train and held-out splits (None without them)."""
    from difflab.images import load_samples

    data, samples = Path(inputs["data"]), Path(inputs["samples"])
    npz = r and samples / r.solver / str(r.grid) / r.model / f"seed_{r.seed[0]}" / f"{r.stem}.npz"
    if not (npz and npz.is_file() and (data / "meta.json").is_file()):
        return None
    x, top = load_samples(npz), json.loads((data / "meta.json").read_text())["levels"] - 1
    train, held = (np.load(data / f"{split}_images.npy") / top for split in ("train", "heldout"))
    return memorization(x["images"].double() / (x["levels"] - 1), train, held)


def _stage_training(inputs: Mapping, net) -> tuple[dict | None, dict | None]:
    """A network's loss curves (the train stage's ``train_metrics.json``) and ``loss_still_falling``'s
    verdict on them (None without curves or with fewer than 3 validations in the last fifth)."""
    path = Path(net.folder(str(inputs["models"]))) / "train_metrics.json"
    curves = json.loads(path.read_text()).get("curves") if path.is_file() else None
    try:
        return curves, curves and loss_still_falling(curves["val"]["step"], curves["val"]["loss"])
    except ValueError:  # too few validations to judge
        return curves, None


def _stage_coverage(inputs: Mapping, net, seed: int, n_images: int = 256) -> dict | None:
    """``denoiser_coverage`` of a trained network (the train stage's ``model.pt``) on the first
    ``n_images`` held-out images (None for a pretrained entry, or without them)."""
    from difflab.images import from_levels
    from difflab.networks import load_network

    data, folder = Path(inputs["data"]), Path(net.folder(str(inputs["models"])))
    if net.pretrained or not ((folder / "model.pt").is_file() and (data / "heldout_images.npy").is_file()):
        return None
    levels = json.loads((data / "meta.json").read_text())["levels"]
    x0 = from_levels(torch.from_numpy(np.load(data / "heldout_images.npy")[:n_images]), levels)
    D = load_network(folder)
    return denoiser_coverage(D, D.schedule, x0, seed=seed)


def network_diagnostics(seed_rows: Sequence, cfg: Mapping, inputs: Mapping, budgets: Sequence) -> dict:
    """``results/diagnostics.json`` (``networks``, ``budgets``, ``regime``) and the loss ``curves``: per
    network of ``cfg`` (``"<model>/seed_<seed>"``) its ``network_entry`` from its converged rows among
    the per-seed ``seed_rows`` (``difflab.results.Row``; the partners of its own-schedule rows) and the
    ``_stage_*`` records; per NFE budget its best row against its converged solution (``budgets``:
    ``report.tables.budget_summary``'s, each with ``budget`` and ``best``). ``inputs``: the folders
    ``features``, ``data``, ``samples``, ``models``; a part whose files are absent is None."""
    from difflab.networks import network_ids

    scale = ((cfg.get("sample") or {}).get("guidance_scales") or [None])[0]
    floors, nets, curves = {}, {}, {}
    for net in network_ids(cfg):
        mine = [
            r for r in seed_rows if (r.model, r.seed[0], r.guidance_scale) == (net.model, net.seed, scale)
        ]
        partners = [p for p in config_partners([r for r in mine if r.on_diagonal], cfg) if p is not None]
        ode = next((p for p in partners if p.solver == CONVERGED_ODE_SOLVER), None)
        sde = next((p for p in partners if p.solver != CONVERGED_ODE_SOLVER), None)
        n = (ode or mine[0]).n_samples
        floors[n] = floors[n] if n in floors else _stage_floor(inputs, n, cfg)
        name = f"{net.model}/seed_{net.seed}"
        curves[name], training = _stage_training(inputs, net)
        parts = {"floor": floors[n], "copying": _stage_copying(inputs, ode), "training": training,
                 "coverage": _stage_coverage(inputs, net, cfg["seed"])}  # fmt: skip
        nets[name] = network_entry(converged_ode=ode, converged_sde=sde, **parts)
    shown = [{"budget": s.budget, "row": s.best.key, **{c: getattr(s.best, c) for c in VS_COLUMNS}}
             for s in budgets if s.best is not None]  # fmt: skip
    out = {"networks": nets, "budgets": shown}
    return {**out, "regime": regime_sentences(out), "curves": curves}
