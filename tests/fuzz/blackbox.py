"""Hypothesis-driven black-box clients against a live station's ports (DICOM, HL7 over MLLP, HTTP).

Each example is an `Exchange`: bytes sent on one TCP connection, with waits for the station's
answer in between, then the property is checked:
- the answer is one the protocol defines (DICOM: A-ASSOCIATE-AC/RJ, P-DATA, A-RELEASE-RP, A-ABORT or
  a closed connection; HL7: an ACK with MSA-1 AA/AE/AR that is not an "internal error"; HTTP: a
  status line below 500), within `ANSWER_TIMEOUT` seconds (no hang);
- the station is up and answers the next well-formed request (C-ECHO, an ORM^O01 ACKed AA, an HTTP
  200), and its processes' memory did not jump (a header's length must not be allocated up front);
- nothing half-made: no temp file left in storage, every index row has its file, every stored
  file has its row.

A failing example is shrunk by Hypothesis and kept in tests/fuzz/crashes/<target>/ as JSON (the
exchange in hex, the reason), replayed by tests/test_fuzz_smoke.py. `tests/fuzz/run.py` runs
each target for a time budget; tests/test_fuzz_smoke.py runs a few examples of each.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sqlite3
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

HERE = Path(__file__).resolve().parent
ANSWER_TIMEOUT = 10.0
RSS_JUMP_MB = 256  # more than this on one example: the station allocated what a header claimed

VERIFICATION = b"1.2.840.10008.1.1"
CT = b"1.2.840.10008.5.1.4.1.1.2"
IMPLICIT = b"1.2.840.10008.1.2"
EXPLICIT = b"1.2.840.10008.1.2.1"


class PropertyFailed(AssertionError):
    """The station broke a property on an example."""


@dataclass
class Exchange:
    """What one example sends: steps of ("send", bytes) or ("wait", n) (read n PDUs/frames/replies),
    then optionally a half-close (the station sees the end of the stream)."""

    port: str  # "dicom", "hl7" or "http"
    steps: list[tuple[str, Any]] = field(default_factory=list)
    half_close: bool = True
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"port": self.port, "half_close": self.half_close, "note": self.note,
                "steps": [[kind, value.hex() if isinstance(value, bytes) else value] for kind, value in self.steps]}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Exchange:
        steps = [(kind, bytes.fromhex(value) if kind == "send" else value) for kind, value in doc["steps"]]
        return cls(doc["port"], steps, doc["half_close"], doc.get("note", ""))


# --------------------------------------------------------------------------- DICOM upper layer bytes


def item(kind: int, body: bytes, length: int | None = None) -> bytes:
    return struct.pack(">BBH", kind, 0, (len(body) if length is None else length) & 0xFFFF) + body


def pdu(kind: int, body: bytes, length: int | None = None) -> bytes:
    return struct.pack(">BBL", kind, 0, (len(body) if length is None else length) & 0xFFFFFFFF) + body


def presentation_context(context_id: int, abstract: bytes, syntaxes: list[bytes]) -> bytes:
    return item(0x20, bytes([context_id & 0xFF, 0, 0, 0]) + item(0x30, abstract)
                + b"".join(item(0x40, ts) for ts in syntaxes))


def user_information(max_length: int = 16384, extra: bytes = b"") -> bytes:
    return item(0x50, item(0x51, struct.pack(">L", max_length & 0xFFFFFFFF)) + item(0x52, b"1.2.826.0.1.3680043.9.7") + extra)


def associate_rq(called: bytes = b"BURNSTATION", calling: bytes = b"FUZZ", items: list[bytes] | None = None,
                 length: int | None = None) -> bytes:
    if items is None:
        items = [item(0x10, b"1.2.840.10008.3.1.1.1"), presentation_context(1, VERIFICATION, [IMPLICIT]),
                 presentation_context(3, CT, [EXPLICIT, IMPLICIT]), user_information()]
    body = struct.pack(">HH", 1, 0) + called.ljust(16)[:16] + calling.ljust(16)[:16] + bytes(32) + b"".join(items)
    return pdu(0x01, body, length)


def pdv(context_id: int, header: int, data: bytes) -> bytes:
    return struct.pack(">LBB", len(data) + 2, context_id, header) + data


def p_data(*pdvs: bytes) -> bytes:
    return pdu(0x04, b"".join(pdvs))


def _element(elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, elem, len(value)) + value


def command_set(elements: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(_element(e, v) for e, v in elements)
    return _element(0x0000, struct.pack("<I", len(body))) + body


def echo_rq(message_id: int = 1) -> bytes:
    return command_set([(0x0002, VERIFICATION + b"\x00"), (0x0100, b"\x30\x00"),
                        (0x0110, struct.pack("<H", message_id & 0xFFFF)), (0x0800, b"\x01\x01")])


def store_rq(sop_uid: bytes, message_id: int = 1) -> bytes:
    uid = sop_uid + (b"\x00" if len(sop_uid) % 2 else b"")
    return command_set([(0x0002, CT + b"\x00"), (0x0100, b"\x01\x00"), (0x0110, struct.pack("<H", message_id & 0xFFFF)),
                        (0x0700, b"\x00\x00"), (0x0800, b"\x00\x00"), (0x1000, uid)])


RELEASE_RQ = pdu(0x05, bytes(4))


def dataset_bytes(sop_uid: str) -> bytes:
    """A small CT image, explicit VR little endian, as a C-STORE data set."""
    import sys

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    sys.path.insert(0, str(HERE.parent))
    from support import make_dataset

    ds = make_dataset(rows=4, cols=4, sop_uid=sop_uid, patient_id="FUZZ", patient_name="FUZZ^BLACKBOX",
                      study_uid="1.2.826.0.1.3680043.9.7.1", series_uid="1.2.826.0.1.3680043.9.7.2")  # same length each time
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


# --------------------------------------------------------------------------- strategies

_ae = st.binary(min_size=0, max_size=18).map(lambda b: b.replace(b"\x00", b" "))


@st.composite
def associate_variants(draw: st.DrawFn) -> Exchange:
    """A-ASSOCIATE-RQ with odd and lying item lengths, unknown items, up to 128 presentation contexts,
    huge user-identity items, odd AE titles and maximum lengths."""
    n_contexts = draw(st.sampled_from([0, 1, 2, 100, 128]) | st.integers(0, 130))
    items = [(0x10, b"1.2.840.10008.3.1.1.1")]
    for i in range(n_contexts):
        syntaxes = draw(st.lists(st.sampled_from([IMPLICIT, EXPLICIT, b"1.2.3", b"", b"1.2.840.10008.1.2.4.50"]),
                                 min_size=0, max_size=3)) if i < 4 else [IMPLICIT]
        items.append((0x20, presentation_context(2 * i + 1 if draw(st.booleans()) or i > 3 else draw(st.integers(0, 255)),
                                                 draw(st.sampled_from([VERIFICATION, CT, b"", b"9" * 64])), syntaxes)[4:]))
    sub = b""
    if draw(st.booleans()):
        size = draw(st.sampled_from([0, 1, 255, 65000]) | st.integers(0, 70000))
        primary = b"u" * min(size, 65535)
        sub += item(0x58, bytes([draw(st.integers(0, 6)), draw(st.integers(0, 1))]) + struct.pack(">H", len(primary))
                    + primary + struct.pack(">H", 0), length=draw(st.none() | st.integers(0, 0xFFFF)))
    if draw(st.booleans()):
        sub += item(draw(st.integers(0x53, 0x5F)), draw(st.binary(max_size=64)))
    items.append((0x50, item(0x51, struct.pack(">L", draw(st.sampled_from([0, 1, 16384, 0xFFFFFFFF]))))[0:8] + sub))
    for _ in range(draw(st.integers(0, 2))):  # unknown items
        items.insert(draw(st.integers(0, len(items))), (draw(st.integers(0, 255)), draw(st.binary(max_size=40))))
    lies = draw(st.dictionaries(st.integers(0, max(0, len(items) - 1)), st.integers(-8, 8) | st.integers(0, 0xFFFF),
                                max_size=2))
    encoded = []
    for index, (kind, body) in enumerate(items):
        length = len(body)
        if index in lies:
            delta = lies[index]
            length = length + delta if -8 <= delta <= 8 else delta
        encoded.append(item(kind, body, max(0, length)))
    pdu_lie = draw(st.none() | st.integers(-4, 4))
    raw = associate_rq(draw(st.just(b"BURNSTATION") | _ae), draw(st.just(b"FUZZ") | _ae), encoded)
    if pdu_lie:
        raw = raw[:2] + struct.pack(">L", max(0, len(raw) - 6 + pdu_lie)) + raw[6:]
    # a PDU length longer than what is sent: the station rightly waits for the rest (until the end
    # of the stream, or its time-out), so no answer is awaited before the half-close
    wait = [] if pdu_lie and pdu_lie > 0 else [("wait", 1)]
    return Exchange("dicom", [("send", raw), *wait], note=f"{n_contexts} contexts, item lies {lies}, PDU lie {pdu_lie}")


@st.composite
def cut_pdus(draw: st.DrawFn) -> Exchange:
    """A well-formed PDU (A-ASSOCIATE-RQ, or after an accepted association a P-DATA C-ECHO or an
    A-RELEASE-RQ) cut at any byte, then the end of the stream."""
    which = draw(st.sampled_from(["associate", "p-data", "release"]))
    if which == "associate":
        raw = associate_rq()
        return Exchange("dicom", [("send", raw[:draw(st.integers(0, len(raw) - 1))])], note="A-ASSOCIATE-RQ cut")
    raw = p_data(pdv(1, 3, echo_rq())) if which == "p-data" else RELEASE_RQ
    return Exchange("dicom", [("send", associate_rq()), ("wait", 1), ("send", raw[:draw(st.integers(0, len(raw) - 1))])],
                    note=f"{which} cut")


@st.composite
def oversized(draw: st.DrawFn) -> Exchange:
    """PDUs whose header claims more than is sent (up to 4 GiB), and P-DATA far beyond the
    maximum length the station announced."""
    if draw(st.booleans()):
        kind = draw(st.sampled_from([1, 4, 5, 7]))
        claimed = draw(st.sampled_from([1 << 20, 1 << 28, 1 << 31, 0xFFFFFFFF]) | st.integers(0, 0xFFFFFFFF))
        before = [("send", associate_rq()), ("wait", 1)] if kind != 1 else []
        return Exchange("dicom", [*before, ("send", pdu(kind, b"\x00" * 64, claimed)), ("sleep", 1.5)],
                        note=f"type {kind} claiming {claimed} bytes")
    size = draw(st.sampled_from([20000, 1 << 20, 3 << 20]))
    return Exchange("dicom", [("send", associate_rq()), ("wait", 1),
                              ("send", p_data(pdv(1, 3, echo_rq()), pdv(1, 0, b"\x00" * size))), ("wait", 1)],
                    note=f"P-DATA of {size} bytes")


@st.composite
def p_data_disorder(draw: st.DrawFn) -> Exchange:
    """P-DATA fragments in the wrong order or with wrong flags: data before the command, a command
    never finished, unknown context ids, empty PDVs, PDV lengths that lie."""
    uid = b"1.2.826.0.1.3680043.9.7.99." + str(draw(st.integers(1, 10**9))).encode()
    command = store_rq(uid) if draw(st.booleans()) else echo_rq()
    pieces = [pdv(3 if command.find(CT) >= 0 else 1, 1, command[:10]), pdv(1, 3, command), pdv(3, 2, b"\x08\x00"),
              pdv(3, 0, b"\x10\x00"), pdv(draw(st.integers(0, 255)), draw(st.integers(0, 255)), b"x"),
              struct.pack(">LB", draw(st.integers(0, 0xFFFFFFFF)), 1) + b"\x03" + command]
    order = draw(st.lists(st.sampled_from(range(len(pieces))), min_size=1, max_size=5))
    steps: list[tuple[str, Any]] = [("send", associate_rq()), ("wait", 1)]
    for i in order:
        steps.append(("send", p_data(pieces[i])))
    steps.append(("send", RELEASE_RQ))
    return Exchange("dicom", steps, note=f"PDV order {order}")


@st.composite
def broken_store(draw: st.DrawFn) -> Exchange:
    """A C-STORE whose data set has broken tags and lengths (bytes flipped, length fields changed,
    cut, garbage appended), in one or several fragments."""
    n = draw(st.integers(1, 10**9))
    uid = f"1.2.826.0.1.3680043.9.7.{n}"
    data = bytearray(dataset_bytes(uid))
    for _ in range(draw(st.integers(0, 6))):
        pos = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "length", "cut", "insert"]))
        if action == "flip":
            data[pos] ^= draw(st.integers(1, 255))
        elif action == "length" and pos + 8 <= len(data):
            data[pos + 6:pos + 8] = struct.pack("<H", draw(st.integers(0, 0xFFFF)))
        elif action == "cut":
            del data[pos:]
            if not data:
                data += b"\x08"
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
    chunks = max(1, min(len(data), draw(st.integers(1, 4))))
    size = -(-len(data) // chunks)
    frags = [bytes(data[i:i + size]) for i in range(0, len(data), size)]
    pdvs = [pdv(3, 3, store_rq(uid.encode()))] + [pdv(3, 2 if i == len(frags) - 1 else 0, f) for i, f in enumerate(frags)]
    return Exchange("dicom", [("send", associate_rq()), ("wait", 1), ("send", p_data(*pdvs)), ("wait", 1),
                              ("send", RELEASE_RQ), ("wait", 1)], note=f"C-STORE {uid}")


# --------------------------------------------------------------------------- HL7 over MLLP

_CHARSETS = ["", "ASCII", "8859/1", "UNICODE UTF-8", "8859/5", "ISO IR87", "GB 18030-2000", "NOPE", "8859/1~UNICODE UTF-8"]
_CODECS = ["latin-1", "utf-8", "utf-16", "cp1252", "iso2022_jp", "shift_jis"]
_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=24)
_field = _text | st.sampled_from(["\\F\\", "\\S\\", "\\E\\", "\\X0D\\", "\\Xzz\\", "\\", "\\H\\x\\N\\", "^^^", "~~", "&&",
                                  "\\.br\\", "A" * 300, "20240101", "2024", "DOE^JOHN"])


@st.composite
def hl7_frames(draw: st.DrawFn) -> Exchange:
    """ORM^O01/OMI^O23 messages with fuzzed segments, fields, escapes and MSH-18 charsets, encoded
    in a (maybe different) codec, framed right or wrong, in one or several sends."""
    control = draw(st.text(alphabet="ABC123", min_size=0, max_size=8))
    msg_type = draw(st.sampled_from(["ORM^O01", "OMI^O23", "ADT^A01", "ORM", "", "^"]))
    version = draw(st.sampled_from(["2.3", "2.5.1", "2.3.1", "9.9", ""]))
    charset = draw(st.sampled_from(_CHARSETS))
    msh = f"MSH|^~\\&|RIS|HOSP|BS|HOSP|20240101120000||{msg_type}|{control}|P|{version}||||||{charset}"
    segments = [msh]
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.sampled_from(["PID", "PV1", "ORC", "OBR", "TQ1", "ZDS", "NTE", "", "MSH", "ZZZ"]))
        fields = draw(st.lists(_field, max_size=30))
        if name == "ORC" and fields:
            fields[0] = draw(st.sampled_from(["NW", "CA", "XO", "SC", "OC", "DC", "??"]))
        segments.append("|".join([name, *fields]))
    separator = draw(st.sampled_from(["\r", "\n", "\r\n", "\r\r"]))
    text = separator.join(segments) + separator
    payload = text.encode(draw(st.sampled_from(_CODECS)), "replace")
    if draw(st.integers(0, 9)) == 0:
        payload += draw(st.binary(max_size=64))
    framing = draw(st.sampled_from(["ok", "ok", "ok", "no-cr", "double", "leading-newlines", "start-inside", "no-end"]))
    if framing == "ok":
        wire, replies = b"\x0b" + payload + b"\x1c\x0d", 1
    elif framing == "no-cr":
        wire, replies = b"\x0b" + payload + b"\x1c", 1
    elif framing == "double":
        wire, replies = (b"\x0b" + payload + b"\x1c\x0d") * 2, 2
    elif framing == "leading-newlines":
        wire, replies = b"\r\n\r\n\x0b" + payload + b"\x1c\x0d", 1
    elif framing == "start-inside":
        wire, replies = b"\x0b" + payload[:len(payload) // 2] + b"\x0b" + payload + b"\x1c\x0d", 2
    else:
        wire, replies = b"\x0b" + payload, 1  # answered (AR, truncated) when the stream ends
    cuts = sorted(set(draw(st.lists(st.integers(0, len(wire)), max_size=3))))
    steps: list[tuple[str, Any]] = []
    last = 0
    for cut in [*cuts, len(wire)]:
        if cut > last:
            steps.append(("send", wire[last:cut]))
            last = cut
    if framing == "no-end":
        return Exchange("hl7", steps, half_close=True, note=f"{framing}: expects 1 reply after the end of stream")
    steps.append(("wait", replies))
    return Exchange("hl7", steps, note=f"{framing}, charset {charset!r}")


def well_formed_orm(control_id: str) -> bytes:
    return (f"MSH|^~\\&|RIS|HOSP|BS|HOSP|20240101120000||ORM^O01|{control_id}|P|2.3.1\r"
            f"PID|||FUZZ1^^^HOSP||FUZZ^ORDER||19700101|M\r"
            f"ORC|NW|P{control_id}|||SC\rOBR|1|P{control_id}||CT^Chest CT|||||||||||||||ACC{control_id[-8:]}|||||CT\r").encode()


# --------------------------------------------------------------------------- HTTP


@st.composite
def http_requests(draw: st.DrawFn, routes: list[tuple[str, str]]) -> Exchange:
    """A request to any page or API route (and the token portal): fuzzed path values, query
    strings, form bodies, headers (cookies, Range, Origin, lying Content-Length) and methods."""
    import re

    method, rule = draw(st.sampled_from(routes))
    if draw(st.integers(0, 7)) == 0:
        method = draw(st.sampled_from(["GET", "POST", "HEAD", "PUT", "OPTIONS", "TRACE", "G\x00T"]))

    def value(m: re.Match[str]) -> str:
        if m.group(2) == "int":
            return str(draw(st.integers(-5, 10**12)))
        if m.group(2) == "re":
            return draw(st.sampled_from(m.group(3).split("|")))
        return quote(draw(_text | st.sampled_from(["..", "%2e%2e", "1.2.3", "a/b"])), safe="%/")

    path = re.sub(r"<([^>:]+)(?::([^>:]+)(?::([^>]*))?)?>", value, rule)
    query = "&".join(f"{quote(k)}={quote(v)}" for k, v in draw(st.lists(st.tuples(
        st.sampled_from(["q", "page", "msg", "t", "level", "name", "from", "to", "error", "next", "state", "x"]),
        _text), max_size=4)))
    if draw(st.integers(0, 5)) == 0:
        query = draw(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40))
    sid, csrf = "@SID@", "@CSRF@"  # replaced by the live session when played
    form = {k: v for k, v in draw(st.dictionaries(st.sampled_from(
        ["username", "password", "password2", "role", "name", "aet", "host", "port", "days", "study", "copies",
         "node", "robot", "hostname", "address", "dns", "ntp", "timezone", "dicom.aet", "http.port", "code", "file"]),
        _text, max_size=5)).items()}
    if draw(st.integers(0, 3)):
        form["csrf"] = csrf
    body = "&".join(f"{quote(k)}={quote(v)}" for k, v in form.items()).encode()
    headers = {"Host": "127.0.0.1", "Connection": "close",
               "Cookie": f"bsid={sid}" + draw(st.sampled_from(["", "; a=b", "; =x", "; bad key=1", '; q="x;y"']))}
    if method not in ("GET", "HEAD") or draw(st.booleans()):
        headers["Content-Type"] = draw(st.sampled_from(["application/x-www-form-urlencoded", "multipart/form-data",
                                                        "multipart/form-data; boundary=zz", "text/plain"]))
    for name in draw(st.lists(st.sampled_from(["Range", "Origin", "Sec-Fetch-Site", "X-CSRF-Token", "Accept",
                                                "If-Modified-Since", "Referer", "X-Forwarded-For"]), max_size=3)):
        headers[name] = draw(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40))
    length = len(body)
    if draw(st.integers(0, 9)) == 0:
        length = draw(st.integers(0, len(body) + 10))
    headers["Content-Length"] = str(length)
    head = f"{method} {path}{'?' + query if query else ''} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    raw = head.encode("latin-1", "replace") + b"\r\n" + body[:length]
    # a Content-Length longer than the body: the server rightly waits for the rest, so the answer is
    # awaited only after the half-close (the end of the stream)
    waits = [] if len(body[:length]) < length else [("wait", 1)]
    return Exchange("http", [("send", raw), *waits], note=f"{method} {rule}")


# --------------------------------------------------------------------------- the live station


class Live:
    """A running station (tests/support.Station) and the checks made after every example."""

    def __init__(self, station: Any) -> None:
        self.station = station
        self.data = Path(station.data)
        self.examples = 0
        self.answers: dict[str, int] = {}
        self.failures: list[dict[str, Any]] = []
        self._rss_base = self.rss_mb()
        self.peak_rss = self._rss_base
        self._session: tuple[str, str] | None = None
        self._ctl = 0

    # -- the station's processes

    def pids(self) -> list[int]:
        root = self.station.proc.pid
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    ppid = int(stat.rsplit(")", 1)[1].split()[1])
                    children.setdefault(ppid, []).append(int(entry))
        out, todo = [], [root]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo += children.get(pid, [])
        return out

    def rss_mb(self) -> float:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total / 1024

    def up(self) -> bool:
        return self.station.proc is not None and self.station.proc.poll() is None

    # -- talking

    def port_of(self, kind: str) -> int:
        return {"dicom": self.station.port, "hl7": self.station.hl7_port, "http": self.station.http_port}[kind]

    def run(self, ex: Exchange) -> list[bytes]:
        """Play an exchange; returns what came back (PDUs, frames or the HTTP response)."""
        replies: list[bytes] = []
        with socket.create_connection(("127.0.0.1", self.port_of(ex.port)), timeout=ANSWER_TIMEOUT) as sock:
            reader = _Reader(sock, ex.port)
            try:
                for kind, value in ex.steps:
                    if kind == "send":
                        sock.sendall(value)
                    elif kind == "sleep":
                        time.sleep(value)
                        self.peak_rss = max(self.peak_rss, self.rss_mb())
                    else:
                        for _ in range(value):
                            answer = reader.next()
                            if answer is None:
                                return replies  # closed: an answer the protocols allow, checked below
                            replies.append(answer)
                if ex.half_close:
                    sock.shutdown(socket.SHUT_WR)
                while (answer := reader.next()) is not None:
                    replies.append(answer)
            except TimeoutError:
                raise PropertyFailed(f"no answer and no close within {ANSWER_TIMEOUT}s (a hang); got {len(replies)} "
                                     "answers") from None
            except OSError:
                return replies  # the station closed first (reset, broken pipe, not connected)
        return replies

    def check_answers(self, ex: Exchange, replies: list[bytes]) -> None:
        for reply in replies:
            if ex.port == "dicom":
                kind = reply[0]
                if kind not in (2, 3, 4, 6, 7):
                    raise PropertyFailed(f"PDU type {kind:#x} is no answer an acceptor gives")
                self._count(f"PDU {kind:#x}")
            elif ex.port == "hl7":
                text = reply.decode("latin-1")
                msa = next((s for s in text.replace("\n", "\r").split("\r") if s.startswith("MSA")), "")
                fields = msa.split("|")
                if len(fields) < 2 or fields[1] not in ("AA", "AE", "AR"):
                    raise PropertyFailed(f"no AA/AE/AR ACK: {text[:200]!r}")
                if len(fields) > 3 and fields[3].startswith("internal error"):
                    raise PropertyFailed(f"an exception answered as an internal error: {text[:300]!r}")
                self._count(f"ACK {fields[1]}")
            else:
                line = reply.split(b"\r\n", 1)[0].decode("latin-1")
                parts = line.split()
                if len(parts) < 2 or not parts[1].isdigit():
                    raise PropertyFailed(f"not an HTTP status line: {line[:100]!r}")
                if int(parts[1]) >= 500:
                    raise PropertyFailed(f"HTTP {line}")
                self._count(f"HTTP {parts[1][0]}xx")

    def _count(self, key: str) -> None:
        self.answers[key] = self.answers.get(key, 0) + 1

    # -- after an example

    def check_station(self, kind: str) -> None:
        if not self.up():
            raise PropertyFailed(f"the station process ended (exit {self.station.proc.poll()})")
        self.peak_rss = max(self.peak_rss, self.rss_mb())
        if self.peak_rss - self._rss_base > RSS_JUMP_MB:
            raise PropertyFailed(f"the station's memory grew by {self.peak_rss - self._rss_base:.0f} MB on one example")
        if kind == "dicom":
            self.echo()
            self.storage_consistent()
        elif kind == "hl7":
            self.order()
        else:
            self.page()

    def echo(self) -> None:
        replies = self.run(Exchange("dicom", [("send", associate_rq()), ("wait", 1), ("send", p_data(pdv(1, 3, echo_rq(7)))),
                                              ("wait", 1), ("send", RELEASE_RQ), ("wait", 1)]))
        if len(replies) < 3 or replies[0][0] != 2 or replies[1][0] != 4 or replies[2][0] != 6:
            raise PropertyFailed(f"the next C-ECHO failed: {[r[:1].hex() for r in replies]}")
        status = replies[1].find(struct.pack("<HHI", 0, 0x0900, 2))
        if status < 0 or replies[1][status + 8:status + 10] != b"\x00\x00":
            raise PropertyFailed("the next C-ECHO did not answer success")

    def order(self) -> None:
        self._ctl += 1
        control = f"FZ{os.getpid()}{self._ctl}"
        replies = self.run(Exchange("hl7", [("send", b"\x0b" + well_formed_orm(control) + b"\x1c\x0d"), ("wait", 1)]))
        if not replies or b"MSA|AA|" + control.encode() not in replies[0]:
            raise PropertyFailed(f"the next well-formed order was not ACKed AA: {replies[:1]!r}")

    def session(self) -> tuple[str, str]:
        """An admin session made straight in state.db (as tests/test_web_http does); renewed when a
        fuzzed request ended it (logout, a user deleted, a backup imported)."""
        from appliance import accounts, db

        conn = db.connect(self.data)
        try:
            if self._session and accounts.get_session(conn, self._session[0], 3600):
                return self._session
            self._ctl += 1
            name = f"fuzz{os.getpid()}x{self._ctl}"
            accounts.add_user(conn, name, "admin", "fuzz-pass-123")
            self._session = accounts.new_session(conn, name, "127.0.0.1", 3600)
            return self._session
        finally:
            conn.close()

    def page(self) -> None:
        sid, _csrf = self.session()
        raw = f"GET /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nCookie: bsid={sid}\r\n\r\n".encode()
        replies = self.run(Exchange("http", [("send", raw), ("wait", 1)]))
        if not replies or not replies[0].startswith(b"HTTP/1.1 200"):
            raise PropertyFailed(f"the next page did not answer 200: {replies[:1]!r}"[:300])

    def storage_consistent(self, timeout: float = 10.0) -> None:
        """No temp file left, every index row's file present, every stored file indexed."""
        root = self.data / "storage"
        deadline = time.monotonic() + timeout
        while True:
            temps, files = set(), set()
            for folder, _dirs, names in os.walk(root):
                for name in names:
                    if name.endswith(".tmp"):
                        temps.add(os.path.join(folder, name))
                    elif name.endswith(".dcm"):
                        files.add(os.path.join(folder, name))
            conn = sqlite3.connect(f"file:{self.data / 'state.db'}?mode=ro", uri=True, timeout=10)
            try:
                rows = {r[0] for r in conn.execute("SELECT path FROM instances")}
            finally:
                conn.close()
            problems = []
            if temps:
                problems.append(f"temp files left: {sorted(temps)[:3]}")
            if rows - files:
                problems.append(f"index rows without a file: {sorted(rows - files)[:3]}")
            if files - rows:
                problems.append(f"stored files without an index row: {sorted(files - rows)[:3]}")
            if not problems:
                return
            if time.monotonic() > deadline:
                raise PropertyFailed("; ".join(problems))
            time.sleep(0.2)

    # -- one example

    def example(self, target: str, ex: Exchange) -> None:
        self.examples += 1
        self._rss_base = self.peak_rss = self.rss_mb()
        original = ex
        if ex.port == "http":  # the session of the moment (a fuzzed request may have ended the last one)
            sid, csrf = self.session()
            ex = Exchange(ex.port, [(k, v.replace(b"@SID@", sid.encode()).replace(b"@CSRF@", csrf.encode()))
                                    if k == "send" else (k, v) for k, v in ex.steps], ex.half_close, ex.note)
        try:
            replies = self.run(ex)
            self.check_answers(ex, replies)
            if ex.note.startswith("no-end") and ex.port == "hl7" and not replies:
                raise PropertyFailed("a frame cut by the end of the stream got no AR")
            self.check_station(ex.port)
        except PropertyFailed as exc:
            self.failures.append({"target": target, "reason": str(exc), "exchange": original.to_json()})
            raise


class _Reader:
    """Reads whole answers off a socket: PDUs (DICOM), MLLP frames (HL7), one response (HTTP)."""

    def __init__(self, sock: socket.socket, kind: str) -> None:
        self.sock, self.kind, self.buf = sock, kind, bytearray()
        self.closed = False

    def _fill(self) -> bool:
        if self.closed:
            return False
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return False
        self.buf += data
        return True

    def next(self) -> bytes | None:
        while True:
            if self.kind == "dicom" and len(self.buf) >= 6:
                length = struct.unpack(">L", self.buf[2:6])[0]
                if len(self.buf) >= 6 + length:
                    out = bytes(self.buf[:6 + length])
                    del self.buf[:6 + length]
                    return out
            elif self.kind == "hl7":
                end = self.buf.find(b"\x1c\x0d")
                if end >= 0:
                    out = bytes(self.buf[:end]).lstrip(b"\x0b")
                    del self.buf[:end + 2]
                    return out
            if not self._fill():
                if self.kind == "http" and self.buf:
                    out, self.buf = bytes(self.buf), bytearray()
                    return out
                return None


# --------------------------------------------------------------------------- running targets

TARGETS: dict[str, Callable[..., Any]] = {
    "dicom-associate": lambda live: associate_variants(),
    "dicom-cut": lambda live: cut_pdus(),
    "dicom-oversized": lambda live: oversized(),
    "dicom-p-data-order": lambda live: p_data_disorder(),
    "dicom-c-store": lambda live: broken_store(),
    "hl7-mllp": lambda live: hl7_frames(),
    "http": lambda live: http_requests(http_routes()),
}


def http_routes() -> list[tuple[str, str]]:
    import sys

    sys.path.insert(0, str(HERE))
    import targets

    return [r for r in targets.web_routes() if r[1] not in ("/nodes/<aet>/echo",)]


def sweep_cut_every_byte(live: Live) -> int:
    """The deterministic part of "PDUs cut at every byte": an A-ASSOCIATE-RQ and, on an accepted
    association, a P-DATA C-ECHO cut after each of their bytes. Returns the number of exchanges."""
    count = 0
    raw = associate_rq()
    for cut in range(len(raw)):
        live.example("dicom-cut-sweep", Exchange("dicom", [("send", raw[:cut])], note=f"A-ASSOCIATE-RQ cut at {cut}"))
        count += 1
    echo = p_data(pdv(1, 3, echo_rq()))
    for cut in range(len(echo)):
        live.example("dicom-cut-sweep", Exchange("dicom", [("send", associate_rq()), ("wait", 1), ("send", echo[:cut])],
                                                 note=f"P-DATA cut at {cut}"))
        count += 1
    return count


def fuzz(live: Live, target: str, seconds: float, batch: int = 20, max_examples: int | None = None,
         keep: bool = True) -> dict[str, Any]:
    """Run a target's examples for `seconds` (or, when given, until `max_examples` ran); failures are
    shrunk, counted and (`keep`) written to tests/fuzz/crashes/<target>/."""
    strategy = TARGETS[target](live)
    start = time.monotonic()
    before = live.examples
    found: list[dict[str, Any]] = []

    @settings(max_examples=batch, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    @given(strategy)
    def one(ex: Exchange) -> None:
        live.example(target, ex)

    def more() -> bool:
        if max_examples is not None:
            return live.examples - before < max_examples
        return time.monotonic() - start < seconds

    while more():
        live.failures.clear()
        try:
            one()
        except PropertyFailed:
            if live.failures:
                failure = live.failures[-1]  # the shrunk example is the last one run
                found.append(save_failure(failure) if keep else {"reason": failure["reason"], "file": ""})
            if not live.up():
                break
    return {"target": target, "examples": live.examples - before, "seconds": round(time.monotonic() - start, 1),
            "failures": found}


def save_failure(failure: dict[str, Any]) -> dict[str, Any]:
    doc = json.dumps(failure, indent=1, sort_keys=True)
    folder = HERE / "crashes" / failure["target"]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"crash-{hashlib.sha1(json.dumps(failure['exchange'], sort_keys=True).encode()).hexdigest()[:16]}.json"
    path.write_text(doc + "\n")
    return {"reason": failure["reason"], "file": str(path.relative_to(HERE.parent.parent))}


def replay(live: Live, path: Path) -> None:
    """Play a kept reproducer against a live station (the property must hold now)."""
    doc = json.loads(path.read_text())
    live.example(doc["target"], Exchange.from_json(doc["exchange"]))
