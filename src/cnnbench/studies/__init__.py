"""Built-in study files (package data): each ``*.toml`` here is a study ``cnnbench study list`` shows.

The entry-point group ``cnnbench.studies`` names them (and any plugin's studies) for other tools:
an entry point's object is a path to a study file, or a function returning the TOML text or a path.
"""

from __future__ import annotations

from importlib.resources import files

DIGITS_OPTIMIZERS = files(__name__) / "digits-optimizers.toml"
