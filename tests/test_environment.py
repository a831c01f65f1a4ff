"""The locked environment: torchvision's compiled ops load (plain pip on CPU-only torch breaks this)."""


def test_torchvision_ops_and_metrics_import():
    import torch
    import torch_fidelity
    import torchmetrics
    import torchvision
    from torchvision.ops import nms

    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0]])
    keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    assert torch_fidelity.__version__ and torchmetrics.__version__ and torchvision.__version__


def test_ema_callback_is_lightnings():
    from lightning.pytorch.callbacks import EMAWeightAveraging

    assert EMAWeightAveraging.__module__.startswith("lightning.pytorch.callbacks")
