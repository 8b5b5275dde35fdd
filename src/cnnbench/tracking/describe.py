"""What makes a run say what it is in MLflow: its default name, its description
(``mlflow.note.content``), MLflow's standard source/user/git tags, and the data it trained and was
tested on as MLflow dataset inputs (``MlflowClient.log_inputs``, what ``mlflow.log_input`` does).

Pure functions of the run's configuration and data, except the two ``log_*`` helpers that write
what the others return.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from cnnbench.config import TrainConfig
    from cnnbench.events import RunState

RUN_NAME_MAX_CHARS = 250  # MLflow's limit on a run name
CONTEXTS = {"train": "training", "val": "validation", "test": "test"}
DEFAULT_EXPERIMENT = "cnnbench"
# Parts of the name every run has; a varied value among them is not repeated.
NAME_BASE_KEYS = ("model", "dataset", "optimizer", "lr")


# -- names ---------------------------------------------------------------------------------
def format_value(value: Any) -> str:
    """Short and exact: ``1e-3``, ``2.5e-4``, ``0.05``, ``64``, ``True``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    if abs(value) < 0.01 or abs(value) >= 1e5:
        mantissa, exponent = f"{value:.6e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(exponent)}"
    return f"{value:.6g}"


def run_name(config: "TrainConfig", varied: Mapping[str, Any] | None = None, *, label: str | None = None) -> str:
    """``lenet5-digits-adam-lr1e-3``; with ``varied`` (a trial's or a study cell's values) each one
    not already in the name appended as ``<key><value>`` (``batch_size32``, ``dropout0.2``, a
    bool as ``<key>``/``no_<key>``); ``label`` (``trial3``) last."""
    base = [config.model.name, config.data.name, config.optim.optimizer, f"lr{format_value(config.optim.lr)}"]
    parts = base + [_part(k, v) for k, v in (varied or {}).items() if k not in NAME_BASE_KEYS]
    if label:
        parts.append(label)
    return "-".join(p for p in parts if p)[:RUN_NAME_MAX_CHARS]


def _part(key: str, value: Any) -> str:
    short = key.rsplit(".", 1)[-1]  # model.dropout -> dropout
    if isinstance(value, bool):
        return short if value else f"no_{short}"
    if isinstance(value, str) and value in ("True", "False"):
        return short if value == "True" else f"no_{short}"
    return f"{short}{format_value(value)}"


# A campaign's child runs are named by what differs between them, first: the 190 px name column of
# the MLflow runs table shows ~25 characters. ``s0 lr=1e-3 bs=64 · lenet5``, ``t07 lr=3.2e-3 · lenet5``.
SHORT_KEYS = {"batch_size": "bs", "weight_decay": "wd", "optimizer": "opt", "scheduler": "sched",
              "augment": "aug", "label_smoothing": "ls", "grad_accum": "accum"}
NAME_SEPARATOR = " · "


def varied_text(values: Mapping[str, Any], *, digits: int | None = None) -> str:
    """``lr=1e-3 bs=64 dropout=0.2``: each value as ``<short key>=<value>``; ``digits``: floats to that
    many significant digits (a sampler's 0.0032123 as ``3.2e-3``), else exact."""
    parts = []
    for key, value in values.items():
        short = key.rsplit(".", 1)[-1]
        if digits and isinstance(value, float) and not isinstance(value, bool) and math.isfinite(value):
            value = float(f"{value:.{digits}g}")
        parts.append(f"{SHORT_KEYS.get(short, short)}={format_value(value)}")
    return " ".join(parts)


def campaign_run_name(config: "TrainConfig | None", lead: str, varied: Mapping[str, Any], *,
                      variant: str | None = None, digits: int | None = None) -> str:
    """``<lead> [variant] <varied values> · <model>`` (the dataset instead when the grid varies the
    model; nothing after the values without a ``config``)."""
    head = " ".join(p for p in (lead, variant, varied_text(varied, digits=digits)) if p)
    if config is None:
        return head[:RUN_NAME_MAX_CHARS]
    tail = config.data.name if "model" in {k.rsplit(".", 1)[-1] for k in varied} else config.model.name
    return f"{head}{NAME_SEPARATOR}{tail}"[:RUN_NAME_MAX_CHARS]


def trial_run_name(config: "TrainConfig | None", number: int, params: Mapping[str, Any], seed: int | None = None) -> str:
    """``t07 lr=3.2e-3 bs=64 · lenet5``; with ``seed`` (a trial trained over several) ``t07 s1 ...``."""
    lead = f"t{number:02d}" + (f" s{seed}" if seed is not None else "")
    return campaign_run_name(config, lead, params, digits=2)


def experiment_name(explicit: str | None) -> str:
    """The experiment a run goes to: the one asked for, else ``$MLFLOW_EXPERIMENT_NAME`` (MLflow's
    own variable, also what ``mlflow run`` reads for ``--experiment-name``), else ``cnnbench``."""
    return explicit or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


# -- description ---------------------------------------------------------------------------
def description(run: "RunState", *, heading: str | None = None) -> str:
    """Markdown for ``mlflow.note.content`` (the run page's Description)."""
    cfg, data = run.config, run.data
    o, r = cfg.optim, cfg.run
    c, (h, w) = data.channels, data.image_size
    options = _options_text(cfg)
    lines = [heading] if heading else []
    lines += [
        f"**{cfg.model.name}** on **{cfg.data.name}**{options}: {len(data.train)} train / {len(data.val)} validation / "
        f"{len(data.test)} test images of {c}x{h}x{w}, {len(data.classes)} classes.",
        f"{o.optimizer}, lr {format_value(o.lr)}, batch {o.batch_size}"
        + (f" x {o.grad_accum} accumulated" if o.grad_accum > 1 else "")
        + f", {r.epochs} epoch{'s' if r.epochs != 1 else ''}" + (f" (early stopping, patience {r.patience})" if r.patience else "")
        + (f", {o.scheduler} schedule" if o.scheduler != "none" else "")
        + (f", augmentation {cfg.data.augment}" if cfg.data.augment != "none" else "")
        + f", seed {r.seed}.",
        "Reproduce: download this run's `config.json` and run `cnnbench train --config config.json`.",
    ]
    return "\n\n".join(lines)


def _options_text(cfg: "TrainConfig") -> str:
    from cnnbench.registry import DATASETS, MODELS

    opts = {**{f"model.{k}": v for k, v in non_default(MODELS, cfg.model.name, cfg.model.options).items()},
            **{f"data.{k}": v for k, v in non_default(DATASETS, cfg.data.name, cfg.data.options).items()}}
    return f" ({', '.join(f'{k}={v}' for k, v in opts.items())})" if opts else ""


def non_default(registry, name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options that differ from the plugin's declared defaults (resolved options hold them all)."""
    try:
        declared = {o.name: o.default for o in registry.get(name).options}
    except Exception:  # a plugin that cannot be looked up: show everything
        return dict(options)
    return {k: v for k, v in options.items() if k not in declared or declared[k] != v}


# -- MLflow's standard tags -----------------------------------------------------------------
@functools.lru_cache(maxsize=1)  # git and environment look-ups: once per process (tune trials)
def _context_tags() -> tuple[tuple[str, str], ...]:
    from mlflow.tracking.context.registry import resolve_tags

    return tuple(sorted(resolve_tags({}).items()))


def standard_tags(tags: Mapping[str, str] | None = None) -> dict[str, str]:
    """``tags`` plus what ``mlflow.start_run`` would add for a new run (``mlflow.user``,
    ``mlflow.source.name``/``type``, ``mlflow.source.git.commit``, ...) — for runs created with
    ``MlflowClient.create_run``, which adds none. The git commit of the cnnbench checkout fills in
    when the entry point itself is not inside a git repository."""
    resolved = dict(_context_tags())
    if "mlflow.source.git.commit" not in resolved:
        from cnnbench.tracking.mlflow_tracker import git_commit

        commit = git_commit()
        if commit:
            resolved["mlflow.source.git.commit"] = commit
    return {**resolved, **machine_tags(), **(tags or {})}


CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def machine_tags() -> dict[str, str]:
    """What a run's numbers depend on besides its seed: ``cnnbench.cpu_capability`` (the kernels
    PyTorch dispatches to, ``torch.backends.cpu.get_cpu_capability()``: same seed, same metrics holds
    on the same one), ``cnnbench.cpu_model``, ``cnnbench.cpu_flags`` (those of :data:`CPU_FLAGS` the
    CPU has, or ``none``) and, once this process has used CUDA, ``cnnbench.gpu``. Every run gets
    them: they are part of :func:`standard_tags`, which every run's ``create_run`` goes through."""
    import torch

    tags = {"cnnbench.cpu_capability": torch.backends.cpu.get_cpu_capability(), **_cpu_description()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tags["cnnbench.gpu"] = torch.cuda.get_device_name(torch.cuda.current_device())
    return tags


@functools.lru_cache(maxsize=1)
def _cpu_description() -> dict[str, str]:
    import platform

    model, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:  # not Linux
        pass
    present = [f for f in CPU_FLAGS if f in flags]
    return {"cnnbench.cpu_model": (model or platform.processor() or platform.machine() or "unknown")[:250],
            "cnnbench.cpu_flags": ",".join(present) or "none"}


# -- datasets --------------------------------------------------------------------------------
@functools.lru_cache(maxsize=6)  # the splits of the last two datasets (tune trials reuse one)
def _digest(images: "_Keyed", labels: "_Keyed") -> str:
    h = hashlib.blake2b(digest_size=8)
    h.update(str(tuple(images.shape)).encode())
    h.update(images.contiguous().cpu().numpy().tobytes())
    h.update(labels.cpu().numpy().tobytes())
    return h.hexdigest()


def split_digest(split) -> str:
    """A hash of every pixel and label of a prepared split (16 hex digits; ~0.1 s per 100 MB)."""
    return _digest(_Keyed(split.images), _Keyed(split.labels))


class _Keyed:
    """A tensor wrapper hashed by identity, so the digest cache never hashes pixels to look up (the
    cache holds the tensor, so its id cannot be reused by another while cached)."""

    def __init__(self, tensor) -> None:
        self.tensor = tensor

    def __hash__(self) -> int:
        return id(self.tensor)

    def __eq__(self, other) -> bool:
        return isinstance(other, _Keyed) and other.tensor is self.tensor

    def __getattr__(self, name):
        return getattr(self.tensor, name)


def dataset_name(config: "TrainConfig") -> str:
    """``digits``; ``edges[noise=0.2]`` for options other than the plugin's defaults."""
    from cnnbench.registry import DATASETS

    opts = ",".join(f"{k}={v}" for k, v in non_default(DATASETS, config.data.name, config.data.options).items())
    return f"{config.data.name}[{opts}]" if opts else config.data.name


def dataset(run: "RunState", split: str):
    """The ``split`` (train / val / test) of the run's prepared data as an MLflow dataset: name,
    digest of its pixels and labels, shape profile, and a code source saying how it was made."""
    import mlflow.data
    from mlflow.data.code_dataset_source import CodeDatasetSource

    part = getattr(run.data, split)
    source = CodeDatasetSource(tags=_source_tags(run.config, split))
    return mlflow.data.from_numpy(
        part.images.cpu().numpy(), targets=part.labels.cpu().numpy(), source=source,
        name=dataset_name(run.config), digest=split_digest(part),
    )


def _source_tags(config: "TrainConfig", split: str) -> dict[str, str]:
    from cnnbench.registry import DATASETS

    entry = next((e for e in DATASETS.entries() if e.name == config.data.name), None)
    d = config.data
    how = {"train": f"train split less the {d.val_split:g} validation hold-out (stratified, seed {config.run.seed})"
           + (f", {d.train_size}-image subset" if d.train_size else ""),
           "val": f"{d.val_split:g} of the train split held out (stratified, seed {config.run.seed})",
           "test": "the dataset's test split, untouched"}[split]
    tags = {"cnnbench.dataset": d.name, "split": split, "prepared": how + (f", resized to {d.image_size}" if d.image_size else "")}
    if entry is not None:
        tags["distribution"] = entry.distribution
    if d.data_dir:
        tags["data_dir"] = str(d.data_dir)
    return tags


def dataset_inputs(run: "RunState") -> list:
    """The three splits as ``DatasetInput`` entities with their context (training / validation / test)."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = []
    for split, context in CONTEXTS.items():
        if len(getattr(run.data, split)) == 0:
            continue
        entity = dataset(run, split)._to_mlflow_entity()
        tags = [InputTag(MLFLOW_DATASET_CONTEXT, context), InputTag("images", str(len(getattr(run.data, split))))]
        inputs.append(DatasetInput(dataset=entity, tags=tags))
    return inputs


def log_run_description(client, run_id: str, run: "RunState", *, heading: str | None = None) -> None:
    """Write the description and the dataset inputs of a run (two store calls)."""
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

    client.set_tag(run_id, MLFLOW_RUN_NOTE, description(run, heading=heading))
    client.log_inputs(run_id, datasets=dataset_inputs(run))


# -- artifacts -------------------------------------------------------------------------------
def prune_empty_dirs(folder: Path) -> None:
    """Remove the empty folders under ``folder`` (deepest first), so none is uploaded as an artifact."""
    for path in sorted((p for p in Path(folder).rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            path.rmdir()  # only succeeds when empty
        except OSError:
            pass

