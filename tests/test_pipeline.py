"""End to end: `dvc repro` of the `smoke` experiment in a temporary git clone produces every output
SPEC names, a second repro does nothing, one solver's option re-runs only its stages, and a stage
SIGKILLed mid-way leaves nothing cached and the next repro completes. (A pretrained network end to end:
tests/test_pretrained_pipeline.py.)"""

import csv
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLUMNS = (
    "schedule,solver,steps,nfe,fid,fid_lo,fid_hi,kid_mean,kid_std,nll_bpd,solver_error,seconds_per_sample"
)
COLUMNS = COLUMNS.split(",") + ["n_samples", "feature_extractor"]
DIAGNOSTICS = ("converged_ode_fid", "converged_sde_fid", "floor_fid", "memorization_ratio", "copy_fraction",
               "loss_still_falling")  # fmt: skip


def _env(tmp):
    env = dict(os.environ)
    env["PATH"] = f"{pathlib.Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(WANDB_MODE="offline", WANDB_SILENT="true")
    for var in ("DIFFLAB_TMP", "WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        env.pop(var, None)  # a bare `dvc repro`: W&B's folders default to inside each stage's output
    return env


def _run(cmd, cwd, env, timeout=900):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def _stale(repo, env) -> set[str]:
    """The stages `dvc status` finds changed, less the pretrained stages (always_changed: they copy
    their model on every repro and DVC hashes the copy; tests/test_pretrained_pipeline.py)."""
    out = _run(["dvc", "status", "--json"], repo, env)
    status = json.loads(out[out.index("{") :]) if "{" in out else {}
    return {stage for stage, why in status.items() if why != ["always changed"]}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    repo = tmp / "main"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    env = _env(tmp)
    _run([sys.executable, "pipeline/compose.py", "experiment=smoke"], repo, env)
    start = time.perf_counter()
    log = _run(["dvc", "repro"], repo, env)
    return repo, env, log, time.perf_counter() - start


@pytest.mark.slow
def test_smoke_repro_writes_every_output(smoke):
    repo, env, log, seconds = smoke
    print(f"smoke dvc repro: {seconds:.0f} s")
    print("\n".join(line for line in log.splitlines() if "] wall " in line))  # per-stage timings
    cfg = yaml.safe_load((repo / "params.yaml").read_text())
    res = repo / "results"
    with (res / "comparison.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[: len(COLUMNS)] == COLUMNS
    fixed = [v for v in cfg["solvers"] if v != "rk45"]
    models = cfg["schedules"]
    per_network = len(fixed) * len(cfg["sample"]["steps"]) + 1 + 1  # rk45 once, the converged SDE once
    assert len(rows) == len(models) * per_network
    assert [r["model"] for r in rows[::per_network]] == models == [r["schedule"] for r in rows[::per_network]]
    converged = cfg["sample"]["converged_sde"]
    assert (
        sum(r["solver"] == converged["solver"] and r["steps"] == str(converged["steps"]) for r in rows) == 2
    )
    for r in rows:
        assert float(r["fid_lo"]) <= float(r["fid"]) <= float(r["fid_hi"])
        assert int(r["n_samples"]) == cfg["sample"]["n_samples"] and r["nll_bpd"] != ""
        assert (r["solver_error"] == "") == (r["solver"] in ("ddpm", converged["solver"]))  # stochastic
        if r["solver"] == "rk45":
            assert r["steps"] == "0" and float(r["nfe"]) > 2
    metrics = json.loads((res / "metrics.json").read_text())
    assert set(metrics) == set(models) and "adaptive" in metrics["flow"]["rk45"]
    plots = {p.name for p in (res / "plots").glob("*.png")}
    assert {"fid_vs_nfe_by_schedule.png", "fid_vs_nfe_by_solver.png", "pareto.png"} <= plots
    html = (res / "report.html").read_text()
    assert "data:image/png;base64," in html
    assert "cannot separate" in html or "separated from all" in html
    tables = list(res.glob("wandb/wandb/offline-run-*/files/media/table/comparison/table*.table.json"))
    assert len(tables) == 1
    assert len(json.loads(tables[0].read_text())["data"]) == len(rows)
    assert "Running stage 'report'" in log
    shown = _run(["dvc", "metrics", "show", "--json"], repo, env)
    assert "fid" in shown
    diagnostics = json.loads((res / "diagnostics.json").read_text())  # every network, SPEC's keys
    nets = [f"{m}/seed_{k}" for m in cfg["schedules"] for k in cfg["seeds"]]
    nets += [f"{m}/seed_0" for m in cfg.get("pretrained") or {}]  # a pretrained entry: one network
    assert sorted(diagnostics["networks"]) == sorted(nets) and diagnostics["regime"]
    for e in diagnostics["networks"].values():
        assert set(DIAGNOSTICS) <= set(e) and e["converged_ode_fid"] > 0 and e["floor_fid"] > 0
        assert 0 <= e["copy_fraction"] <= 1 and e["memorization_ratio"] > 0
    assert html.index("Network first") < html.index("What the numbers say")


@pytest.mark.slow
def test_second_repro_is_a_no_op(smoke):
    repo, env, _, _ = smoke
    log = _run(["dvc", "repro"], repo, env)
    assert "Running stage" not in log
    assert _stale(repo, env) == set()


@pytest.mark.slow
def test_one_solver_option_reruns_only_its_stages_and_survives_sigkill(smoke):
    repo, env, _, _ = smoke
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["sample"]["options"]["rk45"]["rtol"] = 2.0e-3
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    schedules = params["schedules"]
    # only rk45's sampling and the report (which reads every solver's options: ddim with eta > 0 is
    # stochastic) read rk45's options
    assert _stale(repo, env) == {"sample@rk45-logsnr", "report"}

    lock_before = (repo / "dvc.lock").read_text()
    proc = subprocess.Popen(
        ["dvc", "repro"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    target = repo / "outputs" / "tmp"
    deadline = time.time() + 300
    while time.time() < deadline and not any(p.name.startswith("samples__") for p in target.glob("*")):
        time.sleep(0.2)
    assert proc.poll() is None, "dvc repro ended before sample started"
    os.killpg(proc.pid, signal.SIGKILL)  # kill dvc and the stage mid-way
    proc.wait()
    assert not (repo / "samples" / "rk45" / "logsnr").exists()  # nothing partial in place
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    old = yaml.safe_load(lock_before)["stages"]
    assert lock["sample@rk45-logsnr"] == old["sample@rk45-logsnr"]  # the killed stage was not recorded
    (repo / ".dvc" / "tmp" / "rwlock").unlink(missing_ok=True)  # a killed DVC leaves its lock behind
    (repo / ".dvc" / "tmp" / "lock").unlink(missing_ok=True)

    log = _run(["dvc", "repro"], repo, env)
    ran = set(re.findall(r"Running stage '([^']+)'", log))
    assert ran == {"sample@rk45-logsnr"} | {f"evaluate@{s}-0" for s in schedules} | {"report"}
    assert _stale(repo, env) == set()
    with (repo / "results" / "comparison.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) > 0


@pytest.mark.slow
def test_killed_training_resumes_from_its_last_checkpoint(smoke):
    repo, env, _, _ = smoke
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["trainer"].update(max_steps=400, val_every_n_steps=40)
    (repo / "params_resume.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cmd = [sys.executable, "pipeline/train.py", "--params", "params_resume.yaml", "--schedule", "flow"]
    cmd += ["--out", "resume/flow"]
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    work = repo / "outputs" / "tmp"
    while time.time() < deadline and not list(work.glob("resume__flow.tmp-resume-*/last.ckpt")):
        time.sleep(0.2)
    time.sleep(1.0)  # let the checkpoint file be complete before the kill
    assert proc.poll() is None, "training ended before its first checkpoint"
    proc.kill()
    proc.wait()
    assert not (repo / "resume" / "flow").exists()  # nothing in place for DVC to cache

    _run(cmd, repo, env)
    metrics = json.loads((repo / "resume" / "flow" / "train_metrics.json").read_text())
    assert metrics["resumed_from_step"] >= 40  # continued, not started over
    assert metrics["steps"] == 400
    assert not list(work.glob("resume__flow.tmp-*"))  # the work folder became the output
