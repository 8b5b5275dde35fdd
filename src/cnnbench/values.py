"""The one value parser: text or an already-typed value (JSON, TOML) as an option's type.

Used by the train option declarations (:class:`cnnbench.config.TrainOption`) and by plugin options
(:class:`cnnbench.registry.Option`), so ``--lr``, ``--set lr=``, ``--model-option dropout=``, a study
file and a ``config.json`` take the same boolean words and the same numbers. It raises
``TypeError``/``ValueError``/``OverflowError``; each caller turns them into its one-line message
(naming its flag and what it accepts).
"""

from __future__ import annotations

from typing import Any

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")
KINDS = ("bool", "int", "float", "str", "ints")


def convert(kind: str, raw: Any, *, typed_source: bool = False) -> Any:
    """``raw`` as ``kind``. ``typed_source``: ``raw`` comes from JSON/TOML, which carry types, so a
    string where a number or boolean belongs is a mistake ("5" for an int), not a 5; and only a
    string is text."""
    if isinstance(raw, str) and typed_source and kind != "str":
        raise TypeError(raw)
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        word = raw.strip().lower() if isinstance(raw, str) else None
        if word in TRUE:
            return True
        if word in FALSE:
            return False
        raise ValueError(raw)
    if kind == "int":
        return _int(raw)
    if kind == "float":
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise TypeError(raw)
        return float(raw.strip() if isinstance(raw, str) else raw)
    if kind == "ints":
        if isinstance(raw, (list, tuple)):
            return tuple(_int(v) for v in raw)
        if not isinstance(raw, str):
            raise TypeError(raw)
        parts = [p for p in raw.replace(" ", "").split(",") if p]
        if not parts:
            raise ValueError(raw)
        return tuple(_int(p) for p in parts)
    if kind == "str":
        if typed_source and not isinstance(raw, str):
            raise TypeError(raw)
        return raw if isinstance(raw, str) else str(raw)
    raise ValueError(f"unknown option kind {kind!r}; accepted: {', '.join(KINDS)}")


def _int(raw: Any) -> int:
    if isinstance(raw, bool):
        raise TypeError(raw)
    if isinstance(raw, float):
        if not raw.is_integer():
            raise ValueError(raw)
        return int(raw)
    if isinstance(raw, str):
        return int(raw.strip())
    if isinstance(raw, int):
        return raw
    raise TypeError(raw)
