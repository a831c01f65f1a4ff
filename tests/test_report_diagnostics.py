"""What a run can conclude, as the report states it (issue 19): each row against its own network's
converged solution of the same kind, marked and named where it beats it; per network the converged
FIDs, the real-data floor at the rows' n, memorization and whether training still improved, in
results/diagnostics.json and the first section; the train stage's loss curves behind the last."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from difflab.metrics.diagnostics import floor_at_n, network_diagnostics
from difflab.report import build, text
from difflab.report.sections import SECTIONS, budgets, network_first
from difflab.results import Row

N, D = 200, 8  # samples per row, feature dimension
SPEC_KEYS = {"converged_ode_fid", "converged_sde_fid", "floor_fid", "memorization_ratio", "copy_fraction",
             "loss_still_falling"}  # fmt: skip
# one network per schedule (s1, s2): fixed-step ODE rows, the converged PF-ODE (rk45) and the converged
# reverse SDE (ddpm at 100 steps, sample.converged_sde) with a 20-step ddpm row beside it
SETTINGS = [("euler", 10, 11, 6.0), ("heun", 10, 21, 4.0), ("rk45", 0, 40, 5.0), ("ddpm", 20, 21, 7.0),
            ("ddpm", 100, 101, 5.5)]  # fmt: skip
CFG = {
    "experiment": "unit", "data": {"name": "digits"}, "schedules": ["s1", "s2"], "seeds": [0], "seed": 0,
    "solvers": ["euler", "heun", "ddpm", "rk45"], "evaluate": {"bootstrap": 20},
    "sample": {"steps": [10, 20], "grids": ["logsnr"], "converged_sde": {"solver": "ddpm", "steps": 100}},
}  # fmt: skip


def _seed_rows() -> list[Row]:
    return [
        Row(schedule=s, solver=v, steps=k, sample_schedule=s, grid="logsnr", nfe=float(nfe),
            fid=fid + (s == "s2"), fid_lo=fid - 0.5, fid_hi=fid + 0.5, n_samples=N,
            feature_extractor="classifier")
        for s in CFG["schedules"] for v, k, nfe, fid in SETTINGS
    ]  # fmt: skip


def _replicates(rows, n_boot: int = 400) -> dict:
    """Replicates sharing one resampling term (the same noise in every row), plus 0.05 of their own:
    every paired difference is resolved to about +-0.15."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal(n_boot)
    return {r.seed_key: r.fid + 0.1 + 0.5 * z + 0.05 * rng.standard_normal(n_boot) for r in rows}


SEED_ROWS = _seed_rows()
ROWS, PAIRING = build.comparison(SEED_ROWS, _replicates(SEED_ROWS), CFG)


def _row(model, solver, steps) -> Row:
    return next(r for r in ROWS if (r.model, r.solver, r.steps) == (model, solver, steps))


def test_each_row_is_paired_with_its_own_networks_converged_solution_of_its_kind():
    heun, euler, rk45 = _row("s1", "heun", 10), _row("s1", "euler", 10), _row("s1", "rk45", 0)
    assert heun.vs_converged == pytest.approx(-1.0) and heun.vs_converged_hi < 0 and heun.beats_converged
    assert (
        euler.vs_converged == pytest.approx(1.0) and euler.vs_converged_lo > 0 and not euler.beats_converged
    )
    assert rk45.vs_converged == 0 and not rk45.beats_converged  # its own partner
    sde = _row("s2", "ddpm", 20)  # an SDE row against the network's 100-step ddpm, not against rk45
    assert sde.vs_converged == pytest.approx(1.5) and not sde.beats_converged


def test_a_budgets_best_row_that_beats_its_converged_solution_is_marked_and_named(tmp_path):
    ctx = build.context(ROWS, PAIRING, CFG, {"plots": tmp_path / "plots"})
    summary = " ".join(text.summary_sentences(budgets(ROWS, ctx)))
    # NFE <= 21: heun (4.0) is best and beats rk45; the best row there that does not is euler (6.0)
    assert "NFE <= 21: best s1 x heun" in summary and "beats its own network's converged solution" in summary
    assert "-1 [" in summary and "does not: s1 x euler (10 steps, NFE 11), FID 6" in summary
    assert "does not: s1 x rk45 (adaptive, NFE 40), FID 5" in summary  # the largest budget
    shown = build.write_page(ROWS, ctx, tmp_path)
    every = next(s for s in shown if s.title == "Every row").tables[0]
    beats = [row[every.header.index("beats_converged")] for row in every.rows]
    assert beats == [r.beats_converged for r in ROWS] and sum(beats) == 2  # s1 and s2 heun
    budget_cells = [
        c for s in shown for t in s.tables for c in (row[0] for row in t.rows) if isinstance(c, str)
    ]
    assert "s1/heun/10/logsnr (beats converged)" in budget_cells


def _inputs(tmp_path, falling: dict[str, bool]) -> dict:
    """The prepare stage's features and splits, the rk45 rows' samples (s1: copies of training images,
    s2: fresh images) and the train stage's curves (the validation loss still falling where asked)."""
    rng = np.random.default_rng(1)
    features, data = tmp_path / "features", tmp_path / "data"
    (features / "fid_cache").mkdir(parents=True)
    data.mkdir()
    ref = torch.as_tensor(rng.standard_normal((2000, D)))
    torch.save({"features": ref, "mu": ref.mean(0), "sigma": ref.T.cov()}, features / "fid_cache" / "ref.pt")
    np.save(features / "heldout_features.npy", rng.standard_normal((300, D)).astype(np.float32))
    (features / "floor.json").write_text(json.dumps({"reference_features": "fid_cache/ref.pt"}))
    train, held = (
        rng.integers(0, 17, (400, 1, 4, 4), dtype=np.uint8),
        rng.integers(0, 17, (300, 1, 4, 4), dtype=np.uint8),
    )
    np.save(data / "train_images.npy", train)
    np.save(data / "heldout_images.npy", held)
    (data / "meta.json").write_text(json.dumps({"levels": 17}))
    for model, images in (("s1", train[:N]), ("s2", rng.integers(0, 17, (N, 1, 4, 4), dtype=np.uint8))):
        r = _row(model, "rk45", 0)
        folder = tmp_path / "samples" / "rk45" / "logsnr" / model / "seed_0"
        folder.mkdir(parents=True)
        np.savez(folder / f"{r.stem}.npz", images=images, levels=np.asarray(17))
        steps = np.linspace(100, 2000, 20)
        val = (
            1 + np.exp(-steps / 5000) if falling[model] else 1 + 1e-3 * (-1) ** np.arange(20)
        )  # falling / flat
        curves = {"train": {"step": steps.tolist(), "loss": (val + 0.1).tolist()},
                  "val": {"step": steps.tolist(), "loss": val.tolist()}}  # fmt: skip
        (tmp_path / "models" / model / "seed_0").mkdir(parents=True)
        (tmp_path / "models" / model / "seed_0" / "train_metrics.json").write_text(
            json.dumps({"curves": curves})
        )
    return {k: tmp_path / k for k in ("features", "data", "samples", "models")}


def test_diagnostics_per_network_in_the_first_section_and_diagnostics_json(tmp_path):
    inputs = _inputs(tmp_path, {"s1": True, "s2": False})
    ctx = build.context(ROWS, PAIRING, CFG, {"plots": tmp_path / "plots"})
    ctx = replace(ctx, diagnostics=network_diagnostics(SEED_ROWS, CFG, inputs, budgets(ROWS, ctx)))
    build.write_tables(ROWS, SEED_ROWS, ctx, tmp_path)
    saved = json.loads((tmp_path / "diagnostics.json").read_text())
    nets = saved["networks"]
    assert set(nets) == {"s1/seed_0", "s2/seed_0"} and all(SPEC_KEYS <= set(e) for e in nets.values())
    s1, s2 = nets["s1/seed_0"], nets["s2/seed_0"]
    assert (s1["converged_ode_fid"], s1["converged_sde_fid"], s2["converged_ode_fid"]) == (5.0, 5.5, 6.0)
    held = np.load(inputs["features"] / "heldout_features.npy")
    ref = torch.load(inputs["features"] / "fid_cache" / "ref.pt")["features"]
    floor = floor_at_n(ref, held, N, bootstrap=20, seed=0)  # n: the rows' sample count, below m = 300
    assert s1["floor_n"] == N and s1["floor_fid"] == s2["floor_fid"] == pytest.approx(floor["floor_fid"])
    assert s1["memorization_ratio"] == 0 and s1["copy_fraction"] == 1  # s1's samples are training images
    assert 0.7 < s2["memorization_ratio"] < 1.4 and s2["copy_fraction"] < 0.75
    assert (
        s1["loss_still_falling"] and s1["suggested_max_steps"] == 4000 and s2["loss_still_falling"] is False
    )
    regime = " ".join(saved["regime"])
    assert (
        "s1/seed_0 copies" in regime
        and "s1/seed_0 is still training" in regime
        and "trainer.max_steps=4000" in regime
    )
    assert saved["budgets"][1]["row"] == "s1/heun/10/logsnr" and saved["budgets"][1]["beats_converged"]
    assert SECTIONS[0] is network_first  # the regime comes first
    first = network_first(ROWS, ctx)
    assert first.title.startswith("Network first") and list(first.bullets) == saved["regime"]
    assert [row[0] for row in first.tables[0].rows] == ["s1/seed_0", "s2/seed_0"]
    assert first.figures[0].path.name == "loss_curves.png" and first.figures[0].path.stat().st_size > 0


def test_training_leaves_its_loss_curves_and_a_resumed_run_extends_them(tmp_path, monkeypatch):
    from difflab.config import compose
    from difflab.training import train

    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = compose(["experiment=smoke"])
    cfg["data"] = {"name": "toy2d", "toy": "gaussian_mixture", "n": 500, "batch_size": 64}
    cfg["denoiser"] = {"name": "mlp", "width": 32, "depth": 2, "emb_dim": 16}
    cfg["trainer"].update(max_steps=20, val_every_n_steps=5, log_every_n_steps=5)
    train(cfg, "ve", tmp_path)
    curves = json.loads((tmp_path / "train_metrics.json").read_text())["curves"]
    assert curves["val"]["step"] == [5, 10, 15, 20] and curves["train"]["step"] == [5, 10, 15, 20]
    assert all(np.isfinite(curves[k]["loss"]).all() for k in ("train", "val"))
    cfg["trainer"]["max_steps"] = 30
    resumed = train(cfg, "ve", tmp_path)["curves"]  # from last.ckpt at step 20
    assert (
        resumed["val"]["step"] == [5, 10, 15, 20, 25, 30]
        and resumed["val"]["loss"][:4] == curves["val"]["loss"]
    )
