"""The fitted grids as a pipeline uses them: grid.json written and read back, the grids a sample stage
reads (decreasing, steps + 1 times, mapped onto a sampling schedule by log-SNR), the solver a grid is
fitted for, the stage's noise, the config and the DVC stages."""

import importlib.util
import json
import math

import pytest
import torch
import yaml

from difflab import solvers as S
from difflab.config import ConfigError, compose, validate
from difflab.data.toy import GaussianMixture
from difflab.sampling import Draw, generate
from difflab.schedules import common_log_snr_range, get_schedule
from difflab.solvers.fitted import (
    GridFit,
    fit_for_sampling,
    fit_grids,
    grid_student,
    load_fitted,
    write_fitted,
)

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
STEPS = [3, 6]
GITS = GridFit("gits", {"candidates": 13})  # 13 candidates, to stay fast


def mixture() -> GaussianMixture:
    angle = torch.arange(4) * math.pi / 2
    return GaussianMixture(
        torch.stack([angle.cos(), angle.sin()], dim=1), 0.2, torch.tensor([0.4, 0.3, 0.2, 0.1])
    )


def randn(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture(scope="module")
def fitted():
    """``{method: grids}`` for dpm_solver_2m on vp_linear (GITS on 13 candidates, to stay fast)."""
    schedule = get_schedule("vp_linear")
    D, noise = mixture().denoiser(schedule), randn(32, 0)
    return schedule, {
        "gits": fit_grids(GITS, D, schedule, "dpm_solver_2m", STEPS, noise),
        "dmn": fit_for_sampling("dmn", D, schedule, "dpm_solver_2m", STEPS, None),
    }


def test_grid_json_round_trip(tmp_path, fitted):
    """Written and read back bit for bit; the file holds the method, the solver, the solver fitted for,
    and per step count the times (noise to data) and their log-SNRs."""
    schedule, grids = fitted
    for method, by_steps in grids.items():
        path = tmp_path / method / "vp_linear" / "seed_0" / "grid.json"
        write_fitted(path, method, "dpm_solver_2m", by_steps, schedule)
        record = json.loads(path.read_text())
        assert (record["method"], record["solver"], record["fitted_for"]) == (
            method,
            "dpm_solver_2m",
            "dpm_solver_2m",
        )
        assert list(record["steps"]) == ["3", "6"] and list(record["log_snr"]) == ["3", "6"]
        lam = torch.tensor(record["log_snr"]["6"], dtype=torch.float64)
        assert torch.equal(lam, schedule.log_snr(by_steps[6])) and (lam[1:] > lam[:-1]).all()
        loaded = load_fitted(path)
        assert list(loaded) == STEPS
        for k in STEPS:
            assert loaded[k].dtype == torch.float64 and torch.equal(loaded[k], by_steps[k]), (method, k)


SCHEDULES = ("vp_linear", "vp_cosine", "flow")


@pytest.mark.parametrize("target_name", SCHEDULES)
def test_loaded_grids_on_a_sampling_schedule(tmp_path, target_name):
    """Fitted on vp_linear over the log-SNR range the three schedules share, read for a sampling
    schedule over the same range: K + 1 strictly decreasing times from its t_max to its t_min at the
    fitted log-SNRs, so ddim, which is schedule-invariant, draws the same samples on both; on vp_linear
    itself the fitted times. Over a narrower range: the same relative log-SNR spacing."""
    lo, hi = common_log_snr_range(*(get_schedule(n) for n in SCHEDULES))
    schedule = get_schedule("vp_linear").with_log_snr_range(lo, hi)
    D, noise = mixture().denoiser(schedule), randn(32, 0)
    grids = fit_grids(GITS, D, schedule, "ddim", STEPS, noise)
    path = tmp_path / "grid.json"
    write_fitted(path, "gits", "ddim", grids, schedule)
    target = get_schedule(target_name).with_log_snr_range(lo, hi)
    loaded = load_fitted(path, target)
    for k in STEPS:
        ts = loaded[k]
        assert ts.shape == (k + 1,) and (ts[1:] < ts[:-1]).all()
        assert ts[0].item() == target.t_max and ts[-1].item() == target.t_min
    lam_fit = schedule.log_snr(grids[6])
    assert torch.allclose(target.log_snr(loaded[6]), lam_fit, rtol=0, atol=1e-9)
    x = randn(200, 1)
    ours = S.sample_ddim(mixture().denoiser(target), target, x, None, grid=loaded[6])
    on_fitted = S.sample_ddim(D, schedule, x, None, grid=grids[6])
    assert (ours - on_fitted).abs().max().item() < 1e-8
    if target_name == "vp_linear":
        assert torch.allclose(loaded[6], grids[6], rtol=0, atol=1e-12)
    narrow = target.with_log_snr_range(lo + 1.0, hi - 2.0)
    lam = narrow.log_snr(load_fitted(path, narrow)[6])
    assert lam[0].item() == pytest.approx(lo + 1.0) and lam[-1].item() == pytest.approx(hi - 2.0)
    relative = (lam_fit - lam_fit[0]) / (lam_fit[-1] - lam_fit[0])
    assert torch.allclose((lam - lam[0]) / (lam[-1] - lam[0]), relative, rtol=0, atol=1e-9)


def test_solver_a_grid_is_fitted_for():
    """Deterministic (with its options): itself; stochastic: ddim; adaptive: none (its grid's ends)."""
    assert grid_student("dpm_solver_2m") == "dpm_solver_2m"
    assert grid_student("euler_ancestral") == "ddim" and grid_student("dpm_solver_sde") == "ddim"
    assert grid_student("euler_ancestral", {"eta": 0.0}) == "euler_ancestral"
    assert grid_student("rk45") is None and grid_student("dpm_adaptive") is None
    schedule = get_schedule("vp_cosine")
    D, noise = mixture().denoiser(schedule), randn(16, 2)
    ends = fit_for_sampling(GITS, D, schedule, "rk45", [0], noise)
    assert list(ends) == [0] and ends[0].tolist() == [schedule.t_max, schedule.t_min]
    stochastic = fit_for_sampling(GITS, D, schedule, "euler_ancestral", [4], noise)
    assert torch.equal(stochastic[4], fit_grids(GITS, D, schedule, "ddim", [4], noise)[4])
    # the configured options reach the student: dpm_solver_sde at eta = 0 is fitted for itself, and its
    # intermediate level r moves the grid
    r_half, r_one = (
        fit_for_sampling(
            GITS, D, schedule, "dpm_solver_sde", [3], noise, solver_options={"eta": 0.0, "r": r}
        )[3]
        for r in (0.5, 1.0)
    )
    assert not torch.equal(r_half, r_one)


def test_a_grid_fit_checks_its_method_and_options_when_built():
    """The method's options are checked and completed with their defaults once, where the fit is named."""
    assert GITS.options["candidates"] == 13 and GITS.options["coeff"] == 1.15  # the rest: the defaults
    assert GridFit("dmn").options == {"power": 1.0, "init": "logsnr", "maxiter": 500}
    with pytest.raises(ValueError, match="unknown fit method 'ays'; valid methods: gits, dmn"):
        GridFit("ays")
    with pytest.raises(ValueError, match="unknown option 'candidates'"):
        GridFit("dmn", {"candidates": 13})
    with pytest.raises(ValueError, match="candidates"):
        GridFit("gits", {"candidates": 2})


def test_bad_grid_files_fail_with_one_line_naming_the_file(tmp_path):
    path = tmp_path / "grid.json"
    good = {"method": "dmn", "solver": "ddim", "fitted_for": "ddim", "steps": {"2": [0.9, 0.5, 0.1]}}
    cases = [
        ({**good, "method": "ays"}, "not a fitted grid file"),
        ({**good, "log_snr": {"3": [0.0, 1.0, 2.0]}}, "'steps' and 'log_snr' must map the same step counts"),
        ({**good, "log_snr": {"2": [0.0, 1.0]}}, "step count '2' does not match its 3 times"),
        ({**good, "steps": {"2": [0.1, 0.5, 0.9]}, "log_snr": {"2": [0.0, 1.0, 2.0]}}, "strictly decreasing"),
    ]
    for record, words in cases:
        path.write_text(json.dumps(record))
        with pytest.raises(ValueError, match=words) as err:
            load_fitted(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="unknown fit method 'ays'"):
        write_fitted(path, "ays", "ddim", {}, get_schedule("vp_linear"))


def _stage_module(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "pipeline"))  # the stage imports its _common
    spec = importlib.util.spec_from_file_location("fit_grid_stage", ROOT / "pipeline" / "fit_grid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stage_noise_is_the_noise_generate_starts_from(monkeypatch):
    """GITS's teacher starts from the first samples' noise: ``generate``'s first state is
    ``sigma(t_max)`` times it, whatever the batch size."""
    stage = _stage_module(monkeypatch)
    cfg = {"sample": {"seed": 7, "solver_error_samples": 5, "n_samples": 12}}
    noise = stage.fit_noise(cfg, [2], "cpu")
    schedule = get_schedule("vp_linear")
    seen = []

    def D(x, t, cond=None):
        seen.append(x.clone())
        return torch.zeros_like(x)

    generate(D, schedule, "ddim", 1, Draw(12, (2,), 7, batch_size=4))
    first = torch.cat(seen[0::2])  # the first call of each of the 3 batches (ddim: 2 calls per batch)
    sigma = schedule.sigma(torch.tensor(schedule.t_max, dtype=torch.float64))
    assert noise.shape == (5, 2) and torch.allclose(first[:5], sigma * noise.double(), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="solver_error_samples=0 leaves GITS's teacher no noise"):
        stage.fit_noise({"sample": {**cfg["sample"], "solver_error_samples": 0}}, [2], "cpu")


def test_config_with_fitted_grids_composes_and_validates():
    cfg = validate(compose(["sample.fitted_grids=[gits,dmn]"]))
    assert cfg["sample"]["grids"] == ["logsnr"] and cfg["sample"]["fitted_grids"] == ["gits", "dmn"]
    with pytest.raises(ConfigError, match=r"gitz.*gits, dmn"):
        validate(compose(["sample.fitted_grids=[gitz]"]))
    with pytest.raises(ConfigError, match=r"sample.grids holds 'gits'; allowed: values among uniform"):
        validate(compose(["sample.grids=[logsnr,gits]"]))  # fitted grids have their own list


def test_every_sample_fitted_stage_depends_on_its_own_fit_grid_stage():
    """fit_grid runs per solver x fitted grid, and each sample-fitted stage depends on exactly its own
    output, so a new fitted grid re-runs only its own stages; the closed-form sample stages read no
    fitted grid."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    fit, fitted, sample = stages["fit_grid"], stages["sample-fitted"], stages["sample"]
    assert fit["matrix"] == fitted["matrix"] == {"solver": "${solvers}", "grid": "${sample.fitted_grids}"}
    assert sample["matrix"] == {"solver": "${solvers}", "grid": "${sample.grids}"}
    assert fit["outs"] == ["grids/${item.solver}/${item.grid}"]
    assert [d for d in fitted["deps"] if d.startswith("grids")] == fit["outs"]
    assert not [d for d in sample["deps"] if d.startswith("grids")]
    assert {k: v for k, v in fitted.items() if k != "deps" and k != "matrix"} == {
        k: v for k, v in sample.items() if k != "deps" and k != "matrix"
    }
    assert "sample.options.${item.solver}" in fit["params"] and "sample.grids" not in fit["params"]
