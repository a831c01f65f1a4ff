"""The mixture oracle (exact denoiser, log-densities) and the 2-D toy samplers."""

import math

import pytest
import torch

from difflab.data.toy import (
    TOY_DATASETS,
    GaussianMixture,
    checkerboard,
    ring_mixture,
    sample_toy,
    small_mixture,
)
from difflab.schedules import SCHEDULES, get_schedule

F64 = torch.float64


@pytest.mark.parametrize("name", SCHEDULES)
def test_exact_denoiser_is_tweedie_of_marginal_log_prob(name):
    """D = (x + sigma^2 grad log p_t(x)) / alpha, the score by autograd of marginal_log_prob."""
    schedule = get_schedule(name)
    gm = small_mixture(dim=3)
    D = gm.denoiser(schedule)
    gen = torch.Generator().manual_seed(0)
    for t_val in torch.linspace(schedule.t_min, schedule.t_max, 5).tolist():
        t = torch.tensor(t_val, dtype=F64)
        a, s = schedule.alpha(t), schedule.sigma(t)
        x = a * gm.sample(32, gen) + s * torch.randn(32, 3, generator=gen, dtype=F64)
        xr = x.clone().requires_grad_(True)
        (score,) = torch.autograd.grad(gm.marginal_log_prob(xr, t, schedule).sum(), xr)
        tweedie = (x + s**2 * score) / a
        torch.testing.assert_close(D(x, t.expand(32)), tweedie, rtol=1e-8, atol=1e-8 * (1 + s / a).item())


def test_denoiser_keeps_shape_and_dtype():
    gm = small_mixture(dim=4)
    x = torch.randn(5, 2, 2)  # [B, ...] with prod(...) = d
    out = gm.denoiser(get_schedule("vp_cosine"))(x, torch.full((5,), 0.4))
    assert out.shape == x.shape and out.dtype == torch.float32


@pytest.mark.parametrize("name", ["vp_linear", "ve"])
def test_exact_denoiser_is_the_posterior_mean(name):
    """E[(x0 - D(x_t)) h(x_t)] = 0 for test functions h, and D beats perturbed denoisers in MSE."""
    schedule = get_schedule(name)
    gm = small_mixture(dim=2)
    gen = torch.Generator().manual_seed(1)
    n = 100_000
    t = torch.full((n,), 0.35, dtype=F64)
    a, s = schedule.alpha(t[:1]), schedule.sigma(t[:1])
    x0 = gm.sample(n, gen)
    x = a * x0 + s * torch.randn(n, 2, generator=gen, dtype=F64)
    err = x0 - gm.denoiser(schedule)(x, t)  # [n, 2]
    for h in (torch.ones(n, 1, dtype=F64), x, torch.tanh(x[:, :1] * x[:, 1:])):
        moments = err[:, :, None] * h[:, None, :]  # [n, 2, m]
        mean, se = moments.mean(0), moments.std(0) / math.sqrt(n)
        assert (mean.abs() < 5 * se).all(), (mean, se)
    mse = (err**2).sum(1).mean()
    D_x = x0 - err
    for perturbed in (1.05 * D_x, D_x + 0.05, 0.9 * D_x + 0.1 * x / a):
        assert ((x0 - perturbed) ** 2).sum(1).mean() > mse


def test_log_prob_single_gaussian_closed_form_and_marginal():
    mu, std = torch.tensor([[0.3, -1.0, 2.0]], dtype=F64), 0.7
    gm = GaussianMixture(mu, std)
    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    expected = -1.5 * math.log(2 * math.pi * std**2) - ((x - mu) ** 2).sum(1) / (2 * std**2)
    torch.testing.assert_close(gm.log_prob(x), expected)
    schedule = get_schedule("vp_cosine")
    t = torch.tensor(0.6, dtype=F64)
    a, s = schedule.alpha(t), schedule.sigma(t)
    var = a**2 * std**2 + s**2
    expected_t = -1.5 * torch.log(2 * math.pi * var) - ((x - a * mu) ** 2).sum(1) / (2 * var)
    torch.testing.assert_close(gm.marginal_log_prob(x, t, schedule), expected_t)
    # a single component's denoiser is the linear Gaussian posterior mean
    D = gm.denoiser(schedule)(x, t.expand(20))
    torch.testing.assert_close(D, mu + a * std**2 / var * (x - a * mu))


def test_log_prob_integrates_to_one():
    gm = small_mixture(dim=2)
    h = 0.02
    axis = torch.arange(-4.5, 4.5, h, dtype=F64) + h / 2
    xx, yy = torch.meshgrid(axis, axis, indexing="ij")
    mass = gm.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1)).exp().sum() * h**2
    assert mass.item() == pytest.approx(1.0, abs=1e-4)


def test_mixture_sampling_matches_its_moments():
    gm = small_mixture(dim=2)
    x = gm.sample(100_000, torch.Generator().manual_seed(0))
    mean = (gm.weights[:, None] * gm.means).sum(0)
    second = (gm.weights[:, None, None] * (gm.means[:, :, None] * gm.means[:, None, :])).sum(0)
    second = second + torch.eye(2, dtype=F64) * (gm.weights * gm.stds**2).sum()
    torch.testing.assert_close(x.mean(0), mean, rtol=0, atol=0.015)
    torch.testing.assert_close(x.T @ x / len(x), second, rtol=0, atol=0.02)


def test_ring_mixture_and_small_mixture():
    gm = ring_mixture()
    assert gm.means.shape == (8, 2) and gm.dim == 2
    torch.testing.assert_close(gm.means.norm(dim=1), torch.full((8,), math.sqrt(2.0), dtype=F64))
    torch.testing.assert_close(gm.stds, torch.full((8,), 0.1, dtype=F64))
    small = small_mixture(dim=5)
    assert small.means.shape == (3, 5)
    torch.testing.assert_close(small.weights, torch.tensor([0.5, 0.3, 0.2], dtype=F64))


@pytest.mark.parametrize("name", list(TOY_DATASETS))
def test_toy_samplers_are_deterministic_with_unit_spread(name):
    x = sample_toy(name, 20_000, torch.Generator().manual_seed(0))
    assert x.shape == (20_000, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    again = sample_toy(name, 20_000, torch.Generator().manual_seed(0))
    other = sample_toy(name, 20_000, torch.Generator().manual_seed(1))
    assert torch.equal(x, again) and not torch.equal(x, other)
    assert (x.mean(0).abs() < 0.1).all()
    rms = x.pow(2).mean().sqrt().item()
    assert 0.85 < rms < 1.15
    assert (x.std(0) > 0.5).all()
    assert sample_toy(name, 7, dtype=F64).dtype == F64


def test_toy_sets_have_their_shape():
    gen = torch.Generator().manual_seed(0)
    radii = sample_toy("rings", 4000, gen, noise=0.0).double().norm(dim=1)
    r = 1 / math.sqrt(5 / 16)
    assert torch.logical_or((radii - r).abs() < 1e-5, (radii - r / 2).abs() < 1e-5).all()
    assert (radii > 0.75 * r).double().mean().item() == pytest.approx(0.5)
    cells = torch.floor(checkerboard(4000, gen) * 2 / math.sqrt(3))  # back to [-2, 2]^2 cells
    assert ((cells.sum(1) % 2) == 0).all()
    assert len(torch.unique(cells, dim=0)) == 8
    centers = ring_mixture().means
    x = sample_toy("gaussian_mixture", 4000, gen, noise=0.05).double()
    assert (torch.cdist(x, centers).min(dim=1).values < 0.05 * 5).all()
    moons = sample_toy("moons", 4000, gen, noise=0.0).double()
    scale = math.sqrt((0.75 + 0.625 - 1 / math.pi - 0.0625) / 2)
    raw = moons * scale + torch.tensor([0.5, 0.25], dtype=F64)
    outer = (raw.norm(dim=1) - 1).abs() < 1e-6
    inner = ((raw - torch.tensor([1.0, 0.5], dtype=F64)).norm(dim=1) - 1).abs() < 1e-6
    assert (outer | inner).all() and outer.double().mean().item() == pytest.approx(0.5)
    # noise adds spread: the same seed with noise differs from the clean set by about `noise`
    clean = sample_toy("swiss_roll", 4000, torch.Generator().manual_seed(5), noise=0.0).double()
    noisy = sample_toy("swiss_roll", 4000, torch.Generator().manual_seed(5), noise=0.1).double()
    assert (noisy - clean).std().item() == pytest.approx(0.1, rel=0.05)


def test_bad_input():
    with pytest.raises(ValueError) as err:
        sample_toy("spirals", 10)
    assert "spirals" in str(err.value) and all(n in str(err.value) for n in TOY_DATASETS)
    for n in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n="):
            sample_toy("moons", n)
    for noise in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="noise="):
            sample_toy("rings", 10, noise=noise)
    with pytest.raises(ValueError, match="noise"):
        sample_toy("gaussian_mixture", 10, noise=0.0)
    with pytest.raises(ValueError, match="shape"):
        GaussianMixture(torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="stds"):
        GaussianMixture(torch.zeros(2, 2), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(torch.zeros(2, 2), 1.0, torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="finite"):
        GaussianMixture(torch.tensor([[float("nan"), 0.0]]), 1.0)
    with pytest.raises(ValueError, match="k="):
        ring_mixture(k=0)
    with pytest.raises(ValueError, match="dim="):
        small_mixture(dim=0)


# -- the class-conditional mixture ---------------------------------------------------------------
def labelled_mixture(dim: int = 2) -> GaussianMixture:
    """Five components in three classes (2, 1 and 2 components), uneven weights and stds."""
    gm = small_mixture(dim)
    means = torch.cat([gm.means, -0.7 * gm.means[:2]])
    stds, weights = torch.tensor([0.3, 0.5, 0.2, 0.4, 0.25]), torch.tensor([0.3, 0.2, 0.15, 0.2, 0.15])
    return GaussianMixture(means, stds, weights, labels=torch.tensor([0, 1, 2, 0, 2]))


def sub_mixture(gm: GaussianMixture, c: int) -> GaussianMixture:
    own = gm.labels == c
    return GaussianMixture(gm.means[own], gm.stds[own], gm.weights[own])


def test_labelled_mixture_attributes():
    gm = labelled_mixture()
    assert gm.num_classes == 3 and gm.null_label == 3
    torch.testing.assert_close(gm.class_weights, torch.tensor([0.5, 0.2, 0.3], dtype=F64))
    plain = small_mixture()
    assert plain.num_classes == 0 and plain.null_label is None and plain.labels is None


@pytest.mark.parametrize("name", SCHEDULES)
def test_conditional_denoiser_is_the_class_sub_mixture(name):
    """cond = c gives class c's own sub-mixture denoiser, the null label (or None) the full one,
    row by row within one batch."""
    schedule = get_schedule(name)
    gm = labelled_mixture(dim=3)
    D = gm.denoiser(schedule)
    gen = torch.Generator().manual_seed(0)
    n = 40
    x = 3 * torch.randn(n, 3, generator=gen, dtype=F64)
    t = schedule.t_min + (schedule.t_max - schedule.t_min) * torch.rand(n, generator=gen, dtype=F64)
    cond = torch.arange(n) % 4  # classes 0..2 and the null label 3
    out = D(x, t, cond)
    expected = torch.empty_like(x)
    for c in range(3):
        rows = cond == c
        expected[rows] = sub_mixture(gm, c).denoiser(schedule)(x[rows], t[rows])
    rows = cond == 3
    expected[rows] = GaussianMixture(gm.means, gm.stds, gm.weights).denoiser(schedule)(x[rows], t[rows])
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(D(x, t), D(x, t, torch.full((n,), 3)))  # None is the null label, bit for bit


@pytest.mark.parametrize("name", ["vp_linear", "flow"])
def test_conditional_denoiser_is_tweedie_of_class_marginal(name):
    """D(x, t, c) = (x + sigma^2 grad log p_t(x | c)) / alpha, by autograd of marginal_log_prob(label=c)."""
    schedule = get_schedule(name)
    gm = labelled_mixture(dim=2)
    gen = torch.Generator().manual_seed(2)
    t = torch.tensor(0.45, dtype=F64)
    a, s = schedule.alpha(t), schedule.sigma(t)
    y = torch.arange(30) % 3
    x = a * gm.sample(30, gen, labels=y) + s * torch.randn(30, 2, generator=gen, dtype=F64)
    xr = x.clone().requires_grad_(True)
    (score,) = torch.autograd.grad(gm.marginal_log_prob(xr, t, schedule, label=y).sum(), xr)
    torch.testing.assert_close(gm.denoiser(schedule)(x, t.expand(30), y), (x + s**2 * score) / a)


def test_class_log_prob_and_posterior():
    gm = labelled_mixture(dim=2)
    x = 2 * torch.randn(50, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    per_class = torch.stack([gm.log_prob(x, c) for c in range(3)], 1)  # [n, C]
    for c in range(3):
        torch.testing.assert_close(per_class[:, c], sub_mixture(gm, c).log_prob(x))
    # p(x) = sum_c pi_c p(x | c); p(c | x) by Bayes' rule
    torch.testing.assert_close(torch.logsumexp(per_class + gm.class_weights.log(), 1), gm.log_prob(x))
    posterior = gm.class_log_posterior(x)
    torch.testing.assert_close(posterior, per_class + gm.class_weights.log() - gm.log_prob(x)[:, None])
    y = torch.arange(50) % 3
    torch.testing.assert_close(gm.log_prob(x, y), per_class[torch.arange(50), y])
    # each class's density integrates to one
    h = 0.03
    axis = torch.arange(-4.5, 4.5, h, dtype=F64) + h / 2
    xx, yy = torch.meshgrid(axis, axis, indexing="ij")
    grid = torch.stack([xx.flatten(), yy.flatten()], 1)
    for c in range(3):
        assert (gm.log_prob(grid, c).exp().sum() * h**2).item() == pytest.approx(1.0, abs=1e-4)


def test_labelled_sampling():
    gm = labelled_mixture(dim=2)
    n = 60_000
    x, y = gm.sample(n, torch.Generator().manual_seed(0), return_labels=True)
    assert x.shape == (n, 2) and y.shape == (n,) and y.dtype == torch.long
    freq = torch.bincount(y, minlength=3).double() / n
    torch.testing.assert_close(freq, gm.class_weights, rtol=0, atol=0.01)
    # without return_labels the same draws, unchanged from the unlabelled mixture's
    plain = GaussianMixture(gm.means, gm.stds, gm.weights).sample(n, torch.Generator().manual_seed(0))
    assert torch.equal(gm.sample(n, torch.Generator().manual_seed(0)), x) and torch.equal(plain, x)
    requested = torch.arange(n) % 3
    xc, yc = gm.sample(n, torch.Generator().manual_seed(1), labels=requested, return_labels=True)
    assert torch.equal(yc, requested)
    for c in range(3):
        sub = sub_mixture(gm, c)
        mean = (sub.weights[:, None] * sub.means).sum(0)
        torch.testing.assert_close(xc[requested == c].mean(0), mean, rtol=0, atol=0.02)
        # the samples of class c are likelier under class c than a sample of the whole mixture is
        assert gm.log_prob(xc[requested == c], c).mean() > gm.log_prob(x, c).mean()
    one = gm.sample(500, torch.Generator().manual_seed(2), labels=1)  # one int: every row of class 1
    assert (gm.class_log_posterior(one).argmax(1) == 1).double().mean() > 0.5


def test_labelled_mixture_bad_input():
    means = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"classes \[1\]"):
        GaussianMixture(means, 1.0, labels=torch.tensor([0, 2, 2]))
    with pytest.raises(ValueError, match=r"classes \[1\]"):  # class 1's only component has weight 0
        GaussianMixture(means, 1.0, torch.tensor([1.0, 0.0, 1.0]), labels=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="shape"):
        GaussianMixture(means, 1.0, labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=">= 0"):
        GaussianMixture(means, 1.0, labels=torch.tensor([0, -1, 1]))
    with pytest.raises(ValueError, match="integers"):
        GaussianMixture(means, 1.0, labels=torch.tensor([0.0, 1.0, 1.0]))
    gm = labelled_mixture()
    D = gm.denoiser(get_schedule("vp_cosine"))
    x, t = torch.zeros(2, 2), torch.full((2,), 0.5)
    with pytest.raises(ValueError, match=r"cond 4 out of range; allowed 0..2 or the null label 3"):
        D(x, t, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="shape"):
        D(x, t, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="integers"):
        D(x, t, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"labels 3 out of range; allowed 0..2$"):  # null is no class to draw
        gm.sample(2, labels=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="label -1 out of range"):
        gm.log_prob(x, torch.tensor([0, -1]))
    plain = small_mixture()
    with pytest.raises(ValueError, match="no class labels"):
        plain.sample(3, return_labels=True)
    with pytest.raises(ValueError, match="no class labels"):
        plain.log_prob(x, 0)
    with pytest.raises(ValueError, match="no class labels"):
        plain.class_log_posterior(x)
    # an unlabelled mixture's denoiser ignores cond, as before
    Dp = plain.denoiser(get_schedule("vp_cosine"))
    assert torch.equal(Dp(x, t, torch.tensor([5, 7])), Dp(x, t))
