"""The report's reading of a quick run against the published figures: the order of the cells."""
from __future__ import annotations

import math

import pytest
from scipy.stats import kendalltau

from conftest import new_store
from cnnbench.study import report as reports


def _report(measured: dict[str, float], published: dict[str, float]) -> reports.Report:
    definition = {"study_id": "s", "metric": "test_accuracy", "seeds": [0], "published": published,
                  "published_source": "R0 Table 1", "axes": [], "has_variants": True}
    cells = [reports.CellResult(label, {}, label, [v], [0], []) for label, v in measured.items()]
    return reports.assemble(definition, cells)


def test_order_counts_pairs_of_cells_with_both_figures_and_skips_published_ties():
    measured = {"a": 0.30, "b": 0.35, "c": 0.32, "d": 0.90, "e": 0.31}
    published = {"a": 0.50, "b": 0.60, "c": 0.70, "e": 0.50}  # d has no published figure; a and e tie
    rep = _report(measured, published)
    agree, total, tau = reports.published_order(rep)
    # pairs (a,b) (a,c) (b,c) (b,e) (c,e); (a,e) ties in the published figures; d is not compared
    # in order: a<b, a<c, b>e, c>e; out of order: b>c measured but b<c published
    assert (agree, total) == (4, 5)
    assert tau == pytest.approx(kendalltau([0.5, 0.6, 0.7, 0.5], [0.30, 0.35, 0.32, 0.31]).statistic)
    text = reports.render(rep, "md")
    assert f"order vs published: 4 of 5 cell pairs ranked as published (Kendall tau {tau:+.2f})" in text


def test_no_order_line_when_fewer_than_two_cells_have_a_published_figure():
    rep = _report({"a": 0.3, "b": 0.4}, {"a": 0.5})
    assert reports.published_order(rep)[:2] == (0, 0)
    assert "order vs published" not in reports.render(rep, "table")
    rep = _report({"a": 0.3, "b": 0.4}, {"a": 0.5, "b": 0.5})  # a published tie is not an order
    assert reports.published_order(rep)[:2] == (0, 0)
    assert math.isnan(reports.published_order(_report({"a": 0.3}, {"a": 0.5}))[2])


# -- the statistics of the table, on cells read already ------------------------------------
import json  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from cnnbench.study import stats as st  # noqa: E402


def _definition(labels, *, reference=None, goal="max", published=None, seeds=(0, 1, 2, 3, 4)):
    return {"study_id": "s", "metric": "test_accuracy", "goal": goal, "seeds": list(seeds), "published": published or {},
            "published_source": "", "axes": [], "has_variants": True, "reference": reference,
            "cells": [{"index": i, "label": label, "axes": {}, "variant": label} for i, label in enumerate(labels)]}


def _run(metrics: dict):
    return SimpleNamespace(data=SimpleNamespace(metrics=metrics, params={}), info=SimpleNamespace(run_id="x"))


def _cells(values: dict[str, list[float]], seeds=None):
    out = []
    for label, v in values.items():
        s = list(seeds or range(len(v)))
        out.append(reports.CellResult(label, {}, label, list(v), s, [_run({"test_accuracy": x}) for x in v]))
    return out


def test_every_cell_is_compared_with_the_reference_paired_over_seeds_and_holm_corrected():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(3)
    seed_effect = rng.normal(0, 0.02, 5)  # what a seed does to every cell alike: pairing removes it
    values = {"ref": 0.80 + seed_effect + rng.normal(0, 0.004, 5)}
    for k, shift in enumerate((0.0, 0.004, 0.012, 0.03)):
        values[f"c{k}"] = 0.80 + shift + seed_effect + rng.normal(0, 0.004, 5)
    rep = reports.assemble(_definition(list(values), reference="ref"), _cells(values))
    rows = {r["cell"]: r for r in reports.records(rep)}
    raw = []
    for k in range(4):
        row, a, b = rows[f"c{k}"], values[f"c{k}"], values["ref"]
        res = stats.ttest_rel(a, b)
        ci = res.confidence_interval(0.95)
        assert row["design"] == "paired" and row["n_compared"] == 5 and row["vs"] == "ref"
        assert row["diff"] == pytest.approx(np.mean(a - b)) and row["p"] == pytest.approx(res.pvalue)
        assert (row["diff_low"], row["diff_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
        assert row["effect"] == pytest.approx(np.mean(a - b) / np.std(a - b, ddof=1))
        perm = stats.permutation_test((a - b,), np.mean, permutation_type="samples", n_resamples=np.inf)
        assert row["p_perm"] == pytest.approx(perm.pvalue)
        raw.append(res.pvalue)
    holm = multipletests(raw, method="holm")[1]
    for k in range(4):
        row = rows[f"c{k}"]
        assert row["p_corrected"] == pytest.approx(holm[k])
        assert row["star"] == bool(holm[k] < 0.05)
        assert row["decision"] == ("differs" if holm[k] < 0.05 else "undecided")
    assert rows["c3"]["star"] and not rows["c0"]["star"]  # 3 points stand out of 0.4-point noise; 0 does not
    # a cell's interval: scipy's percentile bootstrap over its seeds, inside the observed range
    boot = stats.bootstrap((values["c2"],), np.mean, n_resamples=9999, method="percentile",
                           random_state=np.random.default_rng(0)).confidence_interval
    assert (rows["c2"]["ci_low"], rows["c2"]["ci_high"]) == (pytest.approx(boot.low), pytest.approx(boot.high))
    assert rows["c2"]["interval"] == "bootstrap over seeds"
    assert rows["ref"]["vs"] == "" and rows["ref"]["p"] is None
    text = reports.render(rep, "table")
    assert "p holm" in text and "★" in text and "Holm step-down correction over the 4 comparison(s)" in text


def test_without_a_reference_the_best_cell_is_compared_with_the_runner_up():
    values = {"a": [0.30, 0.31, 0.29], "b": [0.20, 0.22, 0.21], "c": [0.25, 0.26, 0.27]}
    rep = reports.assemble(_definition(list(values), goal="min", seeds=(0, 1, 2)), _cells(values))
    assert rep.best == "b" and [(c.cell, c.against) for c in rep.comparisons] == [("b", "c")]
    assert rep.comparisons[0].p == pytest.approx(stats.ttest_rel(values["b"], values["c"]).pvalue)
    assert "the best cell against the runner-up (b vs c)" in reports.render(rep, "md")


def test_json_keeps_full_precision_and_nan_as_null():
    ref = np.linspace(0.5, 0.6, 10)
    values = {"ref": list(ref), "x": list(ref + 0.1 + np.array([1, -1] * 5) * 1e-4)}
    rep = reports.assemble(_definition(list(values), reference="ref", seeds=range(10)), _cells(values))
    p = stats.ttest_rel(values["x"], values["ref"]).pvalue
    assert p < 1e-12
    rows = {r["cell"]: r for r in json.loads(reports.render(rep, "json"))}
    assert rows["x"]["p"] == pytest.approx(p, rel=1e-9) and rows["x"]["p"] > 0
    assert rows["ref"]["diff"] is None


def test_below_three_seeds_no_seed_interval_and_one_run_gets_the_binomial_interval():
    cells = [reports.CellResult("one", {}, "one", [0.9], [0], [_run({"test_accuracy": 0.9, "test_examples": 10000.0})]),
             reports.CellResult("two", {}, "two", [0.9, 0.8], [0, 1], [_run({"test_accuracy": 0.9}), _run({"test_accuracy": 0.8})])]
    rep = reports.assemble(_definition(["one", "two"], seeds=(0, 1)), cells)
    rows = {r["cell"]: r for r in reports.records(rep)}
    ci = stats.binomtest(9000, 10000).proportion_ci(0.95, method="exact")
    assert rows["one"]["interval"] == "binomial over 10000 test examples"
    assert (rows["one"]["ci_low"], rows["one"]["ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert rows["two"]["interval"] == "n too small" and rows["two"]["ci_low"] is None
    text = reports.render(rep, "table")
    assert "n too small" in text and "binom" in text


def test_a_published_figure_is_read_against_the_seeds_interval():
    values = {"a": [0.70, 0.71, 0.72, 0.69], "b": [0.50, 0.52, 0.51, 0.49]}
    rep = reports.assemble(_definition(list(values), published={"a": 0.705, "b": 0.60}, seeds=range(4)), _cells(values))
    rows = {r["cell"]: r for r in reports.records(rep)}
    ci = stats.ttest_1samp(values["b"], 0.60).confidence_interval(0.95)
    assert rows["a"]["published_verdict"] == "consistent" and rows["b"]["published_verdict"] == "lower"
    assert rows["b"]["published_high"] == pytest.approx(ci.high)


def test_until_decided_adds_seeds_only_where_undecided_up_to_the_cap():
    from cnnbench.study.definition import expand
    from cnnbench.study.session import RunRequest, seeds_to_add

    study = expand({"name": "s", "seeds": 3, "reference": "ref", "base": {"model": "lenet5", "dataset": "digits"},
                    "variants": [{"name": "ref"}, {"name": "clear", "lr": 0.5}, {"name": "noise", "lr": 0.02}],
                    "report": {"practical_difference": 0.001}}, source="t")
    request = RunRequest(study=study, source="t", max_seeds=7, seed_batch=2)
    assert request.looks == 3  # 3 seeds, then 5, then 7
    values = {"ref": [0.80, 0.82, 0.81], "clear": [0.90, 0.925, 0.915], "noise": [0.81, 0.80, 0.83]}
    rep = reports.assemble(_definition(list(values), reference="ref", seeds=(0, 1, 2)), _cells(values),
                           settings=st.Settings(practical_difference=0.001, looks=request.looks), max_seeds=7)
    decisions = {r["cell"]: r["decision"] for r in reports.records(rep)}
    assert decisions["clear"] == "differs" and decisions["noise"] == "undecided"
    assert seeds_to_add(rep, request) == {"noise": [3, 4], "ref": [3, 4]}
    assert rep.settings.level == pytest.approx(0.05 / 3)


def test_report_settings_in_the_study_file_are_checked():
    from cnnbench.errors import ConfigError
    from cnnbench.study.definition import expand

    base = {"name": "s", "base": {"model": "lenet5", "dataset": "digits"}, "grid": {"lr": [0.01, 0.02]}}
    assert expand({**base, "report": {"alpha": 0.01, "correction": "bonferroni"}}, source="t").report == \
        st.Settings(alpha=0.01, correction="bonferroni")
    for table, message in (({"alpha": 2}, "alpha must be a number between 0 and 1"),
                           ({"correction": "fdr"}, "correction must be one of holm, bonferroni, none"),
                           ({"practical_difference": -1}, "practical_difference must be a positive number"),
                           ({"alpah": 0.1}, "unknown key(s) alpah")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            expand({**base, "report": table}, source="t")





def _store_study(tmp_path, correct: dict[str, np.ndarray], *, images_differ: bool = False):
    """A parent run with its definition and one single-seed child run per cell, each with the
    per-example predictions a real cell writes (labels all 0, prediction 0 where correct)."""
    import torch
    from mlflow.tracking import MlflowClient

    from cnnbench.artifacts.evaluation import PREDICTIONS_FILE, write_test_predictions

    client = MlflowClient(new_store(tmp_path))
    exp = client.create_experiment("e")
    definition = _definition(list(correct), reference=next(iter(correct)), seeds=(0,))
    parent = client.create_run(exp, tags={"cnnbench.role": "study"}).info.run_id
    folder = tmp_path / "def"
    folder.mkdir()
    (folder / "definition.json").write_text(json.dumps(definition))
    client.log_artifacts(parent, str(folder), "study")
    for i, (label, ok) in enumerate(correct.items()):
        run = client.create_run(exp, tags={"mlflow.parentRunId": parent, "cnnbench.role": "cell",
                                           "cnnbench.study.cell": label, "cnnbench.seed": "0"}).info.run_id
        client.log_metric(run, "test_accuracy", float(ok.mean()))
        client.log_metric(run, "test_examples", float(len(ok)))
        images = torch.full((len(ok), 1, 2, 2), i if images_differ else 0, dtype=torch.uint8)
        predictions = torch.where(torch.as_tensor(ok), 0, 1)
        path = write_test_predictions(images, torch.zeros(len(ok), dtype=torch.int64), predictions,
                                      tmp_path / label / PREDICTIONS_FILE)
        client.log_artifact(run, str(path), "eval")
        client.set_terminated(run, "FINISHED")
    return client, parent


def test_one_seed_per_cell_is_compared_by_mcnemar_on_the_stored_predictions(tmp_path, cli):
    from statsmodels.stats.contingency_tables import mcnemar

    rng = np.random.default_rng(0)
    ref = rng.random(2000) < 0.80
    better = ref.copy()
    flip = rng.random(2000)
    better[~ref & (flip < 0.12)] = True  # right on some the reference gets wrong...
    better[ref & (flip < 0.01)] = False  # ...and wrong on a few it gets right
    client, parent = _store_study(tmp_path, {"ref": ref, "better": better})
    rep = reports.build(client, parent)
    (c,) = rep.comparisons
    table = [[int(np.sum(ref & better)), int(np.sum(ref & ~better))], [int(np.sum(~ref & better)), int(np.sum(~ref & ~better))]]
    assert c.design == "McNemar" and c.p == pytest.approx(mcnemar(table, exact=True).pvalue)
    assert c.diff == pytest.approx(better.mean() - ref.mean()) and c.low < c.diff < c.high
    assert c.star  # McNemar counts test examples: one seed is enough for it
    rows = {r["cell"]: r for r in reports.records(rep)}
    ci = stats.binomtest(int(better.sum()), 2000).proportion_ci(0.95, method="exact")
    assert rows["better"]["interval"] == "binomial over 2000 test examples"
    assert rows["better"]["ci_low"] == pytest.approx(ci.low)

    # the report on the parent: a self-contained HTML page, the full-precision json, the numbers as metrics
    reports.log_to_parent(client, parent, rep)
    folder = Path(client.download_artifacts(parent, "report", str(tmp_path / "dl")))
    page = (folder / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == len(list(folder.glob("*.png"))) >= 3
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "McNemar" in page and {"forest.png", "intervals.png"} <= {p.name for p in folder.glob("*.png")}
    assert json.loads((folder / "cells.json").read_text())[1]["p"] == pytest.approx(c.p, rel=1e-12)
    metrics = client.get_run(parent).data.metrics
    assert metrics["compare/better/p_corrected"] == pytest.approx(c.p_corrected)
    assert metrics["cell/better/mean"] == pytest.approx(better.mean())
    printed = cli("study", "report", parent, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--format", "html")
    assert printed.exit_code == 0 and printed.output.startswith("<!DOCTYPE html>") and "data:image/png;base64," in printed.output


def test_runs_that_saw_different_test_images_are_not_paired_by_example(tmp_path):
    rng = np.random.default_rng(1)
    client, parent = _store_study(tmp_path, {"ref": rng.random(500) < 0.8, "x": rng.random(500) < 0.9},
                                  images_differ=True)
    (c,) = reports.build(client, parent).comparisons
    assert c.design == "n too small" and not c.star  # one seed each, nothing pairs: no test at all


def test_without_a_reference_no_true_difference_stars_best_vs_runner_up_at_most_alpha_plus_one_percent():
    # the data choose the pair, but the closest contender: tested alone it is not anti-conservative
    # (cells with unequal noise, the case where choosing by the mean could favour a noisy cell)
    rng = np.random.default_rng(5)
    labels = [f"c{i}" for i in range(10)]
    d = _definition(labels, seeds=range(5))
    starred = 0
    for _ in range(1000):
        seed_effect, noise = rng.normal(0, 0.02, 5), rng.uniform(0.002, 0.02, 10)
        values = {label: 0.8 + seed_effect + rng.normal(0, noise[i], 5) for i, label in enumerate(labels)}
        (c,) = reports.comparisons_of(d, _cells(values), st.Settings())
        starred += c.star
    assert starred / 1000 <= st.ALPHA + 0.01
