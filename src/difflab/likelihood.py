"""Exact likelihood from the probability-flow ODE (Song et al. 2021, "Score-Based Generative
Modeling through SDEs", App. D; Grathwohl et al. 2019, FFJORD, for the Hutchinson estimator).

The PF-ODE carries the data density at ``t_min`` to the prior at ``t_max``; along a trajectory
``d log p(x(t)) / dt = -div F(x, t)`` (instantaneous change of variables). Integrated in plain t
the ODE is stiff (VP-cosine's f ~ tan near t_max, flow's f = -1/(1-t)), so we integrate the one
PF-ODE of ``difflab.solvers.edm_ode_velocity`` (the equation rk45 solves), in EDM's variables

    u = log(sigma / alpha) = -log_snr / 2,    y = x / alpha,    dy/du = v(y, u) = y - D(alpha y, t(u)),

from ``u(t_min)`` to ``u(t_max)``, together with ``int div_y v du``. In y the density obeys

    log p_y(y(u_min)) = log p_y(y(u_max)) + int_{u_min}^{u_max} div_y v du,

and ``x = alpha y`` at each end adds the exact log-determinant ``d log alpha`` (``p_x = p_y / alpha^d``):

    log p_x(x0) = log N(x_T; 0, sigma(t_max)^2 I) + d log alpha(t_max) - d log alpha(t_min)
                  + int_{u_min}^{u_max} div_y v du,

where the first two terms are the prior N(0, s(t_max)^2 I) on y, ``s = sigma / alpha``, written as the
prior N(0, sigma(t_max)^2 I) on x plus its end of the change of variables. The prior (not the true
p_{t_max}) and the start at t_min (not 0) give small biases that vanish as alpha(t_max) -> 0 and
sigma(t_min) -> 0. Everything runs in float64 with torchdiffeq's dopri5.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torchdiffeq import odeint

from difflab.schedules import Schedule, _check_positive
from difflab.solvers import edm_ode_velocity

# A divergence maker: (batch, dims, n_probes, generator, float64 kwargs) -> div(v, y) -> [B],
# the divergence of v(y) w.r.t. y per row, with v, y [B, ...] on one autograd graph.
Divergence = Callable[[Tensor, Tensor], Tensor]


def _exact_divergence(B: int, d: int, n_probes: int, generator, f64: dict) -> Divergence:
    """The Jacobian's trace by autograd, one backward pass per dimension (fine for low d)."""

    def div(v: Tensor, y: Tensor) -> Tensor:
        v_rows = v.reshape(B, d)
        out = torch.zeros(B, **f64)
        for i in range(d):
            (grad,) = torch.autograd.grad(v_rows[:, i].sum(), y, retain_graph=i < d - 1)
            out = out + grad.reshape(B, d)[:, i]
        return out

    return div


def _hutchinson_divergence(B: int, d: int, n_probes: int, generator, f64: dict) -> Divergence:
    """Hutchinson's unbiased ``E[e^T J e]``: Rademacher probes ``[n_probes, B, d]`` drawn once, here."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    bits = torch.randint(0, 2, (n_probes, B, d), generator=generator, device=gen_device)
    probes = (2 * bits - 1).to(**f64)  # [n_probes, B, d]

    def div(v: Tensor, y: Tensor) -> Tensor:
        out = torch.zeros(B, **f64)
        for k in range(n_probes):
            probe = probes[k].reshape(y.shape)
            (vjp,) = torch.autograd.grad(v, y, probe, retain_graph=k < n_probes - 1)
            out = out + (vjp * probe).reshape(B, d).sum(1)
        return out / n_probes

    return div


_DIVERGENCES = {"exact": _exact_divergence, "hutchinson": _hutchinson_divergence}
DIVERGENCES = tuple(_DIVERGENCES)


def pf_ode_nll(
    denoiser,
    schedule: Schedule,
    x0: Tensor,
    *,
    divergence: str = "exact",
    generator: torch.Generator | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    n_probes: int = 1,
    cond: Tensor | None = None,
    return_stats: bool = False,
):
    """Negative log-likelihood in nats of each row of ``x0`` ``[B, ...]`` (continuous, model space).

    ``divergence="exact"`` takes the trace of the Jacobian by autograd, one backward pass per
    dimension (fine for low d); ``"hutchinson"`` uses ``n_probes`` Rademacher probes per row,
    drawn once per call from ``generator`` and kept fixed along the trajectory (unbiased).
    Returns ``nll`` ``[B]`` (float64, detached), or ``(nll, {"nfe": ..., ...})`` with
    ``return_stats=True``; ``nfe`` counts denoiser evaluations (one per ODE right-hand side); the
    dict also holds ``x_T`` (the end point, x0's shape) and the terms ``log_prior`` (the prior's
    log-density at ``x_T``, in x), ``int_div``, ``log_det`` (each ``[B]``) with
    ``nll = -(log_prior + log_det + int_div)``.
    """
    _check_args(x0, divergence, n_probes, rtol, atol)
    ends = _Ends.of(schedule, x0.device)
    B, d = x0.shape[0], x0[0].numel()
    div = _DIVERGENCES[divergence](B, d, n_probes, generator, ends.f64)
    y_T, int_div, nfe = _integrate(denoiser, schedule, x0 / ends.alpha_min, ends, div, cond, rtol, atol)
    x_T = ends.alpha_max * y_T
    log_prior = _log_prior(x_T, ends.sigma_max)
    log_det = ends.log_det(d).expand(B)
    nll = -(log_prior + log_det + int_div)
    stats = {"nfe": nfe, "x_T": x_T, "log_prior": log_prior, "int_div": int_div, "log_det": log_det}
    return (nll, stats) if return_stats else nll


def _check_args(x0, divergence: str, n_probes, rtol, atol) -> None:
    if divergence not in _DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; valid: {', '.join(DIVERGENCES)}")
    if isinstance(n_probes, bool) or not (isinstance(n_probes, int) and n_probes >= 1):
        raise ValueError(f"n_probes={n_probes!r} must be an integer >= 1")
    _check_positive(rtol=rtol, atol=atol)
    if not torch.is_tensor(x0) or x0.ndim < 1 or x0.shape[0] == 0:
        raise ValueError("x0 must be a tensor of shape [B, ...] with B >= 1")
    if not x0.is_floating_point():
        raise ValueError(f"x0 must be a floating-point tensor, got {x0.dtype} (use bits_per_dim for levels)")
    if not torch.isfinite(x0).all():
        raise ValueError("x0 holds non-finite values (nan or inf); pf_ode_nll needs finite data")


@dataclass(frozen=True)
class _Ends:
    """The schedule at the interval's two ends, float64 0-d tensors on the data's device: ``u`` =
    ``[u(t_min), u(t_max)]`` (increasing: data to noise), alpha at each end and sigma(t_max)."""

    u: Tensor
    alpha_min: Tensor
    alpha_max: Tensor
    sigma_max: Tensor
    f64: dict

    @classmethod
    def of(cls, schedule: Schedule, device) -> _Ends:
        f64 = dict(dtype=torch.float64, device=device)
        t = torch.tensor([schedule.t_min, schedule.t_max], **f64)
        u = torch.log(schedule.sigma_over_alpha(t)).to(torch.float64)
        if not (torch.isfinite(u).all() and u[0] < u[1]):
            s_min, s_max = torch.exp(u).tolist()
            raise ValueError(
                f"schedule {schedule!r}: sigma/alpha must be finite and > 0 at t_min and t_max "
                f"(got {s_min:.3g} and {s_max:.3g})"
            )
        alpha = schedule.alpha(t).to(torch.float64)
        return cls(u, alpha[0], alpha[1], schedule.sigma(t[1]).to(torch.float64), f64)

    def log_det(self, d: int) -> Tensor:
        """``log |dy/dx|`` at the prior end minus the data end: ``d log(alpha(t_max) / alpha(t_min))``."""
        return d * (torch.log(self.alpha_max) - torch.log(self.alpha_min))


def _integrate(
    denoiser, schedule: Schedule, y0: Tensor, ends: _Ends, div: Divergence, cond, rtol: float, atol: float
) -> tuple[Tensor, Tensor, int]:
    """dopri5 on ``(y, int div_y v du)`` from ``u(t_min)`` to ``u(t_max)``, with ``v`` =
    ``edm_ode_velocity``: returns ``y(u_max)`` (y0's shape), the integral ``[B]`` and the NFE."""
    nfe = 0

    def rhs(u: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        nonlocal nfe
        nfe += 1
        y = state[0].detach().requires_grad_(True)
        v = edm_ode_velocity(denoiser, schedule, y, u, cond)
        return v.detach(), div(v, y).detach()

    # the divergence needs autograd, also when called under no_grad or inference_mode (Lightning eval)
    with torch.inference_mode(False), torch.enable_grad():
        state0 = (y0.detach().to(**ends.f64).clone(), torch.zeros(y0.shape[0], **ends.f64))
        ys, ints = odeint(rhs, state0, ends.u.clone(), rtol=rtol, atol=atol, method="dopri5")
    return ys[-1], ints[-1], nfe


def _log_prior(x_T: Tensor, sigma_max: Tensor) -> Tensor:
    """``log N(x_T; 0, sigma(t_max)^2 I)`` per row ``[B]``."""
    d = x_T[0].numel()
    sq = (x_T.reshape(x_T.shape[0], -1) ** 2).sum(1)
    return -0.5 * sq / sigma_max**2 - 0.5 * d * torch.log(2 * math.pi * sigma_max**2)


def dequantize(x: Tensor, levels: int = 256, generator: torch.Generator | None = None) -> Tensor:
    """Uniform dequantization of integer levels into model space: ``z = 2 (x + u) / levels - 1``.

    ``x`` holds integers in ``{0, ..., levels - 1}``; ``u ~ U[0, 1)`` elementwise from ``generator``
    (drawn on the generator's device). Returns float64 ``z`` in ``[-1, 1)`` of x's shape.
    """
    _check_levels(x, levels)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(x.shape, generator=generator, dtype=torch.float64, device=gen_device).to(x.device)
    return 2 * (x.to(torch.float64) + u) / levels - 1


def bits_per_dim(
    denoiser,
    schedule: Schedule,
    x: Tensor,
    *,
    levels: int = 256,
    divergence: str = "hutchinson",
    generator: torch.Generator | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    n_probes: int = 1,
    cond: Tensor | None = None,
    return_stats: bool = False,
):
    """Bits per dimension of discrete data ``x`` ``[B, ...]`` with integer levels ``{0..levels-1}``.

    Uniform dequantization ``z = 2 (x + u) / levels - 1`` (``u ~ U[0,1)`` from ``generator``, drawn
    before any Hutchinson probes), ``NLL_z`` by ``pf_ode_nll``, then the density of the dequantized
    levels ``v = x + u`` is ``p_z(z) (2/levels)^D``, so

        bpd = (NLL_z - D log(2 / levels)) / (D ln 2),

    an upper bound (Jensen) on the discrete model's bits per dimension. A model uniform on
    [-1, 1]^D scores exactly ``log2(levels)`` (8 for 256 levels): the baseline to beat.
    The ODE measures p_{t_min}, the data blurred by noise of std sigma/alpha at t_min (~0.01 for
    vp_linear): keep that well below the bin width 2/levels (e.g. ``t_min=1e-5``) for sharp models.
    """
    z = dequantize(x, levels, generator)
    D = x[0].numel()
    options = dict(divergence=divergence, generator=generator, rtol=rtol, atol=atol, n_probes=n_probes)
    nll, stats = pf_ode_nll(denoiser, schedule, z, **options, cond=cond, return_stats=True)
    bpd = (nll - D * math.log(2 / levels)) / (D * math.log(2))
    return (bpd, stats) if return_stats else bpd


def _check_levels(x: Tensor, levels: int) -> None:
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels={levels!r} must be an integer >= 2")
    if not torch.is_tensor(x) or x.ndim < 1 or x.shape[0] == 0:
        raise ValueError("x must be a tensor of shape [B, ...] with B >= 1")
    if x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"x must hold integer levels 0..{levels - 1}, got dtype {x.dtype}")
    if x.is_floating_point() and not (torch.isfinite(x).all() and (x == x.round()).all()):
        raise ValueError(f"x must hold integer levels 0..{levels - 1}; got non-integer values")
    lo, hi = x.min().item(), x.max().item()
    if lo < 0 or hi > levels - 1:
        raise ValueError(f"x holds values in [{lo}, {hi}]; allowed levels are 0..{levels - 1}")
