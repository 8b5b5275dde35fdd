"""``cnnbench study show``'s wall-time estimate against the walls measured in ``docs/studies``.

For every recipe page measured at ``--budget quick`` (its ``Wall time: ... (N s), W worker(s).``
line and the ``study run`` command that produced it), run ``cnnbench study show NAME --budget quick
--workers W`` (the page's ``--set`` values where their folders exist here) ``--repeats`` times and
take the median estimate; print estimate / measured per study, and how many land within 2x.

    python benchmarks/bench_estimate.py [--repeats 3] [--only depth,l1] [--out results.json]

The measured walls come from the machine each page names (2 cores, ``OMP_NUM_THREADS=1``); run
this on a quiet machine of the same kind, nothing else loading its cores (``show`` times real
training steps).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WALL = re.compile(r"^Wall time: .*?\((\d+) s\), (\d+) worker\(s\)\.", re.M)
COMMAND = re.compile(r"cnnbench study run (\S+) (.*)")
ESTIMATE = re.compile(r"estimate ([\d.]+) (s|min) with --workers (\d+)")


def recipes(only: set[str]) -> list[dict]:
    found = []
    for page in sorted((ROOT / "docs" / "studies").glob("*.md")):
        text = page.read_text()
        wall, command = WALL.search(text), COMMAND.search(text)
        if "--budget quick" not in text.splitlines()[0] or not wall or not command:
            continue
        name, rest = command.group(1), command.group(2).split()
        if only and name not in only:
            continue
        sets = [rest[i + 1] for i, flag in enumerate(rest[:-1]) if flag == "--set"]
        sets = [s for s in sets if not s.startswith("data_dir=") or Path(s.split("=", 1)[1]).exists()]
        found.append({"study": name, "measured_s": int(wall.group(1)), "workers": int(wall.group(2)), "sets": sets})
    return found


def estimate(recipe: dict) -> float:
    cmd = [sys.executable, "-m", "cnnbench.cli", "study", "show", recipe["study"], "--budget", "quick",
           "--workers", str(recipe["workers"])]
    for value in recipe["sets"]:
        cmd += ["--set", value]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    match = ESTIMATE.search(done.stdout)
    if done.returncode != 0 or not match:
        raise RuntimeError(f"{' '.join(cmd)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")
    value = float(match.group(1))
    return value * 60 if match.group(2) == "min" else value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated study names")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for recipe in recipes({s for s in args.only.split(",") if s}):
        try:
            values = [estimate(recipe) for _ in range(args.repeats)]
        except RuntimeError as err:
            print(f"{recipe['study']}: no estimate: {err}", file=sys.stderr)
            continue
        est = statistics.median(values)
        ratio = est / recipe["measured_s"]
        rows.append({**recipe, "estimate_s": est, "estimates_s": values, "ratio": ratio})
        print(f"{recipe['study']:<28} measured {recipe['measured_s']:>5} s  estimate {est:>7.0f} s  ratio {ratio:5.2f}"
              f"{'' if 0.5 <= ratio <= 2 else '  OUTSIDE 2x'}", flush=True)
    within = sum(0.5 <= r["ratio"] <= 2 for r in rows)
    if rows:
        ratios = [r["ratio"] for r in rows]
        print(f"{within} of {len(rows)} within 2x; ratio median {statistics.median(ratios):.2f}, "
              f"min {min(ratios):.2f}, max {max(ratios):.2f} (median of {args.repeats} estimates each)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2))
    return 0 if rows and within == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
