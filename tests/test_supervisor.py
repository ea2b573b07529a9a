"""`burnstation run` as a supervisor of real processes: kill -9 recovery, a service that keeps
failing at start ends up "failed", SIGTERM stops everything within 10 s without losing anything."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from support import Station, burnstation, dcmtk, wait_for, write_study

pytestmark = pytest.mark.station  # every test here starts a station process (tests/tiers.py)

STATE = Path("run") / "supervisor.json"


def read_state(data: Path) -> dict:
    try:
        return json.loads((data / STATE).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def procs(data: Path) -> dict[str, dict]:
    return {p["name"]: p for p in read_state(data).get("processes", [])}


def all_ready(data: Path) -> dict[str, dict]:
    table = procs(data)
    if table and all(p["state"] == "running" and p["ready"] for p in table.values()):
        return table
    return {}


def echo(st: Station) -> bool:
    return dcmtk("echoscu", "-to", "5", "-aec", st.aet, "127.0.0.1", str(st.port), timeout=30).returncode == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (not yet reaped) counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.serial  # bounds on wall-clock seconds: run alone, after the parallel run
def test_kill_9_each_child_comes_back(tmp_path):
    """Every child, the simulator, drivers and panel included (the panel follows the LCD's new pty)."""
    st = Station(tmp_path / "data", supervisor__start_seconds=1)
    st.start("--simulate", "--robots", "epson,primera", "--sim-speed", "0")
    try:
        table = wait_for(lambda: (lambda t: t if len(t) >= 5 else None)(all_ready(st.data)), 90,
                         what="every process running and ready", every=0.1)
        assert {"dicom", "simulator", "panel"} <= set(table)
        for name in sorted(table):
            old = procs(st.data)[name]
            os.kill(old["pid"], signal.SIGKILL)
            t0 = time.monotonic()

            def back(name=name, old=old):
                p = procs(st.data).get(name)
                return p if p and p["pid"] and p["pid"] != old["pid"] and p["ready"] else None

            new = wait_for(back, 30, f"{name} back after kill -9", every=0.1)
            assert new["starts"] == old["starts"] + 1
            assert new["last_exit"] == "killed by SIGKILL"
            if name == "dicom":
                assert wait_for(lambda: echo(st), 30, "echoscu answered", every=0.1)
            print(f"{name}: serving again {time.monotonic() - t0:.1f} s after kill -9")
            assert time.monotonic() - t0 < 15
            wait_for(lambda: all_ready(st.data), 60, "everything running again", every=0.1)
        assert echo(st)
        final = procs(st.data)
        assert all(p["state"] == "running" for p in final.values()), final
    finally:
        st.stop()


def test_crashing_service_is_failed_and_the_rest_works(tmp_path, monkeypatch):
    target = "burner"
    assert target in _available()
    monkeypatch.setenv("BURNSTATION_CRASH_SERVICE", target)
    # start_seconds is generous: on a busy machine even a crash at start can take seconds to happen
    st = Station(tmp_path / "data", supervisor__start_seconds=10, supervisor__start_retries=2)
    with st:
        failed = wait_for(lambda: procs(st.data).get(target, {}).get("state") == "failed", 90,
                          f"{target} marked failed", every=0.1)
        assert failed
        entry = procs(st.data)[target]
        assert entry["starts"] == 3 and entry["pid"] is None and "exit status 3" in entry["message"]
        report = json.loads(burnstation(st.data, "status", "--json").stdout)
        states = {p["name"]: p["state"] for p in report["processes"]}
        assert states[target] == "failed"
        text = burnstation(st.data, "status").stdout
        assert any(line.split()[:2] == [target, "failed"] for line in text.splitlines()), text
        assert states["dicom"] in ("starting", "running")
        wait_for(lambda: procs(st.data)["dicom"]["state"] == "running", 30, "dicom running", every=0.1)
        assert echo(st)
        # it stays failed: no more attempts, past the moment a retry would have come (the backoff
        # before a fourth start would be 3 s), seen in the state the supervisor keeps rewriting
        since = read_state(st.data)["updated_at"]
        wait_for(lambda: read_state(st.data).get("updated_at", 0) > since + 3.5, 30, "supervisor 3.5 s further",
                 every=0.2)
        assert procs(st.data)[target]["starts"] == 3 and procs(st.data)[target]["state"] == "failed"


def _available() -> list[str]:
    from appliance.services.plan import SERVICES

    return list(SERVICES)


@pytest.mark.serial  # bounds on wall-clock seconds: run alone, after the parallel run
def test_sigterm_stops_everything_within_10s_and_keeps_instances(tmp_path):
    st = Station(tmp_path / "data", supervisor__start_seconds=1)
    files = write_study(tmp_path / "in", n_series=2, per_series=5)
    with st:
        wait_for(lambda: all_ready(st.data), what="every process running", every=0.1)
        sent = dcmtk("storescu", "-aec", st.aet, "127.0.0.1", str(st.port), *map(str, files), timeout=120)
        assert sent.returncode == 0, sent.stderr
        pids = [p["pid"] for p in procs(st.data).values()] + [st.proc.pid]
        # SIGTERM to the supervisor alone: it must stop its children itself, in order
        t0 = time.monotonic()
        st.proc.send_signal(signal.SIGTERM)
        st.proc.wait(15)
        wait_for(lambda: not any(pid_alive(p) for p in pids), 10, "every process gone", every=0.1)
        elapsed = time.monotonic() - t0
        assert elapsed < 10, elapsed
        assert st.proc.returncode == 0
        st.proc = None
    final = read_state(st.data)
    assert final["state"] == "stopped"
    assert all(p["state"] == "stopped" for p in final["processes"])
    log = st.log()
    order = [line.split(" INFO ")[1].split(":")[0] for line in log.splitlines() if "-> stopping" in line]
    started = [line.split(" INFO ")[1].split(":")[0] for line in log.splitlines() if "stopped -> starting" in line]
    assert order == list(reversed(started)), (order, started)
    stored = list((st.data / "storage").rglob("*.dcm"))
    assert len(stored) == len(files)


@pytest.mark.serial  # bounds on wall-clock seconds: run alone, after the parallel run
def test_sigterm_during_a_transfer_loses_no_acknowledged_instance(tmp_path):
    """Every instance the sender got a success for is on disk and in the index after SIGTERM."""
    import sqlite3
    import subprocess

    from support import DCMTK

    st = Station(tmp_path / "data", supervisor__start_seconds=1)
    # enough files that the transfer outlasts the orderly stop of the other processes
    files = write_study(tmp_path / "in", n_series=3, per_series=600, rows=16, cols=16)
    with st:
        wait_for(lambda: all_ready(st.data), what="every process running", every=0.1)
        env = dict(os.environ, TCP_NODELAY="1")
        sender = subprocess.Popen([str(DCMTK / "storescu"), "-v", "-aec", st.aet, "127.0.0.1", str(st.port),
                                   *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, env=env)
        storage = st.data / "storage"
        wait_for(lambda: len(list(storage.rglob("*.dcm"))) >= 5, 60, "the transfer under way", every=0.1)
        pids = [p["pid"] for p in procs(st.data).values()] + [st.proc.pid]
        t0 = time.monotonic()
        st.proc.send_signal(signal.SIGTERM)
        out, _ = sender.communicate(timeout=60)
        st.proc.wait(15)
        wait_for(lambda: not any(pid_alive(p) for p in pids), 10, "every process gone", every=0.1)
        assert time.monotonic() - t0 < 10
        st.proc = None
    acked = out.count("Received Store Response (Success)")
    assert acked >= 5, out[-2000:]
    stored = list((st.data / "storage").rglob("*.dcm"))
    with sqlite3.connect(st.data / "state.db") as conn:
        indexed = conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
    print(f"{acked} of {len(files)} acknowledged before the stop; {len(stored)} files, {indexed} indexed")
    assert len(stored) >= acked and indexed >= acked
    # the dicom process finishes or aborts its associations and exits by itself: no SIGKILL
    assert "did not stop within" not in st.log(), st.log()[-3000:]
    # an instance cut off mid-write (never acknowledged) may leave a temp file; the next start removes it
    with st:
        wait_for(lambda: not list((st.data / "storage").rglob("*.tmp")), 30, "temp files cleaned at start", every=0.1)
        assert len(list((st.data / "storage").rglob("*.dcm"))) == len(stored)
