"""`burnstation status`: the station's ports (listening on which address, by which process), the
processes, robots, queue, disk and TLS certificate — checked against a running station."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from support import Station, burnstation, free_port, wait_for

from appliance.diagnostics import listening_sockets, socket_owners


def report(data: Path) -> dict:
    return json.loads(burnstation(data, "status", "--json").stdout)


def ports(rep: dict) -> dict[str, dict]:
    return {row["name"]: row for row in rep["ports"]}


def test_proc_net_tcp_parsing(tmp_path):
    net = tmp_path / "net"
    net.mkdir()
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    (net / "tcp").write_text(header +
        "   0: 0100007F:2B67 00000000:0000 0A 00000000:00000000 00:00000000 00000000  0 0 4242 1 0 100 0 0 10 0\n"
        "   1: 00000000:0068 00000000:0000 0A 00000000:00000000 00:00000000 00000000  0 0 4343 1 0 100 0 0 10 0\n"
        "   2: 0100007F:2B67 0100007F:D431 01 00000000:00000000 00:00000000 00000000  0 0 4444 1 0 100 0 0 10 0\n")
    (net / "tcp6").write_text(header +
        "   0: 00000000000000000000000001000000:0ACA 00000000000000000000000000000000:0000 0A "
        "00000000:00000000 00:00000000 00000000  0 0 4545 1 0 100 0 0 10 0\n")
    found = {(s["address"], s["port"], s["inode"]) for s in listening_sockets(str(tmp_path))}
    assert found == {("127.0.0.1", 11111, 4242), ("0.0.0.0", 104, 4343), ("::1", 2762, 4545)}


def test_socket_owner_is_found_for_our_own_listener():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        mine = [s for s in listening_sockets() if s["port"] == port]
        assert len(mine) == 1 and mine[0]["address"] == "127.0.0.1"
        import os

        assert socket_owners({mine[0]["inode"]}) == {mine[0]["inode"]: os.getpid()}


@pytest.mark.station
def test_status_lists_open_ports_and_only_those(tmp_path):
    st = Station(tmp_path / "data", http__port=0, supervisor__start_seconds=1)
    # nothing runs yet: configured ports are reported as not listening, the supervisor as down
    rep = report(st.data)
    assert rep["supervisor"]["running"] is False and rep["processes"] == []
    assert ports(rep)["DICOM"]["state"] == "NOT LISTENING"
    with st:
        hl7_exists = None

        def listening():
            nonlocal hl7_exists
            r = report(st.data)
            hl7_exists = any(p["name"] == "hl7" for p in r["processes"])
            wanted = ["DICOM", "DICOM TLS"] + (["HL7"] if hl7_exists else [])
            workers = {p["name"] for p in r["processes"] if p["name"].split(":")[0] == "dicom"}
            every_worker = all({ln["process"] for ln in ports(r)[n]["listeners"]} == workers
                               for n in ("DICOM", "DICOM TLS"))  # a second worker may still be starting
            return r if every_worker and all(ports(r)[n]["state"] == "listening" for n in wanted) else None

        rep = wait_for(listening, what="the DICOM (and HL7) listeners")
        table = ports(rep)
        pids = {p["name"]: p["pid"] for p in rep["processes"]}
        for name, port, owner in (("DICOM", st.port, "dicom"), ("DICOM TLS", st.tls_port, "dicom"),
                                  ("HL7", st.hl7_port, "hl7")):
            row = table[name]
            if owner not in pids:
                assert row["state"] == "NOT LISTENING"
                continue
            assert row["port"] == port and row["state"] == "listening"
            # the dicom workers (`dicom`, `dicom:2`, ...) share the DICOM ports, each listed
            workers = {n for n in pids if n.split(":")[0] == owner}
            assert {ln["process"] for ln in row["listeners"]} == workers
            assert {ln["pid"] for ln in row["listeners"]} == {pids[n] for n in workers}
        assert table["HTTP"] == {"name": "HTTP", "key": "http.port", "port": 0, "state": "closed", "listeners": []}
        assert rep["other_listening_ports"] == []  # station processes hold no other port
        assert rep["supervisor"]["running"] is True
        assert all(p["state"] in ("running", "starting") for p in rep["processes"])
        assert rep["disk"]["free_mb"] > 0 and rep["disk"]["min_free_mb"] == 0
        assert rep["tls_certificate"]["days_left"] > 3000 and not rep["tls_certificate"]["expired"]
        assert rep["discovery"]["backend"] == "udev"
        text = burnstation(st.data, "status").stdout
        lines = {line.split()[0] + (" " + line.split()[1] if line.split()[1] == "TLS" else ""): line
                 for line in text.splitlines() if line.startswith("  DICOM") or line.startswith("  HL7")
                 or line.startswith("  HTTP")}
        assert str(st.port) in lines["DICOM"] and "listening" in lines["DICOM"] and "(dicom, pid" in lines["DICOM"]
        assert str(st.tls_port) in lines["DICOM TLS"] and "listening" in lines["DICOM TLS"]
        assert "closed" in lines["HTTP"]
        if hl7_exists:
            assert "(hl7, pid" in lines["HL7"]
        assert "Supervisor: running" in text and "TLS certificate: expires" in text and "Disk:" in text

        # close the TLS port while running: the dicom process lets go of it and status follows
        burnstation(st.data, "config", "set", "dicom.tls_port=0")
        rep = wait_for(lambda: (lambda r: r if ports(r)["DICOM TLS"]["state"] == "closed" else None)(
            report(st.data)), what="TLS closed")
        # the dicom process rebinds within a second or so; until then status shows the old port as "other"
        wait_for(lambda: not any(s["port"] == st.tls_port for s in listening_sockets()), 30, "TLS socket gone")
        rep = report(st.data)
        assert rep["other_listening_ports"] == [] and ports(rep)["DICOM"]["state"] == "listening"
        if hl7_exists:
            # HL7 closed and opened on another port while running: the hl7 process follows
            burnstation(st.data, "config", "set", "hl7.port=0")
            wait_for(lambda: not any(s["port"] == st.hl7_port for s in listening_sockets()), 30, "HL7 closed")
            assert ports(report(st.data))["HL7"]["state"] == "closed"
            new_port = free_port()
            burnstation(st.data, "config", "set", f"hl7.port={new_port}")
            rep = wait_for(lambda: (lambda r: r if ports(r)["HL7"]["state"] == "listening" else None)(
                report(st.data)), 30, "HL7 on its new port")
            assert ports(rep)["HL7"]["port"] == new_port
            assert {ln["process"] for ln in ports(rep)["HL7"]["listeners"]} == {"hl7"}
            assert rep["other_listening_ports"] == []
    rep = report(st.data)
    assert rep["supervisor"]["running"] is False and rep["supervisor"]["state"] == "stopped"
