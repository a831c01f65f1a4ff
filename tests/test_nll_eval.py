"""Batched bits/dim: known answer on a discretised mixture, exact vs Hutchinson, a trained net on digits."""

from __future__ import annotations

import math

import pytest
import torch

from difflab.data.toy import GaussianMixture
from difflab.images import to_levels
from difflab.likelihood import dequantize
from difflab.metrics.nll import evaluate_bpd
from difflab.schedules import get_schedule

LEVELS = 17
SHAPE = (1, 2, 2)


@pytest.fixture(scope="module")
def toy():
    """A 4-D mixture on a 17-level grid, its exact denoiser, and 24 quantised draws."""
    schedule = get_schedule("vp_linear")
    means = torch.tensor([[-0.5, -0.5, 0.5, 0.5], [0.5, 0.25, -0.5, 0.0]], dtype=torch.float64)
    gm = GaussianMixture(means, 0.25)
    x = gm.sample(24, generator=torch.Generator().manual_seed(0)).reshape(-1, *SHAPE)
    return gm, gm.denoiser(schedule), schedule, to_levels(x, LEVELS)


def test_exact_divergence_matches_the_mixture_density(toy):
    """Known answer: with the same dequantization noise, bpd = (-log p(z) - D log(2/L)) / (D ln 2)."""
    gm, D, schedule, images = toy
    out = evaluate_bpd(D, schedule, images, LEVELS, divergence="exact", batch_size=8, seed=3)
    d = math.prod(SHAPE)
    oracle = []
    for b, lo in enumerate(range(0, len(images), 8)):  # the evaluator's per-batch generators
        g = torch.Generator().manual_seed(3 * 1_000_003 + b)
        z = dequantize(images[lo : lo + 8], LEVELS, g).reshape(-1, d)
        oracle.append((-gm.log_prob(z) - d * math.log(2 / LEVELS)) / (d * math.log(2)))
    oracle = torch.cat(oracle).mean().item()
    assert out["bpd"] == pytest.approx(oracle, abs=0.02)
    assert math.isfinite(out["bpd"]) and out["bpd"] < math.log2(LEVELS) == out["baseline_bpd"]
    assert out["n_images"] == 24 and out["divergence"] == "exact"
    assert out["nfe_per_image"] > 10 and out["seconds_per_image"] > 0


def test_hutchinson_agrees_with_exact_within_error_bars(toy):
    _, D, schedule, images = toy
    images = images[:12]
    exact = evaluate_bpd(D, schedule, images, LEVELS, divergence="exact", batch_size=12, seed=1, rtol=1e-4)
    hutch = evaluate_bpd(D, schedule, images, LEVELS, n_probes=2, batch_size=12, seed=1, rtol=1e-4)
    assert hutch["n_probes"] == 2 and hutch["bpd_se"] > 0
    # same seed -> same dequantization noise: the paired difference is the probes' noise alone
    diff = hutch["bpd_per_image"] - exact["bpd_per_image"]
    assert diff.abs().max() > 1e-6  # the estimator really is stochastic
    assert abs(diff.mean()) < 3 * diff.std() / math.sqrt(len(diff))


@pytest.mark.parametrize(
    "images, kwargs, match",
    [
        (torch.rand(4, 1, 2, 2), {}, "integer"),
        (torch.full((4, 1, 2, 2), 20, dtype=torch.uint8), {}, "0..16"),
        (torch.zeros(4, 1, 2, 2, dtype=torch.uint8), {"divergence": "skilling"}, "hutchinson"),
        (torch.zeros(4, 1, 2, 2, dtype=torch.uint8), {"batch_size": 0}, "batch_size"),
        (torch.zeros(0, 1, 2, 2, dtype=torch.uint8), {}, "N >= 1"),
    ],
)
def test_bad_input(toy, images, kwargs, match):
    _, D, schedule, _ = toy
    with pytest.raises(ValueError, match=match):
        evaluate_bpd(D, schedule, images, LEVELS, **kwargs)


@pytest.mark.slow
def test_trained_tiny_model_on_digits_beats_uniform_noise():
    """A tiny MLP fitted to digits for a minute: finite bpd below log2(17); exact vs Hutchinson agree."""
    from sklearn.datasets import load_digits

    from difflab.nets.mlp import MLP
    from difflab.parametrization import Denoiser

    torch.manual_seed(0)
    d = load_digits()
    levels = torch.from_numpy(d.images).to(torch.uint8).reshape(-1, 1, 8, 8)
    train, held = levels[:1600], levels[1600:1608]
    x_train = train.float() * (2 / (LEVELS - 1)) - 1
    schedule = get_schedule("vp_cosine")
    net = MLP((1, 8, 8), width=256, depth=3)
    D = Denoiser(net, schedule, "eps")
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(1500):
        x0 = x_train[torch.randint(0, len(x_train), (128,))]
        t = torch.rand(128) * (schedule.t_max - schedule.t_min) + schedule.t_min
        eps = torch.randn_like(x0)
        a, s = schedule.alpha(t)[:, None, None, None], schedule.sigma(t)[:, None, None, None]
        loss = ((D.raw(a * x0 + s * eps, t) - eps) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    hutch = evaluate_bpd(D, schedule, held, LEVELS, n_probes=4, rtol=1e-4, atol=1e-4, seed=0)
    exact = evaluate_bpd(D, schedule, held, LEVELS, divergence="exact", rtol=1e-4, atol=1e-4, seed=0)
    for out in (hutch, exact):
        assert math.isfinite(out["bpd"]) and out["bpd"] < math.log2(LEVELS)
    diff = hutch["bpd_per_image"] - exact["bpd_per_image"]
    assert abs(diff.mean()) < 3 * diff.std() / math.sqrt(len(diff)) + 1e-3
