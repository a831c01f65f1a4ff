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
