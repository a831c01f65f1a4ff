"""The size limits the code keeps (ARCHITECTURE.md): no function in src/ or pipeline/ longer than 60 lines or
taking more than 8 parameters (5 in the report), the report package at most 2,000 lines. The exceptions are
named: SPEC's keyword APIs and a network constructor (its layers are its parameters)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES, MAX_PARAMS, MAX_REPORT_PARAMS, MAX_REPORT_TOTAL = 60, 8, 5, 2000
EXCEPTIONS = {
    "src/difflab/likelihood.py:pf_ode_nll",  # SPEC's signature
    "src/difflab/likelihood.py:bits_per_dim",  # SPEC's signature
    "src/difflab/nets/unet.py:__init__",  # a network constructor
}


def _files():
    return sorted([*(ROOT / "src").rglob("*.py"), *(ROOT / "pipeline").glob("*.py")])


def _params(fn: ast.FunctionDef) -> list[str]:
    a = fn.args
    names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
    return [n for n in names if n not in ("self", "cls")]


def test_functions_within_the_limits():
    over = []
    for path in _files():
        rel = path.relative_to(ROOT).as_posix()
        limit = MAX_REPORT_PARAMS if "/report/" in rel else MAX_PARAMS
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            lines, params = node.end_lineno - node.lineno + 1, len(_params(node))
            if (lines > MAX_LINES or params > limit) and f"{rel}:{node.name}" not in EXCEPTIONS:
                over.append(f"{rel}:{node.lineno} {node.name}: {lines} lines, {params} parameters")
    assert not over, "\n".join(over)


def test_report_package_size():
    total = sum(p.read_text().count("\n") for p in (ROOT / "src/difflab/report").glob("*.py"))
    assert total <= MAX_REPORT_TOTAL, total


def test_the_checker_sees_a_long_function():
    """The walk counts what it should: a 61-line, 9-parameter function is over both limits."""
    body = "\n".join(["    x = 1"] * 60)
    (fn,) = ast.parse(f"def f(a, b, c, d, e, g, h, *args, **kw):\n{body}\n").body
    assert fn.end_lineno - fn.lineno + 1 == 61 and len(_params(fn)) == 9
