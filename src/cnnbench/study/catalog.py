"""Where studies come from: the entry-point group ``cnnbench.studies`` (:data:`cnnbench.registry.STUDIES`),
the built-in files (``cnnbench/studies/*.toml``) declared there like any plugin's, whose object is a
path to a study file or a function returning the TOML text (or a path). A plugin that fails to load
is listed as BROKEN.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cnnbench.errors import ConfigError
from cnnbench.registry import STUDIES, STUDY_GROUP, study_text

GROUP = STUDY_GROUP
_read = study_text


@dataclass(frozen=True)
class Entry:
    name: str
    distribution: str
    text: str | None  # None: broken
    error: str = ""


def entries() -> list[Entry]:
    return [Entry(e.name, e.distribution, e.plugin, e.error or "") for e in STUDIES.entries()]


def source(ref: str) -> tuple[str, str | None]:
    """``(name for messages, TOML text or None to read the file)`` of a study name or file."""
    path = Path(ref).expanduser()
    if ref.endswith(".toml") or path.is_file() or "/" in ref:
        return str(path), None
    for entry in entries():
        if entry.name == ref:
            if entry.text is None:
                raise ConfigError(f"study {ref!r} from {entry.distribution} cannot be used: {entry.error}")
            return ref, entry.text
    names = ", ".join(e.name for e in entries()) or "none"
    raise ConfigError(f"unknown study {ref!r}: not a file, nor a built-in or installed study; known: {names} "
                      f"(cnnbench study list), or give a path to a .toml file")
