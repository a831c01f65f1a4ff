"""Training replicates: one row per setting over its training seeds, and paired comparisons that
count the spread between trainings (``difflab.metrics.paired.seed_combined``).

A per-seed row is one network (one training seed) under one setting; its FID bootstrap replicates
are keyed ``row_id(r) + "/seed=<k>"``. ``aggregate_seeds`` folds the seeds of each setting into one
row (mean FID and its random-effects 95% interval) with replicates ``[K, B]`` in seed order;
``SeedPairing`` compares such rows seed by seed (seed ``k`` of one row with seed ``k`` of the other:
the same sampling noise) with the interface of ``analysis.Pairing``, which it equals with one seed.
``surviving_differences`` lists which differences between training schedules remain resolved once
training noise is counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np

from difflab.report.analysis import ADAPTIVE_STEPS, row_id

# Columns the seeds must agree on; every other numeric one is averaged (MAX_COLUMNS: the maximum), and the
# FID columns come from seed_combined.
IDENTITY_COLUMNS = ("schedule", "sample_schedule", "grid", "guidance_scale", "solver", "steps")
AGREE_COLUMNS = ("n_samples", "feature_extractor")
MAX_COLUMNS = ("invariance_error",)


def seed_row_id(r: dict) -> str:
    """A per-seed row's replicate key: ``row_id(r) + "/seed=<k>"``."""
    return f"{row_id(r)}/seed={int(r['seed'])}"


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _combine_column(key: str, values: list, rid: str):
    """One column over a setting's seeds: None where all are None, the maximum (``MAX_COLUMNS``) or
    mean of the numbers present, else the common value (a ValueError where the seeds disagree)."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    if key not in AGREE_COLUMNS + IDENTITY_COLUMNS and all(_is_number(v) for v in present):
        return float(max(present) if key in MAX_COLUMNS else np.mean(present))
    if any(v != present[0] for v in present) or len(present) != len(values):
        raise ValueError(f"{rid}: the seeds' {key} differ ({values}); they must agree")
    return present[0]


def _group_by_setting(rows: Sequence[dict]) -> dict[str, list[dict]]:
    """Per-seed rows by ``row_id`` (every identity key but the seed), in order of first appearance,
    each group sorted by seed; the same seed twice in a setting, or different seed sets in one
    table, is a ValueError naming the row."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(row_id(r), []).append(r)
    seed_sets = {}
    for rid, group in groups.items():
        group.sort(key=lambda r: int(r["seed"]))
        seeds = [int(r["seed"]) for r in group]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{rid}: seed repeated in {seeds}")
        seed_sets[rid] = tuple(seeds)
    if len(set(seed_sets.values())) > 1:
        first = next(iter(seed_sets))
        odd = next(rid for rid, s in seed_sets.items() if s != seed_sets[first])
        raise ValueError(
            f"{odd}: trained on seeds {list(seed_sets[odd])} but {first} on {list(seed_sets[first])}; "
            "every row must be trained on the same seeds"
        )
    return groups


def _seed_replicates(group: list[dict], replicates: dict) -> np.ndarray:
    """The group's replicates ``[K, B]`` in seed order."""
    missing = [seed_row_id(r) for r in group if seed_row_id(r) not in replicates]
    if missing:
        raise ValueError(f"no bootstrap replicates for {missing[0]}")
    boots = [np.asarray(replicates[seed_row_id(r)], np.float64) for r in group]
    if len({b.shape for b in boots}) > 1 or boots[0].ndim != 1:
        raise ValueError(f"{row_id(group[0])}: seeds hold replicates of shapes {[b.shape for b in boots]}")
    return np.stack(boots)


def aggregate_row(group: list[dict], boots: np.ndarray) -> dict:
    """One setting's row from its per-seed rows (by seed) and replicates ``[K, B]``: FID and its
    interval from ``seed_combined``, ``fid_seed_sd``, ``seed`` (the seeds, space separated),
    ``n_seeds``, the per-seed FIDs as ``fid_by_seed`` and every other column by ``_combine_column``."""
    from difflab.metrics.paired import seed_combined

    fids = [float(r["fid"]) for r in group]
    comb = seed_combined(fids, boots)
    rid = row_id(group[0])
    seed_columns = {
        "fid": comb["fid"],
        "fid_lo": comb["fid_lo"],
        "fid_hi": comb["fid_hi"],
        "fid_seed_sd": comb["seed_sd"],
        "seed": " ".join(str(int(r["seed"])) for r in group),
        "n_seeds": len(group),
        "fid_by_seed": fids,
    }
    keys = dict.fromkeys([*(k for r in group for k in r), *seed_columns])
    out = {
        k: seed_columns[k] if k in seed_columns else _combine_column(k, [r.get(k) for r in group], rid)
        for k in keys
    }
    return out


def aggregate_seeds(rows: Sequence[dict], replicates: dict) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Per-seed rows (``seed`` an int) and their replicates ``{seed_row_id(r): [B]}`` ->
    ``(rows, {row_id(row): [K, B]})`` with one row per setting (``aggregate_row``), the seeds in
    increasing order. Settings trained on different seed sets are a ValueError."""
    out_rows, out_reps = [], {}
    for rid, group in _group_by_setting(rows).items():
        boots = _seed_replicates(group, replicates)
        out_rows.append(aggregate_row(group, boots))
        out_reps[rid] = boots
    return out_rows, out_reps


class SeedPairing:
    """``analysis.Pairing`` over training seeds: ``replicates[row_id(r)]`` ``[K, B]`` (or ``[B]``, one
    seed), every row with the same K and B, and the per-seed FIDs ``r["fid_by_seed"]`` (else
    ``[r["fid"]]``). ``diff(a, b)`` is ``seed_combined_difference`` (seed ``k`` of ``a`` against seed
    ``k`` of ``b``), ``against(a)`` ``seed_matrix_difference``; with K = 1 both equal ``Pairing``'s."""

    def __init__(self, rows: Sequence[dict], replicates: dict):
        self.ids = [row_id(r) for r in rows]
        missing = [i for i in self.ids if i not in replicates]
        if missing:
            raise ValueError(f"no bootstrap replicates for {len(missing)} rows, e.g. {missing[0]}")
        boots = [np.atleast_2d(np.asarray(replicates[i], np.float64)) for i in self.ids]
        shapes = {b.shape for b in boots}
        if len(shapes) > 1 or min((s[1] for s in shapes), default=2) < 2:
            raise ValueError(f"rows hold replicates of shapes {sorted(shapes)}, not one [K, B] with B >= 2")
        fids = [r.get("fid_by_seed") or [r["fid"]] for r in rows]
        bad = [i for i, f, b in zip(self.ids, fids, boots) if len(f) != b.shape[0]]
        if bad:
            raise ValueError(f"{bad[0]}: per-seed FIDs (fid_by_seed) do not match its replicates' seeds")
        self.index = {i: k for k, i in enumerate(self.ids)}
        self.fid = np.array([float(r["fid"]) for r in rows])
        self.fids = np.array(fids, np.float64).reshape(len(rows), -1)  # [R, K]
        self.boots = np.stack(boots) if rows else np.zeros((0, 1, 2))  # [R, K, B]
        self.n_seeds = self.boots.shape[1]

    def diff(self, a: dict, b: dict) -> dict:
        from difflab.metrics.paired import seed_combined_difference

        i, j = self.index[row_id(a)], self.index[row_id(b)]
        return seed_combined_difference(self.fids[i], self.fids[j], self.boots[i], self.boots[j])

    def against(self, a: dict) -> dict[str, np.ndarray]:
        """``FID(a) - FID(row)`` and its interval bounds for every row at once (arrays by row)."""
        from difflab.metrics.paired import seed_matrix_difference

        return seed_matrix_difference(self.fids, self.boots, self.index[row_id(a)])


def _diagonal_settings(rows: Sequence[dict], families: dict[str, dict]) -> dict[tuple, list[dict]]:
    """Diagonal rows (sampled under their training schedule) of fixed-step ODE solvers, by
    ``(solver, steps, grid, guidance_scale)``, each by schedule in order of first appearance."""
    order = {s: k for k, s in enumerate(dict.fromkeys(r["schedule"] for r in rows))}
    out: dict[tuple, list[dict]] = {}
    for r in sorted(rows, key=lambda r: order[r["schedule"]]):
        fam = families.get(r["solver"])
        if fam is None or fam["family"] != "ode" or fam["adaptive"] or r["steps"] == ADAPTIVE_STEPS:
            continue
        if (r.get("sample_schedule") or r["schedule"]) != r["schedule"]:
            continue
        out.setdefault((r["solver"], r["steps"], r.get("grid"), r.get("guidance_scale")), []).append(r)
    return out


def surviving_differences(rows: Sequence[dict], pairing, families: dict[str, dict]) -> list[dict]:
    """For each fixed-step ODE solver, step count, grid and guidance scale, on the diagonal, every pair
    of training schedules: ``dict(solver, steps, grid, guidance_scale, schedule_a, schedule_b, row_a,
    row_b, fid_diff, diff_lo, diff_hi, se, p_value, survives, p_holm, survives_holm)``; ``survives``:
    the pairing's (seed-combined, paired) 95% interval of ``FID(a) - FID(b)`` excludes 0,
    ``survives_holm``: Holm's correction over every pair listed rejects a zero difference."""
    from difflab.metrics.paired import holm, holm_adjusted

    out = []
    for (solver, steps, grid, w), group in _diagonal_settings(rows, families).items():
        for a, b in combinations(group, 2):
            d = pairing.diff(a, b)
            out.append(
                {
                    "solver": solver,
                    "steps": steps,
                    "grid": grid,
                    "guidance_scale": w,
                    "schedule_a": a["schedule"],
                    "schedule_b": b["schedule"],
                    "row_a": a,
                    "row_b": b,
                    **d,
                    "survives": d["diff_lo"] > 0 or d["diff_hi"] < 0,
                }
            )
    p = [o["p_value"] for o in out]
    for o, rej, p_adj in zip(out, holm(p), holm_adjusted(p)):
        o.update(survives_holm=rej, p_holm=p_adj)
    return out


def _setting(o: dict) -> str:
    text = f"{o['solver']} {o['steps']} steps"
    if o["grid"]:
        text += f", {o['grid']} grid"
    if o["guidance_scale"] is not None:
        text += f", w={float(o['guidance_scale']):g}"
    return text


def _pair_sentence(pair: tuple[str, str], items: list[dict]) -> str:
    sa, sb = pair
    kept = [o for o in items if o["survives"]]
    head = f"{sa} - {sb}: "
    if not kept:
        return head + f"within the noise in all {len(items)} settings."
    lower = {sa if o["fid_diff"] < 0 else sb for o in kept}
    shown = "; ".join(
        f"{_setting(o)} {o['fid_diff']:+.3g} [{o['diff_lo']:+.3g}, {o['diff_hi']:+.3g}]" for o in kept[:6]
    )
    more = f" and {len(kept) - 6} more" if len(kept) > 6 else ""
    side = f"lower FID for {lower.pop()}" if len(lower) == 1 else "in both directions"
    return head + f"survives in {len(kept)} of {len(items)} settings ({side}: {shown}{more})."


def survival_sentences(survivors: Sequence[dict], n_seeds: int) -> list[str]:
    """Plain sentences from ``surviving_differences``: what the intervals count, then per pair of
    training schedules the settings where the difference survives, then the totals with Holm."""
    if n_seeds <= 1:
        lines = [
            "One training seed: training variance is not included, so a difference that survives here "
            "exceeds the sampling noise of one network per schedule only and may not survive retraining."
        ]
    else:
        lines = [
            f"Over {n_seeds} training seeds: each paired 95% interval counts the spread between trainings "
            f"and the sampling noise (normal quantile; the seed spread has {n_seeds - 1} degrees of freedom, "
            "so the intervals are optimistic)."
        ]
    if not survivors:
        return lines + ["No two training schedules share a fixed-step ODE setting to compare."]
    pairs: dict[tuple[str, str], list[dict]] = {}
    for o in survivors:
        pairs.setdefault((o["schedule_a"], o["schedule_b"]), []).append(o)
    lines += [_pair_sentence(pair, items) for pair, items in pairs.items()]
    n_kept = sum(o["survives"] for o in survivors)
    n_holm = sum(o["survives_holm"] for o in survivors)
    lines.append(
        f"{n_kept} of {len(survivors)} schedule differences survive at 95% each; "
        f"{n_holm} with Holm's correction over all {len(survivors)}."
    )
    return lines
