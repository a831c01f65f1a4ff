"""Guidance as a comparison axis on synthetic rows with known answers: the best w per schedule and
whether the paired test separates it from the next best, high-w breakdowns, sentences, the section
and the FID-vs-accuracy figure; tables without guidance give nothing."""

import math

import numpy as np
import pytest

from difflab.metrics.paired import Pairing
from difflab.report import axes, figures, page, sections, text
from difflab.results import Row
from difflab.solvers.registry import Solvers

NAN = float("nan")
CEILING = {"accuracy": 0.97, "accuracy_lo": 0.96, "accuracy_hi": 0.98, "n": 2000}


def _row(schedule, solver, steps, w, fid, acc=None, grid="uniform", sample_schedule=None, prc=(0.8, 0.6)):
    extra = {}
    for name, v, half in (
        ("class_accuracy", acc, 0.02),
        *(zip(("precision", "recall"), prc or (None, None), (0.03,) * 2)),
    ):
        if v is not None:
            extra.update({name: v, f"{name}_lo": v - half, f"{name}_hi": min(v + half, 1.0)})
    nfe = float(steps + 1 if steps else 57)
    measured = {"nfe": nfe, "fid": fid, "fid_lo": fid - 1.0, "fid_hi": fid + 1.0, "n_samples": 1000, **extra}
    return Row(schedule, solver, steps, sample_schedule or schedule, grid=grid, guidance_scale=w, **measured)


# s1, ddim 20 steps: lowest at w = 2 (10.0), next w = 1 (10.5); intervals overlap, but the two rows
# move together in the bootstrap, so the paired test resolves the 0.5. FID 30 at w = 4: it breaks.
DDIM20 = [
    _row("s1", "ddim", 20, 0.0, 20.0, 0.30),
    _row("s1", "ddim", 20, 1.0, 10.5, 0.70, prc=(0.82, 0.64)),
    _row("s1", "ddim", 20, 2.0, 10.0, 0.85, prc=(0.86, 0.55)),
    _row("s1", "ddim", 20, 4.0, 30.0, 0.95),
]
DDIM10 = [_row("s1", "ddim", 10, w, f, a) for w, f, a in ((0.0, 15, 0.3), (1.0, 14, 0.7), (2.0, 13, 0.8))]
# s1, euler: lowest at w = 1 (12.0), next w = 2 (12.1) with mostly independent replicates: not
# separated; NaN at w = 4 (it breaks).
EULER = [
    _row("s1", "euler", 10, 0.0, 25.0, 0.30),
    _row("s1", "euler", 10, 1.0, 12.0, 0.60),
    _row("s1", "euler", 10, 2.0, 12.1, 0.75),
    _row("s1", "euler", 10, 4.0, NAN, 0.10),
]
OFF_DIAGONAL = _row("s1", "ddim", 20, 1.0, 5.0, 0.9, sample_schedule="ve")  # lower, but not the diagonal
UNCONDITIONAL = [_row("s1", "ddim", 20, None, 4.0), _row("s2", "euler", 10, None, 3.0)]
RK45 = [
    _row("s2", "rk45", 0, w, f, a, grid=None)
    for w, f, a in ((0.0, 9.0, 0.4), (1.0, 8.0, 0.8), (3.0, 8.4, 0.9))
]
BARE = [
    _row("s3", "heun", 10, w, f, grid=None, prc=None) for w, f in ((0.0, 7.0), (1.5, 6.0))
]  # no accuracy, P/R
GUIDED = DDIM20 + DDIM10 + EULER + [OFF_DIAGONAL] + RK45 + BARE
ROWS = GUIDED + UNCONDITIONAL
SOLVERS = Solvers.of(["ddim", "euler", "rk45", "heun"])


def _replicates(n_boot: int = 400) -> dict[str, np.ndarray]:
    """Replicates ``fid + 0.2 + a z + u e``: a shared resampling term ``a z`` and each row's own."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal(n_boot)
    spread = {r.key: (1.0, 0.05) for r in DDIM20} | {r.key: (0.1, 1.0) for r in EULER}
    return {r.key: r.fid + 0.2 + a * z + u * rng.standard_normal(n_boot) for r in ROWS
            for a, u in [spread.get(r.key, (0.5, 0.5))]}  # fmt: skip


PAIRING = Pairing(ROWS, _replicates())


def _by_schedule(best):
    return {g.schedule: g for g in best}


def _curve(g, solver, steps):
    (c,) = [c for c in g.curves if c.rows[0].solver == solver and c.rows[0].steps == steps]
    return c


def test_guided_rows_are_the_rows_with_a_scale():
    assert axes.guided_rows(ROWS) == GUIDED


def test_best_scales_pick_the_known_minimum_per_schedule():
    best = _by_schedule(axes.best_scales(ROWS, PAIRING))
    assert list(best) == ["s1", "s2", "s3"]
    s1 = best["s1"].best.best  # the off-diagonal FID 5 and the unconditional FID 4 do not count
    assert (s1.solver, s1.steps, s1.grid, s1.guidance_scale, s1.fid) == ("ddim", 20, "uniform", 2.0, 10.0)
    assert (s1.precision, s1.recall, s1.class_accuracy) == (0.86, 0.55, 0.85)
    assert best["s1"].best.runner is DDIM20[1]
    assert {(c.rows[0].solver, c.rows[0].steps) for c in best["s1"].curves} == {
        ("ddim", 20),
        ("ddim", 10),
        ("euler", 10),
    }
    assert (
        _curve(best["s1"], "ddim", 10).best is DDIM10[2] and _curve(best["s1"], "euler", 10).best is EULER[1]
    )
    s2 = best["s2"].best
    assert (s2.best.solver, s2.best.steps, s2.best.guidance_scale, s2.runner.guidance_scale) == (
        "rk45",
        0,
        1.0,
        3.0,
    )
    s3 = best["s3"].best.best  # rows without accuracy, precision or recall: nothing crashes
    assert (s3.guidance_scale, s3.fid, s3.precision, s3.class_accuracy) == (1.5, 6.0, None, None)


def test_separated_by_the_paired_test_though_the_intervals_overlap():
    s1 = _by_schedule(axes.best_scales(ROWS, PAIRING))["s1"].best
    d = s1.diff
    assert DDIM20[1].fid_lo < DDIM20[2].fid_hi  # [9.5, 11.5] and [9, 11] overlap
    assert d == PAIRING.diff(DDIM20[1], DDIM20[2])  # FID(next) - FID(best)
    assert d.fid_diff == pytest.approx(0.5) and d.diff_lo > 0 and d.resolved
    euler = _curve(_by_schedule(axes.best_scales(ROWS, PAIRING))["s1"], "euler", 10)
    assert euler.diff.fid_diff == pytest.approx(0.1)
    assert euler.diff.diff_lo < 0 < euler.diff.diff_hi and not euler.diff.resolved


def test_breaks_at_high_w():
    s1 = _by_schedule(axes.best_scales(ROWS, PAIRING))["s1"]
    assert _curve(s1, "ddim", 20).breaks  # 30 > 2 x 10
    assert _curve(s1, "euler", 10).breaks  # NaN at w = 4
    assert not _curve(s1, "ddim", 10).breaks  # 13 at its largest w, also its lowest


def test_sentences_name_the_w_the_interval_and_the_ceiling():
    lines = text.guidance_sentences(axes.best_scales(ROWS, PAIRING), CEILING)
    s1 = lines[0]
    assert s1.startswith("s1: FID is lowest at w = 2 (ddim, 20 steps, uniform grid, FID 10 [9, 11])")
    assert "the next best, w = 1, scores 10.5" in s1 and ", separated" in s1
    assert "accuracy rises from 0.3 at w = 0 to 0.95 at w = 4 (classifier ceiling 0.97 [0.96, 0.98])" in s1
    assert "precision 0.86 and recall 0.55 at w = 2" in s1
    breaks = [line for line in lines if "breaks at high w" in line]
    assert len(breaks) == 2
    assert any("ddim (20 steps, uniform)" in b and "FID 30 at w = 4" in b for b in breaks)
    assert any("euler (10 steps, uniform)" in b and "not finite at w = 4" in b for b in breaks)
    s2 = next(line for line in lines if line.startswith("s2:"))
    assert "w = 1 (rk45, adaptive, FID 8 [7, 9])" in s2
    s3 = next(line for line in lines if line.startswith("s3:"))
    assert "accuracy" not in s3 and "precision" not in s3
    # without a ceiling the accuracy clause stays, the ceiling goes
    assert "ceiling" not in text.guidance_sentences(axes.best_scales(ROWS, PAIRING))[0]


def _context(rows, plots):
    meta = {"classifier_ceiling": CEILING}
    return sections.ReportContext(cfg={}, pairing=PAIRING, solvers=SOLVERS, meta=meta, plots=plots)


def test_the_section_draws_the_figure_and_holds_every_guided_row(tmp_path):
    section = sections.guidance(ROWS, _context(ROWS, tmp_path))
    (fig,) = section.figures
    assert fig.path == tmp_path / "fid_vs_accuracy.png" and "ceiling" in fig.caption
    assert fig.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    width, height = Image.open(fig.path).size
    assert width > 400 and height > 200
    html = page.section(section)
    assert html.startswith("<h2>Guidance</h2>")
    assert "D_u + w (D_c - D_u)" in html and "Wilson" in html
    assert html.count("data:image/png;base64,") == 1
    assert "0.97 [0.96, 0.98] (2000 images)" in html
    assert ">+0.5 [" in html and ">separated</td>" in html  # s1's best against its next-best w
    best, every = section.tables  # the best table: one row per schedule; every guided row: one each
    assert len(best.rows) == 3 and len(every.rows) == len(GUIDED)
    assert html.count("<tr") == (1 + 3) + (1 + len(GUIDED))
    assert "10.5 [9.5, 11.5]" in html and "0.85 [0.83, 0.87]" in html and "0.86 [0.83, 0.89]" in html
    assert "sample schedule" in every.header and any("ve" in r for r in every.rows)  # the off-diagonal row
    assert "adaptive" in html and "s1: FID is lowest at w = 2" in html


def test_plot_keeps_to_rows_with_a_class_accuracy(tmp_path):
    (bare,) = axes.best_scales(BARE, PAIRING)
    assert axes.drawn_curves(bare, SOLVERS) == {}
    (rk45,) = axes.best_scales(RK45, PAIRING)
    out = figures.fid_vs_accuracy(
        {"s2": axes.drawn_curves(rk45, SOLVERS)}, tmp_path / "rk45.png", SOLVERS, None
    )
    assert out == tmp_path / "rk45.png" and out.stat().st_size > 1000
    assert figures.fid_vs_accuracy({}, tmp_path / "none.png", SOLVERS, CEILING) is None
    assert not (tmp_path / "none.png").exists()


def test_unconditional_tables_give_nothing(tmp_path):
    assert axes.guided_rows(UNCONDITIONAL) == []
    best = axes.best_scales(UNCONDITIONAL, PAIRING)
    assert best == [] and text.guidance_sentences(best, CEILING) == []
    assert sections.guidance(UNCONDITIONAL, _context(UNCONDITIONAL, tmp_path)) is None
    assert list(tmp_path.iterdir()) == []


def test_a_schedule_without_a_finite_fid():
    rows = [_row("s4", "euler", 10, w, NAN, 0.5) for w in (0.0, 1.0)]
    pairing = Pairing(rows, {r.key: np.linspace(0, 1, 10) for r in rows})
    (g,) = axes.best_scales(rows, pairing)
    assert g.best is None and g.curves[0].best is None and g.curves[0].breaks
    assert text.guidance_sentences([g]) == [
        "s4: no guided row has a finite FID.",
        "s4: euler (10 steps, uniform) gives no finite FID at any w.",
    ]
    assert math.isnan(g.curves[0].rows[-1].fid)
