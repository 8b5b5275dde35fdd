"""The ``train`` options as Click options, made from the declarations in :mod:`cnnbench.config`,
shared by ``cnnbench train``, ``cnnbench tune`` and ``cnnbench study``; and their translation into a
:class:`~cnnbench.config.TrainConfig`. ``--help`` lists them in groups (model, data, ...)."""

from __future__ import annotations

from typing import Any, Callable

import click

from cnnbench.campaign import DEFAULT_HEARTBEAT_S
from cnnbench.config import GROUPS, OPTIONS, TrainConfig, TrainOption, apply_values

# Parameters of the command line that are not config fields: where they are listed in --help.
CLI_ONLY_GROUPS = {"config_file": "run", "use_file_destination": "run", "model_options": "model", "dataset_options": "data", "kernel_size": "model"}


class KernelSize(click.ParamType):
    """A positive int, or ``auto`` (the model's own default)."""

    name = "INT|auto"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        if str(value).strip().lower() in ("auto", "", "none", "0"):
            return None
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is not an integer kernel size or 'auto'", param, ctx)


class Declared(click.ParamType):
    """Parses a flag's text with its declaration, so a bad value is the declaration's one-line
    ConfigError (exit 2, what is accepted), the same message a --config file or a study gets."""

    def __init__(self, option: TrainOption) -> None:
        self.option = option
        kind = "|".join(map(str, option.choices)) if option.choices else {"int": "INTEGER", "float": "FLOAT", "str": "TEXT"}[option.type]
        self.name = "|".join([kind, *option.words])

    def get_metavar(self, param, ctx=None):  # Click 8.1 and 8.2 signatures
        return self.option.metavar or (f"[{self.name}]" if self.option.choices else self.name)

    def convert(self, value, param, ctx):
        return self.option.parse(value)


def click_option(o: TrainOption) -> click.Option:
    """The Click option of one declared train option (checks stay in the declaration)."""
    if o.type == "bool":
        decls = [f"{o.flag}/--no-{o.flag[2:]}"]
        kind: Any = click.BOOL
    else:
        decls = [o.flag]
        kind = Declared(o)
    option = click.Option([*decls, o.name], type=kind, default=o.default, help=o.help, metavar=o.metavar,
                          show_default=o.default is not None and o.type != "bool" or (o.type == "bool" and o.default))
    option.cnnbench_group = o.group  # type: ignore[attr-defined]
    return option


def _extra(decls: list[str], dest: str, **kwargs: Any) -> click.Option:
    option = click.Option([*decls, dest] if dest not in decls else decls, **kwargs)
    option.cnnbench_group = CLI_ONLY_GROUPS[dest]  # type: ignore[attr-defined]
    return option


def file_destination_option() -> click.Option:
    """``--use-file-destination``: the one way a file's tracking URI is used (FAULTS X26); shared by
    ``train``, ``tune`` and ``study run``."""
    from cnnbench.tracking.store import FILE_DESTINATION_FLAG, FILE_DESTINATION_HELP

    return _extra([FILE_DESTINATION_FLAG], "use_file_destination", is_flag=True, default=False,
                  help=FILE_DESTINATION_HELP)


def train_parameters(*, exclude: tuple[str, ...] = ()) -> list[click.Parameter]:
    """Every train option (declared order, grouped) plus the command line's own helpers."""
    params: list[click.Parameter] = [click_option(o) for name, o in OPTIONS.items() if name not in exclude]
    params += [
        _extra(["--config"], "config_file", type=click.Path(dir_okay=False),
               help="JSON config (a run's config.json); flags given here override it; its run.tracking_uri is "
                    "not used (a config replays the experiment, not its destination) unless "
                    "--use-file-destination"),
        file_destination_option(),
        _extra(["--model-option"], "model_options", multiple=True, metavar="KEY=VALUE",
               help="model option (repeatable; cnnbench info MODEL lists them), logged as model.KEY"),
        _extra(["--dataset-option"], "dataset_options", multiple=True, metavar="KEY=VALUE",
               help="dataset option (repeatable; cnnbench list datasets), logged as data.KEY"),
        _extra(["--kernel-size"], "kernel_size", type=KernelSize(), default=None,
               help="shorthand for --model-option kernel_size=N (auto: the model's default)"),
    ]
    return params


def train_options(func: Callable) -> Callable:
    """Decorate a Click command function with every train option."""
    params = getattr(func, "__click_params__", None)
    if params is None:
        params = func.__click_params__ = []  # type: ignore[attr-defined]
    params.extend(reversed(train_parameters()))  # Click reverses the decorator-collected list
    return func


class GroupedCommand(click.Command):
    """A command whose ``--help`` lists the train options under their groups."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {"command": []}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            sections.setdefault(getattr(param, "cnnbench_group", "command"), []).append(record)
        titles = {"command": "Options", "model": "Model", "data": "Data", "optimisation": "Optimisation",
                  "run": "Run and tracking", "artifacts": "Artifacts"}
        for group in ("command", *GROUPS):
            if sections.get(group):
                with formatter.section(titles[group]):
                    formatter.write_dl(sections[group])


def given_on_command_line(ctx: click.Context) -> set[str]:
    """Names of the declared options the user typed (not defaults)."""
    return {name for name in OPTIONS if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}


def config_from_params(ctx: click.Context, params: dict[str, Any]) -> TrainConfig:
    """Build the TrainConfig: the ``--config`` file (if any) overlaid with every flag the user gave."""
    from cnnbench.registry import parse_key_values

    base = TrainConfig.load(params["config_file"]) if params.get("config_file") else TrainConfig()
    explicit = lambda name: ctx.get_parameter_source(name) not in (  # noqa: E731
        click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP, None
    )
    preset = params.get("preset") if "preset" in params and explicit("preset") else None
    if preset:  # the preset over the --config file (or the defaults); the flags given over both
        base = apply_values(base, {"preset": preset}, where="--preset", text=False)
    use_all = not params.get("config_file") and not preset
    sections: dict[str, dict[str, Any]] = {}
    for name, o in OPTIONS.items():
        if name in params and (use_all or explicit(name)):
            value = params[name]
            if o.nullable and o.check is None and (value == "" or (name == "data_dir" and value == "auto")):
                value = None  # "not given": the MLproject passes data_dir "auto" (MLflow logs it as a param)
            sections.setdefault(o.section, {})[o.field] = o.validate(value)
    model_options = parse_key_values(params.get("model_options", ()), flag="--model-option")
    kernel = params.get("kernel_size")
    if kernel is not None:
        if "kernel_size" in model_options and str(model_options["kernel_size"]) != str(kernel):
            raise click.UsageError(f"--kernel-size {kernel} contradicts --model-option kernel_size={model_options['kernel_size']}")
        model_options["kernel_size"] = kernel
    for section, given in (("model", model_options),
                           ("data", parse_key_values(params.get("dataset_options", ()), flag="--dataset-option"))):
        chosen = sections.get(section, {}).get("name")
        replaced = not use_all and chosen is not None and chosen != getattr(base, section).name
        if given or use_all or replaced:
            opts = {} if use_all or replaced else dict(getattr(base, section).options)
            if replaced:  # another plugin starts from its own defaults, as in apply_values (FAULTS P4)
                _note_dropped(section, getattr(base, section), chosen, given, "the preset's" if preset else "the --config file's")
            opts.update(given)
            sections.setdefault(section, {})["options"] = opts
    config = base.replace(**sections)
    if params.get("config_file"):
        config = _file_destination(config, base, params, explicit)
    return config


def _file_destination(config: TrainConfig, base: TrainConfig, params: dict[str, Any], explicit) -> TrainConfig:
    """A --config file's run.tracking_uri is used only with --use-file-destination (FAULTS X26)."""
    from cnnbench.tracking.store import choose_tracking_uri

    from_file = base.run.tracking_uri
    given = params.get("tracking_uri") if explicit("tracking_uri") else None
    chosen = choose_tracking_uri(given or None, from_file, where=f"--config {params['config_file']}",
                                 accept_file=bool(params.get("use_file_destination")), replay=True,
                                 note=lambda line: click.echo(line, err=True))
    return config if chosen == config.run.tracking_uri else config.replace(run={"tracking_uri": chosen})


def _note_dropped(section: str, before: Any, chosen: str, given: dict[str, Any], source: str) -> None:
    """Say which options of the preset's (or --config file's) model or dataset are not carried over
    to the one chosen on the command line."""
    dropped = {k: v for k, v in before.options.items() if k not in given}
    if not dropped:
        return
    flag, what = ("--model", "model") if section == "model" else ("--dataset", "dataset")
    shown = ", ".join(f"{k}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}" for k, v in dropped.items())
    click.echo(f"note: {flag} {chosen} replaces {source} {what} {before.name}, so its {what} option(s) {shown} "
               f"are not used (give them again with {flag}-option to keep them)", err=True)


# Where a campaign's workers run (``study run``, ``tune``): cnnbench.campaign.launchers. Every value
# defaults to None here, so a study file's [launcher] table fills what the command line leaves out.
LAUNCHER_FLAGS: dict[str, click.Option] = {
    "name": click.Option(["--launcher", "launcher_name"], type=click.Choice(("local", "slurm", "ray")), default=None,
                         help="where the workers run: local processes (default), one Slurm array (submitit) or Ray tasks"),
    "detach": click.Option(["--detach/--follow", "launcher_detach"], default=None,
                           help="slurm: return once the array is submitted (the tasks finish the campaign) instead of "
                                "following it to its end"),
    "partition": click.Option(["--partition", "launcher_partition"], default=None, metavar="NAME", help="slurm partition"),
    "time": click.Option(["--time", "launcher_time"], default=None, metavar="LIMIT",
                         help="slurm time limit per task (minutes, HH:MM:SS, D-HH:MM; default 60)"),
    "cpus_per_task": click.Option(["--cpus-per-task", "launcher_cpus_per_task"], type=int, default=None, metavar="N",
                                  help="slurm CPUs per task (torch threads of its worker; default 1)"),
    "mem": click.Option(["--mem", "launcher_mem"], default=None, metavar="SIZE", help="slurm memory per task (e.g. 8G)"),
    "gpus_per_task": click.Option(["--gpus-per-task", "launcher_gpus_per_task"], type=int, default=None, metavar="N",
                                  help="slurm GPUs per task (default 0)"),
    "account": click.Option(["--account", "launcher_account"], default=None, metavar="NAME", help="slurm account"),
    "qos": click.Option(["--qos", "launcher_qos"], default=None, metavar="NAME", help="slurm quality of service"),
    "sbatch": click.Option(["--sbatch", "launcher_sbatch"], multiple=True, default=None, metavar="--OPT[=VALUE]",
                           help="an extra sbatch option for every task, e.g. --sbatch=--constraint=a100 (repeatable)"),
    "signal_delay_s": click.Option(["--signal-delay", "launcher_signal_delay_s"], type=int, default=None,
                                   metavar="SECONDS", help="slurm: warn a task this long before its time limit (it "
                                                           "ends its cell KILLED and is requeued; default 120)"),
    "ray_address": click.Option(["--ray-address", "launcher_ray_address"], default=None, metavar="auto|ray://HOST:10001",
                                help="ray cluster to use (default: $RAY_ADDRESS, else a Ray started here)"),
    "num_cpus": click.Option(["--ray-num-cpus", "launcher_num_cpus"], type=float, default=None, metavar="N",
                             help="ray: CPUs per worker task (default 1)"),
    "num_gpus": click.Option(["--ray-num-gpus", "launcher_num_gpus"], type=float, default=None, metavar="N",
                             help="ray: GPUs per worker task (default 0)"),
}


def file_destination(command: Callable) -> Callable:
    """Add ``--use-file-destination`` to a Click command (``study run``; train and tune have it among
    the train options)."""
    command.__click_params__ = [*getattr(command, "__click_params__", []), file_destination_option()]  # type: ignore[attr-defined]
    return command


def launcher_options(command: Callable) -> Callable:
    """Add the launcher flags to a Click command (they arrive as ``launcher_*`` keyword arguments)."""
    for option in reversed(list(LAUNCHER_FLAGS.values())):
        command.__click_params__ = [*getattr(command, "__click_params__", []), option]  # type: ignore[attr-defined]
    return command


def launcher_from(kwargs: dict[str, Any], table: dict[str, Any] | None = None, where: str = "",
                  accept_file: bool = False) -> Any:
    """The launcher options: the command line's ``launcher_*`` values (popped from ``kwargs``) over a
    study file's ``[launcher]`` table over the defaults.

    A file describes the experiment, not whose machines receive the user's credentials: its
    ``ray_address`` is used only when it is the user's own (``--ray-address``, ``$RAY_ADDRESS``) or
    with ``--use-file-destination`` (``accept_file``), as for its tracking URI (FAULTS X26); its
    ``folder`` (submitit's job scripts and logs) stays under the working directory."""
    import os
    from pathlib import Path

    from cnnbench.campaign.launchers import LauncherOptions
    from cnnbench.errors import ConfigError
    from cnnbench.tracking.store import FILE_DESTINATION_FLAG

    values = LauncherOptions.from_table(table or {}, where) if table else {}
    given_address = kwargs.get("launcher_ray_address")
    for key in LAUNCHER_FLAGS:
        given = kwargs.pop(f"launcher_{key}", None)
        if given is not None and given != ():
            values[key] = tuple(given) if key == "sbatch" else given
    from_file = (table or {}).get("ray_address", (table or {}).get("ray-address"))
    if from_file is not None and given_address is None and not accept_file:
        user = os.environ.get("RAY_ADDRESS") or None
        if str(from_file) != (user or ""):
            mine = f"$RAY_ADDRESS is {user!r}" if user else "neither --ray-address nor $RAY_ADDRESS is given"
            raise ConfigError(f"{where} [launcher] ray_address {str(from_file)!r} chooses the Ray cluster that runs "
                              f"the workers and receives your store credentials, but {mine}; refusing to let a file "
                              f"choose it: pass --ray-address, or {FILE_DESTINATION_FLAG} to use the file's")
    folder = (table or {}).get("folder")
    if folder is not None and (not isinstance(folder, str) or not folder.strip() or Path(folder).expanduser().is_absolute()
                               or ".." in Path(folder).parts):
        raise ConfigError(f"{where} [launcher] folder {folder!r}: a study file may only name a folder under the "
                          f"working directory (a relative path without '..'), e.g. folder = \"cnnbench-slurm\"")
    return LauncherOptions(**values)


# -- Options several commands share, each declared once ---------------------------------------------
# A command attaches one with ``@shared("tracking_uri")``; what may differ per command is only its
# default (and so the words saying what the default is), given as ``default=``/``default_text=``.
# Options that are also train options (tracking URI, device, experiment) take the train declaration's
# flag, type, check and help, so ``train``, ``tune``, ``study``, ``memory``, ``info``, ``filters`` and
# ``runs`` read and refuse a value alike.


class AtLeast(click.ParamType):
    """A whole number >= ``low``, refused in the project's one style (``--workers must be at least 1;
    got 0``, exit 2), as the declared train options are."""

    def __init__(self, low: int) -> None:
        self.low, self.name = low, "INTEGER"

    def convert(self, value, param, ctx):
        from cnnbench.errors import ConfigError

        flag = param.opts[0] if param is not None else "the value"
        try:
            number = value if isinstance(value, int) and not isinstance(value, bool) else int(str(value).strip())
        except ValueError:
            raise ConfigError(f"{flag} must be a whole number; got {value!r}") from None
        if number < self.low:
            raise ConfigError(f"{flag} must be at least {self.low}; got {number}")
        return number


def _study_name(ctx, param, value):
    """--study-name checked as it is parsed: it names the storage study and goes into MLflow tags and filters."""
    from cnnbench.study.definition import check_study_name

    return value if value is None else check_study_name(value)


def _from_train(name: str) -> dict[str, Any]:
    o = OPTIONS[name]
    return {"decls": [o.flag, name], "type": Declared(o), "default": o.default, "metavar": o.metavar,
            "help": o.help.split(" (default:")[0]}


SHARED: dict[str, Callable[[], dict[str, Any]]] = {
    "tracking_uri": lambda: _from_train("tracking_uri") | {"help": OPTIONS["tracking_uri"].help},
    "device": lambda: _from_train("device"),
    "experiment": lambda: _from_train("experiment") | {"help": "MLflow experiment name", "default": None},
    "model_options": lambda: {"decls": ["--model-option", "model_options"], "multiple": True, "metavar": "KEY=VALUE",
                              "help": "model option (repeatable; cnnbench info MODEL lists them)"},
    "kernel_size": lambda: {"decls": ["--kernel-size", "kernel_size"], "type": KernelSize(), "default": None,
                            "help": "shorthand for --model-option kernel_size=N (auto: the model's default)"},
    "storage": lambda: {"decls": ["--storage", "storage"], "default": None, "metavar": "URL",
                        "help": "database coordinating the workers (Optuna RDB storage and the job queue; default: "
                                "sqlite optuna.db beside the local MLflow store; SQLite is for one machine, "
                                "postgresql://... for workers on several)"},
    "study_name": lambda: {"decls": ["--study-name", "study_name"], "default": None, "callback": _study_name,
                           "help": "name in the storage; an existing name resumes it"},
    "workers": lambda: {"decls": ["--workers", "workers"], "type": AtLeast(1), "default": 1,
                        "help": "workers: local processes, Slurm array tasks or Ray tasks (--launcher)"},
    "heartbeat_interval": lambda: {"decls": ["--heartbeat-interval", "heartbeat_interval"], "type": AtLeast(1),
                                   "default": DEFAULT_HEARTBEAT_S, "metavar": "SECONDS",
                                   "help": "workers beat this often; a job silent for twice as long is given to "
                                           "another worker"},
    "max_retries": lambda: {"decls": ["--max-retries", "max_retries"], "type": AtLeast(0), "default": 1,
                            "metavar": "N", "help": "times a failed job or one whose worker died is run again"},
}


def shared_option(name: str, *, default: Any = ..., default_text: str | None = None, **extra: Any) -> click.Option:
    """The one declaration of a shared option as a Click option; ``default`` (with ``default_text``
    saying what it means) is the only per-command difference; ``extra`` only adds (``required``)."""
    spec = SHARED[name]()
    if set(extra) - {"required"}:
        raise TypeError(f"shared option {name}: only default/default_text/required may differ per command")
    decls = spec.pop("decls")
    if default is not ...:
        spec["default"] = default
    if default_text:
        spec["help"] = f"{spec['help']} (default: {default_text})"
    spec["show_default"] = spec.get("default") is not None and not default_text and not spec.get("multiple")
    return click.Option(decls, **spec, **extra)


def shared(name: str, **kwargs: Any) -> Callable[[Callable], Callable]:
    """Decorator: attach the shared option ``name`` (see :func:`shared_option`)."""
    def attach(command: Callable) -> Callable:
        command.__click_params__ = [*getattr(command, "__click_params__", []), shared_option(name, **kwargs)]  # type: ignore[attr-defined]
        return command

    return attach


def deprecated_alias(flag: str, of: str, dest: str) -> click.Option:
    """A hidden old spelling of a shared option (``--n-jobs`` of ``--workers``): it still works,
    with a note; :func:`take_alias` merges it."""
    def warn(ctx, param, value):
        if value is not None:
            click.echo(f"note: {flag} is deprecated; use {of} (same meaning)", err=True)
        return value

    return click.Option([flag, dest], type=AtLeast(1), default=None, hidden=True, callback=warn,
                        expose_value=True)


def take_alias(params: dict[str, Any], name: str, alias: str, flag: str, of: str) -> Any:
    """The shared option's value, or its deprecated alias's when that was given (both differing: refused)."""
    value, old = params.get(name), params.pop(alias, None)
    if old is None:
        return value
    ctx = click.get_current_context(silent=True)
    typed = ctx is not None and ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
    if typed and value != old:
        raise click.UsageError(f"{flag} {old} and {of} {value} disagree; give {of} only ({flag} is its old name)")
    params[name] = old
    return old
