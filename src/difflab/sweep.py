"""The sweep of a sample stage: one solver on one time grid, for one network, under every sampling-time
schedule, guidance scale and step count, with each row's measurements.

A network trained on one schedule is sampled under another through ``reparametrize``; every
sampling schedule of a network is restricted to the one log-SNR range that they and its training
schedule share, so its rows integrate the same noise levels. Besides NFE and time, each row records
``solver_error`` (the mean distance of its first samples to the network's adaptive reference from the
same noise, deterministic solvers only) and, for schedule-invariant solvers, ``invariance_error``: the
largest difference of its first ``invariance_samples`` samples from those under every other schedule
(the other sampling schedules' rows; with one sampling schedule, redrawn under every schedule of the
config at the first step count).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from difflab.images import save_grid, save_samples
from difflab.results import ADAPTIVE_STEPS, Row
from difflab.sampling import Conditioning, Draw, SampleResult, generate

CONVERGED_SDE = "_converged"  # samples/<this>/: every network's converged reverse-SDE rows


def _restricted(cfg: dict, trained, names) -> dict:
    """``{name: schedule}`` for ``names`` (``trained`` under its own name, the others from the config),
    restricted to the log-SNR range all of them and ``trained`` cover (``ValueError`` if none)."""
    from difflab.schedules import common_log_snr_range, schedule_from_config

    names = list(dict.fromkeys(names))
    built = {name: trained if name == trained.name else schedule_from_config(cfg, name) for name in names}
    lo, hi = common_log_snr_range(trained, *built.values())
    return {name: s.with_log_snr_range(lo, hi) for name, s in built.items()}


def _schedule(cfg: dict, trained):
    """A network's training schedule: a ``Schedule`` (a pretrained network's, or a loaded one's), or
    the name of a config schedule."""
    from difflab.schedules import schedule_from_config

    return schedule_from_config(cfg, trained) if isinstance(trained, str) else trained


def sampling_schedules(cfg: dict, trained) -> dict:
    """The sampling-time schedules ``{name: Schedule}`` of a network trained on ``trained`` (a
    ``Schedule``, or a config schedule's name) from ``sample.schedules``: null gives the training
    schedule alone, over its own interval; a list gives the listed schedules, ``_restricted``."""
    trained = _schedule(cfg, trained)
    names = cfg["sample"]["schedules"]
    if names is None:
        return {trained.name: trained}
    return _restricted(cfg, trained, names)


def invariance_schedules(cfg: dict, trained) -> dict:
    """The schedules a schedule-invariant solver's rows are redrawn under: the training schedule first,
    then every other trained and sampling schedule of the config, ``_restricted``."""
    trained = _schedule(cfg, trained)
    names = [trained.name, *cfg["schedules"], *(cfg["sample"]["schedules"] or ())]
    return _restricted(cfg, trained, names)


@dataclass(frozen=True)
class Network:
    """One network to sample: its name (``model``), training schedule and seed, its denoiser, the
    sampling schedules (``targets``, ``{name: Schedule}``), where the invariance is checked by
    redrawing the schedules to redraw under (``redraw``), its reference samples by guidance scale
    (``references``, float ``[m, ...]``; empty: no solver error) and, on a fitted grid, the times
    fitted to it under each sampling schedule by step count (``grids[name][steps]``,
    ``solvers.fitted.load_fitted``; empty: the sweep's named grid)."""

    model: str
    schedule: str
    seed: int
    denoiser: Callable
    targets: Mapping
    redraw: Mapping | None = None
    references: Mapping = field(default_factory=dict)
    grids: Mapping = field(default_factory=dict)


@dataclass(frozen=True)
class Sweep:
    """What one sample stage sweeps for every network: the solver's ``spec`` and checked ``options``,
    the ``grid``, the step counts (``[0]`` for an adaptive solver), the guidance scales, the draw
    (samples, shape, seed, batch, device), the image ``levels`` and how many samples the invariance
    check compares (0: none)."""

    spec: object
    options: dict
    grid: str
    steps: tuple[int, ...]
    guidance_scales: tuple
    draw: Draw
    levels: int = 256
    invariance_samples: int = 0

    @property
    def step_counts(self) -> tuple[int, ...]:
        return (ADAPTIVE_STEPS,) if self.spec.adaptive else tuple(self.steps)


def draw_samples(
    net: Network, sweep: Sweep, name: str, steps: int, n: int, cond, *, redraw=False
) -> SampleResult:
    """``n`` samples of ``net`` served under its sampling schedule ``name`` (``reparametrize``): from
    ``net.targets``, or with ``redraw`` from ``net.redraw`` (the invariance check's schedules, restricted
    to their common log-SNR range, which a row's own draw must not take)."""
    from difflab.parametrization import reparametrize

    target = (net.redraw if redraw else net.targets)[name]
    D = reparametrize(net.denoiser, net.denoiser.schedule, target)
    draw = Draw(n, sweep.draw.shape, sweep.draw.seed, sweep.draw.batch_size, sweep.draw.device)
    grid = net.grids[name][steps] if net.grids else sweep.grid
    return generate(D, target, sweep.spec.name, steps, draw, grid=grid, cond=cond, options=sweep.options)


def invariance_errors(pool: Mapping[str, torch.Tensor]) -> dict[str, float | None]:
    """For each schedule's samples in ``pool``, the largest ``|dx|`` from the same samples under every
    other schedule (``None`` with only one schedule)."""
    out = {}
    for name, x in pool.items():
        others = [v for other, v in pool.items() if other != name]
        out[name] = max(float((v - x).abs().max()) for v in others) if others else None
    return out


def sweep_network(net: Network, sweep: Sweep, out: Path) -> list[Row]:
    """Every row of one network: its samples (``out/<stem>.npz`` and ``.png``) under every sampling
    schedule, guidance scale and step count, and the rows describing them."""
    rows = []
    for w in sweep.guidance_scales:
        cond = Conditioning.balanced(net.denoiser, sweep.draw.n, w)
        for steps in sweep.step_counts:
            rows += _sweep_steps(net, sweep, w, steps, cond, out)
    return rows


def _sweep_steps(net: Network, sweep: Sweep, w, steps: int, cond, out: Path) -> list[Row]:
    """The rows of one guidance scale and step count, one per sampling schedule."""
    from difflab.metrics.solver_error import solver_error

    # a fitted grid holds times, which mean other noise levels under another schedule
    invariant = sweep.spec.schedule_invariant and not net.grids
    n_check = min(sweep.invariance_samples, sweep.draw.n) if invariant else 0
    reference = None if sweep.spec.is_stochastic(sweep.options) else net.references.get(w)
    rows, firsts = [], {}
    for name in net.targets:
        result = draw_samples(net, sweep, name, steps, sweep.draw.n, cond)
        row = Row(net.schedule, sweep.spec.name, steps, name, sweep.grid, w, (net.seed,), net.model)
        images = save_samples(out / f"{row.stem}.npz", result, levels=sweep.levels)
        save_grid(out / f"{row.stem}.png", images[:64], 8, levels=sweep.levels, min_side=256)
        err = None if reference is None else solver_error(result.x[: len(reference)].numpy(), reference)
        firsts[name] = result.x[:n_check]
        timing = {"nfe": float(result.nfe), "seconds_per_sample": float(result.seconds_per_sample)}
        rows.append(row.replace(**timing, solver_error=err, n_samples=sweep.draw.n))
        print(f"{net.model} seed {net.seed} -> {name} {row.key}: nfe={result.nfe:.0f} error={err}")
    pool = _invariance_pool(net, sweep, w, steps, firsts) if n_check else None
    if pool is None:
        return rows
    errors = invariance_errors(pool)
    return [r.replace(invariance_error=errors[r.sample_schedule]) for r in rows]


def _invariance_pool(net: Network, sweep: Sweep, w, steps: int, firsts: dict) -> dict | None:
    """The samples the invariance is checked on: every sampling schedule's first samples or, with one
    sampling schedule, samples redrawn under every schedule of ``net.redraw`` at the first step count
    only (the invariance does not depend on it; the redraws of small batches cost as much per step as
    a full row)."""
    if net.redraw is None:
        return firsts
    if steps != sweep.step_counts[0]:
        return None
    n = min(sweep.invariance_samples, sweep.draw.n)
    cond = Conditioning.balanced(net.denoiser, n, w)
    return {name: draw_samples(net, sweep, name, steps, n, cond, redraw=True).x for name in net.redraw}


def load_references(folder: str | Path, model: str, schedule: str, guidance_scales: Sequence) -> dict:
    """The reference stage's samples of one network (``model``, trained on ``schedule``) by guidance
    scale (float ``x`` ``[m, ...]``)."""
    from difflab.images import load_samples

    stems = {w: reference_row(model, schedule, w).stem for w in guidance_scales}
    return {w: np.asarray(load_samples(Path(folder) / f"{stem}.npz")["x"]) for w, stem in stems.items()}


def reference_row(model: str, schedule: str, guidance_scale=None) -> Row:
    """The identity of a network's reference solution (rk45 under its training schedule): its file
    ``<stem>.npz`` in the reference stage's folder."""
    return Row(schedule, "rk45", ADAPTIVE_STEPS, schedule, guidance_scale=guidance_scale, model=model)


def load_network_for(cfg: dict, net_id, sweep: Sweep, *, models="models", references="references") -> Network:
    """The ``Network`` a sample stage sweeps for ``net_id`` (``difflab.networks.NetworkId``): its
    denoiser from ``models``, its sampling schedules, the schedules the invariance is redrawn under
    (schedule-invariant solvers with one sampling schedule), its references (deterministic solvers,
    ``sample.solver_error_samples`` > 0) and, on a fitted grid (``sample.fitted_grids``), the times
    fitted to it (``grids/<solver>/<grid>/<model>/seed_<seed>/grid.json``) mapped onto each sampling
    schedule."""
    from difflab.networks import load_network
    from difflab.solvers.fitted import FIT_METHODS, load_fitted

    D = load_network(net_id.folder(models), sweep.draw.device)
    trained = D.schedule
    targets = sampling_schedules(cfg, trained)
    fitted = sweep.grid in FIT_METHODS
    check = sweep.spec.schedule_invariant and sweep.invariance_samples > 0 and not fitted
    redraw = invariance_schedules(cfg, trained) if check and len(targets) < 2 else None
    deterministic = not sweep.spec.is_stochastic(sweep.options)
    refs = {}
    if deterministic and cfg["sample"]["solver_error_samples"] > 0:
        refs = load_references(net_id.folder(references), net_id.model, trained.name, sweep.guidance_scales)
    grids = {}
    if fitted:
        path = f"{net_id.folder(f'grids/{sweep.spec.name}/{sweep.grid}')}/grid.json"
        grids = {name: load_fitted(path, schedule=target) for name, target in targets.items()}
    return Network(net_id.model, trained.name, net_id.seed, D, targets, redraw, refs, grids)
