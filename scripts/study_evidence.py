"""Run built-in study recipes at a budget and write each printed report to docs/studies/<name>.md.

    python scripts/study_evidence.py stride-vs-maxpool depth --data-dir /path/with/cifar-10-batches-py
    python scripts/study_evidence.py --all-cifar --data-dir DIR --workers 2

Each page states the command, the machine (CPU model, cores, load average before and after), the
torch/Python versions and the wall time, then the report exactly as `cnnbench study run --format md`
printed it. A page that already has a hand-written "## Measured vs published" section keeps it.
A summary line per recipe (name, runs, wall time) is appended to docs/studies/README.md's table by
hand: this script prints it.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "studies"
CNNBENCH = str(Path(sys.executable).with_name("cnnbench"))
KEEP = "## Measured vs published"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cifar_recipes() -> list[str]:
    from cnnbench.study import catalog, definition

    names = []
    for entry in catalog.entries():
        if not entry.distribution.startswith("cnnbench") or entry.name == "digits-optimizers":
            continue
        study = definition.load(entry.name, entry.text, budget="quick")
        if study.cells and study.cells[0].config.data.name == "cifar10":
            names.append(entry.name)
    return names


def page_path(name: str, budget: str) -> Path:
    """docs/studies/NAME.md for the quick budget (every recipe has one), NAME-BUDGET.md for others."""
    return DOCS / (f"{name}.md" if budget == "quick" else f"{name}-{budget}.md")


def run(name: str, args) -> tuple[float, str]:
    store = Path(args.store) / name
    store.mkdir(parents=True, exist_ok=True)
    cmd = [CNNBENCH, "study", "run", name, "--budget", args.budget, "--workers", str(args.workers),
           "--tracking-uri", f"sqlite:///{store}/mlflow.db", "--storage", f"sqlite:///{store}/optuna.db",
           "--device", "cpu", "--format", "md"]
    if args.data_dir:
        cmd += ["--set", f"data_dir={args.data_dir}"]
    for s in args.set:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=store, env=env)
    wall = time.perf_counter() - t0
    load1 = os.getloadavg()
    if out.returncode != 0:
        print(f"{name}: exit {out.returncode}\n{out.stderr[-3000:]}", file=sys.stderr)
        return wall, ""
    import torch

    shown = " ".join(shlex.quote(c) for c in ["cnnbench", *cmd[1:]]).replace(str(store), "STORE")
    header = (f"# {name} — measured at `--budget {args.budget}`\n\n"
              f"Machine: {cpu_model()}, {os.cpu_count()} logical cores, load average "
              f"{load0[0]:.2f} before / {load1[0]:.2f} after the run; torch {torch.__version__} on CPU, "
              f"Python {platform.python_version()}, `OMP_NUM_THREADS={args.threads}`.\n\n"
              f"```\nOMP_NUM_THREADS={args.threads} {shown}\n```\n\n"
              f"Wall time: {wall // 60:.0f} min {wall % 60:.0f} s ({wall:.0f} s), {args.workers} worker(s).\n\n")
    page = page_path(name, args.budget)
    kept = ""
    if page.exists() and KEEP in page.read_text():
        kept = "\n" + page.read_text()[page.read_text().index(KEEP):]
    page.write_text(header + out.stdout.rstrip() + "\n" + kept)
    return wall, out.stdout


def rerender(name: str, args) -> bool:
    """Replace a page's report with `cnnbench study report` read from the run's store (no training):
    for when the report grows a line after the runs were made. The header (command, machine, wall
    time) is kept as it was measured."""
    page = page_path(name, args.budget)
    store = Path(args.store) / name
    cmd = [CNNBENCH, "study", "report", name, "--budget", args.budget, "--tracking-uri",
           f"sqlite:///{store}/mlflow.db", "--format", "md", "--log"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=store)
    if out.returncode != 0 or not page.exists():
        print(f"{name}: exit {out.returncode}\n{out.stderr[-3000:]}", file=sys.stderr)
        return False
    text = page.read_text()
    header = text[: text.index("\n# study ") + 1]
    kept = "\n" + text[text.index(KEEP):] if KEEP in text else ""
    page.write_text(header + out.stdout.rstrip() + "\n" + kept)
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*")
    p.add_argument("--all-cifar", action="store_true", help="every built-in recipe on CIFAR-10")
    p.add_argument("--budget", default="quick")
    p.add_argument("--data-dir", default=None, help="folder holding cifar-10-batches-py (or the dataset's files)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each worker")
    p.add_argument("--set", action="append", default=[], help="extra --set KEY=VALUE for every recipe")
    p.add_argument("--store", default=tempfile.mkdtemp(prefix="cnnbench-evidence-"))
    p.add_argument("--rerender", action="store_true",
                   help="re-read each report from --store (no training) and keep the measured header")
    args = p.parse_args()
    names = (cifar_recipes() if args.all_cifar else []) + args.names
    DOCS.mkdir(parents=True, exist_ok=True)
    for name in names:
        if args.rerender:
            print(f"{name}\t{'ok' if rerender(name, args) else 'FAILED'}", flush=True)
            continue
        wall, report = run(name, args)
        status = "ok" if report else "FAILED"
        print(f"{name}\t{status}\t{wall:.0f} s", flush=True)


if __name__ == "__main__":
    main()
