"""The comparison table and what can honestly be read from it.

A row is one (schedule, solver, steps) with its FID and 95% interval ``[fid_lo, fid_hi]``. Solvers
are compared at equal NFE (denoiser evaluations), not at equal steps. Per NFE budget ``B`` the
best pair is the lowest FID among rows with ``nfe <= B``; another pair *cannot be separated* from
it when their 95% intervals overlap (``other.fid_lo <= best.fid_hi``). The Pareto frontier of FID
vs NFE holds the rows that no row beats on both; its interval-aware version keeps every row that
no cheaper-or-equal row beats with separated intervals.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence

import numpy as np

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
EXTRA_COLUMNS = ("nll_bpd_se",)
ADAPTIVE_STEPS = 0  # rk45 rows: steps = 0 means adaptive; nfe is the measured count


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


def build_table(records: Iterable[dict], nll: dict[str, dict]) -> list[dict]:
    """Rows of the comparison: every evaluate record joined with its schedule's NLL record
    (``nll[schedule]`` with ``bpd``, ``bpd_se``), sorted by schedule order, solver order, steps."""
    rows = []
    for rec in records:
        row = {c: rec.get(c) for c in COLUMNS}
        n = nll.get(rec["schedule"]) or {}
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
    """Rows of a comparison CSV with numbers parsed (empty cells -> None)."""
    ints, texts = {"steps", "n_samples"}, {"schedule", "solver", "feature_extractor"}
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


def nested_metrics(rows: Sequence[dict], nll: dict[str, dict] | None = None) -> dict:
    """``schedule -> solver -> steps -> {nfe, fid, ...}`` for ``dvc metrics show`` (rk45's steps key
    is ``adaptive``), plus ``schedule -> nll_bpd``."""
    out: dict = {}
    numeric = [c for c in COLUMNS[3:] if c != "feature_extractor"]
    for r in rows:
        key = "adaptive" if r["steps"] == ADAPTIVE_STEPS else str(r["steps"])
        cell = {c: r[c] for c in numeric if r.get(c) is not None}
        out.setdefault(r["schedule"], {}).setdefault(r["solver"], {})[key] = cell
    for schedule, rec in (nll or {}).items():
        if schedule in out and rec.get("bpd") is not None:
            out[schedule]["nll_bpd"] = rec["bpd"]
    return out


def separable(a: dict, b: dict) -> bool:
    """Whether two rows' 95% FID intervals do not overlap (the difference is resolved)."""
    return a["fid_hi"] < b["fid_lo"] or b["fid_hi"] < a["fid_lo"]


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


def plausible_frontier(rows: Sequence[dict]) -> list[dict]:
    """Rows that no row with ``nfe <=`` theirs beats with a separated interval
    (``q.fid_hi < r.fid_lo``): the frontier the 95% intervals cannot rule out."""
    keep = [
        r
        for r in rows
        if not any(q is not r and q["nfe"] <= r["nfe"] and q["fid_hi"] < r["fid_lo"] for q in rows)
    ]
    return sorted(keep, key=lambda r: (r["nfe"], r["fid"]))


def default_budgets(rows: Sequence[dict], steps: Sequence[int]) -> list[float]:
    """NFE budgets to report: ``K + 1`` for each configured step count K (a one-evaluation-per-step
    solver's cost, final denoising included) and the largest NFE in the table (no limit)."""
    budgets = sorted({int(k) + 1 for k in steps})
    top = max((r["nfe"] for r in rows), default=0)
    if not budgets or top > budgets[-1]:
        budgets.append(math.ceil(top))
    return budgets


def budget_summary(rows: Sequence[dict], budgets: Sequence[float]) -> list[dict]:
    """For each budget: the best row with ``nfe <= budget``, the rows its 95% interval cannot
    separate from it (``tied``, by FID), and how many rows the budget admits."""
    out = []
    for b in budgets:
        cands = [r for r in rows if r["nfe"] <= b]
        if not cands:
            out.append({"budget": b, "best": None, "tied": [], "n_candidates": 0})
            continue
        best = min(cands, key=lambda r: (r["fid"], r["nfe"]))
        tied = sorted((r for r in cands if r is not best and not separable(r, best)), key=lambda r: r["fid"])
        out.append({"budget": b, "best": best, "tied": tied, "n_candidates": len(cands)})
    return out


def label(r: dict) -> str:
    steps = "adaptive" if r["steps"] == ADAPTIVE_STEPS else f"{r['steps']} steps"
    return f"{r['schedule']} x {r['solver']} ({steps}, NFE {r['nfe']:.0f})"


def summary_sentences(summary: Sequence[dict]) -> list[str]:
    """One plain sentence per budget: the best pair, its interval, and what it cannot be told from."""
    lines = []
    for s in summary:
        if s["best"] is None:
            lines.append(f"NFE <= {s['budget']:.0f}: no row fits this budget.")
            continue
        b = s["best"]
        text = f"NFE <= {s['budget']:.0f}: best {label(b)}, "
        text += f"FID {b['fid']:.3g} [{b['fid_lo']:.3g}, {b['fid_hi']:.3g}]"
        if s["tied"]:
            names = "; ".join(f"{label(r)} {r['fid']:.3g}" for r in s["tied"][:6])
            more = f" and {len(s['tied']) - 6} more" if len(s["tied"]) > 6 else ""
            n_tied, n_others = len(s["tied"]), s["n_candidates"] - 1
            text += (
                f"; the 95% intervals cannot separate it from {n_tied} of {n_others} others ({names}{more})."
            )
        else:
            text += f"; separated from all {s['n_candidates'] - 1} others within the budget."
        lines.append(text)
    return lines
