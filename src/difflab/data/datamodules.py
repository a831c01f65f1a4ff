"""Lightning datamodules: toy2d, digits (CPU default), mnist, cifar10, imagefolder.

Every datamodule holds its three splits (train / val / held-out test) as integer gray levels
(``uint8``; ``levels`` of them) plus labels, chosen deterministically from the seed, and feeds the model
images scaled to [-1, 1]: ``x = 2 * level / (levels - 1) - 1``. ``toy2d`` is continuous (``levels =
None``) and stores float points. Attributes: ``data_shape`` ((C, H, W) or (d,)), ``num_classes``,
``levels``; ``train_levels()`` and ``heldout_levels()`` give ``(Tensor[N, ...] levels, labels)``.
"""

from __future__ import annotations

import functools
import gzip
import logging
import os
import pathlib
import pickle
import socket

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

log = logging.getLogger(__name__)

DATASETS = ("toy2d", "digits", "mnist", "cifar10", "imagefolder")
_COMMON_KEYS = {"name", "root", "val_fraction", "test_fraction", "batch_size", "num_workers", "download"}


def _split(n: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Deterministic train / val / test index split of ``range(n)`` from ``seed``."""
    for key, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= frac < 1:
            raise ValueError(f"data.{key}={frac} must be in [0, 1)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    if n - n_val - n_test <= 0:
        raise ValueError(f"data: val_fraction + test_fraction leave no training data out of {n}")
    return perm[n_val + n_test :], perm[:n_val], perm[n_val : n_val + n_test]


class ArrayDataModule(pl.LightningDataModule):
    """A datamodule over in-memory arrays. Subclasses implement ``_load() -> (train, test)``, each a
    ``(levels, labels)`` pair (test may be ``None``: then it is split off the training pool)."""

    name = "array"
    levels: int | None = 256

    def __init__(self, cfg: dict, seed: int = 0):
        super().__init__()
        self.cfg, self.seed = dict(cfg), int(seed)
        self.batch_size = int(self.cfg.get("batch_size", 128))
        self.num_workers = int(self.cfg.get("num_workers", 0))
        self.val_fraction = float(self.cfg.get("val_fraction", 0.1))
        self.test_fraction = float(self.cfg.get("test_fraction", 0.1))
        if self.batch_size <= 0:
            raise ValueError(f"data.batch_size={self.batch_size} must be > 0")
        self._splits: dict[str, tuple[Tensor, Tensor]] | None = None
        self.num_classes = 0
        self.data_shape: tuple[int, ...] = ()
        self._prepare()

    # -- loading ---------------------------------------------------------------------------------
    def _load(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor] | None]:
        raise NotImplementedError

    def _prepare(self) -> None:
        (x, y), test = self._load()
        if test is None:
            tr, va, te = _split(len(x), self.val_fraction, self.test_fraction, self.seed)
            test = (x[te], y[te])
        else:
            tr, va, _ = _split(len(x), self.val_fraction, 0.0, self.seed)
        self._splits = {"train": (x[tr], y[tr]), "val": (x[va], y[va]), "test": test}
        self.data_shape = tuple(x.shape[1:])
        self.num_classes = int(
            self.cfg.get("num_classes", int(y.max()) + 1 if len(y) and y.min() >= 0 else 0)
        )

    def to_model_space(self, levels: Tensor) -> Tensor:
        """Integer levels -> float32 in [-1, 1]."""
        return levels.float() * (2.0 / (self.levels - 1)) - 1.0

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        """``(levels, labels)`` of split ``train`` | ``val`` | ``test``."""
        return self._splits[name]

    def train_levels(self) -> tuple[Tensor, Tensor]:
        return self.split("train")

    def heldout_levels(self) -> tuple[Tensor, Tensor]:
        return self.split("test")

    def dataset(self, name: str) -> TensorDataset:
        x, y = self.split(name)
        return TensorDataset(self.to_model_space(x), y.long())

    # -- Lightning hooks -------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        ds = self.dataset("train")
        return DataLoader(
            ds,
            batch_size=min(self.batch_size, len(ds)),
            shuffle=True,
            drop_last=True,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed),
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset("val"), batch_size=self.batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset("test"), batch_size=self.batch_size, num_workers=self.num_workers)


class Toy2D(ArrayDataModule):
    """2-D toy sets from ``difflab.data.toy.sample_toy`` (``toy`` key: moons, rings, checkerboard,
    swiss_roll, gaussian_mixture), ``n`` points (default 20000), optional ``noise``; continuous, so
    ``levels = None`` and the "levels" arrays are the float points themselves. Labels are 0."""

    name = "toy2d"
    levels = None

    def _load(self):
        from difflab.data.toy import sample_toy

        kind, n = self.cfg.get("toy", "gaussian_mixture"), int(self.cfg.get("n", 20000))
        x = sample_toy(
            kind, n, generator=torch.Generator().manual_seed(self.seed), noise=self.cfg.get("noise")
        )
        self.cfg.setdefault("num_classes", 0)
        return (x.float(), torch.zeros(n, dtype=torch.long)), None

    def to_model_space(self, levels: Tensor) -> Tensor:
        return levels.float()


class Digits(ArrayDataModule):
    """scikit-learn's bundled 8x8 digits: 1797 images ``[1, 8, 8]``, values 0..16 (17 levels), 10 classes."""

    name = "digits"
    levels = 17

    def _load(self):
        x, y = _digits_arrays()
        return (x.clone(), y.clone()), None


@functools.cache
def _digits_arrays() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.from_numpy(d.images.astype(np.uint8)).reshape(-1, 1, 8, 8), torch.from_numpy(d.target).long()


def _read_idx(path: pathlib.Path) -> Tensor:
    """Read an IDX file (gzip or not): magic, dims, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=torch.uint8).reshape(dims)


def _find(root: pathlib.Path, stem: str) -> pathlib.Path | None:
    for sub in ("", "MNIST/raw", "raw"):
        for suffix in (".gz", ""):
            p = root / sub / f"{stem}{suffix}"
            if p.exists():
                return p
    return None


def _try_download(fn) -> str | None:
    """Run a torchvision download with a short socket timeout; return an error string on failure."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        fn()
        return None
    except Exception as e:  # any failure becomes one clear line in the caller
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    finally:
        socket.setdefaulttimeout(old)


class MNIST(ArrayDataModule):
    """MNIST ``[1, 28, 28]``, 256 levels, 10 classes. Reads the IDX files from ``root`` (cfg, else env
    ``DIFFLAB_MNIST_ROOT``, else ``data/mnist``); downloads them with torchvision when missing and
    ``download`` (default true) is set. With only the 10k test split present (offline), that split is
    divided into train / held-out by ``test_fraction`` and a warning says so."""

    name = "mnist"
    levels = 256

    def _load(self):
        root = pathlib.Path(self.cfg.get("root") or os.environ.get("DIFFLAB_MNIST_ROOT") or "data/mnist")
        if _find(root, "t10k-images-idx3-ubyte") is None and self.cfg.get("download", True):
            import torchvision

            err = _try_download(lambda: torchvision.datasets.MNIST(str(root), download=True))
            if err:
                log.warning("mnist: download failed (%s)", err)
        test_x, test_y = _find(root, "t10k-images-idx3-ubyte"), _find(root, "t10k-labels-idx1-ubyte")
        if test_x is None or test_y is None:
            raise ValueError(
                f"mnist: no IDX files (t10k-images-idx3-ubyte.gz) under data root '{root}' and no download; "
                "set data.root or DIFFLAB_MNIST_ROOT"
            )
        test = (_read_idx(test_x)[:, None], _read_idx(test_y).long())
        train_x, train_y = _find(root, "train-images-idx3-ubyte"), _find(root, "train-labels-idx1-ubyte")
        if train_x is None or train_y is None:
            log.warning(
                "mnist: only the 10k test split is in '%s'; splitting it into train/val/held-out (seed %d)",
                root,
                self.seed,
            )
            self.offline_split = True
            return test, None
        self.offline_split = False
        return (_read_idx(train_x)[:, None], _read_idx(train_y).long()), test


class CIFAR10(ArrayDataModule):
    """CIFAR-10 ``[3, 32, 32]``, 256 levels, 10 classes, from the python pickle batches under ``root``
    (``cifar-10-batches-py``), downloaded with torchvision when missing and ``download`` is set."""

    name = "cifar10"
    levels = 256

    def _load(self):
        root = pathlib.Path(self.cfg.get("root") or "data/cifar10")
        folder = root / "cifar-10-batches-py"
        if not (folder / "test_batch").exists() and self.cfg.get("download", True):
            import torchvision

            err = _try_download(
                lambda: torchvision.datasets.CIFAR10(str(root), download=True), "cifar10", root
            )
            if err:
                log.warning("cifar10: download failed (%s)", err)
        names = [f"data_batch_{i}" for i in range(1, 6)]
        if not all((folder / n).exists() for n in [*names, "test_batch"]):
            raise ValueError(f"cifar10: no CIFAR-10 batches under data root '{folder}' and no download")

        def read(files):
            xs, ys = [], []
            for n in files:
                with open(folder / n, "rb") as f:
                    d = pickle.load(f, encoding="latin1")
                xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(d["labels"]))
            return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)).long()

        return read(names), read(["test_batch"])


class ImageFolder(ArrayDataModule):
    """Any folder of images: class subfolders give labels (else unconditional). ``image_size`` (default
    32) and ``channels`` (1 or 3, default 3) fix the shape; 256 levels."""

    name = "imagefolder"
    levels = 256
    SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")

    def _load(self):
        from PIL import Image

        if not self.cfg.get("root"):
            raise ValueError("imagefolder: data.root must name a folder of images")
        root = pathlib.Path(self.cfg["root"])
        files = (
            sorted(p for p in root.rglob("*") if p.suffix.lower() in self.SUFFIXES) if root.is_dir() else []
        )
        if not files:
            raise ValueError(f"imagefolder: no images ({', '.join(self.SUFFIXES)}) under data root '{root}'")
        size, channels = int(self.cfg.get("image_size", 32)), int(self.cfg.get("channels", 3))
        if channels not in (1, 3):
            raise ValueError(f"imagefolder: channels={channels}; allowed: 1, 3")
        classes = sorted({p.parent.relative_to(root).as_posix() for p in files} - {"."})
        index = {c: i for i, c in enumerate(classes)}
        xs, ys = [], []
        for p in files:
            with Image.open(p) as im:
                im = im.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BICUBIC)
                a = np.asarray(im, dtype=np.uint8).reshape(size, size, channels)
            xs.append(torch.from_numpy(a.copy()).permute(2, 0, 1))
            ys.append(index.get(p.parent.relative_to(root).as_posix(), 0))
        self.cfg.setdefault("num_classes", len(classes) if len(classes) > 1 else 0)
        return (torch.stack(xs), torch.tensor(ys, dtype=torch.long)), None


_REGISTRY = {"toy2d": Toy2D, "digits": Digits, "mnist": MNIST, "cifar10": CIFAR10, "imagefolder": ImageFolder}


def build_datamodule(cfg: dict, seed: int = 0) -> ArrayDataModule:
    """Build the datamodule ``cfg["name"]`` (one of ``DATASETS``) from the ``data`` config section.

    Keys: ``name``, ``root`` (mnist/cifar10/imagefolder), ``val_fraction``, ``test_fraction``,
    ``batch_size``, ``num_workers``, ``download`` (default true); toy2d: ``toy``, ``n``; imagefolder:
    ``image_size``, ``channels``; any: ``num_classes`` to override the number found (0 = ignore labels).
    Unknown name or missing files -> ``ValueError`` (one line). The data are loaded here, eagerly.
    """
    name = cfg.get("name")
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    return _REGISTRY[name](cfg, seed)
