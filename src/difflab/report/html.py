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

from difflab.report.analysis import ADAPTIVE_STEPS, COLUMNS, label, row_id, summary_sentences, tie_count_lines

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
  color:#222;padding:0 1em}
h1{margin-bottom:.2em}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f3f3f3;position:sticky;top:0}
td.t{text-align:left}
td.sig{font-weight:600;background:#fdebd0}
td.tie{color:#777}
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


def _pm(d: dict) -> str:
    return f"{d['fid_diff']:+.3g} [{d['diff_lo']:+.3g}, {d['diff_hi']:+.3g}]"


def _budget_tables(summary: Sequence[dict]) -> list[str]:
    """Per budget: the best row, then every other row with its paired difference to the best."""
    parts = []
    for s in summary:
        if s["best"] is None:
            continue
        b = s["best"]
        n_tied = len(s["tied"])
        body = [
            f"<tr class='best'><td class='t'>{html.escape(row_id(b))}</td><td>{b['nfe']:.0f}</td>"
            f"<td>{b['fid']:.4g}</td><td class='t'>best</td><td></td><td></td></tr>"
        ]
        for o in s["others"]:
            r = o["row"]
            cls = "tie" if not o["separated"] else ""
            verdict = (
                "cannot be separated" if not o["separated"] else "worse" if o["fid_diff"] > 0 else "better"
            )
            tds = [
                f"<td class='t'>{html.escape(row_id(r))}</td><td>{r['nfe']:.0f}</td><td>{r['fid']:.4g}</td>",
                f"<td class='t {cls}'>{_pm(o)}</td><td>{o['p_value']:.2g}</td>",
                f"<td class='t {cls}'>{verdict}</td>",
            ]
            body.append(f"<tr>{''.join(tds)}</tr>")
        parts.append(
            f"<details><summary>NFE &le; {s['budget']:.0f}: best {html.escape(row_id(b))} "
            f"(FID {b['fid']:.4g}); {n_tied} of {s['n_candidates'] - 1} others cannot be separated</summary>"
            "<table><thead><tr><th>row</th><th>nfe</th><th>fid</th><th>FID &minus; best [95%]</th>"
            f"<th>p</th><th>verdict</th></tr></thead><tbody>{''.join(body)}</tbody></table></details>"
        )
    return parts


def _matrix_table(matrix: dict) -> list[str]:
    """Rows: ODE solvers; columns: schedule pairs; cells: paired FID difference, Holm-significant bold."""
    if not matrix or not matrix["cells"]:
        return []
    pairs = list(dict.fromkeys((c["schedule_a"], c["schedule_b"]) for c in matrix["cells"]))
    cells = {(c["solver"], c["schedule_a"], c["schedule_b"]): c for c in matrix["cells"]}
    head = "<th>solver</th><th>steps</th><th>nfe</th>" + "".join(
        f"<th>{html.escape(a)} &minus; {html.escape(b)}</th>" for a, b in pairs
    )
    body = []
    for name, steps, nfe in matrix["solvers"]:
        tds = ""
        for a, b in pairs:
            c = cells.get((name, a, b))
            if c is None:
                tds += "<td>&ndash;</td>"
            else:
                cls = "sig" if c["significant"] else "tie"
                tds += f"<td class='{cls}'>{_pm(c)}{' *' if c['significant'] else ''}</td>"
        body.append(f"<tr><td class='t'>{html.escape(name)}</td><td>{steps}</td><td>{nfe:.0f}</td>{tds}</tr>")
    n_sig = sum(c["significant"] for c in matrix["cells"])
    return [
        f"<h2>Schedules compared, ODE solvers at NFE &le; {matrix['budget']:.0f}</h2>",
        "<p>For each fixed-step ODE solver at its largest step count within the budget, the paired FID "
        "difference between every two schedules (same noise per sample, so the shared noise cancels) "
        f"with its 95% interval. <b>*</b>: significant at a family-wise 5% with Holm's correction over "
        f"the {matrix['n_pairs']} pairs shown ({n_sig} significant); p-values from the paired bootstrap's "
        "standard error (normal approximation). Negative: the first schedule scores the lower FID.</p>",
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>",
    ]


def render(
    rows: Sequence[dict],
    summary: Sequence[dict],
    figures: dict[str, tuple[str | Path, str]],
    *,
    cfg: dict,
    nll: dict[str, dict],
    frontier: Sequence[dict],
    matrix: dict | None = None,
    ties: Sequence[dict] = (),
    invariance: str = "",
    families: dict[str, dict] | None = None,
    data_meta: dict | None = None,
    grids: dict[str, str | Path] | None = None,
    seeds: Sequence[str] = (),
    sections: Sequence[str] = (),
    every_row: Sequence[dict] | None = None,
    title: str = "difflab: noise schedules x reverse solvers",
) -> str:
    """The report's HTML text. ``summary``: ``analysis.budget_summary`` with a pairing;
    ``frontier``: ``analysis.plausible_frontier``; ``matrix``: ``analysis.schedule_matrix``;
    ``ties``: ``analysis.tie_counts``; ``families``: ``analysis.solver_families``; ``figures``: name ->
    (png path, caption); ``grids``: caption -> png; ``seeds``: sentences on what survives training
    noise; ``sections``: further HTML sections (training or sampling?, guidance) placed after the
    figures. ``rows``: the main slice (``analysis.main_slice``); ``every_row``: all rows of the table
    (default ``rows``)."""
    best_ids = {id(s["best"]) for s in summary if s["best"] is not None}
    plaus_ids = {id(r) for r in frontier}
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
        "among the pairs that fit, and the rows it cannot be separated from. Every row draws sample i from "
        "the same noise, so two rows are compared by a paired bootstrap of their FID difference (the same "
        "resampled sample indices for both, against the fixed reference statistics): a row cannot be "
        "separated from the best when the 95% interval of the difference contains 0. Each row's own FID "
        "interval is a bootstrap 95% interval over samples.</p>",
        "<ul class='sum'>"
        + "".join(f"<li>{html.escape(s)}</li>" for s in summary_sentences(summary))
        + "</ul>",
    ]
    if seeds:
        parts.append(
            "<h3>Training seeds</h3><ul class='sum'>"
            + "".join(f"<li>{html.escape(t)}</li>" for t in seeds)
            + "</ul>"
        )
    if families:
        groups: dict[str, list[str]] = {}
        for name, f in families.items():
            if any(r["solver"] == name for r in rows):
                groups.setdefault(f["group"], []).append(name)
        text = "; ".join(f"<b>{html.escape(g)}</b>: {html.escape(', '.join(v))}" for g, v in groups.items())
        parts.append(
            f"<p>Solvers by family (from their specs; the figures group them the same way): {text}.</p>"
        )
    if invariance:
        parts.append(f"<p>{html.escape(invariance)}</p>")
    if ties:
        parts += [
            "<p>What the pairing changes (rows tied with the best per budget, old overlap rule vs the "
            "paired test):</p>",
            "<ul class='sum'>"
            + "".join(f"<li>{html.escape(t)}</li>" for t in tie_count_lines(ties))
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
    parts += [
        "<h2>Pareto frontier of FID vs NFE</h2>",
        "<p>Rows that no cheaper-or-equal row beats by a paired 95% interval of the difference excluding 0 "
        "(bold green: best per budget).</p>",
        _table(frontier, COLUMNS[:7] + ("solver_error",), classes),
        "<h2>Paired differences to the best, per NFE budget</h2>",
        "<p>FID(row) &minus; FID(best) with its paired bootstrap 95% interval (bias-shifted like each row's "
        "own interval; p from the bootstrap standard error). Also in <code>paired.csv</code>.</p>",
        *_budget_tables(summary),
        *_matrix_table(matrix),
    ]
    for key, (png, caption) in figures.items():
        if png is None:
            continue
        parts.append(
            f"<figure id='{html.escape(key)}'><img alt='{html.escape(caption)}' src='{data_uri(png)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    parts += list(sections)
    nll_rows = [{"schedule": s, **v} for s, v in nll.items()]
    if nll_rows:
        parts += [
            "<h2>Negative log-likelihood (bits/dim, held-out)</h2>",
            _table(
                nll_rows, ["schedule", "bpd", "bpd_se", "n_seeds", "n_images", "nfe_per_image", "divergence"]
            ),
        ]
    parts += [
        "<h2>Every row</h2>",
        "<p>steps = adaptive: rk45 (its NFE is measured). solver_error: mean RMS distance to a high-accuracy "
        "rk45 solution from the same noise, in model space [-1, 1]; empty for stochastic solvers.</p>",
        _table(
            every_row or rows,
            COLUMNS
            + ("nll_bpd_se", "sample_schedule", "grid", "guidance_scale", "seed", "precision", "recall")
            + ("class_accuracy", "invariance_error"),
            classes,
        ),
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
