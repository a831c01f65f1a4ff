"""iPNDM, iPNDM-v, LMS, PNDM and SA-Solver against their published code and peers in float64; weights,
identities, convergence order, NFE, schedule invariance, options.

k-diffusion and diff-sampler write their samplers for alpha = 1 in their sigma: they run here on
``y = x / alpha`` over ``s = sigma / alpha`` with the model ``D_kd(y, s) = D(alpha(t) y, t)``,
``t = t_from_log_snr(-2 log s)``, which covers every schedule; our state ``x(t_i)`` is compared as
``x(t_i) / alpha_i``. diffusers' PNDM and SA-Solver schedulers run on VP schedules; they are driven with
our float64 noise levels in place of their float32 tables (PNDM: ``alphas_cumprod`` at the timesteps it
visits; SA-Solver: ``sigmas``), so the comparison is exact.
"""

import numpy as np
import pytest
import torch

from difflab import solvers as S
from difflab.schedules import SCHEDULES, get_schedule
from difflab.solvers.multistep import _AB, _ipndm_v_weights, _lms_weights, _sa_weights
from peers import (
    STEPS,
    errors_as_steps_double,
    gen,
    k_diffusion_sampling,
    kd_model,
    max_diff,
    mixture,
    randn,
    run_ours,
    smooth_mixture,
)

TOL = 1e-9  # float64 on both sides: measured <= 1.4e-12 (y reaches s_0 |noise| ~ 500)


# -- diff-sampler's published iPNDM and iPNDM-v, transcribed --------------------------------------
def diff_sampler_ipndm(net, latents, t_steps, max_order, variable):
    """zju-pi/diff-sampler ``diff-solvers-main/solvers.py``: ``ipndm_sampler`` (``variable=False``) and
    ``ipndm_v_sampler`` (``variable=True``) with ``afs=False, denoise_to_zero=True``, line by line
    (ComfyUI's ``sample_ipndm``/``sample_ipndm_v`` are the same code). Returns the states after each step
    and the sample. As published, ``max_order=1`` raises IndexError (``buffer_model[-1]`` on an empty
    list), so it is checked for orders 2-4 here and through ``ddim`` below."""
    x_next = latents * t_steps[0]
    buffer_model, inters = [], []
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        denoised = net(x_cur, t_cur)
        d_cur = (x_cur - denoised) / t_cur
        order = min(max_order, i + 1)
        if order == 1:
            x_next = x_cur + (t_next - t_cur) * d_cur
        elif not variable and order == 2:
            x_next = x_cur + (t_next - t_cur) * (3 * d_cur - buffer_model[-1]) / 2
        elif not variable and order == 3:
            x_next = (
                x_cur + (t_next - t_cur) * (23 * d_cur - 16 * buffer_model[-1] + 5 * buffer_model[-2]) / 12
            )
        elif not variable:
            x_next = (
                x_cur
                + (t_next - t_cur)
                * (55 * d_cur - 59 * buffer_model[-1] + 37 * buffer_model[-2] - 9 * buffer_model[-3])
                / 24
            )
        elif order == 2:
            h_n = t_next - t_cur
            h_n_1 = t_cur - t_steps[i - 1]
            coeff1 = (2 + (h_n / h_n_1)) / 2
            coeff2 = -(h_n / h_n_1) / 2
            x_next = x_cur + (t_next - t_cur) * (coeff1 * d_cur + coeff2 * buffer_model[-1])
        elif order == 3:
            h_n = t_next - t_cur
            h_n_1 = t_cur - t_steps[i - 1]
            h_n_2 = t_steps[i - 1] - t_steps[i - 2]
            temp = (1 - h_n / (3 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2
            coeff1 = (2 + (h_n / h_n_1)) / 2 + temp
            coeff2 = -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp
            coeff3 = temp * h_n_1 / h_n_2
            x_next = x_cur + (t_next - t_cur) * (
                coeff1 * d_cur + coeff2 * buffer_model[-1] + coeff3 * buffer_model[-2]
            )
        else:
            h_n = t_next - t_cur
            h_n_1 = t_cur - t_steps[i - 1]
            h_n_2 = t_steps[i - 1] - t_steps[i - 2]
            h_n_3 = t_steps[i - 2] - t_steps[i - 3]
            temp1 = (1 - h_n / (3 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2
            temp2 = (
                (
                    (1 - h_n / (3 * (h_n + h_n_1))) / 2
                    + (1 - h_n / (2 * (h_n + h_n_1))) * h_n / (6 * (h_n + h_n_1 + h_n_2))
                )
                * (h_n * (h_n + h_n_1) * (h_n + h_n_1 + h_n_2))
                / (h_n_1 * (h_n_1 + h_n_2) * (h_n_1 + h_n_2 + h_n_3))
            )
            coeff1 = (2 + (h_n / h_n_1)) / 2 + temp1 + temp2
            coeff2 = (
                -(h_n / h_n_1) / 2
                - (1 + h_n_1 / h_n_2) * temp1
                - (1 + (h_n_1 / h_n_2) + (h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3)))) * temp2
            )
            coeff3 = (
                temp1 * h_n_1 / h_n_2
                + (
                    (h_n_1 / h_n_2)
                    + (h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3))) * (1 + h_n_2 / h_n_3)
                )
                * temp2
            )
            coeff4 = -temp2 * (h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3))) * h_n_1 / h_n_2
            x_next = x_cur + (t_next - t_cur) * (
                coeff1 * d_cur
                + coeff2 * buffer_model[-1]
                + coeff3 * buffer_model[-2]
                + coeff4 * buffer_model[-3]
            )
        inters.append(x_next)
        if len(buffer_model) == max_order - 1:
            for k in range(max_order - 2):
                buffer_model[k] = buffer_model[k + 1]
            buffer_model[-1] = d_cur
        else:
            buffer_model.append(d_cur)
    return torch.stack(inters), net(x_next, t_next)  # denoise_to_zero


@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_ipndm_and_ipndm_v_match_diff_sampler(schedule_name):
    """States and sample against the published code on a geometric (logsnr) and a Karras (edm) grid."""
    schedule, noise = get_schedule(schedule_name), randn(16, 0)
    D = mixture().denoiser(schedule)
    model = kd_model(schedule, D)
    net = lambda y, s: model(y, s.expand(y.shape[0]))  # noqa: E731  (diff-sampler passes a 0-d sigma)
    for grid in ("logsnr", "edm"):
        ts = S.get_grid(grid, schedule, STEPS)
        s, alpha = schedule.sigma_over_alpha(ts), schedule.alpha(ts)
        for solver in ("ipndm", "ipndm_v"):
            for order in (2, 3, 4):
                states, sample = diff_sampler_ipndm(net, noise, s, order, variable=solver == "ipndm_v")
                out, ours = run_ours(solver, D, schedule, noise, grid=grid, order=order)
                assert max_diff(ours / alpha[1:, None, None], states) < TOL, (solver, grid, order)
                assert max_diff(out, sample) < TOL, (solver, grid, order)


# -- LMS: k-diffusion and diffusers --------------------------------------------------------------
@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_lms_matches_k_diffusion(schedule_name):
    """k-diffusion's ``sample_lms`` on sigmas ``[s_0..s_K, 0]``: every state, and our sample is its
    ``denoised`` at s_K; its own last step extrapolates the polynomial to s = 0 instead (order >= 2)."""
    K = k_diffusion_sampling()
    schedule, noise = get_schedule(schedule_name), randn(16, 1)
    D = mixture().denoiser(schedule)
    model = kd_model(schedule, D)
    for grid in ("logsnr", "edm"):
        ts = S.get_grid(grid, schedule, STEPS)
        sigmas = torch.cat([schedule.sigma_over_alpha(ts), ts.new_zeros(1)])
        alpha = schedule.alpha(ts)
        for order in (1, 2, 3, 4):
            seen = []
            extrapolated = K.sample_lms(
                model, sigmas[0] * noise, sigmas, disable=True, order=order, callback=seen.append
            )
            out, ours = run_ours("lms", D, schedule, noise, grid=grid, order=order)
            assert max_diff(ours / alpha[1:, None, None], torch.stack([c["x"] for c in seen[1:]])) < TOL
            assert max_diff(out, seen[-1]["denoised"]) < TOL, (grid, order)
            if order >= 2:
                assert max_diff(out, extrapolated) > 1e-6, (grid, order)


@pytest.mark.parametrize("schedule_name", ["vp_linear", "ve"])
def test_lms_matches_diffusers_lms_discrete(schedule_name):
    """diffusers' ``LMSDiscreteScheduler`` (``prediction_type="sample"``) stepping in y with our float64
    sigmas ``[s_0..s_K, 0]``: every state (its coefficients also come from scipy's quad)."""
    diffusers = pytest.importorskip("diffusers")
    schedule, noise = get_schedule(schedule_name), randn(16, 2)
    D = mixture().denoiser(schedule)
    ts = S.get_grid("edm", schedule, STEPS)
    s, alpha = schedule.sigma_over_alpha(ts), schedule.alpha(ts)
    scheduler = diffusers.LMSDiscreteScheduler(prediction_type="sample")
    scheduler.set_timesteps(STEPS + 1)
    scheduler.sigmas = torch.cat([s, s.new_zeros(1)])
    scheduler.is_scale_input_called = True  # the model sees x = alpha y itself
    y, states = s[0] * noise, []
    for i in range(STEPS):
        y = scheduler.step(D(alpha[i] * y, ts[i].expand(16)), scheduler.timesteps[i], y, order=4).prev_sample
        states.append(y)
    _, ours = run_ours("lms", D, schedule, noise, grid="edm")
    assert max_diff(ours / alpha[1:, None, None], torch.stack(states)) < TOL


# -- PNDM: diffusers' PLMS -------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [2, 5, 10])
@pytest.mark.parametrize("grid", ["logsnr", "uniform"])
def test_pndm_matches_diffusers_plms(steps, grid):
    """``PNDMScheduler(skip_prk_steps=True)``, eps prediction, on vp_linear: its N equally spaced
    timesteps ``j r`` (r = 1000 // N) carry ``alphas_cumprod = alpha(t_{N-1-j})^2`` and its final one
    ``alpha(t_N)^2``, so it steps our grid exactly; it sees ``eps = (x - alpha D)/sigma`` of our denoiser.
    Its K + 1 evaluations (the first step twice) and states equal ours; ipndm (Euler first) differs."""
    diffusers = pytest.importorskip("diffusers")
    schedule, noise = get_schedule("vp_linear"), randn(16, 3)
    D = mixture().denoiser(schedule)
    ts = S.get_grid(grid, schedule, steps)
    alpha, sigma = schedule.alpha(ts), schedule.sigma(ts)
    scheduler = diffusers.PNDMScheduler(skip_prk_steps=True)
    scheduler.set_timesteps(steps)
    r = 1000 // steps
    cumprod = torch.zeros(1000, dtype=torch.float64)  # only the timesteps it visits are read
    cumprod[torch.arange(steps) * r] = alpha[:steps].flip(0) ** 2
    scheduler.alphas_cumprod, scheduler.final_alpha_cumprod = cumprod, alpha[steps] ** 2
    assert len(scheduler.timesteps) == steps + 1
    x, states = sigma[0] * noise, []
    for k, timestep in enumerate(scheduler.timesteps):
        i = steps - 1 - int(timestep) // r  # our grid index
        eps = (x - alpha[i] * D(x, ts[i].expand(16))) / sigma[i]
        x = scheduler.step(eps, timestep, x).prev_sample
        if k > 0:  # step 0 is the Euler prediction that step 1 corrects
            states.append(x)
    _, ours = run_ours("pndm", D, schedule, noise, steps, grid=grid)
    assert max_diff(ours, torch.stack(states)) < TOL
    _, ipndm = run_ours("ipndm", D, schedule, noise, steps, grid=grid)
    assert max_diff(ipndm, torch.stack(states)) > 1e-4


# -- SA-Solver: diffusers ---------------------------------------------------------------------------
SA_CASES = [(3, 4, 1.0), (3, 4, 0.0), (1, 1, 1.0), (2, 2, 0.5), (2, 3, 1.0), (4, 4, 0.3), (3, 1, 1.0)]


@pytest.mark.parametrize("schedule_name", ["vp_linear", "vp_cosine"])
@pytest.mark.parametrize("steps", [3, STEPS])
def test_sa_solver_matches_diffusers(schedule_name, steps, monkeypatch):
    """``SASolverScheduler(prediction_type="sample", algorithm_type="data_prediction",
    lower_order_final=True, tau_func=lambda t: tau)`` with our float64 ``sigmas = sigma/alpha`` and our
    draws as its noise (``randn_tensor`` replaced): every state, for predictor/corrector orders 1-4."""
    diffusers = pytest.importorskip("diffusers")
    from diffusers.schedulers import scheduling_sasolver

    schedule, noise = get_schedule(schedule_name), randn(16, 4)
    D = mixture().denoiser(schedule)
    ts = S.get_grid("logsnr", schedule, steps)
    for p, c, tau in SA_CASES:
        scheduler = diffusers.SASolverScheduler(
            predictor_order=p, corrector_order=c, prediction_type="sample", tau_func=lambda t, tau=tau: tau
        )
        scheduler.set_timesteps(steps)
        scheduler.sigmas = schedule.sigma_over_alpha(ts)
        g = gen(5)
        replay = iter([S.randn_like(noise, g) for _ in range(steps)])
        monkeypatch.setattr(scheduling_sasolver, "randn_tensor", lambda *a, replay=replay, **k: next(replay))
        x, states = schedule.sigma(ts[:1]) * noise, []
        for i, timestep in enumerate(scheduler.timesteps):
            x = scheduler.step(D(x, ts[i].expand(16)), timestep, x).prev_sample
            states.append(x)
        monkeypatch.undo()
        opts = dict(predictor_order=p, corrector_order=c, tau=tau)
        _, ours = run_ours("sa_solver", D, schedule, noise, steps, seed=5, **opts)
        assert max_diff(ours, torch.stack(states)) < TOL, (p, c, tau)


# -- the weights ------------------------------------------------------------------------------------
def test_multistep_weights_closed_forms():
    """LMS: on equal steps the exact weights are Adams-Bashforth's; iPNDM-v as published: AB2, AB3 on
    equal steps, AB4 + (1/12) of the third backward difference at order 4, and order-4 weights summing
    to 1 only where consecutive step ratios agree."""
    equal = [10.0 - 0.5 * i for i in range(6)]
    for k in (1, 2, 3, 4):
        assert _lms_weights(equal, 3, k) == pytest.approx([-0.5 * b for b in _AB[k - 1]], abs=1e-14)
    for k in (2, 3):
        assert _ipndm_v_weights(equal, 3, k) == pytest.approx([-0.5 * b for b in _AB[k - 1]], abs=1e-14)
    ab4_plus = [b + d / 12 for b, d in zip(_AB[3], (1, -3, 3, -1))]
    assert _ipndm_v_weights(equal, 3, 4) == pytest.approx([-0.5 * b for b in ab4_plus], abs=1e-14)
    geometric, karras = [80.0 * 0.6**i for i in range(6)], [80.0, 40.0, 25.0, 10.0, 5.0, 2.0]
    assert sum(_ipndm_v_weights(geometric, 3, 4)) == pytest.approx(geometric[4] - geometric[3], rel=1e-12)
    h = [karras[4] - karras[3], karras[3] - karras[2], karras[2] - karras[1], karras[1] - karras[0]]
    t2 = (
        ((1 - h[0] / (3 * (h[0] + h[1]))) / 2 + (1 - h[0] / (2 * (h[0] + h[1]))) * h[0] / (6 * sum(h[:3])))
        * h[0] * (h[0] + h[1]) * sum(h[:3]) / (h[1] * (h[1] + h[2]) * sum(h[1:]))
    )  # fmt: skip
    q = h[1] * (h[1] + h[2]) / (h[2] * (h[2] + h[3]))
    expected = h[0] * (1 + t2 * q * (h[2] / h[3] - h[1] / h[2]))
    assert sum(_ipndm_v_weights(karras, 3, 4)) == pytest.approx(expected, rel=1e-12)
    assert abs(expected / h[0] - 1) > 0.01  # inconsistent: the weights of a constant d do not sum to h
    assert sum(_lms_weights(karras, 3, 4)) == pytest.approx(h[0], rel=1e-12)


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0])
def test_sa_weights_integrate_polynomials(tau):
    """Through k nodes, ``sum_m c_m P(lam_m) = (1 + tau^2) alpha int e^{(1+tau^2)(lam - lam_end)} P dlam``
    (Gauss-Legendre) for every P of degree < k, except the two-node weights, which diffusers sets to
    weight the difference by 1/2 where the integral gives phi_2(-H): they are exact for constants only."""
    lam, a_end = [-1.0, -0.6, -0.3, 0.1, 0.35], 0.8
    nodes_x, weights_x = np.polynomial.legendre.leggauss(30)
    for start, nodes in ((3, [3, 2, 1, 0]), (3, [3, 2, 1]), (2, [3, 2, 1, 0]), (2, [3, 2, 1]), (3, [3])):
        lo, hi = lam[start], lam[start + 1]
        u = lo + (nodes_x + 1) * (hi - lo) / 2
        kernel = weights_x * (hi - lo) / 2 * (1 + tau**2) * a_end * np.exp((1 + tau**2) * (u - hi))
        c = _sa_weights(lam, a_end, start, nodes, tau)
        for power in range(len(nodes)):
            ours = sum(w * lam[j] ** power for w, j in zip(c, nodes))
            assert ours == pytest.approx(float(np.sum(kernel * u**power)), rel=1e-10, abs=1e-14)
    c = _sa_weights(lam, a_end, 3, [3, 2], tau)
    lo, hi = lam[3], lam[4]
    u = lo + (nodes_x + 1) * (hi - lo) / 2
    kernel = weights_x * (hi - lo) / 2 * (1 + tau**2) * a_end * np.exp((1 + tau**2) * (u - hi))
    assert sum(c) == pytest.approx(float(np.sum(kernel)), rel=1e-12)
    exact_line = float(np.sum(kernel * u))
    assert abs(c[0] * lam[3] + c[1] * lam[2] - exact_line) > 1e-4 * abs(exact_line)


# -- identities -----------------------------------------------------------------------------------
def test_special_cases_equal_other_solvers():
    """Order 1 is Euler in y over s, i.e. DDIM; exact variable-step AB2 is shared by lms and ipndm_v;
    PLMS's first step is EDM's Heun step; SA-Solver with orders (1, none) is DDIM (tau = 0) or DDPM's
    posterior (tau = 1). On steps equal in s (edm's sigma = 80 t, uniform grid) iPNDM's fixed weights are
    LMS's exact ones; iPNDM-v's order 4 is not."""
    schedule, noise = get_schedule("vp_cosine"), randn(32, 6)
    D = mixture().denoiser(schedule)

    def run(name, steps=9, seed=None, **opts):
        return S.get_solver(name)(D, schedule, noise, steps, grid="edm", generator=seed and gen(seed), **opts)

    ddim = run("ddim")
    for name in ("ipndm", "ipndm_v", "lms"):
        assert max_diff(run(name, order=1), ddim) < 1e-12, name
    assert max_diff(run("sa_solver", predictor_order=1, corrector_order=0, tau=0.0), ddim) < 1e-12
    assert (
        max_diff(run("sa_solver", seed=4, predictor_order=1, corrector_order=0, tau=1.0), run("ddpm", seed=4))
        < 1e-12
    )
    assert max_diff(run("lms", order=2), run("ipndm_v", order=2)) < 1e-12
    assert max_diff(run("pndm", 1), run("heun_edm", 1)) < 1e-12
    _, pndm = run_ours("pndm", D, schedule, noise, 9, grid="edm")
    _, heun = run_ours("heun_edm", D, schedule, noise, 9, grid="edm")
    assert max_diff(pndm[0], heun[0]) < 1e-12 and max_diff(pndm[1], heun[1]) > 1e-4
    assert max_diff(run("lms"), run("ipndm")) > 1e-4  # the checks can fail
    edm = get_schedule("edm")
    D = mixture().denoiser(edm)

    def equal_steps(name, **opts):
        return S.get_solver(name)(D, edm, noise, 10, grid="uniform", **opts)

    for order in (2, 3, 4):
        assert max_diff(equal_steps("ipndm", order=order), equal_steps("lms", order=order)) < 1e-10
    assert max_diff(equal_steps("ipndm_v", order=3), equal_steps("lms", order=3)) < 1e-10
    assert max_diff(equal_steps("ipndm_v", order=4), equal_steps("lms", order=4)) > 1e-6


# -- convergence order ------------------------------------------------------------------------------
# (solver, options, allowed error ratios per doubling on 32 -> 64 -> 128 log-SNR steps; measured)
ORDER = [
    ("lms", {"order": 1}, (1.7, 2.5)),  # 1.98, 1.99
    ("lms", {"order": 2}, (3.0, 5.0)),  # 3.60, 3.78
    ("lms", {"order": 3}, (5.0, 9.0)),  # 6.26, 7.05
    ("lms", {}, (9.0, 18.0)),  # 10.3, 12.8
    # fixed AB weights on steps whose ratio in s is e^{dlam/2} != 1: second order
    ("ipndm", {}, (3.5, 5.0)),  # 4.18, 4.07
    ("pndm", {}, (3.5, 5.0)),  # 4.18, 4.07
    ("ipndm_v", {"order": 3}, (3.5, 9.0)),  # 4.16, 5.90 (6.95 at 128 -> 256)
    ("sa_solver", {"tau": 0.0}, (9.0, 18.0)),  # 13.5, 12.3 (8.6 at 128 -> 256: lower_order_final)
    ("sa_solver", {"tau": 0.0, "corrector_order": 0}, (5.0, 9.0)),  # 7.02, 7.45: the predictor alone
]


def test_convergence_order():
    """Mean error against a tight rk45 solution from the same noise on a smooth mixture (std 0.5)."""
    schedule, noise = get_schedule("vp_linear"), randn(64, 10, d=2)
    D = smooth_mixture().denoiser(schedule)
    ref = S.sample_rk45(D, schedule, noise, None, rtol=1e-10, atol=1e-10)
    for solver, opts, (lo, hi) in ORDER:
        errs = errors_as_steps_double(solver, D, schedule, noise, ref, **opts)
        ratios = [errs[0] / errs[1], errs[1] / errs[2]]
        assert min(errs) > 1e-9 and all(lo <= r <= hi for r in ratios), (solver, opts, errs, ratios)


# -- schedule invariance, NFE, options --------------------------------------------------------------
INVARIANT = [
    ("ipndm", {}),
    ("ipndm_v", {}),
    ("lms", {}),
    ("pndm", {}),
    ("sa_solver", {"tau": 0.0}),
    ("sa_solver", {}),  # the same draws under every schedule
]


def test_same_samples_under_every_schedule_on_one_log_snr_grid():
    lam = torch.linspace(-7.0, 7.5, 11, dtype=torch.float64)
    noise = randn(32, 8)
    runs = {}
    for name in SCHEDULES:
        schedule = get_schedule(name)
        D, ts = mixture().denoiser(schedule), schedule.t_from_log_snr(lam).to(torch.float64)
        assert schedule.t_min <= ts[-1] and ts[0] <= schedule.t_max, name
        for solver, opts in INVARIANT:
            runs[name, solver, str(opts)] = S.get_solver(solver)(
                D, schedule, noise, None, grid=ts, generator=gen(2), **opts
            )
    for solver, opts in INVARIANT:
        assert S.get_spec(solver).schedule_invariant
        base = runs[SCHEDULES[0], solver, str(opts)]
        for name in SCHEDULES[1:]:
            assert max_diff(runs[name, solver, str(opts)], base) < 1e-10, (solver, opts, name)


def test_nfe_specs_and_bad_options():
    schedule = get_schedule("flow")
    D0, noise = mixture().denoiser(schedule), randn(4, 12)
    cases = [("ipndm", {"order": o}) for o in (1, 2, 4)] + [
        ("ipndm_v", {}),
        ("lms", {"order": 3}),
        ("pndm", {}),
    ]
    cases += [("sa_solver", {"corrector_order": c, "tau": 0.5}) for c in (0, 4)]
    for solver, opts in cases:
        for steps in (1, 2, 3, 5):
            D = S.CountingDenoiser(D0)
            S.get_solver(solver)(D, schedule, noise, steps, generator=gen(0), **opts)
            assert D.nfe == S.nfe(solver, steps, **opts) == steps + 1 + (solver == "pndm"), (solver, steps)
    for name in ("ipndm", "ipndm_v", "lms"):
        assert S.get_spec(name).defaults() == {"order": 4}
    spec = S.get_spec("sa_solver")
    assert spec.defaults() == {"predictor_order": 3, "corrector_order": 4, "tau": 1.0}
    assert spec.is_stochastic() and not spec.is_stochastic({"tau": 0.0})
    assert not any(S.get_spec(name).stochastic for name in ("ipndm", "ipndm_v", "lms", "pndm"))
    bad = [
        ("ipndm", {"order": 5}, r"ipndm: option order=5 is not allowed; must be an integer in \[1, 4\]"),
        ("lms", {"order": 0}, r"lms: option order=0 is not allowed"),
        (
            "sa_solver",
            {"tau": -0.1},
            r"sa_solver: option tau=-0.1 is not allowed; must be a finite number >= 0",
        ),
        ("sa_solver", {"corrector_order": 5}, r"option corrector_order=5 is not allowed"),
        ("sa_solver", {"predictor_order": 0}, r"option predictor_order=0 is not allowed"),
        ("pndm", {"order": 2}, r"pndm: unknown option 'order'"),
    ]
    for solver, opts, message in bad:
        with pytest.raises(ValueError, match=message):
            S.get_solver(solver)(D0, schedule, noise, 5, **opts)
