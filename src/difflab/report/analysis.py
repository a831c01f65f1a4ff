"""The comparison table and what can honestly be read from it.

A row is one (schedule, solver, steps) with its FID and 95% interval ``[fid_lo, fid_hi]``. Solvers
are compared at equal NFE (denoiser evaluations), not at equal steps. Every row draws sample ``i``
from the same noise, so two rows are compared by the paired bootstrap of their difference
(``Pairing``: the rows' bootstrap replicates share their resampled indices, see
``difflab.metrics.paired``), not by whether their separate intervals overlap.

Per NFE budget ``B`` the best pair is the lowest FID among rows with ``nfe <= B``; another row
*cannot be separated* from it when the paired 95% interval of ``FID(row) - FID(best)`` contains 0.
The Pareto frontier of FID vs NFE holds the rows that no row beats on both; its interval-aware
version keeps every row that no cheaper-or-equal row beats by a paired interval excluding 0. The
schedule matrix compares, for each ODE solver at a fixed NFE, every pair of schedules, with Holm's
correction over the pairs shown. ``pairing=None`` selects the old overlap rule explicitly (kept to
count what the pairing changes: ``tie_counts``).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from difflab.metrics.paired import ADAPTIVE_STEPS, row_key  # rk45: steps 0 (adaptive), nfe measured

# SPEC's columns of results/comparison.csv, in order; `nll_bpd_se` is extra (the standard error).
COLUMNS = (
    "schedule",
    "solver",
    "steps",
    "nfe",
    "fid",
    "fid_lo",
    "fid_hi",
    "kid_mean",
    "kid_std",
    "nll_bpd",
    "solver_error",
    "seconds_per_sample",
    "n_samples",
    "feature_extractor",
)
# The axes of a row beside (schedule, solver, steps) and round 2's metrics (SPEC), then the extras.
AXIS_COLUMNS = ("sample_schedule", "grid", "seed", "guidance_scale")
METRIC_COLUMNS = ("class_accuracy", "precision", "recall")
EXTRA_COLUMNS = (
    "nll_bpd_se",
    *AXIS_COLUMNS,
    *METRIC_COLUMNS,
    "n_seeds",
    "fid_seed_sd",
    "class_accuracy_lo",
    "class_accuracy_hi",
    "precision_lo",
    "precision_hi",
    "recall_lo",
    "recall_hi",
    "invariance_error",
)
TEXT_COLUMNS = ("schedule", "solver", "feature_extractor", "sample_schedule", "grid", "seed")


def build_table(records: Iterable[dict], nll: dict[str, dict]) -> list[dict]:
    """Per-seed rows of the comparison: every evaluate record joined with its network's NLL record
    (``nll[schedule][seed]``, or ``nll[schedule]`` for every seed, with ``bpd``, ``bpd_se``; a
    network without one is an error)."""
    rows = []
    for rec in records:
        row = {c: rec.get(c) for c in COLUMNS + EXTRA_COLUMNS}
        row["sample_schedule"] = row["sample_schedule"] or rec.get("schedule")
        row["n_seeds"] = 1
        n = nll.get(rec.get("schedule"))
        if n is not None and "bpd" not in n:  # by seed
            n = n.get(rec.get("seed"))
        if n is None:
            where = f"schedule {rec.get('schedule')!r} seed {rec.get('seed')!r}"
            raise ValueError(f"no NLL record for {where}; run the nll stage")
        row["nll_bpd"] = n.get("bpd")
        row["nll_bpd_se"] = n.get("bpd_se")
        missing = [
            c for c in ("schedule", "solver", "steps", "nfe", "fid", "fid_lo", "fid_hi") if row[c] is None
        ]
        if missing:
            raise ValueError(f"evaluation record {rec.get('schedule')}/{rec.get('solver')} lacks {missing}")
        rows.append(row)
    return rows


def sort_rows(rows: list[dict], schedules: Sequence[str] = (), solvers: Sequence[str] = ()) -> list[dict]:
    def rank(seq, v):
        return seq.index(v) if v in seq else len(seq)

    return sorted(
        rows,
        key=lambda r: (
            rank(list(schedules), r["schedule"]),
            r["schedule"],
            rank(list(solvers), r["solver"]),
            r["solver"],
            r["steps"],
        ),
    )


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def to_csv(rows: Sequence[dict]) -> str:
    """CSV text: SPEC's columns then the extras; missing values (e.g. the solver error of a
    stochastic solver) are empty cells."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = COLUMNS + EXTRA_COLUMNS
    w.writerow(cols)
    for r in rows:
        w.writerow([_fmt(r.get(c)) for c in cols])
    return buf.getvalue()


def read_csv(path) -> list[dict]:
    """Rows of a comparison CSV with numbers parsed (empty cells -> None; ``seed`` stays text, the
    seeds a row averages)."""
    ints, texts = {"steps", "n_samples", "n_seeds"}, set(TEXT_COLUMNS)
    rows = []
    with open(path, newline="") as fh:
        for rec in csv.DictReader(fh):
            row = {}
            for k, v in rec.items():
                if k in texts:
                    row[k] = v
                elif v in ("", None):
                    row[k] = None
                else:
                    row[k] = int(float(v)) if k in ints else float(v)
            rows.append(row)
    return rows


def _axis_keys(rows: Sequence[dict]) -> list[tuple[str, Callable]]:
    """The axes (beside schedule, solver, steps) on which ``rows`` take more than one value, with
    each one's key text in ``nested_metrics``."""
    axes = (
        ("sample_schedule", lambda r: f"sample={r.get('sample_schedule') or r['schedule']}"),
        ("grid", lambda r: f"grid={r.get('grid')}"),
        (
            "guidance_scale",
            lambda r: "w=none" if r.get("guidance_scale") is None else f"w={r['guidance_scale']:g}",
        ),
    )

    def varies(name, key):
        if name == "sample_schedule":  # a level where some network is sampled under several schedules
            return len({(r["schedule"], key(r)) for r in rows}) > len({r["schedule"] for r in rows})
        return len({key(r) for r in rows}) > 1

    return [(name, key) for name, key in axes if varies(name, key)]


def nested_metrics(rows: Sequence[dict], nll: dict[str, dict] | None = None) -> dict:
    """``schedule -> [sample=S ->] [grid=G ->] [w=W ->] solver -> steps -> {nfe, fid, ...}`` for ``dvc
    metrics show`` (an axis level only where the rows take several values on it; rk45's steps key is
    ``adaptive``), plus ``schedule -> nll_bpd``."""
    out: dict = {}
    numeric = [c for c in COLUMNS[3:] + EXTRA_COLUMNS if c not in TEXT_COLUMNS and c != "nll_bpd_se"]
    axes = _axis_keys(rows)
    for r in rows:
        key = "adaptive" if r["steps"] == ADAPTIVE_STEPS else str(r["steps"])
        cell = {c: r[c] for c in numeric if r.get(c) is not None}
        node = out.setdefault(r["schedule"], {})
        for _, axis_key in axes:
            node = node.setdefault(axis_key(r), {})
        node.setdefault(r["solver"], {})[key] = cell
    for schedule, rec in (nll or {}).items():
        if schedule in out and rec.get("bpd") is not None:
            out[schedule]["nll_bpd"] = rec["bpd"]
    return out


def main_slice(rows: Sequence[dict], cfg: dict) -> list[dict]:
    """The rows of the schedule x solver x steps comparison: every network under its own training
    schedule (the diagonal), on the first of ``sample.grids`` and at the first of
    ``sample.guidance_scales``; the other values of those axes have their own report sections."""
    s = cfg.get("sample", {})
    grid = (s.get("grids") or [None])[0]
    scale = (s.get("guidance_scales") or [None])[0]

    def keep(r):
        on_grid = grid is None or r.get("grid") in (None, grid)
        own = (r.get("sample_schedule") or r["schedule"]) == r["schedule"]
        return own and on_grid and r.get("guidance_scale") == scale

    return [r for r in rows if keep(r)]


def row_id(r: dict) -> str:
    """A row's readable id (``difflab.metrics.paired.row_key``, its one home)."""
    return row_key(r)


class Pairing:
    """Paired comparisons between the rows of one comparison: ``replicates[row_id(r)]`` holds each
    row's FID bootstrap replicates ``[B]``, all drawn at the same resampled sample indices (one
    bootstrap seed, the same samples). ``diff(a, b)`` is ``FID(a) - FID(b)`` with its paired 95%
    interval, bias-shifted like each row's own (``difflab.metrics.paired.paired_difference``)."""

    def __init__(self, rows: Sequence[dict], replicates: dict[str, np.ndarray]):
        self.ids = [row_id(r) for r in rows]
        missing = [i for i in self.ids if i not in replicates]
        if missing:
            raise ValueError(f"no bootstrap replicates for {len(missing)} rows, e.g. {missing[0]}")
        sizes = {len(replicates[i]) for i in self.ids}
        if len(sizes) > 1 or min(sizes, default=2) < 2:
            raise ValueError(
                f"rows hold different numbers of bootstrap replicates {sorted(sizes)}; re-run evaluate"
            )
        self.index = {i: k for k, i in enumerate(self.ids)}
        self.fid = np.array([float(r["fid"]) for r in rows])
        self.boots = (
            np.stack([np.asarray(replicates[i], np.float64) for i in self.ids]) if rows else np.zeros((0, 2))
        )

    def diff(self, a: dict, b: dict) -> dict:
        from difflab.metrics.paired import paired_difference

        i, j = self.index[row_id(a)], self.index[row_id(b)]
        return paired_difference(self.fid[i], self.fid[j], self.boots[i], self.boots[j])

    def against(self, a: dict) -> dict[str, np.ndarray]:
        """``FID(a) - FID(row)`` and its interval bounds for every row at once (arrays by row)."""
        from difflab.metrics.paired import replicate_matrix_difference

        return replicate_matrix_difference(self.fid, self.boots, self.index[row_id(a)])


def separable(a: dict, b: dict, pairing: Pairing | None) -> bool:
    """Whether the difference of two rows is resolved at 95%: the paired interval of
    ``FID(a) - FID(b)`` excludes 0 (``pairing=None``: the old rule, disjoint separate intervals)."""
    if pairing is None:
        return a["fid_hi"] < b["fid_lo"] or b["fid_hi"] < a["fid_lo"]
    d = pairing.diff(a, b)
    return d["diff_lo"] > 0 or d["diff_hi"] < 0


def pareto_frontier(rows: Sequence[dict]) -> list[dict]:
    """Rows no other row dominates (``nfe <=`` and ``fid <=``, one strictly), by increasing NFE."""
    front = []
    for r in rows:
        dominated = any(
            q is not r
            and q["nfe"] <= r["nfe"]
            and q["fid"] <= r["fid"]
            and (q["nfe"] < r["nfe"] or q["fid"] < r["fid"])
            for q in rows
        )
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: (r["nfe"], r["fid"]))


def plausible_frontier(rows: Sequence[dict], pairing: Pairing | None) -> list[dict]:
    """Rows that no row with ``nfe <=`` theirs beats with a resolved difference (the paired interval
    of ``FID(r) - FID(q)`` above 0; ``pairing=None``: ``q.fid_hi < r.fid_lo``): the frontier the 95%
    intervals cannot rule out."""
    keep = []
    for r in rows:
        if pairing is None:
            beaten = any(q is not r and q["nfe"] <= r["nfe"] and q["fid_hi"] < r["fid_lo"] for q in rows)
        else:
            lo = pairing.against(r)["diff_lo"]  # FID(r) - FID(q), lower bound, by q
            beaten = any(
                q is not r and q["nfe"] <= r["nfe"] and lo[pairing.index[row_id(q)]] > 0 for q in rows
            )
        if not beaten:
            keep.append(r)
    return sorted(keep, key=lambda r: (r["nfe"], r["fid"]))


def default_budgets(rows: Sequence[dict], steps: Sequence[int]) -> list[float]:
    """NFE budgets to report: ``K + 1`` for each configured step count K (a one-evaluation-per-step
    solver's cost, final denoising included) and the largest NFE in the table (no limit)."""
    budgets = sorted({int(k) + 1 for k in steps})
    top = max((r["nfe"] for r in rows), default=0)
    if not budgets or top > budgets[-1]:
        budgets.append(math.ceil(top))
    return budgets


def budget_summary(rows: Sequence[dict], budgets: Sequence[float], pairing: Pairing | None) -> list[dict]:
    """For each budget: the best row with ``nfe <= budget``, every other row in the budget with its
    paired difference to the best (``others``: ``row``, ``fid_diff``, ``diff_lo``, ``diff_hi``,
    ``p_value``, ``separated``; by FID), the rows that cannot be separated from it (``tied``: the
    paired interval contains 0) and how many rows the budget admits. ``pairing=None``: the old
    overlap rule, and ``others`` carry no difference."""
    out = []
    for b in budgets:
        cands = [r for r in rows if r["nfe"] <= b]
        if not cands:
            out.append({"budget": b, "best": None, "tied": [], "others": [], "n_candidates": 0})
            continue
        best = min(cands, key=lambda r: (r["fid"], r["nfe"]))
        others = []
        for r in sorted((r for r in cands if r is not best), key=lambda r: r["fid"]):
            if pairing is None:
                d = {"fid_diff": None, "diff_lo": None, "diff_hi": None, "p_value": None}
                d["separated"] = separable(r, best, None)
            else:
                d = pairing.diff(r, best)
                d["separated"] = d["diff_lo"] > 0 or d["diff_hi"] < 0
            others.append({"row": r, **d})
        tied = [o["row"] for o in others if not o["separated"]]
        out.append({"budget": b, "best": best, "tied": tied, "others": others, "n_candidates": len(cands)})
    return out


def matrix_budget(budgets: Sequence[float]) -> float:
    """The NFE budget of the schedule matrix: the middle one of the reported budgets."""
    return budgets[(len(budgets) - 1) // 2]


def schedule_matrix(
    rows: Sequence[dict],
    pairing: Pairing,
    budget: float,
    families: dict[str, dict],
    schedules: Sequence[str] = (),
    alpha: float = 0.05,
) -> dict:
    """For every fixed-step ODE solver at its largest step count with ``nfe <= budget`` (the same in
    every schedule), the paired ``FID(s1) - FID(s2)`` of every pair of schedules, and whether it is
    significant at family-wise ``alpha`` with Holm's correction over all the pairs shown.

    Returns ``dict(budget, schedules, solvers: [(solver, steps, nfe)], cells: [dict(solver, row_a,
    row_b, schedule_a, schedule_b, fid_diff, diff_lo, diff_hi, p_value, p_holm, significant)],
    n_pairs, alpha)``."""
    from itertools import combinations

    from difflab.metrics.paired import holm, holm_adjusted

    sch = [s for s in schedules if any(r["schedule"] == s for r in rows)]
    sch += sorted({r["schedule"] for r in rows} - set(sch))
    by_key = {(r["schedule"], r["solver"], r["steps"]): r for r in rows}
    solvers, cells = [], []
    for name, fam in families.items():
        if fam["family"] != "ode" or fam["adaptive"]:
            continue
        present = [s for s in sch if any(r["solver"] == name and r["schedule"] == s for r in rows)]
        steps = [
            r["steps"]
            for r in rows
            if r["solver"] == name
            and r["nfe"] <= budget
            and all((s, name, r["steps"]) in by_key for s in present)
        ]
        if len(present) < 2 or not steps:
            continue
        k = max(steps, key=lambda st: (by_key[(present[0], name, st)]["nfe"], st))
        solvers.append((name, k, by_key[(present[0], name, k)]["nfe"]))
        for sa, sb in combinations(present, 2):
            a, b = by_key[(sa, name, k)], by_key[(sb, name, k)]
            cells.append(
                {
                    "solver": name,
                    "row_a": a,
                    "row_b": b,
                    "schedule_a": sa,
                    "schedule_b": sb,
                    **pairing.diff(a, b),
                }
            )
    rejected = holm([c["p_value"] for c in cells], alpha)
    for c, rej, p_adj in zip(cells, rejected, holm_adjusted([c["p_value"] for c in cells])):
        c.update(significant=rej, p_holm=p_adj)
    return {
        "budget": budget,
        "schedules": sch,
        "solvers": solvers,
        "cells": cells,
        "n_pairs": len(cells),
        "alpha": alpha,
    }


PAIRED_COLUMNS = ("row_a", "row_b", "fid_diff", "diff_lo", "diff_hi", "significant")
PAIRED_EXTRA_COLUMNS = ("comparison", "p_value", "p_holm")


def paired_rows(summary: Sequence[dict], matrix: dict | None) -> list[dict]:
    """The pairs the report shows, one dict per pair with ``PAIRED_COLUMNS`` (+ extras): per budget
    every other row against the best (``significant``: the paired 95% interval excludes 0), then
    the schedule matrix (``significant``: Holm over its pairs)."""
    out = []
    for s in summary:
        if s["best"] is None:
            continue
        for o in s["others"]:
            if o["fid_diff"] is None:
                raise ValueError("paired_rows needs a budget_summary computed with a Pairing")
            out.append(
                {
                    "row_a": row_id(o["row"]),
                    "row_b": row_id(s["best"]),
                    **{k: o[k] for k in ("fid_diff", "diff_lo", "diff_hi", "p_value")},
                    "significant": bool(o["separated"]),
                    "comparison": f"nfe<={s['budget']:.0f} vs best",
                    "p_holm": None,
                }
            )
    for c in (matrix or {}).get("cells", []):
        out.append(
            {
                "row_a": row_id(c["row_a"]),
                "row_b": row_id(c["row_b"]),
                **{k: c[k] for k in ("fid_diff", "diff_lo", "diff_hi", "p_value", "p_holm")},
                "significant": bool(c["significant"]),
                "comparison": f"schedules at nfe<={matrix['budget']:.0f} (Holm over {matrix['n_pairs']})",
            }
        )
    return out


def paired_to_csv(pairs: Sequence[dict]) -> str:
    """``results/paired.csv``: ``PAIRED_COLUMNS`` then the extras; ``significant`` as true/false."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = PAIRED_COLUMNS + PAIRED_EXTRA_COLUMNS
    w.writerow(cols)
    for p in pairs:
        w.writerow([str(p[c]).lower() if c == "significant" else _fmt(p.get(c)) for c in cols])
    return buf.getvalue()


def tie_counts(rows: Sequence[dict], budgets: Sequence[float], pairing: Pairing) -> list[dict]:
    """Per budget: how many rows cannot be separated from the best under the old overlap rule and
    under the paired test, and how many of the overlap rule's ties the pairing separates."""
    old = budget_summary(rows, budgets, None)
    new = budget_summary(rows, budgets, pairing)
    out = []
    for o, n in zip(old, new):
        if o["best"] is None:
            continue
        tied_old = {row_id(r) for r in o["tied"]}
        tied_new = {row_id(r) for r in n["tied"]}
        out.append(
            {
                "budget": o["budget"],
                "best": row_id(o["best"]),
                "others": o["n_candidates"] - 1,
                "tied_overlap": len(tied_old),
                "tied_paired": len(tied_new),
                "separated_by_pairing": len(tied_old - tied_new),
                "tied_only_paired": len(tied_new - tied_old),
            }
        )
    return out


def tie_count_lines(counts: Sequence[dict]) -> list[str]:
    return [
        f"NFE <= {c['budget']:.0f}: of {c['others']} rows beside the best ({c['best']}), "
        f"{c['tied_overlap']} cannot be separated by overlapping 95% intervals, {c['tied_paired']} by "
        f"the paired test ({c['separated_by_pairing']} of the overlap ties separated)"
        for c in counts
    ]


def solver_families(solvers: Iterable[str], options: dict | None = None) -> dict[str, dict]:
    """``name -> dict(family "ode"/"sde", order, adaptive, schedule_invariant, group)`` from each
    solver's spec (``difflab.solvers.get_spec``; ``options[name]`` decides where an option makes it
    stochastic), ordered ODE before SDE, by order, adaptive last, then as given. ``group`` is the
    legend heading, e.g. ``"ODE, order 2"``."""
    from difflab.solvers import get_spec

    names = list(dict.fromkeys(solvers))
    out = {}
    for name in names:
        spec = get_spec(name)
        family = "sde" if spec.is_stochastic((options or {}).get(name)) else "ode"
        group = f"{family.upper()}, " + (
            f"adaptive (order {spec.order})" if spec.adaptive else f"order {spec.order}"
        )
        out[name] = {
            "family": family,
            "order": spec.order,
            "adaptive": spec.adaptive,
            "schedule_invariant": spec.schedule_invariant,
            "group": group,
        }
    key = {n: (f["family"] != "ode", f["adaptive"], f["order"], names.index(n)) for n, f in out.items()}
    return dict(sorted(out.items(), key=lambda kv: key[kv[0]]))


def invariance_sentence(rows: Sequence[dict], families: dict[str, dict]) -> str:
    """Which rows are identical by schedule invariance (solvers that step in log-SNR or EDM's
    variables give the same samples under every schedule for the same exact denoiser)."""
    n_sched = {v: len({r["schedule"] for r in rows if r["solver"] == v}) for v in families}
    inv = [v for v, f in families.items() if f["schedule_invariant"] and n_sched[v] > 0]
    other = [v for v, f in families.items() if not f["schedule_invariant"] and n_sched[v] > 0]
    if not inv:
        return "No solver here is schedule-invariant: every row's schedule enters through the solver too."
    text = (
        f"Identical by schedule invariance: {', '.join(inv)} step in log-SNR or in EDM's variables, so for "
        "the same exact denoiser, log-SNR range and a grid set in log-SNR (logsnr, edm; not uniform, which "
        "is uniform in t) their rows at the same steps hold the same samples under every schedule (the same "
        "noise); across schedules those rows differ only through training (each schedule trains its own "
        "network) and the range's end points. invariance_error measures it on the trained networks."
    )
    if other:
        text += f" {', '.join(other)} step in t: their rows differ through the schedule's discretization too."
    return text


def label(r: dict) -> str:
    steps = "adaptive" if r["steps"] == ADAPTIVE_STEPS else f"{r['steps']} steps"
    return f"{r['schedule']} x {r['solver']} ({steps}, NFE {r['nfe']:.0f})"


def _diff_text(o: dict) -> str:
    if o["fid_diff"] is None:
        return ""
    return f" (difference {o['fid_diff']:+.3g} [{o['diff_lo']:+.3g}, {o['diff_hi']:+.3g}])"


def summary_sentences(summary: Sequence[dict]) -> list[str]:
    """One plain sentence per budget: the best pair, its interval, and the rows whose paired
    difference to it is not resolved."""
    lines = []
    for s in summary:
        if s["best"] is None:
            lines.append(f"NFE <= {s['budget']:.0f}: no row fits this budget.")
            continue
        b = s["best"]
        text = f"NFE <= {s['budget']:.0f}: best {label(b)}, "
        text += f"FID {b['fid']:.3g} [{b['fid_lo']:.3g}, {b['fid_hi']:.3g}]"
        tied = [o for o in s["others"] if not o["separated"]]
        n_others = s["n_candidates"] - 1
        if tied:
            names = "; ".join(f"{label(o['row'])} {o['row']['fid']:.3g}{_diff_text(o)}" for o in tied[:6])
            more = f" and {len(tied) - 6} more" if len(tied) > 6 else ""
            test = "paired 95% intervals" if tied[0]["fid_diff"] is not None else "overlapping 95% intervals"
            text += f"; the {test} cannot separate it from {len(tied)} of {n_others} others ({names}{more})."
        else:
            text += f"; separated from all {n_others} others within the budget."
        lines.append(text)
    return lines
