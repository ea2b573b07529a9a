"""Helpers for the HL7 / worklist tests: build orders field by field, talk MLLP over a socket."""

from __future__ import annotations

import socket
from pathlib import Path

from support import findscu, wait_port

SB, EB, CR = b"\x0b", b"\x1c", b"\x0d"


def segment(name: str, fields: dict[int, str]) -> str:
    """A segment with the given fields at their HL7 positions (1-based)."""
    top = max(fields) if fields else 0
    return "|".join([name] + [fields.get(i, "") for i in range(1, top + 1)])


def order(control: str = "NW", *, placer: str = "P1", filler: str = "", accession: str = "ACC1",
          patient_id: str = "PID1", issuer: str = "", name: str = "DOE^JOHN", birth: str = "19700101",
          sex: str = "M", station: str = "CT01", modality: str = "CT", start: str = "202611261430",
          priority: str = "R", procedure: str = "CTCHEST^Chest CT^L", rp_code: str = "", study_uid: str = "",
          version: str = "2.3.1", charset: str = "", control_id: str = "MSG1", status: str = "",
          rp_id: str = "", sps_id: str = "", referring: str = "", requesting: str = "", performing: str = "",
          reason: str = "", msg_type: str = "ORM^O01", use_tq1: bool = False, sending: str = "RIS",
          facility: str = "HOSP") -> str:
    """An HL7 order message (segments separated by CR) with the fields of the mapping table."""
    msh = "MSH|^~\\&|" + "|".join([sending, facility, "BURNSTATION", "STATION", "20261126120000", "", msg_type,
                                    control_id, "P", version, "", "", "", "", "", charset]).rstrip("|")
    pid3 = patient_id + (f"^^^{issuer}" if issuer else "")
    segs = [msh, segment("PID", {1: "1", 3: pid3, 5: name, 7: birth, 8: sex})]
    if referring:
        segs.append(segment("PV1", {1: "1", 2: "O", 8: referring}))
    orc = {1: control, 2: placer, 3: filler, 18: station}
    if status:
        orc[5] = status
    if not use_tq1:
        orc[7] = f"^^^{start}^^{priority}"
    segs.append(segment("ORC", orc))
    if use_tq1:
        segs.append(segment("TQ1", {1: "1", 7: start, 9: priority}))
    obr = {1: "1", 2: placer, 3: filler, 4: procedure, 16: requesting, 18: accession, 19: rp_id, 20: sps_id,
           24: modality, 31: reason, 34: performing, 44: rp_code}
    segs.append(segment("OBR", {k: v for k, v in obr.items() if v}))
    if study_uid:
        segs.append(segment("ZDS", {1: f"{study_uid}^^Application^DICOM"}))
    return "\r".join(segs) + "\r"


def frame(payload: bytes) -> bytes:
    return SB + payload + EB + CR


class Replies:
    """Framed replies read from one socket; keeps bytes that arrived past the current frame."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def next(self, timeout: float = 10.0) -> bytes | None:
        """The next framed reply, or None when the peer closed the connection without one."""
        self.sock.settimeout(timeout)
        while EB + CR not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buf += data
        frame_end = self.buf.index(EB + CR)
        start = self.buf.index(SB)
        payload = self.buf[start + 1:frame_end]
        self.buf = self.buf[frame_end + 2:]
        return payload


def read_reply(sock: socket.socket, timeout: float = 10.0) -> bytes | None:
    """One framed reply on a socket used for one exchange at a time."""
    return Replies(sock).next(timeout)


def exchange(port: int, payload: bytes, *, framed: bool = True, timeout: float = 10.0) -> bytes | None:
    """Send one message on a new connection and return the ACK (None if none came)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(frame(payload) if framed else payload)
        return read_reply(sock, timeout)


def send_order(port: int, text: str, encoding: str = "latin_1") -> str:
    """Send an order and return MSA-1 of the ACK."""
    reply = exchange(port, text.encode(encoding))
    assert reply is not None, "no ACK"
    return msa(reply)[0]


def msa(reply: bytes) -> list[str]:
    text = reply.decode("latin_1")
    for seg in text.split("\r"):
        if seg.startswith("MSA|"):
            return seg.split("|")[1:]
    raise AssertionError(f"no MSA in {text!r}")


def msh(reply: bytes) -> list[str]:
    """The MSH fields of a reply, indexed so that msh(reply)[n] is MSH-n."""
    first = reply.decode("latin_1").split("\r")[0]
    return ["MSH", "|", *first.split("|")[1:]]


def wait_hl7(port: int) -> None:
    wait_port(port)


def worklist(port: int, keys: list[str], out: Path, aet: str = "SCANNER", aec: str = "BURNSTATION") -> list:
    """findscu -W against the station; the response datasets."""
    proc, responses = findscu(port, keys, out, model="-W", aet=aet, aec=aec)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return responses

