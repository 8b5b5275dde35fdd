"""Property-based tests (issue 30, deliverable 7): whatever a user types or a file holds, the parsers
give a valid object or cnnbench's own one-line error, never a traceback.

Covered: study files (TOML text and the parsed table: [base], [grid], seeds, [[variants]], [report],
[launcher], [budgets], names), ``--search`` expressions, ``--set`` / ``--model-option`` values and
``--config`` files. Most properties call the parsers in-process (fast); a few go through the Click
CLI with CliRunner. The strategies aim at the edges: integers beyond int64 (and beyond float),
NaN/inf, unicode and control characters, empty strings, nested tables, wrong types, two spellings
of one key (``kernel_size`` / ``model.kernel_size`` / ``--kernel-size``).

The example budget is fixed and the generation derandomized (profile ``cnnbench-ci``), so CI runs
the same examples every time; ``HYPOTHESIS_PROFILE=cnnbench-deep`` explores 2000 new random examples
per property (about 20 minutes for the in-process ones on a shared 2-core machine).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path

import click
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cnnbench.config import OPTIONS, SECTIONS, TrainConfig, apply_values
from cnnbench.errors import CnnbenchError
from cnnbench.registry import parse_key_values, resolve_options
from cnnbench.study import definition
from cnnbench.tune import space

_COMMON = dict(deadline=None, derandomize=True, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.register_profile("cnnbench-ci", max_examples=120, **_COMMON)
settings.register_profile("cnnbench-deep", max_examples=2000, **{**_COMMON, "derandomize": False})  # new examples each run
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "cnnbench-ci")
IN_PROCESS = settings(settings.get_profile(PROFILE))
THROUGH_CLI = settings(settings.get_profile(PROFILE), max_examples=max(8, settings.get_profile(PROFILE).max_examples // 10))

# ---------------------------------------------------------------------------------------------
# The outcome every property checks


def one_line_or_value(call, *args, **kwargs):
    """``call(*args, **kwargs)``: its value, or the cnnbench / Click usage error it raised, whose
    message must be one non-empty line (any other exception fails the test with its traceback)."""
    try:
        return call(*args, **kwargs)
    except (CnnbenchError, click.UsageError) as err:
        message = err.format_message() if isinstance(err, click.UsageError) else str(err)
        assert message.strip(), f"{type(err).__name__} with an empty message"
        assert "\n" not in message and "\r" not in message, f"a multi-line message: {message!r}"
        return err


def cli_outcome(result) -> None:
    """A CliRunner result: no exception but SystemExit, no traceback, an error is one 'Error:' line."""
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"exit {result.exit_code}: {type(result.exception).__name__}: {result.exception}\n{result.output}")
    assert "Traceback" not in result.output
    if result.exit_code != 0:
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, result.output
        after = result.output.split("Error:", 1)[1].strip()
        assert after and "\n" not in after, f"the error is not one line: {result.output!r}"


# ---------------------------------------------------------------------------------------------
# Strategies

HUGE_INTS = st.sampled_from([2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**30, 10**400,
                             -(10**400), 10**4000])
INTS = st.one_of(st.integers(-3, 300), st.integers(), HUGE_INTS)
FLOATS = st.one_of(st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, 1e308, 5e-324, -0.0, 3.5e38, 0.5]))
WORDS = ("", " ", "none", "None", "auto", "all", "true", "off", "nan", "inf", "-inf", "1e999", "1_000", "0x10",
         "\u0663", "\u0968\u0969", "\u00a0", "\n", "\t1", "é", "💥", "lenet5", "mlp", "resnet18", "digits", "edges",
         "adam", "sgd", "cosine", "flip-crop", "flip", "on", "0,2,3,4", "128,64", "0,middle,end", "end", "quick",
         "head", "a" * 600, "x,y", '"', "'", "=", "()", "\\", "\x00")
TEXTS = st.one_of(st.sampled_from(WORDS), st.text(max_size=12))
SCALARS = st.one_of(st.booleans(), INTS, FLOATS, TEXTS)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(TEXTS, inner, max_size=3)), max_leaves=8)

# Option names: the declared ones, their aliases and flag spellings, plugin options, nonsense.
PLUGIN_KEYS = ("model.kernel_size", "model.dropout", "model.hidden", "model.width", "model.", "data.", "data.classes",
               "model.kernel-size", "kernel_size", "--kernel-size", "--lr", "--batch-size", "batch-size", ".lr",
               "variant", "seeds", "name", "model..x")
NAMES = st.one_of(st.sampled_from(sorted(OPTIONS)), st.sampled_from(PLUGIN_KEYS), TEXTS)


def fitting(name: str) -> st.SearchStrategy:
    """Values the option ``name`` accepts (mostly), so valid configs are reached too."""
    o = OPTIONS.get(definition.canonical_key(name))
    if o is None:
        return st.one_of(st.integers(1, 9), st.sampled_from([0.0, 0.5, True, "3", "128,64"]), st.lists(st.integers(1, 99), max_size=3))
    if o.choices:
        return st.sampled_from(o.choices)
    if o.type == "bool":
        return st.booleans()
    if o.type == "int":
        low = int(o.low) if o.low is not None else 0
        return st.integers(low, low + 40)
    if o.type == "float":
        low = o.low if o.low is not None else 0.0
        high = o.high if o.high is not None else low + 10
        return st.floats(low, high, exclude_min=o.low_open, exclude_max=o.high_open, allow_nan=False)
    return TEXTS


def value_for(name: str, wild: bool = True) -> st.SearchStrategy:
    return st.one_of(fitting(name), fitting(name), VALUES) if wild else fitting(name)


def as_text(value) -> str:
    """A typed value as the command line spells it."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


# One example in three is well-formed (keys the format knows, values the options accept), so the
# properties about valid objects run too; the others mix in wrong keys, types and sizes.
WILD = st.sampled_from([False, True, True])
VARIED = sorted(n for n, o in OPTIONS.items() if o.vary)


@st.composite
def option_tables(draw, max_size: int = 4, wild: bool = True) -> dict:
    keys = draw(st.lists(NAMES if wild else st.sampled_from(VARIED), max_size=max_size, unique=True))
    return {k: draw(value_for(k, wild)) for k in keys}


@st.composite
def grids(draw, wild: bool = True) -> dict:
    if not wild:
        keys = draw(st.lists(st.sampled_from(VARIED), min_size=1, max_size=2, unique=True))
        return {k: draw(st.lists(fitting(k), min_size=1, max_size=3, unique_by=json.dumps)) for k in keys}
    keys = draw(st.lists(st.one_of(st.sampled_from(["lr", "optimizer", "kernel_size", "model.kernel_size", "epochs",
                                                    "batch_size", "model", "augment", "--lr", "model.dropout"]), NAMES),
                         min_size=0, max_size=3, unique=True))
    return {k: draw(st.one_of(st.lists(value_for(k), min_size=1, max_size=3), st.lists(value_for(k), max_size=0),
                              VALUES)) for k in keys}


@st.composite
def study_tables(draw) -> dict:
    """A study file's table: mostly the documented keys with fitting or wild values, now and then a
    key of the wrong type or one the format does not know."""
    if not draw(WILD):
        raw = {"name": draw(st.sampled_from(["s", "my-study", "a1"])), "grid": draw(grids(wild=False)),
               "base": draw(option_tables(wild=False)), "seeds": draw(st.one_of(st.integers(1, 3), st.lists(
                   st.integers(0, definition.MAX_SEED), min_size=1, max_size=3, unique=True)))}
        if draw(st.booleans()):
            raw["variants"] = [{"name": n, **draw(option_tables(max_size=2, wild=False))}
                               for n in draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=2, unique=True))]
        return raw
    raw: dict = {}
    maybe = lambda: draw(st.integers(0, 9)) > 2  # noqa: E731
    if maybe():
        raw["name"] = draw(st.one_of(st.sampled_from(["s", "my-study", "a1", "-x", "A", "é"]), TEXTS, VALUES))
    if draw(st.booleans()):
        raw["seeds"] = draw(st.one_of(st.integers(1, 4), st.lists(st.integers(0, 2**33), max_size=4), INTS, VALUES))
    if maybe():
        raw["base"] = draw(st.one_of(option_tables(), option_tables(), VALUES))
    if maybe():
        raw["grid"] = draw(st.one_of(grids(), grids(), grids(), VALUES))
    if draw(st.booleans()):
        variant = st.builds(lambda name, table: {"name": name, **table},
                            st.one_of(st.sampled_from(["a", "b", "a"]), TEXTS, VALUES), option_tables(max_size=2))
        raw["variants"] = draw(st.one_of(st.lists(variant, max_size=3), VALUES))
    if draw(st.integers(0, 5)) == 0:
        raw["report"] = draw(st.one_of(
            st.fixed_dictionaries({}, optional={"alpha": st.one_of(FLOATS, VALUES), "practical_difference": st.one_of(FLOATS, VALUES),
                                                "correction": st.one_of(st.sampled_from(["holm", "none", "bonferroni"]), VALUES)}),
            VALUES))
    if draw(st.integers(0, 5)) == 0:
        raw["launcher"] = draw(st.one_of(
            st.fixed_dictionaries({}, optional={"name": st.sampled_from(["local", "slurm", "ray", "x"]),
                                                "cpus_per_task": INTS, "num_cpus": st.one_of(FLOATS, INTS),
                                                "time": st.one_of(TEXTS, INTS), "sbatch": VALUES, "mem": VALUES,
                                                "folder": TEXTS, "ray-address": TEXTS, "signal_delay_s": INTS}),
            st.dictionaries(TEXTS, VALUES, max_size=2)))
    if draw(st.integers(0, 5)) == 0:
        raw["budgets"] = draw(st.one_of(st.dictionaries(st.sampled_from(["quick", "q uick", ""]), option_tables(max_size=2),
                                                        max_size=2), VALUES))
    if draw(st.integers(0, 5)) == 0:  # a search study: tune's grammar, samplers and pruners (no [grid] beside it)
        raw.pop(draw(st.sampled_from(["grid", "variants", "seeds"])), None)
        raw["search"] = draw(st.one_of(
            st.fixed_dictionaries({"space": st.one_of(st.lists(search_expressions(), max_size=3), search_expressions(), VALUES)},
                                  optional={"trials": st.one_of(st.integers(1, 20), INTS, VALUES),
                                            "sampler": st.one_of(st.sampled_from(["tpe", "random", "grid", "x"]), VALUES),
                                            "pruner": st.one_of(st.sampled_from(["none", "median"]), VALUES),
                                            "objective": st.one_of(st.sampled_from(["val_accuracy", "val_loss"]), VALUES),
                                            "direction": st.one_of(st.sampled_from(["maximize", "minimize"]), VALUES)}),
            st.dictionaries(TEXTS, VALUES, max_size=2)))
    for key in ("metric", "metric_goal", "description", "reference"):
        if draw(st.integers(0, 5)) == 0:
            raw[key] = draw(st.one_of(st.sampled_from(["test_accuracy", "val_loss", "max", "min", "a", "lr=0.1"]), VALUES))
    if draw(st.integers(0, 7)) == 0:
        raw["published"] = draw(st.one_of(st.dictionaries(st.one_of(st.sampled_from(["source", "metric", "a"]), TEXTS),
                                                          st.one_of(FLOATS, VALUES), max_size=2), VALUES))
    if draw(st.integers(0, 9)) == 0:
        raw[draw(TEXTS)] = draw(VALUES)
    return raw


BARE_KEY = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


def toml_key(key: str, bare: bool = False) -> str:
    """A quoted key (a TOML basic string: "model.kernel_size" stays one key), or with ``bare`` a key
    written as is where TOML allows it: model.kernel_size = 3 is then a dotted key, a nested table."""
    return key if bare and BARE_KEY.fullmatch(key) else json.dumps(key)


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_text(raw: dict, bare: bool = False) -> str:
    """``raw`` as a TOML document: top-level tables as [sections], lists of tables as [[arrays]]."""
    top, sections = [], []
    for key, value in raw.items():
        if isinstance(value, dict) and value and all(not isinstance(v, dict) for v in value.values()):
            sections.append(f"[{toml_key(key)}]")
            sections += [f"{toml_key(k, bare)} = {toml_value(v)}" for k, v in value.items()]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for table in value:
                sections.append(f"[[{toml_key(key)}]]")
                sections += [f"{toml_key(k, bare)} = {toml_value(v)}" for k, v in table.items()]
        else:
            top.append(f"{toml_key(key, bare)} = {toml_value(value)}")
    return "\n".join(top + sections) + "\n"


def check_study(study) -> None:
    """What a study that loads must hold: a bounded number of runs, every cell a valid config."""
    assert 1 <= len(study.cells) * len(study.seeds) <= definition.MAX_JOBS
    assert all(0 <= s <= definition.MAX_SEED for s in study.seeds) and len(set(study.seeds)) == len(study.seeds)
    for cell in study.cells:
        cell.config.validate()
    assert len({c.label for c in study.cells}) == len(study.cells)
    assert len(study.digest) == 16
    json.dumps(study.describe())


GOOD_STUDY = {"name": "s", "seeds": 2, "base": {"epochs": 1, "model": "mlp"}, "grid": {"lr": [0.1, 0.01]}}


# ---------------------------------------------------------------------------------------------
# Study files


@IN_PROCESS
@given(study_tables())
@example(GOOD_STUDY)
@example({"name": "s", "grid": {"lr": [0.1]}, "seeds": 10**400})
@example({"name": "s", "grid": {"lr": [0.1]}, "seeds": [2**32, -1]})
@example({"name": "s", "grid": {"kernel_size": [3], "model.kernel_size": [5]}})  # two spellings of one axis
@example({"name": "s", "grid": {"lr": [0.1]}, "base": {"epochs": 10**400}})  # a number beyond float: OverflowError
@example({"name": "s", "grid": {"lr": [0.1]}, "base": {"lr": 10**400}})
@example({"name": "s", "variants": [{"name": "a", "epochs": 2**64}]})
@example({"a\nb": 1, "name": "s"})  # an unknown key with a line break, named in the message
@example({"name": "s", "grid": {"lr": [0.1]}, "base": {"a\nb": 1}})
@example({"name": "s", "grid": {"lr": [0.1]}, "budgets": {"quick": {"x\ny": 1}}})
@example({"name": "s", "grid": {"lr": [0.1]}, "report": {"correction": {}}})
@example({"name": "s", "grid": {"lr": [0.1]}, "launcher": {"a\nb": 1}})
@example({"name": "s", "search": {"space": ["lr=uniform(0.1,0.2)"], "trials": 2, "sampler": {}, "a\nb": 1}})
@example({"name": "s", "search": {"space": ["lr=uniform(0.1,0.2)"], "trials": 2, "sampler": {}, "direction": []}})
@example({"name": "s", "search": {"space": "epochs=int(1,9223372036854775807)", "trials": 10**400}})
def test_study_table_is_a_study_or_one_line(raw):
    study = one_line_or_value(definition.expand, raw, source="p.toml")
    if not isinstance(study, Exception):
        check_study(study)


@IN_PROCESS
@given(study_tables(), st.booleans(), st.integers(0, 3), st.sampled_from(
    ["", "x", "[base]\nlr = 1\nlr = 2\n", "[grid]\nlr = [1]\n", "[", "= 1", "\x00", "\u2028", "a = 1" + "0" * 5000]))
@example(GOOD_STUDY, False, 0, "")
@example({"name": "s", "base": {"model.kernel_size": 3}, "grid": {"lr": [0.1]}}, True, 0, "")  # a dotted key: a table
def test_study_text_is_a_study_or_one_line(raw, bare, cut, junk):
    """The same tables written as TOML text (keys quoted, or bare where TOML allows: dotted keys make
    nested tables), sometimes cut short or with junk appended (a duplicate key, a second [grid])."""
    text = toml_text(raw, bare)
    if cut:
        text = text[: len(text) * cut // 4]
    study = one_line_or_value(definition.load, "p.toml", text + junk)
    if not isinstance(study, Exception):
        check_study(study)


@IN_PROCESS
@given(st.text(max_size=200))
def test_any_text_is_a_study_or_one_line(text):
    one_line_or_value(definition.load, "p.toml", text)


@IN_PROCESS
@given(study_tables(), st.lists(st.one_of(st.builds("{}={}".format, NAMES, TEXTS), TEXTS), max_size=3),
       st.sampled_from([None, "quick", "faithful", ""]), st.one_of(st.integers(-1, 40), st.just(True), HUGE_INTS))
@example(GOOD_STUDY, ["epochs=3", "model.kernel_size=3"], None, 10)
@example(GOOD_STUDY, ["kernel_size=3", "model.kernel_size=5"], None, 10)
def test_study_with_sets_budget_and_max_jobs(raw, sets, budget, max_jobs):
    """``study show/run FILE --set K=V --budget B --max-jobs N``: the loader with the command line's values."""
    study = one_line_or_value(definition.load, "p.toml", toml_text(raw), budget=budget, sets=sets, max_jobs=max_jobs)
    if not isinstance(study, Exception):
        assert len(study.cells) * len(study.seeds) <= max_jobs


@IN_PROCESS
@given(st.one_of(TEXTS, VALUES))
@example("a" * 201)
@example("x\ny")
def test_study_name(name):
    checked = one_line_or_value(definition.check_study_name, name)
    if not isinstance(checked, Exception):
        assert checked == name and 1 <= len(name) <= 200


@IN_PROCESS
@given(st.dictionaries(TEXTS, VALUES, max_size=4), st.dictionaries(st.sampled_from(["ray_address", "ray-address", "folder", "name"]),
                                                                   st.one_of(TEXTS, VALUES), max_size=3))
@example({}, {"folder": "/etc"})
@example({}, {"ray_address": "ray://elsewhere:10001"})
def test_launcher_table(table, known):
    """A study file's [launcher] table with the command line's defaults: launcher options or one line."""
    from cnnbench.cli_options import launcher_from

    options = one_line_or_value(launcher_from, {}, {**table, **known}, "study file p.toml")
    if not isinstance(options, Exception):
        one_line_or_value(options.check, 1)


# ---------------------------------------------------------------------------------------------
# --search expressions

SEARCH_NAMES = st.one_of(st.sampled_from(["lr", "batch_size", "batch-size", "optimizer", "momentum", "epochs", "augment",
                                          "kernel_size", "model.kernel_size", "model.dropout", "model.hidden", "model",
                                          "seed", "device", "train_size", "data.x", "amp", "patience"]),
                         st.from_regex(r"[A-Za-z_][\w.\-]{0,8}", fullmatch=True))
KINDS = st.one_of(st.sampled_from(space.KINDS + ("Choice", "INT", "normal", "")), st.from_regex(r"[a-z]{1,6}", fullmatch=True))
NUMBER_TEXT = st.one_of(st.integers(-5, 300).map(str), INTS.map(str), FLOATS.map(repr), st.sampled_from(
    ["nan", "inf", "-inf", "1e999", "-1e999", "3.5e38", "1e-320", "0", "1_0", " 4 ", "0x1", "\u0663", "1e5", "1.5"]))
ARG_TEXT = st.one_of(NUMBER_TEXT, NUMBER_TEXT, TEXTS, TEXTS.map(lambda t: f'"{t}"'), st.sampled_from(['"128,64"', "'3'", "true"]))


@st.composite
def fitting_expression(draw) -> str:
    """An expression the option accepts (mostly: a declared check or a plugin may still refuse it)."""
    name = draw(st.sampled_from(VARIED))
    o = OPTIONS[name]
    if o.type in ("int", "float") and not o.choices and draw(st.booleans()):
        low, high = sorted(draw(st.lists(fitting(name), min_size=2, max_size=2, unique=True)))
        kind = "int" if o.type == "int" else draw(st.sampled_from(["uniform", "loguniform"]))
        return f"{name}={kind}({low},{high})"
    values = draw(st.lists(fitting(name), min_size=1, max_size=3, unique=True))
    return f"{name}=choice({','.join(space._show(v) for v in values)})"


@st.composite
def search_expressions(draw) -> str:
    if not draw(WILD):
        return draw(fitting_expression())
    if draw(st.integers(0, 9)) == 0:
        return draw(TEXTS)
    args = ",".join(draw(st.lists(ARG_TEXT, max_size=4)))
    close = draw(st.sampled_from([")", ")", ")", "", ") x"]))
    return f"{draw(SEARCH_NAMES)}{draw(st.sampled_from(['=', '=', ' = ', '==', '']))}{draw(KINDS)}({args}{close}"


@IN_PROCESS
@given(search_expressions())
@example("lr=loguniform(1e-5,1e-1)")
@example("epochs=int(1,9223372036854775807)")  # a range of 2**63 values: never listed value by value
@example("epochs=int(-9223372036854775808,9223372036854775807,1)")
@example("lr=uniform(0,1e39)")
@example("lr=uniform(nan,1)")
@example("lr=loguniform(1e-320,inf)")
@example('optimizer=choice(adam,"sgd")')
@example("batch_size=choice(32,1e3)")
@example("model.hidden=choice(\"128,64\",\"a\")")
def test_search_expression(text):
    """One ``--search`` expression: a parameter whose canonical text parses back to itself, or one line."""
    config = TrainConfig()
    param = one_line_or_value(space.parse_expression, text, config)
    if isinstance(param, Exception):
        return
    assert space.parse_expression(param.text(), config) == param
    values = param.values()
    assert values is None or 1 <= len(values) <= max(space.MAX_CHECKED_VALUES, len(param.choices))
    if param.kind != "choice":
        assert math.isfinite(param.low) and math.isfinite(param.high) and param.low < param.high
        assert abs(param.low) <= space.FLOAT32_MAX and abs(param.high) <= space.FLOAT32_MAX or param.integer
    one_line_or_value(space.SearchSpace((param,)).grid)


@IN_PROCESS
@given(st.lists(search_expressions(), max_size=3), st.sets(st.sampled_from(["lr", "batch_size", "model.kernel_size"])))
@example([], {"lr", "batch_size", "model.kernel_size"})
@example(["lr=uniform(0.1,0.2)", "lr=uniform(0.1,0.3)"], set())
def test_search_space(expressions, fixed):
    result = one_line_or_value(space.parse_space, expressions, TrainConfig(), fixed=fixed)
    if not isinstance(result, Exception):
        assert result.params and len(set(result.names)) == len(result.names)
        assert not set(result.names) & fixed if expressions else True


# ---------------------------------------------------------------------------------------------
# --set and --model-option values

FITTING_PAIRS = st.lists(st.sampled_from(sorted(OPTIONS)).flatmap(
    lambda k: fitting(k).map(lambda v: f"{k}={as_text(v)}")), max_size=3)
PAIRS = st.one_of(FITTING_PAIRS, st.lists(st.one_of(st.builds(lambda k, v: f"{k}={v}", NAMES, st.one_of(TEXTS, NUMBER_TEXT)),
                           st.builds(lambda k, v: f"{k}={v}", st.sampled_from(sorted(OPTIONS)), NUMBER_TEXT), TEXTS),
                 max_size=4))


@IN_PROCESS
@given(PAIRS)
@example(["epochs=99999999999999999999999999"])
@example(["lr=1e999"])
@example(["lr=nan", "epochs=3"])
@example(["seed=" + "9" * 5000])  # more digits than int() reads
@example(["kernel_size=3", "model.kernel_size=5"])
@example(["preset=nosuch"])
@example(["a\nb=1"])
def test_set_values(pairs):
    """``--set K=V`` (study) and the MLproject's ``name=value`` text: a valid config or one line."""
    def build():
        sets = definition.parse_sets(pairs)
        return apply_values(TrainConfig(), sets, where="--set").validate()

    config = one_line_or_value(build)
    if not isinstance(config, Exception):
        assert TrainConfig.from_dict(config.to_dict()) == config


def _models() -> list[str]:
    from cnnbench.registry import MODELS

    return MODELS.names()


@IN_PROCESS
@given(st.sampled_from(_models()), st.lists(st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(["kernel_size", "dropout", "hidden", "width", "channels", "norm",
                                                        "blocks", "activation", "depth", "pool", "bias"]),
              st.one_of(NUMBER_TEXT, TEXTS, st.sampled_from(["128,64", "3,5", ",", "1,,2", "true"]))),
    TEXTS), max_size=3))
@example("mlp", ["hidden=128," + "9" * 30])
@example("mlp", ["dropout=nan"])
@example("lenet5", ["kernel_size=inf"])
def test_model_option_text(model, pairs):
    """``--model-option K=V``: the model's options typed and inside their declared bounds, or one line."""
    from cnnbench.registry import MODELS

    plugin = MODELS.get(model)

    def resolve():
        return resolve_options(plugin.options, parse_key_values(pairs, flag="--model-option"), owner=f"model {model!r}")

    check_resolved(plugin, one_line_or_value(resolve))


@IN_PROCESS
@given(st.sampled_from(_models()), st.dictionaries(st.sampled_from(["kernel_size", "dropout", "hidden", "width", "x"]),
                                                   VALUES, max_size=3))
@example("mlp", {"hidden": [math.inf]})  # a TOML list holding inf: int(inf) is an OverflowError
@example("mlp", {"hidden": [10**400]})
@example("mlp", {"dropout": 10**400})
def test_model_option_typed(model, given_options):
    """Plugin options as a study file or a config.json gives them (typed TOML/JSON values)."""
    from cnnbench.registry import MODELS

    plugin = MODELS.get(model)
    check_resolved(plugin, one_line_or_value(resolve_options, plugin.options, given_options, owner=f"model {model!r}"))


def check_resolved(plugin, resolved) -> None:
    if isinstance(resolved, Exception):
        return
    for o in plugin.options:
        value = resolved[o.name]
        if value == o.default:
            continue
        assert not o.choices or value in o.choices
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                assert math.isfinite(v), f"{o.name}={value!r} accepted"
                assert (o.low is None or v >= o.low) and (o.high is None or v <= o.high)


# ---------------------------------------------------------------------------------------------
# --config files


@st.composite
def config_dicts(draw) -> dict:
    """A config.json's object: mostly its sections and fields, with fitting or wild values."""
    raw: dict = {}
    wild = draw(WILD)
    by_section = {s: [(o.field, name) for name, o in OPTIONS.items() if o.section == s] for s in SECTIONS}
    names = st.one_of(st.sampled_from(list(SECTIONS)), TEXTS) if wild else st.sampled_from(list(SECTIONS))
    for section in draw(st.lists(names, max_size=4, unique=True)):
        if wild and draw(st.integers(0, 9)) == 0:
            raw[section] = draw(VALUES)
            continue
        fields = by_section.get(section, [])
        chosen = draw(st.lists(st.sampled_from(fields), max_size=4, unique=True)) if fields else []
        table = {f: draw(value_for(name, wild)) for f, name in chosen}
        if wild and draw(st.integers(0, 4)) == 0:
            table[draw(st.sampled_from(["options", "kernel_size", "resume", "channels_last", "x"]))] = draw(VALUES)
        raw[section] = table
    return raw


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


@IN_PROCESS
@given(config_dicts())
@example({"run": {"epochs": 10**400}})  # math.isfinite(int) beyond float: OverflowError
@example({"optim": {"lr": 10**400}})
@example({"run": {"seed": 2**64}})
@example({"model": {"kernel_size": 3, "options": {"kernel_size": 5}}})
@example({"a\nb": {}})
@example({"run": {"a\nb": 1}})
def test_config_object(raw):
    """``TrainConfig.from_dict`` (what ``--config`` reads): a config that validates and survives its
    own ``config.json`` round trip, or one line."""
    config = one_line_or_value(TrainConfig.from_dict, raw, source="c.json")
    if not isinstance(config, Exception):
        config.validate()
        assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())), source="c.json") == config


@IN_PROCESS
@given(st.one_of(config_dicts().map(json.dumps), VALUES.map(json.dumps), st.text(max_size=60),
                 st.binary(max_size=30).map(lambda b: b.decode("latin-1"))),
       st.sampled_from(["", "", "1" * 5000, "\xff", "]"]))
@example('{"run": {"epochs": ', "1" * 5000)  # an integer of more digits than json reads: ValueError
@example("NaN", "")
def test_config_file(folder, text, junk):
    path = folder / "config.json"
    path.write_bytes((text + junk).encode("utf-8", "surrogatepass"))
    one_line_or_value(TrainConfig.load, path)


# ---------------------------------------------------------------------------------------------
# Through the Click CLI (CliRunner, in-process): exit code, no traceback, one Error line


RISKY = ("image_size", "kernel_size", "batch_size", "train_size")  # sizes that allocate when a model is built


def tame(value):
    """``value`` without sizes beyond 4096 under a key that builds a model from them (image size,
    plugin options): the CLI tests build models, and refusing absurd sizes before allocating is the
    size checks' job (issue 30, deliverable 2), tested in tests/test_faults_limits.py."""
    def big(v):
        return (isinstance(v, int) and not isinstance(v, bool) and abs(v) > 4096) or (
            isinstance(v, (list, dict)) and any(big(x) for x in (v.values() if isinstance(v, dict) else v)))

    if isinstance(value, dict):
        return {k: tame(v) for k, v in value.items()
                if not (isinstance(k, str) and (k.startswith("model.") or any(r in k for r in RISKY)) and big(v))}
    if isinstance(value, list):
        return [tame(v) for v in value]
    return value


def invoke(*args):
    from click.testing import CliRunner

    from cnnbench.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


@THROUGH_CLI
@given(study_tables(), st.lists(st.builds("{}={}".format, NAMES, st.one_of(TEXTS, NUMBER_TEXT)), max_size=2))
@example({"name": "s", "grid": {"lr": [0.1]}, "base": {"epochs": 10**400}}, [])
@example(GOOD_STUDY, ["epochs=1e999"])
def test_cli_study_show(folder, raw, sets):
    path = folder / "study.toml"
    path.write_text(toml_text(tame(raw)), encoding="utf-8")
    result = invoke("study", "show", path, "--no-estimate", *[a for s in sets for a in ("--set", s)])
    cli_outcome(result)


@THROUGH_CLI
@given(search_expressions())
@example("epochs=int(1,9223372036854775807)")
@example("lr=uniform(0,1e39)")
@example('crop_padding=choice(","\n","")')  # a value with a line break, refused by the option's check: one line
def test_cli_tune_search(folder, expression):
    """``tune --search EXPR`` beside a continuous lr under the grid sampler: always refused before any
    store is opened, with EXPR's own error when it has one."""
    result = invoke("tune", "--search", expression, "--search", "lr=loguniform(1e-5,1e-1)", "--sampler", "grid",
                    "--model", "mlp", "--tracking-uri", f"sqlite:///{folder}/mlflow.db", "--storage",
                    f"sqlite:///{folder}/optuna.db")
    cli_outcome(result)
    assert result.exit_code == 2
    assert not (folder / "optuna.db").exists() and not (folder / "mlflow.db").exists()


@THROUGH_CLI
@given(config_dicts())
@example({"run": {"epochs": 10**400}})
def test_cli_config_file(folder, raw):
    """``tune --config FILE`` with a search that cannot be used: the file's error, or the search's."""
    path = folder / "config.json"
    path.write_text(json.dumps(tame(raw)), encoding="utf-8")
    result = invoke("tune", "--config", path, "--search", "lr=choice()", "--tracking-uri",
                    f"sqlite:///{folder}/mlflow.db", "--storage", f"sqlite:///{folder}/optuna.db")
    cli_outcome(result)
    assert result.exit_code != 0


@settings(THROUGH_CLI, max_examples=max(4, THROUGH_CLI.max_examples // 2))  # each builds and summarises a model
@given(st.lists(st.builds("{}={}".format, st.sampled_from(["kernel_size", "dropout", "hidden", "x", ""]),
                          st.one_of(st.integers(-3, 300).map(str), FLOATS.map(repr), TEXTS)), min_size=1, max_size=2))
@example(["kernel_size=1e999"])
def test_cli_model_option(pairs):
    result = invoke("info", "mlp" if any(p.startswith(("hidden", "dropout")) for p in pairs) else "lenet5",
                    *[a for p in pairs for a in ("--model-option", p)])
    cli_outcome(result)


FLAGS = sorted(o.flag for o in OPTIONS.values() if o.type != "bool") + ["--kernel-size"]


@THROUGH_CLI
@given(st.lists(st.tuples(st.sampled_from(FLAGS), st.one_of(NUMBER_TEXT, TEXTS)), min_size=1, max_size=3))
@example([("--epochs", "9" * 5000)])
@example([("--kernel-size", "1e999"), ("--lr", "nan")])
def test_cli_flag_values(pairs):
    """Every train flag's text through Click (``Declared`` / ``KernelSize``): its one-line refusal, or
    (beside --resume, so nothing trains) the --resume usage error; exit 2 either way."""
    result = invoke("train", "--resume", "0" * 32, *[a for pair in pairs for a in pair])
    cli_outcome(result)
    assert result.exit_code == 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
