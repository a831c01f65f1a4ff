"""The "Training or sampling?" sections: the design table and the loss weights read from the config, the
invariance marks, the cross-schedule heat map and the grid-effect plot on synthetic rows."""

import numpy as np

from difflab.losses import DiffusionLoss, implied_weight, log_snr_density
from difflab.metrics.paired import Pairing
from difflab.report import axes, figures, page, sections, text, weights
from difflab.results import Row
from difflab.schedules import get_schedule
from difflab.solvers.registry import Solvers

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


def test_training_design_reads_the_config_and_the_schedule_recipe():
    cfg = _cfg()
    cfg["schedule"]["flow"]["prediction"] = "eps"
    cfg["loss"]["weighting"] = "min_snr"
    rows = {r["schedule"]: r for r in weights.training_design(cfg)}
    assert list(rows) == ["vp_linear", "ve", "flow", "edm"]
    assert rows["flow"]["prediction"] == "eps (config)" and rows["ve"]["prediction"] == "edm (schedule's own)"
    lognormal = "lognormal (P_mean -1.2, P_std 1.2, P_uniform 0) (schedule's recipe)"
    assert rows["edm"]["time_sampling"] == lognormal
    assert rows["vp_linear"]["time_sampling"] == "stratified (loss default)"
    assert rows["edm"]["weighting"] == "min_snr (min_snr_gamma 5) (config)"
    assert rows["ve"]["path"].startswith("alpha = 1")
    assert rows["vp_linear"]["path"].startswith("alpha^2 + sigma^2 = 1")
    assert rows["flow"]["alpha_sigma"] == "alpha = 1 - t, sigma = t"
    assert rows["vp_linear"]["parameters"] == "beta_min 0.1, beta_max 20" and rows["flow"]["parameters"] == ""
    assert rows["flow"]["max_steps"] == 1234 and rows["flow"]["seeds"] == "0 1"
    assert rows["flow"]["network"] == "mlp (width 64)"
    # the figure's weights are losses.implied_weight of each network's loss and target: under unit
    # weighting an eps network (the flow override) weights each log-SNR by its density alone
    lam = np.linspace(-5, 5, 11)
    edm = get_schedule("edm", **PARAMS["edm"])
    edm_loss = DiffusionLoss.for_schedule(edm, weighting="min_snr")
    assert np.allclose(weights.implied_weights(cfg, lam)["edm"], implied_weight(edm, edm_loss, "edm", lam))
    unit = _cfg(schedules=["flow"], schedule={"flow": {"prediction": "eps"}})
    flow_density = log_snr_density(get_schedule("flow"), DiffusionLoss(), lam)
    assert np.allclose(weights.implied_weights(unit, lam)["flow"], flow_density)


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
