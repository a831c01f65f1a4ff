"""Reverse-time solvers: stateless ``sample_*`` functions, each registered once with its spec.

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
    EDM variables dy/du = y - D(alpha y, t(u)),  y = x/alpha,  u = log(sigma/alpha)

Steppers in log-SNR or in EDM's variables are schedule-invariant (``SolverSpec``). They run
k-diffusion's samplers (written for alpha = 1, its sigma = our ``s = sigma/alpha``) under any schedule
on ``x = alpha y``, with Python-float coefficients that fold the alpha ratios in; k-diffusion's sigmas
are ``[s_0, ..., s_K, 0]``, and its last step ``s_K -> 0`` is our final denoising.
A new solver is one function ``sample_<name>`` with ``@register(stochastic=..., order=..., options=...)``
in a module imported below (registered as ``<name>``)."""

# isort: off
from difflab.solvers import classic, dpm, edm, unipc, deis, singlestep, multistep, adaptive  # noqa: F401  (each registers its solvers)

# isort: on
from difflab.solvers.adaptive import sample_rk45
from difflab.solvers.classic import (
    sample_ddim,
    sample_ddpm,
    sample_euler,
    sample_euler_maruyama,
    sample_heun,
    sample_pc,
)
from difflab.solvers.deis import sample_deis
from difflab.solvers.dpm import (
    sample_dpm_solver_2m,
    sample_dpm_solver_2m_sde,
    sample_dpm_solver_3m,
    sample_dpm_solver_3m_sde,
)
from difflab.solvers.edm import sample_edm_stochastic, sample_euler_ancestral, sample_heun_edm
from difflab.solvers.equations import (
    CountingDenoiser,
    edm_ode_velocity,
    pf_ode_drift,
    randn_like,
    reverse_sde_drift,
)
from difflab.solvers.fitted import FIT_METHODS, fit_grid
from difflab.solvers.grids import EDM_RHO, GRIDS, get_grid
from difflab.solvers.registry import (
    Option,
    SolverSpec,
    get_solver,
    get_spec,
    nfe,
    register,
    solver_names,
    unregister,
)
from difflab.solvers.unipc import sample_unipc

__all__ = [
    "EDM_RHO",
    "FIT_METHODS",
    "GRIDS",
    "SOLVERS",
    "CountingDenoiser",
    "Option",
    "SolverSpec",
    "edm_ode_velocity",
    "fit_grid",
    "get_grid",
    "get_solver",
    "get_spec",
    "nfe",
    "pf_ode_drift",
    "randn_like",
    "register",
    "reverse_sde_drift",
    "sample_ddim",
    "sample_ddpm",
    "sample_deis",
    "sample_dpm_solver_2m",
    "sample_dpm_solver_2m_sde",
    "sample_dpm_solver_3m",
    "sample_dpm_solver_3m_sde",
    "sample_edm_stochastic",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_euler_maruyama",
    "sample_heun",
    "sample_heun_edm",
    "sample_pc",
    "sample_rk45",
    "sample_unipc",
    "solver_names",
    "unregister",
]


def __getattr__(name: str):
    if name == "SOLVERS":  # the registry's keys, read when asked (solvers registered at run time too)
        return solver_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
