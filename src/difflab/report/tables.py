"""The comparison computed from rows (one per setting over its training seeds,
``results.aggregate_seeds``).

Solvers (``difflab.solvers.registry.Solvers``) are compared at equal NFE (denoiser evaluations), not
at equal steps. Every row draws sample ``i`` from the same noise, so two rows are compared by the
paired bootstrap of their difference (``Pairing``, from ``difflab.metrics.paired``): a row *cannot be
separated* from another when the paired 95% interval of ``FID(a) - FID(b)`` contains 0. With several
training seeds a row is the mean over its seeds and seed ``k`` of one row is paired with seed ``k`` of
the other (the same noise)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

from difflab.metrics.paired import Difference, Pairing, with_holm
from difflab.results import ADAPTIVE_STEPS, Row
from difflab.solvers.registry import Solvers


def group_by(items: Iterable, key: Callable) -> dict:
    """``key(item) -> [items]``, the keys in the order first seen."""
    groups: dict = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


# -- the main slice, budgets, frontier -------------------------------------------------------------
def main_slice(rows: Sequence[Row], sample: Mapping) -> list[Row]:
    """The rows of the schedule x solver x steps comparison: every network under its own training
    schedule, on the first of ``sample["grids"]`` and at the first of ``sample["guidance_scales"]``;
    the other values of those axes have their own sections."""
    grid = (sample.get("grids") or [None])[0]
    scale = (sample.get("guidance_scales") or [None])[0]
    on_grid = [r for r in rows if grid is None or r.grid in (None, grid)]
    return [r for r in on_grid if r.on_diagonal and r.guidance_scale == scale]


def pareto_frontier(rows: Sequence[Row]) -> list[Row]:
    """Rows no other row dominates (``nfe <=`` and ``fid <=``, one strictly), by increasing NFE."""

    def dominates(q, r):
        return q.nfe <= r.nfe and q.fid <= r.fid and (q.nfe < r.nfe or q.fid < r.fid)

    front = [r for r in rows if not any(q is not r and dominates(q, r) for q in rows)]
    return sorted(front, key=lambda r: (r.nfe, r.fid))


def plausible_frontier(rows: Sequence[Row], pairing: Pairing) -> list[Row]:
    """Rows no row of ``nfe <=`` theirs beats by a paired 95% interval above 0: what the intervals keep."""
    keep = []
    for r in rows:
        lo = pairing.against(r)["diff_lo"]  # FID(r) - FID(q), lower bound, by q
        if not any(q is not r and q.nfe <= r.nfe and lo[pairing.index[q.key]] > 0 for q in rows):
            keep.append(r)
    return sorted(keep, key=lambda r: (r.nfe, r.fid))


def default_budgets(rows: Sequence[Row], steps: Sequence[int]) -> list[float]:
    """``K + 1`` for each configured step count K (one evaluation per step and the final denoising)
    and the largest NFE in the table (no limit)."""
    budgets = sorted({int(k) + 1 for k in steps})
    top = max((r.nfe for r in rows), default=0)
    if not budgets or top > budgets[-1]:
        budgets.append(math.ceil(top))
    return budgets


@dataclass(frozen=True)
class Budget:
    """One NFE budget: its best row (lowest FID among ``nfe <= budget``), every other row there
    against it (``others``, by FID) and how many rows it admits."""

    budget: float
    best: Row | None
    others: tuple[Difference, ...] = ()
    n_candidates: int = 0

    @property
    def tied(self) -> list[Row]:
        """The rows the paired test cannot separate from the best."""
        return [d.a for d in self.others if not d.resolved]


def budget_summary(rows: Sequence[Row], budgets: Sequence[float], pairing: Pairing) -> list[Budget]:
    """Per budget the lowest FID among the rows with ``nfe <= budget`` and every other row against it."""
    out = []
    for b in budgets:
        cands = [r for r in rows if r.nfe <= b]
        if not cands:
            out.append(Budget(b, None))
            continue
        best = min(cands, key=lambda r: (r.fid, r.nfe))
        others = sorted((r for r in cands if r is not best), key=lambda r: r.fid)
        out.append(Budget(b, best, tuple(pairing.diff(r, best) for r in others), len(cands)))
    return out


# -- schedules against each other ------------------------------------------------------------------
@dataclass(frozen=True)
class Matrix:
    """Per fixed-step ODE solver (``solvers``: ``(name, steps, nfe)``) the paired difference of every
    two schedules (``cells``, Holm over all of them) at NFE <= ``budget``."""

    budget: float
    schedules: tuple[str, ...]
    solvers: tuple[tuple[str, int, float], ...]
    cells: tuple[Difference, ...]


def matrix_budget(budgets: Sequence[float]) -> float:
    """The NFE budget of the schedule matrix: the middle one of the reported budgets."""
    return budgets[(len(budgets) - 1) // 2]


def schedule_matrix(rows: Sequence[Row], pairing: Pairing, budget: float, solvers: Solvers) -> Matrix:
    """For every fixed-step ODE solver at its largest step count with ``nfe <= budget`` held by every
    schedule, ``FID(s1) - FID(s2)`` of every two schedules (in the rows' order), Holm over them all."""
    schedules = list(dict.fromkeys(r.schedule for r in rows))
    by_key = {(r.schedule, r.solver, r.steps): r for r in rows}
    shown, cells = [], []
    for name in filter(solvers.fixed_step_ode, solvers.names):
        present = [s for s in schedules if any(r.solver == name and r.schedule == s for r in rows)]
        mine = [r for r in rows if r.solver == name and r.nfe <= budget]
        steps = [r.steps for r in mine if all((s, name, r.steps) in by_key for s in present)]
        if len(present) < 2 or not steps:
            continue
        k = max(steps, key=lambda st: (by_key[(present[0], name, st)].nfe, st))
        shown.append((name, k, by_key[(present[0], name, k)].nfe))
        cells += [pairing.diff(by_key[a, name, k], by_key[b, name, k]) for a, b in combinations(present, 2)]
    return Matrix(budget, tuple(schedules), tuple(shown), tuple(with_holm(cells)))


def surviving_differences(rows: Sequence[Row], pairing: Pairing, solvers: Solvers) -> list[Difference]:
    """For each fixed-step ODE solver, step count, grid and guidance scale, on the diagonal, every two
    training schedules' paired difference (over the seeds: it counts training noise), Holm over all."""
    settings: dict[tuple, list[Row]] = {}
    for r in rows:
        if solvers.fixed_step_ode(r.solver) and r.steps != ADAPTIVE_STEPS and r.on_diagonal:
            settings.setdefault((r.solver, r.steps, r.grid, r.guidance_scale), []).append(r)
    order = list(dict.fromkeys(r.schedule for r in rows))
    diffs = [pairing.diff(a, b) for group in settings.values()
             for a, b in combinations(sorted(group, key=lambda r: order.index(r.schedule)), 2)]  # fmt: skip
    return with_holm(diffs)


# -- paired.csv ------------------------------------------------------------------------------------
PAIRED_COLUMNS = tuple("row_a row_b fid_diff diff_lo diff_hi significant comparison p_value p_holm".split())


def paired_records(summary: Sequence[Budget], matrix: Matrix) -> list[dict]:
    """The pairs the report shows as ``PAIRED_COLUMNS`` records (``results/paired.csv``, written by
    ``results.records_csv``): per budget every other row against the best (``significant``: the 95%
    interval excludes 0), then the schedule matrix (Holm)."""
    labelled = [(f"nfe<={s.budget:.0f} vs best", d) for s in summary for d in s.others]
    label = f"schedules at nfe<={matrix.budget:.0f} (Holm over {len(matrix.cells)})"
    labelled += [(label, d) for d in matrix.cells]
    values = [(d.a.key, d.b.key, d.fid_diff, d.diff_lo, d.diff_hi, d.significant, c, d.p_value, d.p_holm)
              for c, d in labelled]  # fmt: skip
    return [dict(zip(PAIRED_COLUMNS, v)) for v in values]
