"""The statistics of a study report, on plain numbers (no MLflow here): per-cell intervals,
comparisons paired where the design pairs them, Holm's correction across a table, the differences
a design can detect, and the check against a published figure. Every number comes from scipy or
statsmodels; what is cnnbench's own is which test applies where.

- A cell (n seeds): mean, sample std, and a percentile bootstrap interval of the mean over seeds
  (``scipy.stats.bootstrap``, 9,999 resamples, fixed random state). A bootstrap of the mean never
  leaves the range of the observed values, so an accuracy's interval stays inside [0, 1]; a t
  interval on 2 seeds does not ([-0.9, 2.4] was seen). Below :data:`MIN_N` seeds there is no seed
  interval ("n too small"); a single run's test accuracy gets the exact binomial (Clopper-Pearson)
  interval over its test examples instead: the test-set sampling error that even one run has.
- A comparison of two cells: over the seeds both have (a seed fixes the split and the shuffling,
  so cells sharing seeds are paired): the mean difference with its t interval, Cohen's d_z, the
  paired t-test and an exact sign-flip permutation test. With one shared seed and the per-example
  test predictions of both runs: McNemar's exact test (Dietterich 1998). Welch's test only where
  nothing pairs (no shared seed).
- Across the table: Holm's step-down correction (the adjusted p-values of statsmodels'
  ``multipletests``, checked against it in the tests) over every comparison the report makes; a star needs a corrected p below alpha and n >= 3.
- How many seeds: the minimum detectable difference at the current n (two-sided, power 0.8, the
  paired t-test's power from ``statsmodels.stats.power.TTestPower``) and the seeds needed to detect
  the study's ``practical_difference``.
- Against a published figure: the one-sample t interval of the seeds' mean: consistent (it holds
  the figure), lower or higher.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Iterator, Sequence

import numpy as np

MIN_N = 3  # seeds below which a cell's seed interval and a comparison's star are not given
ALPHA = 0.05
CORRECTIONS = ("holm", "bonferroni", "none")
POWER = 0.8
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0
MAX_SEEDS_REPORTED = 10_000
SETTING_KEYS = ("alpha", "correction", "practical_difference")


@dataclass(frozen=True)
class Settings:
    """A study file's ``[report]`` table: the significance level, the correction across the table and
    the smallest difference of the metric that matters (optional; it sizes seeds and decides
    equivalence). ``looks``: how many times ``--until-decided`` may look at the data; each look tests
    at alpha / looks (Bonferroni over the looks), so adding seeds until a difference shows cannot
    push the false-positive rate above alpha."""

    alpha: float = ALPHA
    correction: str = "holm"
    practical_difference: float | None = None
    looks: int = 1

    @property
    def level(self) -> float:
        """The alpha each corrected p is compared with."""
        return self.alpha / self.looks

    @classmethod
    def from_table(cls, table: dict, where: str) -> "Settings":
        from cnnbench.errors import ConfigError

        if not isinstance(table, dict):
            raise ConfigError(f"{where}: [report] must be a table ({', '.join(SETTING_KEYS)}); got {table!r}")
        unknown = sorted(set(table) - set(SETTING_KEYS))
        if unknown:
            from cnnbench.config import shown_names

            raise ConfigError(f"{where}: [report] has unknown key(s) {shown_names(unknown)}; valid keys: {', '.join(SETTING_KEYS)}")
        alpha = table.get("alpha", ALPHA)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
            raise ConfigError(f"{where}: [report] alpha must be a number between 0 and 1 (exclusive); got {alpha!r}")
        correction = table.get("correction", "holm")
        if correction not in CORRECTIONS:
            raise ConfigError(f"{where}: [report] correction must be one of {', '.join(CORRECTIONS)}; got {correction!r}")
        practical = table.get("practical_difference")
        if practical is not None and (isinstance(practical, bool) or not isinstance(practical, (int, float))
                                      or not 0 < practical < math.inf):
            raise ConfigError(f"{where}: [report] practical_difference must be a positive number (in the metric's "
                              f"units, e.g. 0.01 for one accuracy point); got {practical!r}")
        return cls(float(alpha), correction, None if practical is None else float(practical))

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class CellStats:
    n: int
    mean: float
    std: float
    low: float
    high: float
    interval: str  # "bootstrap over seeds" | "binomial over N test examples" | "n too small"


@dataclass
class Comparison:
    cell: str
    against: str
    design: str  # "paired" | "McNemar" | "Welch" | "n too small"
    n: int  # seeds compared (paired: shared seeds)
    diff: float  # mean of cell - against
    low: float
    high: float
    effect: float  # Cohen's d_z (paired) or Hedges' g (Welch)
    p: float  # the test's p (paired t, McNemar exact, Welch)
    p_perm: float  # exact sign-flip permutation p (paired only)
    p_corrected: float = math.nan
    star: bool = False
    mde: float = math.nan  # minimum detectable difference at this n (power 0.8)
    seeds_needed: float = math.nan  # to detect practical_difference (paired design)

    def as_dict(self) -> dict:
        return asdict(self)


@contextmanager
def _quiet() -> Iterator[None]:
    """scipy warns (and answers NaN) on identical values: the callers handle those cases."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        yield


def cell_stats(values: Sequence[float], *, test_examples: int | None = None, bounded: bool = True) -> CellStats:
    """n, mean, std and the interval the report shows (see the module doc). ``test_examples``: a
    single run's test-set size, for the binomial interval of an accuracy (``bounded``: in [0, 1])."""
    from scipy import stats

    a = np.asarray([v for v in values if v == v], dtype=float)
    n = len(a)
    mean = float(a.mean()) if n else math.nan
    std = float(a.std(ddof=1)) if n > 1 else math.nan
    if n >= MIN_N:
        if np.ptp(a) == 0:
            return CellStats(n, mean, std, mean, mean, "bootstrap over seeds")
        res = stats.bootstrap((a,), np.mean, n_resamples=BOOTSTRAP_RESAMPLES, method="percentile",
                              confidence_level=0.95, random_state=np.random.default_rng(BOOTSTRAP_SEED))
        return CellStats(n, mean, std, float(res.confidence_interval.low), float(res.confidence_interval.high),
                         "bootstrap over seeds")
    if n == 1 and test_examples and bounded and 0.0 <= mean <= 1.0:
        k = int(round(mean * test_examples))
        ci = stats.binomtest(k, int(test_examples)).proportion_ci(confidence_level=0.95, method="exact")
        return CellStats(n, mean, std, float(ci.low), float(ci.high), f"binomial over {int(test_examples)} test examples")
    return CellStats(n, mean, std, math.nan, math.nan, "n too small")


def compare(cell: str, against: str, a: dict[int, float], b: dict[int, float], *,
            correct_a: np.ndarray | None = None, correct_b: np.ndarray | None = None,
            practical: float | None = None, alpha: float = ALPHA) -> Comparison:
    """``cell`` (values by seed ``a``) against ``against`` (``b``); see the module doc for which test."""
    from scipy import special, stats

    a = {s: v for s, v in a.items() if v == v}
    b = {s: v for s, v in b.items() if v == v}
    shared = sorted(set(a) & set(b))
    nan = math.nan
    if len(shared) >= 2:
        d = np.array([a[s] - b[s] for s in shared])
        n = len(d)
        mean, sd = float(d.mean()), float(d.std(ddof=1))
        if sd <= 1e-12 * max(1.0, abs(mean)):  # identical differences, up to float rounding
            sd = 0.0
        # the paired t-test (scipy's ttest_rel, computed from its distribution functions directly:
        # the same numbers at a hundredth of the per-call cost, which a simulation of 10,000 notices)
        half = float(special.stdtrit(n - 1, 0.975)) * sd / math.sqrt(n) if sd > 0 else 0.0
        p_perm = sign_flip_p(d)
        # identical differences: no t statistic; the exact permutation p is the honest one
        p = float(2 * special.stdtr(n - 1, -abs(mean) / (sd / math.sqrt(n)))) if sd > 0 else p_perm
        effect = mean / sd if sd > 0 else (0.0 if mean == 0 else math.copysign(math.inf, mean))
        out = Comparison(cell, against, "paired", n, mean, mean - half, mean + half, effect, p, p_perm)
        out.mde = detectable(sd, n, alpha)
        if practical:
            out.seeds_needed = seeds_needed(sd, practical, alpha)
        return out
    if len(shared) == 1 and correct_a is not None and correct_b is not None and len(correct_a) == len(correct_b):
        s = shared[0]
        only_a = int(np.sum(correct_a & ~correct_b))
        only_b = int(np.sum(~correct_a & correct_b))
        p = mcnemar_exact(only_a, only_b)
        diff = float(a[s] - b[s])
        # the difference of two paired proportions: Wald interval from the discordant counts
        m = len(correct_a)
        var = ((only_a + only_b) - (only_a - only_b) ** 2 / m) / m**2
        half = 1.959963984540054 * math.sqrt(max(var, 0.0))
        return Comparison(cell, against, "McNemar", 1, diff, diff - half, diff + half, nan, p, nan)
    xa, xb = np.array(list(a.values())), np.array(list(b.values()))
    if not shared and len(xa) >= 2 and len(xb) >= 2:
        with _quiet():
            res = stats.ttest_ind(xa, xb, equal_var=False)
            ci = res.confidence_interval(0.95)
        pooled = math.sqrt(((len(xa) - 1) * xa.var(ddof=1) + (len(xb) - 1) * xb.var(ddof=1)) / (len(xa) + len(xb) - 2))
        g = (xa.mean() - xb.mean()) / pooled * (1 - 3 / (4 * (len(xa) + len(xb)) - 9)) if pooled > 0 else nan
        return Comparison(cell, against, "Welch", min(len(xa), len(xb)), float(xa.mean() - xb.mean()), float(ci.low),
                          float(ci.high), float(g), float(res.pvalue), nan)
    diff = float(xa.mean() - xb.mean()) if len(xa) and len(xb) else nan
    return Comparison(cell, against, "n too small", len(shared), diff, nan, nan, nan, nan, nan)


def sign_flip_p(d: np.ndarray) -> float:
    """Exact two-sided sign-flip permutation p of the mean of paired differences: the share of the
    2^n sign patterns whose |sum| reaches the observed one (n <= 16; beyond, scipy's randomised
    ``permutation_test`` with 9,999 resamples). Equal to scipy's exact ``permutation_test``
    (``permutation_type="samples"``), without its per-call cost."""
    d = np.asarray(d, dtype=float)
    if not np.any(d):
        return 1.0
    n = len(d)
    if n > 16:
        from scipy import stats

        res = stats.permutation_test((d,), np.mean, permutation_type="samples", alternative="two-sided",
                                     n_resamples=9999, random_state=np.random.default_rng(BOOTSTRAP_SEED))
        return float(min(1.0, res.pvalue))
    signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
    sums = np.abs(signs @ d)
    observed = abs(d.sum())
    return float(np.mean(sums >= observed * (1 - 1e-12)))


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """McNemar's exact test on the discordant counts (the binomial test of ``only_a`` of ``only_a +
    only_b`` at 1/2, as statsmodels' ``mcnemar(exact=True)``)."""
    from scipy import stats

    total = only_a + only_b
    return 1.0 if total == 0 else float(stats.binomtest(only_a, total, 0.5).pvalue)


def correct(p: Sequence[float], method: str = "holm", alpha: float = ALPHA) -> list[float]:
    """Corrected p-values over a table's comparisons (NaN kept out of the family)."""
    if method not in CORRECTIONS:
        raise ValueError(f"unknown correction {method!r}; accepted: {', '.join(CORRECTIONS)}")
    values = np.asarray(p, dtype=float)
    out = values.copy()
    keep = ~np.isnan(values)
    if method != "none" and keep.any():
        out[keep] = _adjusted(values[keep], method)
    return [float(v) for v in out]


def _adjusted(p: np.ndarray, method: str) -> np.ndarray:
    """Holm's step-down (or Bonferroni) adjusted p-values: the numbers of statsmodels'
    ``multipletests(p, method=...)[1]`` (the tests check them against it), without its ~40 ms
    per call, which a 1,000-table simulation pays 1,000 times."""
    m = len(p)
    if method == "bonferroni":
        return np.minimum(1.0, p * m)
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(1.0, stepped)
    return out


def star(comparisons: list[Comparison], method: str = "holm", alpha: float = ALPHA) -> list[Comparison]:
    """Fill ``p_corrected`` and ``star`` across the table (a star: corrected p < alpha and n >= MIN_N;
    McNemar counts its test examples, not seeds)."""
    corrected = correct([c.p for c in comparisons], method, alpha)
    for c, pc in zip(comparisons, corrected):
        c.p_corrected = pc
        enough = c.n >= MIN_N or c.design == "McNemar"
        c.star = bool(enough and pc == pc and pc < alpha)
    return comparisons


def detectable(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true mean paired difference the paired t-test detects with ``power`` at ``n``."""
    if n < 2 or not sd or sd != sd:
        return math.nan
    return _detectable_effect(n, alpha, power) * sd


@lru_cache(maxsize=256)
def _detectable_effect(n: int, alpha: float, power: float) -> float:
    """Cohen's d the paired t-test detects at ``n`` (statsmodels solves it by root finding: cached)."""
    from statsmodels.stats.power import TTestPower

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power,
                                              alternative="two-sided"))


def seeds_needed(sd: float, difference: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Seeds (pairs) the paired t-test needs to detect ``difference`` with ``power`` (rounded up)."""
    if not difference or sd != sd:
        return math.nan
    if sd == 0:
        return 2.0
    from statsmodels.stats.power import TTestPower

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        n = TTestPower().solve_power(effect_size=abs(difference) / sd, nobs=None, alpha=alpha, power=power,
                                     alternative="two-sided")
    n = float(np.atleast_1d(n)[0])
    return float(min(MAX_SEEDS_REPORTED, max(2, math.ceil(n)))) if n == n else math.nan


def against_published(values: Sequence[float], published: float) -> tuple[str, float, float]:
    """(verdict, low, high): the seeds' one-sample 95 % t interval of the mean and whether it holds
    the published figure (``consistent``), lies below it (``lower``) or above it (``higher``);
    ``n too small`` below MIN_N seeds."""
    from scipy import stats

    a = np.asarray([v for v in values if v == v], dtype=float)
    if published != published or len(a) < MIN_N:
        return ("n too small" if published == published else ""), math.nan, math.nan
    if np.ptp(a) == 0:
        low = high = float(a[0])
    else:
        ci = stats.ttest_1samp(a, published).confidence_interval(0.95)
        low, high = float(ci.low), float(ci.high)
    verdict = "consistent" if low <= published <= high else ("lower" if high < published else "higher")
    return verdict, low, high
