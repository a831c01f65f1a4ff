"""End to end offline on CPU: `dvc repro` of the `mnist` experiment in a temporary git clone, on the
local MNIST files (../shared/data/mnist), with the CPU trainer, a small U-Net, the classifier's
features and tiny counts; every output is there and holds real MNIST-shaped numbers."""

import csv
import json
import math
import subprocess
import sys

import pytest

from test_pipeline import COLUMNS, _env, _run

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
TINY = [
    "trainer=cpu", "trainer.max_steps=30", "trainer.val_every_n_steps=30", "trainer.log_every_n_steps=10",
    "denoiser.channels=16", "denoiser.ch_mult=[1,2]", "denoiser.attn_resolutions=[14]",
    "denoiser.num_res_blocks=1", "denoiser.groups=8", "denoiser.heads=2",
    "evaluate.feature_extractor=classifier", "evaluate.classifier_epochs=1", "evaluate.bootstrap=10",
    "evaluate.kid_subset_size=16", "evaluate.kid_subsets=2", "evaluate.nll_images=2",
    "data.download=false", "data.num_workers=0", "data.batch_size=32",
    "schedules=[vp_cosine,flow]", "solvers=[ddim,dpm_solver_3m,rk45]", "sample.steps=[2,4]",
    "sample.n_samples=32", "sample.batch_size=32", "sample.solver_error_samples=8",
]  # fmt: skip


@pytest.mark.slow
def test_mnist_pipeline_end_to_end_offline_on_cpu(tmp_path, mnist_root):
    repo = tmp_path / "main"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    env = _env(tmp_path)
    _run(
        [sys.executable, "pipeline/compose.py", "experiment=mnist", f"data.root={mnist_root}", *TINY],
        repo,
        env,
    )
    log = _run([sys.executable, "pipeline/warm.py", "--", "dvc", "repro"], repo, env, timeout=1800)
    print("\n".join(line for line in log.splitlines() if "] wall " in line))
    meta = json.loads((repo / "data" / "prepared" / "meta.json").read_text())
    assert meta["shape"] == [1, 28, 28] and meta["levels"] == 256
    with (repo / "results" / "comparison.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[: len(COLUMNS)] == COLUMNS
    # 2 schedules x (2 fixed-step solvers x 2 step counts + rk45 + the converged stage's reverse-SDE solve)
    assert len(rows) == 2 * (2 * 2 + 1 + 1)
    assert sum(r["solver"] == "dpm_solver_2m_sde" and r["steps"] == "200" for r in rows) == 2
    for r in rows:
        assert r["feature_extractor"] == "classifier" and int(r["n_samples"]) == 32
        assert math.isfinite(float(r["fid"])) and float(r["fid"]) > 0
        assert math.isfinite(float(r["nll_bpd"])) and float(r["nll_bpd"]) > 0  # 30 steps: no good model
    assert (repo / "results" / "report.html").stat().st_size > 10_000
    assert "Running stage" not in _run(["dvc", "repro"], repo, env)  # and a second repro is a no-op
