"""What a campaign's parent run says in the MLflow UI.

Its description (``mlflow.note.content``, markdown, the run page's Description): what the campaign
is (study name, grid or search space, seeds), the command that resumes it, how to read its child
runs, metrics and artifacts; once it has a result, a link to its best run (an MLflow UI link
relative to the page, ``#/experiments/<id>/runs/<run_id>``) and the retrained model, with the tag
:data:`TAG_BEST_RUN`. A tune parent also carries the best trial's final metrics as
``best/<metric>`` (one point at step 0: bars across tunes in the chart view, in a ``best`` section).
"""

from __future__ import annotations

import math
import shlex
from typing import Any

TAG_BEST_RUN = "best_run_id"
BEST_PREFIX = "best/"


def run_link(experiment_id: str, run_id: str, text: str) -> str:
    """A markdown link to a run's page, relative to the MLflow UI's page (works behind any host/prefix)."""
    from cnnbench.tracking.store import ui_fragment

    return f"[{text}]({ui_fragment(experiment_id, run_id)})"


def _link(client, run_id: str, text: str | None = None) -> str:
    run = client.get_run(run_id)
    return run_link(run.info.experiment_id, run_id, text or run.info.run_name or run_id)


def _number(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.4g}"


def _set_note(client, run_id: str, text: str) -> None:
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

    from cnnbench.tracking import runs as mlruns

    mlruns.set_tags(client, run_id, {MLFLOW_RUN_NOTE: text})


# -- tune ------------------------------------------------------------------------------------
def tune_command(plan) -> str:
    """The command that adds trials to (or resumes) the study: same study, storage and space."""
    from cnnbench.campaign.storage import redact

    req = plan.request
    cfg = req.config
    parts = ["cnnbench", "tune", "--model", cfg.model.name, "--dataset", cfg.data.name, "--epochs", str(cfg.run.epochs)]
    for text in plan.space.texts().values():
        parts += ["--search", text]
    parts += ["--trials", str(req.trials)] + (["--seeds", str(req.seeds)] if req.seeds > 1 else [])
    parts += ["--objective", req.metric, "--study-name", plan.study.study_name, "--storage", redact(plan.storage_url)]
    return shlex.join(parts)


def tune_description(plan, *, client=None, best=None, best_run_id: str | None = None,
                     retrain_run_id: str | None = None) -> str:
    """The tune parent's description; with ``best`` (the best Optuna trial), its result and links."""
    req, name = plan.request, plan.study.study_name
    cfg = req.config
    seeds = f" x {req.seeds} seeds (scored by their mean)" if req.seeds > 1 else ""
    lines = [
        f"**Tune `{name}`**: Optuna ({req.sampler} sampler, {req.pruner} pruner) searching "
        f"{', '.join(f'`{t}`' for t in plan.space.texts().values())} for **{cfg.model.name}** on **{cfg.data.name}**, "
        f"{cfg.run.epochs} epochs per trial, {req.trials} trials per command{seeds}; objective `{req.metric}` "
        f"({plan.direction}; a trial scores its best epoch).",
        f"**Add trials or resume** (same study and storage; the fixed train options are this run's params): "
        f"`{tune_command(plan)}`",
        f"**How to read it**: each child run is one trial, named `t<NN> <values> · {cfg.model.name}` "
        f"(`t<NN> s<seed> ...` with several seeds). `best_{req.metric}` over the trial number is the best so far (a "
        f"curve in the chart view); `best/<metric>` are the best trial's final metrics (mean over its seeds; bars); "
        f"`trials_*` count this command's trials. Artifacts `study/`: the trials table and plots (offline HTML with a "
        f"PNG view).",
    ]
    if best is not None:
        shown = " ".join(f"{k}={v}" for k, v in best.params.items())
        where = f": {_link(client, best_run_id)}" if client is not None and best_run_id else ""
        lines.append(f"**Best**: trial {best.number}, `{req.metric}` {_number(best.value)} ({shown}){where}.")
        if client is not None and retrain_run_id:
            lines.append(f"**Retrained** on train + validation, tested, its model logged: "
                         f"{_link(client, retrain_run_id)}.")
    return "\n\n".join(lines)


def best_metrics(client, run_ids: list[str]) -> dict[str, float]:
    """``best/<metric>``: each metric's final value, the mean over the runs (a trial's seeds) that have it."""
    values: dict[str, list[float]] = {}
    for run_id in run_ids:
        for key, value in client.get_run(run_id).data.metrics.items():
            if value == value and abs(value) != math.inf:
                values.setdefault(key, []).append(value)
    return {f"{BEST_PREFIX}{k}": sum(v) / len(v) for k, v in sorted(values.items())}


def tune_result(parent, plan, best, *, retrain_run_id: str | None = None) -> None:
    """The best trial on the tune parent: ``best/<metric>`` at step 0, tag ``best_run_id``, and the
    description with links to the best trial's run and the retrained model's run."""
    from cnnbench.tune.study import trial_run_ids

    client = parent.client
    run_ids = trial_run_ids(best)
    if run_ids:
        parent.log_metrics(best_metrics(client, run_ids), step=0)
        parent.set_tags({TAG_BEST_RUN: run_ids[0]})
    _set_note(client, parent.run_id, tune_description(plan, client=client, best=best,
                                                      best_run_id=run_ids[0] if run_ids else None,
                                                      retrain_run_id=retrain_run_id))


# -- study -----------------------------------------------------------------------------------
def study_command(study, command: str, study_name: str) -> str:
    """The command that resumes the study (the one that started it, when known)."""
    if command:
        return command
    budget = f" --budget {study.budget}" if study.budget else ""
    return f"cnnbench study run {study.source_name}{budget} --study-name {study_name}"


def _grid_text(study) -> str:
    from cnnbench.study.definition import short, show_value

    axes = []
    for key in study.axes:
        values = list(dict.fromkeys(show_value(c.axes[key]) for c in study.cells if key in c.axes))
        axes.append(f"{short(key)} = {', '.join(values)}")
    variants = list(dict.fromkeys(c.variant for c in study.cells if c.variant is not None))
    parts = ([f"Grid {'; '.join(axes)}"] if axes else []) + ([f"Variants {', '.join(variants)}"] if variants else [])
    search = getattr(study, "search", None)
    if search is not None:
        parts.append(f"Search {', '.join(f'`{t}`' for t in search.space)} ({search.trials} trials)")
    return "; ".join(parts) or "One cell"


def study_description(study, *, command: str, study_name: str, report=None, client=None) -> str:
    """The study parent's description; with ``report`` (``study.report.build``), the best cell and
    links to its runs."""
    goal = "higher" if study.goal == "max" else "lower"
    budget = f" --budget {study.budget}" if study.budget else ""
    runs = len(study.cells) * len(study.seeds)
    lines = [study.description] if study.description else []
    lines += [
        f"**Study `{study_name}`** (budget {study.budget or 'default'}, from `{study.source_name}`): "
        f"{len(study.cells)} cells x {len(study.seeds)} seeds = {runs} runs comparing `{study.metric}` "
        f"({goal} is better). {_grid_text(study)}; seeds {', '.join(map(str, study.seeds))}.",
        f"**Resume, or add workers on another machine** (finished cells are kept): "
        f"`{study_command(study, command, study_name)}`",
        f"**How to read it**: each child run is one cell and seed, named `s<seed> <varied values> · <model>`. "
        f"This run's metrics `cell/<label>/mean`, `ci_low`, `ci_high` and `n` are each cell's mean and interval over "
        f"its seeds (bars in the chart view, section `cell`); `compare/<cell>/...` the comparisons (difference, "
        f"interval, corrected p). The full report: artifacts `report/report.md` and `report/report.html`, or "
        f"`cnnbench study report {study.name}{budget}`.",
    ]
    best = _best_cell(report)
    if best is not None:
        cell, row = best
        links = ", ".join(_link(client, r.info.run_id, f"s{s}") for s, r in zip(cell.seeds, cell.runs)) if client else ""
        lines.append(f"**Best cell**: `{cell.label}`, mean {_number(row['mean'])} [{_number(row['ci_low'])}, "
                     f"{_number(row['ci_high'])}] over {int(row['n'])} seed(s)" + (f"; its runs: {links}" if links else "")
                     + ".")
    return "\n\n".join(lines)


def _best_cell(report):
    if report is None or not report.best:
        return None
    cell = next((c for c in report.cells if c.label == report.best and c.runs), None)
    rows = report.table[report.table["cell"] == report.best]
    return None if cell is None or rows.empty else (cell, rows.iloc[0])


def best_run_of(report, goal: str) -> str | None:
    """The best cell's run with the best value (the seed that did best)."""
    best = _best_cell(report)
    if best is None:
        return None
    cell = best[0]
    pick = max if goal == "max" else min
    value = pick(v for v in cell.values if v == v) if any(v == v for v in cell.values) else None
    return (cell.runs[cell.values.index(value)] if value is not None else cell.runs[0]).info.run_id


def study_result(client, parent_run_id: str, study, *, command: str, study_name: str, report) -> None:
    """The study parent's description rewritten with its best cell, and tag ``best_run_id``."""
    from cnnbench.tracking import runs as mlruns

    best = best_run_of(report, study.goal)
    if best:
        mlruns.set_tags(client, parent_run_id, {TAG_BEST_RUN: best})
    _set_note(client, parent_run_id, study_description(study, command=command, study_name=study_name, report=report,
                                                       client=client))

