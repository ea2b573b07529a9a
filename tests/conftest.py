"""pytest fixtures shared by the suite, and the order in which `make test` runs it."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Compiled modules are kept (__pycache__, as Python does by default) even where the environment sets
# PYTHONDONTWRITEBYTECODE (this build machine does): else each of the ~7 processes of every test station
# compiles the station's modules from source again, ~0.1-0.2 CPU-s each. Set here, before xdist starts
# its workers, so that they and every process the tests start inherit it.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

from support import Station  # noqa: E402

pytest_plugins = ["tiers", "pytester"]  # the `station` mark (tests/tiers.py); pytester for test_tiers.py

# seconds each test took (setup + call + teardown) in a full run, written by `--store-durations`:
# under pytest-xdist the longest work goes out first, so that no long test starts near the end
DURATIONS = Path(__file__).resolve().parent / "durations.json"
UNKNOWN_SECONDS = 1.0  # a test not in the file (new): counted as a short one
_SHARED_FIXTURE = re.compile(r"""scope\s*=\s*["'](module|class|package|session)["']""")


@pytest.fixture
def station(tmp_path: Path):
    """A running station (real process) on free ports; stopped at the end."""
    st = Station(tmp_path / "data")
    st.start()
    yield st
    st.stop()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--store-durations", action="store_true",
                     help=f"write each test's seconds to {DURATIONS.name} (the work order of `make test`)")


def _durations() -> dict[str, float]:
    try:
        return json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        return {}


def shares_fixtures(module_path: str) -> bool:
    """Whether a test module builds fixtures its tests share (module, class... scope): then its
    tests run together on one xdist worker; else each test is a unit of work of its own."""
    try:
        return bool(_SHARED_FIXTURE.search((Path(__file__).resolve().parent.parent / module_path).read_text()))
    except OSError:
        return True


def work_unit(nodeid: str, shared: dict[str, bool]) -> str:
    module = nodeid.split("::", 1)[0]
    if module not in shared:
        shared[module] = shares_fixtures(module)
    return module if shared[module] else nodeid


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest unit of work first (a module that shares fixtures is one unit), by the last stored
    durations; the same order in every xdist worker, which the scheduler below follows."""
    seconds = _durations()
    shared: dict[str, bool] = {}
    cost: dict[str, float] = {}
    for item in items:
        unit = work_unit(item.nodeid, shared)
        cost[unit] = cost.get(unit, 0.0) + seconds.get(item.nodeid, UNKNOWN_SECONDS)
    order = {unit: i for i, unit in enumerate(sorted(cost, key=lambda u: -cost[u]))}  # stable: ties keep file order
    items.sort(key=lambda item: order[work_unit(item.nodeid, shared)])


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadscope` with the units above, handed out in collection order (longest first)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class LongestFirst(LoadScopeScheduling):
        shared: dict[str, bool] = {}

        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid, self.shared)

    config.option.loadscopereorder = False
    return LongestFirst(config, log)


class _Recorder:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[report.nodeid] = self.seconds.get(report.nodeid, 0.0) + report.duration

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if getattr(session.config, "workerinput", None) is not None:
            return  # a worker: the controller writes (it hears every worker's reports)
        merged = {**_durations(), **{k: round(v, 2) for k, v in self.seconds.items()}}
        DURATIONS.write_text(json.dumps(dict(sorted(merged.items())), indent=0) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--store-durations") and getattr(config, "workerinput", None) is None:
        config.pluginmanager.register(_Recorder(), "store-durations")
