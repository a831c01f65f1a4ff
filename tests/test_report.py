"""The comparison's honest reading (Pareto frontier, paired differences per NFE budget, the schedule
matrix) on rows with known answers, the CSV/metrics formats, the self-contained HTML and the W&B run
and Report blocks."""

import json
import re

import numpy as np
import pytest
import torch

from difflab.images import save_grid
from difflab.metrics.paired import save_row_features
from difflab.report import analysis
from difflab.report.build import collect, load_replicates, nll_from_rows, write_results


def _row(schedule, solver, steps, nfe, fid, lo, hi, err=None):
    return {
        "schedule": schedule, "solver": solver, "steps": steps, "nfe": float(nfe), "fid": fid, "fid_lo": lo,
        "fid_hi": hi, "kid_mean": fid / 100, "kid_std": 0.01, "nll_bpd": 2.5 if schedule == "s1" else 3.0,
        "nll_bpd_se": 0.05, "solver_error": err, "seconds_per_sample": 0.001, "n_samples": 1000,
        "feature_extractor": "classifier",
    }  # fmt: skip


A = _row("s1", "euler", 10, 11, 10.0, 9.0, 11.0, 0.3)
B = _row("s1", "heun", 10, 21, 5.0, 4.5, 5.5, 0.05)
C = _row("s2", "euler", 10, 11, 10.5, 9.5, 11.5, 0.4)
D = _row("s2", "heun", 10, 21, 8.0, 7.0, 9.0, 0.08)
E = _row("s1", "rk45", 0, 40, 4.9, 4.4, 5.4, 0.001)
F = _row("s2", "ddpm", 20, 21, 12.0, 11.0, 13.0)
ROWS = [A, B, C, D, E, F]


def _replicates(n_boot: int = 400) -> dict[str, np.ndarray]:
    """Bootstrap replicates sharing one resampling (a common term ``w z``) plus each row's own
    (``u e``), shifted by a bootstrap bias of 0.2: A and C move together (their difference is
    resolved although their intervals overlap), B and E hardly (theirs is not)."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal(n_boot)
    spread = {
        "A": (0.5, 0.05),
        "B": (0.25, 0.2),
        "C": (0.5, 0.05),
        "D": (0.5, 0.3),
        "E": (0.25, 0.2),
        "F": (0.5, 0.5),
    }
    return {
        analysis.row_id(r): r["fid"] + 0.2 + w * z + u * rng.standard_normal(n_boot)
        for r, (w, u) in zip(ROWS, spread.values())
    }


REPS = _replicates()
PAIRING = analysis.Pairing(ROWS, REPS)
CFG = {
    "experiment": "unit",
    "data": {"name": "digits"},
    "schedules": ["s1", "s2"],
    "solvers": ["euler", "heun", "ddpm", "rk45"],
    "sample": {"steps": [10, 20]},
    "wandb": {"project": "difflab-test", "entity": None, "group": None},
}


def test_pareto_frontier_known_answer():
    assert analysis.pareto_frontier(ROWS) == [A, B, E]


def test_interval_aware_frontier_keeps_only_what_the_paired_test_cannot_rule_out():
    # overlap rule: D and F are beaten by B with separated intervals; C is not separable from A
    assert analysis.plausible_frontier(ROWS, None) == [A, C, B, E]
    # paired: C - A = +0.5 with the shared noise cancelling is resolved, so C goes too
    assert analysis.plausible_frontier(ROWS, PAIRING) == [A, B, E]


def test_budget_summary_best_and_inseparable_by_the_paired_test():
    budgets = analysis.default_budgets(ROWS, [10, 20])
    assert budgets == [11, 21, 40]
    s11, s21, s40 = analysis.budget_summary(ROWS, budgets, PAIRING)
    assert s11["best"] is A and s11["tied"] == [] and s11["n_candidates"] == 2
    (c,) = s11["others"]
    assert (
        c["row"] is C
        and c["fid_diff"] == pytest.approx(0.5)
        and 0.3 < c["diff_lo"] < 0.5 < c["diff_hi"] < 0.7
    )
    assert s21["best"] is B and s21["tied"] == [] and len(s21["others"]) == 4
    assert s40["best"] is E and s40["tied"] == [B]
    lines = analysis.summary_sentences([s11, s21, s40])
    assert "separated from all 1 others" in lines[0]
    assert "separated from all 4 others" in lines[1]
    assert (
        "s1 x rk45 (adaptive, NFE 40)" in lines[2]
        and "paired 95% intervals cannot separate it from 1 of 5" in lines[2]
    )
    assert "difference +0.1 [" in lines[2]
    old = analysis.budget_summary(ROWS, budgets, None)  # the overlap rule, asked for explicitly
    assert old[0]["tied"] == [C] and old[2]["tied"] == [B]
    assert "overlapping 95% intervals cannot separate it from 1 of 1" in analysis.summary_sentences(old)[0]


def test_tie_counts_overlap_rule_vs_paired_test():
    counts = analysis.tie_counts(ROWS, [11, 21, 40], PAIRING)
    assert [
        (c["budget"], c["tied_overlap"], c["tied_paired"], c["separated_by_pairing"]) for c in counts
    ] == [
        (11, 1, 0, 1),
        (21, 0, 0, 0),
        (40, 1, 1, 0),
    ]
    assert counts[0]["best"] == "s1/euler/10" and counts[2]["best"] == "s1/rk45/adaptive"
    assert (
        "1 cannot be separated by overlapping 95% intervals, 0 by the paired test"
        in analysis.tie_count_lines(counts)[0]
    )


def test_separable_is_symmetric_and_the_paired_test_sees_through_overlap():
    assert analysis.separable(B, D, None) and analysis.separable(D, B, None)
    assert not analysis.separable(A, C, None) and not analysis.separable(B, E, None)
    assert analysis.separable(A, C, PAIRING) and analysis.separable(C, A, PAIRING)
    assert not analysis.separable(B, E, PAIRING)


def test_pairing_refuses_rows_without_replicates():
    with pytest.raises(ValueError, match="no bootstrap replicates for 1 rows, e.g. s2/ddpm/20"):
        analysis.Pairing(ROWS, {k: v for k, v in REPS.items() if k != "s2/ddpm/20"})
    with pytest.raises(ValueError, match="different numbers of bootstrap replicates"):
        analysis.Pairing(ROWS, {**REPS, "s2/ddpm/20": np.zeros(10)})


def test_families_from_specs_and_the_invariance_sentence():
    fam = analysis.solver_families(["ddpm", "rk45", "heun", "euler"])
    assert list(fam) == ["euler", "heun", "rk45", "ddpm"]  # ODE by order, adaptive last, then SDE
    assert fam["heun"]["group"] == "ODE, order 2" and fam["ddpm"]["group"] == "SDE, order 1"
    assert fam["rk45"]["adaptive"] and fam["ddpm"]["family"] == "sde"
    text = analysis.invariance_sentence(ROWS, fam)
    assert "Identical by schedule invariance: rk45, ddpm" in text and "differ only through training" in text
    assert "euler, heun step in t" in text
    with pytest.raises(ValueError, match="unknown solver|valid"):
        analysis.solver_families(["no_such_solver"])


def test_schedule_matrix_pairs_schedules_per_ode_solver_with_holm():
    fam = analysis.solver_families(CFG["solvers"])
    m = analysis.schedule_matrix(ROWS, PAIRING, 21, fam, CFG["schedules"])
    assert m["solvers"] == [("euler", 10, 11.0), ("heun", 10, 21.0)]  # rk45 (adaptive) and ddpm (SDE) out
    assert m["n_pairs"] == 2
    euler, heun = m["cells"]
    assert euler["row_a"] is A and euler["row_b"] is C and euler["fid_diff"] == pytest.approx(-0.5)
    assert heun["fid_diff"] == pytest.approx(-3.0) and euler["significant"] and heun["significant"]
    assert euler["p_holm"] == pytest.approx(
        min(1.0, 2 * min(euler["p_value"], heun["p_value"])), rel=1e-6
    ) or (euler["p_holm"] >= euler["p_value"])
    assert analysis.matrix_budget([11, 21, 51, 101, 201]) == 51
    pairs = analysis.paired_rows(analysis.budget_summary(ROWS, [11, 21, 40], PAIRING), m)
    assert len(pairs) == 1 + 4 + 5 + 2
    assert pairs[0]["row_a"] == "s2/euler/10" and pairs[0]["row_b"] == "s1/euler/10"
    assert pairs[-1]["comparison"] == "schedules at nfe<=21 (Holm over 2)"
    text = analysis.paired_to_csv(pairs)
    assert (
        text.splitlines()[0] == "row_a,row_b,fid_diff,diff_lo,diff_hi,significant,comparison,p_value,p_holm"
    )
    assert (
        text.splitlines()[1].startswith("s2/euler/10,s1/euler/10,0.5,") and ",true," in text.splitlines()[1]
    )


def test_replicates_load_from_the_evaluate_stage_files(tmp_path):
    seeded = [{**r, "seed": 0} for r in ROWS]
    for schedule in ("s1", "s2"):
        rows = {
            analysis.row_id(r): {
                "features": np.zeros((4, 2)),
                "fid_bootstrap": REPS[analysis.row_id(r)],
                "indices": np.arange(4),
            }
            for r in seeded
            if r["schedule"] == schedule
        }
        save_row_features(tmp_path / schedule / "seed_0" / "features.npz", rows, bootstrap_seed=0)
    got = load_replicates(tmp_path, seeded)
    assert set(got) == {f"{k}/seed=0" for k in REPS}
    assert np.array_equal(got["s1/rk45/adaptive/seed=0"], REPS["s1/rk45/adaptive"])
    a, c = seeded[0], seeded[2]
    with pytest.raises(FileNotFoundError, match="s3/seed_0/features.npz not found"):
        load_replicates(tmp_path, [{**a, "schedule": "s3"}])
    with pytest.raises(FileNotFoundError, match="has no row s1/euler/50"):
        load_replicates(tmp_path, [{**a, "steps": 50}])
    save_row_features(
        tmp_path / "s2" / "seed_0" / "features.npz",
        {
            "s2/euler/10": {
                "features": np.zeros((4, 2)),
                "fid_bootstrap": np.zeros(3),
                "indices": np.arange(4),
            }
        },
        bootstrap_seed=1,
    )
    with pytest.raises(ValueError, match="different seeds"):
        load_replicates(tmp_path, [a, c])


def test_collect_names_a_missing_nll_file(tmp_path):
    (tmp_path / "s1" / "seed_0").mkdir(parents=True)
    (tmp_path / "s1" / "seed_0" / "fid.json").write_text(json.dumps([{"schedule": "s1", "solver": "euler"}]))
    with pytest.raises(FileNotFoundError, match="s1/seed_0/nll.json not found"):
        collect(tmp_path, ["s1"], [0], ["euler"])
    with pytest.raises(FileNotFoundError, match="s1/seed_1/fid.json not found"):
        collect(tmp_path, ["s1"], [1], ["euler"])
    with pytest.raises(ValueError, match="no NLL record for schedule 's1'"):
        analysis.build_table([dict(A)], {})


def test_csv_round_trip_and_columns(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text(analysis.to_csv(ROWS))
    header = path.read_text().splitlines()[0].split(",")
    assert tuple(header[: len(analysis.COLUMNS)]) == analysis.COLUMNS
    back = analysis.read_csv(path)
    assert back[5]["solver_error"] is None and back[4]["steps"] == 0
    for a, b in zip(ROWS, back):
        for k, v in a.items():
            assert b[k] == (pytest.approx(v) if isinstance(v, float) else v)
    assert nll_from_rows(back) == {"s1": {"bpd": 2.5, "bpd_se": 0.05}, "s2": {"bpd": 3.0, "bpd_se": 0.05}}


def test_nested_metrics_for_dvc():
    m = analysis.nested_metrics(ROWS, {"s1": {"bpd": 2.5}})
    assert m["s1"]["rk45"]["adaptive"]["fid"] == 4.9
    assert m["s2"]["euler"]["10"]["fid_hi"] == 11.5
    assert "solver_error" not in m["s2"]["ddpm"]["20"]
    assert m["s1"]["nll_bpd"] == 2.5


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    rng = np.random.default_rng(0)
    png = out / "g.png"
    save_grid(png, torch.from_numpy(rng.integers(0, 17, (16, 1, 8, 8))), levels=17)
    grids = {"s1": {"euler": png, "heun": png}, "s2": {"euler": png}}
    nll = {"s1": {"bpd": 2.5, "bpd_se": 0.05}, "s2": {"bpd": 3.0, "bpd_se": 0.05}}
    info = write_results(
        [dict(r) for r in ROWS], nll, CFG, out, replicates=REPS, data_meta={"dataset": "digits"}, grids=grids
    )
    return out, info, nll


def test_results_folder_is_complete_and_self_contained(built):
    out, info, _ = built
    assert {p.name for p in (out / "plots").iterdir()} >= {
        "fid_vs_nfe_by_schedule.png", "fid_vs_nfe_by_solver.png", "pareto.png", "solver_error.png",
        "nll_bpd.png", "samples_s1.png", "samples_s2.png",
    }  # fmt: skip
    html = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:)?//""", html)  # nothing fetched from a network
    assert "<script" not in html and "<link" not in html
    assert html.count("data:image/png;base64,") >= 7
    for name in ("s1", "s2", "rk45", "cannot separate", "params.yaml", "torch", "fid_lo", "paired", "Holm"):
        assert name in html
    for name in (
        "s2/euler/10",
        "Identical by schedule invariance",
        "<b>SDE, order 1</b>: ddpm",
        "1 cannot be separated by",
    ):
        assert name in html
    paired = (out / "paired.csv").read_text().splitlines()
    assert paired[0].startswith("row_a,row_b,fid_diff,diff_lo,diff_hi,significant") and len(paired) == 1 + 12
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"s1", "s2"}
    assert [r["schedule"] for r in info["rows"]] == ["s1"] * 3 + ["s2"] * 3  # config order


def test_wandb_comparison_run_offline_holds_every_row(built, tmp_path, monkeypatch):
    from difflab.report.wandb_report import PAIRED_KEY, TABLE_KEY, log_comparison

    monkeypatch.setenv("WANDB_MODE", "offline")
    out, info, nll = built
    run_dir = log_comparison(
        info["rows"],
        nll,
        CFG,
        out_dir=tmp_path,
        group="unit",
        figures=info["figures"],
        summary=info["summary"],
        pairs=info["pairs"],
        ties=info["ties"],
    )
    assert run_dir.name.startswith("offline-run-")
    tables = list(run_dir.glob(f"files/media/table/{TABLE_KEY}*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"][: len(analysis.COLUMNS)] == list(analysis.COLUMNS)
    assert len(table["data"]) == len(ROWS)
    assert {r[0] for r in table["data"]} == {"s1", "s2"}
    (paired,) = run_dir.glob(f"files/media/table/{PAIRED_KEY}*.table.json")
    paired = json.loads(paired.read_text())
    assert paired["columns"][:6] == list(analysis.PAIRED_COLUMNS) and len(paired["data"]) == len(
        info["pairs"]
    )


def test_wandb_report_blocks_reference_every_schedule_offline(built):
    from difflab.report.wandb_report import publish_report, report_blocks

    _, info, _ = built
    blocks = report_blocks(info["rows"], info["summary"], entity="me", project="difflab", group="unit")
    text = repr(blocks)
    for schedule in ("s1", "s2"):
        assert f"schedule {schedule}" in text
        assert f"comparison/fid_vs_nfe_by_schedule/{schedule}" in text
    assert "comparison/table" in text and "comparison/paired" in text
    with pytest.raises(RuntimeError, match="offline"):
        publish_report(info["rows"], info["summary"], entity=None, project="difflab", group="unit")
