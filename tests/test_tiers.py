"""The test tiers are decided by code: a test that starts a station process is marked `station`
(left out by `make test-fast`), whether it builds the Station itself, through a helper or a fixture.

- statically: every test function whose body builds a `Station(`, directly or through a helper
  defined in tests/ (such as `rig` or `make_station`), carries the mark (decorator or module
  `pytestmark`); fixtures that build one mark their tests automatically (tests/tiers.py);
- at run time: `Station.start` refuses in a test without the mark (checked here on an inner run).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest
import support
import tiers

TESTS = Path(__file__).resolve().parent


@functools.cache
def _parsed() -> tuple[tuple[str, ast.Module], ...]:
    return tuple((path.name, ast.parse(path.read_text(), str(path))) for path in sorted(TESTS.glob("*.py")))


def _trees() -> dict[str, ast.Module]:
    """The test files parsed (once per session; a fresh dict, as a test may add a file to it)."""
    return dict(_parsed())


def _called_names(node: ast.AST) -> set[str]:
    return {n.func.id for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}


def _is_fixture(func: ast.FunctionDef) -> bool:
    return any("fixture" in ast.unparse(d) for d in func.decorator_list)


def station_builders(trees: dict[str, ast.Module]) -> set[str]:
    """Names of the helper functions in tests/ that build a Station, directly or through another."""
    helpers = {}
    for tree in trees.values():
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("test_") and not _is_fixture(node):
                helpers[node.name] = _called_names(node)
    builders = {"Station"}
    while True:
        more = {name for name, calls in helpers.items() if calls & builders} - builders
        if not more:
            return builders
        builders |= more


def _marked(node: ast.FunctionDef | ast.Module) -> bool:
    if isinstance(node, ast.Module):
        return any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)
                   and "mark.station" in ast.unparse(n.value) for n in node.body)
    return any("mark.station" in ast.unparse(d) for d in node.decorator_list)


def unmarked_station_tests(trees: dict[str, ast.Module]) -> list[str]:
    builders = station_builders(trees)
    missing = []
    for name, tree in trees.items():
        if not name.startswith("test_") or _marked(tree):
            continue
        for node in tree.body:
            if (isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
                    and _called_names(node) & builders and not _marked(node)):
                missing.append(f"{name}::{node.name}")
    return missing


def test_every_test_that_builds_a_station_is_marked():
    assert unmarked_station_tests(_trees()) == []


def test_the_static_check_finds_a_forgotten_mark():
    """The check is real: a test building a Station through a helper, unmarked, is reported."""
    trees = _trees()
    trees["test_new.py"] = ast.parse(
        "def start_two(p):\n    return rig(p), 1\n\n"
        "def test_direct(tmp_path):\n    Station(tmp_path).start()\n\n"
        "def test_through_helpers(tmp_path):\n    start_two(tmp_path)\n\n"
        "@pytest.mark.station\ndef test_marked(tmp_path):\n    Station(tmp_path)\n\n"
        "def test_plain(tmp_path):\n    burnstation(tmp_path, 'init')\n")
    found = [name for name in unmarked_station_tests(trees) if name.startswith("test_new.py::")]
    assert found == ["test_new.py::test_direct", "test_new.py::test_through_helpers"]


def test_fixtures_that_build_a_station_mark_their_tests(request):
    assert tiers.builds_station(support.Station.__init__) is False
    import conftest

    assert tiers.builds_station(conftest.station)
    assert request.node.get_closest_marker("station") is None  # this test uses no such fixture


INNER = """
import pytest
import support

@pytest.fixture
def built(tmp_path):
    return lambda: support.Station(tmp_path)  # builds a Station: its tests are marked

def test_unmarked_start():
    support.Station.__new__(support.Station).start()

def test_unmarked_through_a_fixture(built):
    support.check_station_allowed()

@pytest.mark.station
def test_marked():
    support.check_station_allowed()
"""


def test_starting_a_station_in_an_unmarked_test_fails_before_any_process(pytester: pytest.Pytester):
    pytester.makepyfile(test_inner=INNER)
    pytester.syspathinsert(TESTS)
    outer = support.running_test
    try:
        result = pytester.runpytest_inprocess("-p", "tiers", "-q", "-p", "no:cacheprovider")
    finally:
        support.running_test = outer  # the inner session shares the module
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*test_unmarked_start*not marked `station`*"])
