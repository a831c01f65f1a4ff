"""Atomic output: the target appears whole or not at all."""

import pytest

from difflab.io import atomic_write


def test_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "sub" / "model.pt"

    def boom(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert list(tmp_path.rglob("*")) == [tmp_path / "sub"]  # no target, no temporary file

    atomic_write(target, lambda tmp: tmp.write_text("v1"))
    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_text() == "v1" and [p.name for p in target.parent.iterdir()] == ["model.pt"]


def test_temporary_file_keeps_the_extension(tmp_path):
    seen = []
    atomic_write(tmp_path / "samples.npz", lambda tmp: (seen.append(tmp.suffix), tmp.write_bytes(b"x")))
    assert seen == [".npz"] and (tmp_path / "samples.npz").read_bytes() == b"x"
