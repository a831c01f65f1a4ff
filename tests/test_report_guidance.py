"""Guidance as a comparison axis (difflab.report.guidance) on synthetic rows with known answers: the
best w per schedule and whether the paired test separates it from the next best, high-w breakdowns,
sentences, the HTML section and the FID-vs-accuracy figure; tables without guidance give nothing."""

import math

import numpy as np
import pytest

from difflab.report import analysis, guidance

NAN = float("nan")
CEILING = {"accuracy": 0.97, "accuracy_lo": 0.96, "accuracy_hi": 0.98, "n": 2000}


def _row(schedule, solver, steps, w, fid, acc=None, grid="uniform", sample_schedule=None, prc=(0.8, 0.6)):
    r = {
        "schedule": schedule, "sample_schedule": sample_schedule or schedule, "grid": grid,
        "guidance_scale": w, "solver": solver, "steps": steps, "nfe": float(steps + 1 if steps else 57),
        "fid": fid, "fid_lo": fid - 1.0, "fid_hi": fid + 1.0, "n_samples": 1000,
        "class_accuracy": acc, "class_accuracy_lo": None if acc is None else acc - 0.02,
        "class_accuracy_hi": None if acc is None else min(acc + 0.02, 1.0),
        "precision": prc[0], "precision_lo": prc[0] - 0.03, "precision_hi": prc[0] + 0.03,
        "recall": prc[1], "recall_lo": prc[1] - 0.03, "recall_hi": prc[1] + 0.03,
    }  # fmt: skip
    return r


def _old_row(schedule, solver, steps, w, fid):
    """A row of an older table: no grid, sample schedule, class accuracy, precision or recall."""
    return {
        "schedule": schedule, "solver": solver, "steps": steps, "nfe": float(steps + 1), "fid": fid,
        "fid_lo": fid - 1.0, "fid_hi": fid + 1.0, "guidance_scale": w,
    }  # fmt: skip


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
UNCONDITIONAL = [
    _row("s1", "ddim", 20, None, 4.0),
    {k: v for k, v in _row("s2", "euler", 10, None, 3.0).items() if k != "guidance_scale"},
]
RK45 = [
    _row("s2", "rk45", 0, w, f, a, grid=None)
    for w, f, a in ((0.0, 9.0, 0.4), (1.0, 8.0, 0.8), (3.0, 8.4, 0.9))
]
OLD = [_old_row("s3", "heun", 10, 0.0, 7.0), _old_row("s3", "heun", 10, 1.5, 6.0)]
GUIDED = DDIM20 + DDIM10 + EULER + [OFF_DIAGONAL] + RK45 + OLD
ROWS = GUIDED + UNCONDITIONAL
FAMILIES = analysis.solver_families(["ddim", "euler", "rk45", "heun"])


def _replicates(n_boot: int = 400) -> dict[str, np.ndarray]:
    """Replicates ``fid + 0.2 + a z + u e``: a shared resampling term ``a z`` and each row's own."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal(n_boot)
    spread = {id(r): (1.0, 0.05) for r in DDIM20}
    spread.update({id(r): (0.1, 1.0) for r in EULER})
    return {
        analysis.row_id(r): r["fid"] + 0.2 + a * z + u * rng.standard_normal(n_boot)
        for r in ROWS
        for a, u in [spread.get(id(r), (0.5, 0.5))]
    }


PAIRING = analysis.Pairing(ROWS, _replicates())


def _by_schedule(best):
    return {b["schedule"]: b for b in best}


def _curve(b, solver, steps):
    (c,) = [c for c in b["curves"] if c["solver"] == solver and c["steps"] == steps]
    return c


def test_guided_rows_are_the_rows_with_a_scale():
    assert guidance.guided_rows(ROWS) == GUIDED


def test_best_scales_pick_the_known_minimum_per_schedule():
    best = _by_schedule(guidance.best_scales(ROWS, PAIRING))
    assert list(best) == ["s1", "s2", "s3"]
    s1 = best["s1"]  # the off-diagonal FID 5 and the unconditional FID 4 do not count
    assert (s1["solver"], s1["steps"], s1["grid"], s1["w"], s1["fid"]) == ("ddim", 20, "uniform", 2.0, 10.0)
    assert (s1["fid_lo"], s1["fid_hi"]) == (9.0, 11.0)
    assert (s1["precision"], s1["recall"], s1["class_accuracy"]) == (0.86, 0.55, 0.85)
    assert s1["next_w"] == 1.0 and s1["next_fid"] == 10.5
    assert {(c["solver"], c["steps"]) for c in s1["curves"]} == {("ddim", 20), ("ddim", 10), ("euler", 10)}
    assert (_curve(s1, "ddim", 10)["w"], _curve(s1, "euler", 10)["w"]) == (2.0, 1.0)
    s2 = best["s2"]
    assert (s2["solver"], s2["steps"], s2["w"], s2["fid"], s2["next_w"]) == ("rk45", 0, 1.0, 8.0, 3.0)
    s3 = best["s3"]  # an old table's rows: no accuracy, precision or recall, nothing crashes
    assert (s3["w"], s3["fid"], s3["precision"], s3["class_accuracy"]) == (1.5, 6.0, None, None)


def test_separated_by_the_paired_test_not_by_overlap():
    s1 = _by_schedule(guidance.best_scales(ROWS, PAIRING))["s1"]
    d = s1["diff"]
    assert d == PAIRING.diff(DDIM20[1], DDIM20[2])  # FID(next) - FID(best)
    assert d["fid_diff"] == pytest.approx(0.5)
    assert d["diff_lo"] > 0 and s1["separated"] is True
    euler = _curve(s1, "euler", 10)
    assert euler["diff"]["fid_diff"] == pytest.approx(0.1)
    assert euler["diff"]["diff_lo"] < 0 < euler["diff"]["diff_hi"] and euler["separated"] is False
    # without a pairing: the overlap rule, under which the intervals [9, 11] and [9.5, 11.5] overlap
    s1_overlap = _by_schedule(guidance.best_scales(ROWS, None))["s1"]
    assert s1_overlap["diff"] is None and s1_overlap["separated"] is False


def test_breaks_at_high_w():
    s1 = _by_schedule(guidance.best_scales(ROWS, PAIRING))["s1"]
    assert _curve(s1, "ddim", 20)["breaks"]  # 30 > 2 x 10
    assert _curve(s1, "euler", 10)["breaks"]  # NaN at w = 4
    assert not _curve(s1, "ddim", 10)["breaks"]  # 13 at its largest w, also its lowest


def test_sentences_name_the_w_the_interval_and_the_ceiling():
    lines = guidance.guidance_sentences(guidance.best_scales(ROWS, PAIRING), CEILING)
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
    assert "ceiling" not in guidance.guidance_sentences(guidance.best_scales(ROWS, PAIRING))[0]


def test_plot_writes_a_png_and_the_section_embeds_it(tmp_path):
    figs = guidance.figures(ROWS, FAMILIES, tmp_path, CEILING)
    png, caption = figs["fid_vs_accuracy"]
    assert png == tmp_path / "fid_vs_accuracy.png" and "ceiling" in caption
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    width, height = Image.open(png).size
    assert width > 400 and height > 200
    best = guidance.best_scales(ROWS, PAIRING)
    text = guidance.section_html(ROWS, best, figs, CEILING)
    assert text.startswith("<h2>Guidance</h2>")
    assert "D<sub>u</sub> + w (D<sub>c</sub> &minus; D<sub>u</sub>)" in text and "Wilson" in text
    assert text.count("data:image/png;base64,") == 1
    assert "0.97 [0.96, 0.98] (2000 images)" in text
    assert "<td>+0.5 [" in text and "<td>separated</td>" in text  # s1's best against its next-best w
    # the best table: one row per schedule; every guided row: one row each (plus a header each)
    assert text.count("<tr") == (1 + 3) + (1 + len(GUIDED))
    assert "10.5 [9.5, 11.5]" in text and "0.85 [0.83, 0.87]" in text and "0.86 [0.83, 0.89]" in text
    assert "ve" in text  # the off-diagonal row's sampling schedule has its column
    assert "adaptive" in text
    assert "s1: FID is lowest at w = 2" in text


def test_plot_keeps_to_rows_with_a_class_accuracy(tmp_path):
    assert guidance.fid_vs_accuracy_plot(OLD, tmp_path / "old.png", FAMILIES) is None
    assert not (tmp_path / "old.png").exists()
    out = guidance.fid_vs_accuracy_plot(RK45, tmp_path / "rk45.png", FAMILIES)  # no ceiling
    assert out == tmp_path / "rk45.png" and out.stat().st_size > 1000


def test_unconditional_tables_give_nothing(tmp_path):
    assert guidance.guided_rows(UNCONDITIONAL) == []
    best = guidance.best_scales(UNCONDITIONAL, None)
    assert best == [] and guidance.guidance_sentences(best, CEILING) == []
    assert guidance.section_html(UNCONDITIONAL, best, {}, CEILING) == ""
    assert guidance.fid_vs_accuracy_plot(UNCONDITIONAL, tmp_path / "p.png", FAMILIES, CEILING) is None
    assert guidance.figures(UNCONDITIONAL, FAMILIES, tmp_path, CEILING) == {}
    assert list(tmp_path.iterdir()) == []


def test_a_schedule_without_a_finite_fid():
    rows = [_row("s4", "euler", 10, w, NAN, 0.5) for w in (0.0, 1.0)]
    (b,) = guidance.best_scales(rows, None)
    assert b["row"] is None and b["w"] is None and b["breaks"]
    lines = guidance.guidance_sentences([b])
    assert lines == [
        "s4: no guided row has a finite FID.",
        "s4: euler (10 steps, uniform) gives no finite FID at any w.",
    ]
    assert math.isnan(b["curves"][0]["top_fid"])
