"""The test tiers, decided by code: a test that starts a station process carries the `station` mark.

`make test` runs every test, `make test-fast` (`pytest -m "not station"`) only those that start
no station process. A pytest plugin (loaded by conftest.py) that
- marks every test using a fixture whose code builds a `Station(` (the `station` fixture of
  conftest.py and the module fixtures such as `archive`, `pacs`, `shared`);
- tells `support.Station.start` whether the running test is marked, so that a test starting a
  station without the mark (itself, or through a helper such as `rig`) fails at once instead of
  slipping into the fast tier. Tests that build a Station in their own body carry the mark by
  hand (decorator or module `pytestmark`); tests/test_tiers.py checks that statically too.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from typing import Any

import pytest
import support

STATION = "station"
_BUILDS_STATION = re.compile(r"\bStation\(")


@functools.cache
def builds_station(func: Callable[..., Any]) -> bool:
    """Whether a fixture's own code constructs a Station."""
    try:
        source = inspect.getsource(inspect.unwrap(func))
    except (OSError, TypeError):
        return False
    return bool(_BUILDS_STATION.search(source))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{STATION}: starts a station process; left out by `make test-fast`")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        fixturedefs = info.name2fixturedefs.values() if info is not None else ()
        if any(builds_station(d.func) for defs in fixturedefs for d in defs):
            item.add_marker(STATION)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # before the fixtures: a module fixture starts its station in the setup of the first test
    support.running_test = (item.nodeid, item.get_closest_marker(STATION) is not None)


def pytest_runtest_logfinish() -> None:
    support.running_test = None
