"""pytest fixtures shared by the suite."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import Station  # noqa: E402

pytest_plugins = ["tiers", "pytester"]  # the `station` mark (tests/tiers.py); pytester for test_tiers.py


@pytest.fixture
def station(tmp_path: Path):
    """A running station (real process) on free ports; stopped at the end."""
    st = Station(tmp_path / "data")
    st.start()
    yield st
    st.stop()
