"""The attributes the index needs, read straight from a received data set's bytes.

Why: decoding every C-STORE data set with pydicom (`event.dataset`) was the largest share of the
per-object Python work. The index needs some twenty text attributes, all in groups 0008-0020, so
this module walks the element headers of a little-endian data set (implicit or explicit VR),
keeps the raw values of those attributes, and checks that the whole data set is structurally
sound (lengths add up, sequences and encapsulated fragments are closed, tags ascend).

Values are converted exactly as pydicom converts them (pure-ASCII values take a short path
that gives the same strings; anything else goes through pydicom's own converters), so
`index.record_from_dataset(parse(...))` equals `index.record_from_dataset(event.dataset)`.
Whenever something is unusual (big endian, deflate, a VR that is not the expected one,
non-ascending tags, truncated or garbled data, a keyword this module does not know),
`parse` returns None and the caller decodes with pydicom as before.
"""

from __future__ import annotations

import re
import struct
from typing import Any

from pydicom import config as pydicom_config
from pydicom.charset import convert_encodings
from pydicom.multival import MultiValue
from pydicom.values import convert_IS_string, convert_PN, convert_text

from appliance.index import _text as _index_text

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"

# keyword -> (tag, dictionary VR): what index.record_from_dataset and the store handler ask for
ATTRIBUTES: dict[str, tuple[int, str]] = {
    "SpecificCharacterSet": (0x00080005, "CS"),
    "SOPClassUID": (0x00080016, "UI"),
    "SOPInstanceUID": (0x00080018, "UI"),
    "StudyDate": (0x00080020, "DA"),
    "SeriesDate": (0x00080021, "DA"),
    "StudyTime": (0x00080030, "TM"),
    "SeriesTime": (0x00080031, "TM"),
    "AccessionNumber": (0x00080050, "SH"),
    "Modality": (0x00080060, "CS"),
    "InstitutionName": (0x00080080, "LO"),
    "ReferringPhysicianName": (0x00080090, "PN"),
    "StudyDescription": (0x00081030, "LO"),
    "SeriesDescription": (0x0008103E, "LO"),
    "PatientName": (0x00100010, "PN"),
    "PatientID": (0x00100020, "LO"),
    "IssuerOfPatientID": (0x00100021, "LO"),
    "PatientBirthDate": (0x00100030, "DA"),
    "PatientSex": (0x00100040, "CS"),
    "BodyPartExamined": (0x00180015, "CS"),
    "StudyInstanceUID": (0x0020000D, "UI"),
    "SeriesInstanceUID": (0x0020000E, "UI"),
    "StudyID": (0x00200010, "SH"),
    "SeriesNumber": (0x00200011, "IS"),
    "InstanceNumber": (0x00200013, "IS"),
}
_WANTED = {tag: vr for tag, vr in ATTRIBUTES.values()}
_TAG_OF = {keyword: tag for keyword, (tag, _vr) in ATTRIBUTES.items()}
_CHARSET_TAG = 0x00080005

# explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2)
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_SHORT_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN",
              b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
# the VRs a wanted attribute may carry and how its value is converted (as pydicom does)
_TEXT = {"SH", "LO", "UC"}          # convert_text: split on '\', each value rstrip('\0 ')
_STRING = {"CS", "DA", "TM", "AE", "AS", "DT"}  # convert_string: rstrip(' \0'), split on '\'
_KINDS = _TEXT | _STRING | {"UI", "PN", "IS"}

_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQ_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_ASCII = bytes(range(0x20, 0x7F)) + b"\x00"

_u32 = struct.Struct("<I").unpack_from
_tag_len = struct.Struct("<HHI").unpack_from
_tag_vr_len16 = struct.Struct("<HH2sH").unpack_from


class _Bad(Exception):
    """Not a structurally sound little-endian data set."""


def _walk(buf: bytes, pos: int, end: int, implicit: bool, found: dict[int, tuple[str, bytes]] | None,
          nested: bool) -> int:
    """Walk the elements from `pos`; returns the position after the data set (or its item delimiter)."""
    last = -1
    while pos < end:
        if pos + 8 > end:
            raise _Bad("truncated element header")
        if implicit:
            group, elem, length = _tag_len(buf, pos)
            vr = b""
            value_pos = pos + 8
        else:
            group, elem, vr, length = _tag_vr_len16(buf, pos)
            if group == 0xFFFE:
                vr = b""
                length = _u32(buf, pos + 4)[0]
                value_pos = pos + 8
            elif vr in _LONG_VRS:
                if pos + 12 > end:
                    raise _Bad("truncated element header")
                length = _u32(buf, pos + 8)[0]
                value_pos = pos + 12
            elif vr in _SHORT_VRS:
                value_pos = pos + 8
            else:
                raise _Bad(f"unknown VR {vr!r}")
        tag = group << 16 | elem
        if group == 0xFFFE:
            if nested and tag == _ITEM_END:
                return value_pos
            raise _Bad(f"unexpected item tag {tag:08X}")
        if tag <= last:
            raise _Bad("tags not in ascending order")
        last = tag
        if length == _UNDEFINED:
            if implicit or vr == b"SQ" or vr == b"UN":
                # a sequence; an undefined-length UN holds an implicit VR little endian sequence
                pos = _skip_sequence(buf, value_pos, end, implicit or vr == b"UN")
            elif vr in (b"OB", b"OW"):
                pos = _skip_fragments(buf, value_pos, end)
            else:
                raise _Bad("undefined length on a non-sequence")
            if found is not None and tag in _WANTED:
                raise _Bad("wanted attribute with undefined length")
            continue
        pos = value_pos + length
        if pos > end:
            raise _Bad("value runs past the end")
        if found is not None and tag in _WANTED:
            found[tag] = (vr.decode("ascii") if vr else "", bytes(buf[value_pos:pos]))  # a copy of a view
    if nested:
        raise _Bad("item not closed")
    return pos


def _skip_sequence(buf: bytes, pos: int, end: int, implicit: bool) -> int:
    while pos + 8 <= end:
        group, elem, length = _tag_len(buf, pos)
        tag = group << 16 | elem
        pos += 8
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise _Bad(f"expected an item, found {tag:08X}")
        if length == _UNDEFINED:
            pos = _walk(buf, pos, end, implicit, None, nested=True)
        else:
            pos += length
            if pos > end:
                raise _Bad("item runs past the end")
    raise _Bad("sequence not closed")


def _skip_fragments(buf: bytes, pos: int, end: int) -> int:
    while pos + 8 <= end:
        group, elem, length = _tag_len(buf, pos)
        tag = group << 16 | elem
        pos += 8
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM or length == _UNDEFINED:
            raise _Bad("bad encapsulated fragment")
        pos += length
        if pos > end:
            raise _Bad("fragment runs past the end")
    raise _Bad("encapsulated data not closed")


class IndexAttributes:
    """The attributes of one data set, read by `parse`; `.get(keyword)` mirrors `Dataset.get`.

    Values have the types pydicom would give (str, a list for multiple values, IS), so code that
    formats a pydicom value (index._text) formats these the same way. Asking for a keyword this
    module does not read raises LookupError (the caller then falls back to pydicom).
    """

    def __init__(self, found: dict[int, tuple[str, bytes]]) -> None:
        self._found = found
        self._encodings: list[str] | None = None

    def _charset(self) -> list[str]:
        if self._encodings is None:
            value = self.get("SpecificCharacterSet")
            if not value:
                self._encodings = ["iso8859"]  # pydicom's default_encoding
            else:
                self._encodings = convert_encodings(value if isinstance(value, list) else [value])
        return self._encodings

    def get(self, keyword: str, default: Any = None) -> Any:
        tag = _TAG_OF.get(keyword)
        if tag is None:
            raise LookupError(f"{keyword} is not read by the fast parser")
        item = self._found.get(tag)
        if item is None:
            return default
        vr, raw = item
        if not raw:
            return ""
        ascii_only = not raw.translate(None, _ASCII)
        if vr in _STRING:
            if not ascii_only:
                raise ValueError("non-ASCII bytes in a code string")
            return _split(raw.decode("ascii").rstrip(" \x00"))
        if vr == "UI":
            if not ascii_only:
                raise ValueError("non-ASCII bytes in a UID")
            return _split(raw.decode("ascii").rstrip("\x00 ").rstrip(" \x00"))
        if vr in _TEXT:
            if ascii_only:
                values = [v.rstrip("\x00 ") for v in raw.decode("ascii").split("\\")]
                return values[0] if len(values) == 1 else values
            value = convert_text(raw, self._charset(), vr)
            return list(value) if isinstance(value, MultiValue) else value
        if vr == "PN":
            if ascii_only:
                return _split(raw.rstrip(b"\x00 ").decode("ascii"))
            value = convert_PN(raw, self._charset())
            return [str(v) for v in value] if isinstance(value, MultiValue) else str(value)
        if vr == "IS":
            return convert_IS_string(raw, True)
        raise ValueError(f"unexpected VR {vr}")  # pragma: no cover - parse() only keeps _KINDS

    def index_texts(self) -> dict[str, str]:
        """`index._text(self, keyword)` (what the index keeps) of every attribute this module reads,
        in one pass, with a short path for the usual pure-ASCII values; anything else takes `get`
        and `index._text` itself."""
        out: dict[str, str] = {}
        found = self._found
        for keyword, tag in _TAG_OF.items():
            item = found.get(tag)
            if item is None:
                out[keyword] = ""
                continue
            vr, raw = item
            if not raw:
                out[keyword] = ""
                continue
            if raw.translate(None, _ASCII):
                out[keyword] = _index_text(self, keyword)
                continue
            if vr in _STRING:
                value = raw.decode("ascii").rstrip(" \x00")
            elif vr == "UI":
                value = raw.decode("ascii").rstrip("\x00 ").rstrip(" \x00")
            elif vr in _TEXT:
                value = "\\".join(v.rstrip("\x00 ") for v in raw.decode("ascii").split("\\"))
            elif vr == "PN":
                value = raw.rstrip(b"\x00 ").decode("ascii")
            elif vr == "IS" and _PLAIN_IS(raw):  # pydicom's IS keeps the string as written: '012' stays
                value = raw.decode("ascii")
            else:
                out[keyword] = _index_text(self, keyword)
                continue
            out[keyword] = value if "\\" in value else value.strip()  # one value is stripped, several joined
        return out


# a single Integer String of at most 9 digits, signed or not, padded with spaces (no NUL, no backslash)
_PLAIN_IS = re.compile(rb" *[+-]?[0-9]{1,9} *").fullmatch


def _split(value: str) -> str | list[str]:
    values = value.split("\\")
    return values[0] if len(values) == 1 else values


def parse(raw: bytes | memoryview, transfer_syntax: str) -> IndexAttributes | None:
    """The index attributes of a data set encoded in `transfer_syntax` (bytes, or a view of the
    received buffer), or None to use pydicom."""
    if pydicom_config.datetime_conversion or not pydicom_config.replace_un_with_known_vr:
        return None
    if transfer_syntax == IMPLICIT_LE:
        implicit = True
    elif transfer_syntax in (DEFLATED_LE, EXPLICIT_BE):
        return None
    elif transfer_syntax.startswith("1.2.840.10008.1.2."):
        implicit = False  # explicit VR little endian, native or encapsulated (JPEG, RLE, ...)
    else:
        return None
    found: dict[int, tuple[str, bytes]] = {}
    try:
        if _walk(raw, 0, len(raw), implicit, found, nested=False) != len(raw):
            return None
    except (_Bad, struct.error):
        return None
    for tag, (vr, value) in list(found.items()):
        expected = _WANTED[tag]
        if not vr or (vr == "UN" and len(value) < 0xFFFF):
            vr = expected  # implicit VR, or an explicit UN that pydicom replaces with the known VR
        if vr not in _KINDS or (vr in _TEXT) != (expected in _TEXT) or (vr in _STRING) != (expected in _STRING) \
                or (vr in ("UI", "PN", "IS") and vr != expected):
            return None
        found[tag] = (vr, value)
    return IndexAttributes(found)
