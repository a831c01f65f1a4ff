"""The comparison's honest reading (Pareto frontier, paired differences per NFE budget, the schedule
matrix) on rows with known answers, the results/ files, the self-contained HTML and the W&B run and
Report blocks."""

import json
import re

import numpy as np
import pytest
import torch

from difflab.images import save_grid
from difflab.metrics.fid import bias_shifted_interval
from difflab.metrics.nll import nll_by_schedule, nll_from_rows, with_nll
from difflab.metrics.paired import Pairing, save_row_features
from difflab.report import build, tables, text
from difflab.report.sections import SECTIONS, budgets, matrix
from difflab.results import CSV_COLUMNS, Row, nested_metrics, read_csv, records_csv
from difflab.solvers.registry import Solvers


def _row(schedule, solver, steps, nfe, fid, lo, hi, err=None):
    return Row(
        schedule=schedule, solver=solver, steps=steps, sample_schedule=schedule, seed=(0,), nfe=float(nfe),
        fid=fid, fid_lo=lo, fid_hi=hi, kid_mean=fid / 100, kid_std=0.01, solver_error=err,
        nll_bpd=2.5 if schedule == "s1" else 3.0, nll_bpd_se=0.05, seconds_per_sample=0.001, n_samples=1000,
        feature_extractor="classifier",
    )  # fmt: skip


SEED_ROWS = [
    _row("s1", "euler", 10, 11, 10.0, 9.0, 11.0, 0.3),
    _row("s1", "heun", 10, 21, 5.0, 4.5, 5.5, 0.05),
    _row("s2", "euler", 10, 11, 10.5, 9.5, 11.5, 0.4),
    _row("s2", "heun", 10, 21, 8.0, 7.0, 9.0, 0.08),
    _row("s1", "rk45", 0, 40, 4.9, 4.4, 5.4, 0.001),
    _row("s2", "ddpm", 20, 21, 12.0, 11.0, 13.0),
]


def _replicates(n_boot: int = 400) -> dict[str, np.ndarray]:
    """Bootstrap replicates sharing one resampling (a common term ``w z``) plus each row's own
    (``u e``), shifted by a bootstrap bias of 0.2: A and C move together (their difference is
    resolved although their intervals overlap), B and E hardly (theirs is not)."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal(n_boot)
    spread = [(0.5, 0.05), (0.25, 0.2), (0.5, 0.05), (0.5, 0.3), (0.25, 0.2), (0.5, 0.5)]
    return {
        r.seed_key: r.fid + 0.2 + w * z + u * rng.standard_normal(n_boot)
        for r, (w, u) in zip(SEED_ROWS, spread)
    }


REPS = _replicates()
CFG = {
    "experiment": "unit",
    "data": {"name": "digits"},
    "schedules": ["s1", "s2"],
    "seeds": [0],
    "solvers": ["euler", "heun", "ddpm", "rk45"],
    "sample": {"steps": [10, 20]},
    "wandb": {"project": "difflab-test", "entity": None, "group": None},
}
ROWS, PAIRING = build.comparison(
    SEED_ROWS, REPS, CFG
)  # config order: s1 euler, heun, rk45, s2 euler, heun, ddpm
A, B, E, C, D, F = ROWS
SOLVERS = Solvers.of(CFG["solvers"])


def test_one_seed_rows_keep_their_numbers():
    """One seed: the row's FID, its own bias-shifted bootstrap interval, the other numbers as measured."""
    by_key = {r.key: r for r in SEED_ROWS}
    for r in ROWS:
        s = by_key[r.key]
        assert (r.fid, r.nfe, r.kid_mean, r.solver_error, r.seed, r.n_seeds) == (
            s.fid,
            s.nfe,
            s.kid_mean,
            s.solver_error,
            (0,),
            1,
        )
        assert (r.fid_lo, r.fid_hi) == bias_shifted_interval(
            REPS[s.seed_key], s.fid
        ) and r.fid_seed_sd is None


def test_pareto_frontier_known_answer():
    assert tables.pareto_frontier(ROWS) == [A, B, E]


def test_interval_aware_frontier_keeps_only_what_the_paired_test_cannot_rule_out():
    # C's interval [9.5, 11.5] overlaps A's [9, 11], but C - A = +0.5 with the shared noise cancelling is
    # resolved, so C is not on it; D and F are beaten by B
    assert tables.plausible_frontier(ROWS, PAIRING) == [A, B, E]


def test_budget_summary_best_and_inseparable_by_the_paired_test():
    budgets_ = tables.default_budgets(ROWS, [10, 20])
    assert budgets_ == [11, 21, 40]
    s11, s21, s40 = tables.budget_summary(ROWS, budgets_, PAIRING)
    assert s11.best is A and s11.tied == [] and s11.n_candidates == 2
    (c,) = s11.others
    assert (
        c.a is C and c.b is A and c.fid_diff == pytest.approx(0.5) and 0.3 < c.diff_lo < 0.5 < c.diff_hi < 0.7
    )
    assert s21.best is B and s21.tied == [] and len(s21.others) == 4
    assert s40.best is E and s40.tied == [B]
    lines = text.summary_sentences([s11, s21, s40])
    assert "separated from all 1 others" in lines[0]
    assert "separated from all 4 others" in lines[1]
    assert "s1 x rk45 (adaptive, NFE 40)" in lines[2]
    assert (
        "paired 95% intervals cannot separate it from 1 of 5" in lines[2] and "difference +0.1 [" in lines[2]
    )


def test_resolved_is_symmetric_and_the_paired_test_sees_through_overlap():
    assert A.fid_hi > C.fid_lo  # the separate intervals overlap
    assert PAIRING.diff(A, C).resolved and PAIRING.diff(C, A).resolved
    assert PAIRING.diff(A, C).fid_diff == pytest.approx(-PAIRING.diff(C, A).fid_diff)
    assert not PAIRING.diff(B, E).resolved and not PAIRING.diff(E, B).resolved


def test_pairing_refuses_rows_without_replicates():
    reps = {r.key: REPS[r.seed_key] for r in SEED_ROWS}
    with pytest.raises(ValueError, match="no bootstrap replicates for 1 rows, e.g. s2/ddpm/20"):
        Pairing(ROWS, {k: v for k, v in reps.items() if k != "s2/ddpm/20"})
    with pytest.raises(ValueError, match="replicates of shapes"):
        Pairing(ROWS, {**reps, "s2/ddpm/20": np.zeros(10)})


def test_solvers_from_specs_and_the_invariance_sentence():
    solvers = Solvers.of(["ddpm", "rk45", "heun", "euler"])
    assert solvers.names == ["euler", "heun", "rk45", "ddpm"]  # ODE by order, adaptive last, then SDE
    assert solvers.group("heun") == "ODE, order 2" and solvers.group("ddpm") == "SDE, order 1"
    assert solvers.spec("rk45").adaptive and solvers.family("ddpm") == "sde"
    assert Solvers.of(["ddim"], {"ddim": {"eta": 1.0}}).family("ddim") == "sde"  # the options decide
    sentence = text.invariance_sentence(ROWS, solvers)
    assert (
        "Identical by schedule invariance: rk45, ddpm" in sentence
        and "differ only through training" in sentence
    )
    assert "euler, heun step in t" in sentence
    with pytest.raises(ValueError, match="unknown solver"):
        Solvers.of(["no_such_solver"])


def test_schedule_matrix_pairs_schedules_per_ode_solver_with_holm():
    m = tables.schedule_matrix(ROWS, PAIRING, 21, SOLVERS)
    assert m.solvers == (("euler", 10, 11.0), ("heun", 10, 21.0))  # rk45 (adaptive) and ddpm (SDE) out
    euler, heun = m.cells
    assert euler.a is A and euler.b is C and euler.fid_diff == pytest.approx(-0.5)
    assert heun.fid_diff == pytest.approx(-3.0) and euler.significant and heun.significant
    p = sorted([euler.p_value, heun.p_value])  # Holm over 2: 2 p(1), then max(that, p(2))
    assert sorted([euler.p_holm, heun.p_holm]) == pytest.approx(
        [min(1, 2 * p[0]), max(min(1, 2 * p[0]), p[1])]
    )
    assert tables.matrix_budget([11, 21, 51, 101, 201]) == 51
    pairs = tables.paired_records(tables.budget_summary(ROWS, [11, 21, 40], PAIRING), m)
    assert len(pairs) == 1 + 4 + 5 + 2
    assert pairs[0]["row_a"] == "s2/euler/10" and pairs[0]["row_b"] == "s1/euler/10"
    assert pairs[-1]["comparison"] == "schedules at nfe<=21 (Holm over 2)"
    lines = records_csv(tables.PAIRED_COLUMNS, pairs).splitlines()
    assert lines[0] == "row_a,row_b,fid_diff,diff_lo,diff_hi,significant,comparison,p_value,p_holm"
    assert lines[1].startswith("s2/euler/10,s1/euler/10,0.5,") and ",true,nfe<=11 vs best," in lines[1]
    assert lines[1].endswith(",")  # no Holm p-value for a pair against the best


def _save_features(folder, rows, seed=0, boots=None, first=0):
    def kept(r):
        fid_bootstrap = REPS[r.seed_key] if boots is None else boots
        return {"features": np.zeros((4, 2)), "fid_bootstrap": fid_bootstrap, "indices": first + np.arange(4)}

    save_row_features(folder / "features.npz", {r.key: kept(r) for r in rows}, bootstrap_seed=seed)


def test_replicates_load_from_the_evaluate_stage_files(tmp_path):
    for schedule in ("s1", "s2"):
        _save_features(tmp_path / schedule / "seed_0", [r for r in SEED_ROWS if r.schedule == schedule])
    got = build.load_replicates(tmp_path, SEED_ROWS)
    assert set(got) == set(REPS)
    assert np.array_equal(got["s1/rk45/adaptive/seed=0"], REPS["s1/rk45/adaptive/seed=0"])
    a = SEED_ROWS[0]
    with pytest.raises(FileNotFoundError, match="s3/seed_0/features.npz not found"):
        build.load_replicates(tmp_path, [a.replace(schedule="s3", sample_schedule="s3", model="s3")])
    with pytest.raises(FileNotFoundError, match="has no row s1/euler/50"):
        build.load_replicates(tmp_path, [a.replace(steps=50)])
    _save_features(tmp_path / "s2" / "seed_0", [SEED_ROWS[2]], first=1)
    with pytest.raises(ValueError, match="s2/euler/10 holds other sample indices"):
        build.load_replicates(tmp_path, [a, SEED_ROWS[2]])
    _save_features(tmp_path / "s2" / "seed_0", [SEED_ROWS[2]], seed=1, boots=np.zeros(3))
    with pytest.raises(ValueError, match="different seeds"):
        build.load_replicates(tmp_path, [a, SEED_ROWS[2]])


def test_collect_reads_rows_and_names_a_missing_file(tmp_path):
    folder = tmp_path / "s1" / "seed_0"
    folder.mkdir(parents=True)
    record = {
        **SEED_ROWS[0].to_dict(),
        "nll_bpd": None,
        "bootstrap": 200,
        "bootstrap_seed": 0,
    }  # older extras
    (folder / "fid.json").write_text(json.dumps([record]))
    cfg = {"schedules": ["s1"], "seeds": [0], "solvers": ["euler"]}
    with pytest.raises(FileNotFoundError, match="s1/seed_0/nll.json not found"):
        build.collect(tmp_path, cfg)
    (folder / "nll.json").write_text(json.dumps({"bpd": 2.75, "bpd_se": 0.01}))
    rows, nll = build.collect(tmp_path, cfg)
    assert rows == [SEED_ROWS[0].replace(nll_bpd=2.75, nll_bpd_se=0.01)] and nll == {
        "s1": {0: {"bpd": 2.75, "bpd_se": 0.01}}
    }
    with pytest.raises(FileNotFoundError, match="s1/seed_1/fid.json not found"):
        build.collect(tmp_path, {**cfg, "seeds": [1]})
    with pytest.raises(FileNotFoundError, match=r"no rows for solvers \['heun'\]"):
        build.collect(tmp_path, {**cfg, "solvers": ["euler", "heun"]})
    with pytest.raises(ValueError, match="no NLL record for network 's1' seed 0"):
        with_nll(SEED_ROWS[:1], {})


def test_nll_over_seeds():
    nll = {"s1": {0: {"bpd": 3.0, "bpd_se": 0.03}, 1: {"bpd": 3.2, "bpd_se": 0.04}}, "s2": {0: {"bpd": None}}}
    got = nll_by_schedule(nll)
    spread, se2 = np.var([3.0, 3.2], ddof=1), (0.03**2 + 0.04**2) / 2
    assert got["s1"] == {
        "bpd": pytest.approx(3.1),
        "bpd_se": pytest.approx(np.sqrt(max(spread, se2) / 2)),
        "n_seeds": 2,
    }
    assert got["s2"] == {"bpd": None, "bpd_se": None, "n_seeds": 1}
    assert nll_from_rows(ROWS) == {
        "s1": {"bpd": 2.5, "bpd_se": 0.05},
        "s2": {"bpd": 3.0, "bpd_se": 0.05},
    }


def test_nested_metrics_for_dvc():
    m = nested_metrics(ROWS, {"s1": {"bpd": 2.5}})
    assert m["s1"]["rk45"]["adaptive"]["fid"] == 4.9
    assert m["s2"]["euler"]["10"]["fid_hi"] == C.fid_hi and m["s2"]["euler"]["10"]["kid_mean"] == 0.105
    assert "solver_error" not in m["s2"]["ddpm"]["20"]
    assert m["s1"]["nll_bpd"] == 2.5
    guided = [r.replace(guidance_scale=w) for r in ROWS[:1] for w in (1.0, 2.0)]
    assert set(nested_metrics(guided, {})["s1"]) == {"w=1", "w=2"}  # an axis with several values


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    png = out / "g.png"
    save_grid(png, torch.from_numpy(np.random.default_rng(0).integers(0, 17, (16, 1, 8, 8))), levels=17)
    nll = {"s1": {"bpd": 2.5, "bpd_se": 0.05, "n_seeds": 1}, "s2": {"bpd": 3.0, "bpd_se": 0.05, "n_seeds": 1}}
    extra = {"nll": nll, "meta": {"dataset": "digits"}, "plots": out / "plots",
             "grids": {"s1": {"euler": png, "heun": png}, "s2": {"euler": png}}}  # fmt: skip
    ctx = build.context(ROWS, PAIRING, CFG, extra)
    shown = build.write_page(ROWS, ctx, out)
    build.write_tables(ROWS, SEED_ROWS, ctx, out)
    return out, ctx, shown


def test_results_folder_is_complete_and_self_contained(built):
    out, _, shown = built
    assert {p.name for p in (out / "plots").iterdir()} >= {
        "fid_vs_nfe_by_schedule.png", "fid_vs_nfe_by_solver.png", "pareto.png", "solver_error.png",
        "nll_bpd.png", "samples_s1.png", "samples_s2.png",
    }  # fmt: skip
    html = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:)?//""", html)  # nothing fetched from a network
    assert "<script" not in html and "<link" not in html
    assert html.count("data:image/png;base64,") == sum(len(s.figures) for s in shown) >= 7
    for name in ("s1", "s2", "rk45", "cannot separate", "params.yaml", "torch", "fid_lo", "paired", "Holm"):
        assert name in html
    for name in (
        "s2/euler/10",
        "Identical by schedule invariance",
        "SDE, order 1: ddpm",
        "Training or sampling?",
    ):
        assert name in html
    assert "overlap" not in html.lower()
    paired = (out / "paired.csv").read_text().splitlines()
    assert paired[0].startswith("row_a,row_b,fid_diff,diff_lo,diff_hi,significant") and len(paired) == 1 + 12
    assert set(json.loads((out / "metrics.json").read_text())) == {"s1", "s2"}
    back = read_csv(out / "comparison.csv")
    assert (out / "comparison.csv").read_text().splitlines()[0].split(",") == list(CSV_COLUMNS)
    assert (
        [r.key for r in back] == [r.key for r in ROWS] and back[2].steps == 0 and back[5].solver_error is None
    )
    assert [r.fid for r in back] == [r.fid for r in ROWS] and read_csv(out / "seeds.csv") == SEED_ROWS


def test_every_section_is_one_function_in_the_list(built):
    _, ctx, shown = built
    assert len(shown) <= len(SECTIONS) and all(s.level in (2, 3) for s in shown)
    titles = [s.title for s in shown]
    assert titles.index("What the numbers say") < titles.index("Every row") < titles.index("Samples")
    assert "Guidance" not in titles  # no guided rows
    (every,) = next(s for s in shown if s.title == "Every row").tables
    assert len(every.rows) == len(ROWS) and every.rows[2][2] == "adaptive" and every.marks[2] == "best"


def test_wandb_comparison_run_offline_holds_every_row_and_every_section(built, tmp_path, monkeypatch):
    from difflab.report.wandb_report import PAIRED_KEY, TABLE_KEY, log_comparison

    monkeypatch.setenv("WANDB_MODE", "offline")
    _, ctx, shown = built
    run_dir = log_comparison(ROWS, shown, ctx, tmp_path, "unit")
    assert run_dir.name.startswith("offline-run-")
    (table,) = run_dir.glob(f"files/media/table/{TABLE_KEY}*.table.json")
    table = json.loads(table.read_text())
    assert table["columns"] == list(CSV_COLUMNS) and len(table["data"]) == len(ROWS)
    assert {r[0] for r in table["data"]} == {"s1", "s2"}
    (paired,) = run_dir.glob(f"files/media/table/{PAIRED_KEY}*.table.json")
    paired = json.loads(paired.read_text())
    assert paired["columns"][:6] == list(tables.PAIRED_COLUMNS[:6]) and len(paired["data"]) == 12
    logged = {p.name.split("_0_")[0] for p in run_dir.glob("files/media/table/report/*/*.table.json")}
    assert len(list(run_dir.glob("files/media/table/report/*/*.table.json"))) == sum(
        len(s.tables) for s in shown
    )
    assert logged and len(list(run_dir.glob("files/media/images/**/*.png"))) >= sum(
        len(s.figures) for s in shown
    )


def test_wandb_report_blocks_reference_every_schedule_offline(built):
    from difflab.report.wandb_report import publish_report, report_blocks

    _, ctx, _ = built
    where = {"entity": "me", "project": "difflab", "group": "unit"}
    blocks = repr(report_blocks(ROWS, budgets(ROWS, ctx), where))
    for schedule in ("s1", "s2"):
        assert f"schedule {schedule}" in blocks and f"comparison/fid_vs_nfe_by_schedule/{schedule}" in blocks
    assert "comparison/table" in blocks and "comparison/paired" in blocks
    assert len(matrix(ROWS, ctx).cells) == 2
    with pytest.raises(RuntimeError, match="offline"):
        publish_report(ROWS, budgets(ROWS, ctx), {**where, "entity": None})
