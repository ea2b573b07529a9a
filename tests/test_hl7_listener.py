"""The MLLP listener against bad input, many senders, and its settings (port 0, ACK off, MSH-3/4).

Every case talks to a real `burnstation run` process over a TCP socket (or with `mllp_send`,
the hl7 package's command line client) and checks that the listener keeps serving afterwards.
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
from support import BIN, Station, burnstation, free_port, port_open, wait_for, wait_port
from worklist_support import (
    EB,
    SB,
    Replies,
    exchange,
    frame,
    msa,
    msh,
    order,
    read_reply,
    send_order,
    worklist,
)

pytestmark = pytest.mark.station  # every test here starts a station process (tests/tiers.py)

CR = b"\r"


@pytest.fixture(scope="module")
def station(tmp_path_factory):
    st = Station(tmp_path_factory.mktemp("hl7") / "data", hl7__sending_application="BS_APP",
                 hl7__sending_facility="BS_FAC")
    st.start()
    wait_port(st.hl7_port)
    yield st
    st.stop()


def still_serving(st: Station, tag: str) -> None:
    assert send_order(st.hl7_port, order(placer=f"ALIVE-{tag}", control_id=f"ALIVE-{tag}")) == "AA"


def count_items(st: Station, placer_prefix: str) -> int:
    conn = sqlite3.connect(st.data / "state.db")
    try:
        return conn.execute("SELECT COUNT(*) FROM worklist_items WHERE placer LIKE ?",
                            (placer_prefix + "%",)).fetchone()[0]
    finally:
        conn.close()


def test_ack_fields(station):
    reply = exchange(station.hl7_port, order(placer="ACK1", control_id="CTRL-4711").encode())
    assert msa(reply)[:2] == ["AA", "CTRL-4711"]
    header = msh(reply)
    assert (header[3], header[4]) == ("BS_APP", "BS_FAC")  # MSH-3 / MSH-4 from the settings
    assert (header[5], header[6]) == ("RIS", "HOSP")  # the sender becomes the receiver
    assert header[9].startswith("ACK^O01")
    assert header[10] and header[10] != "CTRL-4711"  # the ACK has its own control id


def test_mllp_send_tool(station, tmp_path):
    """The hl7 package's own client, `mllp_send`, gets an AA per message."""
    messages = tmp_path / "orders.hl7"
    messages.write_bytes(b"".join(frame(order(placer=f"TOOL{i}", control_id=f"TOOL{i}").encode())
                                  for i in range(3)))
    proc = subprocess.run([str(BIN / "mllp_send"), "-p", str(station.hl7_port), "-f", str(messages), "127.0.0.1"],
                          capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    acks = [line for line in proc.stdout.split(b"\n") if b"MSA|" in line or b"MSA" in line]
    assert proc.stdout.count(b"MSA|AA|TOOL") == 3, proc.stdout
    assert acks
    assert count_items(station, "TOOL") == 3


def test_garbage_in_a_frame_is_rejected(station):
    reply = exchange(station.hl7_port, b"\x00\xff\xfe garbage \x01\x02 not hl7")
    fields = msa(reply)
    assert fields[0] == "AR" and fields[1] == ""
    still_serving(station, "garbage")


def test_message_without_msh_is_rejected(station):
    text = order(placer="NOMSH").split("\r", 1)[1]  # everything after MSH
    reply = exchange(station.hl7_port, text.encode())
    assert msa(reply)[0] == "AR"
    assert "MSH" in msa(reply)[2]
    assert count_items(station, "NOMSH") == 0
    still_serving(station, "nomsh")


def test_wrong_message_type_is_rejected(station):
    text = order(placer="ADT1", control_id="ADT-1", msg_type="ADT^A01")
    fields = msa(exchange(station.hl7_port, text.encode()))
    assert fields[:2] == ["AR", "ADT-1"]
    assert "unsupported message type" in fields[2]
    assert count_items(station, "ADT1") == 0
    still_serving(station, "type")


def test_unsupported_version_and_order_control(station):
    assert msa(exchange(station.hl7_port, order(placer="V26", version="2.6", control_id="V26").encode()))[0] == "AR"
    fields = msa(exchange(station.hl7_port, order("RP", placer="RP1", control_id="RP1").encode()))
    assert fields[0] == "AE" and "ORC-1" in fields[2]
    fields = msa(exchange(station.hl7_port, order(placer="NOPID", patient_id="", control_id="NOPID").encode()))
    assert fields[0] == "AE" and "PID-3" in fields[2]
    still_serving(station, "version")


def test_truncated_frame_then_good_frame_on_same_connection(station):
    """A frame cut short by a new start block is answered AR; the next frame is processed."""
    good = order(placer="AFTERCUT", control_id="GOOD-1").encode()
    cut = order(placer="CUT", control_id="CUT-1").encode()[:120]
    with socket.create_connection(("127.0.0.1", station.hl7_port), timeout=10) as sock:
        sock.sendall(SB + cut + frame(good))
        replies = Replies(sock)
        first, second = replies.next(), replies.next()
    assert msa(first)[0] == "AR" and "truncated" in msa(first)[2]
    assert msa(first)[1] == "CUT-1"  # MSH-10 was still readable
    assert msa(second)[:2] == ["AA", "GOOD-1"]
    assert count_items(station, "CUT") == 0
    assert count_items(station, "AFTERCUT") == 1


def test_truncated_frame_at_end_of_stream(station):
    """The sender closes its side in the middle of a frame: AR, nothing stored."""
    cut = order(placer="HALF", control_id="HALF-1").encode()
    with socket.create_connection(("127.0.0.1", station.hl7_port), timeout=10) as sock:
        sock.sendall(SB + cut)  # no end block
        sock.shutdown(socket.SHUT_WR)
        reply = read_reply(sock)
    assert reply is not None and msa(reply)[:2] == ["AR", "HALF-1"]
    assert count_items(station, "HALF") == 0
    still_serving(station, "half")


def test_unframed_bytes_close_the_connection(station):
    with socket.create_connection(("127.0.0.1", station.hl7_port), timeout=10) as sock:
        sock.sendall(order(placer="RAW", control_id="RAW-1").encode())  # no MLLP start block
        sock.settimeout(10)
        assert sock.recv(1024) == b""  # closed, no reply
    assert count_items(station, "RAW") == 0
    still_serving(station, "unframed")


def test_frames_split_across_packets_and_pipelined(station):
    """Frames arrive byte by byte, or several in one packet: each gets its ACK, in order."""
    with socket.create_connection(("127.0.0.1", station.hl7_port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = Replies(sock)
        data = frame(order(placer="SPLIT1", control_id="SPLIT-1").encode())
        for i in range(0, len(data), 7):
            sock.sendall(data[i:i + 7])
            time.sleep(0.001)
        assert msa(reader.next())[:2] == ["AA", "SPLIT-1"]
        sock.sendall(b"".join(frame(order(placer=f"PIPE{i}", control_id=f"PIPE-{i}").encode()) for i in range(5)))
        replies = [msa(reader.next())[1] for _ in range(5)]
    assert replies == [f"PIPE-{i}" for i in range(5)]


def test_twenty_senders_at_once_lose_nothing(station, tmp_path):
    errors: list[str] = []
    per_sender = 10

    def sender(n: int) -> None:
        try:
            with socket.create_connection(("127.0.0.1", station.hl7_port), timeout=30) as sock:
                for i in range(per_sender):
                    text = order(placer=f"CONC-{n:02d}-{i:02d}", accession=f"C{n:02d}{i:02d}",
                                 station="CONC", control_id=f"C-{n}-{i}")
                    sock.sendall(frame(text.encode()))
                    fields = msa(read_reply(sock, 30))
                    if fields[:2] != ["AA", f"C-{n}-{i}"]:
                        errors.append(f"{n}/{i}: {fields}")
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(f"sender {n}: {exc!r}")

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert count_items(station, "CONC-") == 20 * per_sender
    found = worklist(station.port, ["AccessionNumber", "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=CONC"],
                     tmp_path / "q")
    assert len({ds.AccessionNumber for ds in found}) == 20 * per_sender


def test_port_zero_means_no_listener(tmp_path):
    st = Station(tmp_path / "data", hl7__port=0)
    port = free_port()
    st.start()
    try:
        wait_for(lambda: "HL7 port is 0: no listener" in st.log(), timeout=20.0)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", st.hl7_port), timeout=2).close()
        # the worklist still answers (fed by .wl files), and opening the port later works live
        burnstation(st.data, "config", "set", f"hl7.port={port}")
        wait_port(port, timeout=20)
        assert send_order(port, order(placer="LIVE1", control_id="LIVE1")) == "AA"
        burnstation(st.data, "config", "set", "hl7.port=0")
        wait_for(lambda: not port_open(port), timeout=20.0)
    finally:
        st.stop()


def test_send_ack_off_sends_nothing_but_stores(tmp_path):
    st = Station(tmp_path / "data", hl7__send_ack="false")
    st.start()
    try:
        wait_port(st.hl7_port)
        with socket.create_connection(("127.0.0.1", st.hl7_port), timeout=10) as sock:
            sock.sendall(frame(order(placer="NOACK", control_id="NOACK").encode()))
            sock.sendall(frame(b"garbage"))
            wait_for(lambda: count_items(st, "NOACK") == 1, timeout=20.0)
            sock.settimeout(2)
            with pytest.raises(socket.timeout):
                sock.recv(1024)
        burnstation(st.data, "config", "set", "hl7.send_ack=true")
        assert send_order(st.hl7_port, order(placer="ACKAGAIN", control_id="ACKAGAIN")) == "AA"
    finally:
        st.stop()


def test_messages_logged_only_when_enabled(tmp_path):
    st = Station(tmp_path / "data")
    st.start()
    try:
        wait_port(st.hl7_port)
        assert send_order(st.hl7_port, order(placer="LOGQUIET", name="QUIET^PATIENT", control_id="Q1")) == "AA"
        worklist(st.port, ["PatientName=QUIET*"], tmp_path / "a")
        burnstation(st.data, "config", "set", "hl7.log_messages=true")
        assert send_order(st.hl7_port, order(placer="LOGLOUD", name="LOUD^PATIENT", control_id="L1")) == "AA"
        worklist(st.port, ["PatientName=LOUD*"], tmp_path / "b")
        wait_for(lambda: "worklist C-FIND from SCANNER" in st.log(), timeout=20.0)
        log = st.log()
        assert "LOUD^PATIENT" in log  # the HL7 message itself
        assert "QUIET^PATIENT" not in log
        assert "PatientName=QUIET*" not in log
        # worklist-only associations are kept out of the association log while logging is off
        conn = sqlite3.connect(st.data / "state.db")
        services = [r[0] for r in conn.execute("SELECT services FROM associations")]
        conn.close()
        assert sum("worklist" in s for s in services) == 1
    finally:
        st.stop()


def test_bytes_outside_frames_between_messages_are_tolerated(station):
    """Line breaks between frames (some senders add them) are not an error."""
    with socket.create_connection(("127.0.0.1", station.hl7_port), timeout=10) as sock:
        sock.sendall(frame(order(placer="NL1", control_id="NL-1").encode()) + b"\r\n")
        assert msa(read_reply(sock))[:2] == ["AA", "NL-1"]
        sock.sendall(b"\n" + frame(order(placer="NL2", control_id="NL-2").encode()))
        assert msa(read_reply(sock))[:2] == ["AA", "NL-2"]
    assert EB and CR  # the framing constants used above


def test_tick_paths_exist(station, tmp_path: Path):
    """state.db has the worklist tables and the outbox once the service ran."""
    conn = sqlite3.connect(station.data / "state.db")
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert {"worklist_items", "worklist_meta", "hl7_outbox"} <= names
