"""The report's statistics against scipy and statsmodels on fixed data (n = 0, 1, 2, 3+, ties),
and by simulation: no true difference stars at most alpha + 1 % of 10-cell tables (Holm), a
difference at the minimum detectable size is starred at the rate the power calculation gives."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from cnnbench.study import stats as st

A = {0: 0.81, 1: 0.84, 2: 0.79, 3: 0.86, 4: 0.83}
B = {0: 0.78, 1: 0.80, 2: 0.78, 3: 0.82, 4: 0.80}


def test_a_cell_interval_is_scipys_bootstrap_and_stays_in_range():
    values = [0.98, 0.99, 1.0]
    got = st.cell_stats(values)
    ref = stats.bootstrap((np.array(values),), np.mean, n_resamples=9999, method="percentile",
                          random_state=np.random.default_rng(0)).confidence_interval
    assert (got.n, got.interval) == (3, "bootstrap over seeds")
    assert got.low == pytest.approx(ref.low) and got.high == pytest.approx(ref.high)
    assert 0.98 <= got.low <= got.high <= 1.0  # a t interval here would pass 1.0
    assert stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))[1] > 1.0


@pytest.mark.parametrize("values", [[], [0.5], [0.2, 0.9]])
def test_below_three_seeds_there_is_no_seed_interval(values):
    got = st.cell_stats(values)
    assert got.interval == "n too small" and math.isnan(got.low) and got.n == len(values)


def test_one_run_gets_the_exact_binomial_interval_over_its_test_examples():
    got = st.cell_stats([0.9], test_examples=10_000)
    ci = stats.binomtest(9000, 10_000).proportion_ci(method="exact")
    assert got.interval == "binomial over 10000 test examples"
    assert (got.low, got.high) == pytest.approx((ci.low, ci.high))
    assert got.high - got.low == pytest.approx(0.0118, abs=0.0005)  # about +/- 0.6 points


def test_ties_give_a_point_interval():
    got = st.cell_stats([0.5, 0.5, 0.5])
    assert (got.low, got.high, got.std) == (0.5, 0.5, 0.0)


def test_cells_sharing_seeds_are_compared_paired():
    got = st.compare("a", "b", A, B)
    a, b = [A[s] for s in sorted(A)], [B[s] for s in sorted(A)]
    ref = stats.ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    d = np.subtract(a, b)
    assert got.design == "paired" and got.n == 5
    assert got.p == pytest.approx(ref.pvalue) and (got.low, got.high) == pytest.approx((ci.low, ci.high))
    assert got.diff == pytest.approx(d.mean()) and got.effect == pytest.approx(d.mean() / d.std(ddof=1))
    assert got.p_perm == pytest.approx(2 / 32)  # every difference positive: 2 of 2^5 sign patterns as extreme
    assert got.p < stats.ttest_ind(a, b, equal_var=False).pvalue  # pairing removes the seed-to-seed variance


@pytest.mark.parametrize("d", [[0.01, -0.02, 0.03], [0.05, 0.01, 0.02, -0.01, 0.04], [0.0, 0.01, 0.01, -0.03]])
def test_the_sign_flip_p_is_scipys_exact_permutation_test(d):
    ref = stats.permutation_test((np.array(d),), np.mean, permutation_type="samples", n_resamples=math.inf)
    assert st.sign_flip_p(np.array(d)) == pytest.approx(min(1.0, ref.pvalue))


def test_identical_differences_fall_back_to_the_exact_permutation_p():
    got = st.compare("a", "b", {0: 0.6, 1: 0.7, 2: 0.8}, {0: 0.5, 1: 0.6, 2: 0.7})
    assert got.p == pytest.approx(0.25) and got.p_perm == pytest.approx(0.25)
    assert st.compare("a", "b", {0: 0.5, 1: 0.6}, {0: 0.5, 1: 0.6}).p == 1.0


def test_no_shared_seed_falls_back_to_welch():
    a, b = {0: 0.8, 1: 0.82, 2: 0.85}, {5: 0.7, 6: 0.75, 7: 0.71}
    got = st.compare("a", "b", a, b)
    ref = stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False)
    assert got.design == "Welch" and got.p == pytest.approx(ref.pvalue)
    assert (got.low, got.high) == pytest.approx(tuple(ref.confidence_interval(0.95)))


def test_one_seed_each_uses_mcnemar_on_the_test_predictions():
    rng = np.random.default_rng(3)
    ca, cb = rng.random(500) < 0.9, rng.random(500) < 0.85
    got = st.compare("a", "b", {0: ca.mean()}, {0: cb.mean()}, correct_a=ca, correct_b=cb)
    table = [[np.sum(ca & cb), np.sum(ca & ~cb)], [np.sum(~ca & cb), np.sum(~ca & ~cb)]]
    assert got.design == "McNemar" and got.p == pytest.approx(mcnemar(table, exact=True).pvalue)
    assert got.low < got.diff < got.high
    assert st.compare("a", "b", {0: 0.9}, {0: 0.8}).design == "n too small"


def test_holm_is_statsmodels_and_stars_need_three_seeds():
    p = [0.01, 0.04, 0.03, 0.2, math.nan]
    expected = multipletests([0.01, 0.04, 0.03, 0.2], method="holm")[1]
    assert st.correct(p)[:4] == pytest.approx(list(expected)) and math.isnan(st.correct(p)[4])
    ties = [0.02, 0.02, 0.5, 0.001, 0.7, 0.03]
    for method in ("holm", "bonferroni"):
        assert st.correct(ties, method) == pytest.approx(list(multipletests(ties, method=method)[1]))
    rows = [st.Comparison("x", "r", "paired", n, 0.1, 0, 0.2, 1, pv, pv)
            for n, pv in ((5, 0.001), (2, 0.001), (5, 0.04), (5, 0.3))]
    st.star(rows)
    assert [r.star for r in rows] == [True, False, False, False]  # n = 2 never starred; 0.04 corrected is 0.08
    with pytest.raises(ValueError, match="unknown correction 'fdr'"):
        st.correct([0.1], "fdr")


def test_detectable_difference_and_seeds_needed_are_the_paired_t_power():
    sd = 0.02
    effect = TTestPower().solve_power(nobs=5, alpha=0.05, power=0.8)
    assert st.detectable(sd, 5) == pytest.approx(effect * sd)
    n = TTestPower().solve_power(effect_size=0.01 / sd, alpha=0.05, power=0.8)
    assert st.seeds_needed(sd, 0.01) == math.ceil(n)
    assert math.isnan(st.detectable(sd, 1))


def test_against_the_published_figure():
    values = [0.70, 0.72, 0.71, 0.69]
    ci = stats.ttest_1samp(values, 0.8).confidence_interval(0.95)
    assert st.against_published(values, 0.8) == ("lower", pytest.approx(ci.low), pytest.approx(ci.high))
    assert st.against_published(values, 0.705)[0] == "consistent"
    assert st.against_published(values, 0.6)[0] == "higher"
    assert st.against_published([0.7, 0.71], 0.8)[0] == "n too small"


def _paired_table(rng, cells: int, n: int, shift: float, seed_sd: float = 0.02, noise: float = 0.01):
    """Cells sharing seeds: a seed effect common to every cell, plus each run's own noise."""
    seed_effect = rng.normal(0, seed_sd, n)
    ref = {s: 0.8 + seed_effect[s] + rng.normal(0, noise) for s in range(n)}
    others = [{s: 0.8 + shift + seed_effect[s] + rng.normal(0, noise) for s in range(n)} for _ in range(cells - 1)]
    return ref, others


def test_no_true_difference_stars_at_most_alpha_plus_one_percent_of_tables():
    rng = np.random.default_rng(2026)
    starred = 0
    for _ in range(1000):
        ref, others = _paired_table(rng, 10, 5, 0.0)
        rows = st.star([st.compare(f"c{i}", "ref", o, ref) for i, o in enumerate(others)])
        starred += any(r.star for r in rows)
    assert starred / 1000 <= st.ALPHA + 0.01


def test_a_difference_of_the_detectable_size_is_starred_at_the_predicted_rate():
    rng = np.random.default_rng(7)
    noise, n = 0.01, 6
    sd_diff = noise * math.sqrt(2)
    shift = st.detectable(sd_diff, n)  # power 0.8 by the calculation
    hits = 0
    for _ in range(1000):
        ref, (other,) = _paired_table(rng, 2, n, shift, noise=noise)
        hits += st.star([st.compare("c", "ref", other, ref)])[0].star
    assert abs(hits / 1000 - st.POWER) <= 0.04


def _until_decided(rng, level: float, start: int = 3, cap: int = 10) -> bool:
    """One null two-cell study run as --until-decided runs it: look, add a seed, look again, stop at
    the first star or at the cap. True when it ended on a (false) star."""
    ref, (other,) = _paired_table(rng, 2, cap, 0.0)
    for n in range(start, cap + 1):
        if st.star([st.compare("c", "ref", {s: other[s] for s in range(n)}, {s: ref[s] for s in range(n)},
                               alpha=level)], alpha=level)[0].star:
            return True
    return False


def test_until_decided_keeps_the_false_positive_rate_by_testing_each_look_at_alpha_over_looks():
    from cnnbench.study.definition import expand
    from cnnbench.study.session import RunRequest

    study = expand({"name": "s", "seeds": 3, "reference": "a", "base": {"model": "lenet5", "dataset": "digits"},
                    "variants": [{"name": "a"}, {"name": "b"}]}, source="t")
    looks = RunRequest(study=study, source="t", max_seeds=10, seed_batch=1).looks
    assert looks == 8  # seeds 3, 4, ..., 10
    rng = np.random.default_rng(11)
    corrected = sum(_until_decided(rng, st.ALPHA / looks) for _ in range(1000)) / 1000
    rng = np.random.default_rng(11)
    naive = sum(_until_decided(rng, st.ALPHA) for _ in range(1000)) / 1000
    assert corrected <= st.ALPHA + 0.01
    assert naive > st.ALPHA + 0.03  # looking 8 times at alpha each: what the correction is for
