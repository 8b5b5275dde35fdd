"""Built-in study files (package data): ``<name>.toml`` here is the study ``<name>``.

Studies are plugins like models and datasets: each is an entry point of the group
``cnnbench.studies`` (:data:`cnnbench.registry.STUDIES`), the built-ins declared one line each in
cnnbench's ``setup.cfg`` as ``<name> = cnnbench.studies:<name with _ for ->``, whose object is the
file's path (this module's attribute of that name). A plugin's entry point names a path to its
study file, or a function returning the TOML text or a path. Adding a built-in study = its file +
one entry-point line (tests/test_plugins_discovery.py checks that every file here has one).
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable


def __getattr__(attr: str) -> Traversable:
    """``cnnbench.studies.<name>``: the path of the built-in study file ``<name>.toml`` (entry-point
    attributes cannot hold ``-``: ``_`` stands for it)."""
    path = files(__name__) / f"{attr.replace('_', '-')}.toml"
    if attr.startswith("__") or not path.is_file():
        raise AttributeError(f"cnnbench.studies has no study file {attr.replace('_', '-')}.toml")
    return path
