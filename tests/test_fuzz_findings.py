"""Regression tests for what the fuzzers (tests/fuzz/, `make fuzz`) found; each failed before its fix.

The reproducers themselves are in tests/fuzz/crashes/ and replayed by tests/test_fuzz_smoke.py;
here each finding is pinned by name, on the smallest input that shows it.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from support import Station

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))
import blackbox  # noqa: E402

from appliance.dicom import pnd_tuning  # noqa: E402
from appliance.hl7 import message as hl7msg  # noqa: E402
from appliance.hl7.mllp import MLLPServer, read_frame  # noqa: E402

CRASHES = Path(__file__).resolve().parent / "fuzz" / "crashes"


class _Sock:
    """What _socket_recv reads from: a real socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock


def test_claimed_pdu_length_is_not_allocated():
    """A PDU header claiming 4 GiB with 64 bytes behind it: the read allocates about what arrived
    (it allocated the claimed length up front: 4 GiB for a 70-byte message)."""
    a, b = socket.socketpair()
    try:
        a.sendall(b"\x07" * 64)
        a.shutdown(socket.SHUT_WR)
        tracemalloc.start()
        try:
            got = pnd_tuning._socket_recv(_Sock(b), 0xFFFFFFFF)  # type: ignore[arg-type]
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        a.close()
        b.close()
    assert bytes(got) == b"\x07" * 64
    assert peak < 4 << 20, f"{peak} bytes allocated for 64 received"


def test_socket_recv_still_reads_a_large_pdu_whole():
    """The growing buffer still returns exactly the bytes asked for, across many reads."""
    a, b = socket.socketpair()
    payload = bytes(range(256)) * (3 * 4096 + 7)  # ~3 MB: several doublings
    sender = threading.Thread(target=a.sendall, args=(payload,))
    sender.start()
    try:
        got = pnd_tuning._socket_recv(_Sock(b), len(payload))  # type: ignore[arg-type]
    finally:
        sender.join()
        a.close()
        b.close()
    assert bytes(got) == payload


def test_unconvertible_pdu_is_aborted():
    """An A-ASSOCIATE-RQ that decodes but whose primitive the library refuses (presentation context
    ID 0) is taken out before the state machine (whose failure ended the DUL without a word)."""
    import queue

    from pynetdicom.pdu import A_ASSOCIATE_RQ

    class Dul:
        def __init__(self, raw: bytes) -> None:
            pdu = A_ASSOCIATE_RQ()
            pdu.decode(raw)
            self._recv_pdu: queue.Queue = queue.Queue()
            self._recv_pdu.put(pdu)

    ac = blackbox.item(0x10, b"1.2.840.10008.3.1.1.1")
    bad = Dul(blackbox.associate_rq(items=[ac, blackbox.presentation_context(0, blackbox.VERIFICATION,
                                                                             [blackbox.IMPLICIT]),
                                           blackbox.user_information()]))
    assert pnd_tuning._unconvertible(bad)  # type: ignore[arg-type]
    assert bad._recv_pdu.empty()
    good = Dul(blackbox.associate_rq())
    assert not pnd_tuning._unconvertible(good)  # type: ignore[arg-type]
    assert good._recv_pdu.qsize() == 1


def test_blank_segment_is_no_internal_error():
    """A blank line between segments raised IndexError in the hl7 library (answered "AE internal
    error", which a RIS retries); now the blank segment is skipped and the order read."""
    text = ("MSH|^~\\&|RIS|H|BS|H|20240101||ORM^O01|C1|P|2.3.1\r\r"
            "PID|||P1^^^H||DOE^J\r\rORC|NW|PL1|||SC\rOBR|1|PL1||CT^Chest|||||||||||||||ACC1\r\r")
    decoded = hl7msg.decode(text.encode(), "ISO_IR 100")
    assert decoded.control_id == "C1" and [str(s[0]) for s in decoded.message] == ["MSH", "PID", "ORC", "OBR"]
    with pytest.raises(hl7msg.HL7Error) as err:  # the fuzzer's input: garbage after blank lines
        hl7msg.decode((CRASHES / "hl7" / "crash-e6f6a47861ab3bda849c65a2b9dcb302b6dc0506").read_bytes()[1:],
                      "ISO_IR 100")
    assert err.value.code == "AR"


def test_end_block_without_cr_is_answered_at_once():
    """A sender that ends its frame with the end block alone and waits for the ACK gets it at once (the
    listener waited 30 s for the CR, then answered AR "truncated"); a CR sent later is skipped."""
    got: list[tuple[bytes, bool]] = []

    def on_frame(payload: bytes, truncated: bool, _peer: str) -> bytes:
        got.append((payload, truncated))
        return b"MSA|AA"

    server = MLLPServer(("127.0.0.1", 0), on_frame)
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"\x0bMSH|^~\\&|A\x1c")
            assert read_frame(sock, 2) == b"MSA|AA"
            sock.sendall(b"\r\x0bMSH|^~\\&|B\x1c\r")
            assert read_frame(sock, 2) == b"MSA|AA"
    finally:
        server.stop()
    assert got == [(b"MSH|^~\\&|A", False), (b"MSH|^~\\&|B", False)]


def test_end_block_then_close_is_a_frame():
    """A frame whose end block is the last byte before the peer closes (no CR) is complete; it was
    answered as a truncated frame."""
    got: list[tuple[bytes, bool]] = []

    def on_frame(payload: bytes, truncated: bool, _peer: str) -> bytes:
        got.append((payload, truncated))
        return b"MSA|AA"

    server = MLLPServer(("127.0.0.1", 0), on_frame)
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"\x0bMSH|^~\\&|X\x1c")
            sock.shutdown(socket.SHUT_WR)
            assert read_frame(sock, 10) == b"MSA|AA"
    finally:
        server.stop()
    assert got == [(b"MSH|^~\\&|X", False)]


def test_unparseable_cookie_is_ignored(tmp_path):
    """A Cookie header with one pair Python's parser refuses (another service on the same host may set
    such a cookie) made every page a 500; now that pair is ignored and the session cookie still read."""
    import io

    from appliance import accounts, cli, db
    from webui.app import make_app, readable_cookies

    assert readable_cookies("a(b=1; bsid=abc; =k=v; a=b") == " bsid=abc; a=b"
    data = tmp_path / "data"
    cli.main(["--data", str(data), "init"])
    conn = db.connect(data)
    accounts.add_user(conn, "ann", "admin", "long-enough-pw")
    sid, _csrf = accounts.new_session(conn, "ann", "127.0.0.1", 600)
    conn.close()
    app = make_app(data)
    statuses: list[str] = []
    for cookie in (f"a(b=1; bsid={sid}", f"bsid={sid}; a,b=c", f"bsid={sid}; =k=v"):
        statuses.clear()
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/jobs", "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
                   "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
                   "HTTP_HOST": "127.0.0.1", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(),
                   "wsgi.errors": io.StringIO(), "HTTP_COOKIE": cookie}
        body = b"".join(app(environ, lambda status, headers, *_: statuses.append(status)))
        assert statuses[0].startswith("200"), (cookie, statuses, body[:300])
        assert b"ann" in body


@pytest.mark.station
def test_dicom_findings_answered_at_once(tmp_path):
    """On a live station, each DICOM reproducer gets a protocol answer at once (an A-ASSOCIATE-RJ or an
    A-ABORT, where the station stayed silent until its 30 s time-out), memory does not jump, and the
    next C-ECHO works."""
    with Station(tmp_path / "data") as station:
        live = blackbox.Live(station)
        for path in sorted(CRASHES.glob("dicom-*/*.json")):
            exchange = blackbox.Exchange.from_json(json.loads(path.read_text())["exchange"])
            live._rss_base = live.peak_rss = live.rss_mb()
            start = time.monotonic()
            replies = live.run(exchange)
            took = time.monotonic() - start
            assert took < 5, f"{path.name}: {took:.1f} s"
            live.check_answers(exchange, replies)
            if path.parent.name == "dicom-associate":
                assert replies and replies[-1][0] in (3, 7), (path.name, [r[:1].hex() for r in replies])
            live.check_station("dicom")  # up, no memory jump, a C-ECHO, storage consistent
