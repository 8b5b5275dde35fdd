"""``train(config, callbacks)``: the one function the CLI, the MLproject, tune and tests call.

Wiring only: validate everything (names, options, sizes, tracking store) before any data is loaded
or any run exists, then load data, build the model and hand both to the engine.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from cnnbench.config import TrainConfig
from cnnbench.errors import CnnbenchError, ConfigError, ModelInputError, RunInterrupted
from cnnbench.events import Callback
from cnnbench.registry import DATASETS, DatasetInfo, resolve_options


@dataclass
class TrainResult:
    run_id: str | None
    metrics: dict[str, float]  # the summary: test_loss, test_accuracy, fit_time_s, ...
    history: list[dict[str, float]]
    model: Any  # the trained nn.Module
    model_uri: str | None
    tracking_uri: str | None


@dataclass
class Resolved:
    """A validated configuration plus what validation learned (plugin options, input shape)."""

    config: TrainConfig
    info: DatasetInfo
    model: Any  # the model built and checked on the input shape (in eval mode); train() trains it
    memory: dict[str, Any] | None = None  # --batch-size auto / --memory-budget: what was predicted


def resolve(config: TrainConfig) -> Resolved:
    """Validate a configuration completely without loading data: plugin names and options,
    numbers, and whether the model can take the dataset's images. Returns it with options resolved."""
    config.validate()
    from cnnbench.models import resolve_model_options

    data_plugin = DATASETS.get(config.data.name)
    data_opts = resolve_options(data_plugin.options, config.data.options, owner=f"dataset {config.data.name!r}")
    _, model_opts = resolve_model_options(config.model.name, config.model.options)
    if data_plugin.needs_data_dir and not config.data.data_dir:
        raise ConfigError(f"dataset {config.data.name!r} needs --data-dir pointing at its files")
    # A plugin whose shape depends on its files (imagefolder) reads their headers here, no pixels.
    where = {"data_dir": Path(config.data.data_dir).expanduser()} if data_plugin.needs_data_dir else {}
    info = data_plugin.describe(**data_opts, **where)
    if config.data.image_size is not None:
        info = dataclasses.replace(info, height=config.data.image_size, width=config.data.image_size)
    resolved = config.replace(model={"options": model_opts}, data={"options": data_opts})
    check_combinations(resolved)
    from cnnbench.memory.for_config import check_train_memory

    check_train_memory(resolved, info)  # predicted, before the model or the data takes any real memory
    model = check_model_input(resolved, info)
    check_layer_names(resolved, model)
    memory = None
    if resolved.optim.batch_size == "auto" or resolved.optim.memory_budget is not None:
        resolved, memory = _fit_memory(resolved, info)
    return Resolved(resolved, info, model, memory)


def _fit_memory(config: TrainConfig, info: DatasetInfo) -> tuple[TrainConfig, dict[str, Any]]:
    """``--batch-size auto``: the largest batch predicted to fit ``--memory-budget`` (default: 90% of
    the free CUDA memory); a fixed batch with a budget: refused when predicted above it."""
    from cnnbench.memory.for_config import default_budget_mb, largest_batch_config, predict_config

    device = resolve_device(config.run.device)
    budget = config.optim.memory_budget
    if config.optim.batch_size == "auto":
        budget = budget if budget is not None else default_budget_mb(device)
        fit = largest_batch_config(config, info, device, budget)
        if fit.batch_size == 0:
            raise ConfigError(f"--batch-size auto: no batch fits --memory-budget {budget:g} MiB ({fit.note})")
        config = config.replace(optim={"batch_size": fit.batch_size})
        return config, {"batch_size_auto": True, "memory_budget_mb": budget, "predicted_peak_mb": fit.predicted_peak_mb}
    predicted = predict_config(config, info, device).peak_mb
    if predicted > budget:
        raise ConfigError(f"--batch-size {config.optim.batch_size} is predicted to need {predicted:.1f} MiB, above "
                          f"--memory-budget {budget:g} MiB; use a smaller batch or --batch-size auto")
    return config, {"memory_budget_mb": budget, "predicted_peak_mb": predicted}


def check_combinations(config: TrainConfig) -> None:
    """Options that cannot go together (each option's own range is checked by ``validate``)."""
    if config.data.train_on == "train+val" and config.run.patience:
        raise ConfigError("--train-on train+val leaves no validation images for early stopping; "
                          "drop --patience (or use --train-on train)")


def check_layer_names(config: TrainConfig, model) -> None:
    """``--retrieval-layer`` / ``--tsne-layer`` / ``--freeze`` must name what the model has."""
    from cnnbench.models.base import points

    names = [n for n, _ in model.named_modules() if n]
    for flag, name in (("--retrieval-layer", config.artifacts.retrieval_layer), ("--tsne-layer", config.artifacts.tsne_layer)):
        if name is not None and name not in names:
            shown = ", ".join(names[:40]) + (", ..." if len(names) > 40 else "")
            raise ConfigError(f"{flag} {name!r} is not a module of model {config.model.name!r}; its modules: {shown}")
    if config.optim.freeze == "first_conv" and points(model).first_conv is None:
        raise ConfigError(f"--freeze first_conv: model {config.model.name!r} has no convolution; "
                          f"use --freeze features or none")


def build_model(config: TrainConfig, info: DatasetInfo):
    """The configured model for the dataset's (possibly resized) images; options already resolved."""
    from cnnbench.models import build_model as build_registered

    return build_registered(
        config.model.name, num_classes=info.num_classes, in_channels=info.channels,
        image_size=(info.height, info.width), options=config.model.options,
    )


def check_model_input(config: TrainConfig, info: DatasetInfo):
    """Build the model and run one tiny forward pass (eval mode, so no state changes), so an
    unusable input fails before any run; return the model."""
    import torch

    model = build_model(config, info)
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, info.channels, info.height, info.width))
    except RuntimeError as err:
        raise ModelInputError(
            f"model {config.model.name!r} cannot take {info.channels}x{info.height}x{info.width} inputs "
            f"with these options: {str(err).splitlines()[0]}"
        ) from None
    return model


def resolve_device(name: str):
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was requested but no CUDA device is available; use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps was requested but MPS is not available; use --device cpu or auto")
    return torch.device(name)


def load_data(config: TrainConfig):
    """Load the dataset plugin's bundle and prepare splits (validation hold-out, subset, resize)."""
    from cnnbench.data.files import resolve_data_dir
    from cnnbench.data.pipeline import prepare

    plugin = DATASETS.get(config.data.name)
    data_dir = resolve_data_dir(config.data.data_dir or None)
    options = resolve_options(plugin.options, config.data.options, owner=f"dataset {config.data.name!r}")
    bundle = plugin.load(data_dir=data_dir, seed=config.run.seed, download=config.data.download, **options)
    return prepare(
        bundle, val_split=config.data.val_split, seed=config.run.seed,
        train_size=config.data.train_size, image_size=config.data.image_size,
        train_on=config.data.train_on, test_from_train=config.data.test_from_train,
    )


def run_callbacks(config: TrainConfig, *, tracker: bool = True, run_id: str | None = None,
                  startup: bool = False, **tracker_options: Any) -> list[Callback]:
    """What ``cnnbench train`` records: the artifact builders (registry ``cnnbench.artifacts``;
    ``config.artifacts`` switches some off), the console progress, and (last, so they upload what
    the others wrote) the trackers (:func:`tracker_callbacks`), whose stores are checked now, before
    any data is loaded; ``tracker=False`` leaves them out. ``run_id`` attaches them to that run,
    ``tracker_options`` go to each tracker's ``for_config``.
    A :class:`~cnnbench.tracking.phases.PhaseTimer` brackets the builders (``time_<phase>_s``
    metrics); ``startup`` (the CLI) also records the process's seconds before this call."""
    from cnnbench.tracking.phases import PhaseTimer

    timer = PhaseTimer(startup=startup)
    from cnnbench.artifacts import artifact_callbacks
    from cnnbench.tracking.progress import ConsoleProgress

    callbacks: list[Callback] = [timer, *artifact_callbacks(config), ConsoleProgress(quiet=config.run.quiet), timer.tail]
    trackers = _tracker_classes() if tracker else []  # their modules' imports (MLflow) are time_imports_s
    timer.lap("imports")
    if tracker:
        callbacks.extend(_build_trackers(trackers, config, {}, dict(run_id=run_id, **tracker_options)))
        timer.skip()  # each tracker times its own store check
    return callbacks


BUILTIN_TRACKER = "mlflow"  # the tracker registered by cnnbench itself (cnnbench.tracking.mlflow_tracker)


def tracker_callbacks(config: TrainConfig, *, given: dict[str, Callback] | None = None,
                      **context: Any) -> list[Callback]:
    """The trackers of one run: every plugin of the entry-point group ``cnnbench.trackers``, by
    name, the built-in ``mlflow`` last (it uploads what the others staged in ``run.artifacts_dir``).
    Each is ``for_config(config, **context)``, unless ``given`` holds the caller's own instance for
    that name (a study cell's nested MLflow run, a tune trial's). A broken tracker plugin refuses
    the run in one line naming its entry point."""
    return _build_trackers(_tracker_classes(), config, given or {}, context)


def _tracker_classes() -> list[tuple[str, type]]:
    from cnnbench.registry import TRACKERS

    names = sorted((e.name for e in TRACKERS.entries()), key=lambda n: (n == BUILTIN_TRACKER, n))
    return [(name, TRACKERS.get(name)) for name in names]


def _build_trackers(classes, config: TrainConfig, given: dict[str, Callback], context: dict) -> list[Callback]:
    return [given[name] if name in given else cls.for_config(config, **context) for name, cls in classes]


def train(
    config: TrainConfig,
    callbacks: Sequence[Callback] = (),
    *,
    data=None,
    resume_state: dict | None = None,
) -> TrainResult:
    """Validate, load, build, and fit one run, reporting to ``callbacks`` (the caller chooses them:
    :func:`run_callbacks` is what ``cnnbench train`` records; tests pass none or their own).
    ``data`` lets tune and studies reuse one loaded :class:`PreparedData` across runs;
    ``resume_state`` (a checkpoint) continues a run at the epoch after the one it saved.
    """
    clock = time.perf_counter()
    seconds: dict[str, float] = {}  # time_<phase>_s (see cnnbench.tracking.phases)

    def lap(phase: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[phase] = seconds.get(phase, 0.0) + now - clock
        clock = now

    import torch

    from cnnbench.engine.fit import fit
    from cnnbench.events import RunState
    from cnnbench.models.base import count_parameters

    lap("imports")
    # Seeded before resolve: the model resolve builds (and checks on the input) is the one trained.
    torch.manual_seed(config.run.seed)
    resolved = resolve(config)
    config = resolved.config
    device = resolve_device(config.run.device)
    lap("setup")
    if data is None:
        data = load_data(config)
        lap("data")
    model = resolved.model.train()
    _sweep_staging()
    with tempfile.TemporaryDirectory(prefix=f"{STAGING_PREFIX}{os.getpid()}-") as staging, interrupt_signals():
        run = RunState(config=config, model=model, data=data, device=device, artifacts_dir=Path(staging))
        run.params["param_count"] = count_parameters(model)
        run.params["device"] = str(device)  # resolved: "auto" is logged as what it chose
        _predicted_memory(run, resolved)
        lap("setup")
        for phase, spent in seconds.items():
            run.summary_metrics[f"time_{phase}_s"] = run.summary_metrics.get(f"time_{phase}_s", 0.0) + spent
        try:
            result = fit(run, list(callbacks), resume_state=resume_state)
        except KeyboardInterrupt as err:
            raise _interrupted(run, callbacks, err) from err
        except CnnbenchError as err:
            hint = _resume_hint(run, callbacks)
            if hint and err.args and hint not in str(err):
                err.args = (f"{err.args[0]}. {hint}", *err.args[1:])
            raise
    return TrainResult(
        run_id=run.run_id, metrics={**result.summary, **run.summary_metrics}, history=result.history,
        model=model, model_uri=run.model_uri, tracking_uri=run.tracking_uri,
    )


def _predicted_memory(run, resolved: Resolved) -> None:
    """``predicted_peak_mb`` (see ``cnnbench memory``) as a summary metric of every run that records
    memory, beside the measured peaks; the --batch-size auto choice as a param and a note."""
    memory = dict(resolved.memory or {})
    if "predicted_peak_mb" not in memory and run.config.artifacts.memory:
        from cnnbench.memory.for_config import predict_config

        try:
            memory["predicted_peak_mb"] = predict_config(run.config, resolved.info, run.device).peak_mb
        except Exception as err:  # a prediction must never stop a run (e.g. a device it does not model)
            run.notes.append(f"no memory prediction: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
    if "predicted_peak_mb" in memory:
        run.summary_metrics["predicted_peak_mb"] = memory["predicted_peak_mb"]
    if memory.get("batch_size_auto"):
        run.params["batch_size_auto"] = True
        run.notes.append(f"--batch-size auto: {run.config.optim.batch_size}, predicted {memory['predicted_peak_mb']:.1f} "
                         f"MiB within --memory-budget {memory['memory_budget_mb']:g} MiB")


STAGING_PREFIX = "cnnbench-run-"  # + PID-: a SIGKILLed run's staging folder is removed by the next run


def _sweep_staging() -> None:
    """Remove staging folders left by cnnbench processes that no longer exist (killed by SIGKILL:
    no cleanup ran). Their checkpoint was uploaded as it was written, so nothing is lost."""
    import shutil

    for folder in Path(tempfile.gettempdir()).glob(f"{STAGING_PREFIX}*-*"):
        pid = folder.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass


INTERRUPT_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")  # Ctrl-C, kill, a closed terminal / SSH session
REDELIVER_AFTER_S = 1.0  # an interrupt nobody acknowledged (see cnnbench.engine.interrupts) is raised again


@contextmanager
def interrupt_signals(stream=None, extra: tuple[str, ...] = ()) -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP (and the ``extra`` signals, e.g. Slurm's SIGUSR2 before a time
    limit) stop the run the same way: the first one raises ``KeyboardInterrupt`` (the engine then
    saves the checkpoint and the tracker ends the run KILLED); any further one while that cleanup
    runs is only acknowledged, so pressing Ctrl-C twice can never cut the cleanup short and leave
    the run FINISHED-without-results or RUNNING."""
    import sys

    global _interrupt_depth
    if _interrupt_depth:  # nested (tune around its trials): the outer handlers already count signals
        yield
        return
    import threading

    from cnnbench.engine import interrupts

    received: list[int] = []
    active = threading.Event()
    active.set()

    def redeliver(signum: int) -> None:  # the KeyboardInterrupt was swallowed (raised inside a finaliser)
        if active.is_set() and not interrupts.acknowledged():
            os.kill(os.getpid(), signum)

    def handler(signum, frame):
        received.append(signum)
        if not interrupts.acknowledged():
            timer = threading.Timer(REDELIVER_AFTER_S, redeliver, args=(signum,))
            timer.daemon = True
            timer.start()
            raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")
        print(f"cnnbench: {signal.Signals(signum).name} received again; still saving the checkpoint and closing "
              f"the run, please wait", file=stream or sys.stderr, flush=True)

    previous = {}
    try:
        for name in (*INTERRUPT_SIGNALS, *extra):
            if hasattr(signal, name):
                previous[name] = signal.signal(getattr(signal, name), handler)
    except ValueError:  # not the main thread (e.g. tune with threads): leave signals alone
        for name, old in previous.items():
            signal.signal(getattr(signal, name), old)
        yield
        return
    _interrupt_depth += 1
    interrupts.reset()
    try:
        yield
    finally:
        active.clear()
        _interrupt_depth -= 1
        for name, old in previous.items():
            signal.signal(getattr(signal, name), old)


_interrupt_depth = 0


def _resume_hint(run, callbacks) -> str | None:
    for cb in callbacks:
        message = getattr(cb, "interrupt_message", None)
        hint = message(run) if callable(message) else None
        if hint:
            return hint
    return None


def _interrupted(run, callbacks, err: KeyboardInterrupt) -> RunInterrupted:
    """The interrupt, with the run id, its state and the command that resumes it (the CLI prints it)."""
    why = str(err) or "Ctrl-C"
    hint = _resume_hint(run, callbacks)
    if hint is None:
        hint = "no MLflow run was recorded" if run.run_id is None else f"MLflow run {run.run_id}"
    return RunInterrupted(f"interrupted ({why}): {hint}", run_id=run.run_id)


def resume(run_id: str, *, tracking_uri: str | None = None, quiet: bool = False) -> TrainResult:
    """Continue an interrupted cnnbench run in place: same run id, next epoch (or, when it was
    stopped after its last epoch, straight to the test pass and the artifacts).

    Resumable: KILLED or FAILED, or RUNNING with its process gone (no heartbeat). The run is
    claimed first (see :func:`cnnbench.tracking.resume.claim`): a second resume of the same run,
    at the same moment or later, is refused."""
    from cnnbench.tracking.resume import claim, fetch_resume, get_resumable, logged_epochs, release, resume_line
    from cnnbench.tracking.store import check_reachable, resolve_uri

    uri = resolve_uri(tracking_uri)
    check_reachable(uri)
    get_resumable(uri, run_id)  # refuse early (before the claim) what can never be resumed
    before = claim(uri, run_id)
    try:
        raw, state, source = fetch_resume(uri, run_id)
        config = TrainConfig.from_dict(raw, source=f"config.json of run {run_id}")
        config = config.replace(run={"tracking_uri": uri, "quiet": quiet})
        callbacks = run_callbacks(config, run_id=run_id)
        line = resume_line(run_id, state, source, config.run.epochs, logged_epochs(uri, run_id))
    except BaseException:
        release(uri, run_id, before)
        raise
    # one line, even with --quiet: which epochs this resume trains again (FAULTS R4)
    print(line, file=sys.stderr, flush=True)
    return train(config, callbacks, resume_state=state)
