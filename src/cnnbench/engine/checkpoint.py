"""Checkpoints: everything needed to continue a run exactly where an epoch ended.

``last.pt`` holds model, optimizer, scheduler and grad-scaler state, the epoch and step counters,
the metric history, the early-stopping record (with the best weights when ``--patience`` is on, so
a resumed run can still restore them) and the RNG states, so epoch ``e`` of a resumed run draws
the same dropout masks as it would have uninterrupted. The data order needs no state: the device
loader seeds each epoch by ``(seed, epoch)``.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from cnnbench.errors import ConfigError

LAST = "last.pt"
BEST = "best.pt"
REQUIRED_KEYS = ("model", "optimizer", "epoch", "global_step", "history")


def rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save(path: Path, state: dict[str, Any]) -> Path:
    """Write atomically: an interrupt never leaves a half-written checkpoint behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def load(path: str | Path) -> dict[str, Any]:
    """Read a ``last.pt`` written by :func:`save` (on CPU) and check it is one.

    This is the engine side of ``cnnbench train --resume RUN_ID``: fetch the run's
    ``checkpoints/last.pt`` artifact and pass ``load(path)`` as ``fit(..., resume_state=...)``.
    """
    try:
        # weights_only: a checkpoint comes from a tracking store other people may write to, and a
        # full unpickle would run whatever code a crafted file names. Everything save() writes
        # (state dicts, RNG byte tensors, plain numbers, lists and dicts) loads this way.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        named = next((line for line in lines if "GLOBAL" in line), None)
        if named is None:  # not a pickle that names code, just not a checkpoint
            raise ConfigError(f"--resume: cannot read checkpoint {path}: {lines[-1] if lines else type(err).__name__}") from None
        first = named
        raise ConfigError(
            f"--resume: refusing checkpoint {path}: it holds objects other than tensors and plain values, "
            f"which a cnnbench checkpoint never does ({first})"
        ) from None
    except Exception as err:  # torch raises many kinds (zip, EOF, ...) for a bad file
        raise ConfigError(f"--resume: cannot read checkpoint {path}: {err}") from None
    check_resumable(state, str(path))
    return state


def check_resumable(state: Any, source: str = "checkpoint") -> None:
    """Raise a ConfigError when ``state`` is not a cnnbench ``last.pt`` checkpoint."""
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ConfigError(f"--resume: {source} is not a cnnbench checkpoint (missing {', '.join(missing)})")
