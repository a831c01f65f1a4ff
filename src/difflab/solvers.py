"""Reverse-time solvers: stateless ``sample_*`` functions in a name -> function registry.

Time runs from noise (t_max) to data (t_min); ``x_t = alpha(t) x0 + sigma(t) eps``. Every solver
sees only the denoiser ``D(x, t, cond) ~ E[x0 | x_t = x]`` and the schedule, and has the signature

    sample_<name>(denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None,
                  **options) -> x0                                    # noise, x0: [B, ...]

It starts at ``x(t_0) = sigma(t_0) noise``, integrates over the time grid ``t_0 > ... > t_K``
(``get_grid``, or an explicit 1-D tensor) in float64 (option ``dtype``) whatever the network's
dtype, and returns the final denoising ``D(x(t_K), t_K)`` (one evaluation) in ``noise.dtype``.
The equations (Song et al. 2021), with ``score = (alpha D - x) / sigma^2`` (Tweedie):

    PF-ODE        dx/dt = f x - g2/2 score = (sigma'/sigma) (x - alpha D) + alpha' D
    reverse SDE   dx = [f x - g2 score] dt + g dW_bar
    kernel        q(x_t | x_s) = N((alpha_t/alpha_s) x_s, (sigma_t^2 - (alpha_t/alpha_s)^2 sigma_s^2) I)

The right-hand form of the PF-ODE stays finite where f and g2 diverge (flow at t = 1: (x - D)/t).
Per-step coefficients are computed once per grid in float64 and kept as Python floats, and the state
is updated in place (no allocation per step), so a step costs a few passes over x on top of its
denoiser calls (bench/solver_overhead.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from difflab.schedules import Schedule

SOLVERS = ("euler_maruyama", "euler", "heun", "ddpm", "ddim", "dpm_solver_2m", "pc", "rk45")
GRIDS = ("uniform", "logsnr", "edm")
EDM_RHO = 7.0

# Options every fixed-step solver accepts: the integration dtype and a per-step callback that
# receives {"i", "t", "t_next", "x" (a copy of the state at t_next), "x0_hat" (D at the step's start)}.
_COMMON_OPTIONS = {"dtype": torch.float64, "callback": None}


# -- randomness, counting ------------------------------------------------------------------------
def randn_like(x: Tensor, generator: torch.Generator | Sequence[torch.Generator] | None = None) -> Tensor:
    """Standard normal noise shaped like ``x`` ``[B, ...]``.

    ``generator`` is ``None`` (global RNG), one ``torch.Generator``, or a sequence of ``B``
    generators, one per batch row (EDM's ``StackedRandomGenerator``): then row ``b``'s noise depends
    only on ``generator[b]``, so a sample's noise path is independent of the batch it sits in.
    Float64 noise is drawn in float32 and cast: torch's float64 normal sampler is ~10x slower on CPU
    and a float32 normal is exact enough for sampling.
    """
    return _draw(x, generator).to(x.dtype)


def _draw_dtype(x: Tensor) -> torch.dtype:
    return torch.float32 if x.dtype == torch.float64 else x.dtype


def _draw(x: Tensor, generator, out: Tensor | None = None) -> Tensor:
    """``randn_like`` before the cast: float32 for float64 ``x`` (added to x in place, no extra pass)."""
    if out is None:
        out = torch.empty(x.shape, dtype=_draw_dtype(x), device=x.device)
    if generator is None or isinstance(generator, torch.Generator):
        return out.normal_(generator=generator)
    if len(generator) != x.shape[0]:
        raise ValueError(
            f"got {len(generator)} generators for a batch of {x.shape[0]} rows; need one per row"
        )
    for row, g in zip(out, generator):
        row.normal_(generator=g)
    return out


class CountingDenoiser:
    """Wraps a denoiser and counts its calls in ``.nfe`` (one per call, whatever the batch size).

    Usable with every solver; the pipeline uses it to record the actual NFE of the adaptive rk45.
    """

    def __init__(self, denoiser: Callable):
        self.denoiser, self.nfe = denoiser, 0

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        self.nfe += 1
        return self.denoiser(x, t) if cond is None else self.denoiser(x, t, cond)

    def reset(self) -> None:
        self.nfe = 0


# -- the equations -------------------------------------------------------------------------------
def _pf_coefficients(schedule: Schedule, t: Tensor) -> tuple[Tensor, Tensor]:
    """PF-ODE drift ``c_x x + c_D D`` with ``c_x = sigma'/sigma``, ``c_D = alpha' - sigma' alpha / sigma``.

    Equal to ``f x - g2/2 score``; both terms of ``c_D`` share a sign, so no precision is lost
    where f and g2 are large.
    """
    a, s = schedule.alpha(t), schedule.sigma(t)
    ds = schedule.d_sigma(t)
    return ds / s, schedule.d_alpha(t) - ds * a / s


def _sde_coefficients(schedule: Schedule, t: Tensor) -> tuple[Tensor, Tensor]:
    """Reverse-SDE drift ``f x - g2 score = (2 c_x - f) x + 2 c_D D`` (= 2 PF-ODE drift - f x)."""
    c_x, c_D = _pf_coefficients(schedule, t)
    return 2 * c_x - schedule.f(t), 2 * c_D


def _bcast(c: Tensor, x: Tensor) -> Tensor:
    c = torch.as_tensor(c, dtype=x.dtype, device=x.device)
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


def _batch_t(t, x: Tensor) -> Tensor:
    """``t`` (a number or a tensor broadcastable to ``[B]``) as a ``[B]`` tensor of x's dtype."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.expand(x.shape[0]).contiguous() if t.numel() == 1 else t.reshape(x.shape[0])


def _call(denoiser, x: Tensor, t: Tensor, cond) -> Tensor:
    return (denoiser(x, t) if cond is None else denoiser(x, t, cond)).to(x.dtype)


def pf_ode_drift(denoiser, schedule: Schedule, x: Tensor, t, cond=None) -> Tensor:
    """PF-ODE drift ``dx/dt = f x - g2/2 score`` at ``x`` ``[B, ...]``, ``t`` scalar or ``[B]``."""
    tb = _batch_t(t, x)
    c_x, c_D = _pf_coefficients(schedule, tb)
    return _bcast(c_x, x) * x + _bcast(c_D, x) * _call(denoiser, x, tb, cond)


def reverse_sde_drift(denoiser, schedule: Schedule, x: Tensor, t, cond=None) -> Tensor:
    """Reverse-SDE drift ``f x - g2 score`` (time running backwards: ``dx = drift dt + g dW_bar``)."""
    tb = _batch_t(t, x)
    c_x, c_D = _sde_coefficients(schedule, tb)
    return _bcast(c_x, x) * x + _bcast(c_D, x) * _call(denoiser, x, tb, cond)


# -- time grids ----------------------------------------------------------------------------------
def get_grid(grid: str, schedule: Schedule, steps: int, *, device=None) -> Tensor:
    """``steps + 1`` float64 times, strictly decreasing from ``schedule.t_max`` to ``schedule.t_min``.

    ``"uniform"``: uniform in t; ``"logsnr"``: uniform in log-SNR; ``"edm"``: Karras et al. (2022)
    rho = 7 spacing of ``sigma/alpha``, ``s_i = (s_max^(1/rho) + i/K (s_min^(1/rho) - s_max^(1/rho)))^rho``.
    Non-uniform grids are mapped back to t with ``schedule.t_from_log_snr``.
    """
    if grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; valid grids: {', '.join(GRIDS)} or a 1-D tensor of times")
    _check_steps(steps)
    f64 = dict(dtype=torch.float64, device=device)
    ends = torch.tensor([schedule.t_max, schedule.t_min], **f64)
    if grid == "uniform":
        ts = torch.linspace(schedule.t_max, schedule.t_min, steps + 1, **f64)
    else:
        lam_max, lam_min = schedule.log_snr(ends).tolist()  # log-SNR at t_max (low), t_min (high)
        if grid == "logsnr":
            lam = torch.linspace(lam_max, lam_min, steps + 1, **f64)
        else:
            ramp = torch.linspace(0, 1, steps + 1, **f64)
            lo, hi = math.exp(-lam_max / 2 / EDM_RHO), math.exp(-lam_min / 2 / EDM_RHO)  # s^(1/rho)
            lam = -2 * EDM_RHO * torch.log(lo + ramp * (hi - lo))  # s = sigma/alpha = exp(-lam/2)
        ts = schedule.t_from_log_snr(lam).to(torch.float64)
        ts[0], ts[-1] = ends[0], ends[1]
    if not (torch.isfinite(ts).all() and (ts[1:] < ts[:-1]).all()):
        raise ValueError(f"grid {grid!r} with {steps} steps is not strictly decreasing for {schedule!r}")
    return ts


def _check_steps(steps) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be a positive int")


def _resolve_grid(grid, schedule: Schedule, steps, device) -> Tensor:
    if isinstance(grid, str):
        return get_grid(grid, schedule, steps, device=device)
    if not isinstance(grid, Tensor):
        raise ValueError(
            f"grid={grid!r} must be one of {', '.join(GRIDS)} or a 1-D tensor of decreasing times"
        )
    ts = grid.detach().to(device=device, dtype=torch.float64)
    if ts.ndim != 1 or ts.numel() < 2:
        raise ValueError(f"explicit grid must be 1-D with at least 2 times, got shape {tuple(ts.shape)}")
    if not torch.isfinite(ts).all() or (ts < 0).any() or (ts > 1).any():
        raise ValueError(f"explicit grid times must be finite and inside [0, 1], got {ts.tolist()}")
    if not (ts[1:] < ts[:-1]).all():
        raise ValueError(f"explicit grid must be strictly decreasing (noise to data), got {ts.tolist()}")
    if steps is not None:
        _check_steps(steps)
        if steps != ts.numel() - 1:
            raise ValueError(f"steps={steps} disagrees with the explicit grid's {ts.numel() - 1} steps")
    return ts


# -- shared set-up -------------------------------------------------------------------------------
class _Run:
    """What every fixed-step solver needs: the grid, the state, per-step coefficients, D by index."""

    def __init__(self, name, denoiser, schedule, noise, steps, grid, cond, options, defaults):
        allowed = {**_COMMON_OPTIONS, **defaults}
        for key in options:
            if key not in allowed:
                raise ValueError(
                    f"unknown option {key!r} for solver {name!r}; allowed: {', '.join(sorted(allowed))}"
                )
        self.opts = {**allowed, **options}
        dtype = self.opts["dtype"]
        if dtype not in (torch.float64, torch.float32):
            raise ValueError(f"dtype={dtype!r} must be torch.float64 or torch.float32")
        if not isinstance(noise, Tensor) or not noise.is_floating_point() or noise.ndim < 1:
            raise ValueError("noise must be a floating-point tensor of shape [B, ...]")
        if not torch.isfinite(noise).all():
            raise ValueError("noise contains non-finite values")
        if name == "rk45":  # adaptive: steps are ignored, only the end points of the grid matter
            if steps is not None:
                _check_steps(steps)
            steps = 1 if isinstance(grid, str) else None
        self.ts = _resolve_grid(grid, schedule, steps, noise.device)
        self.K = self.ts.numel() - 1
        self.t = self.ts.tolist()
        self.schedule, self.denoiser, self.cond, self.out_dtype = schedule, denoiser, cond, noise.dtype
        self.callback = self.opts["callback"]
        self.a = self._floats(schedule.alpha, "alpha")
        self.s = self._floats(schedule.sigma, "sigma")
        if min(self.s) <= 0 or min(self.a) <= 0:
            raise ValueError(
                f"grid {self.ts.tolist()} reaches alpha = 0 or sigma = 0 under {schedule!r}; "
                f"keep it inside [t_min, t_max] = [{schedule.t_min}, {schedule.t_max}]"
            )
        self.lam = self._floats(schedule.log_snr, "log_snr")
        self.x = self.s[0] * noise.to(dtype)
        B = noise.shape[0]
        self.t_batch = [t.to(dtype).expand(B).contiguous() for t in self.ts]  # [B] per grid time
        self._z = None  # noise buffer

    def _floats(self, fn, what: str) -> list[float]:
        values = fn(self.ts)
        if not torch.isfinite(values).all():
            raise ValueError(
                f"{what} is not finite on grid {self.ts.tolist()} under {self.schedule!r}; "
                f"keep the grid inside [t_min, t_max] = [{self.schedule.t_min}, {self.schedule.t_max}]"
            )
        return values.tolist()

    def D(self, x: Tensor, i: int) -> Tensor:
        """The denoiser at grid time ``t_i`` (never sharing memory with ``x``, which is updated in place)."""
        out = _call(self.denoiser, x, self.t_batch[i], self.cond)
        return out.clone() if out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() else out

    def add_noise_(self, x: Tensor, std: float, generator) -> Tensor:
        """``x <- x + std z`` in place, z ~ N(0, I) from ``generator`` (drawn into a reused buffer)."""
        if self._z is None:
            self._z = torch.empty(x.shape, dtype=_draw_dtype(x), device=x.device)
        return x.add_(_draw(x, generator, out=self._z), alpha=std)

    def report(self, i: int, x: Tensor, x0_hat: Tensor) -> None:
        if self.callback is not None:
            self.callback({"i": i, "t": self.t[i], "t_next": self.t[i + 1], "x": x.clone(), "x0_hat": x0_hat})

    def finish(self, x: Tensor) -> Tensor:
        """The final denoising ``D(x(t_K), t_K)``, in the dtype of the noise."""
        return self.D(x, self.K).to(self.out_dtype)


def _axpby_(x: Tensor, a: float, b: float, y: Tensor) -> Tensor:
    """``x <- a x + b y`` in place, two passes. Solvers update their state in place: a fresh
    allocation per step costs more than the arithmetic for large batches on CPU."""
    return x.mul_(a).add_(y, alpha=b)


# -- fixed-step solvers --------------------------------------------------------------------------
def sample_euler_maruyama(
    denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options
):
    """Euler-Maruyama on the reverse SDE in t: ``x' = x - h [f x - g2 score] + sqrt(g2 h) z``, h = t - t'."""
    run = _Run("euler_maruyama", denoiser, schedule, noise, steps, grid, cond, options, {})
    c_x, c_D = (c.tolist() for c in _sde_coefficients(schedule, run.ts))
    g2 = schedule.g2(run.ts).tolist()
    x = run.x
    for i in range(run.K):
        h = run.t[i] - run.t[i + 1]
        D = run.D(x, i)
        run.add_noise_(_axpby_(x, 1 - h * c_x[i], -h * c_D[i], D), math.sqrt(g2[i] * h), generator)
        run.report(i, x, D)
    return run.finish(x)


def sample_euler(denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options):
    """Euler on the PF-ODE in t: ``x' = x + (t' - t) (c_x x + c_D D)``."""
    run = _Run("euler", denoiser, schedule, noise, steps, grid, cond, options, {})
    c_x, c_D = (c.tolist() for c in _pf_coefficients(schedule, run.ts))
    x = run.x
    for i in range(run.K):
        h = run.t[i + 1] - run.t[i]
        D = run.D(x, i)
        _axpby_(x, 1 + h * c_x[i], h * c_D[i], D)
        run.report(i, x, D)
    return run.finish(x)


def sample_heun(denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options):
    """Heun on the PF-ODE in t (Karras et al. 2022, Alg. 1): Euler predictor, trapezoid corrector.

    Every step is corrected (the last one ends at t_min > 0, not at sigma = 0): 2 K + 1 evaluations.
    """
    run = _Run("heun", denoiser, schedule, noise, steps, grid, cond, options, {})
    c_x, c_D = (c.tolist() for c in _pf_coefficients(schedule, run.ts))
    x = run.x
    d, x_pred = torch.empty_like(x), torch.empty_like(x)
    for i in range(run.K):
        h = run.t[i + 1] - run.t[i]
        D = run.D(x, i)
        torch.mul(x, c_x[i], out=d).add_(D, alpha=c_D[i])  # d = drift(x, t_i)
        torch.add(x, d, alpha=h, out=x_pred)
        D_pred = run.D(x_pred, i + 1)
        d.add_(x_pred, alpha=c_x[i + 1]).add_(D_pred, alpha=c_D[i + 1])  # d + drift(x_pred, t_{i+1})
        x.add_(d, alpha=h / 2)
        run.report(i, x, D)
    return run.finish(x)


def _kernel_ratio(run: _Run, i: int) -> float:
    """``1 - exp(lam_t - lam_s)`` in (0, 1) for the step t = t_i -> s = t_{i+1}; equals
    ``(sigma_t^2 - (alpha_t/alpha_s)^2 sigma_s^2) / sigma_t^2``, the kernel's variance over sigma_t^2."""
    return -math.expm1(run.lam[i] - run.lam[i + 1])


def _ddim_step(run: _Run, i: int, x: Tensor, D: Tensor, eta: float, generator) -> Tensor:
    """Generalised DDIM (Song et al. 2021): ``x_s = a_s D + sqrt(s_s^2 - c^2) eps_hat + c z``,
    ``c = eta * s_s sqrt(1 - exp(lam_t - lam_s))``; eta = 1 is the posterior ``q(x_s | x_t, D)``."""
    a_t, s_t, a_s, s_s = run.a[i], run.s[i], run.a[i + 1], run.s[i + 1]
    em = _kernel_ratio(run, i)
    k_eps = s_s * math.sqrt(1 - eta**2 * em) / s_t  # coefficient of eps_hat = (x - a_t D) / s_t
    _axpby_(x, k_eps, a_s - k_eps * a_t, D)
    if eta > 0:
        run.add_noise_(x, eta * s_s * math.sqrt(em), generator)
    return x


def sample_ddpm(denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options):
    """Ancestral sampling from the Gaussian posterior ``q(x_s | x_t, x0 = D)`` of the transition kernel.

    With ``r = exp(lam_t - lam_s) = (alpha_t/alpha_s)^2 sigma_s^2 / sigma_t^2``:
    mean = ``alpha_s (1 - r) D + (alpha_t sigma_s^2 / (alpha_s sigma_t^2)) x_t``, var = ``sigma_s^2 (1 - r)``.
    """
    run = _Run("ddpm", denoiser, schedule, noise, steps, grid, cond, options, {})
    x = run.x
    for i in range(run.K):
        D = run.D(x, i)
        a_t, s_t, a_s, s_s = run.a[i], run.s[i], run.a[i + 1], run.s[i + 1]
        em = _kernel_ratio(run, i)
        _axpby_(x, a_t * s_s**2 / (a_s * s_t**2), a_s * em, D)  # the posterior mean
        run.add_noise_(x, s_s * math.sqrt(em), generator)
        run.report(i, x, D)
    return run.finish(x)


def sample_ddim(denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options):
    """DDIM (Song, Meng & Ermon 2021); option ``eta`` in [0, 1] (0: deterministic, 1: ddpm's posterior)."""
    run = _Run("ddim", denoiser, schedule, noise, steps, grid, cond, options, {"eta": 0.0})
    eta = run.opts["eta"]
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta <= 1:
        raise ValueError(f"ddim: eta={eta!r} must be a number in [0, 1]")
    x = run.x
    for i in range(run.K):
        D = run.D(x, i)
        _ddim_step(run, i, x, D, float(eta), generator)
        run.report(i, x, D)
    return run.finish(x)


def sample_dpm_solver_2m(
    denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options
):
    """DPM-Solver++(2M) (Lu et al. 2022), data prediction, multistep; k-diffusion's ``sample_dpmpp_2m``
    with alpha: ``lambda = log(alpha/sigma)``, ``h = lambda_s - lambda_t``,
    ``x_s = (sigma_s/sigma_t) x_t - alpha_s expm1(-h) D'`` with ``D' = (1 + 1/(2r)) D_t - 1/(2r) D_prev``,
    ``r = h_prev / h`` (first step: ``D' = D_t``)."""
    run = _Run("dpm_solver_2m", denoiser, schedule, noise, steps, grid, cond, options, {})
    half = [lam / 2 for lam in run.lam]  # lambda = log(alpha / sigma)
    x, D_prev = run.x, None
    for i in range(run.K):
        D = run.D(x, i)
        h = half[i + 1] - half[i]
        c_x, c_D = run.s[i + 1] / run.s[i], -run.a[i + 1] * math.expm1(-h)
        if D_prev is None:
            _axpby_(x, c_x, c_D, D)
        else:  # c_x x + c_D ((1 + 1/(2r)) D - 1/(2r) D_prev), three passes
            r = (half[i] - half[i - 1]) / h
            _axpby_(x, c_x, c_D * (1 + 1 / (2 * r)), D).add_(D_prev, alpha=-c_D / (2 * r))
        D_prev = D  # as k-diffusion: the denoiser returns a fresh tensor per call
        run.report(i, x, D)
    return run.finish(x)


def sample_pc(denoiser, schedule, noise, steps, *, grid="uniform", generator=None, cond=None, **options):
    """Predictor-corrector (Song et al. 2021): at each t_i, ``n_corrector`` Langevin steps then a
    reverse-diffusion predictor step to t_{i+1}.

    Corrector: ``x += e score + sqrt(2 e) z`` with Song's step
    ``e = 2 (alpha_t/alpha_s)^2 (snr |z| / |score|)^2`` taken in its high-dimensional limit
    ``|z| = sqrt(d)``, ``|score| = sqrt(d) / sigma_t``, i.e. ``e = 2 (alpha_t/alpha_s)^2 (snr sigma_t)^2``:
    batch-averaged norms would make a sample depend on its batch, and per-row norms blow up in low
    dimension where a row's score can vanish. Predictor, from the exact kernel
    ``x_t = r x_s + sqrt(v) z``, ``r = alpha_t/alpha_s``, ``v = sigma_t^2 (1 - exp(lam_t - lam_s))``:
    ``x_s = (2 - r) x_t + v score(x_t, t) + sqrt(v) z``
    (for VP: Song's ``(2 - sqrt(1 - beta)) x + beta score``).
    """
    run = _Run("pc", denoiser, schedule, noise, steps, grid, cond, options, {"snr": 0.16, "n_corrector": 1})
    snr, n_corrector = run.opts["snr"], run.opts["n_corrector"]
    if isinstance(snr, bool) or not isinstance(snr, (int, float)) or not (math.isfinite(snr) and snr >= 0):
        raise ValueError(f"pc: snr={snr!r} must be a finite number >= 0")
    _check_n_corrector(n_corrector)
    x = run.x
    for i in range(run.K):
        a_t, s_t = run.a[i], run.s[i]
        r = a_t / run.a[i + 1]
        e = 2 * (r * snr * s_t) ** 2  # Langevin step size
        for _ in range(n_corrector):
            # x + e score + sqrt(2 e) z with e score = (e / s_t^2) (a_t D - x)
            D = run.D(x, i)
            run.add_noise_(_axpby_(x, 1 - e / s_t**2, e * a_t / s_t**2, D), math.sqrt(2 * e), generator)
        D = run.D(x, i)
        em = _kernel_ratio(run, i)
        # (2 - r) x + v score with v score = em (a_t D - x)
        run.add_noise_(_axpby_(x, 2 - r - em, em * a_t, D), s_t * math.sqrt(em), generator)
        run.report(i, x, D)
    return run.finish(x)


def _check_n_corrector(n_corrector) -> None:
    if isinstance(n_corrector, bool) or not isinstance(n_corrector, int) or n_corrector < 0:
        raise ValueError(f"pc: n_corrector={n_corrector!r} must be an int >= 0")


# -- adaptive ------------------------------------------------------------------------------------
def sample_rk45(
    denoiser, schedule, noise, steps=None, *, grid="uniform", generator=None, cond=None, **options
):
    """Adaptive PF-ODE with torchdiffeq's dopri5 (``steps`` ignored; only the grid's end points count).

    Integrated in EDM's well-conditioned variables: ``y = x / alpha``, ``u = log(sigma/alpha) =
    -lambda/2``, ``dy/du = y - D(alpha y, t(u))`` (in plain t the VP-cosine ODE is stiff near t_max).
    Options ``rtol=1e-5``, ``atol=1e-5``. Wrap the denoiser in ``CountingDenoiser`` to read the NFE.
    """
    from torchdiffeq import odeint

    run = _Run("rk45", denoiser, schedule, noise, steps, grid, cond, options, {"rtol": 1e-5, "atol": 1e-5})
    for key in ("rtol", "atol"):
        tol = run.opts[key]
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (math.isfinite(tol) and tol > 0):
            raise ValueError(f"rk45: {key}={tol!r} must be a finite number > 0")
    if run.callback is not None:
        raise ValueError(
            "unknown option 'callback' for solver 'rk45' (adaptive steps); allowed: atol, dtype, rtol"
        )
    x = run.x
    dtype = x.dtype
    B = x.shape[0]

    def rhs(v: Tensor, y: Tensor) -> Tensor:  # v = lambda/2 increases from noise to data: dy/dv = D - y
        t = schedule.t_from_log_snr(2 * v.to(torch.float64))
        a = schedule.alpha(t).to(dtype)  # 0-d tensor: no device sync
        return _call(denoiser, a * y, t.to(dtype).expand(B).contiguous(), cond) - y

    v = torch.tensor([run.lam[0] / 2, run.lam[-1] / 2], dtype=dtype, device=x.device)
    y = odeint(rhs, x / run.a[0], v, rtol=run.opts["rtol"], atol=run.opts["atol"], method="dopri5")[-1]
    return run.finish(run.a[-1] * y)


# -- registry ------------------------------------------------------------------------------------
_REGISTRY: dict[str, Callable] = {
    "euler_maruyama": sample_euler_maruyama,
    "euler": sample_euler,
    "heun": sample_heun,
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpm_solver_2m": sample_dpm_solver_2m,
    "pc": sample_pc,
    "rk45": sample_rk45,
}


def get_solver(name: str) -> Callable:
    """The solver function called ``name`` (one of ``SOLVERS``)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown solver {name!r}; valid solvers: {', '.join(SOLVERS)}")
    return _REGISTRY[name]


def nfe(name: str, steps: int, **options) -> int:
    """Denoiser evaluations a fixed-step solver makes for ``steps`` steps, the final denoising included.

    euler_maruyama, euler, ddpm, ddim, dpm_solver_2m: K + 1; heun: 2K + 1;
    pc: K (1 + n_corrector) + 1 (option ``n_corrector``, default 1). rk45 is adaptive: measure it.
    """
    get_solver(name)
    _check_steps(steps)
    if name == "rk45":
        raise ValueError(
            "rk45 is adaptive: its NFE is not a function of steps; measure the actual count "
            "with CountingDenoiser"
        )
    unknown = set(options) - ({"n_corrector"} if name == "pc" else set())
    if unknown:
        raise ValueError(f"nfe: unknown option {sorted(unknown)[0]!r} for solver {name!r}")
    if name == "heun":
        return 2 * steps + 1
    if name == "pc":
        n_corrector = options.get("n_corrector", 1)
        _check_n_corrector(n_corrector)
        return steps * (1 + n_corrector) + 1
    return steps + 1
