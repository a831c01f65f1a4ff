"""A small CNN classifier of the dataset's labels whose penultimate layer gives FID/KID features.

Inception runs at ~5-9 images/s on a 2-core CPU, so CPU-sized experiments (digits 8x8, MNIST
28x28) use "FID with a dataset classifier": a CNN trained in the pipeline's ``prepare`` stage on
the training split's labels; its 128-d penultimate pre-activations are the features. It is
registered with torch-fidelity as ``"difflab-classifier"`` so ``torch_fidelity.calculate_metrics``
(``feature_extractor="difflab-classifier", feature_extractor_weights_path=<checkpoint>``) computes
the same FID/KID as ``difflab.metrics.fid.fid_kid``.

Checkpoint: a plain dict ``{"state_dict", "hparams", "acc"}`` (loadable with ``weights_only=True``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from difflab.io import atomic_write
from difflab.metrics.fid import one_thread

EXTRACTOR_NAME = "difflab-classifier"
FEATURE_LAYER = "features"
FEATURE_DIM = 128


class DigitClassifier(nn.Module):
    """conv16-conv32-pool-conv32-avgpool(2x2)-fc128 (features) -relu-fc(num_classes).

    Input: float images in [-1, 1] ``[B, C, H, W]`` (H, W >= 4). ``features(x)`` is ``[B, 128]``."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, feature_dim: int = FEATURE_DIM):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.fc = nn.Linear(32 * 4, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.features(x)))


def _uint8_to_model(images: Tensor) -> Tensor:
    return images.float() / 127.5 - 1.0


def _check_training_data(levels_images, labels, levels) -> None:
    if isinstance(levels, bool) or not isinstance(levels, int) or not 2 <= levels <= 256:
        raise ValueError(f"levels={levels!r} must be an integer in 2..256")
    if not torch.is_tensor(levels_images) or levels_images.ndim != 4 or levels_images.is_floating_point():
        raise ValueError("levels_images must be an integer tensor [N, C, H, W] of levels")
    if not torch.is_tensor(labels) or labels.shape != (levels_images.shape[0],):
        raise ValueError(f"labels must be a tensor of shape [{levels_images.shape[0]}]")
    if int(levels_images.min()) < 0 or int(levels_images.max()) > levels - 1:
        raise ValueError(f"levels_images must hold values in 0..{levels - 1}")
    if labels.unique().numel() < 2:
        raise ValueError("labels must name at least two classes to train a classifier")


@dataclass(frozen=True)
class ClassifierTraining:
    """Adam at ``lr`` with a cosine decay over ``epochs`` of ``batch_size`` images, ``val_fraction``
    held out for the accuracy, everything drawn from ``seed``."""

    seed: int = 0
    epochs: int = 20
    batch_size: int = 32
    lr: float = 3e-3
    val_fraction: float = 0.1


def train_classifier(
    levels_images: Tensor, labels: Tensor, levels: int, out_path, *, device="cpu", **options
) -> dict:
    """Train the feature classifier on ``levels_images`` ``[N, C, H, W]`` (integer levels) and
    ``labels`` ``[N]`` (``options``: ``ClassifierTraining``'s fields); save the checkpoint at
    ``out_path`` (atomic). Returns ``dict(acc, train_acc, seconds, n_train, n_val)``, ``acc`` on the
    held-out ``val_fraction``."""
    _check_training_data(levels_images, labels, levels)
    recipe = ClassifierTraining(**options)
    from difflab.images import levels_to_uint8_images

    start = time.perf_counter()
    x = _uint8_to_model(levels_to_uint8_images(levels_images, levels)).to(device)
    y = labels.long().to(device)
    g = torch.Generator().manual_seed(recipe.seed)
    perm = torch.randperm(len(x), generator=g)
    n_val = max(1, int(len(x) * recipe.val_fraction))
    val, train = perm[:n_val].to(device), perm[n_val:]
    with one_thread(torch.device(device).type == "cpu"):  # ~6x faster for a net this small
        model = _fit(x, y, train, recipe, g)
    with torch.no_grad():
        acc = (model(x[val]).argmax(1) == y[val]).float().mean().item()
        train_acc = (model(x[train.to(device)]).argmax(1) == y[train.to(device)]).float().mean().item()
    hparams = {"in_channels": int(x.shape[1]), "image_size": [int(x.shape[2]), int(x.shape[3])],
               "num_classes": model.head.out_features, "feature_dim": FEATURE_DIM, "levels": levels,
               "seed": recipe.seed, "epochs": recipe.epochs}  # fmt: skip
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_write(out_path, lambda tmp: torch.save({"state_dict": state, "hparams": hparams, "acc": acc}, tmp))
    seconds = time.perf_counter() - start
    return {"acc": acc, "train_acc": train_acc, "seconds": seconds, "n_train": len(train), "n_val": n_val}


def _fit(
    x: Tensor, y: Tensor, train: Tensor, recipe: ClassifierTraining, g: torch.Generator
) -> DigitClassifier:
    """A ``DigitClassifier`` fitted to the rows ``train`` of images ``x`` ``[N, C, H, W]`` in [-1, 1] and
    labels ``y`` ``[N]``, in eval mode; batches, shifts and initialisation drawn from ``g`` and the seed."""
    torch.manual_seed(recipe.seed)
    model = DigitClassifier(x.shape[1], int(y.max()) + 1).to(x.device)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    batches = -(-len(train) // recipe.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe.epochs * batches)
    for _ in range(recipe.epochs):
        model.train()
        order = train[torch.randperm(len(train), generator=g)]
        for i in range(0, len(order), recipe.batch_size):
            idx = order[i : i + recipe.batch_size].to(x.device)
            # small random shifts (+-1 pixel, circular): a more robust feature space
            sh = torch.randint(-1, 2, (2,), generator=g).tolist()
            loss = F.cross_entropy(model(torch.roll(x[idx], shifts=sh, dims=(2, 3))), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def load_classifier(path, device="cpu") -> tuple[DigitClassifier, dict]:
    """``(model in eval mode, hparams)`` from a ``train_classifier`` checkpoint."""
    if path is None or not os.path.isfile(os.fspath(path)):
        raise FileNotFoundError(
            f"classifier checkpoint {path!r} not found; the pipeline's prepare stage trains it "
            "(difflab.metrics.classifier.train_classifier)"
        )
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    hp = ckpt["hparams"]
    model = DigitClassifier(hp["in_channels"], hp["num_classes"], hp["feature_dim"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval().requires_grad_(False), hp


@torch.no_grad()
def classifier_logits(path, images: Tensor, *, device="cpu", batch_size: int = 1024) -> Tensor:
    """The classifier's logits ``[N, num_classes]`` (float32, CPU) of uint8 ``images`` ``[N, C, H, W]``
    of the size and channels it was trained on: what ``metrics.conditional.class_accuracy`` scores."""
    model, hp = load_classifier(path, device)
    trained_on = [hp["in_channels"], *hp["image_size"]]
    if images.dtype != torch.uint8 or images.ndim != 4 or list(images.shape[1:]) != trained_on:
        raise ValueError(
            f"the classifier takes uint8 images [N, {hp['in_channels']}, {hp['image_size'][0]}, "
            f"{hp['image_size'][1]}], got {images.dtype} {tuple(images.shape)}"
        )
    parts = [
        model(_uint8_to_model(images[i : i + batch_size].to(device))).float().cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, hp["num_classes"])


class FeatureExtractorClassifier(FeatureExtractorBase):
    """torch-fidelity feature extractor around ``DigitClassifier``: features ``"features"``
    (128-d penultimate pre-activations, FID/KID) and ``"logits"``. Input: uint8 ``[B, C, H, W]``
    (``images.levels_to_uint8_images``) of the trained size; three equal channels are averaged for a
    one-channel classifier."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        self.model, self.hparams = load_classifier(feature_extractor_weights_path)

    def forward(self, x: Tensor):
        if not torch.is_tensor(x) or x.dtype != torch.uint8 or x.ndim != 4:
            raise ValueError(
                f"classifier features need uint8 images [B, C, H, W], got {getattr(x, 'dtype', x)}"
            )
        want_c, want_hw = self.hparams["in_channels"], list(self.hparams["image_size"])
        if list(x.shape[2:]) != want_hw:
            raise ValueError(
                f"classifier was trained on {want_hw[0]}x{want_hw[1]} images, got {tuple(x.shape)}"
            )
        if x.shape[1] != want_c:
            if want_c == 1 and x.shape[1] == 3:
                x = x.float().mean(1, keepdim=True).round().to(torch.uint8)
            else:
                raise ValueError(f"classifier expects {want_c} channel(s), got {tuple(x.shape)}")
        feats = self.model.features(_uint8_to_model(x))
        out = {FEATURE_LAYER: feats, "logits": self.model.head(F.relu(feats))}
        return tuple(out[name].float() for name in self.features_list)

    @staticmethod
    def get_provided_features_list():
        return FEATURE_LAYER, "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits", "fid": FEATURE_LAYER, "kid": FEATURE_LAYER, "prc": FEATURE_LAYER}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 1, 8, 8, dtype=torch.uint8)


if EXTRACTOR_NAME not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(EXTRACTOR_NAME, FeatureExtractorClassifier)
