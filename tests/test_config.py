"""The composed configuration: conf/ composes into exactly params.yaml, experiments override only
what differs, bad values fail with one clear line, and dvc.yaml reads only declared params."""

import re

import pytest
import yaml

from difflab.config import ConfigError, compose, load_params, validate
from difflab.solvers import SOLVERS, get_spec
from difflab.tracking import wandb_group

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def default():
    return compose()


@pytest.fixture(scope="module")
def experiments():
    return {name: compose([f"experiment={name}"]) for name in ("quick", "smoke", "mnist", "cifar10")}


def test_params_yaml_is_the_composed_default(default):
    assert load_params(ROOT / "params.yaml", check=False) == default


def test_default_is_quick_with_everything(default):
    assert default["experiment"] == "quick"
    assert default["schedules"] == ["vp_linear", "vp_cosine", "ve", "flow"]
    # a curated set (one or two per family); experiment=solvers runs every registered solver
    assert set(default["solvers"]) < set(SOLVERS) and "rk45" in default["solvers"]
    assert compose(["experiment=solvers"])["solvers"] == list(SOLVERS)  # in registration order
    assert default["sample"]["steps"] == [5, 10, 20, 50]
    # 400 per row (the 10-minute budget, BENCHMARKS.md), well above the 128 feature dimensions FID fits
    assert default["sample"]["n_samples"] >= 400
    assert default["data"]["name"] == "digits"
    assert default["evaluate"]["feature_extractor"] == "classifier"
    assert default["trainer"]["accelerator"] == "cpu"


def _diff(a, b, prefix=""):
    """Dotted keys where two nested dicts differ."""
    keys = set()
    for k in set(a) | set(b):
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            keys |= _diff(a[k], b[k], f"{prefix}{k}.")
        elif a.get(k) != b.get(k):
            keys.add(prefix + k)
    return keys


def test_experiments_override_only_what_differs(default, experiments):
    assert experiments["quick"] == default
    for name, cfg in experiments.items():
        validate(cfg)
        assert cfg["experiment"] == name
        assert wandb_group(cfg) == name
        # every experiment compares the same schedules (alpha, sigma); the training target is its own
        assert {k: v.get("params") for k, v in cfg["schedule"].items()} == {
            k: v.get("params") for k, v in default["schedule"].items()
        }
    smoke = experiments["smoke"]
    assert set(smoke["schedules"]) < set(default["schedules"]) and "rk45" in smoke["solvers"]
    assert smoke["sample"]["n_samples"] < default["sample"]["n_samples"]
    assert smoke["sample"]["options"]["ddim"] == default["sample"]["options"]["ddim"]  # merged, not replaced
    for gpu in ("mnist", "cifar10"):
        cfg = experiments[gpu]
        assert cfg["data"]["name"] == gpu
        assert cfg["denoiser"]["name"] == "unet" and cfg["trainer"]["accelerator"] == "gpu"
        assert cfg["evaluate"]["feature_extractor"] == "inception"
        untouched = _diff(default, cfg) & {"seed", "seeds", "schedules", "sample.grids", "sample.steps"}
        assert not untouched
        assert cfg["solvers"] == list(SOLVERS)  # a GPU experiment runs every solver; quick a curated set


def test_group_options_compose():
    vp = compose(["schedule=vp", "solver=ode"])
    assert vp["schedules"] == ["vp_linear", "vp_cosine"]
    assert "euler_maruyama" not in vp["solvers"] and "rk45" in vp["solvers"]
    assert set(vp["sample"]["options"]) >= set(vp["solvers"])


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("schedules", ["vp_linear", "edm_typo"], ["edm_typo", "vp_cosine"]),
        ("solvers", ["euler", "rk4"], ["rk4", "dpm_solver_2m"]),
        ("data.name", "imagenet", ["imagenet", "digits"]),
        ("sample.steps", [10, 0], ["0", "> 0"]),
        ("sample.steps", [-5], ["-5"]),
        ("sample.steps", [10.5], ["10.5"]),
        ("sample.steps", [], ["sample.steps"]),
        ("sample.n_samples", 0, ["n_samples"]),
        ("sample.grids", ["cosine"], ["cosine", "logsnr"]),
        ("sample.grids", [], ["sample.grids", "non-empty"]),
        ("sample.schedules", ["vp_linear", "vp_linear"], ["sample.schedules", "twice"]),
        ("sample.guidance_scales", [None, float("nan")], ["sample.guidance_scales holds nan", "finite"]),
        ("seeds", [], ["seeds", "non-empty"]),
        ("evaluate.precision_recall", "yes", ["evaluate.precision_recall='yes'", "true or false"]),
        ("sample.invariance_samples", -1, ["sample.invariance_samples=-1", ">= 0"]),
        ("evaluate.feature_extractor", "clip", ["clip", "inception"]),
        ("schedule.ve.params", {"sigma_max": -1.0}, ["sigma_max"]),
        ("schedule.flow.prediction", "noise", ["noise", "velocity"]),
        ("schedule.vp_typo", {"params": {}}, ["schedule.vp_typo", "vp_cosine"]),
        ("data.toy", "moons", ["data", "'toy'", "batch_size"]),
        ("denoiser.depth", 0, ["denoiser.depth=0"]),
        ("trainer.devices", 0, ["trainer.devices=0"]),
        ("trainer.accelerator", "tpuu", ["trainer.accelerator='tpuu'", "cuda"]),
        ("trainer.strategy", "dpp", ["trainer.strategy='dpp'", "ddp"]),
        ("trainer.val_every_n_steps", 0, ["trainer.val_every_n_steps=0"]),
        ("trainer.log_every_n_steps", -1, ["trainer.log_every_n_steps=-1"]),
        ("trainer.sample_solver", "nope", ["trainer.sample_solver='nope'", "ddim"]),
        ("optim.betas", [0.9, 1.0], ["optim.betas=[0.9, 1.0]", "[0, 1)"]),
        ("optim.weight_decay", -1.0, ["optim.weight_decay=-1.0"]),
        ("optim.warmup_steps", -1, ["optim.warmup_steps=-1"]),
        ("optim.grad_clip", 0.0, ["optim.grad_clip=0.0", "null"]),
        ("loss.weighting", "foo", ["loss", "foo", "min_snr"]),
        ("ema.warmup", "yes", ["ema.warmup='yes'"]),
        ("class_cond.num_classes", 3, ["class_cond.num_classes=3", "10"]),
        ("sample.reference.rtol", 0.0, ["sample.reference.rtol=0.0", "> 0"]),
        ("sample.reference.rtoll", 1e-3, ["sample.reference", "rtoll", "atol"]),
        ("evaluate.nll_divergence", "approx", ["approx", "hutchinson"]),
        ("wandb.project", "", ["wandb.project=''"]),
        ("wandb.projekt", "x", ["wandb.projekt", "entity"]),
        ("sample.seeed", 1, ["sample.seeed", "n_samples"]),
        ("typo", 1, ["unknown key typo", "evaluate"]),
        ("sample.guidance_scales", [2.0], ["class_cond"]),
    ],
)
def test_bad_values_fail_with_one_line(default, key, value, words):
    cfg = yaml.safe_load(yaml.safe_dump(default))
    node = cfg
    *parents, last = key.split(".")
    for p in parents:
        node = node[p]
    node[last] = value
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    msg = str(err.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_missing_solver_options_is_an_error(default):
    cfg = yaml.safe_load(yaml.safe_dump(default))
    del cfg["sample"]["options"]["ddim"]
    with pytest.raises(ConfigError, match="sample.options.ddim"):
        validate(cfg)


def test_bad_override_is_one_line():
    with pytest.raises(ConfigError) as err:
        compose(["experiment=does_not_exist"])
    assert "does_not_exist" in str(err.value) and "\n" not in str(err.value)


def test_conf_solver_options_are_the_spec_defaults(default):
    """conf/solver/all.yaml holds every solver's options at the values its spec declares (one home:
    the spec; conf repeats them only so that `-S sample.options.X.k=v` overrides work)."""
    assert set(default["sample"]["options"]) == set(SOLVERS)
    for name, options in default["sample"]["options"].items():
        assert options == get_spec(name).defaults(), name


def test_stochastic_solvers():
    assert all(get_spec(s).is_stochastic() for s in ("ddpm", "pc", "euler_maruyama"))
    assert not get_spec("ddim").is_stochastic({"eta": 0.0}) and get_spec("ddim").is_stochastic({"eta": 1.0})
    assert not any(get_spec(s).is_stochastic() for s in ("euler", "heun", "dpm_solver_2m", "rk45"))


def _expand(template: str, item: dict, cfg: dict) -> str:
    """A dvc.yaml template with ``${item.X}`` (matrix), ``${key}`` (foreach over ``pretrained``) and
    ``${a.b}`` (a params value) filled in."""
    text = re.sub(r"\$\{item\.(\w+)\}", lambda m: item[m.group(1)], template)
    text = text.replace("${key}", item["key"])
    return re.sub(r"\$\{([\w.]+)\}", lambda m: str(_lookup(cfg, m.group(1))), text)


def _lookup(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def test_dvc_stages_declare_resolvable_and_minimal_params(default):
    default = {**default, "pretrained": {"tiny": "models/tiny"}}  # the foreach stages resolve too
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert {"prepare", "train", "reference", "sample", "evaluate", "nll", "report"} <= set(stages)
    assert stages["train"]["matrix"] == {"schedule": "${schedules}", "seed": "${seeds}"}
    # one stage per solver x grid, looping over the networks, sampling schedules and guidance scales
    assert stages["sample"]["matrix"] == {"solver": "${solvers}", "grid": "${sample.grids}"}
    assert "sample.grids" not in stages["sample"]["params"]  # a new grid re-runs only its own stages
    for stage in stages.values():
        stage = stage.get("do", stage)  # foreach stages
        items = [
            {"schedule": s, "solver": v, "seed": k, "grid": g, "key": "tiny"}
            for s in default["schedules"]
            for v in default["solvers"]
            for k in default["seeds"]
            for g in default["sample"]["grids"]
        ]
        for item in items:
            for p in stage.get("params", []):
                _lookup(default, _expand(p, item, default))  # KeyError if a declared param is missing
    # one solver's stage reads its own options only, so changing ddim's eta re-runs only ddim
    sample_params = stages["sample"]["params"]
    assert "sample.options.${item.solver}" in sample_params
    assert not any(p in ("sample", "sample.options") for p in sample_params)
    assert "sample.options.${item.solver}" not in stages["evaluate"]["params"]
    assert not any(p.startswith("sample") for p in stages["train"]["params"])
    assert (
        "schedule.${item.schedule}" in stages["train"]["params"]
        and "schedule" not in stages["train"]["params"]
    )


@pytest.mark.parametrize("experiment", ["quick", "smoke", "mnist"])
def test_dvc_hydra_composition_equals_ours(tmp_path, experiment):
    """`dvc exp run -S experiment=X` writes params.yaml with DVC's own Hydra call: same dict as ours."""
    from dvc.utils.hydra import compose_and_dump

    out = tmp_path / "params.yaml"
    compose_and_dump(out, str(ROOT / "conf"), None, "config", str(tmp_path), [f"experiment={experiment}"])
    assert yaml.safe_load(out.read_text()) == compose([f"experiment={experiment}"])


def test_sections_outside_the_current_lists_are_checked_too():
    """`solver=ode` leaves pc out of `solvers`, `schedule=vp` leaves ve out of `schedules`: their
    sections are still the solver's and the schedule's to check."""
    cfg = compose(["solver=ode", "schedule=vp", "sample.options.pc.snr=-1"])
    assert "pc" not in cfg["solvers"]
    with pytest.raises(ConfigError, match=r"sample\.options\.pc\.snr=-1"):
        validate(cfg)
    cfg = compose(["schedule=vp", "schedule.ve.params.sigma_max=-1.0"])
    assert "ve" not in cfg["schedules"]
    with pytest.raises(ConfigError, match=r"schedule\.ve\.params\.sigma_max"):
        validate(cfg)
    with pytest.raises(ConfigError, match="unknown solver 'ddimm'.*rk45"):
        validate(compose(["+sample.options.ddimm={}"]))


def test_network_is_built_for_the_data_shape():
    """The mnist U-Net (28x28, attention at 7) is checked against the data without training it."""
    assert validate(compose(["experiment=mnist"]))
    for override, words in (
        ("denoiser.groups=7", "denoiser.groups=7"),
        ("denoiser.heads=3", "denoiser.heads=3"),
        ("denoiser.attn_resolutions=[5]", "(28, 14, 7)"),
        ("denoiser.ch_mult=[1,2,2,2]", "divisible by 8"),
    ):
        with pytest.raises(ConfigError, match=re.escape(words)) as err:
            validate(compose(["experiment=mnist", override]))
        assert "\n" not in str(err.value)


def test_only_the_report_stage_depends_on_report_code():
    """Rewording the report re-runs only `report`: no other stage lists report code among its deps
    (DVC re-runs a stage exactly when a dep changes), and the sample stage imports none of it."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    report_code = ("src/difflab/report", "pipeline/report.py")
    for name, stage in stages.items():
        deps = stage.get("deps", [])
        uses = [d for d in deps if any(d == r or d.startswith(r + "/") for r in report_code)]
        assert (name == "report") == bool(uses), (name, uses)
    for script in ("sample", "reference", "train", "evaluate", "nll", "prepare"):
        assert "difflab.report" not in (ROOT / f"pipeline/{script}.py").read_text(), script
