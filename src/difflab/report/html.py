"""The local report: one self-contained HTML file (figures embedded as data URIs, inline CSS, no
scripts, no network) holding the conclusions, the table, the figures, the config and versions."""

from __future__ import annotations

import base64
import html
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path

import yaml

from difflab.report.analysis import ADAPTIVE_STEPS, COLUMNS, label, plausible_frontier, summary_sentences

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
  color:#222;padding:0 1em}
h1{margin-bottom:.2em}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f3f3f3;position:sticky;top:0}
td.t{text-align:left}
tr.best td{background:#e5f5e0;font-weight:600}
tr.plaus td{background:#f7fbf4}
.meta{color:#666}
figure{margin:1em 0}
figcaption{color:#555;font-size:13px}
img{max-width:100%}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}
ul.sum li{margin:.35em 0}
details{margin:.5em 0}
"""


def data_uri(png: str | Path | bytes) -> str:
    data = png if isinstance(png, bytes) else Path(png).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def versions() -> dict:
    """Versions of Python and the libraries the numbers depend on, and the git commit."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    libs = (
        "difflab",
        "torch",
        "lightning",
        "torchdiffeq",
        "torch-fidelity",
        "wandb",
        "dvc",
        "hydra-core",
        "numpy",
    )
    for dist in libs:
        try:
            out[dist] = version(dist)  # package metadata: no import of the (heavy) library itself
        except PackageNotFoundError:
            out[dist] = "not installed"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        out["git commit"] = commit.stdout.strip() or "?"
    except Exception:
        out["git commit"] = "?"
    return out


def _cell(v, col: str) -> str:
    if v is None:
        return "&ndash;"
    if col == "steps" and v == ADAPTIVE_STEPS:
        return "adaptive"
    if isinstance(v, float):
        return f"{v:.4g}" if col not in ("nfe",) else f"{v:.0f}"
    return html.escape(str(v))


def _table(rows: Sequence[dict], cols: Sequence[str], classes: dict[int, str] | None = None) -> str:
    classes = classes or {}
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for r in rows:
        cls = classes.get(id(r), "")
        tds = "".join(
            f'<td class="t">{_cell(r.get(c), c)}</td>'
            if c in ("schedule", "solver", "feature_extractor")
            else f"<td>{_cell(r.get(c), c)}</td>"
            for c in cols
        )
        body.append(f'<tr class="{cls}">{tds}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render(
    rows: Sequence[dict],
    summary: Sequence[dict],
    figures: dict[str, tuple[str | Path, str]],
    *,
    cfg: dict,
    nll: dict[str, dict],
    data_meta: dict | None = None,
    grids: dict[str, str | Path] | None = None,
    title: str = "difflab: noise schedules x reverse solvers",
) -> str:
    """The report's HTML text. ``figures``: name -> (png path, caption); ``grids``: caption -> png."""
    best_ids = {id(s["best"]) for s in summary if s["best"] is not None}
    plaus_ids = {id(r) for r in plausible_frontier(rows)}
    classes = {i: "plaus" for i in plaus_ids}
    classes.update({i: "best" for i in best_ids})
    meta = data_meta or {}
    n = sorted({r["n_samples"] for r in rows if r.get("n_samples")})
    fe = sorted({str(r["feature_extractor"]) for r in rows if r.get("feature_extractor")})
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='meta'>experiment <b>{html.escape(str(cfg.get('experiment')))}</b> &middot; dataset "
        f"<b>{html.escape(str(meta.get('dataset', cfg.get('data', {}).get('name'))))}</b> &middot; "
        f"{len(rows)} rows ({len({r['schedule'] for r in rows})} schedules x "
        f"{len({r['solver'] for r in rows})} solvers) &middot; {', '.join(map(str, n))} samples per row "
        f"&middot; FID features: {html.escape(', '.join(fe))}</p>",
        "<h2>What the numbers say</h2>",
        "<p>Per NFE budget (denoiser evaluations per sample, the final denoising included), the lowest FID "
        "among the pairs that fit, and the pairs whose 95% intervals overlap its interval: the data cannot "
        "tell those apart from the best. Intervals are bootstrap 95% intervals over samples.</p>",
        "<ul class='sum'>"
        + "".join(f"<li>{html.escape(s)}</li>" for s in summary_sentences(summary))
        + "</ul>",
    ]
    floor = meta.get("data_floor") or {}
    if floor.get("fid") is not None:
        parts.append(
            f"<p>Real-data floor: the held-out split ({meta.get('n_heldout')} images) against the reference "
            f"({meta.get('n_train')} images) scores FID {floor['fid']:.3g} "
            f"[{floor.get('fid_lo', float('nan')):.3g}, {floor.get('fid_hi', float('nan')):.3g}] "
            "with the same features.</p>"
        )
    frontier = plausible_frontier(rows)
    parts += [
        "<h2>Pareto frontier of FID vs NFE</h2>",
        "<p>Rows that no cheaper-or-equal row beats with a separated 95% interval "
        "(bold green: best per budget).</p>",
        _table(frontier, COLUMNS[:7] + ("solver_error",), classes),
    ]
    for key, (png, caption) in figures.items():
        if png is None:
            continue
        parts.append(
            f"<figure id='{html.escape(key)}'><img alt='{html.escape(caption)}' src='{data_uri(png)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    nll_rows = [{"schedule": s, **v} for s, v in nll.items()]
    if nll_rows:
        parts += [
            "<h2>Negative log-likelihood (bits/dim, held-out)</h2>",
            _table(nll_rows, ["schedule", "bpd", "bpd_se", "n_images", "nfe_per_image", "divergence"]),
        ]
    parts += [
        "<h2>Every row</h2>",
        "<p>steps = adaptive: rk45 (its NFE is measured). solver_error: mean RMS distance to a high-accuracy "
        "rk45 solution from the same noise, in model space [-1, 1]; empty for stochastic solvers.</p>",
        _table(rows, COLUMNS + ("nll_bpd_se",), classes),
    ]
    if grids:
        parts.append("<h2>Samples</h2>")
        for caption, png in grids.items():
            parts.append(
                f"<figure><img alt='{html.escape(caption)}' src='{data_uri(png)}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    parts += [
        "<h2>Configuration</h2>",
        "<details open><summary>params.yaml</summary>"
        f"<pre>{html.escape(yaml.safe_dump(cfg, sort_keys=False))}</pre></details>",
        "<h2>Versions</h2>",
        _table([{"library": k, "version": v} for k, v in versions().items()], ["library", "version"]),
        "</body></html>",
    ]
    return "\n".join(parts)


__all__ = ["render", "data_uri", "versions", "label"]
