"""Toy data with an exact denoiser: the oracle that separates solver error from network error."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from difflab.schedules import Schedule


class GaussianMixture:
    """Isotropic Gaussian mixture ``sum_k w_k N(mu_k, s_k^2 I)`` in d dimensions, optionally labelled.

    Under ``x_t = alpha x0 + sigma eps`` each component stays Gaussian,
    ``x_t | k ~ N(alpha mu_k, (alpha^2 s_k^2 + sigma^2) I)``, so the denoiser is exact:
    ``E[x0 | x_t] = sum_k r_k(x_t) [mu_k + alpha s_k^2 / (alpha^2 s_k^2 + sigma^2) (x_t - alpha mu_k)]``
    with posterior responsibilities ``r_k``. Computed in float64.

    ``labels`` (integers ``[K]``, every class in ``0..C-1`` owning at least one component) makes it a
    class-conditional oracle: class ``c`` is the sub-mixture of its components,
    ``p(x | c) = sum_{k: l_k = c} (w_k / pi_c) N(mu_k, s_k^2 I)`` with ``pi_c = sum_{k: l_k = c} w_k``,
    and ``E[x0 | x_t, c]`` is the sum above with ``r_k`` restricted to class ``c``'s components.
    ``num_classes = C`` and ``null_label = C`` (the "no class" label of a classifier-free-guidance
    model: ``cond = null_label`` or ``None`` gives the unconditional denoiser). Without labels
    ``num_classes = 0``, ``null_label = None`` and the denoiser ignores ``cond``."""

    def __init__(
        self, means: Tensor, stds: Tensor | float, weights: Tensor | None = None, labels: Tensor | None = None
    ):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must have shape [K, d], got {tuple(means.shape)}")
        K = means.shape[0]
        stds = torch.as_tensor(stds, dtype=torch.float64).expand(K).clone()
        weights = torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None else weights
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if not torch.isfinite(means).all() or not torch.isfinite(stds).all():
            raise ValueError("GaussianMixture: means and stds must be finite")
        if (stds <= 0).any():
            raise ValueError(f"GaussianMixture: stds must be > 0, got {stds.tolist()}")
        if weights.shape != (K,) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(
                f"GaussianMixture: weights must be {K} non-negative numbers, got {weights.tolist()}"
            )
        self.means, self.stds, self.weights = means, stds, weights / weights.sum()
        self.dim = means.shape[1]
        self.labels = None if labels is None else _check_component_labels(labels, self.weights)
        self.num_classes = 0 if self.labels is None else int(self.labels.max()) + 1
        self.null_label = None if self.labels is None else self.num_classes
        if self.labels is not None:
            # [C, K]: 1 where component k belongs to class c; pi_c = class weights
            self._member = self.labels[None, :] == torch.arange(self.num_classes)[:, None]
            self.class_weights = (self._member * self.weights).sum(1)

    # -- classes ----------------------------------------------------------------------------------
    def _check_labels(self, labels, n: int, what: str, allow_null: bool) -> Tensor:
        """``labels`` as a long tensor ``[n]`` (an int broadcasts), each in ``0..C-1`` (or the null label)."""
        if self.labels is None:
            raise ValueError(f"GaussianMixture: {what} given, but this mixture has no class labels")
        if isinstance(labels, bool) or not (isinstance(labels, int) or torch.is_tensor(labels)):
            raise ValueError(f"GaussianMixture: {what} must be an integer tensor [{n}], got {labels!r}")
        labels = torch.as_tensor(labels)
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"GaussianMixture: {what} must be integers, got dtype {labels.dtype}")
        labels = labels.to(torch.long).cpu()
        if labels.ndim == 0:
            labels = labels.expand(n)
        if labels.shape != (n,):
            raise ValueError(f"GaussianMixture: {what} must have shape [{n}], got {tuple(labels.shape)}")
        top = self.num_classes if allow_null else self.num_classes - 1
        if n and (labels.min() < 0 or labels.max() > top):
            bad = labels[(labels < 0) | (labels > top)][0].item()
            extra = f" or the null label {self.null_label}" if allow_null else ""
            raise ValueError(
                f"GaussianMixture: {what} {bad} out of range; allowed 0..{self.num_classes - 1}{extra}"
            )
        return labels

    def _component_weights(self, labels: Tensor) -> Tensor:
        """Mixture weights of each row's class sub-mixture ``w_k 1[l_k = c] / pi_c``, ``[n, K]``."""
        return self._member[labels] * self.weights / self.class_weights[labels, None]

    # -- sampling and densities ---------------------------------------------------------------------
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        labels: Tensor | int | None = None,
        *,
        return_labels: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``n`` samples, ``[n, d]`` float64; with ``labels`` (``[n]`` or one int, a labelled mixture)
        row ``i`` is drawn from class ``labels[i]``; ``return_labels=True`` returns ``(x, y)`` with
        ``y`` the class of each row (the drawn component's class when ``labels`` is None)."""
        if return_labels and self.labels is None:
            raise ValueError("GaussianMixture: return_labels=True, but this mixture has no class labels")
        if labels is None:
            k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        else:
            labels = self._check_labels(labels, n, "labels", allow_null=False)
            k = torch.multinomial(self._component_weights(labels), 1, generator=generator)[:, 0]
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        x = self.means[k] + self.stds[k, None] * z
        return (x, self.labels[k]) if return_labels else x

    def _component_log_prob(self, x: Tensor, scale: Tensor | float, var: Tensor) -> Tensor:
        """log w_k + log N(x; scale mu_k, var_k I) for every row and component, ``[n, K]``."""
        x = x.to(torch.float64).reshape(x.shape[0], -1)
        sq = torch.cdist(x, scale * self.means) ** 2  # [n, K]
        return torch.log(self.weights) - 0.5 * sq / var - 0.5 * self.dim * torch.log(2 * math.pi * var)

    def _reduce(self, comp: Tensor, label) -> Tensor:
        """log of the mixture (``label`` None) or of class ``label``'s sub-mixture, from ``comp`` [n, K]."""
        if label is None:
            return torch.logsumexp(comp, dim=1)
        label = self._check_labels(label, comp.shape[0], "label", allow_null=False)
        masked = comp.masked_fill(~self._member[label], -math.inf)  # [n, K]
        return torch.logsumexp(masked, dim=1) - torch.log(self.class_weights[label])

    def log_prob(self, x: Tensor, label: Tensor | int | None = None) -> Tensor:
        """Exact log-density at each row of ``x``, ``[n]``: of the mixture, or with ``label`` (``[n]``
        or one int) of that class's sub-mixture, ``log p(x | c)``."""
        return self._reduce(self._component_log_prob(x, 1.0, self.stds**2), label)

    def class_log_posterior(self, x: Tensor) -> Tensor:
        """``log p(c | x)`` for every row and class, ``[n, C]``: its argmax is the Bayes classifier."""
        if self.labels is None:
            raise ValueError("GaussianMixture: no class posterior, this mixture has no class labels")
        comp = self._component_log_prob(x, 1.0, self.stds**2)  # [n, K]
        joint = torch.logsumexp(comp[:, None, :].masked_fill(~self._member[None], -math.inf), dim=2)
        return joint - torch.logsumexp(joint, dim=1, keepdim=True)  # [n, C]

    def marginal_log_prob(
        self, x: Tensor, t: Tensor, schedule: Schedule, label: Tensor | int | None = None
    ) -> Tensor:
        """Exact log p_t(x) (or ``log p_t(x | c)`` with ``label``) under ``schedule`` at one time ``t``
        (scalar tensor), ``[n]``."""
        t = torch.as_tensor(t, dtype=torch.float64)
        a, s = schedule.alpha(t), schedule.sigma(t)
        return self._reduce(self._component_log_prob(x, a, a**2 * self.stds**2 + s**2), label)

    def denoiser(self, schedule: Schedule):
        """The exact ``D(x, t, cond=None) = E[x0 | x_t = x]`` under ``schedule``; for a labelled mixture
        ``cond`` (integers ``[B]``) gives ``E[x0 | x_t = x, c]`` per row, the null label (or None) the
        unconditional mean. An unlabelled mixture ignores ``cond``."""

        def D(x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
            shape, dtype = x.shape, x.dtype
            x64 = x.to(torch.float64).reshape(shape[0], -1)  # [B, d]
            t64 = t.to(torch.float64).reshape(-1, 1)  # [B, 1]
            a, s = schedule.alpha(t64), schedule.sigma(t64)  # [B, 1]
            var = a**2 * self.stds**2 + s**2  # [B, K]
            sq = ((x64[:, None, :] - a[:, :, None] * self.means[None]) ** 2).sum(-1)  # [B, K]
            logits = torch.log(self.weights) - 0.5 * sq / var - 0.5 * self.dim * torch.log(var)
            if cond is not None and self.labels is not None:
                cond = self._check_labels(cond, shape[0], "cond", allow_null=True)
                outside = (self.labels[None, :] != cond[:, None]) & (cond[:, None] != self.null_label)
                logits = logits.masked_fill(outside.to(logits.device), -math.inf)  # [B, K]
            r = torch.softmax(logits, dim=1)  # [B, K]
            gain = a * self.stds**2 / var  # [B, K]
            # E[x0 | x_t, k] = mu_k + gain_k (x_t - alpha mu_k)
            post = self.means[None] + gain[:, :, None] * (x64[:, None, :] - a[:, :, None] * self.means[None])
            return (r[:, :, None] * post).sum(1).reshape(shape).to(dtype)

        return D


def _check_component_labels(labels, weights: Tensor) -> Tensor:
    """Component classes ``[K]`` as long: integers, every class in ``0..max`` owning a component of
    positive weight (a class's conditional distribution must exist)."""
    K = len(weights)
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"GaussianMixture: labels must be integers, got dtype {labels.dtype}")
    labels = labels.to(torch.long).cpu()
    if labels.shape != (K,):
        raise ValueError(
            f"GaussianMixture: labels must have shape [{K}] (one per component), got {tuple(labels.shape)}"
        )
    if labels.min() < 0:
        raise ValueError(f"GaussianMixture: labels must be >= 0, got {labels.tolist()}")
    C = int(labels.max()) + 1
    mass = torch.zeros(C, dtype=torch.float64).index_add_(0, labels, weights)
    if (mass <= 0).any():
        missing = torch.nonzero(mass <= 0)[:, 0].tolist()
        raise ValueError(
            f"GaussianMixture: classes {missing} own no component of positive weight; labels must cover "
            f"0..{C - 1}, got {labels.tolist()}"
        )
    return labels


def _check_count(key: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key}={value!r} must be an integer >= 1")


def ring_mixture(k: int = 8, radius: float = math.sqrt(2.0), std: float = 0.1) -> GaussianMixture:
    """``k`` equal-weight Gaussians of std ``std`` on a circle of radius ``radius`` in 2-D.

    The default radius sqrt(2) gives each coordinate variance ``1 + std^2``; k = 8 is the
    "8 Gaussians" toy set (``sample_toy("gaussian_mixture", ...)``), with an exact denoiser."""
    _check_count("ring_mixture: k", k)
    if not (math.isfinite(radius) and radius >= 0):
        raise ValueError(f"ring_mixture: radius={radius!r} must be a finite number >= 0")
    angle = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
    return GaussianMixture(radius * torch.stack([angle.cos(), angle.sin()], 1), std)


def small_mixture(dim: int = 2) -> GaussianMixture:
    """A small, fixed, deliberately uneven mixture in ``dim`` dimensions for tests: three
    components with weights (0.5, 0.3, 0.2), stds (0.3, 0.5, 0.2) and means at unit scale."""
    _check_count("small_mixture: dim", dim)
    k, j = torch.arange(3, dtype=torch.float64)[:, None], torch.arange(dim, dtype=torch.float64)[None]
    means = 1.2 * torch.cos(2.1 * k + 1.3 * j + 0.4)  # [3, dim]
    return GaussianMixture(means, torch.tensor([0.3, 0.5, 0.2]), torch.tensor([0.5, 0.3, 0.2]))


# -- 2-D toy sets (the usual ones from FFJORD / scikit-learn, written in torch so that a
# generator controls them). Each is centred and scaled to about unit variance per coordinate;
# ``noise`` is the std of isotropic Gaussian noise added in those final units. -------------------


def _check_toy(n, noise) -> None:
    _check_count("n", n)
    number = isinstance(noise, (int, float)) and not isinstance(noise, bool)
    if not (number and math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise={noise!r} must be a finite number >= 0")


def _add_noise(x: Tensor, noise: float, generator) -> Tensor:
    if noise == 0:
        return x
    return x + noise * torch.randn(x.shape, dtype=x.dtype, generator=generator)


def moons(n: int, generator: torch.Generator | None = None, noise: float = 0.05) -> Tensor:
    """Two interleaving half circles (scikit-learn's ``make_moons``), ``[n, 2]`` float64.

    Outer: (cos th, sin th), inner: (1 - cos th, 1/2 - sin th), th ~ U[0, pi]; centred at
    (1/2, 1/4) and divided by the RMS spread sqrt((3/4 + 5/8 - 1/pi - 1/16) / 2) ~ 0.705."""
    _check_toy(n, noise)
    theta = math.pi * torch.rand(n, dtype=torch.float64, generator=generator)
    inner = torch.arange(n) % 2 == 1
    x = torch.where(inner, 1 - theta.cos(), theta.cos())
    y = torch.where(inner, 0.5 - theta.sin(), theta.sin())
    scale = math.sqrt((0.75 + 0.625 - 1 / math.pi - 0.0625) / 2)
    centred = torch.stack([x, y], 1) - torch.tensor([0.5, 0.25], dtype=torch.float64)
    return _add_noise(centred / scale, noise, generator)


def rings(n: int, generator: torch.Generator | None = None, noise: float = 0.05) -> Tensor:
    """Two concentric circles, radii r and r/2 (``make_circles(factor=0.5)``), half the points
    on each; r = 1/sqrt(5/16) ~ 1.79 gives unit variance per coordinate. ``[n, 2]`` float64."""
    _check_toy(n, noise)
    theta = 2 * math.pi * torch.rand(n, dtype=torch.float64, generator=generator)
    radius = torch.where(torch.arange(n) % 2 == 1, 0.5, 1.0).to(torch.float64) / math.sqrt(5 / 16)
    return _add_noise(radius[:, None] * torch.stack([theta.cos(), theta.sin()], 1), noise, generator)


def checkerboard(n: int, generator: torch.Generator | None = None, noise: float = 0.0) -> Tensor:
    """Uniform on the 8 "black" cells of a 4 x 4 checkerboard over [-2, 2]^2 (cells where
    floor(x) + floor(y) is even), divided by 2/sqrt(3) (unit variance). ``[n, 2]`` float64."""
    _check_toy(n, noise)
    x = 4 * torch.rand(n, dtype=torch.float64, generator=generator) - 2
    row = torch.randint(0, 2, (n,), generator=generator)  # which of the two black cells in x's column
    y_cell = 2 * row - 2 + (torch.floor(x).long() % 2)  # in {-2, -1, 0, 1}, parity matching x's cell
    y = y_cell + torch.rand(n, dtype=torch.float64, generator=generator)
    return _add_noise(torch.stack([x, y], 1) / (2 / math.sqrt(3)), noise, generator)


def swiss_roll(n: int, generator: torch.Generator | None = None, noise: float = 0.05) -> Tensor:
    """2-D Swiss roll (``make_swiss_roll``'s (x, z) plane): (t cos t, t sin t), t ~ U[3pi/2, 9pi/2];
    centred at its mean (2, 2/(3pi)) and divided by its RMS spread ~ 6.79. ``[n, 2]`` float64."""
    _check_toy(n, noise)
    a, b = 1.5 * math.pi, 4.5 * math.pi
    t = a + (b - a) * torch.rand(n, dtype=torch.float64, generator=generator)
    mean = torch.tensor([2.0, 2 / (3 * math.pi)], dtype=torch.float64)
    mean_t2 = (b**3 - a**3) / (3 * (b - a))
    scale = math.sqrt((mean_t2 - (mean**2).sum().item()) / 2)
    return _add_noise((torch.stack([t * t.cos(), t * t.sin()], 1) - mean) / scale, noise, generator)


def gaussian_mixture(n: int, generator: torch.Generator | None = None, noise: float = 0.1) -> Tensor:
    """8 Gaussians of std ``noise`` on a circle of radius sqrt(2) (``ring_mixture``). ``[n, 2]`` float64."""
    _check_toy(n, noise)
    if noise == 0:
        raise ValueError("gaussian_mixture: noise is the components' std and must be > 0")
    return ring_mixture(8, math.sqrt(2.0), noise).sample(n, generator)


TOY_DATASETS = {f.__name__: f for f in (moons, rings, checkerboard, swiss_roll, gaussian_mixture)}


def sample_toy(
    name: str,
    n: int,
    generator: torch.Generator | None = None,
    noise: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``n`` points ``[n, 2]`` of the 2-D toy set ``name`` (one of ``TOY_DATASETS``) in ``dtype``;
    ``noise=None`` keeps the set's default noise."""
    if name not in TOY_DATASETS:
        raise ValueError(f"unknown toy dataset {name!r}; valid: {', '.join(TOY_DATASETS)}")
    kwargs = {} if noise is None else {"noise": noise}
    return TOY_DATASETS[name](n, generator, **kwargs).to(dtype)
