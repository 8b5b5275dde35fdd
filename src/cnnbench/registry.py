"""Plugin registries for every extension point, filled from Python entry points.

Built-in and third-party plugins are found the same way: an entry point whose name is the plugin
name, in one group per kind (the built-ins are declared in cnnbench's own ``setup.cfg``):

=====================  =============================================================================
``cnnbench.models``    a :class:`ModelPlugin`
``cnnbench.datasets``  a :class:`DatasetPlugin` (its ``write_fake`` feeds the dataset contract tests)
``cnnbench.studies``   a study file (a path), or a function returning its TOML text or path
``cnnbench.presets``   a :class:`cnnbench.presets.Preset`
``cnnbench.artifacts`` a :class:`cnnbench.events.Callback` subclass with ``from_config(config)``;
                       on in every run unless a train option's ``artifact=`` names it (its switch)
``cnnbench.trackers``  a :class:`cnnbench.events.Callback` subclass with
                       ``for_config(config, **context)`` (context: ``run_id`` and the caller's
                       options; ignore what you do not use); every registered tracker records every
                       ``cnnbench train`` run, the built-in ``mlflow`` last
=====================  =============================================================================

Loading is lazy (nothing is imported until a plugin is listed or selected); a plugin that fails to
load is recorded as broken (one line naming its entry point) instead of crashing, and two
distributions claiming one name is an error naming both.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from importlib import import_module, metadata
from pathlib import Path
from typing import Any, Callable, Generic, Iterable, Mapping, TypeVar

from cnnbench.errors import ConfigError, PluginError
from cnnbench.values import convert

MODEL_GROUP = "cnnbench.models"
DATASET_GROUP = "cnnbench.datasets"
STUDY_GROUP = "cnnbench.studies"
PRESET_GROUP = "cnnbench.presets"
ARTIFACT_GROUP = "cnnbench.artifacts"
TRACKER_GROUP = "cnnbench.trackers"

OPTION_TYPES = ("int", "float", "bool", "str", "ints")


@dataclass(frozen=True)
class Option:
    """One declared plugin option: parsed from ``key=value`` text, logged, shown, searchable.

    ``type`` is one of ``int``, ``float``, ``bool``, ``str`` or ``ints`` (a comma-separated tuple of
    ints such as ``128,64``). ``choices`` restricts the accepted values; ``low``/``high`` bound
    numbers (inclusive).
    """

    name: str
    type: str
    default: Any
    help: str
    choices: tuple = ()
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        if self.type not in OPTION_TYPES:
            raise ValueError(f"option {self.name!r}: type must be one of {OPTION_TYPES}, got {self.type!r}")

    def parse(self, raw: Any) -> Any:
        """Convert text (or an already-typed value) to this option's type and validate it."""
        try:
            value = self._convert(raw)
        except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf), float(10**400)
            raise ConfigError(
                f"option {self.name!r} expects {self._describe_type()}, got {raw!r}"
            ) from None
        return self.validate(value)

    def validate(self, value: Any) -> Any:
        if self.choices and value not in self.choices:
            accepted = ", ".join(str(c) for c in self.choices)
            raise ConfigError(f"option {self.name!r} must be one of {accepted}; got {value!r}")
        numbers = value if isinstance(value, tuple) else (value,)
        for v in numbers:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if isinstance(v, int) and not -(2**63) <= v <= 2**63 - 1:
                    raise ConfigError(f"option {self.name!r} must be within the 64-bit integer range; got {value!r}")
                if isinstance(v, float) and not math.isfinite(v):
                    raise ConfigError(f"option {self.name!r} must be a finite number; got {value!r}")
                if self.low is not None and v < self.low:
                    raise ConfigError(f"option {self.name!r} must be >= {self.low}; got {value!r}")
                if self.high is not None and v > self.high:
                    raise ConfigError(f"option {self.name!r} must be <= {self.high}; got {value!r}")
        return value

    def _convert(self, raw: Any) -> Any:
        return convert(self.type, raw)  # text (--model-option) or typed (TOML, JSON), as every option

    def _describe_type(self) -> str:
        return {
            "int": "an integer",
            "float": "a number",
            "bool": "true or false",
            "str": "text",
            "ints": "comma-separated integers such as 128,64",
        }[self.type]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["choices"] = list(self.choices)
        if isinstance(self.default, tuple):
            d["default"] = list(self.default)
        return d


def resolve_options(
    declared: Iterable[Option], given: Mapping[str, Any], *, owner: str
) -> dict[str, Any]:
    """Parse ``given`` (text or typed values) against ``declared`` and fill in defaults.

    Unknown keys raise a :class:`ConfigError` that lists the valid keys.
    """
    by_name = {o.name: o for o in declared}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        valid = ", ".join(sorted(by_name)) or "(none: this plugin takes no options)"
        from cnnbench.config import shown_names

        raise ConfigError(f"unknown option(s) {shown_names(unknown)} for {owner}; valid options: {valid}")
    resolved = {}
    for name, opt in by_name.items():
        if name in given:
            try:
                resolved[name] = opt.parse(given[name])
            except ConfigError as err:
                raise ConfigError(f"{owner}: {err}") from None
        else:
            resolved[name] = opt.default
    return resolved


def parse_key_values(pairs: Iterable[str], *, flag: str) -> dict[str, str]:
    """Split repeated ``key=value`` strings (from e.g. ``--model-option``) into a dict."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{flag} expects key=value, got {pair!r}")
        out[key] = value.strip()
    return out


@dataclass(frozen=True)
class ModelPlugin:
    """A model family member: ``build(*, num_classes, in_channels, image_size, **options)``.

    ``image_size`` is ``(height, width)``. A model that takes a kernel size declares an option
    named ``kernel_size``; the CLI's ``--kernel-size`` sets it. The builder raises
    :class:`cnnbench.errors.ModelInputError` when the input is too small (naming the minimum size)
    or an option value cannot be used on this input.
    """

    build: Callable[..., Any]
    description: str
    options: tuple[Option, ...] = ()
    # The input it was designed for, (C, H, W) and classes: what ``cnnbench info MODEL`` shows
    # when no --dataset / --input-shape is given (None: it asks for one).
    natural_input: tuple[int, int, int] | None = None
    natural_classes: int | None = None
    # --channels-last auto on CPU: NHWC is faster for this model there (benchmarks/bench_channels_last.py
    # measured it); on CUDA auto always uses NHWC.
    channels_last_cpu: bool = False

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is without loading it: image shape, classes and split sizes where known."""

    channels: int
    height: int
    width: int
    num_classes: int
    classes: tuple[str, ...] | None = None
    train_size: int | None = None
    test_size: int | None = None


@dataclass(frozen=True)
class DatasetPlugin:
    """A dataset: ``load(*, data_dir, seed, download, **options) -> DatasetBundle``.

    ``describe(**options) -> DatasetInfo`` must not read data files (it feeds ``cnnbench list``,
    ``cnnbench info`` and validation before any data is loaded).
    """

    load: Callable[..., Any]
    describe: Callable[..., DatasetInfo]
    description: str
    options: tuple[Option, ...] = ()
    needs_data_dir: bool = False
    # ``write_fake(root, n=...) -> FakeData``: tiny files in the dataset's own format under ``root``
    # (or, for a generated dataset, nothing but the options that make it tiny), for the contract
    # tests every registered dataset must pass (tests/test_dataset_contract.py); torchvision's
    # ``inject_fake_data`` pattern, kept beside the reader it feeds.
    write_fake: Callable[..., "FakeData"] | None = None

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)

    def defaults(self, **given: Any) -> dict[str, Any]:
        """Every declared option at its default, overridden by ``given`` (parsed and checked)."""
        return resolve_options(self.options, given, owner="this dataset")


@dataclass(frozen=True)
class FakeData:
    """What a dataset's ``write_fake`` wrote: the split sizes ``load`` must give, the options that
    load it, and the written values themselves (for tests that compare pixels)."""

    train: int
    test: int
    options: dict[str, Any] = field(default_factory=dict)
    written: Any = None


P = TypeVar("P")


@dataclass
class Entry(Generic[P]):
    """One registered name: the plugin when it loaded, or why it could not be used."""

    name: str
    distribution: str
    plugin: P | None = None
    error: str | None = None


@dataclass
class Registry(Generic[P]):
    """Named plugins of one kind. Strict: duplicate names are errors, not warnings."""

    kind: str  # "model", "dataset", "study", "preset", "artifact" or "tracker"
    group: str
    plugin_type: type | None = None  # the loaded object must be an instance of it, or
    coerce: Callable[[Any], P] | None = None  # this turns it into the plugin (TypeError: why not)
    _entries: dict[str, Entry[P]] | None = field(default=None, repr=False)

    def accept(self, obj: Any) -> P:
        """The plugin an entry point's object gives, or ``TypeError`` naming what was expected."""
        if self.coerce is not None:
            return self.coerce(obj)
        if not isinstance(obj, self.plugin_type):
            raise TypeError(f"is {_what(obj)}, expected a {self.plugin_type.__name__}")
        return obj

    def register(self, name: str, plugin: P, *, distribution: str = "(registered in code)") -> None:
        """Add a plugin directly (tests, notebooks). Refuses a name that is already taken."""
        entries = self._load()
        if name in entries:
            raise PluginError(
                f"{self.kind} {name!r} is already registered by {entries[name].distribution}; "
                f"refusing a second registration from {distribution}"
            )
        try:
            plugin = self.accept(plugin)
        except TypeError as err:
            raise PluginError(f"{self.kind} {name!r} {err}") from None
        entries[name] = Entry(name, distribution, plugin=plugin)

    def unregister(self, name: str) -> None:
        self._load().pop(name, None)

    def entries(self) -> list[Entry[P]]:
        return sorted(self._load().values(), key=lambda e: e.name)

    def names(self) -> list[str]:
        return [e.name for e in self.entries() if e.plugin is not None]

    def plugins(self) -> list[tuple[str, P]]:
        """``(name, plugin)`` of every usable plugin, by name (broken ones are left out)."""
        return [(e.name, e.plugin) for e in self.entries() if e.plugin is not None]

    def get(self, name: str) -> P:
        entries = self._load()
        entry = entries.get(name)
        if entry is None:
            available = ", ".join(self.names()) or "(none)"
            raise PluginError(f"unknown {self.kind} {name!r}; available {self.kind}s: {available}")
        if entry.plugin is None:
            raise PluginError(f"{self.kind} {name!r} from {entry.distribution} cannot be used: {entry.error}; "
                              f"fix or uninstall {entry.distribution}")
        return entry.plugin

    def reload(self) -> None:
        self._entries = None

    def _load(self) -> dict[str, Entry[P]]:
        if self._entries is None:
            self._entries = _load_group(self)
        return self._entries


def _what(obj: Any) -> str:
    return f"the class {obj.__name__}" if isinstance(obj, type) else f"a {type(obj).__name__}"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _load_group(registry: Registry) -> dict[str, Entry]:
    group, kind = registry.group, registry.kind
    seen: dict[str, list[tuple[str, metadata.EntryPoint]]] = {}
    for ep in metadata.entry_points(group=group):
        dist = ep.dist.name if ep.dist is not None else "(unknown distribution)"
        claims = seen.setdefault(ep.name, [])
        # The same distribution can be visible twice (e.g. an editable install); that is one claim.
        if not any(d == dist and e.value == ep.value for d, e in claims):
            claims.append((dist, ep))
    entries: dict[str, Entry] = {}
    for name, claims in seen.items():
        if len({d for d, _ in claims}) > 1 or len(claims) > 1:
            who = " and ".join(f"{d} ({e.value})" for d, e in claims)
            entries[name] = Entry(
                name, " + ".join(d for d, _ in claims),
                error=f"{kind} name {name!r} is claimed by more than one plugin: {who}; "
                f"uninstall one of them",
            )
            continue
        dist, ep = claims[0]
        try:
            obj = ep.load()
        except Exception as err:  # a broken plugin must not break the CLI
            entries[name] = Entry(name, dist, error=f"failed to import {ep.value}: {_one_line(err)}")
            continue
        try:
            entries[name] = Entry(name, dist, plugin=registry.accept(obj))
        except Exception as err:
            why = " ".join(str(err).split()) if isinstance(err, TypeError) else _one_line(err)
            entries[name] = Entry(name, dist, error=f"entry point {ep.value} {why}")
    return entries


def subclass_of(base: str, method: str) -> Callable[[Any], type]:
    """A ``coerce`` accepting a class derived from ``base`` ("module:Class", imported when the
    first plugin loads) that has the classmethod ``method``."""

    def check(obj: Any) -> type:
        module, _, attr = base.partition(":")
        expected = getattr(import_module(module), attr)
        if not (isinstance(obj, type) and issubclass(obj, expected) and callable(getattr(obj, method, None))):
            raise TypeError(f"is {_what(obj)}, expected a {attr} subclass with a {method}() classmethod")
        return obj

    return check


def study_text(obj: Any) -> str:
    """A study entry point's TOML text: its object is a path to the file, or a function returning
    the text or a path."""
    if callable(obj) and not hasattr(obj, "read_text"):
        obj = obj()
    if isinstance(obj, str) and ("\n" in obj or "=" in obj):
        return obj  # TOML text
    if hasattr(obj, "read_text"):
        return obj.read_text(encoding="utf-8")
    if isinstance(obj, (str, Path)):
        return Path(obj).read_text(encoding="utf-8")
    raise TypeError(f"is {_what(obj)}, expected a study file path or a function returning TOML text")


def _preset(obj: Any):
    from cnnbench.presets import Preset

    if not isinstance(obj, Preset):
        raise TypeError(f"is {_what(obj)}, expected a Preset")
    return obj


MODELS: Registry[ModelPlugin] = Registry("model", MODEL_GROUP, ModelPlugin)
DATASETS: Registry[DatasetPlugin] = Registry("dataset", DATASET_GROUP, DatasetPlugin)
STUDIES: Registry[str] = Registry("study", STUDY_GROUP, coerce=study_text)  # the plugin is the TOML text
PRESETS: Registry[Any] = Registry("preset", PRESET_GROUP, coerce=_preset)
ARTIFACTS: Registry[type] = Registry("artifact", ARTIFACT_GROUP, coerce=subclass_of("cnnbench.events:Callback", "from_config"))
TRACKERS: Registry[type] = Registry("tracker", TRACKER_GROUP, coerce=subclass_of("cnnbench.events:Callback", "for_config"))
REGISTRIES = (MODELS, DATASETS, STUDIES, PRESETS, ARTIFACTS, TRACKERS)
