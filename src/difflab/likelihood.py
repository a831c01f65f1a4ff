"""Exact likelihood from the probability-flow ODE (Song et al. 2021, "Score-Based Generative
Modeling through SDEs", App. D; Grathwohl et al. 2019, FFJORD, for the Hutchinson estimator).

The PF-ODE ``dx/dt = f x - g^2/2 score`` carries the data density at ``t_min`` to the prior at
``t_max``; along a trajectory ``d log p_t(x(t)) / dt = -div F(x, t)`` (instantaneous change of
variables), so

    log p_{t_min}(x0) = log p_prior(x(t_max)) + int_{t_min}^{t_max} div F dt.

Integrated in plain t the ODE is stiff (VP-cosine's f ~ tan near t_max, flow's f = -1/(1-t)).
We integrate instead in the well-conditioned pair

    u = log(sigma / alpha) = -log_snr / 2          (time, from u(t_min) to u(t_max))
    z = x / c(t),  c(t) = sqrt(alpha^2 + sigma^2)  (state; O(1) under every schedule)

With ``s = e^u`` the PF-ODE becomes the VP-normalised EDM ODE

    dz/du = z / (1 + s^2) - D(c z, t) / sqrt(1 + s^2),

and the change of variables x = c z adds the exact log-determinant ``d log c`` at each end:

    log p_x(x0, t_min) = log N(x_T; 0, sigma(t_max)^2 I) + d log c(t_max) - d log c(t_min)
                         + int_{u_min}^{u_max} div_z (dz/du) du.

The prior N(0, sigma(t_max)^2 I) and the start at t_min (not 0) give small biases that vanish
as alpha(t_max) -> 0 and sigma(t_min) -> 0. Everything runs in float64 with torchdiffeq's dopri5.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchdiffeq import odeint

from difflab.schedules import Schedule

DIVERGENCES = ("exact", "hutchinson")


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
    dict also holds ``x_T`` (the end point, x0's shape) and the terms ``log_prior``, ``int_div``,
    ``log_det`` (each ``[B]``) with ``nll = -(log_prior + log_det + int_div)``.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; valid: {', '.join(DIVERGENCES)}")
    if isinstance(n_probes, bool) or not (isinstance(n_probes, int) and n_probes >= 1):
        raise ValueError(f"n_probes={n_probes!r} must be an integer >= 1")
    for key, value in (("rtol", rtol), ("atol", atol)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{key}={value!r} must be a finite number > 0")
    if not torch.is_tensor(x0) or x0.ndim < 1 or x0.shape[0] == 0:
        raise ValueError("x0 must be a tensor of shape [B, ...] with B >= 1")
    if not x0.is_floating_point():
        raise ValueError(f"x0 must be a floating-point tensor, got {x0.dtype} (use bits_per_dim for levels)")
    if not torch.isfinite(x0).all():
        raise ValueError("x0 holds non-finite values (nan or inf); pf_ode_nll needs finite data")

    shape, device = x0.shape, x0.device
    B, d = shape[0], x0[0].numel()
    f64 = dict(dtype=torch.float64, device=device)
    t_min = torch.tensor(schedule.t_min, **f64)
    t_max = torch.tensor(schedule.t_max, **f64)
    u_min, u_max = (torch.log(schedule.sigma_over_alpha(t)) for t in (t_min, t_max))
    if not (torch.isfinite(u_min) and torch.isfinite(u_max) and u_min < u_max):
        raise ValueError(
            f"schedule {schedule!r}: sigma/alpha must be finite and > 0 at t_min and t_max "
            f"(got {math.exp(u_min):.3g} and {math.exp(u_max):.3g})"
        )

    def c_of(t: Tensor) -> Tensor:
        return torch.sqrt(schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2)

    probes = None
    if divergence == "hutchinson":  # Rademacher +-1, [n_probes, B, d]
        gen_device = generator.device if generator is not None else torch.device("cpu")
        bits = torch.randint(0, 2, (n_probes, B, d), generator=generator, device=gen_device)
        probes = (2 * bits - 1).to(**f64)

    nfe = 0

    def rhs(u: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        nonlocal nfe
        nfe += 1
        z = state[0]
        s2 = torch.exp(2 * u)
        t = schedule.t_from_log_snr(-2 * u).to(torch.float64).expand(B)  # [B]
        c = c_of(t[:1])
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            x0_hat = denoiser((c * z).reshape(shape), t, cond).to(torch.float64).reshape(B, d)
            dz = z / (1 + s2) - x0_hat / torch.sqrt(1 + s2)  # [B, d]
            if probes is None:
                div = torch.zeros(B, **f64)
                for i in range(d):
                    (grad,) = torch.autograd.grad(dz[:, i].sum(), z, retain_graph=i < d - 1)
                    div = div + grad[:, i]
            else:
                div = torch.zeros(B, **f64)
                for k in range(n_probes):
                    (vjp,) = torch.autograd.grad(dz, z, probes[k], retain_graph=k < n_probes - 1)
                    div = div + (vjp * probes[k]).sum(1)
                div = div / n_probes
        return dz.detach(), div.detach()

    # the divergence needs autograd, also when called under no_grad or inference_mode (Lightning eval)
    with torch.inference_mode(False), torch.enable_grad():
        z0 = x0.detach().to(**f64).clone().reshape(B, d) / c_of(t_min.clone())
        state0 = (z0, torch.zeros(B, **f64))
        us = torch.stack([u_min, u_max]).clone()
        zs, ints = odeint(rhs, state0, us, rtol=rtol, atol=atol, method="dopri5")
    z_T, int_div = zs[-1], ints[-1]

    x_T = c_of(t_max) * z_T
    sigma_T = schedule.sigma(t_max)
    log_prior = -0.5 * (x_T**2).sum(1) / sigma_T**2 - 0.5 * d * torch.log(2 * math.pi * sigma_T**2)
    log_det = d * (torch.log(c_of(t_max)) - torch.log(c_of(t_min)))
    nll = -(log_prior + log_det + int_div)
    if return_stats:
        stats = {"nfe": nfe, "x_T": x_T.reshape(shape), "log_prior": log_prior, "int_div": int_div}
        return nll, {**stats, "log_det": log_det}
    return nll


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
    out = pf_ode_nll(
        denoiser,
        schedule,
        z,
        divergence=divergence,
        generator=generator,
        rtol=rtol,
        atol=atol,
        n_probes=n_probes,
        cond=cond,
        return_stats=return_stats,
    )
    nll, stats = out if return_stats else (out, None)
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
