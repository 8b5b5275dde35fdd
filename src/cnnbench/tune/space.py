"""The search-space grammar and its checks.

``NAME=loguniform(LOW,HIGH) | uniform(LOW,HIGH) | int(LOW,HIGH[,STEP]) | choice(V1,V2,...)`` where
NAME is a train option (``lr``, ``batch_size``, ``optimizer``, ...) or a plugin option
``model.<key>`` / ``data.<key>``. Parsing checks the text against the option's type; ``restrict``
then asks ``api.resolve`` about the values (model/dataset compatibility) before any study starts,
dropping the values a model cannot take on this input (e.g. kernel sizes too large) and reporting them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

from cnnbench.config import ALIASES, OPTIONS, TrainConfig, apply_values, shown_names, variable_names
from cnnbench.errors import ConfigError, ModelInputError

GRAMMAR = (
    "NAME=loguniform(LOW,HIGH) | NAME=uniform(LOW,HIGH) | NAME=int(LOW,HIGH[,STEP]) | NAME=choice(V1,V2,...); "
    "NAME is a train option (lr, batch_size, optimizer, momentum, weight_decay, model, epochs, ...) or "
    "model.<key> / data.<key>; e.g. lr=loguniform(1e-5,1e-1), batch_size=choice(32,64,128,256), "
    "model.dropout=uniform(0,0.5)"
)
DEFAULT_SPACE = ("lr=loguniform(1e-5,1e-1)", "batch_size=choice(32,64,128,256)", "model.kernel_size=choice(3,5,7)")
KINDS = ("loguniform", "uniform", "int", "choice")
FLOAT32_MAX = 3.4028234663852886e38  # numpy.finfo(numpy.float32).max, without importing numpy
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_CHECKED_VALUES = 64  # an int range up to this size is checked value by value
_EXPR = re.compile(r"^\s*(?P<name>[A-Za-z_][\w.\-]*)\s*=\s*(?P<kind>[A-Za-z_]\w*)\s*\((?P<args>.*)\)\s*$", re.S)


@dataclass(frozen=True)
class Target:
    """What a search parameter sets: its value type (int|float|bool|str|ints) and accepted values."""

    name: str
    type: str
    accepted: tuple = ()


@dataclass(frozen=True)
class Param:
    """One searched parameter. ``integer`` ranges suggest ints; ``choices`` hold typed values."""

    name: str
    kind: str
    integer: bool = False
    low: float | None = None
    high: float | None = None
    step: int | None = None
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=self.step or 1, log=self.kind == "loguniform")
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.kind == "loguniform")

    def text(self) -> str:
        """The canonical expression (stored with the study; compared on resume)."""
        if self.kind == "choice":
            args = [_show(v) for v in self.choices]
        else:
            args = [_show(self.low), _show(self.high)] + ([str(self.step)] if self.step else [])
        return f"{self.name}={self.kind}({','.join(args)})"

    def values(self) -> list | None:
        """Every value this parameter can take when that is a short finite list, else None."""
        if self.kind == "choice":
            return list(self.choices)
        if self.integer and self.kind == "int":
            if (int(self.high) - int(self.low)) // (self.step or 1) >= MAX_CHECKED_VALUES:
                return None  # counted, not listed: int(1,2**63-1) has 2**63 values
            return list(range(int(self.low), int(self.high) + 1, self.step or 1))
        return None


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]
    notes: tuple[str, ...] = field(default=())  # what was left out or refused, for the user and the parent run

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def texts(self) -> dict[str, str]:
        return {p.name: p.text() for p in self.params}

    def suggest(self, trial) -> dict[str, Any]:
        return {p.name: p.suggest(trial) for p in self.params}

    def grid(self) -> dict[str, list]:
        """The grid sampler's search space; every parameter must be finite."""
        continuous = [p.text() for p in self.params if p.values() is None]
        if continuous:
            raise ConfigError(
                f"--sampler grid needs a finite space, but {', '.join(continuous)} is continuous (or a very long "
                f"int range); search it with choice(...) instead, or use --sampler tpe / random"
            )
        return {p.name: p.values() for p in self.params}


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str) and ("," in value or value != value.strip() or value == ""):
        return f'"{value}"'  # so the canonical text parses back to the same value
    return str(value)


def apply(config: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """``config`` with the searched (typed) ``values`` set: the same path as studies and the CLI."""
    return apply_values(config, values, where="--search", text=False, varying=True)


def target_for(name: str, config: TrainConfig) -> Target:
    """The type of what ``name`` sets, or a ConfigError listing what can be searched."""
    from cnnbench.registry import DATASETS, MODELS

    prefix, _, key = name.partition(".")
    if key and prefix in ("model", "data"):
        plugin = MODELS.get(config.model.name) if prefix == "model" else DATASETS.get(config.data.name)
        owner = f"model {config.model.name!r}" if prefix == "model" else f"dataset {config.data.name!r}"
        option = plugin.option(key)
        if option is None and prefix == "model" and key == "kernel_size":
            raise ConfigError(f"--search {name}: {owner} takes no kernel size, so it cannot be searched")
        if option is None:
            valid = ", ".join(f"{prefix}.{o.name}" for o in plugin.options) or "(none)"
            raise ConfigError(f"--search {name}: {owner} has no option {key!r}; its options: {valid}")
        return Target(name, option.type, tuple(option.choices))
    option = OPTIONS.get(name)
    if option is None or not option.vary:
        raise ConfigError(
            f"--search: unknown or unsearchable parameter {name!r}; searchable: {', '.join(variable_names())}, "
            f"or a plugin option model.<key> / data.<key> (cnnbench info MODEL lists them)"
        )
    return Target(name, option.type, tuple(option.choices))


def parse_expression(text: str, config: TrainConfig) -> Param:
    """Parse one ``NAME=KIND(ARGS)`` expression against the option it sets."""
    match = _EXPR.match(text)
    if not match:
        raise ConfigError(f"--search {text!r} is not a search expression; accepted: {GRAMMAR}")
    name, kind = match["name"], match["kind"].lower()
    if "." not in name:
        name = name.replace("-", "_")
    name = ALIASES.get(name, name)
    if kind not in KINDS:
        raise ConfigError(f"--search {text!r}: unknown distribution {kind!r}; accepted: {GRAMMAR}")
    target = target_for(name, config)
    args = _split_args(match["args"])
    where = f"--search {text!r}"
    if kind == "choice":
        if not args:
            raise ConfigError(f"{where}: choice() lists no values; give at least one, e.g. choice(32,64)")
        choices = tuple(_typed(target, a, where) for a in args)
        repeated = sorted({_show(c) for c in choices if choices.count(c) > 1})
        if repeated:
            raise ConfigError(f"{where}: choice lists {', '.join(repeated)} more than once")
        return Param(name, kind, choices=choices)
    if target.type not in ("int", "float"):
        accepted = f" ({', '.join(map(str, target.accepted))})" if target.accepted else ""
        raise ConfigError(f"{where}: {name} takes {target.type} values{accepted}, not a range; use {name}=choice(...)")
    integer = target.type == "int"
    if kind == "int" and not integer:
        raise ConfigError(f"{where}: {name} is a real number; use {name}=uniform(a,b) or loguniform(a,b)")
    if kind == "uniform" and integer:
        raise ConfigError(f"{where}: {name} takes integers; use {name}=int(a,b[,step]), loguniform(a,b) or choice(...)")
    expected = (2, 3) if kind == "int" else (2,)
    if len(args) not in expected:
        shape = "int(LOW,HIGH[,STEP])" if kind == "int" else f"{kind}(LOW,HIGH)"
        raise ConfigError(f"{where}: expected {shape}, got {len(args)} argument(s); accepted: {GRAMMAR}")
    low, high = (_number(a, integer, where) for a in args[:2])
    if not low < high:
        raise ConfigError(f"{where}: the low end ({_show(low)}) must be below the high end ({_show(high)})")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: a log range must lie above 0 (log of {_show(low)} is undefined); use a positive low end, or uniform(...)")
    step = None
    if len(args) == 3:
        step = _number(args[2], True, where)
        if step <= 0 or step > high - low:
            raise ConfigError(f"{where}: the step must be between 1 and high - low ({high - low}); got {step}")
    return Param(name, kind, integer=integer, low=low, high=high, step=step)


def _split_args(text: str) -> list[str]:
    """Split on commas outside quotes; strip spaces and quotes (so choice("128,64","256") works)."""
    if not text.strip():
        return []
    parts, current, quote = [], "", None
    for ch in text:
        if quote:
            if ch == quote:
                quote = None
            else:
                current += ch
        elif ch in "'\"":
            quote = ch
        elif ch == ",":
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    return parts


def _number(text: str, integer: bool, where: str) -> int | float:
    """A search bound or choice as a number, refused here (at parse time) when training could not
    hold it: a float beyond float32 (what models and optimizers compute in), an int beyond int64."""
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not {'an integer' if integer else 'a number'}") from None
    if integer and not INT64_MIN <= value <= INT64_MAX:
        raise ConfigError(f"{where}: {text} is beyond the 64-bit integer range ({INT64_MIN} to {INT64_MAX})")
    if not integer and not math.isfinite(value):
        raise ConfigError(f"{where}: {text} is not a finite number; give a range or choices of finite numbers")
    if not integer and abs(value) > FLOAT32_MAX:
        raise ConfigError(f"{where}: {text} is beyond the float32 range that training computes in "
                          f"(at most {FLOAT32_MAX:.6g} in size); give a range within it")
    return value


def _typed(target: Target, text: str, where: str) -> Any:
    if text == "":
        raise ConfigError(f"{where}: empty value in the choice list")
    if target.type in ("int", "float"):
        return _number(text, target.type == "int", where)
    if target.type == "bool":
        lowered = text.lower()
        if lowered not in ("true", "false"):
            raise ConfigError(f"{where}: {target.name} takes true or false; got {text!r}")
        return lowered == "true"
    if target.type == "ints":
        try:
            [int(p) for p in text.split(",")]
        except ValueError:
            raise ConfigError(f"{where}: {target.name} takes comma-separated integers (quote them: \"128,64\"); got {text!r}") from None
        return text
    if target.accepted and text not in target.accepted:
        raise ConfigError(f"{where}: {text!r} is not a valid {target.name}; accepted: {', '.join(map(str, target.accepted))}")
    return text


def parse_space(expressions: tuple[str, ...] | list[str], config: TrainConfig, *, fixed: set[str] = frozenset()) -> SearchSpace:
    """The searched parameters: the ``--search`` expressions, or the default space without the
    options the user fixed on the command line (and without kernel_size for models that take none)."""
    from cnnbench.registry import MODELS

    notes: list[str] = []
    if expressions:
        params = [parse_expression(e, config) for e in expressions]
        names = [p.name for p in params]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"--search names {', '.join(twice)} more than once; give one expression per parameter")
        both = sorted(set(names) & set(fixed))
        if both:
            flags = ", ".join(f"--model-option {n[6:]}" if n.startswith("model.") else f"--{n.replace('_', '-')}" for n in both)
            raise ConfigError(f"{', '.join(both)} is both fixed ({flags}) and searched (--search); drop one of them")
        return SearchSpace(tuple(params))
    params = []
    for expression in DEFAULT_SPACE:
        name = expression.partition("=")[0]
        if name in fixed:
            flag = f"--model-option {name[6:]}" if name.startswith("model.") else f"--{name.replace('_', '-')}"
            notes.append(f"{name} is fixed by {flag}, so it is not searched")
        elif name == "model.kernel_size" and MODELS.get(config.model.name).option("kernel_size") is None:
            notes.append(f"model {config.model.name!r} takes no kernel size, so model.kernel_size is not searched")
        else:
            params.append(parse_expression(expression, config))
    if not params:
        raise ConfigError("nothing to search: every default parameter is fixed; add --search NAME=...")
    return SearchSpace(tuple(params), tuple(notes))


def restrict(space: SearchSpace, config: TrainConfig) -> SearchSpace:
    """Check every value (finite lists) or both ends (ranges) with ``api.resolve`` on ``config``.

    Values the model cannot take on this input (``ModelInputError``, e.g. a kernel too large for
    the image) are dropped and reported in ``notes``; any other refusal is an error.
    """
    from cnnbench import api

    params, notes = [], list(space.notes)
    for param in space.params:
        values = param.values()
        if values is None:
            for end in (param.low, param.high):
                _check(api, config, param, end)
            params.append(param)
            continue
        refused = {}
        for value in values:
            reason = _check(api, config, param, value)
            if reason:
                refused[value] = reason
        if len(refused) == len(values):
            reasons = "; ".join(f"{shown_names([_show(v)])}: {r}" for v, r in refused.items())
            raise ConfigError(f"--search {shown_names([param.text()])}: no value can be used with this model and input "
                              f"({reasons})")
        if refused:
            kept = tuple(v for v in values if v not in refused)
            notes.append(f"{param.name}: refused {', '.join(_show(v) for v in refused)} ({next(iter(refused.values()))})")
            param = replace(param, kind="choice", integer=False, low=None, high=None, step=None, choices=kept)
        params.append(param)
    return SearchSpace(tuple(params), tuple(notes))


def _check(api, config: TrainConfig, param: Param, value: Any) -> str | None:
    """None when ``config`` with ``param=value`` resolves; the reason when the model cannot take the input."""
    try:
        api.resolve(apply(config, {param.name: value}))
    except ModelInputError as err:
        return str(err)
    except ConfigError as err:
        raise ConfigError(f"--search {shown_names([param.text()])}: the value {shown_names([_show(value)])} is not "
                          f"accepted: {err}") from None
    return None


def diff(stored: dict[str, str], current: dict[str, str]) -> list[str]:
    """Human-readable differences between two ``{name: expression}`` spaces (empty when equal)."""
    lines = []
    for name in sorted(set(stored) | set(current)):
        old, new = stored.get(name), current.get(name)
        if old == new:
            continue
        if old is None:
            lines.append(f"{name} is new ({new})")
        elif new is None:
            lines.append(f"{name} is no longer searched (was {old})")
        else:
            lines.append(f"{name} changed: {old} -> {new}")
    return lines
