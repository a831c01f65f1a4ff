"""The sweep of one network (``difflab.sweep``): rows per sampling schedule x guidance scale x steps,
files per row, the solver error against a reference and the invariance check, on the exact mixture."""

import math

import numpy as np
import pytest
import torch

from difflab.data.toy import GaussianMixture
from difflab.images import load_samples
from difflab.results import Row
from difflab.sampling import Draw
from difflab.schedules import common_log_snr_range, get_schedule
from difflab.solvers import get_spec
from difflab.sweep import Network, Sweep, invariance_errors, sweep_network

SHAPE = (1, 2, 2)


class _Exact:
    """The mixture's exact denoiser under its training schedule, as a network (``.schedule``)."""

    num_classes = 0

    def __init__(self, schedule):
        angle = torch.arange(4) * math.pi / 2
        means = torch.stack([angle.cos(), angle.sin(), -angle.cos(), -angle.sin()], dim=1) * 0.6
        self.schedule, self.D = schedule, GaussianMixture(means, 0.1).denoiser(schedule)

    def __call__(self, x, t, cond=None):
        return self.D(x, t)


def _network(trained: str, targets: list[str], redraw: list[str] | None = None, references=None):
    built = {name: get_schedule(name) for name in {trained, *targets, *(redraw or ())}}
    lo, hi = common_log_snr_range(*built.values())
    shared = {name: s.with_log_snr_range(lo, hi) for name, s in built.items()}
    return Network(
        trained,
        trained,
        0,
        _Exact(get_schedule(trained)),
        {name: shared[name] for name in targets},
        None if redraw is None else {name: shared[name] for name in redraw},
        references or {},
    )


def _sweep(solver: str, steps=(4, 8), invariance_samples=6) -> Sweep:
    spec = get_spec(solver)
    draw = Draw(12, SHAPE, seed=1, batch_size=5)
    return Sweep(spec, spec.check_options({}), "logsnr", steps, (None,), draw, 256, invariance_samples)


def test_rows_files_and_invariance_across_sampling_schedules(tmp_path):
    net = _network("vp_linear", ["vp_linear", "flow", "ve"])
    rows = sweep_network(net, _sweep("ddim"), tmp_path)
    assert [(r.sample_schedule, r.steps) for r in rows] == [
        (s, k) for k in (4, 8) for s in ("vp_linear", "flow", "ve")
    ]
    for r in rows:
        assert isinstance(r, Row) and r.model == "vp_linear" and r.seed == (0,) and r.grid == "logsnr"
        assert r.nfe == get_spec("ddim").nfe(r.steps) and r.n_samples == 12 and r.seconds_per_sample > 0
        assert load_samples(tmp_path / f"{r.stem}.npz")["images"].shape == (12, *SHAPE)
        assert (tmp_path / f"{r.stem}.png").is_file()
        assert r.solver_error is None  # no reference given
        assert r.invariance_error < 1e-5  # ddim steps in log-SNR: the same samples under every schedule


def test_a_t_stepper_is_not_checked_and_differs_across_schedules(tmp_path):
    net = _network("vp_linear", ["vp_linear", "flow"])
    rows = sweep_network(net, _sweep("euler"), tmp_path)
    assert all(r.invariance_error is None for r in rows)
    a, b = (load_samples(tmp_path / f"{r.stem}.npz")["images"] for r in rows[:2])
    assert not torch.equal(a, b)


def test_one_sampling_schedule_redraws_at_the_first_step_count_only(tmp_path):
    net = _network("vp_cosine", ["vp_cosine"], redraw=["vp_cosine", "vp_linear", "flow"])
    rows = sweep_network(net, _sweep("dpm_solver_2m"), tmp_path)
    assert [r.steps for r in rows] == [4, 8]
    assert rows[0].invariance_error < 1e-5 and rows[1].invariance_error is None


def test_a_row_integrates_its_own_range_when_the_check_redraws_on_a_shorter_one(tmp_path):
    """The invariance check redraws under every schedule restricted to their common log-SNR range (ve's
    is shorter than flow's); the row itself integrates the training schedule's whole range. On flow,
    Euler in t and ddim take the same steps on any grid, so ddim's row (checked, redrawn) equals euler's
    (never checked) sample for sample."""
    flow = get_schedule("flow")
    checked = _network("flow", [], redraw=["flow", "ve"])
    net = Network("flow", "flow", 0, checked.denoiser, {"flow": flow}, checked.redraw)
    assert checked.redraw["flow"].t_max < flow.t_max  # the common range is shorter
    (ddim,) = sweep_network(net, _sweep("ddim", steps=(4,)), tmp_path / "ddim")
    unchecked = Network("flow", "flow", 0, checked.denoiser, {"flow": flow})  # as a stage gives a t-stepper
    (euler,) = sweep_network(unchecked, _sweep("euler", steps=(4,)), tmp_path / "euler")
    a, b = (
        load_samples(tmp_path / d / f"{r.stem}.npz")["images"] for d, r in (("ddim", ddim), ("euler", euler))
    )
    assert torch.equal(torch.as_tensor(a), torch.as_tensor(b)) and ddim.invariance_error < 1e-5


def test_solver_error_against_the_reference_falls_with_steps(tmp_path):
    probe = _network("flow", ["flow"])
    fine = sweep_network(probe, _sweep("ddim", steps=(200,), invariance_samples=0), tmp_path / "fine")
    reference = np.asarray(load_samples(tmp_path / "fine" / f"{fine[0].stem}.npz")["images"], np.float64)
    reference = reference / 127.5 - 1  # the levels back in model space: a reference to within 1/255
    net = _network("flow", ["flow"], references={None: reference[:8]})
    rows = sweep_network(net, _sweep("ddim", steps=(2, 4, 16), invariance_samples=0), tmp_path / "rows")
    errors = [r.solver_error for r in rows]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.05


def test_invariance_errors_closed_form():
    pool = {"a": torch.zeros(2, 3), "b": torch.full((2, 3), 0.5), "c": torch.ones(2, 3)}
    assert invariance_errors(pool) == {"a": 1.0, "b": 0.5, "c": 1.0}
    assert invariance_errors({"a": torch.zeros(2)}) == {"a": None}


def test_guided_rows_need_a_class_conditional_network(tmp_path):
    spec = get_spec("ddim")
    sweep = Sweep(spec, {}, "logsnr", (4,), (2.0,), Draw(4, SHAPE), 256, 0)
    with pytest.raises(ValueError, match="class-conditional"):
        sweep_network(_network("flow", ["flow"]), sweep, tmp_path)
