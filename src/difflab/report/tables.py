"""The comparison computed from rows (one per setting over its training seeds,
``results.aggregate_seeds``): the one pairing, budgets, frontier, the schedule matrix, the differences
that survive training noise, paired.csv and the nested metrics (the NLL: ``metrics.nll``).

Solvers (``solvers.registry.Solvers``) are compared at equal NFE (denoiser evaluations), not at equal
steps. Every row draws sample ``i`` from the same noise, so two rows are compared by the paired
bootstrap of their difference (``Pairing``, from ``difflab.metrics.paired``): a row *cannot be
separated* from another when the paired 95% interval of ``FID(a) - FID(b)`` contains 0. With several
training seeds a row is the mean over its seeds and seed ``k`` of one row is paired with seed ``k`` of
the other (the same noise).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import combinations

import numpy as np

from difflab.metrics.nll import nll_by_schedule, nll_from_rows, with_nll  # noqa: F401  (build.py, pipeline/report.py)
from difflab.metrics.paired import holm, holm_adjusted, seed_combined_difference, seed_matrix_difference
from difflab.results import ADAPTIVE_STEPS, CSV_COLUMNS, Row, _cell
from difflab.solvers.registry import Solvers

ALPHA = 0.05  # family-wise error of the Holm-corrected families


# -- the pairing -----------------------------------------------------------------------------------
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
    ``metrics.paired.seed_combined_difference`` (seed k of a against seed k of b; one seed: the
    plain paired difference), ``against(a)`` the same against every row at once."""

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
    """Rows that no row with ``nfe <=`` theirs beats by a paired 95% interval above 0: the frontier
    the intervals cannot rule out."""
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
    diffs = [
        pairing.diff(a, b)
        for group in settings.values()
        for a, b in combinations(sorted(group, key=lambda r: order.index(r.schedule)), 2)
    ]
    return with_holm(diffs)


# -- paired.csv ------------------------------------------------------------------------------------
PAIRED_COLUMNS = tuple("row_a row_b fid_diff diff_lo diff_hi significant comparison p_value p_holm".split())


def paired_records(summary: Sequence[Budget], matrix: Matrix) -> list[dict]:
    """The pairs the report shows as ``PAIRED_COLUMNS`` records: per budget every other row against
    the best (``significant``: the 95% interval excludes 0), then the schedule matrix (Holm)."""
    labelled = [(f"nfe<={s.budget:.0f} vs best", d) for s in summary for d in s.others]
    label = f"schedules at nfe<={matrix.budget:.0f} (Holm over {len(matrix.cells)})"
    labelled += [(label, d) for d in matrix.cells]
    values = [(d.a.key, d.b.key, d.fid_diff, d.diff_lo, d.diff_hi, d.significant, c, d.p_value, d.p_holm)
              for c, d in labelled]  # fmt: skip
    return [dict(zip(PAIRED_COLUMNS, v)) for v in values]


def paired_csv(records: Sequence[dict]) -> str:
    """``results/paired.csv``: ``PAIRED_COLUMNS``, cells as ``comparison.csv`` writes them."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(
        [PAIRED_COLUMNS, *([_cell(p[c]) for c in PAIRED_COLUMNS] for p in records)]
    )
    return buf.getvalue()


# -- metrics.json ----------------------------------------------------------------------------------
def nested_metrics(rows: Sequence[Row], nll: Mapping[str, dict]) -> dict:
    """``model -> [sample=S ->] [grid=G ->] [w=W ->] solver -> steps -> {nfe, fid, ...}`` for ``dvc
    metrics show`` (the network: its training schedule for a trained one; an axis level only where the
    rows take several values on it; adaptive steps: ``adaptive``), plus ``model -> nll_bpd``."""
    axes = [
        lambda r: f"sample={r.sample_schedule}",
        lambda r: f"grid={r.grid}",
        lambda r: "w=none" if r.guidance_scale is None else f"w={r.guidance_scale:g}",
    ]
    n_models = len({r.model for r in rows})
    levels = [axes[0]] if len({(r.model, axes[0](r)) for r in rows}) > n_models else []
    levels += [a for a in axes[1:] if len({a(r) for r in rows}) > 1]
    out: dict = {}
    for r in rows:
        node = out.setdefault(r.model, {})
        for level in levels:
            node = node.setdefault(level(r), {})
        steps = "adaptive" if r.steps == ADAPTIVE_STEPS else str(r.steps)
        cells = ((c, getattr(r, c)) for c in CSV_COLUMNS[3:] if c != "nll_bpd_se")  # the NLL: per network
        node.setdefault(r.solver, {})[steps] = {
            c: v for c, v in cells if v is not None and not isinstance(v, str | tuple)
        }
    for schedule, rec in nll.items():
        if schedule in out and rec.get("bpd") is not None:
            out[schedule]["nll_bpd"] = rec["bpd"]
    return out
