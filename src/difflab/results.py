"""The result of one setting: a typed ``Row``, its one key, and its CSV and JSON round trips.

A row is one network sampled one way: the identity (``model``: the network, its training
``schedule``, the training ``seed``\\ s, the ``sample_schedule``, ``grid``, ``guidance_scale``,
``solver`` and ``steps``; ``steps = 0`` for an adaptive solver) and then the measurements, each
``None`` until the stage that measures it has run (the sample stage fills NFE, time and the solver's
distance to the reference; evaluate the FID, KID, precision/recall and class accuracy; the report the
NLL, the seed aggregation and the comparison with the network's converged solution). Every stage
passes rows, never bare dicts.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

ADAPTIVE_STEPS = 0  # an adaptive solver's row: its steps are chosen by the solver, its NFE measured


@dataclass(frozen=True)
class Row:
    """One setting of one network (or, aggregated, of every training seed of it) and what was measured.

    ``seed`` holds the training seeds the row covers (one for a per-seed row); ``fid_by_seed`` the
    per-seed FIDs of an aggregated row (not a CSV column: ``seeds.csv`` holds them as rows)."""

    # identity
    schedule: str
    solver: str
    steps: int
    sample_schedule: str
    grid: str | None = None
    guidance_scale: float | None = None
    seed: tuple[int, ...] = (0,)
    model: str = ""
    # measurements
    nfe: float | None = None
    fid: float | None = None
    fid_lo: float | None = None
    fid_hi: float | None = None
    kid_mean: float | None = None
    kid_std: float | None = None
    nll_bpd: float | None = None
    solver_error: float | None = None
    seconds_per_sample: float | None = None
    n_samples: int | None = None
    feature_extractor: str | None = None
    nll_bpd_se: float | None = None
    class_accuracy: float | None = None
    precision: float | None = None
    recall: float | None = None
    n_seeds: int = 1
    fid_seed_sd: float | None = None
    class_accuracy_lo: float | None = None
    class_accuracy_hi: float | None = None
    precision_lo: float | None = None
    precision_hi: float | None = None
    recall_lo: float | None = None
    recall_hi: float | None = None
    invariance_error: float | None = None
    vs_converged: float | None = None
    vs_converged_lo: float | None = None
    vs_converged_hi: float | None = None
    beats_converged: bool | None = None
    fid_by_seed: tuple[float, ...] | None = None

    def __post_init__(self):
        if not self.model:  # a network difflab trained is named by its training schedule
            object.__setattr__(self, "model", self.schedule)
        object.__setattr__(self, "seed", tuple(int(s) for s in self.seed))

    @property
    def key(self) -> str:
        """The setting's id, its key in a feature file and in the report:
        ``"<model>[@<sample_schedule>]/<solver>/<steps|adaptive>[/<grid>][/w=<w>]"`` (the ``@`` part
        only where the sampling schedule differs from the network's training one, the grid where the
        row names one, ``w=`` where it is guided)."""
        steps = "adaptive" if self.steps == ADAPTIVE_STEPS else str(self.steps)
        text = f"{self.model}{'' if self.on_diagonal else '@' + self.sample_schedule}/{self.solver}/{steps}"
        if self.grid:
            text += f"/{self.grid}"
        if self.guidance_scale is not None:
            text += f"/w={float(self.guidance_scale):g}"
        return text

    @property
    def seed_key(self) -> str:
        """A per-seed row's key: ``key + "/seed=<k>"``."""
        (seed,) = self.seed
        return f"{self.key}/seed={seed}"

    @property
    def on_diagonal(self) -> bool:
        """Sampled under the network's own training schedule."""
        return self.sample_schedule == self.schedule

    @property
    def stem(self) -> str:
        """The file stem of the row's samples in its network's sample folder (``<stem>.npz``,
        ``<stem>.png``): ``"<sample_schedule>_<uncond|w<w>>_<steps:03d>"``."""
        guidance = "uncond" if self.guidance_scale is None else f"w{float(self.guidance_scale):g}"
        return f"{self.sample_schedule}_{guidance}_{int(self.steps):03d}"

    def replace(self, **changes) -> Row:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-able fields (``seed`` and ``fid_by_seed`` as lists)."""
        out = dataclasses.asdict(self)
        out["seed"] = list(self.seed)
        if self.fid_by_seed is not None:
            out["fid_by_seed"] = list(self.fid_by_seed)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Row:
        """A row from ``to_dict``'s output; an unknown key is an error naming it."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown row fields {unknown}; a Row has {sorted(names)}")
        d = dict(d)
        seed = d.get("seed", (0,))
        d["seed"] = (seed,) if isinstance(seed, int) else tuple(seed)
        if d.get("fid_by_seed") is not None:
            d["fid_by_seed"] = tuple(d["fid_by_seed"])
        return cls(**d)


# results/comparison.csv: SPEC's columns in order, then the others; `fid_by_seed` is not a column.
_FIRST = ("schedule", "solver", "steps", "nfe", "fid", "fid_lo", "fid_hi", "kid_mean", "kid_std", "nll_bpd",
          "solver_error", "seconds_per_sample", "n_samples", "feature_extractor", "nll_bpd_se",
          "sample_schedule", "grid", "seed", "guidance_scale", "class_accuracy", "precision", "recall",
          "n_seeds", "fid_seed_sd", "class_accuracy_lo", "class_accuracy_hi", "precision_lo",
          "precision_hi", "recall_lo", "recall_hi", "invariance_error")  # fmt: skip
CSV_COLUMNS = _FIRST + tuple(f.name for f in fields(Row) if f.name not in (*_FIRST, "fid_by_seed"))
_TEXT = {"schedule", "solver", "feature_extractor", "sample_schedule", "grid", "model"}
_INTS = {"steps", "n_samples", "n_seeds"}


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        return " ".join(str(x) for x in v)
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def records_csv(columns: Sequence[str], records: Iterable[Mapping]) -> str:
    """CSV text of ``records`` under the header ``columns``; a value not measured is an empty cell."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(
        [columns, *([_cell(r[c]) for c in columns] for r in records)]
    )
    return buf.getvalue()


def to_csv(rows: Iterable[Row]) -> str:
    """CSV text with ``CSV_COLUMNS`` (``records_csv``)."""
    return records_csv(CSV_COLUMNS, ({c: getattr(r, c) for c in CSV_COLUMNS} for r in rows))


def _parse(column: str, text: str):
    if column in _TEXT:
        return text or None
    if text == "":
        return None
    if column == "seed":
        return tuple(int(s) for s in text.split())
    if column == "beats_converged":
        return text == "true"
    return int(float(text)) if column in _INTS else float(text)


def read_csv(path: str | Path) -> list[Row]:
    """The rows of a ``to_csv`` file (``comparison.csv``, ``seeds.csv``)."""
    with open(path, newline="") as fh:
        return [
            Row(**{k: _parse(k, v) for k, v in rec.items() if k in CSV_COLUMNS}) for rec in csv.DictReader(fh)
        ]


def sort_rows(rows: Sequence[Row], models: Sequence[str] = (), solvers: Sequence[str] = ()) -> list[Row]:
    """Rows by network (in ``models``' order, then by name), solver (in ``solvers``' order) and steps."""

    def rank(seq, v):
        return seq.index(v) if v in seq else len(seq)

    models, solvers = list(models), list(solvers)
    return sorted(
        rows, key=lambda r: (rank(models, r.model), r.model, rank(solvers, r.solver), r.solver, r.steps)
    )


# -- metrics.json ----------------------------------------------------------------------------------
def nested_metrics(rows: Sequence[Row], nll: Mapping[str, dict]) -> dict:
    """``model -> [sample=S ->] [grid=G ->] [w=W ->] solver -> steps -> {nfe, fid, ...}`` for ``dvc
    metrics show`` (the network: its training schedule for a trained one; an axis level only where the
    rows take several values on it; adaptive steps: ``adaptive``), plus ``model -> nll_bpd`` from
    ``nll`` (``metrics.nll.nll_by_schedule``)."""
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


# -- training seeds: one row per setting ---------------------------------------------------------------
_IDENTITY = ("schedule", "solver", "steps", "sample_schedule", "grid", "guidance_scale", "model")
_BY_SEEDS = ("seed", "n_seeds", "fid", "fid_lo", "fid_hi", "fid_seed_sd", "fid_by_seed")
_AGREE = ("n_samples", "feature_extractor", "beats_converged")  # the seeds must agree on these
_MAX = ("invariance_error",)  # the largest over seeds; every other number is the mean


def _combine(name: str, values: list, key: str):
    present = [v for v in values if v is not None]
    if not present:
        return None
    if name not in _AGREE and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return float(max(present) if name in _MAX else np.mean(present))
    if any(v != present[0] for v in present) or len(present) != len(values):
        raise ValueError(f"{key}: the seeds' {name} differ ({values}); they must agree")
    return present[0]


def _by_setting(rows: Sequence[Row]) -> dict[str, list[Row]]:
    """Per-seed rows by ``key`` in order of first appearance, each by seed; a seed twice in a setting,
    or settings trained on different seeds, is a ValueError naming the row."""
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(r.key, []).append(r)
    seeds = {key: [s for r in sorted(g, key=lambda r: r.seed) for s in r.seed] for key, g in groups.items()}
    for key, s in seeds.items():
        if len(set(s)) != len(s):
            raise ValueError(f"{key}: seed repeated in {s}")
    first = next(iter(seeds), None)
    odd = next((k for k, s in seeds.items() if s != seeds[first]), None)
    if odd is not None:
        raise ValueError(
            f"{odd}: trained on seeds {seeds[odd]} but {first} on {seeds[first]}; "
            "every row must be trained on the same seeds"
        )
    return {key: sorted(g, key=lambda r: r.seed) for key, g in groups.items()}


def aggregate_seeds(rows: Sequence[Row], replicates: dict) -> tuple[list[Row], dict]:
    """Per-seed rows and their FID bootstrap replicates ``{row.seed_key: [B]}`` -> one row per setting
    (in order of first appearance) and ``{row.key: [K, B]}`` (seeds in increasing order): FID and its
    95% interval from ``metrics.paired.seed_combined``, ``fid_seed_sd``, ``seed``, ``n_seeds``,
    ``fid_by_seed``; ``invariance_error`` the largest over the seeds, other numbers the mean, the rest
    common to them."""
    from difflab.metrics.paired import seed_combined

    out_rows, out_reps = [], {}
    names = [f.name for f in fields(Row) if f.name not in _IDENTITY + _BY_SEEDS]
    for key, group in _by_setting(rows).items():
        missing = [r.seed_key for r in group if r.seed_key not in replicates]
        if missing:
            raise ValueError(f"no bootstrap replicates for {missing[0]}")
        boots = [np.asarray(replicates[r.seed_key], np.float64) for r in group]
        if len({b.shape for b in boots}) > 1 or boots[0].ndim != 1:
            raise ValueError(f"{key}: seeds hold replicates of shapes {[b.shape for b in boots]}")
        fids = tuple(float(r.fid) for r in group)
        c = seed_combined(fids, np.stack(boots))
        measured = {n: _combine(n, [getattr(r, n) for r in group], key) for n in names}
        seed = tuple(s for r in group for s in r.seed)
        by_seeds = dict(fid=c["fid"], fid_lo=c["fid_lo"], fid_hi=c["fid_hi"], fid_seed_sd=c["seed_sd"])
        out_rows.append(
            group[0].replace(**measured, **by_seeds, seed=seed, n_seeds=len(group), fid_by_seed=fids)
        )
        out_reps[key] = np.stack(boots)
    return out_rows, out_reps
