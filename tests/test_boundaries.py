"""Architecture boundaries: MLflow only in tracking/ and tune/, Optuna only in tune/, models do no I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cnnbench"

ALLOWED = {"mlflow": ("tracking", "tune"), "optuna": ("tune",)}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("library", sorted(ALLOWED))
def test_library_imported_only_where_allowed(library):
    offenders = []
    for path in SRC.rglob("*.py"):
        package = path.relative_to(SRC).parts[0]
        if library in _imports(path) and package not in ALLOWED[library]:
            offenders.append(str(path.relative_to(SRC)))
    assert offenders == [], f"{library} imported outside {ALLOWED[library]}: {offenders}"


def test_engine_does_not_import_tracking_or_tune():
    for path in (SRC / "engine").rglob("*.py"):
        text = path.read_text()
        assert "cnnbench.tracking" not in text and "cnnbench.tune" not in text, path


def test_light_copies_of_choice_lists_match_their_sources():
    """cli_options and tune/command keep copies of a few choice lists so `--help` imports neither
    torch nor optuna; the copies must not drift from the lists the code actually accepts."""
    from cnnbench import cli_options
    from cnnbench.data import augment
    from cnnbench.tune import command, study

    assert cli_options.AUGMENTATIONS == augment.AUGMENTATIONS
    assert (command.SAMPLERS, command.PRUNERS) == (study.SAMPLERS, study.PRUNERS)
