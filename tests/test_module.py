"""The LightningModule and train(): loss goes down for every schedule, EMA is what is saved, checkpoints
load with weights_only=True, resume continues the step count, bad input fails early, CFG works."""

from __future__ import annotations

import copy
import functools
import json
import os
import pathlib

import lightning.pytorch as pl
import psutil
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from difflab.config import compose
from difflab.data.toy import ring_mixture
from difflab.losses import DiffusionLoss
from difflab.module import DiffusionModule, NonFiniteLossError
from difflab.nets import build_net
from difflab.parametrization import from_x0
from difflab.schedules import get_schedule, schedule_class
from difflab.training import load_denoiser, train


@functools.cache
def _smoke() -> dict:
    return compose(["experiment=smoke"])


def tiny_cfg(**over) -> dict:
    """The smoke experiment as composed from conf/ (every key a stage reads), on 2000 toy points with a
    small MLP, 200 steps; ``over`` updates sections (dicts are merged, except a new ``name``, which
    names another dataset or network and replaces the section)."""
    cfg = copy.deepcopy(_smoke())
    cfg["experiment"] = "test"
    cfg["data"] = {"name": "toy2d", "toy": "gaussian_mixture", "n": 2000, "batch_size": 128}
    cfg["denoiser"] = {"name": "mlp", "width": 64, "depth": 2, "emb_dim": 32}
    cfg["optim"].update(lr=3e-3, warmup_steps=5)
    cfg["ema"]["decay"] = 0.99
    cfg["trainer"].update(max_steps=200, val_every_n_steps=100, log_every_n_steps=10)
    for key, value in over.items():
        merge = isinstance(value, dict) and key in cfg and "name" not in value
        cfg[key] = {**cfg[key], **value} if merge else value
    return cfg


def _fixed_val_loss(denoiser, data: torch.Tensor) -> float:
    """The schedule's own training loss (edm: lognormal levels, EDM weighting) on fixed data, times and
    noise (a fixed generator): comparable before and after."""
    loss = DiffusionLoss.for_schedule(denoiser.schedule)
    with torch.no_grad():
        return float(loss(denoiser, data, generator=torch.Generator().manual_seed(7)).mean())


class _Oracle:
    """The exact denoiser of the toy mixture in the loss's interface: its loss is the attainable minimum."""

    def __init__(self, like, mixture):
        self.schedule, self.prediction, self.sigma_data = like.schedule, like.prediction, like.sigma_data
        self.D = mixture.denoiser(like.schedule)

    def raw(self, x, t, cond=None):
        x0 = self.D(x, t).to(x.dtype)
        return from_x0(self.prediction, x0, x, t, self.schedule, self.sigma_data)


@pytest.mark.parametrize("schedule", list(_smoke()["schedule"]))
def test_tiny_training_lowers_the_loss(schedule, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = tiny_cfg()
    from difflab.data.datamodules import build_datamodule
    from difflab.training import build_module

    dm = build_datamodule(cfg["data"], 0)
    data = dm.dataset("val").tensors[0]
    pl.seed_everything(0, verbose=False)
    untrained = build_module(cfg, schedule, dm.data_shape, 0).denoiser
    before = _fixed_val_loss(untrained, data)
    best = _fixed_val_loss(_Oracle(untrained, ring_mixture()), data)
    metrics = train(cfg, schedule, tmp_path)
    denoiser = load_denoiser(tmp_path)
    after = _fixed_val_loss(denoiser, data)
    hp = denoiser.hparams
    assert hp["schedule"]["name"] == schedule and hp["prediction"] == schedule_class(schedule).prediction
    assert metrics["steps"] == 200 and metrics["val_loss"] == pytest.approx(metrics["val_loss"])
    # the trained net closes most of the gap between the untrained loss and the exact denoiser's
    assert best < after < best + 0.4 * (before - best), (before, after, best)
    saved = json.loads((tmp_path / "train_metrics.json").read_text())
    assert saved["steps"] == 200 and saved["images_per_second"] > 0


def test_ema_checkpoint_resume_and_weights_only(tmp_path):
    """EMA weights differ from the raw ones and are what last.ckpt and model.pt hold; both files load with
    weights_only=True; a second train() on the same folder resumes and continues the global step.
    Runs with the offline W&B logger, whose files stay inside the run folder."""
    cfg = tiny_cfg(
        data={"name": "digits", "batch_size": 64},
        trainer={"max_steps": 20, "val_every_n_steps": 10, "sample_every_n_epochs": 1, "sample_steps": 4},
        class_cond={"num_classes": 10},
    )
    metrics = train(cfg, "flow", tmp_path)
    assert metrics["steps"] == 20
    # W&B's service has stopped when train() returns: nothing writes into the run folder after the stage
    # (a stage forked by the warm-start server skips W&B's exit hook; DVC hashes the folder at once)
    assert not [p.name() for p in psutil.Process().children(recursive=True) if "wandb" in p.name()]
    # sample grids: after the first epoch's validation (step 10) and at the end; 64 samples, a class a column
    from PIL import Image

    grids = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert grids == ["step_000010.png", "step_000020.png"], grids
    assert Image.open(tmp_path / "samples" / "step_000020.png").size == (10 * 10 + 2, 7 * 10 + 2)
    ckpt = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 20
    ema = {k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    raw = {k[4:]: v for k, v in ckpt["current_model_state"].items() if k.startswith("net.")}
    assert max((ema[k] - raw[k]).abs().max().item() for k in ema) > 1e-4
    model = torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=True)
    assert model["state_dict"].keys() == ema.keys()
    assert all(torch.equal(model["state_dict"][k], ema[k]) for k in ema)
    hp = model["hparams"]
    assert hp["data_shape"] == [1, 8, 8] and hp["num_classes"] == 10 and hp["data"]["levels"] == 17
    assert ckpt["hyper_parameters"]["schedule"]["name"] == "flow"
    assert (tmp_path / "best.ckpt").exists()
    # the resolved config went to an offline W&B run inside the run folder
    runs = list((tmp_path / "wandb").rglob("offline-run-*"))
    assert runs, list(tmp_path.rglob("*"))
    # resume: 10 more steps on top of the 20 in last.ckpt
    cfg["trainer"]["max_steps"] = 30
    resumed = train(cfg, "flow", tmp_path)
    assert resumed["resumed_from_step"] == 20 and resumed["steps"] == 30
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 30


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    calls = {"n": 0}
    original = DiffusionLoss.__call__

    def poisoned(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        return out * float("nan") if calls["n"] > 14 else out  # step 15 onwards (val batches count too)

    monkeypatch.setattr(DiffusionLoss, "__call__", poisoned)
    cfg = tiny_cfg(trainer={"max_steps": 40, "val_every_n_steps": 10}, data={"n": 400})
    with pytest.raises(NonFiniteLossError, match="non-finite training loss"):
        train(cfg, "vp_linear", tmp_path)
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 10
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "train_metrics.json").exists()


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"data": {"name": "nope"}}, "unknown dataset 'nope'"),
        ({"data": {"name": "mnist", "root": "/nonexistent/mnist", "download": False}}, "no IDX files"),
        ({"denoiser": {"name": "unet", "channels": 16}}, "needs image data"),
        ({"denoiser": {"name": "mlp", "widht": 3}}, "unknown argument 'widht'"),
        ({"class_cond": {"num_classes": 10}}, "does not match dataset 'toy2d'"),
    ],
)
def test_bad_input_fails_before_writing(over, message, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_cfg()
    cfg.update({k: v if k in ("data", "denoiser") else {**cfg[k], **v} for k, v in over.items()})
    with pytest.raises(ValueError, match=message) as info:
        train(cfg, "vp_linear", out)
    assert "\n" not in str(info.value)
    assert not out.exists()


def test_unknown_schedule(tmp_path):
    with pytest.raises(ValueError, match="unknown schedule 'vpp'"):
        train(tiny_cfg(), "vpp", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_module_hparams_are_plain_and_label_dropout():
    net = build_net({"name": "mlp", "width": 32, "depth": 1, "emb_dim": 16}, (2,), 3)
    module = DiffusionModule(
        net,
        get_schedule("flow"),
        DiffusionLoss(),
        prediction="velocity",
        lr=1e-3,
        num_classes=3,
        label_dropout=0.5,
    )
    assert type(module.hparams["optim"]) is dict and module.hparams["schedule"]["name"] == "flow"
    y = torch.zeros(10000, dtype=torch.long)
    dropped = module._labels(y, drop=True)
    assert set(dropped.unique().tolist()) == {0, 3}
    assert (dropped == 3).float().mean().item() == pytest.approx(0.5, abs=0.03)
    assert torch.equal(module._labels(y, drop=False), y)
    assert module.denoiser.net is net


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({"lr": 0.0}, r"lr=0.0 must be a finite number > 0"),
        ({"betas": (0.9, 1.0)}, r"betas=\(0.9, 1.0\)"),
        ({"warmup_steps": 1.5}, "warmup_steps=1.5"),
        ({"num_classes": -1}, "num_classes=-1"),
        ({"label_dropout": 1.5}, r"label_dropout=1.5 must be a finite number in \[0, 1\]"),
    ],
)
def test_module_settings_are_checked_as_the_config_declares_them(bad, named):
    net = build_net({"name": "mlp", "width": 8, "depth": 1, "emb_dim": 8}, (2,), 3)
    build = functools.partial(
        DiffusionModule, net, get_schedule("flow"), DiffusionLoss(), prediction="velocity"
    )
    assert build().hparams["optim"] == {
        "lr": 2e-4,
        "betas": [0.9, 0.999],
        "weight_decay": 0.0,
        "warmup_steps": 100,
    }
    with pytest.raises(ValueError, match=named):
        build(**bad)
    with pytest.raises(TypeError, match="lr_max"):
        build(lr_max=1.0)


def test_classifier_free_guidance_shifts_class_frequencies():
    """Two overlapping classes N(-1, 0.6^2) and N(+1, 0.6^2) in 2-D: a tiny class-conditional MLP
    trained with label dropout samples the asked-for class more often than unconditionally, and more
    still with guidance scale 3 (the class is read off the sign of the first coordinate)."""
    from difflab.parametrization import guided
    from difflab.solvers import get_solver

    pl.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(0)
    n = 4000
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) * 0.6
    x[:, 0] += 2.0 * y - 1.0
    net = build_net({"name": "mlp", "width": 64, "depth": 2, "emb_dim": 32}, (2,), 2)
    module = DiffusionModule(
        net,
        get_schedule("flow"),
        DiffusionLoss(),
        prediction="velocity",
        lr=3e-3,
        warmup_steps=10,
        num_classes=2,
        label_dropout=0.2,
    )
    loader = DataLoader(TensorDataset(x, y), batch_size=256, shuffle=True, drop_last=True)
    trainer = pl.Trainer(
        max_steps=300,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)
    module.eval()
    D = module.denoiser
    solver = get_solver("euler")
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
    cond = torch.zeros(2000, dtype=torch.long)  # ask for class 0 (x < 0)

    def frac_class0(scale):
        with torch.no_grad():
            if scale is None:
                out = solver(guided(D, 1.0, 2), module.schedule, noise, 30)
            else:
                out = solver(guided(D, scale, 2), module.schedule, noise, 30, cond=cond)
        return (out[:, 0] < 0).float().mean().item()

    uncond, cond1, cond3 = frac_class0(None), frac_class0(1.0), frac_class0(3.0)
    assert 0.35 < uncond < 0.65, uncond
    assert cond1 > uncond + 0.2, (uncond, cond1)
    assert cond3 > cond1 + 0.02 and cond3 > 0.9, (cond1, cond3)


def test_ckpt_files_are_inside_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    train(tiny_cfg(trainer={"max_steps": 5, "val_every_n_steps": 5}), "ve", tmp_path / "run")
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["best.ckpt", "last.ckpt", "model.pt", "train_metrics.json"], names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing written beside the run folder
    assert pathlib.Path(tmp_path / "run" / "model.pt").stat().st_size > 0


def test_wandb_logger_is_offline_and_keeps_its_files_in_the_run_folder(tmp_path, monkeypatch):
    from difflab.tracking import WANDB_DIR_VARS, make_logger

    for var in WANDB_DIR_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = {"experiment": "exp1", "wandb": {"project": "p", "entity": None, "group": None}, "seed": 3}
    import wandb

    def started(logger):  # the run the logger starts (offline: no network), read through W&B's public API
        run = logger.experiment
        facts = {"offline": run.offline, "group": run.group, "name": run.name, "dir": run.dir}
        facts["seed"] = run.config["seed"]
        wandb.finish()
        return facts

    run = started(make_logger(cfg, "ve", tmp_path))
    assert run["offline"] and run["group"] == "exp1" and run["name"] == "ve" and run["seed"] == 3
    assert pathlib.Path(run["dir"]).is_relative_to(tmp_path / "wandb"), run["dir"]
    for var in WANDB_DIR_VARS:
        assert os.environ[var].startswith(str(tmp_path / "wandb")), var
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert make_logger(cfg, "ve", tmp_path) is None
    cfg["wandb"]["group"] = "g2"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert started(make_logger(cfg, "flow", tmp_path))["group"] == "g2"
