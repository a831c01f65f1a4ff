"""Datamodules: shapes, ranges [-1, 1], gray levels, labels, deterministic splits; bad input."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import torch

from difflab.data import DATASETS, build_datamodule


def _check(dm, shape, levels, num_classes):
    assert dm.data_shape == shape and dm.levels == levels and dm.num_classes == num_classes
    x, y = dm.heldout_levels()
    xt, yt = dm.train_levels()
    assert x.shape[1:] == shape and xt.shape[1:] == shape and len(y) == len(x) and len(yt) == len(xt)
    if levels is not None:
        assert x.dtype == torch.uint8 and int(xt.max()) <= levels - 1
    batch, labels = next(iter(dm.train_dataloader()))
    assert batch.shape == (dm.batch_size, *shape) and batch.dtype == torch.float32
    assert labels.dtype == torch.long and len(labels) == dm.batch_size
    if levels is not None:
        full = dm.dataset("train").tensors[0]
        assert full.min().item() == -1.0 and full.max().item() == 1.0  # both ends of [-1, 1] reached
        # every value is one of the `levels` equally spaced gray levels
        grid = torch.linspace(-1, 1, levels)
        assert torch.isclose(full.reshape(-1, 1)[:5000], grid, rtol=0, atol=1e-6).any(1).all()
    return x, y


def test_digits():
    dm = build_datamodule({"name": "digits", "batch_size": 32}, seed=0)
    x, y = _check(dm, (1, 8, 8), 17, 10)
    n = len(dm.split("train")[0]) + len(dm.split("val")[0]) + len(x)
    assert n == 1797 and len(x) == round(0.1 * 1797)
    assert set(y.tolist()) == set(range(10))
    assert int(dm.train_levels()[0].max()) == 16


def test_splits_are_deterministic_from_the_seed():
    a, b = build_datamodule({"name": "digits"}, seed=3), build_datamodule({"name": "digits"}, seed=3)
    c = build_datamodule({"name": "digits"}, seed=4)
    assert torch.equal(a.heldout_levels()[0], b.heldout_levels()[0])
    assert torch.equal(a.train_levels()[1], b.train_levels()[1])
    assert not torch.equal(a.heldout_levels()[0], c.heldout_levels()[0])
    # the loader's shuffling is seeded too
    assert torch.equal(next(iter(a.train_dataloader()))[0], next(iter(b.train_dataloader()))[0])


def test_toy2d():
    dm = build_datamodule({"name": "toy2d", "toy": "gaussian_mixture", "n": 1000, "batch_size": 100}, seed=0)
    x, _ = _check(dm, (2,), None, 0)
    assert len(x) == 100 and x.dtype == torch.float32
    # 8 Gaussians on the circle of radius sqrt(2)
    assert x.norm(dim=1).mean().item() == pytest.approx(2**0.5, abs=0.1)


def test_mnist_offline_splits_the_test_set(mnist_root, caplog):
    with caplog.at_level(logging.WARNING):
        dm = build_datamodule({"name": "mnist", "root": mnist_root, "download": False}, seed=0)
    assert "only the 10k test split" in caplog.text and dm.offline_split
    x, y = _check(dm, (1, 28, 28), 256, 10)
    sizes = [len(dm.split(s)[0]) for s in ("train", "val", "test")]
    assert sum(sizes) == 10000 and sizes[2] == 1000
    assert int(dm.train_levels()[0].max()) == 255


def test_mnist_reads_the_env_root(mnist_root, monkeypatch):
    monkeypatch.setenv("DIFFLAB_MNIST_ROOT", mnist_root)
    dm = build_datamodule({"name": "mnist", "root": None, "download": False}, seed=1)
    assert dm.data_shape == (1, 28, 28)


def _fake_cifar(root, n=12):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        data[0, 0], data[0, 1] = 0, 255
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": list(rng.integers(0, 10, n))}, f)
    return root


def test_cifar10_from_pickled_batches(tmp_path):
    root = _fake_cifar(tmp_path)
    dm = build_datamodule({"name": "cifar10", "root": str(root), "download": False, "batch_size": 8}, seed=0)
    x, _ = _check(dm, (3, 32, 32), 256, dm.num_classes)
    assert len(x) == 12 and len(dm.split("train")[0]) + len(dm.split("val")[0]) == 60


def test_imagefolder_with_class_subfolders(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(10):
            a = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
            a[0, 0], a[0, 1] = 0, 255
            Image.fromarray(a).save(tmp_path / cls / f"{i}.png")
    cfg = {"name": "imagefolder", "root": str(tmp_path), "image_size": 16, "channels": 3, "batch_size": 4}
    cfg.update(val_fraction=0.2, test_fraction=0.2)
    dm = build_datamodule(cfg, seed=0)
    _, y = _check(dm, (3, 16, 16), 256, 2)
    assert len(y) == 4


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"name": "svhn"}, "unknown dataset 'svhn'; valid datasets: " + ", ".join(DATASETS)),
        (
            {"name": "mnist", "root": "/nonexistent", "download": False},
            "no IDX files .* under data root '/nonexistent'",
        ),
        ({"name": "cifar10", "root": "/nonexistent", "download": False}, "no CIFAR-10 batches"),
        ({"name": "imagefolder", "root": "/nonexistent"}, "no images"),
        ({"name": "digits", "val_fraction": 1.5}, "val_fraction=1.5"),
        ({"name": "toy2d", "toy": "spiral"}, "unknown toy dataset 'spiral'"),
    ],
)
def test_bad_input(cfg, message):
    with pytest.raises(ValueError, match=message) as info:
        build_datamodule(cfg, seed=0)
    assert "\n" not in str(info.value)
