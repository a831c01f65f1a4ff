"""A stage run as 2 gloo ranks on CPU (as several GPUs of a node run it) writes the same outputs as
one process: sample i's noise comes from its own generator, whichever rank draws it."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from difflab.config import compose
from difflab.images import load_samples

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
SCHEDULE = "flow"


@pytest.fixture(scope="module")
def stage_inputs(tmp_path_factory):
    """params.yaml (smoke, one schedule, ddpm and euler at two step counts), an untrained model
    in the train stage's format and the prepare stage's meta.json."""
    from difflab.training import build_module, save_model

    root = tmp_path_factory.mktemp("ranks")
    cfg = compose(["experiment=smoke"])
    cfg["schedules"], cfg["solvers"] = [SCHEDULE], ["ddpm", "euler"]
    cfg["sample"].update(steps=[2, 5], n_samples=13, batch_size=4, solver_error_samples=0)
    (root / "params.yaml").write_text(yaml.safe_dump(cfg))
    save_dir = root / "models" / SCHEDULE / "seed_0"
    save_dir.mkdir(parents=True)
    save_model(save_dir, build_module(cfg, SCHEDULE, (1, 8, 8), 0), {})
    (root / "data").mkdir()
    (root / "data" / "meta.json").write_text(json.dumps({"shape": [1, 8, 8], "levels": 17}))
    return root


def _sample(root, solver: str, out: str, nproc: int):
    env = {**os.environ, "DIFFLAB_NPROC": str(nproc), "DIFFLAB_CPU_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "pipeline/sample.py"), "--params", str(root / "params.yaml")]
    cmd += ["--solver", solver, "--models", str(root / "models"), "--data", str(root / "data")]
    cmd += ["--out", str(root / out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.mark.parametrize("solver", ["ddpm", pytest.param("euler", marks=pytest.mark.slow)])
def test_two_gloo_ranks_write_what_one_process_writes(stage_inputs, solver):
    root = stage_inputs
    _sample(root, solver, f"one_{solver}", 1)
    log = _sample(root, solver, f"two_{solver}", 2)
    assert "2 ranks" in log  # it did run as two processes
    one, two = (root / name / SCHEDULE / "seed_0" for name in (f"one_{solver}", f"two_{solver}"))
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    timing = {"seconds_per_sample"}  # wall-clock time: the one thing allowed to differ
    rows_one, rows_two = (json.loads((d / "rows.json").read_text()) for d in (one, two))
    assert [{k: v for k, v in r.items() if k not in timing} for r in rows_one] == [
        {k: v for k, v in r.items() if k not in timing} for r in rows_two
    ]
    for npz in sorted(one.glob("*.npz")):
        a, b = load_samples(npz), load_samples(two / npz.name)
        assert set(a) == set(b)
        for key in set(a) - timing:
            assert np.array_equal(np.asarray(a[key]), np.asarray(b[key])), (npz.name, key)
        assert a["images"].float().std() > 0  # real samples, not a constant
    for png in sorted(one.glob("*.png")):
        assert png.read_bytes() == (two / png.name).read_bytes()


@pytest.mark.slow
def test_nll_as_two_gloo_ranks_equals_one_process(stage_inputs):
    """The nll stage splits its batches across ranks; each batch's dequantization and probes come
    from its own generator, so the bits/dim equal one process's."""
    root = stage_inputs
    levels = np.random.default_rng(0).integers(0, 17, size=(6, 1, 8, 8), dtype=np.uint8)
    np.save(root / "data" / "heldout_images.npy", levels)
    cfg = yaml.safe_load((root / "params.yaml").read_text())
    cfg["evaluate"]["nll_images"], cfg["sample"]["batch_size"] = 6, 2
    (root / "nll_params.yaml").write_text(yaml.safe_dump(cfg))
    records = []
    for nproc in (1, 2):
        env = {**os.environ, "DIFFLAB_NPROC": str(nproc), "DIFFLAB_CPU_THREADS": "1"}
        out = root / f"nll_{nproc}.json"
        cmd = [sys.executable, str(ROOT / "pipeline/nll.py"), "--params", str(root / "nll_params.yaml")]
        cmd += [
            "--schedule",
            SCHEDULE,
            "--model",
            str(root / "models" / SCHEDULE / "seed_0"),
            "--data",
            str(root / "data"),
        ]
        r = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        records.append({k: v for k, v in json.loads(out.read_text()).items() if k != "seconds_per_image"})
    assert records[0] == records[1] and records[0]["n_images"] == 6
