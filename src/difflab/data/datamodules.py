"""Lightning datamodules: toy2d, digits (CPU default), mnist, cifar10, imagefolder.

Every datamodule holds its three splits (train / val / held-out test) as integer gray levels
(``uint8``; ``levels`` of them) plus labels, chosen deterministically from the seed, and feeds the model
images scaled to [-1, 1]: ``x = 2 * level / (levels - 1) - 1``. ``toy2d`` is continuous (``levels =
None``) and stores float points. Attributes: ``data_shape`` ((C, H, W) or (d,)), ``num_classes``,
``levels``; ``train_levels()`` and ``heldout_levels()`` give ``(Tensor[N, ...] levels, labels)``.

``DATAMODULES`` is the registry (name -> class). A dataset's shape and classes are known from its
config without loading anything (``data_shape_of``, ``known_classes``), so a config is checked
(``check_data``) before any download."""

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


def _check_int(key: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{key}={value!r} must be an integer >= {low}")


def _split(n: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Deterministic train / val / test index split of ``range(n)`` from ``seed``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    if n - n_val - n_test <= 0:
        raise ValueError(f"data: val_fraction + test_fraction leave no training data out of {n}")
    return perm[n_val + n_test :], perm[:n_val], perm[n_val : n_val + n_test]


class ArrayDataModule(pl.LightningDataModule):
    """A datamodule over in-memory arrays. Subclasses implement ``_load() -> (train, test)``, each a
    ``(levels, labels)`` pair (test may be ``None``: then it is split off the training pool), and set
    ``known_shape`` or override ``data_shape_of(cfg)``.

    ``val_fraction``, ``test_fraction`` (of the pool when the dataset has no test split),
    ``batch_size``, ``num_workers``; ``root`` where the files are; ``num_classes`` overrides the number
    of classes found (0 = ignore the labels)."""

    name = "array"
    levels: int | None = 256
    known_shape: tuple[int, ...]  # one example's shape, where the config does not choose it
    known_classes: int | None = None  # the dataset's classes where known before loading
    # the ``data`` config keys besides ``name``: ``__init__``'s keyword parameters (absent: their default)
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
        _check_int("batch_size", batch_size, 1)
        _check_int("num_workers", num_workers, 0)
        for key, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            _check_fraction(key, frac)
        self.seed, self.root = int(seed), root
        self.batch_size, self.num_workers = batch_size, num_workers
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self._num_classes = num_classes
        self._prepare()

    @classmethod
    def data_shape_of(cls, cfg: dict) -> tuple[int, ...]:
        """The shape of one example under config ``cfg`` (the ``data`` section), without loading."""
        return cls.known_shape

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
        self.data_shape: tuple[int, ...] = tuple(x.shape[1:])
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
    known_shape = (2,)
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
        _check_int("n", n, 2)
        self.toy, self.n, self.noise = toy, n, noise
        super().__init__(seed, **{"num_classes": 0, **common})

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
    known_shape = (1, 8, 8)
    known_classes = 10

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
        first = str(e).splitlines()[0] if str(e) else ""
        log.warning("%s: download failed (%s: %s)", name, type(e).__name__, first)
    finally:
        socket.setdefaulttimeout(old)


class _Downloadable(ArrayDataModule):
    """A torchvision dataset (256 levels, 10 classes) downloaded when its files are missing and
    ``download`` is set."""

    known_classes = 10
    fields = {**ArrayDataModule.fields, "download": Field(bool, optional=True)}

    def __init__(self, seed: int = 0, *, download: bool = True, **common):
        if not isinstance(download, bool):
            raise ValueError(f"download={download!r} must be true or false")
        self.download = download
        super().__init__(seed, **common)


class MNIST(_Downloadable):
    """MNIST ``[1, 28, 28]``: the IDX files under ``root`` (else env ``DIFFLAB_MNIST_ROOT``, else
    ``data/mnist``). With only the 10k test split present (offline), that split is divided into
    train / held-out by ``test_fraction`` and a warning says so."""

    name = "mnist"
    known_shape = (1, 28, 28)

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
            msg = "mnist: only the 10k test split is in '%s'; splitting it into train/val/held-out (seed %d)"
            log.warning(msg, root, self.seed)
            self.offline_split = True
            return test, None
        self.offline_split = False
        return (_read_idx(train_x)[:, None], _read_idx(train_y).long()), test


class CIFAR10(_Downloadable):
    """CIFAR-10 ``[3, 32, 32]``: the python pickle batches under ``root`` (``cifar-10-batches-py``;
    default ``data/cifar10``)."""

    name = "cifar10"
    known_shape = (3, 32, 32)
    BATCHES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")

    def _load(self):
        import torchvision

        root = pathlib.Path(self.root or "data/cifar10")
        folder = root / "cifar-10-batches-py"
        if not all((folder / n).exists() for n in self.BATCHES) and self.download:
            _download("cifar10", torchvision.datasets.CIFAR10, root)
        if not all((folder / n).exists() for n in self.BATCHES):
            raise ValueError(f"cifar10: no CIFAR-10 batches under data root '{folder}' and no download")

        def read(files):
            batches = [pickle.loads((folder / n).read_bytes(), encoding="latin1") for n in files]
            x = np.concatenate([np.asarray(d["data"], dtype=np.uint8) for d in batches])  # [N, 3072]
            y = np.concatenate([np.asarray(d["labels"]) for d in batches])
            return torch.from_numpy(x.reshape(-1, 3, 32, 32)), torch.from_numpy(y).long()

        return read(self.BATCHES[:-1]), read(self.BATCHES[-1:])


class ImageFolder(ArrayDataModule):
    """Any folder of images under ``root``: class subfolders give labels (else unconditional).
    ``image_size`` and ``channels`` (1 or 3) fix the shape; 256 levels."""

    name = "imagefolder"
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


DATAMODULES = {cls.name: cls for cls in (Toy2D, Digits, MNIST, CIFAR10, ImageFolder)}


def __getattr__(name: str):
    if name == "DATASETS":  # the registry's keys, read when asked (datasets registered at run time too)
        return tuple(DATAMODULES)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    """Build the datamodule ``cfg["name"]`` from the ``data`` config section (the other keys: its
    ``fields``) and load its data, eagerly. Unknown name or key, bad values or missing files ->
    ``ValueError`` (one line)."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in DATAMODULES:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATAMODULES)}")
    cls = DATAMODULES[name]
    for key in cfg:
        if key not in cls.fields:
            raise ValueError(
                f"unknown key {key!r} for dataset {cls.name!r}; allowed: name, {', '.join(cls.fields)}"
            )
    return cls(seed, **cfg)
