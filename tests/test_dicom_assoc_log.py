"""The association log tells a completed release from an abort and from a dropped connection.

The burn pipeline relies on it: only a released `_E`/`_P` association becomes a disc job. pynetdicom
fires its connection-closed event before its released/aborted events in a race, so this is
checked over many associations.
"""

from __future__ import annotations

import socket
import sqlite3

from support import dcmtk, make_dataset, wait_for


def _results(data, first_id: int) -> dict[int, str]:
    conn = sqlite3.connect(data / "state.db")
    try:
        return {r[0]: r[1] for r in conn.execute(
            "SELECT id, result FROM associations WHERE id > ? AND calling_aet LIKE 'LOGTEST%'", (first_id,))}
    finally:
        conn.close()


def _wait_closed(data, first_id: int, count: int, timeout: float = 30) -> dict[int, str]:
    def closed() -> dict[int, str] | None:
        rows = _results(data, first_id)
        return rows if len(rows) >= count and "open" not in rows.values() else None

    return wait_for(closed, timeout, f"{count} associations closed", every=0.1)


def test_release_abort_and_drop_are_told_apart(station, tmp_path):
    path = tmp_path / "one.dcm"
    make_dataset(patient_id="LOG1").save_as(path, enforce_file_format=True)
    released, aborted = 12, 4
    for i in range(released):
        result = dcmtk("storescu", "-aet", f"LOGTEST{i}", "-aec", "BURNSTATION", "127.0.0.1",
                       str(station.port), str(path))
        assert result.returncode == 0, result.stderr
    for i in range(aborted):
        dcmtk("storescu", "--abort", "-aet", f"LOGTESTA{i}", "-aec", "BURNSTATION", "127.0.0.1",
              str(station.port), str(path))
    # a peer that opens a connection, starts an association request and drops the socket
    with socket.create_connection(("127.0.0.1", station.port)) as sock:
        sock.sendall(b"\x01\x00\x00\x00\x00\x10")  # A-ASSOCIATE-RQ header only, then gone
    rows = _wait_closed(station.data, 0, released + aborted)
    conn = sqlite3.connect(station.data / "state.db")
    by_caller = dict(conn.execute("SELECT calling_aet, result FROM associations WHERE calling_aet LIKE 'LOGTEST%'"))
    conn.close()
    assert len(rows) == released + aborted
    for i in range(released):
        assert by_caller[f"LOGTEST{i}"] == "released", by_caller
    for i in range(aborted):
        assert by_caller[f"LOGTESTA{i}"] == "aborted", by_caller
    assert dcmtk("echoscu", "-aec", "BURNSTATION", "127.0.0.1", str(station.port)).returncode == 0
