"""A study file (TOML) parsed, validated and expanded into cells; no torch import.

Every value goes through :func:`cnnbench.config.apply_values`, the same path from option names to a
typed :class:`TrainConfig` that ``train``, ``tune`` and the MLproject use, so a study accepts
exactly the train options and reports a bad one with the option's own message, naming the cell.
Plugin options (``model.<key>`` / ``data.<key>``) are checked per cell by ``api.resolve`` (see
:func:`cnnbench.study.run.resolve_cells`), which needs torch.

Layering of one cell's values, later wins: study defaults (cheap artifacts only), ``[base]``, the
``--budget`` table, ``--set`` values, the grid point, the variant.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from cnnbench.config import ALIASES, OPTIONS, TrainConfig, apply_values, read_user_file, shown_names
from cnnbench.errors import ConfigError

TOP_KEYS = ("name", "description", "metric", "metric_goal", "seeds", "reference", "base", "grid", "variants",
            "budgets", "published", "launcher", "report", "search")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
# What a study records unless it turns it on: the cheap artifacts (no t-SNE, retrieval or model upload).
STUDY_DEFAULTS = {"tsne": False, "retrieval": False, "log_model": False, "quiet": True}
# Where and how a cell runs, not what it is: left out of the definition digest.
NOT_DEFINITION = {"device", "experiment", "tracking_uri", "run_name", "quiet", "data_dir", "download"}
METRIC_GOALS = ("max", "min")
# The most cell x seed runs a study may have unless --max-jobs raises it: counted from the file's
# axis lengths before any cell is built, so a 10^6-cell grid is refused at once, not expanded.
MAX_JOBS = 10_000
MAX_SEED = 2**32 - 1  # numpy's seed range
STUDY_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
SEARCH_KEYS = ("space", "trials", "sampler", "pruner", "objective", "direction")
SEARCH_DIRECTIONS = ("maximize", "minimize")


@dataclass(frozen=True)
class Cell:
    index: int
    label: str
    axes: dict[str, Any]  # grid key (as in the file) -> value
    variant: str | None
    config: TrainConfig  # typed; plugin options still as given (api.resolve types them)

    def overrides(self) -> dict[str, Any]:
        return {**self.axes, **({"variant": self.variant} if self.variant is not None else {})}


@dataclass(frozen=True)
class Search:
    """A study's ``[search]``: trial configurations proposed by tune's sampler, each a cell trained
    over the study's seeds (``space`` in tune's ``--search`` syntax, canonical)."""

    space: tuple[str, ...]
    trials: int
    sampler: str = "tpe"
    pruner: str = "none"  # a study trains every trial over every seed unless it asks for pruning
    objective: str = "val_accuracy"  # what the sampler sees (best epoch, mean over seeds); never a test metric
    direction: str = "maximize"

    def as_dict(self) -> dict[str, Any]:
        return {"space": list(self.space), "trials": self.trials, "sampler": self.sampler, "pruner": self.pruner,
                "objective": self.objective, "direction": self.direction}


@dataclass(frozen=True)
class Study:
    """A study file expanded for one budget: the cells every worker runs, seeds, what the report compares."""

    name: str
    description: str
    metric: str
    goal: str  # max | min
    seeds: tuple[int, ...]
    cells: tuple[Cell, ...]
    axes: tuple[str, ...]  # grid keys in file order
    has_variants: bool
    reference: str | None
    published: dict[str, float]
    published_source: str
    published_metric: str
    budget: str | None
    source_text: str  # the TOML as read
    source_name: str  # file name or entry-point name
    sets: dict[str, str] = field(default_factory=dict)
    launcher: dict[str, Any] = field(default_factory=dict)  # [launcher]: where the workers run (not the definition)
    report: Any = None  # [report]: stats.Settings (alpha, correction, practical_difference; not the definition)
    search: Search | None = None  # [search]: the cells are trial configurations; cells[0] is the base they vary

    @property
    def study_id(self) -> str:
        """The name the coordinating Optuna study and the parent run carry (budget included)."""
        return f"{self.name}-{self.budget}" if self.budget else self.name

    def cell(self, label: str) -> Cell:
        for c in self.cells:
            if c.label == label:
                return c
        raise KeyError(label)

    def cell_params(self) -> dict[str, dict[str, str]]:
        """label -> what the cell trains (flat params as text, location settings left out)."""
        return {c.label: definition_params(c.config) for c in self.cells}

    def fingerprint(self) -> dict[str, Any]:
        out = {"cells": self.cell_params(), "seeds": list(self.seeds), "metric": self.metric}
        if self.search is not None:  # grid studies keep the digest they always had; a search's budget is not
            # what its cells are: raising trials continues the same search (its sampler keeps its history)
            out["search"] = {k: v for k, v in self.search.as_dict().items() if k != "trials"}
        return out

    @property
    def digest(self) -> str:
        text = json.dumps(self.fingerprint(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """Everything the report needs, as JSON (logged on the parent run: the report reads only MLflow)."""
        return {
            "name": self.name, "study_id": self.study_id, "description": self.description, "metric": self.metric,
            "goal": self.goal, "seeds": list(self.seeds), "budget": self.budget, "axes": list(self.axes),
            "has_variants": self.has_variants, "reference": self.reference, "published": self.published,
            "published_source": self.published_source, "published_metric": self.published_metric,
            "digest": self.digest, "sets": self.sets,
            "report": self.report.as_dict() if self.report is not None else None,
            **({"search": self.search.as_dict()} if self.search is not None else {}),
            "cells": [] if self.search is not None else [{"index": c.index, "label": c.label, "axes": {short(k): v for k, v in c.axes.items()},
                       "variant": c.variant, "params": definition_params(c.config)} for c in self.cells],
        }


def definition_params(config: TrainConfig) -> dict[str, str]:
    return {k: str(v) for k, v in config.flat_params().items() if k not in NOT_DEFINITION}


def short(key: str) -> str:
    """A grid key as a label shows it: the ``model.`` / ``data.`` prefix dropped."""
    plugin, dot, rest = key.partition(".")
    return rest if dot and plugin in ("model", "data") else key


def show_value(value: Any) -> str:
    """A value as a label shows it (TOML spelling for booleans)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def cell_label(axes: Mapping[str, Any], variant: str | None) -> str:
    grid = ", ".join(f"{short(k)}={show_value(v)}" for k, v in axes.items())
    if variant is None:
        return grid
    return f"{grid} / {variant}" if grid else variant


def read_text(source: str | Path, text: str | None = None) -> tuple[dict[str, Any], str]:
    """Parse TOML; a malformed file is one line naming the file, line and column."""
    if text is None:
        text = read_user_file(source, "study file", folder_hint="give a .toml file", kind="UTF-8 text (expected TOML)")
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as err:
        where = str(err).replace("end of document", f"end of document, line {text.count(chr(10)) + 1}")
        raise ConfigError(f"study file {source} is not valid TOML: {where}") from None
    except ValueError:  # an integer of more than sys.get_int_max_str_digits() digits
        raise ConfigError(f"study file {source} holds an integer of thousands of digits; no option or count "
                          f"accepts a number that large") from None


def load(source: str, text: str | None = None, *, budget: str | None = None,
         sets: Sequence[str] = (), max_jobs: int = MAX_JOBS) -> Study:
    """Read, validate and expand a study (``text`` given: ``source`` only names it in messages);
    more than ``max_jobs`` cell x seed runs are refused before any cell is built."""
    raw, text = read_text(source, text)
    return expand(raw, source=str(source), text=text, budget=budget, sets=parse_sets(sets), max_jobs=max_jobs)


def check_study_name(name: str, *, what: str = "--study-name") -> str:
    """``name`` if it may name a study in the storage and in MLflow tags and filter strings:
    letters, digits, '-', '_' and '.', 1 to 200 characters; else a one-line ConfigError."""
    if not isinstance(name, str) or not STUDY_NAME_RE.match(name):
        shown = name if not isinstance(name, str) or len(name) <= 80 else name[:80] + "..."
        raise ConfigError(f"{what} {shown!r} is not accepted: use only letters, digits, '-', '_' and '.' "
                          f"(1 to 200 characters)")
    return name


def canonical_key(key: str) -> str:
    """The option a study key sets, whatever its spelling: an alias (``kernel_size`` ->
    ``model.kernel_size``) or a flag form (``--kernel-size``) resolved as :func:`apply_values` does."""
    name = key[2:].replace("-", "_") if key.startswith("--") else key
    name = ALIASES.get(name, name)
    return name if name in OPTIONS or name.startswith(("model.", "data.")) else key


def _one_spelling(keys: Sequence[str], where: str) -> dict[str, str]:
    """canonical name -> key as written; two spellings of one option are refused, naming both."""
    seen: dict[str, str] = {}
    for key in keys:
        name = canonical_key(key)
        if name in seen:
            raise ConfigError(f"{where}: {seen[name]!r} and {key!r} are two spellings of the option {name!r}; "
                              f"give it once")
        seen[name] = key
    return seen


def parse_sets(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE (a train option or model.<key>/data.<key>); got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def expand(raw: dict[str, Any], *, source: str, text: str = "", budget: str | None = None,
           sets: Mapping[str, str] | None = None, max_jobs: int = MAX_JOBS) -> Study:
    sets = dict(sets or {})
    where = f"study file {source}"
    if isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1:
        raise ConfigError(f"--max-jobs must be a whole number of runs >= 1; got {max_jobs!r}")
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {shown_names(unknown)}; valid keys: {', '.join(TOP_KEYS)}")
    name = _typed(raw, "name", str, where, required=True)
    if not NAME_RE.match(name):
        raise ConfigError(f"{where}: name {name!r} must use only a-z, 0-9 and '-' (and start with a letter or digit)")
    description = _typed(raw, "description", str, where, default="")
    metric = _typed(raw, "metric", str, where, default="test_accuracy")
    goal = _typed(raw, "metric_goal", str, where, default="max")
    if goal not in METRIC_GOALS:
        raise ConfigError(f"{where}: metric_goal must be max or min; got {goal!r}")
    base = _table(raw, "base", where)
    grid = _table(raw, "grid", where, default=None)
    variants = _variants(raw.get("variants"), where)
    budgets = _table(raw, "budgets", where)
    from cnnbench.campaign.launchers import LauncherOptions

    launcher = LauncherOptions.from_table(_table(raw, "launcher", where), where)
    from cnnbench.study.stats import Settings

    report = Settings.from_table(raw.get("report", {}), where)
    for bname, table in budgets.items():
        if not STUDY_NAME_RE.match(bname):  # it becomes part of the study id, a tag and filter value
            raise ConfigError(f"{where}: budget name {_brief(bname, 80)} is not accepted: use only letters, digits, "
                              f"'-', '_' and '.'")
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: [budgets.{bname}] must be a table of option overrides; got {table!r}")
    chosen: dict[str, Any] = {}
    if budget is not None:
        if budget not in budgets:
            accepted = ", ".join(budgets) if budgets else "none (the file has no [budgets.NAME] tables)"
            raise ConfigError(f"unknown --budget {budget!r} for study {name!r}; accepted: {accepted}")
        chosen = dict(budgets[budget])
    seeds = _seeds(chosen.pop("seeds", raw.get("seeds", 1)), where, max_jobs)
    search_raw = _table(raw, "search", where, default=None)
    if search_raw is not None:
        search_raw = dict(search_raw)
        if "trials" in chosen:  # a budget may shorten the search
            search_raw["trials"] = chosen.pop("trials")
        if grid is not None or variants:
            raise ConfigError(f"{where}: [search] and [grid]/[[variants]] together are not supported (a search is its own "
                              f"set of cells); give the search's fixed options in [base], or run one study per grid cell")
        for key in ("reference", "published"):
            if key in raw:
                raise ConfigError(f"{where}: {key} names cells, but a [search] study's cells are the trials its sampler "
                                  f"proposes; leave {key} out")

    if grid is not None and not grid:
        raise ConfigError(f"{where}: [grid] is empty; give at least one axis (KEY = [values]) or leave [grid] out and use [[variants]]")
    grid = dict(grid or {})
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: grid axis {key!r} must be a non-empty list of values; got {_brief(values)}")
    axis_of = _one_spelling(list(grid), f"{where}: [grid]")  # canonical name -> grid key as written
    _one_spelling(list(base), f"{where} [base]")
    _one_spelling(list(chosen), f"{where} [budgets.{budget}]")
    _one_spelling(list(sets), "--set")
    for key in [k for k in chosen if canonical_key(k) in axis_of]:  # a budget may replace an axis's values
        values = chosen.pop(key)
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: [budgets.{budget}] {key!r} is a grid axis: give a non-empty list; got {_brief(values)}")
        grid[axis_of[canonical_key(key)]] = values
    for vname, overrides in variants:
        for key in _one_spelling(list(overrides), f"{where}: variant {vname!r}").values():
            axis = axis_of.get(canonical_key(key))
            if axis is not None:
                raise ConfigError(f"{where}: variant {vname!r} sets {key!r}, which grid axis {axis!r} varies (its value "
                                  f"would replace every grid value); vary it in [grid] or in the variants, not both")
    if not grid and not variants and search_raw is None:
        raise ConfigError(f"{where}: the study has no cells; give [grid] axes (KEY = [values]) or [[variants]]")
    if search_raw is None:
        _check_size(grid, variants, seeds, max_jobs, where)
    for key, values in grid.items():
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) != len(values):
            raise ConfigError(f"{where}: grid axis {key!r} lists a value twice: {_brief(values)}")

    start = apply_values(TrainConfig(), STUDY_DEFAULTS, where=where)
    start = apply_values(start, base, where=f"{where} [base]", text=False)
    if chosen:
        start = apply_values(start, chosen, where=f"{where} [budgets.{budget}]", text=False)
    if sets:
        start = apply_values(start, sets, where="--set")
    search = None
    if search_raw is not None:
        search = _search(search_raw, start, base, seeds, max_jobs, where)
    cells: list[Cell] = []
    points = list(itertools.product(*grid.values())) if grid else [()]
    for point in points:
        axes = dict(zip(grid, point))
        for vname, overrides in (variants or [(None, {})]):
            label = cell_label(axes, vname) if search is None else "base"
            at = f"cell {label!r}"
            config = apply_values(start, axes, where=at, text=False, varying=True)
            config = apply_values(config, overrides, where=at, text=False, varying=True)
            try:
                config.validate()
            except ConfigError as err:
                raise ConfigError(f"{at}: {err}") from None
            cells.append(Cell(len(cells), label, axes, vname, config))
    labels = [c.label for c in cells]
    if len(set(labels)) != len(labels):
        dup = sorted({x for x in labels if labels.count(x) > 1})
        raise ConfigError(f"{where}: cells share the label(s) {', '.join(map(repr, dup))}; give variants distinct names")
    if metric not in _known_metrics() and not metric.startswith(("test_", "val_", "train_", "gpu_", "peak_")):
        raise ConfigError(f"{where}: unknown metric {metric!r}; accepted: {', '.join(_known_metrics())} (or any logged metric "
                          f"starting test_/val_/train_/peak_/gpu_)")
    reference = _typed(raw, "reference", str, where, default=None)
    if reference is not None and reference not in labels:
        raise ConfigError(f"{where}: reference {reference!r} matches no cell; cells: {', '.join(labels)}")
    published, pub_source, pub_metric = _published(raw.get("published"), labels, metric, where)
    return Study(name=name, description=description, metric=metric, goal=goal, seeds=seeds, cells=tuple(cells),
                 axes=tuple(grid), has_variants=bool(variants), reference=reference, published=published,
                 published_source=pub_source, published_metric=pub_metric, budget=budget, source_text=text,
                 source_name=source, sets=dict(sets), launcher=launcher, report=report, search=search)


def _search(raw: dict[str, Any], start: TrainConfig, base: Mapping[str, Any], seeds: tuple[int, ...], max_jobs: int,
            where: str) -> Search:
    """``[search]`` checked against tune's grammar, samplers and pruners (one line for each refusal)."""
    from cnnbench.tune import OBJECTIVES, PRUNERS, SAMPLERS
    from cnnbench.tune.space import GRAMMAR, parse_space

    at = f"{where} [search]"
    unknown = sorted(set(raw) - set(SEARCH_KEYS))
    if unknown:
        raise ConfigError(f"{at}: unknown key(s) {shown_names(unknown)}; valid keys: {', '.join(SEARCH_KEYS)}")
    space = raw.get("space")
    if isinstance(space, str):
        space = [space]
    if not isinstance(space, list) or not space or not all(isinstance(e, str) for e in space):
        raise ConfigError(f"{at}: space must be a non-empty list of expressions ({GRAMMAR}); got {_brief(space)}")
    try:
        parsed = parse_space(space, start)
    except ConfigError as err:
        raise ConfigError(f"{at}: {str(err).replace('--search', 'space')}") from None
    fixed = sorted(set(parsed.names) & {canonical_key(k) for k in base})
    if fixed:
        raise ConfigError(f"{at}: {', '.join(fixed)} is both fixed in [base] and searched; drop one of them")
    if "trials" not in raw:
        raise ConfigError(f"{at}: missing trials = N (the search's budget: trial configurations, each over the seeds)")
    trials = raw["trials"]
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"{at}: trials must be a whole number of trial configurations >= 1 (the search's budget); "
                          f"got {_brief(trials)}")
    if trials * len(seeds) > max_jobs:
        raise ConfigError(f"{at}: {_number(trials)} trials x {len(seeds)} seed{'s' if len(seeds) != 1 else ''} = "
                          f"{_number(trials * len(seeds))} runs, above the limit of {max_jobs:,}; lower trials or seeds, "
                          f"or raise the limit with --max-jobs N")
    if list(seeds) != list(range(seeds[0], seeds[0] + len(seeds))):
        raise ConfigError(f"{at}: a search trains each trial over consecutive seeds; give seeds as a count or a list of "
                          f"consecutive seeds (e.g. [3, 4, 5]); got {list(seeds)}")
    choices = {"sampler": (SAMPLERS, "tpe"), "pruner": (PRUNERS, "none"), "objective": (OBJECTIVES, "val_accuracy")}
    chosen = {}
    for key, (accepted, default) in choices.items():
        value = raw.get(key, default)
        if value not in accepted:
            raise ConfigError(f"{at}: {key} must be one of {', '.join(accepted)}; got {_brief(value)}")
        chosen[key] = value
    direction = raw.get("direction", "maximize" if chosen["objective"].endswith("accuracy") else "minimize")
    if direction not in SEARCH_DIRECTIONS:
        raise ConfigError(f"{at}: direction must be maximize or minimize; got {_brief(direction)}")
    if chosen["sampler"] == "grid":
        try:
            parsed.grid()
        except ConfigError as err:
            raise ConfigError(f"{at}: {str(err).replace('--sampler grid', 'sampler grid')}") from None
    return Search(tuple(parsed.texts().values()), trials, chosen["sampler"], chosen["pruner"], chosen["objective"],
                  direction)


def _check_size(grid: Mapping[str, list], variants: Sequence, seeds: Sequence[int], max_jobs: int, where: str) -> None:
    """Refuse more than ``max_jobs`` cell x seed runs, counted from the axis lengths (no expansion)."""
    points = math.prod(len(v) for v in grid.values())  # Python integers: no overflow, nothing built
    nvar = max(len(variants), 1)
    jobs = points * nvar * len(seeds)
    if jobs <= max_jobs:
        return
    grid_part = (" x ".join(str(len(v)) for v in grid.values()) + f" grid point{'s' if points != 1 else ''}"
                 if grid else "no grid")
    raise ConfigError(f"{where}: {grid_part} x {nvar} variant{'s' if nvar != 1 else ''} x {len(seeds)} "
                      f"seed{'s' if len(seeds) != 1 else ''} = {jobs:,} runs, above the limit of {max_jobs:,}; "
                      f"shrink the grid or seeds, or raise the limit with --max-jobs N")


def _known_metrics() -> tuple[str, ...]:
    return ("test_accuracy", "test_loss", "val_accuracy", "val_loss", "train_accuracy", "train_loss", "fit_time_s",
            "test_macro_f1", "peak_rss_mb", "epoch_time_s")


def _typed(raw: Mapping[str, Any], key: str, kind: type, where: str, *, required: bool = False, default: Any = None) -> Any:
    if key not in raw:
        if required:
            raise ConfigError(f"{where}: missing key {key!r}")
        return default
    value = raw[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{where}: {key} must be {kind.__name__}; got {value!r}")
    return value


def _table(raw: Mapping[str, Any], key: str, where: str, default: Any = "{}") -> Any:
    if key not in raw:
        return {} if default == "{}" else default
    value = raw[key]
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{key}] must be a table; got {value!r}")
    return value


def _variants(raw: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not raw or not all(isinstance(v, dict) for v in raw):
        raise ConfigError(f"{where}: variants must be one or more [[variants]] tables, each with a name")
    out, names = [], set()
    for i, table in enumerate(raw, start=1):
        table = dict(table)
        vname = table.pop("name", None)
        if not isinstance(vname, str) or not vname.strip():
            raise ConfigError(f"{where}: variant {i} needs name = \"...\" (the label the report shows)")
        if vname in names:
            raise ConfigError(f"{where}: two variants are named {vname!r}")
        names.add(vname)
        out.append((vname, table))
    return out


def _seeds(raw: Any, where: str, max_jobs: int = MAX_JOBS) -> tuple[int, ...]:
    accepted = (f"a count from 1 to {max_jobs:,} (repeats per cell; --max-jobs N raises the limit) or a list of "
                f"at most {max_jobs:,} distinct seeds from 0 to {MAX_SEED}")
    if isinstance(raw, bool):
        raise ConfigError(f"{where}: seeds must be a positive count or a list of seeds >= 0; got {raw!r}")
    if isinstance(raw, int):
        if raw <= 0:
            raise ConfigError(f"{where}: seeds must be a positive count (repeats per cell) or a list of seeds >= 0; got {raw}")
        if raw > max_jobs:  # refused as a number: never a range of that length
            raise ConfigError(f"{where}: seeds = {_number(raw)} is above the limit of {max_jobs:,} runs; give {accepted}")
        return tuple(range(raw))
    if isinstance(raw, list) and len(raw) > max_jobs:
        raise ConfigError(f"{where}: seeds lists {len(raw):,} seeds, above the limit of {max_jobs:,} runs; give {accepted}")
    if isinstance(raw, list) and raw and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in raw):
        high = next((s for s in raw if s > MAX_SEED), None)
        if high is not None:
            raise ConfigError(f"{where}: seed {_number(high)} is out of range; give {accepted}")
        seen: set[int] = set()
        for s in raw:
            if s in seen:
                raise ConfigError(f"{where}: seeds lists a seed twice: {s}")
            seen.add(s)
        return tuple(raw)
    raise ConfigError(f"{where}: seeds must be a positive count or a non-empty list of seeds >= 0; got {_brief(raw)}")


def _brief(value: Any, limit: int = 200) -> str:
    """``repr(value)``, cut to ``limit`` characters (a value from a huge list must not make a huge message)."""
    if isinstance(value, list) and len(value) > 50:
        value = value[:50]
        text = repr(value)[:-1] + ", ...]"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _number(value: int) -> str:
    """A user's integer as a message shows it (an absurd one by its digit count, not its digits)."""
    if value.bit_length() < 200:
        return str(value)
    try:
        return f"a number of {len(str(value))} digits"
    except ValueError:  # more digits than sys.get_int_max_str_digits() allows str() to write
        return f"a number of about {int(value.bit_length() * math.log10(2)) + 1} digits"


def _published(raw: Any, labels: list[str], metric: str, where: str) -> tuple[dict[str, float], str, str]:
    if raw is None:
        return {}, "", metric
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [published] must be a table")
    table = dict(raw)
    source = table.pop("source", "")
    pub_metric = table.pop("metric", metric)
    values: dict[str, float] = {}
    for label, value in table.items():
        if label not in labels:
            raise ConfigError(f"{where}: published label {label!r} matches no cell; cells: {', '.join(labels)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}: published {label!r} must be a number; got {value!r}")
        values[label] = float(value)
    return values, str(source), str(pub_metric)


def differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What changed between two :meth:`Study.fingerprint` values, one phrase per key."""
    out = []
    if stored.get("metric") != current.get("metric"):
        out.append(f"metric {stored.get('metric')} -> {current.get('metric')}")
    if list(stored.get("seeds", [])) != list(current.get("seeds", [])):
        out.append(f"seeds {stored.get('seeds')} -> {current.get('seeds')}")
    if stored.get("search") != current.get("search"):
        old_s, new_s = stored.get("search") or {}, current.get("search") or {}
        keys = sorted(set(old_s) | set(new_s))
        out.append("search " + ", ".join(f"{k} {old_s.get(k, '(unset)')} -> {new_s.get(k, '(unset)')}" for k in keys
                                         if old_s.get(k) != new_s.get(k)))
    old, new = stored.get("cells", {}), current.get("cells", {})
    for label in [x for x in old if x not in new]:
        out.append(f"cell {label!r} removed")
    for label in [x for x in new if x not in old]:
        out.append(f"cell {label!r} added")
    for label in [x for x in new if x in old]:
        keys = sorted(set(old[label]) | set(new[label]))
        changed = [f"{k} {old[label].get(k, '(unset)')} -> {new[label].get(k, '(unset)')}" for k in keys
                   if old[label].get(k) != new[label].get(k)]
        if changed:
            out.append(f"cell {label!r}: {', '.join(changed)}")
    return out
