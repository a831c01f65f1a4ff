"""Lightning datamodules: toy2d, digits (CPU default), mnist, cifar10, imagefolder.

Every datamodule holds its three splits (train / val / held-out test) as integer gray levels
(``uint8``; ``levels`` of them) plus labels, chosen deterministically from the seed, and feeds the model
images scaled to [-1, 1]: ``x = 2 * level / (levels - 1) - 1``. ``toy2d`` is continuous (``levels =
None``) and stores float points. Attributes: ``data_shape`` ((C, H, W) or (d,)), ``num_classes``,
``levels``; ``train_levels()`` and ``heldout_levels()`` give ``(Tensor[N, ...] levels, labels)``.

``DATAMODULES`` is the registry (name -> class); a dataset's ``fields`` declare its config keys (its
constructor's keyword parameters, whose defaults apply where the config leaves one out), and
``data_shape_of(cfg)`` / ``known_classes`` tell the shape and the classes without loading anything,
so a config is checked (``check_data``) before any download.
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

from difflab.images import from_levels
from difflab.schema import Field, check_section, registry

log = logging.getLogger(__name__)


def _check_fraction(key: str, frac) -> None:
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 <= frac < 1:
        raise ValueError(f"{key}={frac!r} must be a number in [0, 1)")


def _check_loader(batch_size, num_workers) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers={num_workers!r} must be an integer >= 0")


def _split(n: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Deterministic train / val / test index split of ``range(n)`` from ``seed``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    if n - n_val - n_test <= 0:
        raise ValueError(f"data: val_fraction + test_fraction leave no training data out of {n}")
    return perm[n_val + n_test :], perm[:n_val], perm[n_val : n_val + n_test]


class ArrayDataModule(pl.LightningDataModule):
    """A datamodule over in-memory arrays. Subclasses implement ``_load() -> (train, test)``, each a
    ``(levels, labels)`` pair (test may be ``None``: then it is split off the training pool), and
    ``data_shape_of(cfg)``; their own config keys are keyword parameters of their ``__init__``, declared
    in ``fields``.

    ``val_fraction``, ``test_fraction`` (of the pool when the dataset has no test split),
    ``batch_size``, ``num_workers``; ``root`` where the files are; ``num_classes`` overrides the number
    of classes found (0 = ignore the labels)."""

    name = "array"
    levels: int | None = 256
    known_classes: int | None = None  # the dataset's classes where known before loading
    # the ``data`` config keys of every dataset besides ``name`` (absent: ``__init__``'s default)
    fields: dict[str, Field] = {
        "root": Field(str, nullable=True, optional=True),
        "val_fraction": Field(float, low=0, high=1, high_open=True, optional=True),
        "test_fraction": Field(float, low=0, high=1, high_open=True, optional=True),
        "batch_size": Field(int, low=1, optional=True),
        "num_workers": Field(int, low=0, optional=True),
        "num_classes": Field(int, low=0, nullable=True, optional=True, doc="null: the classes found"),
    }

    def __init__(
        self,
        seed: int = 0,
        *,
        root: str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        batch_size: int = 128,
        num_workers: int = 0,
        num_classes: int | None = None,
    ):
        super().__init__()
        _check_loader(batch_size, num_workers)
        for key, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            _check_fraction(key, frac)
        self.seed, self.root = int(seed), root
        self.batch_size, self.num_workers = batch_size, num_workers
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self._num_classes = num_classes
        self._splits: dict[str, tuple[Tensor, Tensor]] | None = None
        self.num_classes = 0
        self.data_shape: tuple[int, ...] = ()
        self._prepare()

    @classmethod
    def data_shape_of(cls, cfg: dict) -> tuple[int, ...]:
        """The shape of one example under config ``cfg`` (the ``data`` section), without loading."""
        raise NotImplementedError

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
        found = int(y.max()) + 1 if len(y) and y.min() >= 0 else 0
        self.num_classes = int(found if self._num_classes is None else self._num_classes)

    def to_model_space(self, levels: Tensor) -> Tensor:
        """Integer levels -> float32 in [-1, 1]."""
        return from_levels(levels, self.levels)

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
    """2-D toy sets from ``difflab.data.toy.sample_toy`` (``toy``: one of ``TOY_DATASETS``), ``n``
    points, optional ``noise``; continuous, so ``levels = None`` and the "levels" arrays are the float
    points themselves. Labels are 0 (unconditional)."""

    name = "toy2d"
    levels = None
    known_classes = 0
    fields = {
        **ArrayDataModule.fields,
        "toy": Field(str, choices=registry("difflab.data.toy", "TOY_DATASETS"), optional=True),
        "n": Field(int, low=2, optional=True),
        "noise": Field(float, low=0, nullable=True, optional=True, doc="null: the set's own"),
    }

    def __init__(self, seed: int = 0, *, toy: str = "gaussian_mixture", n: int = 20000, noise=None, **common):
        from difflab.data.toy import TOY_DATASETS

        if toy not in TOY_DATASETS:
            raise ValueError(f"toy: unknown toy dataset {toy!r}; allowed: {', '.join(TOY_DATASETS)}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"n={n!r} must be an integer >= 2")
        self.toy, self.n, self.noise = toy, n, noise
        super().__init__(seed, **{"num_classes": 0, **common})

    @classmethod
    def data_shape_of(cls, cfg: dict) -> tuple[int, ...]:
        return (2,)

    def _load(self):
        from difflab.data.toy import sample_toy

        x = sample_toy(self.toy, self.n, generator=torch.Generator().manual_seed(self.seed), noise=self.noise)
        return (x.float(), torch.zeros(self.n, dtype=torch.long)), None

    def to_model_space(self, levels: Tensor) -> Tensor:
        return levels.float()


class Digits(ArrayDataModule):
    """scikit-learn's bundled 8x8 digits: 1797 images ``[1, 8, 8]``, values 0..16 (17 levels), 10 classes."""

    name = "digits"
    levels = 17
    known_classes = 10

    @classmethod
    def data_shape_of(cls, cfg: dict) -> tuple[int, ...]:
        return (1, 8, 8)

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


def _download(name: str, dataset_class, root: pathlib.Path) -> None:
    """Download with torchvision's ``dataset_class(root, download=True)`` under a 20 s socket timeout.
    A failure is logged as one warning line; the caller then reports the missing files."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        dataset_class(str(root), download=True)
    except (OSError, RuntimeError) as e:  # no network, a refused or broken download, a bad checksum
        log.warning(
            "%s: download failed (%s: %s)", name, type(e).__name__, str(e).splitlines()[0] if str(e) else ""
        )
    finally:
        socket.setdefaulttimeout(old)


class MNIST(ArrayDataModule):
    """MNIST ``[1, 28, 28]``, 256 levels, 10 classes. Reads the IDX files from ``root`` (else env
    ``DIFFLAB_MNIST_ROOT``, else ``data/mnist``); downloads them with torchvision when missing and
    ``download`` is set. With only the 10k test split present (offline), that split is divided into
    train / held-out by ``test_fraction`` and a warning says so."""

    name = "mnist"
    levels = 256
    known_classes = 10
    fields = {**ArrayDataModule.fields, "download": Field(bool, optional=True)}

    def __init__(self, seed: int = 0, *, download: bool = True, **common):
        if not isinstance(download, bool):
            raise ValueError(f"download={download!r} must be true or false")
        self.download = download
        super().__init__(seed, **common)

    @classmethod
    def data_shape_of(cls, cfg: dict) -> tuple[int, ...]:
        return (1, 28, 28)

    def _load(self):
        import torchvision

        root = pathlib.Path(self.root or os.environ.get("DIFFLAB_MNIST_ROOT") or "data/mnist")
        if _find(root, "t10k-images-idx3-ubyte") is None and self.download:
            _download("mnist", torchvision.datasets.MNIST, root)
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
    (``cifar-10-batches-py``; default ``data/cifar10``), downloaded with torchvision when missing and
    ``download`` is set."""

    name = "cifar10"
    levels = 256
    known_classes = 10
    fields = {**ArrayDataModule.fields, "download": Field(bool, optional=True)}
    BATCHES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")

    def __init__(self, seed: int = 0, *, download: bool = True, **common):
        if not isinstance(download, bool):
            raise ValueError(f"download={download!r} must be true or false")
        self.download = download
        super().__init__(seed, **common)

    @classmethod
    def data_shape_of(cls, cfg: dict) -> tuple[int, ...]:
        return (3, 32, 32)

    def _load(self):
        import torchvision

        root = pathlib.Path(self.root or "data/cifar10")
        folder = root / "cifar-10-batches-py"
        if not all((folder / n).exists() for n in self.BATCHES) and self.download:
            _download("cifar10", torchvision.datasets.CIFAR10, root)
        if not all((folder / n).exists() for n in self.BATCHES):
            raise ValueError(f"cifar10: no CIFAR-10 batches under data root '{folder}' and no download")

        def read(files):
            xs, ys = [], []
            for n in files:
                with open(folder / n, "rb") as f:
                    d = pickle.load(f, encoding="latin1")
                xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(d["labels"]))
            return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)).long()

        return read(self.BATCHES[:-1]), read(self.BATCHES[-1:])


class ImageFolder(ArrayDataModule):
    """Any folder of images under ``root``: class subfolders give labels (else unconditional).
    ``image_size`` and ``channels`` (1 or 3) fix the shape; 256 levels."""

    name = "imagefolder"
    levels = 256
    fields = {
        **ArrayDataModule.fields,
        "image_size": Field(int, low=1),
        "channels": Field(int, choices=(1, 3)),
    }
    SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")

    def __init__(self, seed: int = 0, *, image_size: int = 32, channels: int = 3, **common):
        self.data_shape_of({"image_size": image_size, "channels": channels})
        self.image_size, self.channels = image_size, channels
        super().__init__(seed, **common)

    @classmethod
    def data_shape_of(cls, cfg: dict) -> tuple[int, ...]:
        shape = {key: cfg[key] for key in ("image_size", "channels")}
        check_section({key: cls.fields[key] for key in shape}, shape, "data")
        return (shape["channels"], shape["image_size"], shape["image_size"])

    def _load(self):
        from PIL import Image

        if not self.root:
            raise ValueError("imagefolder: data.root must name a folder of images")
        root = pathlib.Path(self.root)
        files = (
            sorted(p for p in root.rglob("*") if p.suffix.lower() in self.SUFFIXES) if root.is_dir() else []
        )
        if not files:
            raise ValueError(f"imagefolder: no images ({', '.join(self.SUFFIXES)}) under data root '{root}'")
        size, channels = self.image_size, self.channels
        classes = sorted({p.parent.relative_to(root).as_posix() for p in files} - {"."})
        index = {c: i for i, c in enumerate(classes)}
        xs, ys = [], []
        for p in files:
            with Image.open(p) as im:
                im = im.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BICUBIC)
                a = np.asarray(im, dtype=np.uint8).reshape(size, size, channels)
            xs.append(torch.from_numpy(a.copy()).permute(2, 0, 1))
            ys.append(index.get(p.parent.relative_to(root).as_posix(), 0))
        if self._num_classes is None and len(classes) <= 1:
            self._num_classes = 0
        return (torch.stack(xs), torch.tensor(ys, dtype=torch.long)), None


DATAMODULES: dict[str, type[ArrayDataModule]] = {
    cls.name: cls for cls in (Toy2D, Digits, MNIST, CIFAR10, ImageFolder)
}


def __getattr__(name: str):
    if name == "DATASETS":  # the registry's keys, read when asked (datasets registered at run time too)
        return tuple(DATAMODULES)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _dataset_class(name) -> type[ArrayDataModule]:
    if name not in DATAMODULES:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATAMODULES)}")
    return DATAMODULES[name]


def _class_and_keys(cfg: dict) -> tuple[type[ArrayDataModule], dict]:
    cfg = dict(cfg)
    cls = _dataset_class(cfg.pop("name", None))
    for key in cfg:
        if key not in cls.fields:
            raise ValueError(
                f"unknown key {key!r} for dataset {cls.name!r}; allowed: name, {', '.join(cls.fields)}"
            )
    return cls, cfg


DATASET = Field(str, choices=lambda: tuple(DATAMODULES))


def check_data(cfg: dict) -> tuple[tuple[int, ...], int | None]:
    """Check the ``data`` section without loading anything: a registered name, then the keys its
    dataset declares (``fields``); return ``(data_shape, classes)`` (classes ``None`` where only
    loading tells). ``ConfigError`` naming the key."""
    check_section({"name": DATASET}, {"name": cfg.get("name")}, "data")
    cls = DATAMODULES[cfg["name"]]
    check_section({"name": DATASET, **cls.fields}, cfg, "data")
    n = cfg.get("num_classes")
    return cls.data_shape_of(cfg), (cls.known_classes if n is None else n)


def build_datamodule(cfg: dict, seed: int = 0) -> ArrayDataModule:
    """Build the datamodule ``cfg["name"]`` (a key of ``DATAMODULES``) from the ``data`` config section;
    the other keys are the dataset's keyword parameters (its ``fields``).

    Unknown name or key, bad values or missing files -> ``ValueError`` (one line). The data are
    loaded here, eagerly.
    """
    cls, cfg = _class_and_keys(cfg)
    return cls(seed, **cfg)
