"""Every FAIL row of ../shared/docs/FAULTS.md has a test, listed in tests/faults_covered.py and named
after the row's ID. The tests are found by parsing tests/*.py (ast: nothing imported or collected)."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

from faults_covered import COVERED

TESTS = Path(__file__).resolve().parent
FAULTS = TESTS.parents[1] / "shared" / "docs" / "FAULTS.md"
ROW = re.compile(r"^\|\s*(?P<id>[A-Z]+\d+[a-z]*)\b[^|]*\|.*\*\*FAIL\*\*")


def fail_ids(text: str) -> list[str]:
    """The IDs of the table rows whose verdict is **FAIL** ("| K1 (sample) | ... | **FAIL** (...) |")."""
    return [m["id"] for m in map(ROW.match, text.splitlines()) if m]


@functools.lru_cache(maxsize=1)
def defined_tests() -> dict[str, frozenset[str]]:
    """file name -> the test function names it defines (module level and in classes)."""
    found = {}
    for path in sorted(TESTS.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found[path.name] = frozenset(node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                                     and node.name.startswith("test_"))
    return found


def named_after(test: str, fault_id: str) -> bool:
    """``test_ST9c_ST14_...`` is named after ST9c and ST14 (a whole ``_``-separated part, so ST1 is not ST14)."""
    return fault_id in test.split("_")


def test_fail_rows_are_read_from_the_table():
    text = ("| K1 (sample) | cmd | 1 | out | FAILED | **FAIL** (regression) |\n"
            "| D51 (new) | a PNG | 1 | traceback | no | **FAIL** (bounded) |\n"
            "| ST3b | drive.py | **-15** | nothing | no | **FAIL** |\n"
            "| M3 | --batch-sizes 0 | 2 | Error: ... | **held** |\n"
            "| D53x (new) | header | 1 | tb | no | **FAIL** (same cause as D34) |\n")
    assert fail_ids(text) == ["K1", "D51", "ST3b", "D53x"]


def test_named_after_needs_the_whole_id():
    assert named_after("test_ST9c_ST14_study_report", "ST14") and named_after("test_ST9c_ST14_study_report", "ST9c")
    assert not named_after("test_ST14_x", "ST1") and not named_after("test_M7b_x", "M7")


@pytest.mark.skipif(not FAULTS.is_file(), reason=f"{FAULTS} is absent (../shared is not checked out beside the repository)")
def test_every_fail_row_of_faults_md_is_listed():
    ids = fail_ids(FAULTS.read_text(encoding="utf-8"))
    assert len(ids) >= 30, f"only {len(ids)} FAIL rows read from {FAULTS}: has the table changed shape?"
    missing = sorted(set(ids) - set(COVERED))
    assert not missing, f"FAIL rows of FAULTS.md with no test in tests/faults_covered.py: {', '.join(missing)}"


@pytest.mark.parametrize("fault_id", sorted(COVERED))
def test_each_listed_test_exists_and_is_named_after_its_id(fault_id):
    """``FILE::TEST`` names a test function in tests/FILE; ``FILE::test_<ID>_*`` any test of FILE whose
    name starts so (rows whose tests are being written: an expected failure while FILE does not exist,
    checked like the others the moment it does)."""
    file, _, test = COVERED[fault_id].partition("::")
    functions = defined_tests()
    if test.endswith("*") and file not in functions:
        pytest.xfail(f"{fault_id}: tests/{file} is being written (its test_{fault_id}_... has not landed)")
    assert file in functions, f"{fault_id}: tests/{file} does not exist"
    if test.endswith("*"):
        matches = sorted(f for f in functions[file] if f.startswith(test[:-1]))
        assert matches, f"{fault_id}: no test in tests/{file} starts with {test[:-1]}"
    else:
        matches = [test] if test in functions[file] else []
        assert matches, f"{fault_id}: tests/{file} has no test {test}"
    for name in matches:
        assert named_after(name, fault_id), f"{fault_id}: {file}::{name} is not named after {fault_id}"
