"""The GPU experiments (`mnist`, `cifar10`) compose, validate and build every object they name at
minimal cost, so a config error fails here rather than on a user's GPU hour: the datamodule (through
torchvision's download path, with fakes that write its files), the network for the data's shape on
the meta device, each schedule's loss, the solvers' options and the feature extractor."""

import pytest
import torch

from difflab.config import compose, validate
from difflab.data.datamodules import build_datamodule
from difflab.losses import DiffusionLoss
from difflab.nets import build_net
from difflab.schedules import get_schedule
from difflab.solvers import get_spec
from test_downloads import fakes  # noqa: F401  (fixture: torchvision's MNIST/CIFAR10 replaced by fakes)


@pytest.mark.parametrize(
    "experiment, shape",
    [
        ("mnist", (1, 28, 28)),
        ("cifar10", (3, 32, 32)),
        ("mnist_cfg", (1, 28, 28)),
        ("mnist_cfg_unet", (1, 28, 28)),
    ],
)
def test_gpu_experiment_builds_every_object(experiment, shape, fakes, tmp_path):  # noqa: F811
    import torch_fidelity

    from difflab.metrics import fid

    overrides = (
        ["experiment=mnist_cfg", "denoiser=unet"]
        if experiment == "mnist_cfg_unet"
        else [f"experiment={experiment}"]
    )
    cfg = validate(compose(overrides))
    data = {**cfg["data"], "root": str(tmp_path / experiment), "num_workers": 0}
    dm = build_datamodule(data, seed=cfg["seed"])
    assert dm.data_shape == shape and dm.levels == 256
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == shape and x.min() >= -1 and x.max() <= 1
    num_classes = cfg["class_cond"]["num_classes"]
    with torch.device("meta"):
        net = build_net(cfg["denoiser"], shape, num_classes)
        out = net(torch.zeros(2, *shape), torch.zeros(2), None)  # (labels on meta cannot be range-checked)
    assert out.shape == (2, *shape)
    assert sum(p.numel() for p in net.parameters()) > 1e6  # the GPU U-Net, not the CPU toy
    for name in cfg["schedules"]:
        schedule = get_schedule(name, **cfg["schedule"][name]["params"])
        assert DiffusionLoss.for_schedule(schedule, **cfg["loss"]).time_sampling
    for name in cfg["solvers"]:
        get_spec(name).check_options(cfg["sample"]["options"][name])
    extractor = fid._TF_NAMES[cfg["evaluate"]["feature_extractor"]]
    assert extractor in torch_fidelity.registry.FEATURE_EXTRACTORS_REGISTRY
    assert cfg["trainer"]["accelerator"] == "gpu" and cfg["trainer"]["precision"] == "bf16-mixed"
    if experiment.startswith("mnist_cfg"):  # guidance on MNIST: class-conditional, w up to 7
        assert num_classes == 10 and cfg["sample"]["guidance_scales"] == [0, 1, 2, 4, 7]
        assert cfg["denoiser"]["name"] == ("unet" if experiment.endswith("unet") else "dit")


def test_cifar10_pretrained_composes_and_builds_offline(tmp_path, monkeypatch):
    """`cifar10_pretrained` names google/ddpm-cifar10-32 and trains nothing: with a model of that
    configuration (random weights, tiny channels) in diffusers' cache, the experiment validates (the
    pretrained check loads the configs), every solver's options check, and the network loads as a
    3x32x32 epsilon model on vp_discrete."""
    diffusers = pytest.importorskip("diffusers")
    import huggingface_hub.constants as hub

    from difflab.networks import network_ids
    from difflab.pretrained import load_pretrained

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "cache"))
    repo = tmp_path / "cache" / "models--google--ddpm-cifar10-32"
    commit = "0123456789abcdef0123456789abcdef01234567"
    unet = diffusers.UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4, attention_head_dim=8,
    )  # fmt: skip
    betas = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}
    scheduler = diffusers.DDPMScheduler(**betas, clip_sample=True)
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)

    cfg = validate(compose(["experiment=cifar10_pretrained"]))
    assert cfg["schedules"] == [] and [n.model for n in network_ids(cfg)] == ["ddpm_cifar10"]
    assert cfg["evaluate"]["feature_extractor"] == "inception" and cfg["sample"]["steps"] == [5, 10, 20, 50]
    for name in cfg["solvers"]:
        get_spec(name).check_options(cfg["sample"]["options"][name])
    D = load_pretrained(cfg["pretrained"]["ddpm_cifar10"])
    assert D.sample_shape == (3, 32, 32) and D.prediction == "eps" and not D.num_classes
    assert D.schedule.name == "vp_discrete"
    assert D(torch.zeros(2, 3, 32, 32), torch.full((2,), 0.5)).shape == (2, 3, 32, 32)
