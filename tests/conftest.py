import os
import pathlib

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Tests never reach a W&B server and keep its files inside the test's temporary folders.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# One intra-op thread: the tests' tensors are small, and on a 2-core machine a second thread mostly
# adds contention (measured up to 10x slower for the ODE tests while anything else runs).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread in every test, whatever an earlier test (a stage's ``cpu_threads``) set."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _wandb_dirs(tmp_path, monkeypatch):
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb"))


@pytest.fixture
def mnist_root():
    root = os.environ.get("DIFFLAB_MNIST_ROOT") or str(SHARED_DATA / "mnist")
    if not pathlib.Path(root, "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("no local MNIST files (set DIFFLAB_MNIST_ROOT)")
    return root


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
