"""End to end: `dvc repro` of a tiny pretrained diffusers model (random weights, the digits' 1x8x8) as
the only network (`schedules: []`), with three solvers, in a temporary git clone: its stages run, its
rows reach comparison.csv under its name with `vp_discrete` as their training schedule, the report and
diagnostics name it, a second repro re-copies the model and runs nothing after it, and a changed
model re-runs what follows it."""

import csv
import json
import pathlib
import re
import subprocess
import sys

import pytest

from test_pipeline import ROOT, _env, _run, _stale

diffusers = pytest.importorskip("diffusers")


def _tiny(folder: pathlib.Path, seed: int = 0) -> str:
    """A DDPMPipeline folder: a small attention-free UNet2DModel, DDPM's linear betas."""
    import torch

    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )  # fmt: skip
    betas = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(**betas)).save_pretrained(folder)
    return str(folder)


@pytest.mark.slow
def test_pretrained_model_end_to_end(tmp_path):
    repo = tmp_path / "main"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    env = _env(tmp_path)
    tiny = _tiny(tmp_path / "tiny")
    overrides = ["experiment=smoke", "schedules=[]", f"+pretrained.tiny={tiny}", "solvers=[ddim,ddpm,rk45]"]
    # the NLL of a diffusers UNet on CPU takes minutes (its many small ops, hundreds of evaluations)
    overrides += [
        "evaluate.nll_images=0",
        "sample.converged_sde.solver=ddpm",
        "sample.converged_sde.steps=50",
    ]
    _run([sys.executable, "pipeline/compose.py", *overrides], repo, env)
    log = _run(["dvc", "repro"], repo, env)
    ran = set(re.findall(r"Running stage '([^']+)'", log))
    assert {"pretrained@tiny", "reference-pretrained@tiny", "evaluate-pretrained@tiny"} <= ran
    assert not any(s.startswith(("train@", "reference@", "evaluate@", "nll@")) for s in ran)
    assert json.loads((repo / "models/tiny/seed_0/pretrained.json").read_text())["prediction"] == "eps"

    with (repo / "results" / "comparison.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["model"] for r in rows} == {"tiny"} and {r["schedule"] for r in rows} == {"vp_discrete"}
    assert {r["solver"] for r in rows} == {"ddim", "ddpm", "rk45"}
    assert len(rows) == 2 * 2 + 1 + 1  # ddim and ddpm at 4 and 8 steps, rk45, ddpm's 50 converged steps
    for r in rows:
        assert float(r["fid_lo"]) <= float(r["fid"]) <= float(r["fid_hi"])
        assert (r["solver_error"] == "") == (r["solver"] == "ddpm")
    diagnostics = json.loads((repo / "results" / "diagnostics.json").read_text())
    assert list(diagnostics["networks"]) == ["tiny/seed_0"]
    assert "tiny" in (repo / "results" / "report.html").read_text()

    log = _run(["dvc", "repro"], repo, env)  # the copy is unchanged: nothing after it runs
    assert set(re.findall(r"Running stage '([^']+)'", log)) == {"pretrained@tiny"}
    assert _stale(repo, env) == set()

    _tiny(tmp_path / "tiny", seed=1)  # new weights in the same folder
    log = _run(["dvc", "repro"], repo, env)
    ran = set(re.findall(r"Running stage '([^']+)'", log))
    assert {"reference-pretrained@tiny", "sample@ddim-logsnr", "converged", "report"} <= ran
