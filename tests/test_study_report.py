"""The report's reading of a quick run against the published figures: the order of the cells."""
from __future__ import annotations

import math

import pytest
from scipy.stats import kendalltau

from cnnbench.study import report as reports


def _report(measured: dict[str, float], published: dict[str, float]) -> reports.Report:
    definition = {"study_id": "s", "metric": "test_accuracy", "seeds": [0], "published": published,
                  "published_source": "R0 Table 1", "axes": [], "has_variants": True}
    cells = [reports.CellResult(label, {}, label, [v], [0], []) for label, v in measured.items()]
    table, best = reports._table(definition, cells)
    return reports.Report(definition, "run", "FINISHED", cells, table, None, best)


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
