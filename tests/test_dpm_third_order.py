"""DPM-Solver++(3M) with ``third_order=True``: the exact d2 weight -2 phi_3, third-order convergence, and
the default (the peers' -phi_3) unchanged."""

import math

import numpy as np
import pytest
import torch

from difflab import solvers as S
from difflab.schedules import get_schedule
from difflab.solvers.dpm import _multistep_coefficients
from peers import errors_as_steps_double, randn, smooth_mixture


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_third_order_weights_integrate_quadratics_exactly(eta):
    """Against ``int_0^h (1+eta) e^{-(1+eta)(h-u)} u^p du`` (Gauss-Legendre) the weights of D at
    lambda_t, lambda_t - h_1, lambda_t - h_1 - h_2 are exact for p = 0, 1, 2 with third_order (the
    default gets half of p = 2, and the same p = 0, 1 weights: d1 vanishes on u^2)."""
    nodes, weights = np.polynomial.legendre.leggauss(30)
    for h, h_1, h_2 in ((0.3, 0.3, 0.3), (0.05, 0.04, 0.07), (1.2, 0.8, 0.5)):
        u = (nodes + 1) * h / 2
        kernel = weights * h / 2 * (1 + eta) * np.exp(-(1 + eta) * (h - u))
        exact = [float(np.sum(kernel * u**p)) for p in range(3)]
        for third_order, share in ((True, 1.0), (False, 0.5)):
            w = _multistep_coefficients(h, eta, h_1, h_2, third_order)
            ours = [w[0] * 0.0**p + w[1] * (-h_1) ** p + w[2] * (-h_1 - h_2) ** p for p in range(3)]
            assert ours[0] == pytest.approx(exact[0], rel=1e-9), (h, third_order)
            assert ours[1] == pytest.approx(exact[1], rel=1e-9), (h, third_order)
            assert ours[2] == pytest.approx(share * exact[2], rel=1e-9), (h, third_order)
        # the first two steps do not use d2: the option leaves them alone
        assert _multistep_coefficients(h, eta, h_1, None, True) == _multistep_coefficients(h, eta, h_1, None)


def test_default_is_unchanged_and_the_option_moves_only_the_d2_term():
    """third_order=False is the default bit for bit (= dpm_solver_3m_sde with eta = 0, which
    tests/test_solvers_edm_dpm.py checks against k-diffusion and diffusers); with the option the first two
    states agree and the third moves by exactly ``-alpha_3 phi_3 d2`` (the added half of the d2 weight)."""
    schedule, noise = get_schedule("vp_cosine"), randn(16, 3, d=2)
    D = smooth_mixture().denoiser(schedule)

    def run(**opts):
        states = []
        out = S.sample_dpm_solver_3m(
            D, schedule, noise, 9, grid="edm", callback=lambda s: states.append(s["x"]), **opts
        )
        return out, torch.stack(states)

    default, states = run()
    off, states_off = run(third_order=False)
    on, states_on = run(third_order=True)
    assert torch.equal(off, default) and torch.equal(states_off, states)
    assert torch.equal(default, S.sample_dpm_solver_3m_sde(D, schedule, noise, 9, grid="edm", eta=0.0))
    assert torch.equal(states_on[:2], states[:2])
    grid = S.get_grid("edm", schedule, 9)
    half = (schedule.log_snr(grid[:4]) / 2).tolist()  # lambda = log(alpha / sigma)
    h, h_1, h_2 = half[3] - half[2], half[2] - half[1], half[1] - half[0]
    Ds = [D(x, t.expand(16)) for x, t in zip([schedule.sigma(grid[0]) * noise, states[0], states[1]], grid)]
    d1_0, d1_1 = (Ds[2] - Ds[1]) * h / h_1, (Ds[1] - Ds[0]) * h / h_2
    d2 = (d1_0 - d1_1) / ((h_1 + h_2) / h)
    phi_2 = math.expm1(-h) / h + 1
    phi_3 = phi_2 / h - 0.5
    expected = -schedule.alpha(grid[3]).item() * phi_3 * d2
    assert (states_on[2] - states[2] - expected).abs().max().item() < 1e-12
    assert (on - default).abs().max().item() > 1e-4  # the option changes the samples


@pytest.mark.parametrize("schedule_name", ["vp_cosine", "edm"])
def test_measured_order_is_three_with_the_option_and_two_without(schedule_name):
    """Mean error against a tight rk45 solution on 32 -> 64 -> 128 log-SNR steps, float64: the order
    log2(err_K / err_2K) is ~3 (measured 2.85-2.94) with third_order, ~2 (2.03-2.15) without."""
    schedule, noise = get_schedule(schedule_name), randn(64, 10, d=2)
    D = smooth_mixture().denoiser(schedule)
    ref = S.sample_rk45(D, schedule, noise, None, rtol=1e-11, atol=1e-11)
    for third_order, (lo, hi) in ((True, (2.6, 3.4)), (False, (1.7, 2.4))):
        errs = errors_as_steps_double("dpm_solver_3m", D, schedule, noise, ref, third_order=third_order)
        orders = [math.log2(errs[0] / errs[1]), math.log2(errs[1] / errs[2])]
        assert min(errs) > 1e-8 and all(lo < p < hi for p in orders), (third_order, errs, orders)


def test_option_is_in_the_spec_and_checked():
    spec = S.get_spec("dpm_solver_3m")
    assert spec.defaults() == {"third_order": False} and spec.order == 3
    assert spec.nfe(7, {"third_order": True}) == 8
    D, schedule = smooth_mixture().denoiser(get_schedule("flow")), get_schedule("flow")
    with pytest.raises(
        ValueError, match=r"dpm_solver_3m: option third_order=1 is not allowed; must be true or"
    ):
        S.sample_dpm_solver_3m(D, schedule, randn(4, 0, d=2), 5, third_order=1)
