"""The local report: one self-contained HTML page (figures embedded as data URIs, inline CSS, no
scripts, no network) assembled from the sections, with the config and the library versions."""

from __future__ import annotations

import base64
import html
import math
import platform
import subprocess
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml

from difflab.report.sections import Figure, Section, Table

TITLE = "difflab: noise schedules x reverse solvers"
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
p.cap{color:#555;font-size:13px;margin-bottom:0}
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


LIBRARIES = tuple("difflab torch lightning torchdiffeq torch-fidelity wandb dvc hydra-core numpy".split())


def versions() -> dict[str, str]:
    """Versions of Python and the ``LIBRARIES`` the numbers depend on (package metadata, no import),
    and the git commit ("?" without git or a repository)."""
    out = {"python": platform.python_version()}
    for dist in LIBRARIES:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    try:
        cmd = ["git", "rev-parse", "--short", "HEAD"]
        git = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
        out["git commit"] = git.stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        out["git commit"] = "?"
    return out


def cell_text(v) -> str:
    """A cell as plain text: numbers to 4 significant digits, booleans as true/false, none as a dash."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, bool):
        return str(v).lower()
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def table(t: Table) -> str:
    """The one table helper: a caption (the summary of a folded table), the header and the rows;
    text cells left-aligned, numbers right-aligned; ``t.marks`` as row classes."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.header)
    body = []
    for k, row in enumerate(t.rows):
        mark = t.marks[k] if k < len(t.marks) and t.marks[k] else ""
        text = [isinstance(c, str) and not c.isdigit() for c in row]  # a whole number as text: an NFE
        tds = "".join(f"<td{' class=t' * s}>{html.escape(cell_text(c))}</td>" for c, s in zip(row, text))
        body.append(f"<tr class='{mark}'>{tds}</tr>" if mark else f"<tr>{tds}</tr>")
    out = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    if t.folded:
        return f"<details><summary>{html.escape(t.caption)}</summary>{out}</details>"
    return (f"<p class='cap'>{html.escape(t.caption)}</p>" if t.caption else "") + out


def figure(f: Figure) -> str:
    caption = html.escape(f.caption)
    img = f"<img alt='{caption}' src='{data_uri(f.path)}'>"
    return f"<figure id='{html.escape(f.name)}'>{img}<figcaption>{caption}</figcaption></figure>"


def section(s: Section) -> str:
    parts = [f"<h{s.level}>{html.escape(s.title)}</h{s.level}>"] if s.title else []
    parts += [f"<p>{html.escape(p)}</p>" for p in s.paragraphs]
    if s.bullets:
        parts.append("<ul class='sum'>" + "".join(f"<li>{html.escape(b)}</li>" for b in s.bullets) + "</ul>")
    parts += [figure(f) for f in s.figures] + [table(t) for t in s.tables]
    return "\n".join(parts)


def render(sections: Sequence[Section], cfg: Mapping) -> str:
    """The report's HTML: the title, every section in order, then the configuration and versions."""
    dump = html.escape(yaml.safe_dump(dict(cfg), sort_keys=False))
    shown = Table("", ("library", "version"), tuple(versions().items()))
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{TITLE}</title><style>{CSS}</style></head><body><h1>{TITLE}</h1>",
        *(section(s) for s in sections),
        section(Section("Configuration")),
        f"<details open><summary>params.yaml</summary><pre>{dump}</pre></details>",
        section(Section("Versions", tables=(shown,))),
        "</body></html>",
    ]
    return "\n".join(parts)
