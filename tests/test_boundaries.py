"""Architecture boundaries: MLflow only in tracking/, campaign/, tune/ and study/; Optuna only in
campaign/ (the storage opener), tune/ and study/; campaign/ below tune/ and study/; models do no I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cnnbench"

ALLOWED = {"mlflow": ("tracking", "campaign", "tune", "study"), "optuna": ("campaign", "tune", "study")}


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


def test_campaign_layer_imports_neither_tune_nor_study():
    """tune/ and study/ are built on campaign/, never the other way (a worker main names its entry
    point as a string, so the layer below imports nothing above it)."""
    for path in (SRC / "campaign").rglob("*.py"):
        above = {m for m in _modules(path) if m.startswith(("cnnbench.tune", "cnnbench.study"))}
        assert not above, (path, above)


def test_engine_does_not_import_tracking_or_tune():
    for path in (SRC / "engine").rglob("*.py"):
        text = path.read_text()
        assert "cnnbench.tracking" not in text and "cnnbench.tune" not in text, path


def _modules(path: Path) -> set[str]:
    """Every module ``path`` imports, fully named (``cnnbench.cli_options``, ``tqdm``, ...)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_engine_imports_no_console_or_cli_library():
    for path in (SRC / "engine").rglob("*.py"):
        assert not {m.split(".")[0] for m in _modules(path)} & {"tqdm", "click", "mlflow", "optuna"}, path


CLI_MODULES = {"click", "cnnbench.cli", "cnnbench.cli_options"}


def test_config_and_tune_logic_import_no_cli_module():
    """The declarations (config.py) and tune's logic must be usable without the command line (the
    subcommands live in commands/)."""
    paths = [SRC / "config.py", *(SRC / "tune").rglob("*.py")]
    for path in paths:
        used = {m for m in _modules(path) if m in CLI_MODULES or m.split(".")[0] == "click"}
        assert not used, f"{path.relative_to(SRC)} imports {used}"


def test_config_declarations_import_no_torch():
    assert not {m.split(".")[0] for m in _modules(SRC / "config.py")} & {"torch", "mlflow", "optuna", "numpy"}


def test_choice_lists_are_declared_once():
    """The lists --help shows are the very objects the code checks against (no light copies)."""
    from cnnbench import config
    from cnnbench.data import augment
    from cnnbench.tune import PRUNERS, SAMPLERS, study

    assert augment.AUGMENTATIONS is config.AUGMENTATIONS
    assert (study.SAMPLERS, study.PRUNERS) == (SAMPLERS, PRUNERS) and study.SAMPLERS is SAMPLERS
