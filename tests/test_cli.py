"""The stage scripts are thin command lines: --help answers, bad params fail before any work with
one clear line and exit status 2, and nothing is written."""

import subprocess
import sys

import pytest
import yaml

from difflab.config import compose

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
STAGES = ("compose", "prepare", "train", "reference", "sample", "evaluate", "nll", "report", "wandb_tools")


def _run(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("stage", STAGES)
def test_help(stage):
    r = _run(ROOT / "pipeline" / f"{stage}.py", "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage:") and "--params" in r.stdout
    assert "Traceback" not in r.stderr


def _error_line(r):
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_compose_rejects_bad_values_before_writing(tmp_path):
    out = tmp_path / "params.yaml"
    line = _error_line(_run(ROOT / "pipeline/compose.py", "--params", out, "sample.steps=[10,0]"))
    assert "sample.steps" in line and "0" in line
    assert not out.exists()


def test_stage_rejects_unknown_solver_before_any_work(tmp_path):
    cfg = compose(["experiment=smoke"])
    cfg["solvers"] = ["euler", "rk4"]
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "samples" / "vp_linear" / "rk4"
    line = _error_line(
        _run(
            ROOT / "pipeline/sample.py",
            "--params",
            params,
            "--schedule",
            "vp_linear",
            "--solver",
            "rk4",
            "--out",
            out,
        )
    )
    assert "rk4" in line and "dpm_solver_2m" in line  # names the bad value and the allowed ones
    assert not (tmp_path / "samples").exists()
