"""The end-of-study report: ``study/trials.csv`` and Optuna's plots (optimisation history, parameter
importances, parallel coordinates, slice) as interactive HTML (plotly) and PNG (matplotlib).

The HTML files load plotly.js from its CDN (``include_plotlyjs="cdn"``): inlined, every file carried
its own 4.7 MB copy; now each is a few tens of kB. Offline, the PNG beside each one shows the same plot.

A plot Optuna cannot draw for this study (e.g. importances with fewer than two finished trials) is
skipped with the reason returned, never failing the study.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna

PLOTS = ("optimization_history", "param_importances", "parallel_coordinate", "slice")


def write_report(study: optuna.Study, folder: Path, metric: str) -> list[str]:
    """Write ``folder/study/trials.csv`` and ``folder/study/plots/<plot>.{html,png}``; return notes
    on what was skipped."""
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


def _plot(study: optuna.Study, name: str, folder: Path, metric: str, options: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    notes = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the matplotlib backend is 'experimental' in Optuna
        try:
            fig = getattr(optuna.visualization, f"plot_{name}")(study, target_name=metric, **options)
            fig.write_html(folder / f"{name}.html", include_plotlyjs="cdn")
        except Exception as err:  # Optuna refuses some plots on tiny or degenerate studies
            notes.append(f"{name}.html skipped: {err}")
        try:
            axes = getattr(optuna.visualization.matplotlib, f"plot_{name}")(study, target_name=metric, **options)
            figure = np.atleast_1d(axes).ravel()[0].figure
            figure.savefig(folder / f"{name}.png", dpi=100, bbox_inches="tight")
            plt.close(figure)
        except Exception as err:
            notes.append(f"{name}.png skipped: {err}")
    return notes
