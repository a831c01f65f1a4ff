"""End to end on round 2's axes, each a tiny `dvc repro` in a temporary git clone:

- ablation-shaped (issue 10): two schedules x two training seeds, each network sampled under two
  schedules on two grids. Every column SPEC names is filled, the seeds are combined, rows of log-SNR
  steppers are equal across sampling schedules on the trained networks, and changing `sample.grids`
  re-runs only sampling, evaluation and the report;
- digits_cfg-shaped (issue 11): a class-conditional model under guidance w in {0, 4}: the new columns,
  and class accuracy at w = 4 above w = 0.
"""

import csv
import json
import re
import subprocess
import sys

import pytest

from test_pipeline import ROOT, _env, _run

AXES = ["seeds=[0,1]", "sample.schedules=[vp_linear,flow]", "sample.grids=[logsnr,edm]"]
PLANNED = ["sample_schedule", "grid", "seed", "guidance_scale", "class_accuracy", "precision", "recall"]


def _repro(tmp_path_factory, name, overrides):
    repo = tmp_path_factory.mktemp(name) / "main"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    env = _env(repo.parent)
    _run([sys.executable, "pipeline/compose.py", *overrides], repo, env)
    log = _run(["dvc", "repro"], repo, env, timeout=1800)
    return repo, env, log


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    return _repro(tmp_path_factory, "ablation", ["experiment=smoke", *AXES])


@pytest.mark.slow
def test_ablation_shaped_repro_fills_every_column_and_keeps_the_invariance(ablation):
    repo, _, _ = ablation
    rows = _rows(repo / "results" / "comparison.csv")
    assert set(PLANNED) <= set(rows[0])
    settings = {(r["schedule"], r["sample_schedule"], r["grid"]) for r in rows}
    assert settings == {
        (s, t, g) for s in ("vp_linear", "flow") for t in ("vp_linear", "flow") for g in ("logsnr", "edm")
    }
    assert {r["seed"] for r in rows} == {"0 1"} and {r["n_seeds"] for r in rows} == {"2"}
    assert all(
        r["fid_seed_sd"] != "" and float(r["fid_lo"]) < float(r["fid"]) < float(r["fid_hi"]) for r in rows
    )
    assert len(_rows(repo / "results" / "seeds.csv")) == 2 * len(rows)
    # the same network, noise and log-SNR range: a log-SNR stepper's rows match across sampling schedules
    by = {(r["schedule"], r["grid"], r["solver"], r["steps"], r["sample_schedule"]): r for r in rows}
    for (schedule, grid, solver, steps, sample_schedule), r in by.items():
        if solver in ("ddpm", "rk45") and sample_schedule == "flow":
            twin = by[(schedule, grid, solver, steps, schedule)]
            assert float(r["fid"]) == pytest.approx(float(twin["fid"]), rel=1e-6, abs=1e-6)
            assert float(r["invariance_error"]) < 1e-4
        if solver == "euler":
            assert r["invariance_error"] == ""  # a t-stepper: not invariant, not measured
    euler = [r for r in rows if r["solver"] == "euler" and r["schedule"] == "flow" and r["steps"] == "8"]
    assert len({r["fid"] for r in euler}) > 1  # ...while a t-stepper sees the sampling schedule
    metrics = json.loads((repo / "results" / "metrics.json").read_text())
    assert set(metrics["flow"]) >= {"sample=vp_linear", "sample=flow"}
    assert set(metrics["flow"]["sample=flow"]) == {"grid=logsnr", "grid=edm"}
    html = (repo / "results" / "report.html").read_text()
    assert "Training or sampling?" in html and "survive" in html


@pytest.mark.slow
def test_changing_the_grids_reruns_only_sampling_evaluation_and_the_report(ablation):
    repo, env, _ = ablation
    grids = "sample.grids=[logsnr,uniform]"
    _run([sys.executable, "pipeline/compose.py", "experiment=smoke", *AXES[:2], grids], repo, env)
    log = _run(["dvc", "repro"], repo, env, timeout=1800)
    ran = set(re.findall(r"Running stage '([^']+)'", log))
    assert ran, log[-2000:]
    kinds = {name.split("@")[0] for name in ran}
    assert kinds == {"sample", "evaluate", "report"}, ran
    assert all(name.endswith("-uniform") for name in ran if name.startswith("sample@")), ran
    rows = _rows(repo / "results" / "comparison.csv")
    assert {r["grid"] for r in rows} == {"logsnr", "uniform"}


@pytest.mark.slow
def test_digits_cfg_shaped_repro_measures_guidance(tmp_path_factory):
    overrides = [
        "experiment=digits_cfg",
        "schedules=[vp_linear,flow]",
        "solvers=[ddim]",
        "sample.steps=[10]",
        "sample.guidance_scales=[0,4]",
        "sample.n_samples=200",
        "sample.solver_error_samples=32",
        "trainer.max_steps=400",
        "trainer.val_every_n_steps=200",
        "evaluate.classifier_epochs=8",
        "evaluate.kid_subset_size=100",
        "evaluate.bootstrap=20",
        "evaluate.nll_images=4",
    ]
    repo, _, _ = _repro(tmp_path_factory, "digits_cfg", overrides)
    rows = _rows(repo / "results" / "comparison.csv")
    assert {r["guidance_scale"] for r in rows} == {"0", "4"}
    for r in rows:
        acc, lo, hi = (float(r[k]) for k in ("class_accuracy", "class_accuracy_lo", "class_accuracy_hi"))
        assert 0 <= lo <= acc <= hi <= 1
        assert 0 <= float(r["precision"]) <= 1 and 0 <= float(r["recall"]) <= 1
    for schedule in ("vp_linear", "flow"):
        acc = {r["guidance_scale"]: float(r["class_accuracy"]) for r in rows if r["schedule"] == schedule}
        assert acc["4"] > acc["0"], (schedule, acc)
    ceiling = json.loads((repo / "data" / "features" / "floor.json").read_text())["classifier_ceiling"]
    assert 0.5 < ceiling["accuracy"] <= 1
    assert "<h2>Guidance</h2>" in (repo / "results" / "report.html").read_text()
