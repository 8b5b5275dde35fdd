"""The end-of-study report: ``study/trials.csv`` and Optuna's plots (optimisation history, parameter
importances, parallel coordinates, slice) as interactive HTML (plotly) and PNG (matplotlib).

No figure needs the network (an offline cluster has none):

- ``<plot>.png`` is the static plot (matplotlib), shown as it is by MLflow's artifact viewer;
- ``<plot>.html`` is a few tens of kB: the same PNG inline, and the interactive plotly figure drawn
  by the one ``plotly.min.js`` written beside the plots (relative ``<script src>``, never a CDN; inlined,
  every file carried its own 4.7 MB copy). Where that script cannot load (MLflow's viewer shows an
  HTML artifact alone, from a ``blob:`` URL) the page shows the inline PNG; opened from the
  downloaded ``study/plots`` folder it is interactive.

A plot Optuna cannot draw for this study (e.g. importances with fewer than two finished trials) is
skipped with the reason returned, never failing the study.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna

PLOTS = ("optimization_history", "param_importances", "parallel_coordinate", "slice")


def write_report(study: optuna.Study, folder: Path, metric: str) -> list[str]:
    """Write ``folder/study/trials.csv``, ``folder/study/plots/<plot>.{html,png}`` and the plots'
    one ``plotly.min.js``; return notes on what was skipped."""
    out = folder / "study"
    (out / "plots").mkdir(parents=True, exist_ok=True)
    write_trials_csv(study, out / "trials.csv")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return ["no complete trial: no plots"]
    notes = []
    for name in PLOTS:
        notes += _plot(study, name, out / "plots", metric, _options(study, name))
    return notes


def _options(study: optuna.Study, name: str) -> dict:
    """Importances are computed once (fANOVA fits a forest) and shared by both renderings."""
    if name != "param_importances":
        return {}
    try:
        return {"evaluator": _Computed(optuna.importance.get_param_importances(study))}
    except Exception:  # the plot call reports why
        return {}


class _Computed(optuna.importance.BaseImportanceEvaluator):
    def __init__(self, importances: dict[str, float]) -> None:
        self.importances = importances

    def evaluate(self, study, params=None, *, target=None) -> dict[str, float]:
        return dict(self.importances)


def write_trials_csv(study: optuna.Study, path: Path) -> None:
    """One row per trial, one column per value: params, the trial's result metrics (test_accuracy,
    fit_time_s, ... from its ``result`` attribute, unpacked) and the other user attributes."""
    import pandas as pd

    frame = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs", "intermediate_values",
                                          "datetime_start", "datetime_complete", "duration"))
    if "user_attrs_result" in frame:
        results = pd.json_normalize([r if isinstance(r, dict) else {} for r in frame.pop("user_attrs_result")])
        frame = pd.concat([frame.reset_index(drop=True), results.add_prefix("result_")], axis=1)
    frame.to_csv(path, index=False)


PLOTLY_JS = "plotly.min.js"  # one copy per report, beside the HTML files that load it

_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<script src="{script}"></script>
<script>document.documentElement.className = window.Plotly ? "live" : "static";</script>
<style>body {{margin: 0; font-family: sans-serif}} .live #static, .static #interactive {{display: none}}
#static img {{max-width: 100%}} #static p {{color: #666; font-size: 12px; margin: 4px 8px}}</style>
</head><body>
<div id="static">{image}<p>static view: the interactive plot needs {script} beside this file
(download the study/plots folder)</p></div>
<div id="interactive">{figure}</div>
</body></html>
"""


def _plot(study: optuna.Study, name: str, folder: Path, metric: str, options: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    notes = []
    png = folder / f"{name}.png"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the matplotlib backend is 'experimental' in Optuna
        try:
            axes = getattr(optuna.visualization.matplotlib, f"plot_{name}")(study, target_name=metric, **options)
            figure = np.atleast_1d(axes).ravel()[0].figure
            figure.savefig(png, dpi=100, bbox_inches="tight")
            plt.close(figure)
        except Exception as err:
            notes.append(f"{name}.png skipped: {err}")
        try:
            fig = getattr(optuna.visualization, f"plot_{name}")(study, target_name=metric, **options)
            write_html(fig, folder / f"{name}.html", title=name, png=png if png.exists() else None)
        except Exception as err:  # Optuna refuses some plots on tiny or degenerate studies
            notes.append(f"{name}.html skipped: {err}")
    return notes


def write_html(fig, path: Path, *, title: str, png: Path | None = None) -> None:
    """``fig`` as a page that loads ``plotly.min.js`` from its own folder (written there once), with
    ``png`` inline as the static view where that script does not load."""
    import base64
    import html

    script = path.parent / PLOTLY_JS
    if not script.exists():
        from plotly.offline import get_plotlyjs

        script.write_text(get_plotlyjs(), encoding="utf-8")
    image = ""
    if png is not None:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        image = f'<img src="data:image/png;base64,{data}" alt="{html.escape(title)}">'
    figure = fig.to_html(full_html=False, include_plotlyjs=False)
    path.write_text(_PAGE.format(title=html.escape(title), script=PLOTLY_JS, image=image, figure=figure), encoding="utf-8")
