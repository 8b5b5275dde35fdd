"""The study report: pure functions from MLflow runs to a table, a pivot and figures.

It reads only MLflow (the parent run's ``study/definition.json`` and its child runs), so a study
run anywhere can be reported from any machine that reaches its tracking server, also while it is
still running (cells without a finished seed show n = 0).

Per cell: the metric's mean ± sample standard deviation over finished seeds (n), the 95 %
confidence interval of the mean (Student t, n - 1 degrees of freedom), the difference to the
reference cell with Welch's t-test p-value (``scipy.stats.ttest_ind(equal_var=False)``), train /
test accuracy, ``fit_time_s``, parameter count, epochs run, failed seeds, and the published figure
with measured - published.
"""

from __future__ import annotations

import json
import math
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cnnbench.errors import ConfigError

FORMATS = ("table", "md", "csv", "json")
DEFINITION = "study/definition.json"
LOG_X_SPAN = 50.0  # a numeric axis spanning this factor or more is plotted on a log scale


@dataclass
class CellResult:
    label: str
    axes: dict[str, Any]
    variant: str | None
    values: list[float]  # the metric, one per finished seed (seed order)
    seeds: list[int]
    runs: list[Any]  # the finished MLflow runs
    failed: dict[int, str] = field(default_factory=dict)  # seed -> reason
    running: list[int] = field(default_factory=list)


@dataclass
class Report:
    definition: dict[str, Any]
    parent_run_id: str
    status: str
    cells: list[CellResult]
    table: pd.DataFrame  # one row per cell, numeric columns
    pivot: pd.DataFrame | None
    best: str | None

    @property
    def metric(self) -> str:
        return self.definition["metric"]

    @property
    def title(self) -> str:
        d = self.definition
        budget = d.get("budget") or "default"
        partial = "" if self.status == "FINISHED" else f" [{self.status.lower()}: partial]"
        return f"study {d['study_id']} (budget {budget}): {d['metric']} over seeds {d['seeds']}{partial}"


def summarise(values: list[float]) -> dict[str, float]:
    """n, mean, sample std, and the 95 % t confidence interval of the mean."""
    from scipy import stats

    a = np.asarray(values, dtype=float)
    n = len(a)
    out = {"n": n, "mean": float(a.mean()) if n else math.nan, "std": float(a.std(ddof=1)) if n > 1 else math.nan,
           "ci_low": math.nan, "ci_high": math.nan}
    if n > 1:
        half = float(stats.t.ppf(0.975, n - 1)) * out["std"] / math.sqrt(n)
        out["ci_low"], out["ci_high"] = out["mean"] - half, out["mean"] + half
    return out


def welch_p(a: list[float], b: list[float]) -> float:
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return math.nan
    import warnings

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # identical values: scipy warns and answers nan
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def find_parent(client, ref: str, *, experiment: str | None = None) -> str:
    """A parent run id from a run id, or the newest parent whose study id is ``ref``."""
    from mlflow.exceptions import MlflowException

    if len(ref) == 32 and all(c in "0123456789abcdef" for c in ref):
        try:
            client.get_run(ref)
            return ref
        except MlflowException:
            pass
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        ids = [exp.experiment_id] if exp else []
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    query = f"tags.`cnnbench.study.id` = {_literal(ref)} and tags.`cnnbench.role` = {_literal('study')}"
    runs = client.search_runs(ids, filter_string=query, order_by=["attributes.start_time DESC"], max_results=1) if ids else []
    if not runs:
        where = f"experiment {experiment!r}" if experiment else "any experiment of this tracking store"
        raise ConfigError(f"no study run {ref!r} in {where}; give the parent run id, or the study and --budget it ran with")
    return runs[0].info.run_id


def _literal(value: str) -> str:
    """``value`` as an MLflow filter-string literal (:func:`cnnbench.campaign.runs.quote`); one the
    grammar cannot carry is a ConfigError, never a filter that MLflow misreads."""
    from cnnbench.campaign.runs import quote

    try:
        return quote(value)
    except ValueError as err:
        raise ConfigError(f"cannot look up {value!r}: {err}") from None


def build(client, parent_run_id: str, *, status: str | None = None) -> Report:
    """The report of a study's parent run (``status``: the parent's, when it is about to change)."""
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parent = client.get_run(parent_run_id)
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = client.download_artifacts(parent_run_id, DEFINITION, folder)
        except Exception:
            raise ConfigError(f"run {parent_run_id} is not a cnnbench study (it has no {DEFINITION})") from None
        definition = json.loads(Path(path).read_text())
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = {_literal(parent_run_id)} and tags.`cnnbench.role` = {_literal('cell')}",
        max_results=50000)
    by_cell: dict[str, list] = {}
    for run in children:
        by_cell.setdefault(run.data.tags.get("cnnbench.study.cell", ""), []).append(run)
    cells = []
    for c in definition["cells"]:
        runs = by_cell.get(c["label"], [])
        result = CellResult(c["label"], c["axes"], c["variant"], [], [], [])
        for seed in definition["seeds"]:
            mine = sorted((r for r in runs if r.data.tags.get("cnnbench.seed") == str(seed)), key=lambda r: r.info.start_time)
            done = [r for r in mine if r.info.status == "FINISHED"]
            if done:
                run = done[-1]
                result.runs.append(run)
                result.seeds.append(seed)
                result.values.append(float(run.data.metrics.get(definition["metric"], math.nan)))
            elif any(r.info.status == "RUNNING" for r in mine):
                result.running.append(seed)
            elif mine:
                result.failed[seed] = mine[-1].data.tags.get("failure_reason", mine[-1].info.status)
        cells.append(result)
    table, best = _table(definition, cells)
    return Report(definition, parent_run_id, status or parent.info.status, cells, table, _pivot(definition, table), best)


def _mean_of(runs: list, key: str, where: str = "metrics") -> float:
    vals = []
    for r in runs:
        raw = getattr(r.data, where).get(key)
        try:
            vals.append(float(raw))
        except (TypeError, ValueError):
            pass
    return float(np.mean(vals)) if vals else math.nan


def _table(d: dict[str, Any], cells: list[CellResult]) -> tuple[pd.DataFrame, str | None]:
    ref = next((c for c in cells if c.label == d.get("reference")), None)
    rows = []
    for c in cells:
        s = summarise([v for v in c.values if not math.isnan(v)])
        pub = d["published"].get(c.label, math.nan)
        pub_measured = s["mean"] if d.get("published_metric", d["metric"]) == d["metric"] else _mean_of(c.runs, d["published_metric"])
        row = {"cell": c.label, **{f"axis.{k}": v for k, v in c.axes.items()}, "variant": c.variant, **s,
               "diff_ref": math.nan, "p_ref": math.nan,
               "train_accuracy": _mean_of(c.runs, "train_accuracy"), "test_accuracy": _mean_of(c.runs, "test_accuracy"),
               "fit_time_s": _mean_of(c.runs, "fit_time_s"), "params": _mean_of(c.runs, "param_count", "params"),
               "epochs": _mean_of(c.runs, "epochs_completed"), "failed_seeds": len(c.failed), "running_seeds": len(c.running),
               "published": pub, "measured_minus_published": pub_measured - pub if not math.isnan(pub) else math.nan}
        if ref is not None and c is not ref:
            ref_values = [v for v in ref.values if not math.isnan(v)]
            row["diff_ref"] = s["mean"] - (float(np.mean(ref_values)) if ref_values else math.nan)
            row["p_ref"] = welch_p([v for v in c.values if not math.isnan(v)], ref_values)
        rows.append(row)
    table = pd.DataFrame(rows)
    scored = table[table["n"] > 0]
    best = None
    if len(scored):
        idx = scored["mean"].idxmax() if d.get("goal", "max") == "max" else scored["mean"].idxmin()
        best = str(table.loc[idx, "cell"])
    table.insert(0, "best", table["cell"] == best)
    return table, best


def _pivot(d: dict[str, Any], table: pd.DataFrame) -> pd.DataFrame | None:
    """Two axes (two grid axes, or one grid axis x the variants) laid out as a table of mean ± std."""
    axes = [f"axis.{a.split('.', 1)[1] if a.startswith(('model.', 'data.')) else a}" for a in d["axes"]]
    if len(axes) == 2 and not d["has_variants"]:
        rows, cols = axes
    elif len(axes) == 1 and d["has_variants"]:
        rows, cols = axes[0], "variant"
    else:
        return None
    cell = table.apply(lambda r: _pm(r["mean"], r["std"], r["n"]), axis=1)
    frame = table.assign(value=cell)
    pivot = frame.pivot(index=rows, columns=cols, values="value")
    order_r = list(dict.fromkeys(frame[rows]))
    order_c = list(dict.fromkeys(frame[cols]))
    pivot = pivot.reindex(index=order_r, columns=order_c)
    pivot.index.name = rows.removeprefix("axis.")
    pivot.columns.name = cols.removeprefix("axis.")
    return pivot


def published_order(report: Report) -> tuple[int, int, float]:
    """How far the measured figures rank the cells as the published ones do: (pairs in the published
    order, pairs compared, Kendall's tau-b). Only cells with both a published and a measured figure
    count, and pairs whose published figures tie are left out - the reading a quick budget can
    honestly give when its absolute numbers are far from a faithful run's."""
    t = report.table
    pub = t["published"].to_numpy(dtype=float)
    meas = pub + t["measured_minus_published"].to_numpy(dtype=float)
    keep = ~(np.isnan(pub) | np.isnan(meas))
    pub, meas = pub[keep], meas[keep]
    agree = total = 0
    for i in range(len(pub)):
        for j in range(i + 1, len(pub)):
            if pub[i] == pub[j]:
                continue
            total += 1
            agree += int(np.sign(meas[i] - meas[j]) == np.sign(pub[i] - pub[j]))
    tau = math.nan
    if total:
        from scipy.stats import kendalltau

        tau = float(kendalltau(pub, meas).statistic)
    return agree, total, tau


def _num(v: float, digits: int = 4) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _pm(mean: float, std: float, n: int) -> str:
    if not n:
        return "—"
    return f"{mean:.4f} ± {std:.4f}" if n > 1 else f"{mean:.4f}"


def display_frame(report: Report) -> pd.DataFrame:
    """The table as text columns, the way the terminal and Markdown show it."""
    t, m = report.table, report.metric
    out = pd.DataFrame({
        "": np.where(t["best"], "*", ""),
        "cell": t["cell"],
        "n": t["n"].astype(int).astype(str),
        f"{m} mean ± std": [_pm(a, b, n) for a, b, n in zip(t["mean"], t["std"], t["n"])],
        "95% CI": [f"[{lo:.4f}, {hi:.4f}]" if not math.isnan(lo) else "" for lo, hi in zip(t["ci_low"], t["ci_high"])],
    })
    if report.definition.get("reference"):
        out["Δ ref"] = [f"{v:+.4f}" if not math.isnan(v) else ("ref" if c == report.definition["reference"] else "")
                        for v, c in zip(t["diff_ref"], t["cell"])]
        out["p (Welch)"] = [_p(v) for v in t["p_ref"]]
    out["train_acc"] = [_num(v) for v in t["train_accuracy"]]
    out["test_acc"] = [_num(v) for v in t["test_accuracy"]]
    out["fit_time_s"] = [_num(v, 2) for v in t["fit_time_s"]]
    out["params"] = ["" if math.isnan(v) else f"{int(v):,}" for v in t["params"]]
    out["epochs"] = [_num(v, 1) for v in t["epochs"]]
    out["failed"] = [str(int(v)) if v else "" for v in t["failed_seeds"]]
    if t["running_seeds"].any():
        out["running"] = [str(int(v)) if v else "" for v in t["running_seeds"]]
    if report.definition["published"]:
        out["published"] = [_num(v) for v in t["published"]]
        out["meas − pub"] = [f"{v:+.4f}" if not math.isnan(v) else "" for v in t["measured_minus_published"]]
    return out


def _p(p: float) -> str:
    if math.isnan(p):
        return ""
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


def render(report: Report, fmt: str = "table") -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown --format {fmt!r}; accepted: {', '.join(FORMATS)}")
    if fmt == "csv":
        return report.table.to_csv(index=False)
    if fmt == "json":
        return report.table.to_json(orient="records", indent=2)
    frame = display_frame(report)
    notes = _notes(report)
    if fmt == "md":
        parts = [f"# {report.title}", "", _markdown(frame)]
        if report.pivot is not None:
            parts += ["", f"**{report.metric}** by {report.pivot.index.name} x {report.pivot.columns.name}", "",
                      _markdown(report.pivot.reset_index().fillna("—").astype(str))]
        parts += ["", *[f"- {n}" for n in notes]]
        return "\n".join(parts) + "\n"
    parts = [report.title, frame.to_string(index=False)]
    if report.pivot is not None:
        parts += ["", f"{report.metric} by {report.pivot.index.name} (rows) x {report.pivot.columns.name} (columns):",
                  report.pivot.fillna("—").to_string()]
    parts += [f"  {n}" for n in notes]
    return "\n".join(parts) + "\n"


def _notes(report: Report) -> list[str]:
    d = report.definition
    notes = []
    if report.best:
        notes.append(f"best cell (*) by mean {d['metric']} ({'higher' if d.get('goal', 'max') == 'max' else 'lower'} is better): {report.best}")
    if d.get("reference"):
        notes.append(f"Δ ref and p: difference of means to {d['reference']!r} and Welch's t-test p-value (n >= 2 each)")
    if d["published"]:
        notes.append(f"published: {d.get('published_source') or 'the study file'} ({d.get('published_metric', d['metric'])})")
        agree, total, tau = published_order(report)
        if total:
            notes.append(f"order vs published: {agree} of {total} cell pairs ranked as published (Kendall tau {tau:+.2f})")
    for c in report.cells:
        for seed, reason in c.failed.items():
            notes.append(f"failed: {c.label} / seed {seed}: {reason.splitlines()[0][:160] if reason else 'unknown'}")
    return notes


def _markdown(frame: pd.DataFrame) -> str:
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in row.tolist()) + " |")
    return "\n".join(lines)


# -- figures ---------------------------------------------------------------------------------
def figures(report: Report, client, folder: Path) -> list[Path]:
    """PNG figures: bar chart, learning curves, metric / fit time vs each numeric axis, heatmap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    folder.mkdir(parents=True, exist_ok=True)
    t, m, d = report.table, report.metric, report.definition
    written = []
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(t) + 2), 4))
    x = np.arange(len(t))
    ax.bar(x, t["mean"].fillna(0), yerr=t["std"].fillna(0), capsize=3, color=np.where(t["best"], "tab:orange", "tab:blue"))
    if d["published"]:
        ax.scatter(x, t["published"], marker="x", color="black", zorder=3, label=f"published ({d.get('published_metric', m)})")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xticks(x, t["cell"], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(f"{m} (mean ± std over seeds)")
    ax.set_title(textwrap.fill(report.title, 60), fontsize=9)
    written.append(_save(fig, folder / "metric_by_cell.png"))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c in report.cells:
        curves = [[p.value for p in sorted(client.get_metric_history(r.info.run_id, "val_accuracy"), key=lambda p: p.step)]
                  for r in c.runs]
        curves = [cv for cv in curves if cv]
        if not curves:
            continue
        width = min(len(cv) for cv in curves)
        a = np.array([cv[:width] for cv in curves])
        epochs = np.arange(1, width + 1)
        line, = ax.plot(epochs, a.mean(0), marker="o", ms=3, label=c.label)
        if len(a) > 1:
            ax.fill_between(epochs, a.min(0), a.max(0), alpha=0.15, color=line.get_color())
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("val_accuracy (mean over seeds, band: min-max)")
    ax.legend(fontsize=7)
    written.append(_save(fig, folder / "learning_curves.png"))

    numeric = [a for a in t.columns if a.startswith("axis.") and _is_numeric(t[a])]
    for axis in numeric:
        others = [a for a in t.columns if a.startswith("axis.") and a != axis] + (["variant"] if d["has_variants"] else [])
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        groups = t.groupby([t[o].astype(str) for o in others], sort=False) if others else [("", t)]
        for key, g in groups:
            g = g.sort_values(axis)
            name = ", ".join(key) if isinstance(key, tuple) else str(key)
            left.errorbar(g[axis], g["mean"], yerr=g["std"].fillna(0), marker="o", capsize=3, label=name or None)
            right.plot(g[axis], g["fit_time_s"], marker="o", label=name or None)
        values = t[axis].astype(float)
        for a_ in (left, right):
            if values.min() > 0 and values.max() / values.min() >= LOG_X_SPAN:
                a_.set_xscale("log")
            a_.set_xlabel(axis.removeprefix("axis."))
        left.set_ylabel(m)
        right.set_ylabel("fit_time_s")
        if others:
            left.legend(fontsize=7)
        written.append(_save(fig, folder / f"vs_{axis.removeprefix('axis.')}.png"))
    if len(numeric) == 2:
        # one heatmap per combination of the other axes / variants: pivoting the whole table would put
        # several cells on one square (domain-shift: ratio x data_per_class for each of three variants)
        others = [a for a in t.columns if a.startswith("axis.") and a not in numeric] + (["variant"] if d["has_variants"] else [])
        groups = list(t.groupby([t[o].astype(str) for o in others], sort=False)) if others else [("", t)]
        fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 5), squeeze=False)
        for ax, (key, g) in zip(axes[0], groups):
            piv = g.pivot_table(index=numeric[0], columns=numeric[1], values="mean", aggfunc="mean")
            im = ax.imshow(piv.values.astype(float), cmap="viridis", aspect="auto")
            ax.set_xticks(range(len(piv.columns)), [str(v) for v in piv.columns])
            ax.set_yticks(range(len(piv.index)), [str(v) for v in piv.index])
            ax.set_xlabel(numeric[1].removeprefix("axis."))
            ax.set_ylabel(numeric[0].removeprefix("axis."))
            if others:
                ax.set_title(", ".join(key) if isinstance(key, tuple) else str(key), fontsize=9)
            for (i, j), v in np.ndenumerate(piv.values.astype(float)):
                if not math.isnan(v):
                    ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="white", fontsize=8)
            fig.colorbar(im, ax=ax, label=m)
        written.append(_save(fig, folder / "heatmap.png"))
    return written


def _is_numeric(col: pd.Series) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in col)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def log_to_parent(client, parent_run_id: str, report: Report) -> None:
    """``report/report.md``, ``report/cells.csv`` and ``report/*.png`` on the parent run, plus the
    best cell as a tag."""
    with tempfile.TemporaryDirectory(prefix="cnnbench-report-") as tmp:
        folder = Path(tmp) / "report"
        pngs = figures(report, client, folder)
        md = render(report, "md") + "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in pngs) + "\n"
        (folder / "report.md").write_text(md)
        (folder / "cells.csv").write_text(render(report, "csv"))
        client.log_artifacts(parent_run_id, str(folder), artifact_path="report")
    from mlflow.entities import Metric, RunTag

    tags = [RunTag("cnnbench.study.best_cell", report.best)] if report.best else []
    metrics = []
    agree, total, tau = published_order(report) if report.definition["published"] else (0, 0, math.nan)
    if total:
        now = int(time.time() * 1000)
        metrics = [Metric("published_pairs_in_order", agree / total, now, 0)]
        if not math.isnan(tau):
            metrics.append(Metric("published_kendall_tau", tau, now, 0))
    if tags or metrics:
        client.log_batch(parent_run_id, metrics=metrics, tags=tags)
