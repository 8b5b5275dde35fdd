"""Where studies come from: the built-in files (``cnnbench/studies/*.toml``) and the entry-point
group ``cnnbench.studies`` of installed plugins, whose object is a path to a study file or a
function returning the TOML text (or a path). A plugin that fails to load is listed as BROKEN.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from importlib.resources import files
from pathlib import Path

from cnnbench.errors import ConfigError

GROUP = "cnnbench.studies"


@dataclass(frozen=True)
class Entry:
    name: str
    distribution: str
    text: str | None  # None: broken
    error: str = ""


def _read(obj) -> str:
    if callable(obj):
        obj = obj()
    if isinstance(obj, str) and ("\n" in obj or "=" in obj):
        return obj  # TOML text
    if hasattr(obj, "read_text"):
        return obj.read_text(encoding="utf-8")
    if isinstance(obj, (str, Path)):
        return Path(obj).read_text(encoding="utf-8")
    raise TypeError(f"expected a study file path or a function returning TOML text; got {type(obj).__name__}")


def entries() -> list[Entry]:
    found: dict[str, Entry] = {}
    for path in sorted(files("cnnbench.studies").iterdir(), key=lambda p: p.name):
        if path.name.endswith(".toml"):
            found[path.name[: -len(".toml")]] = Entry(path.name[: -len(".toml")], "cnnbench (built-in)", path.read_text(encoding="utf-8"))
    for ep in metadata.entry_points(group=GROUP):
        dist = getattr(ep.dist, "name", None) or "?"
        if ep.name in found and dist == "cnnbench":
            continue  # the built-in file, also declared as an entry point
        try:
            text = _read(ep.load())
            found[ep.name] = Entry(ep.name, dist, text)
        except Exception as err:  # a third party's broken plugin must not break the list
            found[ep.name] = Entry(ep.name, dist, None, f"{type(err).__name__}: {err}")
    return sorted(found.values(), key=lambda e: e.name)


def source(ref: str) -> tuple[str, str | None]:
    """``(name for messages, TOML text or None to read the file)`` of a study name or file."""
    path = Path(ref).expanduser()
    if ref.endswith(".toml") or path.is_file() or "/" in ref:
        return str(path), None
    for entry in entries():
        if entry.name == ref:
            if entry.text is None:
                raise ConfigError(f"study {ref!r} from {entry.distribution} is BROKEN: {entry.error}")
            return ref, entry.text
    names = ", ".join(e.name for e in entries()) or "none"
    raise ConfigError(f"unknown study {ref!r}: not a file, nor a built-in or installed study; known: {names} "
                      f"(cnnbench study list), or give a path to a .toml file")
