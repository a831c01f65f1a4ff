"""The notebooks run top to bottom (nbclient) on small settings; any error fails the test."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

from difflab.results import Row, to_csv

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _execute(name: str, parameters: str, tmp_path) -> nbformat.NotebookNode:
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert first_code.source.startswith("# parameters")
    first_code.source = "# parameters (test)\n" + parameters
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    return nb


def _text(nb) -> str:
    return "\n".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )


def _images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def test_results_notebook_reads_the_comparison(tmp_path):
    rows = []
    for s, offset in (("vp_linear", 0.0), ("flow", 1.0)):
        for v, k in (("euler", 1.0), ("heun", 2.0)):
            for steps in (10, 20):
                fid = 20.0 / steps * k + offset
                rows.append({"schedule": s, "solver": v, "steps": steps, "nfe": k * steps + 1, "fid": fid,
                             "fid_lo": fid - 0.5, "fid_hi": fid + 0.5, "kid_mean": 0.01, "kid_std": 0.001,
                             "nll_bpd": 3.0 + offset, "solver_error": 0.1 / steps, "seconds_per_sample": 1e-3,
                             "n_samples": 100, "feature_extractor": "classifier"})  # fmt: skip
    csv = tmp_path / "comparison.csv"
    csv.write_text(to_csv([Row(sample_schedule=r["schedule"], **r) for r in rows]))
    nb = _execute("results", f"CSV = {str(csv)!r}", tmp_path)
    text = _text(nb)
    assert "8 rows: 2 schedules x 2 solvers" in text
    assert "NFE <= 11: best vp_linear x euler (10 steps, NFE 11)" in text
    assert _images(nb) >= 1


@pytest.mark.slow
def test_schedules_notebook(tmp_path):
    nb = _execute("schedules", "N_POINTS = 50", tmp_path)
    text = _text(nb)
    for name in ("vp_linear", "vp_cosine", "ve", "flow"):
        assert name in text
    assert _images(nb) >= 1


@pytest.mark.slow
def test_solvers_notebook(tmp_path):
    nb = _execute("solvers", "N_PATHS = 8\nN_ERROR = 32\nSTEPS = [4, 16]\nSCHEDULE = 'vp_cosine'", tmp_path)
    assert "dpm_solver_2m" in _text(nb) and _images(nb) >= 1
