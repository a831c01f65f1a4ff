"""The comparison's honest reading (Pareto frontier, intervals per NFE budget) on rows with known
answers, the CSV/metrics formats, the self-contained HTML and the W&B run and Report blocks."""

import json
import re

import numpy as np
import pytest

from difflab.report import analysis
from difflab.report.build import nll_from_rows, write_results
from difflab.report.grids import save_grid_png, tile


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


def test_interval_aware_frontier_keeps_only_what_intervals_cannot_rule_out():
    # D and F are beaten by B with separated intervals; C is not separable from A
    assert analysis.plausible_frontier(ROWS) == [A, C, B, E]


def test_budget_summary_best_and_inseparable():
    budgets = analysis.default_budgets(ROWS, [10, 20])
    assert budgets == [11, 21, 40]
    s11, s21, s40 = analysis.budget_summary(ROWS, budgets)
    assert s11["best"] is A and s11["tied"] == [C] and s11["n_candidates"] == 2
    assert s21["best"] is B and s21["tied"] == [] and s21["n_candidates"] == 5
    assert s40["best"] is E and s40["tied"] == [B]
    lines = analysis.summary_sentences([s11, s21, s40])
    assert "cannot separate it from 1 of 1" in lines[0] and "s2 x euler" in lines[0]
    assert "separated from all 4 others" in lines[1]
    assert "s1 x rk45 (adaptive, NFE 40)" in lines[2]


def test_separable_is_symmetric_interval_disjointness():
    assert analysis.separable(B, D) and analysis.separable(D, B)
    assert not analysis.separable(A, C) and not analysis.separable(B, E)


def test_solver_error_is_mean_rms_distance():
    ref = np.zeros((2, 1, 2, 2))
    x = np.concatenate([np.zeros((1, 1, 2, 2)), 2 * np.ones((1, 1, 2, 2)), 9 * np.ones((3, 1, 2, 2))])
    assert analysis.solver_error(x, ref) == pytest.approx(1.0)  # (0 + 2) / 2; extra rows ignored
    with pytest.raises(ValueError):
        analysis.solver_error(np.zeros((1, 4)), np.zeros((2, 4)))


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


def test_grid_tiles_levels_to_uint8():
    images = np.zeros((3, 1, 2, 2), np.uint8)
    images[1] = 16
    g = tile(images, levels=17, nrow=2, padding=1)
    assert g.shape == (2 * 3 + 1, 2 * 3 + 1, 3)
    assert g[4:6, 1:3].max() == 0 and g[1:3, 4:6].min() == 255


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    rng = np.random.default_rng(0)
    png = save_grid_png(out / "g.png", rng.integers(0, 17, (16, 1, 8, 8)), levels=17)
    grids = {"s1": {"euler": png, "heun": png}, "s2": {"euler": png}}
    nll = {"s1": {"bpd": 2.5, "bpd_se": 0.05}, "s2": {"bpd": 3.0, "bpd_se": 0.05}}
    info = write_results([dict(r) for r in ROWS], nll, CFG, out, data_meta={"dataset": "digits"}, grids=grids)
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
    for name in ("s1", "s2", "rk45", "cannot separate", "params.yaml", "torch", "fid_lo"):
        assert name in html
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"s1", "s2"}
    assert [r["schedule"] for r in info["rows"]] == ["s1"] * 3 + ["s2"] * 3  # config order


def test_wandb_comparison_run_offline_holds_every_row(built, tmp_path, monkeypatch):
    from difflab.report.wandb_report import TABLE_KEY, log_comparison

    monkeypatch.setenv("WANDB_MODE", "offline")
    out, info, nll = built
    run_dir = log_comparison(
        info["rows"], nll, CFG, out_dir=tmp_path, figures=info["figures"], summary=info["summary"]
    )
    assert run_dir.name.startswith("offline-run-")
    tables = list(run_dir.glob(f"files/media/table/{TABLE_KEY}*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"][: len(analysis.COLUMNS)] == list(analysis.COLUMNS)
    assert len(table["data"]) == len(ROWS)
    assert {r[0] for r in table["data"]} == {"s1", "s2"}


def test_wandb_report_blocks_reference_every_schedule_offline(built):
    from difflab.report.wandb_report import publish_report, report_blocks

    _, info, _ = built
    blocks = report_blocks(info["rows"], info["summary"], entity="me", project="difflab", group="unit")
    text = repr(blocks)
    for schedule in ("s1", "s2"):
        assert f"schedule {schedule}" in text
        assert f"comparison/fid_vs_nfe_by_schedule/{schedule}" in text
    assert "comparison/table" in text
    with pytest.raises(RuntimeError, match="offline"):
        publish_report(info["rows"], info["summary"], entity=None, project="difflab", group="unit")
