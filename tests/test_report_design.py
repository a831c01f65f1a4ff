"""The "Training or sampling?" sections: the log-SNR weights of the training losses against closed forms
(Kingma & Gao 2023) and histograms of the training times, the design table read from the config, the
invariance marks, the cross-schedule heat map and the grid-effect plot on synthetic rows."""

import math

import numpy as np
import pytest
import torch

from difflab.losses import DiffusionLoss, target_slope2
from difflab.parametrization import SIGMA_DATA
from difflab.report import axes, figures, page, sections, text, weights
from difflab.report.tables import Pairing, Solvers
from difflab.results import Row
from difflab.schedules import get_schedule

PARAMS = {
    "vp_linear": {"beta_min": 0.1, "beta_max": 20.0},
    "vp_cosine": {"s": 0.008},
    "ve": {"sigma_min": 0.01, "sigma_max": 50.0},
    "flow": {},
    "edm": {"sigma_min": 0.002, "sigma_max": 80.0},
}
LOSS = {"time_sampling": None, "weighting": None, "min_snr_gamma": 5.0, "P_mean": -1.2, "P_std": 1.2}


def _cfg(schedules=("vp_linear", "ve", "flow", "edm"), **overrides):
    cfg = {
        "schedules": list(schedules),
        "seeds": [0, 1],
        "schedule": {k: {"params": dict(v)} for k, v in PARAMS.items()},
        "loss": dict(LOSS),
        "denoiser": {"name": "mlp", "width": 64},
        "trainer": {"max_steps": 1234},
    }
    cfg.update(overrides)
    return cfg


def _histogram(schedule, loss, weight=None, n=2**20, bins=40):
    """Density (or weighted density) of the training log-SNRs per bin, its binomial sd, and the bin
    edges; times clamped onto the interval's ends are left out."""
    t = loss.sample_times(schedule, n, generator=torch.Generator().manual_seed(1))
    t = t[(t > np.float32(schedule.t_min)) & (t < np.float32(schedule.t_max))].double()
    lam = schedule.log_snr(t).numpy()
    w = None if weight is None else weight(t)
    counts, edges = np.histogram(lam, bins=bins, range=schedule.log_snr_range(), weights=w)
    sq, _ = np.histogram(lam, bins=bins, range=schedule.log_snr_range(), weights=None if w is None else w**2)
    width = np.diff(edges)
    return counts / (n * width), np.sqrt(sq) / (n * width), edges


def _bin_means(fn, edges, sub=64):
    """Mean of ``fn`` over each bin (``sub`` midpoints per bin)."""
    u = (np.arange(sub) + 0.5) / sub
    pts = edges[:-1, None] + np.diff(edges)[:, None] * u[None, :]
    return fn(pts.reshape(-1)).reshape(pts.shape).mean(1)


@pytest.mark.parametrize(
    ("name", "time_sampling"),
    [("vp_linear", "stratified"), ("vp_cosine", "uniform"), ("flow", "logsnr"), ("ve", "lognormal")],
)
def test_log_snr_density_closed_form_matches_histogram_of_training_times(name, time_sampling):
    schedule = get_schedule(name, **PARAMS[name])
    loss = DiffusionLoss(time_sampling=time_sampling)
    hist, sd, edges = _histogram(schedule, loss)
    closed = _bin_means(lambda lam: weights.log_snr_density(schedule, loss, lam), edges)
    assert np.all(np.abs(hist - closed) <= 5 * sd + 2e-3 * closed.max())
    # and it is a density: the mass inside the interval (lognormal: less its clamped tails) is ~1
    assert np.sum(closed * np.diff(edges)) == pytest.approx(1.0, abs=0.01)


def test_histogram_fallback_matches_the_closed_form(monkeypatch):
    schedule = get_schedule("vp_linear", **PARAMS["vp_linear"])
    loss = DiffusionLoss(time_sampling="uniform")
    lam = np.linspace(-9, 8, 50)
    closed = weights.log_snr_density(schedule, loss, lam)
    monkeypatch.delitem(weights.LOG_SNR_DENSITIES, "uniform")
    hist = weights.log_snr_density(schedule, loss, lam)
    assert np.allclose(hist, closed, rtol=0.05, atol=0.01 * closed.max())


def _vp_linear_closed(lam):
    """Uniform t, eps, unit weighting: ``p(lambda) = |dt/dlambda| / (t_max - t_min)`` with
    ``d lambda / dt = -beta(t) / sigma^2`` (VP: ``sigma^2 = sigmoid(-lambda)``)."""
    s = get_schedule("vp_linear", **PARAMS["vp_linear"])
    t = s.t_from_log_snr(torch.as_tensor(lam, dtype=torch.float64)).numpy()
    beta = s.beta_min + t * (s.beta_max - s.beta_min)
    return 1 / (1 + np.exp(lam)) / beta / (s.t_max - s.t_min)


def _flow_closed(lam):
    """Uniform t, velocity target: ``w = e^(-lambda/2) / (2 (t_max - t_min))`` (Kingma & Gao's
    rectified-flow weighting)."""
    s = get_schedule("flow")
    return np.exp(-lam / 2) / (2 * (s.t_max - s.t_min))


def _edm_closed(lam):
    """EDM: ``w = N(lambda; 2.4, 2.4^2) (e^-lambda + sd^2) / sd^2`` (Kingma & Gao 2023)."""
    sd2 = SIGMA_DATA**2
    return (
        np.exp(-0.5 * ((lam - 2.4) / 2.4) ** 2) / (2.4 * math.sqrt(2 * math.pi)) * (np.exp(-lam) + sd2) / sd2
    )


def _ve_closed(lam):
    """VE, uniform t (lambda linear in t), the edm target, unit weighting: ``(e^-lambda + sd^2) / sd^2
    / (lam_hi - lam_lo)``."""
    lo, hi = get_schedule("ve", **PARAMS["ve"]).log_snr_range()
    return (np.exp(-lam) + SIGMA_DATA**2) / SIGMA_DATA**2 / (hi - lo)


@pytest.mark.parametrize(
    ("name", "closed"),
    [("vp_linear", _vp_linear_closed), ("flow", _flow_closed), ("edm", _edm_closed), ("ve", _ve_closed)],
)
def test_implied_weight_closed_forms(name, closed):
    cfg = _cfg(schedules=[name])
    lo, hi = get_schedule(name, **PARAMS[name]).log_snr_range()
    lam = np.linspace(lo + 1e-6, hi - 1e-6, 101)
    w = weights.implied_weights(cfg, lam)[name]
    assert np.allclose(w, closed(lam), rtol=1e-6)
    outside = weights.implied_weights(cfg, np.array([lo - 1.0, hi + 1.0]))[name]
    assert np.all(outside == 0)


@pytest.mark.parametrize("name", ["flow", "edm"])
def test_implied_weight_matches_the_training_loss_estimated_from_its_own_times(name):
    """Monte Carlo of the loss's integrand weight: the histogram of the training log-SNRs weighted by
    ``loss.weight * k^2 / snr`` per bin is the bin mean of ``implied_weights``."""
    cfg = _cfg(schedules=[name])
    schedule = get_schedule(name, **PARAMS[name])
    loss = DiffusionLoss.for_schedule(schedule)
    prediction = schedule.prediction
    D = type("D", (), {"schedule": schedule, "prediction": prediction, "sigma_data": SIGMA_DATA})()

    def weight(t):
        k2 = target_slope2(prediction, schedule, t)
        return (loss.weight(D, t) * k2 / schedule.log_snr(t).exp()).numpy()

    hist, sd, edges = _histogram(schedule, loss, weight)
    expected = _bin_means(lambda lam: weights.implied_weights(cfg, lam)[name], edges)
    assert np.all(np.abs(hist - expected) <= 5 * sd + 2e-3 * expected.max())


def test_training_design_reads_the_config_and_the_schedule_recipe():
    cfg = _cfg()
    cfg["schedule"]["flow"]["prediction"] = "eps"
    cfg["loss"]["weighting"] = "min_snr"
    rows = {r["schedule"]: r for r in weights.training_design(cfg)}
    assert list(rows) == ["vp_linear", "ve", "flow", "edm"]
    assert rows["flow"]["prediction"] == "eps (config)" and rows["ve"]["prediction"] == "edm (schedule's own)"
    assert rows["edm"]["time_sampling"] == "lognormal (P_mean -1.2, P_std 1.2) (schedule's recipe)"
    assert rows["vp_linear"]["time_sampling"] == "stratified (loss default)"
    assert rows["edm"]["weighting"] == "min_snr (min_snr_gamma 5) (config)"
    assert rows["ve"]["path"].startswith("alpha = 1")
    assert rows["vp_linear"]["path"].startswith("alpha^2 + sigma^2 = 1")
    assert rows["flow"]["alpha_sigma"] == "alpha = 1 - t, sigma = t"
    assert rows["vp_linear"]["parameters"] == "beta_min 0.1, beta_max 20" and rows["flow"]["parameters"] == ""
    assert rows["flow"]["max_steps"] == 1234 and rows["flow"]["seeds"] == "0 1"
    assert rows["flow"]["network"] == "mlp (width 64)"
    # the prediction override changes the weight: eps under flow, unit weighting is p(lambda) alone
    lam = np.linspace(-5, 5, 11)
    flow = get_schedule("flow")
    assert np.allclose(
        weights.implied_weights(_cfg(schedules=["flow"], schedule={"flow": {"prediction": "eps"}}), lam)[
            "flow"
        ],
        weights.log_snr_density(flow, DiffusionLoss(), lam),
    )


SOLVERS = Solvers.of(["euler", "heun", "ddim", "dpm_solver_2m", "euler_maruyama"])
SCHEDULES = ["vp_linear", "ve", "flow"]


def _row(schedule, solver, steps, fid, sample_schedule=None, grid="logsnr", err=None):
    nfe = {"heun": 2 * steps - 1}.get(solver, steps)
    measured = {
        "nfe": float(nfe),
        "fid": float(fid),
        "fid_lo": fid * 0.9,
        "fid_hi": fid * 1.1,
        "invariance_error": err,
    }
    return Row(schedule, solver, steps, sample_schedule or schedule, grid=grid, **measured)


def _cross_rows():
    """Every t-stepper (euler, heun) on every (train, sample) pair at 5, 10, 20 steps, on two grids;
    the FID is lowest for sampling under flow; ddim and dpm_solver_2m on the diagonal with their
    invariance errors (one above tol)."""
    rows = []
    for grid, scale in (("logsnr", 1.0), ("uniform", 1.5)):
        for solver in ("euler", "heun", "euler_maruyama"):
            for a in SCHEDULES:
                for b in SCHEDULES:
                    for k in (5, 10, 20):
                        fid = scale * (10 + SCHEDULES.index(a)) * (20 / k) * (0.5 if b == "flow" else 1.0)
                        rows.append(_row(a, solver, k, fid + (solver == "heun"), b, grid))
        for solver, err in (("ddim", 2e-5), ("dpm_solver_2m", 4e-3)):
            for a in SCHEDULES:
                for k in (5, 10, 20):
                    rows.append(
                        _row(a, solver, k, scale * 8 * (20 / k) + (solver == "ddim"), grid=grid, err=err)
                    )
    return rows


def test_invariance_marks_flag_a_row_above_tol():
    rows = [
        _row("vp_linear", "ddim", 10, 5.0, err=2e-4),
        _row("ve", "ddim", 10, 5.0, err=3e-3),
        _row("flow", "dpm_solver_2m", 10, 5.0, err=float("nan")),
        _row("flow", "dpm_solver_2m", 20, 5.0, err=1e-5),
        _row("flow", "euler", 10, 5.0),  # a t-stepper: not marked
        _row("ve", "ddim", 10, 5.0, grid="uniform", err=2e-2),  # uniform in t: its own summary
        _row("flow", "dpm_solver_2m", 5, 5.0),  # not measured
    ]
    marks = axes.invariance_marks(rows, SOLVERS, tol=1e-3)
    assert {r.key: m for r, m in marks} == {
        "vp_linear/ddim/10/logsnr": "identical within tol",
        "ve/ddim/10/logsnr": "NOT identical",
        "flow/dpm_solver_2m/10/logsnr": "NOT identical",
        "flow/dpm_solver_2m/20/logsnr": "identical within tol",
        "flow/dpm_solver_2m/5/logsnr": "not measured",
        "ve/ddim/10/uniform": "NOT identical",
    }
    summary = axes.invariance_by_solver(marks, SOLVERS)
    assert [(s.solver, s.grid) for s in summary] == [
        ("ddim", "uniform"),
        ("ddim", "logsnr"),
        ("dpm_solver_2m", "logsnr"),
    ]
    solvers = {s.solver: s for s in summary if s.grid == "logsnr"}
    assert solvers["ddim"].n_above == 1 and solvers["ddim"].max_error == 3e-3
    assert solvers["ddim"].worst == "ve/ddim/10/logsnr" and solvers["ddim"].mark == "NOT identical"
    assert solvers["dpm_solver_2m"].n_measured == 2 and solvers["dpm_solver_2m"].mark == "NOT identical"
    assert solvers["dpm_solver_2m"].n_rows == 3
    sentence = text.invariance_text(marks, 1e-3)  # a NaN error counts as the largest
    assert (
        "Of 5 measured rows" in sentence
        and "3 are NOT identical, the worst flow/dpm_solver_2m/10/logsnr" in sentence
    )
    loose = axes.invariance_by_solver(axes.invariance_marks(rows, SOLVERS, tol=1e-2), SOLVERS)
    assert loose[1].mark == "identical within tol"


def test_cross_heatmap_cells_and_png(tmp_path):
    rows = _cross_rows()
    panels = axes.cross_schedules(rows, SOLVERS)
    assert [p.solver for p in panels] == ["euler", "heun", "euler_maruyama"]  # ODE first
    for p in panels:
        assert p.steps == 10 and p.grid == "uniform"  # the middle step count; grids tie: GRIDS order
        assert p.train == SCHEDULES and p.sample == SCHEDULES
        fid = np.array(p.fid)
        assert fid.shape == (3, 3) and np.isfinite(fid).all()
        assert all(np.argmin(fid[i]) == SCHEDULES.index("flow") for i in range(3))
    assert axes.cross_schedules(rows, SOLVERS, nfe=19)[1].steps == 10  # heun: NFE 19 at 10 steps
    assert axes.cross_schedules(rows, SOLVERS, nfe=19)[0].steps == 20
    assert "trained on vp_linear, the lowest FID is under flow" in text.cross_sentences(panels)[0]
    png = figures.cross_heatmap(panels, tmp_path / "cross.png")
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    diagonal = [r for r in rows if r.on_diagonal]
    assert (
        axes.cross_schedules(diagonal, SOLVERS) == []
        and figures.cross_heatmap([], tmp_path / "none.png") is None
    )
    assert not (tmp_path / "none.png").exists()


def test_grid_effect_lines_and_png(tmp_path):
    rows = _cross_rows()
    panels = axes.grid_effect(rows, SOLVERS)
    groups = {p.group: p for p in panels}
    assert list(groups) == ["ODE, order 1", "ODE, order 2", "SDE, order 1"]
    assert groups["ODE, order 1"].solver == "ddim"  # 8 * ... beats euler's 10 * ...
    assert groups["ODE, order 2"].solver == "dpm_solver_2m"
    assert groups["SDE, order 1"].solver == "euler_maruyama"
    for p in panels:
        assert list(p.lines) == ["uniform", "logsnr"]  # GRIDS order
        assert all(len(pts) == 3 for pts in p.lines.values())
        assert all(r.sample_schedule == r.schedule == p.schedule for pts in p.lines.values() for r in pts)
    assert groups["SDE, order 1"].schedule == "flow"  # its diagonal: 0.5 x (10 + 2) < 10
    assert "the lowest FID comes from the logsnr grid at 3 of 3 NFEs" in text.grid_sentences(panels)[0]
    png = figures.grid_effect(panels, tmp_path / "grid.png")
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    assert axes.grid_effect([r for r in rows if r.grid == "logsnr"], SOLVERS) == []


def _design_html(rows, cfg, plots) -> tuple[str, list]:
    reps = {r.key: r.fid + np.linspace(-1, 1, 8) for r in rows}
    ctx = sections.ReportContext(cfg=cfg, pairing=Pairing(rows, reps), solvers=SOLVERS, plots=plots)
    shown = [f(rows, ctx) for f in (sections.training_design, sections.log_snr_solvers, sections.t_solvers,
                                    sections.time_grid)]  # fmt: skip
    return "\n".join(page.section(s) for s in shown), shown


def test_design_sections_hold_the_tables_values(tmp_path):
    rows = _cross_rows()
    cfg = _cfg(schedules=SCHEDULES)
    cfg["schedule"]["flow"]["prediction"] = "x0"
    html, shown = _design_html(rows, cfg, tmp_path)
    t_steppers = "Solvers that step in t: training schedule x sampling schedule"
    titles = [
        "Training or sampling?",
        "Solvers that step in log-SNR",
        t_steppers,
        "What the time grid changes",
    ]
    assert [s.title for s in shown] == titles
    assert [f.name for s in shown for f in s.figures] == ["design_loss_weights", "design_cross_schedule",
                                                          "design_grid_effect"]  # fmt: skip
    assert all(f.path.exists() for s in shown for f in s.figures)
    assert html.count("<img ") == 3 and "data:image/png;base64," in html
    assert "x0 (config)" in html and "edm (schedule&#x27;s own)" in html
    assert "<td>1234</td>" in html and "mlp (width 64)" in html
    assert "alpha = 1 - t, sigma = t" in html
    assert "0.004" in html and "NOT identical" in html  # dpm_solver_2m's invariance error
    (marks,) = shown[1].tables
    row = dict(zip(marks.header, next(r for r in marks.rows if r[:2] == ("dpm_solver_2m", "logsnr"))))
    assert row["rows measured"] == 9 and row["max |dx|"] == 4e-3 and row["rows above 0.001"] == 9
    assert row["worst row"].startswith("vp_linear/dpm_solver_2m/") and row["mark"] == "NOT identical"
    assert "trained on ve, the lowest FID is under flow" in html
    # no sampling schedule off the diagonal, one grid, nothing measured: no figures but the loss weights
    plain = [r.replace(invariance_error=None) for r in rows if r.on_diagonal and r.grid == "logsnr"]
    html, shown = _design_html(plain, cfg, tmp_path / "plain")
    assert html.count("<img ") == 1 and "not measured" in html and "One time grid only" in html
