"""The per-run set-up every solver shares: ``Run`` checks a call and computes the per-grid-time
coefficients once, in float64, as Python floats; solvers update their state in place (a fresh
allocation per step costs more than the arithmetic for large batches on CPU), so a step costs a few
passes over x on top of its denoiser calls (bench/solver_overhead.py)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from difflab.solvers.equations import _call, _draw, _draw_dtype
from difflab.solvers.grids import resolve_grid

# Options every solver accepts from a direct caller (never from the config): the integration dtype
# and, for fixed-step solvers, a per-step callback that receives
# {"i", "t", "t_next", "x" (a copy of the state at t_next), "x0_hat" (D at the step's start)}.
_COMMON_OPTIONS = {"dtype": torch.float64, "callback": None}


class Run:
    """What every solver needs: checked options, the grid, the state, per-grid-time coefficients
    (``t``, ``a`` = alpha, ``s`` = sigma, ``lam`` = log-SNR as Python floats), D by grid index."""

    def __init__(self, solver: Callable, denoiser, schedule, noise, steps, grid, cond, options):
        spec = solver.spec  # set by ``register``
        name = spec.name
        common = {k: options.pop(k, v) for k, v in _COMMON_OPTIONS.items()}
        self.opts = {**common, **spec.check_options(options, also_allowed=tuple(_COMMON_OPTIONS))}
        dtype = self.opts["dtype"]
        if dtype not in (torch.float64, torch.float32):
            raise ValueError(f"dtype={dtype!r} must be torch.float64 or torch.float32")
        if not isinstance(noise, Tensor) or not noise.is_floating_point() or noise.ndim < 1:
            raise ValueError("noise must be a floating-point tensor of shape [B, ...]")
        if not torch.isfinite(noise).all():
            raise ValueError("noise contains non-finite values")
        if spec.adaptive:  # steps are ignored (0, None or any int): only the grid's end points matter
            if self.opts["callback"] is not None:
                raise ValueError(f"{name}: option 'callback' needs fixed steps; {name} is adaptive")
            if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
                raise ValueError(f"steps={steps!r} must be None or an int >= 0 ({name} ignores it)")
            steps = 1 if isinstance(grid, str) else None
        self.ts = resolve_grid(grid, schedule, steps, noise.device)
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
        """The denoiser at grid time ``t_i``."""
        return self.denoise(x, self.t_batch[i])

    def denoise(self, x: Tensor, t_batch: Tensor) -> Tensor:
        """The denoiser at times ``t_batch`` ``[B]``, never sharing memory with ``x`` (updated in place)."""
        out = _call(self.denoiser, x, t_batch, self.cond)
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
    """``x <- a x + b y`` in place, two passes."""
    return x.mul_(a).add_(y, alpha=b)


def _kernel_ratio(run: Run, i: int) -> float:
    """``1 - exp(lam_t - lam_s)`` in (0, 1) for the step t = t_i -> s = t_{i+1}; equals
    ``(sigma_t^2 - (alpha_t/alpha_s)^2 sigma_s^2) / sigma_t^2``, the kernel's variance over sigma_t^2."""
    return -math.expm1(run.lam[i] - run.lam[i + 1])


def _run_plan(run: Run, plan, *, eps=False, stds=None, generator=None, first_step=None) -> Tensor:
    """A linear multistep run: step i is ``x_{i+1} = c_x x_i + sum_m w[m] H_{i-m} + stds[i] z_i`` for
    ``(c_x, w) = plan[i]``, with the history ``H`` of ``D_i`` or, where ``eps``, of
    ``eps_i = (x_i - alpha_i D_i) / sigma_i``, newest first (``stds`` None or ``stds[i]`` None: no draw).
    ``first_step(x, D)``, where given, takes step 0 in place instead; its ``eps_0`` still enters ``H``."""
    x, history = run.x, []
    n = max(len(w) for _, w in plan)
    for i, (c_x, w) in enumerate(plan):
        D = run.D(x, i)
        if eps:
            e = history.pop() if len(history) == n else torch.empty_like(x)  # reuse the oldest buffer
            history.insert(0, torch.add(x, D, alpha=-run.a[i], out=e).div_(run.s[i]))
        else:
            history = [D, *history[: n - 1]]  # as k-diffusion: the denoiser returns a fresh tensor per call
        if i == 0 and first_step is not None:
            first_step(x, D)
        else:
            x.mul_(c_x)
            for c, h in zip(w, history):
                x.add_(h, alpha=c)
        if stds is not None and stds[i] is not None:
            run.add_noise_(x, stds[i], generator)
        run.report(i, x, D)
    return run.finish(x)
