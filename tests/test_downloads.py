"""The MNIST and CIFAR-10 download paths: torchvision's dataset classes are replaced by fakes that
write the files torchvision writes (MNIST's raw IDX files, CIFAR-10's cifar-10-batches-py pickles),
then ``build_datamodule`` with ``download: true`` loads them."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torchvision

from difflab.data import build_datamodule


def _idx(path, array: np.ndarray) -> None:
    """An IDX file: magic (0, 0, uint8 type 0x08, ndim), big-endian dims, the bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


class FakeMNIST:
    """Writes ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` like torchvision."""

    calls: list = []

    def __init__(self, root, download=False, **kwargs):
        type(self).calls.append((root, download))
        raw = __import__("pathlib").Path(root) / "MNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for split, n in (("train", 60), ("t10k", 20)):
            _idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
            _idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)


class FakeCIFAR10:
    """Writes ``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` like torchvision
    (pickled dicts of ``data`` uint8 [n, 3072] and ``labels``)."""

    calls: list = []

    def __init__(self, root, download=False, **kwargs):
        type(self).calls.append((root, download))
        folder = __import__("pathlib").Path(root) / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for name, n in [(f"data_batch_{i}", 12) for i in range(1, 6)] + [("test_batch", 10)]:
            batch = {
                "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                "labels": list(np.arange(n) % 10),
            }
            with open(folder / name, "wb") as f:
                pickle.dump(batch, f)
        with open(folder / "batches.meta", "wb") as f:
            pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)


@pytest.fixture
def fakes(monkeypatch):
    FakeMNIST.calls, FakeCIFAR10.calls = [], []
    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)


def test_mnist_downloads_then_loads(fakes, tmp_path):
    cfg = {"name": "mnist", "root": str(tmp_path / "mnist"), "download": True, "val_fraction": 0.1}
    dm = build_datamodule(cfg, seed=0)
    assert FakeMNIST.calls == [(str(tmp_path / "mnist"), True)]
    assert dm.data_shape == (1, 28, 28) and dm.num_classes == 10 and dm.levels == 256
    assert not dm.offline_split and len(dm.heldout_levels()[0]) == 20  # the t10k split is held out
    assert len(dm.train_levels()[0]) == 54  # 60 minus 10% validation
    build_datamodule(cfg, seed=0)
    assert len(FakeMNIST.calls) == 1  # the files are there: no second download


def test_cifar10_downloads_then_loads(fakes, tmp_path):
    cfg = {"name": "cifar10", "root": str(tmp_path / "cifar"), "download": True, "val_fraction": 0.1}
    dm = build_datamodule(cfg, seed=0)
    assert FakeCIFAR10.calls == [(str(tmp_path / "cifar"), True)]
    assert dm.data_shape == (3, 32, 32) and dm.num_classes == 10 and dm.levels == 256
    x, y = dm.heldout_levels()
    assert x.shape == (10, 3, 32, 32) and y.tolist() == list(range(10))
    assert len(dm.train_levels()[0]) == 54  # 5 x 12 minus 10% validation
    build_datamodule(cfg, seed=0)
    assert len(FakeCIFAR10.calls) == 1


def test_a_failed_download_is_one_line_naming_the_folder(monkeypatch, tmp_path, caplog):
    class Offline:
        def __init__(self, root, download=False, **kwargs):
            raise OSError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(ValueError, match="no CIFAR-10 batches under data root") as err:
        build_datamodule({"name": "cifar10", "root": str(tmp_path), "download": True}, seed=0)
    assert "\n" not in str(err.value)
    assert "download failed (OSError: Name or service not known)" in caplog.text
