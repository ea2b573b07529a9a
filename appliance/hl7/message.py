"""Decode HL7 v2 bytes, build ACKs and outgoing messages.

MLLP frames are bytes. MSH-18 (character set) is read from the raw bytes first (the MSH
segment is ASCII by rule), then the whole message is decoded with that charset, or with the
configured default when MSH-18 is empty. Every failure becomes an `HL7Error` carrying the ACK
code (AE: the message was understood but could not be applied; AR: it was refused as such).
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from dataclasses import dataclass

import hl7

from appliance.config import normalize_charset, python_codec

SUPPORTED_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1")
SUPPORTED_TYPES = {("ORM", "O01"), ("OMI", "O23")}

# DICOM Specific Character Set term → the MSH-18 name we write in messages we send
HL7_CHARSET_NAMES = {
    "ISO_IR 6": "ASCII", "ISO_IR 100": "8859/1", "ISO_IR 101": "8859/2", "ISO_IR 144": "8859/5",
    "ISO_IR 126": "8859/7", "ISO_IR 138": "8859/8", "ISO_IR 148": "8859/9", "ISO_IR 192": "UNICODE UTF-8",
}


class HL7Error(Exception):
    """A message that cannot be taken; `code` is the ACK code (AE or AR) to answer with."""

    def __init__(self, code: str, text: str, control_id: str = "") -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.control_id = control_id


@dataclass
class Decoded:
    """A parsed inbound message with what the ACK and the mapping need."""

    message: hl7.Message
    text: str
    charset: str  # DICOM Specific Character Set term
    control_id: str
    msg_type: str
    trigger: str
    version: str
    sending_application: str
    sending_facility: str
    msh18: str


def _msh_fields_raw(data: bytes) -> tuple[list[bytes], bytes]:
    """The MSH segment of raw bytes split into fields (index i = MSH-(i+1)) and the field separator."""
    start = data.find(b"MSH")
    if start < 0 or start + 4 > len(data):
        raise HL7Error("AR", "not an HL7 message: no MSH segment")
    if data[:start].strip(b"\r\n \t"):
        raise HL7Error("AR", "not an HL7 message: data before the MSH segment")
    sep = data[start + 3:start + 4]
    if sep.isalnum() or sep in (b"\r", b"\n", b" "):
        raise HL7Error("AR", "malformed MSH segment: no field separator")
    end = len(data)
    for stop in (b"\r", b"\n"):
        pos = data.find(stop, start)
        if 0 <= pos < end:
            end = pos
    fields = data[start + 3:end].split(sep)
    fields[0] = b"MSH"
    return [b"MSH", sep, *fields[1:]], sep


def control_id_of(data: bytes) -> str:
    """MSH-10 of raw (maybe broken) bytes, '' when it cannot be found."""
    try:
        fields, _sep = _msh_fields_raw(data)
    except HL7Error:
        return ""
    if len(fields) > 10:
        return fields[10].decode("ascii", "replace").strip()[:199]
    return ""


def decode(data: bytes, default_charset: str) -> Decoded:
    """Bytes of one MLLP frame → Decoded, or HL7Error(AE/AR)."""
    fields, _sep = _msh_fields_raw(data)
    control_id = fields[10].decode("ascii", "replace").strip() if len(fields) > 10 else ""
    msh18 = fields[18].decode("ascii", "replace").strip() if len(fields) > 18 else ""
    if msh18:
        first = msh18.split("~")[0].split("^")[0].strip()  # first repetition is the message's charset
        charset = normalize_charset(first)
        if charset is None:
            raise HL7Error("AR", f"unsupported character set in MSH-18: {first!r}", control_id)
    else:
        charset = default_charset
    codec = python_codec(charset)
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as exc:
        raise HL7Error("AE", f"bytes {exc.start}-{exc.end} are not valid {charset} ({codec})", control_id) from None
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r \t")
    start = text.find("MSH")
    # blank lines between segments are no segments (the hl7 library fails on an empty one)
    text = "\r".join(segment for segment in text[start:].split("\r") if segment.strip())
    try:
        message = hl7.parse(text)
        msh = message.segment("MSH")
    except Exception as exc:  # hl7 raises ParseException and assorted errors on broken input
        raise HL7Error("AR", f"cannot parse the message: {exc}", control_id) from None
    msg_type_field = _field(msh, 9)
    parts = msg_type_field.split(message.separators[3]) if msg_type_field else []
    msg_type = parts[0].strip() if parts else ""
    trigger = parts[1].strip() if len(parts) > 1 else ""
    version = _field(msh, 12).split(message.separators[3])[0].strip()
    decoded = Decoded(message, text, charset, control_id, msg_type, trigger, version,
                      _field(msh, 3), _field(msh, 4), msh18)
    if not control_id:
        raise HL7Error("AR", "MSH-10 (message control ID) is empty", "")
    if (msg_type, trigger) not in SUPPORTED_TYPES:
        raise HL7Error("AR", f"unsupported message type {msg_type}^{trigger}: the station accepts "
                       "ORM^O01 and OMI^O23", control_id)
    if version not in SUPPORTED_VERSIONS:
        raise HL7Error("AR", f"unsupported HL7 version {version!r}: the station accepts 2.3 to 2.5.1", control_id)
    return decoded


def _field(segment: hl7.Segment, index: int) -> str:
    try:
        return str(segment[index])
    except IndexError:
        return ""


# --------------------------------------------------------------------------- building messages

_ESCAPES = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"}


def escape(value: str) -> str:
    """Escape a value for an HL7 field (standard delimiters); line breaks become spaces."""
    value = re.sub(r"[\r\n\x0b\x1c]", " ", value)
    return "".join(_ESCAPES.get(c, c) for c in value)


_counter = itertools.count(1)
_counter_lock = threading.Lock()


def new_control_id() -> str:
    with _counter_lock:
        n = next(_counter)
    return f"BS{time.strftime('%Y%m%d%H%M%S')}{n % 100000:05d}"


def timestamp() -> str:
    return time.strftime("%Y%m%d%H%M%S")


def msh(sending_application: str, sending_facility: str, receiving_application: str, receiving_facility: str,
        msg_type: str, version: str, charset: str | None, control_id: str | None = None) -> str:
    """An MSH segment for a message the station sends (MSH-3/MSH-4 from the settings)."""
    msh18 = HL7_CHARSET_NAMES.get(charset or "", "") if charset else ""
    fields = ["MSH", "^~\\&", escape(sending_application), escape(sending_facility), receiving_application,
              receiving_facility, timestamp(), "", msg_type, control_id or new_control_id(), "P", version,
              "", "", "", "", "", msh18]
    return "|".join(fields).rstrip("|")


def build_ack(code: str, *, control_id: str, text: str = "", sending_application: str = "",
              sending_facility: str = "", receiving_application: str = "", receiving_facility: str = "",
              trigger: str = "", version: str = "2.5.1", charset: str | None = None) -> str:
    """An ACK: MSA-1 = code, MSA-2 = the echoed MSH-10, MSA-3 = text; ERR for AE/AR."""
    version = version if version in SUPPORTED_VERSIONS else "2.5.1"
    msg_type = f"ACK^{trigger}" if version == "2.3" else f"ACK^{trigger}^ACK"
    segments = [
        msh(sending_application, sending_facility, receiving_application, receiving_facility, msg_type,
            version, charset),
        "|".join(["MSA", code, escape(control_id), escape(text[:80])]).rstrip("|"),
    ]
    if code != "AA" and text:
        if version in ("2.5", "2.5.1"):
            # ERR-3 error code (HL7 table 0357: 207 application internal error, 200 unsupported type),
            # ERR-4 severity, ERR-8 user message
            err_code = "200^Unsupported message type^HL70357" if "unsupported" in text else \
                "207^Application internal error^HL70357"
            segments.append(f"ERR|||{err_code}|E||||{escape(text[:250])}")
        else:
            segments.append(f"ERR|^^^207&{escape(text[:80])}&HL70357")
    return "\r".join(segments) + "\r"
