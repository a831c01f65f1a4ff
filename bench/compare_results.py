"""Compare two runs' results folders value by value: comparison.csv, seeds.csv and paired.csv (the
columns both hold, in any order), metrics.json and diagnostics.json; timings are left out.

    python bench/compare_results.py OLD/results NEW/results

Exit status 0 where every compared value is identical, 1 otherwise (each difference is printed)."""

import argparse
import csv
import json
import sys
from pathlib import Path

TIMINGS = {"seconds_per_sample"}


def _csv(a: Path, b: Path, name: str) -> list[str]:
    old, new = (list(csv.DictReader((d / name).open())) for d in (a, b))
    if len(old) != len(new):
        return [f"{name}: {len(old)} rows against {len(new)}"]
    columns = [c for c in (old[0] if old else {}) if c in (new[0] if new else {}) and c not in TIMINGS]
    pairs = enumerate(zip(old, new))
    bad = [
        f"{name} row {i} {c}: {r[c]!r} != {s[c]!r}" for i, (r, s) in pairs for c in columns if r[c] != s[c]
    ]
    print(f"{name}: {len(old)} rows, {len(columns)} columns compared, {len(bad)} differences")
    return bad


def _untimed(value):
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k not in TIMINGS}
    return [_untimed(v) for v in value] if isinstance(value, list) else value


def _json(a: Path, b: Path, name: str) -> list[str]:
    same = _untimed(json.loads((a / name).read_text())) == _untimed(json.loads((b / name).read_text()))
    print(f"{name}: {'identical' if same else 'differs'} (timings left out)")
    return [] if same else [f"{name} differs"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    args = p.parse_args()
    bad = [
        x for name in ("comparison.csv", "seeds.csv", "paired.csv") for x in _csv(args.old, args.new, name)
    ]
    bad += [x for name in ("metrics.json", "diagnostics.json") for x in _json(args.old, args.new, name)]
    print("\n".join(bad[:50]))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
