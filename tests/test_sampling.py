"""Sampling at scale: per-index seeding, batch-size and rank invariance, NFE, uint8 outputs."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch

from difflab import distributed, images, sampling, solvers
from difflab.data.toy import GaussianMixture
from difflab.sampling import Conditioning, Draw
from difflab.schedules import get_schedule

SHAPE = (1, 2, 2)


@pytest.fixture(scope="module")
def setup():
    schedule = get_schedule("vp_linear")
    means = torch.tensor([[-0.5, -0.5, 0.5, 0.5], [0.5, 0.5, -0.5, -0.5], [0.0, 0.5, 0.0, -0.5]])
    gm = GaussianMixture(means, 0.1)
    return gm.denoiser(schedule), schedule


@pytest.mark.parametrize("solver", ["ddim", "euler_maruyama"])
def test_same_seed_same_images_whatever_the_batch_size(setup, solver):
    D, schedule = setup
    a = sampling.generate(D, schedule, solver, 8, Draw(40, SHAPE, seed=3, batch_size=7))
    b = sampling.generate(D, schedule, solver, 8, Draw(40, SHAPE, seed=3, batch_size=32))
    assert a.x.shape == (40, *SHAPE) and a.x.dtype == torch.float32
    assert torch.equal(images.to_levels(a.x), images.to_levels(b.x))
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=1e-6)
    # a prefix of the index range is the same samples; another seed gives other samples
    c = sampling.generate(D, schedule, solver, 8, Draw(12, SHAPE, seed=3, batch_size=5))
    torch.testing.assert_close(c.x, a.x[:12], rtol=0, atol=1e-6)
    d = sampling.generate(D, schedule, solver, 8, Draw(12, SHAPE, seed=4, batch_size=5))
    assert (d.x - c.x).abs().max() > 1e-2


def test_rank_split_reassembles_the_single_process_result(setup, monkeypatch):
    """Rank r of 3 generates indices r::3 with the same per-index noise as one process."""
    D, schedule = setup
    full = sampling.generate(D, schedule, "euler_maruyama", 6, Draw(11, SHAPE, seed=1, batch_size=4))
    sent = []

    def fake_all_gather_object(out, obj):  # records what each rank contributes
        sent.append(obj)
        out[:] = [obj] * len(out)

    monkeypatch.setattr(torch.distributed, "all_gather_object", fake_all_gather_object)
    for rank in range(3):
        monkeypatch.setattr(distributed, "rank_and_world", lambda rank=rank: (rank, 3))
        res = sampling.generate(D, schedule, "euler_maruyama", 6, Draw(11, SHAPE, seed=1, batch_size=2))
        assert res.x.shape == full.x.shape
    assert [obj[0] for obj in sent] == [list(range(r, 11, 3)) for r in range(3)]
    for indices, x_rank, _, _ in sent:
        torch.testing.assert_close(x_rank, full.x[indices], rtol=0, atol=1e-6)


def test_nfe_and_timing_recorded(setup):
    D, schedule = setup
    res = sampling.generate(D, schedule, "ddim", 5, Draw(6, SHAPE, batch_size=4))
    assert res.nfe == solvers.nfe("ddim", 5)
    assert res.seconds_per_sample > 0


def test_rk45_nfe_is_measured(setup):
    D, schedule = setup
    res = sampling.generate(
        D, schedule, "rk45", 1, Draw(5, SHAPE, batch_size=5), options={"rtol": 1e-3, "atol": 1e-3}
    )
    counted = sampling.generate(
        D, schedule, "rk45", 1, Draw(5, SHAPE, batch_size=3), options={"rtol": 1e-3, "atol": 1e-3}
    )
    assert res.nfe > 2 and res.nfe == int(res.nfe)  # one batch: an integer count of evaluations
    assert counted.nfe > 2


def test_guidance_scale_one_is_conditional_sampling(setup):
    _, schedule = setup
    centres = torch.tensor([[-0.6] * 4, [0.6] * 4])
    per_class = [GaussianMixture(centres[k : k + 1], 0.1).denoiser(schedule) for k in range(2)]
    uncond = GaussianMixture(centres, 0.1).denoiser(schedule)

    def D(x, t, cond=None):  # class 2 is the null label
        out = uncond(x, t)
        for k in range(2):
            mask = (cond == k).reshape(-1, *([1] * (x.ndim - 1)))
            out = torch.where(mask, per_class[k](x, t), out)
        return out

    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    plain = sampling.generate(D, schedule, "ddim", 10, Draw(6, SHAPE), cond=Conditioning(labels))
    cfg = sampling.generate(D, schedule, "ddim", 10, Draw(6, SHAPE), cond=Conditioning(labels, 1.0, 2))
    torch.testing.assert_close(plain.x, cfg.x, rtol=0, atol=1e-5)
    signs = torch.sign(plain.x.reshape(6, -1).mean(1))
    assert torch.equal(signs, torch.where(labels == 0, -1.0, 1.0))  # each sample lands on its class
    assert torch.equal(cfg.labels, labels)


def test_to_levels_closed_form():
    x = torch.tensor([-1.0, -2.0, 1.0, 3.0, 0.0, -1 + 2 / 255 * 0.49, -1 + 2 / 255 * 0.51])
    assert images.to_levels(x).tolist() == [0, 0, 255, 255, 128, 0, 1]
    assert images.to_levels(torch.tensor([-1.0, 0.0, 1.0]), levels=17).tolist() == [0, 8, 16]
    lv = torch.arange(17, dtype=torch.uint8).reshape(1, 1, 1, 17)
    u8 = images.levels_to_uint8_images(lv, 17)
    assert u8.dtype == torch.uint8 and u8.flatten()[[0, 8, 16]].tolist() == [0, 128, 255]
    with pytest.raises(ValueError, match="allowed 0..16"):
        images.levels_to_uint8_images(lv + 1, 17)
    with pytest.raises(ValueError, match="levels"):
        images.to_levels(x, levels=300)
    with pytest.raises(ValueError, match="float"):
        images.to_levels(torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="nan"):
        images.to_levels(torch.tensor([float("nan")]))


def test_save_samples_and_grid_atomic(setup, tmp_path):
    D, schedule = setup
    res = sampling.generate(D, schedule, "ddim", 4, Draw(9, SHAPE, seed=2))
    path = tmp_path / "out" / "vp_linear-ddim-4.npz"
    levels = images.save_samples(path, res, levels=17, save_x=True, meta={"schedule": "vp_linear"})
    back = images.load_samples(path)
    assert torch.equal(back["images"], levels) and back["images"].dtype == torch.uint8
    assert back["levels"] == 17 and back["nfe"] == res.nfe and back["schedule"] == "vp_linear"
    np.testing.assert_array_equal(back["x"], res.x.numpy())
    png = tmp_path / "grid.png"
    images.save_grid(png, levels, nrow=3, levels=17)
    from PIL import Image

    with Image.open(png) as im:
        assert im.size == (3 * 2 + 4 * 2, 3 * 2 + 4 * 2)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["grid.png", "out", "vp_linear-ddim-4.npz"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": 0}, "steps"),
        ({"n": 0}, "n=0"),
        ({"batch_size": 0}, "batch_size"),
        ({"solver": "nope"}, "nope"),
        ({"shape": (0, 2)}, "shape"),
        ({"guidance_scale": 2.0}, "null_label"),
        ({"labels": torch.zeros(3, dtype=torch.long)}, "labels"),
    ],
)
def test_bad_arguments(setup, kwargs, match):
    D, schedule = setup
    args = {"solver": "ddim", "steps": 3, "n": 4, "shape": SHAPE} | kwargs
    with pytest.raises(ValueError, match=match):
        draw = Draw(args.pop("n"), args.pop("shape"), batch_size=args.pop("batch_size", 256))
        labels = args.pop("labels", torch.zeros(draw.n, dtype=torch.long))
        cond = Conditioning(labels, args.pop("guidance_scale", None))
        sampling.generate(D, schedule, args.pop("solver"), args.pop("steps"), draw, cond=cond)


def _dist_worker(rank, world, port, path, D_args):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    means, schedule_name = D_args
    schedule = get_schedule(schedule_name)
    D = GaussianMixture(means, 0.1).denoiser(schedule)
    res = sampling.generate(D, schedule, "ddim", 5, Draw(13, SHAPE, seed=5, batch_size=4))
    if rank == 0:
        torch.save(res.x, path)
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_torch_distributed_two_ranks_match_one_process(setup, tmp_path):
    import socket

    import torch.multiprocessing as mp

    means = torch.tensor([[-0.5, -0.5, 0.5, 0.5], [0.5, 0.5, -0.5, -0.5], [0.0, 0.5, 0.0, -0.5]])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "x.pt"
    mp.spawn(_dist_worker, args=(2, port, str(path), (means, "vp_linear")), nprocs=2, join=True)
    D, schedule = setup
    single = sampling.generate(D, schedule, "ddim", 5, Draw(13, SHAPE, seed=5, batch_size=13))
    torch.testing.assert_close(torch.load(path), single.x, rtol=0, atol=1e-6)
    assert math.isfinite(float(single.x.sum()))


def test_conditioning_comes_from_the_denoiser():
    cond = Conditioning.balanced(types.SimpleNamespace(num_classes=3), 7, 2.0)
    assert (
        cond.labels.tolist() == [0, 1, 2, 0, 1, 2, 0] and cond.null_label == 3 and cond.guidance_scale == 2.0
    )
    assert Conditioning.balanced(types.SimpleNamespace(num_classes=3), 7, None) is None
    with pytest.raises(ValueError, match="class-conditional"):
        Conditioning.balanced(types.SimpleNamespace(num_classes=0), 7, 2.0)


def test_grid_is_enlarged_to_min_side(tmp_path):
    from PIL import Image

    levels = torch.randint(0, 17, (4, 1, 8, 8), dtype=torch.uint8)
    grid = images.tile_grid(levels, 2, levels=17, padding=2)
    assert grid.shape == (2 * 10 + 2, 2 * 10 + 2, 3) and grid[0].max() == 0  # padding is black
    images.save_grid(tmp_path / "g.png", levels, 2, levels=17, min_side=100)
    with Image.open(tmp_path / "g.png") as im:
        assert im.size == (22 * 4, 22 * 4)  # the largest integer factor with 22 k <= 100
