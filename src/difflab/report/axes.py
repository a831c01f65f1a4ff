"""The comparison's other axes computed from rows: schedule invariance (``invariance_marks``), every
trained network under every sampling schedule (``cross_schedules``), the time grid (``grid_effect``)
and the guidance scale (``best_scales``, Ho & Salimans 2022: ``D_w = D_u + w (D_c - D_u)``).

A schedule enters a comparison through training and through sampling: a solver that steps in t sees
the schedule's parametrisation of time, one that steps in log-SNR or in EDM's variables does not (for
the same exact denoiser its samples are the same under every schedule; ``invariance_error`` measures
it on the trained networks)."""

from __future__ import annotations

import math
from collections import namedtuple
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from difflab.metrics.paired import Difference, Pairing
from difflab.report.tables import group_by
from difflab.results import ADAPTIVE_STEPS, Row
from difflab.solvers import GRIDS
from difflab.solvers.registry import Solvers

# Largest max |dx| (images in [-1, 1]) that still counts as "the same samples": an eighth of one
# 8-bit level (2/255), far below a real dependence on the schedule (0.9 to 3.4 on a grid uniform in
# t). On CPU the samples of an untrained float32 network under two schedules differ by 1e-15 to 1e-12
# (float64 round-off in the solver); cuDNN's TF32 convolutions may flip a last-bit rounding on a GPU.
INVARIANCE_TOL = 1e-3
IDENTICAL, NOT_IDENTICAL, NOT_MEASURED = "identical within tol", "NOT identical", "not measured"
BREAK_FACTOR = 2.0  # a guidance curve breaks where FID at its largest w exceeds this times its lowest
FEW_SOLVERS = 4  # up to this many solvers per guidance panel each gets a line; more: the best per group

Invariance = namedtuple("Invariance", "solver grid group n_rows n_measured n_above max_error worst mark")
CrossPanel = namedtuple("CrossPanel", "solver steps nfe grid guidance_scale train sample fid cells")
GridPanel = namedtuple("GridPanel", "group solver schedule guidance_scale lines")


def _in_order(values, first: Sequence = ()) -> list:
    values = list(dict.fromkeys(values))
    return [v for v in first if v in values] + [v for v in values if v not in first]


def _finite(v) -> bool:
    return v is not None and math.isfinite(float(v))


def _finite_or_inf(v: float | None) -> float:
    """``v``, or infinity where it is missing or not finite (ranks as the worst)."""
    return v if _finite(v) else math.inf


# -- schedule invariance ---------------------------------------------------------------------------
def invariance_marks(
    rows: Sequence[Row], solvers: Solvers, tol: float = INVARIANCE_TOL
) -> list[tuple[Row, str]]:
    """The rows of schedule-invariant solvers with their mark: ``invariance_error`` (the largest
    ``|dx|`` between a network's samples under this sampling schedule and under every other, same
    noise) within ``tol``, above it or not finite, or not measured."""
    out = []
    for r in rows:
        if r.solver in solvers.names and solvers.spec(r.solver).schedule_invariant:
            err = r.invariance_error
            same = err is not None and math.isfinite(err) and err <= tol
            out.append((r, NOT_MEASURED if err is None else IDENTICAL if same else NOT_IDENTICAL))
    return out


def invariance_by_solver(marks: Sequence[tuple[Row, str]], solvers: Solvers) -> list[Invariance]:
    """One summary per solver and grid (a grid uniform in t puts its times at schedule-dependent
    log-SNRs): rows, rows measured, above tol, the largest error, its row's key and the mark."""
    out = []
    keys = dict.fromkeys((r.solver, r.grid) for r, _ in marks)
    order = {g: i for i, g in enumerate(GRIDS)}
    for name, grid in sorted(keys, key=lambda k: (solvers.names.index(k[0]), order.get(k[1], len(order)))):
        mine = [(r, m) for r, m in marks if (r.solver, r.grid) == (name, grid)]
        measured = [(r, m) for r, m in mine if m != NOT_MEASURED]
        worst = max(measured, key=lambda rm: _finite_or_inf(rm[0].invariance_error), default=(None, None))[0]
        above = sum(m == NOT_IDENTICAL for _, m in measured)
        mark = NOT_MEASURED if not measured else NOT_IDENTICAL if above else IDENTICAL
        top = (None, None) if worst is None else (worst.invariance_error, worst.key)
        out.append(Invariance(name, grid, solvers.group(name), len(mine), len(measured), above, *top, mark))
    return out


# -- t-stepping solvers under every sampling schedule ----------------------------------------------
def guidance_slice(rows: Sequence[Row]) -> tuple[list[Row], float | None]:
    """The unguided rows, or those at the smallest guidance scale where every row is guided."""
    scales = {r.guidance_scale for r in rows}
    w = None if None in scales or not scales else min(scales)
    return [r for r in rows if r.guidance_scale == w], w


def _main_grid(rows: Sequence[Row]) -> str | None:
    """The grid with the most rows (ties: ``GRIDS`` order)."""
    grids = [r.grid for r in rows]
    order = {g: i for i, g in enumerate(GRIDS)}
    return min(set(grids), key=lambda g: (-grids.count(g), order.get(g, len(order)), str(g)))


def _panel_steps(mine: Sequence[Row], nfe: float | None) -> int:
    """The step count most cells hold (ties: the middle, the lower of two, or that of NFE nearest ``nfe``)."""
    cells: dict[int, set] = {}
    for r in mine:
        cells.setdefault(r.steps, set()).add((r.schedule, r.sample_schedule))
    most = max(len(c) for c in cells.values())
    candidates = sorted(k for k, c in cells.items() if len(c) == most)
    if nfe is None:
        return candidates[(len(candidates) - 1) // 2]
    nfe_of = {r.steps: r.nfe for r in mine}
    return min(candidates, key=lambda k: (abs(nfe_of[k] - nfe), k))


def cross_schedules(rows: Sequence[Row], solvers: Solvers, nfe: float | None = None) -> list[dict]:
    """One panel per t-stepping fixed-step solver with rows off the diagonal: the FID of every
    training schedule (``train``) under every sampling schedule (``sample``) at one step count
    (``_panel_steps``), on its most common grid, unguided where there are unguided rows; ``fid``
    ``[n_train][n_sample]`` (nan where missing), ``cells`` ``{(train, sample): row}``."""
    pool, w = guidance_slice(rows)
    panels = []
    for name in solvers.names:
        spec = solvers.spec(name)
        mine = [r for r in pool if r.solver == name and r.steps != ADAPTIVE_STEPS]
        if spec.schedule_invariant or spec.adaptive or all(r.on_diagonal for r in mine):
            continue
        grid = _main_grid(mine)
        mine = [r for r in mine if r.grid == grid]
        steps = _panel_steps(mine, nfe)
        cells = {(r.schedule, r.sample_schedule): r for r in mine if r.steps == steps}
        train = _in_order(r.schedule for r in mine)
        sample = _in_order((r.sample_schedule for r in mine), train)
        fid = [[cells[(a, b)].fid if (a, b) in cells else math.nan for b in sample] for a in train]
        nfe_k = next(iter(cells.values())).nfe
        panels.append(CrossPanel(name, steps, nfe_k, grid, w, train, sample, fid, cells))
    return panels


# -- the time grid ---------------------------------------------------------------------------------
def grid_effect(rows: Sequence[Row], solvers: Solvers) -> list[dict]:
    """One panel per solver group with a solver run on two grids or more: the group's best solver
    (lowest mean FID over its diagonal rows) on its best training schedule (the same rule), one line
    per grid (``lines``: grid -> rows by NFE); [] with one grid."""
    pool, w = guidance_slice([r for r in rows if r.on_diagonal])
    if len({r.grid for r in pool}) < 2:
        return []
    panels = []
    for group in dict.fromkeys(solvers.group(n) for n in solvers.names):
        names = [n for n in solvers.names if solvers.group(n) == group]
        names = [n for n in names if len({r.grid for r in pool if r.solver == n}) >= 2]
        if not names:
            continue
        solver = min(names, key=lambda n: np.mean([r.fid for r in pool if r.solver == n]))
        mine = [r for r in pool if r.solver == solver]
        schedule = min(_in_order(r.schedule for r in mine),
                       key=lambda s: np.mean([r.fid for r in mine if r.schedule == s]))  # fmt: skip
        mine = sorted((r for r in mine if r.schedule == schedule), key=lambda r: r.nfe)
        lines = {g: [r for r in mine if r.grid == g] for g in _in_order((r.grid for r in mine), GRIDS)}
        panels.append(GridPanel(group, solver, schedule, w, lines))
    return panels


# -- guidance --------------------------------------------------------------------------------------
def guided_rows(rows: Sequence[Row]) -> list[Row]:
    return [r for r in rows if r.guidance_scale is not None]


@dataclass(frozen=True)
class Curve:
    """Diagonal guided rows of one ``(schedule, solver, steps, grid)`` by increasing w: the row of
    lowest finite FID (``best``, ties: the smaller w), the next-best (``runner``) and the paired
    ``FID(runner) - FID(best)``."""

    rows: tuple[Row, ...]
    best: Row | None
    runner: Row | None
    diff: Difference | None

    @property
    def breaks(self) -> bool:
        """FID at the largest w above ``BREAK_FACTOR`` times the lowest, or not finite."""
        top = self.rows[-1]
        return self.best is None or (
            top is not self.best and not (_finite(top.fid) and top.fid <= BREAK_FACTOR * self.best.fid)
        )


@dataclass(frozen=True)
class Guided:
    """A training schedule's guidance curves and its lowest-FID one (ties: fewer NFE; None: no finite FID)."""

    schedule: str
    best: Curve | None
    curves: tuple[Curve, ...]


def _curve(rows: list[Row], pairing: Pairing) -> Curve:
    rows = sorted(rows, key=lambda r: r.guidance_scale)
    ranked = sorted((r for r in rows if _finite(r.fid)), key=lambda r: (r.fid, r.guidance_scale))
    best, runner = (ranked + [None, None])[:2]
    return Curve(tuple(rows), best, runner, None if runner is None else pairing.diff(runner, best))


def best_scales(rows: Sequence[Row], pairing: Pairing) -> list[Guided]:
    """Per training schedule (in the rows' order) its curves over w (diagonal guided rows only), the best."""
    diagonal = [r for r in guided_rows(rows) if r.on_diagonal]
    groups = group_by(diagonal, lambda r: (r.schedule, r.solver, r.steps, r.grid))
    by_schedule = group_by((_curve(g, pairing) for g in groups.values()), lambda c: c.rows[0].schedule)
    out = []
    for schedule, curves in by_schedule.items():
        finite = [c for c in curves if c.best is not None]
        best = min(finite, key=lambda c: (c.best.fid, _finite_or_inf(c.best.nfe)), default=None)
        out.append(Guided(schedule, best, tuple(curves)))
    return out


def drawn_curves(guided: Guided, solvers: Solvers) -> dict[str, list[Row]]:
    """The curves one guidance panel draws, solver -> rows by w with a finite FID and class accuracy:
    each solver at its largest fixed step count (adaptive: its one), at the grid of lowest FID; with
    more than ``FEW_SOLVERS`` solvers only the lowest-FID solver of each group."""
    drawable = ([r for r in c.rows if _finite(r.fid) and _finite(r.class_accuracy)] for c in guided.curves)
    by_solver = group_by((pts for pts in drawable if pts), lambda pts: pts[0].solver)
    chosen = {}
    for solver, cands in by_solver.items():
        fixed = [pts[0].steps for pts in cands if pts[0].steps != ADAPTIVE_STEPS]
        steps = max(fixed) if fixed else ADAPTIVE_STEPS
        chosen[solver] = min((p for p in cands if p[0].steps == steps), key=lambda p: min(r.fid for r in p))
    chosen = {n: chosen[n] for n in _in_order(chosen, solvers.names)}
    if len(chosen) <= FEW_SOLVERS:
        return chosen
    fid = {n: min(r.fid for r in pts) for n, pts in chosen.items()}
    keep = [min((m for m in chosen if solvers.group(m) == solvers.group(n)), key=fid.get) for n in chosen]
    return {n: pts for n, pts in chosen.items() if n in keep}
