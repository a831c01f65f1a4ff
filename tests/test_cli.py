"""The stage scripts are thin command lines: --help answers, bad params fail before any work with
one clear line and exit status 2, and nothing is written."""

import runpy
import subprocess
import sys

import pytest
import yaml

from difflab.config import compose

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
STAGES = ("compose", "prepare", "train", "pretrained", "reference", "fit_grid", "sample", "evaluate")
STAGES += ("nll", "report", "wandb_tools")


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
    out.write_text("untouched\n")
    line = _error_line(_run(ROOT / "pipeline/compose.py", "--params", out, "sample.options.ddim.eta=2.0"))
    assert "sample.options.ddim.eta=2.0" in line and "[0.0, 1.0]" in line
    assert out.read_text() == "untouched\n"


def test_stage_rejects_unknown_solver_before_any_work(tmp_path):
    cfg = compose(["experiment=smoke"])
    cfg["solvers"] = ["euler", "rk4"]
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "samples" / "rk4"
    line = _error_line(_run(ROOT / "pipeline/sample.py", "--params", params, "--solver", "rk4", "--out", out))
    assert "rk4" in line and "dpm_solver_2m" in line  # names the bad value and the allowed ones
    assert not (tmp_path / "samples").exists()


# Every value a stage would read, checked by `make params` (= pipeline/compose.py): the list,
# then network sizes, trainer, optimiser and unknown keys. (override, words the line must hold)
BAD_OVERRIDES = [
    ("denoiser.name=unett", ["denoiser", "unett", "mlp, unet, dit"]),
    ("sample.options.ddim.eta=2.0", ["sample.options.ddim.eta=2.0", "[0.0, 1.0]"]),
    ("+sample.options.ddim.etaa=0.5", ["sample.options.ddim", "etaa", "allowed: eta"]),
    ("sample.options.pc.snr=-1", ["sample.options.pc.snr=-1", ">= 0"]),
    ("sample.options.rk45.rtol=0", ["sample.options.rk45.rtol=0", "> 0"]),
    ("trainer.max_steps=-1", ["trainer.max_steps=-1", ">= 1"]),
    ("optim.lr=-0.1", ["optim.lr=-0.1", "> 0"]),
    ("ema.decay=1.5", ["ema.decay=1.5", "(0, 1)"]),
    ("class_cond.label_dropout=1.5", ["class_cond.label_dropout=1.5", "[0, 1]"]),
    ("denoiser.width=0", ["denoiser.width=0", ">= 1"]),
    ("trainer.precision=17-mixed", ["trainer.precision='17-mixed'", "bf16-mixed"]),
    ("+optim.lrr=1", ["optim.lrr", "warmup_steps"]),
    # round 2's axes: seeds, sampling schedules, grids, guidance (issues 10, 11)
    ("seeds=[0,0]", ["seeds=[0, 0]", "twice"]),
    ("seeds=[a]", ["seeds holds 'a'", "integers"]),
    ("sample.grids=[logsnr,karras]", ["sample.grids holds 'karras'", "uniform, logsnr, edm"]),
    ("sample.schedules=[vp_linear,vpp]", ["vpp", "sample.schedules", "edm"]),
    ("sample.invariance_samples=-1", ["sample.invariance_samples=-1", ">= 0"]),
    ("sample.guidance_scales=[2]", ["sample.guidance_scales=[2]", "class-conditional", "[null]"]),
    ("experiment=digits_cfg sample.guidance_scales=[-1,2]", ["sample.guidance_scales holds -1", ">= 0"]),
    ("experiment=digits_cfg sample.guidance_scales=[0,inf]", ["sample.guidance_scales holds inf", "finite"]),
    ("experiment=digits_cfg class_cond.num_classes=11", ["class_cond.num_classes=11", "10 classes"]),
]


@pytest.fixture
def compose_cli(tmp_path, monkeypatch, capsys):
    """Run pipeline/compose.py's command line in this process (same parser, runner and exit status as a
    subprocess, without a second interpreter's imports) against a copy of params.yaml."""
    params = tmp_path / "params.yaml"
    params.write_bytes((ROOT / "params.yaml").read_bytes())
    monkeypatch.syspath_prepend(str(ROOT / "pipeline"))

    def run(*overrides):
        monkeypatch.setattr(sys, "argv", ["compose.py", "--params", str(params), *overrides])
        with pytest.raises(SystemExit) as exit_:
            runpy.run_path(str(ROOT / "pipeline" / "compose.py"), run_name="__main__")
        return exit_.value.code, capsys.readouterr().err

    return run, params


@pytest.mark.parametrize("override, words", BAD_OVERRIDES)
def test_make_params_rejects_every_bad_value(compose_cli, override, words):
    run, params = compose_cli
    before = params.read_bytes()
    code, err = run(*override.split())
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: params: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert params.read_bytes() == before


@pytest.mark.parametrize(
    "stage, args, words",
    [
        ("reference.py", ["--pretrained", "absent"], "--pretrained 'absent' is not in params pretrained"),
        ("nll.py", ["--schedule", "ve"], "--schedule 've' is not in params schedules"),
        ("evaluate.py", ["--schedule", "flow", "--seed", "3"], "--seed 3 is not in params seeds"),
        ("pretrained.py", ["--name", "absent"], "--pretrained 'absent' is not in params pretrained"),
        ("sample.py", ["--solver", "euler", "--grid", "gits"], "--grid 'gits' is not in params sample.grids"),
    ],
)
def test_per_network_stages_reject_unknown_networks_before_any_work(tmp_path, stage, args, words):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(compose(["experiment=smoke"])))
    out = tmp_path / "out"
    line = _error_line(_run(ROOT / "pipeline" / stage, "--params", params, *args, "--out", out))
    assert words in line, line
    assert not out.exists()


def test_a_per_network_stage_names_one_network(tmp_path):
    r = _run(ROOT / "pipeline/nll.py", "--schedule", "flow", "--pretrained", "tiny")
    assert r.returncode == 2 and "not allowed with argument" in r.stderr
