"""The study report: pure functions from MLflow runs to a table, a pivot and figures.

It reads only MLflow (the parent run's ``study/definition.json`` and its child runs), so a study
run anywhere can be reported from any machine that reaches its tracking server, also while it is
still running (cells without a finished seed show n = 0).

The statistics are :mod:`cnnbench.study.stats`'s. Per cell: n, mean, sample std and an interval
that stays in the metric's range (a bootstrap over seeds from 3 seeds on; with one seed of a test
accuracy, the binomial interval over the run's test examples; otherwise "n too small"). Each cell
is compared with the study's reference (without one: the best cell with the runner-up), paired
over the seeds both ran (paired t, exact sign-flip), by McNemar's exact test on the per-example
test predictions where one seed is all they share, by Welch's test only where nothing pairs; the
p-values are corrected across the table (Holm by default) and a star needs a corrected p below
alpha with n >= 3. Each comparison also gets its minimum detectable difference (power 0.8) and,
with the study's ``practical_difference``, the seeds it needs; a cell with a published figure gets
whether its seeds are consistent with it. ``alpha``, ``correction`` and ``practical_difference``
come from the study file's ``[report]`` table.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cnnbench.errors import ConfigError
from cnnbench.study import stats as st

FORMATS = ("table", "md", "csv", "json", "html")
DEFINITION = "study/definition.json"
PREDICTIONS = "eval/test_predictions.npz"
LOG_X_SPAN = 50.0  # a numeric axis spanning this factor or more is plotted on a log scale
# --until-decided's settings on the parent run (params): the report's alpha per look comes from them
PARAM_MAX_SEEDS, PARAM_SEED_BATCH, PARAM_LOOKS = "until_decided.max_seeds", "until_decided.seed_batch", "until_decided.looks"


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

    @property
    def by_seed(self) -> dict[int, float]:
        return dict(zip(self.seeds, self.values))

    def run_of(self, seed: int) -> Any:
        return self.runs[self.seeds.index(seed)]


@dataclass
class Report:
    definition: dict[str, Any]
    parent_run_id: str
    status: str
    cells: list[CellResult]
    table: pd.DataFrame  # one row per cell, numeric columns
    pivot: pd.DataFrame | None
    best: str | None
    settings: st.Settings = field(default_factory=st.Settings)
    comparisons: list[st.Comparison] = field(default_factory=list)
    max_seeds: int | None = None  # --until-decided's cap, when the study ran with it

    @property
    def metric(self) -> str:
        return self.definition["metric"]

    @property
    def title(self) -> str:
        d = self.definition
        budget = d.get("budget") or "default"
        partial = "" if self.status == "FINISHED" else f" [{self.status.lower()}: partial]"
        seeds = sorted({s for c in self.cells for s in c.seeds} | set(d["seeds"]))
        shown = d["seeds"] if seeds == sorted(d["seeds"]) else f"{d['seeds']} + {len(seeds) - len(d['seeds'])} added"
        return f"study {d['study_id']} (budget {budget}): {d['metric']} over seeds {shown}{partial}"


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


def build(client, parent_run_id: str, *, status: str | None = None, settings: st.Settings | None = None) -> Report:
    """The report of a study's parent run (``status``: the parent's, when it is about to change;
    ``settings``: the study file's ``[report]`` as the command has it, else the recorded one)."""
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parent = client.get_run(parent_run_id)
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = client.download_artifacts(parent_run_id, DEFINITION, folder)
        except Exception:
            raise ConfigError(f"run {parent_run_id} is not a cnnbench study (it has no {DEFINITION})") from None
        definition = json.loads(Path(path).read_text())
    search = definition.get("search")  # a [search] study: its cells are the trial configurations, read from the runs
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = {_literal(parent_run_id)} and "
                      f"tags.`cnnbench.role` = {_literal('trial' if search else 'cell')}",
        max_results=50000)
    if search:
        children = [r for r in children if "cnnbench.study.discarded" not in r.data.tags]
        definition = {**definition, "cells": search_cells(children, search)}
    by_cell: dict[str, list] = {}
    for run in children:
        by_cell.setdefault(run.data.tags.get("cnnbench.study.cell", ""), []).append(run)
    seeds = list(definition["seeds"])  # then the seeds --until-decided added, in order
    for run in children:
        seed = run.data.tags.get("cnnbench.seed", "")
        if seed.isdigit() and int(seed) not in seeds:
            seeds.append(int(seed))
    seeds = seeds[:len(definition["seeds"])] + sorted(seeds[len(definition["seeds"]):])
    cells = []
    for c in definition["cells"]:
        runs = by_cell.get(c["label"], [])
        result = CellResult(c["label"], c["axes"], c["variant"], [], [], [])
        for seed in seeds:
            mine = sorted((r for r in runs if r.data.tags.get("cnnbench.seed") == str(seed)), key=lambda r: r.info.start_time)
            done = [r for r in mine if r.info.status == "FINISHED" and r.data.tags.get("trial_state") != "PRUNED"]
            if done:
                run = done[-1]
                result.runs.append(run)
                result.seeds.append(seed)
                result.values.append(float(run.data.metrics.get(definition["metric"], math.nan)))
            elif any(r.info.status == "RUNNING" for r in mine):
                result.running.append(seed)
            elif mine and mine[-1].data.tags.get("trial_state") == "PRUNED":
                result.failed[seed] = f"pruned after epoch {mine[-1].data.metrics.get('pruned_at_epoch', 0):.0f}"
            elif mine:
                result.failed[seed] = mine[-1].data.tags.get("failure_reason", mine[-1].info.status)
        cells.append(result)
    if settings is None:
        recorded = {k: v for k, v in (definition.get("report") or {}).items() if k in st.SETTING_KEYS}
        settings = st.Settings(**recorded)
    params = parent.data.params
    max_seeds = int(params[PARAM_MAX_SEEDS]) if params.get(PARAM_MAX_SEEDS, "").isdigit() else None
    if params.get(PARAM_LOOKS, "").isdigit():
        settings = st.Settings(settings.alpha, settings.correction, settings.practical_difference, int(params[PARAM_LOOKS]))
    return assemble(definition, cells, status=status or parent.info.status, settings=settings, client=client,
                    parent_run_id=parent_run_id, max_seeds=max_seeds)


def search_cells(runs: list, search: dict[str, Any]) -> list[dict[str, Any]]:
    """A search's cells as a grid's definition lists them: one per trial configuration (its label
    on the runs), in trial order, the searched values as its axes."""
    names = [e.partition("=")[0] for e in search["space"]]
    cells: dict[str, dict[str, Any]] = {}
    for run in sorted(runs, key=lambda r: int(r.data.tags.get("trial_number", "0") or 0)):
        label = run.data.tags.get("cnnbench.study.cell", "")
        if label and label not in cells:
            axes = {n.split(".", 1)[1] if n.startswith(("model.", "data.")) else n: _typed_param(run.data.params.get(n))
                    for n in names}
            cells[label] = {"label": label, "axes": axes, "variant": None}
    return list(cells.values())


def _typed_param(text: str | None) -> Any:
    """A logged param as a number when it is one (the table's axis columns sort and plot)."""
    for kind in (int, float):
        try:
            return kind(text)
        except (TypeError, ValueError):
            pass
    return text


def assemble(definition: dict[str, Any], cells: list[CellResult], *, status: str = "FINISHED",
             settings: st.Settings | None = None, client=None, parent_run_id: str = "",
             max_seeds: int | None = None) -> Report:
    """The report of cells already read (``client``: to fetch per-example predictions for McNemar)."""
    settings = settings or st.Settings()
    table, best, comparisons = _table(definition, cells, settings, client, max_seeds)
    return Report(definition, parent_run_id, status, cells, table, _pivot(definition, table), best, settings,
                  comparisons, max_seeds)


def _mean_of(runs: list, key: str, where: str = "metrics") -> float:
    vals = _values_of(runs, key, where)
    return float(np.mean(vals)) if vals else math.nan


def _values_of(runs: list, key: str, where: str = "metrics") -> list[float]:
    vals = []
    for r in runs:
        raw = getattr(r.data, where).get(key)
        try:
            vals.append(float(raw))
        except (TypeError, ValueError):
            pass
    return vals


def ranked(cells: list[CellResult], goal: str) -> list[CellResult]:
    """Cells with a finished seed, best mean first."""
    scored = [c for c in cells if any(v == v for v in c.values)]
    sign = -1.0 if goal == "max" else 1.0
    return sorted(scored, key=lambda c: sign * float(np.nanmean(c.values)))


def comparisons_of(d: dict[str, Any], cells: list[CellResult], settings: st.Settings, client=None) -> list[st.Comparison]:
    """Every comparison the report makes: each cell against the reference, or (no reference) the
    best cell against the runner-up; p corrected across them, stars set."""
    ref = next((c for c in cells if c.label == d.get("reference")), None)
    if ref is not None:
        pairs = [(c, ref) for c in cells if c is not ref]
    else:
        # the data choose this pair, but the closest contender: under no true difference its test
        # stars at most alpha (tests/test_study_report.py simulates 10-cell tables), so it stands alone
        order = ranked(cells, d.get("goal", "max"))
        pairs = [(order[0], order[1])] if len(order) >= 2 else []
    out = []
    read: dict[str, Any] = {}  # run id -> its predictions: the reference's are read once, not per comparison
    for cell, against in pairs:
        a, b = cell.by_seed, against.by_seed
        shared = [s for s in a if s in b and a[s] == a[s] and b[s] == b[s]]
        correct_a = correct_b = None
        if len(shared) == 1 and client is not None:
            correct_a, correct_b = _paired_predictions(client, cell.run_of(shared[0]), against.run_of(shared[0]), read)
        out.append(st.compare(cell.label, against.label, a, b, correct_a=correct_a, correct_b=correct_b,
                              practical=settings.practical_difference, alpha=settings.level))
    return st.star(out, settings.correction, settings.level)


def _paired_predictions(client, run_a, run_b, read: dict[str, Any]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Per-example correctness of two runs on the same test set (their ``eval/test_predictions.npz``),
    or (None, None) when either lacks it or they saw different test images. ``read`` caches by run id."""
    got = [_predictions(client, run.info.run_id, read) for run in (run_a, run_b)]
    if got[0] is None or got[1] is None:
        return None, None
    (ca, da), (cb, db) = got
    if da != db or len(ca) != len(cb):
        return None, None
    return ca, cb


def _predictions(client, run_id: str, read: dict[str, Any]) -> tuple[np.ndarray, str] | None:
    """(correctness, test images digest) of one run's stored predictions; None when it has none."""
    from cnnbench.artifacts.evaluation import read_test_predictions

    if run_id not in read:
        with tempfile.TemporaryDirectory() as folder:
            try:
                read[run_id] = read_test_predictions(Path(client.download_artifacts(run_id, PREDICTIONS, folder)))
            except Exception:
                read[run_id] = None
    return read[run_id]


def decision(c: st.Comparison, settings: st.Settings, max_seeds: int | None) -> str:
    """What the data say about one comparison (``--until-decided`` stops a cell on the first two)."""
    pd_ = settings.practical_difference
    small = bool(pd_ and c.n >= st.MIN_N and c.low == c.low and -pd_ < c.low and c.high < pd_)
    if c.star:
        return f"differs, by less than {pd_:g}" if small else "differs"
    if small:
        return f"no difference of {pd_:g} or more"
    if max_seeds and c.n >= max_seeds:
        return f"undecided at --max-seeds {max_seeds}"
    return "undecided"


def _table(d: dict[str, Any], cells: list[CellResult], settings: st.Settings, client=None,
           max_seeds: int | None = None) -> tuple[pd.DataFrame, str | None, list[st.Comparison]]:
    comparisons = comparisons_of(d, cells, settings, client)
    by_cell = {c.cell: c for c in comparisons}
    pub_metric = d.get("published_metric", d["metric"])
    rows = []
    for c in cells:
        values = [v for v in c.values if v == v]
        examples = _values_of(c.runs, "test_examples") if d["metric"] == "test_accuracy" and len(values) == 1 else []
        s = st.cell_stats(values, test_examples=int(examples[0]) if examples else None)
        pub = d["published"].get(c.label, math.nan)
        measured = values if pub_metric == d["metric"] else _values_of(c.runs, pub_metric)
        verdict, pub_low, pub_high = st.against_published(measured, pub) if pub == pub else ("", math.nan, math.nan)
        row = {"cell": c.label, **{f"axis.{k}": v for k, v in c.axes.items()}, "variant": c.variant,
               "n": s.n, "mean": s.mean, "std": s.std, "ci_low": s.low, "ci_high": s.high, "interval": s.interval}
        cmp = by_cell.get(c.label)
        row.update({"vs": cmp.against if cmp else "", "design": cmp.design if cmp else "",
                    "n_compared": cmp.n if cmp else 0, "diff": cmp.diff if cmp else math.nan,
                    "diff_low": cmp.low if cmp else math.nan, "diff_high": cmp.high if cmp else math.nan,
                    "effect": cmp.effect if cmp else math.nan, "p": cmp.p if cmp else math.nan,
                    "p_perm": cmp.p_perm if cmp else math.nan, "p_corrected": cmp.p_corrected if cmp else math.nan,
                    "star": bool(cmp.star) if cmp else False, "mde": cmp.mde if cmp else math.nan,
                    "seeds_needed": cmp.seeds_needed if cmp else math.nan,
                    "decision": decision(cmp, settings, max_seeds) if cmp else ""})
        row.update({"train_accuracy": _mean_of(c.runs, "train_accuracy"), "test_accuracy": _mean_of(c.runs, "test_accuracy"),
                    "fit_time_s": _mean_of(c.runs, "fit_time_s"), "params": _mean_of(c.runs, "param_count", "params"),
                    "epochs": _mean_of(c.runs, "epochs_completed"), "failed_seeds": len(c.failed),
                    "running_seeds": len(c.running), "published": pub,
                    "measured_minus_published": float(np.mean(measured)) - pub if pub == pub and measured else math.nan,
                    "published_verdict": verdict, "published_low": pub_low, "published_high": pub_high})
        rows.append(row)
    table = pd.DataFrame(rows)
    order = ranked(cells, d.get("goal", "max"))
    best = order[0].label if order else None
    table.insert(0, "best", table["cell"] == best)
    return table, best, comparisons


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


def _interval(lo: float, hi: float, kind: str) -> str:
    if lo != lo:
        return kind if kind == "n too small" else ""
    tag = "boot" if kind.startswith("bootstrap") else ("binom" if kind.startswith("binomial") else "")
    return f"[{lo:.4f}, {hi:.4f}]" + (f" {tag}" if tag else "")


def display_frame(report: Report) -> pd.DataFrame:
    """The table as text columns, the way the terminal and Markdown show it."""
    t, m = report.table, report.metric
    out = pd.DataFrame({
        "": np.where(t["best"], "*", ""),
        "cell": t["cell"],
        "n": t["n"].astype(int).astype(str),
        f"{m} mean ± std": [_pm(a, b, n) for a, b, n in zip(t["mean"], t["std"], t["n"])],
        "95% interval": [_interval(lo, hi, k) for lo, hi, k in zip(t["ci_low"], t["ci_high"], t["interval"])],
    })
    if report.comparisons:
        ref = report.definition.get("reference")
        out["vs"] = ["ref" if c == ref else v for v, c in zip(t["vs"], t["cell"])] if ref else list(t["vs"])
        out["Δ [95% CI]"] = [_diff(v, lo, hi) for v, lo, hi in zip(t["diff"], t["diff_low"], t["diff_high"])]
        out["effect"] = [_num(v, 2) if v == v and abs(v) != math.inf else ("∞" if v == v else "") for v in t["effect"]]
        out["test"] = list(t["design"])
        out["p"] = [_p(v) for v in t["p"]]
        out[f"p {report.settings.correction}"] = [_p(v) + (" ★" if s else "") if v == v else ""
                                                  for v, s in zip(t["p_corrected"], t["star"])]
        out["MDE"] = [_num(v) for v in t["mde"]]
        if report.settings.practical_difference:
            out["seeds needed"] = ["" if v != v else str(int(v)) for v in t["seeds_needed"]]
        out["decision"] = list(t["decision"])
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
        out["vs published"] = list(t["published_verdict"])
    return out


def _diff(v: float, lo: float, hi: float) -> str:
    if v != v:
        return ""
    return f"{v:+.4f}" + (f" [{lo:+.4f}, {hi:+.4f}]" if lo == lo else "")


def _p(p: float) -> str:
    if math.isnan(p):
        return ""
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


def records(report: Report) -> list[dict[str, Any]]:
    """The table's rows as JSON-able dicts at full float precision (NaN as null)."""
    out = []
    for row in report.table.to_dict(orient="records"):
        clean = {}
        for k, v in row.items():
            if isinstance(v, (np.floating, float)):
                v = None if v != v else float(v)
            elif isinstance(v, np.integer):
                v = int(v)
            elif isinstance(v, np.bool_):
                v = bool(v)
            clean[k] = v
        out.append(clean)
    return out


def render(report: Report, fmt: str = "table", figures_folder: Path | None = None) -> str:
    """The report as text (``table``, ``md``, ``csv``, ``json``) or a self-contained HTML page
    (``html``: the PNGs of ``figures_folder`` inlined)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown --format {fmt!r}; accepted: {', '.join(FORMATS)}")
    if fmt == "csv":
        return report.table.to_csv(index=False, float_format="%.17g")
    if fmt == "json":
        return json.dumps(records(report), indent=2) + "\n"
    frame = display_frame(report)
    notes = _notes(report)
    if fmt == "html":
        return _html(report, frame, notes, figures_folder)
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
    d, cfg = report.definition, report.settings
    notes = []
    if report.best:
        notes.append(f"best cell (*) by mean {d['metric']} ({'higher' if d.get('goal', 'max') == 'max' else 'lower'} is better): {report.best}")
    kinds = set(report.table["interval"]) if len(report.table) else set()
    notes.append("95% interval: " + "; ".join(k for k in (
        "boot = percentile bootstrap of the mean over seeds (scipy.stats.bootstrap, 9,999 resamples; stays in the "
        "metric's range, unlike a t interval on few seeds)" if any(k.startswith("bootstrap") for k in kinds) else "",
        "binom = exact binomial (Clopper-Pearson) interval of one run's test accuracy over its test examples: the "
        "test-set sampling error alone, not the variation over seeds" if any(k.startswith("binomial") for k in kinds) else "",
        f"n too small = fewer than {st.MIN_N} seeds: no seed interval" if "n too small" in kinds else "") if k))
    if report.comparisons:
        family = len(report.comparisons)
        against = (f"each cell against the reference {d['reference']!r}" if d.get("reference")
                   else f"the best cell against the runner-up ({report.comparisons[0].cell} vs {report.comparisons[0].against})")
        notes.append(f"comparisons: {against}; Δ = cell − {'reference' if d.get('reference') else 'runner-up'} with its 95% CI. "
                     f"test: paired = paired t-test over the seeds both ran (a seed fixes the split and the shuffling; "
                     f"effect: Cohen's d_z; exact sign-flip p in the json), McNemar = exact test on the per-example test "
                     f"predictions of one shared seed, Welch = unpaired (no shared seed; effect: Hedges' g)")
        level = f"alpha {cfg.alpha:g}" + (f" / {cfg.looks} looks = {cfg.level:.4g} per look (--until-decided)" if cfg.looks > 1 else "")
        notes.append(f"p {cfg.correction}: {'Holm step-down' if cfg.correction == 'holm' else cfg.correction} correction "
                     f"over the {family} comparison(s) of this table; ★ = corrected p < {level}, with n >= "
                     f"{st.MIN_N} seeds (or McNemar)")
        notes.append(f"MDE: the smallest true difference the paired test detects at this n with power {st.POWER:g}"
                     + (f"; seeds needed: to detect a difference of {cfg.practical_difference:g} (practical_difference)"
                        if cfg.practical_difference else "; set [report] practical_difference for the seeds needed"))
    if d["published"]:
        notes.append(f"published: {d.get('published_source') or 'the study file'} ({d.get('published_metric', d['metric'])}); "
                     f"vs published: the seeds' 95% t interval holds it (consistent), lies below (lower) or above (higher)")
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
    if ax.get_legend_handles_labels()[0]:
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
        lo, hi = np.nanmin(t["mean"].to_numpy(float), initial=np.inf), np.nanmax(t["mean"].to_numpy(float), initial=-np.inf)
        scale = {"vmin": lo, "vmax": hi} if lo <= hi else {}  # one colour scale across the panels
        for ax, (key, g) in zip(axes[0], groups):
            piv = g.pivot_table(index=numeric[0], columns=numeric[1], values="mean", aggfunc="mean")
            im = ax.imshow(piv.values.astype(float), cmap="viridis", aspect="auto", **scale)
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
    written.append(_intervals_figure(report, folder / "intervals.png"))
    if report.comparisons:
        written.append(_forest_figure(report, folder / "forest.png"))
    return written


def _intervals_figure(report: Report, path: Path) -> Path:
    """Each cell's mean with its 95 % interval (hollow: n too small, no interval)."""
    import matplotlib.pyplot as plt

    t = report.table
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.35 * len(t) + 1)))
    y = np.arange(len(t))[::-1]
    for yi, (_, r) in zip(y, t.iterrows()):
        if r["ci_low"] == r["ci_low"]:
            ax.errorbar(r["mean"], yi, xerr=[[r["mean"] - r["ci_low"]], [r["ci_high"] - r["mean"]]], fmt="o",
                        color="tab:orange" if r["best"] else "tab:blue", capsize=3)
        elif r["mean"] == r["mean"]:
            ax.plot(r["mean"], yi, "o", mfc="none", color="gray")
        if r["published"] == r["published"]:
            ax.plot(r["published"], yi, "x", color="black")
    ax.set_yticks(y, t["cell"], fontsize=8)
    ax.set_xlabel(f"{report.metric}: mean and 95% interval (hollow: n < {st.MIN_N}; x: published)")
    ax.set_title(textwrap.fill(report.title, 70), fontsize=9)
    return _save(fig, path)


def _forest_figure(report: Report, path: Path) -> Path:
    """The compared differences with their 95 % CIs, zero and ± practical_difference marked."""
    import matplotlib.pyplot as plt

    cs = report.comparisons
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.35 * len(cs) + 1)))
    y = np.arange(len(cs))[::-1]
    for yi, c in zip(y, cs):
        colour = "tab:red" if c.star else "tab:gray"
        if c.low == c.low:
            ax.errorbar(c.diff, yi, xerr=[[c.diff - c.low], [c.high - c.diff]], fmt="s", color=colour, capsize=3)
        elif c.diff == c.diff:
            ax.plot(c.diff, yi, "s", mfc="none", color=colour)
    ax.axvline(0, color="black", lw=0.8)
    pd_ = report.settings.practical_difference
    if pd_:
        ax.axvspan(-pd_, pd_, color="tab:green", alpha=0.12, label=f"± practical_difference {pd_:g}")
        ax.legend(fontsize=7, loc="best")
    ax.set_yticks(y, [f"{c.cell} − {c.against}" for c in cs], fontsize=7)
    ax.set_xlabel(f"Δ {report.metric} (95% CI; red: ★ after {report.settings.correction})")
    return _save(fig, path)


def _html(report: Report, frame: pd.DataFrame, notes: list[str], folder: Path | None) -> str:
    """One HTML file with everything inline (no script, no external link: it opens offline)."""
    parts = [f"<h1>{html.escape(report.title)}</h1>", frame.to_html(index=False, border=0, classes="cells")]
    if report.pivot is not None:
        parts += [f"<h2>{html.escape(report.metric)} by {html.escape(str(report.pivot.index.name))} x "
                  f"{html.escape(str(report.pivot.columns.name))}</h2>", report.pivot.fillna("—").to_html(border=0)]
    parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    for png in sorted(folder.glob("*.png")) if folder else []:
        data = base64.b64encode(png.read_bytes()).decode()
        parts.append(f"<figure><img alt='{html.escape(png.stem)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{html.escape(png.stem)}</figcaption></figure>")
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
             "td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left}img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(report.title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


def _is_numeric(col: pd.Series) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in col)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def html_page(report: Report, client) -> str:
    """The self-contained HTML report, its figures drawn here."""
    with tempfile.TemporaryDirectory(prefix="cnnbench-report-") as tmp:
        folder = Path(tmp)
        figures(report, client, folder)
        return render(report, "html", folder)


METRIC_NAME = re.compile(r"[^A-Za-z0-9_\-. /]")


def metric_name(*parts: str) -> str:
    """An MLflow metric name from a cell label (characters MLflow refuses become '_')."""
    return "/".join(METRIC_NAME.sub("_", p) for p in parts)


def parent_metrics(report: Report) -> dict[str, float]:
    """The report's numbers as metrics of the parent run: per cell mean and interval, per comparison
    the difference, its CI and the corrected p."""
    out: dict[str, float] = {}
    for _, r in report.table.iterrows():
        for key in ("mean", "ci_low", "ci_high", "n"):
            out[metric_name("cell", r["cell"], key)] = r[key]
    for c in report.comparisons:
        for key in ("diff", "low", "high", "p", "p_corrected", "mde"):
            out[metric_name("compare", c.cell, key)] = getattr(c, key)
    return {k: float(v) for k, v in out.items() if v == v and abs(float(v)) != math.inf}


def log_to_parent(client, parent_run_id: str, report: Report) -> None:
    """``report/report.md``, ``report.html`` (self-contained), ``cells.csv``, ``cells.json`` and
    ``report/*.png`` on the parent run; the best cell as a tag; the report's numbers as metrics."""
    with tempfile.TemporaryDirectory(prefix="cnnbench-report-") as tmp:
        folder = Path(tmp) / "report"
        pngs = figures(report, client, folder)
        md = render(report, "md") + "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in pngs) + "\n"
        (folder / "report.html").write_text(render(report, "html", folder))
        (folder / "report.md").write_text(md)
        (folder / "cells.csv").write_text(render(report, "csv"))
        (folder / "cells.json").write_text(render(report, "json"))
        client.log_artifacts(parent_run_id, str(folder), artifact_path="report")
    from mlflow.entities import Metric, RunTag

    tags = [RunTag("cnnbench.study.best_cell", report.best)] if report.best else []
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in parent_metrics(report).items()]
    agree, total, tau = published_order(report) if report.definition["published"] else (0, 0, math.nan)
    if total:
        metrics.append(Metric("published_pairs_in_order", agree / total, now, 0))
        if not math.isnan(tau):
            metrics.append(Metric("published_kendall_tau", tau, now, 0))
    for start in range(0, max(len(metrics), 1), 900):  # MLflow's log_batch takes at most 1000 metrics
        chunk = metrics[start:start + 900]
        if chunk or (tags and start == 0):
            client.log_batch(parent_run_id, metrics=chunk, tags=tags if start == 0 else [])
