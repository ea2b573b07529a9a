"""Supervisor life cycle: the supervisor killed takes its children along (no orphan keeps a port),
and robots added or deleted while running get or lose their driver process."""

from __future__ import annotations

import pytest
from support import Station, burnstation, wait_for
from test_supervisor import all_ready, echo, pid_alive, procs

pytestmark = pytest.mark.station  # every test here starts a station process (tests/tiers.py)


def test_supervisor_killed_takes_its_children_along(tmp_path):
    """kill -9 of the supervisor itself (systemd then restarts it): no orphan keeps a port."""
    st = Station(tmp_path / "data", supervisor__start_seconds=1)
    with st:
        table = wait_for(lambda: all_ready(st.data), what="every process running", every=0.1)
        pids = [p["pid"] for p in table.values()]
        st.proc.kill()
        st.proc.wait(10)
        wait_for(lambda: not any(pid_alive(p) for p in pids), 15, "children gone after the supervisor died", every=0.1)
        st.proc = None
        st.start()  # a new supervisor gets the ports again
        assert wait_for(lambda: echo(st), 30, "echo after restart", every=0.1)


def test_robots_added_and_removed_while_running(tmp_path):
    """Settings changes reach the supervisor: a configured robot gets a driver process, deleting it stops it."""
    st = Station(tmp_path / "data", supervisor__start_seconds=1)
    export = tmp_path / "export"
    export.mkdir()
    with st:
        wait_for(lambda: all_ready(st.data), what="every process running", every=0.1)
        assert not any(n.startswith("driver:") for n in procs(st.data))
        burnstation(st.data, "robots", "add", "share1", "--driver", "folder", "--path", str(export))
        entry = wait_for(lambda: (lambda p: p if p and p["ready"] else None)(procs(st.data).get("driver:share1")),
                         what="driver:share1 started", every=0.1)
        assert entry["robot"] == "share1" and entry["state"] in ("starting", "running")
        burnstation(st.data, "robots", "delete", "share1")
        wait_for(lambda: "driver:share1" not in procs(st.data), what="driver:share1 stopped", every=0.1)
        assert not pid_alive(entry["pid"])
        assert echo(st)
